//! The MAE / Web-MAE trainer: `webssl pretrain mae`.
//!
//! One step, as `facebookresearch/mae` `main_pretrain.py` + `engine_pretrain.py`
//! (docs/reference/training-algorithms.md §7, docs/reference/webssl-paper.md §4.2): per-step lr (linear
//! warm-up from 0, then half-cosine to `min_lr`) → one RandomResizedCrop(scale 0.2–1) + flip view per image →
//! the loader's per-sample random masks (noise → argsort, `len_keep = int(N · (1 − ratio))`) → encoder on the
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
//! rank 0 alone writing (see `Recipe::train`); `tests/dist_mae.rs` checks 2 ranks × B against 1 process × 2B.
//! `[run] shard_optimizer_state` shards the AdamW moments over the ranks (ZeRO-1, [`crate::zero`]);
//! the loop itself (resume, logging, checkpoints, exports) is [`crate::run::driver`], shared with DINO
//! and CLIP.
//!
//! Deliberate deviations from the reference: fp32 throughout (MAE trains with AMP fp16 and dynamic
//! loss scaling); the masking noise comes from the loader's explicit ChaCha stream per sample
//! instead of `torch.rand` on the GPU. Gradient accumulation (`accum_iter`) is
//! `data.global_batch_size` ([`MaeTrainer::step`]).

pub mod config;
pub mod model;

use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use webssl_data::augment::SingleViewTransform;
use webssl_data::loader::{Batch, MaskSpec, SingleView};
use webssl_models::Vit;
use webssl_models::checkpoint::{self, export, store::TensorStore};
use webssl_models::params::{scalar, trainable_params};

pub use config::MaeConfig;
use model::MaeModel;

use crate::clip_grad::ParamGrads;
use crate::dist::{Dist, ReduceOp};
use crate::error::{Result, TrainError};
use crate::objectives::mae::{MaskTensors, mae_loss};
use crate::optim::OptimizerSet;
use crate::param_groups::{mae_rule, param_ranks};
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::driver::{self, LoopSpec, OPTIM_FILE, TrainState, value};
use crate::run::memory::{MemoryEstimate, saturate};
use crate::run::recipe::{Plan, Recipe};
use crate::run::sections::EvalConfig;
use crate::run::state::{TrainOutcome, read_all, tensors_bytes};
use crate::schedule::mae_lr;
use crate::zero::ZeroShards;

/// The single optimizer's name in the checkpoint (MAE optimises encoder and decoder as one set).
const OPT: &str = "model";

/// The encoder at step 0 of a run with this config (the "initialisation" row of a kNN comparison).
pub fn init_backbone(cfg: &MaeConfig, device: &Device) -> Result<Vit> {
    MaeModel::initial_encoder(&cfg.vit()?, cfg.seed, device)
}

