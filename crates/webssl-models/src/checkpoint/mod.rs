//! Checkpoint I/O: loading HF (`Dinov2Model`, `Dinov2WithRegistersModel`, `ViTModel`) and DINOv2/timm
//! native checkpoints into a [`Vit`], and exporting a [`Vit`] back to the HF layout.
//!
//! Loading walks the model's parameters by name (burn's `ModuleMapper` with the module path), asks the
//! key map where each lives in the checkpoint, converts PyTorch layouts (`nn.Linear` `[out, in]` →
//! burn `[in, out]`; `Conv2d` patch weights `[D, C, p, p]` → `[C·p·p, D]`) and checks every shape.
//! Every problem is collected and reported together, naming the tensor, the key, expected and found
//! shapes; checkpoint tensors that nothing consumed are an error unless they are known heads/poolers.

pub mod export;
pub mod keymap;
pub mod store;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{PosInterp, VitConfig};
use crate::error::{ModelError, Result};
use crate::params::{self, NamedTensor, PathStack};
use crate::vit::Vit;
use keymap::Layout;
use store::TensorStore;

/// A backbone loaded from disk, with what the directory said about preprocessing.
pub struct LoadedModel {
    pub model: Vit,
    pub layout: Layout,
    /// `preprocessor_config.json`, when the directory has one.
    pub preprocessor: Option<serde_json::Value>,
    /// Checkpoint tensors deliberately not loaded (heads, poolers, decoders).
    pub ignored: Vec<String>,
}

/// Loads a backbone from `path`:
/// - an HF model directory (`config.json` + `model.safetensors` or sharded index): `arch` may be
///   `None` (the config decides) and must agree with it otherwise;
/// - a native DINOv2/timm checkpoint — a `.pth`/`.pt` file as released (`torch.save` of the state
///   dict, FSDP-chunked block names allowed), a safetensors file, or a directory holding a
///   `model.safetensors` without `config.json`: `arch` is required (native checkpoints carry no
///   config) and position embeddings are resampled the DINOv2 way.
pub fn load(path: &Path, arch: Option<&VitConfig>, device: &Device) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist"),
        ));
    }
    let config_path = path.join("config.json");
    if path.is_dir() && config_path.is_file() {
        let config = read_json(&config_path)?;
        let mut cfg = VitConfig::from_hf_json(&config).map_err(|e| match e {
            ModelError::Config { field, reason } => ModelError::Config {
                field: format!("{}: {field}", config_path.display()),
                reason,
            },
            other => other,
        })?;
        if let Some(arch) = arch {
            // An explicit architecture may only change how we run the model, not its shapes.
            let mut want = arch.clone();
            want.pos_interp = cfg.pos_interp;
            want.flavour = cfg.flavour;
            if want != cfg {
                return Err(ModelError::config(
                    "arch",
                    format!(
                        "{} describes {cfg:?}, but --arch asks for {arch:?}",
                        config_path.display()
                    ),
                ));
            }
            cfg.pos_interp = arch.pos_interp;
        }
        let store = TensorStore::open_hf_dir(path)?;
        let preprocessor_path = path.join("preprocessor_config.json");
        let preprocessor = if preprocessor_path.is_file() {
            Some(read_json(&preprocessor_path)?)
        } else {
            None
        };
        let layout = Layout::hf_for(cfg.flavour);
        let (model, ignored) = load_from_store(&cfg, &store, layout, device)?;
        Ok(LoadedModel {
            model,
            layout,
            preprocessor,
            ignored,
        })
    } else {
        let file = native_file(path)?;
        let cfg = arch.ok_or_else(|| {
            ModelError::config(
                "arch",
                format!(
                    "{} is a native checkpoint without config.json; name the architecture (--arch)",
                    path.display()
                ),
            )
        })?;
        let mut cfg = cfg.clone();
        if let PosInterp::Size | PosInterp::SizeAntialias = cfg.pos_interp {
            cfg.pos_interp = PosInterp::Dinov2 {
                offset: 0.1,
                antialias: false,
            };
        }
        let store = TensorStore::open_any(&file)?;
        let (model, ignored) = load_from_store(&cfg, &store, Layout::Native, device)?;
        Ok(LoadedModel {
            model,
            layout: Layout::Native,
            preprocessor: None,
            ignored,
        })
    }
}

