//! Decoupled AdamW with a learning rate and weight decay per parameter, state keyed by parameter path.
//!
//! Semantics are PyTorch's `torch.optim.AdamW` (`torch/optim/adam.py::_single_tensor_adam` with
//! `decoupled_weight_decay=True`, the path dinov2, MAE and MetaCLIP run), per parameter:
//!
//! ```text
//! step += 1
//! p  ← p · (1 − lr·wd)                               (decoupled decay; lr = 0 also stops decay)
//! m  ← m + (1 − β1)·(g − m)                          (exp_avg.lerp_(g, 1 − β1))
//! v  ← v·β2 + ((1 − β2)·g)·g                         (exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2))
//! p  ← p + (−lr / (1 − β1^step))·m / (√v / √(1 − β2^step) + eps)      (addcdiv_, eps outside the sqrt)
//! ```
//!
//! Scalars (`1 − lr·wd`, `1 − β`, bias corrections, step size) are computed in f64 and rounded once to
//! f32, as PyTorch does with Python floats on f32 tensors; tensor math is f32, element-wise, in a fixed
//! order, so it is deterministic. Tested against `torch.optim.AdamW` (fixture
//! `fixtures/optim/make_optim.py`, rel. err ≤ 1e-6; PyTorch's CPU lerp uses an FMA, so bit equality
//! is not expected).
//!
//! Per-parameter lr / wd follow dinov2's `apply_optim_scheduler` (`dinov2/train/train.py`, reference
//! `docs/reference/training-algorithms.md` §5.3): `lr = (last_layer_lr if rule.is_last_layer else
//! lr)·rule.lr_mult`, `wd = wd·rule.wd_mult`, with the [`ParamRule`] from a closure over the parameter path
//! (see [`crate::param_groups`]). As in PyTorch, a parameter without a gradient is not touched (its step
//! count does not advance); one with a gradient advances even at lr 0 (dinov2's last-layer freeze).
//!
//! Why not burn's `AdamW`: it keys state by `ParamId` (not stable across a checkpoint reload of
//! another process), applies one lr per optimizer, and couples the decay as `lr·wd·p` inside its
//! own update; per-parameter groups and a path-keyed, exactly serialisable state are the point here.
//!
//! State: moments are flattened f32 tensors on the parameter's device. [`AdamW::state_tensors`]
//! exports `<key>.exp_avg`, `<key>.exp_avg_sq` (parameter shape) and `<key>.step` (shape `[2]`: the
//! step count as `[step mod 2^24, step div 2^24]`, both exact in f32) for a safetensors checkpoint;
//! [`AdamW::load_state_tensors`] restores it bit for bit (moments are uploaded lazily, on the device of
//! the parameter they belong to, at its next step).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use webssl_models::params::{self, NamedTensor, PathStack, to_host};

use crate::clip_grad::ParamGrads;
use crate::error::{Result, TrainError};
use crate::param_groups::ParamRule;

const STEP_RADIX: u64 = 1 << 24;

// One per parameter (a few hundred): the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Moment {
    /// Loaded from a checkpoint, not yet placed on a device.
    Host(Vec<f32>),
    Device(Tensor<1>),
}

