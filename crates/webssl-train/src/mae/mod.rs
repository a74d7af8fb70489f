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
//! Data-parallel across processes ([`crate::dist`], `webssl launch --nproc N`) as MAE's DDP: each rank
//! its own sample split, gradients averaged over ranks before clipping, lr scaled by the global batch,
//! rank 0 alone writing (see [`train`]); `tests/dist_mae.rs` checks 2 ranks × B against 1 process × 2B.
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

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use webssl_data::augment::SingleViewTransform;
use webssl_data::loader::{Batch, Loader, MaskSpec, SingleView};
use webssl_models::Vit;
use webssl_models::checkpoint::{self, export, store::TensorStore};

pub use crate::run::sections::ensure_synth;
pub use crate::run::state::TrainOutcome;
pub use config::MaeConfig;
use model::MaeModel;

use crate::clip_grad::ParamGrads;
use crate::dist::{Dist, ReduceOp};
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

/// Runs (or resumes) MAE pretraining as configured, as this process's rank of `dist` (one process:
/// [`Dist::single`]). `stop_after` ends this process after that many steps of the schedule have
/// completed (a checkpoint is written there); the next run resumes.
///
/// Data-parallel (training-algorithms.md §7, MAE's DDP `main_pretrain.py`): each rank reads its own
/// split of the sample stream (the sampler's rank split), gradients are averaged over ranks before the
/// optional clipping, the logged loss is the mean over ranks, rank 0 alone writes metrics, checkpoints
/// (holding every rank's loader cursor) and exports, and the lr scales with the global batch
/// `batch_size · world_size`. The masks need no per-rank stream: each sample's mask is drawn from
/// `(seed, "mae", epoch, shard, index)`, so ranks, which read different samples, draw different masks,
/// and a sample is masked the same whatever the world size.
pub fn train(
    cfg: &MaeConfig,
    resolved: &toml::Table,
    resume: Resume,
    device: &Device,
    stop_after: Option<u64>,
    dist: &Dist,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let vit = cfg.vit()?;
    let dec = cfg.decoder()?;
    let (rank, world_size, main) = (dist.rank(), dist.world_size(), dist.is_main());
    let recipe = recipe_hash(resolved);
    dist.check_same(
        "the recipe (config outside [run]/[eval])",
        recipe.as_bytes(),
    )?;
    dist.check_same("the run dir", cfg.run.dir.as_bytes())?;
    let run = RunDir::start_ranked(Path::new(&cfg.run.dir), resolved, dist)?;
    let (shards, data) = cfg.data.open_train_ranked(dist)?;

    let mut trainer = MaeTrainer::new(cfg, world_size, device)?;

    // ---- resume ----
    let ckpts = CheckpointManager::new(&run.path, cfg.run.keep_last);
    let from = resume.resolve(&ckpts)?.map(|(_, dir)| dir);
    let chosen = from
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    dist.check_same("the checkpoint to resume from", chosen.as_bytes())?;
    let mut start_step = 0;
    let mut loader_cursor = None;
    let mut resumed_from = None;
    if let Some(dir) = &from {
        let meta = StateMeta::load_checked(dir, world_size, &recipe, &data)?;
        trainer = trainer.load(dir)?;
        start_step = meta.step;
        loader_cursor = Some(meta.loader_of(rank, dir)?);
        resumed_from = Some(meta.step);
        tracing::info!("resumed from {} (step {})", dir.display(), meta.step);
    }

    // ---- data ----
    let (n_tokens, len_keep) = cfg.tokens()?;
    let mut transform = SingleViewTransform::mae(cfg.crop.size);
    transform.scale = cfg.crop.scale;
    let mut loader = Loader::new(
        Arc::new(shards),
        cfg.data.sampler(cfg.seed, rank, world_size),
        Arc::new(SingleView::new(transform)?),
        MaskSpec::Mae {
            n_tokens,
            mask_ratio: cfg.loss.mask_ratio,
        },
        cfg.data.loader(),
        loader_cursor.as_ref(),
    )?;

    // ---- logging: rank 0 only ----
    let mut metrics = main
        .then(|| MetricsWriter::open(&run.path, start_step))
        .transpose()?;
    let mut events = if cfg.run.tensorboard && main {
        Some(EventWriter::create(&run.path.join("events"))?)
    } else {
        None
    };
    let export_dir = run.path.join("export");
    let preprocessor = export::default_preprocessor(vit.img_size);
    let total = cfg.optim.total_steps;
    let bar = main.then(|| crate::run::progress::Progress::new(start_step, total));
    let started = Instant::now();
    let mut images_done = 0u64;

    tracing::info!(
        "MAE: {} encoder ({} params) + decoder {}x{} ({} params), batch {} × {world_size} process(es), lr {:.3e} (scaled), {} steps, {}px, {} of {} patches visible",
        cfg.model.arch,
        webssl_models::presets::param_count(&vit),
        dec.embed_dim,
        dec.depth,
        dec.param_count(),
        cfg.data.batch_size,
        cfg.scaled_lr(world_size),
        total,
        cfg.crop.size,
        len_keep,
        n_tokens
    );

    let end = stop_after.map_or(total, |s| s.clamp(start_step, total));
    for it in start_step..end {
        let step_start = Instant::now();
        let batch = loader.next_batch()?;
        let b = batch.batch_size;
        let values;
        (trainer, values) = trainer.step(it, &batch, dist)?;
        loader.recycle(batch);
        let val = |name: &str| {
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        images_done += (b * world_size) as u64;

        let step_no = it + 1;
        let stats = loader.stats();
        let step_secs = step_start.elapsed().as_secs_f64();
        let timing = [
            ("img_per_s", (b * world_size) as f64 / step_secs),
            ("loader_wait", stats.wait_fraction()),
            ("samples_skipped", stats.samples_skipped as f64),
        ];
        crate::run::check_finite(step_no, &values)?;
        if let Some(m) = metrics.as_mut() {
            m.write(step_no, &values, &timing)?;
        }
        if let Some(ev) = events.as_mut() {
            for (k, v) in values.iter().chain(timing.iter()) {
                ev.add_scalar(k, *v as f32, step_no as i64)?;
            }
        }
        if let Some(bar) = &bar {
            bar.update(&ProgressUpdate {
                step: step_no,
                terms: &[("loss", val("loss"))],
                lr: val("lr"),
                samples_per_s: images_done as f64 / started.elapsed().as_secs_f64(),
                loader_img_per_s: None,
                loader_wait: Some(stats.wait_fraction()),
            });
        }

        let last = step_no == total;
        if last
            || step_no == end
            || (cfg.run.checkpoint_every_steps > 0 && step_no % cfg.run.checkpoint_every_steps == 0)
        {
            let mut meta = StateMeta {
                step: step_no,
                loader: loader.cursor(),
                world_size,
                recipe: recipe.clone(),
                data: Some(data.clone()),
                samples_seen: step_no * (cfg.data.batch_size * world_size) as u64,
                rank_loaders: Vec::new(),
            };
            meta.gather_loaders(dist)?;
            if main {
                trainer.save(&ckpts, step_no, &meta)?;
            }
            if let Some(m) = metrics.as_mut() {
                m.sync()?;
            }
            if let Some(ev) = events.as_mut() {
                ev.flush()?;
            }
        }
        if main
            && (last
                || (cfg.run.export_every_steps > 0 && step_no % cfg.run.export_every_steps == 0))
        {
            export::export_hf(&trainer.model.encoder, &export_dir, Some(&preprocessor))?;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    if main && start_step >= total && !export_dir.join("model.safetensors").is_file() {
        export::export_hf(&trainer.model.encoder, &export_dir, Some(&preprocessor))?;
    }
    crate::run::warn_skipped(&loader.stats());
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        export_dir,
        steps: end,
        resumed_from,
    })
}

/// The trainable state of an MAE run — encoder, decoder, AdamW moments — and one optimizer step on
/// it. [`train`] feeds it from the loader; the multi-process equivalence test feeds it hand-made
/// batches.
pub struct MaeTrainer<'c> {
    cfg: &'c MaeConfig,
    pub model: MaeModel,
    opt: OptimizerSet,
    /// Parameter ranks by path (weight decay only on ≥ 2-D weights).
    ranks: HashMap<String, usize>,
    /// The peak lr, scaled by the global batch.
    lr_peak: f64,
    patch: usize,
    size: usize,
    len_keep: usize,
    ad: Device,
}

