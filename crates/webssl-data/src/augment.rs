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
//! Speed: on x86-64 CPUs with AVX2 the colour ops run 8 pixels at a time (module `x86`: the same
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

use image::RgbImage;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::resize::{Filter, PassOrder, crop_resize_into, crop_resize_with};
use crate::sampler::{below, unit_f64};
use crate::transform::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize};
use crate::{DataError, Result};

// ------------------------------------------------------------------------------------------------
// Parameters

/// A crop window in the source image (torchvision `get_params` returns `(i, j, h, w)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropParams {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// One draw of `ColorJitter`: the op order (0 brightness, 1 contrast, 2 saturation, 3 hue) and the
/// factors (`None` = op disabled, as torchvision's `None` factors).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JitterParams {
    pub order: [u8; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

/// Every random decision of one view, so a view can be replayed exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewParams {
    pub crop: CropParams,
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    /// Gaussian blur σ, or `None` when the blur was not applied.
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

/// A uniform `f64` in `[lo, hi)`.
fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// torchvision `RandomApply` / `Random*(p)`: applied iff `u < p` with `u ~ U[0, 1)`.
fn coin<R: Rng>(rng: &mut R, p: f64) -> bool {
    unit_f64(rng) < p
}

/// A uniform integer in `lo..=hi`.
fn randint<R: Rng>(rng: &mut R, lo: u32, hi: u32) -> u32 {
    lo + below(rng, (hi - lo) as u64 + 1) as u32
}

/// torchvision `RandomResizedCrop.get_params` for a `width`×`height` image: up to 10 tries of
/// `area · U(scale)` with a log-uniform aspect ratio, `w = round(√(A·r))`, `h = round(√(A/r))`
/// (round half to even, as Python), accepted if it fits, at a uniform offset; otherwise the
/// centre crop with the ratio clamped into `ratio`.
pub fn random_resized_crop_params<R: Rng>(
    rng: &mut R,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropParams {
    let area = width as f64 * height as f64;
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= width as f64 && 0.0 < h && h <= height as f64 {
            let (w, h) = (w as u32, h as u32);
            let top = randint(rng, 0, height - h);
            let left = randint(rng, 0, width - w);
            return CropParams {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    // Fallback to a central crop.
    let in_ratio = width as f64 / height as f64;
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < rmin {
        (
            width,
            ((width as f64 / rmin).round_ties_even() as u32).clamp(1, height),
        )
    } else if in_ratio > rmax {
        (
            ((height as f64 * rmax).round_ties_even() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropParams {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)` ranges (torchvision semantics: factors in
/// `[max(0, 1 − b), 1 + b]`, hue in `[−h, h]`; 0 disables an op).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// DINOv2's `ColorJitter(0.4, 0.4, 0.2, 0.1)`.
    pub const DINOV2: ColorJitter = ColorJitter {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.2,
        hue: 0.1,
    };

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(cfg_err(
                    &format!("color_jitter.{name}"),
                    format!("must be >= 0, got {v}"),
                ));
            }
        }
        if !(self.hue.is_finite() && (0.0..=0.5).contains(&self.hue)) {
            return Err(cfg_err(
                "color_jitter.hue",
                format!("must be in [0, 0.5], got {}", self.hue),
            ));
        }
        Ok(())
    }

    /// torchvision `ColorJitter.get_params`: a random permutation of the four ops, then the factors.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> JitterParams {
        let mut order = [0u8, 1, 2, 3];
        crate::sampler::shuffle(rng, &mut order);
        let mut factor = |b: f32| {
            (b > 0.0).then(|| uniform(rng, (1.0 - b as f64).max(0.0), 1.0 + b as f64) as f32)
        };
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| uniform(rng, -self.hue as f64, self.hue as f64) as f32);
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

fn cfg_err(field: &str, reason: impl Into<String>) -> DataError {
    DataError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The random recipe of one kind of view.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// Output side (square), pixels.
    pub size: u32,
    /// RandomResizedCrop area fraction range.
    pub scale: (f64, f64),
    /// RandomResizedCrop aspect-ratio range.
    pub ratio: (f64, f64),
    pub p_flip: f64,
    /// Colour jitter and the probability it is applied (`RandomApply`).
    pub jitter: Option<(ColorJitter, f64)>,
    pub p_grayscale: f64,
    /// Probability of the Gaussian blur *as applied* (see [`BlurProbabilities`]).
    pub p_blur: f64,
    /// σ range of the blur.
    pub blur_sigma: (f32, f32),
    pub p_solarize: f64,
}

impl ViewSpec {
    /// Draws every random decision of one view of a `width`×`height` image, in torchvision's order
    /// (crop, flip, jitter apply + params, grayscale, blur apply + σ, solarize).
    pub fn sample<R: Rng>(&self, rng: &mut R, width: u32, height: u32) -> ViewParams {
        let crop = random_resized_crop_params(rng, width, height, self.scale, self.ratio);
        let flip = coin(rng, self.p_flip);
        let jitter = match self.jitter {
            Some((cj, p)) if coin(rng, p) => Some(cj.sample(rng)),
            _ => None,
        };
        let grayscale = coin(rng, self.p_grayscale);
        let blur_sigma = coin(rng, self.p_blur)
            .then(|| uniform(rng, self.blur_sigma.0 as f64, self.blur_sigma.1 as f64) as f32);
        let solarize = coin(rng, self.p_solarize);
        ViewParams {
            crop,
            flip,
            jitter,
            grayscale,
            blur_sigma,
            solarize,
        }
    }

    fn validate(&self, field: &str) -> Result<()> {
        if self.size == 0 {
            return Err(cfg_err(&format!("{field}.size"), "must be >= 1"));
        }
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
            return Err(cfg_err(
                &format!("{field}.scale"),
                format!("need 0 < lo <= hi, got ({s0}, {s1})"),
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(cfg_err(
                &format!("{field}.ratio"),
                format!("need 0 < lo <= hi, got ({r0}, {r1})"),
            ));
        }
        let (b0, b1) = self.blur_sigma;
        if !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
            return Err(cfg_err(
                &format!("{field}.blur_sigma"),
                format!("need 0 < lo <= hi, got ({b0}, {b1})"),
            ));
        }
        let mut probs = vec![
            ("p_flip", self.p_flip),
            ("p_grayscale", self.p_grayscale),
            ("p_blur", self.p_blur),
            ("p_solarize", self.p_solarize),
        ];
        if let Some((cj, p)) = self.jitter {
            cj.validate()?;
            probs.push(("p_jitter", p));
        }
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(cfg_err(
                    &format!("{field}.{name}"),
                    format!("probability must be in [0, 1], got {p}"),
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Pixel ops

/// torchvision `F.resized_crop(img, top, left, h, w, [size, size], BICUBIC)` on a PIL image.
pub fn apply_crop(
    img: &RgbImage,
    crop: &CropParams,
    size: u32,
    order: PassOrder,
) -> Result<RgbImage> {
    crop_resize_with(
        img,
        crop.left,
        crop.top,
        crop.width,
        crop.height,
        size,
        size,
        Filter::Bicubic,
        order,
    )
}

/// Horizontal flip in place.
pub fn hflip(img: &mut RgbImage) {
    let w = img.width() as usize;
    for row in img.chunks_exact_mut(w * 3) {
        for x in 0..w / 2 {
            let (a, b) = (x * 3, (w - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// PIL `convert("L")` of one RGB pixel (ITU-R 601-2 luma in 16-bit fixed point).
#[inline]
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Pillow `ImagingBlend(in1, in2, alpha)` for one value: `f32` arithmetic, truncation, clamping only
/// on extrapolation (Pillow's two branches give the same value where both apply, except for the
/// clamp).
#[inline]
fn blend(in1: u8, in2: u8, alpha: f32) -> u8 {
    let v = in1 as i32 as f32 + alpha * ((in2 as i32 - in1 as i32) as f32);
    if (0.0..=1.0).contains(&alpha) {
        v as u8
    } else if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// `blend(in1, v, alpha)` for every byte (AVX2 on the whole 8-byte blocks when available).
fn blend_bytes(data: &mut [u8], in1: u8, alpha: f32) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = data.len() / 8 * 8;
        // SAFETY: the CPU supports AVX2 (checked).
        unsafe { x86::blend_const(&mut data[..done], in1, alpha) };
    }
    for v in &mut data[done..] {
        *v = blend(in1, *v, alpha);
    }
}

/// Whole 8-pixel blocks of an RGB buffer (the AVX2 kernels' unit), in bytes.
#[cfg(target_arch = "x86_64")]
fn simd_prefix(data: &[u8]) -> usize {
    data.len() / 24 * 24
}

/// torchvision `adjust_brightness` on PIL: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f32) {
    blend_bytes(img, 0, factor);
}

/// torchvision `adjust_contrast` on PIL: blend with the mean gray level `int(mean(L) + 0.5)`.
pub fn adjust_contrast(img: &mut RgbImage, factor: f32) {
    let n = img.width() as u64 * img.height() as u64;
    if n == 0 {
        return;
    }
    let data: &[u8] = img;
    #[allow(unused_mut)]
    let (mut sum, mut done) = (0u64, 0);
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = simd_prefix(data);
        // SAFETY: the CPU supports AVX2 (checked).
        sum = unsafe { x86::luma_sum(&data[..done]) };
    }
    sum += data[done..]
        .chunks_exact(3)
        .map(|p| luma(p) as u64)
        .sum::<u64>();
    // ImageStat: sum / count as a (correctly rounded) double, then int(mean + 0.5).
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    blend_bytes(img, mean, factor);
}

/// torchvision `adjust_saturation` on PIL: blend with the image's own gray version.
pub fn adjust_saturation(img: &mut RgbImage, factor: f32) {
    let data: &mut [u8] = img;
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = simd_prefix(data);
        // SAFETY: the CPU supports AVX2 (checked).
        unsafe { x86::saturation(&mut data[..done], factor) };
    }
    for p in data[done..].chunks_exact_mut(3) {
        let l = luma(p);
        for v in p.iter_mut() {
            *v = blend(l, *v, factor);
        }
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Pillow `rgb2hsv_row` (types as in C: `float` locals, `double` literals). Only the two channel
/// ratios the branch uses are computed (each is the same `f32` division as in C).
#[inline]
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let ratio = |c: u8| (maxc - c) as f32 / cr;
    let h: f32 = if r == maxc {
        ratio(b) - ratio(g)
    } else if g == maxc {
        (2.0f64 + ratio(r) as f64 - ratio(b) as f64) as f32
    } else {
        (4.0f64 + ratio(g) as f64 - ratio(r) as f64) as f32
    };
    // C `fmod(h / 6.0 + 1.0, 1.0)`. The argument lies in [5/6, 11/6] (h ∈ [-1, 5]), where fmod is
    // exactly `x - 1` for x ≥ 1 (Sterbenz) and `x` below: same bits, without the libm call.
    let x = h as f64 / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    (
        clip8((h as f64 * 255.0) as i32),
        clip8((s as f64 * 255.0) as i32),
        maxc,
    )
}

/// Per-hue `(i % 6, f)` and per-saturation `fs` of Pillow's `hsv2rgb`, computed once with the C
/// expressions (`i = floor((float)h * 6.0 / 255.0)`, `f = (float)h * 6.0 / 255.0 - (float)i`,
/// `fs = (float)s / 255.0`).
struct HsvTables {
    sector: [u8; 256],
    frac: [f32; 256],
    fs: [f32; 256],
}

fn hsv_tables() -> &'static HsvTables {
    static T: std::sync::OnceLock<HsvTables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = HsvTables {
            sector: [0; 256],
            frac: [0.0; 256],
            fs: [0.0; 256],
        };
        for v in 0..256usize {
            let hh = v as f32 as f64 * 6.0 / 255.0;
            let i = hh.floor() as i32;
            t.sector[v] = (i % 6) as u8;
            t.frac[v] = (hh - i as f32 as f64) as f32;
            t.fs[v] = (v as f32 as f64 / 255.0) as f32;
        }
        t
    })
}

/// C `round` (half away from zero) for `0 <= x < 2^31`, without the libm call `f64::round` becomes
/// on baseline x86-64: truncate, then compare the (exactly computed) fraction with 0.5.
#[inline(always)]
fn round_half_away(x: f64) -> i32 {
    debug_assert!((0.0..2147483648.0).contains(&x));
    let t = x as i32;
    if x - t as f64 >= 0.5 { t + 1 } else { t }
}

/// Pillow `hsv2rgb` for one pixel.
#[inline]
fn hsv_to_rgb(t: &HsvTables, h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let f = t.frac[h as usize];
    let fs = t.fs[s as usize];
    let vf = v as f32 as f64;
    let p = clip8(round_half_away(vf * (1.0 - fs as f64)));
    let q = clip8(round_half_away(vf * (1.0 - (fs * f) as f64)));
    let tt = clip8(round_half_away(vf * (1.0 - fs as f64 * (1.0 - f as f64))));
    match t.sector[h as usize] {
        0 => [v, tt, p],
        1 => [q, v, p],
        2 => [p, v, tt],
        3 => [p, q, v],
        4 => [tt, p, v],
        _ => [v, p, q],
    }
}

/// torchvision `adjust_hue` on PIL (`hue ∈ [−0.5, 0.5]`): through PIL's 8-bit HSV, `H` shifted by
/// `uint8(int32(hue · 255))` with wrap-around. Even `hue = 0` round-trips through HSV (lossy), as
/// in torchvision.
pub fn adjust_hue(img: &mut RgbImage, hue: f32) {
    // `np.int32(hue_factor * 255)` truncates toward zero; `.astype(np.uint8)` wraps.
    let shift = ((hue as f64 * 255.0) as i32) as u8;
    let data: &mut [u8] = img;
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = simd_prefix(data);
        // SAFETY: the CPU supports AVX2 (checked).
        unsafe { x86::hue(&mut data[..done], shift) };
    }
    let t = hsv_tables();
    for p in data[done..].chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        p.copy_from_slice(&hsv_to_rgb(t, h.wrapping_add(shift), s, v));
    }
}

/// torchvision `ColorJitter.forward` with fixed parameters: the enabled ops in `order`.
pub fn color_jitter(img: &mut RgbImage, p: &JitterParams) {
    for &op in &p.order {
        match op {
            0 => {
                if let Some(f) = p.brightness {
                    adjust_brightness(img, f);
                }
            }
            1 => {
                if let Some(f) = p.contrast {
                    adjust_contrast(img, f);
                }
            }
            2 => {
                if let Some(f) = p.saturation {
                    adjust_saturation(img, f);
                }
            }
            _ => {
                if let Some(h) = p.hue {
                    adjust_hue(img, h);
                }
            }
        }
    }
}

/// torchvision `rgb_to_grayscale(img, 3)` on PIL: `convert("L")` replicated to three channels.
pub fn grayscale(img: &mut RgbImage) {
    let data: &mut [u8] = img;
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = simd_prefix(data);
        // SAFETY: the CPU supports AVX2 (checked).
        unsafe { x86::grayscale(&mut data[..done]) };
    }
    for p in data[done..].chunks_exact_mut(3) {
        let l = luma(p);
        p.fill(l);
    }
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
pub fn solarize(img: &mut RgbImage, threshold: u8) {
    let data: &mut [u8] = img;
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        done = data.len() / 32 * 32;
        // SAFETY: the CPU supports AVX2 (checked).
        unsafe { x86::solarize(&mut data[..done], threshold) };
    }
    for v in &mut data[done..] {
        if *v >= threshold {
            *v = 255 - *v;
        }
    }
}

/// The normalised 1-D Gaussian of torchvision `_get_gaussian_kernel1d`, in `f32`.
pub fn gaussian_kernel1d(ksize: usize, sigma: f32) -> Vec<f32> {
    let half = (ksize as f32 - 1.0) * 0.5;
    let pdf: Vec<f32> = (0..ksize)
        .map(|i| {
            let x = (-half + i as f32) / sigma;
            (-0.5f32 * (x * x)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.iter().map(|p| p / sum).collect()
}

/// Reflect index (`torch.nn.functional.pad(mode="reflect")`: mirror without repeating the edge),
/// folded repeatedly so images smaller than the kernel (which torch rejects) still work.
#[inline]
fn reflect(mut i: isize, n: isize) -> usize {
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * (n - 1) - i;
        } else {
            return i as usize;
        }
    }
}

/// torchvision `GaussianBlur(kernel_size, sigma)` on a PIL image (see the module doc for the
/// tolerance: separable `f32` instead of torch's 2-D `f32` conv). `ksize` must be odd and `sigma`
/// positive, as torchvision requires (caller bug otherwise: panics).
pub fn gaussian_blur(img: &RgbImage, ksize: usize, sigma: f32) -> RgbImage {
    let mut out = img.clone();
    gaussian_blur_in_place(&mut out, ksize, sigma, &mut BlurScratch::default());
    out
}

/// Buffers of the blur, reused across calls.
#[derive(Default)]
struct BlurScratch {
    /// Horizontal pass output, `f32`, the whole image.
    tmp: Vec<f32>,
    /// One reflect-padded source row as `f32`.
    pad: Vec<f32>,
    /// Vertical-pass accumulators (one row).
    acc: Vec<f32>,
}

/// [`gaussian_blur`] in place: the horizontal pass reads the whole image into `f32` scratch, so the
/// vertical pass can write the result over the source.
fn gaussian_blur_in_place(img: &mut RgbImage, ksize: usize, sigma: f32, sc: &mut BlurScratch) {
    assert!(
        ksize % 2 == 1 && sigma > 0.0,
        "gaussian_blur: odd kernel size and sigma > 0 required"
    );
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return;
    }
    let k = gaussian_kernel1d(ksize, sigma);
    sc.tmp.clear();
    sc.tmp.resize(w * h * 3, 0.0);
    sc.pad.clear();
    sc.pad.resize((w + ksize - 1) * 3, 0.0);
    sc.acc.clear();
    sc.acc.resize(w * 3, 0.0);
    blur_passes(img, w, h, &k, sc);
}

crate::resize::avx2_dispatch!(fn blur_passes => blur_passes_impl, (
    data: &mut [u8], w: usize, h: usize, k: &[f32], sc: &mut BlurScratch
));

#[inline(always)]
fn blur_passes_impl(data: &mut [u8], w: usize, h: usize, k: &[f32], sc: &mut BlurScratch) {
    let r = (k.len() / 2) as isize;
    let row_len = w * 3;
    // Horizontal pass into f32: each row is reflect-padded once, then every tap is a contiguous
    // multiply-add over the row (vectorisable). Per value the sum runs over the taps in order from
    // 0.0, the same order as a per-pixel loop.
    for y in 0..h {
        let row = &data[y * row_len..(y + 1) * row_len];
        for (i, px) in sc.pad.chunks_exact_mut(3).enumerate() {
            let xi = reflect(i as isize - r, w as isize);
            for c in 0..3 {
                px[c] = row[xi * 3 + c] as f32;
            }
        }
        let out = &mut sc.tmp[y * row_len..(y + 1) * row_len];
        for (t, &kk) in k.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&sc.pad[t * 3..t * 3 + row_len]) {
                *o += kk * v;
            }
        }
    }
    // Vertical pass, rounding half to even like `torch.round`, written over the source.
    for y in 0..h {
        sc.acc.fill(0.0);
        for (kk, d) in k.iter().zip(-r..=r) {
            let yi = reflect(y as isize + d, h as isize);
            for (a, &v) in sc
                .acc
                .iter_mut()
                .zip(&sc.tmp[yi * row_len..(yi + 1) * row_len])
            {
                *a += kk * v;
            }
        }
        for (o, a) in data[y * row_len..(y + 1) * row_len].iter_mut().zip(&sc.acc) {
            *o = a.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
}

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

/// AVX2 kernels of the colour ops, 8 pixels (24 bytes) or 8 values at a time, each computing the
/// same `f32`/`f64`/integer operations in the same order as the scalar code above (IEEE arithmetic
/// is the same in a vector lane; no FMA contraction), so the bytes are identical. The callers run
/// the scalar code on the tail.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub(super) fn has_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// `px[..24]` (8 RGB pixels) → R, G, B as `i32` lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load_rgb8(px: &[u8]) -> [__m256i; 3] {
        let px = &px[..24];
        // SAFETY: 16 + 8 bytes read from a 24-byte slice; unaligned loads.
        let (lo, hi) = unsafe {
            (
                _mm_loadu_si128(px.as_ptr().cast()),
                _mm_loadl_epi64(px[16..].as_ptr().cast()),
            )
        };
        // Dwords 0..=2 hold pixels 0..=3, dwords 3..=5 pixels 4..=7: one group per 128-bit lane.
        let v = _mm256_permutevar8x32_epi32(
            _mm256_set_m128i(hi, lo),
            _mm256_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5),
        );
        let m = |c: i8| {
            _mm256_setr_epi8(
                c,
                -1,
                -1,
                -1,
                c + 3,
                -1,
                -1,
                -1,
                c + 6,
                -1,
                -1,
                -1,
                c + 9,
                -1,
                -1,
                -1,
                c,
                -1,
                -1,
                -1,
                c + 3,
                -1,
                -1,
                -1,
                c + 6,
                -1,
                -1,
                -1,
                c + 9,
                -1,
                -1,
                -1,
            )
        };
        [
            _mm256_shuffle_epi8(v, m(0)),
            _mm256_shuffle_epi8(v, m(1)),
            _mm256_shuffle_epi8(v, m(2)),
        ]
    }

    /// R, G, B `i32` lanes in `0..=255` → `px[..24]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store_rgb8(px: &mut [u8], [r, g, b]: [__m256i; 3]) {
        let v = _mm256_or_si256(
            r,
            _mm256_or_si256(_mm256_slli_epi32::<8>(g), _mm256_slli_epi32::<16>(b)),
        );
        let pack = _mm256_setr_epi8(
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12,
            13, 14, -1, -1, -1, -1,
        );
        let v = _mm256_permutevar8x32_epi32(
            _mm256_shuffle_epi8(v, pack),
            _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7),
        );
        let px = &mut px[..24];
        // SAFETY: 16 + 8 bytes written into a 24-byte slice; unaligned stores.
        unsafe {
            _mm_storeu_si128(px.as_mut_ptr().cast(), _mm256_castsi256_si128(v));
            _mm_storel_epi64(
                px[16..].as_mut_ptr().cast(),
                _mm256_extracti128_si256::<1>(v),
            );
        }
    }

    /// PIL `convert("L")`: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` (fits `i32`).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn luma8([r, g, b]: [__m256i; 3]) -> __m256i {
        let s = _mm256_add_epi32(
            _mm256_add_epi32(
                _mm256_mullo_epi32(r, _mm256_set1_epi32(19595)),
                _mm256_mullo_epi32(g, _mm256_set1_epi32(38470)),
            ),
            _mm256_add_epi32(
                _mm256_mullo_epi32(b, _mm256_set1_epi32(7471)),
                _mm256_set1_epi32(0x8000),
            ),
        );
        _mm256_srli_epi32::<16>(s)
    }

    /// `blend(in1, in2, alpha)` on `i32` lanes: `in1 + alpha·(in2 − in1)` in `f32`, truncated,
    /// clamped to `0..=255` (Rust's saturating `as u8`, which is Pillow's result in both branches).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn blend8(in1: __m256i, in2: __m256i, alpha: __m256) -> __m256i {
        let v = _mm256_add_ps(
            _mm256_cvtepi32_ps(in1),
            _mm256_mul_ps(alpha, _mm256_cvtepi32_ps(_mm256_sub_epi32(in2, in1))),
        );
        let t = _mm256_cvttps_epi32(v);
        _mm256_min_epi32(
            _mm256_max_epi32(t, _mm256_setzero_si256()),
            _mm256_set1_epi32(255),
        )
    }

    /// `blend(in1, v, alpha)` for every byte of `data` (a multiple of 8 long): brightness, contrast.
    #[target_feature(enable = "avx2")]
    pub(super) fn blend_const(data: &mut [u8], in1: u8, alpha: f32) {
        let (c, a) = (_mm256_set1_epi32(in1 as i32), _mm256_set1_ps(alpha));
        for ch in data.chunks_exact_mut(8) {
            // SAFETY: 8 bytes read from and written to an 8-byte chunk.
            unsafe {
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(ch.as_ptr().cast()));
                let o = blend8(c, v, a);
                let o = _mm256_packus_epi32(o, o); // per 128-bit lane: 4 × u16, repeated
                let o = _mm256_permute4x64_epi64::<0b1000>(o); // lanes' low halves together
                let o = _mm256_castsi256_si128(o);
                _mm_storel_epi64(ch.as_mut_ptr().cast(), _mm_packus_epi16(o, o));
            }
        }
    }

    /// Sum of the `L` values of the pixels in `data` (a multiple of 24 long).
    #[target_feature(enable = "avx2")]
    pub(super) fn luma_sum(data: &[u8]) -> u64 {
        let mut total = 0u64;
        // Per-lane i32 sums of at most 4096 values ≤ 255 each cannot overflow.
        for block in data.chunks(24 * 4096) {
            let mut acc = _mm256_setzero_si256();
            for px in block.chunks_exact(24) {
                acc = _mm256_add_epi32(acc, luma8(load_rgb8(px)));
            }
            let mut lanes = [0i32; 8];
            // SAFETY: 32 bytes written into an `[i32; 8]`.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
            total += lanes.iter().map(|&v| v as u64).sum::<u64>();
        }
        total
    }

    /// `adjust_saturation`: blend every channel with the pixel's `L` value.
    #[target_feature(enable = "avx2")]
    pub(super) fn saturation(data: &mut [u8], alpha: f32) {
        let a = _mm256_set1_ps(alpha);
        for px in data.chunks_exact_mut(24) {
            let rgb = load_rgb8(px);
            let l = luma8(rgb);
            store_rgb8(px, rgb.map(|c| blend8(l, c, a)));
        }
    }

    /// `grayscale`: every channel set to the pixel's `L` value.
    #[target_feature(enable = "avx2")]
    pub(super) fn grayscale(data: &mut [u8]) {
        for px in data.chunks_exact_mut(24) {
            let l = luma8(load_rgb8(px));
            store_rgb8(px, [l, l, l]);
        }
    }

    /// Low / high four `f32` lanes as `f64`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn f64x2(v: __m256) -> [__m256d; 2] {
        [
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        ]
    }

    /// Two halves of `f64` → eight `f32` (round to nearest, as `as f32`).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn f32x8([lo, hi]: [__m256d; 2]) -> __m256 {
        _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo))
    }

    /// Two halves of integral `f64` (or `f64` to truncate) → eight `i32`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn i32x8([lo, hi]: [__m256d; 2]) -> __m256i {
        _mm256_set_m128i(_mm256_cvttpd_epi32(hi), _mm256_cvttpd_epi32(lo))
    }

    /// C `round` for `x >= 0`: truncate, then add 1 if the (exact) fraction is at least 0.5.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn round_half_away(x: __m256d) -> __m256d {
        let t = _mm256_round_pd::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let up = _mm256_cmp_pd::<_CMP_GE_OQ>(_mm256_sub_pd(x, t), _mm256_set1_pd(0.5));
        _mm256_add_pd(t, _mm256_and_pd(up, _mm256_set1_pd(1.0)))
    }

    /// `adjust_hue` on 8 pixels at a time: [`super::rgb_to_hsv`], `H + shift` (wrapping), then
    /// [`super::hsv_to_rgb`], with every branch computed and selected per lane.
    #[target_feature(enable = "avx2")]
    pub(super) fn hue(data: &mut [u8], shift: u8) {
        let zero = _mm256_setzero_si256();
        let c255 = _mm256_set1_epi32(255);
        for px in data.chunks_exact_mut(24) {
            let [r, g, b] = load_rgb8(px);
            // rgb2hsv.
            let maxc = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
            let minc = _mm256_min_epi32(_mm256_min_epi32(r, g), b);
            let cr = _mm256_sub_epi32(maxc, minc);
            let grey = _mm256_cmpeq_epi32(cr, zero);
            let crf = _mm256_cvtepi32_ps(cr);
            // Lanes with maxc == minc divide by zero here; they are replaced by (0, 0) below.
            let s = _mm256_div_ps(crf, _mm256_cvtepi32_ps(maxc));
            let ratio =
                |c: __m256i| _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, c)), crf);
            let (rc, gc, bc) = (ratio(r), ratio(g), ratio(b));
            let h_r = _mm256_sub_ps(bc, gc);
            let [rc_lo, rc_hi] = f64x2(rc);
            let [gc_lo, gc_hi] = f64x2(gc);
            let [bc_lo, bc_hi] = f64x2(bc);
            let two = _mm256_set1_pd(2.0);
            let four = _mm256_set1_pd(4.0);
            let h_g = f32x8([
                _mm256_sub_pd(_mm256_add_pd(two, rc_lo), bc_lo),
                _mm256_sub_pd(_mm256_add_pd(two, rc_hi), bc_hi),
            ]);
            let h_b = f32x8([
                _mm256_sub_pd(_mm256_add_pd(four, gc_lo), rc_lo),
                _mm256_sub_pd(_mm256_add_pd(four, gc_hi), rc_hi),
            ]);
            let is_r = _mm256_cmpeq_epi32(r, maxc);
            let is_g = _mm256_andnot_si256(is_r, _mm256_cmpeq_epi32(g, maxc));
            let h = _mm256_blendv_ps(h_b, h_g, _mm256_castsi256_ps(is_g));
            let h = _mm256_blendv_ps(h, h_r, _mm256_castsi256_ps(is_r));
            // fmod(h / 6.0 + 1.0, 1.0) as f32, then (h as f64 * 255.0) as i32.
            let wrap = |h: __m256d| {
                let x = _mm256_add_pd(_mm256_div_pd(h, _mm256_set1_pd(6.0)), _mm256_set1_pd(1.0));
                let ge1 = _mm256_cmp_pd::<_CMP_GE_OQ>(x, _mm256_set1_pd(1.0));
                _mm256_sub_pd(x, _mm256_and_pd(ge1, _mm256_set1_pd(1.0)))
            };
            let [h_lo, h_hi] = f64x2(h);
            let h = f32x8([wrap(h_lo), wrap(h_hi)]);
            let [h_lo, h_hi] = f64x2(h);
            let [s_lo, s_hi] = f64x2(s);
            let k255 = _mm256_set1_pd(255.0);
            let hh = i32x8([_mm256_mul_pd(h_lo, k255), _mm256_mul_pd(h_hi, k255)]);
            let ss = i32x8([_mm256_mul_pd(s_lo, k255), _mm256_mul_pd(s_hi, k255)]);
            let clip = |v: __m256i| _mm256_min_epi32(_mm256_max_epi32(v, zero), c255);
            let hh = _mm256_andnot_si256(grey, clip(hh));
            let ss = _mm256_andnot_si256(grey, clip(ss));
            // Shift H (uint8 wrap-around).
            let hh = _mm256_and_si256(_mm256_add_epi32(hh, _mm256_set1_epi32(shift as i32)), c255);
            // hsv2rgb: i = floor(h·6/255), f = h·6/255 − i, fs = s/255 (f32 each, as the tables).
            let hf = _mm256_cvtepi32_ps(hh);
            let sf = _mm256_cvtepi32_ps(ss);
            let vf = _mm256_cvtepi32_ps(maxc);
            let mut pqt = [[_mm256_setzero_pd(); 2]; 3];
            let mut sector = [_mm_setzero_si128(); 2];
            let [hf_lo, hf_hi] = f64x2(hf);
            let [sf_lo, sf_hi] = f64x2(sf);
            let [vf_lo, vf_hi] = f64x2(vf);
            for (half, (hd, (sd, vd))) in [(hf_lo, (sf_lo, vf_lo)), (hf_hi, (sf_hi, vf_hi))]
                .into_iter()
                .enumerate()
            {
                let one = _mm256_set1_pd(1.0);
                let x = _mm256_div_pd(_mm256_mul_pd(hd, _mm256_set1_pd(6.0)), k255);
                let i = _mm256_floor_pd(x);
                let f = _mm256_cvtpd_ps(_mm256_sub_pd(x, i)); // f32
                let fs = _mm256_cvtpd_ps(_mm256_div_pd(sd, k255)); // f32
                let fs_d = _mm256_cvtps_pd(fs);
                let f_d = _mm256_cvtps_pd(f);
                let p = _mm256_mul_pd(vd, _mm256_sub_pd(one, fs_d));
                let q = _mm256_mul_pd(vd, _mm256_sub_pd(one, _mm256_cvtps_pd(_mm_mul_ps(fs, f))));
                let t = _mm256_mul_pd(
                    vd,
                    _mm256_sub_pd(one, _mm256_mul_pd(fs_d, _mm256_sub_pd(one, f_d))),
                );
                pqt[0][half] = round_half_away(p);
                pqt[1][half] = round_half_away(q);
                pqt[2][half] = round_half_away(t);
                sector[half] = _mm256_cvttpd_epi32(i);
            }
            let [p, q, t] = pqt.map(|v| clip(i32x8(v)));
            let sector = _mm256_set_m128i(sector[1], sector[0]);
            let sec = |k: i32| _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(k));
            // i % 6: i = 6 only for h = 255, sector 0.
            let (s0, s1, s2, s3, s4) = (
                _mm256_or_si256(sec(0), sec(6)),
                sec(1),
                sec(2),
                sec(3),
                sec(4),
            );
            let v = maxc;
            let sel = |m: __m256i, a: __m256i, b: __m256i| _mm256_blendv_epi8(b, a, m);
            // Sector:   0        1        2        3        4        5
            // R:        v        q        p        p        t        v
            // G:        t        v        v        q        p        p
            // B:        p        p        t        v        v        q
            let ro = sel(s1, q, sel(_mm256_or_si256(s2, s3), p, sel(s4, t, v)));
            let go = sel(s0, t, sel(_mm256_or_si256(s1, s2), v, sel(s3, q, p)));
            let bo = sel(
                _mm256_or_si256(s0, s1),
                p,
                sel(s2, t, sel(_mm256_or_si256(s3, s4), v, q)),
            );
            let achrom = _mm256_cmpeq_epi32(ss, zero);
            store_rgb8(px, [ro, go, bo].map(|o| sel(achrom, v, o)));
        }
    }

    /// `v ≥ threshold → 255 − v` for every byte (a multiple of 32 long).
    #[target_feature(enable = "avx2")]
    pub(super) fn solarize(data: &mut [u8], threshold: u8) {
        let th = _mm256_set1_epi8(threshold as i8);
        let ff = _mm256_set1_epi8(-1);
        for ch in data.chunks_exact_mut(32) {
            // SAFETY: 32 bytes read from and written to a 32-byte chunk.
            unsafe {
                let v = _mm256_loadu_si256(ch.as_ptr().cast());
                // v >= th  ⇔  max(v, th) == v (unsigned).
                let ge = _mm256_cmpeq_epi8(_mm256_max_epu8(v, th), v);
                let o = _mm256_blendv_epi8(v, _mm256_xor_si256(v, ff), ge);
                _mm256_storeu_si256(ch.as_mut_ptr().cast(), o);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// DINOv2 multi-crop

/// Which Gaussian-blur probabilities to use (docs/reference/training-algorithms.md §2, pitfall 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlurProbabilities {
    /// What dinov2 actually does (`RandomApply(p = 1 − p_nominal)`): global 1: 0.0, global 2: 0.9,
    /// local: 0.5. Reproduces DINOv2 / Web-DINO.
    #[default]
    Effective,
    /// What the dinov2 config says: global 1: 1.0, global 2: 0.1, local: 0.5.
    Nominal,
}

/// `DataAugmentationDINO` settings (defaults = dinov2 / Web-DINO with patch 14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DinoAugConfig {
    pub global_size: u32,
    pub local_size: u32,
    pub n_local: usize,
    pub global_scale: (f64, f64),
    pub local_scale: (f64, f64),
    pub ratio: (f64, f64),
    pub color_jitter: ColorJitter,
    pub p_color_jitter: f64,
    pub p_grayscale: f64,
    pub p_flip: f64,
    /// Nominal blur probabilities as written in dinov2 (`GaussianBlur(p=...)`): global 1, global 2, local.
    pub blur_nominal: [f64; 3],
    pub blur_probabilities: BlurProbabilities,
    pub blur_sigma: (f32, f32),
    /// Solarize probability of global view 2 (`RandomSolarize(128, p=0.2)`).
    pub p_solarize: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pass_order: PassOrder,
}

impl Default for DinoAugConfig {
    fn default() -> Self {
        DinoAugConfig {
            global_size: 224,
            local_size: 98,
            n_local: 8,
            global_scale: (0.32, 1.0),
            local_scale: (0.05, 0.32),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            color_jitter: ColorJitter::DINOV2,
            p_color_jitter: 0.8,
            p_grayscale: 0.2,
            p_flip: 0.5,
            blur_nominal: [1.0, 0.1, 0.5],
            blur_probabilities: BlurProbabilities::Effective,
            blur_sigma: (0.1, 2.0),
            p_solarize: 0.2,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            pass_order: PassOrder::default(),
        }
    }
}

/// The normalised views of one image (CHW `f32` each).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiCrop {
    pub global: Vec<Vec<f32>>,
    pub local: Vec<Vec<f32>>,
}

