//! `sign`: one or two words from the closed vocabulary ([`super::words::VOCAB`]) on a board, label, poster or
//! banner over a scene-like background — the "images with some readable text" that dominate the paper's
//! Light-filtered set (docs/reference/webssl-paper.md §5).
//!
//! The text is sized so the words span about half to four-fifths of the image width (at 112 px capitals are
//! 9–20 px tall), because the "which word is written" probe must be learnable from pixels at low resolution.
//! The first word (top line, or left on a shared line) is `labels.word`. Half of the boards, labels and
//! posters lean by up to ±10°: the panel outline is rotated exactly and the text coverage is resampled
//! (`Mask::rotated` in `synth/canvas.rs`).

use super::background;
use super::canvas::{Canvas, Label, Mask, Pt, circle, oriented, rect, rotated, rounded_rect};
use super::font::{self, Face};
use super::palette::{COLOR_NAMES, contrasting_ink, hsv, jittered, shade};
use super::rng::SynthRng;
use super::scene::{self, SHAPES, Shape};
use super::words::VOCAB;
use super::{Drawn, Labels, ObjectMeta, seg};

/// Sign kinds (`labels.sign_kind`).
pub const SIGN_KINDS: [&str; 4] = ["board", "label", "poster", "banner"];

/// Draws a sign.
pub(crate) fn draw(c: &mut Canvas, rng: &mut SynthRng) -> Drawn {
    let s = c.w as f32;
    let bg = background::draw(c, rng);

    // A few small far-away shapes as clutter behind the sign.
    for _ in 0..rng.index(3) {
        let r = s * rng.range(0.04, 0.09);
        let shape = Shape {
            kind: rng.index(SHAPES.len()),
            color: rng.index(COLOR_NAMES.len()),
            cx: rng.range(0.0, s),
            cy: rng.range(0.0, s),
            r,
            rot: rng.range(0.0, std::f32::consts::TAU),
        };
        let d = rng.range(170.0, 200.0);
        scene::draw_shape(c, rng, &shape, d);
    }

    let kind = rng.index(SIGN_KINDS.len());
    let kind_name = SIGN_KINDS[kind];
    let n_words = if rng.chance(0.4) { 2 } else { 1 };
    let words: Vec<&str> = rng
        .distinct(VOCAB.len(), n_words)
        .into_iter()
        .map(|i| VOCAB[i])
        .collect();
    let one_line = n_words == 1
        || kind_name == "banner"
        || (words.iter().map(|w| w.len()).sum::<usize>() <= 7 && rng.chance(0.5));
    let lines: Vec<String> = if one_line {
        vec![words.join(" ")]
    } else {
        words.iter().map(|w| w.to_string()).collect()
    };

    let target_w = s * match kind_name {
        "board" => rng.range(0.5, 0.8),
        "label" => rng.range(0.45, 0.65),
        "poster" => rng.range(0.45, 0.65),
        _ => rng.range(0.6, 0.85),
    };
    let max_px = s * if lines.len() == 1 { 0.32 } else { 0.22 };
    let px = lines
        .iter()
        .map(|l| font::fit(Face::SansBold, l, target_w, max_px))
        .fold(f32::MAX, f32::min);
    let m = font::metrics(Face::SansBold, px);
    let line_h = m.cap * rng.range(1.45, 1.7);
    let widths: Vec<f32> = lines
        .iter()
        .map(|l| font::width(Face::SansBold, px, l))
        .collect();
    let block_w = widths.iter().cloned().fold(0.0, f32::max);
    let block_h = m.cap + (lines.len() - 1) as f32 * line_h;
    let pad_x = px * rng.range(0.25, 0.5);
    let pad_y = m.cap * rng.range(0.45, 0.8);
    let picture_h = if kind_name == "poster" {
        block_h * rng.range(1.0, 1.5)
    } else {
        0.0
    };
    let mut panel_w = block_w + 2.0 * pad_x;
    let panel_h = block_h + 2.0 * pad_y + picture_h;

    // Tilt: half the boards, labels and posters lean by up to ±10° (banners stay level).
    let angle = if kind_name != "banner" && rng.chance(0.5) {
        rng.range(-0.18, 0.18)
    } else {
        0.0
    };
    let tip = if kind_name == "label" {
        panel_h * 0.45
    } else {
        0.0
    };
    let place = |rng: &mut SynthRng, extent: f32| {
        let margin = 0.03 * s;
        if extent + 2.0 * margin < s {
            rng.range(margin, s - extent - margin)
        } else {
            (s - extent) / 2.0
        }
    };
    let (x0, y0);
    if kind_name == "banner" {
        panel_w = s + 4.0;
        x0 = -2.0;
        y0 = place(rng, panel_h);
    } else {
        // Place the bounding box of the tilted panel (tag tip included) inside the image.
        let total_w = panel_w + tip;
        let (sn, cs) = (angle.sin().abs(), angle.cos());
        let (w_eff, h_eff) = (total_w * cs + panel_h * sn, total_w * sn + panel_h * cs);
        let bx = place(rng, w_eff);
        let by = place(rng, h_eff);
        x0 = bx + w_eff / 2.0 - total_w / 2.0 + tip;
        y0 = by + h_eff / 2.0 - panel_h / 2.0;
    }
    let (x1, y1) = (x0 + panel_w, y0 + panel_h);
    let (pcx, pcy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let tilt = |c: Vec<Pt>| {
        if angle == 0.0 {
            c
        } else {
            rotated(c, pcx, pcy, angle)
        }
    };

    // Panel colour: a named saturated colour, near-white or near-black.
    let (panel, color_name) = match rng.index(4) {
        0 | 1 => {
            let k = rng.index(COLOR_NAMES.len());
            (jittered(rng, k, 12.0), Some(COLOR_NAMES[k]))
        }
        2 => (
            hsv(rng.unit(), rng.range(0.0, 0.1), rng.range(0.88, 1.0)),
            Some("white"),
        ),
        _ => (
            hsv(rng.unit(), rng.range(0.0, 0.3), rng.range(0.05, 0.25)),
            Some("black"),
        ),
    };
    let ink = contrasting_ink(rng, panel);
    let depth = rng.range(60.0, 120.0);
    let panel_label = Some(Label {
        seg: seg::PANEL,
        depth: Some(depth),
    });

    let outline = match kind_name {
        "board" => vec![rounded_rect(x0, y0, x1, y1, rng.range(0.0, 0.25) * panel_h)],
        "label" => {
            // A luggage tag: point on the left with a punched hole.
            let cy = (y0 + y1) / 2.0;
            let body = oriented(
                vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0 - tip, cy)],
                true,
            );
            let hole = oriented(
                circle(x0 - tip * 0.35, cy, (panel_h * 0.08).max(1.0)),
                false,
            );
            vec![body, hole]
        }
        _ => vec![rect(x0, y0, x1, y1)],
    };
    let outline: Vec<Vec<Pt>> = outline.into_iter().map(tilt).collect();
    let mask = Mask::polygons(&outline);
    if kind_name == "board" && rng.chance(0.5) {
        // a post from the board down to the bottom edge
        let pw = (panel_w * 0.07).max(2.0);
        let cx = (x0 + x1) / 2.0;
        let post = Mask::polygons(&[tilt(rect(cx - pw / 2.0, y1 - 1.0, cx + pw / 2.0, y1 + s))]);
        c.paint_solid(
            &post,
            hsv(0.0, 0.0, rng.range(0.3, 0.6)),
            Some(Label {
                seg: seg::PANEL,
                depth: Some(depth + 2.0),
            }),
        );
    }
    if rng.chance(0.5) {
        let off = (0.02 * s).round().max(1.0) as i32;
        c.paint_solid(&mask.shifted(off, off).scaled(0.35), [0.0; 3], None);
    }
    if rng.chance(0.5) && kind_name != "banner" {
        // border: the panel outline in a darker (or lighter) tone, then the panel inset by the border width
        let b = (0.025 * s).max(1.0);
        c.paint_solid(
            &mask,
            shade(
                panel,
                if panel[0].max(panel[1]).max(panel[2]) > 128.0 {
                    0.55
                } else {
                    2.5
                },
            ),
            panel_label,
        );
        let inner = match kind_name {
            "board" => Mask::polygons(&[tilt(rounded_rect(
                x0 + b,
                y0 + b,
                x1 - b,
                y1 - b,
                0.1 * panel_h,
            ))]),
            _ => Mask::polygons(&[tilt(rect(x0 + b, y0 + b, x1 - b, y1 - b))]),
        };
        c.paint_solid(&inner, panel, panel_label);
    } else {
        c.paint_solid(&mask, panel, panel_label);
    }

    // The words: centred lines (left-aligned on labels).
    let text_label = Some(Label {
        seg: seg::TEXT,
        depth: None,
    });
    for (i, (line, w)) in lines.iter().zip(&widths).enumerate() {
        let x = if kind_name == "label" {
            x0 + pad_x
        } else {
            x0 + (panel_w - w) / 2.0
        };
        let baseline = y0 + pad_y + m.cap + i as f32 * line_h;
        let mask = font::text_mask(Face::SansBold, px, line, x, baseline).rotated(pcx, pcy, angle);
        c.paint_solid(&mask, ink, text_label);
    }
    let mut picture = String::new();
    if kind_name == "poster" {
        let r = (picture_h * 0.3).min(panel_w * 0.3);
        let centre = tilt(vec![(pcx, y1 - pad_y - picture_h / 2.0)])[0];
        let shape = Shape {
            kind: rng.index(SHAPES.len()),
            color: rng.index(COLOR_NAMES.len()),
            cx: centre.0,
            cy: centre.1,
            r,
            rot: rng.range(0.0, std::f32::consts::TAU),
        };
        scene::draw_shape(c, rng, &shape, depth);
        let what = format!("{} {}", COLOR_NAMES[shape.color], SHAPES[shape.kind]);
        picture = format!(" above {} {what}", super::article(&what));
    }

    let text = lines.join(" ");
    let color_word = color_name.map(|n| format!("{n} ")).unwrap_or_default();
    let noun = |n: &str| {
        let phrase = format!("{color_word}{n}");
        format!("{} {phrase}", super::article(&phrase))
    };
    let subject = match kind_name {
        "board" => format!("{} that says \"{text}\"", noun("sign")),
        "label" => format!(
            "{} with the word{} \"{text}\"",
            noun("label"),
            if n_words > 1 { "s" } else { "" }
        ),
        "poster" => format!("{} that reads \"{text}\"{picture}", noun("poster")),
        _ => format!("{} reading \"{text}\"", noun("banner")),
    };
    let caption = if rng.chance(0.5) {
        format!("{subject} on {}", bg.phrase)
    } else {
        subject
    };
    let first = words[0];
    let pts = outline.iter().flatten();
    let bbox = [
        pts.clone().map(|p| p.0).fold(f32::MAX, f32::min),
        pts.clone().map(|p| p.1).fold(f32::MAX, f32::min),
        pts.clone().map(|p| p.0).fold(f32::MIN, f32::max),
        pts.map(|p| p.1).fold(f32::MIN, f32::max),
    ];
    let anchor = tilt(vec![(pcx, y0 + pad_y / 2.0)])[0];
    Drawn {
        labels: Labels {
            word: Some(first.to_string()),
            sign_kind: Some(kind_name.to_string()),
            background: Some(bg.name.to_string()),
            ..Labels::default()
        },
        words: words.iter().map(|w| w.to_string()).collect(),
        caption,
        class_id: 6,
        objects: vec![ObjectMeta {
            kind: kind_name.to_string(),
            color: color_name.map(str::to_string),
            text: Some(text),
            bbox,
            anchor: [anchor.0, anchor.1],
            seg: seg::PANEL,
            depth: super::canvas::to_u8(depth),
        }],
    }
}
