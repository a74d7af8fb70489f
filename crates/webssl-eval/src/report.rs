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
//! (not under `checkpoints/`, `export/`, `events/` or hidden folders) that is a results file is read:
//!
//! - `webssl eval knn|linear|dense` files: `{"method", "metrics": {name: number, ...}, "task"?, ...}`;
//!   the probe name is `method` (`dense` files add their `task`: `dense-seg`, `dense-depth`);
//! - the `<run>/eval/knn.json` written by `webssl pretrain`: `{"method": "knn", "results": [{"model":
//!   "initialisation"|"trained teacher", "knn": {"per_k": [{"k", "top1", "top5"}]}}]}`: the last entry
//!   gives probe `knn`, the `initialisation` entry probe `knn@init` (k = 20 when scored, else the first k,
//!   as `webssl eval knn` headlines).
//!
//! Other JSON files are skipped and counted. Metric columns are `probe/metric`. Only *scores* become
//! columns: hyper-parameters of the selected classifier (`k`, `lr`, `C`, `n_last_blocks`, `epochs`) and
//! per-k breakdowns (`top1@10`, ...) stay in the results files. When two files of one run give the same
//! column, the more recently modified one wins and a warning names both.
//!
//! Per run, from `config.resolved.toml` (all optional):
//! - **method**: top-level `method` or `run.method`; else inferred from the sections (`heads.dino_*` or
//!   `loss.centering` → `dino`, `decoder` / `mae` / `loss.norm_pix_loss` → `mae`, `text` / `clip` →
//!   `clip`); else from the run directory name (`*dino*`, `*mae*`, `*clip*`); else `unknown`;
//! - **parameters**: `model.params`, else `webssl_models::presets::param_count` of `model.arch` with the
//!   `embed_dim` / `depth` / `num_heads` / `patch_size` / `img_size` overrides (position grid = `crops.global_size`
//!   by default, as the trainer does);
//! - **samples seen**: `optim.total_samples`, else `optim.total_steps × data.batch_size × world size`
//!   (`run.world_size` / `distributed.world_size`, default 1): the planned length, not a stopped run's;
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use serde_json::Value;

use crate::error::{EvalError, Result};

/// How deep [`collect`] looks for runs below a given directory (and for results inside a run).
pub const MAX_DEPTH: usize = 6;
/// Name of the resolved config inside a run dir (as written by `webssl-train`).
pub const RESOLVED_CONFIG: &str = "config.resolved.toml";
/// Metric names that are hyper-parameters of the selected probe, not scores.
const NOT_SCORES: [&str; 6] = ["k", "lr", "C", "n_last_blocks", "epochs", "seed"];
/// Folders of a run dir that never hold results.
const SKIP_DIRS: [&str; 3] = ["checkpoints", "export", "events"];

static FONT_BYTES: &[u8] = include_bytes!("../../webssl-data/assets/fonts/DejaVuSans-Bold.ttf");
static FONT_INIT: Once = Once::new();
const FONT: &str = "sans-serif";

/// One run: what the config says about it and its metrics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RunRow {
    /// Display name: the run directory relative to the directory it was found under (or its file name).
    pub name: String,
    pub dir: PathBuf,
    pub method: String,
    pub arch: Option<String>,
    pub params: Option<u64>,
    pub samples_seen: Option<u64>,
    pub data: Option<String>,
    /// `probe/metric` → value.
    pub metrics: BTreeMap<String, f64>,
    /// The results files read.
    pub files: Vec<PathBuf>,
}

/// Everything [`collect`] found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Collected {
    pub runs: Vec<RunRow>,
    /// JSON files that are not results files.
    pub skipped_files: usize,
    /// Human-readable notes (overridden metrics, unreadable configs).
    pub warnings: Vec<String>,
}

