//! JPEG decoding with libjpeg-turbo itself, configured as Pillow configures it, so that decoded
//! pixels equal `Image.open(f).convert("RGB")` bit for bit.
//!
//! Why libjpeg-turbo and not a Rust decoder: Pillow, torchvision's `decode_jpeg` and so every
//! reference pipeline decode with libjpeg-turbo, whose output is defined by its integer arithmetic
//! (the `jidctint.c` "islow" IDCT, the `jdsample.c` fancy (triangle) chroma upsampling, the
//! `jdcolor.c` YCbCr→RGB tables). zune-jpeg, used before, rounds differently: up to 3 levels on
//! 4:2:0 photos (mean 0.35), enough to move ViT features by 5e-4–1.4e-3 (issue #21). The library
//! comes from `mozjpeg-sys`, which vendors libjpeg-turbo's decoder (MozJPEG only changes the encoder)
//! and compiles it with `cc`. By default its NASM SIMD is off, so the build needs nothing but a C
//! compiler; the `jpeg-simd` feature turns it on (needs `nasm`). libjpeg-turbo's SIMD and C paths give
//! identical islow output (the corpus test passes with both), so this is a speed choice only. Decode
//! rate on 500×375 q90 photos, per CPU-second (`examples/decode_speed.rs`, 2-core EPYC VM): C only
//! 472 img/s, SIMD 1380, zune-jpeg 700-870.
//!
//! Pillow's settings reproduced (`PIL/JpegImagePlugin.py`, `src/decode.c`, `src/libImaging/JpegDecode.c`):
//! - the mode comes from the number of components: 1 → `L` (libjpeg `JCS_GRAYSCALE` out),
//!   3 → `RGB` (`JCS_RGB`: libjpeg converts YCbCr, or passes RGB through for Adobe transform 0),
//!   4 → `CMYK` read with rawmode `CMYK;I` (Pillow always assumes Adobe's inverted CMYK; YCCK is
//!   converted to CMYK by libjpeg); `jpeg_color_space` is left to libjpeg's detection as in Pillow;
//! - `dct_method = JDCT_ISLOW` and `do_fancy_upsampling = TRUE` (libjpeg's defaults, which Pillow
//!   only changes in `draft()`), full scale;
//! - `convert("RGB")`: `L` is replicated, `CMYK` goes through Pillow's `cmyk2rgb` ([`cmyk_to_rgb`]);
//! - no EXIF orientation (Pillow applies it only through `ImageOps.exif_transpose`);
//! - a truncated file is an error, as Pillow's default `LOAD_TRUNCATED_IMAGES = False` raises
//!   "image file is truncated": libjpeg's memory source reports running out of data with the warning
//!   `JWRN_JPEG_EOF` (and pads with grey), which is turned into an error here, including a missing
//!   end-of-image marker after the last scan (`jpeg_finish_decompress` reads up to it). Other
//!   libjpeg warnings (corrupt-data recoveries) are ignored, as Pillow ignores them.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return; here it unwinds
//! (`mozjpeg-sys`'s `unwinding` feature compiles the C with `-fexceptions` and declares the
//! callbacks `C-unwind`) with `resume_unwind`, which skips the panic hook, and [`decode`] catches it.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use image::RgbImage;
use mozjpeg_sys::{
    J_COLOR_SPACE, J_DCT_METHOD, jpeg_common_struct, jpeg_create_decompress,
    jpeg_decompress_struct, jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress,
    jpeg_mem_src, jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress, jpeg_std_error,
};

use super::{check_pixels, decode_err};
use crate::error::Result;

/// libjpeg's `JWRN_JPEG_EOF` ("Premature end of JPEG file"): the source ran out of data.
const JWRN_JPEG_EOF: c_int = mozjpeg_sys::JWRN_JPEG_EOF as c_int;

/// The payload of a libjpeg error unwound out of the C code.
struct JpegFailure(String);

/// One libjpeg decompressor and its error manager, boxed together so the pointer from `cinfo` to
/// `err` stays valid; dropping it (also while unwinding) releases libjpeg's memory pools.
struct Decompressor {
    cinfo: jpeg_decompress_struct,
    err: jpeg_error_mgr,
}

