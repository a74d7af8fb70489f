//! Pillow-exact resampling of 8-bit images (`PIL.Image.resize`), the resize every reference uses.
//!
//! torchvision's `Resize`/`RandomResizedCrop` on PIL images, the HF "slow"/PIL image processors and
//! the webssl demos all end in `Image.resize(size, resample, box)`, so matching Pillow bit for bit
//! makes every one of them reproducible. Implemented after Pillow's `src/libImaging/Resample.c`
//! (`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleHorizontal/Vertical_8bpc`,
//! `ImagingResampleInner`) and, for `NEAREST`, `src/_imaging.c::_resize` →
//! `src/libImaging/Geometry.c::ImagingScaleAffine`:
//!
//! - separable convolution, intermediate rounded and clipped to `u8`. Pillow ≤ 12 always runs the
//!   horizontal pass first (over only the rows the vertical pass reads); Pillow ≥ 13
//!   (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks much more than
//!   the width. Both are available ([`PassOrder`]); the default follows Pillow 13, the version the
//!   fixtures were generated with. DINOv2/MAE/MetaCLIP were trained with Pillow ≤ 12
//!   ([`PassOrder::HorizontalFirst`]); the two differ by ±1 level on a fraction of pixels of crops
//!   whose height shrinks more than their width;
//! - filter support scaled by the downscale factor (antialiasing), `max(scale, 1)`;
//! - taps computed in `f64` exactly as Pillow (same operation order, so the same doubles), normalised
//!   to sum 1, then converted to fixed point with `PRECISION_BITS = 32 - 8 - 2 = 22` (round half away
//!   from zero) and accumulated in `i32` starting from the rounding bias `1 << 21`;
//! - bicubic is Keys' kernel with `a = -0.5`; box coordinates are `f32` as in Pillow (the box width is
//!   subtracted in `f32`, then promoted);
//! - an integer box whose size equals the output size is a plain crop (Pillow's shortcut);
//! - `NEAREST` is not a convolution in Pillow: it samples `floor(x0 + (i + 0.5)·sx)` with the
//!   position accumulated in `f64`, which this module reproduces.
//!
//! Speed (same integers, so the same bytes): on x86-64 CPUs with AVX2 the RGB horizontal pass
//! widens each source row to 4 bytes per pixel and does two taps per 8-lane `i32` multiply-add
//! (`x86::horizontal_rgb_rows`), and the vertical pass is compiled for AVX2 (`avx2_dispatch!`);
//! elsewhere both run Pillow's scalar loops. The intermediate image and the pass buffers are
//! per-thread scratch reused across calls, and [`crop_resize_into`] writes into a caller buffer.
//!
//! Only 1- and 3-channel `u8` images (`L`, `RGB`) are supported: Pillow premultiplies alpha for
//! `RGBA`/`LA`, which the pipeline never needs (decode converts to RGB first).
//!
//! Parity: `fixtures/augment/make_augment.py` writes Pillow outputs for up/down scales, non-square
//! sizes, fractional and integer boxes and every filter; `tests/augment_parity.rs` requires them
//! bit-exact. Hand-written rather than a crate because no Rust resizer (`image`'s `imageops`,
//! `fast_image_resize`) reproduces Pillow's fixed-point rounding, and a ±1 difference on some pixels
//! is exactly what the parity requirement rules out.

use image::{ImageBuffer, Luma, Pixel, Rgb};

use crate::{DataError, Result};

/// Pillow's resampling filters (`PIL.Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// `NEAREST` (0): nearest-neighbour sampling at pixel centres, no antialiasing.
    Nearest,
    /// `BOX` (4): each output pixel is the (area-weighted) mean of the input pixels it covers.
    Box,
    /// `BILINEAR` (2): triangle filter, support 1, antialiased on downscale.
    Bilinear,
    /// `HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
    /// `BICUBIC` (3): Keys cubic with `a = -0.5`, support 2, antialiased on downscale.
    Bicubic,
    /// `LANCZOS` (1): Lanczos-3 windowed sinc.
    Lanczos,
}

impl Filter {
    /// The filter for a PIL resample code (as stored in HF `preprocessor_config.json` `resample`).
    pub fn from_pil_code(code: i64) -> Option<Filter> {
        Some(match code {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// The PIL resample code of this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Filter::Nearest => 0,
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
        }
    }

    /// Half-width of the kernel at scale 1 (Pillow's `filter.support`).
    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernel, written with Pillow's operation order so that every tap is the same double.
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes `0.54f + 0.46f * cos(x)`: float literals promoted to double.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Order of the two separable passes. The intermediate image is rounded to `u8`, so the order
/// changes some output values by a level or more.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PassOrder {
    /// Pillow ≥ 13.0: vertical first when the height shrinks much more than the width
    /// (`in_h - h > 2 * (in_w - w)` and `h < in_h`, on the image size), else horizontal first.
    #[default]
    Pillow13,
    /// Pillow ≤ 12.x: always horizontal first (what DINOv2, MAE and MetaCLIP were trained with).
    HorizontalFirst,
}

/// Pixel types Pillow resamples without premultiplication: `L` and `RGB` (8 bits per channel).
pub trait PilPixel: Pixel<Subpixel = u8> {}
impl PilPixel for Rgb<u8> {}
impl PilPixel for Luma<u8> {}

/// A rectangular window of a packed 8-bit image, so a crop can be resampled without copying it.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    /// Elements (not pixels) per row of `data`.
    stride: usize,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

impl View<'_> {
    #[inline]
    fn row(&self, y: usize, c: usize) -> &[u8] {
        let start = (self.y0 + y) * self.stride + self.x0 * c;
        &self.data[start..start + self.w * c]
    }
}