impl Recipe for MaeConfig {
    fn validate(&self) -> Result<()> {
        MaeConfig::validate(self)
    }
    /// The run's numbers without building anything. Memory as DINO's plan counts it (without a
    /// teacher): weights + gradients, the moments over the ZeRO-1 shards, collective buffers, update
    /// temporaries, activations.
    ///
    /// The activation estimate counts, per transformer block and token, what burn keeps for backward in
    /// f32: ~14·width + 2·MLP hidden + heads·tokens (attention probabilities) — the encoder over
    /// `1 + visible` tokens, the decoder over `1 + all` tokens.
    fn plan(&self, world_size: usize) -> Result<Plan> {
        let cfg = self;
        let vit = cfg.vit()?;
        let dec = cfg.decoder()?;
        // The fixed sin-cos table is not trained.
        let encoder_params = webssl_models::presets::param_count(&vit)
            - (1 + vit.num_patches() as u64) * vit.embed_dim as u64;
        let decoder_params = dec.param_count();
        let params = encoder_params + decoder_params;
        let largest = [
            vit.embed_dim * vit.ffn_hidden(),
            vit.embed_dim * dec.embed_dim,
            dec.embed_dim * dec.mlp_hidden(),
            dec.embed_dim * vit.patch_size * vit.patch_size * 3,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64;
        let (n, keep) = cfg.tokens()?;
        // u128: the attention term grows with tokens², beyond u64 for the largest valid configs.
        let layout = cfg.data.layout(world_size)?;
        // Activations are one forward's: its backward frees them before the next.
        let b = layout.micro as u128;
        let per_block = |tokens: u64, width: usize, hidden: usize, heads: usize| {
            let tokens = tokens as u128;
            b * (tokens * (14 * width as u128 + 2 * hidden as u128)
                + heads as u128 * tokens * tokens)
        };
        let activations = saturate(
            4 * (vit.depth as u128
                * per_block(
                    1 + keep as u64,
                    vit.embed_dim,
                    vit.ffn_hidden(),
                    vit.num_heads,
                )
                + dec.depth as u128
                    * per_block(1 + n as u64, dec.embed_dim, dec.mlp_hidden(), dec.num_heads)),
        );
        let o = &cfg.optim;
        Ok(Plan {
            lines: vec![
                format!(
                    "trainable parameters: encoder {encoder_params} + decoder {decoder_params} = {params}"
                ),
                format!(
                    "global batch {layout} · {} steps ({} warm-up) = {} samples seen; lr {:.3e} (linear-scaled)",
                    o.total_steps,
                    o.warmup_steps,
                    o.total_steps * layout.global as u64,
                    cfg.scaled_lr(world_size)
                ),
                format!("{keep} of {n} patches visible per image"),
            ],
            batch: layout,
            memory: MemoryEstimate::adamw(
                params,
                "weights+grads",
                2,
                largest,
                0,
                activations,
                &cfg.run,
                world_size,
            )
            .accumulating(layout.accumulation, params)
            .with_loader(layout.micro, 3 * (cfg.crop.size as u64).pow(2)),
        })
    }
    fn total_steps(&self) -> u64 {
        self.optim.total_steps
    }
    /// Runs (or resumes) MAE pretraining as configured, as this process's rank of `dist` (one process:
    /// [`Dist::single`]). `stop_after` ends this process after that many steps of the schedule have
    /// completed (a checkpoint is written there); the next run resumes.
    ///
    /// Data-parallel (docs/reference/training-algorithms.md §7, MAE's DDP `main_pretrain.py`): each rank
    /// reads its own split of the sample stream (the sampler's rank split), gradients are averaged over ranks
    /// before the optional clipping, the logged loss is the mean over ranks, rank 0 alone writes metrics,
    /// checkpoints (holding every rank's loader cursor) and exports, and the lr scales with the global batch
    /// `batch_size · world_size`. The masks need no per-rank stream: each sample's mask is drawn from
    /// `(seed, "mae", epoch, shard, index)`, so ranks, which read different samples, draw different masks,
    /// and a sample is masked the same whatever the world size.
    fn train(
        &self,
        resolved: &toml::Table,
        resume: Resume,
        device: &Device,
        stop_after: Option<u64>,
        dist: &Dist,
    ) -> Result<TrainOutcome> {
        let cfg = self;
        cfg.preflight(dist.world_size())?;
        let vit = cfg.vit()?;
        let dec = cfg.decoder()?;
        let world_size = dist.world_size();
        let session = driver::start(&cfg.data, &cfg.run, resolved, resume, dist)?;
        let trainer = MaeTrainer::new(cfg, dist, device)?;

        let (n_tokens, len_keep) = cfg.tokens()?;
        let mut transform = SingleViewTransform::mae(cfg.crop.size);
        transform.scale = cfg.crop.scale;
        let total = cfg.optim.total_steps;
        let banner = format!(
            "MAE: {} encoder ({} params) + decoder {}x{} ({} params), batch {} × {world_size} process(es), lr {:.3e} (scaled), {} steps, {}px, {} of {} patches visible",
            cfg.model.arch,
            webssl_models::presets::param_count(&vit),
            dec.embed_dim,
            dec.depth,
            dec.param_count(),
            cfg.data.layout(world_size)?.per_process_text(),
            cfg.scaled_lr(world_size),
            total,
            cfg.crop.size,
            len_keep,
            n_tokens
        );
        let spec = LoopSpec {
            seed: cfg.seed,
            data: &cfg.data,
            run: &cfg.run,
            total_steps: total,
            banner,
            plan_bytes: Some(cfg.plan(world_size)?.memory.total()),
        };
        driver::run(
            session,
            trainer,
            spec,
            Arc::new(SingleView::new(transform)?),
            MaskSpec::Mae {
                n_tokens,
                mask_ratio: cfg.loss.mask_ratio,
            },
            stop_after,
            dist,
        )
    }
    fn exported(&self, outcome: &TrainOutcome) -> String {
        format!("encoder exported to {}", outcome.export_dir.display())
    }
    fn eval(&self) -> &EvalConfig {
        &self.eval
    }
    fn knn_baseline(&self, device: &Device) -> Result<(u32, Vit, &'static str)> {
        Ok((
            self.crop.size,
            init_backbone(self, device)?,
            "trained (MAE)",
        ))
    }
}

/// The trainable state of an MAE run — encoder, decoder, AdamW moments — and one optimizer step on
/// it. `Recipe::train` feeds it from the loader; the multi-process equivalence test feeds it hand-made
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
    /// The encoder's input size (the exported preprocessor's).
    img_size: usize,
    ad: Device,
    /// ZeRO-1 owners when the moments are sharded over ranks.
    zero: Option<ZeroShards>,
}

