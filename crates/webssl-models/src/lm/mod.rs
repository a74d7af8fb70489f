//! Decoder-only language models for the MLLM probe (docs/reference/evaluation.md: VQA through a
//! connector and an LLM): the Llama family (Llama 2/3/3.1, SmolLM2) and Qwen2 as one burn module
//! ([`CausalLm`]), loaded from an HF directory (single or sharded safetensors, f32/bf16/f16,
//! memory-mapped through `checkpoint::store`) or a GGUF file ([`gguf`]), with the tokenizer, the
//! chat template ([`chat`]) and greedy decoding with a KV cache ([`generate`]).
//!
//! Parity: logits within 1e-4 (relative) of transformers on random-weight fixtures of both flavours
//! and on SmolLM2-135M-Instruct (Q4_1 GGUF), greedy ids equal (`tests/lm_parity.rs`).

pub mod chat;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod tokenizer;

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

pub use chat::{ChatTemplate, Message};
pub use config::{LmConfig, LmFlavour, RopeScaling};
pub use generate::{greedy_generate, greedy_generate_embeds};
pub use llama::{CausalLm, KvCache};
pub use tokenizer::Tokenizer;

use crate::checkpoint::store::TensorStore;
use crate::error::{ModelError, Result};
use crate::params::PathStack;

/// A model with what it needs to talk: its tokenizer and (when the checkpoint has a recognised
/// one) its chat template.
pub struct LoadedLm {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    /// `None` when the checkpoint has no chat template or one [`ChatTemplate::detect`] does not
    /// know (pick one with [`ChatTemplate::by_name`]).
    pub chat: Option<ChatTemplate>,
}

/// Loads an HF model directory (`config.json`, `model.safetensors` or its sharded index,
/// `tokenizer.json`, optionally `tokenizer_config.json` / `chat_template.jinja` /
/// `generation_config.json`) or a `.gguf` file.
pub fn load_lm(path: &Path, device: &Device) -> Result<LoadedLm> {
    if path.is_dir() {
        load_hf_dir(path, device)
    } else if path.is_file() {
        load_gguf(path, device)
    } else {
        Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist"),
        ))
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn load_hf_dir(dir: &Path, device: &Device) -> Result<LoadedLm> {
    let config_path = dir.join("config.json");
    let cfg = LmConfig::from_hf_json(&read_json(&config_path)?).map_err(|e| match e {
        ModelError::Config { field, reason } => ModelError::Config {
            field: format!("{}: {field}", config_path.display()),
            reason,
        },
        other => other,
    })?;
    let store = TensorStore::open_hf_dir(dir)?;
    let mut used = BTreeSet::new();
    let model = fill(CausalLm::zeros(&cfg, device)?, device, |name| {
        used.insert(name.to_owned());
        store.read_f32(name)
    })?;
    let unexpected: Vec<String> = store
        .keys()
        .filter(|k| !used.contains(*k))
        // A tied head may be saved anyway; old checkpoints keep RoPE buffers.
        .filter(|k| !(cfg.tie_word_embeddings && *k == "lm_head.weight"))
        .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
        .map(str::to_owned)
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::Unexpected { keys: unexpected });
    }

    let tok_path = dir.join("tokenizer.json");
    let inner = Tokenizer::from_file(&tok_path)?;
    let tok_cfg_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tok_cfg_path.is_file() {
        read_json(&tok_cfg_path)?
    } else {
        serde_json::Value::Null
    };
    let gen_path = dir.join("generation_config.json");
    let mut eos_ids = cfg.eos_token_id.clone();
    if gen_path.is_file() {
        eos_ids.extend(config::id_list(read_json(&gen_path)?.get("eos_token_id")));
    }
    if let Some(id) = token_str(tok_cfg.get("eos_token")).and_then(|t| inner.token_to_id(&t)) {
        eos_ids.push(id);
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let bos_token = token_str(tok_cfg.get("bos_token"))
        .or_else(|| cfg.bos_token_id.and_then(|id| inner.id_to_token(id)));
    // transformers v5 writes the template to `chat_template.jinja`; v4 into the tokenizer config
    // (a string, or a list of named templates of which `default` is used).
    let jinja_path = dir.join("chat_template.jinja");
    let jinja = if jinja_path.is_file() {
        Some(std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?)
    } else {
        match tok_cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        }
    };
    let chat = jinja.and_then(|j| ChatTemplate::detect(&j, bos_token.as_deref().unwrap_or("")));
    Ok(LoadedLm {
        model,
        tokenizer: Tokenizer::new(inner, bos_token, eos_ids),
        chat,
    })
}

