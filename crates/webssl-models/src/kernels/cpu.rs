//! The raw f32 kernels on contiguous row-major slices: LayerNorm, bias + GELU(erf), bias + SwiGLU,
//! row softmax, the DINO/iBOT soft cross-entropy over K prototypes and multi-head attention straight
//! from a fused `qkv` projection, each with its backward. No tensor library here: the burn glue is
//! in `ext.rs`.
//!
//! Parallelism: rayon over independent rows / (batch, head) pairs, with one scratch buffer per rayon
//! job (`for_each_init`). Every reduction has a fixed order, so each kernel gives the same bits at
//! any thread count (issue #20): a row's sums stay inside one job, and the sums over rows (bias and
//! LayerNorm gradients) are taken per fixed chunk of rows and added in chunk order
//! ([`ordered_column_sums`]); attention's products run single-threaded per (batch, head). The inner
//! loops are written over `chunks_exact(LANES)` with independent accumulators so that LLVM
//! vectorises them; the workspace builds for generic x86-64 (SSE2), so the
//! row bodies are compiled per ISA and picked at run time (`multiversion!`: AVX-512, AVX2+FMA,
//! baseline), as burn-flex's own elementwise kernels are. The attention kernel's elementwise parts
//! (exp of a score tile) are not multiversioned: its time is in the `gemm` calls. Attention's small matrix
//! products go through the `gemm` crate (the one burn-flex itself uses) single-threaded inside each
//! job, on strided views of the `qkv` buffer, so Q/K/V are never copied out or transposed.

use rayon::prelude::*;

