//! The CLIP control on the same data: `webssl pretrain clip`.
//!
//! One step, as MetaCLIP's `train_one_epoch` (training-algorithms.md §8) at world size 1: schedule
//! (`cosine_lr`: linear warm-up `lr·(step+1)/warmup`, cosine to 0) → image tower on one
//! RandomResizedCrop(scale 0.9–1) view with CLIP normalisation, text tower on the tokenised captions
//! → symmetric InfoNCE with the learnable logit scale → backward → optional global grad-norm clip
//! (off by default, as MetaCLIP) → AdamW (0.9, 0.98, eps 1e-6, wd 0.2 except `ndim < 2` / norms /
//! biases / `logit_scale`) → clamp the logit scale to `[0, ln 100]`.
//!
//! Same data by construction: the loader is built from the shared `[data]` section and seed exactly as
//! the DINO and MAE trainers build theirs, so the three read the identical image stream; the checkpoint
//! records the shard identity and samples seen. Samples without a caption cannot form a pair: they are
//! dropped from the step's batch and counted (`captions_missing` in metrics.jsonl); a step with fewer
//! than two captioned images makes no update (InfoNCE needs negatives).
//!
//! Run directory: checkpoints hold `model.safetensors` (both towers, projections, logit scale),
//! `optim.safetensors`, `tokenizer.json` and `state.json`; at the end the image tower is exported in HF
//! layout to `export/` (for `webssl embed` and the probes), the full model to `clip.safetensors` (both
//! tower configs in `clip_config.json`, read back by [`load_clip`]) and the tokenizer to
//! `tokenizer.json`.
//!
//! Deviations: single process (MetaCLIP all-gathers features with gradient: equal to this loss on the
//! global batch); f32 instead of AMP; the BPE vocabulary is trained on the run's captions unless a
//! `tokenizer.json` is given (see [`tokenizer`]).

pub mod config;
pub mod model;
pub mod tokenizer;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use webssl_data::augment::SingleViewTransform;
use webssl_data::loader::{Loader, MaskSpec, ShardSource, SingleView};
use webssl_models::checkpoint::{self, export, store::TensorStore};
use webssl_models::text::TextConfig;

pub use crate::run::sections::ensure_synth;
pub use crate::run::state::TrainOutcome;
pub use config::ClipConfig;
pub use model::ClipModel;
pub use tokenizer::{ClipTokenizer, TokenBatch};

use crate::clip_grad::ParamGrads;
use crate::error::{Result, TrainError};
use crate::objectives::clip::clip_loss_terms;
use crate::param_groups::{clip_rule, param_ranks};
use crate::run::RunDir;
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::metrics::MetricsWriter;
use crate::run::progress::ProgressUpdate;
use crate::run::state::{OptimizerSet, StateMeta, read_all, recipe_hash, tensors_bytes};
use crate::run::tensorboard::EventWriter;
use crate::schedule::clip_lr;

