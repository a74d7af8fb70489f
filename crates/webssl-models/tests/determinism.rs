//! Every reduction on the training and inference path gives the same bits whatever the number of
//! threads: the raw kernels, burn's matmul and the full sum we route through `kernels::sum`, and a
//! whole ViT forward + backward, each run inside local rayon pools of 1, 2, 3 and 8 threads and
//! compared bit for bit with the 1-thread result. Sizes span many `ROWS_PER_JOB` chunks and cross
//! burn-flex's thresholds for threaded GEMM and the threaded full sum, so an order that followed
//! the thread count or work stealing would show here.

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use webssl_models::config::{Ffn, VitConfig};
use webssl_models::kernels::{self, AttnShape, raw};
use webssl_models::params::to_host;
use webssl_models::{Flavour, PosInterp, Vit};

const THREADS: [usize; 4] = [1, 2, 3, 8];

/// Runs `f` in a fresh pool of each size in [`THREADS`] (several times at the larger ones, so
/// that work stealing varies) and asserts every result is bitwise the 1-thread one.
fn same_bits_at_every_thread_count(what: &str, f: impl Fn() -> Vec<Vec<f32>> + Sync) {
    let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        v.into_iter()
            .map(|x| x.into_iter().map(f32::to_bits).collect())
            .collect()
    };
    let mut want = None;
    for threads in THREADS {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for _ in 0..if threads == 1 { 1 } else { 3 } {
            let got = bits(pool.install(&f));
            match &want {
                None => want = Some(got),
                Some(w) => {
                    for (i, (a, b)) in got.iter().zip(w).enumerate() {
                        let first = a.iter().zip(b).position(|(x, y)| x != y);
                        assert!(
                            first.is_none() && a.len() == b.len(),
                            "{what}: output {i} differs at {threads} threads from 1 thread \
                             (first at element {first:?})"
                        );
                    }
                }
            }
        }
    }
}

