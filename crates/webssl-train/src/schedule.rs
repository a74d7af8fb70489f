//! Per-iteration schedules: DINOv2's `CosineScheduler` (lr, weight decay, teacher momentum, teacher
//! temperature, last-layer lr), the DINOv2 sqrt lr-scaling rule, and the MAE / CLIP warm-up + cosine
//! learning-rate forms.
//!
//! References (facebookresearch/dinov2 @ b8931f7b):
//! - `dinov2/utils/utils.py::CosineScheduler` — warm-up `np.linspace(start_warmup, base, warmup)`
//!   (inclusive endpoints: step `warmup−1` is exactly `base`), then
//!   `final + 0.5·(base − final)·(1 + cos(π·i / (total − warmup)))` for `i = 0 … total−warmup−1`,
//!   and `final` for every step `≥ total`.
//! - `dinov2/train/train.py::build_schedulers` — the last-layer lr is the lr schedule with its first
//!   `freeze_last_layer_epochs · 1250` entries overwritten with 0. That is what [`CosineSchedule`]'s
//!   `freeze_steps` does. (Deliberate: `CosineScheduler`'s own `freeze_iters` constructor argument,
//!   which *prepends* zeros and shortens the cosine, is unused by dinov2's trainer and not offered.)
//! - `dinov2/configs/config.py::apply_scaling_rules_to_cfg` — `lr = base_lr · sqrt(global_batch / 1024)`.
//! - facebookresearch/mae `main_pretrain.py` / `util/lr_sched.py` — `lr = blr · eff_batch / 256`,
//!   linear warm-up from 0 then half-cosine to `min_lr` ([`mae_lr`]).
//! - facebookresearch/MetaCLIP `src/training/scheduler.py::cosine_lr` — `base·(step+1)/warmup`
//!   during warm-up, then a cosine to 0 ([`clip_lr`]).
//!
//! Values are computed on the fly in `f64` with the same operation order as numpy, instead of
//! materialising 625k-entry arrays; the tests pin them to a numpy transcription of the reference
//! (`fixtures/schedules/make_schedules.py`).

use crate::error::{Result, TrainError};

/// DINOv2 `CosineScheduler` evaluated lazily, plus the trainer's last-layer freeze.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineSchedule {
    base: f64,
    final_: f64,
    total_steps: u64,
    warmup_steps: u64,
    start_warmup: f64,
    freeze_steps: u64,
}

impl CosineSchedule {
    /// `base` is reached at the last warm-up step (`warmup_steps − 1`), the cosine decays to `final_`
    /// over `total_steps − warmup_steps` steps, and every step `≥ total_steps` returns `final_`.
    /// The first `freeze_steps` steps (below `total_steps`) return 0 (dinov2's last-layer freeze).
    ///
    /// Total for any input: if `warmup_steps > total_steps` (which dinov2 rejects with an assertion)
    /// the steps past `total_steps` simply return `final_`. Use [`CosineSchedule::try_new`] to reject
    /// such a configuration with an error.
    pub fn new(
        base: f64,
        final_: f64,
        total_steps: u64,
        warmup_steps: u64,
        start_warmup: f64,
        freeze_steps: u64,
    ) -> Self {
        Self {
            base,
            final_,
            total_steps,
            warmup_steps,
            start_warmup,
            freeze_steps,
        }
    }

    /// [`CosineSchedule::new`] that rejects what dinov2's `CosineScheduler` rejects (a warm-up longer
    /// than the schedule) and non-finite values; `name` is the config field reported in the error.
    pub fn try_new(
        name: &str,
        base: f64,
        final_: f64,
        total_steps: u64,
        warmup_steps: u64,
        start_warmup: f64,
        freeze_steps: u64,
    ) -> Result<Self> {
        if warmup_steps > total_steps {
            return Err(TrainError::config(
                name,
                format!(
                    "warm-up ({warmup_steps} steps) is longer than the schedule ({total_steps} steps)"
                ),
            ));
        }
        for (what, v) in [
            ("base", base),
            ("final", final_),
            ("start_warmup", start_warmup),
        ] {
            if !v.is_finite() {
                return Err(TrainError::config(
                    name,
                    format!("{what} value {v} is not finite"),
                ));
            }
        }
        Ok(Self::new(
            base,
            final_,
            total_steps,
            warmup_steps,
            start_warmup,
            freeze_steps,
        ))
    }

