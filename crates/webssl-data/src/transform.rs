//! Deterministic (evaluation / inference) transforms: shortest-edge or exact resize, center crop,
//! `u8 → f32` rescale and mean/std normalisation into a CHW buffer.
//!
//! Four references, reproduced bit for bit on the `u8` stages and to the last `f32` bit after
//! (fixtures: `fixtures/augment`, tests: `tests/augment_parity.rs`):
//!
//! - **torchvision** (dinov2 eval, `dinov2/data/transforms.py::make_classification_eval_transform`:
//!   `Resize(256, BICUBIC)`, `CenterCrop(224)`, `ToTensor`, `Normalize(ImageNet)`), on PIL images.
//!   `Resize(int)` keeps the aspect ratio: `long = int(size * long / short)`; the resize itself is
//!   Pillow's ([`crate::resize`]). `CenterCrop` offsets are `int(round((in - out) / 2.0))` with Python's
//!   round-half-to-even, zero padding `(out - in) // 2` before. `ToTensor` is `f32(x) / 255` (a true
//!   `f32` division), `Normalize` is `(x - mean) / std` in `f32`.
//! - **HF image processors** (`BitImageProcessor`, `ViTImageProcessor`, `CLIPImageProcessor`) on their
//!   PIL/NumPy path (`transformers` ≤ 4.x "slow" processors, `*ImageProcessorPil` in 5.x): resize through
//!   `PIL.Image.resize` on the `u8` image (same output-size rule as torchvision for `shortest_edge`),
//!   `center_crop` with offset `(in - out) // 2` (floor) and padding `ceil((out - in) / 2)` before,
//!   `rescale` = `f32(f64(x) * rescale_factor)`, `normalize` = `(x - f32(mean)) / f32(std)` in `f32`.
//!   The two crop rules differ when `in - out ≡ 3 (mod 4)` (e.g. 227 → 224: torchvision starts at 2,
//!   HF at 1), hence [`CropRounding`]. The two rescale rules give identical `f32` for all 256 inputs
//!   with factor `1/255` (asserted in the tests), so the normalised values agree exactly too.
//! - **HF torchvision backend** (`*ImageProcessorFast` in transformers 4.x, the default
//!   `*ImageProcessor` in 5.x; [`HfBackend::Torchvision`]): torch's antialiased `uint8` resize
//!   ([`crate::resize::torch_resize_u8`]; differs from Pillow by a level on some pixels), crop offset
//!   `int((in - out) / 2.0)` with padding `(out - in) // 2` before, rescale fused into normalize:
//!   `(f32(x) - f32(mean)·f32(1/factor)) / (f32(std)·f32(1/factor))`.
//! - **webssl demos**: `Resize((s, s), BICUBIC)`, `ToTensor`, `Normalize(ImageNet)` ([`EvalTransform::square`]);
//!   their HF check (`BitImageProcessor(use_fast=False)`, `do_center_crop=False`,
//!   `size={height: s, width: s}`) gives the same bits (tested).
//!
//! `do_convert_rgb` is accepted but is decode's business: inputs here are already `RgbImage`.

use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::resize::{Filter, PassOrder, crop_resize_with, resize, torch_resize_u8};
use crate::{DataError, Result};

// Statistics are written as the references write them (Python floats = f64) and cast to f32, as
// `torch.as_tensor(mean, dtype=float32)` / `np.array(mean, dtype=float32)` do; parsing the decimal
// straight to f32 could round differently (double rounding) for some literals.
/// ImageNet statistics (torchvision / dinov2 / MAE).
pub const IMAGENET_MEAN: [f32; 3] = [0.485f64 as f32, 0.456f64 as f32, 0.406f64 as f32];
pub const IMAGENET_STD: [f32; 3] = [0.229f64 as f32, 0.224f64 as f32, 0.225f64 as f32];
/// OpenAI CLIP statistics (MetaCLIP, HF `OPENAI_CLIP_MEAN/STD`).
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466f64 as f32,
    0.4578275f64 as f32,
    0.40821073f64 as f32,
];
pub const CLIP_STD: [f32; 3] = [
    0.26862954f64 as f32,
    0.26130258f64 as f32,
    0.27577711f64 as f32,
];

