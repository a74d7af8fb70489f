//! `webssl curate`: filter image shards with a chain (image checks, exact and near dedup, Light and
//! Heavy text classifiers) into a manifest and optionally new shards; `train-filter` trains the
//! built-in probe classifier, `eval-filter` measures one on labelled images.
//! The work is in `webssl_curate`; this module parses arguments and prints.

use std::path::PathBuf;

use anyhow::{Context, bail};
use webssl_curate::probe::{
    BinaryMetrics, FeatureExtractor, FilterFile, LabelSpec, PROBE_FILE, Pooling, ProbeClassifier,
    ProbeOptions, REPORT_FILE, collect_labelled, fit_probe, roc_auc,
};
use webssl_curate::run::{CurateOptions, Summary, curate};
use webssl_data::decode::DEFAULT_MAX_PIXELS;
use webssl_data::shards::ShardLimits;
use webssl_data::source::resolve_inputs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Inputs: tar shards (brace ranges), shard directories, image folders, file lists.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// The filter chain (TOML, see configs/curate/).
    #[arg(long, required = true)]
    pub filters: Option<PathBuf>,
    /// Output directory: manifest.jsonl, summary.json, state.json (+ shards/ with --reshard).
    #[arg(long, required = true)]
    pub output: Option<PathBuf>,
    /// Also write the kept samples, all members, to OUTPUT/shards with an index.json.
    #[arg(long)]
    pub reshard: bool,
    /// Continue an interrupted run in OUTPUT from its last commit.
    #[arg(long)]
    pub resume: bool,
    /// Commit the manifest at least every N samples.
    #[arg(long, default_value_t = 1024)]
    pub commit_every: usize,
    /// Samples per output shard (--reshard).
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train the built-in classifier (a logistic probe on frozen webssl features) from labelled images.
    TrainFilter(TrainArgs),
    /// Score labelled images with a trained filter and report precision/recall.
    EvalFilter(EvalArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Backbone: an HF directory (e.g. a `webssl pretrain` export/) or a native checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Architecture preset, for native checkpoints.
    #[arg(long)]
    pub arch: Option<String>,
    /// Labelled images: shards (with a json member) or folders (with `folder:` labels).
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// Label: `light` (= meta:has_text), `heavy` (= meta:category=document,chart), `meta:PATH`,
    /// `meta:PATH=V1,V2`, `cls:ID,ID`, `folder:NAME,NAME`.
    #[arg(long)]
    pub label: String,
    /// Output filter directory (filter.toml, probe.safetensors, report.json).
    #[arg(long)]
    pub output: PathBuf,
    /// Filter name (default: the label).
    #[arg(long)]
    pub name: Option<String>,
    /// Square resize to RES instead of the checkpoint's preprocessor.
    #[arg(long)]
    pub resolution: Option<u32>,
    #[arg(long, value_enum, default_value = "cls-patch-mean")]
    pub pooling: PoolingArg,
    /// Share of the labelled samples held out for the precision/recall report.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Decision threshold on P(yes).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many labelled samples.
    #[arg(long)]
    pub max_samples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A filter directory written by `train-filter`.
    #[arg(long)]
    pub filter: PathBuf,
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// Label spec, as for train-filter.
    #[arg(long)]
    pub label: String,
    /// Threshold (default: the filter's).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Write the metrics and per-image scores as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print every image's score.
    #[arg(long)]
    pub show: bool,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PoolingArg {
    Cls,
    ClsPatchMean,
}

fn set_threads(n: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = n {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("--threads: cannot size the thread pool")?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::TrainFilter(a)) => train(a),
        Some(Command::EvalFilter(a)) => eval(a),
        None => run_chain(args.run),
    }
}

fn run_chain(a: RunArgs) -> anyhow::Result<()> {
    set_threads(a.threads)?;
    let (Some(filters), Some(output)) = (a.filters, a.output) else {
        bail!("--filters and --output are required");
    };
    if a.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    let opts = CurateOptions {
        inputs: a.input,
        output: output.clone(),
        reshard: a.reshard,
        resume: a.resume,
        commit_every: a.commit_every,
        shard_limits: ShardLimits {
            max_samples: Some(a.shard_size),
            max_bytes: Some(3_000_000_000),
        },
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}  {elapsed_precise}")
            .context("progress template")?,
    );
    let t0 = std::time::Instant::now();
    let summary = curate(
        &filters,
        &opts,
        &mut |p| {
            let probe = ProbeClassifier::load(&p.path).map_err(|e| {
                webssl_curate::CurateError::Probe(format!("{}: {e}", p.path.display()))
            })?;
            Ok(Box::new(probe))
        },
        &mut |p| {
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} samples ({} kept, {} unreadable)  input {}/{}  {:.1} img/s",
                p.samples,
                p.kept,
                p.unreadable,
                p.input + 1,
                p.inputs,
                p.new_samples as f64 / secs
            ));
            bar.tick();
        },
    )
    .with_context(|| format!("curating into {}", output.display()))?;
    bar.finish_and_clear();
    print_summary(&summary);
    println!(
        "manifest: {}",
        output.join(webssl_curate::run::MANIFEST_FILE).display()
    );
    Ok(())
}

