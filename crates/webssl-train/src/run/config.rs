//! Config loading: TOML file or named preset (with `base = "…"` inheritance) + `--set a.b=c`
//! overrides, deserialized into the trainer's serde struct, with errors that name the source and
//! the full dotted key.
//!
//! Resolution (ruff's three layers, dinov2's default-yaml + run-yaml + dotlist): the chain of
//! `base` presets is deep-merged (later wins; tables merge key by key, everything else, arrays
//! included, is replaced), then each `--set` is applied in order, then the merged table is
//! deserialized into `T`. `T` should carry `#[serde(deny_unknown_fields)]` on every struct: that is
//! what turns a typo (`optim.lrr`) into an error; the message then lists the valid keys at that
//! level and suggests the nearest one. The returned *resolved* table is `T` serialized back, so it
//! contains every default too, which is what `config.resolved.toml` must record.
//!
//! `--set` values are TOML literals (`1e-3`, `true`, `[224, 96]`, `"quoted"`, `{lr = 1}`); a value
//! that is not a valid literal (`vit-small`, `runs/x`) is taken as a string, and a literal that the
//! field rejects is retried once as its raw text (`--set data.tag=2024` gives `"2024"` to a string
//! field), since shells strip the quotes users type. The key `base` is reserved at the top level of a file.
//!
//! Example: `webssl pretrain dino --config configs/demo.toml --set optim.lr=2e-3 --set model.arch=vit-small`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::error::{Result, TrainError};

/// The key a config file uses to inherit from another preset.
pub const BASE_KEY: &str = "base";
/// Longest `base` chain followed before assuming a mistake (cycles are caught separately).
const MAX_BASE_DEPTH: usize = 16;

/// Loads the config: `file`, else `{preset_dir}/{preset}.toml`, else an empty table (all defaults),
/// then the `overrides` (`"a.b=c"`), then deserializes `T`. Returns `T` and the resolved table
/// (`T` serialized back, defaults included). Giving both `file` and `preset` is an error.
pub fn load_config<T: DeserializeOwned + Serialize>(
    file: Option<&Path>,
    preset_dir: &Path,
    preset: Option<&str>,
    overrides: &[String],
) -> Result<(T, Table)> {
    let mut origins = Origins::default();
    let (mut table, root_origin) = match (file, preset) {
        (Some(f), Some(p)) => {
            return Err(TrainError::config(
                "config",
                format!(
                    "give either a config file ({}) or a preset ({p}), not both",
                    f.display()
                ),
            ));
        }
        (Some(f), None) => (
            load_file_with_bases(f, &mut origins, &mut Vec::new())?,
            f.display().to_string(),
        ),
        (None, Some(name)) => {
            let path = preset_path(preset_dir, name)?;
            (
                load_file_with_bases(&path, &mut origins, &mut Vec::new())?,
                path.display().to_string(),
            )
        }
        (None, None) => (Table::new(), "defaults".to_string()),
    };
    let mut applied = Vec::with_capacity(overrides.len());
    for o in overrides {
        applied.push(apply_override(&mut table, o, &mut origins)?);
    }
    let mut retried = vec![false; applied.len()];
    let cfg: T = loop {
        let err = match serde_path_to_error::deserialize(Value::Table(table.clone())) {
            Ok(cfg) => break cfg,
            Err(e) => e,
        };
        let (key, reason) = describe(err);
        // A `--set` literal the field rejects (`data.tag=2024` for a string field) is retried
        // once as the raw string; only the last override of a key is in effect.
        let owner = applied
            .iter()
            .rposition(|a| key == a.dotted || key.starts_with(&format!("{}.", a.dotted)));
        if let Some(i) =
            owner.filter(|&i| !retried[i] && !matches!(applied[i].value, Value::String(_)))
        {
            retried[i] = true;
            set_at(
                &mut table,
                &applied[i].path,
                Value::String(applied[i].raw.clone()),
            );
            continue;
        }
        let origin = origins.lookup(&key).unwrap_or(&root_origin).clone();
        return Err(TrainError::ConfigValue {
            origin,
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key
            },
            reason,
        });
    };
    let resolved = Table::try_from(&cfg).map_err(|e| {
        TrainError::config(
            "config",
            format!("the resolved config cannot be written as TOML: {e}"),
        )
    })?;
    Ok((cfg, resolved))
}

