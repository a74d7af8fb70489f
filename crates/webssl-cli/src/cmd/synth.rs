//! `webssl synth`: generate the synthetic web-like data set (scenes, signs, documents, charts) as
//! WebDataset shards with captions, metadata, probe labels and dense labels. See
//! `webssl_data::synth` for what is generated and how it stays deterministic.
//!
//! Typical use: a training set and a held-out labelled set from different seeds,
//! `webssl synth --out data/train --samples 2000 --seed 0` and
//! `webssl synth --out data/val --samples 500 --seed 1 --split val`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use webssl_data::shards::ShardLimits;
use webssl_data::synth::{Category, Mix, SynthConfig, record_file, write_shards};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (created if needed); shards `{split}-000000.tar`…, `index.json`, `synth-{split}.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples; sample i depends only on (seed, i), so N+M samples extend N.
    #[arg(long, default_value_t = 2000)]
    pub samples: u64,
    /// Image side in pixels (32–1024).
    #[arg(long, default_value_t = 112)]
    pub size: u32,
    /// Run seed; use a different seed for a held-out set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Category mix: `full` (50% text-bearing, like MC-2B), `light` (text-bearing only), `heavy`
    /// (documents and charts only), or weights like `scene=0.5,sign=0.2,document=0.15,chart=0.15`.
    #[arg(long, default_value = "full")]
    pub mix: String,
    /// Split name: prefix of keys (`{split}-00000042`) and shard files.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Samples per shard.
    #[arg(long, default_value_t = 500)]
    pub shard_size: usize,
    /// Optional cap on bytes per shard.
    #[arg(long)]
    pub shard_bytes: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mix = Mix::parse(&args.mix).with_context(|| format!("--mix `{}`", args.mix))?;
    let cfg = SynthConfig {
        size: args.size,
        seed: args.seed,
        mix,
    };
    cfg.validate().context("--size")?;
    if args.samples == 0 {
        anyhow::bail!("--samples must be at least 1");
    }
    if args.shard_size == 0 {
        anyhow::bail!("--shard-size must be at least 1");
    }
    if let Some(t) = args.threads {
        // Ignore the error when a global pool already exists (only possible when embedded).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    let limits = ShardLimits {
        max_samples: Some(args.shard_size),
        max_bytes: args.shard_bytes,
    };
    tracing::info!(
        "synth: {} samples of {}px, seed {}, mix {} → {}",
        args.samples,
        cfg.size,
        cfg.seed,
        cfg.mix,
        args.out.display()
    );

    let bar = ProgressBar::new(args.samples);
    bar.set_style(
        ProgressStyle::with_template("{spinner} synth [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let (summary, _index) = write_shards(
        &args.out,
        &cfg,
        args.samples,
        &args.split,
        limits,
        &mut |n| bar.set_position(n),
    )
    .with_context(|| format!("writing synthetic shards to {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();

    let per_cat: Vec<String> = Category::ALL
        .iter()
        .map(|&c| format!("{c} {}", summary.count(c)))
        .collect();
    println!(
        "wrote {} samples ({}; {} with text) in {} shard(s), {}, to {} in {:.1} s ({:.0} img/s); record: {}",
        summary.samples,
        per_cat.join(", "),
        summary.with_text,
        summary.shards,
        human_bytes(summary.bytes),
        args.out.display(),
        secs,
        summary.samples as f64 / secs.max(1e-9),
        args.out.join(record_file(&args.split)).display(),
    );
    Ok(())
}
