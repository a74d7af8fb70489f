//! The DINOv2 projection head (`DINOHead`), used for the DINO image-level objective and, shared or as a
//! separate copy, for the iBOT masked-patch objective.
//!
//! Reference: `facebookresearch/dinov2` (commit b8931f7b) `dinov2/layers/dino_head.py`;
//! `reference/training-algorithms.md` §3.
//!
//! ```text
//! h      = Linear(in, hidden) → GELU → [Linear(hidden, hidden) → GELU]×(nlayers−2) → Linear(hidden, bottleneck)
//! z      = h / max(‖h‖₂, 1e-12)
//! logits = z · Wᵀ,   W_k = g_k · v_k / ‖v_k‖₂      (weight-normalised prototypes, no bias)
//! ```
//!
//! `g` is trainable (DINOv2 has no `norm_last_layer` switch, unlike DINO v1). Both `g` and `v` live under
//! the `last_layer` path so the optimizer can freeze the prototypes by name during the first epoch.
//!
//! Initialisation as dinov2: MLP weights truncated normal std 0.02 (cut at ±2 absolute), biases 0;
//! `v` keeps PyTorch's default `nn.Linear` init, kaiming-uniform with a = √5, i.e. U(±1/√bottleneck);
//! `g` = 1. All init values come from one explicit ChaCha8 stream seeded by the caller, never from
//! burn's global RNG, so a head is reproducible from `(config, seed)`.
//!
//! Deviations: the MLP is a `Vec<Linear>` (`mlp.0`, `mlp.1`, `mlp.2`) while PyTorch's `nn.Sequential`
//! interleaves GELUs (`mlp.0`, `mlp.2`, `mlp.4`); [`DinoHead::from_torch_store`] and
//! [`DinoHead::torch_tensors`] translate to and from PyTorch state-dict names and layouts (released
//! dinov2 / Web-DINO teacher checkpoints with heads). burn's `Linear` stores weights as `[in, out]`
//! (PyTorch: `[out, in]`), while [`WeightNormLinear::weight_v`] keeps PyTorch's `[K, bottleneck]` layout because the norm is per
//! prototype row. The L2-normalisation eps is the fp32 one (1e-12); dinov2 switches to 1e-6 only for fp16
//! activations, and the head is meant to run in f32 here. `use_bn` (always false in dinov2) is not offered.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::store::TensorStore;
use crate::error::{ModelError, Result};
use crate::precision;

/// Shape of a [`DinoHead`]. dinov2 defaults: hidden 2048, bottleneck 256, 3 layers, K = 65,536
/// (`vitl14`/`vitg14`: K = 131,072 with bottleneck 384 for DINO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DinoHeadConfig {
    /// Backbone embedding dimension D.
    pub in_dim: usize,
    /// Number of prototypes K.
    pub out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    /// Number of linear layers in the MLP (at least 1; 1 = a single `in → bottleneck` map).
    pub nlayers: usize,
}

impl DinoHeadConfig {
    /// dinov2's defaults (hidden 2048, bottleneck 256, 3 layers) for the given input dim and K.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            nlayers: 3,
        }
    }

    /// Number of trainable scalars (MLP weights and biases, `g` and `v`).
    pub fn num_params(&self) -> usize {
        self.mlp_dims()
            .iter()
            .map(|&(i, o)| i * o + o)
            .sum::<usize>()
            + self.out_dim * (self.bottleneck_dim + 1)
    }

    /// `(in, out)` of each MLP linear, in order.
    fn mlp_dims(&self) -> Vec<(usize, usize)> {
        let n = self.nlayers.max(1);
        if n == 1 {
            return vec![(self.in_dim, self.bottleneck_dim)];
        }
        let mut dims = vec![(self.in_dim, self.hidden_dim)];
        dims.extend((0..n - 2).map(|_| (self.hidden_dim, self.hidden_dim)));
        dims.push((self.hidden_dim, self.bottleneck_dim));
        dims
    }
}

/// A bias-free linear map with weight normalisation (`torch.nn.utils.weight_norm`, dim 0):
/// `W = g · v / ‖v‖` with the norm taken per output row.
#[derive(Module, Debug)]
pub struct WeightNormLinear {
    /// Per-prototype scale, `[K, 1]` (PyTorch's `weight_g`).
    pub weight_g: Param<Tensor<2>>,
    /// Prototype directions, `[K, bottleneck]` (PyTorch layout, PyTorch's `weight_v`).
    pub weight_v: Param<Tensor<2>>,
}

