//! The vision side of the MLLM: which encoder tokens become image tokens, their resampling to a fixed
//! count, and the `mlp2x_gelu` connector into the language model's embedding space.
//!
//! Reference: cambrian-mllm/cambrian @ 539ffc3 `cambrian/model/multimodal_encoder/dino_encoder.py`
//! (`feature_select`, `interpolate`: `last_hidden_state` after the final norm, the token grid
//! resampled with `F.interpolate(mode='bilinear', align_corners=False)` in f32 when its count differs
//! from `image_token_len`), `cambrian/model/multimodal_projector/builder.py` (`mlp2x_gelu` =
//! `Linear(d_vis, d_lm) → GELU → Linear(d_lm, d_lm)`, PyTorch's default `nn.Linear` init);
//! `docs/reference/evaluation.md` §A.4. Golden: `fixtures/mllm/make_mllm.py` (torch's
//! `F.interpolate` and `nn.Sequential`) → `fixtures/mllm/connector.json`.
//!
//! Deviation: with the CLS token, Cambrian's `cls_patch` resamples CLS and patches together as one
//! `⌊√N⌋²` grid, which fails for 1 + h·w tokens; here the CLS token goes first, unresampled, before
//! the resampled grid (`1 + count` image tokens).
//!
//! The encoder is frozen and its preprocessing deterministic (no augmentation), so the selected,
//! resampled tokens of an image are the same at every step: caching them once per image gives
//! exactly the features a per-step forward would (bit for bit at the same precision and thread
//! count; the cache is f32). The cache is a `webssl embed --features patch-tokens,cls` file
//! ([`ImageTokenTable::from_embed`]): the one `features::Encoder` computes it, as for every probe.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use webssl_models::{kernels, precision};

use crate::error::{EvalError, Result};
use crate::features::FeatureFile;

/// Which encoder tokens feed the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTokens {
    /// Patch tokens after resampling, a square (Cambrian and Web-SSL: 576 = 24²); 0 keeps the
    /// encoder's own grid.
    pub count: usize,
    /// Put the CLS token first (Cambrian's `cls_patch`; `patch` without it is Web-SSL's choice).
    pub cls: bool,
}

impl ImageTokens {
    /// Image tokens per image for an encoder grid of `grid` = (h, w) patches.
    pub fn len(&self, grid: (usize, usize)) -> usize {
        let patches = if self.count == 0 {
            grid.0 * grid.1
        } else {
            self.count
        };
        patches + usize::from(self.cls)
    }

    /// The side of the resampled square grid; an error names the non-square count.
    pub fn side(&self) -> Result<usize> {
        let s = (self.count as f64).sqrt().round() as usize;
        if s * s != self.count {
            return Err(EvalError::Probe {
                context: "image_tokens.count".into(),
                message: format!("{} is not a square (576 = 24², 256 = 16², ...)", self.count),
            });
        }
        Ok(s)
    }

    /// The image tokens of one image, `[len, d]` row-major, from its normed `patches` (`[h·w, d]`,
    /// row-major over the grid) and `cls` (`[d]`).
    pub fn select(
        &self,
        patches: &[f32],
        cls: &[f32],
        grid: (usize, usize),
        d: usize,
    ) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len(grid) * d);
        if self.cls {
            out.extend_from_slice(cls);
        }
        if self.count == 0 || self.count == grid.0 * grid.1 {
            out.extend_from_slice(patches);
        } else {
            let s = self.side()?;
            out.extend(resample_bilinear(patches, grid, d, (s, s)));
        }
        Ok(out)
    }
}

/// The image tokens of every image of an embed file, by sample key.
#[derive(Debug, Clone)]
pub struct ImageTokenTable {
    /// Tokens per image.
    pub len: usize,
    /// Token width (the encoder's).
    pub dim: usize,
    rows: HashMap<String, usize>,
    values: Vec<f32>,
}

