//! The `webssl pretrain mae` configuration: one TOML file (presets in `configs/`), every field named
//! and unit-suffixed, unknown fields rejected. Defaults are MAE's released recipe
//! (`facebookresearch/mae` `main_pretrain.py` / `PRETRAIN.md`, docs/reference/training-algorithms.md §7.5):
//! mask ratio 0.75, normalised-pixel loss, decoder 512 × 8 with 16 heads, AdamW (0.9, 0.95), weight decay
//! 0.05, lr = 1.5e-4 · batch / 256, warm-up then half-cosine to 0, no gradient clipping. The Web-MAE
//! presets change lr to 1.6e-3 at batch 4096 (1e-4 per 256) with 80k warm-up steps
//! (docs/reference/webssl-paper.md §4.2).

use serde::{Deserialize, Serialize};
use webssl_models::mae::MaeDecoderConfig;
use webssl_models::{Ffn, Flavour, PosInterp, VitConfig};

use crate::error::{Result, TrainError};
use crate::run::config::check;
pub use crate::run::sections::{DataConfig, EvalConfig, ModelConfig, RunConfig, SynthSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaeConfig {
    /// Root of every random stream of the run (init, data order, augmentation, masks).
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    /// The encoder: the shape of a preset (`webssl model presets`), built as MAE's timm ViT.
    /// Whatever the preset's flavour, the encoder is a timm ViT (GELU MLP of `mlp_ratio · width`,
    /// no LayerScale, no registers, grid = crop size): a `web-dino-*` size gives the Web-MAE model
    /// of the same shape. `img_size`, `layerscale_init` and `drop_path_rate` are refused.
    pub model: ModelConfig,
    #[serde(default)]
    pub decoder: DecoderConfig,
    #[serde(default)]
    pub crop: CropConfig,
    #[serde(default)]
    pub loss: LossConfig,
    pub optim: OptimConfig,
    #[serde(default = "default_run")]
    pub run: RunConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

fn default_run() -> RunConfig {
    RunConfig {
        dir: "runs/mae".into(),
        ..RunConfig::default()
    }
}

/// MAE's decoder (`decoder_embed_dim`, `decoder_depth`, `decoder_num_heads`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            embed_dim: 512,
            depth: 8,
            num_heads: 16,
            mlp_ratio: 4.0,
        }
    }
}

/// `RandomResizedCrop(size, scale, bicubic)` + horizontal flip; `size` is also the encoder's
/// position-embedding grid (`size / patch`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CropConfig {
    pub size: u32,
    pub scale: (f64, f64),
}

impl Default for CropConfig {
    fn default() -> Self {
        Self {
            size: 224,
            scale: (0.2, 1.0),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Fraction of patches removed per image (`len_keep = int(N · (1 − ratio))`).
    pub mask_ratio: f64,
    /// Per-patch normalised pixel targets (all released MAE models).
    pub norm_pix_loss: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.75,
            norm_pix_loss: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Length of the run in optimizer steps.
    pub total_steps: u64,
    /// Linear warm-up from 0 (MAE's per-iteration schedule).
    pub warmup_steps: u64,
    /// MAE's `blr`: the learning rate for a global batch of 256, scaled linearly with the batch.
    #[serde(default = "default_lr_per_256")]
    pub lr_per_256: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    /// Global gradient-norm clip over all parameters; 0 = none (MAE's default).
    #[serde(default)]
    pub clip_grad: f64,
}

fn default_lr_per_256() -> f64 {
    1.5e-4
}
fn default_wd() -> f64 {
    0.05
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.95)
}

impl MaeConfig {
    /// The encoder: the preset's shape with this config's overrides, as a timm ViT at the crop size.
    pub fn vit(&self) -> Result<VitConfig> {
        self.model.refuse(&[
            (
                "img_size",
                "the MAE encoder's grid is the crop size (`crop.size`)",
            ),
            (
                "layerscale_init",
                "the MAE encoder is a timm ViT without LayerScale",
            ),
            ("drop_path_rate", "MAE pretrains without stochastic depth"),
        ])?;
        let shape = self.model.shape()?;
        let v = VitConfig {
            flavour: Flavour::Vit,
            img_size: self.crop.size as usize,
            patch_size: shape.patch_size,
            in_chans: shape.in_chans,
            embed_dim: shape.embed_dim,
            depth: shape.depth,
            num_heads: shape.num_heads,
            ffn: Ffn::Gelu,
            mlp_ratio: shape.mlp_ratio,
            num_register_tokens: 0,
            layerscale_init: None,
            qkv_bias: true,
            ln_eps: 1e-6,
            mask_token: false,
            pos_interp: PosInterp::Size,
        };
        v.validate().map_err(|e| check::in_section("model", e))?;
        if !v.embed_dim.is_multiple_of(4) {
            return Err(TrainError::config(
                "model.embed_dim",
                format!(
                    "{} is not a multiple of 4 (2-D sin-cos position embeddings)",
                    v.embed_dim
                ),
            ));
        }
        Ok(v)
    }

    /// The decoder for [`MaeConfig::vit`].
    pub fn decoder(&self) -> Result<MaeDecoderConfig> {
        let d = &self.decoder;
        let cfg = MaeDecoderConfig {
            embed_dim: d.embed_dim,
            depth: d.depth,
            num_heads: d.num_heads,
            mlp_ratio: d.mlp_ratio,
            ..MaeDecoderConfig::for_encoder(&self.vit()?)
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Patches per image and visible patches per image.
    pub fn tokens(&self) -> Result<(usize, usize)> {
        let n = self.vit()?.num_patches();
        Ok((n, webssl_data::masks::mae_len_keep(n, self.loss.mask_ratio)))
    }

    /// Every field against its documented range, and the consistency checks serde cannot express;
    /// each error names the field. Runs wherever a config is loaded (every command, `--dry-run`
    /// included) and again when training starts.
    pub fn validate(&self) -> Result<()> {
        self.data.validate(1, "one image per step at least")?;
        self.eval.validate()?;
        // The crop before the encoder: its own check would name `img_size`.
        let p = self.model.patch_size()?;
        check::crop_side("crop.size", self.crop.size, p)?;
        check::scale("crop.scale", self.crop.scale)?;
        let o = &self.optim;
        check::int("optim.total_steps", o.total_steps, 1, check::MAX_STEPS)?;
        check::warmup("optim.warmup_steps", o.warmup_steps, o.total_steps)?;
        check::non_negative("optim.lr_per_256", o.lr_per_256)?;
        check::non_negative("optim.min_lr", o.min_lr)?;
        check::non_negative("optim.weight_decay", o.weight_decay)?;
        // 0 = no clipping (MAE's default).
        check::non_negative("optim.clip_grad", o.clip_grad)?;
        check::betas("optim.betas", o.betas)?;
        check::float("loss.mask_ratio", self.loss.mask_ratio, 0.0..1.0)?;
        let (n, keep) = self.tokens()?;
        if keep == 0 || keep == n {
            return Err(TrainError::config(
                "loss.mask_ratio",
                format!(
                    "{} keeps {keep} of {n} patches; at least one must be kept and one removed",
                    self.loss.mask_ratio
                ),
            ));
        }
        self.decoder()?;
        Ok(())
    }

    /// The learning rate after linear scaling with the global batch (`blr · batch / 256`).
    pub fn scaled_lr(&self, world_size: usize) -> f64 {
        crate::schedule::scaled_lr_linear(self.optim.lr_per_256, self.data.global_batch(world_size))
    }
}