impl<'c> MaeTrainer<'c> {
    /// Fresh state (seeded init, identical on every rank) for this rank of `dist` (the lr scales with
    /// the global batch; with `run.shard_optimizer_state` on several ranks, this rank keeps the AdamW
    /// moments of its ZeRO-1 share of the parameters).
    pub fn new(cfg: &'c MaeConfig, dist: &Dist, device: &Device) -> Result<Self> {
        let world_size = dist.world_size();
        let vit = cfg.vit()?;
        let ad = device.clone().autodiff();
        let model = MaeModel::new(&vit, &cfg.decoder()?, cfg.seed, &ad)?;
        let (_, len_keep) = cfg.tokens()?;
        let zero = (cfg.run.shard_optimizer_state && world_size > 1)
            .then(|| ZeroShards::new(&[(OPT, trainable_params(&model))], dist));
        Ok(MaeTrainer {
            zero,
            cfg,
            ranks: param_ranks(&model),
            model,
            opt: OptimizerSet::new(&[OPT], cfg.optim.betas, 1e-8),
            lr_peak: cfg.scaled_lr(world_size),
            patch: vit.patch_size,
            size: cfg.crop.size as usize,
            len_keep,
            img_size: vit.img_size,
            ad,
        })
    }

    /// Parameters this rank keeps AdamW moments for (all of them unless sharded with ZeRO-1).
    pub fn optimizer_states(&self) -> usize {
        self.opt.num_states()
    }

    /// Restores the model and the optimizer moments (all of them) from a checkpoint directory.
    fn load(mut self, dir: &Path) -> Result<Self> {
        let open = |name: &str| TensorStore::open_file(&dir.join(name)).map_err(TrainError::from);
        self.model =
            checkpoint::assign_named_parameters(self.model, &open("model.safetensors")?, &self.ad)?;
        self.opt.load(&read_all(&open(OPTIM_FILE)?)?)?;
        Ok(self)
    }