/// Deterministic irregular values in [-1, 1) (xorshift), so no test depends on a global RNG.
fn fill(n: usize, salt: u64) -> Vec<f32> {
    let mut x = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

// 37 chunks of 64 rows and a partial one; widths not multiples of the vector width.
const ROWS: usize = 64 * 37 + 5;

#[test]
fn layer_norm_backward_column_sums() {
    let d = 100;
    let (x, dy, gamma) = (fill(ROWS * d, 1), fill(ROWS * d, 2), fill(d, 3));
    same_bits_at_every_thread_count("layer_norm", || {
        let (mut y, mut mean, mut rstd) = (vec![0.0; ROWS * d], vec![0.0; ROWS], vec![0.0; ROWS]);
        raw::layer_norm_fwd(&x, &gamma, &gamma, 1e-6, &mut y, &mut mean, &mut rstd);
        let mut dx = vec![0.0; ROWS * d];
        let (dg, db) = raw::layer_norm_bwd(&x, &gamma, &mean, &rstd, &dy, &mut dx);
        vec![y, mean, rstd, dx, dg, db]
    });
}

#[test]
fn gelu_and_swiglu_backward_bias_sums() {
    let d = 76;
    let (x, dy, bias) = (fill(ROWS * d, 4), fill(ROWS * d, 5), fill(d, 6));
    same_bits_at_every_thread_count("bias_gelu", || {
        let (mut y, mut dx) = (vec![0.0; ROWS * d], vec![0.0; ROWS * d]);
        raw::bias_gelu_fwd(&x, &bias, &mut y);
        let db = raw::bias_gelu_bwd(&x, &bias, &dy, &mut dx);
        vec![y, dx, db]
    });
    let dy_half = &dy[..ROWS * d / 2];
    same_bits_at_every_thread_count("bias_swiglu", || {
        let (mut y, mut dx) = (vec![0.0; ROWS * d / 2], vec![0.0; ROWS * d]);
        raw::bias_swiglu_fwd(&x, &bias, &mut y);
        let db = raw::bias_swiglu_bwd(&x, &bias, dy_half, &mut dx);
        vec![y, dx, db]
    });
}

#[test]
fn softmax_cross_entropy_and_attention() {
    let k = 300;
    let (s, t, dl) = (fill(ROWS * k, 7), fill(ROWS * k, 8), fill(ROWS, 9));
    same_bits_at_every_thread_count("softmax + soft cross-entropy", || {
        let (mut y, mut dx) = (vec![0.0; ROWS * k], vec![0.0; ROWS * k]);
        raw::softmax_fwd(&s, k, &mut y);
        raw::softmax_bwd(&y, &t, k, &mut dx);
        let (mut loss, mut lse, mut tsum) = (vec![0.0; ROWS], vec![0.0; ROWS], vec![0.0; ROWS]);
        raw::soft_ce_fwd(&s, &t, k, 10.0, &mut loss, &mut lse, &mut tsum);
        let mut ds = vec![0.0; ROWS * k];
        raw::soft_ce_bwd(&s, &t, k, 10.0, &lse, &tsum, &dl, &mut ds);
        vec![y, dx, loss, lse, tsum, ds]
    });
    let sh = AttnShape {
        batch: 3,
        seq: 150,
        heads: 4,
        head_dim: 24,
    };
    let d = sh.heads * sh.head_dim;
    let n = sh.batch * sh.seq;
    let (qkv, dout) = (fill(n * 3 * d, 10), fill(n * d, 11));
    same_bits_at_every_thread_count("attention", || {
        let (mut out, mut lse) = (vec![0.0; n * d], vec![0.0; sh.batch * sh.heads * sh.seq]);
        // KV tiles of 64 so that the online softmax runs too
        raw::attention_fwd_tiled(&qkv, sh, 0.2, &mut out, &mut lse, 32, 64);
        let mut dqkv = vec![0.0; n * 3 * d];
        raw::attention_bwd_tiled(&qkv, sh, 0.2, &out, &lse, &dout, &mut dqkv, 32, 64);
        vec![out, lse, dqkv]
    });
}

#[test]
fn burn_matmul_and_full_sums() {
    let dev = Device::flex();
    let t = |shape: Vec<usize>, salt| {
        let n = shape.iter().product();
        Tensor::<3>::from_data(TensorData::new(fill(n, salt), shape), &dev)
    };
    // one large GEMM (gemm's own threads), and a batch of small ones (burn-flex's batch loop)
    let (a, b) = (t(vec![1, 300, 260], 12), t(vec![1, 260, 310], 13));
    let (c, e) = (t(vec![16, 70, 64], 14), t(vec![16, 64, 90], 15));
    // above burn-flex's 4 Mi-element threshold for its threaded (scheduling-ordered) full sum
    let big = t(vec![5, 1024, 1024], 16);
    let small = t(vec![3, 100, 100], 17);
    same_bits_at_every_thread_count("matmul and sums", || {
        vec![
            to_host(a.clone().matmul(b.clone())),
            to_host(c.clone().matmul(e.clone())),
            to_host(kernels::sum(big.clone())),
            to_host(kernels::mean(big.clone())),
            to_host(kernels::sum(small.clone())),
            to_host(kernels::mean(small.clone())),
        ]
    });
}

#[test]
fn vit_forward_and_backward() {
    let dev = Device::flex().autodiff();
    let cfg = VitConfig {
        flavour: Flavour::Dinov2,
        img_size: 42,
        patch_size: 14,
        in_chans: 3,
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        ffn: Ffn::Swiglu,
        mlp_ratio: 4.0,
        num_register_tokens: 1,
        layerscale_init: Some(0.5),
        qkv_bias: true,
        ln_eps: 1e-6,
        mask_token: true,
        pos_interp: PosInterp::Size,
    };
    let vit = Vit::new(&cfg, &dev);
    // 24 images × 11 tokens: LayerNorm / SwiGLU backward over several row chunks
    let x = Tensor::<4>::random([24, 3, 42, 42], Distribution::Normal(0.0, 1.0), &dev);
    same_bits_at_every_thread_count("ViT forward + backward", || {
        let out = vit.forward_features(x.clone(), None);
        let y = Tensor::cat(vec![out.cls.unsqueeze_dim::<3>(1), out.patches], 1);
        let loss = kernels::sum(y.clone() * y.clone().sin());
        let grads = loss.backward();
        let p1 = |p: &Param<Tensor<1>>| to_host(p.val().grad(&grads).expect("grad"));
        let p2 = |p: &Param<Tensor<2>>| to_host(p.val().grad(&grads).expect("grad"));
        let b = &vit.blocks[0];
        let w12 = b.mlp.w12.as_ref().expect("SwiGLU");
        vec![
            to_host(y),
            p2(&vit.patch_embed.proj.weight),
            p1(&b.norm1.weight),
            p1(&b.norm1.bias),
            p2(&b.attn.qkv.weight),
            p1(w12.bias.as_ref().expect("bias")),
            p1(&vit.norm.weight),
        ]
    });
}
