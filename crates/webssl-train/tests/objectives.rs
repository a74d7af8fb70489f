// Golden parity of the DINOv2 objectives and head against the dinov2 reference code
// (fixtures/objectives/make_objectives.py: a transcription of dinov2 commit b8931f7b, checked equal to
// the real modules, run in float64). Tolerances are norm-wise, max|got − want| / max|want|:
// 1e-5 for values, 1e-4 for gradients (we compute in f32).

mod support;

use burn::tensor::{Device, Tensor, TensorData};
use support::{assert_close, read, tensor};
use webssl_models::checkpoint::store::TensorStore;
use webssl_models::heads::{DinoHead, DinoHeadConfig};
use webssl_models::params::to_host;
use webssl_train::objectives::{
    Centering, dino_loss, dino_loss_terms, ibot_loss, koleo_loss, sinkhorn_knopp,
};

const VALUE_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Row slice `[from, to)` of a `[R, K]` tensor.
fn rows(t: &Tensor<2>, from: usize, to: usize) -> Tensor<2> {
    t.clone().slice(from..to)
}

/// The fixture head, read through the PyTorch state-dict loader (PyTorch layouts and names).
fn fixture_head(s: &TensorStore, device: &Device) -> DinoHead {
    let (head, cfg) = DinoHead::from_torch_store(s, "head.", device).expect("fixture head");
    let want = DinoHeadConfig {
        in_dim: 16,
        out_dim: 64,
        hidden_dim: 32,
        bottleneck_dim: 8,
        nlayers: 3,
    };
    assert_eq!(cfg, want);
    head
}

#[test]
fn head_forward_and_gradients_match_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex().autodiff();
    let head = fixture_head(&s, &device);
    let y = head.forward(tensor::<2>(&s, "head.x", &device));
    assert_close(
        "head.y",
        &to_host(y.clone()),
        &read(&s, "head.y").1,
        VALUE_TOL,
    );
    let grads = (y * tensor::<2>(&s, "head.r", &device)).sum().backward();
    for (j, i) in [0, 2, 4].iter().enumerate() {
        let g = to_host(head.mlp[j].weight.grad(&grads).expect("weight grad"));
        let (shape, want) = read(&s, &format!("head_grad.mlp.{i}.weight"));
        let want = transpose(&want, shape[0], shape[1]);
        assert_close(&format!("grad mlp.{i}.weight"), &g, &want, GRAD_TOL);
        let g = to_host(
            head.mlp[j]
                .bias
                .as_ref()
                .unwrap()
                .grad(&grads)
                .expect("bias grad"),
        );
        assert_close(
            &format!("grad mlp.{i}.bias"),
            &g,
            &read(&s, &format!("head_grad.mlp.{i}.bias")).1,
            GRAD_TOL,
        );
    }
    let g = to_host(head.last_layer.weight_g.grad(&grads).expect("g grad"));
    assert_close(
        "grad weight_g",
        &g,
        &read(&s, "head_grad.last_layer.weight_g").1,
        GRAD_TOL,
    );
    let g = to_host(head.last_layer.weight_v.grad(&grads).expect("v grad"));
    assert_close(
        "grad weight_v",
        &g,
        &read(&s, "head_grad.last_layer.weight_v").1,
        GRAD_TOL,
    );
}

#[test]
fn centering_matches_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex();
    for (prefix, logits, probs) in [
        (
            "targets",
            "targets.teacher_logits",
            "targets.centered_probs",
        ),
        ("ibot", "ibot.teacher_logits", "ibot.centered_probs"),
    ] {
        let mut c =
            Centering::from_values(read(&s, &format!("{prefix}.center0")).1, 0.9, &device).unwrap();
        let t = tensor::<2>(&s, logits, &device);
        let p = c.softmax_centered(t.clone(), 0.06);
        assert_close(probs, &to_host(p), &read(&s, probs).1, VALUE_TOL);
        c.update(t);
        assert_close(
            &format!("{prefix}.center1"),
            &c.values(),
            &read(&s, &format!("{prefix}.center1")).1,
            VALUE_TOL,
        );
    }
}