fn native_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(single);
    }
    Err(ModelError::format(
        path,
        "no config.json (HF layout) and no model.safetensors (native layout) found",
    ))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// Builds a model of `cfg` and fills every parameter from `store`.
pub fn load_from_store(
    cfg: &VitConfig,
    store: &TensorStore,
    layout: Layout,
    device: &Device,
) -> Result<(Vit, Vec<String>)> {
    cfg.validate()?;
    cfg.check_fits_in_memory(1)?;
    // Native keys may be chunked or prefixed: resolve our names through the normalised spelling.
    let native_alias: std::collections::BTreeMap<String, String> = if layout == Layout::Native {
        store
            .keys()
            .map(|k| (keymap::normalize_native_key(k), k.to_owned()))
            .collect()
    } else {
        Default::default()
    };
    let model = Vit::new(cfg, device);
    let mut loader = Loader {
        store,
        layout,
        native_alias: &native_alias,
        path: PathStack::default(),
        used: BTreeSet::new(),
        errors: Vec::new(),
        device: device.clone(),
    };
    let model = model.map(&mut loader);
    if let Some(first) = loader.errors.into_iter().next() {
        return Err(first);
    }
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for key in store.keys() {
        if loader.used.contains(key) {
            continue;
        }
        let normalized = keymap::normalize_native_key(key);
        if keymap::is_ignorable(&normalized)
            || (!cfg.mask_token && normalized.ends_with("mask_token"))
        {
            ignored.push(key.to_owned());
        } else {
            unexpected.push(key.to_owned());
        }
    }
    if !unexpected.is_empty() {
        return Err(ModelError::Unexpected { keys: unexpected });
    }
    if !ignored.is_empty() {
        tracing::info!(
            "not loaded (not part of the backbone): {}",
            ignored.join(", ")
        );
    }
    Ok((model, ignored))
}

struct Loader<'a> {
    store: &'a TensorStore,
    layout: Layout,
    native_alias: &'a std::collections::BTreeMap<String, String>,
    path: PathStack,
    used: BTreeSet<String>,
    errors: Vec<ModelError>,
    device: Device,
}

impl Loader<'_> {
    /// Reads our parameter `name` (burn layout, shape `expected`) from the checkpoint.
    fn fetch(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let alternatives: Vec<Vec<String>> = match self.layout {
            Layout::Native => vec![vec![
                self.native_alias
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.to_owned()),
            ]],
            layout => keymap::sources(name, layout),
        };
        let Some(keys) = alternatives
            .iter()
            .find(|keys| keys.iter().all(|k| self.store.contains(k)))
        else {
            let looked_for = alternatives
                .iter()
                .map(|a| a.join(" + "))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(ModelError::MissingTensor {
                name: name.to_owned(),
                looked_for,
            });
        };
        // Concatenate along dim 0 (PyTorch layout), then convert to ours.
        let mut shape: Vec<usize> = Vec::new();
        let mut values = Vec::new();
        for key in keys {
            let (s, v) = self.store.read_f32(key)?;
            // A NaN or ±inf weight makes every feature NaN; one pass over values just read from
            // disk costs little next to the read.
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                return Err(ModelError::NonFinite {
                    key: key.clone(),
                    count: bad,
                    total: v.len(),
                });
            }
            if shape.is_empty() {
                shape = s;
            } else if s.len() != shape.len() || s[1..] != shape[1..] {
                return Err(ModelError::Shape {
                    name: name.to_owned(),
                    key: key.clone(),
                    expected: shape,
                    found: s,
                });
            } else {
                shape[0] += s[0];
            }
            values.extend_from_slice(&v);
            self.used.insert(key.clone());
        }
        let key = keys.join(" + ");
        let is_linear = expected.len() == 2 && name.ends_with(".weight");
        if is_linear {
            // PyTorch [out, in] (or a Conv2d [out, C, p, p]) -> burn [in, out].
            let out = *shape.first().unwrap_or(&0);
            let inp: usize = shape.iter().skip(1).product();
            if [inp, out] != expected || shape.len() < 2 {
                return Err(ModelError::Shape {
                    name: name.to_owned(),
                    key,
                    expected: vec![expected[1], expected[0]],
                    found: shape,
                });
            }
            let mut t = vec![0f32; values.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = values[o * inp + i];
                }
            }
            Ok(t)
        } else if shape != expected {
            // Tolerate the one benign spelling difference: HF mask_token is [1, D] as ours, native [1, D]
            // too, but some exports squeeze it to [D].
            if shape.iter().product::<usize>() == expected.iter().product::<usize>()
                && name.ends_with("mask_token")
            {
                Ok(values)
            } else {
                Err(ModelError::Shape {
                    name: name.to_owned(),
                    key,
                    expected: expected.to_vec(),
                    found: shape,
                })
            }
        } else {
            Ok(values)
        }
    }
}

