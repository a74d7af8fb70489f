//! `webssl`: language-free visual representation learning at web scale.
//!
//! This binary only parses arguments and calls the libraries; every command lives in `cmd/`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod device;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "webssl",
    version,
    about = "Language-free visual representation learning (Web-DINO, Web-MAE, CLIP) at web scale"
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `webssl_data=trace` (also read from RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(flatten)]
    device: device::DeviceFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Filter image shards (dedup, Light/Heavy text classifiers) into a manifest and new shards.
    Curate(cmd::curate::Args),
    /// Extract features from images with a backbone checkpoint (HF or native layout).
    Embed(cmd::embed::Args),
    /// Self-supervised pretraining (DINOv2 / Web-DINO).
    #[command(subcommand)]
    Pretrain(cmd::pretrain::Command),
    /// Create, list and inspect backbone checkpoints.
    #[command(subcommand)]
    Model(cmd::model::Command),
    /// Build, inspect and benchmark WebDataset shards.
    #[command(subcommand)]
    Shards(cmd::shards::Command),
    /// Generate synthetic web-like data (scenes, signs, documents, charts) as shards.
    Synth(cmd::synth::Args),
    /// Evaluate frozen encoders and score VQA predictions.
    #[command(subcommand)]
    Eval(cmd::eval::Command),
    /// The MLLM probe: answer VQA benchmarks through a connector and a language model.
    #[command(subcommand)]
    Probe(cmd::probe::Command),
    /// Train and evaluate a grid of methods × model sizes × data on the same images, then report.
    Experiment(cmd::experiment::Args),
    /// Decoder language models: greedy generation (Llama family, Qwen2; HF directory or GGUF).
    #[command(subcommand)]
    Lm(cmd::lm::Command),
    /// Run a webssl command as N data-parallel ranks on this machine (through mpirun).
    Launch(cmd::launch::Args),
    /// Collect results JSON of run directories into a Markdown table and scaling plots (PNG/SVG/CSV).
    Report(cmd::report::Args),
}

/// Pins the rayon pool (burn-flex's GEMM and the fused kernels run on it) to this rank's share of the
/// cores (`webssl_models::kernels::pin_rayon_threads_for_rank`; `WEBSSL_PIN_THREADS=0` turns it off).
/// A launcher environment that does not parse is left for the trainer to report.
fn pin_threads() {
    let (local_rank, world_size) = webssl_train::dist::LaunchEnv::from_env()
        .map_or((0, 1), |env| (env.local_rank, env.world_size));
    let cpus = webssl_models::kernels::pin_rayon_threads_for_rank(local_rank, world_size);
    if !cpus.is_empty() {
        tracing::debug!("rayon workers pinned to CPUs {cpus:?}");
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` or else `--log`. Colour only on a terminal (and not
/// under `NO_COLOR`, tracing-subscriber's own default): redirected to a file, a SLURM log or a test's
/// pipe, escape codes would only garble the text.
fn init_logs(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .init();
}

fn main() -> anyhow::Result<()> {
    let purge = webssl_models::kernels::keep_freed_pages();
    let cli = Cli::parse();
    init_logs(&cli.log);
    tracing::debug!("mimalloc purge delay: {purge}");
    device::init(&cli.device);
    if matches!(cli.command, Command::Pretrain(_) | Command::Experiment(_))
        && device::selected_spec() == device::DeviceSpec::Cpu
    {
        pin_threads();
    }
    match cli.command {
        Command::Curate(args) => cmd::curate::run(args),
        Command::Embed(args) => cmd::embed::run(args),
        Command::Model(c) => cmd::model::run(c),
        Command::Pretrain(c) => cmd::pretrain::run(c),
        Command::Shards(c) => cmd::shards::run(c),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Probe(c) => cmd::probe::run(c),
        Command::Report(args) => cmd::report::run(args),
        Command::Experiment(args) => cmd::experiment::run(args),
        Command::Launch(args) => cmd::launch::run(args),
        Command::Lm(c) => cmd::lm::run(c),
    }
}