/// `Image.resize((w, h), filter)` of the whole image. Panics if `w` or `h` is 0 or the image is empty
/// (sizes come from validated configs; Pillow raises `ValueError` there too).
pub fn resize<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: Filter,
) -> ImageBuffer<P, Vec<u8>> {
    let (iw, ih) = img.dimensions();
    resize_box(img, w, h, filter, [0.0, 0.0, iw as f32, ih as f32])
        .expect("resize: output and input sizes must be at least 1x1")
}

/// `Image.resize((w, h), filter, box=(x0, y0, x1, y1))`: resample the region `box` (in input pixel
/// coordinates, fractional allowed) to `w`×`h`. Taps outside the box but inside the image *are*
/// read, exactly as Pillow does; use [`crop_resize`] for torchvision's crop-then-resize.
pub fn resize_box<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: Filter,
    bbox: [f32; 4],
) -> Result<ImageBuffer<P, Vec<u8>>> {
    resize_box_with(img, w, h, filter, bbox, PassOrder::default())
}

/// [`resize_box`] with an explicit separable pass order (Pillow version compatibility).
pub fn resize_box_with<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: Filter,
    bbox: [f32; 4],
    order: PassOrder,
) -> Result<ImageBuffer<P, Vec<u8>>> {
    let c = P::CHANNEL_COUNT as usize;
    let (iw, ih) = img.dimensions();
    check_box(iw, ih, w, h, bbox)?;
    let view = View {
        data: img.as_raw(),
        stride: iw as usize * c,
        x0: 0,
        y0: 0,
        w: iw as usize,
        h: ih as usize,
    };
    let mut out = Vec::new();
    resample_view(
        view, c, w as usize, h as usize, filter, bbox, order, &mut out,
    );
    Ok(ImageBuffer::from_raw(w, h, out).expect("resample output has w*h*c elements"))
}

/// torchvision `F.resized_crop` on a PIL image: `img.crop((left, top, left+cw, top+ch))` followed by
/// `resize((w, h), filter)`, computed on the crop window in place (no intermediate copy). Taps never
/// read outside the crop, as in torchvision.
pub fn crop_resize<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    left: u32,
    top: u32,
    cw: u32,
    ch: u32,
    w: u32,
    h: u32,
    filter: Filter,
) -> Result<ImageBuffer<P, Vec<u8>>> {
    crop_resize_with(img, left, top, cw, ch, w, h, filter, PassOrder::default())
}

/// [`crop_resize`] with an explicit separable pass order (Pillow version compatibility).
pub fn crop_resize_with<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    left: u32,
    top: u32,
    cw: u32,
    ch: u32,
    w: u32,
    h: u32,
    filter: Filter,
    order: PassOrder,
) -> Result<ImageBuffer<P, Vec<u8>>> {
    let mut out = Vec::new();
    crop_resize_into(img, left, top, cw, ch, w, h, filter, order, &mut out)?;
    Ok(ImageBuffer::from_raw(w, h, out).expect("resample output has w*h*c elements"))
}

/// [`crop_resize_with`] into a caller-owned buffer (replaced by the `w·h·c` output), so a caller
/// rendering many crops reuses one allocation.
pub fn crop_resize_into<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    left: u32,
    top: u32,
    cw: u32,
    ch: u32,
    w: u32,
    h: u32,
    filter: Filter,
    order: PassOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    let c = P::CHANNEL_COUNT as usize;
    let (iw, ih) = img.dimensions();
    if cw == 0
        || ch == 0
        || left as u64 + cw as u64 > iw as u64
        || top as u64 + ch as u64 > ih as u64
    {
        return Err(DataError::Config {
            field: "crop".into(),
            reason: format!(
                "crop ({left}, {top}) {cw}x{ch} is empty or outside the {iw}x{ih} image"
            ),
        });
    }
    if w == 0 || h == 0 {
        return Err(DataError::Config {
            field: "size".into(),
            reason: format!("output size {w}x{h} must be at least 1x1"),
        });
    }
    let view = View {
        data: img.as_raw(),
        stride: iw as usize * c,
        x0: left as usize,
        y0: top as usize,
        w: cw as usize,
        h: ch as usize,
    };
    let bbox = [0.0, 0.0, cw as f32, ch as f32];
    resample_view(view, c, w as usize, h as usize, filter, bbox, order, out);
    Ok(())
}

