//! What every trainer (DINO, MAE, CLIP) keeps beside its tensors: the checkpoint's JSON part, the
//! recipe and data identities that make a resume refuse a different run, and the set of AdamW
//! optimizers (one per sub-module) with their prefixed state.
//!
//! Resume is exact because a checkpoint holds the parameters, the optimizer moments and the loader
//! cursor, while schedules and random streams are functions of `(seed, step)`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webssl_data::loader::LoaderCursor;
use webssl_data::shards::ShardIndex;
use webssl_models::checkpoint::store::TensorStore;

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::run::checkpoint::CheckpointManager;

/// One tensor of a checkpoint: name, shape, f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// What a finished (or resumed-and-finished) run leaves behind.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    /// The image backbone in HF layout (the DINO teacher, the MAE encoder, the CLIP image tower).
    pub export_dir: PathBuf,
    /// Steps completed by the end of this call.
    pub steps: u64,
    pub resumed_from: Option<u64>,
}

/// The data a run trains on, by content: the shard list of `index.json` (file, samples, bytes) hashed.
/// Two runs with the same identity, seed and batch size read the identical sample stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// FNV-1a 64 of the shard list, hex.
    pub shards_hash: String,
    pub shards: usize,
    pub samples: u64,
}

impl DataIdentity {
    /// The identity of the shards listed in `index`.
    pub fn of(index: &ShardIndex) -> Self {
        let mut text = String::new();
        for s in &index.shards {
            text.push_str(&format!("{}\t{}\t{}\n", s.file, s.samples, s.bytes));
        }
        DataIdentity {
            shards_hash: format!("{:016x}", fnv1a(text.as_bytes())),
            shards: index.shards.len(),
            samples: index.shards.iter().map(|s| s.samples).sum(),
        }
    }
}

/// The JSON part of a checkpoint (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateMeta {
    /// Steps completed.
    pub step: u64,
    pub loader: LoaderCursor,
    pub world_size: usize,
    /// [`recipe_hash`] of the resolved config.
    pub recipe: String,
    /// The training data; absent in checkpoints written before it was recorded.
    #[serde(default)]
    pub data: Option<DataIdentity>,
    /// Images consumed so far, all ranks.
    #[serde(default)]
    pub samples_seen: u64,
    /// The loader cursors of ranks 1, 2, … (rank 0's is `loader`); empty for one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_loaders: Vec<LoaderCursor>,
}

impl StateMeta {
    /// Reads `state.json` of a checkpoint and refuses one that belongs to a different run: another
    /// world size, recipe or training data.
    pub fn load_checked(
        dir: &Path,
        world_size: usize,
        recipe: &str,
        data: &DataIdentity,
    ) -> Result<Self> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let meta: StateMeta =
            serde_json::from_slice(&CheckpointManager::load_file(dir, "state.json")?)
                .map_err(|e| bad(format!("state.json: {e}")))?;
        if meta.world_size != world_size {
            return Err(bad(format!(
                "written with world size {}, this run has {world_size}: a run resumes only on the same \
                 number of processes (each rank's data cursor and sample split belong to that world \
                 size); start it with {} or use a new run dir",
                meta.world_size,
                if meta.world_size == 1 {
                    "one process".to_string()
                } else {
                    format!("`webssl launch --nproc {}`", meta.world_size)
                }
            )));
        }
        if meta.recipe != recipe {
            return Err(bad("the checkpoint was trained with a different recipe (config outside [run]/[eval] changed); use a new run dir or --resume never".into()));
        }
        if let Some(d) = &meta.data
            && d != data
        {
            return Err(bad(format!(
                "the training shards changed since this checkpoint (shard list hash {} → {}, {} → {} samples); use a new run dir",
                d.shards_hash, data.shards_hash, d.samples, data.samples
            )));
        }
        Ok(meta)
    }

    /// The loader cursor of `rank`.
    pub fn loader_of(&self, rank: usize, dir: &Path) -> Result<LoaderCursor> {
        match rank {
            0 => Ok(self.loader.clone()),
            r => self
                .rank_loaders
                .get(r - 1)
                .cloned()
                .ok_or_else(|| TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    reason: format!("state.json has no loader cursor for rank {r}"),
                }),
        }
    }

    /// Collects every rank's loader cursor into `loader` + `rank_loaders` (a collective: every rank
    /// calls it; the result is complete on all of them).
    pub fn gather_loaders(&mut self, dist: &crate::dist::Dist) -> Result<()> {
        if dist.world_size() == 1 {
            return Ok(());
        }
        let mine = serde_json::to_vec(&self.loader).expect("serialisable");
        let all = dist.all_gather_bytes("loader cursors", &mine);
        let mut cursors = all
            .iter()
            .map(|b| serde_json::from_slice::<LoaderCursor>(b))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                TrainError::Distributed(format!("a rank sent a bad loader cursor: {e}"))
            })?;
        self.loader = cursors.remove(0);
        self.rank_loaders = cursors;
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialisable")
    }
}

