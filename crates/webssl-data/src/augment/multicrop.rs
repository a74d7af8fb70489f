//! dinov2's `DataAugmentationDINO`: two global views and `n_local` local views of one image.

use image::RgbImage;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::params::{ColorJitter, ViewParams, ViewSpec};
use super::view::{check_image, render_view};
use crate::resize::PassOrder;
use crate::transform::{IMAGENET_MEAN, IMAGENET_STD, Normalize};
use crate::{DataError, Result};

/// Which Gaussian-blur probabilities to use (reference/training-algorithms.md §2, pitfall 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlurProbabilities {
    /// What dinov2 actually does (`RandomApply(p = 1 − p_nominal)`): global 1: 0.0, global 2: 0.9,
    /// local: 0.5. Reproduces DINOv2 / Web-DINO.
    #[default]
    Effective,
    /// What the dinov2 config says: global 1: 1.0, global 2: 0.1, local: 0.5.
    Nominal,
}

/// `DataAugmentationDINO` settings (defaults = dinov2 / Web-DINO with patch 14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DinoAugConfig {
    pub global_size: u32,
    pub local_size: u32,
    pub n_local: usize,
    pub global_scale: (f64, f64),
    pub local_scale: (f64, f64),
    pub ratio: (f64, f64),
    pub color_jitter: ColorJitter,
    pub p_color_jitter: f64,
    pub p_grayscale: f64,
    pub p_flip: f64,
    /// Nominal blur probabilities as written in dinov2 (`GaussianBlur(p=...)`): global 1, global 2, local.
    pub blur_nominal: [f64; 3],
    pub blur_probabilities: BlurProbabilities,
    pub blur_sigma: (f32, f32),
    /// Solarize probability of global view 2 (`RandomSolarize(128, p=0.2)`).
    pub p_solarize: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pass_order: PassOrder,
}

impl Default for DinoAugConfig {
    fn default() -> Self {
        DinoAugConfig {
            global_size: 224,
            local_size: 98,
            n_local: 8,
            global_scale: (0.32, 1.0),
            local_scale: (0.05, 0.32),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            color_jitter: ColorJitter::DINOV2,
            p_color_jitter: 0.8,
            p_grayscale: 0.2,
            p_flip: 0.5,
            blur_nominal: [1.0, 0.1, 0.5],
            blur_probabilities: BlurProbabilities::Effective,
            blur_sigma: (0.1, 2.0),
            p_solarize: 0.2,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            pass_order: PassOrder::default(),
        }
    }
}

/// The normalised views of one image (CHW `f32` each).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiCrop {
    pub global: Vec<Vec<f32>>,
    pub local: Vec<Vec<f32>>,
}

/// The random draws of one image's multi-crop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiCropParams {
    pub global: [ViewParams; 2],
    pub local: Vec<ViewParams>,
}

/// dinov2 `DataAugmentationDINO`.
#[derive(Clone, Debug)]
pub struct DinoAugment {
    cfg: DinoAugConfig,
    global: [ViewSpec; 2],
    local: ViewSpec,
    norm: Normalize,
}

impl DinoAugment {
    pub fn new(cfg: DinoAugConfig) -> Result<Self> {
        for (i, p) in cfg.blur_nominal.iter().enumerate() {
            if !(0.0..=1.0).contains(p) {
                return Err(DataError::config(
                    format!("blur_nominal[{i}]"),
                    format!("probability must be in [0, 1], got {p}"),
                ));
            }
        }
        if cfg.std.contains(&0.0) {
            return Err(DataError::config("std", "must be non-zero"));
        }
        let blur = |nominal: f64| match cfg.blur_probabilities {
            BlurProbabilities::Effective => 1.0 - nominal,
            BlurProbabilities::Nominal => nominal,
        };
        let spec = |size, scale, p_blur, p_solarize| ViewSpec {
            size,
            scale,
            ratio: cfg.ratio,
            p_flip: cfg.p_flip,
            jitter: Some((cfg.color_jitter, cfg.p_color_jitter)),
            p_grayscale: cfg.p_grayscale,
            p_blur,
            blur_sigma: cfg.blur_sigma,
            p_solarize,
        };
        let [b1, b2, bl] = cfg.blur_nominal;
        let global = [
            spec(cfg.global_size, cfg.global_scale, blur(b1), 0.0),
            spec(cfg.global_size, cfg.global_scale, blur(b2), cfg.p_solarize),
        ];
        let local = spec(cfg.local_size, cfg.local_scale, blur(bl), 0.0);
        global[0].validate("global")?;
        global[1].validate("global")?;
        local.validate("local")?;
        let norm = Normalize::torchvision(cfg.mean, cfg.std);
        Ok(DinoAugment {
            cfg,
            global,
            local,
            norm,
        })
    }

