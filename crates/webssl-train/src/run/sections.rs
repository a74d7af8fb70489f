//! Config sections every objective shares (`[data]`, `[model]`, `[run]`, `[eval]`), so DINO, MAE and
//! CLIP read the same shard stream, name their backbone the same way and write the same run
//! directory layout. Each trainer's config embeds them unchanged; only the default run dir differs
//! (set by the presets), and each objective refuses the `[model]` keys it does not take.

use std::path::Path;

use serde::{Deserialize, Serialize};

use webssl_data::loader::{LoaderConfig, TarShards};
use webssl_data::sampler::SamplerConfig;
use webssl_models::{Precision, VitConfig};

use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::run::config::check;
use crate::run::state::DataIdentity;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Shard directory: tar shards with an `index.json`, or tar shards alone (read by scanning them)
    /// (relative paths are relative to the working directory).
    pub train: String,
    /// Images per optimizer step on this process — or, with `global_batch_size`, the most images
    /// per forward (the memory bound of one forward).
    pub batch_size: usize,
    /// The recipe's batch per optimizer step over all processes (3072 for Web-DINO). When set, it is
    /// kept whatever the world size: each process takes `global_batch_size / world_size` images per
    /// step, in forwards of the largest divisor of that which is at most `batch_size`, summing their
    /// gradients (gradient accumulation, [`BatchLayout`]); unset, the global batch is `batch_size ×
    /// world_size` in one forward per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch_size: Option<usize>,
    #[serde(default = "default_workers")]
    pub num_workers: usize,
    #[serde(default = "default_shuffle")]
    pub shuffle_buffer: usize,
    /// Decode/augment threads (0 = all cores).
    #[serde(default)]
    pub decode_threads: usize,
    /// Generate synthetic data into `train` first when it is missing or an empty directory (the
    /// built-in default data); a directory holding anything else is never written to.
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
        if let Some(global) = self.global_batch_size {
            // Its split over the processes is checked where the world size is known (`layout`).
            check::int("data.global_batch_size", global as u64, 1, 1 << 24)?;
        }
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
        let layout = self.layout(world_size)?;
        let global = layout.global as u64;
        if samples < global {
            return Err(TrainError::config(
                layout.field(),
                format!(
                    "a global batch of {global} ({layout}) is larger than the {samples} samples of {}",
                    self.train
                ),
            ));
        }
        Ok(())
    }

    /// The batch per optimizer step over all processes: `global_batch_size`, or `batch_size ×
    /// world_size` without it (unchecked; [`DataConfig::layout`] checks).
    pub fn global_batch(&self, world_size: usize) -> usize {
        self.global_batch_size
            .unwrap_or(self.batch_size * world_size.max(1))
    }

    /// How a step's global batch splits over `world_size` processes and forwards; a global batch
    /// that does not divide evenly is refused, naming the fields.
    pub fn layout(&self, world_size: usize) -> Result<BatchLayout> {
        BatchLayout::new(self.global_batch_size, self.batch_size, world_size)
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

    /// Creates the synthetic data when configured and missing ([`ensure_synth`]), then opens the shards and returns
    /// them with their identity.
    pub fn open_train(&self) -> Result<(TarShards, DataIdentity)> {
        let dir = Path::new(&self.train);
        ensure_synth(dir, self.synth.as_ref(), "train")?;
        let shards = TarShards::open(dir)?;
        let data = DataIdentity::of(shards.index());
        Ok((shards, data))
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
        let data = DataIdentity::of(shards.index());
        dist.check_same("the training shard list", data.shards_hash.as_bytes())?;
        Ok((shards, data))
    }
}

/// One optimizer step's batch: `global` images = `world_size` processes × `accumulation` forwards
/// × `micro` images per forward. Objectives whose loss is a mean of per-image terms (MAE) take the
/// same step whatever the split; where a forward normalises over its own batch (DINO's
/// Sinkhorn-Knopp, centring, KoLeo; CLIP's negatives) the forward's batch is what the recipe's
/// per-GPU batch means (docs/distributed.md, "Global batch and gradient accumulation").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    pub global: usize,
    pub world_size: usize,
    /// Images per forward on one process (`data.batch_size`).
    pub micro: usize,
    /// Forwards per optimizer step on one process (1: no accumulation).
    pub accumulation: usize,
    /// Whether the global batch is fixed by `data.global_batch_size`.
    fixed: bool,
}

impl BatchLayout {
    /// The layout of `global` (None: `max_micro × world_size`, one forward) over `world_size`
    /// processes in forwards of at most `max_micro` images: the largest divisor of the per-process
    /// batch that is at most `max_micro`.
    pub fn new(global: Option<usize>, max_micro: usize, world_size: usize) -> Result<Self> {
        let world_size = world_size.max(1);
        let Some(global) = global else {
            return Ok(BatchLayout {
                global: max_micro * world_size,
                world_size,
                micro: max_micro,
                accumulation: 1,
                fixed: false,
            });
        };
        if global == 0 || !global.is_multiple_of(world_size) {
            return Err(TrainError::config(
                "data.global_batch_size",
                format!("{global} does not divide over {world_size} process(es)"),
            ));
        }
        let per_process = global / world_size;
        let micro = (1..=max_micro.min(per_process))
            .rev()
            .find(|m| per_process.is_multiple_of(*m))
            .ok_or_else(|| TrainError::config("data.batch_size", "must be at least 1"))?;
        Ok(BatchLayout {
            global,
            world_size,
            micro,
            accumulation: per_process / micro,
            fixed: true,
        })
    }

