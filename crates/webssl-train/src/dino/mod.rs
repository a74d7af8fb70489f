//! The DINOv2 / Web-DINO trainer: `webssl pretrain dino`.
//!
//! One step, as dinov2's `train.py` + `SSLMetaArch` (docs/reference/training-algorithms.md §0, §5.4):
//! schedules → teacher targets (Sinkhorn-Knopp or centering) → student forward on masked global and local
//! crops → DINO + iBOT + KoLeo → backward → per-module gradient clipping (backbone, DINO head, iBOT head) →
//! decoupled AdamW with per-parameter lr/wd (layer decay, patch-embed ×0.2, last-layer freeze, no decay
//! on biases/norms/LayerScale) → EMA teacher update. Everything random derives from the run seed, the
//! loader cursor is part of the checkpoint, and schedules are functions of the step, so a resumed run
//! continues bit for bit.
//!
//! The loop around the step (resume, loader, logging, checkpoints, exports, memory report) is
//! [`crate::run::driver`], shared with MAE and CLIP; [`DinoTrainer`] is the state it drives, with the
//! AdamW moments sharded over ranks under `[run] shard_optimizer_state` (ZeRO-1, [`crate::zero`]).

pub mod config;
pub mod model;
mod step;

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Device;
use webssl_data::augment::{DinoAugConfig, DinoAugment};
use webssl_data::loader::{Batch, DinoViews, MaskSpec};
use webssl_data::masks::{IbotMaskConfig, MaskingGenerator};
use webssl_data::sampler::rng_stream;
use webssl_models::Vit;
use webssl_models::checkpoint::{self, export, store::TensorStore};
use webssl_models::params::{scalar, trainable_params};

pub use config::DinoConfig;
use model::DinoModel;

use crate::clip_grad::ParamGrads;
use crate::dist::{Dist, ReduceOp};
use crate::ema::ema_update;
use crate::error::{Result, TrainError};
use crate::objectives::Centering as CenterState;
use crate::optim::OptimizerSet;
use crate::param_groups::dinov2_rule;
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::driver::{self, LoopSpec, OPTIM_FILE, TrainState, value};
use crate::run::memory::{MemoryEstimate, saturate};
use crate::run::recipe::{Plan, Recipe};
use crate::run::sections::EvalConfig;
use crate::run::state::{TrainOutcome, read_all, tensors_bytes};
use crate::schedule::CosineSchedule;
use crate::zero::ZeroShards;

/// All per-step schedules (§5.2), functions of the step only.
struct Schedules {
    lr: CosineSchedule,
    last_layer_lr: CosineSchedule,
    wd: CosineSchedule,
    momentum: CosineSchedule,
    teacher_temp: CosineSchedule,
}

impl Schedules {
    fn new(cfg: &DinoConfig, world_size: usize) -> Self {
        let o = &cfg.optim;
        let lr = cfg.scaled_lr(world_size);
        let total = o.total_steps;
        let tt = cfg.loss.teacher_temp_warmup_steps.min(total);
        Schedules {
            lr: CosineSchedule::new(lr, o.min_lr, total, o.warmup_steps, 0.0, 0),
            last_layer_lr: CosineSchedule::new(
                lr,
                o.min_lr,
                total,
                o.warmup_steps,
                0.0,
                o.freeze_last_layer_steps,
            ),
            wd: CosineSchedule::new(o.weight_decay, o.weight_decay_end, total, 0, 0.0, 0),
            momentum: CosineSchedule::new(
                o.momentum_teacher,
                o.final_momentum_teacher,
                total,
                0,
                0.0,
                0,
            ),
            teacher_temp: CosineSchedule::linear_ramp(
                cfg.loss.warmup_teacher_temp,
                cfg.loss.teacher_temp,
                tt,
            ),
        }
    }
}

