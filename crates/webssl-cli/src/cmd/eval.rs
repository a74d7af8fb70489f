//! `webssl eval ...`: evaluation commands. Each subcommand is one variant of [`Command`] with its own
//! `Args` struct and `run_*` function, so probes (knn, linear, dense) slot in beside `vqa-score`.
//!
//! `vqa-score` scores MLLM answers on the 16 Web-SSL VQA benchmarks with the Cambrian-1 rules
//! (`webssl_eval::vqa`, whose module docs list the annotation schema per benchmark):
//!
//! * one benchmark: `--benchmark NAME --predictions P.jsonl --annotations A.json [--output OUT.json]`
//!   prints the result (and writes the JSON report with `--output`, else prints it);
//! * a directory: `--dir DIR` with `<benchmark>.jsonl` + `<benchmark>.annotations.json(l)` per
//!   benchmark writes `<benchmark>.json` reports and `summary.json` into `--output` (default
//!   `DIR/scores`) and prints the group table (General, Knowledge, OCR & Chart, Vision-Centric,
//!   Average).
//!
//! A question without a prediction counts as wrong and is reported (warning, counts and example ids
//! in the JSON); `--strict` turns that, and predictions for unknown ids, into an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use webssl_eval::vqa::{self, Benchmark, BenchmarkReport, GroupTable, Protocol, ScoreOptions};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Score VQA predictions (JSONL: question_id, prediction) against benchmark annotations.
    VqaScore(VqaScoreArgs),
    /// k-NN classification of frozen features (dinov2 protocol: cosine, top-200, softmax T=0.07).
    Knn(probes::KnnArgs),
    /// Linear probes on frozen features (dinov2 classifier grid, or logistic regression).
    Linear(probes::LinearArgs),
    /// Dense linear probes on frozen patch tokens: segmentation (mIoU) or depth (256 bins, RMSE).
    Dense(dense_probe::DenseArgs),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::VqaScore(args) => run_vqa_score(args),
        Command::Knn(args) => probes::run_knn(args),
        Command::Linear(args) => probes::run_linear(args),
        Command::Dense(args) => dense_probe::run_dense(args),
    }
}

#[derive(clap::Args, Debug)]
pub struct VqaScoreArgs {
    /// Benchmark: mme, mmbench, seed, gqa, sqa, mmmu, mathvista, ai2d, chartqa, ocrbench, textvqa,
    /// docvqa, mmvp, realworldqa, cvbench2d, cvbench3d (aliases such as MME-P, ScienceQA accepted).
    #[arg(long, requires_all = ["predictions", "annotations"], conflicts_with = "dir")]
    pub benchmark: Option<String>,
    /// Predictions JSONL, one {"question_id": .., "prediction": ".."} per line.
    #[arg(long, requires = "benchmark")]
    pub predictions: Option<PathBuf>,
    /// Annotations: JSON array or JSONL, fields per benchmark (see `webssl_eval::vqa::benchmarks`).
    #[arg(long, requires = "benchmark")]
    pub annotations: Option<PathBuf>,
    /// Score every `<benchmark>.jsonl` in this directory (with `<benchmark>.annotations.json(l)`).
    #[arg(long, required_unless_present = "benchmark")]
    pub dir: Option<PathBuf>,
    /// Single benchmark: the JSON report file. With --dir: the report directory (default DIR/scores).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Fail on missing predictions or predictions for ids not in the annotations (default: missing
    /// ones count as wrong and are reported).
    #[arg(long)]
    pub strict: bool,
    /// Scoring rules: `cambrian` (the Web-SSL tables; all 16 benchmarks) or `lmms-eval` (MME, GQA,
    /// ChartQA, TextVQA, DocVQA, CV-Bench 2D/3D only).
    #[arg(long, default_value = "cambrian", value_parser = ["cambrian", "lmms-eval"])]
    pub protocol: String,
}

fn run_vqa_score(args: VqaScoreArgs) -> anyhow::Result<()> {
    let opts = ScoreOptions {
        strict: args.strict,
        protocol: Protocol::from_name(&args.protocol)?,
    };
    match (&args.benchmark, &args.dir) {
        (Some(name), None) => {
            let (Some(preds), Some(anns)) = (&args.predictions, &args.annotations) else {
                bail!("--benchmark needs --predictions and --annotations");
            };
            let b = Benchmark::from_name(name)?;
            let report = vqa::score_files(b, preds, anns, opts).with_context(|| {
                format!(
                    "scoring {b} ({} against {})",
                    preds.display(),
                    anns.display()
                )
            })?;
            let json = serde_json::to_string_pretty(&report)?;
            match &args.output {
                Some(out) => {
                    write_file(out, &json)?;
                    println!("{}", summary_line(&report));
                    println!("report: {}", out.display());
                }
                None => println!("{json}"),
            }
        }
        (None, Some(dir)) => {
            let entries = vqa::discover_dir(dir)
                .with_context(|| format!("looking for predictions in {}", dir.display()))?;
            let out_dir = args.output.clone().unwrap_or_else(|| dir.join("scores"));
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let mut reports = Vec::new();
            for e in &entries {
                let report = vqa::score_files(e.benchmark, &e.predictions, &e.annotations, opts)
                    .with_context(|| {
                        format!(
                            "scoring {} ({} against {})",
                            e.benchmark,
                            e.predictions.display(),
                            e.annotations.display()
                        )
                    })?;
                write_file(
                    &out_dir.join(format!("{}.json", e.benchmark)),
                    &serde_json::to_string_pretty(&report)?,
                )?;
                println!("{}", summary_line(&report));
                reports.push(report);
            }
            let table = GroupTable::new(reports.iter().map(|r| (r.benchmark, r.score)))?;
            let missing: Vec<&str> = Benchmark::ALL
                .iter()
                .filter(|b| !table.scores.contains_key(b))
                .map(|b| b.name())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "{} of 16 benchmarks absent (no overall average): {}",
                    missing.len(),
                    missing.join(", ")
                );
            }
            let summary =
                serde_json::json!({ "reports": reports, "table": table, "absent": missing });
            write_file(
                &out_dir.join("summary.json"),
                &serde_json::to_string_pretty(&summary)?,
            )?;
            println!();
            print!("{}", table.render());
            println!("reports: {}", out_dir.display());
        }
        _ => bail!("give either --benchmark (with --predictions and --annotations) or --dir"),
    }
    Ok(())
}