impl Collected {
    /// All metric columns, sorted.
    pub fn metrics(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.runs.iter().flat_map(|r| r.metrics.keys()).collect();
        set.into_iter().cloned().collect()
    }
}

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

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        out.push(e.map_err(|e| io_err(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn find_runs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if dir.join(RESOLVED_CONFIG).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    for p in sorted_entries(dir)? {
        if p.is_dir() && !is_hidden(&p) {
            find_runs(&p, depth - 1, out)?;
        }
    }
    Ok(())
}

fn find_json(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in sorted_entries(dir)? {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if depth > 0 && !is_hidden(&p) && !SKIP_DIRS.contains(&name) {
                find_json(&p, depth - 1, out)?;
            }
        } else if name.ends_with(".json") {
            out.push(p);
        }
    }
    Ok(())
}

/// Finds the runs under `dirs` and reads their configs and results files.
pub fn collect(dirs: &[PathBuf]) -> Result<Collected> {
    let mut found = Collected::default();
    let mut seen = BTreeSet::new();
    for root in dirs {
        if !root.is_dir() {
            return Err(io_err(
                root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let mut runs = Vec::new();
        find_runs(root, MAX_DEPTH, &mut runs)?;
        if runs.is_empty() {
            runs.push(root.clone());
        }
        for dir in runs {
            let canon = dir.canonicalize().map_err(|e| io_err(&dir, e))?;
            if !seen.insert(canon) {
                continue;
            }
            let name = match dir.strip_prefix(root) {
                Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
                _ => dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| dir.display().to_string()),
            };
            let row = read_run(&dir, name, &mut found)?;
            found.runs.push(row);
        }
    }
    found.runs.sort_by(|a, b| {
        (&a.method, a.params, a.samples_seen, &a.name).cmp(&(
            &b.method,
            b.params,
            b.samples_seen,
            &b.name,
        ))
    });
    Ok(found)
}

fn read_run(dir: &Path, name: String, found: &mut Collected) -> Result<RunRow> {
    let mut row = RunRow {
        name,
        dir: dir.to_path_buf(),
        ..RunRow::default()
    };
    let cfg_path = dir.join(RESOLVED_CONFIG);
    let cfg = if cfg_path.is_file() {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io_err(&cfg_path, e))?;
        Some(
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| parse_err(&cfg_path, e.to_string()))?,
        )
    } else {
        None
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    row.method = infer_method(cfg.as_ref(), &dir_name);
    if let Some(cfg) = &cfg {
        row.arch = get(cfg, "model.arch")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        row.params = match model_params(cfg) {
            Ok(p) => p,
            Err(e) => {
                found
                    .warnings
                    .push(format!("{}: model size unknown: {e}", cfg_path.display()));
                None
            }
        };
        row.samples_seen = samples_seen(cfg);
        row.data = data_mix(cfg);
    }
    let mut files = Vec::new();
    find_json(dir, MAX_DEPTH, &mut files)?;
    // Newest last, so a later insert (newer file) overrides an older one.
    let mut dated = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| io_err(&f, e))?;
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            found.skipped_files += 1;
            continue;
        };
        let metrics = parse_results(&value);
        if metrics.is_empty() {
            found.skipped_files += 1;
            continue;
        }
        let mtime = std::fs::metadata(&f)
            .and_then(|m| m.modified())
            .map_err(|e| io_err(&f, e))?;
        dated.push((mtime, f, metrics));
    }
    dated.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (_, f, metrics) in dated {
        for (k, v) in metrics {
            if let Some(old) = origin.insert(k.clone(), f.clone()) {
                found.warnings.push(format!(
                    "{}: `{k}` from {} overrides {}",
                    row.name,
                    f.display(),
                    old.display()
                ));
            }
            row.metrics.insert(k, v);
        }
        row.files.push(f);
    }
    Ok(row)
}

/// The `probe/metric → value` pairs of one results file (empty when it is not one).
pub fn parse_results(value: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(method) = value.get("method").and_then(Value::as_str) else {
        return out;
    };
    let probe = match value.get("task").and_then(Value::as_str) {
        Some(task) => format!("{method}-{task}"),
        None => method.to_string(),
    };
    if let Some(metrics) = value.get("metrics").and_then(Value::as_object) {
        for (k, v) in metrics {
            if NOT_SCORES.contains(&k.as_str()) || k.contains('@') {
                continue;
            }
            if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                out.insert(format!("{probe}/{k}"), x);
            }
        }
    } else if let Some(results) = value.get("results").and_then(Value::as_array) {
        // `webssl pretrain`'s knn.json: one entry per model (initialisation, trained teacher).
        let n = results.len();
        for (i, r) in results.iter().enumerate() {
            let model = r.get("model").and_then(Value::as_str).unwrap_or("");
            let name = if model == "initialisation" {
                format!("{probe}@init")
            } else if i + 1 == n {
                probe.clone()
            } else {
                continue;
            };
            let Some(per_k) = r
                .get(method)
                .and_then(|m| m.get("per_k"))
                .and_then(Value::as_array)
            else {
                continue;
            };
            let head = per_k
                .iter()
                .find(|s| s.get("k").and_then(Value::as_u64) == Some(20))
                .or(per_k.first());
            if let Some(head) = head {
                for m in ["top1", "top5"] {
                    if let Some(x) = head
                        .get(m)
                        .and_then(Value::as_f64)
                        .filter(|x| x.is_finite())
                    {
                        out.insert(format!("{name}/{m}"), x);
                    }
                }
            }
        }
    }
    out
}

