//! The fused CPU kernels against burn's own (unfused, differentiable) ops: forward outputs and the
//! gradients of every input, in f32, relative error ‖Δ‖∞ / ‖ref‖∞ ≤ 1e-4. Shapes are small and
//! deliberately not multiples of the vector width or the attention tiles.

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use webssl_models::config::{Ffn, VitConfig};
use webssl_models::kernels::{self, AttnShape, fused, raw, reference};
use webssl_models::{Flavour, PosInterp, Vit};

mod support;

use support::{TOL, rel_err};
use webssl_models::params::to_host;

fn ad() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], std: f64, device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), device)
}

fn check(what: &str, a: Vec<f32>, b: Vec<f32>) {
    let r = rel_err(&a, &b);
    eprintln!("{what}: {r:.2e}");
    assert!(r <= TOL, "{what}: relative error {r:.3e} > {TOL:e}");
}

/// Runs `f` (fused) and `g` (reference) on fresh leaf copies of `inputs`, with a loss
/// `Σ y ∘ w` for a fixed random `w`, and compares the outputs and every input gradient.
fn grad_check<const D: usize, const E: usize>(
    what: &str,
    inputs: Vec<Tensor<D>>,
    out_shape: [usize; E],
    f: impl Fn(Vec<Tensor<D>>) -> Tensor<E>,
    g: impl Fn(Vec<Tensor<D>>) -> Tensor<E>,
) {
    let dev = ad();
    let w = rand(out_shape, 1.0, &dev);
    let run = |op: &dyn Fn(Vec<Tensor<D>>) -> Tensor<E>| {
        let leaves: Vec<Tensor<D>> = inputs
            .iter()
            .map(|t| Tensor::from_data(t.to_data(), &dev).require_grad())
            .collect();
        let y = op(leaves.clone());
        assert_eq!(y.dims(), out_shape, "{what}: output shape");
        let grads = (y.clone() * w.clone()).sum().backward();
        let gs: Vec<Vec<f32>> = leaves
            .iter()
            .map(|l| to_host(l.grad(&grads).expect("every input gets a gradient")))
            .collect();
        (to_host(y), gs)
    };
    let (yf, gf) = run(&f);
    let (yr, gr) = run(&g);
    check(&format!("{what} forward"), yf, yr);
    for (i, (a, b)) in gf.into_iter().zip(gr).enumerate() {
        check(&format!("{what} grad of input {i}"), a, b);
    }
}

/// Pads 1-D parameters to the common rank of a check (grad_check takes one rank).
fn as1(t: &Tensor<2>) -> Tensor<1> {
    t.clone().squeeze_dim(0)
}

#[test]
fn layer_norm_matches_burn() {
    let dev = ad();
    let (rows, d) = (37, 45);
    let x = rand([rows, d], 2.0, &dev) + 0.5;
    let g = rand([1, d], 1.0, &dev) + 1.0;
    let b = rand([1, d], 1.0, &dev);
    grad_check(
        "layer_norm",
        vec![x, g, b],
        [rows, d],
        |v| fused::layer_norm(v[0].clone(), as1(&v[1]), as1(&v[2]), 1e-6),
        |v| reference::layer_norm(v[0].clone(), as1(&v[1]), as1(&v[2]), 1e-6),
    );
}

#[test]
fn bias_gelu_matches_burn() {
    let dev = ad();
    let (rows, d) = (70, 33);
    grad_check(
        "bias_gelu",
        vec![rand([rows, d], 2.0, &dev), rand([1, d], 1.0, &dev)],
        [rows, d],
        |v| fused::bias_gelu(v[0].clone(), as1(&v[1])),
        |v| reference::bias_gelu(v[0].clone(), as1(&v[1])),
    );
}

