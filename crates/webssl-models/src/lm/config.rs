//! [`LmConfig`]: the shape of a Llama-family or Qwen2 decoder, read from an HF `config.json`
//! (transformers `LlamaConfig` / `Qwen2Config`, both the v4 spelling `rope_theta` + `rope_scaling`
//! and the v5 one `rope_parameters`) or built from GGUF metadata (`lm::gguf`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ModelError, Result};

/// Which HF architecture the weights follow. The two differ only in the attention biases: Qwen2
/// always has q/k/v biases (`Qwen2Attention`), Llama has them when `attention_bias` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmFlavour {
    Llama,
    Qwen2,
}

/// RoPE frequency scaling (transformers `modeling_rope_utils`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama 3.1's `_compute_llama3_parameters`: low frequencies divided by `factor`, high ones
    /// kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// llama.cpp's `rope_freqs.weight`: one divisor per frequency (how GGUF files store the Llama 3.1
    /// scaling, computed from the same formula by `convert_hf_to_gguf.py`).
    FreqFactors { factors: Vec<f32> },
}

/// The decoder's shape and special tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    pub flavour: LmFlavour,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2 always; Llama with `attention_bias`; o_proj too for Llama then).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

fn usize_field(cfg: &Value, key: &str) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::config(key, "missing or not a non-negative integer"))
}

fn f64_field(cfg: &Value, key: &str) -> Option<f64> {
    cfg.get(key).and_then(Value::as_f64)
}

/// `eos_token_id` is an integer or a list of them in HF configs.
pub(crate) fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl LmConfig {
    /// Reads an HF `config.json` of `model_type` `llama` or `qwen2`.
    pub fn from_hf_json(cfg: &Value) -> Result<Self> {
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        let flavour = match model_type {
            "llama" => LmFlavour::Llama,
            "qwen2" => LmFlavour::Qwen2,
            other => {
                return Err(ModelError::config(
                    "model_type",
                    format!("expected `llama` or `qwen2`, got `{other}`"),
                ));
            }
        };
        if cfg.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::config(
                "mlp_bias",
                "MLP biases are not supported",
            ));
        }
        let hidden_size = usize_field(cfg, "hidden_size")?;
        let num_attention_heads = usize_field(cfg, "num_attention_heads")?;
        let num_key_value_heads = match cfg.get("num_key_value_heads") {
            Some(Value::Null) | None => num_attention_heads,
            Some(_) => usize_field(cfg, "num_key_value_heads")?,
        };
        let head_dim = match cfg.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads.max(1),
            Some(_) => usize_field(cfg, "head_dim")?,
        };
        // transformers v5 moved `rope_theta` and `rope_scaling` into `rope_parameters`.
        let rope = cfg
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| cfg.get("rope_scaling").filter(|v| v.is_object()));
        let rope_theta = f64_field(cfg, "rope_theta")
            .or_else(|| rope.and_then(|r| f64_field(r, "rope_theta")))
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => None,
            Some(r) => {
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let get = |k: &str| {
                            f64_field(r, k).ok_or_else(|| {
                                ModelError::config(
                                    format!("rope_scaling.{k}"),
                                    "missing for rope type llama3",
                                )
                            })
                        };
                        Some(RopeScaling::Llama3 {
                            factor: get("factor")?,
                            low_freq_factor: get("low_freq_factor")?,
                            high_freq_factor: get("high_freq_factor")?,
                            original_max_position_embeddings: get(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(ModelError::config(
                            "rope_scaling.rope_type",
                            format!("`{other}` is not supported (only default and llama3)"),
                        ));
                    }
                }
            }
        };
        let config = LmConfig {
            flavour,
            vocab_size: usize_field(cfg, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(cfg, "intermediate_size")?,
            num_hidden_layers: usize_field(cfg, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_field(cfg, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: cfg
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            tie_word_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: flavour == LmFlavour::Qwen2
                || cfg
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            bos_token_id: cfg
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_id: id_list(cfg.get("eos_token_id")),
        };
        config.validate()?;
        Ok(config)
    }

    /// The HF `config.json` of this model (v4 spelling, which v5 also reads).
    pub fn to_hf_json(&self) -> Value {
        let (model_type, arch) = match self.flavour {
            LmFlavour::Llama => ("llama", "LlamaForCausalLM"),
            LmFlavour::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        let rope_scaling = match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({"rope_type": "llama3", "factor": factor,
                "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings}),
            // No HF spelling: keep the factors under our own key (transformers would ignore it).
            Some(RopeScaling::FreqFactors { factors }) => {
                json!({"rope_type": "default", "webssl_freq_factors": factors})
            }
            None => Value::Null,
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        });
        if self.flavour == LmFlavour::Llama {
            v["attention_bias"] = json!(self.attention_bias);
        }
        v
    }

    /// Every field against its range; errors name the field.
    pub fn validate(&self) -> Result<()> {
        use crate::config::limits;
        for (field, v, hi) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, limits::MAX_WIDTH),
            (
                "intermediate_size",
                self.intermediate_size,
                8 * limits::MAX_WIDTH,
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                limits::MAX_DEPTH,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::MAX_WIDTH,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                limits::MAX_WIDTH,
            ),
            ("head_dim", self.head_dim, limits::MAX_WIDTH),
        ] {
            if !(1..=hi).contains(&v) {
                return Err(ModelError::config(
                    field,
                    format!("must be in [1, {hi}], got {v}"),
                ));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                "head_dim",
                format!("RoPE needs an even head_dim, got {}", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(ModelError::config(
                "rms_norm_eps",
                format!("must be finite and > 0, got {}", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return Err(ModelError::config(
                "rope_theta",
                format!("must be finite and > 1, got {}", self.rope_theta),
            ));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                if !(*factor > 0.0
                    && *low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor
                    && *original_max_position_embeddings > 0.0)
                {
                    return Err(ModelError::config(
                        "rope_scaling",
                        "llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and \
                         original_max_position_embeddings > 0",
                    ));
                }
            }
            Some(RopeScaling::FreqFactors { factors }) => {
                if factors.len() != self.head_dim / 2 || factors.iter().any(|f| !(*f > 0.0)) {
                    return Err(ModelError::config(
                        "rope_freqs",
                        format!(
                            "expected {} positive factors (head_dim / 2), got {}",
                            self.head_dim / 2,
                            factors.len()
                        ),
                    ));
                }
            }
            None => {}
        }
        Ok(())
    }

    /// The RoPE inverse frequencies, as transformers computes them (f32; `modeling_rope_utils`).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        // `1 / base ** (arange(0, d, 2).float() / d)`, the power taken in f32 as torch does.
        let base = self.rope_theta as f32;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.rope_scaling {
            None => inv,
            Some(RopeScaling::FreqFactors { factors }) => {
                inv.iter().zip(factors).map(|(f, s)| f / s).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            }) => {
                let (factor, lo, hi, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *old as f32,
                );
                let low_freq_wavelen = old / lo;
                let high_freq_wavelen = old / hi;
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        let medium =
                            !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
                        if medium {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// Trainable scalars.
    pub fn num_params(&self) -> u64 {
        let (v, d, f) = (
            self.vocab_size as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let o_bias = if self.attention_bias && self.flavour == LmFlavour::Llama {
            d
        } else {
            0
        };
        let layer = d * (q + 2 * kv) + bias + q * d + o_bias + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers as u64 * layer + d + head
    }
}
