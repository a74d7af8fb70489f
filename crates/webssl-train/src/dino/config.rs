//! The `webssl pretrain dino` configuration: one TOML file (presets in `configs/`), every field
//! named and unit-suffixed, unknown fields rejected. Defaults are the DINOv2 ViT-g / Web-DINO recipe
//! (docs/reference/training-algorithms.md §5.1, docs/reference/webssl-paper.md §4.1); presets override what
//! they change.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::run::config::check;
pub use crate::run::sections::{DataConfig, EvalConfig, ModelConfig, RunConfig, SynthSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DinoConfig {
    /// Root of every random stream of the run (init, data order, augmentation, masks, drop path).
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub crops: CropsConfig,
    #[serde(default)]
    pub heads: HeadsConfig,
    #[serde(default)]
    pub loss: LossConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CropsConfig {
    pub global_size: u32,
    pub local_size: u32,
    pub n_local: usize,
    pub global_scale: (f64, f64),
    pub local_scale: (f64, f64),
}

impl Default for CropsConfig {
    fn default() -> Self {
        Self {
            global_size: 224,
            local_size: 98,
            n_local: 8,
            global_scale: (0.32, 1.0),
            local_scale: (0.05, 0.32),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadsConfig {
    pub dino_prototypes: usize,
    pub ibot_prototypes: usize,
    pub hidden_dim: usize,
    pub dino_bottleneck_dim: usize,
    pub ibot_bottleneck_dim: usize,
    /// Separate iBOT head (Web-DINO / ViT-g) or the DINO head shared for patches.
    pub ibot_separate_head: bool,
    /// DINO v1's `norm_last_layer`: keep the prototypes' weight-norm scale `g` fixed at 1. DINOv2
    /// trains `g` (the default, false); fixing it guards small-batch runs against the head shrinking
    /// its logits to a uniform output (reference §9.2).
    pub norm_last_layer: bool,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            dino_prototypes: 131_072,
            ibot_prototypes: 131_072,
            hidden_dim: 2048,
            dino_bottleneck_dim: 384,
            ibot_bottleneck_dim: 256,
            ibot_separate_head: true,
            norm_last_layer: false,
        }
    }
}

impl CropsConfig {
    /// Crop sizes (multiples of the patch size `p`), the number of local crops and the scale ranges.
    /// No local crops is a valid recipe (dinov2 `local_crops_number: 0`: no local-crop loss terms).
    pub fn validate(&self, p: u32) -> Result<()> {
        check::crop_side("crops.global_size", self.global_size, p)?;
        check::crop_side("crops.local_size", self.local_size, p)?;
        check::int("crops.n_local", self.n_local as u64, 0, 64)?;
        check::scale("crops.global_scale", self.global_scale)?;
        check::scale("crops.local_scale", self.local_scale)
    }
}

impl HeadsConfig {
    /// Every width ≥ 1 (an empty head has nothing to normalise or to project onto).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("heads.dino_prototypes", self.dino_prototypes),
            ("heads.ibot_prototypes", self.ibot_prototypes),
            ("heads.hidden_dim", self.hidden_dim),
            ("heads.dino_bottleneck_dim", self.dino_bottleneck_dim),
            ("heads.ibot_bottleneck_dim", self.ibot_bottleneck_dim),
        ] {
            check::int(field, v as u64, 1, check::MAX_WIDTH)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Centering {
    /// DINO v1 softmax with an EMA centre (momentum 0.9).
    Centering,
    /// Sinkhorn-Knopp, 3 iterations (DINOv2 / Web-DINO).
    SinkhornKnopp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub centering: Centering,
    pub student_temp: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub teacher_temp_warmup_steps: u64,
    pub dino_weight: f64,
    pub ibot_weight: f64,
    pub koleo_weight: f64,
    pub mask_ratio: (f64, f64),
    pub mask_probability: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            centering: Centering::SinkhornKnopp,
            student_temp: 0.1,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            teacher_temp_warmup_steps: 30 * 1250,
            dino_weight: 1.0,
            ibot_weight: 1.0,
            koleo_weight: 0.1,
            mask_ratio: (0.1, 0.5),
            mask_probability: 0.5,
        }
    }
}

impl LossConfig {
    /// Temperatures > 0 (the logits are divided by them), weights ≥ 0, mask ratios and probability
    /// in [0, 1].
    pub fn validate(&self) -> Result<()> {
        check::positive("loss.student_temp", self.student_temp)?;
        check::positive("loss.warmup_teacher_temp", self.warmup_teacher_temp)?;
        check::positive("loss.teacher_temp", self.teacher_temp)?;
        check::int(
            "loss.teacher_temp_warmup_steps",
            self.teacher_temp_warmup_steps,
            0,
            check::MAX_STEPS,
        )?;
        check::non_negative("loss.dino_weight", self.dino_weight)?;
        check::non_negative("loss.ibot_weight", self.ibot_weight)?;
        check::non_negative("loss.koleo_weight", self.koleo_weight)?;
        let (lo, hi) = self.mask_ratio;
        if !(0.0 <= lo && lo <= hi && hi <= 1.0) {
            return Err(TrainError::config(
                "loss.mask_ratio",
                format!("({lo}, {hi}) is not a range with 0 ≤ min ≤ max ≤ 1"),
            ));
        }
        check::float("loss.mask_probability", self.mask_probability, 0.0..=1.0)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Length of the run in optimizer steps.
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// Base learning rate for a global batch of 1024, scaled by sqrt(batch / 1024).
    pub lr_per_1024: f64,
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_wd_end")]
    pub weight_decay_end: f64,
    #[serde(default = "default_momentum")]
    pub momentum_teacher: f64,
    #[serde(default = "default_one")]
    pub final_momentum_teacher: f64,
    #[serde(default = "default_clip")]
    pub clip_grad: f64,
    #[serde(default = "default_one")]
    pub layerwise_decay: f64,
    #[serde(default = "default_patch_lr")]
    pub patch_embed_lr_mult: f64,
    #[serde(default)]
    pub freeze_last_layer_steps: u64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
}

impl OptimConfig {
    /// Steps ≥ 1 (no step would export an untrained model), rates and decays ≥ 0, EMA momenta and
    /// LLRD in [0, 1].
    pub fn validate(&self) -> Result<()> {
        check::int("optim.total_steps", self.total_steps, 1, check::MAX_STEPS)?;
        check::warmup("optim.warmup_steps", self.warmup_steps, self.total_steps)?;
        check::int(
            "optim.freeze_last_layer_steps",
            self.freeze_last_layer_steps,
            0,
            check::MAX_STEPS,
        )?;
        check::non_negative("optim.lr_per_1024", self.lr_per_1024)?;
        check::non_negative("optim.min_lr", self.min_lr)?;
        check::non_negative("optim.weight_decay", self.weight_decay)?;
        check::non_negative("optim.weight_decay_end", self.weight_decay_end)?;
        check::float("optim.momentum_teacher", self.momentum_teacher, 0.0..=1.0)?;
        check::float(
            "optim.final_momentum_teacher",
            self.final_momentum_teacher,
            0.0..=1.0,
        )?;
        // 0 = no clipping (dinov2's `clip_grad: 0`).
        check::non_negative("optim.clip_grad", self.clip_grad)?;
        check::float(
            "optim.layerwise_decay",
            self.layerwise_decay,
            (
                std::ops::Bound::Excluded(0.0),
                std::ops::Bound::Included(1.0),
            ),
        )?;
        check::non_negative("optim.patch_embed_lr_mult", self.patch_embed_lr_mult)?;
        check::betas("optim.betas", self.betas)
    }
}

fn default_min_lr() -> f64 {
    1e-6
}
fn default_wd() -> f64 {
    0.04
}
fn default_wd_end() -> f64 {
    0.2
}
fn default_momentum() -> f64 {
    0.994
}
fn default_one() -> f64 {
    1.0
}
fn default_clip() -> f64 {
    3.0
}
fn default_patch_lr() -> f64 {
    0.2
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}

impl DinoConfig {
    /// The backbone architecture: the preset with this config's overrides, grid = global crop size.
    pub fn vit(&self) -> Result<webssl_models::VitConfig> {
        self.model.vit(self.crops.global_size)
    }

    /// Stochastic depth's rate at the last block (0 when not configured).
    pub fn drop_path_rate(&self) -> f64 {
        self.model.drop_path_rate.unwrap_or(0.0)
    }

    /// Every field against its documented range, and the consistency checks serde cannot express;
    /// each error names the field. Runs wherever a config is loaded (every command, `--dry-run`
    /// included) and again when training starts.
    pub fn validate(&self) -> Result<()> {
        self.data
            .validate(2, "KoLeo needs a nearest neighbour in the batch")?;
        self.eval.validate()?;
        check::float("model.drop_path_rate", self.drop_path_rate(), 0.0..1.0)?;
        // The crops before the backbone: its own check would name `img_size`.
        let p = self.model.patch_size()?;
        self.crops.validate(p)?;
        self.vit()?;
        self.heads.validate()?;
        self.loss.validate()?;
        self.optim.validate()
    }

    /// The learning rate after sqrt scaling with the global batch.
    pub fn scaled_lr(&self, world_size: usize) -> f64 {
        self.optim.lr_per_1024 * (self.data.global_batch(world_size) as f64 / 1024.0).sqrt()
    }
}