fn check_box(iw: u32, ih: u32, w: u32, h: u32, b: [f32; 4]) -> Result<()> {
    let bad = |reason: String| {
        Err(DataError::Config {
            field: "box".into(),
            reason,
        })
    };
    if w == 0 || h == 0 || iw == 0 || ih == 0 {
        return Err(DataError::Config {
            field: "size".into(),
            reason: format!("resize {iw}x{ih} -> {w}x{h}: sizes must be at least 1x1"),
        });
    }
    if b.iter().any(|v| !v.is_finite()) {
        return bad(format!("{b:?} is not finite"));
    }
    if b[0] < 0.0 || b[1] < 0.0 {
        return bad(format!("{b:?}: offset can't be negative"));
    }
    if b[2] > iw as f32 || b[3] > ih as f32 {
        return bad(format!("{b:?} exceeds the {iw}x{ih} image"));
    }
    if b[2] - b[0] < 0.0 || b[3] - b[1] < 0.0 {
        return bad(format!("{b:?} is empty"));
    }
    Ok(())
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `clip8` (and torch's uint8 epilogue): the accumulator carries `precision` fractional
/// bits; shift and clamp to 0..=255.
#[inline(always)]
fn clip8(v: i32, precision: u32) -> u8 {
    (v >> precision).clamp(0, 255) as u8
}

/// Fixed-point taps for one axis: output `i` reads `n = bounds[i].1` inputs from `bounds[i].0`.
struct Coeffs {
    /// Fractional bits of the fixed-point taps (22 for Pillow, data-dependent for torch).
    precision: u32,
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`.
fn precompute(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Coeffs {
    // `(double)(in1 - in0)`: the subtraction happens in float, as in Pillow.
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // `(int)(v + 0.5)` truncates toward zero; negative values clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0f64;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        let row = &mut k[xx * ksize..xx * ksize + n];
        for (kx, &wx) in row.iter_mut().zip(&w[..n]) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            *kx = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        precision: PRECISION_BITS,
        ksize,
        bounds,
        k,
    }
}

/// Defines `$name($args) -> $ret` that runs `$inner` compiled for AVX2 when the CPU has it, and the
/// baseline build of `$inner` otherwise. The kernels are written as plain loops over fixed-width
/// chunks; with AVX2 LLVM turns them into 8-lane integer/float code (SSE2, the x86-64 baseline,
/// has no 32-bit lane multiply). Integer kernels give the same integers either way, and Rust never
/// contracts `a * b + c` into an FMA, so the `f32` kernels give the same bits too: the dispatch
/// changes speed only.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $inner:path, ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
                    // calling a `#[target_feature(enable = "avx2")]` function.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

/// Buffers the separable passes reuse from call to call (one set per thread), so resampling a
/// crop allocates nothing in steady state: fresh multi-100-kB buffers per crop cost more in page
/// faults and kernel page zeroing than the arithmetic.
#[derive(Default)]
struct Scratch {
    /// The `u8` image between the two passes.
    tmp: Vec<u8>,
    hor: HorScratch,
    /// Vertical-pass accumulators (one output row).
    acc: Vec<i32>,
}

#[derive(Default)]
struct HorScratch {
    /// Two source rows widened from RGB to RGB0 (4 bytes per pixel), zero-padded on the right.
    rows4: Vec<u8>,
    /// Taps expanded for the widened rows: output `x` has `kpad` taps × 4 lanes (R, G, B, 0).
    kk: Vec<i32>,
    /// Per output pixel, the offset of its first tap in a widened row, in bytes.
    starts: Vec<usize>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        // Not reached (resampling never re-enters itself); correct anyway.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// `ImagingResampleInner` (or the NEAREST affine path) on a window of the source, into `out`
/// (resized to `out_w·out_h·c`).
fn resample_view(
    src: View<'_>,
    c: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
    b: [f32; 4],
    order: PassOrder,
    out: &mut Vec<u8>,
) {
    out.clear();
    // Pillow's shortcut in `_resize`: integer box of exactly the output size = crop.
    if b[0].fract() == 0.0
        && b[2] - b[0] == out_w as f32
        && b[1].fract() == 0.0
        && b[3] - b[1] == out_h as f32
    {
        let (bx, by) = (b[0] as usize, b[1] as usize);
        out.reserve(out_w * out_h * c);
        for y in 0..out_h {
            out.extend_from_slice(&src.row(by + y, c)[bx * c..(bx + out_w) * c]);
        }
        return;
    }
    if filter == Filter::Nearest {
        *out = nearest(src, c, out_w, out_h, b);
        return;
    }
    out.resize(out_w * out_h * c, 0);
    with_scratch(|sc| resample_conv(src, c, out_w, out_h, filter, b, order, out, sc));
}

fn resample_conv(
    src: View<'_>,
    c: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
    b: [f32; 4],
    order: PassOrder,
    out: &mut [u8],
    sc: &mut Scratch,
) {
    let need_h = out_w != src.w || b[0] != 0.0 || b[2] != out_w as f32;
    let need_v = out_h != src.h || b[1] != 0.0 || b[3] != out_h as f32;
    let vert = precompute(src.h, b[1], b[3], out_h, filter);
    let hor = precompute(src.w, b[0], b[2], out_w, filter);
    let Scratch { tmp, hor: hsc, acc } = sc;
    if need_h && need_v && vertical_first(order, src.w, src.h, out_w, out_h) {
        // Vertical pass over the columns the horizontal pass reads, then horizontal.
        let first = hor.bounds[0].0;
        let last = hor.bounds[out_w - 1].0 + hor.bounds[out_w - 1].1;
        let cols = View {
            x0: src.x0 + first,
            w: last - first,
            ..src
        };
        tmp.clear();
        tmp.resize(out_h * (last - first) * c, 0);
        vertical_pass(cols, c, &vert, 0, tmp, acc);
        let tmp_view = View {
            data: tmp,
            stride: (last - first) * c,
            x0: 0,
            y0: 0,
            w: last - first,
            h: out_h,
        };
        horizontal_pass(tmp_view, c, &hor, first, 0, out_h, out, hsc);
        return;
    }
    // Pillow's default: horizontal pass over only the rows the vertical pass reads, then vertical.
    let (first, last) = if need_v {
        (
            vert.bounds[0].0,
            vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1,
        )
    } else {
        (0, src.h)
    };
    if !need_h {
        vertical_pass(src, c, &vert, 0, out, acc);
        return;
    }
    if !need_v {
        horizontal_pass(src, c, &hor, 0, first, last - first, out, hsc);
        return;
    }
    tmp.clear();
    tmp.resize((last - first) * out_w * c, 0);
    horizontal_pass(src, c, &hor, 0, first, last - first, tmp, hsc);
    let tmp_view = View {
        data: tmp,
        stride: out_w * c,
        x0: 0,
        y0: 0,
        w: out_w,
        h: last - first,
    };
    vertical_pass(tmp_view, c, &vert, first, out, acc);
}

/// Pillow ≥ 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
/// "significantly more" than the width, judged on the *image* size, not the box:
/// `ysize < in_h && in_h - ysize > 2 * (in_w - xsize)` (integers). Inferred from and checked
/// against Pillow 13.0.0: 792 random size pairs and 300 random fractional boxes, all matching;
/// the committed fixtures cover both sides of the rule. The order matters because the
/// intermediate image is rounded to `u8`.
fn vertical_first(order: PassOrder, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    match order {
        PassOrder::HorizontalFirst => false,
        PassOrder::Pillow13 => {
            out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64)
        }
    }
}

/// Horizontal pass: `rows` output rows (into `out`, `rows·out_w·c`) from source rows
/// `row0..row0+rows` of `src`; coefficient bounds are relative to source column `col_off`
/// (non-zero when `src` is a column window).
fn horizontal_pass(
    src: View<'_>,
    c: usize,
    hor: &Coeffs,
    col_off: usize,
    row0: usize,
    rows: usize,
    out: &mut [u8],
    sc: &mut HorScratch,
) {
    #[cfg(target_arch = "x86_64")]
    if c == 3 && std::arch::is_x86_feature_detected!("avx2") {
        horizontal_rgb_avx2(src, hor, col_off, row0, rows, out, sc);
        return;
    }
    match c {
        1 => horizontal_scalar::<1>(src, hor, col_off, row0, rows, out),
        _ => horizontal_scalar::<3>(src, hor, col_off, row0, rows, out),
    }
}

/// Pillow's loop: per output pixel, per tap, per channel.
fn horizontal_scalar<const C: usize>(
    src: View<'_>,
    hor: &Coeffs,
    col_off: usize,
    row0: usize,
    rows: usize,
    out: &mut [u8],
) {
    let out_w = hor.bounds.len();
    for (ty, out_row) in out[..rows * out_w * C]
        .chunks_exact_mut(out_w * C)
        .enumerate()
    {
        let in_row = src.row(row0 + ty, C);
        for (xx, px) in out_row.chunks_exact_mut(C).enumerate() {
            let (xmin, n) = hor.bounds[xx];
            let k = &hor.k[xx * hor.ksize..xx * hor.ksize + n];
            let mut acc = [1i32 << (hor.precision - 1); C];
            let start = xmin - col_off;
            let seg = &in_row[start * C..(start + n) * C];
            for (p, &kx) in seg.chunks_exact(C).zip(k) {
                for ch in 0..C {
                    acc[ch] += p[ch] as i32 * kx;
                }
            }
            for ch in 0..C {
                px[ch] = clip8(acc[ch], hor.precision);
            }
        }
    }
}

/// The RGB horizontal pass with AVX2. Pillow's loop does three scalar multiply-adds per tap; here
/// each source row is first widened to 4 bytes per pixel (`R G B 0`), and every output pixel's
/// taps are padded with zero taps to one even count `kpad`, so each pair of taps is one 8-lane
/// `u8 → i32` multiply-add (two pixels times their two taps, each repeated four times), the same
/// shape for every pixel. The sums are the same integers as Pillow's (integer addition is exact in
/// any order and the padding taps are zero), so the output is bit-exact; two rows share each load
/// of the taps.
#[cfg(target_arch = "x86_64")]
fn horizontal_rgb_avx2(
    src: View<'_>,
    hor: &Coeffs,
    col_off: usize,
    row0: usize,
    rows: usize,
    out: &mut [u8],
    sc: &mut HorScratch,
) {
    let out_w = hor.bounds.len();
    if out_w == 0 || rows == 0 {
        return;
    }
    // Source columns read, relative to `src`.
    let first = hor.bounds[0].0 - col_off;
    let last = hor
        .bounds
        .iter()
        .map(|&(xmin, n)| xmin - col_off + n)
        .max()
        .unwrap_or(first);
    let span = last - first;
    let max_n = hor.bounds.iter().map(|b| b.1).max().unwrap_or(0);
    let kpad = (max_n.max(1) + 1) & !1;
    // Zero padding after the widened pixels keeps every padded tap window in bounds.
    let row4_len = (span + kpad) * 4;
    sc.rows4.clear();
    sc.rows4.resize(2 * row4_len, 0);
    sc.kk.clear();
    sc.kk.resize(out_w * kpad * 4, 0);
    sc.starts.clear();
    for (xx, &(xmin, n)) in hor.bounds.iter().enumerate() {
        sc.starts.push((xmin - col_off - first) * 4);
        let taps = &hor.k[xx * hor.ksize..xx * hor.ksize + n];
        let dst = &mut sc.kk[xx * kpad * 4..(xx * kpad + n) * 4];
        for (lanes, &k) in dst.chunks_exact_mut(4).zip(taps) {
            lanes[..3].fill(k);
        }
    }
    let p = x86::HorRgb {
        src,
        first,
        span,
        kpad,
        row0,
        precision: hor.precision,
    };
    // SAFETY: the caller checked that the CPU supports AVX2.
    unsafe {
        x86::horizontal_rgb_rows(
            &p,
            &sc.kk,
            &sc.starts,
            &mut sc.rows4,
            &mut out[..rows * out_w * 3],
        )
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::View;

    pub(super) struct HorRgb<'a> {
        pub src: View<'a>,
        /// First source column read, and how many.
        pub first: usize,
        pub span: usize,
        /// Taps per output pixel after zero padding (even).
        pub kpad: usize,
        pub row0: usize,
        pub precision: u32,
    }

    /// RGB → RGB0: `dst[4i..4i+4] = [src[3i], src[3i+1], src[3i+2], 0]` for every pixel of `src`.
    #[target_feature(enable = "avx2")]
    fn widen_rgb(dst: &mut [u8], src: &[u8]) {
        let n = src.len() / 3;
        assert!(dst.len() >= 4 * n);
        let shuf = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
        let mut i = 0;
        // 16-byte loads of which 12 are used: stop while 16 bytes remain readable.
        while 3 * i + 16 <= src.len() {
            // SAFETY: `src[3i..3i+16]` and `dst[4i..4i+16]` are in bounds (loop condition and
            // the assert: 4i + 16 <= 4n because i + 4 <= n here); unaligned loads/stores.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(3 * i).cast());
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(4 * i).cast(),
                    _mm_shuffle_epi8(v, shuf),
                );
            }
            i += 4;
        }
        for (d, s) in dst[4 * i..4 * n]
            .chunks_exact_mut(4)
            .zip(src[3 * i..].chunks_exact(3))
        {
            d[..3].copy_from_slice(s);
            d[3] = 0;
        }
    }

    /// `u8` lanes `s[..8]` zero-extended to eight `i32`, times `k[..8]`, added to `acc`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn madd8(acc: __m256i, s: &[u8], k: &[i32]) -> __m256i {
        let (s, k) = (&s[..8], &k[..8]);
        // SAFETY: 8 readable bytes and 8 readable `i32` (the slices above); unaligned loads.
        let (v, kv) = unsafe {
            (
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().cast())),
                _mm256_loadu_si256(k.as_ptr().cast()),
            )
        };
        _mm256_add_epi32(acc, _mm256_mullo_epi32(v, kv))
    }

    /// Folds the two pixels' lanes, adds the rounding bias, shifts, clamps to `u8` and writes
    /// `R G B` to `out[..3]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store_px(out: &mut [u8], acc: __m256i, bias: __m128i, shift: __m128i) {
        let s = _mm_add_epi32(
            _mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256::<1>(acc),
            ),
            bias,
        );
        let s = _mm_sra_epi32(s, shift);
        // i32 → i16 (saturating; the shifted sums are far inside i16) → u8 (saturating: the clamp).
        let s = _mm_packus_epi16(_mm_packs_epi32(s, s), s);
        let px = (_mm_cvtsi128_si32(s) as u32).to_le_bytes();
        out[..3].copy_from_slice(&px[..3]);
    }

    /// # Safety
    /// The CPU must support AVX2. `rows4` holds two widened rows of `(span + kpad)·4` bytes whose
    /// padding is zero; `kk` and `starts` are the expanded taps as built by the caller.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal_rgb_rows(
        p: &HorRgb<'_>,
        kk: &[i32],
        starts: &[usize],
        rows4: &mut [u8],
        out: &mut [u8],
    ) {
        let out_w = starts.len();
        let row_out = out_w * 3;
        let taps4 = p.kpad * 4;
        let bias = _mm_set1_epi32(1i32 << (p.precision - 1));
        let shift = _mm_cvtsi32_si128(p.precision as i32);
        let (ra, rb) = rows4.split_at_mut(rows4.len() / 2);
        let cols = p.first * 3..(p.first + p.span) * 3;
        let mut out_rows = out.chunks_exact_mut(row_out);
        let mut y = p.row0;
        while let Some(oa) = out_rows.next() {
            widen_rgb(&mut ra[..p.span * 4], &p.src.row(y, 3)[cols.clone()]);
            if let Some(ob) = out_rows.next() {
                widen_rgb(&mut rb[..p.span * 4], &p.src.row(y + 1, 3)[cols.clone()]);
                for (xx, (&s, k)) in starts.iter().zip(kk.chunks_exact(taps4)).enumerate() {
                    let (sa, sb) = (&ra[s..s + taps4], &rb[s..s + taps4]);
                    let (mut aa, mut ab) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for ((a8, b8), k8) in sa
                        .chunks_exact(8)
                        .zip(sb.chunks_exact(8))
                        .zip(k.chunks_exact(8))
                    {
                        aa = madd8(aa, a8, k8);
                        ab = madd8(ab, b8, k8);
                    }
                    store_px(&mut oa[xx * 3..], aa, bias, shift);
                    store_px(&mut ob[xx * 3..], ab, bias, shift);
                }
                y += 2;
            } else {
                for (xx, (&s, k)) in starts.iter().zip(kk.chunks_exact(taps4)).enumerate() {
                    let mut aa = _mm256_setzero_si256();
                    for (a8, k8) in ra[s..s + taps4].chunks_exact(8).zip(k.chunks_exact(8)) {
                        aa = madd8(aa, a8, k8);
                    }
                    store_px(&mut oa[xx * 3..], aa, bias, shift);
                }
                y += 1;
            }
        }
    }
}

