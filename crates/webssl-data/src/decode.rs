//! Image decoding to 8-bit RGB with PIL's `Image.open(f).convert("RGB")` semantics.
//!
//! Reference: the torchvision/timm/dinov2 data path opens every image with PIL and calls
//! `convert("RGB")` (`torchvision.datasets.folder.pil_loader`, webdataset's `"pil"`/`"rgb8"` decoders).
//! Features trained in Rust must see the same pixels, so this module reproduces that call:
//!
//! - **Formats**: JPEG (libjpeg-turbo, configured as Pillow: [`jpeg`]), PNG, WebP, GIF (first frame
//!   only, as PIL's `open` without `seek`) through `image`. The format is sniffed from the magic
//!   bytes, never from a file name.
//! - **Alpha is dropped, not composited** (PIL `RGBA -> RGB` and `LA -> RGB` discard the alpha band):
//!   a fully transparent pixel keeps whatever colour it stores.
//! - **Grayscale** is replicated into the three bands (PIL `L -> RGB`).
//! - **Palette** images are expanded through their palette (PIL `P -> RGB`, transparency ignored).
//! - **JPEG** is bit-identical to Pillow's libjpeg-turbo for every chroma subsampling, progressive
//!   and restart-marker files, grayscale and CMYK/YCCK ([`jpeg`] says how).
//! - **16-bit** PNGs follow Pillow's modes: `RGB;16B`/`RGBA;16B`/`LA;16B` keep the most significant
//!   byte; 16-bit grayscale opens as `I;16` and `I;16 -> RGB` *clips* to 255 (it does not rescale).
//!   That Pillow behaviour whitens most 16-bit gray images; we keep it deliberately for parity.
//! - **No EXIF orientation** is applied (PIL/torchvision do not call `exif_transpose` by default).
//! - **Decompression-bomb cap**: the dimensions are read from the header first and an image with
//!   more than `max_pixels` pixels is rejected before any pixel buffer is allocated.
//!   [`DEFAULT_MAX_PIXELS`] equals Pillow's `DecompressionBombError` threshold
//!   (`2 * MAX_IMAGE_PIXELS`, `PIL/Image.py::_decompression_bomb_check`).
//!
//! Deviations: for a GIF whose first frame is smaller than the logical screen, `image` composes it
//! on a transparent-black canvas, while Pillow fills the canvas from the frame's transparency (or
//! background) index; a PNG missing its final `IEND` bytes is an error here but loads in Pillow.
//! A truncated JPEG is an error, as in Pillow by default (`LOAD_TRUNCATED_IMAGES = False`).

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{DataError, Result};

mod jpeg;

/// Pillow's `DecompressionBombError` threshold: `Image.MAX_IMAGE_PIXELS * 2` = `2 * 89_478_485`.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// The image formats this build decodes, by their canonical WebDataset extension.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "gif"];

/// True when `ext` (lowercase or not, without the dot) names a decodable image format.
pub fn is_image_ext(ext: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Sniffs the format from the magic bytes and returns its canonical extension
/// (`jpg`, `png`, `webp`, `gif`), or `None` for anything this build cannot decode.
pub fn sniff_ext(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        ImageFormat::Jpeg => Some("jpg"),
        ImageFormat::Png => Some("png"),
        ImageFormat::WebP => Some("webp"),
        ImageFormat::Gif => Some("gif"),
        _ => None,
    }
}

fn decode_err(what: &str, reason: impl std::fmt::Display) -> DataError {
    DataError::Decode {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn reader<'a>(bytes: &'a [u8], what: &str) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    if bytes.is_empty() {
        return Err(decode_err(what, "zero bytes"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(what, e))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif) => {
            Ok(reader)
        }
        Some(other) => Err(decode_err(what, format!("unsupported format {other:?}"))),
        None => Err(decode_err(what, "not an image (unknown magic bytes)")),
    }
}

/// Reads only the header and returns `(width, height)`; no pixel data is decoded.
pub fn image_dimensions(bytes: &[u8], what: &str) -> Result<(u32, u32)> {
    let reader = reader(bytes, what)?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        return jpeg::dimensions(bytes, what);
    }
    reader.into_dimensions().map_err(|e| decode_err(what, e))
}

