//! `webssl model`: create and inspect backbone checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use webssl_models::checkpoint::{self, export};
use webssl_models::{Vit, presets};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a randomly initialised backbone of a preset in HF layout (for benchmarks and baselines).
    Init {
        /// Preset name (see `webssl model presets`).
        #[arg(long)]
        arch: String,
        /// Output directory (config.json, model.safetensors, preprocessor_config.json).
        #[arg(long)]
        out: PathBuf,
        /// Override the pretraining resolution (position-embedding grid).
        #[arg(long)]
        img_size: Option<usize>,
        /// Seed of the initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// List the presets with their parameter counts.
    Presets,
    /// Load a checkpoint and print its architecture.
    Info {
        /// HF directory or native safetensors file.
        model: PathBuf,
        #[arg(long)]
        arch: Option<String>,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    // Always the CPU, whatever `--device` says: `init --seed S` must write the same weights on every
    // machine (the CUDA backend's RNG draws a different stream for the same seed), and `info` only
    // reads a config. Neither does enough arithmetic for a GPU to matter.
    let device = Device::flex();
    if crate::device::selected_spec() != crate::device::DeviceSpec::Cpu {
        tracing::info!("webssl model runs on the CPU (same weights for the same seed everywhere)");
    }
    match command {
        Command::Init {
            arch,
            out,
            img_size,
            seed,
        } => {
            let mut cfg = presets::preset(&arch)?;
            if let Some(s) = img_size {
                cfg.img_size = s;
            }
            cfg.validate()?;
            device.seed(seed);
            let model = Vit::new(&cfg, &device);
            let pre = export::default_preprocessor(cfg.img_size);
            export::export_hf(&model, &out, Some(&pre))
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{arch}: {} parameters -> {}",
                presets::param_count(&cfg),
                out.display()
            );
        }
        Command::Presets => {
            for name in presets::PRESETS {
                let cfg = presets::preset(name)?;
                println!(
                    "{name:<15} {:>6.3}B  dim {:<5} depth {:<3} heads {:<3} patch {:<3} {:?}",
                    presets::param_count(&cfg) as f64 / 1e9,
                    cfg.embed_dim,
                    cfg.depth,
                    cfg.num_heads,
                    cfg.patch_size,
                    cfg.ffn
                );
            }
        }
        Command::Info { model, arch } => {
            let arch = arch.as_deref().map(presets::preset).transpose()?;
            let loaded = checkpoint::load(&model, arch.as_ref(), &device)
                .with_context(|| format!("loading {}", model.display()))?;
            let cfg = loaded.model.config();
            println!("{}", serde_json::to_string_pretty(cfg)?);
            println!("parameters: {}", presets::param_count(cfg));
            println!("layout: {:?}", loaded.layout);
            if !loaded.ignored.is_empty() {
                println!("not loaded: {}", loaded.ignored.join(", "));
            }
        }
    }
    Ok(())
}
