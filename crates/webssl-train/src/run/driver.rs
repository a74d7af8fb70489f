//! The training loop every objective shares: DINO, MAE and CLIP differ in their state and their step,
//! not in how a run starts, resumes, logs, checkpoints and exports. Each `train()` builds its loader
//! transform and its trainer and hands them to [`run`]; the trainer's state implements [`TrainState`].
//!
//! One run, in order: [`start`] checks that every rank has the same recipe and run dir, takes the run
//! dir (rank 0), opens the shards (rank 0 makes the built-in data), and resolves the checkpoint to
//! resume from (the same on every rank). The objective then builds its trainer (CLIP needs the resume
//! point first: its tokenizer comes from the checkpoint) and calls [`run`], which restores the state
//! ([`StateMeta::load_checked`], [`TrainState::load`], ZeRO-1 shares kept with
//! [`ZeroShards::retain_owned`], this rank's loader cursor), starts the loader on this rank's split,
//! and steps: metrics and TensorBoard (rank 0), [`check_finite`](crate::run::check_finite), the
//! progress line, checkpoints every `run.checkpoint_every_steps` and at the end of the schedule or of
//! `stop_after` (the whole optimizer state gathered on rank 0 by [`zero::gather_optimizer_state`],
//! every rank's loader cursor in `state.json`, files written one at a time with
//! [`CheckpointManager::save_streamed`]), exports every `run.export_every_steps` and at the end (rank 0),
//! and at the end of the run the measured memory beside the plan's estimate.
//!
//! Reference: dinov2 `train.py` `do_train` (the loop, periodic checkpointer, metric logger), MAE
//! `main_pretrain.py` and MetaCLIP `main.py` (the same loop around a different step).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use webssl_data::loader::{Batch, Loader, MaskSpec, SampleTransform, TarShards};
use webssl_models::{Precision, autocast};

use crate::dist::Dist;
use crate::error::Result;
use crate::optim::OptimizerSet;
use crate::run::RunDir;
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::memory;
use crate::run::metrics::MetricsWriter;
use crate::run::progress::{Progress, ProgressUpdate};
use crate::run::sections::{DataConfig, RunConfig};
use crate::run::state::{DataIdentity, StateMeta, TrainOutcome, recipe_hash};
use crate::run::tensorboard::EventWriter;
use crate::zero::{self, ZeroShards};

/// The optimizer state's file in every checkpoint; [`run`] writes it (gathered over ranks).
pub const OPTIM_FILE: &str = "optim.safetensors";
/// The run state's file (step, loader cursors, data identity); [`run`] writes it, always last.
pub const STATE_FILE: &str = "state.json";

/// What an objective's trainer state offers the shared loop.
pub trait TrainState: Sized {
    /// One optimizer step at schedule position `it` on this rank's `batches` (one per forward: more
    /// than one under gradient accumulation, [`crate::run::sections::BatchLayout`]); the logged
    /// values, the same on every rank.
    fn step(
        self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)>;

    /// Restores the state from a checkpoint directory (the whole optimizer state: [`run`] then drops
    /// the shares other ranks own).
    fn load(self, dir: &Path) -> Result<Self>;

    /// The optimizer, and its ZeRO-1 owners when the moments are sharded over ranks.
    fn optimizer(&mut self) -> (&mut OptimizerSet, Option<&ZeroShards>);

    /// The checkpoint's files in the order they are written, [`OPTIM_FILE`] among them (without
    /// [`STATE_FILE`], which comes last).
    fn checkpoint_files(&self) -> Vec<&'static str>;

    /// The bytes of `name` (one of [`TrainState::checkpoint_files`] other than [`OPTIM_FILE`]), made
    /// when it is written so one file is in memory at a time.
    fn checkpoint_file(&self, name: &str, ckpts: &CheckpointManager) -> Result<Vec<u8>>;

    /// Writes the exported model(s) (rank 0): the image backbone in HF layout to `export_dir`, and
    /// whatever else the objective keeps in `run_dir`.
    fn export(&self, run_dir: &Path, export_dir: &Path) -> Result<()>;

