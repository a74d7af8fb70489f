//! The Masked Autoencoder pieces around a timm-flavour [`Vit`] encoder: the MAE decoder, the fixed 2-D
//! sin-cos position embeddings, `patchify`, and MAE's weight initialisation.
//!
//! Reference: `facebookresearch/mae` `models_mae.py` (`MaskedAutoencoderViT`: `forward_decoder`,
//! `patchify`, `initialize_weights`, `_init_weights`) and `util/pos_embed.py`
//! (`get_2d_sincos_pos_embed`); `docs/reference/training-algorithms.md` §7.1–7.3. The decoder is
//! `decoder_embed` Linear(D → D_dec) → mask tokens appended after the visible tokens → unshuffle with
//! `ids_restore` → CLS back in front → + fixed sin-cos position embeddings → pre-norm blocks (timm
//! `Block`: qkv bias, exact GELU MLP, LayerNorm eps 1e-6) → `decoder_norm` → `decoder_pred`
//! Linear(D_dec → p²·C) → CLS dropped. Defaults are the paper's 512 wide × 8 deep with 16 heads.
//! Parameter names follow MAE's checkpoint keys (`decoder_embed`, `mask_token`, `decoder_pos_embed`,
//! `decoder_blocks.<i>.…`, `decoder_norm`, `decoder_pred`).
//!
//! Initialisation ([`MaeDecoder::new`], [`mae_encoder`]) follows `initialize_weights`: every
//! Linear (including the patch embedding seen as a Linear on its flattened `[D, C·p²]` view) is
//! xavier-uniform with bias 0, CLS and mask tokens are N(0, 0.02²), LayerNorms (1, 0), position
//! embeddings are the fixed sin-cos table and are **not trainable** (`requires_grad=False` in MAE:
//! our parameters carry `require_grad = false`, so no gradient, optimizer state or weight decay
//! touches them). The patch-embedding bias keeps PyTorch's `Conv2d` default, U(±1/√(C·p²)), since
//! MAE's `_init_weights` only visits Linear and LayerNorm. Deviation: the draws come from the
//! caller's explicit RNG stream (host-side, in parameter order), not from the backend's global RNG,
//! so initialisation is reproducible and independent of anything else drawing at the same time.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Ffn, Flavour, VitConfig};
use crate::error::{ModelError, Result};
use crate::precision;
use crate::vit::{Attention, Block, LayerNorm, Mlp, PatchEmbed, Vit};

/// The 1-D sin-cos embedding of `positions` in `dim` dimensions (MAE
/// `get_1d_sincos_pos_embed_from_grid`): `ω_k = 1 / 10000^(k / (dim/2))`, `k < dim/2`, and the row of
/// position `p` is `[sin(p·ω_0..), cos(p·ω_0..)]` (all sines, then all cosines). Computed in f64 as
/// numpy does. Returns `positions.len() × dim` row-major.
///
/// # Panics
/// If `dim` is odd.
pub fn sincos_pos_embed_1d(dim: usize, positions: &[f64]) -> Vec<f64> {
    assert!(
        dim.is_multiple_of(2),
        "sin-cos embedding width {dim} is odd"
    );
    let half = dim / 2;
    let omega: Vec<f64> = (0..half)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / half as f64))
        .collect();
    let mut out = Vec::with_capacity(positions.len() * dim);
    for &p in positions {
        out.extend(omega.iter().map(|w| (p * w).sin()));
        out.extend(omega.iter().map(|w| (p * w).cos()));
    }
    out
}

/// MAE `get_2d_sincos_pos_embed(dim, grid, cls_token)`: one row per token of a `grid × grid` patch
/// grid in row-major order (plus a leading all-zero CLS row when `cls`). The first `dim/2` columns
/// encode the token's column index, the last `dim/2` its row index (MAE builds `meshgrid(w, h)` and
/// encodes `grid[0]`, the column coordinate, first). f64 arithmetic rounded once to f32, as
/// `torch.from_numpy(...).float()`.
///
/// # Panics
/// If `dim` is not a multiple of 4.
pub fn sincos_pos_embed_2d(dim: usize, grid: usize, cls: bool) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "2-D sin-cos embedding width {dim} is not a multiple of 4"
    );
    let n = grid * grid;
    let cols: Vec<f64> = (0..n).map(|i| (i % grid) as f64).collect();
    let rows: Vec<f64> = (0..n).map(|i| (i / grid) as f64).collect();
    let half = dim / 2;
    let emb_c = sincos_pos_embed_1d(half, &cols);
    let emb_r = sincos_pos_embed_1d(half, &rows);
    let mut out = Vec::with_capacity((n + cls as usize) * dim);
    if cls {
        out.extend(std::iter::repeat_n(0f32, dim));
    }
    for i in 0..n {
        out.extend(emb_c[i * half..(i + 1) * half].iter().map(|&v| v as f32));
        out.extend(emb_r[i * half..(i + 1) * half].iter().map(|&v| v as f32));
    }
    out
}