impl WeightNormLinear {
    /// The effective weight `g · v / ‖v‖`, `[K, bottleneck]`. PyTorch adds no eps to the norm; neither
    /// do we (a zero prototype row is a broken checkpoint, not a case to smooth over).
    pub fn weight(&self) -> Tensor<2> {
        let v = self.weight_v.val();
        let norm = v.clone().square().sum_dim(1).sqrt();
        v * (self.weight_g.val() / norm)
    }

    /// # Shapes
    /// `[..., bottleneck]` → `[..., K]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // The weight normalisation in f32, the product under the current precision.
        precision::linear_weight(x, self.weight().transpose(), None)
    }
}

/// DINOv2 projection head; see the module docs.
#[derive(Module, Debug)]
pub struct DinoHead {
    pub mlp: Vec<Linear>,
    pub last_layer: WeightNormLinear,
}

impl DinoHead {
    /// A freshly initialised head (dinov2 init, see the module docs) from an explicit seed.
    pub fn new(cfg: &DinoHeadConfig, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mlp = cfg
            .mlp_dims()
            .into_iter()
            .map(|(i, o)| {
                let w: Vec<f32> = (0..i * o)
                    .map(|_| trunc_normal(&mut rng, 0.02, 2.0))
                    .collect();
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(w, [i, o]),
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::zeros([o], device))),
                }
            })
            .collect();
        let (k, bn) = (cfg.out_dim, cfg.bottleneck_dim);
        let bound = 1.0 / (bn as f64).sqrt();
        let v: Vec<f32> = (0..k * bn)
            .map(|_| ((2.0 * uniform01(&mut rng) - 1.0) * bound) as f32)
            .collect();
        let last_layer = WeightNormLinear {
            weight_g: Param::from_tensor(Tensor::ones([k, 1], device)),
            weight_v: Param::from_tensor(Tensor::from_data(TensorData::new(v, [k, bn]), device)),
        };
        Self { mlp, last_layer }
    }

    /// # Shapes
    /// `[..., in_dim]` → `[..., K]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let z = self.bottleneck(x);
        self.last_layer.forward(z)
    }

    /// The L2-normalised bottleneck features `z` (before the prototypes).
    ///
    /// # Shapes
    /// `[..., in_dim]` → `[..., bottleneck]`
    pub fn bottleneck<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let n = self.mlp.len();
        let mut h = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            // Linear + GELU fused on CPU (see `crate::kernels`), the last layer plain.
            h = if i + 1 < n {
                crate::kernels::linear_gelu(h, layer)
            } else {
                precision::linear(h, layer)
            };
        }
        // F.normalize: x / max(‖x‖, eps), eps = 1e-12 for fp32 activations.
        let norm = h.clone().square().sum_dim(D - 1).sqrt().clamp_min(1e-12);
        h / norm
    }
}

