//! `webssl eval dense`: the dinov2 linear dense probes (`webssl_eval::dense`) on shards with `seg.png` /
//! `depth.png` members (the synthetic generator's layout): frozen final-norm patch tokens at
//! `--size` (exact bicubic resize, labels NEAREST-resized to the same size), a per-token linear head
//! trained with AdamW, scored at that resolution; a [`webssl_eval::results::ProbeResult`] for
//! `webssl report`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use webssl_data::transform::EvalTransform;
use webssl_eval::dense::{self, DEPTH_BINS, DenseConfig, DenseImage, DenseSample, IGNORE_INDEX};
use webssl_eval::features::{Encoder, Feature, Matrix};
use webssl_eval::results::{Metrics, ProbeResult, Sizes};
use webssl_models::{checkpoint, presets};

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
    /// `pil` or `torchvision` resize to --size (as `webssl embed --preprocess --resolution`).
    #[arg(long, default_value = "pil", value_parser = crate::cmd::preprocess_backend())]
    pub preprocess: webssl_data::transform::HfBackend,
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

/// Final-norm patch tokens of one batch of samples: one `[P, D]` matrix each.
fn patch_tokens(
    encoder: &Encoder,
    samples: &[DenseSample],
) -> webssl_eval::error::Result<Vec<Matrix>> {
    let mut px = Vec::with_capacity(samples.len() * samples.first().map_or(0, |s| s.pixels.len()));
    for smp in samples {
        px.extend_from_slice(&smp.pixels);
    }
    let key = Feature::PatchTokens.key();
    let out = encoder.extract(px, samples.len(), &[Feature::PatchTokens], 0)?;
    let (shape, _) = &out.tensors[key];
    (0..out.n)
        .map(|i| Matrix::new(shape[0], shape[1], out.sample(key, i).to_vec()))
        .collect()
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
    let encoder = Encoder::new(
        model,
        EvalTransform::square_with(size, args.preprocess)?,
        &device,
        &args.model.display().to_string(),
    )?;
    let transform = &encoder.preprocess().transform;
    // Pixels are turned into tokens batch by batch; only tokens and label maps are kept.
    let read = |inputs: &[PathBuf], limit: Option<usize>| {
        let mut tokens = Vec::new();
        let mut labels = Vec::new();
        let skipped = dense::for_each_dense_batch(
            inputs,
            member,
            transform,
            size,
            limit,
            args.batch_size,
            &mut |batch| {
                tokens.extend(patch_tokens(&encoder, &batch)?);
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
    let (val_tok, val, skipped_val) = read(&args.val, args.limit_val).context("reading --val")?;
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
                Metrics::from([("miou".into(), sc.miou), ("pixel_acc".into(), sc.pixel_acc)]),
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
                Metrics::from([
                    ("rmse".into(), sc.rmse),
                    ("abs_rel".into(), sc.abs_rel),
                    ("delta1".into(), sc.delta1),
                ]),
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
    let dataset =
        serde_json::json!({"train": show(&args.train), "val": show(&args.val), "member": member});
    let mut r = ProbeResult::new("dense", &args.model.display().to_string(), dataset, metrics);
    r.task = Some(
        match args.task {
            Task::Seg => "seg",
            Task::Depth => "depth",
        }
        .into(),
    );
    r.summary = summary;
    r.protocol = serde_json::json!({
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
    });
    r.sizes = Some(Sizes {
        train: train.len(),
        val: val.len(),
        classes: None,
        train_tokens: Some(y.len()),
    });
    r.details = serde_json::from_value(serde_json::json!({
        "result": extra,
        "skipped": {"train": skipped_train.len(), "val": skipped_val.len()},
        "train_loss": head.final_loss,
        "steps": head.steps,
        "seconds": {"total": start.elapsed().as_secs_f64(), "extract": extract_secs},
    }))?;
    super::probes::write_results(args.output.as_deref(), &r)
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
