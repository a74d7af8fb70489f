//! Vision Transformer configuration shared by the DINOv2 and timm/MAE flavours, and its mapping to and
//! from HuggingFace `config.json` (`Dinov2Model`, `Dinov2WithRegistersModel`, `ViTModel`, `ViTMAEModel`).
//!
//! One struct describes every released Web-DINO / Web-MAE backbone; the flavours differ only in a few
//! switches (FFN kind, LayerScale, registers, mask token) and in how position embeddings are resampled,
//! which depends on where the checkpoint came from (see [`PosInterp`]).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which family a backbone belongs to; decides the HF class it exports to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// DINOv2 `DinoVisionTransformer` / HF `Dinov2Model` (LayerScale, optional SwiGLU, registers).
    Dinov2,
    /// timm `VisionTransformer` as used by MAE / HF `ViTModel` (GELU MLP, no LayerScale).
    Vit,
}

/// The feed-forward block of each transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ffn {
    /// `fc2(gelu(fc1(x)))` with exact (erf) GELU, hidden = `mlp_ratio · d`.
    Gelu,
    /// DINOv2 `SwiGLUFFNFused`: `w3(silu(x1) · x2)` with `[x1, x2] = w12(x)`,
    /// hidden = round_up_8(⌊2/3 · ⌊mlp_ratio · d⌋⌋).
    Swiglu,
}

/// How learned absolute position embeddings are resampled to another patch grid. The three paths give
/// slightly different numbers, so each checkpoint is run the way its own code runs it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PosInterp {
    /// `facebookresearch/dinov2`: `F.interpolate(scale_factor=(h+offset)/M, mode="bicubic",
    /// antialias=antialias)`; Web-DINO uses offset 0.1, no antialias.
    Dinov2 { offset: f64, antialias: bool },
    /// HF `Dinov2Model` / `ViTModel`: `F.interpolate(size=(h, w), mode="bicubic", align_corners=False)`.
    Size,
    /// HF `Dinov2WithRegistersModel`: as [`PosInterp::Size`] with `antialias=True`.
    SizeAntialias,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub flavour: Flavour,
    /// Pretraining resolution; the position-embedding grid is `img_size / patch_size` squared.
    pub img_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub ffn: Ffn,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub num_register_tokens: usize,
    /// `Some(init)` adds LayerScale after attention and FFN (DINOv2 init 1e-5); `None` has none (MAE).
    pub layerscale_init: Option<f64>,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default = "default_ln_eps")]
    pub ln_eps: f64,
    /// Whether the model owns a `mask_token` (needed by iBOT; HF `use_mask_token`).
    #[serde(default = "default_true")]
    pub mask_token: bool,
    pub pos_interp: PosInterp,
}

fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}
fn default_ln_eps() -> f64 {
    1e-6
}

impl VitConfig {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Hidden width of the FFN, exactly as DINOv2 and HF compute it.
    pub fn ffn_hidden(&self) -> usize {
        let nominal = (self.embed_dim as f64 * self.mlp_ratio) as usize;
        match self.ffn {
            Ffn::Gelu => nominal,
            Ffn::Swiglu => (nominal * 2 / 3).div_ceil(8) * 8,
        }
    }

