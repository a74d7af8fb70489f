//! `scene`: a textured or gradient background with one to three coloured shapes, like an object photo.
//!
//! The largest shape is the *dominant* one: it carries the probe labels `shape` and `color`, it is drawn
//! last (nearest, so nothing occludes it) and its anchor (a point inside its painted area: the centre, or a
//! point on the band of a ring) is kept free of the other shapes. Depth follows size, as under
//! perspective: `depth = 200 − 450·r/size ± 6`, so the dominant shape (r ≥ 0.17·size, depth ≤ 130) is at
//! least 18 levels nearer than the small ones (r ≤ 0.6·r_dominant) and nearer than any background (≥ 150).

use super::background;
use super::canvas::{Canvas, Label, Mask, Pt, circle, oriented, rect, regular, rotated};
use super::palette::{COLOR_NAMES, jittered, shade};
use super::rng::SynthRng;
use super::{Drawn, Labels, ObjectMeta, join_phrases};

/// Shape names in class-id order (`labels.shape`; `.cls` = index for scenes).
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "ring", "cross"];

/// Segmentation class of shape `k` (classes 1–6).
pub(crate) fn shape_seg(k: usize) -> u8 {
    1 + k as u8
}

/// Contours of shape `kind` centred at `(cx, cy)` with size parameter `r` (about the radius of a circle of
/// similar area) and rotation `rot` (radians).
pub(crate) fn contours(kind: usize, cx: f32, cy: f32, r: f32, rot: f32) -> Vec<Vec<Pt>> {
    match SHAPES[kind] {
        "circle" => vec![circle(cx, cy, r)],
        "square" => vec![rotated(
            rect(cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r),
            cx,
            cy,
            rot,
        )],
        "triangle" => vec![regular(cx, cy, 1.35 * r, 3, rot)],
        "star" => {
            let (ro, ri) = (1.35 * r, 1.35 * r * 0.5);
            let pts = (0..10)
                .map(|k| {
                    let t = rot + std::f32::consts::PI * k as f32 / 5.0;
                    let rr = if k % 2 == 0 { ro } else { ri };
                    (cx + rr * t.cos(), cy + rr * t.sin())
                })
                .collect();
            vec![oriented(pts, true)]
        }
        "ring" => vec![
            circle(cx, cy, 1.05 * r),
            oriented(circle(cx, cy, 0.55 * 1.05 * r), false),
        ],
        _ => {
            // cross (plus sign): arms of half-length r and half-width 0.33 r
            let (a, b) = (r, 0.33 * r);
            let pts = vec![
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
            ];
            let pts = pts.into_iter().map(|(x, y)| (cx + x, cy + y)).collect();
            vec![oriented(rotated(pts, cx, cy, rot), true)]
        }
    }
}

/// A point well inside the painted area of the shape (at least ~0.2 r from any edge).
pub(crate) fn anchor(kind: usize, cx: f32, cy: f32, r: f32, rot: f32) -> Pt {
    if SHAPES[kind] == "ring" {
        let rr = 0.775 * 1.05 * r; // middle of the band [0.5775 r, 1.05 r]
        (cx + rr * rot.cos(), cy + rr * rot.sin())
    } else {
        (cx, cy)
    }
}

/// Radius of a disc around the centre that contains the whole shape.
pub(crate) fn extent(r: f32) -> f32 {
    1.42 * r
}

/// One drawn shape.
pub(crate) struct Shape {
    pub kind: usize,
    pub color: usize,
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
    pub rot: f32,
}

