//! Config sections every objective shares (`[data]`, `[run]`, `[eval]`), so DINO, MAE and CLIP read
//! the same shard stream and write the same run directory layout. Each trainer's config embeds them
//! unchanged; only the default run dir differs (set by the presets).

use std::path::Path;

use serde::{Deserialize, Serialize};

use webssl_data::loader::{LoaderConfig, TarShards};
use webssl_data::sampler::SamplerConfig;
use webssl_models::Precision;

use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::run::config::check;
use crate::run::state::DataIdentity;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Shard directory with `index.json` (relative paths are relative to the working directory).
    pub train: String,
    /// Images per optimizer step on this process.
    pub batch_size: usize,
    #[serde(default = "default_workers")]
    pub num_workers: usize,
    #[serde(default = "default_shuffle")]
    pub shuffle_buffer: usize,
    /// Decode/augment threads (0 = all cores).
    #[serde(default)]
    pub decode_threads: usize,
    /// Generate synthetic data into `train` first when it does not exist (the built-in default data).
    #[serde(default)]
    pub synth: Option<SynthSpec>,
    /// The dataset's name in reports (`webssl report`'s data column; e.g. `full`, `light`, `heavy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl DataConfig {
    /// Range checks of every field; `min_batch` is the objective's smallest batch (`why`: the
    /// reason, e.g. KoLeo's nearest neighbour).
    pub fn validate(&self, min_batch: u64, why: &str) -> Result<()> {
        if (self.batch_size as u64) < min_batch {
            return Err(TrainError::config(
                "data.batch_size",
                format!("must be ≥ {min_batch} ({why}), got {}", self.batch_size),
            ));
        }
        check::int(
            "data.batch_size",
            self.batch_size as u64,
            1,
            check::MAX_BATCH,
        )?;
        // Each logical worker is a reader thread, each decode thread a thread.
        check::int("data.num_workers", self.num_workers as u64, 1, 1024)?;
        check::int("data.decode_threads", self.decode_threads as u64, 0, 1024)?;
        check::int(
            "data.shuffle_buffer",
            self.shuffle_buffer as u64,
            0,
            1 << 24,
        )?;
        if let Some(spec) = &self.synth {
            spec.validate("data.synth")?;
        }
        Ok(())
    }

    /// dinov2 drops the last incomplete batch of an epoch (`drop_last=True`), so a data set smaller
    /// than one global batch yields no step at all: refused, naming both numbers.
    pub fn check_dataset_size(&self, samples: u64, world_size: usize) -> Result<()> {
        let global = (self.batch_size * world_size) as u64;
        if samples < global {
            return Err(TrainError::config(
                "data.batch_size",
                format!(
                    "a global batch of {global} ({} × {world_size} process(es)) is larger than the {samples} samples of {}",
                    self.batch_size, self.train
                ),
            ));
        }
        Ok(())
    }

    /// The sample order: a function of the run seed and these fields only, never of the objective,
    /// so DINO, MAE and CLIP runs with the same seed and `[data]` read the identical stream.
    pub fn sampler(&self, seed: u64, rank: usize, world_size: usize) -> SamplerConfig {
        SamplerConfig {
            seed,
            rank,
            world_size,
            num_workers: self.num_workers,
            shuffle_buffer: self.shuffle_buffer,
            shuffle_shards: true,
        }
    }

    /// Batch size and decode threads for the loader.
    pub fn loader(&self) -> LoaderConfig {
        let mut l = LoaderConfig::new(self.batch_size);
        if self.decode_threads > 0 {
            l.decode_threads = self.decode_threads;
        }
        l
    }

    /// Creates the synthetic data when configured and missing, then opens the shards and returns
    /// them with their identity.
    pub fn open_train(&self) -> Result<(TarShards, DataIdentity)> {
        let dir = Path::new(&self.train);
        ensure_synth(dir, self.synth.as_ref(), "train")?;
        Ok((TarShards::open(dir)?, DataIdentity::of(dir)?))
    }

    /// [`DataConfig::open_train`] where only rank 0 may generate the built-in data: the others wait
    /// (without a time limit: generating can take long) and then open the same shards. Every rank
    /// must see the same shard list.
    pub fn open_train_ranked(&self, dist: &Dist) -> Result<(TarShards, DataIdentity)> {
        let dir = Path::new(&self.train);
        // Generating can take long: the others wait without the collective time limit.
        dist.on_main("prepare the training data", true, || {
            ensure_synth(dir, self.synth.as_ref(), "train")
        })?;
        let shards = TarShards::open(dir)?;
        let data = DataIdentity::of(dir)?;
        dist.check_same("the training shard list", data.shards_hash.as_bytes())?;
        Ok((shards, data))
    }
}