/// MAE `patchify`: `[B, C, H, W]` → `[B, (H/p)·(W/p), p·p·C]`, patches in row-major grid order, each
/// flattened as (row in patch, column in patch, channel) — the order `decoder_pred` predicts in.
/// (The patch *embedding* flattens as (channel, row, column) instead, the `Conv2d` weight order.)
///
/// # Shapes
/// - imgs: `[B, C, H, W]`, `H` and `W` multiples of `p`
/// - returns: `[B, (H/p)·(W/p), p·p·C]`
pub fn patchify(imgs: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = imgs.dims();
    assert!(
        h % p == 0 && w % p == 0,
        "image {h}x{w} is not a multiple of the patch size {p}"
    );
    let (gh, gw) = (h / p, w / p);
    imgs.reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, gh * gw, p * p * c])
}

/// The decoder architecture (MAE `decoder_embed_dim`, `decoder_depth`, `decoder_num_heads`) and what
/// it needs to know about its encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaeDecoderConfig {
    /// Width of the encoder output the decoder reads.
    pub encoder_dim: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub ln_eps: f64,
    /// Side of the patch grid (`img_size / patch_size`); the position table has `1 + grid²` rows.
    pub grid: usize,
    pub patch_size: usize,
    pub in_chans: usize,
}

impl MaeDecoderConfig {
    /// MAE's decoder for `encoder` (all released MAE / Web-MAE models): 512 wide, 8 blocks, 16 heads,
    /// MLP ratio 4, LayerNorm eps 1e-6.
    pub fn for_encoder(encoder: &VitConfig) -> Self {
        Self {
            encoder_dim: encoder.embed_dim,
            embed_dim: 512,
            depth: 8,
            num_heads: 16,
            mlp_ratio: 4.0,
            ln_eps: 1e-6,
            grid: encoder.grid(),
            patch_size: encoder.patch_size,
            in_chans: encoder.in_chans,
        }
    }

