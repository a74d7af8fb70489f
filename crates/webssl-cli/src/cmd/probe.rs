//! `webssl probe vqa ...`: the MLLM probe (Web-SSL's VQA evaluation). `answer` asks a trained
//! probe's run directory ([`webssl_eval::vqa::mllm::run`]) a benchmark's questions and appends the
//! answers to a predictions file that `webssl eval vqa-score` reads; rerunning it skips the
//! questions already answered.

use std::path::PathBuf;

use anyhow::Context;
use webssl_eval::vqa::Benchmark;
use webssl_eval::vqa::mllm::answer::{AnswerLog, read_questions};
use webssl_eval::vqa::mllm::run::Probe;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The MLLM probe: connector + language model on frozen encoder tokens.
    #[command(subcommand)]
    Vqa(VqaCommand),
}

#[derive(clap::Subcommand)]
pub enum VqaCommand {
    /// Answer a benchmark's questions with a trained probe (resumable).
    Answer(AnswerArgs),
}

#[derive(clap::Args, Debug)]
pub struct AnswerArgs {
    /// The probe's run directory (mllm.toml, connector.safetensors, optional lm.safetensors).
    #[arg(long)]
    pub run: PathBuf,
    /// Benchmark whose prompt rules apply (mme, mmbench, gqa, textvqa, …, as `eval vqa-score`).
    #[arg(long)]
    pub benchmark: String,
    /// Questions: JSONL or a JSON array of {"question_id", "image", "question", …}.
    #[arg(long)]
    pub questions: PathBuf,
    /// The encoder's tokens of the benchmark's images: a `webssl embed --features
    /// patch-tokens[,cls]` file, looked up by each question's image path without its extension.
    #[arg(long)]
    pub image_tokens: PathBuf,
    /// Predictions JSONL to append to (already answered ids are skipped).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Vqa(VqaCommand::Answer(args)) => run_answer(args),
    }
}

fn run_answer(args: AnswerArgs) -> anyhow::Result<()> {
    let benchmark = Benchmark::from_name(&args.benchmark)?;
    let device = crate::device::selected()?;
    let probe = Probe::load(&args.run, &device)
        .with_context(|| format!("loading the probe run {}", args.run.display()))?;
    let questions = read_questions(&args.questions)?;
    let images = probe.image_tokens(&args.image_tokens)?;
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut log = AnswerLog::open(&args.output)?;
    let s = probe.answer_benchmark(benchmark, &questions, &images, &mut log)?;
    println!(
        "{benchmark}: answered {}, skipped {} already answered → {}",
        s.answered,
        s.skipped,
        args.output.display()
    );
    Ok(())
}
