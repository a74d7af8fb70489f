//! The decoder: transformers' `LlamaForCausalLM` (Llama 2/3/3.1, SmolLM2) and `Qwen2ForCausalLM` in
//! one implementation, switched by [`LmConfig`] (Qwen2 = q/k/v biases).
//!
//! Reference: transformers `models/llama/modeling_llama.py` (v4.45–v5), per layer
//!
//! ```text
//! h = x + o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))   causal, GQA
//! y = h + down_proj(silu(gate_proj(rms(h))) · up_proj(rms(h)))
//! logits = lm_head(rms(y))        (lm_head = embed_tokensᵀ when tie_word_embeddings)
//! ```
//!
//! RMSNorm in f32 (`x · rsqrt(mean(x²) + eps) · w`), RoPE with `rotate_half` (the HF layout, not
//! llama.cpp's interleaved one; `lm::gguf` undoes llama.cpp's permutation of q/k), grouped-query
//! attention without materialising repeated K/V (the query heads of one K/V head are stacked along
//! the rows of one product). Positions come from the attention mask as transformers' `generate`
//! derives them (`cumsum(mask) − 1`, padding at 1), so left- and right-padded batches give every
//! real token the logits it has alone. Masked scores get `f32::MIN` added (transformers' eager
//! attention), so a query with no visible key (left padding) stays finite.
//!
//! Parameter paths are the HF keys (`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`),
//! burn `Linear` weights `[in, out]`. The softmax goes through the fused CPU kernel where it applies
//! (`kernels::softmax`); the fused attention kernel has no mask and is not used here.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::config::{LmConfig, LmFlavour};
use crate::error::Result;
use crate::{kernels, precision, text};

/// `x · rsqrt(mean(x²) + eps) · weight` over the last dimension (HF `LlamaRMSNorm`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let var = x.clone().powi_scalar(2).mean_dim(2);
        x * (var + self.eps).sqrt().recip() * self.weight.val().unsqueeze::<3>()
    }
}

#[derive(Module, Debug)]
pub struct LmAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// `x · cos + rotate_half(x) · sin`, `rotate_half([x1 | x2]) = [−x2 | x1]`.
///
/// # Shapes
/// `x`: `[B, H, T, Dh]`, `cos`, `sin`: `[B, 1, T, Dh]`
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
    let rotated = Tensor::cat(vec![-x2, x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

impl LmAttention {
    /// # Shapes
    /// `x`: `[B, T, D]`, `bias`: `[B, 1, 1, T, S]` (S = cached + T keys) → `[B, T, D]`
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        bias: &Tensor<5>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, dh) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, dh]).swap_dims(1, 2);
        let q = rope(
            heads(precision::linear(x.clone(), &self.q_proj), h),
            cos,
            sin,
        );
        let mut k = rope(
            heads(precision::linear(x.clone(), &self.k_proj), kvh),
            cos,
            sin,
        );
        let mut v = heads(precision::linear(x, &self.v_proj), kvh);
        if let Some(slot) = cache {
            if let Some((k0, v0)) = slot.take() {
                k = Tensor::cat(vec![k0, k], 2);
                v = Tensor::cat(vec![v0, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let s = k.dims()[2];
        let rep = h / kvh;
        // Query head j uses K/V head j / rep (HF `repeat_kv`): stack each group's rows.
        let q = q.reshape([b, kvh, rep * t, dh]);
        let scores = precision::matmul(q, k.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt());
        let scores = scores.reshape([b, kvh, rep, t, s]) + bias.clone();
        let p = kernels::softmax(scores).reshape([b, kvh, rep * t, s]);
        let out = precision::matmul(p, v)
            .reshape([b, h, t, dh])
            .swap_dims(1, 2)
            .reshape([b, t, h * dh]);
        precision::linear(out, &self.o_proj)
    }
}

#[derive(Module, Debug)]
pub struct LmMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl LmMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let g = silu(precision::linear(x.clone(), &self.gate_proj));
        precision::linear(g * precision::linear(x, &self.up_proj), &self.down_proj)
    }
}