    pub fn config(&self) -> &DinoAugConfig {
        &self.cfg
    }

    /// The view recipes actually used: global 1, global 2, local (blur probabilities resolved).
    pub fn specs(&self) -> (&[ViewSpec; 2], &ViewSpec) {
        (&self.global, &self.local)
    }

    /// Floats per global / local view.
    pub fn view_len(&self) -> (usize, usize) {
        let g = self.cfg.global_size as usize;
        let l = self.cfg.local_size as usize;
        (3 * g * g, 3 * l * l)
    }

    /// Draws every random decision for a `width`×`height` image, in dinov2's order (global 1,
    /// global 2, then the locals).
    pub fn sample<R: Rng>(&self, rng: &mut R, width: u32, height: u32) -> MultiCropParams {
        let g0 = self.global[0].sample(rng, width, height);
        let g1 = self.global[1].sample(rng, width, height);
        let local = (0..self.cfg.n_local)
            .map(|_| self.local.sample(rng, width, height))
            .collect();
        MultiCropParams {
            global: [g0, g1],
            local,
        }
    }

    /// Renders fixed parameters into caller-provided CHW buffers (`global[i]`: `3·G²`, `local[i]`:
    /// `3·L²`; e.g. slices of a view-major batch).
    pub fn render_into(
        &self,
        img: &RgbImage,
        p: &MultiCropParams,
        global: [&mut [f32]; 2],
        local: &mut [&mut [f32]],
    ) -> Result<()> {
        if local.len() != p.local.len() {
            return Err(DataError::config(
                "local",
                format!("{} buffers for {} local crops", local.len(), p.local.len()),
            ));
        }
        let order = self.cfg.pass_order;
        for (buf, vp) in global.into_iter().zip(&p.global) {
            render_view(img, vp, self.cfg.global_size, &self.norm, order, buf)?;
        }
        for (buf, vp) in local.iter_mut().zip(&p.local) {
            render_view(img, vp, self.cfg.local_size, &self.norm, order, buf)?;
        }
        Ok(())
    }

