//! One view from fixed parameters ([`render_view`]: crop, the pixel ops in dinov2's order,
//! `ToTensor` + `Normalize`), and the single-view transforms of MAE and CLIP that sample and render it.

use image::RgbImage;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::params::{ViewParams, ViewSpec, coin, random_resized_crop_params};
use super::pixel::{
    BlurScratch, apply_crop, color_jitter, gaussian_blur_in_place, grayscale, hflip, solarize,
};
use crate::resize::{Filter, PassOrder, crop_resize_into};
use crate::transform::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize};
use crate::{DataError, Result};

/// DINOv2's blur kernel size.
pub const BLUR_KERNEL: usize = 9;

/// Applies one view's fixed parameters: crop + resize, flip, jitter, grayscale, blur, solarize
/// (dinov2 order), then `ToTensor` + `Normalize` into `out` (`3·size·size`, CHW).
pub fn render_view(
    img: &RgbImage,
    p: &ViewParams,
    size: u32,
    norm: &Normalize,
    order: PassOrder,
    out: &mut [f32],
) -> Result<()> {
    // The view and the blur buffers are per-thread scratch: a DINO image renders 10 views, and
    // fresh buffers for each cost more in page faults than the colour ops.
    VIEW_SCRATCH.with(|cell| {
        let mut fresh = ViewScratch::default();
        let mut guard = cell.try_borrow_mut();
        let sc = match &mut guard {
            Ok(sc) => &mut **sc,
            Err(_) => &mut fresh,
        };
        let mut buf = std::mem::take(&mut sc.view);
        crop_resize_into(
            img,
            p.crop.left,
            p.crop.top,
            p.crop.width,
            p.crop.height,
            size,
            size,
            Filter::Bicubic,
            order,
            &mut buf,
        )?;
        let mut v = RgbImage::from_raw(size, size, buf).expect("crop output has size² pixels");
        apply_pixel_ops(&mut v, p, &mut sc.blur);
        let res = norm.apply_into(&v, out);
        sc.view = v.into_raw();
        res
    })
}

#[derive(Default)]
struct ViewScratch {
    view: Vec<u8>,
    blur: BlurScratch,
}

thread_local! {
    static VIEW_SCRATCH: std::cell::RefCell<ViewScratch> =
        std::cell::RefCell::new(ViewScratch::default());
}

/// [`render_view`] before normalisation (the `u8` view).
pub fn render_view_u8(
    img: &RgbImage,
    p: &ViewParams,
    size: u32,
    order: PassOrder,
) -> Result<RgbImage> {
    let mut v = apply_crop(img, &p.crop, size, order)?;
    apply_pixel_ops(&mut v, p, &mut BlurScratch::default());
    Ok(v)
}

/// Everything after the crop, in dinov2's order.
fn apply_pixel_ops(v: &mut RgbImage, p: &ViewParams, blur: &mut BlurScratch) {
    if p.flip {
        hflip(v);
    }
    if let Some(j) = &p.jitter {
        color_jitter(v, j);
    }
    if p.grayscale {
        grayscale(v);
    }
    if let Some(s) = p.blur_sigma {
        gaussian_blur_in_place(v, BLUR_KERNEL, s, blur);
    }
    if p.solarize {
        solarize(v, 128);
    }
}

/// The one check on the source image before sampling: a crop of an empty image is undefined.
pub(super) fn check_image(img: &RgbImage) -> Result<()> {
    if img.width() == 0 || img.height() == 0 {
        return Err(DataError::config("image", "empty image"));
    }
    Ok(())
}

/// A single random view: RandomResizedCrop (bicubic) + optional flip + normalise. Used for MAE
/// (`main_pretrain.py`: scale (0.2, 1.0), flip 0.5, ImageNet stats) and the CLIP baseline
/// (MetaCLIP `transform.py`: scale (0.9, 1.0), no flip, CLIP stats).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleViewTransform {
    pub size: u32,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub p_flip: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default)]
    pub pass_order: PassOrder,
}