/// A stable hash of the resolved config without the `[run]` and `[eval]` tables (which may change
/// between a run and its resume).
pub fn recipe_hash(resolved: &toml::Table) -> String {
    let mut t = resolved.clone();
    t.remove("run");
    t.remove("eval");
    let text = toml::to_string(&t).unwrap_or_default();
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// FNV-1a 64: stable across platforms and Rust versions (std's hasher is not).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Every tensor of a store as f32.
pub fn read_all(store: &TensorStore) -> Result<Vec<NamedTensor>> {
    store
        .keys()
        .map(|k| {
            store
                .read_f32(k)
                .map(|(s, v)| (k.to_owned(), s, v))
                .map_err(TrainError::from)
        })
        .collect()
}

/// Serialises tensors to safetensors bytes for [`CheckpointManager::save`].
pub fn tensors_bytes(ckpts: &CheckpointManager, tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    webssl_models::checkpoint::export::safetensors_bytes(tensors, &[]).map_err(|reason| {
        TrainError::Checkpoint {
            path: ckpts.dir().to_path_buf(),
            reason,
        }
    })
}

/// One AdamW per trained sub-module (as gradient clipping is per sub-module); state keys are
/// `<sub-module>/<parameter path>.<moment>` in the checkpoint.
pub struct OptimizerSet {
    parts: Vec<(&'static str, AdamW)>,
}

impl OptimizerSet {
    pub fn new(names: &[&'static str], betas: (f64, f64), eps: f64) -> Self {
        OptimizerSet {
            parts: names
                .iter()
                .map(|&n| (n, AdamW::new(betas.0, betas.1, eps)))
                .collect(),
        }
    }

    /// The optimizer of sub-module `name`.
    ///
    /// # Panics
    /// If `name` was not given to [`OptimizerSet::new`] (a programming error).
    pub fn get(&mut self, name: &str) -> &mut AdamW {
        self.parts
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no optimizer for sub-module `{name}`"))
    }

    pub fn state_tensors(&self) -> Vec<NamedTensor> {
        self.parts
            .iter()
            .flat_map(|(prefix, o)| {
                o.state_tensors()
                    .into_iter()
                    .map(move |(k, s, v)| (format!("{prefix}/{k}"), s, v))
            })
            .collect()
    }

    /// Parameters with optimizer state (moments), over all sub-modules.
    pub fn num_states(&self) -> usize {
        self.parts.iter().map(|(_, o)| o.num_states()).sum()
    }

    /// Keeps the state of the parameters `keep("<sub-module>/<path>")` accepts (ZeRO-1 sharding).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        for (prefix, o) in &mut self.parts {
            o.retain(|path| keep(&format!("{prefix}/{path}")));
        }
    }

    pub fn load(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        for (prefix, o) in &mut self.parts {
            let p = format!("{prefix}/");
            let mine: Vec<NamedTensor> = tensors
                .iter()
                .filter_map(|(k, s, v)| {
                    k.strip_prefix(&p)
                        .map(|k| (k.to_owned(), s.clone(), v.clone()))
                })
                .collect();
            o.load_state_tensors(&mine)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_ignores_run_and_eval() {
        let a: toml::Table = toml::from_str("seed = 1\n[run]\ndir = 'a'\n[eval]\nx = 1").unwrap();
        let b: toml::Table = toml::from_str("seed = 1\n[run]\ndir = 'b'").unwrap();
        let c: toml::Table = toml::from_str("seed = 2\n[run]\ndir = 'a'").unwrap();
        assert_eq!(recipe_hash(&a), recipe_hash(&b));
        assert_ne!(recipe_hash(&a), recipe_hash(&c));
    }

    #[test]
    fn optimizer_state_routes_by_prefix() {
        let mut set = OptimizerSet::new(&["encoder", "decoder"], (0.9, 0.95), 1e-8);
        let entry = |k: &str, v: Vec<f32>| (k.to_string(), vec![v.len()], v);
        let tensors = vec![
            entry("decoder/w.exp_avg", vec![1.0]),
            entry("decoder/w.exp_avg_sq", vec![2.0]),
            entry("decoder/w.step", vec![7.0, 0.0]),
        ];
        set.load(&tensors).unwrap();
        assert_eq!(set.get("decoder").param_step("w"), 7);
        assert_eq!(set.get("encoder").num_states(), 0);
        assert_eq!(set.state_tensors(), tensors);
        // A broken entry is reported, not dropped.
        assert!(set.load(&tensors[..2]).is_err());
    }
}
