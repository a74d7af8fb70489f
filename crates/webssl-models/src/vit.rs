//! The Vision Transformer backbone of Web-DINO (DINOv2 `DinoVisionTransformer`) and Web-MAE (timm
//! `VisionTransformer`), in one implementation switched by [`VitConfig`].
//!
//! Reference: `facebookresearch/dinov2` `dinov2/models/vision_transformer.py` and `dinov2/layers/*`,
//! HF `transformers` `modeling_dinov2.py` / `modeling_vit.py`. Field names follow the DINOv2 checkpoint
//! keys (`blocks.3.attn.qkv.weight`, `ls1.gamma`, `mlp.w12`, ...) so native checkpoints map one to one;
//! HF names go through the key map in `checkpoint::keymap`. Deviations: the patch embedding is a reshape
//! plus one GEMM instead of a strided convolution (identical arithmetic for stride = kernel = patch);
//! Q, K and V are one fused projection (HF's three are concatenated on load).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::IndexingUpdateOp;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor};

use crate::config::{Ffn, VitConfig};
use crate::kernels;
use crate::pos_embed;
use crate::precision;

/// LayerNorm with PyTorch's parameter names (`weight`, `bias`).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            bias: Param::from_tensor(Tensor::zeros([dim], device)),
            eps,
        }
    }

    /// Fused on CPU unless the kernels are switched off (see [`crate::kernels`]).
    ///
    /// # Shapes
    /// `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

/// Per-channel learned scale on the residual branch (DINOv2 `LayerScale`, HF `layer_scale{1,2}.lambda1`).
#[derive(Module, Debug)]
pub struct LayerScale {
    pub gamma: Param<Tensor<1>>,
}

impl LayerScale {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// Patch embedding: non-overlapping `p×p` patches flattened in `(channel, row, col)` order, the order of
/// a PyTorch `Conv2d` weight `[D, C, p, p]`, then one linear map.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Linear,
    pub patch_size: usize,
}

impl PatchEmbed {
    /// # Shapes
    /// - x: `[B, C, H, W]` with `H`, `W` multiples of the patch size
    /// - returns: `[B, (H/p)·(W/p), D]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = x.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        precision::linear(patches, &self.proj)
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // [B, N, 3D] → [B, N, D] without materialising per-head Q/K/V (fused kernel on CPU; burn's
        // `attention` on views otherwise: `kernels::reference::qkv_attention`)
        let qkv = precision::linear_compute(x, &self.qkv);
        let out = kernels::qkv_attention(qkv, self.num_heads);
        precision::linear(out, &self.proj)
    }
}

/// GELU MLP (`fc1`, `fc2`) or fused SwiGLU (`w12`, `w3`); exactly one pair is present.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Option<Linear>,
    pub fc2: Option<Linear>,
    pub w12: Option<Linear>,
    pub w3: Option<Linear>,
}

