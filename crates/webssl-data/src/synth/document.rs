//! `document`: a page of text — a bold title of one or two vocabulary words over paragraphs, two columns or a
//! bulleted list of serif running text — either filling the frame or as a sheet lying on a desk. These are
//! the "documents with readable text" the paper's Heavy filter keeps (docs/reference/webssl-paper.md §5).
//!
//! At 64–112 px the body text is 4–8 px tall: a texture of text lines rather than readable words, as in a
//! downscaled scan; the title (cap height 7–12% of the side) stays readable and is `labels.word`.

use super::background;
use super::canvas::{Canvas, Label, Mask, circle, rect, rotated};
use super::font::{self, Face};
use super::palette::{hsv, muted, shade};
use super::rng::SynthRng;
use super::words::{FILLER, VOCAB};
use super::{Drawn, Labels, ObjectMeta, seg};

/// Page layouts (`labels.layout`).
pub const LAYOUTS: [&str; 3] = ["one_column", "two_column", "list"];

/// Draws a document.
pub(crate) fn draw(c: &mut Canvas, rng: &mut SynthRng) -> Drawn {
    let s = c.w as f32;
    let paper = hsv(rng.unit(), rng.range(0.0, 0.12), rng.range(0.86, 1.0));
    let depth = rng.range(90.0, 180.0);
    let on_desk = rng.chance(0.35);
    let (px0, py0, px1, py1);
    // A sheet on a desk is tilted by up to ±8° half of the time; its whole content turns with it.
    let mut angle = 0.0;
    if on_desk {
        // A darker desk (any background, darkened) with the sheet on it, slightly smaller than the frame.
        background::draw(c, rng);
        let k = rng.range(0.35, 0.7);
        for p in &mut c.rgb {
            *p = shade(*p, k);
        }
        if rng.chance(0.5) {
            angle = rng.range(-0.14, 0.14);
        }
        // Shrink the sheet so its tilted bounding box still fits: side · (cos + |sin|) ≤ 0.94 s.
        let fit = 1.0 / (angle.cos() + angle.sin().abs());
        let (w, h) = (
            s * rng.range(0.72, 0.94) * fit,
            s * rng.range(0.72, 0.94) * fit,
        );
        let (bw, bh) = (
            w * angle.cos() + h * angle.sin().abs(),
            w * angle.sin().abs() + h * angle.cos(),
        );
        let (ccx, ccy) = (
            rng.range(bw / 2.0, s - bw / 2.0),
            rng.range(bh / 2.0, s - bh / 2.0),
        );
        (px0, py0, px1, py1) = (ccx - w / 2.0, ccy - h / 2.0, ccx + w / 2.0, ccy + h / 2.0);
        let sheet = Mask::polygons(&[rotated(rect(px0, py0, px1, py1), ccx, ccy, angle)]);
        let off = (0.02 * s).round().max(1.0) as i32;
        c.paint_solid(&sheet.shifted(off, off).scaled(0.4), [0.0; 3], None);
        c.paint_solid(
            &sheet,
            paper,
            Some(Label {
                seg: seg::PANEL,
                depth: Some(depth),
            }),
        );
    } else {
        // The page fills the frame: a flat, slightly tilted plane with a faint illumination gradient.
        let tint = muted(rng, 0.1, 0.8, 1.0);
        let (gx, gy) = (rng.range(-12.0, 12.0), rng.range(-12.0, 12.0));
        c.fill(
            |x, y| super::palette::mix(paper, tint, 0.5 * (x + y) / (2.0 * s)),
            |x, y| depth + gx * (x / s - 0.5) + gy * (y / s - 0.5),
        );
        c.seg.iter_mut().for_each(|v| *v = seg::PANEL);
        (px0, py0, px1, py1) = (0.0, 0.0, s, s);
    }
    let (pcx, pcy) = ((px0 + px1) / 2.0, (py0 + py1) / 2.0);
    let tilt = |m: Mask| m.rotated(pcx, pcy, angle);
    let ink = hsv(rng.unit(), rng.range(0.0, 0.5), rng.range(0.05, 0.25));
    let text_label = Some(Label {
        seg: seg::TEXT,
        depth: None,
    });

    // Content box.
    let margin = s * rng.range(0.06, 0.1);
    let (cx0, cy0, cx1, cy1) = (px0 + margin, py0 + margin, px1 - margin, py1 - margin * 0.7);
    let content_w = cx1 - cx0;
    let mut words: Vec<String> = Vec::new();

    // Title.
    let n_title = if rng.chance(0.3) { 2 } else { 1 };
    let title_words: Vec<&str> = rng
        .distinct(VOCAB.len(), n_title)
        .into_iter()
        .map(|i| VOCAB[i])
        .collect();
    let title = title_words.join(" ");
    let tpx = font::fit(Face::SansBold, &title, content_w, s * rng.range(0.11, 0.16));
    let tm = font::metrics(Face::SansBold, tpx);
    let tw = font::width(Face::SansBold, tpx, &title);
    let tx = if rng.chance(0.5) {
        cx0
    } else {
        cx0 + (content_w - tw) / 2.0
    };
    let tbase = cy0 + tm.cap;
    c.paint_solid(
        &tilt(font::text_mask(Face::SansBold, tpx, &title, tx, tbase)),
        ink,
        text_label,
    );
    words.extend(title_words.iter().map(|w| w.to_string()));
    let mut y = tbase + tm.cap * rng.range(0.6, 1.0);
    if rng.chance(0.4) {
        let t = (s / 110.0).max(1.0);
        c.paint_solid(
            &tilt(Mask::polygons(&[rect(cx0, y, cx1, y + t)])),
            ink,
            Some(Label {
                seg: seg::RULE,
                depth: None,
            }),
        );
        y += t + tm.cap * 0.4;
    }

    // Body.
    let layout = rng.index(LAYOUTS.len());
    let bpx = (s * rng.range(0.055, 0.075)).max(4.0);
    let bm = font::metrics(Face::Serif, bpx);
    let line_h = bpx * rng.range(1.1, 1.35);
    let gap = s * 0.05;
    let columns: Vec<(f32, f32)> = if LAYOUTS[layout] == "two_column" {
        let w = (content_w - gap) / 2.0;
        vec![(cx0, cx0 + w), (cx0 + w + gap, cx1)]
    } else {
        vec![(cx0, cx1)]
    };
    let top = y;
    for &(lx0, lx1) in &columns {
        let mut y = top + bm.ascent;
        while y + bm.descent <= cy1 {
            // One paragraph (or list item).
            let is_list = LAYOUTS[layout] == "list";
            let n_lines = if is_list {
                rng.int(1, 2)
            } else {
                rng.int(2, 5)
            };
            let indent = if is_list { bpx * 1.2 } else { 0.0 };
            if is_list {
                let r = (bpx * 0.16).max(0.8);
                let bullet = tilt(Mask::polygons(&[circle(
                    lx0 + r + 0.5,
                    y - bm.cap * 0.4,
                    r,
                )]));
                c.paint_solid(&bullet, ink, text_label);
            }
            for li in 0..n_lines {
                if y + bm.descent > cy1 {
                    break;
                }
                let first_indent = if li == 0 && !is_list && rng.chance(0.6) {
                    bpx * 1.5
                } else {
                    0.0
                };
                let x_start = lx0 + indent + first_indent;
                // The last line of a multi-line paragraph runs short.
                let full = lx1 - x_start;
                let avail = full
                    * if li + 1 == n_lines && n_lines > 1 {
                        rng.range(0.3, 0.9)
                    } else {
                        1.0
                    };
                let mut line = String::new();
                let mut first_word = li == 0;
                loop {
                    let w = *rng.pick(FILLER);
                    let word = if first_word {
                        let mut cs = w.chars();
                        cs.next()
                            .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                            .unwrap_or_default()
                    } else {
                        w.to_string()
                    };
                    let candidate = if line.is_empty() {
                        word.clone()
                    } else {
                        format!("{line} {word}")
                    };
                    // Every line gets at least one word if one fits the column at all.
                    let limit = if line.is_empty() { full } else { avail };
                    if font::width(Face::Serif, bpx, &candidate) > limit {
                        break;
                    }
                    line = candidate;
                    words.push(word);
                    first_word = false;
                }
                if !line.is_empty() {
                    c.paint_solid(
                        &tilt(font::text_mask(Face::Serif, bpx, &line, x_start, y)),
                        ink,
                        text_label,
                    );
                }
                y += line_h;
            }
            y += line_h * if is_list { 0.25 } else { rng.range(0.3, 0.8) };
        }
    }

    let layout_phrase = match LAYOUTS[layout] {
        "one_column" => "paragraphs of text",
        "two_column" => "two columns of text",
        _ => "a bulleted list",
    };
    let caption = match rng.index(3) {
        0 => format!("a document titled \"{title}\" with {layout_phrase}"),
        1 => format!("a page with the heading \"{title}\" followed by {layout_phrase}"),
        _ => format!("a printed page headed \"{title}\" with {layout_phrase}"),
    };
    let caption = if on_desk {
        format!("{caption}, lying on a desk")
    } else {
        caption
    };
    let corners = rotated(rect(px0, py0, px1, py1), pcx, pcy, angle);
    let bbox = [
        corners.iter().map(|p| p.0).fold(f32::MAX, f32::min),
        corners.iter().map(|p| p.1).fold(f32::MAX, f32::min),
        corners.iter().map(|p| p.0).fold(f32::MIN, f32::max),
        corners.iter().map(|p| p.1).fold(f32::MIN, f32::max),
    ];
    let anchor = rotated(
        vec![((px0 + px1) / 2.0, py1 - margin * 0.35)],
        pcx,
        pcy,
        angle,
    )[0];
    Drawn {
        labels: Labels {
            word: Some(title_words[0].to_string()),
            layout: Some(LAYOUTS[layout].to_string()),
            ..Labels::default()
        },
        words,
        caption,
        class_id: 7,
        objects: vec![ObjectMeta {
            kind: "paper".to_string(),
            color: None,
            text: Some(title),
            bbox,
            // in the bottom margin: bare paper
            anchor: [anchor.0, anchor.1],
            seg: seg::PANEL,
            depth: super::canvas::to_u8(depth),
        }],
    }
}
