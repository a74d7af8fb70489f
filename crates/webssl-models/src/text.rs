//! The CLIP text tower: a causal (GPT-style) pre-LN transformer whose feature is the final-LayerNorm
//! output at the end-of-text token, projected without bias.
//!
//! Reference: OpenAI CLIP `clip/model.py::CLIP.encode_text` and open_clip / MetaCLIP
//! `TextTransformer` (`src/mini_clip/model.py`, docs/reference/training-algorithms.md §8):
//!
//! ```text
//! x = token_embedding[ids] + positional_embedding[:L]          [B, L, W]
//! x = x + attn(ln_1(x), causal)    (× layers)                   pre-LN residual blocks
//! x = x + c_proj(act(c_fc(ln_2(x))))                            act = QuickGELU (MetaCLIP) or GELU
//! f = ln_final(x)[b, eot_b] @ text_projection                   [B, E], no bias
//! ```
//!
//! Parameter names follow open_clip (`token_embedding`, `positional_embedding`, `ln_1`, `c_fc`,
//! `c_proj`, `ln_final`, `text_projection`), with two deviations: blocks live under `blocks.<i>` (not
//! `transformer.resblocks.<i>`) and attention is one fused `qkv` linear plus `proj` (PyTorch's
//! `in_proj_weight`/`out_proj`), as in the ViT. burn `Linear` weights are `[in, out]`.
//!
//! EOT pooling: OpenAI CLIP takes `argmax(ids)` because its EOT has the largest id; a trained BPE
//! gives no such guarantee, so the caller passes each sequence's EOT position explicitly (the
//! tokenizer knows it). Because attention is causal, the feature at position `p` depends only on
//! tokens `0..=p`: [`TextTransformer::forward`] therefore accepts sequences cut after the batch's
//! last EOT (padding beyond it cannot change the result), which is how the trainer saves the ~5×
//! of compute that padding short captions to 77 would cost.
//!
//! Initialisation (open_clip `TextTransformer.init_parameters`): token embedding N(0, 0.02²),
//! positional embedding N(0, 0.01²), attention in-proj N(0, W⁻¹), attention out-proj and `c_proj`
//! N(0, W⁻¹·(2·layers)⁻¹), `c_fc` N(0, (2W)⁻¹), text projection N(0, W⁻¹), LayerNorm 1/0. Deviation:
//! all biases start at 0 (open_clip leaves the MLP biases at PyTorch's default uniform init). Draws
//! come from one explicit ChaCha8 stream seeded by the caller, never from a global RNG.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::precision;
use crate::vit::LayerNorm;

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextActivation {
    /// `x · σ(1.702·x)` (OpenAI CLIP, MetaCLIP).
    #[default]
    QuickGelu,
    /// Exact (erf) GELU (open_clip's default `nn.GELU`).
    Gelu,
}

/// Shape of a [`TextTransformer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub vocab_size: usize,
    /// Maximum tokens per caption, SOT and EOT included (CLIP: 77).
    pub context_length: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    /// MLP hidden = `mlp_ratio · width`.
    pub mlp_ratio: f64,
    /// Output (joint embedding) dimension E.
    pub embed_dim: usize,
    pub activation: TextActivation,
    /// LayerNorm eps (PyTorch's `nn.LayerNorm` default 1e-5).
    pub ln_eps: f64,
}

impl TextConfig {
    /// CLIP's text tower shape with the given vocabulary, width, heads, layers and output dim.
    pub fn new(
        vocab_size: usize,
        width: usize,
        heads: usize,
        layers: usize,
        embed_dim: usize,
    ) -> Self {
        Self {
            vocab_size,
            context_length: 77,
            width,
            heads,
            layers,
            mlp_ratio: 4.0,
            embed_dim,
            activation: TextActivation::QuickGelu,
            ln_eps: 1e-5,
        }
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }

