//! The DINO image-level loss: cross-entropy between the teacher's target distribution on each global
//! crop and the student's prediction on every other crop.
//!
//! Reference: `dinov2/loss/dino_clstoken_loss.py` (`DINOLoss.forward`) and its two calls in
//! `dinov2/train/ssl_meta_arch.py` (`dino_local_crops_loss`, `dino_global_crops_loss`);
//! `docs/reference/training-algorithms.md` §4.2.
//!
//! ```text
//! CE(t, s) = −mean_batch Σ_k t[k] · log_softmax(s/τs)[k]
//! local  = Σ_{l local} Σ_{v global} CE(t_v, s_l) / n_terms
//! global = Σ_{v global} Σ_{u ≠ v}  CE(t_u, s_v) / n_terms
//! n_terms = n_g·(n_g − 1) + max(n_g·n_l, 1)           (18 for 2 global + 8 local crops)
//! ```
//! The reference feeds the teacher chunks swapped (`[view1, view0]`) and takes one mean over the 2B
//! global rows times 2; with equal chunk sizes that is exactly the sum of the per-view pair means
//! above, so this module takes the teacher targets in natural view order and skips the same-view
//! pair instead. The `max(·, 1)` is dinov2's (it only matters without local crops: 2 globals give 3).
//! Deviation: computed in f32 (the reference uses the fp16 logits of its mixed-precision forward).
//! The per-row cross-entropy is `webssl_models::kernels::soft_cross_entropy`: on the CPU one fused
//! sweep per row with a hand-written backward (no `[B, K]` log-softmax tensor kept per crop), burn's
//! `log_softmax` elsewhere or with `WEBSSL_FUSED_KERNELS=0`.

use burn::tensor::Tensor;
use webssl_models::kernels::{self, soft_cross_entropy};

use super::f32_of;

/// The two parts of the DINO loss as dinov2 logs them (`dino_local_crops_loss`,
/// `dino_global_crops_loss`); `local + global` is the loss.
#[derive(Debug, Clone)]
pub struct DinoLossTerms {
    pub local: Tensor<1>,
    pub global: Tensor<1>,
    /// The divisor `n_g·(n_g − 1) + max(n_g·n_l, 1)`.
    pub n_terms: usize,
}

/// The DINO loss, `local + global` of [`dino_loss_terms`].
///
/// # Shapes
/// - student: one `[B, K]` logit tensor per student crop, the `n_g` global crops first (view order),
///   then the local crops;
/// - teacher: one `[B, K]` probability tensor per global crop, in the same view order (teacher `v`
///   comes from global view `v`; it is *not* paired with student global crop `v`);
/// - returns `[1]`.
pub fn dino_loss(student: &[Tensor<2>], teacher: &[Tensor<2>], student_temp: f64) -> Tensor<1> {
    let terms = dino_loss_terms(student, teacher, student_temp);
    terms.local + terms.global
}

/// The DINO loss split into its local-crop and global-crop parts; see [`dino_loss`] for shapes.
///
/// # Panics
/// If there is no teacher crop or fewer student crops than teacher crops (a trainer bug, not an input
/// condition).
pub fn dino_loss_terms(
    student: &[Tensor<2>],
    teacher: &[Tensor<2>],
    student_temp: f64,
) -> DinoLossTerms {
    let n_g = teacher.len();
    assert!(n_g > 0, "dino_loss: no teacher crops");
    assert!(
        student.len() >= n_g,
        "dino_loss: {} student crops for {n_g} teacher global crops (globals must come first)",
        student.len()
    );
    let n_l = student.len() - n_g;
    let n_terms = n_g * (n_g - 1) + (n_g * n_l).max(1);
    let teacher: Vec<Tensor<2>> = teacher.iter().map(|t| f32_of(t.clone().detach())).collect();
    let device = student[0].device();

    // Σ_v CE(t_v, s) = CE(Σ_v t_v, s): sum the targets each crop is paired with first, so every
    // student crop costs one product with its log-softmax instead of one per pair.
    let local_target = (n_l > 0).then(|| sum(teacher.iter().cloned()));
    let mut local = Tensor::<1>::zeros([1], &device);
    let mut global = Tensor::<1>::zeros([1], &device);
    for (i, s) in student.iter().enumerate() {
        let target = if i < n_g {
            if n_g == 1 {
                continue; // a single global crop has no cross-view pair
            }
            sum(teacher
                .iter()
                .enumerate()
                .filter(|&(v, _)| v != i)
                .map(|(_, t)| t.clone()))
        } else {
            local_target.clone().expect("locals present")
        };
        let ce = kernels::mean(soft_cross_entropy(f32_of(s.clone()), target, student_temp));
        if i < n_g {
            global = global + ce;
        } else {
            local = local + ce;
        }
    }
    DinoLossTerms {
        local: local / n_terms as f64,
        global: global / n_terms as f64,
        n_terms,
    }
}

