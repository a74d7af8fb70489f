//! AdamW and gradient clipping against PyTorch (`fixtures/optim/make_optim.py`), bit-exact state
//! round trip through a safetensors file, and gradients taken from a real backward pass.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use webssl_models::checkpoint::named_parameters;
use webssl_train::clip_grad::ParamGrads;
use webssl_train::optim::AdamW;
use webssl_train::param_groups::ParamRule;

fn fixture(name: &str) -> Value {
    let path = format!("{}/../../fixtures/optim/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}
fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect()
}

/// The fixture's seven parameters, ranks 1–4, under our own field paths.
#[derive(Module, Debug)]
struct Toy {
    qkv_w: Param<Tensor<2>>,
    qkv_b: Param<Tensor<1>>,
    gamma: Param<Tensor<1>>,
    patch: Param<Tensor<4>>,
    cls: Param<Tensor<3>>,
    last_g: Param<Tensor<2>>,
    last_v: Param<Tensor<2>>,
}
const PATHS: [&str; 7] = [
    "qkv_w", "qkv_b", "gamma", "patch", "cls", "last_g", "last_v",
];

fn param<const D: usize>(values: Vec<f32>, shape: &[usize], device: &Device) -> Param<Tensor<D>> {
    let dims: [usize; D] = shape.try_into().expect("rank");
    Param::from_tensor(Tensor::from_data(TensorData::new(values, dims), device))
}

fn toy(values: &[Vec<f32>], shapes: &[Vec<usize>], device: &Device) -> Toy {
    Toy {
        qkv_w: param(values[0].clone(), &shapes[0], device),
        qkv_b: param(values[1].clone(), &shapes[1], device),
        gamma: param(values[2].clone(), &shapes[2], device),
        patch: param(values[3].clone(), &shapes[3], device),
        cls: param(values[4].clone(), &shapes[4], device),
        last_g: param(values[5].clone(), &shapes[5], device),
        last_v: param(values[6].clone(), &shapes[6], device),
    }
}

/// Values of the toy's parameters in PATHS order.
fn values(m: &Toy) -> Vec<Vec<f32>> {
    let named = named_parameters(m);
    PATHS
        .iter()
        .map(|p| {
            named
                .iter()
                .find(|(n, _, _)| n == p)
                .expect("param")
                .2
                .clone()
        })
        .collect()
}

struct Fx {
    shapes: Vec<Vec<usize>>,
    rules: Vec<ParamRule>,
    cases: Vec<Value>,
}

fn adamw_fixture() -> Fx {
    let fx = fixture("adamw.json");
    let params = fx["params"].as_array().expect("params");
    assert_eq!(params.len(), PATHS.len());
    Fx {
        shapes: params.iter().map(|p| shape(&p["shape"])).collect(),
        rules: params
            .iter()
            .map(|p| ParamRule {
                lr_mult: p["lr_mult"].as_f64().expect("lr_mult"),
                wd_mult: p["wd_mult"].as_f64().expect("wd_mult"),
                is_last_layer: p["is_last_layer"].as_bool().expect("bool"),
            })
            .collect(),
        cases: fx["cases"].as_array().expect("cases").clone(),
    }
}

fn rule_for(rules: &[ParamRule]) -> impl Fn(&str) -> ParamRule + '_ {
    move |path: &str| {
        let rel = path.strip_prefix("toy.").unwrap_or(path);
        let i = PATHS
            .iter()
            .position(|p| *p == rel)
            .unwrap_or_else(|| panic!("unknown path {path}"));
        rules[i]
    }
}

fn step_grads(step: &Value, shapes: &[Vec<usize>], device: &Device) -> ParamGrads {
    let items = step["grads"]
        .as_array()
        .expect("grads")
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_null())
        .map(|(i, g)| (PATHS[i].to_string(), shapes[i].clone(), floats(g)))
        .collect();
    ParamGrads::from_host(items, device)
}

fn run_step(
    opt: &mut AdamW,
    m: Toy,
    step: &Value,
    fx: &Fx,
    device: &Device,
    prefixed: bool,
) -> Toy {
    let g = step_grads(step, &fx.shapes, device);
    let (lr, ll, wd) = (
        step["lr"].as_f64().expect("lr"),
        step["last_layer_lr"].as_f64().expect("last_layer_lr"),
        step["wd"].as_f64().expect("wd"),
    );
    let rule = rule_for(&fx.rules);
    if prefixed {
        opt.step_prefixed("toy", m, &g, lr, ll, wd, &rule)
    } else {
        opt.step(m, &g, lr, ll, wd, &rule)
    }
}