    /// Every field against its range (the bounds of [`crate::config::limits`]); errors name the
    /// field as `text.<field>`.
    pub fn validate(&self) -> Result<()> {
        use crate::config::limits;
        let bad = |field: &str, reason: String| {
            Err(ModelError::Config {
                field: format!("text.{field}"),
                reason,
            })
        };
        for (field, v, lo, hi) in [
            ("vocab_size", self.vocab_size, 1, 1 << 24),
            // SOT + EOT at least.
            ("context_length", self.context_length, 2, 1 << 16),
            ("width", self.width, 1, limits::MAX_WIDTH),
            ("heads", self.heads, 1, limits::MAX_WIDTH),
            ("layers", self.layers, 1, limits::MAX_DEPTH),
            ("embed_dim", self.embed_dim, 1, limits::MAX_WIDTH),
        ] {
            if !(lo..=hi).contains(&v) {
                return bad(field, format!("must be in [{lo}, {hi}], got {v}"));
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!(
                    "width {} is not a multiple of {} heads",
                    self.width, self.heads
                ),
            );
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= limits::MAX_MLP_RATIO)
            || self.mlp_hidden() == 0
        {
            return bad(
                "mlp_ratio",
                format!(
                    "must be in (0, {}] with a non-empty MLP, got {}",
                    limits::MAX_MLP_RATIO,
                    self.mlp_ratio
                ),
            );
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return bad(
                "ln_eps",
                format!("must be finite and > 0, got {}", self.ln_eps),
            );
        }
        Ok(())
    }

    /// Trainable scalars.
    pub fn num_params(&self) -> u64 {
        let (v, l, w, h, e) = (
            self.vocab_size as u64,
            self.context_length as u64,
            self.width as u64,
            self.mlp_hidden() as u64,
            self.embed_dim as u64,
        );
        let block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w);
        v * w + l * w + self.layers as u64 * block + 2 * w + w * e
    }
}

#[derive(Module, Debug)]
pub struct CausalAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl CausalAttention {
    /// # Shapes
    /// `[B, L, W]` → `[B, L, W]`; position `i` attends to `0..=i`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let qkv = precision::linear_compute(x, &self.qkv)
            .reshape([b, n, 3, h, d / h])
            .permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().slice(0..1).squeeze_dim::<4>(0);
        let k = qkv.clone().slice(1..2).squeeze_dim::<4>(0);
        let v = qkv.slice(2..3).squeeze_dim::<4>(0);
        let options = AttentionModuleOptions {
            is_causal: true,
            ..AttentionModuleOptions::default()
        };
        let out = attention(q, k, v, None, None, options);
        precision::linear(out.swap_dims(1, 2).reshape([b, n, d]), &self.proj)
    }
}

#[derive(Module, Debug)]
pub struct TextMlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
    /// QuickGELU when true, GELU otherwise.
    pub quick_gelu: bool,
}

impl TextMlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = precision::linear(x, &self.c_fc);
        let h = if self.quick_gelu {
            h.clone() * sigmoid(h * 1.702)
        } else {
            gelu(h)
        };
        precision::linear(h, &self.c_proj)
    }
}

/// Pre-LN residual block with causal self-attention (open_clip `ResidualAttentionBlock`).
#[derive(Module, Debug)]
pub struct TextBlock {
    pub ln_1: LayerNorm,
    pub attn: CausalAttention,
    pub ln_2: LayerNorm,
    pub mlp: TextMlp,
}

impl TextBlock {
    /// # Shapes
    /// `[B, L, W]` → `[B, L, W]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// The CLIP text encoder; see the module docs.
#[derive(Module, Debug)]
pub struct TextTransformer {
    /// `[V, W]`
    pub token_embedding: Param<Tensor<2>>,
    /// `[context_length, W]`
    pub positional_embedding: Param<Tensor<2>>,
    pub blocks: Vec<TextBlock>,
    pub ln_final: LayerNorm,
    /// `[W, E]`, no bias.
    pub text_projection: Param<Tensor<2>>,
    #[module(skip)]
    pub config: TextConfig,
}

pub(crate) fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `n` draws of N(0, std²) (Box–Muller) as a `shape` tensor.
pub(crate) fn normal<const D: usize>(
    rng: &mut ChaCha8Rng,
    shape: [usize; D],
    std: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = 1.0 - uniform01(rng);
            let u2 = uniform01(rng);
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn linear(rng: &mut ChaCha8Rng, i: usize, o: usize, std: f64, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(normal(rng, [i, o], std, device)),
        bias: Some(Param::from_tensor(Tensor::zeros([o], device))),
    }
}

impl TextTransformer {
    /// A freshly initialised tower (open_clip init, see the module docs) from an explicit seed.
    pub fn new(cfg: &TextConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = cfg.width;
        let attn_std = (w as f64).powf(-0.5);
        let proj_std = attn_std * ((2 * cfg.layers) as f64).powf(-0.5);
        let fc_std = ((2 * w) as f64).powf(-0.5);
        let token_embedding = normal(&mut rng, [cfg.vocab_size, w], 0.02, device);
        let positional_embedding = normal(&mut rng, [cfg.context_length, w], 0.01, device);
        let blocks = (0..cfg.layers)
            .map(|_| TextBlock {
                ln_1: LayerNorm::new(w, cfg.ln_eps, device),
                attn: CausalAttention {
                    qkv: linear(&mut rng, w, 3 * w, attn_std, device),
                    proj: linear(&mut rng, w, w, proj_std, device),
                    num_heads: cfg.heads,
                },
                ln_2: LayerNorm::new(w, cfg.ln_eps, device),
                mlp: TextMlp {
                    c_fc: linear(&mut rng, w, cfg.mlp_hidden(), fc_std, device),
                    c_proj: linear(&mut rng, cfg.mlp_hidden(), w, proj_std, device),
                    quick_gelu: cfg.activation == TextActivation::QuickGelu,
                },
            })
            .collect();
        let text_projection = normal(&mut rng, [w, cfg.embed_dim], attn_std, device);
        Ok(TextTransformer {
            token_embedding: Param::from_tensor(token_embedding),
            positional_embedding: Param::from_tensor(positional_embedding),
            blocks,
            ln_final: LayerNorm::new(w, cfg.ln_eps, device),
            text_projection: Param::from_tensor(text_projection),
            config: cfg.clone(),
        })
    }

