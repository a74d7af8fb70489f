//! CLIP across ranks: the features of every rank's pairs all-gathered, each rank's loss local to its
//! own pairs, and the gradient routed back to the towers through the host collectives — what open_clip
//! does with `gather_with_grad=True, local_loss=True` and DDP (docs/reference/training-algorithms.md §8),
//! built on [`Dist::all_gather_f32`] and [`Dist::all_reduce_f32`] because the features must cross processes.
//!
//! One step on rank `r` of `W`, with `n_r` captioned pairs and `N = Σ n_s`:
//!
//! ```text
//! f_r, g_r  = normalised image / text features [n_r, E] (with grad), t = logit scale
//! F, G      = all_gather(f_r), all_gather(g_r)                      [N, E], detached
//! L_r       = W · clip_loss_rows(F̃, G̃, t̃, rows of r)               on leaf copies F̃, G̃, t̃
//! dF, dG    = Σ_s ∂L_s/∂F̃, Σ_s ∂L_s/∂G̃                              (all-reduce sum)
//! surrogate = Σ f_r ⊙ dF[rows of r] + Σ g_r ⊙ dG[rows of r] + t · ∂L_r/∂t̃   (constants detached)
//! ```
//!
//! Backward of the surrogate gives rank `r` the parameter gradient `Σ_s ∂L_s/∂f_r · ∂f_r/∂θ +
//! ∂L_r/∂t · ∂t/∂θ`; averaging over ranks (`ParamGrads::all_reduce_mean`) then gives
//! `(1/W) Σ_s ∂L_s/∂θ`, the gradient of the global-batch loss, since the shares
//! [`clip_loss_rows`] of all ranks sum to it. The factor `W` (open_clip: the local mean over `B`
//! rows, with `N = W·B`) makes this hold for unequal `n_r` too, which happens here: pairs without a
//! caption are dropped per rank. Ranks with no pair still take part in every collective.

use burn::tensor::{Device, Tensor, TensorData};

use webssl_models::kernels;
use webssl_models::params::{scalar, to_host};

use crate::dist::{Dist, ReduceOp};
use crate::objectives::clip::clip_loss_rows;

/// The normalised features of the global batch on the host, in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    /// `[N, E]` row-major.
    pub image: Vec<f32>,
    /// `[N, E]` row-major.
    pub text: Vec<f32>,
    /// Pairs per rank (`N` = their sum).
    pub counts: Vec<usize>,
    /// `E`.
    pub dim: usize,
}

impl Gathered {
    /// Concatenates per-rank `(image, text)` features (`[n_s, E]` each, row-major).
    pub fn concat(parts: &[(Vec<f32>, Vec<f32>)], dim: usize) -> Self {
        Gathered {
            image: parts.iter().flat_map(|p| p.0.iter().copied()).collect(),
            text: parts.iter().flat_map(|p| p.1.iter().copied()).collect(),
            counts: parts.iter().map(|p| p.0.len() / dim.max(1)).collect(),
            dim,
        }
    }

    /// `N`.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// The rows of `rank` in the gathered order.
    pub fn rows(&self, rank: usize) -> std::ops::Range<usize> {
        let start = self.counts[..rank].iter().sum();
        start..start + self.counts[rank]
    }
}

/// The pair counts of every rank (every rank calls it).
pub fn pair_counts(dist: &Dist, n: usize) -> Vec<usize> {
    let mut table = vec![0f64; dist.world_size()];
    table[dist.rank()] = n as f64;
    dist.all_reduce_f64("CLIP pair counts", &mut table, ReduceOp::Sum);
    table.into_iter().map(|c| c as usize).collect()
}

/// All-gathers this rank's `[n, E]` image and text features given the `counts` of every rank
/// ([`pair_counts`]): one collective, each rank's block padded to the largest count.
pub fn gather(dist: &Dist, image: &[f32], text: &[f32], counts: &[usize], dim: usize) -> Gathered {
    let m = counts.iter().copied().max().unwrap_or(0);
    let block = 2 * m * dim;
    let mut local = vec![0f32; block];
    local[..image.len()].copy_from_slice(image);
    local[m * dim..m * dim + text.len()].copy_from_slice(text);
    let all = dist.all_gather_f32("CLIP features", &local);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = counts
        .iter()
        .enumerate()
        .map(|(s, &c)| {
            let b = &all[s * block..(s + 1) * block];
            (b[..c * dim].to_vec(), b[m * dim..(m + c) * dim].to_vec())
        })
        .collect();
    Gathered::concat(&parts, dim)
}

