//! `webssl eval ...`: evaluation commands. Each subcommand is one variant of [`Command`] with its own
//! `Args` struct and `run_*` function: `vqa-score` ([`vqa`]), the frozen-feature probes knn and
//! linear ([`probes`]) and the dense probes ([`dense`]).

use std::path::Path;

use anyhow::Context;

mod dense;
mod probes;
mod vqa;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Score VQA predictions (JSONL: question_id, prediction) against benchmark annotations.
    VqaScore(vqa::VqaScoreArgs),
    /// k-NN classification of frozen features (dinov2 protocol: cosine, top-200, softmax T=0.07).
    Knn(probes::KnnArgs),
    /// Linear probes on frozen features (dinov2 classifier grid, or logistic regression).
    Linear(probes::LinearArgs),
    /// Dense linear probes on frozen patch tokens: segmentation (mIoU) or depth (256 bins, RMSE).
    Dense(dense::DenseArgs),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::VqaScore(args) => vqa::run_vqa_score(args),
        Command::Knn(args) => probes::run_knn(args),
        Command::Linear(args) => probes::run_linear(args),
        Command::Dense(args) => dense::run_dense(args),
    }
}

/// Writes `text` and a newline to `path`, creating its directory.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))
}