/// Checks `width * height` against the cap (and rejects empty images).
pub fn check_pixels(width: u32, height: u32, what: &str, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(decode_err(what, format!("empty image {width}x{height}")));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DataError::TooLarge {
            what: what.to_string(),
            width,
            height,
            cap: max_pixels,
        });
    }
    Ok(())
}

/// Decodes `bytes` to 8-bit RGB exactly as PIL's `Image.open(...).convert("RGB")` would
/// (see the module docs). `what` names the image in errors (`shard.tar:key` or a path).
///
/// The header is parsed first and an image over `max_pixels` pixels fails with
/// [`DataError::TooLarge`] before the decoder allocates its pixel buffer.
pub fn decode_rgb(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage> {
    let mut reader = reader(bytes, what)?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        return jpeg::decode(bytes, what, max_pixels);
    }
    let (width, height) = image_dimensions(bytes, what)?;
    check_pixels(width, height, what, max_pixels)?;
    // The header was trusted for the cap; the limits make the decoder enforce the same dimensions
    // while it runs. `image`'s default 512 MiB allocation cap would reject legitimate images under
    // Pillow's cap (a 178 Mpx RGBA16 buffer is 1.4 GB), so we allow what the checked size needs.
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(
        (u64::from(width) * u64::from(height))
            .saturating_mul(16)
            .max(64 << 20),
    );
    reader.limits(limits);
    let img = reader.decode().map_err(|e| decode_err(what, e))?;
    Ok(to_rgb_like_pil(img))
}