    /// Images per optimizer step on one process.
    pub fn per_process(&self) -> usize {
        self.micro * self.accumulation
    }

    /// The per-process batch for start-up lines: `32`, or `48 (4 forwards of 12)`.
    pub fn per_process_text(&self) -> String {
        match self.accumulation {
            1 => self.micro.to_string(),
            k => format!("{} ({k} forwards of {})", self.per_process(), self.micro),
        }
    }

    /// The config field that sets the global batch (for errors about it).
    pub fn field(&self) -> &'static str {
        if self.fixed {
            "data.global_batch_size"
        } else {
            "data.batch_size"
        }
    }

    /// The divisors of the per-process batch, largest first: the micro-batches this layout allows
    /// (for `--dry-run --gpu-memory`); only this one when the global batch is not fixed (another
    /// micro-batch would change it).
    pub fn micro_batches(&self) -> Vec<usize> {
        if !self.fixed {
            return vec![self.micro];
        }
        let p = self.per_process();
        (1..=p).rev().filter(|m| p.is_multiple_of(*m)).collect()
    }
}

/// `3072 = 64 process(es) × 4 forward(s) × 12`.
impl std::fmt::Display for BatchLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} process(es) × {} forward(s) × {}",
            self.global, self.world_size, self.accumulation, self.micro
        )
    }
}

/// `[model]`: the backbone, as a preset (`webssl model presets`) with overrides of its shape. The
/// last three keys are not every objective's: MAE's encoder is a timm ViT at the crop size (no
/// `img_size`, `layerscale_init`), and only DINO trains with stochastic depth (`drop_path_rate`);
/// the others refuse them ([`ModelConfig::refuse`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone preset; the fields below override it.
    pub arch: String,
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub patch_size: Option<usize>,
    /// Position-embedding grid; the training crop size by default.
    pub img_size: Option<usize>,
    /// LayerScale initial value, for presets that have LayerScale (the presets use DINOv2's 1e-5).
    /// At 1e-5 the blocks barely touch the residual stream at first, so every image starts with
    /// nearly the same CLS token and DINO's Sinkhorn targets are uniform until LayerScale has
    /// grown: fine over 600k steps, too slow for a few hundred (the DINO demo uses 0.1).
    pub layerscale_init: Option<f64>,
    /// Stochastic depth: the drop rate of the last block (DINO; 0 when absent).
    pub drop_path_rate: Option<f64>,
}

impl ModelConfig {
    /// The preset with the overrides of its shape (width, depth, heads, patch size).
    pub fn shape(&self) -> Result<VitConfig> {
        let mut v = webssl_models::presets::preset(&self.arch)
            .map_err(|e| check::in_section("model", e))?;
        if let Some(x) = self.embed_dim {
            v.embed_dim = x;
        }
        if let Some(x) = self.depth {
            v.depth = x;
        }
        if let Some(x) = self.num_heads {
            v.num_heads = x;
        }
        if let Some(x) = self.patch_size {
            v.patch_size = x;
        }
        Ok(v)
    }

    /// The backbone with every override, its position-embedding grid `img_size` or `crop` px.
    pub fn vit(&self, crop: u32) -> Result<VitConfig> {
        let mut v = self.shape()?;
        if let Some(x) = self.layerscale_init {
            if v.layerscale_init.is_none() {
                return Err(TrainError::config(
                    "model.layerscale_init",
                    format!("`{}` has no LayerScale", self.arch),
                ));
            }
            check::positive("model.layerscale_init", x)?;
            v.layerscale_init = Some(x);
        }
        v.img_size = self.img_size.unwrap_or(crop as usize);
        v.validate().map_err(|e| check::in_section("model", e))?;
        Ok(v)
    }

    /// The patch size (override or preset, range-checked), to check crop sizes before building the
    /// backbone, whose own check would name its `img_size`.
    pub fn patch_size(&self) -> Result<u32> {
        check::patch_size(&self.arch, self.patch_size)
    }

