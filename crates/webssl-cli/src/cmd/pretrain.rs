//! `webssl pretrain`: self-supervised pretraining runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Device;
use clap::Args as _;
use webssl_data::decode::DEFAULT_MAX_PIXELS;
use webssl_data::source::resolve_inputs;
use webssl_data::transform::EvalTransform;
use webssl_eval::features::{Encoder, Feature};
use webssl_eval::results::{Baseline, ProbeResult, Sizes, knn_metrics};
use webssl_models::Vit;
use webssl_models::checkpoint;
use webssl_train::dist::{Dist, LaunchEnv};
use webssl_train::run::checkpoint::Resume;
use webssl_train::run::sections::{EvalConfig, ensure_synth};
use webssl_train::{OBJECTIVES, Objective};

use super::embed::{Options, embed_items};

/// `webssl pretrain <objective>`: one subcommand per objective of [`OBJECTIVES`], each taking
/// [`RunArgs`] (built at run time, so an objective added to the registry appears here by itself).
pub struct Command {
    objective: &'static Objective,
    args: RunArgs,
}

impl clap::FromArgMatches for Command {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let Some((name, sub)) = matches.subcommand() else {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "name an objective",
            ));
        };
        let objective = Objective::find(name)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidSubcommand, e))?;
        Ok(Command {
            objective,
            args: RunArgs::from_arg_matches(sub)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for Command {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        OBJECTIVES.iter().fold(cmd, |cmd, o| {
            cmd.subcommand(RunArgs::augment_args(
                clap::Command::new(o.name).about(o.about),
            ))
        })
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        Objective::find(name).is_ok()
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A TOML config file.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A preset from the configs directory (e.g. `demo`, `web-dino-300m`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Where presets live.
    #[arg(long, default_value = "configs")]
    pub configs_dir: PathBuf,
    /// Override a config value: `--set optim.total_steps=100` (repeatable; TOML literals).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// `auto` (latest checkpoint of the run dir, if any), `never`, or a checkpoint directory.
    #[arg(long, default_value = "auto")]
    pub resume: String,
    /// Print the resolved recipe, parameter counts and a memory estimate, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop (with a checkpoint) once this many steps of the schedule are done; resume later.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// With --dry-run: plan for this many processes (default: the launch environment's world size).
    #[arg(long, requires = "dry_run")]
    pub world_size: Option<usize>,
    /// With --dry-run: a per-process memory budget (`80GiB`, `75GiB`, `40000MiB`); the plan takes
    /// the largest micro-batch (`data.batch_size`, a divisor of the per-process batch of
    /// `data.global_batch_size`) whose estimate fits it.
    #[arg(long, requires = "dry_run", value_parser = parse_bytes)]
    pub gpu_memory: Option<u64>,
}

/// `80GiB`, `75GB`, `512MiB` (binary or decimal units, case-insensitive) in bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as 80GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "gib" | "g" => (1u64 << 30) as f64,
        "gb" => 1e9,
        "mib" | "m" => (1u64 << 20) as f64,
        "mb" => 1e6,
        "tib" => (1u64 << 40) as f64,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (GiB, GB, MiB, MB, TiB)"
            ));
        }
    };
    Ok((number * scale) as u64)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let Command { objective, args } = command;
    if args.config.is_none() && args.preset.is_none() {
        anyhow::bail!(
            "give --config FILE or --preset NAME (presets: {})",
            list_presets(&args.configs_dir)
        );
    }
    let load = |overrides: &[String]| {
        objective.load(
            args.config.as_deref(),
            &args.configs_dir,
            args.preset.as_deref(),
            overrides,
        )
    };
    let (mut cfg, mut resolved) = load(&args.overrides)?;
    // Who this process is (torchrun / Slurm / MPI conventions); only rank 0 prints and reports.
    let launch = LaunchEnv::from_env()?;
    let world_size = args.world_size.unwrap_or(launch.world_size).max(1);
    let mut plan = cfg.plan(world_size)?;
    let mut budget_line = None;
    if let Some(budget) = args.gpu_memory {
        // The largest micro-batch whose estimate fits, else the smallest the objective accepts
        // (DINO's KoLeo refuses forwards of one image).
        let mut chosen = None;
        for m in plan.batch.micro_batches() {
            let mut overrides = args.overrides.clone();
            overrides.push(format!("data.batch_size={m}"));
            let Ok((c, r)) = load(&overrides) else {
                continue;
            };
            let p = c.plan(world_size)?;
            let fits = p.memory.total() <= budget;
            chosen = Some((c, r, p, m, fits));
            if fits {
                break;
            }
        }
        if let Some((c, r, p, m, fits)) = chosen {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            budget_line = Some(if fits {
                format!(
                    "memory budget {:.2} GiB per process: micro-batch {m} (data.batch_size = {m}) is the largest that fits",
                    gib(budget)
                )
            } else {
                format!(
                    "memory budget {:.2} GiB per process: does not fit, even at micro-batch {m} ({:.2} GiB)",
                    gib(budget),
                    gib(p.memory.total())
                )
            });
            (cfg, resolved, plan) = (c, r, p);
        }
    }
    if launch.rank == 0 {
        let text = toml::to_string(&resolved).context("printing the resolved config")?;
        println!("# resolved config\n{text}");
        println!("{plan}");
        if let Some(line) = budget_line {
            println!("{line}");
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let resume: Resume = args.resume.parse()?;
    let device = crate::device::selected()?;
    let dist = Dist::from_env_on(crate::device::selected_cuda_index()?)?;
    let outcome = match cfg.train(&resolved, resume, &device, args.stop_after, &dist) {
        Ok(o) => o,
        Err(e) => dist.fail(e)?,
    };
    if !dist.is_main() {
        return Ok(());
    }
    if outcome.steps < cfg.total_steps() {
        println!(
            "stopped after step {} of {}; run again to resume",
            outcome.steps,
            cfg.total_steps()
        );
        return Ok(());
    }
    println!("{}", cfg.exported(&outcome));
    let eval = cfg.eval();
    if let (Some(train), Some(val)) = (&eval.knn_train, &eval.knn_val) {
        let (size, init, label) = cfg.knn_baseline(&device)?;
        knn_report(
            size,
            eval,
            &init,
            label,
            &outcome.export_dir,
            &outcome.run_dir,
            Path::new(train),
            Path::new(val),
            &device,
        )?;
    }
    Ok(())
}

/// kNN (dinov2 protocol) on held-out labelled shards for the trained backbone (`export_dir`) and for
/// the same architecture at initialisation (`init`, the backbone at step 0), at `size` px, printed
/// side by side and written to `<run>/eval/knn.json` (a [`ProbeResult`] whose baseline is the
/// initialisation, so `webssl report` shows `knn` and `knn@init`).
#[allow(clippy::too_many_arguments)]
fn knn_report(
    size: u32,
    eval: &EvalConfig,
    init: &Vit,
    trained_label: &str,
    export_dir: &Path,
    run_dir: &Path,
    train: &Path,
    val: &Path,
    device: &Device,
) -> anyhow::Result<()> {
    use webssl_eval::features::{Matrix, Split};
    use webssl_eval::knn::{self, KnnConfig};

    ensure_synth(train, eval.knn_train_synth.as_ref(), "knn-train")?;
    ensure_synth(val, eval.knn_val_synth.as_ref(), "knn-val")?;
    let trained = checkpoint::load(export_dir, None, device)
        .with_context(|| format!("loading the exported backbone {}", export_dir.display()))?
        .model;
    let opts = Options {
        batch_size: 64,
        max_pixels: DEFAULT_MAX_PIXELS,
        features: vec![Feature::Cls],
        last_layers: 0,
    };
    let split = |model: &webssl_models::Vit, dir: &Path| -> anyhow::Result<(Split, usize)> {
        let inputs = resolve_inputs(&[dir.display().to_string()])?;
        let encoder = Encoder::new(
            model.clone(),
            EvalTransform::square(size),
            device,
            "the pretrained backbone",
        )?;
        let (feats, skipped, _) = embed_items(&encoder, inputs, &opts)?;
        if !skipped.is_empty() {
            anyhow::bail!(
                "{} images of {} could not be read",
                skipped.len(),
                dir.display()
            );
        }
        let labels: Vec<usize> = feats
            .labels
            .iter()
            .zip(&feats.keys)
            .map(|(l, k)| {
                l.and_then(|l| usize::try_from(l).ok())
                    .with_context(|| format!("{}: sample {k} has no .cls label", dir.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        let (shape, values) = &feats.tensors["cls"];
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        Ok((
            Split::new(
                &dir.display().to_string(),
                Matrix::new(labels.len(), shape[0], values.clone())?,
                labels,
            )?,
            classes,
        ))
    };
    let kcfg = KnnConfig::default();
    let mut rows = Vec::new();
    for (name, model) in [("initialisation", init), (trained_label, &trained)] {
        let (tr, c1) = split(model, train)?;
        let (va, c2) = split(model, val)?;
        let result = knn::evaluate(&tr, &va, c1.max(c2), &kcfg)?;
        rows.push((name, tr.len(), va.len(), c1.max(c2), result));
    }
    println!(
        "\nkNN on held-out synthetic labels (dinov2 protocol: cosine, T = 0.07; CLS at {size}px)"
    );
    println!(
        "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "model", "k=10", "k=20", "k=100", "k=200", "top-5@20"
    );
    for (name, _, _, _, r) in &rows {
        let at = |k| r.at(k).map_or(f64::NAN, |s| s.top1);
        let top5 = r.at(20).map_or(f64::NAN, |s| s.top5);
        println!(
            "{name:<16} {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}%",
            at(10),
            at(20),
            at(100),
            at(200),
            top5
        );
    }
    let (_, ntr, nva, classes, _) = &rows[0];
    println!(
        "(train {ntr}, val {nva}, {classes} classes; chance {:.1}%)",
        100.0 / *classes as f64
    );
    let init = knn_metrics(&rows[0].4)?;
    let mut result = ProbeResult::new(
        "knn",
        &export_dir.display().to_string(),
        serde_json::json!({"train": train.display().to_string(), "val": val.display().to_string(), "classes": classes}),
        knn_metrics(&rows[1].4)?,
    );
    result.summary = format!(
        "knn: top-1 @k={} = {:.1}% ({}), {:.1}% at initialisation",
        result.metrics["k"], result.metrics["top1"], rows[1].0, init["top1"]
    );
    result.baseline = Some(Baseline {
        model: "initialisation".into(),
        metrics: init,
    });
    result.protocol = "dinov2 (L2-normalised CLS, cosine, softmax T=0.07)".into();
    result.sizes = Some(Sizes {
        train: *ntr,
        val: *nva,
        classes: Some(*classes),
        train_tokens: None,
    });
    result
        .details
        .insert("per_k".into(), serde_json::to_value(&rows[1].4.per_k)?);
    let path = run_dir.join("eval").join("knn.json");
    result.save(&path)?;
    println!("results written to {}", path.display());
    Ok(())
}

fn list_presets(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".toml"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}