/// Output size of torchvision `Resize(size)` / HF `get_resize_output_image_size(size,
/// default_to_square=False)`: the short side becomes `size`, the long side `int(size * long / short)`.
/// Returns `(w, h)`.
pub fn shortest_edge_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: `int(size * long / short)`; the product is an exact integer, the true division of two
    // exactly representable doubles is correctly rounded in both languages, `int` truncates.
    let new_long = ((size as u64 * long as u64) as f64 / short.max(1) as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `Resize(size, filter)` with an int size on a PIL image. Panics if `size` is 0 or the
/// image is empty (use [`EvalTransform::apply_u8`] for a `Result`).
pub fn resize_shortest_edge(img: &RgbImage, size: u32, filter: Filter) -> RgbImage {
    let (w, h) = shortest_edge_size(img.width(), img.height(), size);
    resize_exact(img, w, h, filter)
}

/// `PIL.Image.resize((w, h), filter)` (torchvision `Resize((h, w))`, HF `size: {height, width}`).
/// Panics if a size is 0 or the image is empty.
pub fn resize_exact(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    resize(img, w, h, filter)
}

/// Which library's center-crop offset rule to follow (they disagree when `in - out ≡ 3 mod 4` and
/// when padding an odd difference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropRounding {
    /// `int(round((in - out) / 2))` (half to even); pad `(out - in) // 2` before.
    Torchvision,
    /// `(in - out) // 2`; pad `ceil((out - in) / 2)` before (HF NumPy/PIL backend).
    HuggingFace,
    /// `int((in - out) / 2.0)`; pad `(out - in) // 2` before (HF torchvision backend).
    HuggingFaceTorchvision,
}

/// For one axis: (source start, destination start, length copied).
fn crop_axis(input: u32, out: u32, rule: CropRounding) -> (u32, u32, u32) {
    if out <= input {
        let d = input - out;
        let start = match rule {
            CropRounding::HuggingFace | CropRounding::HuggingFaceTorchvision => d / 2,
            // round-half-to-even of d/2: d odd gives x.5, rounded to the even neighbour.
            CropRounding::Torchvision => {
                if d.is_multiple_of(2) {
                    d / 2
                } else {
                    let lo = d / 2;
                    if lo.is_multiple_of(2) { lo } else { lo + 1 }
                }
            }
        };
        (start, 0, out)
    } else {
        let d = out - input;
        let pad = match rule {
            CropRounding::Torchvision | CropRounding::HuggingFaceTorchvision => d / 2,
            CropRounding::HuggingFace => d.div_ceil(2),
        };
        (0, pad, input)
    }
}

/// torchvision `CenterCrop((h, w))` on a PIL image (zero padding when the image is smaller).
pub fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    center_crop_with(img, w, h, CropRounding::Torchvision)
}

/// Center crop to `w`×`h` with the given library's offset rule; smaller images are zero padded.
pub fn center_crop_with(img: &RgbImage, w: u32, h: u32, rule: CropRounding) -> RgbImage {
    let (sx, dx, lx) = crop_axis(img.width(), w, rule);
    let (sy, dy, ly) = crop_axis(img.height(), h, rule);
    let mut out = RgbImage::from_pixel(w, h, Rgb([0, 0, 0]));
    let src = img.as_raw();
    let sstride = img.width() as usize * 3;
    let dstride = w as usize * 3;
    let dst = &mut *out;
    for y in 0..ly as usize {
        let s = (sy as usize + y) * sstride + sx as usize * 3;
        let d = (dy as usize + y) * dstride + dx as usize * 3;
        dst[d..d + lx as usize * 3].copy_from_slice(&src[s..s + lx as usize * 3]);
    }
    out
}

/// How `u8` becomes `f32` before mean/std.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Rescale {
    /// torchvision `ToTensor`: `f32(x) / 255` (true `f32` division).
    ToTensor,
    /// HF `rescale` (NumPy backend): `f32(f64(x) * factor)`.
    Factor(f64),
    /// HF `rescale` (torchvision backend): `f32(x) * factor` in `f32`.
    FactorF32(f32),
    /// No rescale (`do_rescale: false`): `f32(x)`.
    None,
}

impl Rescale {
    /// The 256-entry `u8 → f32` table of this rescale.
    pub fn table(self) -> [f32; 256] {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = match self {
                Rescale::ToTensor => i as f32 / 255.0f32,
                Rescale::Factor(f) => (i as f64 * f) as f32,
                Rescale::FactorF32(f) => i as f32 * f,
                Rescale::None => i as f32,
            };
        }
        t
    }
}

/// `u8` HWC → normalised `f32` CHW: `(rescale(x) - mean[c]) / std[c]`, every step in `f32`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub rescale: Rescale,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// torchvision `ToTensor()` + `Normalize(mean, std)`.
    pub fn torchvision(mean: [f32; 3], std: [f32; 3]) -> Self {
        Normalize {
            rescale: Rescale::ToTensor,
            mean,
            std,
        }
    }

    /// Per channel, the 256 possible outputs. Exact: the map is a pure function of the `u8` value,
    /// so a lookup gives the same bits as computing `(t[x] - mean) / std` per pixel.
    pub fn lut(&self) -> [[f32; 256]; 3] {
        let t = self.rescale.table();
        let mut lut = [[0f32; 256]; 3];
        for c in 0..3 {
            for i in 0..256 {
                lut[c][i] = (t[i] - self.mean[c]) / self.std[c];
            }
        }
        lut
    }

    /// Writes the CHW planes of `img` into `out` (`3 * w * h` floats).
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        write_chw(img, &self.lut(), out)
    }
}

