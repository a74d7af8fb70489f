//! Scene-like backgrounds: gradients, stripes, checks, dots, value-noise "clouds" and a horizon
//! landscape, all in muted colours (saturation ≤ 0.3, see [`super::palette`]) so objects and signs stand out.
//!
//! Each background is also a depth plane: a gently tilted far plane (depth 200–255), or for the landscape a
//! sky at infinity (255) above a ground plane that comes nearer towards the bottom of the image (235 → 150),
//! the layout of an outdoor photograph.

use super::canvas::{Canvas, Rgb};
use super::palette::{mix, muted};
use super::rng::SynthRng;

/// What was drawn, for captions and metadata.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Background {
    /// Short name stored in `labels.background`.
    pub name: &'static str,
    /// Noun phrase for captions ("a striped background").
    pub phrase: &'static str,
}

/// Background kinds in draw-index order.
pub(crate) const KINDS: [Background; 7] = [
    Background {
        name: "gradient",
        phrase: "a gradient background",
    },
    Background {
        name: "radial",
        phrase: "a radial gradient background",
    },
    Background {
        name: "stripes",
        phrase: "a striped background",
    },
    Background {
        name: "checker",
        phrase: "a checkered background",
    },
    Background {
        name: "clouds",
        phrase: "a mottled textured background",
    },
    Background {
        name: "landscape",
        phrase: "a horizon",
    },
    Background {
        name: "dots",
        phrase: "a dotted background",
    },
];

/// Signed-distance square wave: coverage (0–1, anti-aliased over one pixel) of the "on" half of a periodic
/// pattern with period `period` pixels at coordinate `u` pixels.
fn square_wave(u: f32, period: f32) -> f32 {
    let m = (u / period - 0.25 + 0.5).rem_euclid(1.0) - 0.5; // cycles from the centre of the "on" half
    (period * (0.25 - m.abs()) + 0.5).clamp(0.0, 1.0)
}

/// Smooth value noise on a `g × g` lattice of random values (bilinear with smoothstep weights).
struct ValueNoise {
    g: usize,
    v: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut SynthRng, g: usize) -> Self {
        ValueNoise {
            g,
            v: (0..(g + 1) * (g + 1)).map(|_| rng.unit()).collect(),
        }
    }

    /// Noise at `(u, v)` in `[0, 1]²`.
    fn at(&self, u: f32, v: f32) -> f32 {
        let gx = (u.clamp(0.0, 1.0) * self.g as f32).min(self.g as f32 - 1e-3);
        let gy = (v.clamp(0.0, 1.0) * self.g as f32).min(self.g as f32 - 1e-3);
        let (ix, iy) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let n = self.g + 1;
        let at = |x: usize, y: usize| self.v[y * n + x];
        let top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * sx;
        let bot = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * sx;
        top + (bot - top) * sy
    }
}