fn summary_line(r: &BenchmarkReport) -> String {
    let mut s = format!(
        "{:<12} {} = {:.2} ({:.2}%) over {} questions",
        r.display_name, r.metric, r.score, r.score_percent, r.n_scored
    );
    if r.missing_predictions.count > 0 {
        s.push_str(&format!(
            ", {} MISSING predictions counted wrong",
            r.missing_predictions.count
        ));
    }
    if r.unknown_predictions.count > 0 {
        s.push_str(&format!(
            ", {} predictions for unknown ids ignored",
            r.unknown_predictions.count
        ));
    }
    if r.empty_predictions > 0 {
        s.push_str(&format!(", {} empty", r.empty_predictions));
    }
    s
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))
}

/// `webssl eval knn` / `webssl eval linear`: frozen-feature probes (`webssl_eval::{knn, linear}`).
///
/// Features come either from `webssl embed` files (`--train-features F --train-labels INPUT...`,
/// labels matched to rows by sample key) or are computed here with `--model DIR --train INPUT...
/// --val INPUT...` through exactly the `webssl embed` code path (the files are kept beside
/// `--output` as `<stem>.train.safetensors` / `<stem>.val.safetensors`, or in `--features-dir`).
/// `fashion-mnist:DIR:SPLIT` inputs (IDX files, e.g. `/usr/share/datasets/fashion-mnist`) are
/// imported to temporary shards first. Results go to `--output` as JSON
/// (`{"method", "model", "dataset", "metrics", ...}`, collected by `webssl report`) and a one-line
/// summary is printed.
mod probes {
    use std::path::{Path, PathBuf};

    use anyhow::{Context, bail};
    use webssl_eval::features::{
        FeatureFile, LabelMapping, LabelSpec, Matrix, Split, load_labelled,
    };
    use webssl_eval::knn::{self, KnnConfig};
    use webssl_eval::linear::{self, BlockFeatures, LinearConfig, LogRegConfig, TrainHooks};

    use crate::cmd::embed;

    /// Where the features and labels come from (shared by knn and linear).
    #[derive(clap::Args, Debug)]
    pub struct DataArgs {
        /// Train features written by `webssl embed` (.safetensors).
        #[arg(long, requires_all = ["val_features", "train_labels", "val_labels"], conflicts_with = "model")]
        pub train_features: Option<PathBuf>,
        /// Val features written by `webssl embed` (.safetensors).
        #[arg(long, requires = "train_features")]
        pub val_features: Option<PathBuf>,
        /// Labels for --train-features: the inputs the features were embedded from (shards, class
        /// folders); matched to feature rows by sample key.
        #[arg(long, num_args = 1..)]
        pub train_labels: Vec<String>,
        /// Labels for --val-features (as --train-labels).
        #[arg(long, num_args = 1..)]
        pub val_labels: Vec<String>,
        /// Compute the features with this model (HF directory or native safetensors) instead.
        #[arg(long, requires_all = ["train", "val"])]
        pub model: Option<PathBuf>,
        /// Architecture preset for a native checkpoint (as `webssl embed --arch`).
        #[arg(long, requires = "model")]
        pub arch: Option<String>,
        /// Train images for --model: shards, class folders, or `fashion-mnist:DIR:train`.
        #[arg(long, num_args = 1..)]
        pub train: Vec<String>,
        /// Val images for --model (as --train), e.g. `fashion-mnist:DIR:t10k`.
        #[arg(long, num_args = 1..)]
        pub val: Vec<String>,
        /// With --model: resize to RES×RES instead of the checkpoint's preprocessor.
        #[arg(long, requires = "model", value_parser = crate::cmd::image_side())]
        pub resolution: Option<u32>,
        /// With --model: images per forward pass.
        #[arg(long, default_value_t = 32)]
        pub embed_batch_size: usize,
        /// With --model: keep the computed feature files here (default: beside --output).
        #[arg(long)]
        pub features_dir: Option<PathBuf>,
        /// Label: `cls` (the shard `.cls` member / class-folder index) or `meta:PATH` (a field of the
        /// shard json, e.g. `meta:labels.shape`; strings become class ids in sorted order).
        #[arg(long, default_value = "cls")]
        pub label: String,
        /// Evaluate only the feature rows that have a label (dropped rows are counted and
        /// reported); by default any unlabelled row is an error.
        #[arg(long)]
        pub drop_unlabelled: bool,
        /// Dataset name for the results (default: from the train input's file name).
        #[arg(long)]
        pub dataset: Option<String>,
    }

    /// Features and labels of both splits, ready for a probe.
    pub struct ProbeData {
        pub train: FeatureFile,
        pub val: FeatureFile,
        pub train_labels: Vec<usize>,
        pub val_labels: Vec<usize>,
        pub mapping: LabelMapping,
        pub model: String,
        pub dataset: String,
        pub label: String,
        /// Labels read for keys that have no feature row (train, val).
        pub unused_labels: (usize, usize),
        /// Feature rows dropped for lack of a label (train, val; `--drop-unlabelled`).
        pub dropped: (usize, usize),
    }

    impl ProbeData {
        pub fn split(&self, train: Matrix, val: Matrix) -> anyhow::Result<(Split, Split)> {
            Ok((
                Split::new("train", train, self.train_labels.clone())?,
                Split::new("val", val, self.val_labels.clone())?,
            ))
        }
    }

    fn stem_name(s: &str) -> String {
        if s.starts_with("fashion-mnist:") {
            return "fashion-mnist".into();
        }
        let s = s.trim_end_matches('/');
        let name = s.rsplit(['/', ':']).next().unwrap_or(s);
        name.split('.').next().unwrap_or(name).to_owned()
    }