impl ImageTokenTable {
    /// Reads `patch_tokens` (and `cls` when `sel.cls`) of a `webssl embed` file and selects each
    /// image's tokens. The patch grid comes from the recorded `image_size` (a `(h, w)` whose patch
    /// side divides both), else the token count must be a square.
    pub fn from_embed(path: &Path, sel: ImageTokens) -> Result<Self> {
        let bad = |message: String| EvalError::Probe {
            context: path.display().to_string(),
            message,
        };
        let patches = FeatureFile::load_tensor(path, "patch_tokens")?;
        let &[n, p, d] = patches.shape.as_slice() else {
            return Err(bad(format!(
                "patch_tokens has shape {:?}, expected [N, P, D]",
                patches.shape
            )));
        };
        let grid = grid_of(p, patches.image_size).ok_or_else(|| {
            bad(format!(
                "{p} patch tokens do not tile the image size {:?} (embed with a square resolution)",
                patches.image_size
            ))
        })?;
        let cls = if sel.cls {
            let c = FeatureFile::load_tensor(path, "cls")?;
            if c.shape != [n, d] {
                return Err(bad(format!(
                    "cls has shape {:?}, expected [{n}, {d}]",
                    c.shape
                )));
            }
            c.values
        } else {
            vec![0.0; n * d]
        };
        let len = sel.len(grid);
        let mut values = Vec::with_capacity(n * len * d);
        for i in 0..n {
            values.extend(sel.select(
                &patches.values[i * p * d..(i + 1) * p * d],
                &cls[i * d..(i + 1) * d],
                grid,
                d,
            )?);
        }
        let rows = patches
            .keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect();
        Ok(Self {
            len,
            dim: d,
            rows,
            values,
        })
    }

    /// The `[len, dim]` tokens of the image with sample key `key`.
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        let per = self.len * self.dim;
        self.rows
            .get(key)
            .map(|&i| &self.values[i * per..(i + 1) * per])
    }
}

/// The `(h, w)` patch grid of `p` tokens for an image of `image_size` `(h, w)`, or of a square.
fn grid_of(p: usize, image_size: Option<(usize, usize)>) -> Option<(usize, usize)> {
    if p == 0 {
        return None;
    }
    if let Some((h, w)) = image_size {
        let side = ((h * w / p) as f64).sqrt().round() as usize;
        if side > 0 && h % side == 0 && w % side == 0 && (h / side) * (w / side) == p {
            return Some((h / side, w / side));
        }
        return None;
    }
    let s = (p as f64).sqrt().round() as usize;
    (s * s == p).then_some((s, s))
}

/// The sample key of a record's `image` path: `webssl embed`'s key of that file in its folder
/// (the relative path without its extension, `/`-separated), which is also a shard key as written.
pub fn image_key(image: &str) -> String {
    webssl_data::source::folder_key(Path::new(""), Path::new(image))
}

/// PyTorch's `area_pixel_compute_source_index` + `guard_index_and_lambda` for bilinear,
/// `align_corners=False`, in f32 as torch's CPU kernel computes it for f32 input: the lower source
/// index, whether there is an upper one, and the upper weight.
fn source_index(dst: usize, input: usize, output: usize) -> (usize, usize, f32) {
    let scale = input as f32 / output as f32;
    let real = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (real.floor() as usize).min(input - 1);
    let lambda = (real - i0 as f32).clamp(0.0, 1.0);
    let step = usize::from(i0 < input - 1);
    (i0, step, lambda)
}

