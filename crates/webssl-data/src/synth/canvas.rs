//! The drawing surface: an RGB plane in `f32` (0–255, so blending does not accumulate rounding) plus the
//! two dense label planes, segmentation class and depth, which every paint operation keeps in step with
//! the pixels.
//!
//! Shapes and glyphs become anti-aliased coverage [`Mask`]s. Polygons are rasterised with
//! `ab_glyph_rasterizer` (the exact-area scanline rasteriser that ab_glyph uses for glyphs), so shapes and
//! text share one coverage model. A label plane takes an object's class and depth where its coverage is at
//! least one half, i.e. where the object is the majority of the pixel.

use ab_glyph_rasterizer::{Rasterizer, point};

/// An RGB colour with channels in 0–255.
pub(crate) type Rgb = [f32; 3];

/// A 2-D point in pixel coordinates (pixel `(x, y)` covers `[x, x+1) × [y, y+1)`).
pub(crate) type Pt = (f32, f32);

/// Coverage at or above which an object owns a pixel in the label planes.
pub(crate) const LABEL_COVERAGE: f32 = 0.5;

/// Largest mask the generator will allocate (pixels); a shape bigger than this is a bug upstream.
const MAX_MASK_PIXELS: usize = 1 << 22;

/// Anti-aliased coverage over a rectangle `[x0, x0+w) × [y0, y0+h)` of the canvas.
#[derive(Clone, Debug)]
pub(crate) struct Mask {
    pub x0: i32,
    pub y0: i32,
    pub w: usize,
    pub h: usize,
    /// Row-major coverage in `[0, 1]`.
    pub a: Vec<f32>,
}

impl Mask {
    pub(crate) fn empty() -> Self {
        Mask {
            x0: 0,
            y0: 0,
            w: 0,
            h: 0,
            a: Vec::new(),
        }
    }

    /// A zero mask over the given rectangle.
    pub(crate) fn zeros(x0: i32, y0: i32, w: usize, h: usize) -> Self {
        if w.saturating_mul(h) > MAX_MASK_PIXELS {
            return Mask::empty();
        }
        Mask {
            x0,
            y0,
            w,
            h,
            a: vec![0.0; w * h],
        }
    }

    /// Fills closed polygons with the non-zero rule. Contours with opposite orientation cancel, which is
    /// how holes (rings) are made; overlapping contours of the same orientation saturate at 1.
    pub(crate) fn polygons(contours: &[Vec<Pt>]) -> Self {
        let (mut lx, mut ly, mut hx, mut hy) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for c in contours {
            for &(x, y) in c {
                lx = lx.min(x);
                ly = ly.min(y);
                hx = hx.max(x);
                hy = hy.max(y);
            }
        }
        if !(lx.is_finite() && hx.is_finite() && ly.is_finite() && hy.is_finite())
            || hx <= lx
            || hy <= ly
        {
            return Mask::empty();
        }
        // One pixel of margin on each side: the rasteriser needs every vertex strictly inside its grid
        // (a vertex left of column 0 would spill its area into the previous row).
        let x0 = lx.floor() as i32 - 1;
        let y0 = ly.floor() as i32 - 1;
        let w = (hx.ceil() as i32 - x0 + 2) as usize;
        let h = (hy.ceil() as i32 - y0 + 2) as usize;
        let mut m = Mask::zeros(x0, y0, w, h);
        if m.a.is_empty() {
            return m;
        }
        let mut r = Rasterizer::new(w, h);
        let (ox, oy) = (x0 as f32, y0 as f32);
        for c in contours {
            for i in 0..c.len() {
                let p = c[i];
                let q = c[(i + 1) % c.len()];
                r.draw_line(point(p.0 - ox, p.1 - oy), point(q.0 - ox, q.1 - oy));
            }
        }
        // The rasteriser accumulates signed areas along the whole buffer, leaving ~1e-8 residues where the
        // exact answer is 0 or 1: snap them, so "empty" and "fully covered" are exact.
        r.for_each_pixel(|i, a| {
            m.a[i] = if a < 1e-4 {
                0.0
            } else if a > 1.0 - 1e-4 {
                1.0
            } else {
                a
            }
        });
        m
    }