    /// A scratch directory removed when dropped (also on errors).
    struct RemoveOnDrop(Option<PathBuf>);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            if let Some(dir) = &self.0 {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Imports `fashion-mnist:DIR:SPLIT` to shards under `tmp` (other inputs pass through).
    fn materialize(inputs: &[String], tmp: &Path) -> anyhow::Result<Vec<String>> {
        use webssl_data::import::{BuildOptions, Validate, fashion_mnist_items, write_items};
        use webssl_data::shards::{ShardLimits, ShardWriter};
        let mut out = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let Some(rest) = input.strip_prefix("fashion-mnist:") else {
                out.push(input.clone());
                continue;
            };
            let (dir, split) = rest.rsplit_once(':').with_context(|| {
                format!("`{input}`: expected fashion-mnist:DIR:SPLIT (train or t10k)")
            })?;
            let items = fashion_mnist_items(Path::new(dir), split)
                .with_context(|| format!("reading Fashion-MNIST `{split}` from {dir}"))?;
            let shard_dir = tmp.join(format!("fashion-mnist-{split}-{i}"));
            let writer = ShardWriter::create(&shard_dir, "fmnist", ShardLimits::default())?;
            let opts = BuildOptions {
                validate: Validate::None,
                ..Default::default()
            };
            let report = write_items(items, writer, &opts, &mut |_, _| {})?;
            tracing::info!("{input}: {}", report.summary(5));
            out.push(shard_dir.display().to_string());
        }
        Ok(out)
    }