impl Mlp {
    fn new(cfg: &VitConfig, device: &Device) -> Self {
        let (d, h) = (cfg.embed_dim, cfg.ffn_hidden());
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        match cfg.ffn {
            Ffn::Gelu => Mlp {
                fc1: Some(lin(d, h)),
                fc2: Some(lin(h, d)),
                w12: None,
                w3: None,
            },
            Ffn::Swiglu => Mlp {
                fc1: None,
                fc2: None,
                w12: Some(lin(d, 2 * h)),
                w3: Some(lin(h, d)),
            },
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match (&self.fc1, &self.fc2, &self.w12, &self.w3) {
            (Some(fc1), Some(fc2), _, _) => precision::linear(kernels::linear_gelu(x, fc1), fc2),
            (_, _, Some(w12), Some(w3)) => precision::linear(kernels::linear_swiglu(x, w12), w3),
            _ => unreachable!("Mlp is built with exactly one of (fc1, fc2) or (w12, w3)"),
        }
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub ls1: Option<LayerScale>,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub ls2: Option<LayerScale>,
}

impl Block {
    fn new(cfg: &VitConfig, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let ls = || {
            cfg.layerscale_init.map(|v| LayerScale {
                gamma: Param::from_tensor(Tensor::full([d], v, device)),
            })
        };
        Block {
            norm1: LayerNorm::new(d, cfg.ln_eps, device),
            attn: Attention {
                qkv: LinearConfig::new(d, 3 * d)
                    .with_bias(cfg.qkv_bias)
                    .init(device),
                proj: LinearConfig::new(d, d).init(device),
                num_heads: cfg.num_heads,
            },
            ls1: ls(),
            norm2: LayerNorm::new(d, cfg.ln_eps, device),
            mlp: Mlp::new(cfg, device),
            ls2: ls(),
        }
    }

    /// Pre-norm residual block.
    ///
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_drop(x, None, None)
    }

    fn attn_branch(&self, x: Tensor<3>) -> Tensor<3> {
        let a = self.attn.forward(self.norm1.forward(x));
        match &self.ls1 {
            Some(ls) => ls.forward(a),
            None => a,
        }
    }

    fn ffn_branch(&self, x: Tensor<3>) -> Tensor<3> {
        let m = self.mlp.forward(self.norm2.forward(x));
        match &self.ls2 {
            Some(ls) => ls.forward(m),
            None => m,
        }
    }

    /// The block with DINOv2's *efficient stochastic depth*: each residual branch runs only on the
    /// samples in its keep-set and is added to them scaled by `B / |keep|`; the other samples skip it
    /// (`dinov2/layers/block.py`, `drop_add_residual_stochastic_depth`). `None` runs the branch on all.
    ///
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`; keep-sets are sample indices `< B`.
    pub fn forward_drop(
        &self,
        x: Tensor<3>,
        keep_attn: Option<Tensor<1, Int>>,
        keep_ffn: Option<Tensor<1, Int>>,
    ) -> Tensor<3> {
        let x = residual(x, keep_attn, |t| self.attn_branch(t));
        residual(x, keep_ffn, |t| self.ffn_branch(t))
    }
}

fn residual(
    x: Tensor<3>,
    keep: Option<Tensor<1, Int>>,
    branch: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    match keep {
        None => x.clone() + branch(x),
        Some(idx) => {
            let b = x.dims()[0];
            let kept = idx.dims()[0];
            let update = branch(x.clone().select(0, idx.clone())) * (b as f64 / kept as f64);
            x.select_assign(0, idx, update, IndexingUpdateOp::Add)
        }
    }
}

/// The backbone. See the module docs for naming.
#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1 + M·M, D]` for the pretraining grid `M = img_size / patch_size`.
    pub pos_embed: Param<Tensor<3>>,
    /// `[1, R, D]`, inserted after CLS and after position embeddings are added (DINOv2 registers).
    pub register_tokens: Option<Param<Tensor<3>>>,
    /// `[1, D]`, replaces masked patch embeddings (iBOT).
    pub mask_token: Option<Param<Tensor<2>>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    /// The architecture, kept whole so that exports and interpolation need nothing else.
    #[module(skip)]
    pub config: VitConfig,
}

/// Everything `forward_features` returns (DINOv2's dict).
#[derive(Debug, Clone)]
pub struct VitOutput {
    /// `[B, D]`, after the final norm.
    pub cls: Tensor<2>,
    /// `[B, R, D]`, after the final norm (R = 0 without registers).
    pub registers: Tensor<3>,
    /// `[B, N, D]`, after the final norm.
    pub patches: Tensor<3>,
    /// `[B, 1 + R + N, D]`, the last block's output before the final norm.
    pub prenorm: Tensor<3>,
}

impl Vit {
    /// A randomly initialised backbone (truncated-normal std 0.02 for tokens and linears, as DINOv2).
    pub fn new(cfg: &VitConfig, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let p = cfg.patch_size;
        let trunc =
            |shape: [usize; 3]| Tensor::<3>::random(shape, Distribution::Normal(0.0, 0.02), device);
        let vit = Vit {
            patch_embed: PatchEmbed {
                proj: LinearConfig::new(cfg.in_chans * p * p, d).init(device),
                patch_size: p,
            },
            cls_token: Param::from_tensor(trunc([1, 1, d])),
            pos_embed: Param::from_tensor(trunc([1, 1 + cfg.num_patches(), d])),
            register_tokens: (cfg.num_register_tokens > 0)
                .then(|| Param::from_tensor(trunc([1, cfg.num_register_tokens, d]))),
            mask_token: cfg
                .mask_token
                .then(|| Param::from_tensor(Tensor::zeros([1, d], device))),
            blocks: (0..cfg.depth).map(|_| Block::new(cfg, device)).collect(),
            norm: LayerNorm::new(d, cfg.ln_eps, device),
            config: cfg.clone(),
        };
        // burn initialises parameters lazily, at first use; draw them now so that the weights depend
        // only on the RNG state at construction, not on whatever else draws from it before the first
        // forward (another model, another thread).
        crate::params::visit(&vit, |_, param| {
            param.shape();
        });
        vit
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// `(B, rows, cols)` of the patch grid of `x` (`[B, C, H, W]`); panics unless `H` and `W` are
    /// multiples of the patch size.
    fn patch_grid(&self, x: &Tensor<4>) -> (usize, usize, usize) {
        let [b, _, h, w] = x.dims();
        let p = self.config().patch_size;
        assert!(
            h % p == 0 && w % p == 0,
            "image {h}x{w} is not a multiple of the patch size {p}"
        );
        (b, h / p, w / p)
    }

    /// Patch embedding + (masking) + CLS + position embeddings (+ registers).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`, `H` and `W` multiples of the patch size
    /// - masks: `[B, (H/p)·(W/p)]`, `true` = replace by the mask token
    /// - returns: `[B, 1 + R + N, D]`
    pub fn prepare_tokens(&self, x: Tensor<4>, masks: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let cfg = self.config();
        let (b, rows, cols) = self.patch_grid(&x);
        let mut tokens = self.patch_embed.forward(x);
        let d = cfg.embed_dim;
        if let Some(masks) = masks {
            let mask_token = self
                .mask_token
                .as_ref()
                .expect("masks given to a model without a mask token");
            let m = masks.unsqueeze_dim::<3>(2).expand([b, rows * cols, d]);
            tokens = tokens.mask_where(
                m,
                mask_token
                    .val()
                    .unsqueeze::<3>()
                    .expand([b, rows * cols, d]),
            );
        }
        let cls = self.cls_token.val().expand([b, 1, d]);
        let tokens = Tensor::cat(vec![cls, tokens], 1) + self.pos_embed_for(rows, cols);
        match &self.register_tokens {
            Some(regs) => {
                let r = cfg.num_register_tokens;
                let n = rows * cols;
                Tensor::cat(
                    vec![
                        tokens.clone().slice([0..b, 0..1, 0..d]),
                        regs.val().expand([b, r, d]),
                        tokens.slice([0..b, 1..1 + n, 0..d]),
                    ],
                    1,
                )
            }
            None => tokens,
        }
    }

    /// Position embeddings for a `rows × cols` grid, resampled by the checkpoint's own method.
    ///
    /// # Shapes
    /// returns `[1, 1 + rows·cols, D]`
    pub fn pos_embed_for(&self, rows: usize, cols: usize) -> Tensor<3> {
        let cfg = self.config();
        let m = cfg.grid();
        let pos = self.pos_embed.val();
        // DINOv2 and HF both skip resampling only for the native square grid.
        if rows == m && cols == m {
            pos
        } else {
            pos_embed::resample(pos, rows, cols, cfg.pos_interp)
        }
    }

    /// The full forward pass (DINOv2 `forward_features`).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`; masks: `[B, N]`
    /// - returns: see [`VitOutput`]
    pub fn forward_features(&self, x: Tensor<4>, masks: Option<Tensor<2, Bool>>) -> VitOutput {
        self.forward_features_drop(x, masks, &mut |_| None)
    }

    /// [`Vit::forward_features`] with stochastic depth: `keep(block)` returns the keep-sets of that
    /// block's attention and FFN branches (see [`Block::forward_drop`]), or `None` for no drop.
    pub fn forward_features_drop(
        &self,
        x: Tensor<4>,
        masks: Option<Tensor<2, Bool>>,
        keep: &mut dyn FnMut(usize) -> Option<(Tensor<1, Int>, Tensor<1, Int>)>,
    ) -> VitOutput {
        if let Some(empty) = self.empty_batch(&x) {
            return self.split(empty);
        }
        let mut t = self.prepare_tokens(x, masks);
        for (i, block) in self.blocks.iter().enumerate() {
            t = match keep(i) {
                Some((a, f)) => block.forward_drop(t, Some(a), Some(f)),
                None => block.forward(t),
            };
        }
        self.split(t)
    }

    /// For a batch of no image, the (empty) output tokens `[0, 1 + R + N, D]`, made without running
    /// anything: burn's `expand` refuses a zero batch and the backend's GEMM reads out of bounds on
    /// one (issue 16), so an empty batch never reaches a kernel. `None` for a non-empty batch.
    fn empty_batch(&self, x: &Tensor<4>) -> Option<Tensor<3>> {
        let [b, _, h, w] = x.dims();
        let cfg = self.config();
        let p = cfg.patch_size;
        let tokens = 1 + cfg.num_register_tokens + (h / p) * (w / p);
        (b == 0).then(|| Tensor::zeros([0, tokens, cfg.embed_dim], &x.device()))
    }

    /// Splits the last block's output into normed CLS / registers / patches.
    fn split(&self, prenorm: Tensor<3>) -> VitOutput {
        let [b, n, d] = prenorm.dims();
        let r = self.config().num_register_tokens;
        if b == 0 {
            let zeros = |n| Tensor::zeros([0, n, d], &prenorm.device());
            return VitOutput {
                cls: Tensor::zeros([0, d], &prenorm.device()),
                registers: zeros(r),
                patches: zeros(n - 1 - r),
                prenorm,
            };
        }
        let normed = self.norm.forward(prenorm.clone());
        VitOutput {
            cls: normed.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]),
            registers: normed.clone().slice([0..b, 1..1 + r, 0..d]),
            patches: normed.slice([0..b, 1 + r..n, 0..d]),
            prenorm,
        }
    }