/// The random draws of one image's multi-crop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiCropParams {
    pub global: [ViewParams; 2],
    pub local: Vec<ViewParams>,
}

/// dinov2 `DataAugmentationDINO`.
#[derive(Clone, Debug)]
pub struct DinoAugment {
    cfg: DinoAugConfig,
    global: [ViewSpec; 2],
    local: ViewSpec,
    norm: Normalize,
}

impl DinoAugment {
    pub fn new(cfg: DinoAugConfig) -> Result<Self> {
        for (i, p) in cfg.blur_nominal.iter().enumerate() {
            if !(0.0..=1.0).contains(p) {
                return Err(cfg_err(
                    &format!("blur_nominal[{i}]"),
                    format!("probability must be in [0, 1], got {p}"),
                ));
            }
        }
        if cfg.std.contains(&0.0) {
            return Err(cfg_err("std", "must be non-zero"));
        }
        let blur = |nominal: f64| match cfg.blur_probabilities {
            BlurProbabilities::Effective => 1.0 - nominal,
            BlurProbabilities::Nominal => nominal,
        };
        let spec = |size, scale, p_blur, p_solarize| ViewSpec {
            size,
            scale,
            ratio: cfg.ratio,
            p_flip: cfg.p_flip,
            jitter: Some((cfg.color_jitter, cfg.p_color_jitter)),
            p_grayscale: cfg.p_grayscale,
            p_blur,
            blur_sigma: cfg.blur_sigma,
            p_solarize,
        };
        let [b1, b2, bl] = cfg.blur_nominal;
        let global = [
            spec(cfg.global_size, cfg.global_scale, blur(b1), 0.0),
            spec(cfg.global_size, cfg.global_scale, blur(b2), cfg.p_solarize),
        ];
        let local = spec(cfg.local_size, cfg.local_scale, blur(bl), 0.0);
        global[0].validate("global")?;
        global[1].validate("global")?;
        local.validate("local")?;
        let norm = Normalize::torchvision(cfg.mean, cfg.std);
        Ok(DinoAugment {
            cfg,
            global,
            local,
            norm,
        })
    }

