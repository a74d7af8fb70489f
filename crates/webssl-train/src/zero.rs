//! ZeRO stage 1 (Rajbhandari et al., 2020): the AdamW moments — two f32 copies of the parameters, the
//! largest part of the training state — are sharded over the ranks. Each parameter has one owner rank;
//! a rank steps only the parameters it owns (so it creates and keeps moments for those alone), then
//! every parameter is copied from its owner to all ranks. Weights, gradients (averaged over all ranks
//! before, as without sharding) and the EMA teacher stay replicated; the update is the same as without
//! sharding, only where it is computed changes.
//!
//! Ownership is decided once from the parameter list, identically on every rank: parameters in module
//! order, each to the rank with the fewest elements so far (balanced to within one parameter).
//!
//! The copy from owners is one broadcast per parameter from its owner (host memory: one parameter at
//! a time).
//! Checkpoints stay in the unsharded format: at a checkpoint every rank sends its moments to rank 0,
//! which writes them all ([`gather_optimizer_state`]); on resume each rank loads the file and keeps its
//! share — so a sharded run can resume unsharded and the other way round.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use webssl_models::params::{NamedTensor, ParamSlot, PathStack, to_host};

use crate::clip_grad::ParamGrads;
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::optim::OptimizerSet;

/// Which rank owns each parameter, keyed `<sub-module>/<parameter path>` (the optimizer's state keys).
#[derive(Debug, Clone)]
pub struct ZeroShards {
    rank: usize,
    owners: HashMap<String, usize>,
}

fn key(part: &str, path: &str) -> String {
    format!("{part}/{path}")
}

impl ZeroShards {
    /// Owners for the parameters of every sub-module (`(name, trainable_params(module))`).
    pub fn new(parts: &[(&str, Vec<ParamSlot>)], dist: &Dist) -> Self {
        let mut load = vec![0usize; dist.world_size()];
        let mut owners = HashMap::new();
        for (part, params) in parts {
            for (path, shape, _) in params {
                let n: usize = shape.iter().product();
                let r = (0..load.len())
                    .min_by_key(|&r| (load[r], r))
                    .expect("a world has at least one rank");
                load[r] += n;
                owners.insert(key(part, path), r);
            }
        }
        ZeroShards {
            rank: dist.rank(),
            owners,
        }
    }

    /// Whether this rank owns `path` of sub-module `part`.
    pub fn owns(&self, part: &str, path: &str) -> bool {
        self.owners.get(&key(part, path)) == Some(&self.rank)
    }

    /// Drops the gradients of the parameters other ranks own: the optimizer then steps (and keeps
    /// moments for) this rank's share only.
    pub fn keep_owned(&self, part: &str, grads: &mut ParamGrads) {
        grads.retain(|path| self.owns(part, path));
    }

    /// Drops optimizer state of parameters other ranks own (after loading a full checkpoint).
    pub fn retain_owned(&self, opt: &mut OptimizerSet) {
        opt.retain(|key| {
            // `<part>/<path>` as in the owners map
            self.owners.get(key).is_none_or(|&r| r == self.rank)
        });
    }

    /// Every parameter of sub-module `part` from its owner, on every rank: one broadcast per
    /// parameter from its owner, so the host copy alive at any time is that of one parameter.
    pub fn sync<M: Module>(&self, part: &str, module: M, dist: &Dist) -> M {
        if dist.world_size() == 1 {
            return module;
        }
        struct Sync<'a> {
            shards: &'a ZeroShards,
            part: &'a str,
            dist: &'a Dist,
            path: PathStack,
        }
        impl ModuleMapper for Sync<'_> {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.path.enter(name, container_type);
            }
            fn exit_module(&mut self, _name: &str, container_type: &str) {
                self.path.exit(container_type);
            }
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                if !param.is_require_grad() {
                    return param;
                }
                let owner = self.shards.owners[&key(self.part, &self.path.path())];
                let (id, tensor, mapper) = param.consume();
                let n = tensor.dims().iter().product();
                if owner == self.shards.rank {
                    let mut values = to_host(tensor.clone().inner().reshape([n]));
                    self.dist
                        .broadcast_f32("ZeRO parameter sync", &mut values, owner);
                    return Param::from_mapped_value(id, tensor, mapper);
                }
                let mut values = vec![0f32; n];
                self.dist
                    .broadcast_f32("ZeRO parameter sync", &mut values, owner);
                let t = Tensor::<D>::from_data(
                    TensorData::new(values, tensor.shape()),
                    &tensor.device(),
                )
                .require_grad();
                Param::from_mapped_value(id, t, mapper)
            }
        }
        module.map(&mut Sync {
            shards: self,
            part,
            dist,
            path: PathStack::default(),
        })
    }
}

/// The whole optimizer state on rank 0 (for its checkpoint), `None` on the other ranks. Sharded
/// (`zero`): every rank sends its share and rank 0 merges them; otherwise rank 0's own state is whole.
pub fn gather_optimizer_state(
    opt: &OptimizerSet,
    zero: Option<&ZeroShards>,
    dist: &Dist,
) -> Result<Option<Vec<NamedTensor>>> {
    if zero.is_none() || dist.world_size() == 1 {
        return Ok(dist.is_main().then(|| opt.state_tensors()));
    }
    let mine = opt.state_tensors();
    let bytes = webssl_models::checkpoint::export::safetensors_bytes(&mine, &[])
        .map_err(TrainError::Distributed)?;
    let Some(all) = dist.gather_bytes_to_main("optimizer state", &bytes) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (r, b) in all.iter().enumerate() {
        let st = safetensors::SafeTensors::deserialize(b).map_err(|e| {
            TrainError::Distributed(format!("rank {r} sent unreadable optimizer state: {e}"))
        })?;
        for (name, view) in st.tensors() {
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.push((name, view.shape().to_vec(), values));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TrainError::Distributed(format!(
            "optimizer state `{}` came from two ranks: the ranks disagree on the ZeRO-1 owners",
            w[0].0
        )));
    }
    Ok(Some(out))
}