impl Recipe for DinoConfig {
    fn validate(&self) -> Result<()> {
        DinoConfig::validate(self)
    }
    /// The run's numbers without building anything. Memory: student weights and gradients and the
    /// teacher replicated, the moments over the ZeRO-1 shards, collective buffers, update temporaries
    /// (one more copy of the parameters for clipping, AdamW and the EMA update, and three copies of the
    /// weight-normalised prototype layers: the normalised weight in the student's and the teacher's
    /// forward and its gradient), activations.
    ///
    /// The activation estimate counts, per transformer block and token, the tensors burn keeps for backward
    /// in f32: ~14·D (norm inputs/outputs, q/k/v, attention output, residuals) + 2·hidden (FFN) + the
    /// attention probabilities heads·tokens — summed over the student's global and local crops.
    fn plan(&self, world_size: usize) -> Result<Plan> {
        let cfg = self;
        let vit = cfg.vit()?;
        let backbone = webssl_models::presets::param_count(&vit);
        let h = &cfg.heads;
        let mut heads = head_params(
            vit.embed_dim,
            h.hidden_dim,
            h.dino_bottleneck_dim,
            h.dino_prototypes,
        );
        if h.ibot_separate_head {
            heads += head_params(
                vit.embed_dim,
                h.hidden_dim,
                h.ibot_bottleneck_dim,
                h.ibot_prototypes,
            );
        }
        let params = backbone + heads;
        let largest = [
            vit.embed_dim * vit.ffn_hidden(),
            h.hidden_dim * h.hidden_dim,
            h.dino_bottleneck_dim * h.dino_prototypes,
            h.ibot_bottleneck_dim * h.ibot_prototypes,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64;
        let mut prototypes = h.dino_bottleneck_dim * h.dino_prototypes;
        if h.ibot_separate_head {
            prototypes += h.ibot_bottleneck_dim * h.ibot_prototypes;
        }
        let p = vit.patch_size as u64;
        let tok = |side: u32| (side as u64 / p).pow(2) + 1 + vit.num_register_tokens as u64;
        let (tg, tl) = (tok(cfg.crops.global_size), tok(cfg.crops.local_size));
        // u128: the attention term grows with tokens², beyond u64 for the largest valid configs.
        let layout = cfg.data.layout(world_size)?;
        // Activations are one forward's: its backward frees them before the next.
        let b = layout.micro as u128;
        let per_block = |tokens: u64, crops: u64| {
            let tokens = tokens as u128;
            crops as u128
                * b
                * (tokens * (14 * vit.embed_dim as u128 + 2 * vit.ffn_hidden() as u128)
                    + vit.num_heads as u128 * tokens * tokens)
        };
        let activations = saturate(
            4 * vit.depth as u128 * (per_block(tg, 2) + per_block(tl, cfg.crops.n_local as u64)),
        );
        let total_steps = cfg.optim.total_steps;
        Ok(Plan {
            lines: vec![
                format!("parameters: backbone {backbone} + heads {heads} = {params}"),
                format!(
                    "global batch {layout} · {total_steps} steps = {} samples seen; lr {:.3e} (sqrt-scaled)",
                    total_steps * layout.global as u64,
                    cfg.scaled_lr(world_size)
                ),
            ],
            batch: layout,
            memory: MemoryEstimate::adamw(
                params,
                "weights+grads+teacher",
                3,
                largest,
                3 * prototypes as u64 * 4,
                activations,
                &cfg.run,
                world_size,
            )
            .accumulating(layout.accumulation, params)
            .with_loader(
                layout.micro,
                3 * (2 * (cfg.crops.global_size as u64).pow(2)
                    + cfg.crops.n_local as u64 * (cfg.crops.local_size as u64).pow(2)),
            ),
        })
    }
    fn total_steps(&self) -> u64 {
        self.optim.total_steps
    }
    /// Runs (or resumes) DINOv2 pretraining as configured, as this process's rank of `dist`. `stop_after`
    /// ends this process after that many steps of the schedule have completed (a checkpoint is written
    /// there), e.g. for time-sliced jobs; the next run resumes from it. The loop is
    /// [`driver::run`]; this builds the multi-crop views, the iBOT masks and the
    /// trainer.
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
        let world_size = dist.world_size();
        let session = driver::start(&cfg.data, &cfg.run, resolved, resume, dist)?;
        let trainer = DinoTrainer::new(cfg, dist, device)?;

        let grid = cfg.crops.global_size as usize / vit.patch_size;
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: cfg.crops.global_size,
            local_size: cfg.crops.local_size,
            n_local: cfg.crops.n_local,
            global_scale: cfg.crops.global_scale,
            local_scale: cfg.crops.local_scale,
            ..DinoAugConfig::default()
        })?;
        let masks = MaskSpec::Ibot {
            generator: MaskingGenerator::new(grid, grid)?,
            config: IbotMaskConfig {
                ratio_min: cfg.loss.mask_ratio.0,
                ratio_max: cfg.loss.mask_ratio.1,
                probability: cfg.loss.mask_probability,
            },
            group: 0,
        };
        let total = cfg.optim.total_steps;
        let banner = format!(
            "DINOv2: {} ({} params), batch {} × {world_size} process(es), lr {:.3e} (scaled), {} steps, {} global {}px + {} local {}px",
            cfg.model.arch,
            webssl_models::presets::param_count(&vit),
            cfg.data.layout(world_size)?.per_process_text(),
            cfg.scaled_lr(world_size),
            total,
            2,
            cfg.crops.global_size,
            cfg.crops.n_local,
            cfg.crops.local_size
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
            Arc::new(DinoViews::new(aug)),
            masks,
            stop_after,
            dist,
        )
    }
    fn exported(&self, outcome: &TrainOutcome) -> String {
        format!(
            "teacher backbone exported to {}",
            outcome.export_dir.display()
        )
    }
    fn eval(&self) -> &EvalConfig {
        &self.eval
    }
    fn knn_baseline(&self, device: &Device) -> Result<(u32, Vit, &'static str)> {
        let init = DinoModel::new(&self.vit()?, &self.heads, self.seed, device).backbone;
        Ok((self.crops.global_size, init, "trained teacher"))
    }
}

