//! Collection: finding runs, reading their configs and results files ([`collect`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{io_err, parse_err};
use crate::error::Result;
use crate::results::ProbeResult;

/// How deep [`collect`] looks for runs below a given directory (and for results inside a run).
pub const MAX_DEPTH: usize = 6;
/// Name of the resolved config inside a run dir (as written by `webssl-train`).
pub const RESOLVED_CONFIG: &str = "config.resolved.toml";
/// Folders of a run dir that never hold results.
const SKIP_DIRS: [&str; 3] = ["checkpoints", "export", "events"];

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
        // Only objects with a `method` claim to be results files; one that fails to parse is named.
        let claims = serde_json::from_str::<Value>(&text)
            .is_ok_and(|v| v.get("method").is_some_and(Value::is_string));
        let metrics = match ProbeResult::from_json(&f, &text) {
            Ok(r) => r.scores(),
            Err(e) => {
                if claims {
                    found.warnings.push(format!("{}: skipped: {e}", row.name));
                }
                BTreeMap::new()
            }
        };
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
    // A fixed global batch (gradient accumulation) is the same at any world size.
    if let Some(global) = get_u64(cfg, "data.global_batch_size") {
        return Some(steps * global);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