    /// A constant-then-`final` ramp: DINOv2's teacher-temperature schedule is
    /// `CosineScheduler(base=v, final=v, total=warmup=T, start_warmup=v0)`, i.e. a linear ramp from
    /// `v0` to `v` reached at step `T−1`, constant afterwards.
    pub fn linear_ramp(start: f64, end: f64, ramp_steps: u64) -> Self {
        Self::new(end, end, ramp_steps, ramp_steps, start, 0)
    }

    /// The schedule's value at `step`.
    pub fn at(&self, step: u64) -> f64 {
        if step >= self.total_steps {
            return self.final_;
        }
        if step < self.freeze_steps {
            return 0.0;
        }
        if step < self.warmup_steps {
            return linspace_at(self.start_warmup, self.base, self.warmup_steps, step);
        }
        let i = (step - self.warmup_steps) as f64;
        let n = (self.total_steps - self.warmup_steps) as f64;
        // numpy: final + 0.5 * (base - final) * (1 + cos(pi * iters / len(iters))), left to right.
        let c = (std::f64::consts::PI * i / n).cos();
        self.final_ + 0.5 * (self.base - self.final_) * (1.0 + c)
    }

    pub fn base(&self) -> f64 {
        self.base
    }
    pub fn final_value(&self) -> f64 {
        self.final_
    }
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }
    pub fn start_warmup(&self) -> f64 {
        self.start_warmup
    }
    pub fn freeze_steps(&self) -> u64 {
        self.freeze_steps
    }
}

/// Element `i` of `np.linspace(start, stop, num)` (endpoint=True), bit for bit:
/// numpy computes `arange(num) * step + start` with `step = (stop − start) / (num − 1)` and then
/// overwrites the last element with `stop`; `num == 1` gives `[start]`.
fn linspace_at(start: f64, stop: f64, num: u64, i: u64) -> f64 {
    if num == 1 {
        return start;
    }
    if i == num - 1 {
        return stop;
    }
    let step = (stop - start) / (num - 1) as f64;
    if step == 0.0 {
        // numpy's `_nx.any(step == 0)` branch: y = y / div * delta (+ start); with delta == 0 too
        // every element is `start`.
        let delta = stop - start;
        return (i as f64) / (num - 1) as f64 * delta + start;
    }
    (i as f64) * step + start
}

/// DINOv2's learning-rate scaling (`scaling_rule: sqrt_wrt_1024`):
/// `lr = base_lr · sqrt(global_batch / 1024)`.
pub fn scaled_lr(base_lr_per_1024: f64, global_batch: usize) -> f64 {
    base_lr_per_1024 * (global_batch as f64 / 1024.0).sqrt()
}

/// MAE's linear scaling rule (`main_pretrain.py`): `lr = blr · eff_batch / 256`.
pub fn scaled_lr_linear(blr_per_256: f64, global_batch: usize) -> f64 {
    blr_per_256 * global_batch as f64 / 256.0
}