    /// The loss terms of the progress line, in display order, from a step's logged values.
    fn progress_terms(&self, values: &[(&'static str, f64)]) -> Vec<(&'static str, f64)>;

    /// Called on rank 0 after each step with its logged values (e.g. DINO's collapse watch).
    fn after_step(&self, _step: u64, _values: &[(&'static str, f64)]) {}
}

/// The logged value `name`, NaN when the step did not log it.
pub fn value(values: &[(&'static str, f64)], name: &str) -> f64 {
    values
        .iter()
        .find(|(k, _)| *k == name)
        .map_or(f64::NAN, |(_, v)| *v)
}

/// A run that has started: run dir held, shards open, resume point chosen — what [`start`] returns
/// and [`run`] continues.
pub struct Session {
    pub run: RunDir,
    pub ckpts: CheckpointManager,
    /// The checkpoint this run resumes from, the same on every rank.
    pub resume_from: Option<PathBuf>,
    /// This rank's view of the training shards.
    pub shards: TarShards,
    data: DataIdentity,
    recipe: String,
    /// Resident memory before the trainer's state was built (the base of the end-of-run report).
    rss_at_start: Option<u64>,
}

/// Starts a run on this rank of `dist`: every rank has the same recipe (`resolved` outside
/// `[run]`/`[eval]`) and run dir, rank 0 takes the run dir and makes the built-in data when
/// configured, the shards are opened, and the checkpoint to resume from is resolved.
pub fn start(
    data: &DataConfig,
    run_cfg: &RunConfig,
    resolved: &toml::Table,
    resume: Resume,
    dist: &Dist,
) -> Result<Session> {
    let recipe = recipe_hash(resolved);
    dist.check_same(
        "the recipe (config outside [run]/[eval])",
        recipe.as_bytes(),
    )?;
    dist.check_same("the run dir", run_cfg.dir.as_bytes())?;
    let run = RunDir::start_ranked(Path::new(&run_cfg.dir), resolved, dist)?;
    let (shards, data_id) = data.open_train_ranked(dist)?;
    data.check_dataset_size(shards.index().total_samples(), dist.world_size())?;
    // Resident memory: at the start, and the peak of the training steps before any checkpoint or
    // export (whose serialisation buffers come on top), to set beside the plan's estimate.
    let rss_at_start = memory::rss_bytes();
    let ckpts = CheckpointManager::new(&run.path, run_cfg.keep_last);
    let resume_from = resume.resolve(&ckpts)?.map(|(_, dir)| dir);
    let chosen = resume_from
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    dist.check_same("the checkpoint to resume from", chosen.as_bytes())?;
    Ok(Session {
        run,
        ckpts,
        resume_from,
        shards,
        data: data_id,
        recipe,
        rss_at_start,
    })
}

/// What [`run`] needs of an objective's config besides its trainer and loader transform.
pub struct LoopSpec<'a> {
    pub seed: u64,
    pub data: &'a DataConfig,
    pub run: &'a RunConfig,
    pub total_steps: u64,
    /// The start-up line (model, batch, lr, steps), logged once the loader is running.
    pub banner: String,
    /// The plan's per-process memory estimate in bytes, for the end-of-run report.
    pub plan_bytes: Option<u64>,
}

/// Runs (or resumes) the training loop of `session` with `trainer` on the shared `[data]` stream
/// (this rank's split, each sample through `transform`, masks as `masks` says) until the schedule's
/// end or `stop_after` steps. See the module docs for what happens when.
pub fn run<T: TrainState>(
    session: Session,
    mut trainer: T,
    spec: LoopSpec<'_>,
    transform: Arc<dyn SampleTransform>,
    masks: MaskSpec,
    stop_after: Option<u64>,
    dist: &Dist,
) -> Result<TrainOutcome> {
    let Session {
        run,
        ckpts,
        resume_from,
        shards,
        data,
        recipe,
        rss_at_start,
    } = session;
    let (rank, world_size, main) = (dist.rank(), dist.world_size(), dist.is_main());
    // The loader yields micro-batches; a step takes `accumulation` of them.
    let layout = spec.data.layout(world_size)?;

    // ---- resume ----
    let mut start_step = 0;
    let mut loader_cursor = None;
    let mut resumed_from = None;
    if let Some(dir) = &resume_from {
        let meta = StateMeta::load_checked(dir, world_size, &recipe, &data)?;
        trainer = trainer.load(dir)?;
        // The checkpoint holds the whole optimizer state: keep this rank's share.
        if let (opt, Some(z)) = trainer.optimizer() {
            z.retain_owned(opt);
        }
        start_step = meta.step;
        loader_cursor = Some(meta.loader_of(rank, dir)?);
        resumed_from = Some(meta.step);
        tracing::info!("resumed from {} (step {})", dir.display(), meta.step);
    }

    // ---- data ----
    let mut loader = Loader::new(
        Arc::new(shards),
        spec.data.sampler(spec.seed, rank, world_size),
        transform,
        masks,
        spec.data.loader(),
        loader_cursor.as_ref(),
    )?;

    // ---- logging: rank 0 only, the others compute ----
    let mut metrics = main
        .then(|| MetricsWriter::open(&run.path, start_step))
        .transpose()?;
    let mut events = if spec.run.tensorboard && main {
        Some(EventWriter::create(&run.path.join("events"))?)
    } else {
        None
    };
    let export_dir = run.path.join("export");
    let total = spec.total_steps;
    let bar = main.then(|| Progress::new(start_step, total));
    let started = Instant::now();
    let mut images_done = 0u64;
    let (mut steps_peak, mut checkpointed) = (None, false);
    match spec.run.precision {
        Precision::F32 => tracing::info!("{}", spec.banner),
        p => tracing::info!("{}, {p} matrix products (f32 master weights)", spec.banner),
    }

    let end = stop_after.map_or(total, |s| s.clamp(start_step, total));
    for it in start_step..end {
        let step_start = Instant::now();
        let batches = (0..layout.accumulation)
            .map(|_| loader.next_batch())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let b: usize = batches.iter().map(|batch| batch.batch_size).sum();
        let values;
        (trainer, values) = {
            // Recorded in the autodiff graph during the forward; the scope ends with the step.
            let _precision = autocast(spec.run.precision);
            trainer.step(it, &batches, dist)?
        };
        // The views are in tensors now: hand the buffers back so the next batch is collated into
        // them instead of freshly faulted, zeroed pages.
        for batch in batches {
            loader.recycle(batch);
        }
        images_done += (b * world_size) as u64;

        let step_no = it + 1;
        let stats = loader.stats();
        let step_secs = step_start.elapsed().as_secs_f64();
        let timing = [
            ("img_per_s", (b * world_size) as f64 / step_secs),
            ("loader_wait", stats.wait_fraction()),
            ("samples_skipped", stats.samples_skipped as f64),
            (
                "peak_mem_mib",
                memory::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / 1048576.0),
            ),
        ];
        crate::run::check_finite(step_no, &values)?;
        if let Some(m) = metrics.as_mut() {
            m.write(step_no, &values, &timing)?;
        }
        if let Some(ev) = events.as_mut() {
            for (k, v) in values.iter().chain(timing.iter()) {
                ev.add_scalar(k, *v as f32, step_no as i64)?;
            }
        }
        if main {
            trainer.after_step(step_no, &values);
        }
        if let Some(bar) = &bar {
            bar.update(&ProgressUpdate {
                step: step_no,
                terms: &trainer.progress_terms(&values),
                lr: value(&values, "lr"),
                samples_per_s: images_done as f64 / started.elapsed().as_secs_f64(),
                loader_img_per_s: None,
                loader_wait: Some(stats.wait_fraction()),
            });
        }

        if !checkpointed {
            steps_peak = memory::peak_rss_bytes();
        }
        let last = step_no == total;
        let every = |n: u64| n > 0 && step_no % n == 0;
        if last || step_no == end || every(spec.run.checkpoint_every_steps) {
            let mut meta = StateMeta {
                step: step_no,
                loader: loader.cursor(),
                world_size,
                recipe: recipe.clone(),
                data: Some(data.clone()),
                samples_seen: step_no * layout.global as u64,
                rank_loaders: Vec::new(),
            };
            checkpointed = true;
            meta.gather_loaders(dist)?;
            let (opt, zero) = trainer.optimizer();
            // Every rank takes part (sharded: each sends its share); rank 0 alone gets it whole.
            if let Some(opt_state) = zero::gather_optimizer_state(opt, zero, dist)? {
                save(&trainer, &ckpts, &meta, &opt_state)?;
            }
            if let Some(m) = metrics.as_mut() {
                m.sync()?;
            }
            if let Some(ev) = events.as_mut() {
                ev.flush()?;
            }
        }
        if main && (last || every(spec.run.export_every_steps)) {
            trainer.export(&run.path, &export_dir)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    if main && start_step >= total && !export_dir.join("model.safetensors").is_file() {
        trainer.export(&run.path, &export_dir)?;
    }
    crate::run::warn_skipped(&loader.stats());
    if let (Some(start), Some(steps), Some(all)) =
        (rss_at_start, steps_peak, memory::peak_rss_bytes())
    {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let plan = spec.plan_bytes.map_or(String::new(), |p| {
            format!(" (plan estimate {:.1} MiB)", mib(p))
        });
        tracing::info!(
            "rank {rank}: memory above the start of training: training steps peaked at {:.1} MiB{plan}, \
             {:.1} MiB with checkpoints and exports",
            mib(steps.saturating_sub(start)),
            mib(all.saturating_sub(start)),
        );
    }
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        export_dir,
        steps: end,
        resumed_from,
    })
}

/// Writes the checkpoint of `meta.step` (rank 0): the trainer's files in its order, `opt_state` (the
/// whole optimizer state) as [`OPTIM_FILE`], then [`STATE_FILE`], one file in memory at a time.
fn save<T: TrainState>(
    trainer: &T,
    ckpts: &CheckpointManager,
    meta: &StateMeta,
    opt_state: &[webssl_models::params::NamedTensor],
) -> Result<PathBuf> {
    let mut names = trainer.checkpoint_files();
    names.push(STATE_FILE);
    ckpts.save_streamed(meta.step, &names, |i| {
        let bytes = match names[i] {
            OPTIM_FILE => crate::run::state::tensors_bytes(ckpts, opt_state)?,
            STATE_FILE => meta.to_json(),
            name => trainer.checkpoint_file(name, ckpts)?,
        };
        Ok(std::borrow::Cow::Owned(bytes))
    })
}