/// OpenAI CLIP normalisation, written into the exported `preprocessor_config.json`.
const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The first `max` captions in shard-index order (shards 0, 1, … and members in file order): the
/// tokenizer's bounded, deterministic training pass. Unreadable members and samples without a
/// caption are passed over.
pub fn first_captions(shards: &dyn ShardSource, max: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in 0..shards.num_shards() {
        for member in shards.open(s)? {
            if out.len() >= max {
                return Ok(out);
            }
            if let Ok(sample) = member
                && let Some(c) = sample.caption
                && !c.trim().is_empty()
            {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The tokenizer a fresh run uses: the configured `tokenizer.json`, or a BPE trained on the first
/// `text.tokenizer_train_samples` captions of the training shards.
pub fn build_tokenizer(cfg: &ClipConfig, shards: &dyn ShardSource) -> Result<ClipTokenizer> {
    let t = &cfg.text;
    match &t.tokenizer {
        Some(path) => ClipTokenizer::load(Path::new(path), t.context_length),
        None => {
            let captions = first_captions(shards, t.tokenizer_train_samples)?;
            if captions.is_empty() {
                return Err(TrainError::config(
                    "text.tokenizer",
                    format!(
                        "no captions in the training shards `{}` to train a BPE on; give a tokenizer.json",
                        cfg.data.train
                    ),
                ));
            }
            tracing::info!(
                "training a byte-level BPE ({} tokens) on {} captions",
                t.vocab_size,
                captions.len()
            );
            ClipTokenizer::train(captions.into_iter(), t.vocab_size, t.context_length)
        }
    }
}

/// The exported image tower's `preprocessor_config.json`: the DINOv2-style processor at `size` with
/// the CLIP statistics the tower was trained with.
pub fn preprocessor(size: usize) -> serde_json::Value {
    let mut p = export::default_preprocessor(size);
    p["image_mean"] = serde_json::json!(CLIP_MEAN);
    p["image_std"] = serde_json::json!(CLIP_STD);
    p
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

/// Runs (or resumes) CLIP pretraining as configured. `stop_after` ends this process after that many
/// steps of the schedule have completed (a checkpoint is written there); the next run resumes.
pub fn train(
    cfg: &ClipConfig,
    resolved: &toml::Table,
    resume: Resume,
    device: &Device,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let vit = cfg.vit()?;
    let world_size = 1;
    let run = RunDir::start(Path::new(&cfg.run.dir), resolved)?;
    let (shards, data) = cfg.data.open_train()?;
    let recipe = recipe_hash(resolved);
    let ad = device.clone().autodiff();

    // ---- resume point, tokenizer, model ----
    let ckpts = CheckpointManager::new(&run.path, cfg.run.keep_last);
    let from = resume.resolve(&ckpts)?.map(|(_, dir)| dir);
    let tok = match &from {
        // The vocabulary is part of the model: a resumed run uses the checkpoint's own copy.
        Some(dir) => {
            let json = CheckpointManager::load_file(dir, "tokenizer.json")?;
            let json = String::from_utf8(json).map_err(|e| TrainError::Checkpoint {
                path: dir.clone(),
                reason: format!("tokenizer.json: {e}"),
            })?;
            ClipTokenizer::from_json(&json, cfg.text.context_length)?
        }
        None => build_tokenizer(cfg, &shards)?,
    };
    let tok_json = tok.to_json()?;
    crate::run::atomic_write(&run.path.join("tokenizer.json"), tok_json.as_bytes())?;
    let text_cfg = cfg.text_tower(tok.vocab_size())?;
    let mut model = ClipModel::new(&vit, &text_cfg, cfg.clip.logit_scale_init, cfg.seed, &ad)?;
    let mut opt = OptimizerSet::new(&["clip"], cfg.optim.betas, cfg.optim.eps);
    let mut start_step = 0;
    let mut loader_cursor = None;
    let mut resumed_from = None;
    if let Some(dir) = &from {
        let meta = StateMeta::load_checked(dir, world_size, &recipe, &data)?;
        let open = |name: &str| TensorStore::open_file(&dir.join(name)).map_err(TrainError::from);
        model = checkpoint::assign_named_parameters(model, &open("model.safetensors")?, &ad)?;
        opt.load(&read_all(&open("optim.safetensors")?)?)?;
        start_step = meta.step;
        loader_cursor = Some(meta.loader);
        resumed_from = Some(meta.step);
        tracing::info!("resumed from {} (step {})", dir.display(), meta.step);
    }

    // ---- data: the shared stream, one CLIP crop per image ----
    let transform = SingleViewTransform {
        scale: cfg.image.scale,
        ..SingleViewTransform::clip(cfg.image.size)
    };
    let mut loader = Loader::new(
        Arc::new(shards),
        cfg.data.sampler(cfg.seed, 0, world_size),
        Arc::new(SingleView::new(transform)?),
        MaskSpec::None,
        cfg.data.loader(),
        loader_cursor.as_ref(),
    )?;

    // ---- logging ----
    let mut metrics = MetricsWriter::open(&run.path, start_step)?;
    let mut events = if cfg.run.tensorboard {
        Some(EventWriter::create(&run.path.join("events"))?)
    } else {
        None
    };
    let ranks = param_ranks(&model);
    let rule = |name: &str| clip_rule(name, ranks.get(name).copied().unwrap_or(1));
    let export_dir = run.path.join("export");
    let total = cfg.optim.total_steps;
    let bar = crate::run::progress::Progress::new(start_step, total);
    let started = Instant::now();
    let mut images_done = 0u64;
    let size = cfg.image.size as usize;
    tracing::info!(
        "CLIP: image {} ({} params) + text {}×{} ({} params, vocab {}), batch {}, lr {:.3e}, {} steps",
        cfg.model.arch,
        webssl_models::presets::param_count(&vit),
        text_cfg.layers,
        text_cfg.width,
        text_cfg.num_params(),
        text_cfg.vocab_size,
        cfg.data.batch_size,
        cfg.optim.lr,
        total
    );

    let end = stop_after.map_or(total, |s| s.clamp(start_step, total));
    for it in start_step..end {
        let step_start = Instant::now();
        let batch = loader.next_batch()?;
        let b = batch.batch_size;
        let lr = clip_lr(cfg.optim.lr, it, cfg.optim.warmup_steps, total);
        let wd = cfg.optim.weight_decay;

        // Pairs: images with a non-empty caption.
        let keep: Vec<usize> = (0..b)
            .filter(|&i| {
                batch.captions[i]
                    .as_deref()
                    .is_some_and(|c| !c.trim().is_empty())
            })
            .collect();
        let missing = b - keep.len();
        let (mut loss_v, mut i2t, mut t2i, mut grad_norm) = (0.0, 0.0, 0.0, 0.0);
        if keep.len() >= 2 {
            let images = Tensor::<4>::from_data(
                TensorData::new(batch.views[0].clone(), [b, 3, size, size]),
                &ad,
            );
            let images = if keep.len() < b {
                let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
                images.select(
                    0,
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [keep.len()]), &ad),
                )
            } else {
                images
            };
            let captions: Vec<&str> = keep
                .iter()
                .filter_map(|&i| batch.captions[i].as_deref())
                .collect();
            let tokens = tok.encode_batch(&captions)?;
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(tokens.ids.clone(), [tokens.batch, tokens.len]),
                &ad,
            );
            let img_f = model.encode_image(images);
            let txt_f = model.encode_text(ids, &tokens.eot);
            let terms = clip_loss_terms(img_f, txt_f, model.logit_scale.val());
            loss_v = scalar(terms.loss.clone());
            if !loss_v.is_finite() {
                return Err(TrainError::NonFinite {
                    step: it,
                    what: "loss".into(),
                    value: loss_v,
                });
            }
            (i2t, t2i) = (terms.i2t_acc, terms.t2i_acc);
            let grads = terms.loss.backward();
            let mut g = ParamGrads::from_module(&model, &grads);
            grad_norm = if cfg.optim.clip_grad > 0.0 {
                g.clip(cfg.optim.clip_grad)
            } else {
                g.global_norm()
            };
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    step: it,
                    what: "grad norm".into(),
                    value: grad_norm,
                });
            }
            model = opt.get("clip").step(model, &g, lr, lr, wd, &rule);
            model = model.clamp_logit_scale();
        } else {
            tracing::warn!(
                "step {}: only {} of {b} images have a caption; no update",
                it + 1,
                keep.len()
            );
        }
        images_done += b as u64;

        let step_no = it + 1;
        let stats = loader.stats();
        let step_secs = step_start.elapsed().as_secs_f64();
        let t_now = model.logit_scale_value();
        let values: Vec<(&str, f64)> = vec![
            ("loss", loss_v),
            ("i2t_acc", i2t),
            ("t2i_acc", t2i),
            ("logit_scale", t_now),
            ("temperature", (-t_now).exp()),
            ("lr", lr),
            ("wd", wd),
            ("grad_norm", grad_norm),
            ("pairs", keep.len() as f64),
            ("captions_missing", missing as f64),
        ];
        let timing = [
            ("img_per_s", b as f64 / step_secs),
            ("loader_wait", stats.wait_fraction()),
            ("samples_skipped", stats.samples_skipped as f64),
        ];
        crate::run::check_finite(step_no, &values)?;
        metrics.write(step_no, &values, &timing)?;
        if let Some(ev) = events.as_mut() {
            for (k, v) in values.iter().chain(timing.iter()) {
                ev.add_scalar(k, *v as f32, step_no as i64)?;
            }
        }
        bar.update(&ProgressUpdate {
            step: step_no,
            terms: &[("loss", loss_v), ("i2t", i2t), ("scale", t_now.exp())],
            lr,
            samples_per_s: images_done as f64 / started.elapsed().as_secs_f64(),
            loader_img_per_s: None,
            loader_wait: Some(stats.wait_fraction()),
        });

        let last = step_no == total;
        if last
            || step_no == end
            || (cfg.run.checkpoint_every_steps > 0 && step_no % cfg.run.checkpoint_every_steps == 0)
        {
            let meta = StateMeta {
                step: step_no,
                loader: loader.cursor(),
                world_size,
                recipe: recipe.clone(),
                data: Some(data.clone()),
                samples_seen: step_no * (cfg.data.batch_size * world_size) as u64,
                rank_loaders: Vec::new(),
            };
            let ser = |t: &[(String, Vec<usize>, Vec<f32>)]| tensors_bytes(&ckpts, t);
            ckpts.save(
                step_no,
                &[
                    (
                        "model.safetensors",
                        ser(&checkpoint::named_parameters(&model))?,
                    ),
                    ("optim.safetensors", ser(&opt.state_tensors())?),
                    ("tokenizer.json", tok_json.clone().into_bytes()),
                    ("state.json", meta.to_json()),
                ],
            )?;
            metrics.sync()?;
            if let Some(ev) = events.as_mut() {
                ev.flush()?;
            }
        }
        if last || (cfg.run.export_every_steps > 0 && step_no % cfg.run.export_every_steps == 0) {
            save_outputs(&model, &vit, &text_cfg, &run.path, &export_dir)?;
        }
    }
    bar.finish();
    if start_step >= total && !export_dir.join("model.safetensors").is_file() {
        save_outputs(&model, &vit, &text_cfg, &run.path, &export_dir)?;
    }
    crate::run::warn_skipped(&loader.stats());
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        export_dir,
        steps: end,
        resumed_from,
    })
}