fn get<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut cur = table.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn get_u64(table: &toml::Table, dotted: &str) -> Option<u64> {
    get(table, dotted)
        .and_then(|v| v.as_integer())
        .and_then(|i| u64::try_from(i).ok())
}

/// `dino`, `mae`, `clip` or `unknown` (see the module docs for the rules, in order).
pub fn infer_method(cfg: Option<&toml::Table>, dir_name: &str) -> String {
    if let Some(cfg) = cfg {
        for key in ["method", "run.method"] {
            if let Some(m) = get(cfg, key).and_then(|v| v.as_str()) {
                return m.to_ascii_lowercase();
            }
        }
        if get(cfg, "heads.dino_prototypes").is_some() || get(cfg, "loss.centering").is_some() {
            return "dino".into();
        }
        if get(cfg, "decoder").is_some()
            || get(cfg, "mae").is_some()
            || get(cfg, "loss.norm_pix_loss").is_some()
        {
            return "mae".into();
        }
        if get(cfg, "text").is_some() || get(cfg, "clip").is_some() {
            return "clip".into();
        }
    }
    let lower = dir_name.to_ascii_lowercase();
    for m in ["dino", "mae", "clip"] {
        if lower.contains(m) {
            return m.into();
        }
    }
    "unknown".into()
}

fn model_params(cfg: &toml::Table) -> std::result::Result<Option<u64>, String> {
    if let Some(p) = get_u64(cfg, "model.params") {
        return Ok(Some(p));
    }
    let Some(arch) = get(cfg, "model.arch").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let mut v = webssl_models::presets::preset(arch).map_err(|e| e.to_string())?;
    let field = |k: &str| get_u64(cfg, &format!("model.{k}")).map(|x| x as usize);
    if let Some(x) = field("embed_dim") {
        v.embed_dim = x;
    }
    if let Some(x) = field("depth") {
        v.depth = x;
    }
    if let Some(x) = field("num_heads") {
        v.num_heads = x;
    }
    if let Some(x) = field("patch_size") {
        v.patch_size = x;
    }
    if let Some(x) = field("img_size").or(get_u64(cfg, "crops.global_size").map(|x| x as usize)) {
        v.img_size = x;
    }
    v.validate().map_err(|e| e.to_string())?;
    Ok(Some(webssl_models::presets::param_count(&v)))
}

fn samples_seen(cfg: &toml::Table) -> Option<u64> {
    if let Some(s) = get_u64(cfg, "optim.total_samples") {
        return Some(s);
    }
    let steps = get_u64(cfg, "optim.total_steps")?;
    let batch = get_u64(cfg, "data.batch_size")?;
    let world = get_u64(cfg, "run.world_size")
        .or(get_u64(cfg, "distributed.world_size"))
        .unwrap_or(1);
    Some(steps * batch * world)
}

