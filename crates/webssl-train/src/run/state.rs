//! What every trainer (DINO, MAE, CLIP) keeps beside its tensors: the checkpoint's JSON part and the
//! recipe and data identities that make a resume refuse a different run.
//!
//! Resume is exact because a checkpoint holds the parameters, the optimizer moments and the loader
//! cursor, while schedules and random streams are functions of `(seed, step)`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webssl_data::loader::LoaderCursor;
use webssl_data::sampler::fnv1a64;
use webssl_data::shards::ShardIndex;
use webssl_models::checkpoint::store::TensorStore;
use webssl_models::params::NamedTensor;

use crate::error::{Result, TrainError};
use crate::run::checkpoint::CheckpointManager;

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
            shards_hash: format!("{:016x}", fnv1a64(text.as_bytes())),
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
    format!("{:016x}", fnv1a64(text.as_bytes()))
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
}
