//! The MAE / Web-MAE trainer: `webssl pretrain mae`.
//!
//! One step, as `facebookresearch/mae` `main_pretrain.py` + `engine_pretrain.py`
//! (training-algorithms.md §7, webssl-paper.md §4.2): per-step lr (linear warm-up from 0, then
//! half-cosine to `min_lr`) → one RandomResizedCrop(scale 0.2–1) + flip view per image → the loader's
//! per-sample random masks (noise → argsort, `len_keep = int(N · (1 − ratio))`) → encoder on the
//! visible patches → decoder with mask tokens → normalised-pixel MSE on the removed patches →
//! backward → (optional global gradient clipping) → AdamW (0.9, 0.95) with weight decay 0.05 except on
//! 1-D parameters and biases (timm `add_weight_decay`; the fixed sin-cos position tables are not
//! parameters there and carry no gradient here). No EMA: the encoder itself is exported, in HF
//! `ViTModel` layout, at `<run.dir>/export`.
//!
//! Same infrastructure as DINO ([`crate::dino`]): the `[data]`/`[run]`/`[eval]` sections, the same
//! sampler (so DINO, MAE and CLIP runs with one seed and `[data]` read the identical image stream),
//! `StateMeta` with the data identity, atomic checkpoints holding parameters, optimizer moments and
//! the loader cursor; schedules and random streams are functions of `(seed, step)`, so a resumed run
//! continues bit for bit.
//!
//! Deliberate deviations from the reference: fp32 throughout (MAE trains with AMP fp16 and dynamic
//! loss scaling); no gradient accumulation (`accum_iter`); the masking noise comes from the loader's
//! explicit ChaCha stream per sample instead of `torch.rand` on the GPU.

pub mod config;
pub mod loss;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use webssl_data::augment::SingleViewTransform;
use webssl_data::loader::{Loader, MaskSpec, SingleView};
use webssl_models::Vit;
use webssl_models::checkpoint::{self, export, store::TensorStore};

pub use crate::run::sections::ensure_synth;
pub use crate::run::state::TrainOutcome;
pub use config::MaeConfig;
use model::MaeModel;

use crate::clip_grad::ParamGrads;
use crate::error::{Result, TrainError};
use crate::param_groups::{mae_rule, param_ranks};
use crate::run::RunDir;
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::metrics::MetricsWriter;
use crate::run::progress::ProgressUpdate;
use crate::run::state::{OptimizerSet, StateMeta, read_all, recipe_hash, tensors_bytes};
use crate::run::tensorboard::EventWriter;
use crate::schedule::mae_lr;

/// The single optimizer's name in the checkpoint (MAE optimises encoder and decoder as one set).
const OPT: &str = "model";

/// The encoder at step 0 of a run with this config (the "initialisation" row of a kNN comparison).
pub fn init_backbone(cfg: &MaeConfig, device: &Device) -> Result<Vit> {
    MaeModel::initial_encoder(&cfg.vit()?, cfg.seed, device)
}