impl ModuleMapper for Loader<'_> {
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
        match self.fetch(&name, &expected) {
            Ok(values) => {
                let loaded =
                    Tensor::<D>::from_data(TensorData::new(values, tensor.shape()), &self.device);
                Param::from_mapped_value(id, loaded, mapper)
            }
            Err(e) => {
                self.errors.push(e);
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// Every float parameter of a module with its dotted path, in declaration order.
pub fn named_parameters<M: Module>(module: &M) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    params::visit(module, |path, p| {
        out.push((path.to_owned(), p.shape(), params::to_host(p.value())))
    });
    out
}

/// Replaces every float parameter of `module` by `read(dotted_path, shape)` (row-major values of
/// that shape, or an error); the gradient requirement of each replaced parameter is kept. Every
/// parameter is tried and the first error returned.
pub fn replace_params<M: Module>(
    module: M,
    device: &Device,
    read: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
) -> Result<M> {
    struct Replace<F> {
        read: F,
        path: PathStack,
        errors: Vec<ModelError>,
        device: Device,
    }
    impl<F: FnMut(&str, &[usize]) -> Result<Vec<f32>>> ModuleMapper for Replace<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.path.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = self.path.path();
            let (id, tensor, mapper) = param.consume();
            match (self.read)(&name, &tensor.dims()) {
                Ok(values) => {
                    let t = Tensor::<D>::from_data(
                        TensorData::new(values, tensor.shape()),
                        &self.device,
                    );
                    // Keep the gradient requirement of the parameter being replaced.
                    let t = if tensor.is_require_grad() {
                        t.require_grad()
                    } else {
                        t
                    };
                    Param::from_mapped_value(id, t, mapper)
                }
                Err(e) => {
                    self.errors.push(e);
                    Param::from_mapped_value(id, tensor, mapper)
                }
            }
        }
    }
    let mut r = Replace {
        read,
        path: PathStack::default(),
        errors: Vec::new(),
        device: device.clone(),
    };
    let module = module.map(&mut r);
    match r.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Replaces every float parameter of `module` by the tensor of the same dotted path in `store`
/// (burn layout, as written from [`named_parameters`]); used for training checkpoints, where names and
/// layouts are our own. Every missing tensor, shape mismatch and unused tensor is an error.
pub fn assign_named_parameters<M: Module>(
    module: M,
    store: &TensorStore,
    device: &Device,
) -> Result<M> {
    let mut used = BTreeSet::new();
    let module = replace_params(module, device, |name, expected| {
        let (shape, values) = store.read_f32(name)?;
        if shape != expected {
            return Err(ModelError::Shape {
                name: name.to_owned(),
                key: name.to_owned(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        used.insert(name.to_owned());
        Ok(values)
    })?;
    let unexpected: Vec<String> = store
        .keys()
        .filter(|k| !used.contains(*k))
        .map(str::to_owned)
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::Unexpected { keys: unexpected });
    }
    Ok(module)
}