/// Element-wise sum of a non-empty sequence of tensors.
fn sum(mut it: impl Iterator<Item = Tensor<2>>) -> Tensor<2> {
    let first = it.next().expect("at least one tensor");
    it.fold(first, |acc, t| acc + t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t2(v: Vec<f32>, b: usize, k: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [b, k]), device)
    }

    use webssl_models::params::to_host;

    fn scalar(t: Tensor<1>) -> f32 {
        to_host(t)[0]
    }

    #[test]
    fn uniform_predictions_give_ln_k() {
        let device = Device::flex();
        let (b, k) = (3, 4096);
        // constant student logits: log_softmax = −ln K for any target distribution
        let student: Vec<_> = (0..10)
            .map(|_| Tensor::<2>::zeros([b, k], &device))
            .collect();
        let teacher: Vec<_> = (0..2)
            .map(|v| {
                let mut p = vec![0.0f32; b * k];
                for r in 0..b {
                    p[r * k + (r * 31 + v) % k] = 1.0; // one-hot targets
                }
                t2(p, b, k, &device)
            })
            .collect();
        let terms = dino_loss_terms(&student, &teacher, 0.1);
        assert_eq!(terms.n_terms, 18);
        let ln_k = (k as f32).ln();
        assert!((scalar(terms.local.clone()) - 16.0 / 18.0 * ln_k).abs() < 1e-4);
        assert!((scalar(terms.global.clone()) - 2.0 / 18.0 * ln_k).abs() < 1e-4);
        assert!((scalar(dino_loss(&student, &teacher, 0.1)) - ln_k).abs() < 1e-4); // 8.3178
    }

    #[test]
    fn pairs_skip_the_same_view() {
        let device = Device::flex();
        // Student global 0 predicts teacher 0 perfectly, badly teacher 1: only the cross pair counts.
        let k = 2;
        let big = 100.0;
        let s0 = t2(vec![big, 0.0], 1, k, &device); // ~ [1, 0]
        let s1 = t2(vec![0.0, big], 1, k, &device); // ~ [0, 1]
        let t0 = t2(vec![1.0, 0.0], 1, k, &device);
        let t1 = t2(vec![0.0, 1.0], 1, k, &device);
        // s0 vs t1 and s1 vs t0 are both wrong: CE = big/τ each, divisor 2 + max(0, 1) = 3.
        let l = scalar(dino_loss(
            &[s0.clone(), s1.clone()],
            &[t0.clone(), t1.clone()],
            1.0,
        ));
        assert!((l - 2.0 * big / 3.0).abs() < 1e-3, "{l}");
        // swap the teachers: every counted pair is now right, loss ≈ 0
        let l = scalar(dino_loss(&[s0, s1], &[t1, t0], 1.0));
        assert!(l.abs() < 1e-3, "{l}");
    }

    #[test]
    fn gradient_reaches_every_student_crop_and_not_the_teacher() {
        let device = Device::flex().autodiff();
        let (b, k) = (2, 5);
        let student: Vec<_> = (0..4)
            .map(|c| {
                let v = (0..b * k)
                    .map(|i| ((i * 3 + c * 7) % 11) as f32 * 0.1)
                    .collect();
                t2(v, b, k, &device).require_grad()
            })
            .collect();
        let teacher: Vec<_> = (0..2)
            .map(|_| t2(vec![0.2; b * k], b, k, &device).require_grad())
            .collect();
        let grads = dino_loss(&student, &teacher, 0.1).backward();
        for s in &student {
            let g = s.grad(&grads).expect("student grad");
            let g = to_host(g);
            assert!(g.iter().any(|&x| x != 0.0));
        }
        for t in &teacher {
            assert!(t.grad(&grads).is_none(), "teacher must be detached");
        }
    }
}