/// Defines `fn name(args)` whose body is compiled three times — for AVX-512, for AVX2+FMA and for
/// baseline x86-64 — and picks one at run time. The workspace builds for generic x86-64, where LLVM
/// vectorises these loops with SSE2 only, while burn-flex's own elementwise kernels dispatch to
/// AVX-512 (macerator). The body is an `#[inline(always)]` function called from each
/// `#[target_feature]` wrapper, so it is inlined and vectorised for that ISA (a closure passed to
/// such a wrapper is not inlined: checked in the disassembly).
macro_rules! multiversion {
    (fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($a: $t),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v4($($a: $t),*) {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn v3($($a: $t),*) {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU has every feature `v4` is compiled for (checked above).
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

/// Independent partial sums per reduction: enough for two AVX-512 or four AVX2 registers.
const LANES: usize = 16;
/// Rows per rayon job for the row-wise kernels (a few hundred KiB of activations per job).
const ROWS_PER_JOB: usize = 64;
/// Query rows per attention tile.
pub const ATTN_BLOCK_Q: usize = 64;
/// Key/value rows per attention tile. Sequences up to this length take one tile (exact softmax);
/// longer ones are tiled with the online (running max / running sum) softmax.
pub const ATTN_BLOCK_KV: usize = 512;

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[inline(always)]
fn centered_sq_sum(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let v = c[l] - mean;
            acc[l] += v * v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

// ------------------------------------------------------------------------------------------------
// LayerNorm over the last dimension `d`.

/// `y = (x − mean) · rstd · gamma + beta` per row; writes the per-row `mean` and `rstd = 1/√(var+eps)`
/// (biased variance, as PyTorch) for the backward pass. Two passes over the row (mean, then the
/// centred variance) as burn's and PyTorch's reference, for the same rounding behaviour.
pub fn layer_norm_fwd(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && y.len() == x.len() && beta.len() == d);
    let rows = x.len() / d;
    assert!(mean.len() == rows && rstd.len() == rows);
    y.par_chunks_mut(ROWS_PER_JOB * d)
        .zip(x.par_chunks(ROWS_PER_JOB * d))
        .zip(mean.par_chunks_mut(ROWS_PER_JOB))
        .zip(rstd.par_chunks_mut(ROWS_PER_JOB))
        .for_each(|(((y, x), mean), rstd)| {
            ln_rows(y, x, mean, rstd, gamma, beta, eps, d);
        });
}

/// The LayerNorm backward: with `x̂ = (x − mean)·rstd` and `g = dy·gamma`,
/// `dx = rstd · (g − mean(g) − x̂ · mean(g·x̂))`, `dgamma = Σ_rows dy·x̂`, `dbeta = Σ_rows dy`.
/// The column sums are taken per chunk of rows, then added in chunk order ([`ordered_column_sums`]).
pub fn layer_norm_bwd(
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && dy.len() == x.len() && dx.len() == x.len());
    let chunks = dx
        .par_chunks_mut(ROWS_PER_JOB * d)
        .zip(x.par_chunks(ROWS_PER_JOB * d))
        .zip(dy.par_chunks(ROWS_PER_JOB * d))
        .zip(mean.par_chunks(ROWS_PER_JOB))
        .zip(rstd.par_chunks(ROWS_PER_JOB));
    let mut sums = ordered_column_sums(chunks, 2 * d, |acc, ((((dx, x), dy), mean), rstd)| {
        let (dg, db) = acc.split_at_mut(d);
        ln_bwd_rows(dg, db, dx, x, dy, mean, rstd, gamma, d);
    });
    let db = sums.split_off(d);
    (sums, db)
}

/// Column sums (`width` wide) over fixed chunks of rows, in a fixed order: `rows(acc, chunk)` adds
/// one chunk's contribution to a zeroed `acc`; the chunks run in parallel and their partial sums
/// are added in chunk order. So the result has the same bits at any thread count. (Rayon's
/// `fold` + `reduce` made one accumulator per piece of work its scheduler happened to split off:
/// the last bits of bias and LayerNorm gradients followed the thread count and work stealing, and
/// runs at 2 threads drifted apart from step 1 — issue #20.) Costs one `width` add per chunk of
/// `ROWS_PER_JOB` rows, 1/64 of the kernel's own adds.
fn ordered_column_sums<I: IndexedParallelIterator>(
    chunks: I,
    width: usize,
    rows: impl Fn(&mut [f32], I::Item) + Sync + Send,
) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = chunks
        .map(|chunk| {
            let mut acc = vec![0f32; width];
            rows(&mut acc, chunk);
            acc
        })
        .collect();
    let mut total = vec![0f32; width];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

// ------------------------------------------------------------------------------------------------
// GELU (erf) and SwiGLU, each with the Linear's bias folded in.

/// `erf` in f32 as a rational function on `[-4, 4]` (saturated outside): the minimax approximation
/// Eigen and XLA use for `erf` (`generic_fast_erf_float`), max error a few f32 ulp; branch-free
/// so the calling loops vectorise.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_3e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `exp` in f32, branch-free so loops over it vectorise: `2^k · p(r)` with `x = k·ln2 + r`,
/// `|r| ≤ ln2/2`, `p` the degree-6 Taylor polynomial (relative error < 2e-7 on the range);
/// inputs are clamped to [−87.3, 88] (below: ~1e-38 instead of a denormal or 0, harmless for
/// softmax weights and the GELU density).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    // round to nearest through the 1.5·2²³ trick: `f32::round` is a libm call (`roundf`, 2% of a
    // training step in `perf`) unless SSE4.1 is enabled at compile time; this vectorises with SSE2
    const ROUND: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k through the exponent bits; k ∈ [-126, 128) after the clamp
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// `y = gelu(x + bias)` over rows of `bias.len()` (exact GELU: `½·z·(1 + erf(z/√2))`).
pub fn bias_gelu_fwd(x: &[f32], bias: &[f32], y: &mut [f32]) {
    let d = bias.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && y.len() == x.len());
    y.par_chunks_mut(ROWS_PER_JOB * d)
        .zip(x.par_chunks(ROWS_PER_JOB * d))
        .for_each(|(y, x)| {
            gelu_rows(y, x, bias, d);
        });
}

/// The backward of [`bias_gelu_fwd`]: `dx = dy · (½(1 + erf(z/√2)) + z·φ(z))`, `dbias = Σ_rows dx`.
pub fn bias_gelu_bwd(x: &[f32], bias: &[f32], dy: &[f32], dx: &mut [f32]) -> Vec<f32> {
    let d = bias.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && dy.len() == x.len() && dx.len() == x.len());
    let chunks = dx
        .par_chunks_mut(ROWS_PER_JOB * d)
        .zip(x.par_chunks(ROWS_PER_JOB * d))
        .zip(dy.par_chunks(ROWS_PER_JOB * d));
    ordered_column_sums(chunks, d, |db, ((dx, x), dy)| {
        gelu_bwd_rows(db, dx, x, dy, bias, d);
    })
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// SwiGLU with the `w12` bias folded in: rows of `x` are `[x1 | x2]` (2·h wide, DINOv2's fused
/// `w12` output), `z = x + bias`, `y = silu(z1) · z2` (`h` wide).
pub fn bias_swiglu_fwd(x: &[f32], bias: &[f32], y: &mut [f32]) {
    let h2 = bias.len();
    let h = h2 / 2;
    assert!(h2 > 0 && h2.is_multiple_of(2) && x.len().is_multiple_of(h2) && y.len() == x.len() / 2);
    y.par_chunks_mut(ROWS_PER_JOB * h)
        .zip(x.par_chunks(ROWS_PER_JOB * h2))
        .for_each(|(y, x)| {
            swiglu_rows(y, x, bias, h, h2);
        });
}

/// The backward of [`bias_swiglu_fwd`]: `dz1 = dy·z2·σ(z1)(1 + z1(1 − σ(z1)))`, `dz2 = dy·silu(z1)`;
/// returns `dbias = Σ_rows dz`.
pub fn bias_swiglu_bwd(x: &[f32], bias: &[f32], dy: &[f32], dx: &mut [f32]) -> Vec<f32> {
    let h2 = bias.len();
    let h = h2 / 2;
    assert!(h2 > 0 && x.len().is_multiple_of(h2) && dx.len() == x.len() && dy.len() == x.len() / 2);
    let chunks = dx
        .par_chunks_mut(ROWS_PER_JOB * h2)
        .zip(x.par_chunks(ROWS_PER_JOB * h2))
        .zip(dy.par_chunks(ROWS_PER_JOB * h));
    ordered_column_sums(chunks, h2, |db, ((dx, x), dy)| {
        swiglu_bwd_rows(db, dx, x, dy, bias, h, h2);
    })
}

// ------------------------------------------------------------------------------------------------
// Softmax over the last dimension (rows of `d`).

/// `y = softmax(x)` per row (max-subtracted).
pub fn softmax_fwd(x: &[f32], d: usize, y: &mut [f32]) {
    assert!(d > 0 && x.len().is_multiple_of(d) && y.len() == x.len());
    y.par_chunks_mut(ROWS_PER_JOB * d)
        .zip(x.par_chunks(ROWS_PER_JOB * d))
        .for_each(|(y, x)| {
            softmax_rows(y, x, d);
        });
}

#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp(v - m);
    }
    let inv = 1.0 / sum(y);
    for o in y.iter_mut() {
        *o *= inv;
    }
}