/// This rank's local loss on leaf copies of the gathered features and its gradients.
#[derive(Debug, Clone)]
pub struct LocalGrads {
    /// This rank's share of the global-batch loss ([`clip_loss_rows`], not multiplied by `W`).
    pub share: f64,
    /// Correct top-1 retrievals among this rank's rows, image→text and text→image.
    pub i2t_correct: usize,
    pub t2i_correct: usize,
    /// `∂(W·share)/∂F̃`, `[N, E]`.
    pub d_image: Vec<f32>,
    /// `∂(W·share)/∂G̃`, `[N, E]`.
    pub d_text: Vec<f32>,
    /// `∂(W·share)/∂t̃`.
    pub d_logit_scale: f64,
}

/// The loss of `rank`'s rows of `g` against all of them, times `world`, and its gradient with respect
/// to the gathered features and the logit scale `t` (computed on `ad`, an autodiff device). A rank
/// without pairs has a zero loss and zero gradients.
pub fn local_loss_grads(
    g: &Gathered,
    rank: usize,
    world: usize,
    logit_scale: f32,
    ad: &Device,
) -> LocalGrads {
    let (n_all, e) = (g.total(), g.dim);
    let rows = g.rows(rank);
    if rows.is_empty() {
        return LocalGrads {
            share: 0.0,
            i2t_correct: 0,
            t2i_correct: 0,
            d_image: vec![0.0; n_all * e],
            d_text: vec![0.0; n_all * e],
            d_logit_scale: 0.0,
        };
    }
    let leaf = |v: &[f32]| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [n_all, e]), ad).require_grad()
    };
    let (image, text) = (leaf(&g.image), leaf(&g.text));
    let t = Tensor::<1>::from_data(TensorData::new(vec![logit_scale], [1]), ad).require_grad();
    let n = rows.len();
    let terms = clip_loss_rows(image.clone(), text.clone(), t.clone(), rows);
    let share = scalar(terms.loss.clone());
    let grads = terms.loss.mul_scalar(world as f64).backward();
    let grad_of = |x: &Tensor<2>| {
        x.grad(&grads)
            .map(to_host)
            .unwrap_or_else(|| vec![0.0; n_all * e])
    };
    LocalGrads {
        share,
        i2t_correct: (terms.i2t_acc * n as f64).round() as usize,
        t2i_correct: (terms.t2i_acc * n as f64).round() as usize,
        d_image: grad_of(&image),
        d_text: grad_of(&text),
        d_logit_scale: t
            .grad(&grads)
            .map(to_host)
            .and_then(|v| v.first().copied())
            .unwrap_or(0.0) as f64,
    }
}

/// Sums the ranks' [`LocalGrads::d_image`]/[`LocalGrads::d_text`] in place (one all-reduce).
pub fn sum_feature_grads(dist: &Dist, local: &mut LocalGrads) {
    if dist.world_size() == 1 {
        return;
    }
    let n = local.d_image.len();
    let mut buf = std::mem::take(&mut local.d_image);
    buf.append(&mut local.d_text);
    dist.all_reduce_f32("CLIP feature gradients", &mut buf, ReduceOp::Sum);
    local.d_text = buf.split_off(n);
    local.d_image = buf;
}

/// The scalar whose backward through the towers gives this rank's parameter gradient:
/// `Σ f ⊙ d_f + Σ g ⊙ d_g + t · d_t`, with `d_f`, `d_g` this rank's rows of the summed feature
/// gradients and `d_t` its own `∂L_r/∂t` (all constants).
///
/// # Shapes
/// - image, text: `[n, E]` (this rank's normalised features, with grad); d_image, d_text: `n·E`
/// - logit_scale: `[1]` (the parameter); returns `[1]`
pub fn surrogate(
    image: Tensor<2>,
    text: Tensor<2>,
    logit_scale: Tensor<1>,
    d_image: &[f32],
    d_text: &[f32],
    d_logit_scale: f64,
) -> Tensor<1> {
    let dims = image.dims();
    let device = image.device();
    let constant = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), dims), &device);
    kernels::sum(image * constant(d_image))
        + kernels::sum(text * constant(d_text))
        + logit_scale.mul_scalar(d_logit_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_rows_follow_rank_order() {
        let g = Gathered::concat(
            &[
                (vec![1.0, 2.0], vec![3.0, 4.0]),
                (vec![], vec![]),
                (vec![5.0, 6.0, 7.0, 8.0], vec![9.0, 10.0, 11.0, 12.0]),
            ],
            2,
        );
        assert_eq!(g.counts, [1, 0, 2]);
        assert_eq!((g.rows(0), g.rows(1), g.rows(2)), (0..1, 1..1, 1..3));
        assert_eq!(g.total(), 3);
        assert_eq!(g.text[2..], [9.0, 10.0, 11.0, 12.0]);
        // One process: the gather is the local features.
        let d = Dist::single();
        let one = gather(&d, &[1.0, 2.0], &[3.0, 4.0], &pair_counts(&d, 1), 2);
        assert_eq!(
            one,
            Gathered::concat(&[(vec![1.0, 2.0], vec![3.0, 4.0])], 2)
        );
    }
}