#[test]
fn sinkhorn_matches_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex();
    for (logits, temp, want) in [
        ("targets.teacher_logits", 0.06, "targets.sinkhorn"),
        ("targets.sharp_logits", 0.04, "targets.sinkhorn_sharp"),
        ("ibot.teacher_logits", 0.06, "ibot.sinkhorn"),
    ] {
        let q = sinkhorn_knopp(tensor::<2>(&s, logits, &device), temp, 3);
        let [b, k] = q.dims();
        let q = to_host(q);
        assert_close(want, &q, &read(&s, want).1, VALUE_TOL);
        for r in 0..b {
            let sum: f32 = q[r * k..(r + 1) * k].iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{want} row {r} sums to {sum}");
        }
        // Each prototype's mass moves towards B/K: after 3 iterations it is within a factor 2 here.
        let target = b as f32 / k as f32;
        for c in 0..k {
            let mass: f32 = (0..b).map(|r| q[r * k + c]).sum();
            assert!(
                mass > 0.5 * target && mass < 2.0 * target,
                "{want} prototype {c}: {mass} vs {target}"
            );
        }
    }
}

#[test]
fn dino_loss_and_gradients_match_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex().autodiff();
    let b = 4;
    let teacher_all = tensor::<2>(&s, "targets.sinkhorn", &device);
    let teacher = [rows(&teacher_all, 0, b), rows(&teacher_all, b, 2 * b)];
    let sg = tensor::<2>(&s, "dino.student_global", &device).require_grad();
    let sl = tensor::<2>(&s, "dino.student_local", &device).require_grad();
    let mut student = vec![rows(&sg, 0, b), rows(&sg, b, 2 * b)];
    student.extend((0..3).map(|i| rows(&sl, i * b, (i + 1) * b)));

    let terms = dino_loss_terms(&student, &teacher, 0.1);
    assert_eq!(terms.n_terms, 8);
    assert_close(
        "dino.loss_local",
        &to_host(terms.local.clone()),
        &read(&s, "dino.loss_local").1,
        VALUE_TOL,
    );
    assert_close(
        "dino.loss_global",
        &to_host(terms.global.clone()),
        &read(&s, "dino.loss_global").1,
        VALUE_TOL,
    );
    let grads = (terms.local + terms.global).backward();
    assert_close(
        "dino.grad_global",
        &to_host(sg.grad(&grads).unwrap()),
        &read(&s, "dino.grad_global").1,
        GRAD_TOL,
    );
    assert_close(
        "dino.grad_local",
        &to_host(sl.grad(&grads).unwrap()),
        &read(&s, "dino.grad_local").1,
        GRAD_TOL,
    );

    // two global crops only: divisor 2 + max(0, 1) = 3
    let sg2 = tensor::<2>(&s, "dino.student_global", &device).require_grad();
    let loss = dino_loss(&[rows(&sg2, 0, b), rows(&sg2, b, 2 * b)], &teacher, 0.1);
    assert_close(
        "dino.loss_global_only",
        &to_host(loss.clone()),
        &read(&s, "dino.loss_global_only").1,
        VALUE_TOL,
    );
    let grads = loss.backward();
    let want = read(&s, "dino.grad_global_only").1;
    assert_close(
        "dino.grad_global_only",
        &to_host(sg2.grad(&grads).unwrap()),
        &want,
        GRAD_TOL,
    );
}

