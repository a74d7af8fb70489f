//! `embed`: frozen features of a backbone for a set of images, as `webssl embed` computes them —
//! the same `webssl_eval::features::Encoder` (checkpoint loading, preprocessing, feature read-out),
//! the same input specs (`webssl_data::source`) and decoder, in the same order — returned as NumPy
//! arrays instead of a file. CPU (burn-flex) only.
//!
//! An input that cannot be read or decoded is skipped and listed in `skipped` (`what`, `why`), as
//! the CLI lists it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use image::RgbImage;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use webssl_data::decode::{DEFAULT_MAX_PIXELS, decode_rgb};
use webssl_data::recipe::ArrayData;
use webssl_data::source::{iter_items, resolve_inputs};
use webssl_data::transform::HfBackend;
use webssl_eval::features::{Encoder, Feature};

use crate::buffer::Buffer;
use crate::{data_err, eval_err};

fn feature(name: &str) -> PyResult<Feature> {
    Ok(match name.replace('-', "_").as_str() {
        "cls" => Feature::Cls,
        "patch_mean" => Feature::PatchMean,
        "patch_tokens" => Feature::PatchTokens,
        "registers" => Feature::Registers,
        _ => {
            return Err(PyValueError::new_err(format!(
                "features: unknown feature `{name}`: expected cls, patch_mean, patch_tokens or registers"
            )));
        }
    })
}

/// A decoded image with its key, or (what, why) for an input that is skipped.
type Decoded = std::result::Result<(String, RgbImage), (String, String)>;

/// `embed`'s inputs: paths (the CLI's `--input` specs) or images already in memory.
enum Inputs {
    Paths(Vec<String>),
    /// `uint8` arrays of shape `[H, W, 3]` (RGB, as `np.asarray(PIL.Image.open(p).convert("RGB"))`),
    /// copied while the GIL is held; keyed `array-{i}`.
    Arrays(Vec<RgbImage>),
}

