//! Named loader recipes — the per-sample transform and token masks of `dino`, `mae`, `clip` and
//! `eval` — and a collated [`Batch`] as named arrays.
//!
//! `webssl shards bench` and the Python package (`webssl.Loader`) both build their loader from a
//! [`LoaderRecipe`] and read batches through [`batch_arrays`], so a Python batch is the CLI's byte for
//! byte (`webssl shards bench --dump` writes these arrays as `.npy`; python/tests compare them).
//!
//! - `dino`: dinov2 `DataAugmentationDINO` (2 × `size` global + `n_local` × `local_size` local crops)
//!   with iBOT block masks on the global crops (dinov2 defaults: ratio 0.1–0.5, probability 0.5);
//! - `mae`: MAE `RandomResizedCrop(size, (0.2, 1))` + flip with a random token mask (`mask_ratio`);
//! - `clip`: MetaCLIP `RandomResizedCrop(size, (0.9, 1))`, no mask;
//! - `eval`: dinov2's ImageNet eval transform (`Resize(size·256/224)`, `CenterCrop(size)`), no
//!   randomness and no mask (run it with `shuffle_buffer = 1`, `shuffle_shards = false` for a fixed order).
//!
//! The token grid of the masks is `size / patch` per side.

use std::str::FromStr;
use std::sync::Arc;

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::augment::{DinoAugConfig, DinoAugment, SingleViewTransform};
use crate::error::{DataError, Result};
use crate::loader::{
    Batch, DinoViews, MaskSpec, SampleTransform, SingleView, ViewGroup, ViewShape,
};
use crate::masks::{IbotMaskConfig, MaskingGenerator};
use crate::transform::EvalTransform;

/// Which recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeKind {
    Dino,
    Mae,
    Clip,
    Eval,
}

impl RecipeKind {
    pub const ALL: [RecipeKind; 4] = [Self::Dino, Self::Mae, Self::Clip, Self::Eval];

    pub fn name(self) -> &'static str {
        match self {
            Self::Dino => "dino",
            Self::Mae => "mae",
            Self::Clip => "clip",
            Self::Eval => "eval",
        }
    }
}

impl FromStr for RecipeKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                DataError::config(
                    "recipe",
                    format!("unknown recipe `{s}`: expected dino, mae, clip or eval"),
                )
            })
    }
}

/// A recipe with its sizes (defaults: dinov2 ViT-/14 at 224, 8 local crops of 98, MAE ratio 0.75).
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderRecipe {
    pub kind: RecipeKind,
    /// Global crop (dino) or view (mae, clip, eval) side.
    pub size: u32,
    /// Local crop side (dino).
    pub local_size: u32,
    /// Local crops (dino).
    pub n_local: usize,
    /// Patch size: the iBOT / MAE token grid is `size / patch` per side.
    pub patch: usize,
    /// Share of tokens the MAE mask removes.
    pub mask_ratio: f64,
}

impl LoaderRecipe {
    pub fn new(kind: RecipeKind) -> Self {
        Self {
            kind,
            size: 224,
            local_size: 98,
            n_local: 8,
            patch: 14,
            mask_ratio: 0.75,
        }
    }

    /// The per-sample transform and the masks drawn with each batch.
    pub fn build(&self) -> Result<(Arc<dyn SampleTransform>, MaskSpec)> {
        if self.patch == 0 || !(self.size as usize).is_multiple_of(self.patch) {
            return Err(DataError::config(
                "size",
                format!(
                    "{} must be a multiple of the patch size {}",
                    self.size, self.patch
                ),
            ));
        }
        let grid = self.size as usize / self.patch;
        Ok(match self.kind {
            RecipeKind::Dino => {
                let aug = DinoAugment::new(DinoAugConfig {
                    global_size: self.size,
                    local_size: self.local_size,
                    n_local: self.n_local,
                    ..DinoAugConfig::default()
                })?;
                let masks = MaskSpec::Ibot {
                    generator: MaskingGenerator::new(grid, grid)?,
                    config: IbotMaskConfig::default(),
                    group: 0,
                };
                (Arc::new(DinoViews::new(aug)), masks)
            }
            RecipeKind::Mae => (
                Arc::new(SingleView::new(SingleViewTransform::mae(self.size))?),
                MaskSpec::Mae {
                    n_tokens: grid * grid,
                    mask_ratio: self.mask_ratio,
                },
            ),
            RecipeKind::Clip => (
                Arc::new(SingleView::new(SingleViewTransform::clip(self.size))?),
                MaskSpec::None,
            ),
            RecipeKind::Eval => (Arc::new(EvalView::imagenet(self.size)?), MaskSpec::None),
        })
    }
}

/// A deterministic [`EvalTransform`] as a loader transform: group `view` with one view.
pub struct EvalView {
    t: EvalTransform,
    groups: Vec<ViewGroup>,
}

impl EvalView {
    /// dinov2's ImageNet eval transform at `size` (`Resize(size·256/224)`, `CenterCrop(size)`).
    pub fn imagenet(size: u32) -> Result<Self> {
        let t = EvalTransform::imagenet(size * 256 / 224, size);
        t.validate()?;
        let s = size as usize;
        Ok(Self {
            t,
            groups: vec![ViewGroup {
                name: "view".into(),
                count: 1,
                shape: ViewShape::new(3, s, s),
            }],
        })
    }
}

