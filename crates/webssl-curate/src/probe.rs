//! The built-in classifier: a logistic-regression probe on frozen webssl backbone features.
//!
//! **Features** ([`FeatureExtractor`]): any backbone [`webssl_models::checkpoint::load`] reads (the
//! `export/` of `webssl pretrain dino`, `webssl model init`, HF or native DINOv2 checkpoints),
//! through [`webssl_eval::features::Encoder`] as `webssl embed` (the checkpoint's
//! `preprocessor_config.json`, or a square `resolution` resize, or dinov2's ImageNet eval
//! transform), then the normed CLS token, optionally
//! concatenated with the mean normed patch token ([`Pooling`]) — dinov2's linear-probe input for
//! one block (`create_linear_input` with `n_last_blocks = 1`).
//!
//! **Probe** ([`fit_probe`]): standardise each feature with the train mean/std, then
//! [`webssl_eval::linear::fit_logreg`] (the dinov2 / sklearn L2 logistic regression, L-BFGS, f64)
//! with 2 classes; the 2-class softmax equals a sigmoid of `(w₁ − w₀)·x + (b₁ − b₀)`, which is
//! what is stored. C is chosen from a small log grid by balanced accuracy on a seeded 20% of the
//! train split, then the probe is refit on the whole train split. Precision and recall are
//! reported on a held-out split never used for fitting or for choosing C.
//!
//! **Filter directory** (what `webssl curate train-filter` writes): `filter.toml` ([`FilterFile`]:
//! model path, preprocessing, pooling, threshold, label) + `probe.safetensors` (`weight` `[D]`,
//! `bias` `[1]`, `mean` `[D]`, `std` `[D]`) + `report.json`.
//!
//! Deviation from the paper (docs/reference/webssl-paper.md §5): Web-SSL asked an MLLM (SmolVLM2) yes/no; a
//! probe on a small self-supervised encoder is far cheaper but only as good as its features and labels —
//! see the measured precision/recall in `fixtures/curate/README.md`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use webssl_data::decode::decode_rgb;
use webssl_data::source::{InputSpec, iter_items};
use webssl_data::transform::HfBackend;
use webssl_eval::features::{Encoder, Feature, Matrix};
use webssl_eval::linear::fit_logreg;
use webssl_models::checkpoint::export;

use crate::classifier::Classifier;
use crate::error::{CurateError, Result};

/// File names inside a filter directory.
pub const FILTER_FILE: &str = "filter.toml";
pub const PROBE_FILE: &str = "probe.safetensors";
pub const REPORT_FILE: &str = "report.json";
const FORMAT: &str = "webssl-probe-filter/1";

/// Which tokens make the feature vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The normed CLS token `[D]`.
    Cls,
    /// CLS ‖ mean of the normed patch tokens `[2D]`.
    #[default]
    ClsPatchMean,
}

/// A frozen backbone plus its preprocessing ([`Encoder`]), pooled to one vector per image.
pub struct FeatureExtractor {
    encoder: Encoder,
    pooling: Pooling,
}

impl FeatureExtractor {
    /// Loads `model` (an `arch` preset name is needed for native checkpoints) with the preprocessing
    /// [`Encoder::load`] picks: `resolution` → square resize, else the checkpoint's preprocessor,
    /// else dinov2's `Resize(img·256/224) + CenterCrop(img)`.
    pub fn load(
        model: &Path,
        arch: Option<&str>,
        resolution: Option<u32>,
        pooling: Pooling,
    ) -> Result<Self> {
        // Curation's classifier is trained and applied with one preprocessing; the PIL one is the
        // reference pipelines'.
        let encoder = Encoder::load(model, arch, resolution, HfBackend::Pil, &Device::flex())?;
        Ok(FeatureExtractor { encoder, pooling })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        let d = self.encoder.model().config().embed_dim;
        match self.pooling {
            Pooling::Cls => d,
            Pooling::ClsPatchMean => 2 * d,
        }
    }