fn data_mix(cfg: &toml::Table) -> Option<String> {
    for key in ["data.name", "data.mix", "data.synth.mix"] {
        if let Some(s) = get(cfg, key).and_then(|v| v.as_str()) {
            return Some(s.to_string());
        }
    }
    get(cfg, "data.train")
        .and_then(|v| v.as_str())
        .and_then(|s| Path::new(s).file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// `1.2B`, `300M`, `5.6K`, `12`: compact counts for tables and legends.
pub fn human_count(n: u64) -> String {
    let x = n as f64;
    let (v, suffix) = if x >= 1e9 {
        (x / 1e9, "B")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "K")
    } else {
        return n.to_string();
    };
    if v >= 100.0 {
        format!("{v:.0}{suffix}")
    } else {
        format!("{v:.1}{suffix}")
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A metric value with 2 decimals, or 3 significant digits below 1 (RMSE 0.00835, not 0.01).
pub fn fmt_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 1.0 {
        let decimals = (2.0 - v.abs().log10().floor()).clamp(2.0, 8.0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2}")
    }
}

/// The Markdown table: one row per run, columns = run info then `metrics`.
pub fn markdown_table(runs: &[RunRow], metrics: &[String]) -> String {
    let mut s = String::from("| run | method | arch | params | samples seen | data |");
    for m in metrics {
        let _ = write!(s, " {} |", md_cell(m));
    }
    s.push_str("\n|---|---|---|---:|---:|---|");
    for _ in metrics {
        s.push_str("---:|");
    }
    s.push('\n');
    let opt = |o: Option<u64>| o.map_or("–".to_string(), human_count);
    for r in runs {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            md_cell(&r.name),
            md_cell(&r.method),
            md_cell(r.arch.as_deref().unwrap_or("–")),
            opt(r.params),
            opt(r.samples_seen),
            md_cell(r.data.as_deref().unwrap_or("–")),
        );
        for m in metrics {
            match r.metrics.get(m) {
                Some(v) => {
                    let _ = write!(s, " {} |", fmt_value(*v));
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The x axis of a scaling plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Backbone parameters.
    Params,
    /// Training samples seen.
    Samples,
}

impl Axis {
    fn of(self, r: &RunRow) -> Option<u64> {
        match self {
            Axis::Params => r.params,
            Axis::Samples => r.samples_seen,
        }
    }
    fn other(self) -> Axis {
        match self {
            Axis::Params => Axis::Samples,
            Axis::Samples => Axis::Params,
        }
    }
    /// File-name suffix (`params` / `samples`).
    pub fn slug(self) -> &'static str {
        match self {
            Axis::Params => "params",
            Axis::Samples => "samples",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Axis::Params => "model size (backbone parameters, log scale)",
            Axis::Samples => "samples seen (log scale)",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Axis::Params => "params",
            Axis::Samples => "samples",
        }
    }
}

/// One plotted line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    pub method: String,
    /// `(run name, x, y)`, sorted by x.
    pub points: Vec<(String, f64, f64)>,
}

/// The lines of the `metric`-vs-`axis` plot: runs that have the metric and a positive x value, grouped by
/// method, and split by the other axis' value when a method's runs differ in it.
pub fn series(runs: &[RunRow], metric: &str, axis: Axis) -> Vec<Series> {
    let mut by_method: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
    for r in runs {
        if r.metrics.contains_key(metric) && axis.of(r).is_some_and(|x| x > 0) {
            by_method.entry(&r.method).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (method, rs) in by_method {
        let others: BTreeSet<Option<u64>> = rs.iter().map(|r| axis.other().of(r)).collect();
        for other in &others {
            let label = if others.len() > 1 {
                match other {
                    Some(v) => format!("{method} @ {} {}", human_count(*v), axis.other().unit()),
                    None => format!("{method} @ ? {}", axis.other().unit()),
                }
            } else {
                method.to_string()
            };
            let mut points: Vec<(String, f64, f64)> = rs
                .iter()
                .filter(|r| axis.other().of(r) == *other)
                .filter_map(|r| Some((r.name.clone(), axis.of(r)? as f64, *r.metrics.get(metric)?)))
                .collect();
            points.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out.push(Series {
                label,
                method: method.to_string(),
                points,
            });
        }
    }
    out
}

/// File-name form of a metric (`dense-seg/miou` → `dense-seg_miou`).
pub fn slug(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV of a plot: `series,method,run,x,y`, one row per plotted point.
pub fn series_csv(series: &[Series], axis: Axis, metric: &str) -> String {
    let mut s = format!("series,method,run,{},{}\n", axis.slug(), csv_field(metric));
    for line in series {
        for (run, x, y) in &line.points {
            let _ = writeln!(
                s,
                "{},{},{},{x},{y}",
                csv_field(&line.label),
                csv_field(&line.method),
                csv_field(run)
            );
        }
    }
    s
}

fn register_font() -> Result<()> {
    let mut failed = false;
    FONT_INIT.call_once(|| {
        failed = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err();
    });
    if failed {
        return Err(io_err(
            Path::new("DejaVuSans-Bold.ttf"),
            std::io::Error::other("the bundled font could not be parsed"),
        ));
    }
    Ok(())
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    io_err(
        path,
        std::io::Error::other(format!("drawing the plot: {e}")),
    )
}

/// Colour of a method's lines (fixed per method so plots agree; others cycle).
fn color(method: &str, i: usize) -> RGBColor {
    match method {
        "dino" => RGBColor(31, 119, 180),
        "mae" => RGBColor(214, 39, 40),
        "clip" => RGBColor(44, 160, 44),
        _ => {
            const CYCLE: [RGBColor; 5] = [
                RGBColor(255, 127, 14),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
                RGBColor(227, 119, 194),
                RGBColor(127, 127, 127),
            ];
            CYCLE[i % CYCLE.len()]
        }
    }
}

/// Shade of the `n`-th line of one method: the first is the method colour, later ones are mixed with
/// black or white in turn so split lines (same method, other-axis value) stay distinguishable.
fn shade(c: RGBColor, n: usize) -> RGBColor {
    if n == 0 {
        return c;
    }
    let t = 0.3 * n.div_ceil(2) as f64;
    let target = if n % 2 == 1 { 0.0 } else { 255.0 };
    let mix = |v: u8| (v as f64 + (target - v as f64) * t.min(0.8)).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// Tick label of a log axis: `10M`, `2.5K`. Within a single decade plotters puts a tick at every
/// 1×…9×; only 1, 2, 3 and 5 are labelled so the labels at the crowded top of the decade do not overlap.
fn axis_label(x: f64, decades: usize) -> String {
    if x <= 0.0 {
        return String::new();
    }
    let mantissa = x / 10f64.powf(x.log10().floor());
    if decades <= 1
        && ![1.0, 2.0, 3.0, 5.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6)
    {
        return String::new();
    }
    human_count(x.round() as u64).replace(".0", "")
}

/// Width of the legend panel right of the chart (pixels).
const LEGEND_W: u32 = 230;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
    metric: &str,
    axis: Axis,
    path: &Path,
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.2));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (1.0, 10.0, 0.0, 1.0);
    }
    // Log axes need a positive span; pad by a factor either side so end points are not on the frame.
    // plotters labels a log axis only at powers of ten (plus 2×..9× when asked for enough labels), so
    // the padded span is widened to whole decades: every plot has at least two labelled ticks.
    x0 = 10f64.powf((x0 / 1.2).log10().floor());
    x1 = 10f64.powf((x1 * 1.2).log10().ceil());
    let decades = (x1 / x0).log10().round() as usize;
    let pad = if y1 > y0 {
        (y1 - y0) * 0.1
    } else {
        y0.abs().max(1.0) * 0.1
    };
    (y0, y1) = (y0 - pad, y1 + pad);
    // Enough decimals that neighbouring y ticks (≈ span / 8 apart) read differently.
    let prec = (-((y1 - y0) / 8.0).log10()).ceil().clamp(0.0, 6.0) as usize;
    // The legend gets its own panel so it never hides a point.
    let (w, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W));
    let title = match axis {
        Axis::Params => "model size",
        Axis::Samples => "samples seen",
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(format!("{metric} vs {title}"), (FONT, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(|e| draw_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(axis.label())
        .y_desc(metric)
        .x_labels(if decades <= 1 { 20 } else { 8 })
        .y_labels(8)
        .max_light_lines(1)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|x| axis_label(*x, decades))
        .y_label_formatter(&|y| format!("{y:.prec$}"))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    let mut per_method: BTreeMap<&str, usize> = BTreeMap::new();
    let mut colors = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let n = per_method.entry(&s.method).or_insert(0);
        let c = shade(color(&s.method, i), *n);
        *n += 1;
        colors.push(c);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.1, p.2)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| draw_err(path, e))?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|e| draw_err(path, e))?;
    }
    let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK);
    legend
        .draw(&Text::new("method", (12, 48), style.clone()))
        .map_err(|e| draw_err(path, e))?;
    for (i, (s, c)) in series.iter().zip(&colors).enumerate() {
        let y = 74 + 22 * i as i32;
        legend
            .draw(&PathElement::new(vec![(12, y), (40, y)], c.stroke_width(3)))
            .map_err(|e| draw_err(path, e))?;
        legend
            .draw(&Circle::new((26, y), 4, c.filled()))
            .map_err(|e| draw_err(path, e))?;
        legend
            .draw(&Text::new(s.label.clone(), (48, y - 7), style.clone()))
            .map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))?;
    Ok(())
}