    /// Projected text features at the EOT positions (not L2-normalised).
    ///
    /// `tokens` may be shorter than `context_length` (see the module docs); every `eot[b]` must be
    /// a position inside it.
    ///
    /// # Shapes
    /// - tokens: `[B, L]` token ids, `L ≤ context_length`
    /// - eot: `B` positions
    /// - returns: `[B, E]`
    ///
    /// # Panics
    /// If `eot.len() != B`, an EOT position is `≥ L`, or `L > context_length` (caller bugs: the
    /// tokenizer produces both).
    pub fn forward(&self, tokens: Tensor<2, Int>, eot: &[usize]) -> Tensor<2> {
        let [b, l] = tokens.dims();
        let w = self.config.width;
        assert_eq!(eot.len(), b, "one EOT position per sequence");
        assert!(
            l <= self.config.context_length,
            "{l} tokens exceed the context length {}",
            self.config.context_length
        );
        assert!(
            eot.iter().all(|&p| p < l),
            "EOT position outside the sequence"
        );
        let device = tokens.device();
        let x = self
            .token_embedding
            .val()
            .select(0, tokens.reshape([b * l]))
            .reshape([b, l, w]);
        let pos = self.positional_embedding.val().slice(0..l).unsqueeze::<3>();
        let mut x = x + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.ln_final.forward(x);
        let rows: Vec<i64> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * l + p) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &device);
        let pooled = x.reshape([b * l, w]).select(0, idx);
        precision::matmul(pooled, self.text_projection.val())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextConfig {
        TextConfig {
            context_length: 8,
            ..TextConfig::new(20, 16, 2, 2, 8)
        }
    }

    #[test]
    fn param_count_matches_the_module() {
        let cfg = tiny();
        let m = TextTransformer::new(&cfg, 0, &Device::flex()).unwrap();
        assert_eq!(m.num_params() as u64, cfg.num_params());
    }

    #[test]
    fn padding_after_eot_does_not_change_the_feature() {
        // Causality: the feature at the EOT position ignores everything after it.
        let cfg = tiny();
        let dev = Device::flex();
        let m = TextTransformer::new(&cfg, 1, &dev).unwrap();
        let ids = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &dev)
        };
        let a = m.forward(ids(vec![1, 5, 7, 2]), &[3]);
        let b = m.forward(ids(vec![1, 5, 7, 2, 9, 9, 3, 4]), &[3]);
        let c = m.forward(ids(vec![1, 5, 8, 2, 9, 9, 3, 4]), &[3]);
        let diff = |x: Tensor<2>, y: Tensor<2>| {
            (x - y)
                .abs()
                .max()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()[0]
        };
        assert!(diff(a.clone(), b) < 1e-5);
        assert!(diff(a, c) > 1e-4, "a token before EOT must matter");
    }

    #[test]
    fn bad_shapes_are_config_errors() {
        let cfg = TextConfig { heads: 3, ..tiny() };
        assert!(TextTransformer::new(&cfg, 0, &Device::flex()).is_err());
    }
}
