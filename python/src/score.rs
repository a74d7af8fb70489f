//! `vqa_score` (`webssl eval vqa-score --benchmark`) and `synth` (`webssl synth`): the CLI commands'
//! library calls with the same arguments, defaults and error context, returning their JSON records
//! as Python objects.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use webssl_data::shards::ShardLimits;
use webssl_data::synth::{Mix, SynthConfig, write_shards};
use webssl_eval::vqa::{self, Benchmark, Protocol, ScoreOptions};

use crate::{data_err, eval_err, to_py};

/// Scores `predictions` (JSONL: `question_id`, `prediction`) against `annotations` (JSON array or
/// JSONL) on one of the 16 Web-SSL VQA benchmarks; returns the report `webssl eval vqa-score
/// --output` writes (`score`, counts, missing and extra ids, per-category scores).
#[pyfunction]
#[pyo3(signature = (benchmark, predictions, annotations, *, strict = false, protocol = "cambrian"))]
pub fn vqa_score<'py>(
    py: Python<'py>,
    benchmark: &str,
    predictions: PathBuf,
    annotations: PathBuf,
    strict: bool,
    protocol: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let protocol = Protocol::from_name(protocol).map_err(|e| eval_err("protocol", e))?;
    let b = Benchmark::from_name(benchmark).map_err(|e| eval_err("benchmark", e))?;
    let opts = ScoreOptions { strict, protocol };
    let report = py
        .detach(|| vqa::score_files(b, &predictions, &annotations, opts))
        .map_err(|e| {
            eval_err(
                &format!(
                    "scoring {b} ({} against {})",
                    predictions.display(),
                    annotations.display()
                ),
                e,
            )
        })?;
    to_py(py, &report)
}

/// Writes `samples` synthetic web-like images (scenes, signs, documents, charts) with captions and
/// labels as shards into `out` (`{split}-000000.tar`…, `index.json`, `synth-{split}.json`), as
/// `webssl synth`; returns the summary (samples per category and class, shards, bytes).
#[pyfunction]
#[pyo3(signature = (
    out, samples = 2000, *, size = 112, seed = 0, mix = "full", split = "train", shard_size = 500,
    shard_bytes = None
))]
pub fn synth<'py>(
    py: Python<'py>,
    out: PathBuf,
    samples: u64,
    size: u32,
    seed: u64,
    mix: &str,
    split: &str,
    shard_size: usize,
    shard_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let mix = Mix::parse(mix).map_err(|e| data_err(&format!("mix `{mix}`"), e))?;
    let cfg = SynthConfig { size, seed, mix };
    cfg.validate().map_err(|e| data_err("size", e))?;
    if samples == 0 {
        return Err(PyValueError::new_err("samples must be at least 1"));
    }
    if shard_size == 0 {
        return Err(PyValueError::new_err("shard_size must be at least 1"));
    }
    let limits = ShardLimits {
        max_samples: Some(shard_size),
        max_bytes: shard_bytes,
    };
    let (summary, _index) = py
        .detach(|| write_shards(&out, &cfg, samples, split, limits, &mut |_| {}))
        .map_err(|e| data_err(&format!("writing synthetic shards to {}", out.display()), e))?;
    to_py(py, &summary)
}
