//! Frozen-feature extraction: a backbone, the preprocessing that defines its features, and the
//! tensors read from one forward pass. `webssl embed` (and through it the knn/linear probes and
//! `webssl pretrain`'s kNN report), the dense probe and curation's probe filter all compute their
//! features here, so a feature means the same thing everywhere.
//!
//! Preprocessing ([`Encoder::load`]): a square `resolution` resize when given (the webssl demos),
//! else the checkpoint's HF `preprocessor_config.json`, else dinov2's ImageNet eval transform
//! (`Resize(img·256/224) + CenterCrop(img)`). The first two follow either of transformers' image
//! processor backends ([`HfBackend`]): `Pil` (`BitImageProcessorPil`, `use_fast=False`, what the
//! webssl demos run; the default) or `Torchvision` (transformers 5's default `BitImageProcessor`:
//! torch's antialiased `uint8` resize). dinov2's transform is defined on PIL images only. Every
//! image must come out the same size, a multiple of the patch size, so that images batch.
//!
//! Features ([`Encoder::extract`]) are read after the final norm: the CLS token, the mean of the
//! patch tokens, all patch tokens, the register tokens, and per block of the last few the CLS and
//! mean patch token (dinov2's `get_intermediate_layers(..., norm=True)`, the linear probes' input).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use webssl_data::transform::{EvalTransform, HfBackend};
use webssl_models::{Vit, checkpoint, presets};

use crate::error::{EvalError, Result};

/// A feature of each image, as named in a `webssl embed` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Normed CLS token `[D]`.
    Cls,
    /// Mean of the normed patch tokens `[D]`.
    PatchMean,
    /// All normed patch tokens `[P, D]`.
    PatchTokens,
    /// Normed register tokens `[R, D]`.
    Registers,
}

impl Feature {
    /// The tensor name (`cls`, `patch_mean`, `patch_tokens`, `registers`).
    pub fn key(self) -> &'static str {
        match self {
            Feature::Cls => "cls",
            Feature::PatchMean => "patch_mean",
            Feature::PatchTokens => "patch_tokens",
            Feature::Registers => "registers",
        }
    }
}

/// The preprocessing of an [`Encoder`]: cheap to clone and `Send`, so decoding threads can run it.
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub transform: EvalTransform,
    /// `(w, h)` of every preprocessed image.
    pub size: (u32, u32),
}

impl Preprocess {
    /// Normalised CHW pixels of one image; an image the transform cannot take is an `Err` naming why.
    pub fn apply(&self, img: &RgbImage) -> std::result::Result<Vec<f32>, String> {
        let (w, h) = self.size;
        let mut px = vec![0f32; 3 * w as usize * h as usize];
        let got = self
            .transform
            .apply_into(img, &mut px)
            .map_err(|e| e.to_string())?;
        if got != self.size {
            return Err(format!(
                "preprocessed to {}x{}, expected {w}x{h}",
                got.0, got.1
            ));
        }
        Ok(px)
    }
}

/// A frozen backbone and its preprocessing.
pub struct Encoder {
    model: Vit,
    preprocess: Preprocess,
    device: Device,
}

/// The features of one batch of `n` images: tensor name → (per-sample shape, the `n` samples'
/// values back to back, row-major).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    pub n: usize,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Extracted {
    /// The values of tensor `name` for sample `i` (panics when the batch has no such tensor).
    pub fn sample(&self, name: &str, i: usize) -> &[f32] {
        let (shape, values) = &self.tensors[name];
        let per: usize = shape.iter().product();
        &values[i * per..(i + 1) * per]
    }
}

