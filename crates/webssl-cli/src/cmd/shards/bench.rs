//! `webssl shards bench DIR`: throughput of the real training loader over a shard directory.
//!
//! Runs [`webssl_data::loader::Loader`] exactly as pretraining does (tar read → seeded shuffle buffer →
//! decode → per-sample augmentation → view-major collation → iBOT or MAE masks) for `--warmup` untimed
//! batches, then `--batches` timed ones, and prints:
//!
//! - images/s over the timed batches (wall clock of the consumer), and that divided by `--threads`;
//! - images per CPU-second of the whole process (user + system time from `/proc/self/stat`, Linux
//!   only): the per-core number that also charges the reader, dispatcher and collation threads, which
//!   `--threads` does not count;
//! - the loader's busy time (decode-thread seconds spent decoding + augmenting) and images per busy
//!   second (the per-thread cost of decode + augment alone), the consumer's wait fraction;
//! - skipped samples (count and the first few `shard:key: reason`).
//!
//! Recipes (`webssl_data::recipe`, shared with the Python `webssl.Loader`): `dino` = dinov2
//! `DataAugmentationDINO` (2 × 224 + `--n-local` × 98) with iBOT block masks on the global crops;
//! `mae` = MAE `RandomResizedCrop(224, (0.2, 1))` + flip with a 75 % random token mask; `clip` =
//! MetaCLIP `RandomResizedCrop(224, (0.9, 1))`, no mask; `eval` = resize + center crop. The sampler
//! cycles through epochs, so any number of batches works on a small shard set. `bench/data.sh`
//! compares this against dinov2's PyTorch pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use webssl_data::loader::{Batch, Loader, LoaderConfig, TarShards};
use webssl_data::recipe::{LoaderRecipe, RecipeKind, batch_arrays};
use webssl_data::sampler::SamplerConfig;

/// How many skipped samples the report names.
const SHOW_SKIPPED: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// DINOv2 multi-crop (2 global + N local) with iBOT masks.
    Dino,
    /// MAE single crop with a random token mask.
    Mae,
    /// CLIP single crop, no mask.
    Clip,
    /// dinov2's ImageNet eval transform (resize + center crop), no mask.
    Eval,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Shard directory with `index.json` (from `webssl shards build`).
    pub dir: PathBuf,
    /// Decode/augment threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed batches (after the warm-up).
    #[arg(long, default_value_t = 8)]
    pub batches: usize,
    /// Untimed warm-up batches (thread start, first shard reads, allocator warm-up).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = Recipe::Dino)]
    pub recipe: Recipe,
    /// Local crops for `--recipe dino`.
    #[arg(long, default_value_t = 8)]
    pub n_local: usize,
    /// Global crop (dino) / view (mae, clip) size.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Local crop size (dino).
    #[arg(long, default_value_t = 98)]
    pub local_size: u32,
    /// Patch size: sets the iBOT / MAE token grid (`size / patch` per side).
    #[arg(long, default_value_t = 14)]
    pub patch: usize,
    /// Logical sampler workers (one reader thread each).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Shuffle buffer per worker, in samples.
    #[arg(long, default_value_t = 256)]
    pub shuffle_buffer: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write every batch (warm-up included) to DIR: `{batch:06}.{array}.npy` for the arrays of
    /// `webssl_data::recipe::batch_arrays` (what the Python `webssl.Loader` yields) and
    /// `{batch:06}.keys.txt`; for comparing other loaders with this one (the timings then include
    /// the writing).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (`None` off Linux).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)` (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100 for the user-space ABI.
    Some((utime + stime) / 100.0)
}