impl DinoHead {
    /// Loads a head from PyTorch `DINOHead` state-dict tensors stored under `prefix` (e.g.
    /// `"dino_head."`, `"teacher.ibot_head."`, or `""`), inferring the config from the shapes.
    ///
    /// Accepts the `nn.Sequential` keys `mlp.{0,2,4,…}.{weight,bias}` (or `mlp.{weight,bias}` for a
    /// one-layer head, where dinov2 uses a bare `nn.Linear`), biases optional (`mlp_bias = False`), and
    /// both weight-norm namings: `last_layer.weight_{g,v}` (`torch.nn.utils.weight_norm`, dinov2's) and
    /// `last_layer.parametrizations.weight.original{0,1}` (the parametrizations version).
    pub fn from_torch_store(
        store: &TensorStore,
        prefix: &str,
        device: &Device,
    ) -> Result<(Self, DinoHeadConfig)> {
        let read = |key: &str| store.read_f32(&format!("{prefix}{key}"));
        let mut names: Vec<String> = Vec::new();
        if store.contains(&format!("{prefix}mlp.weight")) {
            names.push("mlp".into());
        } else {
            while store.contains(&format!("{prefix}mlp.{}.weight", 2 * names.len())) {
                names.push(format!("mlp.{}", 2 * names.len()));
            }
        }
        if names.is_empty() {
            return Err(ModelError::MissingTensor {
                name: format!("{prefix}mlp"),
                looked_for: format!("{prefix}mlp.0.weight, {prefix}mlp.weight"),
            });
        }
        let mut mlp = Vec::with_capacity(names.len());
        let mut dims: Vec<(usize, usize)> = Vec::new();
        for name in &names {
            let key = format!("{name}.weight");
            let (shape, w) = read(&key)?;
            let (out, inp) = match shape[..] {
                [o, i] => (o, i),
                _ => return Err(shape_err(prefix, &key, vec![0, 0], shape)),
            };
            if let Some(&(_, prev_out)) = dims.last()
                && prev_out != inp
            {
                return Err(shape_err(prefix, &key, vec![out, prev_out], shape));
            }
            dims.push((inp, out));
            let bias_key = format!("{prefix}{name}.bias");
            let bias = if store.contains(&bias_key) {
                let (bshape, b) = store.read_f32(&bias_key)?;
                if bshape != [out] {
                    return Err(shape_err(
                        prefix,
                        &format!("{name}.bias"),
                        vec![out],
                        bshape,
                    ));
                }
                Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(b, [out]),
                    device,
                )))
            } else {
                None
            };
            let w = transpose(&w, out, inp); // PyTorch [out, in] → burn [in, out]
            mlp.push(Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(w, [inp, out]),
                    device,
                )),
                bias,
            });
        }
        let bottleneck = dims[dims.len() - 1].1;
        let (g_key, v_key) = if store.contains(&format!("{prefix}last_layer.weight_g")) {
            ("last_layer.weight_g", "last_layer.weight_v")
        } else {
            (
                "last_layer.parametrizations.weight.original0",
                "last_layer.parametrizations.weight.original1",
            )
        };
        let (vshape, v) = read(v_key)?;
        let k = match vshape[..] {
            [k, b] if b == bottleneck => k,
            _ => return Err(shape_err(prefix, v_key, vec![0, bottleneck], vshape)),
        };
        let (gshape, g) = read(g_key)?;
        if gshape.iter().product::<usize>() != k || gshape.first() != Some(&k) {
            return Err(shape_err(prefix, g_key, vec![k, 1], gshape));
        }
        let cfg = DinoHeadConfig {
            in_dim: dims[0].0,
            out_dim: k,
            hidden_dim: if dims.len() > 1 { dims[0].1 } else { 0 },
            bottleneck_dim: bottleneck,
            nlayers: dims.len(),
        };
        let head = Self {
            mlp,
            last_layer: WeightNormLinear {
                weight_g: Param::from_tensor(Tensor::from_data(TensorData::new(g, [k, 1]), device)),
                weight_v: Param::from_tensor(Tensor::from_data(
                    TensorData::new(v, [k, bottleneck]),
                    device,
                )),
            },
        };
        Ok((head, cfg))
    }

    /// The head's tensors under PyTorch `DINOHead` names and layouts (`mlp.{2i}.weight` as `[out, in]`,
    /// `last_layer.weight_g` `[K, 1]`, `last_layer.weight_v` `[K, bottleneck]`), each prefixed.
    pub fn torch_tensors(&self, prefix: &str) -> Vec<crate::checkpoint::NamedTensor> {
        let mut out = Vec::new();
        let one = self.mlp.len() == 1;
        for (i, l) in self.mlp.iter().enumerate() {
            let name = if one {
                "mlp".to_string()
            } else {
                format!("mlp.{}", 2 * i)
            };
            let [inp, o] = l.weight.dims();
            let w = transpose(&host(l.weight.val()), inp, o);
            out.push((format!("{prefix}{name}.weight"), vec![o, inp], w));
            if let Some(b) = &l.bias {
                out.push((format!("{prefix}{name}.bias"), vec![o], host(b.val())));
            }
        }
        let ll = &self.last_layer;
        out.push((
            format!("{prefix}last_layer.weight_g"),
            ll.weight_g.dims().to_vec(),
            host(ll.weight_g.val()),
        ));
        out.push((
            format!("{prefix}last_layer.weight_v"),
            ll.weight_v.dims().to_vec(),
            host(ll.weight_v.val()),
        ));
        out
    }
}