#[derive(Module, Debug)]
pub struct LmLayer {
    pub self_attn: LmAttention,
    pub mlp: LmMlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// HF's `LlamaModel` (embeddings, layers, final norm).
#[derive(Module, Debug)]
pub struct LmBody {
    pub embed_tokens: Embedding,
    pub layers: Vec<LmLayer>,
    pub norm: RmsNorm,
}

/// A decoder-only language model with its LM head; see the module docs.
#[derive(Module, Debug)]
pub struct CausalLm {
    pub model: LmBody,
    /// `None` when the head is tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub config: LmConfig,
}

/// Keys and values of every layer seen so far, and which of those positions are real tokens.
///
/// A cache belongs to one batch: every call of [`CausalLm::forward_embeds`] with it must have the
/// same batch size.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Per row, whether each cached position is a real token (the attention mask so far).
    mask: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cached positions (padding included).
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Draws with the init transformers' `_init_weights` uses for these models: N(0, 0.02²) for
/// linear weights and embeddings, zero biases, unit norms.
struct Init<'a> {
    rng: Option<&'a mut ChaCha8Rng>,
    device: &'a Device,
}

impl Init<'_> {
    fn weight<const D: usize>(&mut self, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::from_tensor(match self.rng.as_deref_mut() {
            Some(rng) => text::normal(rng, shape, 0.02, self.device),
            None => Tensor::zeros(shape, self.device),
        })
    }
    fn linear(&mut self, i: usize, o: usize, bias: bool) -> Linear {
        Linear {
            weight: self.weight([i, o]),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([o], self.device))),
        }
    }
    fn norm(&mut self, d: usize, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], self.device)),
            eps,
        }
    }
}

impl CausalLm {
    /// A freshly initialised model (N(0, 0.02²) weights from the ChaCha8 stream `seed`, as
    /// transformers' `_init_weights`), e.g. a tiny LM trained from scratch.
    pub fn new(cfg: &LmConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(Self::build(
            cfg,
            Init {
                rng: Some(&mut rng),
                device,
            },
        ))
    }