/// Vertical pass over all columns of `src` into `out` (`out_h·src.w·c`); coefficient bounds are
/// relative to source row `row_off` (non-zero when `src` holds only the rows the pass reads).
fn vertical_pass(
    src: View<'_>,
    c: usize,
    vert: &Coeffs,
    row_off: usize,
    out: &mut [u8],
    acc: &mut Vec<i32>,
) {
    acc.clear();
    acc.resize(src.w * c, 0);
    vertical_pass_rows(src, c, vert, row_off, out, acc);
}

avx2_dispatch!(fn vertical_pass_rows => vertical_pass_impl, (
    src: View<'_>, c: usize, vert: &Coeffs, row_off: usize, out: &mut [u8], acc: &mut [i32]
));

#[inline(always)]
fn vertical_pass_impl(
    src: View<'_>,
    c: usize,
    vert: &Coeffs,
    row_off: usize,
    out: &mut [u8],
    acc: &mut [i32],
) {
    let row_len = src.w * c;
    let out_h = vert.bounds.len();
    for (yy, out_row) in out[..out_h * row_len].chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
        acc.fill(1i32 << (vert.precision - 1));
        for (y, &ky) in k.iter().enumerate() {
            let in_row = src.row(ymin + y - row_off, c);
            // Integer sums are exact, so accumulating row by row (vectorisable) gives Pillow's
            // per-pixel result.
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
            *o = clip8(a, vert.precision);
        }
    }
}