/// Plot size in pixels (PNG) / user units (SVG).
pub const PLOT_SIZE: (u32, u32) = (960, 560);

/// Writes `<stem>.png`, `<stem>.svg` and `<stem>.csv` for one metric and axis.
pub fn write_plot(
    series: &[Series],
    metric: &str,
    axis: Axis,
    out_dir: &Path,
    stem: &str,
) -> Result<[PathBuf; 3]> {
    register_font()?;
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    let csv = out_dir.join(format!("{stem}.csv"));
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(root, series, metric, axis, &png)?;
    }
    // Encoded with the workspace `image` (plotters' own encoder would pull a second `image` version).
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| draw_err(&png, "bitmap buffer size mismatch"))?;
    img.save_with_format(&png, image::ImageFormat::Png)
        .map_err(|e| draw_err(&png, e))?;
    {
        let root = SVGBackend::new(&svg, (w, h)).into_drawing_area();
        draw(root, series, metric, axis, &svg)?;
    }
    std::fs::write(&csv, series_csv(series, axis, metric)).map_err(|e| io_err(&csv, e))?;
    Ok([png, svg, csv])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_counts() {
        assert_eq!(human_count(12), "12");
        assert_eq!(human_count(5_500), "5.5K");
        assert_eq!(human_count(304_000_000), "304M");
        assert_eq!(human_count(2_000_000_000), "2.0B");
    }

    #[test]
    fn table_values() {
        assert_eq!(fmt_value(41.5), "41.50");
        assert_eq!(fmt_value(0.0), "0.00");
        assert_eq!(fmt_value(0.3070), "0.307");
        assert_eq!(fmt_value(0.008351), "0.00835");
        assert_eq!(fmt_value(-2.5), "-2.50");
    }

    #[test]
    fn log_axis_labels() {
        assert_eq!(axis_label(1e7, 3), "10M");
        assert_eq!(axis_label(2e3, 1), "2K");
        assert_eq!(axis_label(500.0, 1), "500");
        assert_eq!(
            axis_label(700.0, 1),
            "",
            "only 1, 2, 3, 5 within one decade"
        );
        assert_eq!(axis_label(700.0, 2), "700");
    }

    #[test]
    fn method_inference_order() {
        let t: toml::Table = toml::from_str("[heads]\ndino_prototypes = 4").unwrap();
        assert_eq!(infer_method(Some(&t), "my-mae-run"), "dino");
        let t: toml::Table =
            toml::from_str("method = \"CLIP\"\n[heads]\ndino_prototypes = 4").unwrap();
        assert_eq!(infer_method(Some(&t), "x"), "clip");
        assert_eq!(infer_method(None, "web-mae-1b"), "mae");
        assert_eq!(infer_method(None, "baseline"), "unknown");
    }

    #[test]
    fn scores_only_and_pretrain_knn() {
        let v: Value = serde_json::json!({"method": "knn", "metrics": {"top1": 50.0, "k": 20, "top1@10": 40.0, "best": "x"}});
        let m = parse_results(&v);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["knn/top1"]);
        let v: Value = serde_json::json!({"method": "knn", "results": [
            {"model": "initialisation", "knn": {"per_k": [{"k": 10, "top1": 1.0, "top5": 2.0}, {"k": 20, "top1": 3.0, "top5": 4.0}]}},
            {"model": "trained teacher", "knn": {"per_k": [{"k": 10, "top1": 5.0, "top5": 6.0}]}}]});
        let m = parse_results(&v);
        assert_eq!(m["knn@init/top1"], 3.0);
        assert_eq!(m["knn/top1"], 5.0);
        assert_eq!(m["knn/top5"], 6.0);
        assert!(parse_results(&serde_json::json!({"metrics": {"a": 1}})).is_empty());
    }
}
