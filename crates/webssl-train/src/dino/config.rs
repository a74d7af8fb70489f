//! The `webssl pretrain dino` configuration: one TOML file (presets in `configs/`), every field
//! named and unit-suffixed, unknown fields rejected. Defaults are the DINOv2 ViT-g / Web-DINO recipe
//! (docs/reference/training-algorithms.md §5.1, docs/reference/webssl-paper.md §4.1); presets override what
//! they change.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
pub use crate::run::sections::{DataConfig, EvalConfig, RunConfig, SynthSpec};

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
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone preset (`webssl model presets`); the fields below override it.
    pub arch: String,
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub patch_size: Option<usize>,
    /// Position-embedding grid = global crop size by default.
    pub img_size: Option<usize>,
    /// LayerScale initial value (the presets use DINOv2's 1e-5). At 1e-5 the blocks barely touch
    /// the residual stream at first, so every image starts with nearly the same CLS token and the
    /// teacher's Sinkhorn targets are uniform until LayerScale has grown: fine over 600k steps,
    /// too slow for a few hundred (the demo uses 0.1).
    pub layerscale_init: Option<f64>,
    #[serde(default)]
    pub drop_path_rate: f64,
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
    /// The backbone architecture: the preset with this config's overrides.
    pub fn vit(&self) -> Result<webssl_models::VitConfig> {
        let mut v = webssl_models::presets::preset(&self.model.arch)?;
        let m = &self.model;
        if let Some(x) = m.embed_dim {
            v.embed_dim = x;
        }
        if let Some(x) = m.depth {
            v.depth = x;
        }
        if let Some(x) = m.num_heads {
            v.num_heads = x;
        }
        if let Some(x) = m.patch_size {
            v.patch_size = x;
        }
        if let Some(x) = m.layerscale_init {
            if v.layerscale_init.is_none() {
                return Err(TrainError::config(
                    "model.layerscale_init",
                    format!("`{}` has no LayerScale", m.arch),
                ));
            }
            v.layerscale_init = Some(x);
        }
        v.img_size = m.img_size.unwrap_or(self.crops.global_size as usize);
        v.validate()?;
        Ok(v)
    }

    /// Consistency checks that serde cannot express; each names the field.
    pub fn validate(&self) -> Result<()> {
        let preset = webssl_models::presets::preset(&self.model.arch)?;
        let p = self.model.patch_size.unwrap_or(preset.patch_size) as u32;
        if self.crops.global_size % p != 0 {
            return Err(TrainError::config(
                "crops.global_size",
                format!(
                    "{} is not a multiple of the patch size {p}",
                    self.crops.global_size
                ),
            ));
        }
        if self.crops.local_size % p != 0 {
            return Err(TrainError::config(
                "crops.local_size",
                format!(
                    "{} is not a multiple of the patch size {p}",
                    self.crops.local_size
                ),
            ));
        }
        if self.data.batch_size < 2 {
            return Err(TrainError::config(
                "data.batch_size",
                "KoLeo needs at least 2 images per step",
            ));
        }
        if self.optim.warmup_steps > self.optim.total_steps {
            return Err(TrainError::config(
                "optim.warmup_steps",
                "exceeds optim.total_steps",
            ));
        }
        if !(0.0..1.0).contains(&self.model.drop_path_rate) {
            return Err(TrainError::config(
                "model.drop_path_rate",
                "must be in [0, 1)",
            ));
        }
        self.vit()?;
        Ok(())
    }

    /// The learning rate after sqrt scaling with the global batch.
    pub fn scaled_lr(&self, world_size: usize) -> f64 {
        self.optim.lr_per_1024 * ((self.data.batch_size * world_size) as f64 / 1024.0).sqrt()
    }
}