/// The image tower in HF layout (`export/`) and the whole model as native safetensors
/// (`clip.safetensors`, both tower configs in `clip_config.json`).
fn save_outputs(
    model: &ClipModel,
    vit: &webssl_models::VitConfig,
    text: &TextConfig,
    run_dir: &Path,
    export_dir: &Path,
) -> Result<()> {
    let visual = model.visual.valid();
    export::export_hf(&visual, export_dir, Some(&preprocessor(vit.img_size)))?;
    // The configs go to a JSON file beside the weights rather than into the safetensors metadata,
    // whose map order is not stable (the file must be byte-identical after a resume).
    let config = serde_json::json!({ "vit": vit, "text": text });
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| TrainError::config("model", format!("serialising the config: {e}")))?;
    crate::run::atomic_write(&run_dir.join("clip_config.json"), &config)?;
    export::write_safetensors(
        &run_dir.join("clip.safetensors"),
        &checkpoint::named_parameters(model),
    )?;
    Ok(())
}

/// What `--dry-run` prints: the recipe in numbers and a per-process memory estimate.
pub struct Plan {
    pub image_params: u64,
    pub text_params: u64,
    /// Both projections and the logit scale.
    pub head_params: u64,
    pub vocab_size: usize,
    /// The vocabulary is the cap of a BPE still to be trained (merges may run out below it).
    pub vocab_is_cap: bool,
    pub global_batch: usize,
    pub lr: f64,
    pub total_steps: u64,
    pub samples_seen: u64,
    /// Bytes per process: weights, gradients, AdamW moments (f32).
    pub state_bytes: u64,
    /// Bytes per process: activations kept for backward (estimate, see [`plan`]).
    pub activation_bytes: u64,
}

