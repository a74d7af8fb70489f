//! Gradients of one (sub-)module keyed by parameter path, and PyTorch's `clip_grad_norm_` on them.
//!
//! DINOv2 clips **separately per student sub-module** (backbone, dino_head, ibot_head):
//! `facebookresearch/dinov2` @ b8931f7b `dinov2/train/train.py` calls `v.clip_grad_norm_(3.0)` for
//! each `model.student.values()` (reference `docs/reference/training-algorithms.md` §5.4 step 3, §9 item 8).
//! The trainer therefore builds one [`ParamGrads`] per sub-module.
//!
//! `clip` follows `torch.nn.utils.clip_grad_norm_` (norm_type 2): `total = ‖(‖g_1‖, …, ‖g_n‖)‖₂`,
//! `coef = max_norm / (total + 1e-6)`, and every gradient is multiplied by `coef` when `coef < 1`
//! (torch multiplies by `clamp(coef, max=1)`, a no-op at 1). Per-tensor sums of squares are reduced on
//! the device in f32 (as torch does for f32 gradients), gathered in **one** host read, and summed in
//! f64. Deliberate deviations: `max_norm ≤ 0` disables clipping (dinov2's `if cfg.optim.clip_grad:`
//! convention, where torch would zero every gradient), and a non-finite norm leaves the gradients
//! untouched (torch would turn them into NaN/0); both return the norm so the caller can react.
//!
//! Gradients are flattened to 1-D tensors on the inner (non-autodiff) device; the optimizer reshapes
//! its per-parameter views, so storage does not depend on the parameter rank.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use webssl_models::kernels;
use webssl_models::params::{self, NamedTensor, to_host, trainable_params};

/// One gradient: the parameter's shape and its values flattened (row-major) to 1-D.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    shape: Vec<usize>,
    grad: Tensor<1>,
}

/// Gradients of one module by parameter path, in the module's visiting order (deterministic).
#[derive(Debug, Clone, Default)]
pub struct ParamGrads {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl ParamGrads {
    /// The gradients `grads` holds for the float parameters of `module` (paths relative to it).
    /// Parameters without a gradient (frozen, unused in the graph) are absent.
    pub fn from_module<M: Module>(module: &M, grads: &Gradients) -> Self {
        let mut out = ParamGrads::default();
        params::visit(module, |path, p| {
            if p.requires_grad()
                && let Some(g) = p.grad(grads)
            {
                out.push(path.to_owned(), p.shape(), g);
            }
        });
        out
    }

    /// Like [`ParamGrads::from_module`] but *removes* the gradients from `grads`, so clipping
    /// (which writes new tensors) does not keep the unclipped set alive until `grads` is dropped.
    pub fn take_from_module<M: Module>(module: &M, grads: &mut Gradients) -> Self {
        let mut out = ParamGrads::default();
        params::visit(module, |path, p| {
            if p.requires_grad()
                && let Some(g) = p.take_grad(grads)
            {
                out.push(path.to_owned(), p.shape(), g);
            }
        });
        out
    }

    /// Averages these gradients of `module` over all ranks (DDP/FSDP semantics: every rank then holds
    /// the gradient of the global-batch mean loss). Laid out by the module's parameters so that every
    /// rank takes part in the same collectives even where it has no gradient for a parameter (no masked
    /// patch here, say): it contributes zeros, and the parameter has a gradient afterwards on every rank
    /// iff it had one on some rank — as it would in one process over the global batch. One all-reduce
    /// of the presence flags, then one per parameter, so the host copies alive at any time are those of
    /// a single parameter, not of the model. Identity at world size 1.
    pub fn all_reduce_mean<M: Module>(&mut self, module: &M, dist: &crate::dist::Dist) {
        use crate::dist::ReduceOp;
        if dist.world_size() == 1 {
            return;
        }
        let params = trainable_params(module);
        let mut present: Vec<f32> = params
            .iter()
            .map(|(p, _, _)| f32::from(u8::from(self.get(p).is_some())))
            .collect();
        dist.all_reduce_f32("gradient presence", &mut present, ReduceOp::Sum);
        let w = dist.world_size() as f32;
        for ((path, shape, device), anywhere) in params.into_iter().zip(present) {
            if anywhere == 0.0 {
                continue;
            }
            let n = shape.iter().product::<usize>();
            let mut values = match self.get(&path) {
                Some(g) => to_host(g.clone()),
                None => vec![0.0; n],
            };
            dist.all_reduce_f32("gradients", &mut values, ReduceOp::Sum);
            values.iter_mut().for_each(|x| *x /= w);
            let t = Tensor::<1>::from_data(TensorData::new(values, [n]), &device);
            self.push(path, shape, t);
        }
    }