#[derive(serde::Serialize)]
struct Report {
    dir: String,
    recipe: &'static str,
    views: String,
    threads: usize,
    batch_size: usize,
    batches: usize,
    warmup: usize,
    images: usize,
    wall_secs: f64,
    images_per_sec: f64,
    images_per_sec_per_thread: f64,
    cpu_secs: Option<f64>,
    images_per_cpu_sec: Option<f64>,
    busy_secs: f64,
    images_per_busy_sec: f64,
    wait_fraction: f64,
    skipped: u64,
    skipped_first: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.threads == 0 || args.batches == 0 || args.batch_size == 0 {
        bail!("--threads, --batches and --batch-size must be at least 1");
    }
    let kind = match args.recipe {
        Recipe::Dino => RecipeKind::Dino,
        Recipe::Mae => RecipeKind::Mae,
        Recipe::Clip => RecipeKind::Clip,
        Recipe::Eval => RecipeKind::Eval,
    };
    let recipe = LoaderRecipe {
        size: args.size,
        local_size: args.local_size,
        n_local: args.n_local,
        patch: args.patch,
        ..LoaderRecipe::new(kind)
    };
    let (transform, masks) = recipe
        .build()
        .with_context(|| format!("--recipe {}", kind.name()))?;
    let views = transform
        .groups()
        .iter()
        .map(|g| format!("{}x{}", g.count, g.shape.height))
        .collect::<Vec<_>>()
        .join(" + ");
    let source = TarShards::open(&args.dir)
        .with_context(|| format!("opening shards in {}", args.dir.display()))?;
    let mut lcfg = LoaderConfig::new(args.batch_size);
    lcfg.decode_threads = args.threads;
    let scfg = SamplerConfig {
        seed: args.seed,
        num_workers: args.workers.max(1),
        shuffle_buffer: args.shuffle_buffer,
        ..SamplerConfig::default()
    };
    let mut loader = Loader::new(Arc::new(source), scfg, transform, masks, lcfg, None)
        .with_context(|| format!("starting the loader over {}", args.dir.display()))?;

    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let dump = |batch: &Batch| match &args.dump {
        Some(dir) => dump_batch(dir, batch.clone()),
        None => Ok(()),
    };
    for i in 0..args.warmup {
        let batch = loader
            .next_batch()
            .with_context(|| format!("warm-up batch {i}"))?;
        dump(&batch)?;
    }
    let before = loader.stats();
    let cpu0 = process_cpu_secs();
    let t = Instant::now();
    let mut checksum = 0.0f64;
    for i in 0..args.batches {
        let batch = loader
            .next_batch()
            .with_context(|| format!("timed batch {i}"))?;
        dump(&batch)?;
        // Touch the output so the work cannot be skipped, and prove the views are finite.
        checksum += batch
            .views
            .iter()
            .filter_map(|v| v.get(v.len() / 2))
            .map(|x| *x as f64)
            .sum::<f64>();
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu0.zip(process_cpu_secs()).map(|(a, b)| b - a);
    let after = loader.stats();
    drop(loader);
    if !checksum.is_finite() {
        bail!("non-finite values in the collated views");
    }

    let images = args.batches * args.batch_size;
    let busy = after.busy_secs - before.busy_secs;
    let decoded = (after.samples_decoded - before.samples_decoded) as f64;
    let per_sec = images as f64 / wall;
    let report = Report {
        dir: args.dir.display().to_string(),
        recipe: kind.name(),
        views,
        threads: args.threads,
        batch_size: args.batch_size,
        batches: args.batches,
        warmup: args.warmup,
        images,
        wall_secs: wall,
        images_per_sec: per_sec,
        images_per_sec_per_thread: per_sec / args.threads as f64,
        cpu_secs: cpu,
        images_per_cpu_sec: cpu.filter(|c| *c > 0.0).map(|c| images as f64 / c),
        busy_secs: busy,
        images_per_busy_sec: if busy > 0.0 { decoded / busy } else { 0.0 },
        wait_fraction: after.wait_fraction(),
        skipped: after.samples_skipped,
        skipped_first: after
            .skipped
            .iter()
            .take(SHOW_SKIPPED)
            .map(|s| format!("{}: {}", s.what, s.reason))
            .collect(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
        return Ok(());
    }
    println!(
        "shards bench: {} ({}), batch {}, {} decode thread(s), {} timed batches after {} warm-up",
        report.recipe,
        report.views,
        report.batch_size,
        report.threads,
        report.batches,
        report.warmup
    );
    println!(
        "  {:.1} images/s ({} images in {:.2} s), {:.1} images/s per decode thread",
        report.images_per_sec, report.images, report.wall_secs, report.images_per_sec_per_thread
    );
    match (report.cpu_secs, report.images_per_cpu_sec) {
        (Some(c), Some(r)) => println!(
            "  process CPU {c:.2} s: {r:.1} images per CPU-second (all loader threads counted)"
        ),
        _ => println!("  process CPU time: not available on this platform"),
    }
    println!(
        "  loader busy {:.2} thread-s: {:.1} images per busy second (decode + augment); consumer wait {:.0}%",
        report.busy_secs,
        report.images_per_busy_sec,
        report.wait_fraction * 100.0
    );
    println!("  skipped {}", report.skipped);
    for s in &report.skipped_first {
        println!("    {s}");
    }
    Ok(())
}

/// Writes `batch`'s arrays and keys into `dir` (see `--dump`).
fn dump_batch(dir: &std::path::Path, batch: Batch) -> Result<()> {
    let stem = format!("{:06}", batch.index);
    let write = |name: String, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(
        format!("{stem}.keys.txt"),
        (batch.keys.join("\n") + "\n").as_bytes(),
    )?;
    for a in batch_arrays(batch) {
        write(format!("{stem}.{}.npy", a.name), &a.to_npy())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::process_cpu_secs;

    #[test]
    fn cpu_time_parses_and_grows() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let a = process_cpu_secs().expect("/proc/self/stat parses");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = process_cpu_secs().expect("/proc/self/stat parses");
        assert!(a >= 0.0 && b >= a, "cpu time went from {a} to {b}");
    }
}