fn write_chw(img: &RgbImage, lut: &[[f32; 256]; 3], out: &mut [f32]) -> Result<()> {
    let n = img.width() as usize * img.height() as usize;
    if out.len() != 3 * n {
        return Err(DataError::Config {
            field: "out".into(),
            reason: format!(
                "CHW buffer has {} floats, a {}x{} image needs {}",
                out.len(),
                img.width(),
                img.height(),
                3 * n
            ),
        });
    }
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[0][p[0] as usize];
        g[i] = lut[1][p[1] as usize];
        b[i] = lut[2][p[2] as usize];
    }
    Ok(())
}

/// torchvision `ToTensor()` + `Normalize(mean, std)` into `out` (CHW, `3 * w * h` floats).
/// Panics if `out` has the wrong length (a caller bug; use [`Normalize::apply_into`] for a `Result`).
pub fn to_chw_f32(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    Normalize::torchvision(mean, std)
        .apply_into(img, out)
        .expect("to_chw_f32: output buffer must hold 3*w*h floats");
}

/// Which implementation resizes (they differ by a level on some pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeBackend {
    /// `PIL.Image.resize` (torchvision on PIL images, HF PIL/"slow" processors) with the given
    /// separable pass order.
    Pil(PassOrder),
    /// torch's antialiased `uint8` resize (HF torchvision-backend processors, transformers ≥ 5).
    TorchU8,
}

impl Default for ResizeBackend {
    fn default() -> Self {
        ResizeBackend::Pil(PassOrder::default())
    }
}

/// Which HF image-processor implementation to reproduce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HfBackend {
    /// The PIL/NumPy path: `*ImageProcessor(use_fast=False)` in transformers 4.x,
    /// `*ImageProcessorPil` in 5.x. What the webssl demos use.
    #[default]
    Pil,
    /// The torchvision-tensor path: `*ImageProcessorFast` in 4.x, the default `*ImageProcessor`
    /// in 5.x (uint8 tensor resize, floor crop offsets, rescale fused into normalize).
    Torchvision,
}

impl HfBackend {
    /// The CLI spelling (`pil`, `torchvision`).
    pub fn name(self) -> &'static str {
        match self {
            HfBackend::Pil => "pil",
            HfBackend::Torchvision => "torchvision",
        }
    }
}

impl std::str::FromStr for HfBackend {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pil" => Ok(HfBackend::Pil),
            "torchvision" => Ok(HfBackend::Torchvision),
            other => Err(DataError::config(
                "preprocess",
                format!("`{other}` is not a backend (pil, torchvision)"),
            )),
        }
    }
}

/// Resize step of an [`EvalTransform`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResizeMode {
    /// Short side to this size, aspect ratio kept (torchvision `Resize(int)`, HF `shortest_edge`).
    ShortestEdge(u32),
    /// Exactly `w`×`h` (torchvision `Resize((h, w))`, HF `height`/`width`).
    Exact { w: u32, h: u32 },
}

/// A deterministic preprocessing pipeline: optional resize, optional center crop, normalise to CHW.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalTransform {
    pub resize: Option<ResizeMode>,
    pub filter: Filter,
    #[serde(default)]
    pub backend: ResizeBackend,
    pub crop: Option<(u32, u32)>,
    pub crop_rounding: CropRounding,
    pub normalize: Normalize,
}

/// Class defaults of the HF processors we reproduce (used for keys a config omits).
struct HfDefaults {
    default_to_square: bool,
    resample: i64,
    size: Option<ResizeMode>,
    crop: Option<(u32, u32)>,
    do_center_crop: bool,
    mean: [f64; 3],
    std: [f64; 3],
}

impl EvalTransform {
    /// dinov2 / torchvision ImageNet eval: `Resize(resize, BICUBIC)`, `CenterCrop(crop)`,
    /// `ToTensor`, `Normalize(ImageNet)`.
    pub fn imagenet(resize: u32, crop: u32) -> Self {
        EvalTransform {
            resize: Some(ResizeMode::ShortestEdge(resize)),
            filter: Filter::Bicubic,
            backend: ResizeBackend::default(),
            crop: Some((crop, crop)),
            crop_rounding: CropRounding::Torchvision,
            normalize: Normalize::torchvision(IMAGENET_MEAN, IMAGENET_STD),
        }
    }

