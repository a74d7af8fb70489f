//! `chart`: bar charts, line charts and tables of numbers on a light page — the "charts, tables" of the
//! paper's Heavy filter (docs/reference/webssl-paper.md §5) and the ChartQA-style content of the OCR & Chart
//! VQA group.
//!
//! Labels are chosen to be readable from pixels: a bar chart's largest bar is at least 15% longer than the
//! runner-up, and a line chart's first series ends at least 25% of the plot height above or below its start.

use super::canvas::{Canvas, Label, Mask, Pt, circle, rect, stroke};
use super::font::{self, Face};
use super::palette::{COLOR_NAMES, contrasting_ink, hsv, jittered, mix};
use super::rng::SynthRng;
use super::words::VOCAB;
use super::{Drawn, Labels, ObjectMeta, seg};

/// Chart types (`labels.chart_type`; `.cls` = 8 + index).
pub const CHART_TYPES: [&str; 3] = ["bar", "line", "table"];

const ORDINALS: [&str; 6] = ["first", "second", "third", "fourth", "fifth", "sixth"];

/// Values for a bar chart: `n` integers in 10..=99 whose maximum beats the runner-up by ≥ 15%.
fn bar_values(rng: &mut SynthRng, n: usize) -> Vec<u32> {
    loop {
        let v: Vec<u32> = (0..n).map(|_| rng.int(10, 99) as u32).collect();
        let mut sorted = v.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        if sorted[0] as f32 >= 1.15 * sorted[1] as f32 {
            return v;
        }
    }
}