    pub fn config(&self) -> &DinoAugConfig {
        &self.cfg
    }

    /// The view recipes actually used: global 1, global 2, local (blur probabilities resolved).
    pub fn specs(&self) -> (&[ViewSpec; 2], &ViewSpec) {
        (&self.global, &self.local)
    }

    /// Floats per global / local view.
    pub fn view_len(&self) -> (usize, usize) {
        let g = self.cfg.global_size as usize;
        let l = self.cfg.local_size as usize;
        (3 * g * g, 3 * l * l)
    }

    /// Draws every random decision for a `width`×`height` image, in dinov2's order (global 1,
    /// global 2, then the locals).
    pub fn sample<R: Rng>(&self, rng: &mut R, width: u32, height: u32) -> MultiCropParams {
        let g0 = self.global[0].sample(rng, width, height);
        let g1 = self.global[1].sample(rng, width, height);
        let local = (0..self.cfg.n_local)
            .map(|_| self.local.sample(rng, width, height))
            .collect();
        MultiCropParams {
            global: [g0, g1],
            local,
        }
    }

    /// Renders fixed parameters into caller-provided CHW buffers (`global[i]`: `3·G²`, `local[i]`:
    /// `3·L²`; e.g. slices of a view-major batch).
    pub fn render_into(
        &self,
        img: &RgbImage,
        p: &MultiCropParams,
        global: [&mut [f32]; 2],
        local: &mut [&mut [f32]],
    ) -> Result<()> {
        if local.len() != p.local.len() {
            return Err(cfg_err(
                "local",
                format!("{} buffers for {} local crops", local.len(), p.local.len()),
            ));
        }
        let order = self.cfg.pass_order;
        for (buf, vp) in global.into_iter().zip(&p.global) {
            render_view(img, vp, self.cfg.global_size, &self.norm, order, buf)?;
        }
        for (buf, vp) in local.iter_mut().zip(&p.local) {
            render_view(img, vp, self.cfg.local_size, &self.norm, order, buf)?;
        }
        Ok(())
    }

