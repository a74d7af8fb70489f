//! Mixed precision: the matrix products in bf16, everything else in f32 — burn 0.22 has dtypes but no
//! autocast, so the model casts at its own matmul sites.
//!
//! The policy (docs/reference/rust-foundation.md "Mixed precision policy"; dinov2's FSDP `MixedPrecision`
//! in docs/reference/training-algorithms.md §5.4, with bf16 where dinov2 uses fp16, so no loss scaling):
//! - **bf16**: every Linear of the backbones, heads, MAE decoder and CLIP text tower (inputs and
//!   weights cast, the product accumulated by the backend's bf16 GEMM), the patch embedding, and
//!   self-attention (Q·Kᵀ, softmax, ·V on the bf16 `qkv` projection, as PyTorch's autocast runs SDPA).
//! - **f32**: the parameters themselves (the "master weights": the optimizer, EMA, gradient
//!   all-reduce and checkpoints never see bf16 — `cast` is differentiable, so a weight's gradient
//!   arrives in its own dtype), the residual stream, LayerNorm, LayerScale, GELU/SwiGLU, the
//!   weight-normalisation of the DINO head's last layer, and every loss (DINO/iBOT cross-entropy,
//!   Sinkhorn-Knopp, KoLeo, MAE MSE, InfoNCE) — each product's output is cast back to f32.
//!
//! The switch is scoped like `torch.autocast`: [`autocast`] returns a guard, and the model's
//! products use bf16 while a guard for [`Precision::Bf16`] is alive *on this thread*. It is
//! thread-local on purpose: burn records the casts in the autodiff graph during the forward, so the
//! backward needs no switch, and independent models on other threads (parallel tests, data workers)
//! are unaffected. On burn-flex (CPU) bf16 products go through f32 conversion and are slower than
//! f32 — the policy exists for GPUs, and runs on the CPU so that the same path is tested there.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use burn::nn::Linear;
use burn::tensor::module::linear as burn_linear;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The compute precision of a training run or an embedding job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrix products in bf16, master weights and the rest in f32 (see the module docs).
    Bf16,
}

impl Precision {
    /// The dtype of the matrix products.
    pub fn compute_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("`{other}`: expected f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Restores the previous precision of this thread when dropped (guards nest).
#[must_use = "the precision reverts when the guard is dropped"]
pub struct Autocast {
    previous: Precision,
}

impl Drop for Autocast {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Runs the model's matrix products in `precision` on this thread until the guard is dropped.
pub fn autocast(precision: Precision) -> Autocast {
    Autocast {
        previous: CURRENT.with(|c| c.replace(precision)),
    }
}

/// The precision in effect on this thread.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// `t` in the compute dtype, or `t` itself when the products run in f32.
pub fn to_compute<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    match current() {
        Precision::F32 => t,
        p => t.cast(p.compute_dtype()),
    }
}

/// `t` back in f32 (a no-op on f32 tensors).
pub fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// `x · weight (+ bias)` when an operand has no element (an empty batch, a zero width), made here
/// without calling the backend: burn-flex 0.22 hands empty operands on to the `gemm` crate, whose
/// micro-kernel then reads out of bounds (a segfault, issue 16). An empty batch gives an empty
/// result; a zero inner width gives the bias (a sum over nothing is 0). `None` when both operands
/// have elements.
fn empty_product<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Option<Tensor<D>> {
    let (x_dims, [_, out]) = (x.dims(), weight.dims());
    if !x_dims.contains(&0) && !weight.dims().contains(&0) {
        return None;
    }
    let mut dims = x_dims;
    dims[D - 1] = out;
    let zeros = Tensor::<D>::zeros(dims, &x.device());
    Some(match bias {
        Some(b) if !dims.contains(&0) => zeros + b.unsqueeze::<D>(),
        _ => zeros,
    })
}

/// `x · weight (+ bias)` in the compute dtype, the result left in it.
fn product<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    if let Some(empty) = empty_product(&x, &weight, bias.clone()) {
        return to_compute(empty);
    }
    match current() {
        Precision::F32 => burn_linear(x, weight, bias),
        _ => burn_linear(to_compute(x), to_compute(weight), bias.map(to_compute)),
    }
}

/// `x · weight (+ bias)` with the product in the compute dtype and the result in f32.
///
/// # Shapes
/// `x`: `[..., in]`, `weight`: `[in, out]` (burn's layout), `bias`: `[out]` → `[..., out]`
pub fn linear_weight<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    to_f32(product(x, weight, bias))
}