/// The softmax backward from its output: `dx = y · (dy − Σ dy·y)` per row.
pub fn softmax_bwd(y: &[f32], dy: &[f32], d: usize, dx: &mut [f32]) {
    assert!(d > 0 && y.len().is_multiple_of(d) && dy.len() == y.len() && dx.len() == y.len());
    dx.par_chunks_mut(ROWS_PER_JOB * d)
        .zip(y.par_chunks(ROWS_PER_JOB * d))
        .zip(dy.par_chunks(ROWS_PER_JOB * d))
        .for_each(|((dx, y), dy)| {
            softmax_bwd_rows(dx, y, dy, d);
        });
}

// Row bodies of the kernels above, one multiversioned function each (see `multiversion!`).

multiversion! {
    fn ln_rows(y: &mut [f32], x: &[f32], mean: &mut [f32], rstd: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32, d: usize) {
            for (r, (yr, xr)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let mu = sum(xr) / d as f32;
                let rs = 1.0 / (centered_sq_sum(xr, mu) / d as f32 + eps).sqrt();
                for j in 0..d {
                    yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
                }
                mean[r] = mu;
                rstd[r] = rs;
            }
        }
}

multiversion! {
    fn ln_bwd_rows(dg: &mut [f32], db: &mut [f32], dx: &mut [f32], x: &[f32], dy: &[f32], mean: &[f32], rstd: &[f32], gamma: &[f32], d: usize) {
            let mut g = vec![0f32; d];
            let mut xh = vec![0f32; d];
            for r in 0..mean.len() {
                let (xr, dyr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                let (mu, rs) = (mean[r], rstd[r]);
                for j in 0..d {
                    xh[j] = (xr[j] - mu) * rs;
                    g[j] = dyr[j] * gamma[j];
                    dg[j] += dyr[j] * xh[j];
                    db[j] += dyr[j];
                }
                let a = sum(&g) / d as f32;
                let b = dot(&g, &xh) / d as f32;
                let dxr = &mut dx[r * d..(r + 1) * d];
                for j in 0..d {
                    dxr[j] = rs * (g[j] - a - xh[j] * b);
                }
            }

}
}

multiversion! {
    fn gelu_rows(y: &mut [f32], x: &[f32], bias: &[f32], d: usize) {
            for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                for j in 0..d {
                    let z = xr[j] + bias[j];
                    yr[j] = 0.5 * z * (1.0 + erf(z * FRAC_1_SQRT_2));
                }
            }
        }
}

multiversion! {
    fn gelu_bwd_rows(db: &mut [f32], dx: &mut [f32], x: &[f32], dy: &[f32], bias: &[f32], d: usize) {
                for ((dxr, xr), dyr) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(dy.chunks_exact(d))
                {
                    for j in 0..d {
                        let z = xr[j] + bias[j];
                        let cdf = 0.5 * (1.0 + erf(z * FRAC_1_SQRT_2));
                        let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * z * z);
                        let g = dyr[j] * (cdf + z * pdf);
                        dxr[j] = g;
                        db[j] += g;
                    }
                }

}
}

