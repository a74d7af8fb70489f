//! AVX2 kernels of the colour ops, 8 pixels (24 bytes) or 8 values at a time, each computing the
//! same `f32`/`f64`/integer operations in the same order as the scalar code in `super::pixel` (IEEE
//! arithmetic is the same in a vector lane; no FMA contraction), so the bytes are identical. The
//! callers run the scalar code on the tail.

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
        0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13,
        14, -1, -1, -1, -1,
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

/// `adjust_hue` on 8 pixels at a time: `super::pixel::rgb_to_hsv`, `H + shift` (wrapping), then
/// `super::pixel::hsv_to_rgb`, with every branch computed and selected per lane.
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
        let ratio = |c: __m256i| _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, c)), crf);
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