#[test]
fn adamw_matches_torch() {
    let fx = adamw_fixture();
    let device = Device::flex();
    let mut worst = 0.0f64;
    for (ci, case) in fx.cases.iter().enumerate() {
        let name = case["name"].as_str().expect("name");
        let mut opt = AdamW::new(
            case["betas"][0].as_f64().expect("beta1"),
            case["betas"][1].as_f64().expect("beta2"),
            case["eps"].as_f64().expect("eps"),
        );
        let init: Vec<Vec<f32>> = case["init"]
            .as_array()
            .expect("init")
            .iter()
            .map(floats)
            .collect();
        let mut m = toy(&init, &fx.shapes, &device);
        let prefixed = ci % 2 == 1;
        for (si, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
            m = run_step(&mut opt, m, step, &fx, &device, prefixed);
            let got = values(&m);
            let want: Vec<Vec<f32>> = step["params"]
                .as_array()
                .expect("params")
                .iter()
                .map(floats)
                .collect();
            for (pi, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.len(), w.len());
                for (a, b) in g.iter().zip(w) {
                    let rel = (*a as f64 - *b as f64).abs() / (b.abs() as f64).max(1e-6);
                    worst = worst.max(rel);
                    assert!(
                        rel <= 1e-6,
                        "{name} step {si} {}: ours {a:e}, torch {b:e} (rel {rel:e})",
                        PATHS[pi]
                    );
                }
                let key = if prefixed {
                    format!("toy.{}", PATHS[pi])
                } else {
                    PATHS[pi].to_string()
                };
                let want_steps = step["steps"][pi].as_f64().expect("step") as u64;
                assert_eq!(
                    opt.param_step(&key),
                    want_steps,
                    "{name} step {si} {key} step count"
                );
            }
        }
    }
    eprintln!("AdamW vs torch: worst relative error {worst:e}");
}

#[test]
fn frozen_last_layer_moves_only_after_freeze() {
    // dinov2 case: last_layer_lr = 0 for the first 3 steps -> prototypes unchanged (no decay either),
    // though their moments accumulate.
    let fx = adamw_fixture();
    let case = &fx.cases[0];
    let device = Device::flex();
    let init: Vec<Vec<f32>> = case["init"]
        .as_array()
        .expect("init")
        .iter()
        .map(floats)
        .collect();
    let mut m = toy(&init, &fx.shapes, &device);
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    for step in case["steps"].as_array().expect("steps").iter().take(3) {
        assert_eq!(step["last_layer_lr"].as_f64(), Some(0.0));
        m = run_step(&mut opt, m, step, &fx, &device, false);
    }
    let v = values(&m);
    assert_eq!(v[5], init[5]);
    assert_eq!(v[6], init[6]);
    assert_ne!(v[0], init[0]);
    assert_eq!(opt.param_step("last_v"), 3);
}

#[test]
fn state_round_trip_through_safetensors_is_bit_exact() {
    let fx = adamw_fixture();
    let case = &fx.cases[0];
    let steps = case["steps"].as_array().expect("steps");
    let device = Device::flex();
    let init: Vec<Vec<f32>> = case["init"]
        .as_array()
        .expect("init")
        .iter()
        .map(floats)
        .collect();

    // uninterrupted
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    let mut m = toy(&init, &fx.shapes, &device);
    for s in steps {
        m = run_step(&mut opt, m, s, &fx, &device, true);
    }
    let straight = values(&m);
    let straight_state = opt.state_tensors();

    // interrupted after 3 steps (cls_token has no gradient at step 2, so step counts differ)
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    let mut m = toy(&init, &fx.shapes, &device);
    for s in &steps[..3] {
        m = run_step(&mut opt, m, s, &fx, &device, true);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let optim_path = dir.path().join("optim.safetensors");
    let params_path = dir.path().join("params.safetensors");
    webssl_models::checkpoint::export::write_safetensors(&optim_path, &opt.state_tensors())
        .expect("write");
    webssl_models::checkpoint::export::write_safetensors(&params_path, &named_parameters(&m))
        .expect("write");
    drop((opt, m));

    let read = |p: &std::path::Path| {
        let store = webssl_models::checkpoint::store::TensorStore::open_file(p).expect("open");
        let keys: Vec<String> = store.keys().map(str::to_owned).collect();
        keys.into_iter()
            .map(|k| {
                let (s, v) = store.read_f32(&k).expect("read");
                (k, s, v)
            })
            .collect::<Vec<_>>()
    };
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    opt.load_state_tensors(&read(&optim_path)).expect("load");
    assert_eq!(opt.param_step("toy.cls"), 2);
    assert_eq!(opt.param_step("toy.qkv_w"), 3);
    let saved = read(&params_path);
    let vals: Vec<Vec<f32>> = PATHS
        .iter()
        .map(|p| {
            saved
                .iter()
                .find(|(n, _, _)| n == p)
                .expect("saved param")
                .2
                .clone()
        })
        .collect();
    let mut m = toy(&vals, &fx.shapes, &device);
    for s in &steps[3..] {
        m = run_step(&mut opt, m, s, &fx, &device, true);
    }
    assert_eq!(
        values(&m),
        straight,
        "resumed parameters differ from the uninterrupted run"
    );
    assert_eq!(
        opt.state_tensors(),
        straight_state,
        "resumed optimizer state differs"
    );
}

#[test]
fn clip_matches_torch() {
    let fx = fixture("clip.json");
    let device = Device::flex();
    for (ci, case) in fx["cases"].as_array().expect("cases").iter().enumerate() {
        let shapes: Vec<Vec<usize>> = case["shapes"]
            .as_array()
            .expect("shapes")
            .iter()
            .map(shape)
            .collect();
        let items = case["grads"]
            .as_array()
            .expect("grads")
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("p{i}"), shapes[i].clone(), floats(g)))
            .collect();
        let mut g = ParamGrads::from_host(items, &device);
        let norm = g.clip(case["max_norm"].as_f64().expect("max_norm"));
        let want = case["norm"].as_f64().expect("norm");
        assert!(
            (norm - want).abs() <= 1e-6 * want,
            "case {ci}: norm {norm} vs torch {want}"
        );
        for ((_, _, got), want) in g
            .to_host()
            .iter()
            .zip(case["clipped"].as_array().expect("clipped"))
        {
            for (a, b) in got.iter().zip(floats(want)) {
                let rel = (*a as f64 - b as f64).abs() / (b.abs() as f64).max(1e-12);
                assert!(rel <= 1e-6, "case {ci}: clipped {a:e} vs torch {b:e}");
            }
        }
    }
}

