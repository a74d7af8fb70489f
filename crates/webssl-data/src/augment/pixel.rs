//! The pixel ops on `u8` RGB images, each bit-exact to torchvision-on-PIL (see the module doc of
//! [`super`]), with the AVX2 kernels of `super::simd` on the whole 8-pixel blocks where the CPU has
//! them and the scalar code on the rest.

use image::RgbImage;

use super::params::{CropParams, JitterParams};
#[cfg(target_arch = "x86_64")]
use super::simd;
use crate::Result;
use crate::resize::{Filter, PassOrder, crop_resize_with};

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

/// Runs the AVX2 kernel `simd::$kernel(head, args…)` on `head`, the whole `$block`-byte blocks at the
/// start of `$data`, where the CPU has AVX2, and evaluates to `head`'s length (0 elsewhere): the
/// caller runs the scalar code on the rest. Blocks: 8 values, 8 RGB pixels (24) or 32 values.
macro_rules! avx2_head {
    ($data:ident, $block:expr, $kernel:ident($($arg:expr),*)) => {{
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2() {
            done = $data.len() / $block * $block;
            // SAFETY: the CPU supports AVX2 (checked just above), the kernels' only requirement.
            unsafe { simd::$kernel(&mut $data[..done], $($arg),*) };
        }
        done
    }};
}

/// `blend(in1, v, alpha)` for every byte (AVX2 on the whole 8-byte blocks when available).
fn blend_bytes(data: &mut [u8], in1: u8, alpha: f32) {
    let done = avx2_head!(data, 8, blend_const(in1, alpha));
    for v in &mut data[done..] {
        *v = blend(in1, *v, alpha);
    }
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
    if simd::has_avx2() {
        done = data.len() / 24 * 24;
        // SAFETY: the CPU supports AVX2 (checked).
        sum = unsafe { simd::luma_sum(&data[..done]) };
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
    let done = avx2_head!(data, 24, saturation(factor));
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
    let done = avx2_head!(data, 24, hue(shift));
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
    let done = avx2_head!(data, 24, grayscale());
    for p in data[done..].chunks_exact_mut(3) {
        let l = luma(p);
        p.fill(l);
    }
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
pub fn solarize(img: &mut RgbImage, threshold: u8) {
    let data: &mut [u8] = img;
    let done = avx2_head!(data, 32, solarize(threshold));
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
pub(super) struct BlurScratch {
    /// Horizontal pass output, `f32`, the whole image.
    tmp: Vec<f32>,
    /// One reflect-padded source row as `f32`.
    pad: Vec<f32>,
    /// Vertical-pass accumulators (one row).
    acc: Vec<f32>,
}

/// [`gaussian_blur`] in place: the horizontal pass reads the whole image into `f32` scratch, so the
/// vertical pass can write the result over the source.
pub(super) fn gaussian_blur_in_place(
    img: &mut RgbImage,
    ksize: usize,
    sigma: f32,
    sc: &mut BlurScratch,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::photo;
    use crate::sampler::{rng_stream, unit_f64};
    use image::Rgb;

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
