//! GGUF files (llama.cpp's format, versions 2 and 3), memory-mapped: the header, the metadata
//! key/values, the tensor infos and the aligned data section; F32, F16, BF16, Q8_0, Q4_0 and Q4_1
//! tensors dequantized to f32 on load.
//!
//! Reference: ggml `docs/gguf.md` (layout) and `ggml-quants.c` `dequantize_row_q{8_0,4_0,4_1}`
//! (blocks of 32 values along the innermost dimension: an f16 scale `d` (and minimum `m` for Q4_1)
//! then the quants; `x = d·q` for Q8_0, `d·(q − 8)` for Q4_0 with value `j` in the low nibble of
//! byte `j` and value `j + 16` in its high nibble, `d·q + m` for Q4_1). Dimensions are stored
//! innermost first, so a PyTorch `[out, in]` weight is `ne = [in, out]` with the same bytes.
//!
//! For the Llama architecture, llama.cpp's converter permutes the rows of `attn_q`/`attn_k` into the
//! interleaved RoPE layout; [`GgufFile::read_hf`] reverses it as transformers' GGUF loader does
//! (`reverse_permute_weights`), so the tensors come back in the HF layout [`super::CausalLm`] uses.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::config::{LmConfig, LmFlavour, RopeScaling};
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// u64 values above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(v) => u64::try_from(v).ok(),
            Value::UInt(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Int(v) => Some(v as f64),
            Value::UInt(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    /// (values per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order (innermost first).
    pub ne: Vec<usize>,
    pub dtype: GgmlType,
    offset: usize,
}

impl TensorInfo {
    /// The PyTorch (row-major) shape.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated GGUF: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A length or count, bounded by what the rest of the file could hold (`min_item` bytes each).
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated GGUF: {what} is {n} at offset {}, more than the {left} bytes left",
                    self.pos - 8
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ModelError::format(self.path, format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let int = |b: &[u8]| -> i64 {
            match b.len() {
                1 => b[0] as i64,
                2 => u16::from_le_bytes([b[0], b[1]]) as i64,
                _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            }
        };
        Ok(match ty {
            0 => Value::Int(int(self.take(1, key)?)),
            1 => Value::Int(self.take(1, key)?[0] as i8 as i64),
            2 => Value::Int(int(self.take(2, key)?)),
            3 => Value::Int(i16::from_le_bytes(self.take(2, key)?.try_into().unwrap()) as i64),
            4 => Value::Int(int(self.take(4, key)?)),
            5 => Value::Int(i32::from_le_bytes(self.take(4, key)?.try_into().unwrap()) as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4, key)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1, key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let item = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => {
                let v = self.u64(key)?;
                i64::try_from(v).map_or(Value::UInt(v), Value::Int)
            }
            11 => Value::Int(self.u64(key)? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8, key)?.try_into().unwrap())),
            other => {
                return Err(ModelError::format(
                    self.path,
                    format!("metadata `{key}` has unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file (tensor data stays mapped until read).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping; see `checkpoint::store`.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        let magic = c.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(ModelError::format(
                path,
                format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                path,
                format!("GGUF version {version} is not supported (2 or 3)"),
            ));
        }
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(ModelError::format(
                    path,
                    format!("tensor `{name}` has {n_dims} dimensions (1 to 4 expected)"),
                ));
            }
            let ne = (0..n_dims)
                .map(|_| c.u64(&name).map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let type_id = c.u32(&name)?;
            let dtype = GgmlType::from_id(type_id).ok_or_else(|| {
                ModelError::format(
                    path,
                    format!(
                        "tensor `{name}` has ggml type {type_id}, which is not supported \
                         (F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
                    ),
                )
            })?;
            let offset = c.u64(&name)? as usize;
            infos.push((name, TensorInfo { ne, dtype, offset }));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                ModelError::format(path, "general.alignment is not a power of two")
            })? as usize,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, info) in infos {
            let numel = info
                .ne
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(usize::MAX);
            let (per, bytes) = info.dtype.block();
            if !info.ne[0].is_multiple_of(per) {
                return Err(ModelError::format(
                    path,
                    format!(
                        "tensor `{name}`: innermost dimension {} is not a multiple of the {:?} block of {per}",
                        info.ne[0], info.dtype
                    ),
                ));
            }
            let end = numel
                .checked_div(per)
                .and_then(|b| b.checked_mul(bytes))
                .and_then(|n| n.checked_add(data_start + info.offset));
            if end.is_none_or(|e| e > mmap.len()) {
                return Err(ModelError::format(
                    path,
                    format!(
                        "truncated GGUF: tensor `{name}` ({:?}, shape {:?}) ends past the end of the file ({} bytes)",
                        info.dtype,
                        info.shape(),
                        mmap.len()
                    ),
                ));
            }
            if tensors.insert(name.clone(), info).is_some() {
                return Err(ModelError::format(
                    path,
                    format!("tensor `{name}` appears twice"),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::format(
            &self.path,
            format!("metadata `{key}` is missing or mistyped"),
        )
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.metadata
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key))
    }

    /// A string array (`tokenizer.ggml.tokens`, `merges`).
    pub fn get_strings(&self, key: &str) -> Result<Vec<String>> {
        match self.metadata.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.missing(key))
                })
                .collect(),
            _ => Err(self.missing(key)),
        }
    }

    /// An integer array (`tokenizer.ggml.token_type`).
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>> {
        match self.metadata.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    _ => Err(self.missing(key)),
                })
                .collect(),
            _ => Err(self.missing(key)),
        }
    }

    /// A tensor dequantized to f32, with its PyTorch shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                looked_for: format!("{name} in {}", self.path.display()),
            })?;
        let numel: usize = info.ne.iter().product();
        let (per, bytes) = info.dtype.block();
        let start = self.data_start + info.offset;
        // Bounds were checked at open.
        let data = &self.mmap[start..start + numel / per * bytes];
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut out = Vec::with_capacity(numel);
        match info.dtype {
            GgmlType::F32 => out.extend(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            GgmlType::F16 => out.extend(data.chunks_exact(2).map(f16)),
            GgmlType::BF16 => out.extend(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            GgmlType::Q8_0 => {
                for b in data.chunks_exact(34) {
                    let d = f16(b);
                    out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
                }
            }
            GgmlType::Q4_0 => {
                for b in data.chunks_exact(18) {
                    let d = f16(b);
                    let qs = &b[2..];
                    out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
                }
            }
            GgmlType::Q4_1 => {
                for b in data.chunks_exact(20) {
                    let (d, m) = (f16(b), f16(&b[2..]));
                    let qs = &b[4..];
                    out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
                }
            }
        }
        Ok((info.shape(), out))
    }

    /// The architecture (`general.architecture`) as a flavour.
    pub fn flavour(&self) -> Result<LmFlavour> {
        match self.get_str("general.architecture")? {
            "llama" => Ok(LmFlavour::Llama),
            "qwen2" => Ok(LmFlavour::Qwen2),
            other => Err(ModelError::format(
                &self.path,
                format!("architecture `{other}` is not supported (llama or qwen2)"),
            )),
        }
    }

    /// The model config from the metadata (transformers' `GGUF_CONFIG_MAPPING`), the tied head
    /// from the absence of `output.weight`, Llama 3.1's RoPE scaling from `rope_freqs.weight`.
    pub fn lm_config(&self) -> Result<LmConfig> {
        let flavour = self.flavour()?;
        let arch = self.get_str("general.architecture")?;
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| self.get_u64(&key(k)).map(|v| v as usize);
        let f = |k: &str| self.metadata.get(&key(k)).and_then(Value::as_f64);
        if let Some(kind) = self
            .metadata
            .get(&key("rope.scaling.type"))
            .and_then(Value::as_str)
            .filter(|k| *k != "none")
        {
            return Err(ModelError::format(
                &self.path,
                format!("{arch}.rope.scaling.type `{kind}` is not supported"),
            ));
        }
        let hidden_size = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let vocab_size = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => self.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = u("rope.dimension_count").unwrap_or(hidden_size / heads.max(1));
        let rope_scaling = if self.tensors.contains_key("rope_freqs.weight") {
            let (_, factors) = self.read_f32("rope_freqs.weight")?;
            Some(RopeScaling::FreqFactors { factors })
        } else {
            None
        };
        let eos = self.get_u64("tokenizer.ggml.eos_token_id").ok();
        let cfg = LmConfig {
            flavour,
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: u("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: u("context_length").unwrap_or(2048),
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            attention_bias: flavour == LmFlavour::Qwen2
                || self.tensors.contains_key("blk.0.attn_q.bias"),
            bos_token_id: self
                .get_u64("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as u32),
            eos_token_id: eos.map(|v| vec![v as u32]).unwrap_or_default(),
        };
        cfg.validate().map_err(|e| match e {
            ModelError::Config { field, reason } => ModelError::Config {
                field: format!("{}: {field}", self.path.display()),
                reason,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The llama.cpp name of an HF parameter name (transformers' `GGUF_TENSOR_MAPPING`).
    pub fn gguf_name(hf: &str) -> Option<String> {
        if let Some(rest) = hf.strip_prefix("model.layers.") {
            let (layer, rest) = rest.split_once('.')?;
            let (module, suffix) = rest.rsplit_once('.')?;
            let g = match module {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            return Some(format!("blk.{layer}.{g}.{suffix}"));
        }
        Some(
            match hf {
                "model.embed_tokens.weight" => "token_embd.weight",
                "model.norm.weight" => "output_norm.weight",
                "lm_head.weight" => "output.weight",
                _ => return None,
            }
            .to_owned(),
        )
    }

    /// The tensor for HF parameter `hf` (PyTorch layout), with llama.cpp's q/k row permutation
    /// undone for the Llama architecture. Returns the GGUF name it read.
    pub fn read_hf(&self, hf: &str, cfg: &LmConfig) -> Result<(String, Vec<usize>, Vec<f32>)> {
        let name = Self::gguf_name(hf).ok_or_else(|| ModelError::MissingTensor {
            name: hf.to_owned(),
            looked_for: "a llama.cpp tensor name".into(),
        })?;
        let (shape, mut values) = self.read_f32(&name)?;
        let heads = if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
            Some(cfg.num_attention_heads)
        } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        };
        if let (LmFlavour::Llama, Some(n_head)) = (cfg.flavour, heads) {
            values = unpermute_rows(&values, &shape, n_head).ok_or_else(|| {
                ModelError::format(
                    &self.path,
                    format!("tensor `{name}` of shape {shape:?} does not split into {n_head} heads of even size"),
                )
            })?;
        }
        Ok((name, shape, values))
    }
}

/// transformers' `reverse_permute_weights`: rows viewed as `[n_head, dim, 2]` → `[n_head, 2, dim]`.
fn unpermute_rows(values: &[f32], shape: &[usize], n_head: usize) -> Option<Vec<f32>> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return None;
    }
    let dim = rows / n_head / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_head {
        for a in 0..dim {
            for b in 0..2 {
                let src = h * 2 * dim + a * 2 + b;
                let dst = h * 2 * dim + b * dim + a;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}
