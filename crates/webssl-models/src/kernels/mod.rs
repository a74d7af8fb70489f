//! Fused CPU kernels for the ViT hot path, wired into burn as a backend extension with hand-written
//! backward passes.
//!
//! Why: on burn-flex every elementwise/normalisation op is a separate pass over memory with its own
//! output allocation, and under autodiff each keeps its own saved tensors; on a 2-core VM these
//! memory-bound passes, not the GEMMs, are the gap to PyTorch (docs/reference/rust-foundation.md §2b).
//!
//! The switch: fused kernels are used on the Flex device (with or without autodiff) unless the
//! environment variable `WEBSSL_FUSED_KERNELS` is `0`/`off`/`false` when first consulted, or
//! [`set_enabled`]`(false)` was called. On any other device (CUDA) the model always uses burn's own
//! ops. The unfused path stays the reference the gradient tests compare against.
//!
//! Ops: LayerNorm, bias + GELU(erf), bias + SwiGLU, softmax, multi-head attention from the fused
//! `qkv` projection, and the DINO/iBOT soft cross-entropy over K prototypes
//! ([`soft_cross_entropy`], used by `webssl-train`'s `dino_loss` and `ibot_loss`); and [`sum`] /
//! [`mean`], the full reductions in a fixed order.
//!
//! Determinism: every kernel here, and every burn op the model and the objectives use, gives the
//! same bits at any thread count (issue #20; tests/determinism.rs checks 1, 2, 3 and 8 threads).
//! Our kernels fix their reduction order (`cpu.rs`); burn-flex's GEMM (the `gemm` crate) splits
//! only the output tiles over threads, each tile's dot products keep their order; burn-flex's
//! `sum_dim` / `mean_dim`, softmax and LayerNorm reduce rows sequentially; only its full `sum` /
//! `mean` of large tensors do not, hence [`sum`] / [`mean`].

use std::sync::atomic::{AtomicU8, Ordering};

/// 0 = not yet read from the environment, 1 = off, 2 = on.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether the model uses the fused kernels (on devices that have them).
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = !matches!(
                std::env::var("WEBSSL_FUSED_KERNELS").as_deref(),
                Ok("0" | "off" | "false" | "no")
            );
            ENABLED.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns the fused kernels on or off for the whole process (overrides the environment variable).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

mod alloc;
mod cpu;
mod ext;
mod threads;

pub use alloc::keep_freed_pages;
pub use cpu::{ATTN_BLOCK_KV, ATTN_BLOCK_Q, AttnShape};
pub use ext::FusedOps;
pub use threads::{pin_rayon_threads, pin_rayon_threads_for_rank, rank_plan};

/// The raw slice kernels, exposed for tests and benchmarks (tile sizes as parameters).
pub mod raw {
    pub use super::cpu::{
        attention_bwd_tiled, attention_fwd_tiled, bias_gelu_bwd, bias_gelu_fwd, bias_swiglu_bwd,
        bias_swiglu_fwd, erf, exp, layer_norm_bwd, layer_norm_fwd, soft_ce_bwd,
        soft_ce_bwd_inplace, soft_ce_fwd, softmax_bwd, softmax_fwd,
    };
}

use burn::backend::Dispatch;
use burn::backend::DispatchDevice;
use burn::nn::Linear;
use burn::tensor::activation::{gelu, log_softmax, silu, softmax as burn_softmax};
use burn::tensor::module::{attention, layer_norm as burn_layer_norm};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};

use crate::precision;

/// Whether `t` goes through the fused kernels: switch on, f32, on the Flex device (plain or
/// autodiff).
pub fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    enabled()
        && t.dtype() == DType::F32
        && matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// LayerNorm over the last dimension (`weight`, `bias`), fused when [`applies`].
///
/// # Shapes
/// `x`: `[..., d]`, `gamma`, `beta`: `[d]` → `[..., d]`
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    if applies(&x) {
        fused::layer_norm(x, gamma, beta, eps)
    } else {
        reference::layer_norm(x, gamma, beta, eps)
    }
}

