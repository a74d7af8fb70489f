//! Text rendering with real fonts.
//!
//! Two DejaVu faces are embedded in the binary (`assets/fonts/`, Bitstream Vera licence, see the README
//! there): DejaVu Sans Bold for signs, titles and chart labels, DejaVu Serif for document body text. Glyph
//! outlines are rasterised by `ab_glyph` into the same coverage [`Mask`]s the shapes use, so text gets
//! anti-aliased pixels and its own segmentation class like any other object. Layout is a single line with
//! the font's advances and kerning; wrapping is done by the callers, which know their column widths.

use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

use super::canvas::Mask;

static SANS_BOLD_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
static SERIF_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSerif.ttf");

// The bytes are compiled in and known-good; a parse failure is a build defect, caught by the tests.
static SANS_BOLD: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(SANS_BOLD_TTF).expect("embedded DejaVuSans-Bold.ttf parses")
});
static SERIF: LazyLock<FontRef<'static>> =
    LazyLock::new(|| FontRef::try_from_slice(SERIF_TTF).expect("embedded DejaVuSerif.ttf parses"));

/// A bundled typeface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Face {
    SansBold,
    Serif,
}

impl Face {
    fn font(self) -> &'static FontRef<'static> {
        match self {
            Face::SansBold => &SANS_BOLD,
            Face::Serif => &SERIF,
        }
    }
}

/// Vertical metrics of a face at a pixel size (`px` = ascent − descent, ab_glyph's `PxScale`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Metrics {
    /// Distance from the baseline up to the top of the tallest glyphs.
    pub ascent: f32,
    /// Distance from the baseline down to the lowest descender (positive).
    pub descent: f32,
    /// Height of capital letters above the baseline.
    pub cap: f32,
}

/// Metrics of `face` at `px`.
pub(crate) fn metrics(face: Face, px: f32) -> Metrics {
    let f = face.font().as_scaled(PxScale::from(px));
    // DejaVu's cap height is 0.729 em; ab_glyph's scale puts ascent − descent (1.164 em) at `px`.
    let em = px / ((face.font().ascent_unscaled() - face.font().descent_unscaled()) / upem(face));
    Metrics {
        ascent: f.ascent(),
        descent: -f.descent(),
        cap: 0.729 * em,
    }
}

fn upem(face: Face) -> f32 {
    face.font().units_per_em().unwrap_or(2048.0)
}

/// Advance width of `text` on one line, kerning included.
pub(crate) fn width(face: Face, px: f32, text: &str) -> f32 {
    let f = face.font().as_scaled(PxScale::from(px));
    let mut w = 0.0;
    let mut prev = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Coverage of `text` drawn on one line with its pen starting at `x` and its baseline at `baseline`.
pub(crate) fn text_mask(face: Face, px: f32, text: &str, x: f32, baseline: f32) -> Mask {
    let font = face.font();
    let f = font.as_scaled(PxScale::from(px));
    let m = metrics(face, px);
    let w = width(face, px, text);
    // Italic-free faces stay within [pen, pen + advance] except for small side bearings: 2 px of slack.
    let x0 = (x - 2.0).floor() as i32;
    let y0 = (baseline - m.ascent - 2.0).floor() as i32;
    let mw = (w + 6.0).ceil() as usize;
    let mh = (m.ascent + m.descent + 5.0).ceil() as usize;
    let mut mask = Mask::zeros(x0, y0, mw, mh);
    if mask.a.is_empty() {
        return mask;
    }
    let mut pen = x;
    let mut prev = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            pen += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(PxScale::from(px), point(pen, baseline));
        pen += f.h_advance(id);
        prev = Some(id);
        let Some(outlined) = font.outline_glyph(glyph) else {
            continue;
        }; // spaces have no outline
        let b = outlined.px_bounds();
        let (gx, gy) = (b.min.x as i32 - x0, b.min.y as i32 - y0);
        outlined.draw(|dx, dy, c| {
            let (lx, ly) = (gx + dx as i32, gy + dy as i32);
            if lx >= 0 && ly >= 0 && (lx as usize) < mask.w && (ly as usize) < mask.h {
                let a = &mut mask.a[ly as usize * mask.w + lx as usize];
                *a = a.max(c.min(1.0));
            }
        });
    }
    mask
}

/// The largest size (≤ `max_px`) at which `text` fits in `max_width`.
pub(crate) fn fit(face: Face, text: &str, max_width: f32, max_px: f32) -> f32 {
    let w1 = width(face, 1.0, text).max(1e-3);
    (max_width / w1).min(max_px)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fonts_parse_and_measure() {
        for face in [Face::SansBold, Face::Serif] {
            let w = width(face, 20.0, "OPEN");
            assert!(w > 30.0 && w < 80.0, "{face:?} width {w}");
            assert!(
                (width(face, 40.0, "OPEN") - 2.0 * w).abs() < 0.5,
                "width scales linearly"
            );
            let m = metrics(face, 20.0);
            assert!((m.ascent + m.descent - 20.0).abs() < 0.5, "{m:?}");
            assert!(m.cap > 10.0 && m.cap < m.ascent);
        }
    }

    #[test]
    fn text_has_ink_inside_its_box() {
        let m = text_mask(Face::SansBold, 24.0, "STOP", 5.3, 30.0);
        let ink = m.count_at_least(0.5);
        assert!(ink > 100, "ink pixels {ink}");
        // The ink sits between cap height and baseline, and within the advance width.
        let w = width(Face::SansBold, 24.0, "STOP");
        let cap = metrics(Face::SansBold, 24.0).cap;
        for y in 0..m.h {
            for x in 0..m.w {
                if m.a[y * m.w + x] > 0.1 {
                    let (cx, cy) = (m.x0 + x as i32, m.y0 + y as i32);
                    assert!(cx as f32 >= 4.0 && (cx as f32) <= 5.3 + w + 1.0, "x {cx}");
                    assert!(cy as f32 >= 30.0 - cap - 2.0 && cy <= 31, "y {cy}");
                }
            }
        }
        // A space draws nothing.
        assert_eq!(
            text_mask(Face::Serif, 12.0, " ", 0.0, 10.0).count_at_least(0.01),
            0
        );
    }

    #[test]
    fn fit_respects_width() {
        let px = fit(Face::SansBold, "MUSEUM", 80.0, 100.0);
        assert!((width(Face::SansBold, px, "MUSEUM") - 80.0).abs() < 0.5);
        assert_eq!(fit(Face::SansBold, "BUS", 1000.0, 30.0), 30.0);
    }
}