    /// MetaCLIP eval (`src/mini_clip/transform.py::image_transform(is_train=False)`):
    /// `Resize(size, BICUBIC)`, `CenterCrop(size)`, `ToTensor`, `Normalize(OpenAI CLIP)`.
    /// (MetaCLIP converts to RGB after the resize; here decode already did, which differs only for
    /// images with an alpha channel or a palette.)
    pub fn clip(size: u32) -> Self {
        EvalTransform {
            normalize: Normalize::torchvision(CLIP_MEAN, CLIP_STD),
            ..Self::imagenet(size, size)
        }
    }

    /// webssl demo: `Resize((size, size), BICUBIC)`, `ToTensor`, `Normalize(ImageNet)`.
    pub fn square(size: u32) -> Self {
        EvalTransform {
            resize: Some(ResizeMode::Exact { w: size, h: size }),
            filter: Filter::Bicubic,
            backend: ResizeBackend::default(),
            crop: None,
            crop_rounding: CropRounding::Torchvision,
            normalize: Normalize::torchvision(IMAGENET_MEAN, IMAGENET_STD),
        }
    }

    /// [`Self::square`] as `hf` computes it: for [`HfBackend::Pil`] exactly [`Self::square`] (the
    /// webssl demos, and `BitImageProcessorPil` with `size = {height: s, width: s}`, no crop, which
    /// gives the same bits); for [`HfBackend::Torchvision`] that `BitImageProcessor` configuration
    /// on transformers' torchvision backend.
    pub fn square_with(size: u32, hf: HfBackend) -> Result<Self> {
        match hf {
            HfBackend::Pil => Ok(Self::square(size)),
            HfBackend::Torchvision => Self::from_hf_preprocessor_config_with(
                &serde_json::json!({
                    "image_processor_type": "BitImageProcessor",
                    "size": {"height": size, "width": size},
                    "resample": 3,
                    "do_center_crop": false,
                    "image_mean": [0.485, 0.456, 0.406],
                    "image_std": [0.229, 0.224, 0.225],
                }),
                hf,
            ),
        }
    }

    /// Reads an HF `preprocessor_config.json` (`BitImageProcessor`, `ViTImageProcessor`,
    /// `CLIPImageProcessor`, with or without the `Fast`/`Pil` suffix; keys a config omits take the
    /// class defaults). Reproduces the PIL path of those processors ([`HfBackend::Pil`], what
    /// `use_fast=False` and the webssl demos run). Anything this cannot reproduce (`longest_edge`,
    /// `do_pad`, `crop_pct`, unknown resample codes, ...) is a [`DataError::Config`] naming the field.
    pub fn from_hf_preprocessor_config(json: &Value) -> Result<Self> {
        Self::from_hf_preprocessor_config_with(json, HfBackend::Pil)
    }

