//! Probe results files: what `webssl eval knn|linear|dense` and `webssl pretrain` (its kNN report)
//! write and `webssl report` / `webssl experiment` read, all through [`ProbeResult`].
//!
//! A results file is one JSON object:
//!
//! ```json
//! {"method": "knn", "model": "runs/dino/export", "dataset": "probe-train",
//!  "metrics": {"top1": 41.5, "top5": 80.0, "k": 20, "top1@10": 40.0, ...},
//!  "baseline": {"model": "initialisation", "metrics": {...}},
//!  "summary": "knn: top-1 @k=20 = 41.5% (...)",
//!  "protocol": {...}, "sizes": {...}, "labels": {...}, "features": {...}, ...}
//! ```
//!
//! - `method`: the probe (`knn`, `linear`, `logreg`, `dense`); `task`: `seg` / `depth` for dense;
//!   `name`: the probe's name in `webssl experiment` (its results are reported under that name);
//! - `metrics`: the headline numbers, all numeric: scores and the selected classifier's
//!   hyper-parameters ([`HYPER_PARAMETERS`]); per-k breakdowns are named `<metric>@<k>`;
//! - `baseline`: the same probe on the backbone at initialisation (`webssl pretrain` writes it);
//! - everything else (`protocol`, `sizes`, `labels`, `features`, per-classifier results, `seconds`)
//!   is probe-specific detail that `webssl report` does not read.
//!
//! `webssl report` tabulates [`ProbeResult::scores`]: `<probe>/<metric>` for every finite score
//! (hyper-parameters and per-k breakdowns stay in the file), and `<probe>@init/<metric>` from the
//! baseline. Files written before this type by `webssl experiment` (the probe name in `method`, the
//! command in `probe_command`) read the same way; `webssl pretrain`'s earlier kNN shape (a
//! `results` array) is not a results file any more: rerun the pretraining kNN report to get it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};
use crate::features::LabelMapping;
use crate::knn::KnnResult;

/// Metric names that are hyper-parameters of the selected classifier, not scores.
pub const HYPER_PARAMETERS: [&str; 6] = ["k", "lr", "C", "n_last_blocks", "epochs", "seed"];

/// Headline numbers by name.
pub type Metrics = BTreeMap<String, f64>;

/// One probe's results file (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The probe: `knn`, `linear`, `logreg` or `dense`.
    pub method: String,
    /// Dense probes: `seg` or `depth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The name the results are reported under when not `method` / `method-task`: the probe's name
    /// in a `webssl experiment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `webssl experiment` cell that produced the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_cell: Option<String>,
    /// The backbone evaluated (checkpoint path).
    #[serde(default)]
    pub model: String,
    /// The data: a name (knn, linear), or the inputs (dense, `webssl pretrain`).
    #[serde(default)]
    pub dataset: Value,
    /// Scores and the selected classifier's hyper-parameters.
    #[serde(deserialize_with = "numbers")]
    pub metrics: Metrics,
    /// The same probe on the backbone at initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// One line for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// How the probe was run (probe-specific).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub protocol: Value,
    /// Sample counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Sizes>,
    /// Where the labels came from (knn, linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelsInfo>,
    /// The feature files evaluated (knn, linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureFiles>,
    /// Probe-specific results (`per_k`, `classifiers`, `best`, `result`, `seconds`, ...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

/// The reference row of a [`ProbeResult`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// What was evaluated, e.g. `initialisation`.
    pub model: String,
    #[serde(deserialize_with = "numbers")]
    pub metrics: Metrics,
}

/// Sample counts of a probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    pub train: usize,
    pub val: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Dense probes: the patch tokens trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_tokens: Option<usize>,
}

/// A count per split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerSplit {
    pub train: usize,
    pub val: usize,
}

impl From<(usize, usize)> for PerSplit {
    fn from((train, val): (usize, usize)) -> Self {
        PerSplit { train, val }
    }
}

/// Where a classification probe's labels came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelsInfo {
    /// `cls` or `meta:PATH`.
    pub spec: String,
    /// For string labels, the class names by class id (empty for integer labels).
    pub class_names: Vec<String>,
    /// Labels read for keys that have no feature row.
    pub unused: PerSplit,
    /// Feature rows dropped for lack of a label (`--drop-unlabelled`).
    pub dropped_unlabelled: PerSplit,
}

impl LabelsInfo {
    pub fn new(
        spec: &str,
        mapping: &LabelMapping,
        unused: (usize, usize),
        dropped: (usize, usize),
    ) -> Self {
        LabelsInfo {
            spec: spec.to_owned(),
            class_names: mapping.names.clone(),
            unused: unused.into(),
            dropped_unlabelled: dropped.into(),
        }
    }
}