    /// Coverage at canvas pixel `(x, y)` (0 outside the mask).
    #[cfg(test)]
    pub(crate) fn at(&self, x: i32, y: i32) -> f32 {
        let (lx, ly) = (x - self.x0, y - self.y0);
        if lx < 0 || ly < 0 || lx as usize >= self.w || ly as usize >= self.h {
            return 0.0;
        }
        self.a[ly as usize * self.w + lx as usize]
    }

    /// The same coverage moved by whole pixels (drop shadows).
    pub(crate) fn shifted(&self, dx: i32, dy: i32) -> Mask {
        Mask {
            x0: self.x0 + dx,
            y0: self.y0 + dy,
            w: self.w,
            h: self.h,
            a: self.a.clone(),
        }
    }

    /// Coverage rotated by `angle` radians about `(cx, cy)` (same direction as [`rotated`]), resampled
    /// bilinearly. Used for tilted text: ab_glyph lays glyphs out axis-aligned, and at these sizes
    /// resampling the anti-aliased coverage is indistinguishable from rotating the outlines.
    pub(crate) fn rotated(&self, cx: f32, cy: f32, angle: f32) -> Mask {
        if angle == 0.0 || self.a.is_empty() {
            return self.clone();
        }
        let (sn, cs) = angle.sin_cos();
        let (x0, y0) = (self.x0 as f32, self.y0 as f32);
        let (x1, y1) = (x0 + self.w as f32, y0 + self.h as f32);
        let corners = rotated(vec![(x0, y0), (x1, y0), (x0, y1), (x1, y1)], cx, cy, angle);
        let lx = corners.iter().map(|p| p.0).fold(f32::MAX, f32::min);
        let ly = corners.iter().map(|p| p.1).fold(f32::MAX, f32::min);
        let hx = corners.iter().map(|p| p.0).fold(f32::MIN, f32::max);
        let hy = corners.iter().map(|p| p.1).fold(f32::MIN, f32::max);
        let (nx0, ny0) = (lx.floor() as i32 - 1, ly.floor() as i32 - 1);
        let nw = (hx.ceil() as i32 - nx0 + 2) as usize;
        let nh = (hy.ceil() as i32 - ny0 + 2) as usize;
        let mut out = Mask::zeros(nx0, ny0, nw, nh);
        let src = |x: i32, y: i32| -> f32 {
            if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h {
                0.0
            } else {
                self.a[y as usize * self.w + x as usize]
            }
        };
        for j in 0..nh {
            for i in 0..nw {
                let (px, py) = (
                    (nx0 + i as i32) as f32 + 0.5 - cx,
                    (ny0 + j as i32) as f32 + 0.5 - cy,
                );
                // inverse rotation, then into the source's pixel-centre grid
                let sx = cx + px * cs + py * sn - x0 - 0.5;
                let sy = cy - px * sn + py * cs - y0 - 0.5;
                let (fx, fy) = (sx.floor(), sy.floor());
                let (tx, ty) = (sx - fx, sy - fy);
                let (ix, iy) = (fx as i32, fy as i32);
                let top = src(ix, iy) * (1.0 - tx) + src(ix + 1, iy) * tx;
                let bot = src(ix, iy + 1) * (1.0 - tx) + src(ix + 1, iy + 1) * tx;
                out.a[j * nw + i] = top * (1.0 - ty) + bot * ty;
            }
        }
        out
    }

    /// Multiplies coverage (translucent paint).
    pub(crate) fn scaled(mut self, k: f32) -> Mask {
        for a in &mut self.a {
            *a *= k;
        }
        self
    }

    /// Number of pixels with coverage at least `t`.
    #[cfg(test)]
    pub(crate) fn count_at_least(&self, t: f32) -> usize {
        self.a.iter().filter(|&&a| a >= t).count()
    }
}

