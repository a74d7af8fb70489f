//! The filter chain as a TOML file (`configs/curate/*.toml`).
//!
//! ```toml
//! [chain]
//! batch_size = 64          # images judged together (classifier batches; memory is O(batch))
//! evaluate_all = false     # true: every filter judges every sample, even after one dropped it
//!
//! [[filter]]
//! kind = "image"           # decode + size/aspect checks
//! min_side = 32
//!
//! [[filter]]
//! kind = "exact_dedup"     # SHA-256 of the image bytes
//!
//! [[filter]]
//! kind = "near_dup"        # 64-bit pHash, Hamming distance
//! max_distance = 4
//! window = 65536
//!
//! [[filter]]
//! kind = "probe"           # a classifier trained by `webssl curate train-filter`
//! name = "light"
//! path = "../../runs/filters/light"   # relative to this file
//! ```
//!
//! Every table rejects unknown fields; errors name the field (`filter[2].max_distance`) and the
//! file. Every filter takes an optional `name` (default: its kind; names must be unique, they key
//! the manifest) and `on_error = "drop" | "keep"`: what happens to a sample the filter cannot judge
//! (undecodable image, classifier failure). The error itself is always recorded and counted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webssl_data::decode::DEFAULT_MAX_PIXELS;

use crate::error::{CurateError, Result};

/// What a filter does with a sample it cannot judge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Drop,
    Keep,
}

/// `[chain]`: settings of the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainSettings {
    /// Samples judged together; bounds memory (decoded images of one batch) and sets the
    /// classifier batch.
    pub batch_size: usize,
    /// Judge every sample with every filter (for score analysis), instead of stopping at the first
    /// filter that drops it. Dedup filters only remember samples that reach them kept so far.
    pub evaluate_all: bool,
    /// Images with more pixels are undecodable for every filter (decompression-bomb guard).
    pub max_pixels: u64,
}

impl Default for ChainSettings {
    fn default() -> Self {
        ChainSettings {
            batch_size: 64,
            evaluate_all: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// `kind = "image"`: the image decodes and its size and aspect ratio are in range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCheck {
    pub name: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Both sides at least this many pixels.
    #[serde(default = "default_min_side")]
    pub min_side: u32,
    /// Both sides at most this many pixels (none: no cap beyond `[chain] max_pixels`).
    pub max_side: Option<u32>,
    /// `max(w, h) / min(w, h)` at most this (none: any).
    pub max_aspect: Option<f64>,
}

fn default_min_side() -> u32 {
    1
}

/// `kind = "exact_dedup"`: drop a sample whose image bytes equal an earlier kept sample's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactDedup {
    pub name: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
}

/// `kind = "near_dup"`: drop a sample whose pHash is within `max_distance` bits of one of the
/// last `window` kept samples' hashes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearDup {
    pub name: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Hamming distance (0–64) at or below which two images are near-duplicates.
    #[serde(default = "default_max_distance")]
    pub max_distance: u32,
    /// How many kept hashes are remembered (a FIFO ring of (hash, key); the scan is linear).
    #[serde(default = "default_window")]
    pub window: usize,
}

fn default_max_distance() -> u32 {
    4
}
fn default_window() -> usize {
    1 << 16
}

/// `kind = "probe"`: a linear probe on frozen webssl features (`webssl curate train-filter`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub name: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// The filter directory (holding `filter.toml`), relative to the chain file.
    pub path: PathBuf,
    /// Override the decision threshold stored in the filter file (probability in [0, 1]).
    pub threshold: Option<f64>,
    /// Keep samples the classifier says *no* to (e.g. to build the complement of a subset).
    #[serde(default)]
    pub invert: bool,
}

/// One `[[filter]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FilterConfig {
    Image(ImageCheck),
    ExactDedup(ExactDedup),
    NearDup(NearDup),
    Probe(Probe),
}

impl FilterConfig {
    /// The kind as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            FilterConfig::Image(_) => "image",
            FilterConfig::ExactDedup(_) => "exact_dedup",
            FilterConfig::NearDup(_) => "near_dup",
            FilterConfig::Probe(_) => "probe",
        }
    }

    /// The manifest name: `name` or the kind.
    pub fn name(&self) -> String {
        let name = match self {
            FilterConfig::Image(c) => &c.name,
            FilterConfig::ExactDedup(c) => &c.name,
            FilterConfig::NearDup(c) => &c.name,
            FilterConfig::Probe(c) => &c.name,
        };
        name.clone().unwrap_or_else(|| self.kind().to_string())
    }

    pub fn on_error(&self) -> OnError {
        match self {
            FilterConfig::Image(c) => c.on_error,
            FilterConfig::ExactDedup(c) => c.on_error,
            FilterConfig::NearDup(c) => c.on_error,
            FilterConfig::Probe(c) => c.on_error,
        }
    }
}

/// A whole chain file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    #[serde(default)]
    pub chain: ChainSettings,
    #[serde(default)]
    pub filter: Vec<FilterConfig>,
}