/// MAE pretraining transform.
pub type MaeTransform = SingleViewTransform;
/// CLIP (MetaCLIP) training transform.
pub type ClipTransform = SingleViewTransform;

impl SingleViewTransform {
    /// MAE: `RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=3)`, `RandomHorizontalFlip()`,
    /// `ToTensor()`, `Normalize(ImageNet)`.
    pub fn mae(size: u32) -> Self {
        SingleViewTransform {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            p_flip: 0.5,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            pass_order: PassOrder::default(),
        }
    }

    /// MetaCLIP: `RandomResizedCrop(size, scale=(0.9, 1.0), BICUBIC)`, `ToTensor()`,
    /// `Normalize(OPENAI_CLIP)`; no flip.
    pub fn clip(size: u32) -> Self {
        SingleViewTransform {
            size,
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            p_flip: 0.0,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pass_order: PassOrder::default(),
        }
    }

    fn spec(&self) -> ViewSpec {
        ViewSpec {
            size: self.size,
            scale: self.scale,
            ratio: self.ratio,
            p_flip: self.p_flip,
            jitter: None,
            p_grayscale: 0.0,
            p_blur: 0.0,
            blur_sigma: (0.1, 2.0),
            p_solarize: 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.std.contains(&0.0) {
            return Err(DataError::config("std", "must be non-zero"));
        }
        self.spec().validate("transform")
    }

    /// Floats per view (`3·size²`).
    pub fn view_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Draws the crop and flip for a `width`×`height` image.
    pub fn sample<R: Rng>(&self, rng: &mut R, width: u32, height: u32) -> ViewParams {
        // With p_flip = 0 no draw is consumed by the flip in torchvision either (no flip transform).
        let crop = random_resized_crop_params(rng, width, height, self.scale, self.ratio);
        let flip = self.p_flip > 0.0 && coin(rng, self.p_flip);
        ViewParams {
            crop,
            flip,
            jitter: None,
            grayscale: false,
            blur_sigma: None,
            solarize: false,
        }
    }

    /// Samples and renders into `out` (`3·size²`, CHW); returns the parameters used.
    pub fn apply_into<R: Rng>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<ViewParams> {
        check_image(img)?;
        let p = self.sample(rng, img.width(), img.height());
        render_view(
            img,
            &p,
            self.size,
            &Normalize::torchvision(self.mean, self.std),
            self.pass_order,
            out,
        )?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::photo;
    use crate::sampler::rng_stream;

    #[test]
    fn mae_and_clip_transforms() {
        let img = photo(200, 150);
        let mae = SingleViewTransform::mae(64);
        let clip = SingleViewTransform::clip(64);
        mae.validate().unwrap();
        clip.validate().unwrap();
        let mut out = vec![0f32; mae.view_len()];
        let mut rng = rng_stream(11, "augment-test", &[5]);
        let mut flips = 0;
        for _ in 0..400 {
            let p = clip.sample(&mut rng, 200, 150);
            assert!(!p.flip);
            let frac = (p.crop.width * p.crop.height) as f64 / 30000.0;
            assert!(
                frac >= 0.9 * 0.98 || (p.crop.width, p.crop.height) == (200, 150),
                "{p:?}"
            );
            flips += mae.sample(&mut rng, 200, 150).flip as u32;
        }
        assert!((150..250).contains(&flips), "{flips}");
        let p = mae.apply_into(&img, &mut rng, &mut out).unwrap();
        let mut again = vec![0f32; out.len()];
        render_view(
            &img,
            &p,
            64,
            &Normalize::torchvision(IMAGENET_MEAN, IMAGENET_STD),
            PassOrder::default(),
            &mut again,
        )
        .unwrap();
        assert_eq!(out, again);
        assert!(mae.apply_into(&img, &mut rng, &mut out[1..]).is_err());
    }
}
