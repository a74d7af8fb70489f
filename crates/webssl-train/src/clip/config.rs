//! The `webssl pretrain clip` configuration: one TOML file (presets `configs/clip-*.toml`), unknown
//! fields rejected. Defaults are the MetaCLIP recipe (docs/reference/training-algorithms.md §8;
//! docs/reference/webssl-paper.md §4.3: batch 32,768, lr 4e-4, 2k warm-up, AdamW (0.9, 0.98) eps 1e-6 wd 0.2,
//! RandomResizedCrop scale (0.9, 1), 77-token context, QuickGELU text tower, logit scale ln(1/0.07) clamped
//! to ln 100). `[data]`, `[run]` and `[eval]` are the sections every objective shares, so a CLIP run with the
//! seed and `[data]` of a DINO or MAE run reads the identical image stream.

use serde::{Deserialize, Serialize};
use webssl_models::text::{TextActivation, TextConfig};

use crate::error::{Result, TrainError};
use crate::run::config::check;
pub use crate::run::sections::{DataConfig, EvalConfig, ModelConfig, RunConfig, SynthSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Root of every random stream of the run (init, data order, augmentation).
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    /// The image tower: the same ViT presets and overrides as `webssl pretrain dino`, without
    /// stochastic depth (MetaCLIP trains without it).
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
        self.model.refuse(&[(
            "drop_path_rate",
            "CLIP trains without stochastic depth (as MetaCLIP)",
        )])?;
        self.model.vit(self.image.size)
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

    /// Every field against its documented range, and the consistency checks serde cannot express;
    /// each error names the field. Runs wherever a config is loaded (every command, `--dry-run`
    /// included) and again when training starts.
    pub fn validate(&self) -> Result<()> {
        self.data.validate(
            2,
            "InfoNCE needs at least 2 pairs per step (the other captions are the negatives)",
        )?;
        self.eval.validate()?;
        // Checked before building the ViT, whose own check would name its `img_size`.
        let p = self.model.patch_size()?;
        check::crop_side("image.size", self.image.size, p)?;
        self.vit()?;
        check::scale("image.scale", self.image.scale)?;
        let o = &self.optim;
        check::int("optim.total_steps", o.total_steps, 1, check::MAX_STEPS)?;
        // MetaCLIP's warm-up divides by it.
        check::int("optim.warmup_steps", o.warmup_steps, 1, check::MAX_STEPS)?;
        check::warmup("optim.warmup_steps", o.warmup_steps, o.total_steps)?;
        check::non_negative("optim.lr", o.lr)?;
        check::non_negative("optim.weight_decay", o.weight_decay)?;
        check::betas("optim.betas", o.betas)?;
        check::positive("optim.eps", o.eps)?;
        // 0 = no clipping (MetaCLIP's default).
        check::non_negative("optim.clip_grad", o.clip_grad)?;
        if self.text.tokenizer.is_none() && self.text.vocab_size < 3 + 256 {
            return Err(TrainError::config(
                "text.vocab_size",
                "a byte-level BPE needs at least 259 tokens (256 bytes + SOT/EOT/PAD)",
            ));
        }
        if self.text.tokenizer.is_none() {
            check::int(
                "text.tokenizer_train_samples",
                self.text.tokenizer_train_samples as u64,
                1,
                1 << 32,
            )?;
        }
        check::int(
            "clip.embed_dim",
            self.clip.embed_dim as u64,
            1,
            webssl_models::config::limits::MAX_WIDTH as u64,
        )?;
        check::float(
            "clip.logit_scale_init",
            self.clip.logit_scale_init,
            0.0..=crate::objectives::clip::logit_scale_max(),
        )?;
        self.text_tower(self.text.vocab_size)?;
        Ok(())
    }
}
