//! The two-tower CLIP model: the ViT image tower (the same `webssl_models::Vit` the DINO and MAE runs
//! train, so the exported backbone is directly comparable) with a bias-free projection of its CLS
//! token, the causal text tower, and the learnable logit scale.
//!
//! Image feature choice: MetaCLIP / open_clip ViTs pool the CLS token after `ln_post` and multiply by
//! `proj` (`[width, embed_dim]`, no bias, init `width^-0.5 · N(0, 1)`). Our ViT's `forward_features`
//! CLS is already after its final norm (= `ln_post`), so `visual_projection` is exactly open_clip's
//! `proj`. Parameter paths: `visual.*` (the backbone, exported in HF layout), `visual_projection`,
//! `text.*` ([`TextTransformer`]), `logit_scale` (`[1]`).

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use webssl_models::text::{TextConfig, TextTransformer};
use webssl_models::{Vit, VitConfig, precision};

use crate::error::Result;
use crate::objectives::clip::clamp_logit_scale;

#[derive(Module, Debug)]
pub struct ClipModel {
    pub visual: Vit,
    /// `[D, E]`, no bias.
    pub visual_projection: Param<Tensor<2>>,
    pub text: TextTransformer,
    /// `[1]`: `t` of `s = exp(t)`.
    pub logit_scale: Param<Tensor<1>>,
}

impl ClipModel {
    /// The image tower at initialisation for `seed`: what a CLIP run starts from (and what a kNN
    /// "initialisation" baseline must rebuild).
    pub fn init_visual(vit: &VitConfig, seed: u64, device: &Device) -> Vit {
        // Vit::new draws from the backend's seeded global RNG: hold a process-wide lock from seeding
        // to the last draw so that concurrent inits cannot interleave (as the DINO trainer does).
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        device.seed(seed);
        Vit::new(vit, device)
    }

    /// A fresh model: image tower from the global RNG seeded with `seed`, projection and text tower
    /// from explicit ChaCha8 streams (`seed + 1`, `seed + 2`), logit scale `logit_scale_init`.
    pub fn new(
        vit: &VitConfig,
        text: &TextConfig,
        logit_scale_init: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let visual = Self::init_visual(vit, seed, device);
        let (d, e) = (vit.embed_dim, text.embed_dim);
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
        let std = (d as f64).powf(-0.5);
        let proj: Vec<f32> = (0..d * e)
            .map(|_| {
                let u1 = 1.0 - (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
            })
            .collect();
        let text = TextTransformer::new(text, seed.wrapping_add(2), device)?;
        Ok(ClipModel {
            visual,
            visual_projection: Param::from_tensor(Tensor::from_data(
                TensorData::new(proj, [d, e]),
                device,
            )),
            text,
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![logit_scale_init as f32], [1]),
                device,
            )),
        })
    }

    /// Projected image features (not normalised).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, E]`
    pub fn encode_image(&self, images: Tensor<4>) -> Tensor<2> {
        let cls = self.visual.forward_features(images, None).cls;
        precision::matmul(cls, self.visual_projection.val())
    }

    /// Projected text features at the EOT positions (not normalised).
    ///
    /// # Shapes
    /// tokens `[B, L]`, eot `B` → `[B, E]`
    pub fn encode_text(&self, tokens: Tensor<2, Int>, eot: &[usize]) -> Tensor<2> {
        self.text.forward(tokens, eot)
    }

    /// The model with `logit_scale` clamped to `[0, ln 100]` (after every optimizer step).
    pub fn clamp_logit_scale(mut self) -> Self {
        // On the inner tensor, re-wrapped as a leaf: the clamp is not part of any graph.
        self.logit_scale = self.logit_scale.map(|t| {
            if t.is_autodiff() {
                let require_grad = t.is_require_grad();
                let c = Tensor::from_inner(clamp_logit_scale(t.inner()));
                if require_grad { c.require_grad() } else { c }
            } else {
                clamp_logit_scale(t)
            }
        });
        self
    }

    /// Current `t` (host value).
    pub fn logit_scale_value(&self) -> f64 {
        webssl_models::params::scalar(self.logit_scale.val())
    }
}