#[test]
fn bias_swiglu_matches_burn() {
    let dev = ad();
    let (b, n, h) = (2, 35, 20);
    let x = rand([b, n, 2 * h], 2.0, &dev);
    let bias = rand([1, 1, 2 * h], 1.0, &dev);
    grad_check(
        "bias_swiglu",
        vec![x, bias],
        [b, n, h],
        |v| fused::bias_swiglu(v[0].clone(), v[1].clone().reshape([2 * h])),
        |v| reference::bias_swiglu(v[0].clone(), v[1].clone().reshape([2 * h])),
    );
}

#[test]
fn softmax_matches_burn() {
    let dev = ad();
    grad_check(
        "softmax",
        vec![rand([3, 67, 29], 3.0, &dev)],
        [3, 67, 29],
        |v| fused::softmax(v[0].clone()),
        |v| reference::softmax(v[0].clone()),
    );
}

#[test]
fn qkv_attention_matches_burn() {
    let dev = ad();
    // N = 71 > one 64-row query tile; Dh = 8
    let (b, n, heads, dh) = (2, 71, 3, 8);
    grad_check(
        "qkv_attention",
        vec![rand([b, n, 3 * heads * dh], 1.5, &dev)],
        [b, n, heads * dh],
        |v| fused::qkv_attention(v[0].clone(), heads),
        |v| reference::qkv_attention(v[0].clone(), heads),
    );
}

#[test]
fn qkv_attention_longer_than_one_kv_tile_matches_burn() {
    // N > ATTN_BLOCK_KV: the online softmax across key tiles runs through the public op
    let dev = ad();
    let n = kernels::ATTN_BLOCK_KV + 9;
    let (heads, dh) = (1, 4);
    grad_check(
        "qkv_attention (2 kv tiles)",
        vec![rand([1, n, 3 * heads * dh], 1.5, &dev)],
        [1, n, heads * dh],
        |v| fused::qkv_attention(v[0].clone(), heads),
        |v| reference::qkv_attention(v[0].clone(), heads),
    );
}