impl Encoder {
    /// Loads `model` (any checkpoint [`checkpoint::load`] reads; an `arch` preset name is needed for
    /// native checkpoints) and picks the preprocessing, as transformers' `hf` backend computes it
    /// (see the module docs).
    pub fn load(
        model: &Path,
        arch: Option<&str>,
        resolution: Option<u32>,
        hf: HfBackend,
        device: &Device,
    ) -> Result<Self> {
        let arch = arch.map(presets::preset).transpose()?;
        let loaded = checkpoint::load(model, arch.as_ref(), device)?;
        let cfg = loaded.model.config();
        let bad = |message: String| EvalError::Preprocess {
            model: model.display().to_string(),
            message,
        };
        let transform = match (resolution, &loaded.preprocessor, hf) {
            (Some(res), _, _) => EvalTransform::square_with(res, hf)
                .map_err(|e| bad(format!("--resolution {res}: {e}")))?,
            (None, Some(pre), _) => EvalTransform::from_hf_preprocessor_config_with(pre, hf)
                .map_err(|e| bad(format!("preprocessor_config.json: {e}")))?,
            (None, None, HfBackend::Pil) => {
                EvalTransform::imagenet((cfg.img_size * 256 / 224) as u32, cfg.img_size as u32)
            }
            (None, None, HfBackend::Torchvision) => {
                return Err(bad(
                    "the torchvision preprocessing reproduces transformers' image processors, and \
                     this checkpoint has no preprocessor_config.json: give --resolution, or use \
                     the pil preprocessing (dinov2's eval transform)"
                        .into(),
                ));
            }
        };
        Self::new(
            loaded.model,
            transform,
            device,
            &model.display().to_string(),
        )
    }

    /// `model` with `transform`, which must give one size, a positive multiple of the patch size
    /// (`what` names the model in errors).
    pub fn new(model: Vit, transform: EvalTransform, device: &Device, what: &str) -> Result<Self> {
        let bad = |message: String| EvalError::Preprocess {
            model: what.to_owned(),
            message,
        };
        let (w, h) =
            transform.fixed_output_size().ok_or_else(|| {
                bad("the preprocessor gives images of varying size (shortest-edge resize without a \
                 crop): give a square resolution"
                .into())
            })?;
        let p = model.config().patch_size as u32;
        if w == 0 || h == 0 || w % p != 0 || h % p != 0 {
            return Err(bad(format!(
                "preprocessed images are {w}x{h}, not a multiple of the patch size {p}: give a \
                 resolution that is a multiple of {p}"
            )));
        }
        Ok(Encoder {
            model,
            preprocess: Preprocess {
                transform,
                size: (w, h),
            },
            device: device.clone(),
        })
    }

    pub fn model(&self) -> &Vit {
        &self.model
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the backbone once on `n` preprocessed images (`pixels`: `n` CHW images back to back, as
    /// [`Preprocess::apply`] gives them) and reads `features` plus, with `last_layers` = K > 0, the
    /// `layer-{k}.cls` / `layer-{k}.patch_mean` of the last K blocks (k = K..1, 1 = the last block).
    /// The backbone runs on this thread (the precision switch is thread-local).
    pub fn extract(
        &self,
        pixels: Vec<f32>,
        n: usize,
        features: &[Feature],
        last_layers: usize,
    ) -> Result<Extracted> {
        let (w, h) = self.preprocess.size;
        let x = Tensor::<4>::from_data(
            TensorData::new(pixels, [n, 3, h as usize, w as usize]),
            &self.device,
        );
        let mut out = Extracted {
            n,
            tensors: BTreeMap::new(),
        };
        let vit = self.model.forward_features(x.clone(), None);
        let [b, d] = vit.cls.dims();
        for &f in features {
            match f {
                Feature::Cls => out.push(f.key(), vit.cls.clone())?,
                Feature::PatchMean => {
                    out.push(f.key(), vit.patches.clone().mean_dim(1).reshape([b, d]))?
                }
                Feature::PatchTokens => out.push(f.key(), vit.patches.clone())?,
                Feature::Registers => out.push(f.key(), vit.registers.clone())?,
            }
        }
        if last_layers > 0 {
            let r = self.model.config().num_register_tokens;
            let layers = self.model.intermediate_layers(x, last_layers);
            for (i, t) in layers.into_iter().enumerate() {
                let [b, n, d] = t.dims();
                let k = last_layers - i;
                out.push(
                    &format!("layer-{k}.cls"),
                    t.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]),
                )?;
                out.push(
                    &format!("layer-{k}.patch_mean"),
                    t.slice([0..b, 1 + r..n, 0..d]).mean_dim(1).reshape([b, d]),
                )?;
            }
        }
        Ok(out)
    }
}

impl Extracted {
    /// Reads a batch tensor `[n, ...]` back to the host under `name`.
    fn push<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<()> {
        let per_sample = t.dims()[1..].to_vec();
        let values = super::read_f32(t, &format!("feature `{name}`"))?;
        self.tensors.insert(name.to_owned(), (per_sample, values));
        Ok(())
    }
}