impl ChainConfig {
    /// Reads and validates a chain file; probe paths are made relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CurateError::io(path, e))?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new(""));
        for f in &mut cfg.filter {
            if let FilterConfig::Probe(p) = f
                && p.path.is_relative()
            {
                p.path = base.join(&p.path);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates chain TOML; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| CurateError::config(file, "(syntax)", one_line(&e.to_string())))?;
        let cfg: ChainConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let reason = one_line(&e.into_inner().to_string());
                // Some deserializers put the unknown field in the path, others stop at its parent.
                let field = match unknown_field(&reason) {
                    Some(f) if path == "." || path.is_empty() => f,
                    Some(f) if !path.ends_with(&f) => format!("{path}.{f}"),
                    _ => path,
                };
                CurateError::config(file, field, reason)
            })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<()> {
        let err = |field: String, reason: &str| Err(CurateError::config(file, field, reason));
        if self.chain.batch_size == 0 {
            return err("chain.batch_size".into(), "must be at least 1");
        }
        if self.chain.max_pixels == 0 {
            return err("chain.max_pixels".into(), "must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.filter.iter().enumerate() {
            let at = |field: &str| format!("filter[{i}].{field}");
            let name = f.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return err(
                    at("name"),
                    "must be non-empty ASCII letters, digits, `_` or `-`",
                );
            }
            if !names.insert(name.clone()) {
                return err(
                    at("name"),
                    &format!("`{name}` is used by an earlier filter; names must be unique"),
                );
            }
            match f {
                FilterConfig::Image(c) => {
                    if c.min_side == 0 {
                        return err(at("min_side"), "must be at least 1");
                    }
                    if let Some(m) = c.max_side
                        && m < c.min_side
                    {
                        return err(at("max_side"), "must be at least min_side");
                    }
                    if let Some(a) = c.max_aspect
                        && !(a >= 1.0 && a.is_finite())
                    {
                        return err(at("max_aspect"), "must be a finite number >= 1");
                    }
                }
                FilterConfig::ExactDedup(_) => {}
                FilterConfig::NearDup(c) => {
                    if c.max_distance > 64 {
                        return err(at("max_distance"), "must be between 0 and 64 bits");
                    }
                    if c.window == 0 {
                        return err(at("window"), "must be at least 1");
                    }
                }
                FilterConfig::Probe(c) => {
                    if let Some(t) = c.threshold
                        && !(0.0..=1.0).contains(&t)
                    {
                        return err(at("threshold"), "must be a probability in [0, 1]");
                    }
                }
            }
        }
        Ok(())
    }
}

/// toml/serde messages span lines; the manifest and CLI want one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The field of serde's "unknown field `x`, expected ..." message.
fn unknown_field(reason: &str) -> Option<String> {
    let rest = reason.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChainConfig> {
        ChainConfig::parse(s, "chain.toml")
    }

    fn field_of(e: CurateError) -> String {
        match e {
            CurateError::Config { field, .. } => field,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn parses_a_full_chain() {
        let c = parse(
            r#"
            [chain]
            batch_size = 8
            [[filter]]
            kind = "image"
            min_side = 16
            max_aspect = 3.0
            [[filter]]
            kind = "exact_dedup"
            [[filter]]
            kind = "near_dup"
            max_distance = 6
            [[filter]]
            kind = "probe"
            name = "light"
            path = "f/light"
            threshold = 0.4
            on_error = "keep"
            "#,
        )
        .unwrap();
        assert_eq!(c.chain.batch_size, 8);
        assert_eq!(c.filter.len(), 4);
        assert_eq!(c.filter[2].name(), "near_dup");
        assert_eq!(c.filter[3].name(), "light");
        assert_eq!(c.filter[3].on_error(), OnError::Keep);
        match &c.filter[2] {
            FilterConfig::NearDup(n) => assert_eq!((n.max_distance, n.window), (6, 65536)),
            _ => panic!(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("[[filter]]\nkind = \"near_dup\"\nmax_dist = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(field_of(e).ends_with("max_dist"), "{msg}");
        assert!(
            msg.contains("max_distance"),
            "lists the expected fields: {msg}"
        );

        let e = parse("[[filter]]\nkind = \"near_dup\"\nmax_distance = 65\n").unwrap_err();
        assert_eq!(field_of(e), "filter[0].max_distance");

        let e = parse("[[filter]]\nkind = \"blur\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(field_of(e).starts_with("filter"), "{msg}");
        assert!(msg.contains("blur"), "{msg}");

        let e = parse("[chain]\nbatch = 3\n").unwrap_err();
        assert_eq!(field_of(e), "chain.batch");

        let e = parse("[[filter]]\nkind = \"probe\"\n").unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");

        let e = parse("[[filter]]\nkind = \"probe\"\npath = \"x\"\nthreshold = 1.5\n").unwrap_err();
        assert_eq!(field_of(e), "filter[0].threshold");

        let e = parse("[[filter]]\nkind = \"exact_dedup\"\n[[filter]]\nkind = \"exact_dedup\"\n")
            .unwrap_err();
        assert_eq!(field_of(e), "filter[1].name");

        let e = parse("[[filter]]\nkind = \"image\"\non_error = \"ignore\"\n").unwrap_err();
        assert!(e.to_string().contains("ignore"), "{e}");
    }

    #[test]
    fn probe_paths_are_relative_to_the_chain_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chain.toml");
        std::fs::write(&p, "[[filter]]\nkind = \"probe\"\npath = \"f\"\n").unwrap();
        let c = ChainConfig::load(&p).unwrap();
        match &c.filter[0] {
            FilterConfig::Probe(pr) => assert_eq!(pr.path, dir.path().join("f")),
            _ => panic!(),
        }
    }
}
