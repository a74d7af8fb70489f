//! `webssl experiment --config FILE`: the Web-SSL method in one command — train a grid
//! {methods} × {model sizes} × {data} on the same images, evaluate every encoder with the same probes,
//! and render the side-by-side report.
//!
//! The experiment file (see `configs/experiment-demo.toml`):
//!
//! ```toml
//! dir = "runs/experiment-demo"          # one run dir per cell below it, plus report/
//! set = ["optim.total_steps=150"]       # overrides for every cell
//! [[method]]                            # objective = dino | mae | clip (default: the name)
//! name = "dino"
//! config = "configs/demo.toml"          # that objective's config; `set` overrides it
//! [[size]]
//! name = "d3"
//! set = ["model.depth=3"]
//! [[data]]                              # optional; default: the configs' own [data]
//! name = "light"
//! set = ["data.train=runs/data/light"]
//! [[prepare]]                           # a webssl command run once, when `creates` is missing
//! creates = "runs/data/light"           # (e.g. `webssl curate` making a filtered subset)
//! args = ["curate", "--input", "…", "--filters", "configs/curate/light.toml", "--output", "runs/data/light"]
//! [[eval_data]]                         # probe datasets, generated when missing
//! path = "runs/data/synth-knn-train"
//! synth = { samples = 1000, size = 112, seed = 101, mix = "full" }
//! [[probe]]                             # a `webssl eval` command line; {export} = the cell's encoder,
//! name = "knn"                          # {image_size} = its input size; writes eval/<name>.json
//! args = ["knn", "--model", "{export}", "--resolution", "{image_size}", "--train", "…", "--val", "…"]
//! ```
//!
//! A cell's overrides apply in the order method, size, data, experiment `set`, command-line `--set`,
//! then `run.dir = <dir>/<cell>`. **Same data by construction**: before anything trains, the cells of
//! one data entry must agree on `seed` and on every `[data]` field that decides the sample order
//! (`train`, `synth`, `num_workers`, `shuffle_buffer`) — the sampler is a function of exactly these —
//! so DINO, MAE and CLIP read the identical stream; a mismatch is an error naming the field. Batch
//! sizes may differ per method (as in the paper).
//!
//! **Resume**: a cell whose latest checkpoint has reached `optim.total_steps` and whose export exists
//! is not trained again; an interrupted cell resumes from its last checkpoint (the trainers' own
//! `--resume auto`); a probe whose results file exists is not rerun (results are written to a temp
//! name first, so a crash never leaves a half-written file that would be taken as done). The report
//! is rebuilt from whatever results exist at the end of every invocation, and `experiment.json`
//! records each cell's state, data identity (shard-list hash), samples seen and results.
//!
//! Probes are ordinary `webssl eval` command lines, so every number in the report can be reproduced
//! by hand; the probe's name becomes its column group in the report (`text-word/...`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::Device;
use clap::Parser;
use serde::{Deserialize, Serialize};
use webssl_eval::report;
use webssl_eval::results::{Metrics, ProbeResult};
use webssl_models::checkpoint::export::write_atomic;
use webssl_train::Objective;

