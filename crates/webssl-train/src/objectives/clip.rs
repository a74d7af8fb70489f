//! The CLIP objective: symmetric InfoNCE over L2-normalised image and text features with a learnable
//! temperature, and the clamp applied to that temperature after every optimizer step.
//!
//! Reference: open_clip `src/open_clip/loss.py::ClipLoss` (as MetaCLIP `src/mini_clip/loss.py` uses it)
//! and `src/training/train.py` (`logit_scale.clamp_(0, math.log(100))` after `optimizer.step()`);
//! `docs/reference/training-algorithms.md` §8. Golden values: `fixtures/clip/make_clip.py`.
//!
//! ```text
//! Î = I / max(‖I‖, 1e-12),  T̂ = T / max(‖T‖, 1e-12)          (F.normalize)
//! s = exp(t)                                                   (t = the `logit_scale` parameter)
//! L = ½ [ CE(s·Î T̂ᵀ, arange) + CE(s·T̂ Îᵀ, arange) ]
//! ```
//!
//! Computed in f32 (inputs in another float dtype are cast). World size 1: the distributed form
//! (`gather_with_grad`, `local_loss`, labels offset by rank) reduces to this. Across ranks,
//! [`clip_loss_rows`] is one rank's share of the global-batch loss — its own pairs as rows against
//! every gathered pair as columns, labels offset by the rank's first row — and the shares of all ranks
//! sum to [`clip_loss`] of the whole batch; `crate::clip::gather` routes its gradient back.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};

use webssl_models::kernels;
use webssl_models::params::to_host;

use super::f32_of;

/// `ln(1/0.07)`: CLIP's initial logit scale (temperature 0.07).
pub fn logit_scale_init() -> f64 {
    (1.0f64 / 0.07).ln()
}

/// `ln 100`: the clamp's upper bound (a maximum scale of 100).
pub fn logit_scale_max() -> f64 {
    100f64.ln()
}

/// The loss with what is worth logging about it.
pub struct ClipLossTerms {
    /// `[1]`, keeps the autodiff graph.
    pub loss: Tensor<1>,
    /// Fraction of images whose own caption scores highest (in-batch retrieval top-1).
    pub i2t_acc: f64,
    /// Fraction of captions whose own image scores highest.
    pub t2i_acc: f64,
}

/// Symmetric InfoNCE; see the module docs.
///
/// # Shapes
/// - image, text: `[B, E]` (unnormalised projections; row `i` of each is a pair)
/// - logit_scale: `[1]` (the parameter `t`, before `exp`)
/// - returns: `[1]`
pub fn clip_loss(image: Tensor<2>, text: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
    clip_loss_terms(image, text, logit_scale).loss
}

/// `F.normalize(x, dim=-1)` in f32: each row divided by `max(‖row‖, 1e-12)`.
///
/// # Shapes
/// `[B, E]` → `[B, E]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    const EPS: f64 = 1e-12;
    let x = f32_of(x);
    let n = x.clone().square().sum_dim(1).sqrt().clamp_min(EPS);
    x / n
}

/// [`clip_loss`] plus the in-batch retrieval accuracies.
pub fn clip_loss_terms(image: Tensor<2>, text: Tensor<2>, logit_scale: Tensor<1>) -> ClipLossTerms {
    let (i, t) = (l2_normalize(image), l2_normalize(text));
    let [b, _] = i.dims();
    let device = i.device();
    let scale = f32_of(logit_scale).exp().unsqueeze::<2>();
    // logits_per_text = logits_per_imageᵀ, so its row-wise CE is the column-wise CE of one matrix.
    let logits = i.matmul(t.transpose()) * scale;
    let eye = Tensor::<2>::eye(b, &device);
    let diag_mean = |lsm: Tensor<2>| kernels::sum(lsm * eye.clone()).div_scalar(b as f64);
    let i2t = diag_mean(log_softmax(logits.clone(), 1));
    let t2i = diag_mean(log_softmax(logits.clone(), 0));
    let loss = -(i2t + t2i).div_scalar(2.0);

    // Retrieval accuracy on the host from the untracked logits (first index on ties).
    let host = to_host(logits.inner());
    let (mut ok_i, mut ok_t) = (0usize, 0usize);
    if host.len() == b * b {
        let best = |vals: &mut dyn Iterator<Item = f32>| {
            let mut arg = 0;
            let mut max = f32::NEG_INFINITY;
            for (k, v) in vals.enumerate() {
                if v > max {
                    max = v;
                    arg = k;
                }
            }
            arg
        };
        for r in 0..b {
            ok_i += usize::from(best(&mut (0..b).map(|c| host[r * b + c])) == r);
            ok_t += usize::from(best(&mut (0..b).map(|c| host[c * b + r])) == r);
        }
    }
    ClipLossTerms {
        loss,
        i2t_acc: ok_i as f64 / b.max(1) as f64,
        t2i_acc: ok_t as f64 / b.max(1) as f64,
    }
}

