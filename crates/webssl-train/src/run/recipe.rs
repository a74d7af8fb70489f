//! The config side of a pretraining objective: [`Recipe`] is what `webssl pretrain <objective>` and
//! the cells of `webssl experiment` need of an objective's config — check it, plan it, train it,
//! report it — so they handle every objective the same way. The trainer side, the state the shared
//! loop drives, is [`TrainState`](crate::run::driver::TrainState); the list of objectives is
//! [`crate::registry`].

use burn::tensor::Device;
use webssl_models::Vit;

use crate::dist::Dist;
use crate::error::Result;
use crate::run::checkpoint::Resume;
use crate::run::memory::MemoryEstimate;
use crate::run::sections::{BatchLayout, EvalConfig};
use crate::run::state::TrainOutcome;

/// An objective's config (`DinoConfig`, `MaeConfig`, `ClipConfig`): one run of that objective.
pub trait Recipe {
    /// Consistency checks that serde cannot express; each error names the field.
    fn validate(&self) -> Result<()>;

    /// What `--dry-run` prints for a run on `world_size` processes: parameters, global batch, lr,
    /// memory estimate.
    fn plan(&self, world_size: usize) -> Result<Plan>;

    /// Length of the run in optimizer steps.
    fn total_steps(&self) -> u64;

    /// What every `train` does first, before anything is allocated: [`Recipe::validate`], then the
    /// planned replicated state (weights, gradients, a teacher) against physical memory — a model that
    /// cannot fit would otherwise grow until the kernel kills the process.
    fn preflight(&self, world_size: usize) -> Result<()> {
        self.validate()?;
        let memory = self.plan(world_size)?.memory;
        webssl_models::config::check_fits_in_memory(
            &format!("the {}", memory.replicated_what),
            memory.replicated,
        )?;
        Ok(())
    }

    /// Runs (or resumes) the training as this process's rank of `dist` (one process:
    /// [`Dist::single`]); `resolved` is the resolved config (its hash guards resumes). `stop_after`
    /// ends this process after that many steps of the schedule (with a checkpoint), to resume later.
    fn train(
        &self,
        resolved: &toml::Table,
        resume: Resume,
        device: &Device,
        stop_after: Option<u64>,
        dist: &Dist,
    ) -> Result<TrainOutcome>;

    /// The final message: what was exported where.
    fn exported(&self, outcome: &TrainOutcome) -> String;

    /// The `[eval]` section (held-out kNN sets).
    fn eval(&self) -> &EvalConfig;

    /// For the init-vs-trained kNN report: the training crop size, the backbone at step 0 and the
    /// label of the trained row.
    fn knn_baseline(&self, device: &Device) -> Result<(u32, Vit, &'static str)>;
}

/// What `--dry-run` prints: the recipe in numbers and the per-process memory estimate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The objective's lines: parameter counts, global batch and lr, anything else it plans
    /// (`4 of 16 patches visible per image`).
    pub lines: Vec<String>,
    /// How the global batch splits over processes and forwards.
    pub batch: BatchLayout,
    pub memory: MemoryEstimate,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "# plan")?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        write!(f, "{}", self.memory)
    }
}