/// The run's numbers without building anything. The vocabulary is `text.vocab_size`, or the given
/// `tokenizer.json`'s when it can be read.
///
/// Activations per block and token, f32: ~14·width + 2·mlp hidden + heads·tokens (attention
/// probabilities), for the image tower's `1 + (size/p)²` tokens and the text tower's full context
/// (an upper bound: the trainer cuts each batch after its longest caption).
pub fn plan(cfg: &ClipConfig, world_size: usize) -> Result<Plan> {
    let vit = cfg.vit()?;
    let loaded = cfg
        .text
        .tokenizer
        .as_ref()
        .and_then(|p| ClipTokenizer::load(Path::new(p), cfg.text.context_length).ok());
    let vocab_is_cap = cfg.text.tokenizer.is_none();
    let vocab = loaded.map_or(cfg.text.vocab_size, |t| t.vocab_size());
    let text = cfg.text_tower(vocab)?;
    let image_params = webssl_models::presets::param_count(&vit);
    let text_params = text.num_params();
    let head_params = (vit.embed_dim * text.embed_dim) as u64 + 1;
    let params = image_params + text_params + head_params;
    let b = cfg.data.batch_size as u64;
    let tokens = (cfg.image.size as u64 / vit.patch_size as u64).pow(2) + 1;
    let per_block = |tokens: u64, width: u64, hidden: u64, heads: u64| {
        b * (tokens * (14 * width + 2 * hidden) + heads * tokens * tokens)
    };
    let image_act = vit.depth as u64
        * per_block(
            tokens,
            vit.embed_dim as u64,
            vit.ffn_hidden() as u64,
            vit.num_heads as u64,
        );
    let text_act = text.layers as u64
        * per_block(
            text.context_length as u64,
            text.width as u64,
            text.mlp_hidden() as u64,
            text.heads as u64,
        );
    let global_batch = cfg.data.batch_size * world_size;
    Ok(Plan {
        image_params,
        text_params,
        head_params,
        vocab_size: vocab,
        vocab_is_cap,
        global_batch,
        lr: cfg.optim.lr,
        total_steps: cfg.optim.total_steps,
        samples_seen: cfg.optim.total_steps * global_batch as u64,
        state_bytes: params * 4 * 4,
        activation_bytes: 4 * (image_act + text_act),
    })
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        writeln!(f, "# plan")?;
        writeln!(
            f,
            "parameters: image tower {} + text tower {} (vocab {}{}) + projections/logit scale {} = {}",
            self.image_params,
            self.text_params,
            if self.vocab_is_cap { "≤ " } else { "" },
            self.vocab_size,
            self.head_params,
            self.image_params + self.text_params + self.head_params
        )?;
        writeln!(
            f,
            "global batch {} · {} steps = {} samples seen; lr {:.3e} (warm-up + cosine to 0)",
            self.global_batch, self.total_steps, self.samples_seen, self.lr
        )?;
        write!(
            f,
            "memory per process (f32, estimate): weights+grads+AdamW {:.2} GiB, activations {:.2} GiB, total {:.2} GiB",
            gib(self.state_bytes),
            gib(self.activation_bytes),
            gib(self.state_bytes + self.activation_bytes)
        )
    }
}

/// Reads back the full model a run saved (`<run>/clip.safetensors` with `<run>/clip_config.json`).
pub fn load_clip(run_dir: &Path, device: &Device) -> Result<ClipModel> {
    let path = run_dir.join("clip_config.json");
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    #[derive(serde::Deserialize)]
    struct Configs {
        vit: webssl_models::VitConfig,
        text: TextConfig,
    }
    let c: Configs = serde_json::from_slice(&text)
        .map_err(|e| TrainError::config("clip_config.json", format!("{}: {e}", path.display())))?;
    let fresh = ClipModel::new(&c.vit, &c.text, 0.0, 0, device)?;
    let store = TensorStore::open_file(&run_dir.join("clip.safetensors"))?;
    Ok(checkpoint::assign_named_parameters(fresh, &store, device)?)
}