/// Draws a chart.
pub(crate) fn draw(c: &mut Canvas, rng: &mut SynthRng) -> Drawn {
    let s = c.w as f32;
    let page = hsv(rng.unit(), rng.range(0.0, 0.08), rng.range(0.9, 1.0));
    let depth = rng.range(100.0, 190.0);
    let (gx, gy) = (rng.range(-10.0, 10.0), rng.range(-10.0, 10.0));
    c.fill(
        |_, _| page,
        |x, y| depth + gx * (x / s - 0.5) + gy * (y / s - 0.5),
    );
    let ink = contrasting_ink(rng, page);
    let text_label = Some(Label {
        seg: seg::TEXT,
        depth: None,
    });
    let rule_label = Some(Label {
        seg: seg::RULE,
        depth: None,
    });
    let mark_label = Some(Label {
        seg: seg::MARK,
        depth: None,
    });
    let line_w = (s / 90.0).max(1.0);
    let mut words: Vec<String> = Vec::new();

    let margin = s * rng.range(0.04, 0.08);
    let mut top = margin;
    let title = if rng.chance(0.6) {
        let t = VOCAB[rng.index(VOCAB.len())];
        let px = font::fit(
            Face::SansBold,
            t,
            s - 2.0 * margin,
            s * rng.range(0.09, 0.12),
        );
        let m = font::metrics(Face::SansBold, px);
        let w = font::width(Face::SansBold, px, t);
        c.paint_solid(
            &font::text_mask(Face::SansBold, px, t, (s - w) / 2.0, top + m.cap),
            ink,
            text_label,
        );
        top += m.cap * 1.7;
        words.push(t.to_string());
        Some(t)
    } else {
        None
    };
    let kind = rng.index(CHART_TYPES.len());
    let mut labels = Labels {
        chart_type: Some(CHART_TYPES[kind].to_string()),
        word: title.map(str::to_string),
        ..Labels::default()
    };
    let num_px = s * rng.range(0.075, 0.095);
    let nm = font::metrics(Face::SansBold, num_px);
    let caption;
    let mut objects = Vec::new();
    let bar_object = |x0: f32, y0: f32, x1: f32, y1: f32, color: usize, value: u32| ObjectMeta {
        kind: "bar".to_string(),
        color: Some(COLOR_NAMES[color].to_string()),
        text: Some(value.to_string()),
        bbox: [x0, y0, x1, y1],
        anchor: [(x0 + x1) / 2.0, (y0 + y1) / 2.0],
        seg: seg::MARK,
        depth: super::canvas::to_u8(depth),
    };

    match CHART_TYPES[kind] {
        "bar" => {
            let n = rng.int(3, 6) as usize;
            let values = bar_values(rng, n);
            let largest = (0..n).max_by_key(|&i| values[i]).unwrap_or(0);
            let vertical = rng.chance(0.75);
            let single = rng.chance(0.6);
            let base_color = rng.index(COLOR_NAMES.len());
            let colors: Vec<usize> = if single {
                vec![base_color; n]
            } else {
                rng.distinct(COLOR_NAMES.len(), n)
            };
            let grid = rng.chance(0.5);
            let show_values = rng.chance(0.7);
            let vmax = 100.0;
            if vertical {
                // plot box: left axis at ax, baseline at by
                let ax = margin + font::width(Face::SansBold, num_px, "00") + 2.0;
                let by = s - margin - nm.cap * 1.6;
                let (x_end, y_top) = (
                    s - margin,
                    top + if show_values { nm.cap * 1.5 } else { 0.0 },
                );
                let slot = (x_end - ax) / n as f32;
                let bw = slot * rng.range(0.5, 0.8);
                if grid {
                    for k in 1..=3 {
                        let y = by - (by - y_top) * k as f32 / 3.0;
                        let m = Mask::polygons(&stroke(
                            &[(ax, y), (x_end, y)],
                            (line_w * 0.6).max(1.0),
                        ));
                        c.paint_solid(&m, mix(page, ink, 0.25), rule_label);
                    }
                }
                for i in 0..n {
                    let h = (by - y_top) * values[i] as f32 / vmax;
                    let bx = ax + slot * (i as f32 + 0.5) - bw / 2.0;
                    let m = Mask::polygons(&[rect(bx, by - h, bx + bw, by)]);
                    c.paint_solid(&m, jittered(rng, colors[i], 10.0), mark_label);
                    objects.push(bar_object(bx, by - h, bx + bw, by, colors[i], values[i]));
                    let v = values[i].to_string();
                    let lpx = font::fit(Face::SansBold, &v, slot * 0.95, num_px);
                    if show_values {
                        let w = font::width(Face::SansBold, lpx, &v);
                        c.paint_solid(
                            &font::text_mask(
                                Face::SansBold,
                                lpx,
                                &v,
                                bx + bw / 2.0 - w / 2.0,
                                by - h - nm.cap * 0.35,
                            ),
                            ink,
                            text_label,
                        );
                        words.push(v);
                    }
                    let name = ((b'A' + i as u8) as char).to_string();
                    let w = font::width(Face::SansBold, num_px, &name);
                    c.paint_solid(
                        &font::text_mask(
                            Face::SansBold,
                            num_px,
                            &name,
                            bx + bw / 2.0 - w / 2.0,
                            by + nm.cap * 1.4,
                        ),
                        ink,
                        text_label,
                    );
                    words.push(name);
                }
                if !show_values {
                    // Without value labels the y axis gets ticks, so heights stay readable as numbers.
                    for (k, t) in ["0", "50", "100"].iter().enumerate() {
                        let y = by - (by - y_top) * k as f32 * 0.5;
                        let lpx = font::fit(Face::SansBold, t, ax - margin - 1.0, num_px);
                        let lm = font::metrics(Face::SansBold, lpx);
                        let w = font::width(Face::SansBold, lpx, t);
                        let base = (y + lm.cap / 2.0).min(s - 1.0);
                        let m = font::text_mask(Face::SansBold, lpx, t, ax - 2.0 - w, base);
                        c.paint_solid(&m, ink, text_label);
                        words.push(t.to_string());
                    }
                }
                let axes = Mask::polygons(&stroke(&[(ax, y_top), (ax, by), (x_end, by)], line_w));
                c.paint_solid(&axes, ink, rule_label);
            } else {
                let ax = margin + font::width(Face::SansBold, num_px, "A") + 3.0;
                let (y0, y1) = (top, s - margin);
                let x_end = s
                    - margin
                    - if show_values {
                        font::width(Face::SansBold, num_px, "00") + 2.0
                    } else {
                        0.0
                    };
                let slot = (y1 - y0) / n as f32;
                let bh = slot * rng.range(0.5, 0.8);
                for i in 0..n {
                    let w = (x_end - ax) * values[i] as f32 / vmax;
                    let by = y0 + slot * (i as f32 + 0.5) - bh / 2.0;
                    let m = Mask::polygons(&[rect(ax, by, ax + w, by + bh)]);
                    c.paint_solid(&m, jittered(rng, colors[i], 10.0), mark_label);
                    objects.push(bar_object(ax, by, ax + w, by + bh, colors[i], values[i]));
                    let lpx = font::fit(Face::SansBold, "00", s, num_px.min(slot * 0.9));
                    let lm = font::metrics(Face::SansBold, lpx);
                    let mid = by + bh / 2.0 + lm.cap / 2.0;
                    let name = ((b'A' + i as u8) as char).to_string();
                    c.paint_solid(
                        &font::text_mask(Face::SansBold, lpx, &name, margin, mid),
                        ink,
                        text_label,
                    );
                    words.push(name);
                    if show_values {
                        let v = values[i].to_string();
                        c.paint_solid(
                            &font::text_mask(Face::SansBold, lpx, &v, ax + w + 2.0, mid),
                            ink,
                            text_label,
                        );
                        words.push(v);
                    }
                }
                let axis = Mask::polygons(&stroke(&[(ax, y0), (ax, y1)], line_w));
                c.paint_solid(&axis, ink, rule_label);
            }
            labels.largest_bar = Some(largest as u32);
            labels.n_bars = Some(n as u32);
            let sup = if vertical { "tallest" } else { "longest" };
            caption = format!(
                "a bar chart with {n} bars; the {sup} is the {}",
                ORDINALS[largest]
            );
        }
        "line" => {
            let n = rng.int(5, 9) as usize;
            let n_series = if rng.chance(0.6) { 1 } else { 2 };
            let colors = rng.distinct(COLOR_NAMES.len(), n_series);
            let ax = margin + font::width(Face::SansBold, num_px, "00") + 2.0;
            let (by, x_end, y_top) = (s - margin, s - margin, top + line_w);
            let grid = rng.chance(0.6);
            // y ticks at 0, 50, 100
            for (k, t) in ["0", "50", "100"].iter().enumerate() {
                let y = by - (by - y_top) * k as f32 / 2.0;
                if grid && k > 0 {
                    let m =
                        Mask::polygons(&stroke(&[(ax, y), (x_end, y)], (line_w * 0.6).max(1.0)));
                    c.paint_solid(&m, mix(page, ink, 0.25), rule_label);
                }
                let lpx = font::fit(Face::SansBold, t, ax - margin - 1.0, num_px);
                let w = font::width(Face::SansBold, lpx, t);
                let lm = font::metrics(Face::SansBold, lpx);
                c.paint_solid(
                    &font::text_mask(
                        Face::SansBold,
                        lpx,
                        t,
                        ax - 2.0 - w,
                        (y + lm.cap / 2.0).min(s - 1.0),
                    ),
                    ink,
                    text_label,
                );
                words.push(t.to_string());
            }
            let mut trend = "up";
            let sw = (s / 50.0).max(1.2);
            let markers = rng.chance(0.5);
            for (si, &col) in colors.iter().enumerate() {
                // endpoints at least 0.25 apart, then a noisy interpolation
                let a = rng.range(0.1, 0.9);
                let up = rng.chance(0.5);
                let delta = rng.range(0.25, 0.6);
                let b = if up {
                    (a + delta).min(0.95)
                } else {
                    (a - delta).max(0.05)
                };
                let (a, b) = if (b - a).abs() < 0.25 {
                    if up { (b - 0.3, b) } else { (b + 0.3, b) }
                } else {
                    (a, b)
                };
                if si == 0 {
                    trend = if b > a { "up" } else { "down" };
                }
                let pts: Vec<Pt> = (0..n)
                    .map(|i| {
                        let t = i as f32 / (n - 1) as f32;
                        let noise = if i == 0 || i == n - 1 {
                            0.0
                        } else {
                            rng.range(-0.12, 0.12)
                        };
                        let v = (a + (b - a) * t + noise).clamp(0.02, 0.98);
                        (
                            ax + line_w + (x_end - ax - 2.0 * line_w) * t,
                            by - (by - y_top) * v,
                        )
                    })
                    .collect();
                let color = jittered(rng, col, 10.0);
                c.paint_solid(&Mask::polygons(&stroke(&pts, sw)), color, mark_label);
                if markers {
                    let dots: Vec<_> = pts.iter().map(|&(x, y)| circle(x, y, sw * 1.3)).collect();
                    c.paint_solid(&Mask::polygons(&dots), color, mark_label);
                }
            }
            let axes = Mask::polygons(&stroke(&[(ax, y_top), (ax, by), (x_end, by)], line_w));
            c.paint_solid(&axes, ink, rule_label);
            labels.trend = Some(trend.to_string());
            let series = if n_series == 1 {
                "one series".to_string()
            } else {
                "two series".to_string()
            };
            let dir = if trend == "up" { "rises" } else { "falls" };
            caption = if n_series == 1 {
                format!("a line chart with {series} that {dir} from left to right")
            } else {
                format!(
                    "a line chart with {series}; the {} line {dir}",
                    COLOR_NAMES[colors[0]]
                )
            };
        }
        _ => {
            let rows = rng.int(3, 6) as usize;
            let cols = rng.int(2, 4) as usize;
            let (x0, x1, y0, y1) = (margin, s - margin, top, s - margin);
            let (cw, rh) = ((x1 - x0) / cols as f32, (y1 - y0) / rows as f32);
            let header_kind = rng.index(3);
            let header: Vec<String> = (0..cols)
                .map(|j| match header_kind {
                    0 => ((b'A' + j as u8) as char).to_string(),
                    1 => format!("Q{}", j + 1),
                    _ => format!("{}", 2020 + j),
                })
                .collect();
            let shaded = rng.chance(0.6);
            if shaded {
                let k = rng.index(COLOR_NAMES.len());
                let hc = jittered(rng, k, 10.0);
                let hc = mix(hc, page, 0.6);
                c.paint_solid(
                    &Mask::polygons(&[rect(x0, y0, x1, y0 + rh)]),
                    hc,
                    Some(Label {
                        seg: seg::PANEL,
                        depth: None,
                    }),
                );
            }
            let digits = rng.int(1, 3) as u32;
            // Fit the widest cell: a number with one spare digit of padding, or a header.
            let widest = header
                .iter()
                .map(|h| h.len() + 1)
                .chain([digits as usize + 1])
                .max()
                .unwrap_or(3)
                .max(3);
            let cell_px = font::fit(
                Face::SansBold,
                &"0".repeat(widest),
                cw * 0.9,
                (rh * 0.75 * 1.164 / 0.729 * 0.8).min(num_px * 1.3),
            );
            let cm = font::metrics(Face::SansBold, cell_px);
            for r in 0..rows {
                for j in 0..cols {
                    let t = if r == 0 {
                        header[j].clone()
                    } else {
                        rng.int(0, 10i64.pow(digits) - 1).to_string()
                    };
                    let w = font::width(Face::SansBold, cell_px, &t);
                    let x = x0 + cw * (j as f32 + 0.5) - w / 2.0;
                    let base = y0 + rh * (r as f32 + 0.5) + cm.cap / 2.0;
                    c.paint_solid(
                        &font::text_mask(Face::SansBold, cell_px, &t, x, base),
                        ink,
                        text_label,
                    );
                    words.push(t);
                }
            }
            // rules: all grid lines, or only horizontal ones (booktabs style)
            let full_grid = rng.chance(0.5);
            let mut lines = Vec::new();
            for r in 0..=rows {
                let y = y0 + rh * r as f32;
                lines.extend(stroke(&[(x0, y), (x1, y)], line_w));
            }
            if full_grid {
                for j in 0..=cols {
                    let x = x0 + cw * j as f32;
                    lines.extend(stroke(&[(x, y0), (x, y1)], line_w));
                }
            }
            c.paint_solid(&Mask::polygons(&lines), ink, rule_label);
            labels.n_rows = Some(rows as u32);
            labels.n_cols = Some(cols as u32);
            caption = format!("a table of numbers with {rows} rows and {cols} columns");
        }
    }
    // The chart itself (the page; its anchor is in the bottom-left margin) first, then its bars.
    objects.insert(
        0,
        ObjectMeta {
            kind: match CHART_TYPES[kind] {
                "table" => "table".to_string(),
                t => format!("{t}_chart"),
            },
            color: None,
            text: title.map(str::to_string),
            bbox: [0.0, 0.0, s, s],
            anchor: [margin / 2.0, s - margin / 2.0],
            seg: 0,
            depth: super::canvas::to_u8(depth),
        },
    );
    let caption = match title {
        Some(t) => format!("{caption}, titled \"{t}\""),
        None => caption,
    };
    Drawn {
        labels,
        words,
        caption,
        class_id: 8 + kind as u32,
        objects,
    }
}