    /// Samples and renders into caller-provided buffers; returns the parameters used.
    pub fn apply_into<R: Rng>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        global: [&mut [f32]; 2],
        local: &mut [&mut [f32]],
    ) -> Result<MultiCropParams> {
        check_image(img)?;
        let p = self.sample(rng, img.width(), img.height());
        self.render_into(img, &p, global, local)?;
        Ok(p)
    }

    /// Samples and renders into fresh buffers.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> Result<MultiCrop> {
        let (gl, ll) = self.view_len();
        let mut g = [vec![0f32; gl], vec![0f32; gl]];
        let mut local: Vec<Vec<f32>> = (0..self.cfg.n_local).map(|_| vec![0f32; ll]).collect();
        {
            let [g0, g1] = &mut g;
            let mut lrefs: Vec<&mut [f32]> = local.iter_mut().map(|v| v.as_mut_slice()).collect();
            self.apply_into(img, rng, [g0.as_mut_slice(), g1.as_mut_slice()], &mut lrefs)?;
        }
        let [g0, g1] = g;
        Ok(MultiCrop {
            global: vec![g0, g1],
            local,
        })
    }
}

fn check_image(img: &RgbImage) -> Result<()> {
    if img.width() == 0 || img.height() == 0 {
        return Err(cfg_err("image", "empty image"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Single-view transforms: MAE and CLIP

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
            return Err(cfg_err("std", "must be non-zero"));
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
    use crate::sampler::rng_stream;
    use image::Rgb;

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn crop_params_respect_scale_and_ratio_bounds() {
        let mut rng = rng_stream(7, "augment-test", &[0]);
        for &(w, h) in &[(640u32, 480u32), (300, 1000), (224, 224), (97, 61)] {
            let area = (w * h) as f64;
            let mut fallback = 0;
            let mut n_scale_lo = 0;
            for _ in 0..4000 {
                let c = random_resized_crop_params(&mut rng, w, h, (0.05, 0.32), (0.75, 4.0 / 3.0));
                assert!(
                    c.width >= 1 && c.height >= 1 && c.left + c.width <= w && c.top + c.height <= h
                );
                let frac = (c.width * c.height) as f64 / area;
                let ratio = c.width as f64 / c.height as f64;
                if c.width == w && c.height == h {
                    fallback += 1;
                    continue;
                }
                // Rounding w and h to integers moves area and ratio by at most ~1 pixel per side.
                let slack_w = 1.0 / c.width as f64;
                let slack_h = 1.0 / c.height as f64;
                assert!(
                    frac >= 0.05 * (1.0 - slack_w) * (1.0 - slack_h) - 1e-12,
                    "{c:?} frac {frac}"
                );
                assert!(
                    frac <= 0.32 * (1.0 + slack_w) * (1.0 + slack_h) + 1e-12,
                    "{c:?} frac {frac}"
                );
                assert!(
                    ratio >= 0.75 * (1.0 - slack_w) / (1.0 + slack_h) - 1e-12,
                    "{c:?} ratio {ratio}"
                );
                assert!(
                    ratio <= 4.0 / 3.0 * (1.0 + slack_w) / (1.0 - slack_h) + 1e-12,
                    "{c:?} ratio {ratio}"
                );
                if frac < 0.1 {
                    n_scale_lo += 1;
                }
            }
            // Area ~ U(0.05, 0.32): P(frac < 0.1) = 0.05 / 0.27 ≈ 0.185.
            let p = n_scale_lo as f64 / (4000 - fallback) as f64;
            assert!((0.15..0.22).contains(&p), "{w}x{h}: P(frac<0.1) = {p}");
            assert_eq!(fallback, 0, "local scales always fit in {w}x{h}");
        }
    }

    #[test]
    fn crop_offsets_are_uniform() {
        // For a fixed size, the left offset is uniform over 0..=w-cw: check the mean.
        let mut rng = rng_stream(3, "augment-test", &[1]);
        let (mut sum, mut n) = (0f64, 0f64);
        for _ in 0..20000 {
            let c = random_resized_crop_params(&mut rng, 500, 500, (0.1, 0.1), (1.0, 1.0));
            // area 25000, ratio 1 -> 158x158 always; offsets in 0..=342.
            assert_eq!((c.width, c.height), (158, 158));
            sum += c.left as f64;
            n += 1.0;
        }
        assert!((sum / n - 171.0).abs() < 3.0, "mean left {}", sum / n);
    }

    #[test]
    fn crop_fallback_is_centre_with_clamped_ratio() {
        // A 1000x10 strip: no 0.9-area crop with ratio <= 4/3 fits, so the fallback runs.
        let mut rng = rng_stream(1, "augment-test", &[2]);
        let c = random_resized_crop_params(&mut rng, 1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(
            c,
            CropParams {
                top: 0,
                left: (1000 - 13) / 2,
                height: 10,
                width: 13
            }
        );
        let c = random_resized_crop_params(&mut rng, 10, 1000, (0.9, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(
            c,
            CropParams {
                top: (1000 - 13) / 2,
                left: 0,
                height: 13,
                width: 10
            }
        );
    }

    #[test]
    fn jitter_sampling_ranges_and_permutations() {
        let mut rng = rng_stream(5, "augment-test", &[3]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let p = ColorJitter::DINOV2.sample(&mut rng);
            let mut o = p.order;
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3]);
            seen.insert(p.order);
            assert!((0.6..=1.4).contains(&p.brightness.unwrap()));
            assert!((0.6..=1.4).contains(&p.contrast.unwrap()));
            assert!((0.8..=1.2).contains(&p.saturation.unwrap()));
            assert!((-0.1..=0.1).contains(&p.hue.unwrap()));
        }
        assert_eq!(seen.len(), 24, "all 24 op orders occur");
    }

    #[test]
    fn blur_probabilities_effective_vs_nominal() {
        let eff = DinoAugment::new(DinoAugConfig::default()).unwrap();
        let (g, l) = eff.specs();
        assert_eq!((g[0].p_blur, g[1].p_blur, l.p_blur), (0.0, 1.0 - 0.1, 0.5));
        assert_eq!(
            (g[0].p_solarize, g[1].p_solarize, l.p_solarize),
            (0.0, 0.2, 0.0)
        );
        let nom = DinoAugment::new(DinoAugConfig {
            blur_probabilities: BlurProbabilities::Nominal,
            ..Default::default()
        })
        .unwrap();
        let (g, l) = nom.specs();
        assert_eq!((g[0].p_blur, g[1].p_blur, l.p_blur), (1.0, 0.1, 0.5));
        // Empirical frequencies follow the resolved probabilities.
        let mut rng = rng_stream(9, "augment-test", &[4]);
        let (mut b0, mut b1, mut bl, mut gray, mut sol) = (0, 0, 0, 0, 0);
        let n = 4000;
        for _ in 0..n {
            let p = eff.sample(&mut rng, 400, 300);
            b0 += p.global[0].blur_sigma.is_some() as u32;
            b1 += p.global[1].blur_sigma.is_some() as u32;
            bl += p.local.iter().filter(|v| v.blur_sigma.is_some()).count() as u32;
            gray += p.global[0].grayscale as u32;
            sol += p.global[1].solarize as u32;
            for v in p.global.iter().chain(&p.local) {
                if let Some(s) = v.blur_sigma {
                    assert!((0.1..=2.0).contains(&s));
                }
            }
        }
        let f = |k: u32, m: usize| k as f64 / m as f64;
        assert_eq!(b0, 0);
        assert!((f(b1, n) - 0.9).abs() < 0.03, "{}", f(b1, n));
        assert!((f(bl, 8 * n) - 0.5).abs() < 0.02);
        assert!((f(gray, n) - 0.2).abs() < 0.03);
        assert!((f(sol, n) - 0.2).abs() < 0.03);
    }

    #[test]
    fn same_seed_same_bytes() {
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: 56,
            local_size: 28,
            n_local: 3,
            ..Default::default()
        })
        .unwrap();
        let img = photo(120, 90);
        let a = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 17]))
            .unwrap();
        let b = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 17]))
            .unwrap();
        let c = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 18]))
            .unwrap();
        let bits = |m: &MultiCrop| -> Vec<u32> {
            m.global
                .iter()
                .chain(&m.local)
                .flatten()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
        assert_ne!(bits(&a), bits(&c));
        assert_eq!((a.global.len(), a.local.len()), (2, 3));
        assert_eq!(
            (a.global[0].len(), a.local[0].len()),
            (3 * 56 * 56, 3 * 28 * 28)
        );
    }

    #[test]
    fn render_into_rejects_wrong_buffers() {
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: 28,
            local_size: 14,
            n_local: 2,
            ..Default::default()
        })
        .unwrap();
        let img = photo(50, 40);
        let p = aug.sample(&mut rng_stream(0, "augment", &[0]), 50, 40);
        let (mut g0, mut g1) = (vec![0f32; 3 * 28 * 28], vec![0f32; 3 * 28 * 28]);
        let mut l0 = vec![0f32; 3 * 14 * 14];
        assert!(
            aug.render_into(&img, &p, [&mut g0, &mut g1], &mut [&mut l0])
                .is_err()
        );
        let mut short = vec![0f32; 10];
        let mut l1 = vec![0f32; 3 * 14 * 14];
        assert!(
            aug.render_into(&img, &p, [&mut short, &mut g1], &mut [&mut l0, &mut l1])
                .is_err()
        );
        assert!(
            aug.render_into(&img, &p, [&mut g0, &mut g1], &mut [&mut l0, &mut l1])
                .is_ok()
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = |cfg: DinoAugConfig, field: &str| match DinoAugment::new(cfg) {
            Err(DataError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a Config error on {field}, got {other:?}"),
        };
        bad(
            DinoAugConfig {
                local_scale: (0.5, 0.1),
                ..Default::default()
            },
            "local.scale",
        );
        bad(
            DinoAugConfig {
                global_size: 0,
                ..Default::default()
            },
            "global.size",
        );
        bad(
            DinoAugConfig {
                p_grayscale: 1.5,
                ..Default::default()
            },
            "global.p_grayscale",
        );
        bad(
            DinoAugConfig {
                blur_nominal: [1.0, -0.1, 0.5],
                ..Default::default()
            },
            "blur_nominal[1]",
        );
        bad(
            DinoAugConfig {
                color_jitter: ColorJitter {
                    hue: 0.7,
                    ..ColorJitter::DINOV2
                },
                ..Default::default()
            },
            "color_jitter.hue",
        );
        let toml_like = serde_json::json!({"n_local": 6, "blur_probabilities": "nominal"});
        let cfg: DinoAugConfig = serde_json::from_value(toml_like).unwrap();
        assert_eq!(
            (cfg.n_local, cfg.blur_probabilities, cfg.global_size),
            (6, BlurProbabilities::Nominal, 224)
        );
        assert!(
            serde_json::from_value::<DinoAugConfig>(serde_json::json!({"n_locals": 6})).is_err()
        );
    }

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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Any image size, scale and ratio range: the crop lies inside the image and is non-empty.
        #[test]
        fn crop_params_always_inside(w in 1u32..3000, h in 1u32..3000, s0 in 0.001f64..1.0, ds in 0.0f64..1.0,
                                     r0 in 0.1f64..3.0, dr in 0.0f64..3.0, seed in 0u64..1000) {
            let mut rng = rng_stream(seed, "augment-test", &[7]);
            let c = random_resized_crop_params(&mut rng, w, h, (s0, s0 + ds), (r0, r0 + dr));
            proptest::prop_assert!(c.width >= 1 && c.height >= 1);
            proptest::prop_assert!(c.left + c.width <= w && c.top + c.height <= h, "{:?} in {}x{}", c, w, h);
        }

        /// Degenerate inputs (1-pixel lines, tiny images) go through the whole multi-crop.
        #[test]
        fn multicrop_handles_tiny_and_thin_images(w in 1u32..40, h in 1u32..40, seed in 0u64..1000) {
            let aug = DinoAugment::new(DinoAugConfig { global_size: 14, local_size: 7, n_local: 2, ..Default::default() })
                .unwrap();
            let m = aug.apply(&photo(w, h), &mut rng_stream(seed, "augment", &[0])).unwrap();
            proptest::prop_assert!(m.global.iter().chain(&m.local).flatten().all(|v| v.is_finite()));
        }
    }

    /// The AVX2 colour kernels (used on CPUs that have AVX2) equal the per-pixel scalar code on a
    /// lattice of the RGB cube, for image lengths that leave a scalar tail.
    #[test]
    fn vector_colour_ops_equal_scalar() {
        let cube: Vec<[u8; 3]> = (0..=255u32)
            .step_by(5)
            .flat_map(|r| {
                (0..=255u32).step_by(5).flat_map(move |g| {
                    (0..=255u32)
                        .step_by(5)
                        .map(move |b| [r as u8, (g as u8) ^ 1, (b as u8).wrapping_add(r as u8)])
                })
            })
            .collect();
        // 52³ = 140608 pixels = 419 rows of 335 + 243: a row width that is not a multiple of 8.
        let img = RgbImage::from_fn(335, 419, |x, y| image::Rgb(cube[(y * 335 + x) as usize]));
        let map = |f: &dyn Fn([u8; 3]) -> [u8; 3]| {
            let mut out = img.clone();
            for p in out.pixels_mut() {
                p.0 = f(p.0);
            }
            out
        };
        let t = hsv_tables();
        for hue in [-0.5f32, -0.1, -0.03, 0.0, 0.004, 0.07, 0.1, 0.5] {
            let mut got = img.clone();
            adjust_hue(&mut got, hue);
            let shift = ((hue as f64 * 255.0) as i32) as u8;
            let want = map(&|[r, g, b]| {
                let (h, s, v) = rgb_to_hsv(r, g, b);
                hsv_to_rgb(t, h.wrapping_add(shift), s, v)
            });
            assert!(got == want, "hue {hue}");
        }
        for f in [0.0f32, 0.6, 0.93, 1.0, 1.17, 1.4] {
            let mut got = img.clone();
            adjust_saturation(&mut got, f);
            let want = map(&|p| {
                let l = luma(&p);
                p.map(|v| blend(l, v, f))
            });
            assert!(got == want, "saturation {f}");
            let mut got = img.clone();
            adjust_brightness(&mut got, f);
            assert!(got == map(&|p| p.map(|v| blend(0, v, f))), "brightness {f}");
            let mut got = img.clone();
            adjust_contrast(&mut got, f);
            let sum: u64 = img.pixels().map(|p| luma(&p.0) as u64).sum();
            let mean = (sum as f64 / (335.0 * 419.0) + 0.5) as u8;
            assert!(
                got == map(&|p| p.map(|v| blend(mean, v, f))),
                "contrast {f}"
            );
        }
        let mut got = img.clone();
        grayscale(&mut got);
        assert!(got == map(&|p| [luma(&p); 3]));
        let mut got = img.clone();
        solarize(&mut got, 128);
        assert!(got == map(&|p| p.map(|v| if v >= 128 { 255 - v } else { v })));
    }

    #[test]
    fn round_half_away_matches_f64_round() {
        let mut rng = rng_stream(2, "augment-test", &[6]);
        for _ in 0..200_000 {
            let x = unit_f64(&mut rng) * 300.0;
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
        for x in [
            0.0,
            0.5,
            1.5,
            2.5,
            254.5,
            0.49999999999999994,
            127.49999999999999,
            255.0,
        ] {
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
    }

    #[test]
    fn pixel_op_identities() {
        let img = photo(33, 21);
        let mut a = img.clone();
        adjust_brightness(&mut a, 1.0);
        adjust_contrast(&mut a, 1.0);
        adjust_saturation(&mut a, 1.0);
        assert_eq!(a, img, "factor 1 is the identity");
        let mut f = img.clone();
        hflip(&mut f);
        hflip(&mut f);
        assert_eq!(f, img);
        let mut g = img.clone();
        grayscale(&mut g);
        assert!(g.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        let mut s = img.clone();
        solarize(&mut s, 128);
        for (o, n) in img.iter().zip(s.iter()) {
            assert_eq!(*n, if *o >= 128 { 255 - *o } else { *o });
        }
        // Blur of a constant image is constant; kernel sums to ~1.
        let c = RgbImage::from_pixel(20, 12, Rgb([200, 17, 255]));
        assert_eq!(gaussian_blur(&c, 9, 1.7), c);
        let k = gaussian_kernel1d(9, 0.1);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6 && k[4] > 0.999);
        // Tiny images (smaller than the kernel) are handled by repeated reflection.
        let t = photo(3, 2);
        assert_eq!(gaussian_blur(&t, 9, 0.1), t);
    }
}