multiversion! {
    fn swiglu_rows(y: &mut [f32], x: &[f32], bias: &[f32], h: usize, h2: usize) {
            for (yr, xr) in y.chunks_exact_mut(h).zip(x.chunks_exact(h2)) {
                let (x1, x2) = xr.split_at(h);
                let (b1, b2) = bias.split_at(h);
                for j in 0..h {
                    let z1 = x1[j] + b1[j];
                    yr[j] = z1 * sigmoid(z1) * (x2[j] + b2[j]);
                }
            }
        }
}

multiversion! {
    fn swiglu_bwd_rows(db: &mut [f32], dx: &mut [f32], x: &[f32], dy: &[f32], bias: &[f32], h: usize, h2: usize) {
                for ((dxr, xr), dyr) in dx
                    .chunks_exact_mut(h2)
                    .zip(x.chunks_exact(h2))
                    .zip(dy.chunks_exact(h))
                {
                    let (x1, x2) = xr.split_at(h);
                    let (d1, d2) = dxr.split_at_mut(h);
                    let (db1, db2) = db.split_at_mut(h);
                    for j in 0..h {
                        let z1 = x1[j] + bias[j];
                        let z2 = x2[j] + bias[h + j];
                        let s = sigmoid(z1);
                        let g1 = dyr[j] * z2 * s * (1.0 + z1 * (1.0 - s));
                        let g2 = dyr[j] * z1 * s;
                        d1[j] = g1;
                        d2[j] = g2;
                        db1[j] += g1;
                        db2[j] += g2;
                    }
                }

}
}

multiversion! {
    fn softmax_rows(y: &mut [f32], x: &[f32], d: usize) {
            for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                softmax_row(xr, yr);
            }
        }
}

multiversion! {
    fn softmax_bwd_rows(dx: &mut [f32], y: &[f32], dy: &[f32], d: usize) {
            for ((dxr, yr), dyr) in dx
                .chunks_exact_mut(d)
                .zip(y.chunks_exact(d))
                .zip(dy.chunks_exact(d))
            {
                let s = dot(dyr, yr);
                for j in 0..d {
                    dxr[j] = yr[j] * (dyr[j] - s);
                }
            }
        }
}

// ------------------------------------------------------------------------------------------------
// Soft cross-entropy over K prototypes: the per-row DINO / iBOT loss.

/// Elements of a row per online-softmax chunk (4 KiB): the chunk is read once for its max and once
/// more for its exps while it sits in L1, so a K-wide row streams from memory once.
const CE_CHUNK: usize = 1024;
/// Elements per rayon job of the row-wise cross-entropy: one row per job for real prototype counts
/// (K = 65 536–131 072), many short rows per job for small K.
const CE_JOB_ELEMS: usize = 1 << 16;

fn ce_rows_per_job(k: usize) -> usize {
    (CE_JOB_ELEMS / k.max(1)).max(1)
}

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    // per-lane compare-and-select (not `f32::max`, whose NaN rule blocks vectorisation)
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `Σ_k t[k] · (s[k]·inv_temp − c)`
#[inline(always)]
fn shifted_dot(t: &[f32], s: &[f32], inv_temp: f32, c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let ct = t.chunks_exact(LANES);
    let cs = s.chunks_exact(LANES);
    let (rt, rs) = (ct.remainder(), cs.remainder());
    for (x, y) in ct.zip(cs) {
        for l in 0..LANES {
            acc[l] += x[l] * (y[l] * inv_temp - c);
        }
    }
    acc.iter().sum::<f32>()
        + rt.iter()
            .zip(rs)
            .map(|(x, y)| x * (y * inv_temp - c))
            .sum::<f32>()
}

