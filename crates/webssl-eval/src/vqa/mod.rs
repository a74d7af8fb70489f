//! Tensor-free VQA scoring: the rules of the 16 Web-SSL benchmarks and their aggregation.
//!
//! Web-SSL (arXiv 2504.01017, §2.3 / App. A) evaluates a frozen encoder by instruction-tuning an MLLM
//! (Cambrian-1 recipe) and scoring its answers on 16 VQA benchmarks in 4 groups. This module scores
//! such answers: given a predictions JSONL (`question_id`, `prediction`) and an annotation file per
//! benchmark it reproduces the Cambrian-1 eval code's numbers (the protocol behind the paper's
//! tables), then builds the group table (General, Knowledge, OCR & Chart, Vision-Centric, Average).
//! Reference: `docs/reference/evaluation.md` Part A; code: cambrian-mllm/cambrian @ 539ffc3
//! `eval/eval/*/*_test.py`, EvolvingLMMs-Lab/lmms-eval @ 75571cf.
//!
//! Layout:
//! * [`py`] — CPython `str` semantics the references rely on (whitespace, `float()`, `\d`).
//! * [`normalize`] — the EvalAI/VQAv2 answer normaliser, bug for bug.
//! * [`metrics`] — per-question rules: soft accuracy, ANLS, relaxed accuracy, exact-match variants,
//!   OCRBench substring.
//! * [`mcq`] — answer extraction: Cambrian MCQ variants, short answers, lmms-eval letter regex, Otter
//!   yes/no.
//! * [`benchmarks`] — the 16 benchmarks: annotation schema (documented there), rule, special cases,
//!   missing/extra prediction handling.
//! * [`aggregate`] — MME-P/20, group means, overall average, the rounding-aware paper check.
//! * [`io`] — reading and validating predictions and annotations.
//!
//! Every rule is pinned by golden values from the Python reference functions
//! (`fixtures/vqa/make_vqa_golden.py` → `fixtures/vqa/golden.json`, tests `tests/vqa_golden.rs`).
//!
//! Deliberate deviations from the reference *programs* (never from their per-question rules):
//! * MME acc+ groups questions by the `image` field instead of Cambrian's "adjacent lines" counter
//!   (identical on well-formed files; a malformed pair is an error here instead of a silent miscount).
//! * RealWorldQA: an answer with no words is wrong instead of an `IndexError` crash.
//! * A question without a prediction is wrong and reported (Cambrian only scores what is in the file,
//!   so a truncated answer file silently shrinks the denominator there).

pub mod aggregate;
pub mod benchmarks;
pub mod io;
pub mod levenshtein;
pub mod mcq;
pub mod metrics;
pub mod mllm;
pub mod normalize;
pub mod py;

use std::path::{Path, PathBuf};

pub use aggregate::{Group, GroupTable};
pub use benchmarks::{Benchmark, BenchmarkReport, Protocol, ScoreOptions, score_benchmark};
pub use io::{Annotations, Predictions, read_annotations, read_predictions};

use crate::error::{EvalError, Result};

/// Read both files and score one benchmark.
pub fn score_files(
    b: Benchmark,
    predictions: &Path,
    annotations: &Path,
    opts: ScoreOptions,
) -> Result<BenchmarkReport> {
    let ann = read_annotations(annotations)?;
    let preds = read_predictions(predictions)?;
    score_benchmark(b, &ann, &preds, opts)
}

/// One benchmark's inputs found in a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    pub benchmark: Benchmark,
    pub predictions: PathBuf,
    pub annotations: PathBuf,
}

/// Find `<benchmark>.jsonl` prediction files in `dir`, each with its `<benchmark>.annotations.json`
/// (or `.annotations.jsonl`). A prediction file whose stem is not a benchmark name, or without its
/// annotations, is an error (a typo must not silently drop a benchmark from the average); the same
/// benchmark twice (e.g. `mme.jsonl` and `mme-p.jsonl`) too. Sorted in table order.
pub fn discover_dir(dir: &Path) -> Result<Vec<DirEntry>> {
    let io_err = |source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out: Vec<DirEntry> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(stem) = fname.strip_suffix(".jsonl") else {
            continue;
        };
        if stem.ends_with(".annotations") {
            continue;
        }
        let benchmark = Benchmark::from_name(stem)?;
        let annotations = [".annotations.json", ".annotations.jsonl"]
            .iter()
            .map(|ext| dir.join(format!("{stem}{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| EvalError::Empty {
                benchmark: benchmark.name().into(),
                message: format!(
                    "{} has no {stem}.annotations.json(l) beside it",
                    path.display()
                ),
            })?;
        if let Some(prev) = out.iter().find(|e| e.benchmark == benchmark) {
            return Err(EvalError::Aggregate(format!(
                "{benchmark} given twice: {} and {}",
                prev.predictions.display(),
                path.display()
            )));
        }
        out.push(DirEntry {
            benchmark,
            predictions: path,
            annotations,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Empty {
            benchmark: "-".into(),
            message: format!("no <benchmark>.jsonl prediction files in {}", dir.display()),
        });
    }
    out.sort_by_key(|e| e.benchmark);
    Ok(out)
}