    /// Features of each image, in order; preprocessing runs in parallel, the backbone once per
    /// call. An image that cannot be preprocessed is an `Err` for that image only.
    pub fn extract(&self, images: &[&RgbImage]) -> Vec<std::result::Result<Vec<f32>, String>> {
        let preprocess = self.encoder.preprocess();
        let prepared: Vec<std::result::Result<Vec<f32>, String>> =
            images.par_iter().map(|img| preprocess.apply(img)).collect();
        let mut out = Vec::with_capacity(images.len());
        let mut ok = Vec::new();
        let mut pixels = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(px) => {
                    pixels.extend_from_slice(&px);
                    ok.push(i);
                    out.push(Ok(Vec::new()));
                }
                Err(why) => out.push(Err(why)),
            }
        }
        if ok.is_empty() {
            return out;
        }
        let parts: &[Feature] = match self.pooling {
            Pooling::Cls => &[Feature::Cls],
            Pooling::ClsPatchMean => &[Feature::Cls, Feature::PatchMean],
        };
        match self.encoder.extract(pixels, ok.len(), parts, 0) {
            Ok(batch) => {
                for (row, &i) in ok.iter().enumerate() {
                    out[i] = Ok(parts
                        .iter()
                        .flat_map(|f| batch.sample(f.key(), row))
                        .copied()
                        .collect());
                }
            }
            Err(e) => {
                for &i in &ok {
                    out[i] = Err(e.to_string());
                }
            }
        }
        out
    }
}

/// A binary logistic probe on standardised features: `σ(w·((x − mean) / std) + b)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearProbe {
    pub weight: Vec<f32>,
    pub bias: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl LinearProbe {
    /// P(yes) for one feature vector.
    pub fn prob(&self, x: &[f32]) -> f64 {
        let z: f64 = f64::from(self.bias)
            + x.iter()
                .zip(&self.weight)
                .zip(self.mean.iter().zip(&self.std))
                .map(|((&v, &w), (&m, &s))| {
                    f64::from(w) * (f64::from(v) - f64::from(m)) / f64::from(s)
                })
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.weight.len();
        export::write_safetensors(
            path,
            &[
                ("weight".into(), vec![d], self.weight.clone()),
                ("bias".into(), vec![1], vec![self.bias]),
                ("mean".into(), vec![d], self.mean.clone()),
                ("std".into(), vec![d], self.std.clone()),
            ],
        )?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CurateError::io(path, e))?;
        let bad = |reason: String| CurateError::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not safetensors: {e}")))?;
        let get = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    t.dtype()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let p = LinearProbe {
            weight: get("weight")?,
            bias: get("bias")?
                .first()
                .copied()
                .ok_or_else(|| bad("empty `bias`".into()))?,
            mean: get("mean")?,
            std: get("std")?,
        };
        let d = p.weight.len();
        if p.mean.len() != d
            || p.std.len() != d
            || p.std.iter().any(|&s| !s.is_finite() || s <= 0.0)
        {
            return Err(bad(format!(
                "weight [{d}], mean [{}], std [{}] (std must be > 0)",
                p.mean.len(),
                p.std.len()
            )));
        }
        Ok(p)
    }
}

/// `filter.toml` of a filter directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFile {
    pub format: String,
    /// What it answers, e.g. "light" or "heavy".
    pub name: String,
    /// The label it was trained on (`meta:has_text`, `heavy`, ...).
    pub label: String,
    /// The backbone (absolute, or relative to the filter directory).
    pub model: PathBuf,
    /// Preset name, for native checkpoints.
    pub arch: Option<String>,
    /// Square resize instead of the checkpoint's preprocessor.
    pub resolution: Option<u32>,
    pub pooling: Pooling,
    /// `P(yes) >= threshold` means yes.
    pub threshold: f64,
    /// The probe weights, relative to the filter directory.
    pub probe: PathBuf,
}