/// The dotted key and message of a deserialization error (the unknown-field case completed
/// with a suggestion).
fn describe(e: serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let segments: Vec<String> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => Some(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Some(format!("[{index}]")),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    // toml appends "\nin `optim`" context lines: the dotted key already says where.
    let reason = e.into_inner().to_string();
    let reason = reason
        .lines()
        .filter(|l| !l.starts_with("in `") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut key = join_key(&segments);
    let reason = match unknown_field(&reason) {
        Some((field, expected)) => {
            // Some deserializers report an unknown field at its parent: name the full key.
            if segments.last() != Some(&field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            match suggest(&field, &expected) {
                Some(s) => format!("{reason} (did you mean `{s}`?)"),
                None => reason,
            }
        }
        None => reason,
    };
    (key, reason)
}

/// One applied `--set`: where it wrote, the raw text, and the value it wrote.
struct Applied {
    path: Vec<String>,
    dotted: String,
    raw: String,
    value: Value,
}

/// Replaces the value at `path` (which exists: an override just wrote it).
fn set_at(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for p in parents {
        match cur.get_mut(p) {
            Some(Value::Table(t)) => cur = t,
            _ => return,
        }
    }
    cur.insert(last.clone(), value);
}

/// The config as pretty TOML (for printing the resolved config). A config that TOML cannot
/// represent (a non-table top level) yields a `#` comment saying so rather than a panic.
pub fn to_toml_string<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg)
        .unwrap_or_else(|e| format!("# config cannot be written as TOML: {e}\n"))
}

/// Dotted-key differences `old -> new` (`"optim.lr: 0.001 -> 0.002"`, `"x: (absent) -> 1"`), in
/// key order; empty when equal.
pub fn diff_tables(old: &Table, new: &Table) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    out
}

fn diff_into(old: &Table, new: &Table, prefix: &str, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (old.get(k), new.get(k)) {
            (Some(Value::Table(a)), Some(Value::Table(b))) => diff_into(a, b, &key, out),
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                let show =
                    |v: Option<&Value>| v.map_or_else(|| "(absent)".to_string(), |v| v.to_string());
                out.push(format!("{key}: {} -> {}", show(a), show(b)));
            }
        }
    }
}

/// Where each dotted key's value came from, for error messages.
#[derive(Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn record(&mut self, key: &str, value: &Value, origin: &str) {
        // A replaced subtree forgets the origins of its old leaves.
        let prefix = format!("{key}.");
        self.0.retain(|k, _| !k.starts_with(&prefix));
        self.0.insert(key.to_string(), origin.to_string());
        if let Value::Table(t) = value {
            for (k, v) in t {
                self.record(&format!("{key}.{k}"), v, origin);
            }
        }
    }
    /// The origin of `key` or of its nearest recorded parent.
    fn lookup(&self, key: &str) -> Option<&String> {
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return Some(o);
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
        }
    }
}

fn join_key(segments: &[String]) -> String {
    let mut key = String::new();
    for s in segments {
        if !key.is_empty() && !s.starts_with('[') {
            key.push('.');
        }
        key.push_str(s);
    }
    key
}

fn preset_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    if path.is_file() {
        return Ok(path);
    }
    let mut available: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".toml"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    available.sort();
    let hint = match suggest(name, &available) {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    };
    Err(TrainError::config(
        "preset",
        format!(
            "no preset `{name}` in {} (available: {}){hint}",
            dir.display(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        ),
    ))
}

