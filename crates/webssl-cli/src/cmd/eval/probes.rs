//! `webssl eval knn` / `webssl eval linear`: frozen-feature probes (`webssl_eval::{knn, linear}`).
//!
//! Features come either from `webssl embed` files (`--train-features F --train-labels INPUT...`,
//! labels matched to rows by sample key) or are computed here with `--model DIR --train INPUT...
//! --val INPUT...` through exactly the `webssl embed` code path (the files are kept beside
//! `--output` as `<stem>.train.safetensors` / `<stem>.val.safetensors`, or in `--features-dir`).
//! `fashion-mnist:DIR:SPLIT` inputs (IDX files, e.g. `/usr/share/datasets/fashion-mnist`) are
//! imported to temporary shards first. Results go to `--output` as a
//! [`webssl_eval::results::ProbeResult`] (collected by `webssl report`) and a one-line summary is
//! printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use webssl_eval::features::{
    Feature, FeatureFile, LabelMapping, LabelSpec, Matrix, Split, load_labelled,
};
use webssl_eval::knn::{self, KnnConfig};
use webssl_eval::linear::{self, BlockFeatures, LinearConfig, LogRegConfig, TrainHooks};
use webssl_eval::results::{FeatureFiles, LabelsInfo, Metrics, ProbeResult, Sizes, knn_metrics};

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
    /// With --model: `pil` or `torchvision` preprocessing (as `webssl embed --preprocess`).
    #[arg(long, requires = "model", default_value = "pil", value_parser = crate::cmd::preprocess_backend())]
    pub preprocess: webssl_data::transform::HfBackend,
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
    /// A results file for `method` with this data's model, dataset, labels and feature files.
    fn result(&self, method: &str, metrics: Metrics, dim: Option<usize>) -> ProbeResult {
        let mut r = ProbeResult::new(method, &self.model, self.dataset.as_str(), metrics);
        r.labels = Some(LabelsInfo::new(
            &self.label,
            &self.mapping,
            self.unused_labels,
            self.dropped,
        ));
        r.features = Some(FeatureFiles {
            train: self.train.path.display().to_string(),
            val: self.val.path.display().to_string(),
            dim,
        });
        r
    }

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
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let stem = output
                .and_then(|o| o.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("probe-{}", std::process::id()));
            let tmp =
                std::env::temp_dir().join(format!("webssl-probe-{}-{}", std::process::id(), stem));
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
                    features: vec![Feature::Cls, Feature::PatchMean],
                    last_layers,
                    batch_size: args.embed_batch_size,
                    threads: None,
                    resolution: args.resolution,
                    preprocess: args.preprocess,
                    max_pixels: webssl_data::decode::DEFAULT_MAX_PIXELS,
                    // The probes compare encoders: their features in full precision.
                    precision: webssl_models::Precision::F32,
                })
                .with_context(|| format!("embedding the {split} split with {}", model.display()))?;
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

/// Writes the results to `output` (printed when absent), then prints the summary line.
pub fn write_results(output: Option<&Path>, result: &ProbeResult) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            result.save(path)?;
            println!("results: {}", path.display());
        }
        None => print!("{}", result.to_json()),
    }
    println!("{}", result.summary);
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
    let res =
        knn::evaluate(&train, &val, data.mapping.num_classes, &cfg).context("k-NN evaluation")?;
    let secs = start.elapsed().as_secs_f64();
    let metrics = knn_metrics(&res)?;
    let mut r = data.result("knn", metrics, Some(train.features.cols));
    r.summary = format!(
        "knn: top-1 @k={} = {:.1}% (train {}, val {}, {} classes)",
        r.metrics["k"], r.metrics["top1"], res.n_train, res.n_val, res.num_classes
    );
    r.protocol = serde_json::json!({
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
    });
    r.sizes = Some(Sizes {
        train: res.n_train,
        val: res.n_val,
        classes: Some(res.num_classes),
        train_tokens: None,
    });
    r.details
        .insert("per_k".into(), serde_json::to_value(&res.per_k)?);
    r.details.insert("seconds".into(), secs.into());
    write_results(args.output.as_deref(), &r)
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
    let sizes = |train: usize, val: usize| Sizes {
        train,
        val,
        classes: Some(classes),
        train_tokens: None,
    };
    let mut r = match args.method {
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
            let metrics = Metrics::from([
                ("top1".into(), best.top1),
                ("top5".into(), best.top5),
                ("n_last_blocks".into(), best.n_blocks as f64),
                ("lr".into(), best.lr),
            ]);
            let mut r = data.result("linear", metrics, None);
            r.summary = format!(
                "linear: top-1 = {:.1}% ({}, train {}, val {}, {} classes)",
                best.top1, best.name, res.n_train, res.n_val, classes
            );
            r.protocol = serde_json::json!({
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
            });
            r.sizes = Some(sizes(res.n_train, res.n_val));
            r.details.insert(
                "classifiers".into(),
                serde_json::to_value(&res.classifiers)?,
            );
            r.details.insert("best".into(), serde_json::to_value(best)?);
            r
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
            let metrics = Metrics::from([
                ("top1".into(), res.top1),
                ("top5".into(), res.top5),
                ("C".into(), res.best_c),
            ]);
            let mut r = data.result("logreg", metrics, None);
            r.summary = format!(
                "logreg: top-1 = {:.1}% (C = {:.3e}, train {}, val {}, {} classes)",
                res.top1, res.best_c, res.n_train, res.n_val, classes
            );
            r.protocol = serde_json::json!({
                "name": "dinov2-log-regression",
                "objective": "sum_i CE_i + ||W||^2 / (2C), intercept unpenalised (sklearn/cuML)",
                "solver": "L-BFGS (f64, history 10, Armijo backtracking), warm-started over ascending C",
                "feature": args.feature,
                "selection": res.selection,
                "top5_n": res.top5_n,
            });
            r.sizes = Some(sizes(res.n_train, res.n_val));
            r.details
                .insert("result".into(), serde_json::to_value(&res)?);
            r
        }
    };
    r.details
        .insert("seconds".into(), start.elapsed().as_secs_f64().into());
    write_results(args.output.as_deref(), &r)
}