#[test]
fn attention_tiles_do_not_change_the_result() {
    // small tiles (5 query rows × 7 keys) exercise the running max / running sum rescaling
    let s = AttnShape {
        batch: 2,
        seq: 23,
        heads: 2,
        head_dim: 5,
    };
    let d = s.heads * s.head_dim;
    let len = s.batch * s.seq * 3 * d;
    let qkv: Vec<f32> = (0..len)
        .map(|i| (i * 7919 % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let dout: Vec<f32> = (0..s.batch * s.seq * d)
        .map(|i| (i * 104729 % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let run = |bq: usize, bkv: usize| {
        let mut out = vec![0f32; s.batch * s.seq * d];
        let mut lse = vec![0f32; s.batch * s.heads * s.seq];
        raw::attention_fwd_tiled(&qkv, s, scale, &mut out, &mut lse, bq, bkv);
        let mut dqkv = vec![0f32; len];
        raw::attention_bwd_tiled(&qkv, s, scale, &out, &lse, &dout, &mut dqkv, bq, bkv);
        (out, lse, dqkv)
    };
    let (o1, l1, d1) = run(64, 512);
    let (o2, l2, d2) = run(5, 7);
    check("tiled out", o2, o1);
    check("tiled lse", l2, l1);
    check("tiled dqkv", d2, d1);
}

#[test]
fn inference_path_matches_burn() {
    // plain Flex device (no autodiff): the forward-only impls
    let dev = Device::flex();
    let x = rand([5, 40, 2 * 24], 1.0, &dev);
    let bias = rand([2 * 24], 1.0, &dev);
    check(
        "swiglu (flex)",
        to_host(fused::bias_swiglu(x.clone(), bias.clone())),
        to_host(reference::bias_swiglu(x.clone(), bias.clone())),
    );
    check(
        "gelu (flex)",
        to_host(fused::bias_gelu(x.clone(), bias.clone())),
        to_host(reference::bias_gelu(x.clone(), bias.clone())),
    );
    let g = rand([48], 1.0, &dev);
    check(
        "layer_norm (flex)",
        to_host(fused::layer_norm(x.clone(), g.clone(), bias.clone(), 1e-6)),
        to_host(reference::layer_norm(x.clone(), g, bias, 1e-6)),
    );
    let qkv = rand([2, 30, 3 * 4 * 6], 1.0, &dev);
    check(
        "attention (flex)",
        to_host(fused::qkv_attention(qkv.clone(), 4)),
        to_host(reference::qkv_attention(qkv, 4)),
    );
    // a strided (non-contiguous) input is made contiguous, not misread
    let xt = rand([48, 5], 1.0, &dev).swap_dims(0, 1);
    check(
        "softmax of a transposed view",
        to_host(fused::softmax(xt.clone())),
        to_host(reference::softmax(xt)),
    );
}

fn tiny(ffn: Ffn) -> VitConfig {
    VitConfig {
        flavour: Flavour::Dinov2,
        img_size: 42,
        patch_size: 14,
        in_chans: 3,
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        ffn,
        mlp_ratio: 4.0,
        num_register_tokens: 1,
        layerscale_init: Some(0.5),
        qkv_bias: true,
        ln_eps: 1e-6,
        mask_token: true,
        pos_interp: PosInterp::Size,
    }
}

/// The only test that flips the process-wide switch (tests in this binary run concurrently; the
/// others call `fused::` / `reference::` directly).
#[test]
fn vit_forward_and_gradients_match_the_unfused_model() {
    let dev = ad();
    for ffn in [Ffn::Gelu, Ffn::Swiglu] {
        let vit = Vit::new(&tiny(ffn), &dev);
        let x = rand([2, 3, 42, 42], 1.0, &dev);
        let run = |on: bool| {
            kernels::set_enabled(on);
            let out = vit.forward_features(x.clone(), None);
            let y = Tensor::cat(vec![out.cls.unsqueeze_dim::<3>(1), out.patches], 1);
            let loss = (y.clone() * y.clone().sin()).sum();
            let grads = loss.backward();
            let b0 = &vit.blocks[0];
            let b1 = &vit.blocks[1];
            let p1 = |p: &Param<Tensor<1>>| to_host(p.val().grad(&grads).expect("grad"));
            let p2 = |p: &Param<Tensor<2>>| to_host(p.val().grad(&grads).expect("grad"));
            let ffn_in = b1.mlp.fc1.as_ref().or(b1.mlp.w12.as_ref()).expect("ffn");
            let named = vec![
                ("patch_embed.proj.weight", p2(&vit.patch_embed.proj.weight)),
                (
                    "cls_token",
                    to_host(vit.cls_token.val().grad(&grads).expect("grad")),
                ),
                ("blocks.0.norm1.weight", p1(&b0.norm1.weight)),
                ("blocks.0.attn.qkv.weight", p2(&b0.attn.qkv.weight)),
                (
                    "blocks.0.attn.qkv.bias",
                    p1(b0.attn.qkv.bias.as_ref().expect("bias")),
                ),
                ("blocks.1.norm2.bias", p1(&b1.norm2.bias)),
                ("blocks.1.mlp.in.weight", p2(&ffn_in.weight)),
                (
                    "blocks.1.mlp.in.bias",
                    p1(ffn_in.bias.as_ref().expect("bias")),
                ),
                ("norm.weight", p1(&vit.norm.weight)),
            ];
            (to_host(y), named)
        };
        let (yr, gr) = run(false);
        let (yf, gf) = run(true);
        check(&format!("{ffn:?} vit output"), yf, yr);
        for ((name, a), (_, b)) in gf.into_iter().zip(gr) {
            check(&format!("{ffn:?} vit grad {name}"), a, b);
        }
    }
}

#[test]
fn switch_and_device_gate() {
    let t = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2.0], [1, 2]), &Device::flex());
    // f64 tensors never take the f32 kernels
    let t64 = t.clone().cast(burn::tensor::DType::F64);
    assert!(!kernels::applies(&t64));
    // (the f32 case depends on the switch, which the ViT test flips concurrently)
    assert_eq!(t64.dims(), t.dims());
}

/// Student logits and teacher targets for the cross-entropy checks: `rows × k` logits (std 3, plus
/// a ramp across the row so that later online-softmax chunks raise the running max, or lower it
/// when `rising` is false) and targets that are softmaxes of other random logits, times `mass`
/// (a sum of `mass` teacher targets, as `dino_loss` passes).
fn ce_inputs(rows: usize, k: usize, rising: bool, mass: f64, dev: &Device) -> [Tensor<2>; 2] {
    let ramp: Vec<f32> = (0..rows * k)
        .map(|i| {
            let x = (i % k) as f32 / k as f32 * 4.0;
            if rising { x } else { -x }
        })
        .collect();
    let s = rand([rows, k], 3.0, dev) + Tensor::from_data(TensorData::new(ramp, [rows, k]), dev);
    let t = burn::tensor::activation::softmax(rand([rows, k], 2.0, dev) / 0.5, 1) * mass;
    [s, t]
}

#[test]
fn soft_cross_entropy_matches_burn() {
    let dev = ad();
    // K = 2500: two full 1024-wide online-softmax chunks and a remainder; τs = 0.1 as DINO.
    // `fresh`: the op gets a new tensor (`s + 0.5`), which the backward may overwrite in place;
    // otherwise the leaf itself, whose buffer the test still holds (the allocating path).
    for (rows, k, rising, mass, fresh) in [
        (13, 2500, true, 1.0, true),
        (13, 2500, true, 1.0, false),
        (5, 2500, false, 2.0, true),
        (9, 7, true, 1.0, false),
    ] {
        let [s, t] = ce_inputs(rows, k, rising, mass, &dev);
        let w = rand([rows], 1.0, &dev);
        let run = |op: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>| {
            let sl = Tensor::<2>::from_data(s.to_data(), &dev).require_grad();
            // a tracked target: neither path may send it a gradient
            let tl = Tensor::<2>::from_data(t.to_data(), &dev).require_grad();
            let y = if fresh {
                op(sl.clone() + 0.5, tl.clone())
            } else {
                op(sl.clone(), tl.clone())
            };
            assert_eq!(y.dims(), [rows]);
            let grads = (y.clone() * w.clone()).sum().backward();
            assert!(tl.grad(&grads).is_none(), "the target got a gradient");
            (
                to_host(y),
                to_host(sl.grad(&grads).expect("logit gradient")),
            )
        };
        let (yf, gf) = run(&|s, t| fused::soft_cross_entropy(s, t, 0.1));
        let (yr, gr) = run(&|s, t| reference::soft_cross_entropy(s, t, 0.1));
        let what =
            format!("soft CE {rows}x{k} (rising {rising}, target mass {mass}, fresh {fresh})");
        check(&format!("{what} forward"), yf, yr);
        check(&format!("{what} grad of the logits"), gf, gr);
    }
    // plain Flex device (forward-only impl) and the switch-gated entry point
    let fdev = Device::flex();
    let [s, t] = ce_inputs(4, 1500, true, 1.0, &fdev);
    let want = to_host(reference::soft_cross_entropy(s.clone(), t.clone(), 0.07));
    check(
        "soft CE (flex)",
        to_host(fused::soft_cross_entropy(s.clone(), t.clone(), 0.07)),
        want.clone(),
    );
    check(
        "soft CE (gated)",
        to_host(kernels::soft_cross_entropy(s, t, 0.07)),
        want,
    );
}

#[test]
fn soft_cross_entropy_of_uniform_logits_is_ln_k() {
    // constant logits: log_softmax = −ln K whatever the (unit-mass) target
    let dev = Device::flex();
    let (rows, k) = (3, 3000);
    let s = Tensor::<2>::zeros([rows, k], &dev) + 5.0;
    let t = burn::tensor::activation::softmax(rand([rows, k], 1.0, &dev), 1);
    for v in to_host(fused::soft_cross_entropy(s, t, 0.1)) {
        assert!((v - (k as f32).ln()).abs() < 1e-4, "{v} vs ln K");
    }
}