/// Reads `path`, recursively merging the preset chain named by its `base` key underneath it.
fn load_file_with_bases(
    path: &Path,
    origins: &mut Origins,
    chain: &mut Vec<PathBuf>,
) -> Result<Table> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| TrainError::ConfigValue {
            origin: shown.clone(),
            key: "(syntax)".into(),
            reason: e.to_string().trim_end().to_string(),
        })?;
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&canonical) {
        let names: Vec<String> = chain
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        return Err(TrainError::ConfigValue {
            origin: shown,
            key: BASE_KEY.into(),
            reason: format!("`base` cycle: {}", names.join(" -> ")),
        });
    }
    if chain.len() >= MAX_BASE_DEPTH {
        return Err(TrainError::ConfigValue {
            origin: shown,
            key: BASE_KEY.into(),
            reason: format!("more than {MAX_BASE_DEPTH} nested `base` presets"),
        });
    }
    chain.push(canonical);
    let mut merged = match table.remove(BASE_KEY) {
        None => Table::new(),
        Some(Value::String(base)) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // `base = "vit-b"` names a preset beside this file; `base = "../x.toml"` is a path.
            let base_path = if base.ends_with(".toml") {
                dir.join(&base)
            } else {
                dir.join(format!("{base}.toml"))
            };
            if !base_path.is_file() {
                return Err(TrainError::ConfigValue {
                    origin: shown,
                    key: BASE_KEY.into(),
                    reason: format!(
                        "base preset `{base}` not found (looked for {})",
                        base_path.display()
                    ),
                });
            }
            load_file_with_bases(&base_path, origins, chain)?
        }
        Some(other) => {
            return Err(TrainError::ConfigValue {
                origin: shown,
                key: BASE_KEY.into(),
                reason: format!("expected a preset name string, got {}", other.type_str()),
            });
        }
    };
    chain.pop();
    merge_into(&mut merged, table, "", &shown, origins);
    Ok(merged)
}

/// Deep merge: tables merge key by key, any other value (arrays included) replaces.
fn merge_into(dst: &mut Table, src: Table, prefix: &str, origin: &str, origins: &mut Origins) {
    for (k, v) in src {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(&k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge_into(d, s, &key, origin, origins),
            (_, v) => {
                origins.record(&key, &v, origin);
                dst.insert(k, v);
            }
        }
    }
}

/// Applies one `--set a.b=c` to the merged table.
fn apply_override(table: &mut Table, arg: &str, origins: &mut Origins) -> Result<Applied> {
    let origin = format!("--set {arg}");
    let bad = |key: &str, reason: String| TrainError::ConfigValue {
        origin: origin.clone(),
        key: key.to_string(),
        reason,
    };
    let Some((raw_key, raw_value)) = arg.split_once('=') else {
        return Err(bad(
            arg.trim(),
            "expected KEY=VALUE (e.g. optim.lr=1e-3)".into(),
        ));
    };
    let raw_key = raw_key.trim();
    let path = parse_key(raw_key).ok_or_else(|| bad(raw_key, "not a valid dotted key".into()))?;
    let dotted = path.join(".");

    // Walk to the parent table, creating missing tables (an unknown key is caught by
    // deny_unknown_fields when T is deserialized, with the valid keys listed).
    let (last, parents) = path
        .split_last()
        .expect("parse_key returns at least one segment");
    let mut cur = &mut *table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => cur = t,
            other => {
                return Err(bad(
                    &dotted,
                    format!(
                        "`{}` is a {}, not a table",
                        path[..=i].join("."),
                        other.type_str()
                    ),
                ));
            }
        }
    }
    let raw = raw_value.trim().to_string();
    let value = parse_value(&raw);
    let mut single = Table::new();
    single.insert(last.clone(), value.clone());
    let prefix = parents.join(".");
    merge_into(cur, single, &prefix, &origin, origins);
    Ok(Applied {
        dotted,
        path,
        raw,
        value,
    })
}

/// `a.b."c.d"` -> `["a", "b", "c.d"]`, using TOML's own dotted-key grammar.
fn parse_key(key: &str) -> Option<Vec<String>> {
    if key.is_empty() || key.contains(['\n', '=']) {
        return None;
    }
    let doc: Table = format!("{key} = 0").parse().ok()?;
    let mut path = Vec::new();
    let mut cur = &doc;
    loop {
        if cur.len() != 1 {
            return None;
        }
        let (k, v) = cur.iter().next()?;
        path.push(k.clone());
        match v {
            Value::Table(t) => cur = t,
            Value::Integer(0) => return Some(path),
            _ => return None,
        }
    }
}