    /// Loads (or computes with --model) the features of both splits and their labels.
    pub fn load(
        args: &DataArgs,
        output: Option<&Path>,
        last_layers: usize,
    ) -> anyhow::Result<ProbeData> {
        let spec: LabelSpec = args.label.parse()?;
        // Shards imported from Fashion-MNIST live until the labels have been read.
        let mut tmp_root = RemoveOnDrop(None);
        let (train_file, val_file, train_inputs, val_inputs) = match (
            &args.train_features,
            &args.val_features,
            &args.model,
        ) {
            (Some(tf), Some(vf), None) => (
                tf.clone(),
                vf.clone(),
                args.train_labels.clone(),
                args.val_labels.clone(),
            ),
            (None, None, Some(model)) => {
                let dir = match (&args.features_dir, output) {
                    (Some(d), _) => d.clone(),
                    (None, Some(o)) => o
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .to_path_buf(),
                    (None, None) => std::env::temp_dir(),
                };
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let stem = output
                    .and_then(|o| o.file_stem())
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("probe-{}", std::process::id()));
                let tmp = std::env::temp_dir().join(format!(
                    "webssl-probe-{}-{}",
                    std::process::id(),
                    stem
                ));
                // The 4-block probes need 4 blocks; a shallower model gives all it has.
                let last_layers = if last_layers > 0 {
                    let arch = args
                        .arch
                        .as_deref()
                        .map(webssl_models::presets::preset)
                        .transpose()?;
                    let depth = webssl_models::checkpoint::load(
                        model,
                        arch.as_ref(),
                        &burn::tensor::Device::flex(),
                    )
                    .with_context(|| format!("loading model {}", model.display()))?
                    .model
                    .config()
                    .depth;
                    last_layers.min(depth)
                } else {
                    0
                };
                tmp_root.0 = Some(tmp.clone());
                let train_inputs = materialize(&args.train, &tmp)?;
                let val_inputs = materialize(&args.val, &tmp)?;
                let mut files = Vec::new();
                for (split, inputs) in [("train", &train_inputs), ("val", &val_inputs)] {
                    let out = dir.join(format!("{stem}.{split}.safetensors"));
                    embed::run(embed::Args {
                        model: model.clone(),
                        arch: args.arch.clone(),
                        input: inputs.clone(),
                        output: out.clone(),
                        features: vec![embed::Feature::Cls, embed::Feature::PatchMean],
                        last_layers,
                        batch_size: args.embed_batch_size,
                        threads: None,
                        resolution: args.resolution,
                        max_pixels: webssl_data::decode::DEFAULT_MAX_PIXELS,
                        // The probes compare encoders: their features in full precision.
                        precision: webssl_models::Precision::F32,
                    })
                    .with_context(|| {
                        format!("embedding the {split} split with {}", model.display())
                    })?;
                    files.push(out);
                }
                (files[0].clone(), files[1].clone(), train_inputs, val_inputs)
            }
            _ => bail!(
                "give either --train-features/--val-features with --train-labels/--val-labels, or --model with --train/--val"
            ),
        };
        let lf = load_labelled(
            &train_file,
            &train_inputs,
            &val_file,
            &val_inputs,
            &spec,
            args.drop_unlabelled,
        )?;
        if lf.skipped.0 + lf.skipped.1 > 0 {
            tracing::warn!(
                "label sources: {} train and {} val samples skipped, e.g. {:?}",
                lf.skipped.0,
                lf.skipped.1,
                lf.skipped_examples
            );
        }
        if lf.dropped.0 + lf.dropped.1 > 0 {
            println!(
                "--drop-unlabelled: {} train and {} val rows without a {spec} label dropped",
                lf.dropped.0, lf.dropped.1
            );
        }
        let mapping = lf.mapping;
        let (train, val) = (lf.train, lf.val);
        if !mapping.names.is_empty() {
            let shown: Vec<String> = mapping
                .names
                .iter()
                .enumerate()
                .take(20)
                .map(|(i, n)| format!("{i}={n}"))
                .collect();
            println!(
                "labels {spec}: {} classes: {}{}",
                mapping.num_classes,
                shown.join(", "),
                if mapping.names.len() > 20 {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        let model = args
            .model
            .as_ref()
            .map(|m| m.display().to_string())
            .or_else(|| train.model.clone())
            .unwrap_or_else(|| "unknown".into());
        let dataset = args.dataset.clone().unwrap_or_else(|| {
            let first = args
                .train
                .first()
                .or(args.train_labels.first())
                .cloned()
                .unwrap_or_default();
            stem_name(&first)
        });
        Ok(ProbeData {
            train,
            val,
            train_labels: lf.train_labels,
            val_labels: lf.val_labels,
            mapping,
            model,
            dataset,
            label: spec.to_string(),
            unused_labels: lf.unused_labels,
            dropped: lf.dropped,
        })
    }

    pub fn write_results(output: Option<&Path>, value: &serde_json::Value) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        match output {
            Some(path) => {
                super::write_file(path, &text)?;
                println!("results: {}", path.display());
            }
            None => println!("{text}"),
        }
        Ok(())
    }

    #[derive(clap::Args, Debug)]
    pub struct KnnArgs {
        #[command(flatten)]
        pub data: DataArgs,
        /// Feature tensor to use (`cls`, `patch_mean`, `layer-2.cls`, ...).
        #[arg(long, default_value = "cls")]
        pub feature: String,
        /// Neighbour counts (each capped at the train size).
        #[arg(long = "k", value_delimiter = ',', default_values_t = knn::DEFAULT_KS)]
        pub ks: Vec<usize>,
        /// Temperature of the softmax vote weights.
        #[arg(long, default_value_t = knn::DEFAULT_TEMPERATURE)]
        pub temperature: f32,
        /// Results JSON file (printed when absent).
        #[arg(long)]
        pub output: Option<PathBuf>,
    }

    pub fn run_knn(args: KnnArgs) -> anyhow::Result<()> {
        let data = load(&args.data, args.output.as_deref(), 0)?;
        let (train, val) = data.split(
            data.train.get(&args.feature)?.clone(),
            data.val.get(&args.feature)?.clone(),
        )?;
        let cfg = KnnConfig {
            ks: args.ks.clone(),
            temperature: args.temperature,
            chunk_rows: 0,
        };
        let start = std::time::Instant::now();
        let res = knn::evaluate(&train, &val, data.mapping.num_classes, &cfg)
            .context("k-NN evaluation")?;
        let secs = start.elapsed().as_secs_f64();
        // The headline k: 20 (dinov2's "usually the best") when scored, else the smallest.
        let head = res
            .at(20)
            .or(res.per_k.first())
            .context("no k was scored")?;
        let mut metrics = serde_json::Map::new();
        metrics.insert("top1".into(), head.top1.into());
        metrics.insert("top5".into(), head.top5.into());
        metrics.insert("k".into(), head.k.into());
        for s in &res.per_k {
            metrics.insert(format!("top1@{}", s.k), s.top1.into());
            metrics.insert(format!("top5@{}", s.k), s.top5.into());
        }
        let summary = format!(
            "knn: top-1 @k={} = {:.1}% (train {}, val {}, {} classes)",
            head.k, head.top1, res.n_train, res.n_val, res.num_classes
        );
        let value = serde_json::json!({
            "method": "knn",
            "model": data.model,
            "dataset": data.dataset,
            "metrics": metrics,
            "protocol": {
                "name": "dinov2-knn",
                "feature": args.feature,
                "normalize": "l2",
                "similarity": "cosine",
                "temperature": res.temperature,
                "ks_requested": args.ks,
                "max_k": res.max_k,
                "weights": "softmax(sims / T) over the max_k neighbours",
                "top5_n": res.top5_n,
                "ties": "neighbours: lower train row first; classes: lower class id first",
            },
            "sizes": {"train": res.n_train, "val": res.n_val, "classes": res.num_classes},
            "labels": {
                "spec": data.label,
                "class_names": data.mapping.names,
                "unused": {"train": data.unused_labels.0, "val": data.unused_labels.1},
                "dropped_unlabelled": {"train": data.dropped.0, "val": data.dropped.1},
            },
            "features": {
                "train": data.train.path.display().to_string(),
                "val": data.val.path.display().to_string(),
                "dim": train.features.cols,
            },
            "per_k": res.per_k,
            "seconds": secs,
            "summary": summary,
        });
        write_results(args.output.as_deref(), &value)?;
        println!("{summary}");
        Ok(())
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum LinearMethod {
        /// dinov2 `linear.py`: the SGD classifier grid (n_last_blocks × avgpool × learning rates).
        Grid,
        /// dinov2 `log_regression.py`: L2 logistic regression, C swept on held-out train.
        Logreg,
    }

    #[derive(clap::Args, Debug)]
    pub struct LinearArgs {
        #[command(flatten)]
        pub data: DataArgs,
        /// Which linear probe.
        #[arg(long, value_enum, default_value = "grid")]
        pub method: LinearMethod,
        /// Grid: numbers of last blocks whose CLS tokens are concatenated (needs an embed file with
        /// `--last-layers N`; values above what the file has are skipped with a warning).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
        pub n_last_blocks: Vec<usize>,
        /// Grid: base learning rates (scaled by batch / 256); default dinov2's 13.
        #[arg(long, value_delimiter = ',', default_values_t = webssl_eval::linear::DINOV2_LEARNING_RATES)]
        pub learning_rates: Vec<f64>,
        /// Grid: batch size.
        #[arg(long, default_value_t = 128)]
        pub batch_size: usize,
        /// Grid: passes over the train features (dinov2: 10 epochs of 1250 iterations).
        #[arg(long, default_value_t = 10)]
        pub epochs: usize,
        /// Grid: iterations per epoch (default ⌈train / batch⌉).
        #[arg(long)]
        pub epoch_length: Option<usize>,
        /// Seed of the classifier init and the sample order (grid) / the held-out split (logreg).
        #[arg(long, default_value_t = 0)]
        pub seed: u64,
        /// Logreg: feature tensor.
        #[arg(long, default_value = "cls")]
        pub feature: String,
        /// Logreg: C values (default dinov2's 10^linspace(-6, 5, 45); 45 fits of up to --max-iter
        /// L-BFGS steps each, slow on CPU at 50k+ samples: pass a few values there).
        #[arg(long, value_delimiter = ',')]
        pub c_values: Vec<f64>,
        /// Logreg: L-BFGS iterations per fit (dinov2 / cuML: 1000).
        #[arg(long, default_value_t = 1000)]
        pub max_iter: usize,
        /// Logreg: choose C on val instead of a held-out 10% of train.
        #[arg(long)]
        pub finetune_on_val: bool,
        /// Results JSON file (printed when absent).
        #[arg(long)]
        pub output: Option<PathBuf>,
    }

    /// The per-block features of a feature file: `layer-k.cls` (k = 1.. as available) and the last
    /// block's `layer-1.patch_mean`; a file without layers gives `cls` / `patch_mean` (the same
    /// tensors as layer 1: the last block after the final norm).
    fn blocks(f: &FeatureFile) -> anyhow::Result<BlockFeatures> {
        let layers = f.last_layers();
        if layers == 0 {
            return Ok(BlockFeatures {
                cls: vec![f.get("cls")?.clone()],
                patch_mean: f.get("patch_mean")?.clone(),
            });
        }
        Ok(BlockFeatures {
            cls: (1..=layers)
                .map(|k| f.get(&format!("layer-{k}.cls")).cloned())
                .collect::<Result<_, _>>()?,
            patch_mean: f.get("layer-1.patch_mean")?.clone(),
        })
    }

    pub fn run_linear(args: LinearArgs) -> anyhow::Result<()> {
        let last_layers = match args.method {
            LinearMethod::Grid => args.n_last_blocks.iter().copied().max().unwrap_or(1),
            LinearMethod::Logreg => 0,
        };
        let data = load(&args.data, args.output.as_deref(), last_layers)?;
        let classes = data.mapping.num_classes;
        let start = std::time::Instant::now();
        let (value, summary) = match args.method {
            LinearMethod::Grid => {
                let train = blocks(&data.train).context("train features")?;
                let val = blocks(&data.val).context("val features")?;
                let avail = train.cls.len().min(val.cls.len());
                let (ok, skipped): (Vec<usize>, Vec<usize>) = args
                    .n_last_blocks
                    .iter()
                    .partition(|&&n| n >= 1 && n <= avail);
                if !skipped.is_empty() {
                    tracing::warn!(
                        "n_last_blocks {skipped:?} skipped: the features have {avail} block(s) (embed with --last-layers {})",
                        skipped.iter().max().copied().unwrap_or(0)
                    );
                }
                if ok.is_empty() {
                    bail!(
                        "none of --n-last-blocks {:?} is available ({avail} block(s) in the features)",
                        args.n_last_blocks
                    );
                }
                let cfg = LinearConfig {
                    n_last_blocks: ok,
                    avgpool: vec![false, true],
                    learning_rates: args.learning_rates.clone(),
                    batch_size: args.batch_size,
                    epochs: args.epochs,
                    epoch_length: args.epoch_length,
                    momentum: 0.9,
                    seed: args.seed,
                };
                let run = linear::train_grid(
                    &train,
                    &data.train_labels,
                    classes,
                    &cfg,
                    &TrainHooks::default(),
                )
                .context("training the linear classifiers")?;
                let res = linear::evaluate_grid(
                    &run,
                    &val,
                    &data.val_labels,
                    classes,
                    data.train_labels.len(),
                    &cfg,
                )
                .context("evaluating the linear classifiers")?;
                let best = res.best();
                let summary = format!(
                    "linear: top-1 = {:.1}% ({}, train {}, val {}, {} classes)",
                    best.top1, best.name, res.n_train, res.n_val, classes
                );
                let value = serde_json::json!({
                    "method": "linear",
                    "model": data.model,
                    "dataset": data.dataset,
                    "metrics": {
                        "top1": best.top1,
                        "top5": best.top5,
                        "best": best.name,
                        "n_last_blocks": best.n_blocks,
                        "avgpool": best.avgpool,
                        "lr": best.lr,
                    },
                    "protocol": {
                        "name": "dinov2-linear",
                        "optimizer": "SGD momentum 0.9, weight decay 0, cosine to 0",
                        "init": "N(0, 0.01^2), bias 0",
                        "lr_scaling": "base * batch / 256",
                        "selection": "first highest val top-1 in grid order",
                        "max_iter": res.max_iter,
                        "epoch_length": res.epoch_length,
                        "config": res.config,
                        "n_last_blocks_skipped": skipped,
                        "top5_n": res.top5_n,
                    },
                    "sizes": {"train": res.n_train, "val": res.n_val, "classes": classes},
                    "classifiers": res.classifiers,
                    "best": best,
                    "summary": summary,
                });
                (value, summary)
            }
            LinearMethod::Logreg => {
                let (train, val) = data.split(
                    data.train.get(&args.feature)?.clone(),
                    data.val.get(&args.feature)?.clone(),
                )?;
                let cfg = LogRegConfig {
                    c_values: if args.c_values.is_empty() {
                        linear::dinov2_c_values()
                    } else {
                        args.c_values.clone()
                    },
                    max_iter: args.max_iter,
                    tol: 1e-12,
                    finetune_on_val: args.finetune_on_val,
                    seed: args.seed,
                };
                let res = linear::logreg_sweep(
                    &train.features,
                    &train.labels,
                    &val.features,
                    &val.labels,
                    classes,
                    &cfg,
                )
                .context("logistic regression")?;
                let summary = format!(
                    "logreg: top-1 = {:.1}% (C = {:.3e}, train {}, val {}, {} classes)",
                    res.top1, res.best_c, res.n_train, res.n_val, classes
                );
                let value = serde_json::json!({
                    "method": "logreg",
                    "model": data.model,
                    "dataset": data.dataset,
                    "metrics": {"top1": res.top1, "top5": res.top5, "C": res.best_c},
                    "protocol": {
                        "name": "dinov2-log-regression",
                        "objective": "sum_i CE_i + ||W||^2 / (2C), intercept unpenalised (sklearn/cuML)",
                        "solver": "L-BFGS (f64, history 10, Armijo backtracking), warm-started over ascending C",
                        "feature": args.feature,
                        "selection": res.selection,
                        "top5_n": res.top5_n,
                    },
                    "sizes": {"train": res.n_train, "val": res.n_val, "classes": classes},
                    "result": res,
                    "summary": summary,
                });
                (value, summary)
            }
        };
        let mut value = value;
        value["seconds"] = start.elapsed().as_secs_f64().into();
        value["labels"] = serde_json::json!({
            "spec": data.label,
            "class_names": data.mapping.names,
            "unused": {"train": data.unused_labels.0, "val": data.unused_labels.1},
            "dropped_unlabelled": {"train": data.dropped.0, "val": data.dropped.1},
        });
        value["features"] = serde_json::json!({
            "train": data.train.path.display().to_string(),
            "val": data.val.path.display().to_string(),
        });
        write_results(args.output.as_deref(), &value)?;
        println!("{summary}");
        Ok(())
    }
}

/// `webssl eval dense`: the dinov2 linear dense probes (`webssl_eval::dense`) on shards with `seg.png` /
/// `depth.png` members (the synthetic generator's layout): frozen final-norm patch tokens at
/// `--size` (exact bicubic resize, labels NEAREST-resized to the same size), a per-token linear head
/// trained with AdamW, scored at that resolution; results JSON for `webssl report`.
mod dense_probe {
    use std::path::PathBuf;

    use anyhow::{Context, bail};
    use burn::tensor::{Device, Tensor, TensorData};
    use webssl_eval::dense::{
        self, DEPTH_BINS, DenseConfig, DenseImage, DenseSample, IGNORE_INDEX,
    };
    use webssl_eval::error::EvalError;
    use webssl_eval::features::Matrix;
    use webssl_models::{Vit, checkpoint, presets};

    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum Task {
        /// Semantic segmentation from `seg.png` (class per pixel, 255 = ignore): mIoU.
        Seg,
        /// Depth from `depth.png` (8-bit bins, 0 … 255 ↔ 0 … max-depth): RMSE, abs-rel, δ<1.25.
        Depth,
    }

    #[derive(clap::Args, Debug)]
    pub struct DenseArgs {
        /// Backbone checkpoint (HF or native layout, as `webssl embed`).
        #[arg(long)]
        pub model: PathBuf,
        /// Architecture preset when the checkpoint has no config.
        #[arg(long)]
        pub arch: Option<String>,
        /// Training shards (directories with `*.tar` shards, or shard files).
        #[arg(long, num_args = 1.., required = true)]
        pub train: Vec<PathBuf>,
        /// Validation shards.
        #[arg(long, num_args = 1.., required = true)]
        pub val: Vec<PathBuf>,
        #[arg(long, value_enum)]
        pub task: Task,
        /// Input resolution (square, a multiple of the patch size); default: the first val image's
        /// size when square and a multiple of the patch size.
        #[arg(long, value_parser = crate::cmd::image_side())]
        pub size: Option<u32>,
        /// Passes over the training tokens.
        #[arg(long, default_value_t = 10)]
        pub epochs: usize,
        /// AdamW peak learning rate (linear decay to 0).
        #[arg(long, default_value_t = 1e-3)]
        pub lr: f64,
        #[arg(long, default_value_t = 1e-4)]
        pub weight_decay: f64,
        /// Tokens per optimisation step.
        #[arg(long, default_value_t = 1024)]
        pub batch_tokens: usize,
        /// Images per backbone forward pass.
        #[arg(long, default_value_t = 32)]
        pub batch_size: usize,
        #[arg(long, default_value_t = 0)]
        pub seed: u64,
        /// Segmentation classes (default: largest label in train/val + 1, 255 excluded).
        #[arg(long)]
        pub num_classes: Option<usize>,
        /// Depth of bin 255 (bin k ↔ k/255 · max-depth).
        #[arg(long, default_value_t = 10.0)]
        pub max_depth: f32,
        /// Use at most this many train / val samples.
        #[arg(long)]
        pub limit_train: Option<usize>,
        #[arg(long)]
        pub limit_val: Option<usize>,
        /// Results JSON file (printed when absent).
        #[arg(long)]
        pub output: Option<PathBuf>,
    }

    /// Final-norm patch tokens of one batch of samples: one `[N, D]` matrix each, and the token grid.
    fn extract(
        model: &Vit,
        samples: &[DenseSample],
        size: u32,
        device: &Device,
    ) -> anyhow::Result<(Vec<Matrix>, (usize, usize))> {
        let p = model.config().patch_size;
        let g = size as usize / p;
        let s = size as usize;
        let n = samples.len();
        let mut px = Vec::with_capacity(n * 3 * s * s);
        for smp in samples {
            px.extend_from_slice(&smp.pixels);
        }
        let x = Tensor::<4>::from_data(TensorData::new(px, [n, 3, s, s]), device);
        let patches = model.forward_features(x, None).patches;
        let [b, t, d] = patches.dims();
        if t != g * g {
            bail!("the model gave {t} patch tokens for a {g}x{g} grid");
        }
        let v = patches
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading patch tokens: {e:?}"))?;
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            out.push(Matrix::new(t, d, v[i * t * d..(i + 1) * t * d].to_vec())?);
        }
        Ok((out, (g, g)))
    }

    pub fn run_dense(args: DenseArgs) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        if args.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let device = crate::device::selected()?;
        let arch = args.arch.as_deref().map(presets::preset).transpose()?;
        let loaded = checkpoint::load(&args.model, arch.as_ref(), &device)
            .with_context(|| format!("loading model {}", args.model.display()))?;
        let model = loaded.model;
        let p = model.config().patch_size as u32;
        let member = match args.task {
            Task::Seg => "seg.png",
            Task::Depth => "depth.png",
        };
        let size = match args.size {
            Some(s) => s,
            None => native_size(&args.val, member).context("choosing --size")?,
        };
        if size == 0 || size % p != 0 {
            bail!("--size {size} is not a positive multiple of the patch size {p}");
        }
        let transform = webssl_data::transform::EvalTransform::square(size);
        // Pixels are turned into tokens batch by batch; only tokens and label maps are kept.
        let read = |inputs: &[PathBuf], limit: Option<usize>| {
            let mut tokens = Vec::new();
            let mut labels = Vec::new();
            let skipped = dense::for_each_dense_batch(
                inputs,
                member,
                &transform,
                size,
                limit,
                args.batch_size,
                &mut |batch| {
                    let (t, _) =
                        extract(&model, &batch, size, &device).map_err(|e| EvalError::Probe {
                            context: "patch tokens".into(),
                            message: format!("{e:#}"),
                        })?;
                    tokens.extend(t);
                    labels.extend(batch.into_iter().map(|s| s.label));
                    Ok(())
                },
            )?;
            anyhow::Ok((tokens, labels, skipped))
        };
        tracing::info!(
            "dense {:?}: reading {member} samples at {size}px and extracting patch tokens",
            args.task
        );
        let (train_tok, train, skipped_train) =
            read(&args.train, args.limit_train).context("reading --train")?;
        let (val_tok, val, skipped_val) =
            read(&args.val, args.limit_val).context("reading --val")?;
        for s in skipped_train.iter().chain(&skipped_val).take(5) {
            tracing::warn!("skipped {}: {}", s.what, s.why);
        }
        if train.is_empty() || val.is_empty() {
            bail!(
                "no usable {member} samples (train {}, val {}; skipped {} + {})",
                train.len(),
                val.len(),
                skipped_train.len(),
                skipped_val.len()
            );
        }
        let p = p as usize;
        let grid = (size as usize / p, size as usize / p);
        let extract_secs = start.elapsed().as_secs_f64();

        let (classes, ignore) = match args.task {
            Task::Seg => {
                let max = train
                    .iter()
                    .chain(&val)
                    .flat_map(|l| l.iter())
                    .filter(|&&v| v != IGNORE_INDEX)
                    .max()
                    .map_or(0, |&m| m as usize + 1);
                let c = args.num_classes.unwrap_or(max);
                if c < max {
                    bail!("--num-classes {c} but the labels go up to {}", max - 1);
                }
                (c, Some(IGNORE_INDEX))
            }
            Task::Depth => (DEPTH_BINS, None),
        };
        let (gh, gw) = grid;
        let s = size as usize;
        let d = train_tok[0].cols;
        let mut x = Vec::with_capacity(train_tok.len() * gh * gw * d);
        let mut y = Vec::with_capacity(train_tok.len() * gh * gw);
        for (t, smp) in train_tok.iter().zip(&train) {
            x.extend_from_slice(&t.data);
            y.extend(dense::resize_nearest(smp, s, s, gh, gw));
        }
        let x = Matrix::new(y.len(), d, x)?;
        let cfg = DenseConfig {
            epochs: args.epochs,
            batch_tokens: args.batch_tokens,
            lr: args.lr,
            weight_decay: args.weight_decay,
            seed: args.seed,
        };
        let head = dense::train_head(&x, &y, classes, ignore, &cfg).context("training the head")?;
        let images: Vec<DenseImage<'_>> = val_tok
            .iter()
            .zip(&val)
            .map(|(t, smp)| DenseImage {
                tokens: t,
                grid,
                label: smp,
                size: (s, s),
            })
            .collect();
        let (metrics, extra, summary) = match args.task {
            Task::Seg => {
                let (sc, bad) = dense::evaluate_seg(&head, &images)?;
                let summary = format!(
                    "dense seg: mIoU = {:.1}%, pixel acc = {:.1}% ({} classes, train {}, val {})",
                    sc.miou,
                    sc.pixel_acc,
                    classes,
                    train.len(),
                    val.len()
                );
                (
                    serde_json::json!({"miou": sc.miou, "pixel_acc": sc.pixel_acc}),
                    serde_json::json!({"per_class_iou": sc.per_class_iou, "pixels": sc.pixels,
                        "pixels_out_of_range": bad, "ignore_index": IGNORE_INDEX}),
                    summary,
                )
            }
            Task::Depth => {
                let sc = dense::evaluate_depth(&head, &images, args.max_depth)?;
                let summary = format!(
                    "dense depth: RMSE = {:.4}, abs-rel = {:.4}, δ1 = {:.1}% (max depth {}, train {}, val {})",
                    sc.rmse,
                    sc.abs_rel,
                    sc.delta1,
                    args.max_depth,
                    train.len(),
                    val.len()
                );
                (
                    serde_json::json!({"rmse": sc.rmse, "abs_rel": sc.abs_rel, "delta1": sc.delta1}),
                    serde_json::json!({"pixels": sc.pixels, "max_depth": args.max_depth, "bins": DEPTH_BINS}),
                    summary,
                )
            }
        };
        let show = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        let value = serde_json::json!({
            "method": "dense",
            "task": match args.task { Task::Seg => "seg", Task::Depth => "depth" },
            "model": args.model.display().to_string(),
            "dataset": {"train": show(&args.train), "val": show(&args.val), "member": member},
            "metrics": metrics,
            "protocol": {
                "name": "dinov2-linear-dense",
                "features": "final-norm patch tokens (frozen)",
                "head": "per-token linear (1x1 conv), no BatchNorm",
                "train_targets": "labels NEAREST-resized to the patch grid",
                "eval": "bilinear (align_corners=False) upsampling to the label size",
                "optimizer": "AdamW, poly (linear) decay to 0, weight decay on W only",
                "size": size,
                "grid": [gh, gw],
                "config": cfg,
                "classes": classes,
            },
            "result": extra,
            "sizes": {"train": train.len(), "val": val.len(), "train_tokens": y.len()},
            "skipped": {"train": skipped_train.len(), "val": skipped_val.len()},
            "train_loss": head.final_loss,
            "steps": head.steps,
            "seconds": {"total": start.elapsed().as_secs_f64(), "extract": extract_secs},
            "summary": summary,
        });
        super::probes::write_results(args.output.as_deref(), &value)?;
        println!("{summary}");
        Ok(())
    }