    /// Adds `other` into these gradients (gradient accumulation over a step's forwards): a path in
    /// both is summed, a path only in `other` is taken as it is.
    pub fn accumulate(&mut self, other: ParamGrads) {
        for e in other.entries {
            match self.index.get(&e.path) {
                Some(&i) => {
                    let sum = self.entries[i].grad.clone() + e.grad;
                    self.entries[i].grad = sum;
                }
                None => self.push(e.path, e.shape, e.grad),
            }
        }
    }

    /// The sum of a step's accumulated gradients turned into their mean over its `forwards`
    /// (identity for one forward, so a step without accumulation is unchanged bit for bit).
    pub fn mean_over(&mut self, forwards: usize) {
        if forwards > 1 {
            for e in &mut self.entries {
                e.grad = e.grad.clone().div_scalar(forwards as f32);
            }
        }
    }

    /// Gradients given on the host, e.g. from a reference implementation or a test.
    /// Panics if a value count does not match its shape (a programming error).
    pub fn from_host(items: Vec<NamedTensor>, device: &Device) -> Self {
        let mut out = ParamGrads::default();
        for (path, shape, values) in items {
            let n = shape.iter().product::<usize>();
            assert_eq!(
                n,
                values.len(),
                "gradient {path}: {} values for shape {shape:?}",
                values.len()
            );
            let t = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
            out.push(path, shape, t);
        }
        out
    }

    fn push(&mut self, path: String, shape: Vec<usize>, grad: Tensor<1>) {
        if let Some(&i) = self.index.get(&path) {
            self.entries[i] = Entry { path, shape, grad };
        } else {
            self.index.insert(path.clone(), self.entries.len());
            self.entries.push(Entry { path, shape, grad });
        }
    }

    /// The flattened gradient of `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Tensor<1>> {
        self.index.get(path).map(|&i| &self.entries[i].grad)
    }

    /// The parameter shape recorded for `path`.
    pub fn shape(&self, path: &str) -> Option<&[usize]> {
        self.index
            .get(path)
            .map(|&i| self.entries[i].shape.as_slice())
    }