    /// One optimizer step at schedule position `it` on this rank's `batches` (one view + MAE masks):
    /// forward, loss, backward, gradients averaged over ranks, optional clipping, AdamW. Returns the
    /// logged values; the loss is averaged over ranks (every rank gets the same, so a NaN stops all of
    /// them at once). With equal batches per rank and a fixed number of removed patches per image,
    /// the mean of the ranks' losses is the loss of the global batch, and so are the averaged
    /// gradients.
    ///
    /// Each of `batches` is one forward and backward (several: gradient accumulation, MAE's
    /// `accum_iter`), and the update follows on the mean of their gradients. The loss is a mean over
    /// images with the same number of removed patches each, so `k` forwards of `B/k` images take
    /// the step of one forward of `B` (up to summation order; `tests/mae_resume.rs`).
    pub fn step(
        mut self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        let o = &self.cfg.optim;
        let lr = mae_lr(self.lr_peak, o.min_lr, it, o.warmup_steps, o.total_steps);
        let mut loss_sum = None;
        let mut acc: Option<ParamGrads> = None;
        for batch in batches {
            let b = batch.batch_size;
            let masks = batch.mae.as_ref().ok_or_else(|| {
                TrainError::config("loss.mask_ratio", "the loader drew no MAE masks")
            })?;
            let ad = &self.ad;
            let m = MaskTensors::new(masks, ad);
            let view = batch
                .views
                .first()
                .ok_or_else(|| TrainError::config("data", "the batch holds no image view"))?;
            let size = self.size;
            let imgs =
                Tensor::<4>::from_data(TensorData::new(view.clone(), [b, 3, size, size]), ad);
            let pred = self.model.forward(imgs.clone(), m.ids_keep, m.ids_restore);
            let loss = mae_loss(imgs, pred, m.mask, self.patch, self.cfg.loss.norm_pix_loss);
            let value = scalar(loss.clone());
            loss_sum = Some(loss_sum.map_or(value, |s: f64| s + value));
            let mut grads = loss.backward();
            let g = ParamGrads::take_from_module(&self.model, &mut grads);
            drop(grads);
            match acc.as_mut() {
                None => acc = Some(g),
                Some(a) => a.accumulate(g),
            }
        }
        let (Some(loss_sum), Some(mut g)) = (loss_sum, acc) else {
            return Err(TrainError::config(
                "data.batch_size",
                "an optimizer step got no batch",
            ));
        };
        let mut loss_value = [loss_sum];
        dist.all_reduce_f64("loss value", &mut loss_value, ReduceOp::Sum);
        let loss_value = loss_value[0] / (dist.world_size() as f64 * batches.len() as f64);
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "loss".into(),
                value: loss_value,
            });
        }
        g.mean_over(batches.len());
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
        if let Some(z) = &self.zero {
            // Clipped on the whole averaged gradient above; now each rank steps its own share.
            z.keep_owned(OPT, &mut g);
        }
        let ranks = &self.ranks;
        let rule = |name: &str| mae_rule(name, ranks.get(name).copied().unwrap_or(2));
        self.model = self
            .opt
            .get(OPT)
            .step(self.model, &g, lr, lr, o.weight_decay, &rule);
        if let Some(z) = &self.zero {
            self.model = z.sync(OPT, self.model, dist);
        }
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

impl TrainState for MaeTrainer<'_> {
    fn step(
        self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        MaeTrainer::step(self, it, batches, dist)
    }

    fn load(self, dir: &Path) -> Result<Self> {
        MaeTrainer::load(self, dir)
    }

    fn optimizer(&mut self) -> (&mut OptimizerSet, Option<&ZeroShards>) {
        (&mut self.opt, self.zero.as_ref())
    }

    fn checkpoint_files(&self) -> Vec<&'static str> {
        vec!["model.safetensors", OPTIM_FILE]
    }

    fn checkpoint_file(&self, name: &str, ckpts: &CheckpointManager) -> Result<Vec<u8>> {
        match name {
            "model.safetensors" => tensors_bytes(ckpts, &checkpoint::named_parameters(&self.model)),
            other => unreachable!("not an MAE checkpoint file: {other}"),
        }
    }

    fn export(&self, _run_dir: &Path, export_dir: &Path) -> Result<()> {
        let preprocessor = export::default_preprocessor(self.img_size);
        export::export_hf(&self.model.encoder, export_dir, Some(&preprocessor))?;
        Ok(())
    }

    fn progress_terms(&self, values: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        vec![("loss", value(values, "loss"))]
    }
}