fn load_gguf(path: &Path, device: &Device) -> Result<LoadedLm> {
    let file = gguf::GgufFile::open(path)?;
    let cfg = file.lm_config()?;
    let mut used = BTreeSet::new();
    let model = fill(CausalLm::zeros(&cfg, device)?, device, |name| {
        let (gguf_name, shape, values) = file.read_hf(name, &cfg)?;
        used.insert(gguf_name);
        Ok((shape, values))
    })?;
    let unexpected: Vec<String> = file
        .tensors
        .keys()
        .filter(|k| !used.contains(*k) && *k != "rope_freqs.weight")
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::Unexpected { keys: unexpected });
    }

    let model_kind = file.get_str("tokenizer.ggml.model")?;
    if model_kind != "gpt2" {
        return Err(ModelError::format(
            path,
            format!(
                "tokenizer.ggml.model `{model_kind}` is not supported (only gpt2, byte-level BPE)"
            ),
        ));
    }
    let tokens = file.get_strings("tokenizer.ggml.tokens")?;
    let merges = file.get_strings("tokenizer.ggml.merges")?;
    let types = file
        .get_ints("tokenizer.ggml.token_type")
        .unwrap_or_default();
    let add_bos = matches!(
        file.metadata.get("tokenizer.ggml.add_bos_token"),
        Some(gguf::Value::Bool(true))
    );
    let inner =
        Tokenizer::from_gguf_bpe(path, &tokens, &merges, &types, cfg.bos_token_id, add_bos)?;
    let bos_token = cfg
        .bos_token_id
        .and_then(|id| tokens.get(id as usize).cloned());
    let chat = file
        .get_str("tokenizer.chat_template")
        .ok()
        .and_then(|j| ChatTemplate::detect(j, bos_token.as_deref().unwrap_or("")));
    Ok(LoadedLm {
        tokenizer: Tokenizer::new(inner, bos_token, cfg.eos_token_id.clone()),
        model,
        chat,
    })
}

/// Replaces every parameter of `model` by `fetch(hf_name)` (PyTorch layout: `nn.Linear` weights
/// `[out, in]`, transposed here to burn's `[in, out]`), checking shapes and finiteness; every
/// problem is reported, the first returned.
fn fill(
    model: CausalLm,
    device: &Device,
    fetch: impl FnMut(&str) -> Result<(Vec<usize>, Vec<f32>)>,
) -> Result<CausalLm> {
    struct Filler<F> {
        fetch: F,
        path: PathStack,
        errors: Vec<ModelError>,
        device: Device,
    }
    impl<F: FnMut(&str) -> Result<(Vec<usize>, Vec<f32>)>> Filler<F> {
        fn read(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
            let (shape, values) = (self.fetch)(name)?;
            let bad = values.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                return Err(ModelError::NonFinite {
                    key: name.to_owned(),
                    count: bad,
                    total: values.len(),
                });
            }
            let linear = expected.len() == 2 && name != "model.embed_tokens.weight";
            let torch_shape: Vec<usize> = if linear {
                vec![expected[1], expected[0]]
            } else {
                expected.to_vec()
            };
            if shape != torch_shape {
                return Err(ModelError::Shape {
                    name: name.to_owned(),
                    key: name.to_owned(),
                    expected: torch_shape,
                    found: shape,
                });
            }
            if !linear {
                return Ok(values);
            }
            let (out, inp) = (shape[0], shape[1]);
            let mut t = vec![0f32; values.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = values[o * inp + i];
                }
            }
            Ok(t)
        }
    }
    impl<F: FnMut(&str) -> Result<(Vec<usize>, Vec<f32>)>> ModuleMapper for Filler<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.path.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = self.path.path();
            let (id, tensor, mapper) = param.consume();
            let expected = tensor.dims().to_vec();
            match self.read(&name, &expected) {
                Ok(values) => {
                    let t = Tensor::<D>::from_data(
                        TensorData::new(values, tensor.shape()),
                        &self.device,
                    );
                    Param::from_mapped_value(id, t, mapper)
                }
                Err(e) => {
                    self.errors.push(e);
                    Param::from_mapped_value(id, tensor, mapper)
                }
            }
        }
    }
    let mut filler = Filler {
        fetch,
        path: PathStack::default(),
        errors: Vec::new(),
        device: device.clone(),
    };
    let model = model.map(&mut filler);
    match filler.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(model),
    }
}