/// A burn [`Linear`] under the current precision, the result in f32.
pub fn linear<const D: usize>(x: Tensor<D>, lin: &Linear) -> Tensor<D> {
    match current() {
        Precision::F32 => f32_linear(x, lin),
        _ => linear_weight(x, lin.weight.val(), lin.bias.as_ref().map(|b| b.val())),
    }
}

/// A burn [`Linear`] under the current precision, the result left in the compute dtype (for a
/// consumer that also runs in it, such as attention on the `qkv` projection).
pub fn linear_compute<const D: usize>(x: Tensor<D>, lin: &Linear) -> Tensor<D> {
    match current() {
        Precision::F32 => f32_linear(x, lin),
        _ => product(x, lin.weight.val(), lin.bias.as_ref().map(|b| b.val())),
    }
}

/// burn's `Linear::forward`, with the empty case of [`empty_product`].
fn f32_linear<const D: usize>(x: Tensor<D>, lin: &Linear) -> Tensor<D> {
    let bias = lin.bias.as_ref().map(|b| b.val());
    empty_product(&x, &lin.weight.val(), bias).unwrap_or_else(|| lin.forward(x))
}

/// `a · b` (batched over leading dimensions) with the product in the compute dtype and the result in
/// f32.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if a.dims().contains(&0) || b.dims().contains(&0) {
        // See `empty_product`: `[..., m, k] · [..., k, n]` without the backend.
        let mut dims = a.dims();
        dims[D - 1] = b.dims()[D - 1];
        return Tensor::zeros(dims, &a.device());
    }
    match current() {
        Precision::F32 => a.matmul(b),
        _ => to_f32(to_compute(a).matmul(to_compute(b))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::to_host;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, TensorData};

    /// f32 → bf16 → f32, round to nearest even (what `cast` does on burn-flex).
    fn round_bf16(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    #[test]
    fn guard_scopes_nest_and_restore() {
        assert_eq!(current(), Precision::F32);
        {
            let _a = autocast(Precision::Bf16);
            assert_eq!(current(), Precision::Bf16);
            {
                let _b = autocast(Precision::F32);
                assert_eq!(current(), Precision::F32);
            }
            assert_eq!(current(), Precision::Bf16);
            // Another thread has its own switch.
            std::thread::spawn(|| assert_eq!(current(), Precision::F32))
                .join()
                .unwrap();
        }
        assert_eq!(current(), Precision::F32);
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::F32));
        assert!(
            "fp16"
                .parse::<Precision>()
                .unwrap_err()
                .contains("f32 or bf16")
        );
        assert_eq!(Precision::Bf16.to_string(), "bf16");
    }

    /// Under bf16 the product is that of the bf16-rounded operands (accumulated in f32 by burn-flex,
    /// then rounded to bf16 once), returned in f32; outside the guard it is the plain f32 product.
    #[test]
    fn linear_rounds_operands_to_bf16_and_returns_f32() {
        let device = Device::flex();
        let lin = LinearConfig::new(24, 5).init(&device);
        let x = Tensor::<2>::random([3, 24], Distribution::Normal(0.0, 1.0), &device);
        let exact = to_host(lin.forward(x.clone()));
        let mixed = {
            let _g = autocast(Precision::Bf16);
            lin.forward(x.clone()); // burn's own Linear is untouched by the switch
            linear(x.clone(), &lin)
        };
        assert_eq!(mixed.dtype(), DType::F32);
        let mixed = to_host(mixed);
        // The reference: round x, W, b to bf16, multiply in f64, round the result to bf16.
        let (xv, wv) = (to_host(x), to_host(lin.weight.val()));
        let bv = to_host(lin.bias.as_ref().unwrap().val());
        let mut max_rel_exact = 0f32;
        for r in 0..3 {
            for o in 0..5 {
                let mut acc = 0f64;
                for i in 0..24 {
                    acc += round_bf16(xv[r * 24 + i]) as f64 * round_bf16(wv[i * 5 + o]) as f64;
                }
                let want = round_bf16(round_bf16(acc as f32) + round_bf16(bv[o]));
                let got = mixed[r * 5 + o];
                assert!(
                    (got - want).abs() <= 1e-2 * want.abs().max(1e-2),
                    "[{r},{o}]: {got} vs bf16 reference {want}"
                );
                let e = exact[r * 5 + o];
                max_rel_exact = max_rel_exact.max((got - e).abs() / e.abs().max(1e-1));
            }
        }
        // bf16 has an 8-bit mantissa: the mixed result differs from f32 (by ~2⁻⁸ relative), so
        // the switch really changed the arithmetic, and not by more than bf16 rounding explains.
        assert!(
            max_rel_exact > 1e-5 && max_rel_exact < 3e-2,
            "{max_rel_exact}"
        );
    }

    /// Master weights: the parameters stay f32 and their gradients arrive in f32, close to the
    /// f32 gradients.
    #[test]
    fn gradients_reach_f32_weights() {
        let device = Device::flex().autodiff();
        let lin = LinearConfig::new(16, 8).init(&device);
        let x = Tensor::<2>::from_data(
            TensorData::new((0..64).map(|i| (i as f32 * 0.37).sin()).collect(), [4, 16]),
            &device,
        );
        let grad_of = |p: Precision| {
            let _g = autocast(p);
            let y = linear(x.clone(), &lin);
            let grads = (y.clone() * y).sum().backward();
            lin.weight.grad(&grads).unwrap()
        };
        let (g32, g16) = (grad_of(Precision::F32), grad_of(Precision::Bf16));
        assert_eq!(lin.weight.val().dtype(), DType::F32);
        assert_eq!(g16.dtype(), DType::F32);
        let (a, b) = (to_host(g32), to_host(g16));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff > 0.0 && diff < 2e-2 * scale, "{diff} vs scale {scale}");
    }

    #[test]
    fn matmul_batched() {
        let device = Device::flex();
        let a = Tensor::<3>::random([2, 3, 7], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<3>::random([2, 7, 4], Distribution::Normal(0.0, 1.0), &device);
        let exact = to_host(a.clone().matmul(b.clone()));
        let _g = autocast(Precision::Bf16);
        let mixed = matmul(a, b);
        assert_eq!((mixed.dtype(), mixed.dims()), (DType::F32, [2, 3, 4]));
        for (m, e) in to_host(mixed).iter().zip(&exact) {
            assert!((m - e).abs() < 5e-2 * e.abs().max(1.0), "{m} vs {e}");
        }
    }

    /// Empty operands never reach the backend's GEMM (it reads out of bounds on them): an empty
    /// batch gives an empty product, a zero inner width the bias, in either precision.
    #[test]
    fn empty_operands_give_the_empty_product() {
        let device = Device::flex();
        let lin = LinearConfig::new(5, 3).init(&device);
        for p in [Precision::F32, Precision::Bf16] {
            let _g = autocast(p);
            let y = linear(Tensor::<3>::zeros([0, 4, 5], &device), &lin);
            assert_eq!(y.dims(), [0, 4, 3]);
            let y = linear_compute(Tensor::<2>::zeros([0, 5], &device), &lin);
            assert_eq!(y.dims(), [0, 3]);
            let m = matmul(
                Tensor::<3>::zeros([2, 0, 7], &device),
                Tensor::<3>::zeros([2, 7, 4], &device),
            );
            assert_eq!(m.dims(), [2, 0, 4]);
        }
        let bias = Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0, 3.0], [3]), &device);
        let y = linear_weight(
            Tensor::<2>::zeros([2, 0], &device),
            Tensor::zeros([0, 3], &device),
            Some(bias),
        );
        assert_eq!(to_host(y), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }
}