/// Row-wise soft cross-entropy of `[rows, K]` logits `s` against targets `t`:
/// `loss[r] = −Σ_k t[r,k] · log_softmax(s[r,·]·inv_temp)[k] = tsum·lse − Σ_k t·z` with
/// `z = s·inv_temp`, in one sweep over each row (chunked online log-sum-exp: each chunk's max
/// rescales the running sum once, then its exps, `Σ t·z` and `Σ t` are accumulated); no
/// log-softmax row is written. `Σ t·z` is taken relative to the first chunk's max `c`
/// (`tsum·(lse − c) − Σ t·(z − c)`), so the two terms stay near the size of the loss instead of
/// cancelling at the size of the logits. Writes each row's `lse` and target mass `tsum = Σ_k t`
/// (not 1 when several teacher targets were summed) for [`soft_ce_bwd`].
#[allow(clippy::too_many_arguments)]
pub fn soft_ce_fwd(
    s: &[f32],
    t: &[f32],
    k: usize,
    inv_temp: f32,
    loss: &mut [f32],
    lse: &mut [f32],
    tsum: &mut [f32],
) {
    assert!(k > 0 && s.len().is_multiple_of(k) && t.len() == s.len());
    let rows = s.len() / k;
    assert!(loss.len() == rows && lse.len() == rows && tsum.len() == rows);
    let rj = ce_rows_per_job(k);
    loss.par_chunks_mut(rj)
        .zip(lse.par_chunks_mut(rj))
        .zip(tsum.par_chunks_mut(rj))
        .zip(s.par_chunks(rj * k).zip(t.par_chunks(rj * k)))
        .for_each(|(((loss, lse), tsum), (s, t))| {
            ce_rows(loss, lse, tsum, s, t, k, inv_temp);
        });
}

/// The backward of [`soft_ce_fwd`] with respect to the logits (the targets get none):
/// `ds[r,k] = dloss[r] · inv_temp · (tsum[r] · exp(z[r,k] − lse[r]) − t[r,k])`, the softmax
/// recomputed from the saved `lse` in the same sweep.
#[allow(clippy::too_many_arguments)]
pub fn soft_ce_bwd(
    s: &[f32],
    t: &[f32],
    k: usize,
    inv_temp: f32,
    lse: &[f32],
    tsum: &[f32],
    dloss: &[f32],
    ds: &mut [f32],
) {
    assert!(k > 0 && s.len().is_multiple_of(k) && t.len() == s.len() && ds.len() == s.len());
    let rows = s.len() / k;
    assert!(lse.len() == rows && tsum.len() == rows && dloss.len() == rows);
    let rj = ce_rows_per_job(k);
    ds.par_chunks_mut(rj * k)
        .zip(s.par_chunks(rj * k).zip(t.par_chunks(rj * k)))
        .zip(lse.par_chunks(rj).zip(tsum.par_chunks(rj)))
        .zip(dloss.par_chunks(rj))
        .for_each(|(((ds, (s, t)), (lse, tsum)), dloss)| {
            ce_bwd_rows(ds, s, t, lse, tsum, dloss, k, inv_temp);
        });
}

/// [`soft_ce_bwd`] overwriting the logits with their gradient (`s_ds` holds `s` on entry, `ds` on
/// return): the backward of a `[rows, K]` loss then allocates nothing (160 MB per step for iBOT's
/// 611 × 65 536 logits at ViT-S batch 8, each a fresh run of zeroed huge pages otherwise).
#[allow(clippy::too_many_arguments)]
pub fn soft_ce_bwd_inplace(
    s_ds: &mut [f32],
    t: &[f32],
    k: usize,
    inv_temp: f32,
    lse: &[f32],
    tsum: &[f32],
    dloss: &[f32],
) {
    assert!(k > 0 && s_ds.len().is_multiple_of(k) && t.len() == s_ds.len());
    let rows = s_ds.len() / k;
    assert!(lse.len() == rows && tsum.len() == rows && dloss.len() == rows);
    let rj = ce_rows_per_job(k);
    s_ds.par_chunks_mut(rj * k)
        .zip(t.par_chunks(rj * k))
        .zip(lse.par_chunks(rj).zip(tsum.par_chunks(rj)))
        .zip(dloss.par_chunks(rj))
        .for_each(|(((ds, t), (lse, tsum)), dloss)| {
            ce_bwd_rows_inplace(ds, t, lse, tsum, dloss, k, inv_temp);
        });
}

multiversion! {
    fn ce_bwd_rows_inplace(ds: &mut [f32], t: &[f32], lse: &[f32], tsum: &[f32], dloss: &[f32], k: usize, inv_temp: f32) {
        for (r, (dr, tr)) in ds.chunks_exact_mut(k).zip(t.chunks_exact(k)).enumerate() {
            let a = dloss[r] * inv_temp;
            let b = a * tsum[r];
            let l = lse[r];
            for j in 0..k {
                dr[j] = b * exp(dr[j] * inv_temp - l) - a * tr[j];
            }
        }
    }
}