/// Converts any decoded image to RGB8 with Pillow's `convert("RGB")` rules (module docs).
pub fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let px = (w as usize) * (h as usize);
    let mut out = Vec::with_capacity(px * 3);
    match img {
        DynamicImage::ImageRgb8(im) => return im,
        DynamicImage::ImageRgba8(im) => {
            for p in im.as_raw().chunks_exact(4) {
                out.extend_from_slice(&p[..3]);
            }
        }
        DynamicImage::ImageLuma8(im) => {
            for &v in im.as_raw() {
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(im) => {
            for p in im.as_raw().chunks_exact(2) {
                out.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
        // Pillow opens 16-bit gray PNG as `I;16`; `I;16 -> RGB` clips each value to 255.
        DynamicImage::ImageLuma16(im) => {
            for &v in im.as_raw() {
                let v = v.min(255) as u8;
                out.extend_from_slice(&[v, v, v]);
            }
        }
        // `LA;16B`, `RGB;16B`, `RGBA;16B` unpackers keep the most significant byte.
        DynamicImage::ImageLumaA16(im) => {
            for p in im.as_raw().chunks_exact(2) {
                let v = (p[0] >> 8) as u8;
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(im) => {
            out.extend(im.as_raw().iter().map(|&v| (v >> 8) as u8));
        }
        DynamicImage::ImageRgba16(im) => {
            for p in im.as_raw().chunks_exact(4) {
                out.extend(p[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        // Float images do not come out of the decoders enabled here; `image`'s own conversion
        // (clamp and scale) is the reasonable fallback.
        other => return other.to_rgb8(),
    }
    // The buffer length is exactly w*h*3 by construction, so `from_raw` cannot fail.
    RgbImage::from_raw(w, h, out).expect("RGB buffer sized w*h*3")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageEncoder, Rgba, RgbaImage};

    fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn rgba_drops_alpha_without_compositing() {
        let mut im = RgbaImage::new(3, 2);
        im.put_pixel(0, 0, Rgba([200, 10, 20, 0]));
        im.put_pixel(1, 0, Rgba([1, 2, 3, 128]));
        let bytes = png_bytes(&DynamicImage::ImageRgba8(im));
        let rgb = decode_rgb(&bytes, "t", DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [200, 10, 20]);
        assert_eq!(rgb.get_pixel(1, 0).0, [1, 2, 3]);
        assert_eq!(rgb.dimensions(), (3, 2));
    }

    #[test]
    fn gray_is_replicated() {
        let im = GrayImage::from_raw(2, 1, vec![7, 250]).unwrap();
        let rgb = decode_rgb(
            &png_bytes(&DynamicImage::ImageLuma8(im)),
            "t",
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(rgb.as_raw(), &vec![7, 7, 7, 250, 250, 250]);
    }

    #[test]
    fn sixteen_bit_follows_pillow_modes() {
        let g = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(3, 1, vec![100u16, 256, 65535])
            .unwrap();
        let rgb = to_rgb_like_pil(DynamicImage::ImageLuma16(g));
        assert_eq!(
            rgb.as_raw(),
            &vec![100, 100, 100, 255, 255, 255, 255, 255, 255]
        );
        let c = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
            1,
            1,
            vec![0x12ffu16, 0x3400, 0xff01],
        )
        .unwrap();
        assert_eq!(
            to_rgb_like_pil(DynamicImage::ImageRgb16(c)).as_raw(),
            &vec![0x12, 0x34, 0xff]
        );
    }

    #[test]
    fn zero_bytes_and_garbage_are_errors() {
        assert!(matches!(
            decode_rgb(&[], "z", DEFAULT_MAX_PIXELS),
            Err(DataError::Decode { .. })
        ));
        let e = decode_rgb(b"hello, not an image", "a.tar:k", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.to_string().contains("a.tar:k"), "{e}");
        // A valid PNG signature followed by garbage.
        let mut bad = png_bytes(&DynamicImage::ImageLuma8(GrayImage::new(4, 4)));
        bad.truncate(40);
        assert!(decode_rgb(&bad, "t", DEFAULT_MAX_PIXELS).is_err());
    }

    /// A PNG whose IHDR claims 100000x100000 (10^10 pixels, 30 GB as RGB) but carries no data:
    /// it must be rejected from the header alone, without allocating.
    #[test]
    fn pixel_cap_rejects_from_the_header() {
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(b"IHDR");
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        // The png crate reads up to the first IDAT for the header: give it one, with 4 bytes of
        // junk (no pixel data could ever come out of it), then IEND.
        for (kind, data) in [
            (&b"IDAT"[..], &[0x78u8, 0x9c, 0, 0][..]),
            (&b"IEND"[..], &[][..]),
        ] {
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(data);
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        assert_eq!(image_dimensions(&png, "bomb").unwrap(), (100_000, 100_000));
        match decode_rgb(&png, "bomb", DEFAULT_MAX_PIXELS) {
            Err(DataError::TooLarge {
                width, height, cap, ..
            }) => {
                assert_eq!((width, height, cap), (100_000, 100_000, DEFAULT_MAX_PIXELS));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The cap is inclusive: exactly max_pixels passes the check.
        assert!(check_pixels(10, 10, "x", 100).is_ok());
        assert!(check_pixels(10, 11, "x", 100).is_err());
        assert!(check_pixels(0, 11, "x", 100).is_err());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn sniffing_ignores_names() {
        let im = GrayImage::new(2, 2);
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(im.as_raw(), 2, 2, image::ExtendedColorType::L8)
            .unwrap();
        assert_eq!(sniff_ext(&buf), Some("png"));
        assert_eq!(sniff_ext(b"GIF89a...."), Some("gif"));
        assert_eq!(sniff_ext(b"plain text"), None);
        assert!(is_image_ext("JPEG") && !is_image_ext("txt"));
    }

    fn fixture_index(name: &str) -> (std::path::PathBuf, serde_json::Value) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/decode");
        let index = serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        (dir, index)
    }

    /// Parity with Pillow 13 `convert("RGB")` on the fixtures from `fixtures/decode/make_decode.py`:
    /// every format, JPEG included, bit for bit.
    #[test]
    fn parity_with_pillow_fixtures() {
        let (dir, index) = fixture_index("decode.json");
        let cases = index["cases"].as_object().unwrap();
        assert!(cases.len() >= 10);
        for (name, case) in cases {
            let bytes = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let got = decode_rgb(&bytes, name, DEFAULT_MAX_PIXELS).unwrap();
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            assert_eq!(got.dimensions(), (w, h), "{name}");
            let differing = got
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "{name}: {differing} bytes differ from Pillow");
        }
    }

    /// The JPEG corpus of `fixtures/decode/make_jpeg_corpus.py` (real photos as baseline and
    /// progressive, 4:4:4 / 4:2:2 / 4:2:0, restart markers, Adobe RGB, grayscale, CMYK, YCCK, EXIF
    /// rotation, partial MCUs): the SHA-256 of the decoded RGB equals that of Pillow's.
    #[test]
    fn jpeg_corpus_is_bit_identical_to_pillow() {
        use sha2::{Digest, Sha256};
        let (dir, index) = fixture_index("jpeg.json");
        let cases = index["cases"].as_object().unwrap();
        assert!(cases.len() >= 18, "{} cases", cases.len());
        for (name, case) in cases {
            let bytes = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
            assert_eq!(sniff_ext(&bytes), Some("jpg"), "{name}");
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            assert_eq!(image_dimensions(&bytes, name).unwrap(), (w, h), "{name}");
            let got = decode_rgb(&bytes, name, DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(got.dimensions(), (w, h), "{name}");
            let hash: String = Sha256::digest(got.as_raw())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                hash,
                case["sha256"].as_str().unwrap(),
                "{name} ({}) differs from Pillow",
                case["exercises"]
            );
            // Pillow refuses these cuts (checked by the script): so must we.
            for cut in [bytes.len() / 2, bytes.len() - 2] {
                let r = decode_rgb(&bytes[..cut], name, DEFAULT_MAX_PIXELS);
                assert!(
                    matches!(&r, Err(DataError::Decode { reason, .. }) if reason.contains("JPEG")),
                    "{name} cut to {cut} bytes: {r:?}"
                );
            }
        }
    }

    /// Pillow's `CMYK;I` + `cmyk2rgb`, checked on values worked out by hand from Convert.c.
    #[test]
    fn cmyk_conversion_matches_pillow_formula() {
        // Stored (inverted) 255 everywhere = C=M=Y=K=0 → white; stored K 0 = K 255 → black.
        assert_eq!(jpeg::cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(jpeg::cmyk_to_rgb(&[255, 0, 128, 0]), [0, 0, 0]);
        // nk = 200, C = 255 - 55 = 200: 200 - MULDIV255(200, 200) = 200 - 157 = 43.
        assert_eq!(jpeg::cmyk_to_rgb(&[55, 255, 0, 200])[0], 43);
    }

    #[test]
    fn jpeg_errors_name_the_image_and_the_cause() {
        let (dir, _) = fixture_index("jpeg.json");
        let bytes = std::fs::read(dir.join("jpeg/astronaut_420.jpg")).unwrap();
        // Header fine, dimensions over the cap: rejected before decoding.
        assert!(matches!(
            decode_rgb(&bytes, "a", 100 * 98),
            Err(DataError::TooLarge {
                width: 101,
                height: 99,
                ..
            })
        ));
        // A corrupt SOF (precision 12 is not in this 8-bit build, nor in Pillow's JPEG plugin).
        let mut bad = bytes.clone();
        let sof = bad.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bad[sof + 4] = 12;
        let e = decode_rgb(&bad, "shard.tar:k", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.to_string().contains("shard.tar:k"), "{e}");
        // Only the SOI marker.
        assert!(decode_rgb(&[0xFF, 0xD8, 0xFF], "s", DEFAULT_MAX_PIXELS).is_err());
    }

    /// Every fixture cut in half must fail to decode, as in Pillow. Cut by 2 bytes, Pillow still
    /// fails on JPEG (EOI gone) and WebP, but accepts GIF (trailer gone) and PNG (IEND cut); `png`
    /// is stricter there, which only matters for already-damaged files.
    #[test]
    fn truncated_files_are_errors() {
        let (dir, index) = fixture_index("decode.json");
        for (name, case) in index["cases"].as_object().unwrap() {
            let file = case["file"].as_str().unwrap();
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let r = decode_rgb(&bytes[..bytes.len() / 2], name, DEFAULT_MAX_PIXELS);
            assert!(r.is_err(), "{name} cut in half decoded");
            if file.ends_with(".jpg") || file.ends_with(".webp") {
                let r = decode_rgb(&bytes[..bytes.len() - 2], name, DEFAULT_MAX_PIXELS);
                assert!(r.is_err(), "{name} without its last 2 bytes decoded");
            }
        }
    }
}