/// Gradients from a real backward pass: `loss = Σ_p Σ (p ⊙ c_p)` gives `∂loss/∂p = c_p`; a frozen
/// parameter has none. After the step the parameters still live on the autodiff device and still
/// require gradients, so the next forward/backward works.
#[test]
fn grads_from_backward_and_autodiff_params_survive_a_step() {
    let device = Device::flex().autodiff();
    let shapes: Vec<Vec<usize>> = vec![
        vec![3, 4],
        vec![4],
        vec![4],
        vec![2, 3, 2, 2],
        vec![1, 1, 4],
        vec![5, 1],
        vec![5, 3],
    ];
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| {
            (0..s.iter().product::<usize>())
                .map(|i| (i as f32 * 0.1) - k as f32)
                .collect()
        })
        .collect();
    let mut m = toy(&init, &shapes, &device);
    m.gamma = m.gamma.set_require_grad(false);
    let loss_of = |m: &Toy| {
        let c = |t: Tensor<1>, k: f32| (t * k).sum();
        c(m.qkv_w.val().reshape([12]), 1.0)
            + c(m.qkv_b.val(), 2.0)
            + c(m.gamma.val(), 3.0)
            + c(m.patch.val().reshape([24]), 4.0)
            + c(m.cls.val().reshape([4]), 5.0)
            + c(m.last_g.val().reshape([5]), 6.0)
            + c(m.last_v.val().reshape([15]), 7.0)
    };
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    for round in 0..2 {
        let grads = loss_of(&m).backward();
        let g = ParamGrads::from_module(&m, &grads);
        assert_eq!(
            g.paths().collect::<Vec<_>>(),
            vec!["qkv_w", "qkv_b", "patch", "cls", "last_g", "last_v"]
        );
        let host = g.to_host();
        for ((path, shape, v), k) in host.iter().zip([1.0f32, 2.0, 4.0, 5.0, 6.0, 7.0]) {
            assert!(v.iter().all(|&x| x == k), "{path}: {v:?}");
            assert_eq!(
                shape,
                &shapes[PATHS.iter().position(|p| p == path).expect("path")]
            );
        }
        assert!(
            (g.global_norm()
                - (12.0 + 4.0 * 4.0 + 24.0 * 16.0 + 4.0 * 25.0 + 5.0 * 36.0 + 15.0 * 49.0f64)
                    .sqrt())
            .abs()
                < 1e-4
        );
        // the removing variant yields the same gradients and empties the container
        let mut grads = grads;
        let taken = ParamGrads::take_from_module(&m, &mut grads);
        assert_eq!(taken.to_host(), host);
        assert!(ParamGrads::from_module(&m, &grads).is_empty());
        m = opt.step(m, &g, 1e-2, 1e-2, 0.0, &|_| ParamRule::PLAIN);
        assert!(
            m.qkv_w.val().is_autodiff() && m.qkv_w.val().is_require_grad(),
            "round {round}"
        );
        assert!(!m.gamma.val().is_require_grad());
    }
    // first Adam step moves every element by exactly lr (|m̂/√v̂| = 1), twice
    let v = values(&m.valid());
    assert_eq!(v[2], init[2], "frozen parameter moved");
    for (a, b) in v[0].iter().zip(&init[0]) {
        assert!((a - (b - 2e-2)).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!(opt.num_states(), 6);
}