/// What an object writes into the label planes where it owns a pixel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Label {
    /// Segmentation class (see [`super::SEG_CLASSES`]).
    pub seg: u8,
    /// Depth, 0 (nearest) to 255 (farthest); `None` for marks printed on the surface below (text on a
    /// page or panel), which keep that surface's depth.
    pub depth: Option<f32>,
}

/// The image being drawn and its dense labels.
pub(crate) struct Canvas {
    pub w: u32,
    pub h: u32,
    pub rgb: Vec<Rgb>,
    pub seg: Vec<u8>,
    pub depth: Vec<f32>,
}

impl Canvas {
    pub(crate) fn new(w: u32, h: u32) -> Self {
        let n = w as usize * h as usize;
        Canvas {
            w,
            h,
            rgb: vec![[0.0; 3]; n],
            seg: vec![0; n],
            depth: vec![255.0; n],
        }
    }

    /// Paints every pixel from functions of the pixel centre: the background layer (segmentation class 0).
    pub(crate) fn fill(
        &mut self,
        color: impl Fn(f32, f32) -> Rgb,
        depth: impl Fn(f32, f32) -> f32,
    ) {
        for y in 0..self.h {
            for x in 0..self.w {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let i = (y * self.w + x) as usize;
                self.rgb[i] = color(px, py);
                self.seg[i] = 0;
                self.depth[i] = depth(px, py);
            }
        }
    }

    /// Blends `color` (a function of the pixel centre) through `mask`; where coverage reaches
    /// [`LABEL_COVERAGE`] the object's `label` (if any) replaces the label planes.
    pub(crate) fn paint(
        &mut self,
        mask: &Mask,
        color: impl Fn(f32, f32) -> Rgb,
        label: Option<Label>,
    ) {
        let (w, h) = (self.w as i32, self.h as i32);
        let xa = mask.x0.max(0);
        let xb = (mask.x0 + mask.w as i32).min(w);
        let ya = mask.y0.max(0);
        let yb = (mask.y0 + mask.h as i32).min(h);
        for y in ya..yb {
            let row = (y - mask.y0) as usize * mask.w;
            for x in xa..xb {
                let a = mask.a[row + (x - mask.x0) as usize];
                if a <= 0.0 {
                    continue;
                }
                let i = (y * w + x) as usize;
                let c = color(x as f32 + 0.5, y as f32 + 0.5);
                let p = &mut self.rgb[i];
                for k in 0..3 {
                    p[k] += (c[k] - p[k]) * a;
                }
                if let Some(l) = label
                    && a >= LABEL_COVERAGE
                {
                    self.seg[i] = l.seg;
                    if let Some(d) = l.depth {
                        self.depth[i] = d;
                    }
                }
            }
        }
    }

    /// Paints a solid colour.
    pub(crate) fn paint_solid(&mut self, mask: &Mask, color: Rgb, label: Option<Label>) {
        self.paint(mask, |_, _| color, label);
    }

    /// Adds zero-mean sensor-like noise of standard deviation `sigma` (per channel, per pixel).
    pub(crate) fn add_noise(&mut self, rng: &mut super::rng::SynthRng, sigma: f32) {
        if sigma <= 0.0 {
            return;
        }
        for p in &mut self.rgb {
            for c in p.iter_mut() {
                *c += sigma * rng.normalish();
            }
        }
    }

    /// The pixel at `(x, y)` rounded to 8 bits.
    #[cfg(test)]
    pub(crate) fn pixel_u8(&self, x: u32, y: u32) -> [u8; 3] {
        let p = self.rgb[(y * self.w + x) as usize];
        [to_u8(p[0]), to_u8(p[1]), to_u8(p[2])]
    }
}

/// Rounds and clamps a 0–255 working value to a byte.
pub(crate) fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

// ---- geometry: closed contours, counter-clockwise on screen (positive signed area in y-down coordinates) ----