/// Arguments of `webssl synth` for the built-in data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSpec {
    pub samples: usize,
    pub size: u32,
    pub seed: u64,
    #[serde(default = "default_mix")]
    pub mix: String,
}

impl SynthSpec {
    /// Range checks, the fields named under `section` (`data.synth.size`).
    pub fn validate(&self, section: &str) -> Result<()> {
        check::int(
            &format!("{section}.samples"),
            self.samples as u64,
            1,
            1 << 32,
        )?;
        let size = &format!("{section}.size");
        let range = webssl_data::synth::SIZE_RANGE;
        check::int(
            size,
            self.size as u64,
            *range.start() as u64,
            *range.end() as u64,
        )?;
        webssl_data::synth::Mix::parse(&self.mix)
            .map_err(|e| TrainError::config(format!("{section}.mix"), e.to_string()))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run directory (config, metrics, events, checkpoints, export).
    pub dir: String,
    pub checkpoint_every_steps: u64,
    pub keep_last: usize,
    /// Export the teacher backbone in HF layout every N steps (and always at the end); 0 = only at the end.
    pub export_every_steps: u64,
    pub tensorboard: bool,
    /// ZeRO-1 on several processes: each rank keeps the AdamW moments of 1/N of the parameters
    /// (`crate::zero`). Changes where the update is computed, not the update, so a run may switch it
    /// between resumes. DINO, MAE and CLIP alike (`crate::run::driver`).
    pub shard_optimizer_state: bool,
    /// `f32`, or `bf16`: the model's matrix products in bf16 with f32 master weights, optimizer,
    /// normalisations and losses (`webssl_models::precision`) — for GPUs; on the CPU bf16 products
    /// are emulated and slower. Like ZeRO-1 a way of computing the same recipe: checkpoints are f32
    /// either way and a run may switch it between resumes.
    pub precision: Precision,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            dir: "runs/dino".into(),
            checkpoint_every_steps: 1000,
            keep_last: 3,
            export_every_steps: 0,
            tensorboard: true,
            shard_optimizer_state: false,
            precision: Precision::F32,
        }
    }
}

/// kNN on a held-out labelled set at the end of training, for the trained teacher and for the same
/// architecture at initialisation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Labelled shards to use as the kNN memory bank; none = no evaluation.
    pub knn_train: Option<String>,
    pub knn_val: Option<String>,
    /// Synthetic data to create for these when missing.
    pub knn_train_synth: Option<SynthSpec>,
    pub knn_val_synth: Option<SynthSpec>,
}

impl EvalConfig {
    /// Range checks of the synthetic kNN sets' specs.
    pub fn validate(&self) -> Result<()> {
        if let Some(spec) = &self.knn_train_synth {
            spec.validate("eval.knn_train_synth")?;
        }
        if let Some(spec) = &self.knn_val_synth {
            spec.validate("eval.knn_val_synth")?;
        }
        Ok(())
    }
}

fn default_workers() -> usize {
    2
}
fn default_shuffle() -> usize {
    1000
}
fn default_mix() -> String {
    "full".into()
}

/// Creates the built-in synthetic data when a configured path is missing.
pub fn ensure_synth(path: &Path, spec: Option<&SynthSpec>, split: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        // `--set eval.knn_train=` would otherwise write shards into the working directory.
        return Err(TrainError::config(
            split,
            "the data path is empty; give a directory",
        ));
    }
    if path.join(webssl_data::shards::INDEX_FILE).is_file() {
        return Ok(());
    }
    let Some(spec) = spec else {
        return Err(TrainError::config(
            "data.train",
            format!(
                "{} has no index.json and no synth spec is configured",
                path.display()
            ),
        ));
    };
    let cfg = webssl_data::synth::SynthConfig {
        size: spec.size,
        seed: spec.seed,
        mix: webssl_data::synth::Mix::parse(&spec.mix)?,
    };
    cfg.validate()?;
    tracing::info!(
        "generating {} synthetic samples ({}px, seed {}, mix {}) into {}",
        spec.samples,
        spec.size,
        spec.seed,
        spec.mix,
        path.display()
    );
    let limits = webssl_data::shards::ShardLimits {
        max_samples: Some(500),
        max_bytes: None,
    };
    webssl_data::synth::write_shards(path, &cfg, spec.samples as u64, split, limits, &mut |_| {})?;
    Ok(())
}