/// Draws `shape` with directional shading and an optional drop shadow, labelling it with its shape class
/// and `depth`; returns its metadata.
pub(crate) fn draw_shape(c: &mut Canvas, rng: &mut SynthRng, s: &Shape, depth: f32) -> ObjectMeta {
    let mask = Mask::polygons(&contours(s.kind, s.cx, s.cy, s.r, s.rot));
    if rng.chance(0.4) {
        let off = (0.08 * s.r).round().max(1.0) as i32;
        c.paint_solid(&mask.shifted(off, off).scaled(0.3), [0.0; 3], None);
    }
    let base = jittered(rng, s.color, 12.0);
    // Light from a random direction: ±k brightness across the shape, k ≤ 0.1, 1 at the centre.
    let (lx, ly) = {
        let t = rng.range(0.0, std::f32::consts::TAU);
        (t.cos(), t.sin())
    };
    let k = rng.range(0.0, 0.1) / extent(s.r);
    let (cx, cy) = (s.cx, s.cy);
    c.paint(
        &mask,
        |x, y| shade(base, 1.0 + k * ((x - cx) * lx + (y - cy) * ly)),
        Some(Label {
            seg: shape_seg(s.kind),
            depth: Some(depth),
        }),
    );
    let e = extent(s.r);
    let (ax, ay) = anchor(s.kind, s.cx, s.cy, s.r, s.rot);
    ObjectMeta {
        kind: SHAPES[s.kind].to_string(),
        color: Some(COLOR_NAMES[s.color].to_string()),
        text: None,
        bbox: [s.cx - e, s.cy - e, s.cx + e, s.cy + e],
        anchor: [ax, ay],
        seg: shape_seg(s.kind),
        depth: super::canvas::to_u8(depth),
    }
}

/// Depth of a shape of size parameter `r` on a canvas of side `size` (see the module doc).
fn depth_for(rng: &mut SynthRng, r: f32, size: f32) -> f32 {
    (200.0 - 450.0 * r / size + rng.range(-6.0, 6.0)).clamp(0.0, 255.0)
}

/// Draws a scene.
pub(crate) fn draw(c: &mut Canvas, rng: &mut SynthRng) -> Drawn {
    let size = c.w as f32;
    let bg = background::draw(c, rng);

    let kind = rng.index(SHAPES.len());
    let color = rng.index(COLOR_NAMES.len());
    let r0 = size * rng.range(0.17, 0.27);
    let lo = (1.05 * r0).max(0.2 * size);
    let dominant = Shape {
        kind,
        color,
        cx: rng.range(lo, size - lo),
        cy: rng.range(lo, size - lo),
        r: r0,
        rot: rng.range(0.0, std::f32::consts::TAU),
    };
    let (ax, ay) = anchor(kind, dominant.cx, dominant.cy, dominant.r, dominant.rot);

    // Up to two smaller shapes, kept away from the dominant anchor.
    let mut others = Vec::new();
    let n_others = rng.index(3);
    for _ in 0..n_others {
        for _attempt in 0..20 {
            let r = r0 * rng.range(0.35, 0.6);
            let (cx, cy) = (rng.range(0.0, size), rng.range(0.0, size));
            let clear = ((cx - ax).powi(2) + (cy - ay).powi(2)).sqrt() > extent(r) + 0.25 * r0;
            if clear {
                let shape = Shape {
                    kind: rng.index(SHAPES.len()),
                    color: rng.index(COLOR_NAMES.len()),
                    cx,
                    cy,
                    r,
                    rot: rng.range(0.0, std::f32::consts::TAU),
                };
                others.push(shape);
                break;
            }
        }
    }
    // Far to near: smaller shapes first.
    others.sort_by(|a, b| a.r.total_cmp(&b.r));
    let mut objects = Vec::new();
    for s in &others {
        let d = depth_for(rng, s.r, size);
        objects.push(draw_shape(c, rng, s, d));
    }
    let d = depth_for(rng, dominant.r, size);
    objects.push(draw_shape(c, rng, &dominant, d));

    let mut phrases = Vec::new();
    let big = if others.is_empty() { "" } else { "large " };
    let first = format!("{big}{} {}", COLOR_NAMES[color], SHAPES[kind]);
    phrases.push(format!("{} {first}", super::article(&first)));
    for s in others.iter().rev() {
        phrases.push(format!(
            "a small {} {}",
            COLOR_NAMES[s.color], SHAPES[s.kind]
        ));
    }
    let prefix = *rng.pick(&[
        "",
        "a picture of ",
        "an image of ",
        "a drawing of ",
        "a photo of ",
    ]);
    let caption = format!("{prefix}{} on {}", join_phrases(&phrases), bg.phrase);

    Drawn {
        labels: Labels {
            shape: Some(SHAPES[kind].to_string()),
            color: Some(COLOR_NAMES[color].to_string()),
            background: Some(bg.name.to_string()),
            n_objects: Some(1 + others.len() as u32),
            ..Labels::default()
        },
        words: Vec::new(),
        caption,
        class_id: kind as u32,
        objects,
    }
}
