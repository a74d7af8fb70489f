//! Training augmentations: DINOv2 multi-crop (`DataAugmentationDINO`), the MAE crop and the CLIP crop,
//! reproducing torchvision-on-PIL pixel for pixel.
//!
//! References: `facebookresearch/dinov2` `dinov2/data/augmentations.py`, `dinov2/data/transforms.py`
//! (docs/reference/training-algorithms.md §2), `facebookresearch/mae` `main_pretrain.py` (§7.5),
//! `facebookresearch/MetaCLIP` `src/mini_clip/transform.py` (§8), torchvision 0.2x v1 transforms on PIL
//! images (`RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter`, `RandomGrayscale`,
//! `GaussianBlur`, `RandomSolarize`, `ToTensor`, `Normalize`) and Pillow's C code they end in.
//!
//! Parameter *sampling* is separated from the *pixel ops*: [`ViewSpec::sample`] draws a
//! [`ViewParams`] from an explicit [`rand_core::Rng`] (no global RNG; the caller derives the stream,
//! e.g. [`crate::sampler::rng_stream`]`(seed, "augment", &[epoch, sample])`), and [`render_view`]
//! applies fixed parameters. The parity tests feed the fixture's parameters to the pixel ops.
//!
//! Pixel ops, each bit-exact to the reference on `u8` unless stated:
//! - crop + bicubic resize: [`crate::resize::crop_resize`] (Pillow `resize` on the cropped image);
//! - flip: column reversal;
//! - brightness / contrast / saturation: `PIL.ImageEnhance` = `Image.blend(degenerate, img, f)`,
//!   computed as Pillow's `ImagingBlend` in `f32` (`in1 + f·(in2 − in1)`, truncated; clamped only
//!   when `f ∉ [0, 1]`). Contrast's degenerate is the rounded mean of the `L` image
//!   (`int(mean + 0.5)`), saturation's the `L` image itself;
//! - hue: torchvision `F_pil.adjust_hue`: PIL `RGB→HSV` (`Convert.c::rgb2hsv_row`, float/double as
//!   in C), `H += uint8(int32(hue·255))` with wrap-around, PIL `HSV→RGB` (`hsv2rgb`, C `round`);
//! - grayscale: PIL `convert("L")`, `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`, replicated ×3;
//! - solarize: `v ≥ 128 → 255 − v` (`ImageOps.solarize`);
//! - Gaussian blur: torchvision `F.gaussian_blur` on PIL goes `u8 → f32` tensor, reflect padding 4,
//!   a 9×9 `f32` conv2d with the outer product of the normalised 1-D `f32` kernel, `round` (half to
//!   even), `u8`. We compute the same kernel in `f32` and convolve separably in `f32`: the sum order
//!   differs from torch's conv, so a value within float noise of a `.5` boundary could round the
//!   other way (measured: 0 of 98,916 values of the fixtures; ≤ 6 of 150,528 values, by 1 level, on
//!   224² photo crops at σ ∈ {0.1, 0.7, 1.3, 1.9}; the test allows 1 level on ≤ 1%);
//! - `ToTensor` + `Normalize`: [`crate::transform::Normalize`] (bit-exact `f32`).
//!
//! Speed: on x86-64 CPUs with AVX2 the colour ops run 8 pixels at a time (module `simd`: the same
//! `f32`/`f64`/integer operations in the same order per lane, with every branch of `rgb2hsv` /
//! `hsv2rgb` computed and selected, so the bytes are identical; checked against the scalar code on
//! every RGB colour), the blur is compiled for AVX2, and [`render_view`] keeps the view and blur
//! buffers in per-thread scratch.
//!
//! Random parameters follow torchvision's algorithms and distributions (RandomResizedCrop's 10
//! tries with log-uniform ratio and centre-crop fallback, `RandomApply` as `u < p`, a uniformly random
//! permutation of the four jitter ops, factors uniform in `[max(0, 1 − b), 1 + b]`, hue uniform in
//! `[−h, h]`, σ uniform in `[0.1, 2.0]`), drawn from ChaCha instead of torch's generator: the
//! distributions match, the individual draws do not (docs/reference/training-algorithms.md §9).
//!
//! **Blur probabilities.** dinov2's `GaussianBlur(p)` passes `1 − p` to `RandomApply`, so the
//! released models were trained with global-1 blur 0.0, global-2 0.9, local 0.5 instead of the
//! nominal 1.0 / 0.1 / 0.5 (facebookresearch/dinov2#411, dinov3#286/#342). [`BlurProbabilities`]
//! selects either; the default is `Effective`, reproducing DINOv2 / Web-DINO.

mod multicrop;
mod params;
mod pixel;
#[cfg(target_arch = "x86_64")]
mod simd;
mod view;

pub use multicrop::{BlurProbabilities, DinoAugConfig, DinoAugment, MultiCrop, MultiCropParams};
pub use params::{
    ColorJitter, CropParams, JitterParams, ViewParams, ViewSpec, random_resized_crop_params,
};
pub use pixel::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, apply_crop, color_jitter,
    gaussian_blur, gaussian_kernel1d, grayscale, hflip, solarize,
};
pub use view::{
    BLUR_KERNEL, ClipTransform, MaeTransform, SingleViewTransform, render_view, render_view_u8,
};

/// A test image with gradients in R and G and a pattern in B, for the unit tests of every part.
#[cfg(test)]
fn photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}