/// The trainable state of a DINOv2 run — student, EMA teacher, optimizer moments, centres — and one
/// optimizer step on it. `Recipe::train` feeds it from the loader; the multi-process equivalence test feeds
/// it hand-made batches.
pub struct DinoTrainer<'c> {
    cfg: &'c DinoConfig,
    pub student: DinoModel,
    pub teacher: DinoModel,
    opt: OptimizerSet,
    centres: Option<step::Centres>,
    sched: Schedules,
    depth: usize,
    /// The backbone's input size (the exported preprocessor's).
    img_size: usize,
    device: Device,
    ad: Device,
    /// ZeRO-1 owners when the moments are sharded over ranks.
    zero: Option<ZeroShards>,
}

impl<'c> DinoTrainer<'c> {
    /// Fresh state (seeded init, identical on every rank) for this rank of `dist` (the lr scales
    /// with the world size).
    pub fn new(cfg: &'c DinoConfig, dist: &Dist, device: &Device) -> Result<Self> {
        let world_size = dist.world_size();
        let vit = cfg.vit()?;
        let ad = device.clone().autodiff();
        let student = DinoModel::new(&vit, &cfg.heads, cfg.seed, &ad);
        let teacher = student.valid();
        let mut parts = vec!["backbone", "dino_head"];
        if cfg.heads.ibot_separate_head {
            parts.push("ibot_head");
        }
        let k_dino = cfg.heads.dino_prototypes;
        let k_ibot = if cfg.heads.ibot_separate_head {
            cfg.heads.ibot_prototypes
        } else {
            k_dino
        };
        let centres = (cfg.loss.centering == config::Centering::Centering).then(|| step::Centres {
            dino: CenterState::new(k_dino, 0.9, device),
            ibot: CenterState::new(k_ibot, 0.9, device),
        });
        let zero = (cfg.run.shard_optimizer_state && world_size > 1).then(|| {
            let mut list = vec![
                ("backbone", trainable_params(&student.backbone)),
                ("dino_head", trainable_params(&student.dino_head)),
            ];
            if let Some(h) = &student.ibot_head {
                list.push(("ibot_head", trainable_params(h)));
            }
            ZeroShards::new(&list, dist)
        });
        Ok(DinoTrainer {
            cfg,
            zero,
            student,
            teacher,
            opt: OptimizerSet::new(&parts, cfg.optim.betas, 1e-8),
            centres,
            sched: Schedules::new(cfg, world_size),
            depth: vit.depth,
            img_size: vit.img_size,
            device: device.clone(),
            ad,
        })
    }