impl Moment {
    fn into_tensor(self, like: &Tensor<1>) -> Tensor<1> {
        match self {
            Moment::Device(t) => {
                if t.device() == like.device() {
                    t
                } else {
                    t.to_device(&like.device())
                }
            }
            Moment::Host(v) => {
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), &like.device())
            }
        }
    }
    fn to_host(&self) -> Vec<f32> {
        match self {
            Moment::Host(v) => v.clone(),
            Moment::Device(t) => to_host(t.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct ParamState {
    step: u64,
    shape: Vec<usize>,
    exp_avg: Moment,
    exp_avg_sq: Moment,
}

/// AdamW (PyTorch semantics) with per-parameter lr / wd and path-keyed state.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    state: BTreeMap<String, ParamState>,
}

impl AdamW {
    /// DINOv2: `(0.9, 0.999, 1e-8)` (PyTorch defaults); MAE `(0.9, 0.95, 1e-8)`; MetaCLIP `(0.9, 0.98, 1e-6)`.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            state: BTreeMap::new(),
        }
    }

    /// Updates every float parameter of `module` that has a gradient in `grads` (keys: paths relative
    /// to `module`). `rule(path)` gives the parameter's multipliers.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &ParamGrads,
        lr: f64,
        last_layer_lr: f64,
        wd: f64,
        rule: &dyn Fn(&str) -> ParamRule,
    ) -> M {
        self.step_prefixed("", module, grads, lr, last_layer_lr, wd, rule)
    }

    /// [`AdamW::step`] for a sub-module: state keys and the path given to `rule` are
    /// `"{prefix}.{path}"` (e.g. `backbone.blocks.0.attn.qkv.weight`), so one optimizer can serve the
    /// backbone and the heads, each with its own [`ParamGrads`] (gradients clipped per sub-module).
    #[allow(clippy::too_many_arguments)]
    pub fn step_prefixed<M: Module>(
        &mut self,
        prefix: &str,
        module: M,
        grads: &ParamGrads,
        lr: f64,
        last_layer_lr: f64,
        wd: f64,
        rule: &dyn Fn(&str) -> ParamRule,
    ) -> M {
        let mut mapper = StepMapper {
            opt: self,
            prefix,
            grads,
            lr,
            last_layer_lr,
            wd,
            rule,
            path: PathStack::default(),
            applied: 0,
        };
        let module = module.map(&mut mapper);
        if mapper.applied != grads.len() {
            // A gradient whose path is not a parameter of `module`: most likely the gradients of
            // another sub-module were passed; those parameters were not updated.
            let unmatched: Vec<&str> = grads.paths().filter(|p| !module_has(&module, p)).collect();
            tracing::warn!(
                "AdamW step `{prefix}`: {} gradient(s) match no parameter of the module: {unmatched:?}",
                grads.len() - mapper.applied
            );
        }
        module
    }

    /// Keeps the state of the parameters whose path `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.state.retain(|path, _| keep(path));
    }

    /// Number of parameters with optimizer state.
    pub fn num_states(&self) -> usize {
        self.state.len()
    }

    /// Step count of the parameter `key` (0 if it has no state yet).
    pub fn param_step(&self, key: &str) -> u64 {
        self.state.get(key).map_or(0, |s| s.step)
    }

    /// The whole state as `(name, shape, values)` triples, sorted by key: `<key>.exp_avg`,
    /// `<key>.exp_avg_sq` (parameter shape) and `<key>.step` (`[step mod 2^24, step div 2^24]`).
    pub fn state_tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::with_capacity(self.state.len() * 3);
        for (key, s) in &self.state {
            out.push((
                format!("{key}.exp_avg"),
                s.shape.clone(),
                s.exp_avg.to_host(),
            ));
            out.push((
                format!("{key}.exp_avg_sq"),
                s.shape.clone(),
                s.exp_avg_sq.to_host(),
            ));
            let step = [(s.step % STEP_RADIX) as f32, (s.step / STEP_RADIX) as f32];
            out.push((format!("{key}.step"), vec![2], step.to_vec()));
        }
        out
    }

    /// Replaces the state with one written by [`AdamW::state_tensors`]; every parameter needs its
    /// three entries with consistent shapes. Nothing is changed on error.
    pub fn load_state_tensors(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        #[derive(Default)]
        struct Parts<'a> {
            exp_avg: Option<(&'a [usize], &'a [f32])>,
            exp_avg_sq: Option<(&'a [usize], &'a [f32])>,
            step: Option<&'a [f32]>,
        }
        let bad = |key: &str, reason: String| TrainError::OptimizerState {
            key: key.to_owned(),
            reason,
        };
        let mut parts: BTreeMap<&str, Parts<'_>> = BTreeMap::new();
        for (name, shape, values) in tensors {
            let numel = shape.iter().product::<usize>();
            if numel != values.len() {
                return Err(bad(
                    name,
                    format!("{} values for shape {shape:?}", values.len()),
                ));
            }
            if let Some(key) = name.strip_suffix(".exp_avg_sq") {
                parts.entry(key).or_default().exp_avg_sq = Some((shape, values));
            } else if let Some(key) = name.strip_suffix(".exp_avg") {
                parts.entry(key).or_default().exp_avg = Some((shape, values));
            } else if let Some(key) = name.strip_suffix(".step") {
                parts.entry(key).or_default().step = Some(values);
            } else {
                return Err(bad(
                    name,
                    "not an AdamW state entry (.exp_avg, .exp_avg_sq, .step)".into(),
                ));
            }
        }
        let mut state = BTreeMap::new();
        for (key, p) in parts {
            let (Some((shape, m)), Some((shape2, v)), Some(step)) =
                (p.exp_avg, p.exp_avg_sq, p.step)
            else {
                return Err(bad(key, "needs .exp_avg, .exp_avg_sq and .step".into()));
            };
            if shape != shape2 {
                return Err(bad(
                    key,
                    format!("exp_avg shape {shape:?} vs exp_avg_sq shape {shape2:?}"),
                ));
            }
            let step = decode_step(step)
                .ok_or_else(|| bad(key, format!("invalid step count {step:?}")))?;
            state.insert(
                key.to_owned(),
                ParamState {
                    step,
                    shape: shape.to_vec(),
                    exp_avg: Moment::Host(m.to_vec()),
                    exp_avg_sq: Moment::Host(v.to_vec()),
                },
            );
        }
        self.state = state;
        Ok(())
    }
}