#[test]
fn ibot_loss_and_gradient_match_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex().autodiff();
    let student = tensor::<2>(&s, "ibot.student", &device).require_grad();
    let loss = ibot_loss(
        student.clone(),
        tensor::<2>(&s, "ibot.sinkhorn", &device),
        tensor::<1>(&s, "ibot.masks_weight", &device),
        8,
        0.1,
    );
    assert_close(
        "ibot.loss",
        &to_host(loss.clone()),
        &read(&s, "ibot.loss").1,
        VALUE_TOL,
    );
    let grads = loss.backward();
    assert_close(
        "ibot.grad",
        &to_host(student.grad(&grads).unwrap()),
        &read(&s, "ibot.grad").1,
        GRAD_TOL,
    );
}

#[test]
fn koleo_loss_and_gradient_match_dinov2() {
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex().autodiff();
    let x = tensor::<2>(&s, "koleo.x", &device).require_grad();
    let loss = koleo_loss(x.clone());
    assert_close(
        "koleo.loss",
        &to_host(loss.clone()),
        &read(&s, "koleo.loss").1,
        VALUE_TOL,
    );
    let grads = loss.backward();
    assert_close(
        "koleo.grad",
        &to_host(x.grad(&grads).unwrap()),
        &read(&s, "koleo.grad").1,
        GRAD_TOL,
    );
}

/// Deterministic pseudo-random features (a fixed LCG; no global RNG).
fn features(n: usize, d: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v = (0..n * d)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.5
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [n, d]), device)
}

/// One DINOv2 objective step on a fresh head (student and an identical teacher, as at step 0): the losses
/// sit at their near-uniform values and every student parameter, and the backbone features, receive a
/// non-zero gradient while the teacher receives none.
#[test]
fn fresh_head_sanity_values_and_gradient_flow() {
    let device = Device::flex().autodiff();
    let (b, d, n_local, m) = (8, 32, 2, 12);
    let cfg = DinoHeadConfig {
        in_dim: d,
        out_dim: 4096,
        hidden_dim: 64,
        bottleneck_dim: 256,
        nlayers: 3,
    };
    let k = cfg.out_dim;
    let student = DinoHead::new(&cfg, 11, &device);
    let teacher = DinoHead::new(&cfg, 11, &device);

    let globals = features(2 * b, d, 1, &device).require_grad();
    let locals = features(n_local * b, d, 2, &device).require_grad();
    let patches = features(m, d, 3, &device).require_grad();

    let t_cls = teacher.forward(globals.clone().detach());
    let t_targets = sinkhorn_knopp(t_cls, 0.04, 3);
    let t_patch = sinkhorn_knopp(teacher.forward(patches.clone().detach()), 0.04, 3);

    let s_g = student.forward(globals.clone());
    let s_l = student.forward(locals.clone());
    let mut crops = vec![rows(&s_g, 0, b), rows(&s_g, b, 2 * b)];
    crops.extend((0..n_local).map(|i| rows(&s_l, i * b, (i + 1) * b)));
    let terms = dino_loss_terms(
        &crops,
        &[rows(&t_targets, 0, b), rows(&t_targets, b, 2 * b)],
        0.1,
    );
    // 12 masked tokens over 4 of the 16 global crops, 3 each
    let weights = Tensor::<1>::from_data(TensorData::new(vec![1.0f32 / 3.0; m], [m]), &device);
    // the student sees those tokens masked (here: other features), the teacher the real ones
    let masked = features(m, d, 4, &device).require_grad();
    let ibot = ibot_loss(
        student.forward(masked.clone()),
        t_patch,
        weights,
        2 * b,
        0.1,
    );
    let koleo = koleo_loss(rows(&globals, 0, b)) + koleo_loss(rows(&globals, b, 2 * b));

    let ln_k = (k as f32).ln();
    let n_terms = terms.n_terms as f32;
    assert_eq!(terms.n_terms, 2 + 2 * n_local);
    let local = to_host(terms.local.clone())[0];
    let global = to_host(terms.global.clone())[0];
    // near-uniform student predictions: each pair's CE ≈ ln K (§9.2: 8.3178 = ln 4096)
    assert!(
        (local / (4.0 / n_terms * ln_k) - 1.0).abs() < 0.05,
        "local {local}"
    );
    assert!(
        (global / (2.0 / n_terms * ln_k) - 1.0).abs() < 0.05,
        "global {global}"
    );
    // iBOT: 4 masked crops of 16 → ≈ 4/16 · ln K
    let ibot_v = to_host(ibot.clone())[0];
    assert!((ibot_v / (0.25 * ln_k) - 1.0).abs() < 0.05, "ibot {ibot_v}");
    assert!(to_host(koleo.clone())[0].is_finite());

    let total = terms.local + terms.global + ibot + koleo * 0.1;
    let grads = total.backward();
    let nonzero = |name: &str, g: Option<Vec<f32>>| {
        let g = g.unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
    };
    for (i, l) in student.mlp.iter().enumerate() {
        nonzero(
            &format!("mlp.{i}.weight"),
            l.weight.grad(&grads).map(to_host),
        );
        nonzero(
            &format!("mlp.{i}.bias"),
            l.bias.as_ref().unwrap().grad(&grads).map(to_host),
        );
    }
    nonzero(
        "last_layer.weight_g",
        student.last_layer.weight_g.grad(&grads).map(to_host),
    );
    nonzero(
        "last_layer.weight_v",
        student.last_layer.weight_v.grad(&grads).map(to_host),
    );
    nonzero("global features", globals.grad(&grads).map(to_host));
    nonzero("local features", locals.grad(&grads).map(to_host));
    nonzero("masked patch features", masked.grad(&grads).map(to_host));
    assert!(
        patches.grad(&grads).is_none(),
        "teacher inputs must get no gradient"
    );
    assert!(
        teacher.last_layer.weight_v.grad(&grads).is_none(),
        "teacher must get no gradient"
    );
    assert!(
        teacher.mlp[0].weight.grad(&grads).is_none(),
        "teacher must get no gradient"
    );
}