fn shape_err(prefix: &str, key: &str, expected: Vec<usize>, found: Vec<usize>) -> ModelError {
    ModelError::Shape {
        name: format!("DINOHead {key}"),
        key: format!("{prefix}{key}"),
        expected,
        found,
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 after convert")
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Uniform in [0, 1) with 53 random bits.
fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Normal(0, std²) truncated to [−cut, cut] (absolute, as `torch.nn.init.trunc_normal_(a=-2, b=2)`),
/// by rejection on Box–Muller draws.
fn trunc_normal(rng: &mut ChaCha8Rng, std: f64, cut: f64) -> f32 {
    loop {
        // 1 − u ∈ (0, 1] keeps ln finite.
        let u1 = 1.0 - uniform01(rng);
        let u2 = uniform01(rng);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std;
        if z.abs() <= cut {
            return z as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn small() -> DinoHeadConfig {
        DinoHeadConfig {
            in_dim: 16,
            out_dim: 64,
            hidden_dim: 32,
            bottleneck_dim: 8,
            nlayers: 3,
        }
    }

    #[test]
    fn init_statistics_and_determinism() {
        let device = Device::flex();
        let cfg = DinoHeadConfig {
            in_dim: 64,
            out_dim: 512,
            hidden_dim: 128,
            bottleneck_dim: 32,
            nlayers: 3,
        };
        let a = DinoHead::new(&cfg, 7, &device);
        let b = DinoHead::new(&cfg, 7, &device);
        let c = DinoHead::new(&cfg, 8, &device);
        assert_eq!(a.mlp.len(), 3);
        assert_eq!(a.mlp[0].weight.dims(), [64, 128]);
        assert_eq!(a.mlp[1].weight.dims(), [128, 128]);
        assert_eq!(a.mlp[2].weight.dims(), [128, 32]);
        assert_eq!(a.last_layer.weight_v.dims(), [512, 32]);
        assert_eq!(a.last_layer.weight_g.dims(), [512, 1]);
        let wa = values(a.mlp[1].weight.val());
        assert_eq!(wa, values(b.mlp[1].weight.val()));
        assert_ne!(wa, values(c.mlp[1].weight.val()));
        // trunc-normal std 0.02, mean 0 (16384 draws: std error of the std ≈ 0.6%).
        let mean = wa.iter().map(|&x| x as f64).sum::<f64>() / wa.len() as f64;
        let std =
            (wa.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / wa.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((std - 0.02).abs() < 0.0006, "{std}");
        assert!(
            values(a.mlp[0].bias.as_ref().unwrap().val())
                .iter()
                .all(|&x| x == 0.0)
        );
        // v ~ U(±1/sqrt(32)): max close to the bound, variance bound²/3.
        let v = values(a.last_layer.weight_v.val());
        let bound = 1.0 / 32f64.sqrt();
        let max = v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        assert!(max <= bound && max > 0.99 * bound, "{max} vs {bound}");
        let var = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.03, "{var}");
        assert!(
            values(a.last_layer.weight_g.val())
                .iter()
                .all(|&x| x == 1.0)
        );
        assert_eq!(
            cfg.num_params(),
            64 * 128 + 128 + 128 * 128 + 128 + 128 * 32 + 32 + 512 * 33
        );
    }

    #[test]
    fn shapes_and_normalised_prototypes() {
        let device = Device::flex();
        let cfg = small();
        let head = DinoHead::new(&cfg, 0, &device);
        let x = Tensor::<3>::from_data(
            TensorData::new(
                (0..2 * 3 * 16)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
                    .collect(),
                [2, 3, 16],
            ),
            &device,
        );
        let z = head.bottleneck(x.clone());
        assert_eq!(z.dims(), [2, 3, 8]);
        for n in values(z.square().sum_dim(2)) {
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
        let y = head.forward(x);
        assert_eq!(y.dims(), [2, 3, 64]);
        // With g = 1 every prototype is a unit vector and z is one too: logits are cosines.
        assert!(values(y).iter().all(|&c| c.abs() <= 1.0 + 1e-5));
        for n in values(head.last_layer.weight().square().sum_dim(1)) {
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
    }

    #[test]
    fn one_layer_mlp() {
        let cfg = DinoHeadConfig {
            nlayers: 1,
            ..small()
        };
        let head = DinoHead::new(&cfg, 1, &Device::flex());
        assert_eq!(head.mlp.len(), 1);
        assert_eq!(head.mlp[0].weight.dims(), [16, 8]);
        assert_eq!(cfg.num_params(), 16 * 8 + 8 + 64 * 9);
    }

    #[test]
    fn torch_state_dict_round_trip() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        for (nlayers, renamed) in [(3, false), (1, false), (2, true)] {
            let cfg = DinoHeadConfig { nlayers, ..small() };
            let head = DinoHead::new(&cfg, 5, &device);
            let mut tensors = head.torch_tensors("teacher.dino_head.");
            if renamed {
                for t in &mut tensors {
                    t.0 = t.0.replace("weight_g", "parametrizations.weight.original0");
                    t.0 = t.0.replace("weight_v", "parametrizations.weight.original1");
                }
            }
            let path = dir.path().join(format!("head{nlayers}.safetensors"));
            crate::checkpoint::export::write_safetensors(&path, &tensors).unwrap();
            let store = TensorStore::open_file(&path).unwrap();
            let (back, back_cfg) =
                DinoHead::from_torch_store(&store, "teacher.dino_head.", &device).unwrap();
            let want_cfg = if nlayers == 1 {
                DinoHeadConfig {
                    hidden_dim: 0,
                    ..cfg.clone()
                }
            } else {
                cfg.clone()
            };
            assert_eq!(back_cfg, want_cfg);
            let x = Tensor::<2>::from_data(
                TensorData::new(
                    (0..3 * 16).map(|i| (i as f32 * 0.37).sin()).collect(),
                    [3, 16],
                ),
                &device,
            );
            assert_eq!(values(head.forward(x.clone())), values(back.forward(x)));
            assert!(DinoHead::from_torch_store(&store, "student.dino_head.", &device).is_err());
        }
        // a v that does not fit the bottleneck is a shape error naming the key
        let head = DinoHead::new(&small(), 5, &device);
        let mut tensors = head.torch_tensors("");
        let v = tensors
            .iter_mut()
            .find(|t| t.0 == "last_layer.weight_v")
            .unwrap();
        v.1 = vec![32, 16];
        let path = dir.path().join("bad.safetensors");
        crate::checkpoint::export::write_safetensors(&path, &tensors).unwrap();
        let err = DinoHead::from_torch_store(&TensorStore::open_file(&path).unwrap(), "", &device)
            .unwrap_err();
        assert!(err.to_string().contains("last_layer.weight_v"), "{err}");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let device = Device::flex().autodiff();
        let head = DinoHead::new(&small(), 3, &device);
        let x = Tensor::<2>::from_data(
            TensorData::new(
                (0..5 * 16)
                    .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5)
                    .collect(),
                [5, 16],
            ),
            &device,
        );
        let target = Tensor::<2>::from_data(
            TensorData::new((0..5 * 64).map(|i| (i % 5) as f32).collect(), [5, 64]),
            &device,
        );
        let loss = (head.forward(x) * target).sum();
        let grads = loss.backward();
        let mut checked = 0;
        let mut check = |name: &str, g: Option<Tensor<2>>| {
            let g = values(g.unwrap_or_else(|| panic!("{name}: no gradient")));
            assert!(g.iter().all(|x| x.is_finite()), "{name}");
            assert!(g.iter().any(|&x| x != 0.0), "{name}: all-zero gradient");
            checked += 1;
        };
        for (i, l) in head.mlp.iter().enumerate() {
            check(&format!("mlp.{i}.weight"), l.weight.grad(&grads));
            let b = l
                .bias
                .as_ref()
                .unwrap()
                .grad(&grads)
                .map(|b| b.unsqueeze::<2>());
            check(&format!("mlp.{i}.bias"), b);
        }
        check("last_layer.weight_g", head.last_layer.weight_g.grad(&grads));
        check("last_layer.weight_v", head.last_layer.weight_v.grad(&grads));
        assert_eq!(checked, 8);
    }
}