    /// MLP hidden width, `int(embed_dim · mlp_ratio)` as timm's `Block`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Values per predicted patch, `p²·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Checks the shape constraints; every message names the field.
    pub fn validate(&self) -> Result<()> {
        use crate::config::limits;
        for (field, v, max) in [
            ("decoder.embed_dim", self.embed_dim, limits::MAX_WIDTH),
            ("decoder.depth", self.depth, limits::MAX_DEPTH),
            ("decoder.num_heads", self.num_heads, limits::MAX_WIDTH),
            ("decoder.grid", self.grid, limits::MAX_IMG_SIZE),
            ("decoder.patch_size", self.patch_size, limits::MAX_IMG_SIZE),
            ("decoder.encoder_dim", self.encoder_dim, limits::MAX_WIDTH),
        ] {
            if v == 0 {
                return Err(ModelError::config(field, "must be > 0"));
            }
            if v > max {
                return Err(ModelError::config(
                    field,
                    format!("must be ≤ {max}, got {v}"),
                ));
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(ModelError::config(
                "decoder.num_heads",
                format!(
                    "decoder embed_dim {} is not divisible by num_heads {}",
                    self.embed_dim, self.num_heads
                ),
            ));
        }
        if !self.embed_dim.is_multiple_of(4) {
            return Err(ModelError::config(
                "decoder.embed_dim",
                format!(
                    "{} is not a multiple of 4 (2-D sin-cos position embeddings)",
                    self.embed_dim
                ),
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= limits::MAX_MLP_RATIO)
            || self.mlp_hidden() == 0
        {
            return Err(ModelError::config(
                "decoder.mlp_ratio",
                format!(
                    "must be in (0, {}] with a non-empty FFN, got {}",
                    limits::MAX_MLP_RATIO,
                    self.mlp_ratio
                ),
            ));
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return Err(ModelError::config(
                "decoder.ln_eps",
                format!("must be finite and > 0, got {}", self.ln_eps),
            ));
        }
        Ok(())
    }

    /// Trainable parameters (the fixed position table excluded).
    pub fn param_count(&self) -> u64 {
        let (e, d, h) = (
            self.encoder_dim as u64,
            self.embed_dim as u64,
            self.mlp_hidden() as u64,
        );
        let block = (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d;
        let pd = self.patch_dim() as u64;
        (e * d + d) + d + self.depth as u64 * block + 2 * d + (d * pd + pd)
    }
}

/// MAE's decoder. See the module docs.
#[derive(Module, Debug)]
pub struct MaeDecoder {
    pub decoder_embed: Linear,
    /// `[1, 1, D_dec]`, stands in for every removed patch.
    pub mask_token: Param<Tensor<3>>,
    /// `[1, 1 + grid², D_dec]`, fixed sin-cos (not trainable), CLS row zero.
    pub decoder_pos_embed: Param<Tensor<3>>,
    pub decoder_blocks: Vec<Block>,
    pub decoder_norm: LayerNorm,
    pub decoder_pred: Linear,
    #[module(skip)]
    pub config: MaeDecoderConfig,
}

/// `n` draws of U(−bound, bound) at f64 resolution (53 bits), rounded to f32.
fn uniform(rng: &mut impl Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect()
}

/// `n` draws of N(0, std²) (Box–Muller, one value per pair of uniforms).
fn normal(rng: &mut impl Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
            let u2 = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// xavier-uniform bound for a `fan_in → fan_out` map (gain 1): `√(6 / (fan_in + fan_out))`.
fn xavier_bound(fan_in: usize, fan_out: usize) -> f64 {
    (6.0 / (fan_in + fan_out) as f64).sqrt()
}

/// `nn.Linear` as MAE initialises it: xavier-uniform weight, zero bias (burn layout `[in, out]`).
fn xavier_linear(d_in: usize, d_out: usize, rng: &mut impl Rng, device: &Device) -> Linear {
    let w = uniform(rng, d_in * d_out, xavier_bound(d_in, d_out));
    Linear {
        weight: Param::from_tensor(tensor(w, [d_in, d_out], device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// A timm `Block` (pre-norm, qkv bias, GELU MLP, no LayerScale) with MAE's initialisation.
fn timm_block(
    dim: usize,
    num_heads: usize,
    hidden: usize,
    qkv_bias: bool,
    eps: f64,
    rng: &mut impl Rng,
    device: &Device,
) -> Block {
    Block {
        norm1: LayerNorm::new(dim, eps, device),
        attn: Attention {
            qkv: {
                let mut qkv = xavier_linear(dim, 3 * dim, rng, device);
                if !qkv_bias {
                    qkv.bias = None;
                }
                qkv
            },
            proj: xavier_linear(dim, dim, rng, device),
            num_heads,
        },
        ls1: None,
        norm2: LayerNorm::new(dim, eps, device),
        mlp: Mlp {
            fc1: Some(xavier_linear(dim, hidden, rng, device)),
            fc2: Some(xavier_linear(hidden, dim, rng, device)),
            w12: None,
            w3: None,
        },
        ls2: None,
    }
}

/// The fixed (non-trainable) sin-cos position table `[1, 1 + grid², dim]` as a parameter.
pub fn fixed_pos_embed(dim: usize, grid: usize, device: &Device) -> Param<Tensor<3>> {
    let t = tensor(
        sincos_pos_embed_2d(dim, grid, true),
        [1, 1 + grid * grid, dim],
        device,
    );
    Param::from_tensor(t).set_require_grad(false)
}

impl MaeDecoder {
    /// A decoder with MAE's initialisation, drawing from `rng` in parameter order.
    pub fn new(cfg: &MaeDecoderConfig, rng: &mut impl Rng, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let decoder_embed = xavier_linear(cfg.encoder_dim, d, rng, device);
        let mask_token = Param::from_tensor(tensor(normal(rng, d, 0.02), [1, 1, d], device));
        let decoder_blocks = (0..cfg.depth)
            .map(|_| {
                timm_block(
                    d,
                    cfg.num_heads,
                    cfg.mlp_hidden(),
                    true,
                    cfg.ln_eps,
                    rng,
                    device,
                )
            })
            .collect();
        let decoder_pred = xavier_linear(d, cfg.patch_dim(), rng, device);
        MaeDecoder {
            decoder_embed,
            mask_token,
            decoder_pos_embed: fixed_pos_embed(d, cfg.grid, device),
            decoder_blocks,
            decoder_norm: LayerNorm::new(d, cfg.ln_eps, device),
            decoder_pred,
            config: cfg.clone(),
        }
    }

    /// MAE `forward_decoder`: predicts every patch (normalised pixels, `p·p·C` values in
    /// [`patchify`] order) from the encoder's output on the visible tokens.
    ///
    /// # Shapes
    /// - latent: `[B, 1 + K, D_enc]` (CLS, then the K visible tokens in `ids_shuffle` order)
    /// - ids_restore: `[B, N]`, the inverse of each sample's `ids_shuffle`, `N = grid²`
    /// - returns: `[B, N, p·p·C]` in original token order
    pub fn forward(&self, latent: Tensor<3>, ids_restore: Tensor<2, Int>) -> Tensor<3> {
        let [b, t, _] = latent.dims();
        let [_, n] = ids_restore.dims();
        let cfg = &self.config;
        assert_eq!(
            n,
            cfg.grid * cfg.grid,
            "ids_restore has {n} tokens, the decoder's grid {0}x{0}",
            cfg.grid
        );
        let k = t - 1;
        assert!(k <= n, "{k} visible tokens for a grid of {n}");
        let d = cfg.embed_dim;
        let x = precision::linear(latent, &self.decoder_embed);
        let mask_tokens = self.mask_token.val().expand([b, n - k, d]);
        let shuffled = Tensor::cat(vec![x.clone().slice([0..b, 1..t, 0..d]), mask_tokens], 1);
        let unshuffled = shuffled.gather(1, ids_restore.unsqueeze_dim::<3>(2).expand([b, n, d]));
        let mut x = Tensor::cat(vec![x.slice([0..b, 0..1, 0..d]), unshuffled], 1)
            + self.decoder_pos_embed.val();
        for block in &self.decoder_blocks {
            x = block.forward(x);
        }
        let x = precision::linear(self.decoder_norm.forward(x), &self.decoder_pred);
        let pd = cfg.patch_dim();
        x.slice([0..b, 1..1 + n, 0..pd])
    }
}

/// A timm-flavour encoder initialised the way MAE's `initialize_weights` does (see the module docs),
/// drawing from `rng` in parameter order (patch embedding, CLS, blocks). Its position embeddings are
/// the fixed sin-cos table for its own grid and are not trainable. Built directly, without
/// [`Vit::new`]'s draws from the backend's global RNG.
///
/// Errors if `cfg` is not the timm flavour MAE trains (GELU MLP, no LayerScale, no registers).
pub fn mae_encoder(cfg: &VitConfig, rng: &mut impl Rng, device: &Device) -> Result<Vit> {
    cfg.validate()?;
    if cfg.flavour != Flavour::Vit
        || cfg.ffn != Ffn::Gelu
        || cfg.layerscale_init.is_some()
        || cfg.num_register_tokens > 0
    {
        return Err(ModelError::config(
            "flavour",
            "the MAE encoder is a timm ViT: GELU MLP, no LayerScale, no registers",
        ));
    }
    let (d, p) = (cfg.embed_dim, cfg.patch_size);
    let patch_in = cfg.in_chans * p * p;
    // MAE: xavier on the Conv2d weight viewed as `[D, C·p²]`; the bias keeps Conv2d's default.
    let patch_w = uniform(rng, patch_in * d, xavier_bound(patch_in, d));
    let patch_b = uniform(rng, d, 1.0 / (patch_in as f64).sqrt());
    let patch_embed = PatchEmbed {
        proj: Linear {
            weight: Param::from_tensor(tensor(patch_w, [patch_in, d], device)),
            bias: Some(Param::from_tensor(tensor(patch_b, [d], device))),
        },
        patch_size: p,
    };
    let cls_token = Param::from_tensor(tensor(normal(rng, d, 0.02), [1, 1, d], device));
    let blocks = (0..cfg.depth)
        .map(|_| {
            timm_block(
                d,
                cfg.num_heads,
                cfg.ffn_hidden(),
                cfg.qkv_bias,
                cfg.ln_eps,
                rng,
                device,
            )
        })
        .collect();
    Ok(Vit {
        patch_embed,
        cls_token,
        pos_embed: fixed_pos_embed(d, cfg.grid(), device),
        register_tokens: None,
        mask_token: cfg
            .mask_token
            .then(|| Param::from_tensor(tensor(normal(rng, d, 0.02), [1, d], device))),
        blocks,
        norm: LayerNorm::new(d, cfg.ln_eps, device),
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn sincos_layout_and_values() {
        // grid 2, dim 8: columns encode x (col) first, rows y; each half is [sin(p·ω), cos(p·ω)].
        let t = sincos_pos_embed_2d(8, 2, true);
        assert_eq!(t.len(), 5 * 8);
        assert!(t[..8].iter().all(|&v| v == 0.0), "CLS row is zero");
        // token 1 = (row 0, col 1): ω = [1, 1/100]
        let row = &t[2 * 8..3 * 8];
        let expect = [
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
            0.0,
            0.0,
            1.0,
            1.0,
        ];
        for (a, b) in row.iter().zip(expect) {
            assert_eq!(*a, b as f32);
        }
        // token 2 = (row 1, col 0): the column half is that of position 0, the row half of 1.
        let row = &t[3 * 8..4 * 8];
        assert_eq!(&row[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(row[4], 1f64.sin() as f32);
    }

    #[test]
    fn param_count_matches_the_module() {
        let enc = crate::presets::preset("web-mae-300m").unwrap();
        let cfg = MaeDecoderConfig::for_encoder(&enc);
        // MAE ViT-L/16's decoder: 26.2M parameters besides its fixed 197×512 position table.
        let n = cfg.param_count();
        assert!((26_000_000..26_500_000).contains(&n), "{n}");
        let small = MaeDecoderConfig {
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            grid: 3,
            ..cfg
        };
        let mut rng = rand_chacha::ChaCha8Rng::from_seed([7; 32]);
        let dec = MaeDecoder::new(&small, &mut rng, &Device::flex().autodiff());
        let counted: usize = crate::checkpoint::named_parameters(&dec)
            .iter()
            .filter(|(k, _, _)| k != "decoder_pos_embed")
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        assert_eq!(counted as u64, small.param_count());
        assert!(!dec.decoder_pos_embed.is_require_grad());
        assert!(dec.mask_token.is_require_grad());
    }

    #[test]
    fn encoder_init_follows_mae() {
        let mut cfg = crate::presets::preset("web-mae-300m").unwrap();
        (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size) = (64, 2, 2, 64);
        let device = Device::flex().autodiff();
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::from_seed([seed; 32]);
            mae_encoder(&cfg, &mut rng, &device).unwrap()
        };
        let vit = draw(1);
        let params = crate::checkpoint::named_parameters(&vit);
        let get = |k: &str| &params.iter().find(|(n, _, _)| n == k).unwrap().2;
        // xavier-uniform: |w| ≤ √(6/(in+out)) and variance bound²/3.
        let w = get("blocks.0.mlp.fc1.weight");
        let bound = (6.0f64 / (64 + 256) as f64).sqrt() as f32;
        assert!(w.iter().all(|v| v.abs() <= bound));
        let var = w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64;
        assert!(
            (var / (bound as f64 * bound as f64 / 3.0) - 1.0).abs() < 0.05,
            "{var}"
        );
        assert!(get("blocks.1.attn.qkv.bias").iter().all(|&v| v == 0.0));
        assert!(get("norm.weight").iter().all(|&v| v == 1.0));
        let cls = get("cls_token");
        let std = (cls.iter().map(|v| (v * v) as f64).sum::<f64>() / 64.0).sqrt();
        assert!((0.01..0.03).contains(&std), "{std}");
        // Fixed sin-cos position table, not trainable; everything else trainable.
        assert_eq!(get("pos_embed"), &sincos_pos_embed_2d(64, 4, true));
        assert!(!vit.pos_embed.is_require_grad() && vit.cls_token.is_require_grad());
        // Same stream, same weights; another stream, other weights.
        let again = crate::checkpoint::named_parameters(&draw(1));
        assert_eq!(params, again);
        assert_ne!(params, crate::checkpoint::named_parameters(&draw(2)));
        // A DINOv2-flavour config is refused.
        let dino = crate::presets::preset("vit-tiny").unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::from_seed([0; 32]);
        assert!(mae_encoder(&dino, &mut rng, &device).is_err());
    }
}