/// bf16 logits and features (the mixed-precision forward) are cast to f32 inside every objective: the
/// results are f32, close to the f32 computation on the same (rounded) inputs, and gradients flow back.
#[test]
fn half_precision_inputs_are_computed_in_f32() {
    use burn::tensor::{DType, FloatDType};
    let s = support::fixture("objectives/objectives.safetensors");
    let device = Device::flex().autodiff();
    let x16 = tensor::<2>(&s, "koleo.x", &device)
        .cast(FloatDType::BF16)
        .require_grad();
    let x32 = x16.clone().detach().cast(FloatDType::F32);
    let l16 = koleo_loss(x16.clone());
    assert_eq!(l16.dtype(), DType::F32);
    let l32 = koleo_loss(x32);
    assert_close(
        "koleo bf16",
        &to_host(l16.clone()),
        &to_host(l32),
        VALUE_TOL,
    );
    let g = x16.grad(&l16.backward()).expect("bf16 input gradient");
    assert!(to_host(g.cast(FloatDType::F32)).iter().any(|&v| v != 0.0));

    let st = tensor::<2>(&s, "ibot.student", &device)
        .cast(FloatDType::BF16)
        .require_grad();
    let teacher = sinkhorn_knopp(
        tensor::<2>(&s, "ibot.teacher_logits", &device).cast(FloatDType::BF16),
        0.06,
        3,
    );
    assert_eq!(teacher.dtype(), DType::F32);
    let w = tensor::<1>(&s, "ibot.masks_weight", &device);
    let l16 = ibot_loss(st.clone(), teacher.clone(), w.clone(), 8, 0.1);
    let l32 = ibot_loss(
        st.clone().detach().cast(FloatDType::F32),
        teacher,
        w,
        8,
        0.1,
    );
    assert_eq!(l16.dtype(), DType::F32);
    assert_close("ibot bf16", &to_host(l16.clone()), &to_host(l32), VALUE_TOL);
    assert!(st.grad(&l16.backward()).is_some());
}