    /// [`Self::from_hf_preprocessor_config`] for either HF backend. [`HfBackend::Torchvision`]
    /// supports `resample` 2 (bilinear) and 3 (bicubic) only.
    pub fn from_hf_preprocessor_config_with(json: &Value, hf: HfBackend) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| DataError::config("preprocessor_config", "expected a JSON object"))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let bool_field = |k: &str, default: bool| -> Result<bool> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| DataError::config(k, format!("expected a bool, got {v}"))),
            }
        };

        let ptype = get("image_processor_type")
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| DataError::config("image_processor_type", "expected a string"))
            })
            .transpose()?;
        let base = ptype.map(|t| t.trim_end_matches("Fast").trim_end_matches("Pil"));
        let imagenet_std = [0.229, 0.224, 0.225];
        let imagenet_mean = [0.485, 0.456, 0.406];
        let defaults = match base {
            Some("BitImageProcessor") | Some("CLIPImageProcessor") => HfDefaults {
                default_to_square: false,
                resample: 3,
                size: Some(ResizeMode::ShortestEdge(224)),
                crop: Some((224, 224)),
                do_center_crop: true,
                mean: [0.48145466, 0.4578275, 0.40821073],
                std: [0.26862954, 0.26130258, 0.27577711],
            },
            Some("ViTImageProcessor") => HfDefaults {
                default_to_square: true,
                resample: 2,
                size: Some(ResizeMode::Exact { w: 224, h: 224 }),
                crop: None,
                do_center_crop: false,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            Some(other) => {
                return Err(DataError::config(
                    "image_processor_type",
                    format!(
                        "`{other}` is not supported (BitImageProcessor, ViTImageProcessor, CLIPImageProcessor)"
                    ),
                ));
            }
            // No type: nothing to default from, every used key must be present.
            None => HfDefaults {
                default_to_square: false,
                resample: -1,
                size: None,
                crop: None,
                do_center_crop: false,
                mean: imagenet_mean,
                std: imagenet_std,
            },
        };

        for k in ["do_pad", "do_reduce_labels"] {
            if bool_field(k, false)? {
                return Err(DataError::config(
                    k,
                    "not supported (only resize / center crop / rescale / normalize)",
                ));
            }
        }
        if get("crop_pct").is_some() {
            return Err(DataError::config(
                "crop_pct",
                "crop_pct resizing is not supported",
            ));
        }

        let do_resize = bool_field("do_resize", true)?;
        let resize = if do_resize {
            match get("size") {
                None => Some(
                    defaults
                        .size
                        .ok_or_else(|| DataError::config("size", "missing"))?,
                ),
                Some(v) => Some(parse_size(v, "size", defaults.default_to_square)?),
            }
        } else {
            None
        };
        let filter = match get("resample") {
            None if defaults.resample >= 0 => {
                Filter::from_pil_code(defaults.resample).expect("valid default")
            }
            None if resize.is_none() => Filter::Bicubic,
            None => return Err(DataError::config("resample", "missing")),
            Some(v) => {
                let code = v.as_i64().ok_or_else(|| {
                    DataError::config("resample", format!("expected a PIL code, got {v}"))
                })?;
                Filter::from_pil_code(code).ok_or_else(|| {
                    DataError::config("resample", format!("unknown PIL resample code {code}"))
                })?
            }
        };

        let crop = if bool_field("do_center_crop", defaults.do_center_crop)? {
            match get("crop_size") {
                None => Some(
                    defaults
                        .crop
                        .ok_or_else(|| DataError::config("crop_size", "missing"))?,
                ),
                Some(v) => match parse_size(v, "crop_size", true)? {
                    ResizeMode::Exact { w, h } => Some((w, h)),
                    ResizeMode::ShortestEdge(_) => {
                        return Err(DataError::config(
                            "crop_size",
                            "expected {height, width} or an int",
                        ));
                    }
                },
            }
        } else {
            None
        };

        let rescale = if bool_field("do_rescale", true)? {
            match get("rescale_factor") {
                None => Rescale::Factor(1.0 / 255.0),
                Some(v) => {
                    let f = v
                        .as_f64()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .ok_or_else(|| {
                            DataError::config(
                                "rescale_factor",
                                format!("expected a positive number, got {v}"),
                            )
                        })?;
                    Rescale::Factor(f)
                }
            }
        } else {
            Rescale::None
        };

        let (mean, std) = if bool_field("do_normalize", true)? {
            let mean = parse_triple(get("image_mean"), "image_mean", defaults.mean)?;
            let std = parse_triple(get("image_std"), "image_std", defaults.std)?;
            if std.contains(&0.0) {
                return Err(DataError::config("image_std", "must be non-zero"));
            }
            (mean, std)
        } else {
            // (x - 0) / 1 is exact in f32: identical to skipping the step.
            ([0.0; 3], [1.0; 3])
        };
        // `do_convert_rgb`: inputs are RgbImage already; only validate the type.
        bool_field("do_convert_rgb", true)?;

        let normalize = match hf {
            HfBackend::Pil => Normalize { rescale, mean, std },
            HfBackend::Torchvision => {
                if resize.is_some() && !matches!(filter, Filter::Bilinear | Filter::Bicubic) {
                    return Err(DataError::config(
                        "resample",
                        format!(
                            "the torchvision backend is reproduced for bilinear/bicubic only, not {filter:?}"
                        ),
                    ));
                }
                let normalizing = bool_field("do_normalize", true)?;
                match rescale {
                    // `torch.tensor(mean) * (1.0 / rescale_factor)`: an f32 tensor times a Python
                    // float (cast to f32), then `(f32(x) - mean') / std'`.
                    Rescale::Factor(f) if normalizing => {
                        let inv = (1.0 / f) as f32;
                        Normalize {
                            rescale: Rescale::None,
                            mean: mean.map(|m| m * inv),
                            std: std.map(|s| s * inv),
                        }
                    }
                    Rescale::Factor(f) => Normalize {
                        rescale: Rescale::FactorF32(f as f32),
                        mean,
                        std,
                    },
                    other => Normalize {
                        rescale: other,
                        mean,
                        std,
                    },
                }
            }
        };
        let (backend, crop_rounding) = match hf {
            HfBackend::Pil => (
                ResizeBackend::Pil(PassOrder::default()),
                CropRounding::HuggingFace,
            ),
            HfBackend::Torchvision => {
                (ResizeBackend::TorchU8, CropRounding::HuggingFaceTorchvision)
            }
        };
        let t = EvalTransform {
            resize,
            filter,
            backend,
            crop,
            crop_rounding,
            normalize,
        };
        t.validate()?;
        Ok(t)
    }

    /// Rejects zero sizes.
    pub fn validate(&self) -> Result<()> {
        match self.resize {
            Some(ResizeMode::ShortestEdge(0)) => {
                return Err(DataError::config("size", "shortest_edge must be >= 1"));
            }
            Some(ResizeMode::Exact { w, h }) if w == 0 || h == 0 => {
                return Err(DataError::config("size", "height and width must be >= 1"));
            }
            _ => {}
        }
        if let Some((w, h)) = self.crop
            && (w == 0 || h == 0)
        {
            return Err(DataError::config(
                "crop_size",
                "height and width must be >= 1",
            ));
        }
        Ok(())
    }

    /// `(w, h)` of the output for a `w`×`h` input.
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        if let Some(c) = self.crop {
            return c;
        }
        match self.resize {
            Some(ResizeMode::ShortestEdge(s)) => shortest_edge_size(w, h, s),
            Some(ResizeMode::Exact { w, h }) => (w, h),
            None => (w, h),
        }
    }

    /// `(w, h)` of every output when it does not depend on the input (a crop, or an exact resize);
    /// `None` for a shortest-edge resize without a crop. Batching needs a fixed size.
    pub fn fixed_output_size(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some(c),
            (None, Some(ResizeMode::Exact { w, h })) => Some((w, h)),
            _ => None,
        }
    }

    /// The `u8` image after resize and crop (before normalisation).
    pub fn apply_u8(&self, img: &RgbImage) -> Result<RgbImage> {
        self.validate()?;
        if img.width() == 0 || img.height() == 0 {
            return Err(DataError::config("image", "empty image"));
        }
        let target = match self.resize {
            Some(ResizeMode::ShortestEdge(s)) => {
                Some(shortest_edge_size(img.width(), img.height(), s))
            }
            Some(ResizeMode::Exact { w, h }) => Some((w, h)),
            None => None,
        };
        let resized = match (target, self.backend) {
            (None, _) => img.clone(),
            (Some((w, h)), ResizeBackend::Pil(order)) => crop_resize_with(
                img,
                0,
                0,
                img.width(),
                img.height(),
                w,
                h,
                self.filter,
                order,
            )?,
            // torchvision returns the input unchanged when the size already matches.
            (Some((w, h)), ResizeBackend::TorchU8) if (w, h) == img.dimensions() => img.clone(),
            (Some((w, h)), ResizeBackend::TorchU8) => torch_resize_u8(img, w, h, self.filter)?,
        };
        Ok(match self.crop {
            Some((w, h)) => center_crop_with(&resized, w, h, self.crop_rounding),
            None => resized,
        })
    }

    /// Writes the normalised CHW output into `out` (length `3 * w * h` of [`Self::output_size`]);
    /// returns `(w, h)`.
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<(u32, u32)> {
        let u = self.apply_u8(img)?;
        self.normalize.apply_into(&u, out)?;
        Ok(u.dimensions())
    }

    /// The normalised CHW output and its `(w, h)`. Panics only on an invalid transform (zero sizes)
    /// or an empty image; use [`Self::apply_into`] for a `Result`.
    pub fn apply(&self, img: &RgbImage) -> (Vec<f32>, u32, u32) {
        let (w, h) = self.output_size(img.width(), img.height());
        let mut out = vec![0f32; 3 * w as usize * h as usize];
        let (w2, h2) = self
            .apply_into(img, &mut out)
            .expect("EvalTransform::apply");
        debug_assert_eq!((w, h), (w2, h2));
        (out, w, h)
    }
}

