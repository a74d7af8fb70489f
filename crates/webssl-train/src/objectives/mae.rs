//! MAE's reconstruction loss and the per-batch mask tensors (`models_mae.py` `forward_loss`,
//! docs/reference/training-algorithms.md §7.4).
//!
//! Target = the patchified input (normalised pixels, as the model sees them); with `norm_pix_loss`
//! each patch's `p²·C` values are standardised by their own mean and **unbiased** variance
//! (`torch.var`'s default), `(x − mean) / √(var + 1e-6)`. The squared error is averaged over a patch's
//! values, then over the removed patches only: `Σ mask · mse / Σ mask`.

use burn::tensor::{Device, Int, Tensor, TensorData};
use webssl_data::masks::MaeMasks;
use webssl_models::kernels;
use webssl_models::mae::patchify;

/// The per-patch normalised target.
///
/// # Shapes
/// - imgs: `[B, C, H, W]`; returns `[B, N, p·p·C]`
pub fn norm_pix_target(imgs: Tensor<4>, patch_size: usize) -> Tensor<3> {
    let target = patchify(imgs, patch_size);
    let values = target.dims()[2];
    let mean = target.clone().mean_dim(2);
    let centered = target - mean;
    // Unbiased variance over the patch (n − 1), as torch.var.
    let var = centered.clone().powi_scalar(2).sum_dim(2) / (values as f64 - 1.0);
    centered / (var + 1e-6).sqrt()
}

/// The MAE loss: mean squared error per patch, averaged over the removed patches.
///
/// # Shapes
/// - imgs: `[B, C, H, W]`, pred: `[B, N, p·p·C]`, mask: `[B, N]` (1 = removed, 0 = kept)
/// - returns: `[1]`
pub fn mae_loss(
    imgs: Tensor<4>,
    pred: Tensor<3>,
    mask: Tensor<2>,
    patch_size: usize,
    norm_pix: bool,
) -> Tensor<1> {
    let target = if norm_pix {
        norm_pix_target(imgs, patch_size)
    } else {
        patchify(imgs, patch_size)
    };
    let [b, n, _] = pred.dims();
    let per_patch = (pred - target).powi_scalar(2).mean_dim(2).reshape([b, n]);
    kernels::sum(per_patch * mask.clone()) / kernels::sum(mask)
}

/// A batch's MAE masks as tensors.
pub struct MaskTensors {
    /// `[B, K]`: the kept token indices of each sample, in the order they enter the encoder.
    pub ids_keep: Tensor<2, Int>,
    /// `[B, N]`: the inverse permutation of each sample's `ids_shuffle`.
    pub ids_restore: Tensor<2, Int>,
    /// `[B, N]`: 1 = removed (the loss weight).
    pub mask: Tensor<2>,
}

impl MaskTensors {
    pub fn new(m: &MaeMasks, device: &Device) -> Self {
        let (b, n, k) = (m.n, m.length, m.len_keep);
        let keep: Vec<i64> = m
            .ids_shuffle
            .chunks(n.max(1))
            .flat_map(|row| row[..k].iter().copied())
            .collect();
        MaskTensors {
            ids_keep: Tensor::from_data(TensorData::new(keep, [b, k]), device),
            ids_restore: Tensor::from_data(TensorData::new(m.ids_restore.clone(), [b, n]), device),
            mask: Tensor::from_data(TensorData::new(m.mask.clone(), [b, n]), device),
        }
    }
}
