//! `webssl embed`: features of a frozen backbone for a set of images.
//!
//! Reads images from folders, WebDataset shards or file lists (in a deterministic order), preprocesses
//! them exactly as the checkpoint's HF image processor (or the webssl demos' square resize), runs the
//! backbone in batches and writes the requested features to one safetensors file (or `.npy` files),
//! with the sample keys in order. Decoding runs on a background thread pool, one batch ahead of the
//! model. Corrupt, truncated, oversized or non-image inputs are skipped, counted and listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use rayon::prelude::*;
use webssl_data::decode::{DEFAULT_MAX_PIXELS, decode_rgb};
use webssl_data::source::{Item, iter_items, resolve_inputs};
use webssl_data::transform::HfBackend;
use webssl_eval::features::{Encoder, Extracted, Feature, Preprocess};
use webssl_models::checkpoint::export::write_atomic;
use webssl_models::{Precision, autocast};

#[derive(clap::Args)]
pub struct Args {
    /// Model: an HF directory (config.json + safetensors) or a native DINOv2/timm safetensors file.
    #[arg(long)]
    pub model: PathBuf,
    /// Architecture preset; required for native checkpoints, checked against config.json otherwise.
    #[arg(long)]
    pub arch: Option<String>,
    /// Images: folders (recursive), single image files, tar shards (brace ranges:
    /// `shard-{000..009}.tar`), a shard directory, or text files listing one image path per line.
    /// Keys with control characters, and a folder's second image with the same key (`a.jpg` and
    /// `a.png`), are skipped and listed, so `keys.txt` has one line per row.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// Output file: `.safetensors`, or `.npy` (one `<stem>.<feature>.npy` each + `<stem>.keys.txt`).
    #[arg(long)]
    pub output: PathBuf,
    /// Features to write: `cls` (normed CLS token `[N, D]`), `patch-mean` (mean of the normed patch
    /// tokens `[N, D]`), `patch-tokens` (all normed patch tokens `[N, P, D]`), `registers` (normed
    /// register tokens `[N, R, D]`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cls,patch-mean",
        value_parser = feature_parser()
    )]
    pub features: Vec<Feature>,
    /// Also write the CLS and mean patch token of each of the last N blocks (after the final norm).
    #[arg(long, default_value_t = 0)]
    pub last_layers: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Worker threads for decoding and the model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Resize every image directly to RES×RES (the webssl demos) instead of the checkpoint's
    /// preprocessor; must be a multiple of the patch size.
    #[arg(long, value_parser = crate::cmd::image_side())]
    pub resolution: Option<u32>,
    /// Preprocessing as transformers computes it with its `pil` image processors
    /// (`BitImageProcessorPil`, `use_fast=False`; the webssl demos) or its `torchvision` ones
    /// (transformers 5's default `BitImageProcessor`: torch's antialiased uint8 resize). Applies
    /// to the checkpoint's preprocessor_config.json and to --resolution.
    #[arg(long, default_value = "pil", value_parser = crate::cmd::preprocess_backend())]
    pub preprocess: HfBackend,
    /// Images with more pixels than this are skipped (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// `f32`, or `bf16`: the model's matrix products in bf16, features still written in f32 (for
    /// GPUs; on the CPU bf16 products are emulated and slower). See `webssl_models::precision`.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// An input that could not be embedded: (what, why).
type Skip = (String, String);
/// A decoded, preprocessed image: (key, `.cls` label, CHW pixels).
type Prepared = (String, Option<i64>, Vec<f32>);

/// One decoded batch, produced ahead of the model.
struct Batch {
    keys: Vec<String>,
    labels: Vec<Option<i64>>,
    pixels: Vec<f32>,
    skipped: Vec<Skip>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("--threads: cannot size the thread pool")?;
    }
    check_writable(&args.output)?;
    let device = crate::device::selected()?;
    let encoder = Encoder::load(
        &args.model,
        args.arch.as_deref(),
        args.resolution,
        args.preprocess,
        &device,
    )
    .with_context(|| format!("loading model {}", args.model.display()))?;
    let cfg = encoder.model().config().clone();
    let (w, h) = encoder.preprocess().size;
    if args.last_layers > cfg.depth {
        bail!(
            "--last-layers {} exceeds the model depth {}",
            args.last_layers,
            cfg.depth
        );
    }
    let inputs = resolve_inputs(&args.input).context("resolving --input")?;
    tracing::info!(
        "model {} ({:?}, {} blocks, dim {}), {} input(s), images {w}x{h}, batch {}, {} products",
        args.model.display(),
        cfg.flavour,
        cfg.depth,
        cfg.embed_dim,
        inputs.len(),
        args.batch_size,
        args.precision
    );

    // The model runs on this thread (decoding on the rayon pool): the switch is thread-local.
    let _precision = autocast(args.precision);
    let (out, skipped, secs) = embed_items(
        &encoder,
        inputs,
        &Options {
            batch_size: args.batch_size,
            max_pixels: args.max_pixels,
            features: args.features.clone(),
            last_layers: args.last_layers,
        },
    )?;
    if out.keys.is_empty() {
        bail!("no image could be embedded ({} skipped)", skipped.len());
    }
    out.write(&args.output, &args.model, (w, h))?;
    println!(
        "embedded {} images ({} skipped) in {:.1}s, {:.1} img/s -> {}",
        out.keys.len(),
        skipped.len(),
        secs,
        out.keys.len() as f64 / secs,
        args.output.display()
    );
    if !skipped.is_empty() {
        println!("skipped:");
        for (what, why) in skipped.iter().take(20) {
            println!("  {what}: {why}");
        }
        if skipped.len() > 20 {
            println!("  ... and {} more", skipped.len() - 20);
        }
    }
    Ok(())
}