fn parse_u32(v: &Value, field: &str) -> Result<u32> {
    v.as_u64()
        .filter(|&n| n >= 1 && n <= u32::MAX as u64)
        .map(|n| n as u32)
        .ok_or_else(|| DataError::config(field, format!("expected a positive integer, got {v}")))
}

/// HF `get_size_dict`: an int means square (`default_to_square`) or shortest edge; a dict has
/// `shortest_edge` or `height`+`width`.
fn parse_size(v: &Value, field: &str, default_to_square: bool) -> Result<ResizeMode> {
    if v.is_u64() {
        let s = parse_u32(v, field)?;
        return Ok(if default_to_square {
            ResizeMode::Exact { w: s, h: s }
        } else {
            ResizeMode::ShortestEdge(s)
        });
    }
    let o = v.as_object().ok_or_else(|| {
        DataError::config(field, format!("expected an int or an object, got {v}"))
    })?;
    let keys: Vec<&str> = o
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    match sorted.as_slice() {
        ["shortest_edge"] => Ok(ResizeMode::ShortestEdge(parse_u32(
            &o["shortest_edge"],
            &format!("{field}.shortest_edge"),
        )?)),
        ["height", "width"] => Ok(ResizeMode::Exact {
            w: parse_u32(&o["width"], &format!("{field}.width"))?,
            h: parse_u32(&o["height"], &format!("{field}.height"))?,
        }),
        _ => Err(DataError::config(
            field,
            format!("unsupported keys {keys:?} (supported: shortest_edge, or height + width)"),
        )),
    }
}