/// Runs (or resumes) MAE pretraining as configured. `stop_after` ends this process after that many
/// steps of the schedule have completed (a checkpoint is written there); the next run resumes.
pub fn train(
    cfg: &MaeConfig,
    resolved: &toml::Table,
    resume: Resume,
    device: &Device,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let vit = cfg.vit()?;
    let dec = cfg.decoder()?;
    let world_size = 1;
    let run = RunDir::start(Path::new(&cfg.run.dir), resolved)?;
    let (shards, data) = cfg.data.open_train()?;

    let ad = device.clone().autodiff();
    let mut model = MaeModel::new(&vit, &dec, cfg.seed, &ad)?;
    let mut opt = OptimizerSet::new(&[OPT], cfg.optim.betas, 1e-8);
    let recipe = recipe_hash(resolved);

    // ---- resume ----
    let ckpts = CheckpointManager::new(&run.path, cfg.run.keep_last);
    let from = resume.resolve(&ckpts)?.map(|(_, dir)| dir);
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

    // ---- data ----
    let (n_tokens, len_keep) = cfg.tokens()?;
    let mut transform = SingleViewTransform::mae(cfg.crop.size);
    transform.scale = cfg.crop.scale;
    let mut loader = Loader::new(
        Arc::new(shards),
        cfg.data.sampler(cfg.seed, 0, world_size),
        Arc::new(SingleView::new(transform)?),
        MaskSpec::Mae {
            n_tokens,
            mask_ratio: cfg.loss.mask_ratio,
        },
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
    let rule = |name: &str| mae_rule(name, ranks.get(name).copied().unwrap_or(2));
    let lr_peak = cfg.scaled_lr(world_size);
    let o = &cfg.optim;
    let export_dir = run.path.join("export");
    let preprocessor = export::default_preprocessor(vit.img_size);
    let total = o.total_steps;
    let bar = crate::run::progress::Progress::new(start_step, total);
    let started = Instant::now();
    let mut images_done = 0u64;
    let size = cfg.crop.size as usize;
    let p = vit.patch_size;

    tracing::info!(
        "MAE: {} encoder ({} params) + decoder {}x{} ({} params), batch {}, lr {:.3e} (scaled), {} steps, {}px, {} of {} patches visible",
        cfg.model.arch,
        webssl_models::presets::param_count(&vit),
        dec.embed_dim,
        dec.depth,
        dec.param_count(),
        cfg.data.batch_size,
        lr_peak,
        total,
        size,
        len_keep,
        n_tokens
    );

    let end = stop_after.map_or(total, |s| s.clamp(start_step, total));
    for it in start_step..end {
        let step_start = Instant::now();
        let batch = loader.next_batch()?;
        let lr = mae_lr(lr_peak, o.min_lr, it, o.warmup_steps, total);
        let b = batch.batch_size;
        let masks = batch
            .mae
            .as_ref()
            .ok_or_else(|| TrainError::config("loss.mask_ratio", "the loader drew no MAE masks"))?;
        let m = loss::MaskTensors::new(masks, &ad);
        let imgs = Tensor::<4>::from_data(
            TensorData::new(batch.views[0].clone(), [b, 3, size, size]),
            &ad,
        );
        let pred = model.forward(imgs.clone(), m.ids_keep, m.ids_restore);
        let loss = loss::forward_loss(imgs, pred, m.mask, p, cfg.loss.norm_pix_loss);
        let loss_value = scalar(&loss);
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "loss".into(),
                value: loss_value,
            });
        }
        let mut grads = loss.backward();
        let mut g = ParamGrads::take_from_module(&model, &mut grads);
        drop(grads);
        let grad_norm = g.clip(o.clip_grad);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "grad norm".into(),
                value: grad_norm,
            });
        }
        model = opt.get(OPT).step(model, &g, lr, lr, o.weight_decay, &rule);
        images_done += b as u64;

        let step_no = it + 1;
        let stats = loader.stats();
        let step_secs = step_start.elapsed().as_secs_f64();
        let values: Vec<(&str, f64)> = vec![
            ("loss", loss_value),
            ("lr", lr),
            ("wd", o.weight_decay),
            ("grad_norm", grad_norm),
            ("visible_patches", len_keep as f64),
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
            terms: &[("loss", loss_value)],
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
            save_checkpoint(&ckpts, step_no, &model, &opt, &meta)?;
            metrics.sync()?;
            if let Some(ev) = events.as_mut() {
                ev.flush()?;
            }
        }
        if last || (cfg.run.export_every_steps > 0 && step_no % cfg.run.export_every_steps == 0) {
            export::export_hf(&model.encoder, &export_dir, Some(&preprocessor))?;
        }
    }
    bar.finish();
    if start_step >= total && !export_dir.join("model.safetensors").is_file() {
        export::export_hf(&model.encoder, &export_dir, Some(&preprocessor))?;
    }
    crate::run::warn_skipped(&loader.stats());
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        export_dir,
        steps: end,
        resumed_from,
    })
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