impl FilterFile {
    pub fn new(name: &str, label: &str, model: &Path, threshold: f64) -> Self {
        FilterFile {
            format: FORMAT.into(),
            name: name.into(),
            label: label.into(),
            model: model.to_path_buf(),
            arch: None,
            resolution: None,
            pooling: Pooling::default(),
            threshold,
            probe: PROBE_FILE.into(),
        }
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILTER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| CurateError::io(&path, e))?;
        let file = path.display().to_string();
        let f: FilterFile = serde_path_to_error::deserialize(
            toml::Deserializer::parse(&text)
                .map_err(|e| CurateError::config(&file, "(syntax)", e.to_string()))?,
        )
        .map_err(|e| {
            let field = e.path().to_string();
            CurateError::config(&file, field, e.into_inner().to_string().trim())
        })?;
        if f.format != FORMAT {
            return Err(CurateError::config(
                &file,
                "format",
                format!("`{}` is not `{FORMAT}`", f.format),
            ));
        }
        if !(0.0..=1.0).contains(&f.threshold) {
            return Err(CurateError::config(&file, "threshold", "must be in [0, 1]"));
        }
        Ok(f)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| CurateError::config(FILTER_FILE, "(serialise)", e.to_string()))?;
        let text = format!(
            "# A webssl-curate probe filter: written by `webssl curate train-filter`; use it from a\n# chain file with [[filter]] kind = \"probe\", path = \"<this directory>\".\n{text}"
        );
        export::write_atomic(&dir.join(FILTER_FILE), text.as_bytes())?;
        Ok(())
    }

    fn resolve(&self, dir: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    }
}

/// A probe filter ready to score images.
pub struct ProbeClassifier {
    pub extractor: FeatureExtractor,
    pub probe: LinearProbe,
    pub file: FilterFile,
}

impl ProbeClassifier {
    /// Loads a filter directory (its `filter.toml`, probe weights and backbone).
    pub fn load(dir: &Path) -> Result<Self> {
        let file = FilterFile::load(dir)?;
        let model = file.resolve(dir, &file.model);
        let extractor =
            FeatureExtractor::load(&model, file.arch.as_deref(), file.resolution, file.pooling)?;
        let probe = LinearProbe::load(&file.resolve(dir, &file.probe))?;
        if probe.weight.len() != extractor.dim() {
            return Err(CurateError::config(
                dir.join(FILTER_FILE).display().to_string(),
                "model",
                format!(
                    "the probe has {} weights but {} gives {}-dim features",
                    probe.weight.len(),
                    model.display(),
                    extractor.dim()
                ),
            ));
        }
        Ok(ProbeClassifier {
            extractor,
            probe,
            file,
        })
    }
}

impl Classifier for ProbeClassifier {
    fn score_batch(&mut self, images: &[&RgbImage]) -> Vec<std::result::Result<f64, String>> {
        self.extractor
            .extract(images)
            .into_iter()
            .map(|f| f.map(|x| self.probe.prob(&x)))
            .collect()
    }

    fn threshold(&self) -> f64 {
        self.file.threshold
    }
}

// ---------------------------------------------------------------------------------------------
// Labels

/// Where a training example's yes/no label comes from (`--label`).
#[derive(Clone, Debug, PartialEq)]
pub enum LabelSpec {
    /// `meta:PATH`: a boolean (or 0/1, "yes"/"no", "true"/"false") at a dotted path of the `json` member.
    MetaBool(String),
    /// `meta:PATH=A,B`: yes when the string at PATH is one of the values.
    MetaIn(String, Vec<String>),
    /// `cls:A,B`: yes when the `.cls` label is one of these ids.
    Cls(Vec<i64>),
    /// `folder:A,B`: yes when the first component of the key (folder inputs: the subfolder) is one
    /// of these names, else no.
    Folder(Vec<String>),
}