impl SampleTransform for EvalView {
    fn groups(&self) -> &[ViewGroup] {
        &self.groups
    }
    fn apply(&self, image: &RgbImage, _rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> Result<()> {
        let [view] = out else {
            return Err(DataError::config("views", "a single-view transform"));
        };
        self.t.apply_into(image, view).map(|_| ())
    }
}

/// The values of one named array.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// One array of a batch: a name, a C-order shape and the values (moved out of the batch, no copy).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

/// The arrays of a batch, named as dinov2's `collate_data_and_cast` names its outputs where it has
/// one: per view group its `[count·B, C, H, W]` views (`global`, `local` for dino; `view` otherwise,
/// view-major), `labels` `[B]` (−1 where a sample has none); for dino `masks` `[n_crops, n_tokens]`
/// (bool), `mask_indices_list`, `masks_weight`; for mae `mae_mask` `[B, L]` (1 = removed),
/// `ids_shuffle`, `ids_restore` `[B, L]`. Keys and captions stay with the caller.
pub fn batch_arrays(batch: Batch) -> Vec<NamedArray> {
    let b = batch.batch_size;
    let mut out = Vec::new();
    for (g, views) in batch.groups.iter().zip(batch.views) {
        let s = g.shape;
        out.push(NamedArray {
            name: g.name.clone(),
            shape: vec![g.count * b, s.channels, s.height, s.width],
            data: ArrayData::F32(views),
        });
    }
    out.push(NamedArray {
        name: "labels".into(),
        shape: vec![b],
        data: ArrayData::I64(batch.labels.iter().map(|l| l.unwrap_or(-1)).collect()),
    });
    if let Some(m) = batch.ibot {
        let n = m.mask_indices_list.len();
        out.push(NamedArray {
            name: "masks".into(),
            shape: vec![m.n_crops, m.n_tokens],
            data: ArrayData::Bool(m.masks),
        });
        out.push(NamedArray {
            name: "mask_indices_list".into(),
            shape: vec![n],
            data: ArrayData::I64(m.mask_indices_list),
        });
        out.push(NamedArray {
            name: "masks_weight".into(),
            shape: vec![n],
            data: ArrayData::F32(m.masks_weight),
        });
    }
    if let Some(m) = batch.mae {
        let shape = vec![m.n, m.length];
        out.push(NamedArray {
            name: "mae_mask".into(),
            shape: shape.clone(),
            data: ArrayData::F32(m.mask),
        });
        out.push(NamedArray {
            name: "ids_shuffle".into(),
            shape: shape.clone(),
            data: ArrayData::I64(m.ids_shuffle),
        });
        out.push(NamedArray {
            name: "ids_restore".into(),
            shape,
            data: ArrayData::I64(m.ids_restore),
        });
    }
    out
}

impl NamedArray {
    /// NumPy `.npy` v1.0 bytes (little-endian, C order).
    pub fn to_npy(&self) -> Vec<u8> {
        let (descr, bytes): (&str, Vec<u8>) = match &self.data {
            ArrayData::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ArrayData::I64(v) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ArrayData::Bool(v) => ("|b1", v.iter().map(|&x| u8::from(x)).collect()),
        };
        crate::npy::encode(descr, &self.shape, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_names_round_trip_and_bad_names_say_which() {
        for k in RecipeKind::ALL {
            assert_eq!(k.name().parse::<RecipeKind>().unwrap(), k);
        }
        let e = "dinov2".parse::<RecipeKind>().unwrap_err().to_string();
        assert!(e.contains("unknown recipe `dinov2`"), "{e}");
    }

    #[test]
    fn groups_and_masks_per_recipe() {
        let groups = |k| {
            let (t, m) = LoaderRecipe::new(k).build().unwrap();
            let g: Vec<(String, usize, usize)> = t
                .groups()
                .iter()
                .map(|g| (g.name.clone(), g.count, g.shape.height))
                .collect();
            (g, m)
        };
        let (g, m) = groups(RecipeKind::Dino);
        assert_eq!(g, [("global".into(), 2, 224), ("local".into(), 8, 98)]);
        assert!(matches!(m, MaskSpec::Ibot { group: 0, .. }));
        let (g, m) = groups(RecipeKind::Mae);
        assert_eq!(g, [("view".into(), 1, 224)]);
        assert!(matches!(m, MaskSpec::Mae { n_tokens: 256, .. }));
        assert!(matches!(groups(RecipeKind::Clip).1, MaskSpec::None));
        assert!(matches!(groups(RecipeKind::Eval).1, MaskSpec::None));
        let bad = LoaderRecipe {
            size: 225,
            ..LoaderRecipe::new(RecipeKind::Mae)
        };
        let e = bad.build().err().unwrap().to_string();
        assert!(
            e.contains("225 must be a multiple of the patch size 14"),
            "{e}"
        );
    }

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let a = NamedArray {
            name: "m".into(),
            shape: vec![2, 3],
            data: ArrayData::Bool(vec![true, false, true, false, false, true]),
        };
        let bytes = a.to_npy();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.contains("'descr': '|b1'") && header.contains("'shape': (2, 3)"));
        assert_eq!(&bytes[10 + hlen..], &[1, 0, 1, 0, 0, 1]);
    }
}
