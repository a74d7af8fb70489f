//! Writing a [`Vit`] as an HF model directory (`config.json`, `model.safetensors`, optionally
//! `preprocessor_config.json`) that `transformers` loads unchanged, or as one native safetensors file
//! with DINOv2/timm key names. Tensors are written in PyTorch layout (`nn.Linear` `[out, in]`,
//! patch `Conv2d` `[D, C, p, p]`), f32. Every file is written to a temporary name, fsynced and renamed,
//! so a reader never sees a half-written checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::keymap::{self, Layout};
use super::named_parameters;
use crate::error::{ModelError, Result};
use crate::vit::Vit;

/// Tensors of `model` in PyTorch layout under the key names of `layout`.
pub fn torch_tensors(model: &Vit, layout: Layout) -> Result<Vec<super::NamedTensor>> {
    let cfg = model.config();
    let mut out = Vec::new();
    for (name, shape, values) in named_parameters(model) {
        let (shape, values) = if shape.len() == 2 && name.ends_with(".weight") {
            let (inp, o) = (shape[0], shape[1]);
            let mut t = vec![0f32; values.len()];
            for i in 0..inp {
                for j in 0..o {
                    t[j * inp + i] = values[i * o + j];
                }
            }
            let torch_shape = if name == "patch_embed.proj.weight" {
                vec![o, cfg.in_chans, cfg.patch_size, cfg.patch_size]
            } else {
                vec![o, inp]
            };
            (torch_shape, t)
        } else {
            (shape, values)
        };
        let keys = match layout {
            Layout::Native => vec![name.clone()],
            layout => keymap::sources(&name, layout)
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ModelError::config(
                        "flavour",
                        format!("parameter `{name}` has no name in the {layout:?} layout"),
                    )
                })?,
        };
        // Split fused tensors (qkv, w12) back into their parts along dim 0.
        let parts = keys.len();
        let rows = shape[0] / parts;
        let per = values.len() / parts;
        for (p, key) in keys.into_iter().enumerate() {
            let mut s = shape.clone();
            s[0] = rows;
            out.push((key, s, values[p * per..(p + 1) * per].to_vec()));
        }
    }
    Ok(out)
}

/// Writes `tensors` to `path` as safetensors (f32), atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    write_safetensors_with_metadata(path, tensors, &[])
}

/// As [`write_safetensors`], with extra `__metadata__` string entries.
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    extra: &[(&str, String)],
) -> Result<()> {
    let data =
        safetensors_bytes(tensors, extra).map_err(|reason| ModelError::format(path, reason))?;
    write_atomic(path, &data)
}

/// The safetensors encoding (f32, `format = pt` plus `extra` metadata) of `tensors`, in memory.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    extra: &[(&str, String)],
) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| format!("tensor `{k}`: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let mut metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    metadata.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Writes the HF model directory for `model` into `dir` (created if needed).
pub fn export_hf(model: &Vit, dir: &Path, preprocessor: Option<&serde_json::Value>) -> Result<()> {
    let cfg = model.config();
    let config = cfg.to_hf_json()?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = torch_tensors(model, Layout::hf_for(cfg.flavour))?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    write_json(&dir.join("config.json"), &config)?;
    if let Some(pre) = preprocessor {
        write_json(&dir.join("preprocessor_config.json"), pre)?;
    }
    Ok(())
}

/// Writes `model` as one safetensors file with DINOv2/timm native key names.
pub fn export_native(model: &Vit, path: &Path) -> Result<()> {
    write_safetensors(path, &torch_tensors(model, Layout::Native)?)
}

/// The `preprocessor_config.json` of a BitImageProcessor (the DINOv2 HF processor) for `size`:
/// shortest-edge resize to 256/224·size, bicubic, center crop `size`, ImageNet mean/std.
pub fn default_preprocessor(size: usize) -> serde_json::Value {
    serde_json::json!({
        "image_processor_type": "BitImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": size * 256 / 224},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": size, "width": size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": true
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ModelError::format(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// temp file in the same directory → write → fsync → rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::io(path, e));
    }
    Ok(())
}