/// One rank's share of the symmetric InfoNCE of a global batch of `N` pairs (open_clip `ClipLoss`
/// with `local_loss=True`): the pairs `rows` (this rank's, in the gathered order) as rows against all
/// `N` pairs as columns, both directions, summed and divided by `2N`, so that the shares of disjoint
/// `rows` covering `0..N` sum to [`clip_loss`] of the whole batch (open_clip means over the local rows
/// instead; with equal rows per rank that is `W` times this share). The accuracies are over `rows`.
///
/// # Shapes
/// - image, text: `[N, E]`, already L2-normalised ([`l2_normalize`]); row `i` of each is a pair
/// - logit_scale: `[1]` (the parameter `t`, before `exp`)
/// - returns: loss `[1]`
pub fn clip_loss_rows(
    image: Tensor<2>,
    text: Tensor<2>,
    logit_scale: Tensor<1>,
    rows: std::ops::Range<usize>,
) -> ClipLossTerms {
    let (image, text) = (f32_of(image), f32_of(text));
    let [n_all, _] = image.dims();
    let n = rows.len();
    let device = image.device();
    let scale = f32_of(logit_scale).exp().unsqueeze::<2>();
    let mine = |x: &Tensor<2>| x.clone().narrow(0, rows.start, n);
    // logits_per_image[rows] and logits_per_text[rows]: [n, N] each.
    let per_image = mine(&image).matmul(text.clone().transpose()) * scale.clone();
    let per_text = mine(&text).matmul(image.transpose()) * scale;
    let mut onehot = vec![0f32; n * n_all];
    for i in 0..n {
        onehot[i * n_all + rows.start + i] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, n_all]), &device);
    let picked = |logits: Tensor<2>| kernels::sum(log_softmax(logits, 1) * onehot.clone());
    let loss =
        -(picked(per_image.clone()) + picked(per_text.clone())).div_scalar(2.0 * n_all as f64);
    let correct = |logits: Tensor<2>| {
        let host = to_host(logits.inner());
        (0..n)
            .filter(|&i| {
                let row = host.get(i * n_all..(i + 1) * n_all).unwrap_or(&[]);
                let mut best = (0, f32::NEG_INFINITY);
                for (k, &v) in row.iter().enumerate() {
                    if v > best.1 {
                        best = (k, v);
                    }
                }
                !row.is_empty() && best.0 == rows.start + i
            })
            .count()
    };
    ClipLossTerms {
        i2t_acc: correct(per_image) as f64 / n.max(1) as f64,
        t2i_acc: correct(per_text) as f64 / n.max(1) as f64,
        loss,
    }
}

/// `t.clamp(0, ln 100)`, applied to the logit-scale parameter after every optimizer step.
pub fn clamp_logit_scale(t: Tensor<1>) -> Tensor<1> {
    t.clamp(0.0, logit_scale_max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn perfectly_aligned_pairs_at_high_scale_have_near_zero_loss() {
        let dev = Device::flex();
        let x = Tensor::<2>::eye(4, &dev);
        let t = Tensor::<1>::from_data(TensorData::new(vec![logit_scale_max() as f32], [1]), &dev);
        let terms = clip_loss_terms(x.clone(), x * 3.0, t);
        let v = to_host(terms.loss)[0];
        // Off-diagonal cosine 0, diagonal 1: CE = ln(1 + 3·e^-100) ≈ 0.
        assert!(v.abs() < 1e-6, "{v}");
        assert_eq!((terms.i2t_acc, terms.t2i_acc), (1.0, 1.0));
    }

    #[test]
    fn the_shares_of_disjoint_rows_sum_to_the_whole_batch_loss() {
        let dev = Device::flex();
        let (n, e) = (5, 3);
        let vals = |salt: usize| -> Vec<f32> {
            (0..n * e)
                .map(|i| (((i * 37 + salt * 11) % 17) as f32 - 8.0) / 5.0)
                .collect()
        };
        let image = l2_normalize(Tensor::<2>::from_data(
            TensorData::new(vals(1), [n, e]),
            &dev,
        ));
        let text = l2_normalize(Tensor::<2>::from_data(
            TensorData::new(vals(2), [n, e]),
            &dev,
        ));
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.3f32], [1]), &dev);
        let whole = clip_loss_terms(image.clone(), text.clone(), t.clone());
        let a = clip_loss_rows(image.clone(), text.clone(), t.clone(), 0..2);
        let b = clip_loss_rows(image, text, t, 2..5);
        let v = |x: Tensor<1>| to_host(x)[0];
        let (whole_l, sum) = (v(whole.loss), v(a.loss) + v(b.loss));
        assert!((whole_l - sum).abs() < 1e-6, "{whole_l} vs {sum}");
        assert!(whole_l > 0.1, "a non-trivial loss: {whole_l}");
        // Accuracies: counts over the rows add up to the whole batch's.
        let acc = (a.i2t_acc * 2.0 + b.i2t_acc * 3.0) / 5.0;
        assert!(
            (acc - whole.i2t_acc).abs() < 1e-12,
            "{acc} vs {}",
            whole.i2t_acc
        );
        let acc = (a.t2i_acc * 2.0 + b.t2i_acc * 3.0) / 5.0;
        assert!(
            (acc - whole.t2i_acc).abs() < 1e-12,
            "{acc} vs {}",
            whole.t2i_acc
        );
    }

    #[test]
    fn constants() {
        assert!((logit_scale_init() - 2.659_260_036_932_778).abs() < 1e-12);
        assert!((logit_scale_max() - 4.605_170_185_988_092).abs() < 1e-12);
    }
}