    /// The MAE encoder on the visible patches only (`facebookresearch/mae` `models_mae.py`
    /// `forward_encoder`): patch embedding + position embeddings without the CLS slot → each sample
    /// keeps its tokens `ids_keep` (in that order) → CLS + its position embedding (+ registers) in
    /// front → blocks → final norm. The masked patches never enter the encoder.
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`, `H` and `W` multiples of the patch size
    /// - ids_keep: `[B, K]` token indices `< (H/p)·(W/p)`
    /// - returns: `[B, 1 + R + K, D]`, after the final norm
    pub fn forward_visible(&self, x: Tensor<4>, ids_keep: Tensor<2, Int>) -> Tensor<3> {
        let cfg = self.config();
        let (b, rows, cols) = self.patch_grid(&x);
        let (n, d) = (rows * cols, cfg.embed_dim);
        let [_, k] = ids_keep.dims();
        if b == 0 {
            // See `empty_batch`.
            return Tensor::zeros([0, 1 + cfg.num_register_tokens + k, d], &x.device());
        }
        let pos = self.pos_embed_for(rows, cols);
        let tokens = self.patch_embed.forward(x) + pos.clone().slice([0..1, 1..1 + n, 0..d]);
        let kept = tokens.gather(1, ids_keep.unsqueeze_dim::<3>(2).expand([b, k, d]));
        let cls = (self.cls_token.val() + pos.slice([0..1, 0..1, 0..d])).expand([b, 1, d]);
        let mut parts = vec![cls];
        if let Some(regs) = &self.register_tokens {
            parts.push(regs.val().expand([b, cfg.num_register_tokens, d]));
        }
        parts.push(kept);
        let mut t = Tensor::cat(parts, 1);
        for block in &self.blocks {
            t = block.forward(t);
        }
        self.norm.forward(t)
    }

    /// Outputs of the last `n` blocks, each after the final norm (DINOv2 `get_intermediate_layers` with
    /// `norm=True`), oldest first. The last entry equals the normed output of `forward_features`.
    ///
    /// # Shapes
    /// returns `n` tensors `[B, 1 + R + N, D]`
    pub fn intermediate_layers(&self, x: Tensor<4>, n: usize) -> Vec<Tensor<3>> {
        let depth = self.blocks.len();
        assert!(
            n >= 1 && n <= depth,
            "asked for the last {n} layers of a {depth}-block model"
        );
        if let Some(empty) = self.empty_batch(&x) {
            return vec![empty; n];
        }
        let mut t = self.prepare_tokens(x, None);
        let mut out = Vec::with_capacity(n);
        for (i, block) in self.blocks.iter().enumerate() {
            t = block.forward(t);
            if i >= depth - n {
                out.push(self.norm.forward(t.clone()));
            }
        }
        out
    }
}
