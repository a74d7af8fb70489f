//! Read-only access to the tensors of one or more safetensors files, memory-mapped, or of a PyTorch
//! `.pth`/`.pt` checkpoint (DINOv2's native release format; read by `pytorch-reader`, no PyTorch).
//!
//! Headers are parsed once; a tensor's bytes are read straight out of the mapping and converted to f32
//! (F32, BF16 and F16 storage) into the one buffer that becomes the model parameter — no intermediate
//! copy of the file. Sharded HF checkpoints (`model.safetensors.index.json`) open every shard the index
//! names; a key is looked up in the shard the index assigns it to.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    offsets: (usize, usize),
}

pub struct TensorStore {
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
    /// Tensors of a `.pth` file (lazy: read on demand); empty for safetensors stores.
    pth: BTreeMap<String, pytorch_reader::Tensor>,
    pth_path: PathBuf,
}

impl TensorStore {
    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_files(&[path.to_path_buf()])
    }

    /// Opens several safetensors files as one store; a key present in two files is an error.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut entries = BTreeMap::new();
        for path in paths {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the mapping is read-only; a checkpoint modified while we read it is outside our
            // contract, as for every mmap-based loader (safetensors, burn-store, candle).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                ModelError::format(path, format!("not a valid safetensors file: {e}"))
            })?;
            let shard = shards.len();
            for (name, info) in meta.tensors() {
                let entry = TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    shard,
                    offsets: info.data_offsets,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::format(
                        path,
                        format!("tensor `{name}` appears in more than one file"),
                    ));
                }
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
            });
        }
        Ok(TensorStore {
            shards,
            entries,
            pth: BTreeMap::new(),
            pth_path: PathBuf::new(),
        })
    }

    /// Opens a PyTorch checkpoint (`torch.save` of a state dict, or of a dict holding one under
    /// `top_level_key`, e.g. `"teacher"` or `"model"`). Only float tensors are exposed.
    pub fn open_pth(path: &Path, top_level_key: Option<&str>) -> Result<Self> {
        let reader = match top_level_key {
            Some(k) => pytorch_reader::PytorchReader::with_top_level_key(path, k),
            None => pytorch_reader::PytorchReader::new(path),
        }
        .map_err(|e| ModelError::format(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let pth = reader
            .into_tensors()
            .into_iter()
            .filter(|(_, t)| {
                matches!(
                    t.dtype(),
                    pytorch_reader::DType::F32
                        | pytorch_reader::DType::F16
                        | pytorch_reader::DType::BF16
                )
            })
            .collect();
        Ok(TensorStore {
            shards: Vec::new(),
            entries: BTreeMap::new(),
            pth,
            pth_path: path.to_path_buf(),
        })
    }

    /// Opens `path` by its extension: `.pth`/`.pt` as PyTorch, anything else as safetensors.
    pub fn open_any(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("pth" | "pt") => Self::open_pth(path, None),
            _ => Self::open_file(path),
        }
    }

    /// Opens an HF model directory: `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`.
    pub fn open_hf_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&index, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::format(&index, "missing object `weight_map`"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            files.sort();
            files.dedup();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            let store = Self::open_files(&paths)?;
            for (key, file) in map {
                let Some(entry) = store.entries.get(key) else {
                    return Err(ModelError::format(
                        &index,
                        format!("`{key}` is listed in {file} but not found there"),
                    ));
                };
                let actual = &store.shards[entry.shard].path;
                if actual.file_name().and_then(|n| n.to_str()) != file.as_str() {
                    return Err(ModelError::format(
                        &index,
                        format!(
                            "`{key}` is listed in {file} but stored in {}",
                            actual.display()
                        ),
                    ));
                }
            }
            Ok(store)
        } else if single.is_file() {
            Self::open_file(&single)
        } else {
            Err(ModelError::format(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ))
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries
            .keys()
            .chain(self.pth.keys())
            .map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key) || self.pth.contains_key(key)
    }

    pub fn entry(&self, key: &str) -> Option<&TensorEntry> {
        self.entries.get(key)
    }

    /// The tensor's values as f32 (row-major) and its shape.
    pub fn read_f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        if let Some(t) = self.pth.get(key) {
            return self.read_pth(key, t);
        }
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| ModelError::MissingTensor {
                name: key.to_owned(),
                looked_for: key.to_owned(),
            })?;
        let shard = &self.shards[entry.shard];
        let bytes = shard
            .mmap
            .get(shard.data_start + entry.offsets.0..shard.data_start + entry.offsets.1)
            .ok_or_else(|| {
                ModelError::format(
                    &shard.path,
                    format!("tensor `{key}` points past the end of the file"),
                )
            })?;
        let numel: usize = entry.shape.iter().product();
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    key: key.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if values.len() != numel {
            return Err(ModelError::format(
                &shard.path,
                format!(
                    "tensor `{key}` has {} values for shape {:?}",
                    values.len(),
                    entry.shape
                ),
            ));
        }
        Ok((entry.shape.clone(), values))
    }

    fn read_pth(&self, key: &str, t: &pytorch_reader::Tensor) -> Result<(Vec<usize>, Vec<f32>)> {
        let bytes = t.read().map_err(|e| ModelError::io(&self.pth_path, e))?;
        // pytorch-reader returns native-endian bytes; every supported target is little-endian.
        let values: Vec<f32> = match t.dtype() {
            pytorch_reader::DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            pytorch_reader::DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
            pytorch_reader::DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    key: key.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if values.len() != t.num_elements() {
            return Err(ModelError::format(
                &self.pth_path,
                format!(
                    "tensor `{key}` has {} values for shape {:?}",
                    values.len(),
                    t.shape()
                ),
            ));
        }
        Ok((t.shape().to_vec(), values))
    }
}