    /// A model of `cfg` with zero weights, to be filled by a loader.
    pub(crate) fn zeros(cfg: &LmConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::build(cfg, Init { rng: None, device }))
    }

    fn build(cfg: &LmConfig, mut init: Init<'_>) -> Self {
        let (d, dh) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_attention_heads * dh, cfg.num_key_value_heads * dh);
        let o_bias = cfg.attention_bias && cfg.flavour == LmFlavour::Llama;
        let embed_tokens = Embedding {
            weight: init.weight([cfg.vocab_size, d]),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LmLayer {
                self_attn: LmAttention {
                    q_proj: init.linear(d, qd, cfg.attention_bias),
                    k_proj: init.linear(d, kvd, cfg.attention_bias),
                    v_proj: init.linear(d, kvd, cfg.attention_bias),
                    o_proj: init.linear(qd, d, o_bias),
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_key_value_heads,
                    head_dim: dh,
                },
                mlp: LmMlp {
                    gate_proj: init.linear(d, cfg.intermediate_size, false),
                    up_proj: init.linear(d, cfg.intermediate_size, false),
                    down_proj: init.linear(cfg.intermediate_size, d, false),
                },
                input_layernorm: init.norm(d, cfg.rms_norm_eps),
                post_attention_layernorm: init.norm(d, cfg.rms_norm_eps),
            })
            .collect();
        let norm = init.norm(d, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings).then(|| init.linear(d, cfg.vocab_size, false));
        CausalLm {
            model: LmBody {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            config: cfg.clone(),
        }
    }

    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// `ids`: `[B, T]` → `[B, T, D]`
    pub fn embed_tokens(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
        self.model
            .embed_tokens
            .weight
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d])
    }

    /// Logits of every position; see [`CausalLm::hidden_states`] for the arguments.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `attention_mask`: `[B, T]` → `[B, T, vocab]`
    pub fn forward_embeds(
        &self,
        x: Tensor<3>,
        attention_mask: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.lm_head(self.hidden_states(x, attention_mask, cache))
    }

    /// The final-norm hidden states (what the LM head reads): causal attention over the cached
    /// positions and `x`; `attention_mask` is 1 for real tokens and 0 for padding (left or right;
    /// `None` = all real). With a cache, `x` continues the cached sequences and the cache is
    /// extended by it.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `attention_mask`: `[B, T]` → `[B, T, D]`
    ///
    /// # Panics
    /// If the mask's shape is not `[B, T]` or the cache holds another batch size (caller bugs).
    pub fn hidden_states(
        &self,
        x: Tensor<3>,
        attention_mask: Option<Tensor<2, Int>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let device = x.device();
        let new_mask: Vec<bool> = match attention_mask {
            Some(m) => {
                assert_eq!(m.dims(), [b, t], "attention_mask must be [batch, tokens]");
                m.into_data().iter::<i64>().map(|v| v != 0).collect()
            }
            None => vec![true; b * t],
        };
        let empty = Vec::new();
        let past: Vec<&Vec<bool>> = match cache.as_deref() {
            Some(c) if !c.mask.is_empty() => {
                assert_eq!(c.mask.len(), b, "the KV cache holds another batch size");
                c.mask.iter().collect()
            }
            _ => vec![&empty; b],
        };
        let p = past[0].len();
        let s = p + t;
        // Positions (transformers `generate`: cumsum(mask) − 1, padding at 1) and the additive mask.
        let mut positions = vec![0f32; b * t];
        let mut bias = vec![f32::MIN; b * t * s];
        for r in 0..b {
            let row = &new_mask[r * t..(r + 1) * t];
            let mut real = past[r].iter().filter(|&&m| m).count();
            for (i, &m) in row.iter().enumerate() {
                positions[r * t + i] = if m {
                    real += 1;
                    (real - 1) as f32
                } else {
                    1.0
                };
                let keys = past[r].iter().chain(row.iter()).take(p + i + 1);
                for (j, &k) in keys.enumerate() {
                    if k {
                        bias[(r * t + i) * s + j] = 0.0;
                    }
                }
            }
        }
        let inv_freq = self.config.inv_freq();
        let dh = self.config.head_dim;
        let (mut cos, mut sin) = (vec![0f32; b * t * dh], vec![0f32; b * t * dh]);
        for (n, &pos) in positions.iter().enumerate() {
            for (k, &f) in inv_freq.iter().enumerate() {
                // f32 product as in HF (`inv_freq @ position_ids` in f32), cos/sin correctly rounded.
                let a = (f * pos) as f64;
                for half in [0, dh / 2] {
                    cos[n * dh + half + k] = a.cos() as f32;
                    sin[n * dh + half + k] = a.sin() as f32;
                }
            }
        }
        let cos = Tensor::<4>::from_data(TensorData::new(cos, [b, 1, t, dh]), &device);
        let sin = Tensor::<4>::from_data(TensorData::new(sin, [b, 1, t, dh]), &device);
        let bias = Tensor::<5>::from_data(TensorData::new(bias, [b, 1, 1, t, s]), &device);

        let layers = &self.model.layers;
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(layers.len(), None);
            if c.mask.is_empty() {
                c.mask = vec![Vec::new(); b];
            }
            for r in 0..b {
                c.mask[r].extend_from_slice(&new_mask[r * t..(r + 1) * t]);
            }
        }
        let mut x = x;
        for (i, layer) in layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let a = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &cos,
                &sin,
                &bias,
                slot,
            );
            let h = x + a;
            x = h.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(h));
        }
        self.model.norm.forward(x)
    }

    /// Logits from final-norm hidden states (the tied embedding or `lm_head`).
    ///
    /// # Shapes
    /// `[B, T, D]` → `[B, T, vocab]`
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => precision::linear(hidden, head),
            None => precision::linear_weight(
                hidden,
                self.model.embed_tokens.weight.val().transpose(),
                None,
            ),
        }
    }
}