impl Inputs {
    fn read(inputs: &[Bound<'_, PyAny>]) -> PyResult<Self> {
        let is_path = |x: &Bound<'_, PyAny>| x.extract::<PathBuf>().is_ok();
        if inputs.iter().all(is_path) {
            let paths = inputs.iter().map(|x| x.extract::<PathBuf>());
            return Ok(Inputs::Paths(
                paths
                    .map(|p| p.map(|p| p.to_string_lossy().into_owned()))
                    .collect::<PyResult<_>>()?,
            ));
        }
        if inputs.iter().any(is_path) {
            return Err(PyValueError::new_err(
                "inputs: either paths or uint8 [H, W, 3] arrays, not both",
            ));
        }
        let array = |(i, x): (usize, &Bound<'_, PyAny>)| -> PyResult<RgbImage> {
            let bad = |why: &str| PyValueError::new_err(format!("inputs[{i}]: {why}"));
            let buf = PyBuffer::<u8>::get(x)
                .map_err(|_| bad("not a path and not a uint8 array (expected [H, W, 3] RGB)"))?;
            let shape = buf.shape();
            if shape.len() != 3 || shape[2] != 3 || shape[0] == 0 || shape[1] == 0 {
                return Err(bad(&format!(
                    "shape {shape:?}, expected [H, W, 3] with H, W ≥ 1"
                )));
            }
            let (h, w) = (u32::try_from(shape[0]), u32::try_from(shape[1]));
            let (Ok(h), Ok(w)) = (h, w) else {
                return Err(bad("image too large"));
            };
            let bytes = buf.to_vec(x.py())?;
            RgbImage::from_raw(w, h, bytes).ok_or_else(|| bad("buffer smaller than its shape"))
        };
        Ok(Inputs::Arrays(
            inputs
                .iter()
                .enumerate()
                .map(array)
                .collect::<PyResult<_>>()?,
        ))
    }
}

/// What [`embed`] computes before it becomes Python objects.
#[derive(Default)]
struct Embedded {
    keys: Vec<String>,
    /// name → (per-sample shape, values of every sample back to back).
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    skipped: Vec<(String, String)>,
}

/// Features of `model` (an HF directory or a native safetensors file with `arch`) for `inputs`
/// (folders, image files, tar shards, a shard directory or text files listing paths — `webssl
/// embed --input`). Returns `{"keys": [...], "<feature>": array [N, ...], "skipped": [(what, why)]}`
/// with `cls` / `patch_mean` `[N, D]`, `patch_tokens` `[N, P, D]`, `registers` `[N, R, D]` and, with
/// `last_layers` = K, `layer-{k}.cls` / `layer-{k}.patch_mean` for k = K..1.
#[pyfunction]
#[pyo3(signature = (
    model, inputs, *, features = vec!["cls".to_string(), "patch_mean".to_string()], arch = None,
    resolution = None, preprocess = "pil", batch_size = 32, last_layers = 0,
    max_pixels = DEFAULT_MAX_PIXELS
))]
pub fn embed<'py>(
    py: Python<'py>,
    model: PathBuf,
    inputs: Vec<Bound<'py, PyAny>>,
    features: Vec<String>,
    arch: Option<String>,
    resolution: Option<u32>,
    preprocess: &str,
    batch_size: usize,
    last_layers: usize,
    max_pixels: u64,
) -> PyResult<Bound<'py, PyDict>> {
    if batch_size == 0 {
        return Err(PyValueError::new_err("batch_size must be at least 1"));
    }
    // `pil` or `torchvision`: which of transformers' image processors to reproduce (`--preprocess`).
    let hf: HfBackend = preprocess
        .parse()
        .map_err(|e: webssl_data::DataError| PyValueError::new_err(e.to_string()))?;
    let features = features
        .iter()
        .map(|f| feature(f.as_str()))
        .collect::<PyResult<Vec<_>>>()?;
    let inputs = Inputs::read(&inputs)?;
    let run = || -> PyResult<Embedded> {
        let device = Device::flex();
        let encoder = Encoder::load(&model, arch.as_deref(), resolution, hf, &device)
            .map_err(|e| eval_err(&format!("loading model {}", model.display()), e))?;
        let depth = encoder.model().config().depth;
        if last_layers > depth {
            return Err(PyValueError::new_err(format!(
                "last_layers {last_layers} exceeds the model depth {depth}"
            )));
        }
        let mut out = Embedded::default();
        // Images as (key, decoded image) or (what, why) to skip, in the CLI's order.
        let mut images: Box<dyn Iterator<Item = Decoded>> = match inputs {
            Inputs::Paths(paths) => {
                let specs = resolve_inputs(&paths).map_err(|e| data_err("resolving inputs", e))?;
                Box::new(iter_items(&specs).map(move |item| {
                    let item = item.map_err(|e| ("input".to_string(), e.to_string()))?;
                    let img = decode_rgb(&item.bytes, &item.source, max_pixels)
                        .map_err(|e| (item.source.clone(), e.to_string()))?;
                    Ok((item.key, img))
                }))
            }
            Inputs::Arrays(images) => Box::new(
                images
                    .into_iter()
                    .enumerate()
                    .map(|(i, img)| Ok((format!("array-{i}"), img))),
            ),
        };
        loop {
            let chunk: Vec<_> = images.by_ref().take(batch_size).collect();
            if chunk.is_empty() {
                break;
            }
            let (mut keys, mut pixels) = (Vec::new(), Vec::new());
            for image in chunk {
                let prepared = image.and_then(|(key, img)| {
                    let px = encoder
                        .preprocess()
                        .apply(&img)
                        .map_err(|why| (key.clone(), why))?;
                    Ok((key, px))
                });
                match prepared {
                    Ok((key, px)) => {
                        keys.push(key);
                        pixels.extend_from_slice(&px);
                    }
                    Err(skip) => out.skipped.push(skip),
                }
            }
            if keys.is_empty() {
                continue;
            }
            let n = keys.len();
            let got = encoder
                .extract(pixels, n, &features, last_layers)
                .map_err(|e| eval_err("extracting features", e))?;
            for (name, (shape, values)) in got.tensors {
                let entry = out.tensors.entry(name).or_insert((shape, Vec::new()));
                entry.1.extend_from_slice(&values);
            }
            out.keys.extend(keys);
        }
        if out.keys.is_empty() {
            return Err(crate::WebsslError::new_err(format!(
                "no image could be embedded ({} skipped)",
                out.skipped.len()
            )));
        }
        Ok(out)
    };
    let out = py.detach(run)?;
    let d = PyDict::new(py);
    let n = out.keys.len();
    d.set_item("keys", out.keys)?;
    let numpy = py.import("numpy")?;
    for (name, (per, values)) in out.tensors {
        let mut shape = vec![n];
        shape.extend(per);
        let array = Buffer::new(ArrayData::F32(values), &shape)?.into_numpy(py, &numpy)?;
        d.set_item(name, array)?;
    }
    d.set_item("skipped", out.skipped)?;
    Ok(d)
}