/// A TOML literal, else the raw text as a string (shells strip the quotes users type).
fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// From serde's "unknown field `x`, expected one of `a`, `b`" / "expected `a`" / "there are no
/// fields": the unknown name and the valid ones.
fn unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

/// The closest candidate to `name`, if it is close enough to be a plausible typo, else the only
/// candidate that `name` abbreviates (`lr` -> `lr_per_1024`).
fn suggest(name: &str, candidates: &[String]) -> Option<String> {
    let close = candidates
        .iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(name, c), c))
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone());
    close.or_else(|| {
        let mut prefixed = candidates
            .iter()
            .filter(|c| name.len() >= 2 && c.starts_with(name));
        match (prefixed.next(), prefixed.next()) {
            (Some(c), None) => Some(c.clone()),
            _ => None,
        }
    })
}

/// Range checks for numeric config fields, shared by every config's `validate()`: each error names
/// the dotted field, the range and the value given (`invalid config `heads.hidden_dim`: must be ≥ 1,
/// got 0`), so a bad value is refused before any work instead of crashing a kernel later.
pub mod check {
    use std::ops::{Bound, RangeBounds};

    use crate::error::{Result, TrainError};

    /// Largest `optim.total_steps` and step counts (far beyond any recipe; keeps `steps · batch`
    /// and the schedules' arithmetic in range).
    pub const MAX_STEPS: u64 = 1_000_000_000;
    /// Largest images per step on one process.
    pub const MAX_BATCH: u64 = 1 << 16;
    /// Largest head / projection width (prototypes, hidden and bottleneck widths, text width).
    pub const MAX_WIDTH: u64 = 1 << 20;

    /// An integer field in `lo..=hi`.
    pub fn int(field: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
        if v < lo {
            Err(TrainError::config(
                field,
                format!("must be ≥ {lo}, got {v}"),
            ))
        } else if v > hi {
            Err(TrainError::config(
                field,
                format!("must be ≤ {hi}, got {v}"),
            ))
        } else {
            Ok(())
        }
    }

    /// A finite float within `range` (`0.0..=1.0`, `0.0..1.0`, `0.0..`).
    pub fn float(field: &str, v: f64, range: impl RangeBounds<f64>) -> Result<()> {
        if v.is_finite() && range.contains(&v) {
            return Ok(());
        }
        let lo = match range.start_bound() {
            Bound::Included(x) => format!("[{x}"),
            Bound::Excluded(x) => format!("({x}"),
            Bound::Unbounded => "(-inf".into(),
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => format!("{x}]"),
            Bound::Excluded(x) => format!("{x})"),
            Bound::Unbounded => "inf)".into(),
        };
        Err(TrainError::config(
            field,
            format!("must be a finite number in {lo}, {hi}, got {v}"),
        ))
    }

    /// A finite float > 0 (a temperature, an epsilon).
    pub fn positive(field: &str, v: f64) -> Result<()> {
        float(field, v, (Bound::Excluded(0.0), Bound::Unbounded))
    }

    /// A finite float ≥ 0 (a learning rate, a weight decay, a loss weight).
    pub fn non_negative(field: &str, v: f64) -> Result<()> {
        float(field, v, 0.0..)
    }

    /// An area range of RandomResizedCrop: `0 < min ≤ max ≤ 1`.
    pub fn scale(field: &str, (lo, hi): (f64, f64)) -> Result<()> {
        if 0.0 < lo && lo <= hi && hi <= 1.0 {
            return Ok(());
        }
        Err(TrainError::config(
            field,
            format!("({lo}, {hi}) is not a range with 0 < min ≤ max ≤ 1"),
        ))
    }

    /// AdamW's `(β1, β2)`, each in `[0, 1)`.
    pub fn betas(field: &str, (b1, b2): (f64, f64)) -> Result<()> {
        if (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) {
            return Ok(());
        }
        Err(TrainError::config(
            field,
            format!("each must be in [0, 1), got ({b1}, {b2})"),
        ))
    }

    /// `warmup` steps within `total` steps.
    pub fn warmup(field: &str, warmup: u64, total: u64) -> Result<()> {
        if warmup > total {
            return Err(TrainError::config(
                field,
                format!("{warmup} exceeds optim.total_steps {total}"),
            ));
        }
        Ok(())
    }

