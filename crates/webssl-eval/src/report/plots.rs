//! The scaling plots: one line per method (and other-axis value), PNG + SVG + the CSV of the points.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

use super::{RunRow, human_count, io_err};
use crate::error::{EvalError, Result};

static FONT_BYTES: &[u8] = include_bytes!("../../../webssl-data/assets/fonts/DejaVuSans-Bold.ttf");
static FONT_INIT: Once = Once::new();
const FONT: &str = "sans-serif";

/// The x axis of a scaling plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Backbone parameters.
    Params,
    /// Training samples seen.
    Samples,
}

impl Axis {
    fn of(self, r: &RunRow) -> Option<u64> {
        match self {
            Axis::Params => r.params,
            Axis::Samples => r.samples_seen,
        }
    }
    fn other(self) -> Axis {
        match self {
            Axis::Params => Axis::Samples,
            Axis::Samples => Axis::Params,
        }
    }
    /// File-name suffix (`params` / `samples`).
    pub fn slug(self) -> &'static str {
        match self {
            Axis::Params => "params",
            Axis::Samples => "samples",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Axis::Params => "model size (backbone parameters, log scale)",
            Axis::Samples => "samples seen (log scale)",
        }
    }
    pub(super) fn unit(self) -> &'static str {
        match self {
            Axis::Params => "params",
            Axis::Samples => "samples",
        }
    }
}

/// One plotted line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    pub method: String,
    /// `(run name, x, y)`, sorted by x.
    pub points: Vec<(String, f64, f64)>,
}

/// The lines of the `metric`-vs-`axis` plot: runs that have the metric and a positive x value, grouped by
/// method, and split by the other axis' value when a method's runs differ in it.
pub fn series(runs: &[RunRow], metric: &str, axis: Axis) -> Vec<Series> {
    let mut by_method: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
    for r in runs {
        if r.metrics.contains_key(metric) && axis.of(r).is_some_and(|x| x > 0) {
            by_method.entry(&r.method).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (method, rs) in by_method {
        let others: BTreeSet<Option<u64>> = rs.iter().map(|r| axis.other().of(r)).collect();
        for other in &others {
            let label = if others.len() > 1 {
                match other {
                    Some(v) => format!("{method} @ {} {}", human_count(*v), axis.other().unit()),
                    None => format!("{method} @ ? {}", axis.other().unit()),
                }
            } else {
                method.to_string()
            };
            let mut points: Vec<(String, f64, f64)> = rs
                .iter()
                .filter(|r| axis.other().of(r) == *other)
                .filter_map(|r| Some((r.name.clone(), axis.of(r)? as f64, *r.metrics.get(metric)?)))
                .collect();
            points.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out.push(Series {
                label,
                method: method.to_string(),
                points,
            });
        }
    }
    out
}

/// File-name form of a metric (`dense-seg/miou` → `dense-seg_miou`).
pub fn slug(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV of a plot: `series,method,run,x,y`, one row per plotted point.
pub fn series_csv(series: &[Series], axis: Axis, metric: &str) -> String {
    let mut s = format!("series,method,run,{},{}\n", axis.slug(), csv_field(metric));
    for line in series {
        for (run, x, y) in &line.points {
            let _ = writeln!(
                s,
                "{},{},{},{x},{y}",
                csv_field(&line.label),
                csv_field(&line.method),
                csv_field(run)
            );
        }
    }
    s
}

fn register_font() -> Result<()> {
    let mut failed = false;
    FONT_INIT.call_once(|| {
        failed = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err();
    });
    if failed {
        return Err(io_err(
            Path::new("DejaVuSans-Bold.ttf"),
            std::io::Error::other("the bundled font could not be parsed"),
        ));
    }
    Ok(())
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    io_err(
        path,
        std::io::Error::other(format!("drawing the plot: {e}")),
    )
}

/// Colour of a method's lines (fixed per method so plots agree; others cycle).
fn color(method: &str, i: usize) -> RGBColor {
    match method {
        "dino" => RGBColor(31, 119, 180),
        "mae" => RGBColor(214, 39, 40),
        "clip" => RGBColor(44, 160, 44),
        _ => {
            const CYCLE: [RGBColor; 5] = [
                RGBColor(255, 127, 14),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
                RGBColor(227, 119, 194),
                RGBColor(127, 127, 127),
            ];
            CYCLE[i % CYCLE.len()]
        }
    }
}

/// Shade of the `n`-th line of one method: the first is the method colour, later ones are mixed with
/// black or white in turn so split lines (same method, other-axis value) stay distinguishable.
fn shade(c: RGBColor, n: usize) -> RGBColor {
    if n == 0 {
        return c;
    }
    let t = 0.3 * n.div_ceil(2) as f64;
    let target = if n % 2 == 1 { 0.0 } else { 255.0 };
    let mix = |v: u8| (v as f64 + (target - v as f64) * t.min(0.8)).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// Tick label of a log axis: `10M`, `2.5K`. Within a single decade plotters puts a tick at every
/// 1×…9×; only 1, 2, 3 and 5 are labelled so the labels at the crowded top of the decade do not overlap.
fn axis_label(x: f64, decades: usize) -> String {
    if x <= 0.0 {
        return String::new();
    }
    let mantissa = x / 10f64.powf(x.log10().floor());
    if decades <= 1
        && ![1.0, 2.0, 3.0, 5.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6)
    {
        return String::new();
    }
    human_count(x.round() as u64).replace(".0", "")
}

/// Width of the legend panel right of the chart (pixels).
const LEGEND_W: u32 = 230;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
    metric: &str,
    axis: Axis,
    path: &Path,
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.2));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (1.0, 10.0, 0.0, 1.0);
    }
    // Log axes need a positive span; pad by a factor either side so end points are not on the frame.
    // plotters labels a log axis only at powers of ten (plus 2×..9× when asked for enough labels), so
    // the padded span is widened to whole decades: every plot has at least two labelled ticks.
    x0 = 10f64.powf((x0 / 1.2).log10().floor());
    x1 = 10f64.powf((x1 * 1.2).log10().ceil());
    let decades = (x1 / x0).log10().round() as usize;
    let pad = if y1 > y0 {
        (y1 - y0) * 0.1
    } else {
        y0.abs().max(1.0) * 0.1
    };
    (y0, y1) = (y0 - pad, y1 + pad);
    // Enough decimals that neighbouring y ticks (≈ span / 8 apart) read differently.
    let prec = (-((y1 - y0) / 8.0).log10()).ceil().clamp(0.0, 6.0) as usize;
    // The legend gets its own panel so it never hides a point.
    let (w, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W));
    let title = match axis {
        Axis::Params => "model size",
        Axis::Samples => "samples seen",
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(format!("{metric} vs {title}"), (FONT, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(|e| draw_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(axis.label())
        .y_desc(metric)
        .x_labels(if decades <= 1 { 20 } else { 8 })
        .y_labels(8)
        .max_light_lines(1)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|x| axis_label(*x, decades))
        .y_label_formatter(&|y| format!("{y:.prec$}"))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    let mut per_method: BTreeMap<&str, usize> = BTreeMap::new();
    let mut colors = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let n = per_method.entry(&s.method).or_insert(0);
        let c = shade(color(&s.method, i), *n);
        *n += 1;
        colors.push(c);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.1, p.2)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| draw_err(path, e))?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|e| draw_err(path, e))?;
    }
    let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK);
    legend
        .draw(&Text::new("method", (12, 48), style.clone()))
        .map_err(|e| draw_err(path, e))?;
    for (i, (s, c)) in series.iter().zip(&colors).enumerate() {
        let y = 74 + 22 * i as i32;
        legend
            .draw(&PathElement::new(vec![(12, y), (40, y)], c.stroke_width(3)))
            .map_err(|e| draw_err(path, e))?;
        legend
            .draw(&Circle::new((26, y), 4, c.filled()))
            .map_err(|e| draw_err(path, e))?;
        legend
            .draw(&Text::new(s.label.clone(), (48, y - 7), style.clone()))
            .map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))?;
    Ok(())
}