/// The feature files a probe read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureFiles {
    pub train: String,
    pub val: String,
    /// The feature dimension, when one tensor was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

/// `metrics` maps: numbers are kept, `null` (a non-finite value as serde_json writes it) reads as
/// NaN, and other values (text or flags that files written before [`ProbeResult`] kept there, such
/// as the linear probe's `best` name) are dropped.
fn numbers<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Metrics, D::Error> {
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Number(n) => n.as_f64().map(|x| (k, x)),
            Value::Null => Some((k, f64::NAN)),
            _ => None,
        })
        .collect())
}

/// The headline metrics of a k-NN result: `top1` / `top5` at k = 20 (dinov2's "usually the best")
/// when scored, else at the smallest k, that `k`, and `top1@k` / `top5@k` for every k scored.
pub fn knn_metrics(res: &KnnResult) -> Result<Metrics> {
    let head = res
        .at(20)
        .or(res.per_k.first())
        .ok_or_else(|| EvalError::Probe {
            context: "knn".into(),
            message: "no k was scored".into(),
        })?;
    let mut m = Metrics::new();
    m.insert("top1".into(), head.top1);
    m.insert("top5".into(), head.top5);
    m.insert("k".into(), head.k as f64);
    for s in &res.per_k {
        m.insert(format!("top1@{}", s.k), s.top1);
        m.insert(format!("top5@{}", s.k), s.top5);
    }
    Ok(m)
}

impl ProbeResult {
    /// A results file with its required parts; the rest is filled in by the caller.
    pub fn new(method: &str, model: &str, dataset: impl Into<Value>, metrics: Metrics) -> Self {
        ProbeResult {
            method: method.to_owned(),
            model: model.to_owned(),
            dataset: dataset.into(),
            metrics,
            ..ProbeResult::default()
        }
    }

    /// The name `webssl report` files its columns under: `name`, else `method` (`method-task` for
    /// dense probes).
    pub fn probe(&self) -> String {
        match (&self.name, &self.task) {
            (Some(name), _) => name.clone(),
            (None, Some(task)) => format!("{}-{task}", self.method),
            (None, None) => self.method.clone(),
        }
    }

    /// The report columns: `<probe>/<metric>` for every finite score (not the hyper-parameters or
    /// per-k breakdowns), `<probe>@init/<metric>` for the baseline's.
    pub fn scores(&self) -> BTreeMap<String, f64> {
        let probe = self.probe();
        let mut out = BTreeMap::new();
        let mut add = |prefix: &str, metrics: &Metrics| {
            for (k, &v) in metrics {
                if !HYPER_PARAMETERS.contains(&k.as_str()) && !k.contains('@') && v.is_finite() {
                    out.insert(format!("{prefix}/{k}"), v);
                }
            }
        };
        add(&probe, &self.metrics);
        if let Some(b) = &self.baseline {
            add(&format!("{probe}@init"), &b.metrics);
        }
        out
    }

    /// The file's text: pretty JSON and a newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a ProbeResult always serialises");
        text.push('\n');
        text
    }

    /// Parses a results file's text (`path` names it in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: format!("not a probe results file: {e}"),
        })
    }

    /// Reads a results file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(path, &text)
    }

    /// Writes the file atomically, creating its directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        webssl_models::checkpoint::export::write_atomic(path, self.to_json().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_leave_out_hyper_parameters_and_breakdowns() {
        let v = serde_json::json!({"method": "knn", "metrics": {"top1": 50.0, "k": 20,
            "top1@10": 40.0, "best": "x", "nan": null}});
        let r: ProbeResult = serde_json::from_value(v).unwrap();
        assert!(r.metrics["nan"].is_nan());
        assert!(!r.metrics.contains_key("best"));
        assert_eq!(
            r.scores().into_iter().collect::<Vec<_>>(),
            [("knn/top1".to_string(), 50.0)]
        );
    }

    #[test]
    fn round_trips_and_names_columns() {
        let mut r = ProbeResult::new("dense", "m", "d", Metrics::from([("miou".into(), 41.5)]));
        r.task = Some("seg".into());
        r.baseline = Some(Baseline {
            model: "initialisation".into(),
            metrics: Metrics::from([("miou".into(), 3.0)]),
        });
        r.details.insert("seconds".into(), 1.5.into());
        let back = ProbeResult::from_json(Path::new("r.json"), &r.to_json()).unwrap();
        assert_eq!(back, r);
        let s = back.scores();
        assert_eq!((s["dense-seg/miou"], s["dense-seg@init/miou"]), (41.5, 3.0));
        r.name = Some("seg-probe".into());
        assert!(r.scores().contains_key("seg-probe/miou"));
        let e = ProbeResult::from_json(Path::new("r.json"), r#"{"method": "knn"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.json") && e.contains("metrics"), "{e}");
    }
}
