//! Perceptual hash (pHash) for near-duplicate detection.
//!
//! Reference: `imagehash.phash` (JohannesBuchner/imagehash, `hash_size = 8`, `highfreq_factor = 4`),
//! the de-facto pHash of web-data pipelines:
//! 1. convert to 8-bit grayscale with Pillow's `convert("L")` rule, `L = (19595 R + 38470 G + 7471 B
//!    + 2^15) >> 16` (ITU-R 601-2 luma in 16-bit fixed point, `libImaging/Convert.c`);
//! 2. resize to 32×32 with Pillow's LANCZOS filter (our bit-exact Pillow resampler,
//!    [`webssl_data::resize`]);
//! 3. 2-D DCT-II (scipy `fftpack.dct` along axis 0, then axis 1; unnormalised);
//! 4. keep the 8×8 lowest frequencies (DC included, as imagehash does) and set a bit for every
//!    coefficient strictly greater than their median (numpy median: the mean of the two middle
//!    values of 64).
//!
//! Bits are packed row-major with coefficient (0, 0) as the most significant bit, so
//! `format!("{:016x}", hash)` equals `str(imagehash.phash(img))`. `fixtures/curate/make_curate.py`
//! recomputes those steps with Pillow + scipy on the fixture photos; the test allows a Hamming
//! distance of 2 to the reference (a coefficient within float rounding of the median may flip).
//!
//! Only the 8×8 needed coefficients are computed (`C · P · Cᵀ` with an 8×32 cosine matrix), in f64.
//! Hand-written rather than the `image_hasher` crate: that crate resizes with `image`'s filters, so
//! its hashes differ from imagehash's, and the whole transform is these 40 lines.

use image::{GrayImage, Luma, RgbImage};
use webssl_data::resize::{Filter, resize};

/// Side of the grayscale image the DCT runs on (`hash_size · highfreq_factor`).
pub const DCT_SIDE: usize = 32;
/// Side of the low-frequency block that gives the 64 bits.
pub const HASH_SIDE: usize = 8;

/// Pillow `convert("L")` of an RGB image.
pub fn to_luma_like_pil(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0;
        let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
        Luma([l as u8])
    })
}

/// 64-bit pHash of an RGB image (module docs). `None` for an empty image.
pub fn phash(img: &RgbImage) -> Option<u64> {
    if img.width() == 0 || img.height() == 0 {
        return None;
    }
    let gray = to_luma_like_pil(img);
    let small = resize(&gray, DCT_SIDE as u32, DCT_SIDE as u32, Filter::Lanczos);
    Some(phash_of_32x32(small.as_raw()))
}

/// pHash of a row-major 32×32 grayscale block.
pub fn phash_of_32x32(pixels: &[u8]) -> u64 {
    debug_assert_eq!(pixels.len(), DCT_SIDE * DCT_SIDE);
    let n = DCT_SIDE as f64;
    // scipy DCT-II: y[k] = 2 Σ_n x[n] cos(π k (2n + 1) / 2N). The factor 2 per axis scales every
    // coefficient alike and cannot change the comparison with the median, but we keep it so the
    // intermediate values match scipy's for debugging.
    let mut cos = [[0f64; DCT_SIDE]; HASH_SIDE];
    for (k, row) in cos.iter_mut().enumerate() {
        for (i, c) in row.iter_mut().enumerate() {
            *c = 2.0 * (std::f64::consts::PI * k as f64 * (2.0 * i as f64 + 1.0) / (2.0 * n)).cos();
        }
    }
    // Along axis 0 (rows of the image): t[u][x] = Σ_y cos[u][y] p[y][x].
    let mut t = [[0f64; DCT_SIDE]; HASH_SIDE];
    for u in 0..HASH_SIDE {
        for y in 0..DCT_SIDE {
            let c = cos[u][y];
            for x in 0..DCT_SIDE {
                t[u][x] += c * f64::from(pixels[y * DCT_SIDE + x]);
            }
        }
    }
    // Along axis 1: low[u][v] = Σ_x t[u][x] cos[v][x].
    let mut low = [0f64; HASH_SIDE * HASH_SIDE];
    for u in 0..HASH_SIDE {
        for v in 0..HASH_SIDE {
            low[u * HASH_SIDE + v] = (0..DCT_SIDE).map(|x| t[u][x] * cos[v][x]).sum();
        }
    }
    let mut sorted = low;
    sorted.sort_by(f64::total_cmp);
    let half = sorted.len() / 2;
    let median = (sorted[half - 1] + sorted[half]) / 2.0;
    low.iter()
        .fold(0u64, |acc, &c| (acc << 1) | u64::from(c > median))
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32, phase: f32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let fx = x as f32 / w as f32;
            let fy = y as f32 / h as f32;
            let v = ((fx * 6.0 + phase).sin() * (fy * 4.0).cos() * 100.0 + 128.0) as u8;
            image::Rgb([v, v / 2, 255 - v])
        })
    }

    #[test]
    fn resized_copy_is_close_and_other_image_far() {
        let a = gradient(200, 150, 0.0);
        let b = image::imageops::resize(&a, 120, 90, image::imageops::FilterType::Triangle);
        let c = gradient(200, 150, 2.5);
        let (ha, hb, hc) = (phash(&a).unwrap(), phash(&b).unwrap(), phash(&c).unwrap());
        assert!(hamming(ha, hb) <= 4, "{ha:016x} vs {hb:016x}");
        assert!(hamming(ha, hc) > 12, "{ha:016x} vs {hc:016x}");
    }

    #[test]
    fn luma_matches_pil_rounding() {
        let img = RgbImage::from_raw(3, 1, vec![255, 255, 255, 0, 0, 0, 10, 200, 30]).unwrap();
        let l = to_luma_like_pil(&img);
        // PIL: Image.new("RGB",(1,1),(10,200,30)).convert("L").getpixel((0,0)) == 124
        assert_eq!(l.as_raw(), &[255, 0, 124]);
    }

    #[test]
    fn hash_has_half_the_bits_set_without_ties() {
        let h = phash(&gradient(64, 64, 1.0)).unwrap();
        assert_eq!(h.count_ones(), 32);
        assert!(phash(&RgbImage::new(0, 0)).is_none());
    }
}