multiversion! {
    fn ce_rows(loss: &mut [f32], lse: &mut [f32], tsum: &mut [f32], s: &[f32], t: &[f32], k: usize, inv_temp: f32) {
        let mut e = [0f32; CE_CHUNK];
        for (r, (sr, tr)) in s.chunks_exact(k).zip(t.chunks_exact(k)).enumerate() {
            let (mut m, mut se, mut dt, mut ts) = (f32::NEG_INFINITY, 0f32, 0f32, 0f32);
            let mut c = 0f32;
            for (i, (sc, tc)) in sr.chunks(CE_CHUNK).zip(tr.chunks(CE_CHUNK)).enumerate() {
                // inv_temp > 0, so max(s)·inv_temp = max(z)
                let cm = max_of(sc) * inv_temp;
                if i == 0 {
                    c = cm;
                }
                let m_new = if cm > m { cm } else { m };
                // first chunk: m = −∞ → exp clamps to ~1e-38, times se = 0
                se *= exp(m - m_new);
                let n = sc.len();
                for j in 0..n {
                    e[j] = exp(sc[j] * inv_temp - m_new);
                }
                se += sum(&e[..n]);
                dt += shifted_dot(tc, sc, inv_temp, c);
                ts += sum(tc);
                m = m_new;
            }
            let l = m + se.ln();
            lse[r] = l;
            tsum[r] = ts;
            loss[r] = ts * (l - c) - dt;
        }
    }
}

