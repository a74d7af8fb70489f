//! The `webssl pretrain clip` configuration: one TOML file (presets `configs/clip-*.toml`), unknown
//! fields rejected. Defaults are the MetaCLIP recipe (docs/reference/training-algorithms.md §8;
//! docs/reference/webssl-paper.md §4.3: batch 32,768, lr 4e-4, 2k warm-up, AdamW (0.9, 0.98) eps 1e-6 wd 0.2,
//! RandomResizedCrop scale (0.9, 1), 77-token context, QuickGELU text tower, logit scale ln(1/0.07) clamped
//! to ln 100). `[data]`, `[run]` and `[eval]` are the sections every objective shares, so a CLIP run with the
//! seed and `[data]` of a DINO or MAE run reads the identical image stream.

use serde::{Deserialize, Serialize};
use webssl_models::text::{TextActivation, TextConfig};

use crate::error::{Result, TrainError};
pub use crate::run::sections::{DataConfig, EvalConfig, RunConfig, SynthSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Root of every random stream of the run (init, data order, augmentation).
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    /// The image tower: the same ViT presets and overrides as `webssl pretrain dino`.
    pub model: ModelConfig,
    #[serde(default)]
    pub image: ImageConfig,
    pub text: TextTowerConfig,
    #[serde(default)]
    pub clip: HeadConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// Image-tower architecture (same keys as DINO's `[model]`, without stochastic depth: MetaCLIP
/// trains without it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone preset (`webssl model presets`); the fields below override it.
    pub arch: String,
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub patch_size: Option<usize>,
    /// Position-embedding grid; the crop size by default.
    pub img_size: Option<usize>,
    /// LayerScale initial value for presets that have LayerScale (Web-DINO's 1e-5 by default).
    pub layerscale_init: Option<f64>,
}

/// The training crop (MetaCLIP `transform.py`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    pub size: u32,
    /// RandomResizedCrop area range.
    pub scale: (f64, f64),
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            size: 224,
            scale: (0.9, 1.0),
        }
    }
}

/// Text tower and tokenizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTowerConfig {
    /// A `tokenizer.json` to use as is; none = train a byte-level BPE on the training captions
    /// (saved as `<run>/tokenizer.json` and reused on resume).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Vocabulary of the trained BPE, special tokens included (CLIP: 49,408).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Captions read (the first ones in shard-index order) to train the BPE: a bounded, deterministic
    /// pass.
    #[serde(default = "default_tokenizer_samples")]
    pub tokenizer_train_samples: usize,
    #[serde(default = "default_context")]
    pub context_length: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub activation: TextActivation,
}

/// The joint embedding.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Dimension E of the joint embedding space (both projections map to it).
    pub embed_dim: usize,
    /// Initial `t` of `s = exp(t)`: ln(1/0.07).
    pub logit_scale_init: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            embed_dim: 512,
            logit_scale_init: crate::objectives::clip::logit_scale_init(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// Peak learning rate for the configured global batch (MetaCLIP does not rescale it).
    pub lr: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Global gradient-norm clip over both towers; 0 = off (MetaCLIP's default).
    #[serde(default)]
    pub clip_grad: f64,
}

fn default_vocab() -> usize {
    49_408
}
fn default_tokenizer_samples() -> usize {
    100_000
}
fn default_context() -> usize {
    77
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_wd() -> f64 {
    0.2
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.98)
}
fn default_eps() -> f64 {
    1e-6
}

impl ClipConfig {
    /// The image tower: the preset with this config's overrides, grid = crop size.
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
        v.img_size = m.img_size.unwrap_or(self.image.size as usize);
        v.validate()?;
        Ok(v)
    }

    /// The text tower for a tokenizer with `vocab_size` tokens.
    pub fn text_tower(&self, vocab_size: usize) -> Result<TextConfig> {
        let t = &self.text;
        let cfg = TextConfig {
            vocab_size,
            context_length: t.context_length,
            width: t.width,
            heads: t.heads,
            layers: t.layers,
            mlp_ratio: t.mlp_ratio,
            embed_dim: self.clip.embed_dim,
            activation: t.activation,
            ln_eps: 1e-5,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Consistency checks that serde cannot express; each names the field.
    pub fn validate(&self) -> Result<()> {
        // Checked before building the ViT, whose own check would name its `img_size`.
        let preset = webssl_models::presets::preset(&self.model.arch)?;
        let p = self.model.patch_size.unwrap_or(preset.patch_size);
        if p == 0 || !(self.image.size as usize).is_multiple_of(p) {
            return Err(TrainError::config(
                "image.size",
                format!(
                    "{} is not a multiple of the patch size {p}",
                    self.image.size
                ),
            ));
        }
        self.vit()?;
        let (lo, hi) = self.image.scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(TrainError::config(
                "image.scale",
                "expected 0 < min ≤ max ≤ 1",
            ));
        }
        if self.data.batch_size < 2 {
            return Err(TrainError::config(
                "data.batch_size",
                "InfoNCE needs at least 2 pairs per step (the other captions are the negatives)",
            ));
        }
        if self.optim.warmup_steps > self.optim.total_steps {
            return Err(TrainError::config(
                "optim.warmup_steps",
                "exceeds optim.total_steps",
            ));
        }
        if self.optim.warmup_steps == 0 {
            // MetaCLIP's warm-up divides by it.
            return Err(TrainError::config("optim.warmup_steps", "must be ≥ 1"));
        }
        if self.text.tokenizer.is_none() && self.text.vocab_size < 3 + 256 {
            return Err(TrainError::config(
                "text.vocab_size",
                "a byte-level BPE needs at least 259 tokens (256 bytes + SOT/EOT/PAD)",
            ));
        }
        if self.text.tokenizer.is_none() && self.text.tokenizer_train_samples == 0 {
            return Err(TrainError::config(
                "text.tokenizer_train_samples",
                "must be ≥ 1 to train a tokenizer",
            ));
        }
        if self.clip.embed_dim == 0 {
            return Err(TrainError::config("clip.embed_dim", "must be positive"));
        }
        let s = self.clip.logit_scale_init;
        if !(0.0..=crate::objectives::clip::logit_scale_max()).contains(&s) {
            return Err(TrainError::config(
                "clip.logit_scale_init",
                "must lie in the clamp range [0, ln 100]",
            ));
        }
        self.text_tower(self.text.vocab_size)?;
        Ok(())
    }
}