impl LabelSpec {
    /// Parses `--label`; `light` = `meta:has_text`, `heavy` = `meta:category=document,chart`
    /// (the synthetic generator's metadata).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| CurateError::config("--label", s, reason);
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        };
        match s {
            "light" => return Ok(LabelSpec::MetaBool("has_text".into())),
            "heavy" => {
                return Ok(LabelSpec::MetaIn(
                    "category".into(),
                    vec!["document".into(), "chart".into()],
                ));
            }
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("meta:") {
            return match rest.split_once('=') {
                Some((p, v)) if !p.is_empty() && !list(v).is_empty() => {
                    Ok(LabelSpec::MetaIn(p.into(), list(v)))
                }
                Some(_) => Err(bad("expected meta:PATH=VALUE[,VALUE...]")),
                None if !rest.is_empty() => Ok(LabelSpec::MetaBool(rest.into())),
                None => Err(bad("expected meta:PATH")),
            };
        }
        if let Some(rest) = s.strip_prefix("cls:") {
            let ids: std::result::Result<Vec<i64>, _> =
                list(rest).iter().map(|v| v.parse::<i64>()).collect();
            return match ids {
                Ok(ids) if !ids.is_empty() => Ok(LabelSpec::Cls(ids)),
                _ => Err(bad("expected cls:ID[,ID...] with integer ids")),
            };
        }
        if let Some(rest) = s.strip_prefix("folder:")
            && !list(rest).is_empty()
        {
            return Ok(LabelSpec::Folder(list(rest)));
        }
        Err(bad(
            "expected light, heavy, meta:PATH, meta:PATH=V1,V2, cls:ID,ID or folder:NAME,NAME",
        ))
    }

    /// The label of one sample; `None` when the sample does not carry it.
    pub fn label(
        &self,
        key: &str,
        meta: Option<&serde_json::Value>,
        cls: Option<i64>,
    ) -> Option<bool> {
        let at = |path: &str| -> Option<&serde_json::Value> {
            path.split('.').try_fold(meta?, |v, k| v.get(k))
        };
        match self {
            LabelSpec::MetaBool(p) => match at(p)? {
                serde_json::Value::Bool(b) => Some(*b),
                serde_json::Value::Number(n) => n.as_f64().map(|v| v != 0.0),
                serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" => Some(true),
                    "false" | "no" | "0" => Some(false),
                    _ => None,
                },
                _ => None,
            },
            LabelSpec::MetaIn(p, values) => {
                let v = at(p)?;
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                Some(values.contains(&s))
            }
            LabelSpec::Cls(ids) => cls.map(|c| ids.contains(&c)),
            LabelSpec::Folder(names) => {
                let first = key.split('/').next().unwrap_or("");
                Some(names.iter().any(|n| n == first))
            }
        }
    }
}

/// Features and yes/no labels of a labelled image set.
pub struct Labelled {
    pub keys: Vec<String>,
    pub features: Matrix,
    pub labels: Vec<bool>,
    /// Items that could not be read, decoded or embedded: (`what`, `why`).
    pub skipped: Vec<(String, String)>,
    /// Readable items without the label (e.g. no `json` member).
    pub unlabelled: usize,
}