/// A mean/std triple (or a scalar, replicated), read as `f64` and cast to `f32` as NumPy does.
fn parse_triple(v: Option<&Value>, field: &str, default: [f64; 3]) -> Result<[f32; 3]> {
    let vals: [f64; 3] = match v {
        None => default,
        Some(Value::Number(n)) => {
            let x = n
                .as_f64()
                .ok_or_else(|| DataError::config(field, "not a number"))?;
            [x; 3]
        }
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f64; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| {
                    DataError::config(field, format!("expected numbers, got {x}"))
                })?;
            }
            out
        }
        Some(other) => {
            return Err(DataError::config(
                field,
                format!("expected 3 numbers, got {other}"),
            ));
        }
    };
    if vals.iter().any(|x| !x.is_finite()) {
        return Err(DataError::config(field, "values must be finite"));
    }
    Ok(vals.map(|x| x as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shortest_edge_matches_python_int_division() {
        // int(256 * 500 / 375) = int(341.33) = 341; int(224 * 640 / 427) = 335 (335.737...)
        assert_eq!(shortest_edge_size(500, 375, 256), (341, 256));
        assert_eq!(shortest_edge_size(427, 640, 224), (224, 335));
        assert_eq!(shortest_edge_size(300, 300, 256), (256, 256));
        assert_eq!(shortest_edge_size(1, 1000, 3), (3, 3000));
    }

    #[test]
    fn crop_rounding_rules_differ_where_documented() {
        // d = 3: round(1.5) = 2 (torchvision), 3 // 2 = 1 (HF)
        assert_eq!(crop_axis(227, 224, CropRounding::Torchvision), (2, 0, 224));
        assert_eq!(crop_axis(227, 224, CropRounding::HuggingFace), (1, 0, 224));
        // d = 1: round(0.5) = 0 both
        assert_eq!(crop_axis(225, 224, CropRounding::Torchvision).0, 0);
        // d = 5: round(2.5) = 2, 5 // 2 = 2
        assert_eq!(crop_axis(229, 224, CropRounding::Torchvision).0, 2);
        assert_eq!(crop_axis(229, 224, CropRounding::HuggingFace).0, 2);
        // padding 3: torchvision 1 before, HF 2 before
        assert_eq!(crop_axis(5, 8, CropRounding::Torchvision), (0, 1, 5));
        assert_eq!(crop_axis(5, 8, CropRounding::HuggingFace), (0, 2, 5));
        // HF torchvision backend: floor offset, floor padding.
        assert_eq!(
            crop_axis(227, 224, CropRounding::HuggingFaceTorchvision),
            (1, 0, 224)
        );
        assert_eq!(
            crop_axis(5, 8, CropRounding::HuggingFaceTorchvision),
            (0, 1, 5)
        );
    }

    #[test]
    fn center_crop_pads_with_zeros() {
        let img = RgbImage::from_pixel(3, 5, Rgb([9, 9, 9]));
        let out = center_crop(&img, 6, 4);
        assert_eq!(out.dimensions(), (6, 4));
        // x: pad (6-3)//2 = 1 before; y: start round(0.5) = 0
        assert_eq!(out.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(out.get_pixel(1, 0), &Rgb([9, 9, 9]));
        assert_eq!(out.get_pixel(3, 3), &Rgb([9, 9, 9]));
        assert_eq!(out.get_pixel(4, 0), &Rgb([0, 0, 0]));
    }

    #[test]
    fn hf_and_torchvision_rescale_agree_for_all_u8() {
        // f32(x) / 255f32 (torch) vs f32(f64(x) * (1/255)) (HF numpy): no double-rounding case hits.
        assert_eq!(
            Rescale::ToTensor.table(),
            Rescale::Factor(1.0 / 255.0).table()
        );
    }

    #[test]
    fn to_chw_layout_and_values() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([0, 255, 51])
            } else {
                Rgb([255, 0, 102])
            }
        });
        let mut out = vec![0f32; 6];
        to_chw_f32(&img, [0.5, 0.5, 0.0], [0.5, 0.25, 1.0], &mut out);
        assert_eq!(out, vec![-1.0, 1.0, 2.0, -2.0, 0.2, 0.4]);
        assert!(
            Normalize::torchvision(IMAGENET_MEAN, IMAGENET_STD)
                .apply_into(&img, &mut [0.0; 5])
                .is_err()
        );
    }

    #[test]
    fn hf_config_dinov2_style() {
        let cfg = json!({
            "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_convert_rgb": true,
            "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "image_processor_type": "BitImageProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}
        });
        let t = EvalTransform::from_hf_preprocessor_config(&cfg).unwrap();
        assert_eq!(t.resize, Some(ResizeMode::ShortestEdge(256)));
        assert_eq!(t.crop, Some((224, 224)));
        assert_eq!(t.filter, Filter::Bicubic);
        assert_eq!(t.normalize.mean, IMAGENET_MEAN);
        assert_eq!(t.crop_rounding, CropRounding::HuggingFace);
        let img = RgbImage::from_pixel(300, 260, Rgb([10, 20, 30]));
        let (v, w, h) = t.apply(&img);
        assert_eq!((w, h, v.len()), (224, 224, 3 * 224 * 224));
    }

    #[test]
    fn hf_config_vit_defaults_and_int_size() {
        let cfg = json!({"image_processor_type": "ViTImageProcessor", "size": 196});
        let t = EvalTransform::from_hf_preprocessor_config(&cfg).unwrap();
        assert_eq!(t.resize, Some(ResizeMode::Exact { w: 196, h: 196 }));
        assert_eq!(t.filter, Filter::Bilinear);
        assert_eq!(t.crop, None);
        assert_eq!(t.normalize.mean, [0.5; 3]);
        let cfg = json!({"image_processor_type": "BitImageProcessor", "size": 256, "do_normalize": false});
        let t = EvalTransform::from_hf_preprocessor_config(&cfg).unwrap();
        assert_eq!(t.resize, Some(ResizeMode::ShortestEdge(256)));
        assert_eq!((t.normalize.mean, t.normalize.std), ([0.0; 3], [1.0; 3]));
    }

    #[test]
    fn hf_torchvision_backend_fuses_rescale_into_normalize() {
        let cfg = json!({"image_processor_type": "BitImageProcessor", "image_mean": [0.485, 0.456, 0.406],
                         "image_std": [0.229, 0.224, 0.225]});
        let t =
            EvalTransform::from_hf_preprocessor_config_with(&cfg, HfBackend::Torchvision).unwrap();
        assert_eq!(t.backend, ResizeBackend::TorchU8);
        assert_eq!(t.crop_rounding, CropRounding::HuggingFaceTorchvision);
        assert_eq!(t.normalize.rescale, Rescale::None);
        assert_eq!(t.normalize.mean[0], 0.485f64 as f32 * 255.0);
        let lanczos = json!({"image_processor_type": "BitImageProcessor", "resample": 1});
        assert!(EvalTransform::from_hf_preprocessor_config(&lanczos).is_ok());
        match EvalTransform::from_hf_preprocessor_config_with(&lanczos, HfBackend::Torchvision) {
            Err(DataError::Config { field, .. }) => assert_eq!(field, "resample"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hf_config_errors_name_the_field() {
        let cases = [
            (
                json!({"image_processor_type": "BitImageProcessor", "resample": 7}),
                "resample",
            ),
            (
                json!({"image_processor_type": "BitImageProcessor", "size": {"longest_edge": 3}}),
                "size",
            ),
            (
                json!({"image_processor_type": "SiglipImageProcessor"}),
                "image_processor_type",
            ),
            (
                json!({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}),
                "image_mean",
            ),
            (
                json!({"image_processor_type": "ViTImageProcessor", "do_pad": true}),
                "do_pad",
            ),
            (
                json!({"image_processor_type": "ViTImageProcessor", "crop_pct": 0.875}),
                "crop_pct",
            ),
            (
                json!({"image_processor_type": "ViTImageProcessor", "size": {"height": 0, "width": 3}}),
                "size.height",
            ),
            (json!({"do_resize": true}), "size"),
            (json!([1, 2]), "preprocessor_config"),
        ];
        for (cfg, field) in cases {
            match EvalTransform::from_hf_preprocessor_config(&cfg) {
                Err(DataError::Config { field: f, .. }) => assert_eq!(f, field, "{cfg}"),
                other => panic!("{cfg}: expected a Config error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn clip_eval_is_shortest_edge_then_center_crop_with_clip_stats() {
        let t = EvalTransform::clip(224);
        assert_eq!(t.resize, Some(ResizeMode::ShortestEdge(224)));
        assert_eq!(t.crop, Some((224, 224)));
        assert_eq!((t.normalize.mean, t.normalize.std), (CLIP_MEAN, CLIP_STD));
        let img = RgbImage::from_fn(300, 250, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]));
        assert_eq!(
            t.apply_u8(&img).unwrap(),
            EvalTransform::imagenet(224, 224).apply_u8(&img).unwrap()
        );
    }

    #[test]
    fn output_size_predicts_apply() {
        for t in [
            EvalTransform::imagenet(256, 224),
            EvalTransform::square(98),
            EvalTransform::clip(64),
        ] {
            for (w, h) in [(500, 375), (120, 400), (224, 224)] {
                let img = RgbImage::new(w, h);
                let (v, ow, oh) = t.apply(&img);
                assert_eq!((ow, oh), t.output_size(w, h));
                assert_eq!(v.len(), 3 * (ow * oh) as usize);
            }
        }
    }
}