fn save_checkpoint(
    ckpts: &CheckpointManager,
    step: u64,
    model: &MaeModel,
    opt: &OptimizerSet,
    meta: &StateMeta,
) -> Result<PathBuf> {
    let ser = |tensors: &[(String, Vec<usize>, Vec<f32>)]| tensors_bytes(ckpts, tensors);
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "model.safetensors",
            ser(&checkpoint::named_parameters(model))?,
        ),
        ("optim.safetensors", ser(&opt.state_tensors())?),
        ("state.json", meta.to_json()),
    ];
    ckpts.save(step, &files)
}

/// What `--dry-run` prints: the recipe in numbers and a per-process memory estimate.
pub struct Plan {
    pub encoder_params: u64,
    pub decoder_params: u64,
    pub global_batch: usize,
    pub scaled_lr: f64,
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub samples_seen: u64,
    pub patches: usize,
    pub visible: usize,
    /// Bytes per process: weights, gradients, AdamW moments (f32).
    pub state_bytes: u64,
    /// Bytes per process: activations kept for backward (estimate, see [`plan`]).
    pub activation_bytes: u64,
}

/// The run's numbers without building anything.
///
/// The activation estimate counts, per transformer block and token, what burn keeps for backward in
/// f32: ~14·width + 2·MLP hidden + heads·tokens (attention probabilities) — the encoder over
/// `1 + visible` tokens, the decoder over `1 + all` tokens.
pub fn plan(cfg: &MaeConfig, world_size: usize) -> Result<Plan> {
    let vit = cfg.vit()?;
    let dec = cfg.decoder()?;
    // The fixed sin-cos table is not trained.
    let encoder_params = webssl_models::presets::param_count(&vit)
        - (1 + vit.num_patches() as u64) * vit.embed_dim as u64;
    let decoder_params = dec.param_count();
    let state_bytes = (encoder_params + decoder_params) * 4 * 4;
    let (n, keep) = cfg.tokens()?;
    let b = cfg.data.batch_size as u64;
    let per_block = |tokens: u64, width: usize, hidden: usize, heads: usize| {
        b * (tokens * (14 * width as u64 + 2 * hidden as u64) + heads as u64 * tokens * tokens)
    };
    let activation_bytes = 4
        * (vit.depth as u64
            * per_block(
                1 + keep as u64,
                vit.embed_dim,
                vit.ffn_hidden(),
                vit.num_heads,
            )
            + dec.depth as u64
                * per_block(1 + n as u64, dec.embed_dim, dec.mlp_hidden(), dec.num_heads));
    let global_batch = cfg.data.batch_size * world_size;
    Ok(Plan {
        encoder_params,
        decoder_params,
        global_batch,
        scaled_lr: cfg.scaled_lr(world_size),
        total_steps: cfg.optim.total_steps,
        warmup_steps: cfg.optim.warmup_steps,
        samples_seen: cfg.optim.total_steps * global_batch as u64,
        patches: n,
        visible: keep,
        state_bytes,
        activation_bytes,
    })
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        writeln!(f, "# plan")?;
        writeln!(
            f,
            "trainable parameters: encoder {} + decoder {} = {}",
            self.encoder_params,
            self.decoder_params,
            self.encoder_params + self.decoder_params
        )?;
        writeln!(
            f,
            "global batch {} · {} steps ({} warm-up) = {} samples seen; lr {:.3e} (linear-scaled)",
            self.global_batch,
            self.total_steps,
            self.warmup_steps,
            self.samples_seen,
            self.scaled_lr
        )?;
        writeln!(
            f,
            "{} of {} patches visible per image",
            self.visible, self.patches
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