    /// The backbone's patch size: `model.patch_size`, else the preset `arch`'s, in
    /// `1..=MAX_IMG_SIZE`. Checked before the crop sizes that must be multiples of it.
    pub fn patch_size(arch: &str, patch_size: Option<usize>) -> Result<u32> {
        let preset = webssl_models::presets::preset(arch).map_err(|e| in_section("model", e))?;
        let p = patch_size.unwrap_or(preset.patch_size) as u64;
        int("model.patch_size", p, 1, MAX_IMG_SIZE)?;
        Ok(p as u32)
    }

    /// A square crop side: a multiple of the patch size `p`, at most `MAX_IMG_SIZE`.
    pub fn crop_side(field: &str, size: u32, p: u32) -> Result<()> {
        int(field, size.into(), p.into(), MAX_IMG_SIZE)?;
        if !size.is_multiple_of(p) {
            return Err(TrainError::config(
                field,
                format!("{size} is not a multiple of the patch size {p} (model.patch_size)"),
            ));
        }
        Ok(())
    }

    const MAX_IMG_SIZE: u64 = webssl_models::config::limits::MAX_IMG_SIZE as u64;

    /// A model-crate error about one of the backbone's fields, renamed to the config key that
    /// set it (`patch_size` → `model.patch_size`).
    pub fn in_section(section: &str, e: webssl_models::ModelError) -> TrainError {
        match e {
            webssl_models::ModelError::Config { field, reason } => {
                TrainError::config(format!("{section}.{field}"), reason)
            }
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        seed: u64,
        optim: Optim,
        model: Model,
        #[serde(default)]
        data: Data,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Optim {
        lr: f64,
        #[serde(default = "default_wd")]
        wd: f64,
        #[serde(default)]
        betas: Vec<f64>,
    }
    fn default_wd() -> f64 {
        0.04
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Model {
        arch: Arch,
        #[serde(default)]
        drop_path: f64,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Arch {
        VitSmall,
        VitBase,
    }
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Data {
        #[serde(default)]
        path: String,
        #[serde(default)]
        tag: String,
        #[serde(default)]
        crops: Option<u32>,
    }

    fn presets() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("vit-s.toml"), "seed = 1\n[optim]\nlr = 1e-3\nbetas = [0.9, 0.999]\n[model]\narch = \"vit-small\"\ndrop_path = 0.1\n").unwrap();
        fs::write(
            d.path().join("demo.toml"),
            "base = \"vit-s\"\n[optim]\nwd = 0.05\n[data]\npath = \"shards/\"\ntag = \"x\"\n",
        )
        .unwrap();
        d
    }

    fn load(dir: &Path, preset: Option<&str>, sets: &[&str]) -> Result<(Cfg, Table)> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load_config(None, dir, preset, &sets)
    }

    #[test]
    fn base_inheritance_deep_merges_and_defaults_fill_in() {
        let d = presets();
        let (cfg, resolved) = load(d.path(), Some("demo"), &[]).unwrap();
        assert_eq!(
            cfg,
            Cfg {
                seed: 1,
                optim: Optim {
                    lr: 1e-3,
                    wd: 0.05,
                    betas: vec![0.9, 0.999]
                },
                model: Model {
                    arch: Arch::VitSmall,
                    drop_path: 0.1
                },
                data: Data {
                    path: "shards/".into(),
                    tag: "x".into(),
                    crops: None
                },
            }
        );
        // The resolved table carries every field (defaults too) and no `base`, and round-trips.
        assert!(!resolved.contains_key(BASE_KEY));
        let text = toml::to_string_pretty(&resolved).unwrap();
        let back: Cfg = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(to_toml_string(&cfg).parse::<Table>().unwrap(), resolved);

        // The same through an explicit file path.
        let (cfg2, _) = load_config::<Cfg>(
            Some(&d.path().join("demo.toml")),
            Path::new("/nonexistent"),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(cfg2, cfg);
    }

    #[test]
    fn overrides_parse_literals_and_strings() {
        let d = presets();
        let (cfg, resolved) = load(
            d.path(),
            Some("demo"),
            &[
                "optim.lr=2e-3",
                "optim.wd = 1", // integer accepted for f64
                "model.arch=vit-base",
                "data.path=runs/x y",
                "data.tag=2024",
                "data.crops=8",
                "optim.betas=[0.8, 0.9]",
                "seed=7",
                "data.path=\"quoted\"",
            ],
        )
        .unwrap();
        assert_eq!(cfg.optim.lr, 2e-3);
        assert_eq!(cfg.optim.wd, 1.0);
        assert_eq!(cfg.model.arch, Arch::VitBase);
        assert_eq!(cfg.data.path, "quoted", "later --set wins");
        assert_eq!(cfg.data.tag, "2024", "string-typed key keeps strings");
        assert_eq!(cfg.data.crops, Some(8));
        assert_eq!(cfg.optim.betas, vec![0.8, 0.9]);
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.model.drop_path, 0.1, "untouched keys survive");
        assert_eq!(resolved["optim"]["lr"].as_float(), Some(2e-3));
        let (cfg, _) = load(
            d.path(),
            Some("demo"),
            &["data.tag=2024-01-01", "data.path=[1]"],
        )
        .unwrap();
        assert_eq!(
            (cfg.data.tag.as_str(), cfg.data.path.as_str()),
            ("2024-01-01", "[1]")
        );
        // Overrides without any file: defaults + the required fields set on the command line.
        let (cfg, _) = load(d.path(), None, &["optim.lr=0.5", "model.arch=vit-small"]).unwrap();
        assert_eq!((cfg.optim.lr, cfg.optim.wd, cfg.seed), (0.5, 0.04, 0));
    }

    #[test]
    fn errors_name_source_and_full_key() {
        let d = presets();
        // A typo in an override: the full dotted key, the valid keys and a suggestion.
        let err = load(d.path(), Some("demo"), &["optim.lrr=1"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--set optim.lrr=1: optim.lrr: unknown field `lrr`"),
            "{err}"
        );
        assert!(
            err.contains("`lr`") && err.contains("`wd`") && err.contains("did you mean `lr`?"),
            "{err}"
        );

        // A typo inside a file names that file.
        fs::write(
            d.path().join("typo.toml"),
            "base = \"demo\"\n[model]\ndrop_pth = 0.2\n",
        )
        .unwrap();
        let err = load(d.path(), Some("typo"), &[]).unwrap_err().to_string();
        let typo = d.path().join("typo.toml").display().to_string();
        assert!(
            err.starts_with(&format!("{typo}: model.drop_pth: unknown field `drop_pth`")),
            "{err}"
        );
        assert!(err.contains("did you mean `drop_path`?"), "{err}");

        // A wrong type in a base file names the base file, not the child.
        fs::write(
            d.path().join("bad.toml"),
            "[optim]\nlr = \"x\"\n[model]\narch = \"vit-small\"\n",
        )
        .unwrap();
        fs::write(d.path().join("child.toml"), "base = \"bad\"\nseed = 3\n").unwrap();
        let err = load(d.path(), Some("child"), &[]).unwrap_err().to_string();
        let bad = d.path().join("bad.toml").display().to_string();
        assert_eq!(
            err,
            format!("{bad}: optim.lr: invalid type: string \"x\", expected f64")
        );
        // ... and fixing it with --set works; a wrong type from --set names the --set.
        assert!(load(d.path(), Some("child"), &["optim.lr=3e-4"]).is_ok());
        let err = load(d.path(), Some("demo"), &["seed=abc"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--set seed=abc: seed: invalid type: string \"abc\""),
            "{err}"
        );
        let err = load(d.path(), Some("demo"), &["model.arch=vit-huge"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.arch") && err.contains("vit-huge") && err.contains("vit-small"),
            "{err}"
        );

        // Unknown top-level table and unknown nested table.
        let err = load(d.path(), Some("demo"), &["optm.lr=1"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(": optm: unknown field `optm`") && err.contains("did you mean `optim`?"),
            "{err}"
        );
        // Missing required field: names the parent and the field.
        fs::write(
            d.path().join("nolr.toml"),
            "[optim]\nwd = 0.1\n[model]\narch = \"vit-small\"\n",
        )
        .unwrap();
        let err = load(d.path(), Some("nolr"), &[]).unwrap_err().to_string();
        assert!(err.contains("optim: missing field `lr`"), "{err}");
        // Setting below a scalar.
        let err = load(d.path(), Some("demo"), &["seed.x=1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`seed` is a integer, not a table"), "{err}");
        // Malformed overrides.
        assert!(
            load(d.path(), Some("demo"), &["optim.lr"])
                .unwrap_err()
                .to_string()
                .contains("expected KEY=VALUE")
        );
        assert!(
            load(d.path(), Some("demo"), &["=1"])
                .unwrap_err()
                .to_string()
                .contains("not a valid dotted key")
        );
        assert!(
            load(d.path(), Some("demo"), &["a..b=1"])
                .unwrap_err()
                .to_string()
                .contains("not a valid dotted key")
        );
    }

    #[test]
    fn file_level_errors() {
        let d = presets();
        let err = load(d.path(), Some("dem"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("no preset `dem`")
                && err.contains("available: demo, vit-s")
                && err.contains("did you mean `demo`?"),
            "{err}"
        );
        fs::write(d.path().join("syntax.toml"), "[optim\nlr = 1\n").unwrap();
        let err = load(d.path(), Some("syntax"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("syntax.toml") && err.contains("line 1"),
            "{err}"
        );
        fs::write(d.path().join("a.toml"), "base = \"b\"\n").unwrap();
        fs::write(d.path().join("b.toml"), "base = \"a\"\n").unwrap();
        let err = load(d.path(), Some("a"), &[]).unwrap_err().to_string();
        assert!(err.contains("`base` cycle"), "{err}");
        fs::write(d.path().join("c.toml"), "base = \"missing\"\n").unwrap();
        assert!(
            load(d.path(), Some("c"), &[])
                .unwrap_err()
                .to_string()
                .contains("base preset `missing` not found")
        );
        fs::write(d.path().join("e.toml"), "base = 3\n").unwrap();
        assert!(
            load(d.path(), Some("e"), &[])
                .unwrap_err()
                .to_string()
                .contains("expected a preset name string")
        );
        let f = d.path().join("demo.toml");
        let err = load_config::<Cfg>(Some(&f), d.path(), Some("demo"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn suggestions() {
        let c: Vec<String> = ["total_steps", "lr_per_1024", "min_lr", "weight_decay"]
            .map(String::from)
            .to_vec();
        assert_eq!(suggest("weight_decy", &c).as_deref(), Some("weight_decay"));
        assert_eq!(
            suggest("lr", &c).as_deref(),
            Some("lr_per_1024"),
            "unique abbreviation"
        );
        assert_eq!(suggest("w", &c), None);
        assert_eq!(suggest("batch_size", &c), None);
    }

    #[test]
    fn diff_lists_changed_keys() {
        let a: Table = "x = 1\n[o]\nlr = 0.1\nwd = 2\n".parse().unwrap();
        let b: Table = "y = \"s\"\n[o]\nlr = 0.2\nwd = 2\n".parse().unwrap();
        assert_eq!(
            diff_tables(&a, &b),
            vec![
                "o.lr: 0.1 -> 0.2",
                "x: 1 -> (absent)",
                "y: (absent) -> \"s\""
            ]
        );
        assert!(diff_tables(&a, &a).is_empty());
    }

    #[test]
    fn key_and_value_parsing() {
        assert_eq!(parse_key("a.b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_key("a.\"b.c\"").unwrap(), vec!["a", "b.c"]);
        assert_eq!(parse_key(" a . b ").map(|k| k.len()), Some(2));
        assert!(parse_key("").is_none() && parse_key("a.").is_none());
        assert_eq!(parse_value("1e-3"), Value::Float(1e-3));
        assert_eq!(
            parse_value("[1, 2]"),
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
        assert_eq!(parse_value("vit-small"), Value::String("vit-small".into()));
        assert_eq!(parse_value("1\nx = 2"), Value::String("1\nx = 2".into()));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("\"true\""), Value::String("true".into()));
        assert_eq!(parse_value(""), Value::String(String::new()));
    }
}