    /// Parameter paths in visiting order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the gradients whose path satisfies `keep` (e.g. DINO v1's
    /// `cancel_gradients_last_layer`; dinov2 itself freezes the last layer through its lr instead).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|e| keep(&e.path));
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.clone(), i))
            .collect();
    }

    /// All gradients copied to the host: `(path, shape, values)`.
    pub fn to_host(&self) -> Vec<NamedTensor> {
        self.entries
            .iter()
            .map(|e| (e.path.clone(), e.shape.clone(), to_host(e.grad.clone())))
            .collect()
    }

    /// Sum of squares of each gradient (f32 device reductions), read back in one transfer.
    fn sums_of_squares(&self) -> Vec<f32> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let parts: Vec<Tensor<1>> = self
            .entries
            .iter()
            .map(|e| kernels::sum(e.grad.clone() * e.grad.clone()))
            .collect();
        to_host(Tensor::cat(parts, 0))
    }

    /// Total L2 norm over all gradients (torch `clip_grad_norm_`'s `total_norm`, norm_type 2).
    pub fn global_norm(&self) -> f64 {
        self.sums_of_squares()
            .iter()
            .map(|&s| s as f64)
            .sum::<f64>()
            .sqrt()
    }

    /// torch `clip_grad_norm_(max_norm)`: scales every gradient by `max_norm / (norm + 1e-6)` when
    /// that is below 1; returns the pre-clip total norm. `max_norm ≤ 0` (dinov2: clipping off) or a
    /// non-finite norm leaves the gradients as they are.
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        if max_norm.is_nan() || max_norm <= 0.0 || !norm.is_finite() {
            return norm;
        }
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            self.scale(coef);
        }
        norm
    }

    /// Multiplies every gradient by `factor` (rounded once to f32), e.g. to undo a loss scale.
    pub fn scale(&mut self, factor: f64) {
        let f = factor as f32;
        for e in &mut self.entries {
            e.grad = e.grad.clone().mul_scalar(f);
        }
    }

    /// Whether every gradient element is finite (no NaN, no ±inf); one host read.
    pub fn all_finite(&self) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let parts: Vec<Tensor<1>> = self
            .entries
            .iter()
            .map(|e| kernels::sum(e.grad.clone().is_finite().bool_not().float()))
            .collect();
        to_host(Tensor::cat(parts, 0)).iter().all(|&bad| bad == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(items: &[(&str, Vec<usize>, Vec<f32>)]) -> ParamGrads {
        let items = items
            .iter()
            .map(|(p, s, v)| (p.to_string(), s.clone(), v.clone()))
            .collect();
        ParamGrads::from_host(items, &Device::flex())
    }

    #[test]
    fn norm_and_clip_by_hand() {
        // ‖(3, 4)‖ = 5, ‖(12)‖ = 12 -> total 13
        let mut g = grads(&[
            ("a", vec![2], vec![3.0, 4.0]),
            ("b", vec![1, 1], vec![12.0]),
        ]);
        assert!((g.global_norm() - 13.0).abs() < 1e-12);
        // no clipping when the norm is below the threshold: values untouched bit for bit
        assert_eq!(g.clip(20.0), 13.0);
        assert_eq!(g.to_host()[0].2, vec![3.0, 4.0]);
        let pre = g.clip(6.5);
        assert!((pre - 13.0).abs() < 1e-12);
        let coef = (6.5 / (13.0 + 1e-6)) as f32;
        let h = g.to_host();
        assert_eq!(h[0].2, vec![3.0 * coef, 4.0 * coef]);
        assert_eq!(h[1].2, vec![12.0 * coef]);
        assert!((g.global_norm() - 6.5).abs() < 1e-5);
    }

    #[test]
    fn disabled_and_non_finite_leave_grads() {
        let mut g = grads(&[("a", vec![2], vec![3.0, 4.0])]);
        assert_eq!(g.clip(0.0), 5.0);
        assert_eq!(g.to_host()[0].2, vec![3.0, 4.0]);
        assert!(g.all_finite());
        let mut bad = grads(&[
            ("a", vec![2], vec![3.0, 4.0]),
            ("b", vec![3], vec![1.0, f32::NAN, 0.0]),
        ]);
        assert!(!bad.all_finite());
        assert!(bad.clip(1.0).is_nan());
        assert_eq!(bad.to_host()[0].2, vec![3.0, 4.0]);
        let inf = grads(&[("a", vec![1], vec![f32::NEG_INFINITY])]);
        assert!(!inf.all_finite());
        assert!(ParamGrads::default().all_finite());
        assert_eq!(ParamGrads::default().global_norm(), 0.0);
    }

    #[test]
    fn accumulate_then_mean() {
        let mut g = grads(&[("a", vec![2], vec![1.0, 2.0])]);
        g.accumulate(grads(&[
            ("a", vec![2], vec![3.0, 5.0]),
            ("b", vec![1], vec![4.0]),
        ]));
        g.mean_over(2);
        let h = g.to_host();
        assert_eq!(h[0].2, vec![2.0, 3.5]);
        assert_eq!((h[1].0.as_str(), h[1].2.clone()), ("b", vec![2.0]));
        g.mean_over(1);
        assert_eq!(g.to_host()[0].2, vec![2.0, 3.5]);
    }

    #[test]
    fn retain_and_lookup() {
        let mut g = grads(&[
            ("x.last_layer.weight_g", vec![1], vec![1.0]),
            ("x.mlp.0.weight", vec![1], vec![2.0]),
        ]);
        assert_eq!(g.shape("x.mlp.0.weight"), Some(&[1usize][..]));
        g.retain(|p| !p.contains("last_layer"));
        assert_eq!(g.len(), 1);
        assert!(g.get("x.last_layer.weight_g").is_none());
        assert_eq!(
            to_host(g.get("x.mlp.0.weight").expect("kept").clone()),
            vec![2.0]
        );
        assert_eq!(g.paths().collect::<Vec<_>>(), vec!["x.mlp.0.weight"]);
    }
}
