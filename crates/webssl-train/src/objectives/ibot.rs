//! The iBOT masked-patch loss: cross-entropy between the teacher's targets on the patch tokens the
//! student saw masked and the student's predictions there, averaged per crop over its masked tokens.
//!
//! Reference: `dinov2/loss/ibot_patch_loss.py` (`iBOTPatchLoss.forward_masked`, plain-PyTorch
//! `lossfunc`) and its call in `dinov2/train/ssl_meta_arch.py`; `docs/reference/training-algorithms.md` §4.3.
//!
//! ```text
//! ℓ_j   = Σ_k t_j[k] · log_softmax(s_j/τs)[k]        for each masked token j (fp32)
//! L     = −Σ_j ℓ_j · w_j / n_global_crops,          w_j = 1/|mask of j's crop|
//! ```
//! `n_global_crops` counts every global crop of the batch (2B), masked or not, as the reference's
//! `student_masks_flat.shape[0]`. The meta-arch multiplies by `loss_scales · ibot_loss_scale = 2 · ½ = 1`,
//! so this is the value that enters the total loss (dinov2 *displays* it halved).
//! `ℓ_j` is `webssl_models::kernels::soft_cross_entropy` (negated): fused on the CPU, burn's
//! `log_softmax` elsewhere or with `WEBSSL_FUSED_KERNELS=0`.

use burn::tensor::Tensor;
use webssl_models::kernels::{self, soft_cross_entropy};

use super::f32_of;

/// The iBOT loss over the `M` masked tokens of the batch (the reference's padding to `upperbound` is
/// not used: pass exactly the real masked tokens). With `M = 0` the loss is 0.
///
/// # Shapes
/// - student_patch_logits: `[M, K]` (tracked);
/// - teacher_patch_probs: `[M, K]` (targets, detached here);
/// - masks_weight: `[M]`, `1/|mask|` of each token's crop (detached here);
/// - returns `[1]`.
///
/// # Panics
/// If `n_global_crops` is 0 or the shapes disagree (trainer bugs).
pub fn ibot_loss(
    student_patch_logits: Tensor<2>,
    teacher_patch_probs: Tensor<2>,
    masks_weight: Tensor<1>,
    n_global_crops: usize,
    student_temp: f64,
) -> Tensor<1> {
    assert!(n_global_crops > 0, "ibot_loss: n_global_crops is 0");
    let [m, k] = student_patch_logits.dims();
    assert_eq!(
        teacher_patch_probs.dims(),
        [m, k],
        "ibot_loss: teacher/student shapes differ"
    );
    assert_eq!(
        masks_weight.dims(),
        [m],
        "ibot_loss: one mask weight per masked token"
    );
    if m == 0 {
        return Tensor::zeros([1], &student_patch_logits.device());
    }
    let t = f32_of(teacher_patch_probs.detach());
    let w = f32_of(masks_weight.detach());
    // per-token cross-entropy −ℓ_j
    let per_token = soft_cross_entropy(f32_of(student_patch_logits), t, student_temp);
    kernels::sum(per_token * w) / n_global_crops as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    use webssl_models::params::to_host;

    fn scalar(t: Tensor<1>) -> f32 {
        to_host(t)[0]
    }

    #[test]
    fn uniform_predictions_per_crop_average() {
        let device = Device::flex();
        let k = 64;
        // crops with 3 and 1 masked tokens among 4 global crops: Σ_crops ln K / 4 = 2 ln K / 4
        let m = 4;
        let s = Tensor::<2>::zeros([m, k], &device);
        let t = Tensor::<2>::ones([m, k], &device) / k as f64;
        let w = Tensor::<1>::from_data(
            TensorData::new(vec![1.0f32 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 1.0], [m]),
            &device,
        );
        let l = scalar(ibot_loss(s, t, w, 4, 0.1));
        assert!((l - 0.5 * (k as f32).ln()).abs() < 1e-5, "{l}");
        let empty = ibot_loss(
            Tensor::<2>::zeros([0, k], &device),
            Tensor::<2>::zeros([0, k], &device),
            Tensor::<1>::zeros([0], &device),
            4,
            0.1,
        );
        assert_eq!(scalar(empty), 0.0);
    }

    #[test]
    fn gradient_flows_to_student_only() {
        let device = Device::flex().autodiff();
        let (m, k) = (3, 6);
        let s = Tensor::<2>::from_data(
            TensorData::new((0..m * k).map(|i| (i % 5) as f32 * 0.3).collect(), [m, k]),
            &device,
        )
        .require_grad();
        let t = (Tensor::<2>::ones([m, k], &device) / k as f64).require_grad();
        let w = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 0.5, 1.0], [m]), &device);
        let grads = ibot_loss(s.clone(), t.clone(), w, 2, 0.1).backward();
        let g = to_host(s.grad(&grads).unwrap());
        assert!(g.iter().any(|&x| x != 0.0));
        assert!(t.grad(&grads).is_none());
    }
}