/// Streams `inputs` (any `webssl_data::source` input), keeps the items that carry `label`, and
/// embeds them in batches with `extractor`; at most `max_samples` labelled items.
pub fn collect_labelled(
    extractor: &FeatureExtractor,
    inputs: &[InputSpec],
    label: &LabelSpec,
    batch_size: usize,
    max_samples: Option<usize>,
    max_pixels: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<Labelled> {
    let mut out = Labelled {
        keys: Vec::new(),
        features: Matrix {
            rows: 0,
            cols: extractor.dim(),
            data: Vec::new(),
        },
        labels: Vec::new(),
        skipped: Vec::new(),
        unlabelled: 0,
    };
    let cap = max_samples.unwrap_or(usize::MAX);
    let mut items = iter_items(inputs);
    while out.keys.len() < cap {
        let mut chunk = Vec::new();
        for r in items.by_ref() {
            match r {
                Ok(item) => match label.label(&item.key, item.meta.as_ref(), item.label) {
                    Some(y) => chunk.push((item, y)),
                    None => out.unlabelled += 1,
                },
                Err(e) => out.skipped.push(("input".into(), e.to_string())),
            }
            if chunk.len() >= batch_size.max(1) || out.keys.len() + chunk.len() >= cap {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let decoded: Vec<std::result::Result<RgbImage, String>> = chunk
            .par_iter()
            .map(|(item, _)| {
                decode_rgb(&item.bytes, &item.source, max_pixels).map_err(|e| e.to_string())
            })
            .collect();
        let ok: Vec<usize> = (0..chunk.len()).filter(|&i| decoded[i].is_ok()).collect();
        let images: Vec<&RgbImage> = ok
            .iter()
            .map(|&i| decoded[i].as_ref().expect("filtered to ok"))
            .collect();
        let feats = extractor.extract(&images);
        for (i, d) in decoded.iter().enumerate() {
            if let Err(e) = d {
                out.skipped.push((chunk[i].0.source.clone(), e.clone()));
            }
        }
        for (&i, f) in ok.iter().zip(feats) {
            match f {
                Ok(f) => {
                    out.features.data.extend_from_slice(&f);
                    out.features.rows += 1;
                    out.keys.push(chunk[i].0.key.clone());
                    out.labels.push(chunk[i].1);
                }
                Err(e) => out.skipped.push((chunk[i].0.source.clone(), e)),
            }
        }
        progress(out.keys.len());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Training and metrics

/// Precision/recall of yes-decisions at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub threshold: f64,
    pub n: usize,
    pub positives: usize,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    /// Share of samples said yes (what the filter would keep).
    pub kept: f64,
}

impl BinaryMetrics {
    /// Metrics of `scores >= threshold` against `labels`. Precision is 0 when nothing is said yes.
    pub fn compute(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
        for (&s, &y) in scores.iter().zip(labels) {
            match (s >= threshold, y) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => tn += 1,
            }
        }
        let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = div(tp, tp + fp);
        let recall = div(tp, tp + fn_);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        let n = scores.len();
        BinaryMetrics {
            threshold,
            n,
            positives: tp + fn_,
            tp,
            fp,
            fn_,
            tn,
            precision,
            recall,
            f1,
            accuracy: div(tp + tn, n),
            kept: div(tp + fp, n),
        }
    }

    fn balanced_accuracy(&self) -> f64 {
        let tpr = if self.tp + self.fn_ == 0 {
            0.0
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        };
        let tnr = if self.tn + self.fp == 0 {
            0.0
        } else {
            self.tn as f64 / (self.tn + self.fp) as f64
        };
        (tpr + tnr) / 2.0
    }
}

/// Area under the ROC curve: the probability that a random yes-sample scores above a random
/// no-sample (ties count half; Mann–Whitney U / (n₊ n₋)). Threshold-free, so it says how well the
/// scores rank even when the stored threshold does not transfer. `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = labels.iter().filter(|&&y| y).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Sum of the (average, for ties) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && order[j].0 == order[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg_rank * order[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// Settings of [`fit_probe`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeOptions {
    /// Share of the samples held out for the precision/recall report.
    pub holdout: f64,
    /// Inverse L2 strengths tried (sklearn `C`).
    pub c_values: Vec<f64>,
    pub threshold: f64,
    pub seed: u64,
    pub max_iter: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            holdout: 0.2,
            c_values: vec![1e-3, 1e-2, 1e-1, 1.0, 10.0],
            threshold: 0.5,
            seed: 0,
            max_iter: 300,
        }
    }
}

/// What [`fit_probe`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    pub n_train: usize,
    pub n_heldout: usize,
    pub train_positives: usize,
    /// (C, balanced accuracy on the selection split).
    pub c_sweep: Vec<(f64, f64)>,
    pub best_c: f64,
    pub train: BinaryMetrics,
    pub heldout: BinaryMetrics,
    /// ROC AUC of the held-out scores.
    pub heldout_auc: Option<f64>,
    /// Held-out precision/recall at other thresholds, to pick a different operating point.
    pub heldout_curve: Vec<BinaryMetrics>,
    pub options: ProbeOptions,
}