    /// Refuses each optional key in `keys` (`(key, why the objective does not take it)`) that is set.
    pub fn refuse(&self, keys: &[(&str, &str)]) -> Result<()> {
        for &(key, why) in keys {
            let set = match key {
                "img_size" => self.img_size.is_some(),
                "layerscale_init" => self.layerscale_init.is_some(),
                "drop_path_rate" => self.drop_path_rate.is_some(),
                other => unreachable!("`{other}` is not an optional key of [model]"),
            };
            if set {
                return Err(TrainError::config(format!("model.{key}"), why));
            }
        }
        Ok(())
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

/// Creates the built-in synthetic data when a configured path is missing or an empty directory.
/// Anything else is the user's data and is never written to: a directory with `index.json` or with
/// tar shards is read as it is (webdataset and img2dataset write no index), and one holding neither
/// is an error. (Synthetic shards were once generated into any directory without an index,
/// overwriting a user's `train-000000.tar`.)
pub fn ensure_synth(path: &Path, spec: Option<&SynthSpec>, split: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        // `--set eval.knn_train=` would otherwise write shards into the working directory.
        return Err(TrainError::config(
            split,
            "the data path is empty; give a directory",
        ));
    }
    let field = if split == "train" {
        "data.train"
    } else {
        split
    };
    if path.is_dir() {
        // What a killed generator left (its staging directory) does not make the directory the
        // user's; remove it first.
        webssl_data::shards::remove_stale_temps(path)?;
        let has_shards = path.join(webssl_data::shards::INDEX_FILE).is_file()
            || !webssl_data::shards::list_shard_files(path)?.is_empty();
        if has_shards {
            return Ok(());
        }
        let empty = std::fs::read_dir(path)
            .map_err(|e| TrainError::io(path, e))?
            .next()
            .is_none();
        if !empty {
            return Err(TrainError::config(
                field,
                format!(
                    "{} holds no tar shards and no index.json, and is not empty: synthetic data is only generated into a missing or empty directory",
                    path.display()
                ),
            ));
        }
    }
    let Some(spec) = spec else {
        return Err(TrainError::config(
            field,
            format!(
                "{} holds no shards and no synth spec is configured to generate them",
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

#[cfg(test)]
mod tests {
    use super::*;
    use webssl_data::shards::{INDEX_FILE, Sample, ShardLimits, ShardWriter};

    /// Issue #17: the global batch stays the recipe's at any world size dividing it; forwards of at
    /// most `batch_size` images; a world size that does not divide it is refused, naming the field.
    #[test]
    fn a_fixed_global_batch_splits_over_processes_and_forwards() {
        let layout = |g, m, w| BatchLayout::new(g, m, w).unwrap();
        let web_dino_64 = layout(Some(3072), 12, 64);
        assert_eq!((web_dino_64.micro, web_dino_64.accumulation), (12, 4));
        assert_eq!(
            web_dino_64.to_string(),
            "3072 = 64 process(es) × 4 forward(s) × 12"
        );
        assert_eq!(layout(Some(3072), 12, 256).accumulation, 1);
        // 6 per process: one forward of 6; 4096 / 256 = 16 per process at most 64 per forward.
        assert_eq!(layout(Some(3072), 12, 512).micro, 6);
        assert_eq!(layout(Some(4096), 64, 256).per_process(), 16);
        // 50 per process in forwards of at most 32: two of 25.
        let odd = layout(Some(100), 32, 2);
        assert_eq!((odd.micro, odd.accumulation), (25, 2));
        assert_eq!(odd.micro_batches(), vec![50, 25, 10, 5, 2, 1]);
        // Without a fixed global batch nothing changes: one forward of batch_size per process.
        let free = layout(None, 32, 2);
        assert_eq!((free.global, free.micro, free.accumulation), (64, 32, 1));
        assert_eq!(free.micro_batches(), vec![32]);
        let err = BatchLayout::new(Some(3072), 12, 7).unwrap_err().to_string();
        assert!(
            err.contains("data.global_batch_size") && err.contains("7 process"),
            "{err}"
        );
    }

    /// Issue #16 item 9: a directory of real tar shards without `index.json` is read as it is,
    /// never generated into; synthetic data goes only into a missing or empty directory.
    #[test]
    fn synthetic_data_only_into_a_missing_or_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            samples: 3,
            size: 32,
            seed: 0,
            mix: "full".into(),
        };
        // A user's shards, named as the generator would name its own, without an index.
        let user = tmp.path().join("user");
        let mut w = ShardWriter::create(&user, "train", ShardLimits::default()).unwrap();
        for i in 0..2 {
            w.write(&Sample::new(format!("mine{i}")).with("txt", "x"))
                .unwrap();
        }
        w.finish().unwrap();
        std::fs::remove_file(user.join(INDEX_FILE)).unwrap();
        let before = std::fs::read(user.join("train-000000.tar")).unwrap();
        ensure_synth(&user, Some(&spec), "train").unwrap();
        assert_eq!(
            std::fs::read(user.join("train-000000.tar")).unwrap(),
            before
        );
        assert!(!user.join(INDEX_FILE).exists(), "nothing written there");
        assert_eq!(TarShards::open(&user).unwrap().index().total_samples(), 2);

        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"mine").unwrap();
        let err = ensure_synth(&other, Some(&spec), "train")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.train") && err.contains("not empty"),
            "{err}"
        );

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        for dir in [empty, tmp.path().join("missing")] {
            ensure_synth(&dir, Some(&spec), "train").unwrap();
            assert_eq!(TarShards::open(&dir).unwrap().index().total_samples(), 3);
        }
    }
}