/// `gelu(lin(x))` (erf GELU) with the Linear's bias added inside the fused activation.
///
/// # Shapes
/// `x`: `[..., in]` → `[..., out]`
pub fn linear_gelu<const D: usize>(x: Tensor<D>, lin: &Linear) -> Tensor<D> {
    match &lin.bias {
        Some(b) if applies(&x) => {
            fused::bias_gelu(precision::linear_weight(x, lin.weight.val(), None), b.val())
        }
        _ => gelu(precision::linear(x, lin)),
    }
}

/// DINOv2's SwiGLU FFN input side: `silu(x1) · x2` with `[x1 | x2] = w12(x)`, the `w12` bias added
/// inside the fused activation.
///
/// # Shapes
/// `x`: `[B, N, in]` → `[B, N, hidden]` (`w12` maps to `2·hidden`)
pub fn linear_swiglu(x: Tensor<3>, w12: &Linear) -> Tensor<3> {
    match &w12.bias {
        Some(b) if applies(&x) => {
            fused::bias_swiglu(precision::linear_weight(x, w12.weight.val(), None), b.val())
        }
        _ => reference::swiglu(precision::linear(x, w12)),
    }
}

/// Softmax over the last dimension, fused when [`applies`].
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if applies(&x) {
        fused::softmax(x)
    } else {
        burn_softmax(x, D - 1)
    }
}

/// Multi-head self-attention (scale `1/√Dh`, no mask) straight from the fused `qkv` projection
/// output, heads merged in the result; fused (tiled, online softmax, flash-style backward) when
/// [`applies`].
///
/// # Shapes
/// `qkv`: `[B, N, 3·D]` (Q | K | V, each `heads × Dh`) → `[B, N, D]`
pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    if applies(&qkv) {
        fused::qkv_attention(qkv, heads)
    } else {
        reference::qkv_attention(qkv, heads)
    }
}

/// The DINO / iBOT cross-entropy of each row, `−Σ_k target[k] · log_softmax(student / τs)[k]`
/// (dinov2 `DINOLoss.forward` / `iBOTPatchLoss.forward_masked` before their mean over rows).
/// Fused when [`applies`] to the logits and the target is f32 too: one sweep per row with an
/// online log-sum-exp, no `[rows, K]` log-softmax tensor in the forward nor kept for the backward,
/// whose hand-written node recomputes the softmax from the saved per-row log-sum-exp. No gradient
/// reaches `target` on either path (teacher targets are constants of the loss). Targets need not
/// sum to 1 per row (a sum of teacher targets gives the sum of the cross-entropies).
///
/// # Shapes
/// `student_logits`, `target`: `[rows, K]` → `[rows]`
pub fn soft_cross_entropy(
    student_logits: Tensor<2>,
    target: Tensor<2>,
    student_temp: f64,
) -> Tensor<1> {
    if applies(&student_logits) && target.dtype() == DType::F32 {
        fused::soft_cross_entropy(student_logits, target, student_temp)
    } else {
        reference::soft_cross_entropy(student_logits, target, student_temp)
    }
}

/// Elements from which burn-flex's full `sum` / `mean` of an f32 tensor split the work over rayon
/// (`burn-flex-0.22.1/src/ops/reduce.rs`, `sum_f32_contiguous`: `data.len() >= 4 * 1024 * 1024`).
/// Below it they are one sequential SIMD pass.
const FLEX_THREADED_SUM: usize = 4 * 1024 * 1024;

/// The sum of all elements, in an order that does not depend on the thread count or on scheduling.
/// Use it instead of `Tensor::sum` on the training and inference path. burn-flex sums a tensor of
/// 4 Mi elements or more as 64 Ki-element rayon jobs whose partial sums are combined in the order
/// its work stealing happened to take (`.sum()` of a parallel iterator), so a loss or a gradient
/// norm over a large tensor (iBOT / Sinkhorn targets, ViT-L weights) changed in its last bits from
/// run to run (issue #20). Below that size this is `Tensor::sum` (the same bits as before); at
/// and above it, `sum_dim` over the flattened tensor, which burn-flex reduces in one sequential
/// pass — memory-bound either way (4 Mi f32 are ~1 ms). Differentiable like `sum`.
///
/// # Shapes
/// `x`: any → `[1]`
pub fn sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    if n < FLEX_THREADED_SUM {
        x.sum()
    } else {
        x.reshape([n]).sum_dim(0)
    }
}