/// A seeded permutation of `0..n` (Fisher–Yates on a ChaCha8 stream).
fn permutation(seed: u64, stream: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

const STREAM_HOLDOUT: u64 = 0x6375_722d_686f_6c64; // "cur-hold"
const STREAM_SELECT: u64 = 0x6375_722d_7365_6c63; // "cur-selc"

fn rows(x: &Matrix, idx: &[usize]) -> Matrix {
    let mut data = Vec::with_capacity(idx.len() * x.cols);
    for &i in idx {
        data.extend_from_slice(x.row(i));
    }
    Matrix {
        rows: idx.len(),
        cols: x.cols,
        data,
    }
}

fn fit_standardised(x: &Matrix, y: &[bool], c: f64, max_iter: usize) -> Result<LinearProbe> {
    let d = x.cols;
    let n = x.rows as f64;
    let mut mean = vec![0f64; d];
    for i in 0..x.rows {
        for (m, &v) in mean.iter_mut().zip(x.row(i)) {
            *m += f64::from(v) / n;
        }
    }
    let mut var = vec![0f64; d];
    for i in 0..x.rows {
        for ((s, &v), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
            *s += (f64::from(v) - m).powi(2) / n;
        }
    }
    // A constant feature gets std 1 (its standardised value is 0 anyway).
    let std: Vec<f32> = var
        .iter()
        .map(|&v| if v > 1e-12 { v.sqrt() as f32 } else { 1.0 })
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mut z = x.clone();
    for i in 0..z.rows {
        for (k, v) in z.data[i * d..(i + 1) * d].iter_mut().enumerate() {
            *v = (*v - mean[k]) / std[k];
        }
    }
    let labels: Vec<usize> = y.iter().map(|&b| usize::from(b)).collect();
    let m = fit_logreg(&z, &labels, 2, c, max_iter, 1e-8, None)?;
    let weight: Vec<f32> = (0..d)
        .map(|k| (m.weight[d + k] - m.weight[k]) as f32)
        .collect();
    Ok(LinearProbe {
        weight,
        bias: (m.bias[1] - m.bias[0]) as f32,
        mean,
        std,
    })
}

/// Trains a probe on `features` (rows) with yes/no `labels` (module docs) and reports
/// precision/recall on the held-out split.
pub fn fit_probe(
    features: &Matrix,
    labels: &[bool],
    opts: &ProbeOptions,
) -> Result<(LinearProbe, ProbeReport)> {
    let n = features.rows;
    if n != labels.len() {
        return Err(CurateError::Probe(format!(
            "{n} feature rows, {} labels",
            labels.len()
        )));
    }
    let pos = labels.iter().filter(|&&b| b).count();
    if pos < 2 || n - pos < 2 {
        return Err(CurateError::Probe(format!(
            "need at least 2 yes and 2 no examples, got {pos} yes and {} no",
            n - pos
        )));
    }
    if !(0.0..1.0).contains(&opts.holdout) {
        return Err(CurateError::config(
            "--holdout",
            "holdout",
            "must be in [0, 1)",
        ));
    }
    if opts.c_values.is_empty() || opts.c_values.iter().any(|&c| !c.is_finite() || c <= 0.0) {
        return Err(CurateError::config(
            "--c",
            "c_values",
            "need at least one C > 0",
        ));
    }
    let perm = permutation(opts.seed, STREAM_HOLDOUT, n);
    let n_hold = ((n as f64) * opts.holdout).round() as usize;
    let (hold, train) = perm.split_at(n_hold);
    if train.len() < 4 {
        return Err(CurateError::Probe(format!(
            "{} training samples after holding out {n_hold}; need at least 4",
            train.len()
        )));
    }
    let x_train = rows(features, train);
    let y_train: Vec<bool> = train.iter().map(|&i| labels[i]).collect();

    // Choose C on a seeded 20% of the train split.
    let sel_perm = permutation(opts.seed, STREAM_SELECT, train.len());
    let n_sel = (train.len() / 5).max(1);
    let (sel, fit) = sel_perm.split_at(n_sel);
    let mut c_sweep = Vec::new();
    let fit_y: Vec<bool> = fit.iter().map(|&i| y_train[i]).collect();
    let one_class = fit_y.iter().all(|&b| b) || fit_y.iter().all(|&b| !b);
    for &c in &opts.c_values {
        if one_class {
            break;
        }
        let p = fit_standardised(&rows(&x_train, fit), &fit_y, c, opts.max_iter)?;
        let x_sel = rows(&x_train, sel);
        let scores: Vec<f64> = (0..x_sel.rows).map(|i| p.prob(x_sel.row(i))).collect();
        let y_sel: Vec<bool> = sel.iter().map(|&i| y_train[i]).collect();
        let m = BinaryMetrics::compute(&scores, &y_sel, opts.threshold);
        c_sweep.push((c, m.balanced_accuracy()));
    }
    // The first C with the best score (ascending C = strongest regularisation first).
    let best_c = c_sweep
        .iter()
        .fold(None::<(f64, f64)>, |best, &(c, s)| match best {
            Some((_, bs)) if bs >= s => best,
            _ => Some((c, s)),
        })
        .map_or(opts.c_values[0], |b| b.0);
    let probe = fit_standardised(&x_train, &y_train, best_c, opts.max_iter)?;
    let score_rows =
        |idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| probe.prob(features.row(i))).collect() };
    let train_scores = score_rows(train);
    let hold_scores = score_rows(hold);
    let y_hold: Vec<bool> = hold.iter().map(|&i| labels[i]).collect();
    let heldout_curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        .iter()
        .map(|&t| BinaryMetrics::compute(&hold_scores, &y_hold, t))
        .collect();
    let report = ProbeReport {
        n_train: train.len(),
        n_heldout: hold.len(),
        train_positives: y_train.iter().filter(|&&b| b).count(),
        c_sweep,
        best_c,
        train: BinaryMetrics::compute(&train_scores, &y_train, opts.threshold),
        heldout: BinaryMetrics::compute(&hold_scores, &y_hold, opts.threshold),
        heldout_auc: roc_auc(&hold_scores, &y_hold),
        heldout_curve,
        options: opts.clone(),
    };
    Ok((probe, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_apply() {
        let meta = serde_json::json!({"has_text": true, "category": "chart", "labels": {"n": 0}});
        let l = |s: &str| {
            LabelSpec::parse(s)
                .unwrap()
                .label("k", Some(&meta), Some(3))
        };
        assert_eq!(l("light"), Some(true));
        assert_eq!(l("heavy"), Some(true));
        assert_eq!(l("meta:category=scene"), Some(false));
        assert_eq!(l("meta:labels.n"), Some(false));
        assert_eq!(l("meta:missing"), None);
        assert_eq!(l("cls:1,3"), Some(true));
        assert_eq!(
            LabelSpec::parse("folder:text,document")
                .unwrap()
                .label("document/page", None, None),
            Some(true)
        );
        assert_eq!(
            LabelSpec::parse("folder:text")
                .unwrap()
                .label("photo/cat", None, None),
            Some(false)
        );
        for bad in ["meta:", "cls:x", "nope", "meta:a="] {
            let e = LabelSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--label"), "{e}");
        }
    }

    #[test]
    fn metrics_count_the_confusion_matrix() {
        let m = BinaryMetrics::compute(
            &[0.9, 0.8, 0.2, 0.6, 0.1],
            &[true, false, true, true, false],
            0.5,
        );
        assert_eq!((m.tp, m.fp, m.fn_, m.tn), (2, 1, 1, 1));
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.kept - 0.6).abs() < 1e-12);
        // Positives 0.9, 0.2, 0.6 vs negatives 0.8, 0.1: 4 of 6 pairs ranked right.
        let auc = roc_auc(
            &[0.9, 0.8, 0.2, 0.6, 0.1],
            &[true, false, true, true, false],
        )
        .unwrap();
        assert!((auc - 4.0 / 6.0).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(roc_auc(&[0.1], &[true]), None);
    }

    #[test]
    fn probe_separates_separable_data_and_round_trips() {
        // Two Gaussian-ish clouds along a random direction, with a nuisance feature of large scale.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 200;
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = i % 3 == 0;
            let u = |r: &mut ChaCha8Rng| (r.next_u32() as f32 / u32::MAX as f32) - 0.5;
            let signal = if y { 1.0 } else { -1.0 } + 0.6 * u(&mut rng);
            data.extend_from_slice(&[signal, 1000.0 * u(&mut rng), u(&mut rng)]);
            labels.push(y);
        }
        let x = Matrix::new(n, 3, data).unwrap();
        let (probe, report) = fit_probe(&x, &labels, &ProbeOptions::default()).unwrap();
        assert_eq!(report.n_heldout, 40);
        assert!(
            report.heldout.precision > 0.95 && report.heldout.recall > 0.95,
            "{report:?}"
        );
        assert!(probe.weight[0].abs() > probe.weight[1].abs() * 5.0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(PROBE_FILE);
        probe.save(&p).unwrap();
        assert_eq!(LinearProbe::load(&p).unwrap(), probe);

        let one_class = vec![true; n];
        assert!(fit_probe(&x, &one_class, &ProbeOptions::default()).is_err());
    }

    #[test]
    fn filter_file_round_trips_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let f = FilterFile::new("light", "meta:has_text", Path::new("/m"), 0.5);
        f.save(dir.path()).unwrap();
        assert_eq!(FilterFile::load(dir.path()).unwrap(), f);
        let text = std::fs::read_to_string(dir.path().join(FILTER_FILE)).unwrap();
        std::fs::write(
            dir.path().join(FILTER_FILE),
            text.replace("threshold", "thresh"),
        )
        .unwrap();
        let e = FilterFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("thresh"), "{e}");
    }
}
