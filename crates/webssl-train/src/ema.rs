//! Teacher EMA: `θ_t ← m·θ_t + (1 − m)·θ_s` for every float parameter, matched by path.
//!
//! Reference: `facebookresearch/dinov2` @ b8931f7b `dinov2/train/ssl_meta_arch.py::update_teacher`
//! (`torch._foreach_mul_(teacher, m)` then `torch._foreach_add_(teacher, student, alpha=1 − m)`, over
//! every parameter of backbone and heads; reference `docs/reference/training-algorithms.md` §5.4 step 5). The
//! same operation order is kept — `θ_t·m` then `+ θ_s·(1−m)` — with `m` and `1 − m` computed in f64 and
//! rounded once to f32, as PyTorch does with Python-float scalars on f32 tensors.
//!
//! The teacher lives on the inner (non-autodiff) device and keeps its own parameter ids; the
//! student may be given on either device (its values are taken without autodiff). Both must have the
//! same structure (they are the same type built from the same config); a missing or mis-shaped
//! counterpart is a programming error and panics with the parameter path.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use webssl_models::params::{self, PathStack};

/// Returns the teacher updated towards `student` with momentum `momentum`.
pub fn ema_update<M: Module>(teacher: M, student: &M, momentum: f64) -> M {
    struct Update {
        path: PathStack,
        student: HashMap<String, (Vec<usize>, Tensor<1>)>,
        m: f32,
        one_minus_m: f32,
    }
    impl ModuleMapper for Update {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.path.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.path();
            let (id, t, mapper) = param.consume();
            let (shape, s) = self.student.remove(&path).unwrap_or_else(|| {
                panic!("ema_update: teacher parameter `{path}` has no student counterpart")
            });
            let dims = t.dims();
            assert_eq!(
                shape.as_slice(),
                dims.as_slice(),
                "ema_update: `{path}` shape teacher {dims:?} vs student {shape:?}"
            );
            let was_autodiff = t.is_autodiff();
            let require_grad = t.is_require_grad();
            let updated =
                t.inner().mul_scalar(self.m) + s.reshape(dims).mul_scalar(self.one_minus_m);
            let updated = if was_autodiff {
                let u = Tensor::from_inner(updated);
                if require_grad { u.require_grad() } else { u }
            } else {
                updated
            };
            Param::from_mapped_value(id, updated, mapper)
        }
    }
    let mut values = HashMap::new();
    params::visit(student, |path, p| {
        values.insert(path.to_owned(), (p.shape(), p.value()));
    });
    let mut u = Update {
        path: PathStack::default(),
        student: values,
        m: momentum as f32,
        one_minus_m: (1.0 - momentum) as f32,
    };
    teacher.map(&mut u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};
    use webssl_models::checkpoint::named_parameters;
    use webssl_models::params::to_host;

    #[derive(Module, Debug)]
    struct Tiny {
        w: Param<Tensor<2>>,
        blocks: Vec<Inner>,
    }
    #[derive(Module, Debug)]
    struct Inner {
        b: Param<Tensor<1>>,
    }

    fn tiny(device: &Device, offset: f32) -> Tiny {
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.37 - 1.0 + offset).collect();
        Tiny {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(w, [2, 3]), device)),
            blocks: (0..2)
                .map(|k| Inner {
                    b: Param::from_tensor(Tensor::from_data(
                        TensorData::new(vec![k as f32 + offset, -0.5], [2]),
                        device,
                    )),
                })
                .collect(),
        }
    }

    #[test]
    fn ema_is_exact_per_element() {
        let device = Device::flex();
        let teacher = tiny(&device, 0.0);
        let student = tiny(&device.clone().autodiff(), 0.3).valid();
        let before = named_parameters(&teacher);
        let s = named_parameters(&student);
        let m = 0.992f64;
        let teacher = ema_update(teacher, &student, m);
        let after = named_parameters(&teacher);
        assert_eq!(after.len(), 3);
        for ((path, shape, t0), ((_, _, sv), (p2, shape2, t1))) in
            before.iter().zip(s.iter().zip(&after))
        {
            assert_eq!((path, shape), (p2, shape2));
            for i in 0..t0.len() {
                let want = t0[i] * (m as f32) + sv[i] * ((1.0 - m) as f32);
                assert_eq!(t1[i], want, "{path}[{i}]");
            }
        }
        // the teacher stays on the inner device
        assert!(!teacher.w.val().is_autodiff());
    }

    #[test]
    fn autodiff_student_is_read_without_autodiff() {
        let device = Device::flex();
        let student = tiny(&device.clone().autodiff(), 0.3);
        let from_ad = ema_update(tiny(&device, 0.0), &student, 0.9);
        let from_valid = ema_update(tiny(&device, 0.0), &student.valid(), 0.9);
        assert!(!from_ad.w.val().is_autodiff());
        assert_eq!(named_parameters(&from_ad), named_parameters(&from_valid));
    }

    #[test]
    fn momentum_one_keeps_teacher_and_zero_copies_student() {
        let device = Device::flex();
        let student = tiny(&device, 0.3);
        let kept = ema_update(tiny(&device, 0.0), &student, 1.0);
        assert_eq!(
            named_parameters(&kept),
            named_parameters(&tiny(&device, 0.0))
        );
        let copied = ema_update(tiny(&device, 0.0), &student, 0.0);
        assert_eq!(named_parameters(&copied), named_parameters(&student));
        assert_eq!(to_host(copied.blocks[1].b.val()), vec![1.3, -0.5]);
    }
}
