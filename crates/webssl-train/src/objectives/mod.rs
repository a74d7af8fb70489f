//! The pretraining losses, one per file: DINOv2's DINO image-level loss over the multi-crop pairs,
//! iBOT masked-patch loss, KoLeo regulariser and teacher targets (softmax with centering, or
//! Sinkhorn-Knopp) with the teacher-temperature warm-up; MAE's normalised-pixel reconstruction loss
//! ([`mae`]); CLIP's symmetric InfoNCE ([`clip`]).
//!
//! Reference: `facebookresearch/dinov2` commit b8931f7b, `dinov2/loss/{dino_clstoken_loss,
//! ibot_patch_loss,koleo_loss}.py` and the loss assembly in `dinov2/train/ssl_meta_arch.py`;
//! `docs/reference/training-algorithms.md` §4. Golden values come from
//! `fixtures/objectives/make_objectives.py`, which runs a transcription of those files (checked against the
//! real ones) in PyTorch.
//!
//! Conventions for every function here:
//! - all arithmetic is f32: inputs in another float dtype (bf16/f16 activations) are cast first, as §9
//!   recommends (the reference runs the DINO cross-entropy on fp16 logits; that is not reproduced);
//! - student inputs keep their autodiff graph; teacher targets are built on the inner (non-autodiff)
//!   tensors and handed back as untracked tensors on the caller's device kind, so they can be combined
//!   with tracked student tensors but never receive gradients;
//! - world size 1 semantics: the reference's all-reduces (centre, Sinkhorn sums, masked-token count)
//!   become the identity. A data-parallel trainer must reduce the same quantities across ranks.

pub mod clip;
pub mod dino;
pub mod ibot;
pub mod koleo;
pub mod mae;
pub mod targets;

pub use dino::{DinoLossTerms, dino_loss, dino_loss_terms};
pub use ibot::ibot_loss;
pub use koleo::koleo_loss;
pub use mae::mae_loss;
pub use targets::{Centering, sinkhorn_knopp, sinkhorn_knopp_dist};

use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The teacher temperature schedule of dinov2 (`CosineScheduler` with `total = warmup`): a linear ramp
/// `linspace(start, end, warmup_steps)` over the first `warmup_steps` optimizer steps (inclusive
/// endpoints, so step `warmup_steps − 1` is exactly `end`), then constant `end`. Defaults 0.04 → 0.07
/// over 30 · 1250 = 37,500 steps (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherTemp {
    pub start: f64,
    pub end: f64,
    pub warmup_steps: u64,
}

impl Default for TeacherTemp {
    fn default() -> Self {
        Self {
            start: 0.04,
            end: 0.07,
            warmup_steps: 30 * 1250,
        }
    }
}

impl TeacherTemp {
    pub fn at(&self, step: u64) -> f64 {
        teacher_temp(step, self.warmup_steps, self.start, self.end)
    }
}

/// See [`TeacherTemp`]. Mirrors `np.linspace` (`start + i · (end − start)/(n − 1)`, last point exact).
pub fn teacher_temp(step: u64, warmup_steps: u64, start: f64, end: f64) -> f64 {
    if step >= warmup_steps {
        end
    } else if step + 1 == warmup_steps {
        // np.linspace sets the endpoint exactly; with n = 1 the only point is `start`.
        if warmup_steps == 1 { start } else { end }
    } else {
        start + step as f64 * ((end - start) / (warmup_steps - 1) as f64)
    }
}

/// The tensor in f32 (a no-op when it already is), keeping its autodiff graph.
pub(crate) fn f32_of<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.cast(FloatDType::F32)
}

/// Detached f32 copy for target computations: the inner (non-autodiff) tensor.
pub(crate) fn untracked_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.inner().cast(FloatDType::F32)
}

/// Hands a target computed on inner tensors back on the device kind of the input it came from.
pub(crate) fn on_kind_of<const D: usize>(t: Tensor<D>, autodiff: bool) -> Tensor<D> {
    if autodiff { t.autodiff() } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_temp_is_linspace_then_constant() {
        let s = TeacherTemp::default();
        assert_eq!(s.at(0), 0.04);
        assert_eq!(s.at(37_499), 0.07);
        assert_eq!(s.at(37_500), 0.07);
        assert_eq!(s.at(1_000_000), 0.07);
        let mid = s.at(18_000);
        assert!(
            (mid - (0.04 + 0.03 * 18_000.0 / 37_499.0)).abs() < 1e-15,
            "{mid}"
        );
        // monotone non-decreasing over the ramp
        let mut prev = 0.0;
        for step in (0..37_600).step_by(97) {
            let t = s.at(step);
            assert!(t >= prev);
            prev = t;
        }
        assert_eq!(teacher_temp(0, 1, 0.04, 0.07), 0.04);
        assert_eq!(teacher_temp(1, 1, 0.04, 0.07), 0.07);
        assert_eq!(teacher_temp(0, 0, 0.04, 0.07), 0.07);
        assert!((teacher_temp(1, 3, 0.04, 0.07) - 0.055).abs() < 1e-15);
    }
}
