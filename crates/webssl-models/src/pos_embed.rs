//! Resampling learned absolute position embeddings to another patch grid, exactly as the reference code
//! does it, as a differentiable pair of small matrix products.
//!
//! PyTorch's `F.interpolate(mode="bicubic")` is separable: every output row/column is a fixed weighted sum
//! of 4 (or, with antialias, `4·scale`) input rows/columns. We compute those weights on the host, in f32
//! with the same formulas and clamping as ATen's CPU kernels (`UpSampleKernel.cpp`: cubic convolution
//! with A = -0.75, border indices clamped; antialiased path with the a = -0.5 filter, support scaled by the
//! downscale factor and weights normalised), and apply them as `W_h · P · W_wᵀ`. That keeps the result
//! within float rounding of PyTorch, keeps gradients flowing during multi-crop training (local crops use a
//! 7×7 grid), and costs two tiny GEMMs.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::PosInterp;

/// Row-major `[output, input]` weights of one 1-D resampling axis.
pub fn axis_weights(input: usize, output: usize, interp: PosInterp) -> Vec<f32> {
    match interp {
        PosInterp::Dinov2 { offset, antialias } => {
            // dinov2 passes `scale_factor = (output + offset) / input`; ATen then maps with 1/scale_factor.
            let scale_factor = (output as f64 + offset) / input as f64;
            debug_assert_eq!((input as f64 * scale_factor).floor() as usize, output);
            let step = (1.0 / scale_factor) as f32;
            if antialias {
                antialiased(input, output, step)
            } else {
                cubic(input, output, step)
            }
        }
        PosInterp::Size => cubic(input, output, input as f32 / output as f32),
        PosInterp::SizeAntialias => antialiased(input, output, input as f32 / output as f32),
    }
}

/// ATen `upsample_bicubic2d` (align_corners=False): 4 taps, cubic convolution A = -0.75.
fn cubic(input: usize, output: usize, step: f32) -> Vec<f32> {
    const A: f32 = -0.75;
    let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let mut w = vec![0f32; output * input];
    for o in 0..output {
        let real = step * (o as f32 + 0.5) - 0.5;
        // guard_index_and_lambda
        let idx = (real.floor() as i64).min(input as i64 - 1);
        let t = (real - idx as f32).clamp(0.0, 1.0);
        let coeffs = [conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t)];
        for (k, c) in coeffs.iter().enumerate() {
            let i = (idx - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            w[o * input + i] += c;
        }
    }
    w
}

/// ATen `_upsample_bicubic2d_aa`: PIL-style filter (a = -0.5), support widened when downscaling.
fn antialiased(input: usize, output: usize, scale: f32) -> Vec<f32> {
    const A: f32 = -0.5;
    let filter = |x: f32| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut w = vec![0f32; output * input];
    for o in 0..output {
        let center = scale * (o as f32 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let row = &mut w[o * input..(o + 1) * input];
        let mut total = 0f32;
        for j in xmin..xmax {
            let v = filter((j as f32 - center + 0.5) * invscale);
            row[j] = v;
            total += v;
        }
        if total != 0.0 {
            row[xmin..xmax].iter_mut().for_each(|v| *v /= total);
        }
    }
    w
}

/// Resamples `pos` (`[1, 1 + M·M, D]`, CLS first) to an `rows × cols` patch grid.
///
/// # Shapes
/// - pos: `[1, 1 + M·M, D]`
/// - returns: `[1, 1 + rows·cols, D]`
pub fn resample(pos: Tensor<3>, rows: usize, cols: usize, interp: PosInterp) -> Tensor<3> {
    let [_, n, d] = pos.dims();
    let m = ((n - 1) as f64).sqrt().round() as usize;
    assert_eq!(
        m * m,
        n - 1,
        "position embedding of {n} tokens is not 1 + a square grid"
    );
    let device = pos.device();
    let cls = pos.clone().slice([0..1, 0..1, 0..d]);
    let grid = pos.slice([0..1, 1..n, 0..d]).reshape([m, m, d]);
    let wh = matrix(axis_weights(m, rows, interp), rows, m, &device);
    let ww = matrix(axis_weights(m, cols, interp), cols, m, &device);
    // Width first (ATen reduces the innermost axis first), then height.
    // [m, m, d] -> [m, d, m] · [m, cols] -> [m, d, cols]
    let x = grid.swap_dims(1, 2).matmul(ww.transpose().unsqueeze::<3>());
    // [m, d·cols] -> [rows, d·cols] -> [rows, d, cols] -> [rows, cols, d]
    let x = wh
        .matmul(x.reshape([m, d * cols]))
        .reshape([rows, d, cols])
        .swap_dims(1, 2);
    Tensor::cat(vec![cls, x.reshape([1, rows * cols, d])], 1)
}

fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_exact() {
        let w = cubic(5, 5, 1.0);
        for o in 0..5 {
            for i in 0..5 {
                assert_eq!(w[o * 5 + i], if o == i { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for interp in [
            PosInterp::Size,
            PosInterp::SizeAntialias,
            PosInterp::Dinov2 {
                offset: 0.1,
                antialias: false,
            },
        ] {
            for (i, o) in [(16, 7), (16, 27), (4, 3), (2, 9)] {
                let w = axis_weights(i, o, interp);
                for r in 0..o {
                    let s: f32 = w[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{interp:?} {i}->{o} row {r}: {s}");
                }
            }
        }
    }

    /// Values from `torch.nn.functional.interpolate` on `arange(4.)` reshaped `[1,1,1,4]` (torch 2.15):
    /// size=7 → cubic A=-0.75; antialias size=2.
    #[test]
    // The reference values are torch's output as printed (more digits than an f32 holds).
    #[allow(clippy::excessive_precision)]
    fn matches_torch_on_a_ramp() {
        let ramp = [0f32, 1.0, 2.0, 3.0];
        let apply = |w: &[f32], o: usize| {
            (0..o)
                .map(|r| (0..4).map(|i| w[r * 4 + i] * ramp[i]).sum::<f32>())
                .collect::<Vec<_>>()
        };
        let up = apply(&axis_weights(4, 7, PosInterp::Size), 7);
        let torch_up = [
            -0.09921646,
            0.27924502,
            0.89659208,
            1.5000001,
            2.10340858,
            2.72075391,
            3.09921646,
        ];
        for (a, b) in up.iter().zip(torch_up) {
            assert!((a - b).abs() < 1e-5, "{up:?}");
        }
        let down = apply(&axis_weights(4, 2, PosInterp::SizeAntialias), 2);
        let torch_down = [0.58677685, 2.41322303];
        for (a, b) in down.iter().zip(torch_down) {
            assert!((a - b).abs() < 1e-5, "{down:?}");
        }
    }
}