impl Decompressor {
    fn new() -> Box<Self> {
        // SAFETY: both are plain C structs for which all-zero is the state libjpeg expects before
        // `jpeg_std_error` / `jpeg_create_decompress` initialise them (`jpeg_destroy` on a zeroed
        // struct is a no-op, so an early drop is safe too).
        let mut d: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        unsafe {
            jpeg_std_error(&mut d.err);
            d.err.error_exit = Some(error_exit);
            d.err.emit_message = Some(emit_message);
            d.cinfo.common.err = &mut d.err;
            jpeg_create_decompress(&mut d.cinfo);
        }
        d
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was created by `jpeg_create_decompress` (or is still zeroed).
        unsafe { jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

/// libjpeg's message text for the code in `cinfo.err` (libjpeg's own `format_message`).
fn message(cinfo: &mut jpeg_common_struct) -> String {
    let buf = [0u8; 80];
    // SAFETY: `err` points at the `jpeg_error_mgr` set up by `Decompressor::new`, whose
    // `format_message` is libjpeg's, writing a NUL-terminated string of at most 80 bytes.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &buf);
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let msg = message(cinfo);
    resume_unwind(Box::new(JpegFailure(msg)))
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: `err` is valid for the decompressor's lifetime (see `message`).
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == JWRN_JPEG_EOF {
        resume_unwind(Box::new(JpegFailure(
            "truncated JPEG (the data ends before the image does)".into(),
        )))
    }
}

/// Reads only the JPEG header and returns `(width, height)`.
pub(super) fn dimensions(bytes: &[u8], what: &str) -> Result<(u32, u32)> {
    run(what, || {
        let mut d = Decompressor::new();
        // SAFETY: `bytes` outlives `d` (dropped at the end of this closure).
        unsafe {
            jpeg_mem_src(&mut d.cinfo, bytes.as_ptr(), bytes.len() as _);
            jpeg_read_header(&mut d.cinfo, 1);
        }
        Ok((d.cinfo.image_width, d.cinfo.image_height))
    })
}

/// Decodes a JPEG as Pillow's `Image.open(...).convert("RGB")` (module docs). The header is read
/// first and an image over `max_pixels` is rejected before any pixel buffer is allocated.
pub(super) fn decode(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage> {
    run(what, || {
        let mut d = Decompressor::new();
        let cinfo = &mut d.cinfo;
        // SAFETY: `bytes` outlives the decompressor; libjpeg only reads it.
        unsafe {
            jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as _);
            jpeg_read_header(cinfo, 1);
        }
        let (width, height) = (cinfo.image_width, cinfo.image_height);
        check_pixels(width, height, what, max_pixels)?;
        cinfo.out_color_space = match cinfo.num_components {
            1 => J_COLOR_SPACE::JCS_GRAYSCALE,
            3 => J_COLOR_SPACE::JCS_RGB,
            4 => J_COLOR_SPACE::JCS_CMYK,
            n => {
                // Pillow: "cannot handle {n}-layer images".
                return Err(decode_err(
                    what,
                    format!("JPEG with {n} components (Pillow reads 1, 3 or 4)"),
                ));
            }
        };
        cinfo.dct_method = J_DCT_METHOD::JDCT_ISLOW;
        cinfo.do_fancy_upsampling = 1;
        // SAFETY: header read, output parameters set.
        unsafe { jpeg_start_decompress(cinfo) };
        let channels = cinfo.output_components as usize;
        let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
        let mut out = vec![0u8; w * h * 3];
        let mut row = vec![0u8; if channels == 3 { 0 } else { w * channels }];
        for y in 0..h {
            let dst = &mut out[y * w * 3..(y + 1) * w * 3];
            let target = if channels == 3 {
                dst.as_mut_ptr()
            } else {
                row.as_mut_ptr()
            };
            let mut rows = [target];
            // SAFETY: `target` holds one output row of `w * channels` bytes.
            let got = unsafe { jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), 1) };
            if got != 1 {
                return Err(decode_err(what, "libjpeg returned no scanline"));
            }
            match channels {
                3 => {}
                1 => {
                    for (px, &v) in dst.chunks_exact_mut(3).zip(&row) {
                        px.fill(v);
                    }
                }
                _ => {
                    for (px, cmyk) in dst.chunks_exact_mut(3).zip(row.chunks_exact(4)) {
                        px.copy_from_slice(&cmyk_to_rgb(cmyk));
                    }
                }
            }
        }
        // SAFETY: all scanlines were read; this consumes the rest of the stream up to EOI.
        unsafe { jpeg_finish_decompress(cinfo) };
        Ok(RgbImage::from_raw(w as u32, h as u32, out).expect("RGB buffer sized w*h*3"))
    })
}

/// Runs a libjpeg session, turning a libjpeg error unwound out of the C code into a decode error.
fn run<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<JpegFailure>() {
            Ok(failure) => Err(decode_err(what, format!("JPEG: {}", failure.0))),
            Err(other) => resume_unwind(other),
        },
    }
}

/// Pillow's `CMYK;I` unpacking (`unpackI`, C = 255 − stored) followed by `convert("RGB")`'s
/// `cmyk2rgb` (`src/libImaging/Convert.c`): `nk = 255 − K; R = clip(nk − MULDIV255(C, nk))`,
/// with `MULDIV255(a, b) = ((a·b + 128) + ((a·b + 128) >> 8)) >> 8`.
pub(super) fn cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let nk = i32::from(stored[3]); // 255 − (255 − stored K)
    let band = |s: u8| {
        let c = 255 - i32::from(s);
        let t = c * nk + 128;
        let m = ((t >> 8) + t) >> 8;
        (nk - m).clamp(0, 255) as u8
    };
    [band(stored[0]), band(stored[1]), band(stored[2])]
}