    /// Samples and renders into caller-provided buffers; returns the parameters used.
    pub fn apply_into<R: Rng>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        global: [&mut [f32]; 2],
        local: &mut [&mut [f32]],
    ) -> Result<MultiCropParams> {
        check_image(img)?;
        let p = self.sample(rng, img.width(), img.height());
        self.render_into(img, &p, global, local)?;
        Ok(p)
    }

    /// Samples and renders into fresh buffers.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> Result<MultiCrop> {
        let (gl, ll) = self.view_len();
        let mut g = [vec![0f32; gl], vec![0f32; gl]];
        let mut local: Vec<Vec<f32>> = (0..self.cfg.n_local).map(|_| vec![0f32; ll]).collect();
        {
            let [g0, g1] = &mut g;
            let mut lrefs: Vec<&mut [f32]> = local.iter_mut().map(|v| v.as_mut_slice()).collect();
            self.apply_into(img, rng, [g0.as_mut_slice(), g1.as_mut_slice()], &mut lrefs)?;
        }
        let [g0, g1] = g;
        Ok(MultiCrop {
            global: vec![g0, g1],
            local,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::photo;
    use crate::sampler::rng_stream;

    #[test]
    fn blur_probabilities_effective_vs_nominal() {
        let eff = DinoAugment::new(DinoAugConfig::default()).unwrap();
        let (g, l) = eff.specs();
        assert_eq!((g[0].p_blur, g[1].p_blur, l.p_blur), (0.0, 1.0 - 0.1, 0.5));
        assert_eq!(
            (g[0].p_solarize, g[1].p_solarize, l.p_solarize),
            (0.0, 0.2, 0.0)
        );
        let nom = DinoAugment::new(DinoAugConfig {
            blur_probabilities: BlurProbabilities::Nominal,
            ..Default::default()
        })
        .unwrap();
        let (g, l) = nom.specs();
        assert_eq!((g[0].p_blur, g[1].p_blur, l.p_blur), (1.0, 0.1, 0.5));
        // Empirical frequencies follow the resolved probabilities.
        let mut rng = rng_stream(9, "augment-test", &[4]);
        let (mut b0, mut b1, mut bl, mut gray, mut sol) = (0, 0, 0, 0, 0);
        let n = 4000;
        for _ in 0..n {
            let p = eff.sample(&mut rng, 400, 300);
            b0 += p.global[0].blur_sigma.is_some() as u32;
            b1 += p.global[1].blur_sigma.is_some() as u32;
            bl += p.local.iter().filter(|v| v.blur_sigma.is_some()).count() as u32;
            gray += p.global[0].grayscale as u32;
            sol += p.global[1].solarize as u32;
            for v in p.global.iter().chain(&p.local) {
                if let Some(s) = v.blur_sigma {
                    assert!((0.1..=2.0).contains(&s));
                }
            }
        }
        let f = |k: u32, m: usize| k as f64 / m as f64;
        assert_eq!(b0, 0);
        assert!((f(b1, n) - 0.9).abs() < 0.03, "{}", f(b1, n));
        assert!((f(bl, 8 * n) - 0.5).abs() < 0.02);
        assert!((f(gray, n) - 0.2).abs() < 0.03);
        assert!((f(sol, n) - 0.2).abs() < 0.03);
    }

    #[test]
    fn same_seed_same_bytes() {
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: 56,
            local_size: 28,
            n_local: 3,
            ..Default::default()
        })
        .unwrap();
        let img = photo(120, 90);
        let a = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 17]))
            .unwrap();
        let b = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 17]))
            .unwrap();
        let c = aug
            .apply(&img, &mut rng_stream(42, "augment", &[0, 18]))
            .unwrap();
        let bits = |m: &MultiCrop| -> Vec<u32> {
            m.global
                .iter()
                .chain(&m.local)
                .flatten()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
        assert_ne!(bits(&a), bits(&c));
        assert_eq!((a.global.len(), a.local.len()), (2, 3));
        assert_eq!(
            (a.global[0].len(), a.local[0].len()),
            (3 * 56 * 56, 3 * 28 * 28)
        );
    }

    #[test]
    fn render_into_rejects_wrong_buffers() {
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: 28,
            local_size: 14,
            n_local: 2,
            ..Default::default()
        })
        .unwrap();
        let img = photo(50, 40);
        let p = aug.sample(&mut rng_stream(0, "augment", &[0]), 50, 40);
        let (mut g0, mut g1) = (vec![0f32; 3 * 28 * 28], vec![0f32; 3 * 28 * 28]);
        let mut l0 = vec![0f32; 3 * 14 * 14];
        assert!(
            aug.render_into(&img, &p, [&mut g0, &mut g1], &mut [&mut l0])
                .is_err()
        );
        let mut short = vec![0f32; 10];
        let mut l1 = vec![0f32; 3 * 14 * 14];
        assert!(
            aug.render_into(&img, &p, [&mut short, &mut g1], &mut [&mut l0, &mut l1])
                .is_err()
        );
        assert!(
            aug.render_into(&img, &p, [&mut g0, &mut g1], &mut [&mut l0, &mut l1])
                .is_ok()
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = |cfg: DinoAugConfig, field: &str| match DinoAugment::new(cfg) {
            Err(DataError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a Config error on {field}, got {other:?}"),
        };
        bad(
            DinoAugConfig {
                local_scale: (0.5, 0.1),
                ..Default::default()
            },
            "local.scale",
        );
        bad(
            DinoAugConfig {
                global_size: 0,
                ..Default::default()
            },
            "global.size",
        );
        bad(
            DinoAugConfig {
                p_grayscale: 1.5,
                ..Default::default()
            },
            "global.p_grayscale",
        );
        bad(
            DinoAugConfig {
                blur_nominal: [1.0, -0.1, 0.5],
                ..Default::default()
            },
            "blur_nominal[1]",
        );
        bad(
            DinoAugConfig {
                color_jitter: ColorJitter {
                    hue: 0.7,
                    ..ColorJitter::DINOV2
                },
                ..Default::default()
            },
            "color_jitter.hue",
        );
        let toml_like = serde_json::json!({"n_local": 6, "blur_probabilities": "nominal"});
        let cfg: DinoAugConfig = serde_json::from_value(toml_like).unwrap();
        assert_eq!(
            (cfg.n_local, cfg.blur_probabilities, cfg.global_size),
            (6, BlurProbabilities::Nominal, 224)
        );
        assert!(
            serde_json::from_value::<DinoAugConfig>(serde_json::json!({"n_locals": 6})).is_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Degenerate inputs (1-pixel lines, tiny images) go through the whole multi-crop.
        #[test]
        fn multicrop_handles_tiny_and_thin_images(w in 1u32..40, h in 1u32..40, seed in 0u64..1000) {
            let aug = DinoAugment::new(DinoAugConfig { global_size: 14, local_size: 7, n_local: 2, ..Default::default() })
                .unwrap();
            let m = aug.apply(&photo(w, h), &mut rng_stream(seed, "augment", &[0])).unwrap();
            proptest::prop_assert!(m.global.iter().chain(&m.local).flatten().all(|v| v.is_finite()));
        }
    }
}