    /// Parameters this rank keeps AdamW moments for (all of them unless sharded with ZeRO-1).
    pub fn optimizer_states(&self) -> usize {
        self.opt.num_states()
    }

    /// Restores student, teacher, optimizer (all of it) and centres from a checkpoint directory.
    fn load(mut self, dir: &Path) -> Result<Self> {
        let open = |name: &str| TensorStore::open_file(&dir.join(name)).map_err(TrainError::from);
        self.student = checkpoint::assign_named_parameters(
            self.student,
            &open("student.safetensors")?,
            &self.ad,
        )?;
        self.teacher = checkpoint::assign_named_parameters(
            self.teacher,
            &open("teacher.safetensors")?,
            &self.device,
        )?;
        self.opt.load(&read_all(&open(OPTIM_FILE)?)?)?;
        if let Some(c) = self.centres.as_mut() {
            let store = open("centres.safetensors")?;
            c.dino.load(&store, "dino", &self.device)?;
            c.ibot.load(&store, "ibot", &self.device)?;
        }
        Ok(self)
    }

    /// One optimizer step at schedule position `it` on this rank's `batches` (§5.4): forward, losses,
    /// backward, gradients averaged over ranks, per-module clipping, AdamW, EMA. Returns the logged
    /// values, averaged over ranks (every rank gets the same, so a NaN stops all of them at once).
    ///
    /// Each of `batches` is one forward and backward (several: gradient accumulation), as dinov2
    /// does it for a per-GPU batch of that size — Sinkhorn-Knopp over that forward's teacher outputs
    /// on all ranks, the centres (centering mode) updated after each forward, KoLeo within it,
    /// iBOT's masks and masked-patch count per forward — and the update follows on the mean of
    /// their gradients.
    pub fn step(
        mut self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        let cfg = self.cfg;
        let sched = &self.sched;
        let (lr, last_lr, wd) = (sched.lr.at(it), sched.last_layer_lr.at(it), sched.wd.at(it));
        let (mom, tt) = (sched.momentum.at(it), sched.teacher_temp.at(it));
        // One stream for the step's forwards, drawn in order.
        let mut drop_rng = rng_stream(cfg.seed, "drop_path", &[it, dist.rank() as u64]);
        let mut sums: Option<[f64; 6]> = None;
        let mut acc: Option<(ParamGrads, ParamGrads, Option<ParamGrads>)> = None;
        for batch in batches {
            let loss = step::forward(
                cfg,
                &self.student,
                &self.teacher,
                batch,
                tt,
                &mut self.centres,
                &mut drop_rng,
                dist,
                &self.ad,
            );
            let local = [
                scalar(loss.total.clone()),
                loss.dino,
                loss.ibot,
                loss.koleo,
                loss.teacher_entropy,
                loss.n_masked as f64,
            ];
            sums = Some(match sums {
                None => local,
                Some(s) => std::array::from_fn(|i| s[i] + local[i]),
            });
            let mut grads = loss.total.backward();
            let student = &self.student;
            // Taken out of `grads`, so the clipped (and rank-averaged) copies replace the raw
            // gradients instead of living beside them.
            let g_backbone = ParamGrads::take_from_module(&student.backbone, &mut grads);
            let g_dino = ParamGrads::take_from_module(&student.dino_head, &mut grads);
            let g_ibot = student
                .ibot_head
                .as_ref()
                .map(|h| ParamGrads::take_from_module(h, &mut grads));
            drop(grads);
            acc = Some(match acc {
                None => (g_backbone, g_dino, g_ibot),
                Some((mut b, mut d, i)) => {
                    b.accumulate(g_backbone);
                    d.accumulate(g_dino);
                    let i = match (i, g_ibot) {
                        (Some(mut i), Some(g)) => {
                            i.accumulate(g);
                            Some(i)
                        }
                        (i, g) => i.or(g),
                    };
                    (b, d, i)
                }
            });
        }
        let (Some(mut terms), Some((mut g_backbone, mut g_dino, mut g_ibot))) = (sums, acc) else {
            return Err(TrainError::config(
                "data.batch_size",
                "an optimizer step got no batch",
            ));
        };
        // Logged values and the NaN check are over all ranks and forwards (every rank stops
        // together).
        dist.all_reduce_f64("loss values", &mut terms, ReduceOp::Sum);
        let w = dist.world_size() as f64 * batches.len() as f64;
        let [total_loss, dino_l, ibot_l, koleo_l, entropy] = [0, 1, 2, 3, 4].map(|i| terms[i] / w);
        let n_masked = terms[5];
        if !total_loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "loss".into(),
                value: total_loss,
            });
        }
        let student = &self.student;
        g_backbone.mean_over(batches.len());
        g_dino.mean_over(batches.len());
        if let Some(g) = g_ibot.as_mut() {
            g.mean_over(batches.len());
        }
        // Average over ranks before clipping (FSDP reduces gradients, then dinov2 clips).
        g_backbone.all_reduce_mean(&student.backbone, dist);
        g_dino.all_reduce_mean(&student.dino_head, dist);
        if let (Some(g), Some(h)) = (g_ibot.as_mut(), student.ibot_head.as_ref()) {
            g.all_reduce_mean(h, dist);
        }
        let norm_backbone = g_backbone.clip(cfg.optim.clip_grad);
        let norm_dino = g_dino.clip(cfg.optim.clip_grad);
        let norm_ibot = g_ibot.as_mut().map(|g| g.clip(cfg.optim.clip_grad));
        for (what, n) in [
            ("grad norm (backbone)", norm_backbone),
            ("grad norm (dino head)", norm_dino),
            ("grad norm (ibot head)", norm_ibot.unwrap_or(0.0)),
        ] {
            if !n.is_finite() {
                return Err(TrainError::NonFinite {
                    step: it,
                    what: what.into(),
                    value: n,
                });
            }
        }
        let depth = self.depth;
        let rule_backbone = |name: &str| {
            dinov2_rule(
                name,
                depth,
                cfg.optim.layerwise_decay,
                cfg.optim.patch_embed_lr_mult,
            )
        };
        // Heads: dinov2 calls the rule with depth 0 there ("not a ViT"): multiplier 1.
        let head_rule = |name: &str| {
            let mut rule = dinov2_rule(name, 0, 1.0, 1.0);
            if cfg.heads.norm_last_layer && name.ends_with("last_layer.weight_g") {
                rule.lr_mult = 0.0;
                rule.wd_mult = 0.0;
            }
            rule
        };
        if let Some(z) = &self.zero {
            // Clipped on the whole averaged gradient above; now each rank steps its own share.
            z.keep_owned("backbone", &mut g_backbone);
            z.keep_owned("dino_head", &mut g_dino);
            if let Some(g) = g_ibot.as_mut() {
                z.keep_owned("ibot_head", g);
            }
        }
        let DinoModel {
            backbone,
            dino_head,
            ibot_head,
        } = self.student;
        let opt = &mut self.opt;
        let backbone =
            opt.get("backbone")
                .step(backbone, &g_backbone, lr, last_lr, wd, &rule_backbone);
        let dino_head = opt
            .get("dino_head")
            .step(dino_head, &g_dino, lr, last_lr, wd, &head_rule);
        let ibot_head = match (ibot_head, g_ibot.as_ref()) {
            (Some(h), Some(g)) => {
                Some(opt.get("ibot_head").step(h, g, lr, last_lr, wd, &head_rule))
            }
            (h, _) => h,
        };
        let (backbone, dino_head, ibot_head) = match &self.zero {
            None => (backbone, dino_head, ibot_head),
            Some(z) => (
                z.sync("backbone", backbone, dist),
                z.sync("dino_head", dino_head, dist),
                ibot_head.map(|h| z.sync("ibot_head", h, dist)),
            ),
        };
        self.student = DinoModel {
            backbone,
            dino_head,
            ibot_head,
        };
        self.teacher = ema_update(self.teacher, &self.student.valid(), mom);
        let values = vec![
            ("loss", total_loss),
            ("dino_loss", dino_l),
            ("ibot_loss", ibot_l),
            ("koleo_loss", koleo_l),
            ("lr", lr),
            ("last_layer_lr", last_lr),
            ("wd", wd),
            ("momentum", mom),
            ("teacher_temp", tt),
            ("teacher_entropy", entropy),
            ("grad_norm_backbone", norm_backbone),
            ("grad_norm_dino_head", norm_dino),
            ("grad_norm_ibot_head", norm_ibot.unwrap_or(0.0)),
            ("masked_patches", n_masked),
        ];
        Ok((self, values))
    }
}

