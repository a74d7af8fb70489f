//! Colours: the named palette of object colours (the `color` probe's classes) and the random
//! low-saturation colours of backgrounds, papers and panels.
//!
//! Named colours are fully saturated hues spaced around the colour wheel; backgrounds are kept at
//! saturation ≤ 0.3 so an object's colour name is always readable against them.

use super::canvas::Rgb;
use super::rng::SynthRng;

/// Names of the object colours, in class-id order.
pub const COLOR_NAMES: [&str; 8] = [
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink",
];

/// Reference RGB of each named colour.
pub(crate) const COLORS: [Rgb; 8] = [
    [215.0, 35.0, 35.0],
    [245.0, 135.0, 20.0],
    [240.0, 215.0, 30.0],
    [40.0, 160.0, 55.0],
    [35.0, 195.0, 215.0],
    [40.0, 70.0, 210.0],
    [135.0, 55.0, 190.0],
    [245.0, 115.0, 185.0],
];

/// The named colour nearest to `c` (Euclidean in RGB): what a pixel "is" for the colour probe.
pub fn nearest_named(c: [u8; 3]) -> usize {
    let mut best = (f32::MAX, 0);
    for (k, r) in COLORS.iter().enumerate() {
        let d: f32 = (0..3).map(|i| (c[i] as f32 - r[i]).powi(2)).sum();
        if d < best.0 {
            best = (d, k);
        }
    }
    best.1
}

/// Named colour `k` with a small per-channel jitter (±`jitter`), so instances of a class are not identical.
pub(crate) fn jittered(rng: &mut SynthRng, k: usize, jitter: f32) -> Rgb {
    let c = COLORS[k];
    [
        (c[0] + rng.range(-jitter, jitter)).clamp(0.0, 255.0),
        (c[1] + rng.range(-jitter, jitter)).clamp(0.0, 255.0),
        (c[2] + rng.range(-jitter, jitter)).clamp(0.0, 255.0),
    ]
}

/// HSV (h in turns, s and v in [0, 1]) to 0–255 RGB.
pub(crate) fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// A muted colour for backgrounds: any hue, saturation ≤ `max_sat`, value in `[vlo, vhi]`.
pub(crate) fn muted(rng: &mut SynthRng, max_sat: f32, vlo: f32, vhi: f32) -> Rgb {
    hsv(rng.unit(), rng.range(0.0, max_sat), rng.range(vlo, vhi))
}

/// Relative luminance in 0–255 (Rec. 709 weights), for picking a contrasting ink.
pub(crate) fn luma(c: Rgb) -> f32 {
    0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
}

/// Linear interpolation between two colours.
pub(crate) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Multiplies a colour's brightness (shading), clamped.
pub(crate) fn shade(c: Rgb, k: f32) -> Rgb {
    [
        (c[0] * k).clamp(0.0, 255.0),
        (c[1] * k).clamp(0.0, 255.0),
        (c[2] * k).clamp(0.0, 255.0),
    ]
}

/// An ink that contrasts with `paper`: dark on light, light on dark, with a little hue variety.
pub(crate) fn contrasting_ink(rng: &mut SynthRng, paper: Rgb) -> Rgb {
    if luma(paper) > 128.0 {
        hsv(rng.unit(), rng.range(0.0, 0.6), rng.range(0.0, 0.22))
    } else {
        hsv(rng.unit(), rng.range(0.0, 0.25), rng.range(0.9, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_is_separable_under_jitter() {
        // Jitter of ±15 plus ±12% shading must never move a colour to another name.
        for (k, c) in COLORS.iter().enumerate() {
            for &s in &[0.88f32, 1.0, 1.12] {
                for &d in &[-15.0f32, 15.0] {
                    let q = [
                        (c[0] * s + d).round().clamp(0.0, 255.0) as u8,
                        (c[1] * s - d).round().clamp(0.0, 255.0) as u8,
                        (c[2] * s + d).round().clamp(0.0, 255.0) as u8,
                    ];
                    assert_eq!(
                        nearest_named(q),
                        k,
                        "{} shaded {s} jitter {d}",
                        COLOR_NAMES[k]
                    );
                }
            }
        }
    }

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [255.0, 0.0, 0.0]);
        assert_eq!(
            hsv(1.0 / 3.0, 1.0, 1.0).map(|v| v.round()),
            [0.0, 255.0, 0.0]
        );
        assert_eq!(hsv(0.5, 0.0, 0.5), [127.5, 127.5, 127.5]);
    }
}