    /// Side of the pretraining patch grid (`M` with `M·M` position embeddings).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks internal consistency; every message names the field.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("in_chans", self.in_chans),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(ModelError::config(field, "must be > 0"));
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(ModelError::config(
                "num_heads",
                format!(
                    "embed_dim {} is not divisible by num_heads {}",
                    self.embed_dim, self.num_heads
                ),
            ));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::config(
                "img_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    self.img_size, self.patch_size
                ),
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return Err(ModelError::config("mlp_ratio", "must be > 0"));
        }
        Ok(())
    }

    /// Reads an HF `config.json` (`dinov2`, `dinov2_with_registers`, `vit`, `vit_mae`).
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self> {
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                ModelError::config(
                    "model_type",
                    "missing; expected dinov2, dinov2_with_registers, vit or vit_mae",
                )
            })?;
        let usize_field = |name: &str| -> Result<usize> {
            json.get(name)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::config(name, "missing or not a non-negative integer"))
        };
        let f64_or = |name: &str, default: f64| -> Result<f64> {
            match json.get(name) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| ModelError::config(name, "not a number")),
            }
        };
        let bool_or = |name: &str, default: bool| -> Result<bool> {
            match json.get(name) {
                None => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| ModelError::config(name, "not a boolean")),
            }
        };
        let image_size = usize_field("image_size")?;
        let patch_size = usize_field("patch_size")?;
        let embed_dim = usize_field("hidden_size")?;
        let depth = usize_field("num_hidden_layers")?;
        let num_heads = usize_field("num_attention_heads")?;
        let in_chans = match json.get("num_channels") {
            None => 3,
            Some(_) => usize_field("num_channels")?,
        };
        let act = json
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu");
        let cfg = match model_type {
            "dinov2" | "dinov2_with_registers" => {
                let swiglu = bool_or("use_swiglu_ffn", false)?;
                if !swiglu && act != "gelu" {
                    return Err(ModelError::config(
                        "hidden_act",
                        format!("`{act}` unsupported; only exact gelu"),
                    ));
                }
                let regs = model_type == "dinov2_with_registers";
                VitConfig {
                    flavour: Flavour::Dinov2,
                    img_size: image_size,
                    patch_size,
                    in_chans,
                    embed_dim,
                    depth,
                    num_heads,
                    ffn: if swiglu { Ffn::Swiglu } else { Ffn::Gelu },
                    mlp_ratio: f64_or("mlp_ratio", 4.0)?,
                    num_register_tokens: if regs {
                        usize_field("num_register_tokens")?
                    } else {
                        0
                    },
                    layerscale_init: Some(f64_or("layerscale_value", 1.0)?),
                    qkv_bias: bool_or("qkv_bias", true)?,
                    ln_eps: f64_or("layer_norm_eps", 1e-6)?,
                    // Dinov2WithRegisters always carries the mask token; Dinov2 has `use_mask_token`.
                    mask_token: if regs {
                        true
                    } else {
                        bool_or("use_mask_token", true)?
                    },
                    pos_interp: if regs {
                        PosInterp::SizeAntialias
                    } else {
                        PosInterp::Size
                    },
                }
            }
            "vit" | "vit_mae" => {
                if act != "gelu" {
                    return Err(ModelError::config(
                        "hidden_act",
                        format!("`{act}` unsupported; only exact gelu"),
                    ));
                }
                let hidden = usize_field("intermediate_size")?;
                VitConfig {
                    flavour: Flavour::Vit,
                    img_size: image_size,
                    patch_size,
                    in_chans,
                    embed_dim,
                    depth,
                    num_heads,
                    ffn: Ffn::Gelu,
                    mlp_ratio: hidden as f64 / embed_dim as f64,
                    num_register_tokens: 0,
                    layerscale_init: None,
                    qkv_bias: bool_or("qkv_bias", true)?,
                    ln_eps: f64_or("layer_norm_eps", 1e-12)?,
                    mask_token: false,
                    pos_interp: PosInterp::Size,
                }
            }
            other => {
                return Err(ModelError::config(
                    "model_type",
                    format!(
                        "`{other}` unsupported; expected dinov2, dinov2_with_registers, vit or vit_mae"
                    ),
                ));
            }
        };
        if cfg.ffn == Ffn::Gelu && cfg.ffn_hidden() as f64 != cfg.embed_dim as f64 * cfg.mlp_ratio {
            return Err(ModelError::config(
                "intermediate_size",
                "is not an integer multiple pattern of hidden_size",
            ));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The HF `config.json` that `transformers` loads as `Dinov2Model`, `Dinov2WithRegistersModel` or
    /// `ViTModel` with exactly this architecture.
    pub fn to_hf_json(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        Ok(match self.flavour {
            Flavour::Dinov2 => {
                let regs = self.num_register_tokens > 0;
                let (model_type, arch) = if regs {
                    ("dinov2_with_registers", "Dinov2WithRegistersModel")
                } else {
                    ("dinov2", "Dinov2Model")
                };
                let mut v = json!({
                    "architectures": [arch],
                    "model_type": model_type,
                    "hidden_size": self.embed_dim,
                    "num_hidden_layers": self.depth,
                    "num_attention_heads": self.num_heads,
                    // transformers 5 validates `mlp_ratio` as an int and rejects `4.0`.
                    "mlp_ratio": if self.mlp_ratio.fract() == 0.0 { json!(self.mlp_ratio as u64) } else { json!(self.mlp_ratio) },
                    "use_swiglu_ffn": self.ffn == Ffn::Swiglu,
                    "hidden_act": "gelu",
                    "image_size": self.img_size,
                    "patch_size": self.patch_size,
                    "num_channels": self.in_chans,
                    "qkv_bias": self.qkv_bias,
                    "layer_norm_eps": self.ln_eps,
                    "layerscale_value": self.layerscale_init.unwrap_or(1.0),
                    "drop_path_rate": 0.0,
                    "hidden_dropout_prob": 0.0,
                    "attention_probs_dropout_prob": 0.0,
                    "initializer_range": 0.02,
                    "torch_dtype": "float32",
                });
                if regs {
                    v["num_register_tokens"] = json!(self.num_register_tokens);
                } else {
                    v["use_mask_token"] = json!(self.mask_token);
                }
                if self.layerscale_init.is_none() {
                    return Err(ModelError::config(
                        "layerscale_init",
                        "HF Dinov2Model always has LayerScale; export a model without it as flavour `vit`",
                    ));
                }
                v
            }
            Flavour::Vit => {
                if self.ffn != Ffn::Gelu
                    || self.num_register_tokens > 0
                    || self.layerscale_init.is_some()
                {
                    return Err(ModelError::config(
                        "flavour",
                        "HF ViTModel has a GELU MLP and no LayerScale or registers",
                    ));
                }
                json!({
                    "architectures": ["ViTModel"],
                    "model_type": "vit",
                    "hidden_size": self.embed_dim,
                    "num_hidden_layers": self.depth,
                    "num_attention_heads": self.num_heads,
                    "intermediate_size": self.ffn_hidden(),
                    "hidden_act": "gelu",
                    "image_size": self.img_size,
                    "patch_size": self.patch_size,
                    "num_channels": self.in_chans,
                    "qkv_bias": self.qkv_bias,
                    "layer_norm_eps": self.ln_eps,
                    "hidden_dropout_prob": 0.0,
                    "attention_probs_dropout_prob": 0.0,
                    "initializer_range": 0.02,
                    "encoder_stride": self.patch_size,
                    "torch_dtype": "float32",
                })
            }
        })
    }
}
