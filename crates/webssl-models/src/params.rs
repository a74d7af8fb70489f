//! Walking a module's float parameters by path, and reading tensors back to the host.
//!
//! burn's `ModuleVisitor` is generic over each parameter's rank, so every traversal used to be its
//! own visitor struct with the same path bookkeeping. [`visit`] is the one traversal: it keeps the
//! [`PathStack`] and hands a closure each parameter's dotted path and a rank-erased view
//! ([`FloatParam`]: shape, value and gradient flattened to 1-D). Traversals that *replace*
//! parameters (`ModuleMapper`: checkpoint loading, the optimizer step, the EMA update) keep their
//! mappers, whose output must have the parameter's own rank; they share [`PathStack`].
//!
//! [`to_host`] is the one way a tensor's values come back to the host as f32.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

/// One tensor of a checkpoint or of a module's state: dotted name, shape, f32 values (row-major).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The dotted path of the module being visited, as burn's `ModuleVisitor`/`ModuleMapper` enter and
/// leave sub-modules. This is the one naming convention for parameters across the project (checkpoint
/// keys, optimizer state, parameter-group rules, EMA): struct fields and `Vec` indices add a component,
/// enum variants do not (so `Option`/enum wrappers never change a name).
#[derive(Debug, Default)]
pub struct PathStack(Vec<String>);

impl PathStack {
    pub fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.push(name.to_owned());
        }
    }
    pub fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.pop();
        }
    }
    pub fn path(&self) -> String {
        self.0.join(".")
    }
}

/// A float parameter of any rank, as [`visit`] shows it. Reading it initialises a lazily
/// initialised parameter (burn draws those at first use).
pub trait FloatParam {
    /// The parameter's shape (its rank is `shape().len()`).
    fn shape(&self) -> Vec<usize>;
    /// Whether the parameter trains (has a gradient in an autodiff graph).
    fn requires_grad(&self) -> bool;
    /// The device the value lives on (the autodiff one for a trained module).
    fn device(&self) -> Device;
    /// The value flattened row-major to 1-D, without autodiff (on the inner device).
    fn value(&self) -> Tensor<1>;
    /// The gradient `grads` holds for this parameter, flattened like [`FloatParam::value`].
    fn grad(&self, grads: &Gradients) -> Option<Tensor<1>>;
    /// [`FloatParam::grad`], removing it from `grads`.
    fn take_grad(&self, grads: &mut Gradients) -> Option<Tensor<1>>;
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.dims().iter().product::<usize>();
    t.reshape([n])
}

impl<const D: usize> FloatParam for Param<Tensor<D>> {
    fn shape(&self) -> Vec<usize> {
        self.val().dims().to_vec()
    }
    fn requires_grad(&self) -> bool {
        self.is_require_grad()
    }
    fn device(&self) -> Device {
        self.val().device()
    }
    fn value(&self) -> Tensor<1> {
        flat(self.val().inner())
    }
    fn grad(&self, grads: &Gradients) -> Option<Tensor<1>> {
        self.val().grad(grads).map(|g| flat(g.inner()))
    }
    fn take_grad(&self, grads: &mut Gradients) -> Option<Tensor<1>> {
        self.val().grad_remove(grads).map(|g| flat(g.inner()))
    }
}

/// Calls `f(path, param)` for every float parameter of `module`, in module (declaration) order,
/// with paths relative to `module` (`blocks.0.attn.qkv.weight`).
pub fn visit<M: Module>(module: &M, f: impl FnMut(&str, &dyn FloatParam)) {
    struct Walk<F> {
        path: PathStack,
        f: F,
    }
    impl<F: FnMut(&str, &dyn FloatParam)> ModuleVisitor for Walk<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.path.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            (self.f)(&self.path.path(), param);
        }
    }
    module.visit(&mut Walk {
        path: PathStack::default(),
        f,
    });
}

/// A trainable parameter as [`trainable_params`] lists it: path, shape, and the inner (non-autodiff)
/// device its gradient lives on.
pub type ParamSlot = (String, Vec<usize>, Device);

/// The float parameters of `module` that train, in module order.
pub fn trainable_params<M: Module>(module: &M) -> Vec<ParamSlot> {
    let mut out = Vec::new();
    visit(module, |path, p| {
        if p.requires_grad() {
            out.push((path.to_owned(), p.shape(), p.device().inner()));
        }
    });
    out
}

/// A float tensor's values on the host as f32, row-major (converted from another float dtype).
pub fn to_host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor reads back as f32")
}

/// The first value of a tensor as f64 (a loss), NaN for an empty one.
pub fn scalar<const D: usize>(t: Tensor<D>) -> f64 {
    to_host(t).first().map_or(f64::NAN, |&v| f64::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct Inner {
        w: Param<Tensor<2>>,
        b: Option<Param<Tensor<1>>>,
    }

    #[derive(Module, Debug)]
    struct Outer {
        layers: Vec<Inner>,
        scale: Param<Tensor<1>>,
    }

    #[test]
    fn visits_every_parameter_by_path_in_order() {
        let device = Device::flex();
        let t2 = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), &device);
        let t1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [1]), &device);
        let m = Outer {
            layers: vec![
                Inner {
                    w: Param::from_tensor(t2(vec![1.0, 2.0, 3.0, 4.0])),
                    b: Some(Param::from_tensor(t1(vec![5.0]))),
                },
                Inner {
                    w: Param::from_tensor(t2(vec![6.0, 7.0, 8.0, 9.0])),
                    b: None,
                },
            ],
            scale: Param::from_tensor(t1(vec![0.5])),
        };
        let mut seen = Vec::new();
        visit(&m, |path, p| {
            seen.push((path.to_owned(), p.shape(), to_host(p.value())));
        });
        let expect: Vec<NamedTensor> = vec![
            ("layers.0.w".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ("layers.0.b".into(), vec![1], vec![5.0]),
            ("layers.1.w".into(), vec![2, 2], vec![6.0, 7.0, 8.0, 9.0]),
            ("scale".into(), vec![1], vec![0.5]),
        ];
        assert_eq!(seen, expect);
        assert_eq!(scalar(t1(vec![0.25])), 0.25);
    }
}