/// The mean of all elements, in a fixed order (see [`sum`]; below 4 Mi elements `Tensor::mean`).
///
/// # Shapes
/// `x`: any → `[1]`
pub fn mean<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    if n < FLEX_THREADED_SUM {
        x.mean()
    } else {
        sum(x).div_scalar(n as f64)
    }
}

/// The fused ops, unconditionally (Flex device, f32; they panic elsewhere).
pub mod fused {
    use super::*;

    pub fn layer_norm<const D: usize>(
        x: Tensor<D>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            eps,
        ))
    }

    /// # Shapes
    /// `x`: `[..., d]`, `bias`: `[d]`
    pub fn bias_gelu<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_bias_gelu(
            x.into_dispatch(),
            bias.into_dispatch(),
        ))
    }

    /// # Shapes
    /// `x`: `[..., 2h]`, `bias`: `[2h]` → `[..., h]`
    pub fn bias_swiglu<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_bias_swiglu(
            x.into_dispatch(),
            bias.into_dispatch(),
        ))
    }

    pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(x.into_dispatch()))
    }

    /// # Shapes
    /// `student_logits`, `target`: `[rows, K]` → `[rows]`
    pub fn soft_cross_entropy(
        student_logits: Tensor<2>,
        target: Tensor<2>,
        student_temp: f64,
    ) -> Tensor<1> {
        assert!(
            student_temp > 0.0,
            "student temperature {student_temp} is not > 0"
        );
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_soft_cross_entropy(
            student_logits.into_dispatch(),
            target.into_dispatch(),
            1.0 / student_temp,
        ))
    }

    pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        let [_, _, d3] = qkv.dims();
        assert!(
            heads > 0 && d3.is_multiple_of(3 * heads),
            "qkv width {d3} is not 3·heads·Dh for {heads} heads"
        );
        let scale = 1.0 / ((d3 / (3 * heads)) as f64).sqrt();
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_qkv_attention(
            qkv.into_dispatch(),
            heads,
            scale,
        ))
    }
}

/// The same ops composed from burn's own (differentiable) tensor ops: the fall-back on other
/// devices and the reference the gradient tests compare the fused kernels against.
pub mod reference {
    use super::*;

    pub fn layer_norm<const D: usize>(
        x: Tensor<D>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Tensor<D> {
        burn_layer_norm(x, gamma, Some(beta), eps)
    }

    pub fn bias_gelu<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
        gelu(x + bias.unsqueeze())
    }

    /// `silu(x1) · x2` for `x = [x1 | x2]` on the last dimension.
    pub fn swiglu(x12: Tensor<3>) -> Tensor<3> {
        let [b, n, h2] = x12.dims();
        let h = h2 / 2;
        let x1 = x12.clone().slice([0..b, 0..n, 0..h]);
        let x2 = x12.slice([0..b, 0..n, h..h2]);
        silu(x1) * x2
    }

    pub fn bias_swiglu(x: Tensor<3>, bias: Tensor<1>) -> Tensor<3> {
        swiglu(x + bias.unsqueeze())
    }

    pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        burn_softmax(x, D - 1)
    }

    /// `−Σ_k target · log_softmax(s / τs)` per row, the target detached (what `dino_loss` /
    /// `ibot_loss` computed before the fused op).
    pub fn soft_cross_entropy(
        student_logits: Tensor<2>,
        target: Tensor<2>,
        student_temp: f64,
    ) -> Tensor<1> {
        let [rows, _] = student_logits.dims();
        let lsm = log_softmax(student_logits / student_temp, 1);
        -(target.detach() * lsm).sum_dim(1).reshape([rows])
    }

    /// burn's `attention` on Q, K, V views of `qkv` (what `vit::Attention` did before the kernels).
    pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, n, d3] = qkv.dims();
        let d = d3 / 3;
        let qkv = qkv
            .reshape([b, n, 3, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().slice(0..1).squeeze_dim::<4>(0);
        let k = qkv.clone().slice(1..2).squeeze_dim::<4>(0);
        let v = qkv.slice(2..3).squeeze_dim::<4>(0);
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        out.swap_dims(1, 2).reshape([b, n, d])
    }
}