/// `[lo, hi]` (or a legacy single value) back to the step count; rejects non-integers.
fn decode_step(v: &[f32]) -> Option<u64> {
    let whole = |x: f32| (x.is_finite() && x >= 0.0 && x.fract() == 0.0).then_some(x as u64);
    match v {
        [lo] => whole(*lo),
        [lo, hi] => {
            let (lo, hi) = (whole(*lo)?, whole(*hi)?);
            (lo < STEP_RADIX)
                .then(|| hi.checked_mul(STEP_RADIX)?.checked_add(lo))
                .flatten()
        }
        _ => None,
    }
}

struct StepMapper<'a> {
    opt: &'a mut AdamW,
    prefix: &'a str,
    grads: &'a ParamGrads,
    lr: f64,
    last_layer_lr: f64,
    wd: f64,
    rule: &'a dyn Fn(&str) -> ParamRule,
    path: PathStack,
    /// Number of parameters updated (for the unmatched-gradient warning).
    applied: usize,
}

/// Whether `module` has a float parameter at `path` (only used on the warning path).
fn module_has<M: Module>(module: &M, path: &str) -> bool {
    let mut found = false;
    params::visit(module, |p, _| found |= p == path);
    found
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rel = self.path.path();
        let Some(grad) = self.grads.get(&rel) else {
            return param;
        };
        let key = if self.prefix.is_empty() {
            rel
        } else {
            format!("{}.{rel}", self.prefix)
        };
        let (id, tensor, mapper) = param.consume();

        // What `Tensor::from_inner` would lose (burn-optim's ParameterContext does the same).
        let was_autodiff = tensor.is_autodiff();
        let require_grad = tensor.is_require_grad();
        // both panic on a tensor without autodiff
        let distributed = was_autodiff && tensor.is_distributed();
        let checkpointing = if was_autodiff {
            tensor.gradient_checkpointing_strategy()
        } else {
            None
        };

        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let p = tensor.inner().reshape([n]);
        let rule = (self.rule)(&key);
        let lr = if rule.is_last_layer {
            self.last_layer_lr
        } else {
            self.lr
        } * rule.lr_mult;
        let wd = self.wd * rule.wd_mult;
        let p = self.opt.update(&key, &dims, p, grad, lr, wd);
        self.applied += 1;

        let mut t = p.reshape(dims);
        if was_autodiff {
            t = Tensor::from_inner(t);
            if let Some(strategy) = checkpointing {
                t = t.with_gradient_checkpointing_strategy(strategy);
            }
            if require_grad {
                t = t.require_grad();
            }
            if distributed {
                t = t.set_distributed(id);
            }
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

impl AdamW {
    /// One AdamW update of the flattened parameter `p` (see the module doc for the exact order).
    fn update(
        &mut self,
        key: &str,
        shape: &[usize],
        p: Tensor<1>,
        grad: &Tensor<1>,
        lr: f64,
        wd: f64,
    ) -> Tensor<1> {
        let n = p.dims()[0];
        assert_eq!(
            grad.dims()[0],
            n,
            "AdamW: gradient of `{key}` has {} values, the parameter {n}",
            grad.dims()[0]
        );
        let g = if grad.device() == p.device() {
            grad.clone()
        } else {
            grad.clone().to_device(&p.device())
        };
        let (step, m, v) = match self.state.remove(key) {
            Some(s) => {
                let numel = s.shape.iter().product::<usize>();
                assert_eq!(
                    numel, n,
                    "AdamW: state of `{key}` has shape {:?}, the parameter {shape:?} (checkpoint from another model?)",
                    s.shape
                );
                (
                    s.step,
                    s.exp_avg.into_tensor(&p),
                    s.exp_avg_sq.into_tensor(&p),
                )
            }
            None => (0, p.zeros_like(), p.zeros_like()),
        };
        let step = step + 1;
        let (b1, b2) = (self.beta1, self.beta2);

        let decay = 1.0 - lr * wd;
        let p = if decay != 1.0 {
            p.mul_scalar(decay as f32)
        } else {
            p
        };
        let m = m.clone() + (g.clone() - m).mul_scalar((1.0 - b1) as f32);
        let v = v.mul_scalar(b2 as f32) + g.clone().mul_scalar((1.0 - b2) as f32) * g;

        // Python: `1 - beta ** step` (C pow), `lr / bc1`, `bc2 ** 0.5`.
        let bc1 = 1.0 - b1.powf(step as f64);
        let bc2 = 1.0 - b2.powf(step as f64);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.powf(0.5);
        let denom = v
            .clone()
            .sqrt()
            .div_scalar(bc2_sqrt as f32)
            .add_scalar(self.eps as f32);
        // addcdiv_: self + value * t1 / t2, evaluated as (value * t1) / t2
        let p = p + m.clone().mul_scalar(-step_size as f32) / denom;

        self.state.insert(
            key.to_owned(),
            ParamState {
                step,
                shape: shape.to_vec(),
                exp_avg: Moment::Device(m),
                exp_avg_sq: Moment::Device(v),
            },
        );
        p
    }
}

/// One AdamW per trained sub-module (as gradient clipping is per sub-module); state keys are
/// `<sub-module>/<parameter path>.<moment>` in the checkpoint.
pub struct OptimizerSet {
    parts: Vec<(&'static str, AdamW)>,
}

impl OptimizerSet {
    pub fn new(names: &[&'static str], betas: (f64, f64), eps: f64) -> Self {
        OptimizerSet {
            parts: names
                .iter()
                .map(|&n| (n, AdamW::new(betas.0, betas.1, eps)))
                .collect(),
        }
    }

    /// The optimizer of sub-module `name`.
    ///
    /// # Panics
    /// If `name` was not given to [`OptimizerSet::new`] (a programming error).
    pub fn get(&mut self, name: &str) -> &mut AdamW {
        self.parts
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no optimizer for sub-module `{name}`"))
    }

    pub fn state_tensors(&self) -> Vec<NamedTensor> {
        self.parts
            .iter()
            .flat_map(|(prefix, o)| {
                o.state_tensors()
                    .into_iter()
                    .map(move |(k, s, v)| (format!("{prefix}/{k}"), s, v))
            })
            .collect()
    }

    /// Parameters with optimizer state (moments), over all sub-modules.
    pub fn num_states(&self) -> usize {
        self.parts.iter().map(|(_, o)| o.num_states()).sum()
    }

    /// Keeps the state of the parameters `keep("<sub-module>/<path>")` accepts (ZeRO-1 sharding).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        for (prefix, o) in &mut self.parts {
            o.retain(|path| keep(&format!("{prefix}/{path}")));
        }
    }

    pub fn load(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        for (prefix, o) in &mut self.parts {
            let p = format!("{prefix}/");
            let mine: Vec<NamedTensor> = tensors
                .iter()
                .filter_map(|(k, s, v)| {
                    k.strip_prefix(&p)
                        .map(|k| (k.to_owned(), s.clone(), v.clone()))
                })
                .collect();
            o.load_state_tensors(&mine)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_encoding_round_trips() {
        for s in [
            0u64,
            1,
            1250,
            (1 << 24) - 1,
            1 << 24,
            (1 << 24) + 3,
            625_000,
            1 << 40,
        ] {
            let enc = [(s % STEP_RADIX) as f32, (s / STEP_RADIX) as f32];
            assert_eq!(decode_step(&enc), Some(s));
        }
        assert_eq!(decode_step(&[7.0]), Some(7));
        assert_eq!(decode_step(&[1.5, 0.0]), None);
        assert_eq!(decode_step(&[-1.0, 0.0]), None);
        assert_eq!(decode_step(&[f32::NAN]), None);
        assert_eq!(decode_step(&[]), None);
        assert_eq!(decode_step(&[(1u64 << 24) as f32, 0.0]), None);
    }

    #[test]
    fn load_rejects_incomplete_or_inconsistent_state() {
        let mut opt = AdamW::new(0.9, 0.999, 1e-8);
        let ok = vec![
            ("a.exp_avg".to_string(), vec![2], vec![0.1, 0.2]),
            ("a.exp_avg_sq".to_string(), vec![2], vec![0.01, 0.04]),
            ("a.step".to_string(), vec![2], vec![3.0, 0.0]),
        ];
        opt.load_state_tensors(&ok).expect("valid state");
        assert_eq!(opt.param_step("a"), 3);
        assert_eq!(opt.state_tensors(), ok);

        let missing = ok[..2].to_vec();
        assert!(matches!(
            opt.load_state_tensors(&missing),
            Err(TrainError::OptimizerState { .. })
        ));
        let mut shape = ok.clone();
        shape[1].1 = vec![1, 2];
        assert!(opt.load_state_tensors(&shape).is_err());
        let mut count = ok.clone();
        count[0].2.push(0.3);
        assert!(opt.load_state_tensors(&count).is_err());
        let mut stranger = ok.clone();
        stranger.push(("a.momentum".to_string(), vec![1], vec![0.0]));
        assert!(opt.load_state_tensors(&stranger).is_err());
        // failed loads left the good state in place
        assert_eq!(opt.state_tensors(), ok);
    }

    #[test]
    fn optimizer_state_routes_by_prefix() {
        let mut set = OptimizerSet::new(&["encoder", "decoder"], (0.9, 0.95), 1e-8);
        let entry = |k: &str, v: Vec<f32>| (k.to_string(), vec![v.len()], v);
        let tensors = vec![
            entry("decoder/w.exp_avg", vec![1.0]),
            entry("decoder/w.exp_avg_sq", vec![2.0]),
            entry("decoder/w.step", vec![7.0, 0.0]),
        ];
        set.load(&tensors).unwrap();
        assert_eq!(set.get("decoder").param_step("w"), 7);
        assert_eq!(set.get("encoder").num_states(), 0);
        assert_eq!(set.state_tensors(), tensors);
        // A broken entry is reported, not dropped.
        assert!(set.load(&tensors[..2]).is_err());
    }
}
