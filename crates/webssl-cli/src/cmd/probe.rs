//! `webssl probe vqa ...`: the MLLM probe (Web-SSL's VQA evaluation). `train --stage 1|2` trains
//! it on conversations over cached encoder tokens ([`webssl_train::mllm`]); `answer` asks a trained
//! probe's run directory ([`webssl_eval::vqa::mllm::run`]) a benchmark's questions and appends the
//! answers to a predictions file that `webssl eval vqa-score` reads; rerunning it skips the
//! questions already answered.

use std::path::PathBuf;

use anyhow::Context;
use webssl_eval::vqa::Benchmark;
use webssl_eval::vqa::mllm::answer::{AnswerLog, read_questions};
use webssl_eval::vqa::mllm::run::Probe;
use webssl_train::mllm::{MllmTrainConfig, train};
use webssl_train::run::load_config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The MLLM probe: connector + language model on frozen encoder tokens.
    #[command(subcommand)]
    Vqa(VqaCommand),
}

#[derive(clap::Subcommand)]
pub enum VqaCommand {
    /// Train the probe: stage 1 the connector, stage 2 connector + language model (resumable).
    Train(TrainArgs),
    /// Answer a benchmark's questions with a trained probe (resumable).
    Answer(AnswerArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Config file (TOML; fields of `webssl_train::mllm::MllmTrainConfig`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A preset of --configs-dir instead of --config.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    #[arg(long, default_value = "configs")]
    pub configs_dir: PathBuf,
    /// The stage (overrides the config's `stage`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stage: Option<u8>,
    /// Config overrides `key=value` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// The run directory (checkpoints, metrics.jsonl, and the probe files `answer` loads).
    #[arg(long)]
    pub run: PathBuf,
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
        Command::Vqa(VqaCommand::Train(args)) => run_train(args),
        Command::Vqa(VqaCommand::Answer(args)) => run_answer(args),
    }
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let mut sets = args.sets;
    if let Some(stage) = args.stage {
        sets.push(format!("stage={stage}"));
    }
    let (cfg, resolved): (MllmTrainConfig, toml::Table) = load_config(
        args.config.as_deref(),
        &args.configs_dir,
        args.preset.as_deref(),
        &sets,
    )?;
    let device = crate::device::selected()?;
    let s = train(&cfg, &resolved, &args.run, &device)?;
    println!(
        "stage {}: {} steps ({} resumed) on {} samples, last loss {:.4} → {}",
        cfg.stage,
        s.steps,
        s.resumed_from,
        s.samples,
        s.last_loss,
        args.run.display()
    );
    Ok(())
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