impl<'c> MaeTrainer<'c> {
    /// Fresh state (seeded init) for a run on `world_size` processes (the lr scales with the global
    /// batch).
    pub fn new(cfg: &'c MaeConfig, world_size: usize, device: &Device) -> Result<Self> {
        let vit = cfg.vit()?;
        let ad = device.clone().autodiff();
        let model = MaeModel::new(&vit, &cfg.decoder()?, cfg.seed, &ad)?;
        let (_, len_keep) = cfg.tokens()?;
        Ok(MaeTrainer {
            cfg,
            ranks: param_ranks(&model),
            model,
            opt: OptimizerSet::new(&[OPT], cfg.optim.betas, 1e-8),
            lr_peak: cfg.scaled_lr(world_size),
            patch: vit.patch_size,
            size: cfg.crop.size as usize,
            len_keep,
            ad,
        })
    }

    /// Restores the model and the optimizer moments from a checkpoint directory.
    fn load(mut self, dir: &Path) -> Result<Self> {
        let open = |name: &str| TensorStore::open_file(&dir.join(name)).map_err(TrainError::from);
        self.model =
            checkpoint::assign_named_parameters(self.model, &open("model.safetensors")?, &self.ad)?;
        self.opt.load(&read_all(&open("optim.safetensors")?)?)?;
        Ok(self)
    }