multiversion! {
    fn ce_bwd_rows(ds: &mut [f32], s: &[f32], t: &[f32], lse: &[f32], tsum: &[f32], dloss: &[f32], k: usize, inv_temp: f32) {
        for (r, ((dr, sr), tr)) in ds
            .chunks_exact_mut(k)
            .zip(s.chunks_exact(k))
            .zip(t.chunks_exact(k))
            .enumerate()
        {
            let a = dloss[r] * inv_temp;
            let b = a * tsum[r];
            let l = lse[r];
            for j in 0..k {
                dr[j] = b * exp(sr[j] * inv_temp - l) - a * tr[j];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Multi-head attention from a fused qkv projection.

/// Geometry of one attention call: `qkv` is `[B, N, 3·D]` (Q | K | V, heads contiguous inside each,
/// the layout of DINOv2's `qkv` Linear output before `reshape(B, N, 3, H, Dh)`), the output is
/// `[B, N, D]` with heads already merged (what `proj` consumes).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// A raw pointer that rayon jobs may share: each job writes a disjoint (batch, head) column block.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every job derives pointers to a region no other job touches (its own batch row range and
// head column range), and the buffer outlives the parallel loop that uses it.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the `Sync` wrapper, not the raw pointer field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `dst[m×n] = beta·dst + lhs[m×k] · rhs[k×n]` with explicit (row, column) strides, one thread.
///
/// # Safety
/// Pointers and strides must describe valid, non-overlapping (dst vs inputs) memory.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Attention forward: `out = softmax(Q·Kᵀ·scale)·V` per (batch, head), tiled `ATTN_BLOCK_Q` query
/// rows × `ATTN_BLOCK_KV` keys with the online softmax, so no `N × N` score matrix exists (one
/// `64 × min(N, 512)` tile per rayon job). Writes the log-sum-exp of each row's scaled scores
/// (`lse`, `[B, H, N]`) for the backward pass.
pub fn attention_fwd(qkv: &[f32], s: AttnShape, scale: f32, out: &mut [f32], lse: &mut [f32]) {
    attention_fwd_tiled(qkv, s, scale, out, lse, ATTN_BLOCK_Q, ATTN_BLOCK_KV);
}

/// [`attention_fwd`] with explicit tile sizes (tests use small ones to exercise the online softmax).
pub fn attention_fwd_tiled(
    qkv: &[f32],
    s: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
    bq: usize,
    bkv: usize,
) {
    let (n, dh, d) = (s.seq, s.head_dim, s.dim());
    let d3 = 3 * d;
    assert_eq!(qkv.len(), s.batch * n * d3, "qkv is not [B, N, 3·H·Dh]");
    assert_eq!(out.len(), s.batch * n * d);
    assert_eq!(lse.len(), s.batch * s.heads * n);
    assert!(bq > 0 && bkv > 0 && dh > 0);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let lse_ptr = SharedMut(lse.as_mut_ptr());
    let qkv_ptr = qkv.as_ptr() as usize;
    (0..s.batch * s.heads).into_par_iter().for_each_init(
        || (vec![0f32; bq * bkv.min(n)], vec![0f32; bq], vec![0f32; bq]),
        |(scores, row_max, row_sum), bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let base = qkv_ptr as *const f32;
            // SAFETY: offsets stay inside `qkv` ([B, N, 3D]): row b·N.., column blocks of this head.
            let (q, k, v) = unsafe {
                let row = base.add(b * n * d3);
                (
                    row.add(h * dh),
                    row.add(d + h * dh),
                    row.add(2 * d + h * dh),
                )
            };
            let o = out_ptr;
            let l = lse_ptr;
            for i0 in (0..n).step_by(bq) {
                let mq = bq.min(n - i0);
                // SAFETY: this job's rows i0..i0+mq of batch b, columns h·Dh..(h+1)·Dh of `out`.
                let o_blk = unsafe { o.get().add((b * n + i0) * d + h * dh) };
                let q_blk = unsafe { q.add(i0 * d3) };
                row_max[..mq].fill(f32::NEG_INFINITY);
                row_sum[..mq].fill(0.0);
                for j0 in (0..n).step_by(bkv) {
                    let nk = bkv.min(n - j0);
                    let sc = &mut scores[..mq * nk];
                    // S = Q_blk · K_blkᵀ · scale   (K row j at k + j·3D; Kᵀ[c][j] → strides (1, 3D))
                    unsafe {
                        mm(
                            mq,
                            nk,
                            dh,
                            sc.as_mut_ptr(),
                            (nk, 1),
                            false,
                            q_blk,
                            (d3, 1),
                            k.add(j0 * d3),
                            (1, d3),
                            scale,
                        );
                    }
                    for r in 0..mq {
                        let row = &mut sc[r * nk..(r + 1) * nk];
                        let m_new = row.iter().copied().fold(row_max[r], f32::max);
                        let corr = exp(row_max[r] - m_new);
                        for e in row.iter_mut() {
                            *e = exp(*e - m_new);
                        }
                        row_sum[r] = row_sum[r] * corr + sum(row);
                        row_max[r] = m_new;
                        if j0 > 0 && corr != 1.0 {
                            // SAFETY: row r of this job's output block, Dh values.
                            let orow =
                                unsafe { std::slice::from_raw_parts_mut(o_blk.add(r * d), dh) };
                            for e in orow.iter_mut() {
                                *e *= corr;
                            }
                        }
                    }
                    // O_blk (+)= P · V_blk
                    unsafe {
                        mm(
                            mq,
                            dh,
                            nk,
                            o_blk,
                            (d, 1),
                            j0 > 0,
                            sc.as_ptr(),
                            (nk, 1),
                            v.add(j0 * d3),
                            (d3, 1),
                            1.0,
                        );
                    }
                }
                for r in 0..mq {
                    let inv = 1.0 / row_sum[r];
                    // SAFETY: as above; `lse` entry (b, h, i0 + r) belongs to this job only.
                    unsafe {
                        let orow = std::slice::from_raw_parts_mut(o_blk.add(r * d), dh);
                        for e in orow.iter_mut() {
                            *e *= inv;
                        }
                        *l.get().add(bh * n + i0 + r) = row_max[r] + row_sum[r].ln();
                    }
                }
            }
        },
    );
}

/// Attention backward (FlashAttention-2 style, recomputing the probabilities from `lse`): returns
/// `dqkv` `[B, N, 3D]` given the forward inputs, its output `out`, the row log-sum-exps and `dout`.
/// Per (batch, head) job and query tile: `P = exp(S − lse)`, `dV += Pᵀ·dO`, `dP = dO·Vᵀ`,
/// `dS = P ∘ (dP − rowsum(dO ∘ O))`, `dQ += dS·K·scale`, `dK += dSᵀ·Q·scale`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    qkv: &[f32],
    s: AttnShape,
    scale: f32,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
) {
    attention_bwd_tiled(
        qkv,
        s,
        scale,
        out,
        lse,
        dout,
        dqkv,
        ATTN_BLOCK_Q,
        ATTN_BLOCK_KV,
    );
}

/// [`attention_bwd`] with explicit tile sizes.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_tiled(
    qkv: &[f32],
    s: AttnShape,
    scale: f32,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    bq: usize,
    bkv: usize,
) {
    let (n, dh, d) = (s.seq, s.head_dim, s.dim());
    let d3 = 3 * d;
    assert_eq!(qkv.len(), s.batch * n * d3);
    assert_eq!(dqkv.len(), qkv.len());
    assert_eq!(out.len(), s.batch * n * d);
    assert_eq!(dout.len(), out.len());
    assert_eq!(lse.len(), s.batch * s.heads * n);
    let dq_ptr = SharedMut(dqkv.as_mut_ptr());
    let qkv_ptr = qkv.as_ptr() as usize;
    let nk_max = bkv.min(n);
    (0..s.batch * s.heads).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; bq * nk_max],
                vec![0f32; bq * nk_max],
                vec![0f32; bq],
            )
        },
        |(p, dp, delta), bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let base = qkv_ptr as *const f32;
            // SAFETY: as in the forward; the d* pointers address this job's (batch, head) columns.
            let (q, k, v, dq, dk, dv) = unsafe {
                let row = base.add(b * n * d3);
                let drow = dq_ptr.get().add(b * n * d3);
                (
                    row.add(h * dh),
                    row.add(d + h * dh),
                    row.add(2 * d + h * dh),
                    drow.add(h * dh),
                    drow.add(d + h * dh),
                    drow.add(2 * d + h * dh),
                )
            };
            let o_head = &out[b * n * d..(b + 1) * n * d];
            let do_head = &dout[b * n * d..(b + 1) * n * d];
            let lse_head = &lse[bh * n..(bh + 1) * n];
            for i0 in (0..n).step_by(bq) {
                let mq = bq.min(n - i0);
                for r in 0..mq {
                    let at = (i0 + r) * d + h * dh;
                    delta[r] = dot(&o_head[at..at + dh], &do_head[at..at + dh]);
                }
                let q_blk = unsafe { q.add(i0 * d3) };
                let dq_blk = unsafe { dq.add(i0 * d3) };
                let do_blk = do_head[i0 * d + h * dh..].as_ptr();
                for j0 in (0..n).step_by(bkv) {
                    let nk = bkv.min(n - j0);
                    let (pp, dpp) = (&mut p[..mq * nk], &mut dp[..mq * nk]);
                    let (k_blk, v_blk) = unsafe { (k.add(j0 * d3), v.add(j0 * d3)) };
                    let (dk_blk, dv_blk) = unsafe { (dk.add(j0 * d3), dv.add(j0 * d3)) };
                    // SAFETY (all mm calls): strided views inside qkv / dout / this job's dqkv columns.
                    unsafe {
                        mm(
                            mq,
                            nk,
                            dh,
                            pp.as_mut_ptr(),
                            (nk, 1),
                            false,
                            q_blk,
                            (d3, 1),
                            k_blk,
                            (1, d3),
                            scale,
                        );
                    }
                    for r in 0..mq {
                        let m = lse_head[i0 + r];
                        for e in pp[r * nk..(r + 1) * nk].iter_mut() {
                            *e = exp(*e - m);
                        }
                    }
                    unsafe {
                        // dV_blk += Pᵀ · dO_blk      (Pᵀ[j][r] = p[r·nk + j] → strides (1, nk))
                        mm(
                            nk,
                            dh,
                            mq,
                            dv_blk,
                            (d3, 1),
                            true,
                            pp.as_ptr(),
                            (1, nk),
                            do_blk,
                            (d, 1),
                            1.0,
                        );
                        // dP = dO_blk · V_blkᵀ
                        mm(
                            mq,
                            nk,
                            dh,
                            dpp.as_mut_ptr(),
                            (nk, 1),
                            false,
                            do_blk,
                            (d, 1),
                            v_blk,
                            (1, d3),
                            1.0,
                        );
                    }
                    for r in 0..mq {
                        let dl = delta[r];
                        let (pr, dpr) = (&mut pp[r * nk..(r + 1) * nk], &dpp[r * nk..(r + 1) * nk]);
                        for j in 0..nk {
                            pr[j] *= dpr[j] - dl;
                        }
                    }
                    // pp now holds dS (unscaled)
                    unsafe {
                        // dQ_blk += dS · K_blk · scale
                        mm(
                            mq,
                            dh,
                            nk,
                            dq_blk,
                            (d3, 1),
                            true,
                            pp.as_ptr(),
                            (nk, 1),
                            k_blk,
                            (d3, 1),
                            scale,
                        );
                        // dK_blk += dSᵀ · Q_blk · scale
                        mm(
                            nk,
                            dh,
                            mq,
                            dk_blk,
                            (d3, 1),
                            true,
                            pp.as_ptr(),
                            (1, nk),
                            q_blk,
                            (d3, 1),
                            scale,
                        );
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (|x| ≤ 4: ~1e-9 absolute after cancellation).
    fn erf_ref(x: f64) -> f64 {
        let (mut term, mut acc) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            acc += term / (2 * n + 1) as f64;
        }
        acc * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_exp_match_f64() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -4000..=4000 {
            // the reference at the f32 input, so that input rounding is not counted
            let x = (i as f64 / 1000.0) as f32;
            worst_erf = worst_erf.max((erf(x) as f64 - erf_ref(x as f64)).abs());
        }
        for i in -8700..=8800 {
            let x = (i as f64 / 100.0) as f32;
            let want = (x as f64).exp();
            let r = (exp(x) as f64 - want).abs() / want;
            worst_exp = worst_exp.max(r);
        }
        assert!(worst_erf < 1e-6, "erf max abs error {worst_erf}");
        assert!(worst_exp < 1e-6, "exp max rel error {worst_exp}");
        assert!((erf(10.0) - 1.0).abs() < 1e-6 && (erf(-10.0) + 1.0).abs() < 1e-6);
        assert!(exp(-200.0) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }
}