/// Plot size in pixels (PNG) / user units (SVG).
pub const PLOT_SIZE: (u32, u32) = (960, 560);

/// Writes `<stem>.png`, `<stem>.svg` and `<stem>.csv` for one metric and axis.
pub fn write_plot(
    series: &[Series],
    metric: &str,
    axis: Axis,
    out_dir: &Path,
    stem: &str,
) -> Result<[PathBuf; 3]> {
    register_font()?;
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    let csv = out_dir.join(format!("{stem}.csv"));
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(root, series, metric, axis, &png)?;
    }
    // Encoded with the workspace `image` (plotters' own encoder would pull a second `image` version).
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| draw_err(&png, "bitmap buffer size mismatch"))?;
    img.save_with_format(&png, image::ImageFormat::Png)
        .map_err(|e| draw_err(&png, e))?;
    {
        let root = SVGBackend::new(&svg, (w, h)).into_drawing_area();
        draw(root, series, metric, axis, &svg)?;
    }
    std::fs::write(&csv, series_csv(series, axis, metric)).map_err(|e| io_err(&csv, e))?;
    Ok([png, svg, csv])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels() {
        assert_eq!(axis_label(1e7, 3), "10M");
        assert_eq!(axis_label(2e3, 1), "2K");
        assert_eq!(axis_label(500.0, 1), "500");
        assert_eq!(
            axis_label(700.0, 1),
            "",
            "only 1, 2, 3, 5 within one decade"
        );
        assert_eq!(axis_label(700.0, 2), "700");
    }
}