impl TrainState for DinoTrainer<'_> {
    fn step(
        self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        DinoTrainer::step(self, it, batches, dist)
    }

    fn load(self, dir: &Path) -> Result<Self> {
        DinoTrainer::load(self, dir)
    }

    fn optimizer(&mut self) -> (&mut OptimizerSet, Option<&ZeroShards>) {
        (&mut self.opt, self.zero.as_ref())
    }

    fn checkpoint_files(&self) -> Vec<&'static str> {
        let mut names = vec!["student.safetensors", "teacher.safetensors", OPTIM_FILE];
        if self.centres.is_some() {
            names.push("centres.safetensors");
        }
        names
    }

    fn checkpoint_file(&self, name: &str, ckpts: &CheckpointManager) -> Result<Vec<u8>> {
        let tensors = match name {
            "student.safetensors" => checkpoint::named_parameters(&self.student),
            "teacher.safetensors" => checkpoint::named_parameters(&self.teacher),
            "centres.safetensors" => {
                let c = self.centres.as_ref().expect("listed only with centres");
                let mut t = c.dino.tensors("dino");
                t.extend(c.ibot.tensors("ibot"));
                t
            }
            other => unreachable!("not a DINO checkpoint file: {other}"),
        };
        tensors_bytes(ckpts, &tensors)
    }

    fn export(&self, _run_dir: &Path, export_dir: &Path) -> Result<()> {
        let preprocessor = export::default_preprocessor(self.img_size);
        export::export_hf(&self.teacher.backbone, export_dir, Some(&preprocessor))?;
        Ok(())
    }

    fn progress_terms(&self, values: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        vec![
            ("loss", value(values, "loss")),
            ("dino", value(values, "dino_loss")),
            ("ibot", value(values, "ibot_loss")),
            ("koleo", value(values, "koleo_loss")),
        ]
    }

    fn after_step(&self, step: u64, values: &[(&'static str, f64)]) {
        collapse_watch(
            step,
            value(values, "dino_loss"),
            value(values, "teacher_entropy"),
            self.cfg.heads.dino_prototypes,
        );
    }
}

/// Warns on the two collapse signatures of §9.2: uniform (teacher targets at maximal entropy ln K and
/// DINO loss pinned at ln K) and one-hot (teacher entropy near 0, DINO loss near 0).
fn collapse_watch(step: u64, dino_loss: f64, teacher_entropy: f64, k: usize) {
    let ln_k = (k as f64).ln();
    if step > 50 && teacher_entropy > 0.98 * ln_k && (dino_loss - ln_k).abs() < 0.02 * ln_k {
        tracing::warn!(
            "step {step}: possible uniform collapse: teacher entropy {teacher_entropy:.3} ≈ ln K = {ln_k:.3}, DINO loss {dino_loss:.3}"
        );
    }
    if step > 50 && teacher_entropy < 0.05 && dino_loss < 0.05 {
        tracing::warn!(
            "step {step}: possible one-hot collapse: teacher entropy {teacher_entropy:.3}, DINO loss {dino_loss:.3}"
        );
    }
}

fn head_params(in_dim: usize, hidden: usize, bottleneck: usize, k: usize) -> u64 {
    let (i, h, b, k) = (in_dim as u64, hidden as u64, bottleneck as u64, k as u64);
    (i * h + h) + (h * h + h) + (h * b + b) + (b * k + k)
}