/// The per-filter table.
pub fn print_summary(s: &Summary) {
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    println!(
        "{} samples from {} input(s): {} kept ({:.1}%), {} unreadable",
        s.samples,
        s.inputs,
        s.kept,
        pct(s.kept, s.samples),
        s.unreadable
    );
    println!(
        "{:<16} {:<12} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "filter", "kind", "judged", "kept", "dropped", "errors", "kept%"
    );
    for f in &s.filters {
        println!(
            "{:<16} {:<12} {:>9} {:>9} {:>9} {:>7} {:>6.1}%",
            f.name,
            f.kind,
            f.judged,
            f.kept,
            f.dropped,
            f.errors,
            pct(f.kept, f.judged)
        );
    }
    if let Some(r) = &s.reshard {
        println!(
            "re-sharded {} samples into {} shard(s) in {} ({} skipped)",
            r.samples, r.shards, r.dir, r.skipped
        );
    }
}

fn print_metrics(what: &str, m: &BinaryMetrics, auc: Option<f64>) {
    let auc = auc.map_or("-".to_string(), |a| format!("{a:.3}"));
    println!(
        "{what:<10} n {:>5}  yes {:>5}  threshold {:.2}  precision {:.3}  recall {:.3}  F1 {:.3}  accuracy {:.3}  kept {:.1}%  ROC-AUC {auc}",
        m.n,
        m.positives,
        m.threshold,
        m.precision,
        m.recall,
        m.f1,
        m.accuracy,
        100.0 * m.kept
    );
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    set_threads(a.threads)?;
    let label = LabelSpec::parse(&a.label)?;
    let pooling = match a.pooling {
        PoolingArg::Cls => Pooling::Cls,
        PoolingArg::ClsPatchMean => Pooling::ClsPatchMean,
    };
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold must be in [0, 1]");
    }
    let extractor = FeatureExtractor::load(&a.model, a.arch.as_deref(), a.resolution, pooling)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let inputs = resolve_inputs(&a.input).context("resolving --input")?;
    let bar = indicatif::ProgressBar::new_spinner();
    let t0 = std::time::Instant::now();
    let data = collect_labelled(
        &extractor,
        &inputs,
        &label,
        a.batch_size,
        a.max_samples,
        DEFAULT_MAX_PIXELS,
        &mut |n| {
            bar.set_message(format!("embedded {n} labelled images"));
            bar.tick();
        },
    )?;
    bar.finish_and_clear();
    println!(
        "embedded {} labelled images ({} yes) in {:.1}s; {} unlabelled, {} skipped",
        data.keys.len(),
        data.labels.iter().filter(|&&y| y).count(),
        t0.elapsed().as_secs_f64(),
        data.unlabelled,
        data.skipped.len()
    );
    let opts = ProbeOptions {
        holdout: a.holdout,
        threshold: a.threshold,
        seed: a.seed,
        ..ProbeOptions::default()
    };
    let (probe, report) = fit_probe(&data.features, &data.labels, &opts)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let model = std::path::absolute(&a.model).unwrap_or(a.model.clone());
    let mut file = FilterFile::new(
        a.name.as_deref().unwrap_or(&a.label),
        &a.label,
        &model,
        a.threshold,
    );
    file.arch = a.arch.clone();
    file.resolution = a.resolution;
    file.pooling = pooling;
    probe.save(&a.output.join(PROBE_FILE))?;
    let json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
    webssl_data::shards::write_atomic(a.output.join(REPORT_FILE), &json)?;
    file.save(&a.output)?;
    println!("C = {} (chosen on a 20% split of train)", report.best_c);
    print_metrics("train", &report.train, None);
    print_metrics("held-out", &report.heldout, report.heldout_auc);
    println!("filter -> {}", a.output.display());
    Ok(())
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    set_threads(a.threads)?;
    let label = LabelSpec::parse(&a.label)?;
    let clf = ProbeClassifier::load(&a.filter)
        .with_context(|| format!("loading filter {}", a.filter.display()))?;
    let threshold = a.threshold.unwrap_or(clf.file.threshold);
    let inputs = resolve_inputs(&a.input).context("resolving --input")?;
    let data = collect_labelled(
        &clf.extractor,
        &inputs,
        &label,
        a.batch_size,
        None,
        DEFAULT_MAX_PIXELS,
        &mut |_| {},
    )?;
    if data.keys.is_empty() {
        bail!(
            "no labelled image in --input ({} unlabelled, {} skipped)",
            data.unlabelled,
            data.skipped.len()
        );
    }
    let scores: Vec<f64> = (0..data.features.rows)
        .map(|i| clf.probe.prob(data.features.row(i)))
        .collect();
    let m = BinaryMetrics::compute(&scores, &data.labels, threshold);
    if a.show {
        for ((k, s), y) in data.keys.iter().zip(&scores).zip(&data.labels) {
            println!("{s:.3}  {}  {k}", if *y { "yes" } else { "no " });
        }
    }
    let auc = roc_auc(&scores, &data.labels);
    print_metrics(&clf.file.name, &m, auc);
    if let Some(out) = a.output {
        let json = serde_json::json!({
            "filter": a.filter.display().to_string(),
            "label": a.label,
            "metrics": m,
            "roc_auc": auc,
            "scores": data.keys.iter().zip(&scores).zip(&data.labels)
                .map(|((k, s), y)| serde_json::json!({"key": k, "score": s, "label": y}))
                .collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&json).context("serialising")?;
        webssl_data::shards::write_atomic(&out, &bytes)?;
    }
    Ok(())
}