/// Twice the signed area (shoelace); positive for our canonical orientation.
fn signed_area2(c: &[Pt]) -> f32 {
    let mut s = 0.0;
    for i in 0..c.len() {
        let (x0, y0) = c[i];
        let (x1, y1) = c[(i + 1) % c.len()];
        s += x0 * y1 - x1 * y0;
    }
    s
}

/// Returns the contour with positive (`true`) or negative orientation, reversing it if needed. Unions of
/// contours need one orientation; a hole needs the other.
pub(crate) fn oriented(mut c: Vec<Pt>, positive: bool) -> Vec<Pt> {
    if (signed_area2(&c) > 0.0) != positive {
        c.reverse();
    }
    c
}

/// Regular polygon (also circles, with enough sides) of circumradius `r`, first vertex at angle `rot`.
pub(crate) fn regular(cx: f32, cy: f32, r: f32, sides: usize, rot: f32) -> Vec<Pt> {
    let c = (0..sides)
        .map(|k| {
            let t = rot + std::f32::consts::TAU * k as f32 / sides as f32;
            (cx + r * t.cos(), cy + r * t.sin())
        })
        .collect();
    oriented(c, true)
}

/// A circle as a polygon whose chord error stays below 0.05 px, with its circumradius enlarged so that the
/// polygon has exactly the circle's area (coverage then sums to πr²).
pub(crate) fn circle(cx: f32, cy: f32, r: f32) -> Vec<Pt> {
    use std::f32::consts::{PI, TAU};
    let sides =
        ((PI / (1.0 - 0.05 / r.max(0.1)).clamp(-1.0, 1.0).acos()).ceil() as usize).clamp(12, 256);
    let n = sides as f32;
    let area_ratio = PI / (0.5 * n * (TAU / n).sin());
    regular(cx, cy, r * area_ratio.sqrt(), sides, 0.0)
}

/// Axis-aligned rectangle `[x0, x1] × [y0, y1]`.
pub(crate) fn rect(x0: f32, y0: f32, x1: f32, y1: f32) -> Vec<Pt> {
    oriented(vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)], true)
}

/// Rectangle with rounded corners of radius `r`.
pub(crate) fn rounded_rect(x0: f32, y0: f32, x1: f32, y1: f32, r: f32) -> Vec<Pt> {
    let r = r.min((x1 - x0) / 2.0).min((y1 - y0) / 2.0).max(0.0);
    if r < 0.5 {
        return rect(x0, y0, x1, y1);
    }
    let mut c = Vec::with_capacity(40);
    let corners = [
        (x1 - r, y0 + r, -0.25f32),
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, 0.25),
        (x0 + r, y0 + r, 0.5),
    ];
    for (cx, cy, start) in corners {
        for k in 0..=8 {
            let t = std::f32::consts::TAU * (start + 0.25 * k as f32 / 8.0);
            c.push((cx + r * t.cos(), cy + r * t.sin()));
        }
    }
    oriented(c, true)
}

/// Points rotated by `angle` (radians) about `(cx, cy)`.
pub(crate) fn rotated(c: Vec<Pt>, cx: f32, cy: f32, angle: f32) -> Vec<Pt> {
    let (s, co) = angle.sin_cos();
    c.into_iter()
        .map(|(x, y)| {
            let (dx, dy) = (x - cx, y - cy);
            (cx + dx * co - dy * s, cy + dx * s + dy * co)
        })
        .collect()
}