/// torch's antialiased resize of a `uint8` image (`torchvision.transforms.v2.functional.resize` on a
/// `uint8` tensor with `antialias=True`, CPU): what transformers ≥ 5's default (torchvision-backend)
/// image processors run. Bilinear and bicubic only.
///
/// Reproduces ATen's uint8 path (`UpSampleKernel.cpp`: `_compute_index_ranges_int16_weights`,
/// `basic_loop_aa_horizontal/vertical<uint8_t>`, and the AVX2 kernels ported from Pillow-SIMD,
/// which compute the same integers): taps from the *torch* kernels in `f64` (bicubic `a = −0.5`
/// written as `((a·x − 5a)·x + 8a)·x − 4a` on `[1, 2)`, which rounds differently from Pillow's
/// form), `scale = in / out`, normalised, quantised to `i16` with the largest precision that keeps
/// the biggest tap below 2¹⁵, horizontal pass then vertical (an unchanged axis skipped), `u8`
/// intermediate. Bicubic always takes this path on CPU; bilinear does on AVX2/AVX-512/arm64 CPUs
/// (torchvision `_do_native_uint8_resize_on_cpu`), elsewhere torch resizes in `f32` (not reproduced).
/// Fixtures: `torch_resize` cases in `fixtures/augment`, bit-exact.
pub fn torch_resize_u8<P: PilPixel>(
    img: &ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: Filter,
) -> Result<ImageBuffer<P, Vec<u8>>> {
    let (iw, ih) = img.dimensions();
    if w == 0 || h == 0 || iw == 0 || ih == 0 {
        return Err(DataError::Config {
            field: "size".into(),
            reason: format!("resize {iw}x{ih} -> {w}x{h}: sizes must be at least 1x1"),
        });
    }
    let interp_size = match filter {
        Filter::Bilinear => 2,
        Filter::Bicubic => 4,
        other => {
            return Err(DataError::Config {
                field: "resample".into(),
                reason: format!("torch uint8 resize supports bilinear and bicubic, not {other:?}"),
            });
        }
    };
    let c = P::CHANNEL_COUNT as usize;
    let view = View {
        data: img.as_raw(),
        stride: iw as usize * c,
        x0: 0,
        y0: 0,
        w: iw as usize,
        h: ih as usize,
    };
    let (w, h) = (w as usize, h as usize);
    let run = |view: View<'_>| -> Vec<u8> {
        let mut cur: Option<Vec<u8>> = None;
        let mut cur_w = view.w;
        if w != view.w {
            let hor = torch_coeffs(view.w, w, interp_size);
            let mut buf = vec![0u8; view.h * w * c];
            with_scratch(|sc| horizontal_pass(view, c, &hor, 0, 0, view.h, &mut buf, &mut sc.hor));
            cur = Some(buf);
            cur_w = w;
        }
        if h != view.h {
            let vert = torch_coeffs(view.h, h, interp_size);
            let src = match &cur {
                Some(buf) => View {
                    data: buf,
                    stride: cur_w * c,
                    x0: 0,
                    y0: 0,
                    w: cur_w,
                    h: view.h,
                },
                None => view,
            };
            let mut buf = vec![0u8; h * src.w * c];
            with_scratch(|sc| vertical_pass(src, c, &vert, 0, &mut buf, &mut sc.acc));
            cur = Some(buf);
        }
        cur.unwrap_or_else(|| view.data.to_vec())
    };
    let out = run(view);
    Ok(ImageBuffer::from_raw(w as u32, h as u32, out).expect("resample output has w*h*c elements"))
}