    /// The side of the first val image with the label member, when square and usable as is.
    fn native_size(val: &[PathBuf], member: &str) -> anyhow::Result<u32> {
        for input in val {
            let files = if input.is_dir() {
                webssl_data::shards::list_shard_files(input)?
            } else {
                vec![input.clone()]
            };
            for f in files {
                for sample in webssl_data::shards::ShardReader::open(&f)? {
                    let sample = sample?;
                    if let Some(bytes) = sample.files.get(member) {
                        let (_, w, h) = dense::decode_label_png(bytes)
                            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", f.display(), sample.key))?;
                        if w != h {
                            bail!("images are {w}x{h}, not square: pass --size");
                        }
                        return Ok(w);
                    }
                }
            }
        }
        bail!("no val sample has a `{member}` member")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("eval").chain(args.iter().copied())).map(|c| c.command)
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn single_benchmark_writes_report() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            r#"[{"question_id": 1, "answer": "(A)", "source": "ADE20K"}, {"question_id": 2, "answer": "(B)", "source": "COCO"}]"#,
        );
        write(
            d.path(),
            "p.jsonl",
            "{\"question_id\": 1, \"prediction\": \"A\"}\n",
        );
        let out = d.path().join("out/r.json");
        let p = d.path().join("p.jsonl");
        let a = d.path().join("a.json");
        let cmd = parse(&[
            "vqa-score",
            "--benchmark",
            "CV-Bench-2D",
            "--predictions",
            p.to_str().unwrap(),
            "--annotations",
            a.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .unwrap();
        run(cmd).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["benchmark"], "cvbench2d");
        assert_eq!(v["score"], 50.0); // ADE 100, COCO 0 (missing prediction)
        assert_eq!(v["missing_predictions"]["count"], 1);

        let strict = parse(&[
            "vqa-score",
            "--benchmark",
            "cvbench2d",
            "--predictions",
            p.to_str().unwrap(),
            "--annotations",
            a.to_str().unwrap(),
            "--strict",
        ])
        .unwrap();
        let e = format!("{:#}", run(strict).unwrap_err());
        assert!(
            e.contains("scoring cvbench2d") && e.contains("--strict"),
            "{e}"
        );

        let bad = parse(&[
            "vqa-score",
            "--benchmark",
            "vqav2",
            "--predictions",
            "x",
            "--annotations",
            "y",
        ])
        .unwrap();
        let e = format!("{:#}", run(bad).unwrap_err());
        assert!(
            e.contains("unknown benchmark") && e.contains("realworldqa"),
            "{e}"
        );
    }

    #[test]
    fn lmms_eval_protocol_is_selectable() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            r#"[{"question_id": 1, "answer": "(A)", "options": ["x", "y"]}]"#,
        );
        write(
            d.path(),
            "p.jsonl",
            "{\"question_id\": 1, \"prediction\": \"x\"}\n",
        );
        let (p, a, out) = (
            d.path().join("p.jsonl"),
            d.path().join("a.json"),
            d.path().join("r.json"),
        );
        let args = |proto: &'static str| {
            parse(&[
                "vqa-score",
                "--benchmark",
                "cvbench3d",
                "--predictions",
                p.to_str().unwrap(),
                "--annotations",
                a.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--protocol",
                proto,
            ])
            .unwrap()
        };
        let score = |proto| {
            run(args(proto)).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            assert_eq!(v["protocol"], proto);
            v["score"].as_f64().unwrap()
        };
        // The answer is the option text: Cambrian (Omni) accepts it, lmms-eval's letter regex reads "X".
        assert_eq!(score("cambrian"), 100.0);
        assert_eq!(score("lmms-eval"), 0.0);
        assert!(parse(&["vqa-score", "--dir", "d", "--protocol", "vlmevalkit"]).is_err());
    }

    #[test]
    fn arguments_are_exclusive() {
        assert!(parse(&["vqa-score"]).is_err());
        assert!(parse(&["vqa-score", "--benchmark", "gqa"]).is_err());
        assert!(
            parse(&[
                "vqa-score",
                "--dir",
                "d",
                "--benchmark",
                "gqa",
                "--predictions",
                "p",
                "--annotations",
                "a"
            ])
            .is_err()
        );
        assert!(parse(&["vqa-score", "--dir", "d"]).is_ok());
    }

    #[test]
    fn directory_form_writes_reports_and_summary() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "gqa.jsonl",
            "{\"question_id\": 1, \"prediction\": \"Yes\"}\n{\"question_id\": 2, \"prediction\": \"no\"}\n",
        );
        write(
            d.path(),
            "gqa.annotations.json",
            r#"[{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "yes"}]"#,
        );
        write(
            d.path(),
            "mme.jsonl",
            "{\"question_id\": \"a\", \"prediction\": \"Yes\"}\n{\"question_id\": \"b\", \"prediction\": \"No\"}\n",
        );
        let mut mme = Vec::new();
        for (i, c) in [
            "existence",
            "count",
            "position",
            "color",
            "posters",
            "celebrity",
            "scene",
            "landmark",
            "artwork",
            "OCR",
        ]
        .iter()
        .enumerate()
        {
            let (q1, q2) = if i == 0 {
                ("a".to_string(), "b".to_string())
            } else {
                (format!("{c}1"), format!("{c}2"))
            };
            mme.push(format!(r#"{{"question_id": "{q1}", "answer": "Yes", "category": "{c}", "image": "{c}.png"}}"#));
            mme.push(format!(r#"{{"question_id": "{q2}", "answer": "No", "category": "{c}", "image": "{c}.png"}}"#));
        }
        write(d.path(), "mme.annotations.jsonl", &mme.join("\n"));
        let cmd = parse(&["vqa-score", "--dir", d.path().to_str().unwrap()]).unwrap();
        run(cmd).unwrap();
        let scores = d.path().join("scores");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(scores.join("summary.json")).unwrap())
                .unwrap();
        // MME: existence 200 (both right), 9 categories with no predictions → 0.
        let mme_report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(scores.join("mme.json")).unwrap())
                .unwrap();
        assert_eq!(mme_report["score"], 200.0);
        assert_eq!(mme_report["score_percent"], 10.0);
        assert_eq!(mme_report["missing_predictions"]["count"], 18);
        assert_eq!(s["table"]["overall"], serde_json::Value::Null);
        assert_eq!(s["absent"].as_array().unwrap().len(), 14);
        let general = &s["table"]["groups"][0];
        assert_eq!(general["present"], 2);
        assert_eq!(general["partial_mean"], 30.0); // (10 + 50) / 2
    }
}