/// A polyline of width `width` with round joins and caps, as contours for [`Mask::polygons`].
pub(crate) fn stroke(points: &[Pt], width: f32) -> Vec<Vec<Pt>> {
    let hw = width / 2.0;
    let mut out = Vec::with_capacity(points.len() * 2);
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-4 {
            continue;
        }
        let (nx, ny) = (-dy / len * hw, dx / len * hw);
        out.push(oriented(
            vec![
                (x0 + nx, y0 + ny),
                (x1 + nx, y1 + ny),
                (x1 - nx, y1 - ny),
                (x0 - nx, y0 - ny),
            ],
            true,
        ));
    }
    if hw >= 0.75 {
        for &(x, y) in points {
            out.push(circle(x, y, hw));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_coverage_is_exact_area() {
        let m = Mask::polygons(&[rect(10.25, 10.0, 20.75, 20.0)]);
        let total: f32 = m.a.iter().sum();
        assert!((total - 105.0).abs() < 1e-3, "area {total}");
        assert!((m.at(10, 15) - 0.75).abs() < 1e-4);
        assert!((m.at(15, 15) - 1.0).abs() < 1e-4);
        assert_eq!(m.at(5, 5), 0.0);
    }

    #[test]
    fn circle_area_and_ring_hole() {
        let m = Mask::polygons(&[circle(30.0, 30.0, 10.0)]);
        let total: f32 = m.a.iter().sum();
        assert!(
            (total - std::f32::consts::PI * 100.0).abs() < 0.5,
            "area {total}"
        );
        let ring = Mask::polygons(&[
            circle(30.0, 30.0, 10.0),
            oriented(circle(30.0, 30.0, 5.0), false),
        ]);
        assert_eq!(ring.at(30, 30), 0.0, "hole must be empty");
        assert!(ring.at(37, 30) > 0.99);
    }

    #[test]
    fn paint_writes_labels_only_where_covered() {
        let mut c = Canvas::new(16, 16);
        c.fill(|_, _| [10.0, 10.0, 10.0], |_, _| 200.0);
        let m = Mask::polygons(&[rect(4.0, 4.0, 8.5, 8.0)]);
        c.paint_solid(
            &m,
            [250.0, 0.0, 0.0],
            Some(Label {
                seg: 3,
                depth: Some(50.0),
            }),
        );
        assert_eq!(c.pixel_u8(5, 5), [250, 0, 0]);
        assert_eq!(c.seg[5 * 16 + 5], 3);
        assert_eq!(c.depth[5 * 16 + 5], 50.0);
        // column 8 is half covered: blended colour, label taken (coverage 0.5)
        assert_eq!(c.pixel_u8(8, 5), [130, 5, 5]);
        assert_eq!(c.seg[5 * 16 + 8], 3);
        assert_eq!(c.seg[5 * 16 + 9], 0);
        assert_eq!(c.seg[2 * 16 + 2], 0);
    }

    #[test]
    fn rotated_mask_matches_rotated_polygon() {
        let (cx, cy, t) = (20.0, 20.0, 0.3);
        let axis = Mask::polygons(&[rect(12.0, 15.0, 28.0, 25.0)]);
        let resampled = axis.rotated(cx, cy, t);
        let exact = Mask::polygons(&[rotated(rect(12.0, 15.0, 28.0, 25.0), cx, cy, t)]);
        let (sa, se): (f32, f32) = (resampled.a.iter().sum(), exact.a.iter().sum());
        assert!((sa - se).abs() < 0.02 * se, "area {sa} vs {se}");
        let mut worst = 0.0f32;
        for y in 0..40 {
            for x in 0..40 {
                worst = worst.max((resampled.at(x, y) - exact.at(x, y)).abs());
            }
        }
        assert!(worst < 0.6, "max coverage difference {worst}");
        assert!((resampled.at(20, 20) - 1.0).abs() < 1e-4);
        assert_eq!(axis.rotated(cx, cy, 0.0).a, axis.a);
    }

    #[test]
    fn stroke_and_shapes_partly_outside_are_clipped() {
        let mut c = Canvas::new(8, 8);
        let m = Mask::polygons(&stroke(&[(-5.0, 4.0), (20.0, 4.0)], 2.0));
        c.paint_solid(
            &m,
            [255.0; 3],
            Some(Label {
                seg: 9,
                depth: None,
            }),
        );
        assert!((0..8).all(|x| c.seg[3 * 8 + x] == 9 && c.seg[4 * 8 + x] == 9));
        assert!((0..8).all(|x| c.seg[8 + x] == 0)); // row 1
    }
}
