//! The random parameters of a view and how they are drawn: torchvision's `RandomResizedCrop`,
//! `ColorJitter`, `RandomApply` and the other coins, from an explicit [`rand_core::Rng`].

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::sampler::{below, unit_f64};
use crate::{DataError, Result};

/// A crop window in the source image (torchvision `get_params` returns `(i, j, h, w)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropParams {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// One draw of `ColorJitter`: the op order (0 brightness, 1 contrast, 2 saturation, 3 hue) and the
/// factors (`None` = op disabled, as torchvision's `None` factors).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JitterParams {
    pub order: [u8; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

/// Every random decision of one view, so a view can be replayed exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewParams {
    pub crop: CropParams,
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    /// Gaussian blur σ, or `None` when the blur was not applied.
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

/// A uniform `f64` in `[lo, hi)`.
fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// torchvision `RandomApply` / `Random*(p)`: applied iff `u < p` with `u ~ U[0, 1)`.
pub(super) fn coin<R: Rng>(rng: &mut R, p: f64) -> bool {
    unit_f64(rng) < p
}

/// A uniform integer in `lo..=hi`.
fn randint<R: Rng>(rng: &mut R, lo: u32, hi: u32) -> u32 {
    lo + below(rng, (hi - lo) as u64 + 1) as u32
}

/// torchvision `RandomResizedCrop.get_params` for a `width`×`height` image: up to 10 tries of
/// `area · U(scale)` with a log-uniform aspect ratio, `w = round(√(A·r))`, `h = round(√(A/r))`
/// (round half to even, as Python), accepted if it fits, at a uniform offset; otherwise the
/// centre crop with the ratio clamped into `ratio`.
pub fn random_resized_crop_params<R: Rng>(
    rng: &mut R,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropParams {
    let area = width as f64 * height as f64;
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= width as f64 && 0.0 < h && h <= height as f64 {
            let (w, h) = (w as u32, h as u32);
            let top = randint(rng, 0, height - h);
            let left = randint(rng, 0, width - w);
            return CropParams {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    // Fallback to a central crop.
    let in_ratio = width as f64 / height as f64;
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < rmin {
        (
            width,
            ((width as f64 / rmin).round_ties_even() as u32).clamp(1, height),
        )
    } else if in_ratio > rmax {
        (
            ((height as f64 * rmax).round_ties_even() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropParams {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)` ranges (torchvision semantics: factors in
/// `[max(0, 1 − b), 1 + b]`, hue in `[−h, h]`; 0 disables an op).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// DINOv2's `ColorJitter(0.4, 0.4, 0.2, 0.1)`.
    pub const DINOV2: ColorJitter = ColorJitter {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.2,
        hue: 0.1,
    };

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(DataError::config(
                    format!("color_jitter.{name}"),
                    format!("must be >= 0, got {v}"),
                ));
            }
        }
        if !(self.hue.is_finite() && (0.0..=0.5).contains(&self.hue)) {
            return Err(DataError::config(
                "color_jitter.hue",
                format!("must be in [0, 0.5], got {}", self.hue),
            ));
        }
        Ok(())
    }

    /// torchvision `ColorJitter.get_params`: a random permutation of the four ops, then the factors.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> JitterParams {
        let mut order = [0u8, 1, 2, 3];
        crate::sampler::shuffle(rng, &mut order);
        let mut factor = |b: f32| {
            (b > 0.0).then(|| uniform(rng, (1.0 - b as f64).max(0.0), 1.0 + b as f64) as f32)
        };
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| uniform(rng, -self.hue as f64, self.hue as f64) as f32);
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

/// The random recipe of one kind of view.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// Output side (square), pixels.
    pub size: u32,
    /// RandomResizedCrop area fraction range.
    pub scale: (f64, f64),
    /// RandomResizedCrop aspect-ratio range.
    pub ratio: (f64, f64),
    pub p_flip: f64,
    /// Colour jitter and the probability it is applied (`RandomApply`).
    pub jitter: Option<(ColorJitter, f64)>,
    pub p_grayscale: f64,
    /// Probability of the Gaussian blur *as applied* (see [`BlurProbabilities`]).
    pub p_blur: f64,
    /// σ range of the blur.
    pub blur_sigma: (f32, f32),
    pub p_solarize: f64,
}

impl ViewSpec {
    /// Draws every random decision of one view of a `width`×`height` image, in torchvision's order
    /// (crop, flip, jitter apply + params, grayscale, blur apply + σ, solarize).
    pub fn sample<R: Rng>(&self, rng: &mut R, width: u32, height: u32) -> ViewParams {
        let crop = random_resized_crop_params(rng, width, height, self.scale, self.ratio);
        let flip = coin(rng, self.p_flip);
        let jitter = match self.jitter {
            Some((cj, p)) if coin(rng, p) => Some(cj.sample(rng)),
            _ => None,
        };
        let grayscale = coin(rng, self.p_grayscale);
        let blur_sigma = coin(rng, self.p_blur)
            .then(|| uniform(rng, self.blur_sigma.0 as f64, self.blur_sigma.1 as f64) as f32);
        let solarize = coin(rng, self.p_solarize);
        ViewParams {
            crop,
            flip,
            jitter,
            grayscale,
            blur_sigma,
            solarize,
        }
    }

    pub(super) fn validate(&self, field: &str) -> Result<()> {
        if self.size == 0 {
            return Err(DataError::config(format!("{field}.size"), "must be >= 1"));
        }
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
            return Err(DataError::config(
                format!("{field}.scale"),
                format!("need 0 < lo <= hi, got ({s0}, {s1})"),
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(DataError::config(
                format!("{field}.ratio"),
                format!("need 0 < lo <= hi, got ({r0}, {r1})"),
            ));
        }
        let (b0, b1) = self.blur_sigma;
        if !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
            return Err(DataError::config(
                format!("{field}.blur_sigma"),
                format!("need 0 < lo <= hi, got ({b0}, {b1})"),
            ));
        }
        let mut probs = vec![
            ("p_flip", self.p_flip),
            ("p_grayscale", self.p_grayscale),
            ("p_blur", self.p_blur),
            ("p_solarize", self.p_solarize),
        ];
        if let Some((cj, p)) = self.jitter {
            cj.validate()?;
            probs.push(("p_jitter", p));
        }
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(DataError::config(
                    format!("{field}.{name}"),
                    format!("probability must be in [0, 1], got {p}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::rng_stream;

    #[test]
    fn crop_params_respect_scale_and_ratio_bounds() {
        let mut rng = rng_stream(7, "augment-test", &[0]);
        for &(w, h) in &[(640u32, 480u32), (300, 1000), (224, 224), (97, 61)] {
            let area = (w * h) as f64;
            let mut fallback = 0;
            let mut n_scale_lo = 0;
            for _ in 0..4000 {
                let c = random_resized_crop_params(&mut rng, w, h, (0.05, 0.32), (0.75, 4.0 / 3.0));
                assert!(
                    c.width >= 1 && c.height >= 1 && c.left + c.width <= w && c.top + c.height <= h
                );
                let frac = (c.width * c.height) as f64 / area;
                let ratio = c.width as f64 / c.height as f64;
                if c.width == w && c.height == h {
                    fallback += 1;
                    continue;
                }
                // Rounding w and h to integers moves area and ratio by at most ~1 pixel per side.
                let slack_w = 1.0 / c.width as f64;
                let slack_h = 1.0 / c.height as f64;
                assert!(
                    frac >= 0.05 * (1.0 - slack_w) * (1.0 - slack_h) - 1e-12,
                    "{c:?} frac {frac}"
                );
                assert!(
                    frac <= 0.32 * (1.0 + slack_w) * (1.0 + slack_h) + 1e-12,
                    "{c:?} frac {frac}"
                );
                assert!(
                    ratio >= 0.75 * (1.0 - slack_w) / (1.0 + slack_h) - 1e-12,
                    "{c:?} ratio {ratio}"
                );
                assert!(
                    ratio <= 4.0 / 3.0 * (1.0 + slack_w) / (1.0 - slack_h) + 1e-12,
                    "{c:?} ratio {ratio}"
                );
                if frac < 0.1 {
                    n_scale_lo += 1;
                }
            }
            // Area ~ U(0.05, 0.32): P(frac < 0.1) = 0.05 / 0.27 ≈ 0.185.
            let p = n_scale_lo as f64 / (4000 - fallback) as f64;
            assert!((0.15..0.22).contains(&p), "{w}x{h}: P(frac<0.1) = {p}");
            assert_eq!(fallback, 0, "local scales always fit in {w}x{h}");
        }
    }

    #[test]
    fn crop_offsets_are_uniform() {
        // For a fixed size, the left offset is uniform over 0..=w-cw: check the mean.
        let mut rng = rng_stream(3, "augment-test", &[1]);
        let (mut sum, mut n) = (0f64, 0f64);
        for _ in 0..20000 {
            let c = random_resized_crop_params(&mut rng, 500, 500, (0.1, 0.1), (1.0, 1.0));
            // area 25000, ratio 1 -> 158x158 always; offsets in 0..=342.
            assert_eq!((c.width, c.height), (158, 158));
            sum += c.left as f64;
            n += 1.0;
        }
        assert!((sum / n - 171.0).abs() < 3.0, "mean left {}", sum / n);
    }

    #[test]
    fn crop_fallback_is_centre_with_clamped_ratio() {
        // A 1000x10 strip: no 0.9-area crop with ratio <= 4/3 fits, so the fallback runs.
        let mut rng = rng_stream(1, "augment-test", &[2]);
        let c = random_resized_crop_params(&mut rng, 1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(
            c,
            CropParams {
                top: 0,
                left: (1000 - 13) / 2,
                height: 10,
                width: 13
            }
        );
        let c = random_resized_crop_params(&mut rng, 10, 1000, (0.9, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(
            c,
            CropParams {
                top: (1000 - 13) / 2,
                left: 0,
                height: 13,
                width: 10
            }
        );
    }

    #[test]
    fn jitter_sampling_ranges_and_permutations() {
        let mut rng = rng_stream(5, "augment-test", &[3]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let p = ColorJitter::DINOV2.sample(&mut rng);
            let mut o = p.order;
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3]);
            seen.insert(p.order);
            assert!((0.6..=1.4).contains(&p.brightness.unwrap()));
            assert!((0.6..=1.4).contains(&p.contrast.unwrap()));
            assert!((0.8..=1.2).contains(&p.saturation.unwrap()));
            assert!((-0.1..=0.1).contains(&p.hue.unwrap()));
        }
        assert_eq!(seen.len(), 24, "all 24 op orders occur");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Any image size, scale and ratio range: the crop lies inside the image and is non-empty.
        #[test]
        fn crop_params_always_inside(w in 1u32..3000, h in 1u32..3000, s0 in 0.001f64..1.0, ds in 0.0f64..1.0,
                                     r0 in 0.1f64..3.0, dr in 0.0f64..3.0, seed in 0u64..1000) {
            let mut rng = rng_stream(seed, "augment-test", &[7]);
            let c = random_resized_crop_params(&mut rng, w, h, (s0, s0 + ds), (r0, r0 + dr));
            proptest::prop_assert!(c.width >= 1 && c.height >= 1);
            proptest::prop_assert!(c.left + c.width <= w && c.top + c.height <= h, "{:?} in {}x{}", c, w, h);
        }
    }
}