/// How [`embed_items`] runs.
pub struct Options {
    pub batch_size: usize,
    pub max_pixels: u64,
    pub features: Vec<Feature>,
    pub last_layers: usize,
}

/// Embeds every image of `inputs` (in order) with `encoder`; returns the features, the skipped items
/// (`what`, `why`) and the wall time. Decoding runs one batch ahead on the rayon pool.
pub fn embed_items(
    encoder: &Encoder,
    inputs: Vec<webssl_data::source::InputSpec>,
    opts: &Options,
) -> anyhow::Result<(Features, Vec<Skip>, f64)> {
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(2);
    let batch_size = opts.batch_size;
    let max_pixels = opts.max_pixels;
    let preprocess = encoder.preprocess().clone();
    let producer = std::thread::spawn(move || {
        let mut items = iter_items(&inputs);
        loop {
            let chunk: Vec<_> = items.by_ref().take(batch_size).collect();
            if chunk.is_empty() {
                break;
            }
            let decoded: Vec<Result<Prepared, Skip>> = chunk
                .into_par_iter()
                .map(|item| match item {
                    Ok(item) => prepare(&item, &preprocess, max_pixels),
                    Err(e) => Err(("input".to_owned(), e.to_string())),
                })
                .collect();
            let mut batch = Batch {
                keys: Vec::new(),
                labels: Vec::new(),
                pixels: Vec::new(),
                skipped: Vec::new(),
            };
            for d in decoded {
                match d {
                    Ok((key, label, px)) => {
                        batch.keys.push(key);
                        batch.labels.push(label);
                        batch.pixels.extend_from_slice(&px);
                    }
                    Err(skip) => batch.skipped.push(skip),
                }
            }
            if tx.send(batch).is_err() {
                break;
            }
        }
    });

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} images  {per_sec}  {elapsed_precise}  {msg}",
        )
        .expect("static template"),
    );
    let start = Instant::now();
    let mut out = Features::default();
    let mut skipped: Vec<Skip> = Vec::new();
    for batch in rx {
        for (what, why) in &batch.skipped {
            tracing::warn!("skipped {what}: {why}");
        }
        skipped.extend(batch.skipped);
        if batch.keys.is_empty() {
            continue;
        }
        let n = batch.keys.len();
        out.add(encoder.extract(batch.pixels, n, &opts.features, opts.last_layers)?);
        out.keys.extend(batch.keys);
        out.labels.extend(batch.labels);
        bar.inc(n as u64);
        bar.set_message(format!("skipped {}", skipped.len()));
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the decoding thread panicked"))?;
    bar.finish_and_clear();
    Ok((out, skipped, start.elapsed().as_secs_f64()))
}

/// Decode + preprocess one item; a failure names the item.
fn prepare(item: &Item, preprocess: &Preprocess, max_pixels: u64) -> Result<Prepared, Skip> {
    let img = decode_rgb(&item.bytes, &item.source, max_pixels)
        .map_err(|e| (item.source.clone(), e.to_string()))?;
    let px = preprocess
        .apply(&img)
        .map_err(|why| (item.source.clone(), why))?;
    Ok((item.key.clone(), item.label, px))
}

/// `--features` names, hyphenated like clap's value enums.
const FEATURE_NAMES: [(&str, Feature); 4] = [
    ("cls", Feature::Cls),
    ("patch-mean", Feature::PatchMean),
    ("patch-tokens", Feature::PatchTokens),
    ("registers", Feature::Registers),
];

fn feature_parser() -> impl TypedValueParser<Value = Feature> {
    PossibleValuesParser::new(FEATURE_NAMES.map(|(name, _)| name)).map(|name| {
        FEATURE_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .expect("one of the possible values")
            .1
    })
}

fn check_writable(output: &Path) -> anyhow::Result<()> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("output directory {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".webssl-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Features of a set of images, in input order.
#[derive(Default)]
pub struct Features {
    pub keys: Vec<String>,
    /// The `.cls` label of each image, when its source has one.
    pub labels: Vec<Option<i64>>,
    /// name -> (per-sample shape, values)
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Features {
    /// Appends a batch's tensors.
    fn add(&mut self, batch: Extracted) {
        for (name, (per_sample, values)) in batch.tensors {
            self.tensors
                .entry(name)
                .or_insert_with(|| (per_sample, Vec::new()))
                .1
                .extend_from_slice(&values);
        }
    }

    fn write(&self, output: &Path, model: &Path, size: (u32, u32)) -> anyhow::Result<()> {
        let n = self.keys.len();
        let shape = |per_sample: &[usize]| [&[n][..], per_sample].concat();
        let is_npy = output.extension().is_some_and(|e| e == "npy");
        if is_npy {
            let stem = output.with_extension("");
            for (name, (s, v)) in &self.tensors {
                let path = PathBuf::from(format!("{}.{name}.npy", stem.display()));
                write_atomic(&path, &npy(&shape(s), v))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let keys = PathBuf::from(format!("{}.keys.txt", stem.display()));
            write_atomic(&keys, (self.keys.join("\n") + "\n").as_bytes())?;
        } else {
            let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = self
                .tensors
                .iter()
                .map(|(k, (s, v))| (k.clone(), shape(s), v.clone()))
                .collect();
            let meta = serde_json::json!({
                "keys": self.keys,
                "model": model.display().to_string(),
                "image_size": [size.1, size.0],
            });
            webssl_models::checkpoint::export::write_safetensors_with_metadata(
                output,
                &tensors,
                &[("webssl", meta.to_string())],
            )
            .with_context(|| format!("writing {}", output.display()))?;
        }
        Ok(())
    }
}

/// NumPy `.npy` of little-endian f32 values.
fn npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    webssl_data::npy::encode("<f4", shape, &bytes)
}