/// ATen `HelperInterpBase::_compute_index_ranges_weights` (antialias, `f64`) followed by the int16
/// quantisation of `_compute_index_ranges_int16_weights`.
fn torch_coeffs(in_size: usize, out_size: usize, interp_size: usize) -> Coeffs {
    let filter = |x: f64| -> f64 {
        let x = x.abs();
        if interp_size == 2 {
            return if x < 1.0 { 1.0 - x } else { 0.0 };
        }
        const A: f64 = -0.5;
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let half = interp_size as f64 * 0.5;
    let support = if scale >= 1.0 { half * scale } else { half };
    let ksize = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut wts = vec![0f64; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    let mut wt_max = 0f64;
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = (((center + support + 0.5) as i64).min(in_size as i64) - xmin)
            .clamp(0, ksize as i64) as usize;
        let row = &mut wts[i * ksize..i * ksize + xsize];
        let mut total = 0f64;
        for (j, w) in row.iter_mut().enumerate() {
            *w = filter(((j as i64 + xmin) as f64 - center + 0.5) * invscale);
            total += *w;
        }
        if total != 0.0 {
            for w in row.iter_mut() {
                *w /= total;
                wt_max = wt_max.max(*w);
            }
        }
        bounds.push((xmin as usize, xsize));
    }
    let mut precision = 0u32;
    while precision < 22 {
        if (0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64 >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let k = wts
        .iter()
        .map(|&w| {
            let v = w * (1u64 << precision) as f64;
            (if v < 0.0 {
                (-0.5 + v) as i32
            } else {
                (0.5 + v) as i32
            }) as i16 as i32
        })
        .collect();
    Coeffs {
        precision,
        ksize,
        bounds,
        k,
    }
}

/// Pillow `NEAREST` resize: `ImagingScaleAffine` with `a = [(x1-x0)/w, 0, x0, 0, (y1-y0)/h, y0]`.
fn nearest(src: View<'_>, c: usize, out_w: usize, out_h: usize, b: [f32; 4]) -> Vec<u8> {
    let a0 = (b[2] - b[0]) as f64 / out_w as f64;
    let a4 = (b[3] - b[1]) as f64 / out_h as f64;
    // COORD(v) = v < 0 ? -1 : (int)v; the position is accumulated, not multiplied, as in Pillow.
    let coord = |v: f64| if v < 0.0 { -1i64 } else { v as i64 };
    let mut xo = b[0] as f64 + a0 * 0.5;
    let xtab: Vec<Option<usize>> = (0..out_w)
        .map(|_| {
            let xi = coord(xo);
            xo += a0;
            (xi >= 0 && (xi as usize) < src.w).then_some(xi as usize)
        })
        .collect();
    let mut out = vec![0u8; out_w * out_h * c];
    let mut yo = b[1] as f64 + a4 * 0.5;
    for out_row in out.chunks_exact_mut(out_w * c) {
        let yi = coord(yo);
        yo += a4;
        if yi < 0 || yi as usize >= src.h {
            continue; // Pillow fills with 0
        }
        let in_row = src.row(yi as usize, c);
        for (px, xi) in out_row.chunks_exact_mut(c).zip(&xtab) {
            if let Some(xi) = xi {
                px.copy_from_slice(&in_row[xi * c..xi * c + c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 37 + y * 11) as u8,
                (x * 5 + y * 91) as u8,
                ((x ^ y) * 13) as u8,
            ])
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Resampling a crop window in place equals copying the crop first, for every filter and
        /// both pass orders; and the two orders agree whenever Pillow 13 picks horizontal-first.
        #[test]
        fn window_resample_equals_copy_then_resample(
            iw in 1u32..60, ih in 1u32..60, fx in 0.0f64..1.0, fy in 0.0f64..1.0, fw in 0.01f64..1.0,
            fh in 0.01f64..1.0, w in 1u32..80, h in 1u32..80, f in 0usize..6,
        ) {
            let filter = [Filter::Nearest, Filter::Box, Filter::Bilinear, Filter::Hamming, Filter::Bicubic, Filter::Lanczos][f];
            let img = ramp(iw, ih);
            let left = ((iw - 1) as f64 * fx) as u32;
            let top = ((ih - 1) as f64 * fy) as u32;
            let cw = (((iw - left) as f64 * fw).ceil() as u32).max(1);
            let ch = (((ih - top) as f64 * fh).ceil() as u32).max(1);
            let crop = image::imageops::crop_imm(&img, left, top, cw, ch).to_image();
            for order in [PassOrder::Pillow13, PassOrder::HorizontalFirst] {
                let a = resize_box_with(&crop, w, h, filter, [0.0, 0.0, cw as f32, ch as f32], order).unwrap();
                let b = crop_resize_with(&img, left, top, cw, ch, w, h, filter, order).unwrap();
                proptest::prop_assert_eq!(&a, &b);
            }
            if !vertical_first(PassOrder::Pillow13, cw as usize, ch as usize, w as usize, h as usize) {
                let a = crop_resize_with(&img, left, top, cw, ch, w, h, filter, PassOrder::Pillow13).unwrap();
                let b = crop_resize_with(&img, left, top, cw, ch, w, h, filter, PassOrder::HorizontalFirst).unwrap();
                proptest::prop_assert_eq!(a, b);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The RGB horizontal pass actually used (AVX2 on x86-64 CPUs that have it) equals Pillow's
        /// per-pixel loop, for Pillow's and torch's taps, up- and downscales and column windows.
        #[test]
        fn horizontal_pass_equals_pillow_loop(
            iw in 1usize..300, rows in 1usize..5, w in 1usize..260, x0 in 0.0f32..0.5,
            x1 in 0.5f32..1.0, f in 0usize..5, torch in proptest::bool::ANY, col_off in 0usize..3,
        ) {
            let filter = [Filter::Box, Filter::Bilinear, Filter::Hamming, Filter::Bicubic, Filter::Lanczos][f];
            let img = ramp((iw + col_off) as u32, rows as u32);
            let hor = if torch {
                torch_coeffs(iw, w, if f == 1 { 2 } else { 4 })
            } else {
                precompute(iw, x0 * iw as f32, x1 * iw as f32, w, filter)
            };
            // A column window starting at `col_off`, with bounds relative to the full row as
            // `resample_conv` passes them in the vertical-first order.
            let hor = Coeffs { bounds: hor.bounds.iter().map(|&(x, n)| (x + col_off, n)).collect(), ..hor };
            let src = View { data: img.as_raw(), stride: (iw + col_off) * 3, x0: col_off, y0: 0, w: iw, h: rows };
            let mut want = vec![0u8; rows * w * 3];
            horizontal_scalar::<3>(src, &hor, col_off, 0, rows, &mut want);
            let mut got = vec![0u8; rows * w * 3];
            horizontal_pass(src, 3, &hor, col_off, 0, rows, &mut got, &mut HorScratch::default());
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn pil_codes_round_trip() {
        for code in 0..6 {
            assert_eq!(Filter::from_pil_code(code).unwrap().pil_code() as i64, code);
        }
        assert_eq!(Filter::from_pil_code(6), None);
    }

    #[test]
    fn same_size_is_identity_for_every_filter() {
        let img = ramp(13, 7);
        for f in [
            Filter::Nearest,
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            assert_eq!(resize(&img, 13, 7, f), img, "{f:?}");
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        // Taps are normalised to sum 1 in fixed point, so a flat image must stay flat (±0).
        let img = RgbImage::from_pixel(37, 23, Rgb([200, 3, 128]));
        for (w, h) in [(5, 9), (100, 61), (37, 4), (1, 1)] {
            for f in [
                Filter::Bilinear,
                Filter::Bicubic,
                Filter::Lanczos,
                Filter::Box,
            ] {
                let out = resize(&img, w, h, f);
                assert!(
                    out.pixels().all(|p| *p == Rgb([200, 3, 128])),
                    "{f:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn bicubic_taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(100usize, 37usize), (37, 100), (98, 98), (5, 3)] {
            let c = precompute(i, 0.0, i as f32, o, Filter::Bicubic);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.k[xx * c.ksize..xx * c.ksize + n]
                    .iter()
                    .map(|&v| v as i64)
                    .sum();
                // Each tap rounds by at most 1/2 ulp: the sum is within n/2 of 2^22.
                assert!((s - (1 << 22)).abs() <= n as i64, "{i}->{o} px {xx}: {s}");
            }
        }
    }

    #[test]
    fn crop_resize_equals_crop_then_resize() {
        let img = ramp(40, 30);
        let crop = image::imageops::crop_imm(&img, 7, 3, 20, 25).to_image();
        let a = resize(&crop, 11, 17, Filter::Bicubic);
        let b = crop_resize(&img, 7, 3, 20, 25, 11, 17, Filter::Bicubic).unwrap();
        assert_eq!(a, b);
        let a = resize(&crop, 11, 17, Filter::Nearest);
        let b = crop_resize(&img, 7, 3, 20, 25, 11, 17, Filter::Nearest).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn integer_box_of_output_size_is_a_crop() {
        let img = ramp(20, 10);
        let out = resize_box(&img, 5, 4, Filter::Bicubic, [3.0, 2.0, 8.0, 6.0]).unwrap();
        let crop = image::imageops::crop_imm(&img, 3, 2, 5, 4).to_image();
        assert_eq!(out, crop);
    }

    #[test]
    fn bad_boxes_are_errors() {
        let img = ramp(20, 10);
        for b in [
            [-1.0, 0.0, 5.0, 5.0],
            [0.0, 0.0, 21.0, 5.0],
            [5.0, 0.0, 4.0, 5.0],
            [0.0, f32::NAN, 3.0, 3.0],
        ] {
            assert!(resize_box(&img, 4, 4, Filter::Bicubic, b).is_err(), "{b:?}");
        }
        assert!(resize_box(&img, 0, 4, Filter::Bicubic, [0.0, 0.0, 20.0, 10.0]).is_err());
        assert!(crop_resize(&img, 15, 0, 6, 5, 4, 4, Filter::Bicubic).is_err());
    }

    #[test]
    fn gray_and_rgb_agree_per_channel() {
        let img = ramp(31, 19);
        let out = resize(&img, 12, 40, Filter::Bicubic);
        let g = image::GrayImage::from_fn(31, 19, |x, y| Luma([img.get_pixel(x, y)[1]]));
        let og = resize(&g, 12, 40, Filter::Bicubic);
        for (p, q) in out.pixels().zip(og.pixels()) {
            assert_eq!(p[1], q[0]);
        }
    }
}