    fn save(&self, ckpts: &CheckpointManager, step: u64, meta: &StateMeta) -> Result<PathBuf> {
        let ser = |tensors: &[(String, Vec<usize>, Vec<f32>)]| tensors_bytes(ckpts, tensors);
        let files: Vec<(&str, Vec<u8>)> = vec![
            (
                "model.safetensors",
                ser(&checkpoint::named_parameters(&self.model))?,
            ),
            ("optim.safetensors", ser(&self.opt.state_tensors())?),
            ("state.json", meta.to_json()),
        ];
        ckpts.save(step, &files)
    }

    /// One optimizer step at schedule position `it` on this rank's `batch` (one view + MAE masks):
    /// forward, loss, backward, gradients averaged over ranks, optional clipping, AdamW. Returns the
    /// logged values; the loss is averaged over ranks (every rank gets the same, so a NaN stops all of
    /// them at once). With equal batches per rank and a fixed number of removed patches per image,
    /// the mean of the ranks' losses is the loss of the global batch, and so are the averaged
    /// gradients.
    pub fn step(
        mut self,
        it: u64,
        batch: &Batch,
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        let o = &self.cfg.optim;
        let lr = mae_lr(self.lr_peak, o.min_lr, it, o.warmup_steps, o.total_steps);
        let b = batch.batch_size;
        let masks = batch
            .mae
            .as_ref()
            .ok_or_else(|| TrainError::config("loss.mask_ratio", "the loader drew no MAE masks"))?;
        let ad = &self.ad;
        let m = loss::MaskTensors::new(masks, ad);
        let view = batch
            .views
            .first()
            .ok_or_else(|| TrainError::config("data", "the batch holds no image view"))?;
        let size = self.size;
        let imgs = Tensor::<4>::from_data(TensorData::new(view.clone(), [b, 3, size, size]), ad);
        let pred = self.model.forward(imgs.clone(), m.ids_keep, m.ids_restore);
        let loss = loss::forward_loss(imgs, pred, m.mask, self.patch, self.cfg.loss.norm_pix_loss);
        let mut loss_value = [scalar(&loss)];
        dist.all_reduce_f64("loss value", &mut loss_value, ReduceOp::Sum);
        let loss_value = loss_value[0] / dist.world_size() as f64;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "loss".into(),
                value: loss_value,
            });
        }
        let mut grads = loss.backward();
        let mut g = ParamGrads::take_from_module(&self.model, &mut grads);
        drop(grads);
        // DDP: the mean over ranks, then (main_pretrain's optional) clipping of the global gradient.
        g.all_reduce_mean(&self.model, dist);
        let grad_norm = g.clip(o.clip_grad);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "grad norm".into(),
                value: grad_norm,
            });
        }
        let ranks = &self.ranks;
        let rule = |name: &str| mae_rule(name, ranks.get(name).copied().unwrap_or(2));
        self.model = self
            .opt
            .get(OPT)
            .step(self.model, &g, lr, lr, o.weight_decay, &rule);
        let values = vec![
            ("loss", loss_value),
            ("lr", lr),
            ("wd", o.weight_decay),
            ("grad_norm", grad_norm),
            ("visible_patches", self.len_keep as f64),
        ];
        Ok((self, values))
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
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
