//! The KoLeo regulariser (Kozachenko–Leonenko differential-entropy estimator, Sablayrolles et al. 2018),
//! which spreads the student's cls features within a batch.
//!
//! Reference: `dinov2/loss/koleo_loss.py` (`KoLeoLoss`); `docs/reference/training-algorithms.md` §4.4.
//!
//! ```text
//! x_i ← x_i / max(‖x_i‖, 1e-8)
//! n(i) = argmax_{j≠i} ⟨x_i, x_j⟩        (diagonal set to −1; not differentiated)
//! d_i  = ‖x_i − x_{n(i)} + 1e-8‖₂       (torch PairwiseDistance adds eps to the difference)
//! L    = −mean_i ln(d_i + 1e-8)
//! ```
//! Always in f32 (the reference disables autocast but receives fp16 inputs, where the eps underflows and
//! duplicates give −ln 0 = ∞: facebookresearch/dinov2#314, #492). The neighbour search runs on the host
//! from the `B×B` inner products (first index on ties, like `torch.max`); the gradient flows through
//! both `x_i` and `x_{n(i)}`, as in the reference. dinov2 applies it per global view, never across
//! views: call it once per view chunk and weight the sum by 0.1. It needs B ≥ 2 (with B = 1 the
//! neighbour is the sample itself and the loss is a constant ≈ 18.4 − ln √D).

use burn::tensor::{Bool, Int, Tensor, TensorData};

use webssl_models::kernels;
use webssl_models::params::to_host;

use super::f32_of;

/// KoLeo loss of a batch of features.
///
/// # Shapes
/// `[B, D]` → `[1]`
pub fn koleo_loss(x: Tensor<2>) -> Tensor<1> {
    const EPS: f64 = 1e-8;
    let x = f32_of(x);
    let [b, _] = x.dims();
    let device = x.device();
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(EPS);
    let xn = x / norm;

    let detached = xn.clone().inner();
    let dots = detached.clone().matmul(detached.transpose());
    let diag = Tensor::<2, Bool>::diag_mask([b, b], 0, &dots.device()).bool_not();
    let dots = dots.mask_fill(diag, -1.0);
    let dots = to_host(dots);
    let nn: Vec<i64> = (0..b)
        .map(|i| {
            let row = &dots[i * b..(i + 1) * b];
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best as i64
        })
        .collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(nn, [b]), &device);
    let neighbours = xn.clone().select(0, idx);
    let d = (xn - neighbours + EPS).square().sum_dim(1).sqrt();
    -kernels::mean((d + EPS).log())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    use webssl_models::params::scalar;

    #[test]
    fn orthogonal_and_antipodal_layouts() {
        let device = Device::flex();
        // 4 orthonormal vectors (scaled: normalisation removes the scale): every NN distance is √2.
        let mut v = vec![0.0f32; 16];
        for i in 0..4 {
            v[i * 5] = (i + 1) as f32;
        }
        let l = scalar(koleo_loss(Tensor::from_data(
            TensorData::new(v, [4, 4]),
            &device,
        )));
        assert!((l + (2f64.sqrt()).ln()).abs() < 1e-5, "{l}");
        // ±e1, ±e2: the nearest neighbour of e1 is e2 or −e2 (dot 0 > −1), distance √2 again.
        let v = vec![1.0f32, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0];
        let l = scalar(koleo_loss(Tensor::from_data(
            TensorData::new(v, [4, 2]),
            &device,
        )));
        assert!((l + (2f64.sqrt()).ln()).abs() < 1e-5, "{l}");
    }

    #[test]
    fn duplicates_stay_finite() {
        let device = Device::flex();
        let v = vec![1.0f32, 2.0, 3.0, 1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let l = scalar(koleo_loss(Tensor::from_data(
            TensorData::new(v, [3, 3]),
            &device,
        )));
        // the duplicates are at distance ‖1e-8·1‖ = √3e-8: −ln(√3e-8 + 1e-8) ≈ 17.4 for two of three
        assert!(l.is_finite() && l > 10.0, "{l}");
    }

    #[test]
    fn gradient_flows_through_x() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(
            TensorData::new(
                (0..5 * 3)
                    .map(|i| ((i * 7 % 9) as f32 - 4.0) * 0.25)
                    .collect(),
                [5, 3],
            ),
            &device,
        )
        .require_grad();
        let grads = koleo_loss(x.clone()).backward();
        let g = to_host(x.grad(&grads).unwrap());
        assert!(g.iter().all(|v| v.is_finite()));
        assert!(g.iter().any(|&v| v != 0.0));
    }
}