use webssl_train::run::checkpoint::{CheckpointManager, Resume};
use webssl_train::run::sections::SynthSpec;
use webssl_train::run::{StateMeta, TrainOutcome, ensure_synth};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The experiment file (TOML; see `configs/experiment-demo.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Where `base = "…"` presets of the method configs live.
    #[arg(long, default_value = "configs")]
    pub configs_dir: PathBuf,
    /// Extra override for every cell (`--set optim.total_steps=10`, repeatable), after the file's.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// List the cells and what remains to be done, then exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// The experiment file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Root directory: `<dir>/<cell>/` run dirs, `<dir>/report/`, `<dir>/experiment.json`.
    pub dir: PathBuf,
    /// Overrides applied to every cell.
    #[serde(default)]
    pub set: Vec<String>,
    pub method: Vec<MethodEntry>,
    #[serde(default)]
    pub size: Vec<AxisEntry>,
    #[serde(default)]
    pub data: Vec<AxisEntry>,
    #[serde(default)]
    pub prepare: Vec<Prepare>,
    #[serde(default)]
    pub eval_data: Vec<EvalData>,
    #[serde(default)]
    pub probe: Vec<Probe>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MethodEntry {
    pub name: String,
    /// An objective of `webssl pretrain` (`dino`, `mae`, `clip`); defaults to `name`.
    pub objective: Option<String>,
    /// The objective's config file (relative paths: to the working directory).
    pub config: PathBuf,
    #[serde(default)]
    pub set: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AxisEntry {
    pub name: String,
    #[serde(default)]
    pub set: Vec<String>,
}

/// A `webssl` command line run (as a child process) before any cell when `creates` does not exist.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    pub creates: PathBuf,
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalData {
    pub path: PathBuf,
    pub synth: Option<SynthSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Results go to `<cell>/eval/<name>.json`; the report's column group.
    pub name: String,
    /// A `webssl eval` command line without `webssl eval` (`["knn", "--model", "{export}", ...]`).
    pub args: Vec<String>,
}

/// Trains a cell to the end of its schedule, resuming from its latest checkpoint.
fn train_cell(cell: &Cell, configs_dir: &Path, device: &Device) -> anyhow::Result<TrainOutcome> {
    let (cfg, resolved) =
        cell.objective
            .load(Some(&cell.config), configs_dir, None, &cell.overrides)?;
    // Cells run one at a time, each in this one process.
    let dist = webssl_train::dist::Dist::single();
    Ok(cfg.train(&resolved, Resume::Auto, device, None, &dist)?)
}

/// One training run of the grid.
#[derive(Clone, Debug)]
pub struct Cell {
    pub name: String,
    pub method: String,
    pub objective: &'static Objective,
    pub size: String,
    pub data: String,
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub run_dir: PathBuf,
    pub resolved: toml::Table,
}

/// What happened to a cell in this invocation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Already trained and evaluated.
    Skipped,
    Trained,
    Resumed {
        from_step: u64,
    },
    Evaluated,
}

impl ExperimentConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: ExperimentConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
            .with_context(|| format!("parsing the experiment file {}", path.display()))?;
        if cfg.method.is_empty() {
            bail!(
                "{}: `method` needs at least one [[method]] entry",
                path.display()
            );
        }
        for (what, names) in [
            (
                "method",
                cfg.method.iter().map(|m| &m.name).collect::<Vec<_>>(),
            ),
            ("size", cfg.size.iter().map(|m| &m.name).collect()),
            ("data", cfg.data.iter().map(|m| &m.name).collect()),
            ("probe", cfg.probe.iter().map(|m| &m.name).collect()),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            for n in names {
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    bail!(
                        "{}: {what}.name `{n}` must be non-empty [A-Za-z0-9._-]",
                        path.display()
                    );
                }
                if !seen.insert(n) {
                    bail!("{}: {what}.name `{n}` appears twice", path.display());
                }
            }
        }
        Ok(cfg)
    }

    /// The grid, in order method × size × data, with resolved configs.
    pub fn cells(&self, configs_dir: &Path, extra: &[String]) -> anyhow::Result<Vec<Cell>> {
        let one = [AxisEntry::default()];
        let sizes: &[AxisEntry] = if self.size.is_empty() {
            &one
        } else {
            &self.size
        };
        let datas: &[AxisEntry] = if self.data.is_empty() {
            &one
        } else {
            &self.data
        };
        let mut cells = Vec::new();
        for m in &self.method {
            let objective = match &m.objective {
                Some(o) => Objective::find(o)
                    .with_context(|| format!("method `{}`: `objective`", m.name))?,
                None => Objective::find(&m.name)
                    .with_context(|| format!("method `{}`: set `objective`", m.name))?,
            };
            for s in sizes {
                for d in datas {
                    let mut name = m.name.clone();
                    for part in [&s.name, &d.name] {
                        if !part.is_empty() {
                            name = format!("{name}-{part}");
                        }
                    }
                    let run_dir = self.dir.join(&name);
                    let mut overrides: Vec<String> = m.set.clone();
                    overrides.extend(s.set.iter().cloned());
                    if !d.name.is_empty() {
                        // The report's data column.
                        overrides.push(format!("data.name={}", toml_string(Path::new(&d.name))));
                    }
                    overrides.extend(d.set.iter().cloned());
                    overrides.extend(self.set.iter().cloned());
                    overrides.extend(extra.iter().cloned());
                    overrides.push(format!("run.dir={}", toml_string(&run_dir)));
                    let resolved = objective
                        .load(Some(&m.config), configs_dir, None, &overrides)
                        .map(|(_, resolved)| resolved)
                        .with_context(|| {
                            format!(
                                "cell `{name}` ({} with {})",
                                m.config.display(),
                                overrides.join(" ")
                            )
                        })?;
                    cells.push(Cell {
                        name,
                        method: m.name.clone(),
                        objective,
                        size: s.name.clone(),
                        data: d.name.clone(),
                        config: m.config.clone(),
                        overrides,
                        run_dir,
                        resolved,
                    });
                }
            }
        }
        check_same_data(&cells)?;
        Ok(cells)
    }
}

/// A path as a TOML string literal for `--set` (quoted, so `runs/x` is never parsed as a number).
fn toml_string(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The fields that decide which images a run sees and in which order.
const STREAM_FIELDS: [&str; 4] = ["train", "synth", "num_workers", "shuffle_buffer"];

/// Cells of one data entry must read the identical sample stream.
fn check_same_data(cells: &[Cell]) -> anyhow::Result<()> {
    let stream = |c: &Cell| -> Vec<(String, Option<toml::Value>)> {
        let data = c.resolved.get("data").and_then(|d| d.as_table());
        let mut v = vec![("seed".to_string(), c.resolved.get("seed").cloned())];
        for f in STREAM_FIELDS {
            v.push((format!("data.{f}"), data.and_then(|d| d.get(f)).cloned()));
        }
        v
    };
    for (i, a) in cells.iter().enumerate() {
        let Some(b) = cells[..i].iter().find(|b| b.data == a.data) else {
            continue;
        };
        for ((field, va), (_, vb)) in stream(a).into_iter().zip(stream(b)) {
            if va != vb {
                let show = |v: &Option<toml::Value>| {
                    v.as_ref().map_or("(unset)".into(), |v| v.to_string())
                };
                bail!(
                    "cells `{}` and `{}` would read different data: {field} = {} vs {} — every method of a data entry must see the same images in the same order (set it in the experiment's `set` or the data entry)",
                    b.name,
                    a.name,
                    show(&vb),
                    show(&va)
                );
            }
        }
    }
    Ok(())
}

/// Whether the cell's training is complete: latest checkpoint at `optim.total_steps` and an export.
fn trained(cell: &Cell) -> anyhow::Result<Option<u64>> {
    let total = cell
        .resolved
        .get("optim")
        .and_then(|o| o.get("total_steps"))
        .and_then(|v| v.as_integer())
        .context("resolved config has no optim.total_steps")? as u64;
    let latest = CheckpointManager::new(&cell.run_dir, 1).latest()?;
    let done = latest.as_ref().is_some_and(|(s, _)| *s >= total)
        && cell.run_dir.join("export/model.safetensors").is_file();
    Ok(if done {
        None
    } else {
        Some(latest.map_or(0, |(s, _)| s))
    })
}

fn results_path(cell: &Cell, probe: &Probe) -> PathBuf {
    cell.run_dir
        .join("eval")
        .join(format!("{}.json", probe.name))
}

/// The probe's `webssl eval` arguments with `{export}` and `{image_size}` filled in.
fn probe_args(probe: &Probe, export: &Path) -> anyhow::Result<Vec<String>> {
    let config = export.join("config.json");
    let image_size = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("image_size").and_then(|s| s.as_u64()))
        .with_context(|| format!("{}: no image_size", config.display()))?;
    Ok(probe
        .args
        .iter()
        .map(|a| {
            a.replace("{export}", &export.display().to_string())
                .replace("{image_size}", &image_size.to_string())
        })
        .collect())
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct EvalLine {
    #[command(subcommand)]
    command: super::eval::Command,
}

/// Runs one probe: its own `--output` goes to a temp file, which is renamed with `method` set to the
/// probe name once complete.
fn run_probe(cell: &Cell, probe: &Probe) -> anyhow::Result<()> {
    let out = results_path(cell, probe);
    let dir = out.parent().expect("eval dir");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".{}.partial.json", probe.name));
    let mut args = probe_args(probe, &cell.run_dir.join("export"))?;
    if args.iter().any(|a| a == "--output") {
        bail!(
            "probe `{}`: do not give --output (the experiment sets it)",
            probe.name
        );
    }
    args.push("--output".into());
    args.push(partial.display().to_string());
    // knn/linear embed with --model: keep their feature files out of the results folder.
    let embeds = matches!(args.first().map(String::as_str), Some("knn" | "linear"));
    if embeds && args.iter().any(|a| a == "--model") && !args.iter().any(|a| a == "--features-dir")
    {
        args.push("--features-dir".into());
        args.push(dir.join("features").join(&probe.name).display().to_string());
    }
    let line = EvalLine::try_parse_from(&args)
        .map_err(|e| anyhow::anyhow!("probe `{}`: {e}", probe.name))?;
    super::eval::run(line.command)
        .with_context(|| format!("probe `{}` of {}", probe.name, cell.name))?;
    // Reported under the probe's name (dense probes too: not `<method>-<task>`).
    let mut result = ProbeResult::load(&partial)?;
    result.name = Some(probe.name.clone());
    result.experiment_cell = Some(cell.name.clone());
    result.save(&out)?;
    std::fs::remove_file(&partial).ok();
    Ok(())
}

#[derive(Serialize)]
struct CellRecord {
    name: String,
    method: String,
    size: String,
    data: String,
    run_dir: PathBuf,
    config: PathBuf,
    overrides: Vec<String>,
    action: Action,
    steps: Option<u64>,
    samples_seen: Option<u64>,
    data_identity: Option<webssl_train::run::DataIdentity>,
    /// Wall-clock seconds spent on the cell, all invocations together.
    seconds: f64,
    /// The metrics of each probe's results file.
    results: std::collections::BTreeMap<String, Metrics>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Cells train one after another in this one process; N launched copies would each run (and
    // write) the whole grid.
    let launch = webssl_train::dist::LaunchEnv::from_env()?;
    if launch.world_size > 1 {
        anyhow::bail!(
            "`webssl experiment` runs in one process ({} describes {} ranks): launch `webssl pretrain` \
             with several processes instead",
            launch.source,
            launch.world_size
        );
    }
    let exp = ExperimentConfig::load(&args.config)?;
    let cells = exp.cells(&args.configs_dir, &args.overrides)?;
    println!(
        "experiment {}: {} cell(s) = {} method(s) × {} size(s) × {} data; {} probe(s)",
        args.config.display(),
        cells.len(),
        exp.method.len(),
        exp.size.len().max(1),
        exp.data.len().max(1),
        exp.probe.len()
    );
    for c in &cells {
        let todo = trained(c)?;
        let pending: Vec<&str> = exp
            .probe
            .iter()
            .filter(|p| !results_path(c, p).is_file())
            .map(|p| p.name.as_str())
            .collect();
        println!(
            "  {:<24} {}; probes to run: {}",
            c.name,
            match todo {
                None => "trained".to_string(),
                Some(0) => "to train".to_string(),
                Some(s) => format!("to resume from step {s}"),
            },
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(", ")
            }
        );
    }
    if args.dry_run {
        return Ok(());
    }
    for p in &exp.prepare {
        if p.creates.exists() {
            continue;
        }
        println!("prepare: webssl {}", p.args.join(" "));
        let exe = std::env::current_exe().context("locating the webssl executable")?;
        let status = std::process::Command::new(exe)
            .args(&p.args)
            .status()
            .with_context(|| format!("running webssl {}", p.args.join(" ")))?;
        if !status.success() || !p.creates.exists() {
            bail!(
                "prepare step `webssl {}` failed ({status}) or did not create {}",
                p.args.join(" "),
                p.creates.display()
            );
        }
    }
    for d in &exp.eval_data {
        ensure_synth(&d.path, d.synth.as_ref(), "eval")
            .with_context(|| format!("eval_data {}", d.path.display()))?;
    }
    std::fs::create_dir_all(&exp.dir).with_context(|| format!("creating {}", exp.dir.display()))?;
    let device = crate::device::selected()?;
    // Seconds spent on each cell by earlier invocations, so a rerun that skips it keeps the record.
    let earlier: std::collections::BTreeMap<String, f64> =
        std::fs::read(exp.dir.join("experiment.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("cells").and_then(|c| c.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                Some((
                    c.get("name")?.as_str()?.to_string(),
                    c.get("seconds")?.as_f64()?,
                ))
            })
            .collect();
    let mut records = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let started = Instant::now();
        let mut action = Action::Skipped;
        if let Some(from) = trained(cell)? {
            println!("[{}/{}] {}: training", i + 1, cells.len(), cell.name);
            train_cell(cell, &args.configs_dir, &device)
                .with_context(|| format!("training cell `{}`", cell.name))?;
            action = if from > 0 {
                Action::Resumed { from_step: from }
            } else {
                Action::Trained
            };
        }
        for probe in &exp.probe {
            if results_path(cell, probe).is_file() {
                continue;
            }
            println!(
                "[{}/{}] {}: probe {}",
                i + 1,
                cells.len(),
                cell.name,
                probe.name
            );
            run_probe(cell, probe)?;
            if action == Action::Skipped {
                action = Action::Evaluated;
            }
        }
        if action == Action::Skipped {
            println!(
                "[{}/{}] {}: done earlier, skipped",
                i + 1,
                cells.len(),
                cell.name
            );
        }
        let seconds =
            started.elapsed().as_secs_f64() + earlier.get(&cell.name).copied().unwrap_or(0.0);
        records.push(record(cell, &exp.probe, action, seconds)?);
    }
    let summary = serde_json::json!({
        "config": args.config.display().to_string(),
        "experiment": exp,
        "cells": records,
    });
    write_atomic(
        &exp.dir.join("experiment.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let dirs: Vec<PathBuf> = cells.iter().map(|c| c.run_dir.clone()).collect();
    let collected = report::collect(&dirs).context("collecting results")?;
    for w in &collected.warnings {
        tracing::warn!("{w}");
    }
    let out = exp.dir.join("report");
    let files = report::write_report(&collected, &out)?;
    let metrics = collected.metrics();
    println!();
    print!("{}", report::markdown_table(&collected.runs, &metrics));
    println!(
        "report: {} ({} plot files); cells: {}",
        files.markdown.display(),
        files.plots.len(),
        exp.dir.join("experiment.json").display()
    );
    Ok(())
}

fn record(
    cell: &Cell,
    probes: &[Probe],
    action: Action,
    seconds: f64,
) -> anyhow::Result<CellRecord> {
    let meta: Option<StateMeta> = CheckpointManager::new(&cell.run_dir, 1)
        .latest()?
        .and_then(|(_, dir)| CheckpointManager::load_file(&dir, "state.json").ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut results = std::collections::BTreeMap::new();
    for p in probes {
        if let Ok(r) = ProbeResult::load(&results_path(cell, p)) {
            results.insert(p.name.clone(), r.metrics);
        }
    }
    Ok(CellRecord {
        name: cell.name.clone(),
        method: cell.method.clone(),
        size: cell.size.clone(),
        data: cell.data.clone(),
        run_dir: cell.run_dir.clone(),
        config: cell.config.clone(),
        overrides: cell.overrides.clone(),
        action,
        steps: meta.as_ref().map(|m| m.step),
        samples_seen: meta.as_ref().map(|m| m.samples_seen),
        data_identity: meta.and_then(|m| m.data),
        seconds,
        results,
    })
}