/// Fills the whole canvas with a random background and returns which.
pub(crate) fn draw(c: &mut Canvas, rng: &mut SynthRng) -> Background {
    let s = c.w as f32;
    let kind = rng.index(KINDS.len());
    let a = muted(rng, 0.3, 0.25, 0.95);
    let b = muted(rng, 0.3, 0.25, 0.95);
    // Far plane: depth d0 at the centre, tilted by up to ±15 across the image.
    let d0 = rng.range(215.0, 238.0);
    let (gx, gy) = (rng.range(-15.0, 15.0), rng.range(-15.0, 15.0));
    let plane =
        move |x: f32, y: f32| (d0 + gx * (x / s - 0.5) + gy * (y / s - 0.5)).clamp(0.0, 255.0);
    let theta = rng.range(0.0, std::f32::consts::TAU);
    let (ct, st) = (theta.cos(), theta.sin());
    match KINDS[kind].name {
        "gradient" => c.fill(
            |x, y| {
                mix(
                    a,
                    b,
                    (((x - s / 2.0) * ct + (y - s / 2.0) * st) / s + 0.5).clamp(0.0, 1.0),
                )
            },
            plane,
        ),
        "radial" => {
            let (cx, cy) = (rng.range(0.0, s), rng.range(0.0, s));
            let reach = rng.range(0.6, 1.2) * s;
            c.fill(
                |x, y| {
                    mix(
                        a,
                        b,
                        (((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / reach).min(1.0),
                    )
                },
                plane,
            )
        }
        "stripes" => {
            let period = rng.range(0.08, 0.3) * s;
            c.fill(
                |x, y| mix(a, b, square_wave(x * ct + y * st, period)),
                plane,
            )
        }
        "checker" => {
            let period = rng.range(0.12, 0.4) * s;
            c.fill(
                |x, y| {
                    let p = square_wave(x * ct + y * st, period);
                    let q = square_wave(-x * st + y * ct, period);
                    mix(a, b, p * (1.0 - q) + (1.0 - p) * q)
                },
                plane,
            )
        }
        "clouds" => {
            let g = rng.int(2, 4) as usize;
            let coarse = ValueNoise::new(rng, g);
            let g = rng.int(6, 10) as usize;
            let fine = ValueNoise::new(rng, g);
            c.fill(
                |x, y| {
                    mix(
                        a,
                        b,
                        0.7 * coarse.at(x / s, y / s) + 0.3 * fine.at(x / s, y / s),
                    )
                },
                plane,
            )
        }
        "landscape" => {
            let horizon = rng.range(0.3, 0.65) * s;
            let sky_top: Rgb = muted(rng, 0.3, 0.55, 0.95);
            let sky_low = mix(sky_top, [255.0; 3], rng.range(0.1, 0.5));
            let ground_far = muted(rng, 0.3, 0.3, 0.8);
            let ground_near = mix(ground_far, [0.0; 3], rng.range(0.1, 0.5));
            c.fill(
                |_, y| {
                    // one-pixel anti-aliased horizon
                    let g = (y - horizon + 0.5).clamp(0.0, 1.0);
                    let sky = mix(sky_top, sky_low, (y / horizon).min(1.0));
                    let ground = mix(
                        ground_far,
                        ground_near,
                        ((y - horizon) / (s - horizon)).clamp(0.0, 1.0),
                    );
                    mix(sky, ground, g)
                },
                |_, y| {
                    if y < horizon {
                        255.0
                    } else {
                        235.0 - 85.0 * ((y - horizon) / (s - horizon)).min(1.0)
                    }
                },
            )
        }
        _ => {
            // dots: a jittered lattice of discs
            let period = rng.range(0.1, 0.25) * s;
            let r = period * rng.range(0.15, 0.35);
            c.fill(
                |x, y| {
                    let u = (x * ct + y * st).rem_euclid(period) - period / 2.0;
                    let v = (-x * st + y * ct).rem_euclid(period) - period / 2.0;
                    let d = (u * u + v * v).sqrt();
                    mix(a, b, (r - d + 0.5).clamp(0.0, 1.0))
                },
                plane,
            )
        }
    }
    KINDS[kind]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_wave_is_half_on_and_antialiased() {
        let period = 10.0;
        let mean: f32 = (0..1000)
            .map(|i| square_wave(i as f32 * 0.01 + 0.005, period))
            .sum::<f32>()
            / 1000.0;
        assert!((mean - 0.5).abs() < 0.01, "duty {mean}");
        assert_eq!(square_wave(2.5, period), 1.0); // centre of the on half
        assert_eq!(square_wave(7.5, period), 0.0); // centre of the off half
        assert!((square_wave(5.0, period) - 0.5).abs() < 1e-5); // edge
    }

    #[test]
    fn every_kind_fills_muted_colours_and_far_depth() {
        for seed in 0..40 {
            let mut rng = SynthRng::new(seed, 0);
            let mut c = Canvas::new(48, 48);
            let bg = draw(&mut c, &mut rng);
            assert!(c.seg.iter().all(|&s| s == 0), "{}", bg.name);
            assert!(
                c.depth.iter().all(|&d| (150.0..=255.0).contains(&d)),
                "{}",
                bg.name
            );
            for p in &c.rgb {
                let (mx, mn) = (p[0].max(p[1]).max(p[2]), p[0].min(p[1]).min(p[2]));
                assert!(mx - mn <= 0.31 * 255.0, "{} not muted: {p:?}", bg.name);
            }
        }
    }
}
