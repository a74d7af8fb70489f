//! `webssl report`: results JSON from run directories → one Markdown table and the Web-SSL scaling plots.
//!
//! Reference: Web-SSL (arXiv 2504.01017) Fig. 1–3: a metric against model size (log x, 1B…7B) at fixed data,
//! and against samples seen (log x) at fixed size, one line per method (Web-DINO, Web-MAE, CLIP).
//!
//! # What is collected
//!
//! A directory given to [`collect`] is a **run** when it holds `config.resolved.toml`; otherwise the runs
//! below it (up to [`MAX_DEPTH`] levels) are used, and when there are none the directory itself is a run
//! without config (e.g. the results of `webssl eval` on an HF checkpoint). Inside a run every `*.json`
//! (not under `checkpoints/`, `export/`, `events/` or hidden folders) that is a results file
//! ([`crate::results::ProbeResult`], written by `webssl eval knn|linear|dense` and by `webssl pretrain`'s
//! kNN report) gives the run its [`ProbeResult::scores`](crate::results::ProbeResult::scores):
//! columns `probe/metric` (`dense-seg/miou`, `knn@init/top1` for a baseline). Only *scores* become
//! columns: hyper-parameters of the selected classifier (`k`, `lr`, `C`, `n_last_blocks`) and per-k
//! breakdowns (`top1@10`, ...) stay in the results files.
//!
//! Other JSON files are skipped and counted; one with a `method` that is not a valid results file
//! is skipped with a warning naming it. When two files of one run give the same column, the more
//! recently modified one wins and a warning names both.
//!
//! Per run, from `config.resolved.toml` (all optional):
//! - **method**: top-level `method` or `run.method`; else inferred from the sections (`heads.dino_*` or
//!   `loss.centering` → `dino`, `decoder` / `mae` / `loss.norm_pix_loss` → `mae`, `text` / `clip` →
//!   `clip`); else from the run directory name (`*dino*`, `*mae*`, `*clip*`); else `unknown`;
//! - **parameters**: `model.params`, else `webssl_models::presets::param_count` of `model.arch` with the
//!   `embed_dim` / `depth` / `num_heads` / `patch_size` / `img_size` overrides (position grid = `crops.global_size`
//!   by default, as the trainer does);
//! - **samples seen**: `optim.total_samples`, else `optim.total_steps × data.global_batch_size`, else
//!   `optim.total_steps × data.batch_size × world size` (`run.world_size` / `distributed.world_size`,
//!   default 1): the planned length, not a stopped run's;
//! - **data**: `data.name`, else `data.mix`, else `data.synth.mix`, else the file name of `data.train`.
//!
//! # What is written ([`write_report`])
//!
//! `report.md` (rows = runs sorted by method, size, samples; columns = run info + metrics) and, per
//! metric, `<slug>_vs_params.{png,svg,csv}` and `<slug>_vs_samples.{png,svg,csv}`: log-x, one line per
//! method; when a method's runs differ in the *other* axis, each value of it gets its own line
//! (`dino @ 2.0B samples`), so a line is always a clean one-variable sweep. The CSV holds exactly the
//! plotted points (`series,method,run,x,y`).
//!
//! Fonts: plotters' `ab_glyph` backend with the bundled DejaVu Sans Bold (registered once), so PNG text
//! renders on machines without system fonts (CI); SVG keeps text as `<text>` elements.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};

mod collect;
mod plots;
mod table;

pub use collect::{Collected, MAX_DEPTH, RESOLVED_CONFIG, RunRow, collect, infer_method};
pub use plots::{Axis, PLOT_SIZE, Series, series, series_csv, slug, write_plot};
pub use table::{fmt_value, human_count, markdown_table};

fn io_err(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_err(path: &Path, message: impl Into<String>) -> EvalError {
    EvalError::Parse {
        path: path.to_path_buf(),
        line: None,
        message: message.into(),
    }
}

/// The files [`write_report`] wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    /// Every PNG, SVG and CSV written.
    pub plots: Vec<PathBuf>,
}

/// Writes `report.md` and, per metric and axis with at least one point, the PNG/SVG/CSV plot triple.
pub fn write_report(collected: &Collected, out_dir: &Path) -> Result<ReportFiles> {
    std::fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, e))?;
    let metrics = collected.metrics();
    let mut md = String::from("# webssl report\n\n");
    let _ = writeln!(
        md,
        "{} run(s), {} metric(s). Metrics are `probe/metric` from the runs' results files; params = \
         backbone parameters; samples seen = planned total steps × global batch.\n",
        collected.runs.len(),
        metrics.len()
    );
    md.push_str(&markdown_table(&collected.runs, &metrics));
    let mut files = ReportFiles::default();
    let mut plot_lines = Vec::new();
    for m in &metrics {
        for axis in [Axis::Params, Axis::Samples] {
            let s = series(&collected.runs, m, axis);
            if s.iter().all(|l| l.points.is_empty()) {
                continue;
            }
            let stem = format!("{}_vs_{}", slug(m), axis.slug());
            let written = write_plot(&s, m, axis, out_dir, &stem)?;
            plot_lines.push(format!(
                "- `{m}` vs {}: [{stem}.png]({stem}.png) · [svg]({stem}.svg) · [csv]({stem}.csv)",
                axis.unit()
            ));
            files.plots.extend(written);
        }
    }
    if !plot_lines.is_empty() {
        md.push_str("\n## Plots\n\n");
        md.push_str(&plot_lines.join("\n"));
        md.push('\n');
    }
    if !collected.warnings.is_empty() {
        md.push_str("\n## Warnings\n\n");
        for w in &collected.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    let path = out_dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| io_err(&path, e))?;
    files.markdown = path;
    Ok(files)
}