/// MAE `util/lr_sched.py::adjust_learning_rate`, per iteration: the reference uses the fractional
/// epoch `it / iters_per_epoch`; the ratio `epoch / warmup_epochs` equals `step / warmup_steps`,
/// so it is expressed in steps here (`lr` at step 0 is 0, it reaches `lr` only after warm-up).
pub fn mae_lr(lr: f64, min_lr: f64, step: u64, warmup_steps: u64, total_steps: u64) -> f64 {
    if step < warmup_steps {
        return lr * step as f64 / warmup_steps as f64;
    }
    let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
    let t = (step - warmup_steps) as f64 / span;
    min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// MetaCLIP/open_clip `cosine_lr`: `base·(step+1)/warmup` during warm-up, then
/// `0.5·(1 + cos(π·e/es))·base` with `e = step − warmup`, `es = total − warmup`.
pub fn clip_lr(base: f64, step: u64, warmup_steps: u64, total_steps: u64) -> f64 {
    if step < warmup_steps {
        return base * (step + 1) as f64 / warmup_steps as f64;
    }
    let e = (step - warmup_steps) as f64;
    let es = total_steps.saturating_sub(warmup_steps).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_endpoints_are_inclusive() {
        let s = CosineSchedule::new(4e-3, 1e-6, 1000, 100, 0.0, 0);
        assert_eq!(s.at(0), 0.0);
        assert_eq!(s.at(99), 4e-3); // linspace endpoint, exactly
        assert_eq!(s.at(1), 4e-3 / 99.0);
        assert_eq!(s.at(100), 4e-3); // cosine i = 0: cos(0) = 1
        assert_eq!(s.at(1000), 1e-6);
        assert_eq!(s.at(u64::MAX), 1e-6);
        // midpoint of the cosine: i = 450 of 900 -> cos(pi/2) ~ 6e-17
        let mid = s.at(550);
        assert!((mid - (1e-6 + 0.5 * (4e-3 - 1e-6))).abs() < 1e-18, "{mid}");
        // last in-range step, i = 899
        let last =
            1e-6 + 0.5 * (4e-3 - 1e-6) * (1.0 + (std::f64::consts::PI * 899.0 / 900.0).cos());
        assert_eq!(s.at(999), last);
        assert!(s.at(999) > 1e-6 && s.at(999) < 1.1e-6);
    }

    #[test]
    fn freeze_zeroes_the_first_steps_only() {
        let lr = CosineSchedule::new(1.0, 0.0, 100, 10, 0.0, 0);
        let ll = CosineSchedule::new(1.0, 0.0, 100, 10, 0.0, 20);
        for step in 0..120 {
            let expect = if step < 20 { 0.0 } else { lr.at(step) };
            assert_eq!(ll.at(step), expect, "step {step}");
        }
    }

    #[test]
    fn teacher_temperature_ramp() {
        let t = CosineSchedule::linear_ramp(0.04, 0.07, 37_500);
        assert_eq!(t.at(0), 0.04);
        assert_eq!(t.at(37_499), 0.07);
        assert_eq!(t.at(37_500), 0.07);
        let odd = CosineSchedule::linear_ramp(0.04, 0.07, 37_501);
        assert!((odd.at(18_750) - 0.055).abs() < 1e-15); // exact middle of the ramp
    }

    #[test]
    fn no_warmup_and_single_step_warmup() {
        let wd = CosineSchedule::new(0.04, 0.4, 10, 0, 0.0, 0);
        // 0.4 + 0.5·(0.04 − 0.4)·2 rounds to 0.04 − 2e-17, as in numpy
        assert!((wd.at(0) - 0.04).abs() < 1e-16);
        let w1 = CosineSchedule::new(1.0, 0.5, 10, 1, 0.25, 0);
        assert_eq!(w1.at(0), 0.25); // np.linspace(0.25, 1.0, 1) == [0.25]
        assert_eq!(w1.at(1), 1.0);
    }

    #[test]
    fn try_new_rejects_long_warmup() {
        assert!(CosineSchedule::try_new("optim.lr", 1.0, 0.0, 10, 11, 0.0, 0).is_err());
        assert!(CosineSchedule::try_new("optim.lr", f64::NAN, 0.0, 10, 1, 0.0, 0).is_err());
        assert!(CosineSchedule::try_new("optim.lr", 1.0, 0.0, 10, 10, 0.0, 0).is_ok());
    }

    #[test]
    fn lr_scaling_rules() {
        assert!((scaled_lr(4e-3, 2048) - 4e-3 * 2f64.sqrt()).abs() < 1e-18);
        assert_eq!(scaled_lr(2e-4, 1024), 2e-4);
        assert!((scaled_lr(2e-4, 3072) - 3.4641e-4).abs() < 1e-8);
        assert!((scaled_lr_linear(1.5e-4, 4096) - 2.4e-3).abs() < 1e-15);
    }

    #[test]
    fn mae_and_clip_forms() {
        assert_eq!(mae_lr(1.0, 0.0, 0, 10, 100), 0.0);
        assert_eq!(mae_lr(1.0, 0.0, 5, 10, 100), 0.5);
        assert_eq!(mae_lr(1.0, 0.1, 10, 10, 100), 1.0);
        assert!((mae_lr(1.0, 0.1, 55, 10, 100) - 0.55).abs() < 1e-15);
        assert_eq!(clip_lr(1.0, 0, 4, 100), 0.25);
        assert_eq!(clip_lr(1.0, 3, 4, 100), 1.0);
        assert_eq!(clip_lr(1.0, 4, 4, 100), 1.0);
        assert!(clip_lr(1.0, 100, 4, 100).abs() < 1e-15);
    }
}