/// `F.interpolate(x, size=to, mode='bilinear', align_corners=False)` on a token grid stored
/// `[h, w, d]` row-major (Cambrian's `view(b, h, w, d).permute(0, 3, 1, 2)`, then back).
pub fn resample_bilinear(
    tokens: &[f32],
    (h, w): (usize, usize),
    d: usize,
    (th, tw): (usize, usize),
) -> Vec<f32> {
    assert_eq!(tokens.len(), h * w * d, "token grid {h}x{w}x{d}");
    let mut out = vec![0f32; th * tw * d];
    for oy in 0..th {
        let (y0, dy, ly) = source_index(oy, h, th);
        let (hy0, hy1) = (1.0 - ly, ly);
        for ox in 0..tw {
            let (x0, dx, lx) = source_index(ox, w, tw);
            let (wx0, wx1) = (1.0 - lx, lx);
            let at = |y: usize, x: usize| &tokens[(y * w + x) * d..(y * w + x + 1) * d];
            let (p00, p01) = (at(y0, x0), at(y0, x0 + dx));
            let (p10, p11) = (at(y0 + dy, x0), at(y0 + dy, x0 + dx));
            let o = &mut out[(oy * tw + ox) * d..(oy * tw + ox + 1) * d];
            for c in 0..d {
                o[c] = hy0 * (wx0 * p00[c] + wx1 * p01[c]) + hy1 * (wx0 * p10[c] + wx1 * p11[c]);
            }
        }
    }
    out
}

/// LLaVA's `mlp2x_gelu` projector: `Linear(d_vis, d_lm) → GELU (erf) → Linear(d_lm, d_lm)`. Field
/// names are the PyTorch `mm_projector.{0,2}` layers'.
#[derive(Module, Debug)]
pub struct Connector {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// Uniform in [0, 1) with 53 random bits.
fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// PyTorch's default `nn.Linear` init (kaiming-uniform with a = √5, i.e. weight and bias
/// U(±1/√in)), drawn from `rng`; weight stored `[in, out]` (burn's layout).
fn torch_linear(rng: &mut ChaCha8Rng, i: usize, o: usize, device: &Device) -> Linear {
    let bound = 1.0 / (i as f64).sqrt();
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((2.0 * uniform01(rng) - 1.0) * bound) as f32)
            .collect()
    };
    let w = draw(i * o);
    let b = draw(o);
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [i, o]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [o]),
            device,
        ))),
    }
}

impl Connector {
    /// A freshly initialised connector from an explicit seed (never burn's global RNG).
    pub fn new(d_vis: usize, d_lm: usize, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fc1 = torch_linear(&mut rng, d_vis, d_lm, device);
        let fc2 = torch_linear(&mut rng, d_lm, d_lm, device);
        Self { fc1, fc2 }
    }

    /// # Shapes
    /// `[..., d_vis]` → `[..., d_lm]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        precision::linear(kernels::linear_gelu(x, &self.fc1), &self.fc2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_file_tokens_are_selected_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let (n, p, d) = (2usize, 16usize, 3usize);
        let patches: Vec<f32> = (0..n * p * d).map(|x| (x as f32).sin()).collect();
        let cls: Vec<f32> = (0..n * d).map(|x| x as f32).collect();
        let meta = serde_json::json!({"keys": ["a/x", "b"], "image_size": [8, 8]});
        webssl_models::checkpoint::export::write_safetensors_with_metadata(
            &path,
            &[
                ("patch_tokens".into(), vec![n, p, d], patches.clone()),
                ("cls".into(), vec![n, d], cls.clone()),
            ],
            &[("webssl", meta.to_string())],
        )
        .unwrap();
        let sel = ImageTokens {
            count: 4,
            cls: true,
        };
        let t = ImageTokenTable::from_embed(&path, sel).unwrap();
        assert_eq!((t.len, t.dim), (5, 3));
        let b = t.get(&image_key("b.jpg")).unwrap();
        assert_eq!(&b[..d], &cls[d..]);
        assert_eq!(
            &b[d..],
            &resample_bilinear(&patches[p * d..], (4, 4), d, (2, 2))[..]
        );
        assert!(t.get(&image_key("a/x.png")).is_some() && t.get("x").is_none());
        // No CLS asked: the file needs none; a grid that does not tile the image is an error.
        assert!(
            ImageTokenTable::from_embed(
                &path,
                ImageTokens {
                    count: 0,
                    cls: false
                }
            )
            .is_ok()
        );
        assert_eq!(grid_of(16, Some((8, 12))), None);
        assert_eq!(grid_of(6, Some((28, 42))), Some((2, 3)));
        assert_eq!(grid_of(16, None), Some((4, 4)));
    }
}
