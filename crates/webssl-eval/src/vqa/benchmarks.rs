//! The 16 Web-SSL / Cambrian-1 VQA benchmarks: which rule scores each, what its annotations hold,
//! and the per-benchmark special cases (docs/reference/evaluation.md A.1, A.2; docs/reference/webssl-paper.md
//! §6.1).
//!
//! Scoring follows the **Cambrian-local** protocol (cambrian-mllm/cambrian @ 539ffc3,
//! `eval/eval/<bench>/<bench>_test.py`) by default, which the Web-SSL numbers are based on.
//! [`Protocol::LmmsEval`] switches to lmms-eval's rules for the 7 benchmarks where they are ported
//! (MME, GQA, ChartQA, TextVQA, DocVQA, CV-Bench 2D/3D) and refuses the others.
//!
//! # Annotation schema (one record per question; `question_id` always required)
//!
//! | benchmark | required fields | rule → score |
//! |---|---|---|
//! | `mme` (MME-P) | `answer` `"Yes"/"No"`, `category`, `image` | `pred.lower().rstrip('.') == gt.lower()`; per perception category acc + acc+ (acc+ = images with both questions right), summed over the 10 categories → 0–2000. Cognition categories are excluded (counted). Every (category, image) must have exactly 2 questions. |
//! | `mmbench` | `answer` letter (`null`/`""` = unlabelled test row, skipped), `group`; `category` optional | MCQ `Truncate`; a (category, group) counts only if every rotation is right → circular accuracy % |
//! | `seed` | `answer` letter | MCQ `TruncatePeriod` → accuracy % |
//! | `gqa` | `answer` | `pred.lower().rstrip('.') == gt.lower()` → % |
//! | `sqa` | `answer` letter, `answer_text`; `has_image` (default true) | ScienceQA rule; the score is the accuracy over `has_image` questions (`multimodal_acc`) |
//! | `mmmu` | `answer`, `question_type` | `"multiple-choice"` → MCQ `Truncate`, else single answer; then exact or 5%-of-prediction numeric → % |
//! | `mathvista` | `answer` (letter for MC); `question_type` optional | exact or 5%-of-prediction numeric. The `split('.')[0]` MC branch fires only for `question_type == "multiple-choice"`; MathVista's own value is `"multi_choice"`, so in Cambrian it never fires — kept. |
//! | `ai2d` | `answer` option index (`0`–`3`, string or integer) | MCQ `Truncate`, `a..d` → `0..3` → % |
//! | `chartqa` | `answer` | relaxed 5% of the ground truth if both parse as floats, else exact (lowercased) → % |
//! | `ocrbench` | `answers` (list or string), `category` | any answer is a substring of the prediction (HME category: spaces removed, case kept) → % of questions (= score / 10 on the 1000-question set) |
//! | `textvqa` | `answers` (10 human answers) | VQA soft accuracy after EvalAI normalisation → % |
//! | `docvqa` | `answers` | ANLS τ = 0.5 → % (local DocVQA **val**; Cambrian itself submits test to the server) |
//! | `mmvp` | `answer` `"(a)"`, `options` | MCQ `Full`; right if the letter or the full (lowercased) option text matches; pairs are consecutive records in file order (0–1, 2–3, …) and score only if both are right → pair accuracy % |
//! | `realworldqa` | `answer` | first word of the single answer == `gt.lower()` → % (an answer with no word is wrong; Cambrian would crash) |
//! | `cvbench2d` | `answer` `"(A)"`, `source` `"ADE20K"`/`"COCO"` | MCQ `TruncatePeriod` vs `gt.lower()[1]`; (acc_ADE + acc_COCO) / 2 |
//! | `cvbench3d` | `answer` `"(A)"`, `options` | MCQ `Truncate`; right if the letter matches or the extracted text equals the **raw** option text (Cambrian does not lowercase Omni options) → % |
//!
//! # Missing, extra and empty predictions
//!
//! A question with no prediction is scored **wrong** (never as an empty string: under substring rules
//! an empty answer could match) and reported: `missing_predictions` (count + examples) in the report
//! and a `tracing` warning. Predictions whose id is not in the annotations are reported as
//! `unknown_predictions`. With [`ScoreOptions::strict`] either is an error. If no prediction matches
//! any scored question, it is always an error (the files do not belong together). Empty predictions
//! are scored by the rule and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::aggregate::Group;
use super::io::{Annotation, Annotations, Predictions, QuestionId, examples};
use super::mcq::{self, McqStyle};
use super::{metrics, py};
use crate::error::{EvalError, Result};

/// The 16 benchmarks, in the paper's table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    Mme,
    MmBench,
    Seed,
    Gqa,
    Sqa,
    Mmmu,
    MathVista,
    Ai2d,
    ChartQa,
    OcrBench,
    TextVqa,
    DocVqa,
    Mmvp,
    RealWorldQa,
    CvBench2d,
    CvBench3d,
}

impl Benchmark {
    pub const ALL: [Benchmark; 16] = [
        Benchmark::Mme,
        Benchmark::MmBench,
        Benchmark::Seed,
        Benchmark::Gqa,
        Benchmark::Sqa,
        Benchmark::Mmmu,
        Benchmark::MathVista,
        Benchmark::Ai2d,
        Benchmark::ChartQa,
        Benchmark::OcrBench,
        Benchmark::TextVqa,
        Benchmark::DocVqa,
        Benchmark::Mmvp,
        Benchmark::RealWorldQa,
        Benchmark::CvBench2d,
        Benchmark::CvBench3d,
    ];

    /// Canonical name (CLI, file names, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Mme => "mme",
            Benchmark::MmBench => "mmbench",
            Benchmark::Seed => "seed",
            Benchmark::Gqa => "gqa",
            Benchmark::Sqa => "sqa",
            Benchmark::Mmmu => "mmmu",
            Benchmark::MathVista => "mathvista",
            Benchmark::Ai2d => "ai2d",
            Benchmark::ChartQa => "chartqa",
            Benchmark::OcrBench => "ocrbench",
            Benchmark::TextVqa => "textvqa",
            Benchmark::DocVqa => "docvqa",
            Benchmark::Mmvp => "mmvp",
            Benchmark::RealWorldQa => "realworldqa",
            Benchmark::CvBench2d => "cvbench2d",
            Benchmark::CvBench3d => "cvbench3d",
        }
    }

    /// The paper's column name.
    pub fn display_name(self) -> &'static str {
        match self {
            Benchmark::Mme => "MME-P",
            Benchmark::MmBench => "MMBench",
            Benchmark::Seed => "SEED-I",
            Benchmark::Gqa => "GQA",
            Benchmark::Sqa => "SQA-I",
            Benchmark::Mmmu => "MMMU",
            Benchmark::MathVista => "MathVista",
            Benchmark::Ai2d => "AI2D",
            Benchmark::ChartQa => "ChartQA",
            Benchmark::OcrBench => "OCRBench",
            Benchmark::TextVqa => "TextVQA",
            Benchmark::DocVqa => "DocVQA",
            Benchmark::Mmvp => "MMVP",
            Benchmark::RealWorldQa => "RealWorldQA",
            Benchmark::CvBench2d => "CV-Bench 2D",
            Benchmark::CvBench3d => "CV-Bench 3D",
        }
    }

    /// Extra accepted spellings (matched after lowercasing and deleting `-`, `_`, ` `).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Benchmark::Mme => &["mmep", "mmeperception"],
            Benchmark::MmBench => &["mmbenchen", "mmb"],
            Benchmark::Seed => &["seedimage", "seedi", "seedbench"],
            Benchmark::Sqa => &["sqai", "scienceqa", "scienceqaimg"],
            Benchmark::Mmmu => &["mmmuval"],
            Benchmark::MathVista => &["mathvistamini", "mathvistatestmini"],
            Benchmark::RealWorldQa => &["rwqa"],
            Benchmark::CvBench2d => &["cv2d", "cvb2d"],
            Benchmark::CvBench3d => &["cv3d", "cvb3d"],
            _ => &[],
        }
    }

    /// Parse a benchmark name; case, `-`, `_` and spaces are ignored; aliases accepted.
    pub fn from_name(name: &str) -> Result<Self> {
        let key: String = name
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_lowercase();
        Self::ALL
            .into_iter()
            .find(|b| b.name() == key || b.aliases().contains(&key.as_str()))
            .ok_or_else(|| EvalError::UnknownBenchmark {
                name: name.to_string(),
                valid: Self::ALL
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The paper's group.
    pub fn group(self) -> Group {
        use Benchmark::*;
        match self {
            Mme | MmBench | Seed | Gqa => Group::General,
            Sqa | Mmmu | MathVista | Ai2d => Group::Knowledge,
            ChartQa | OcrBench | TextVqa | DocVqa => Group::OcrChart,
            Mmvp | RealWorldQa | CvBench2d | CvBench3d => Group::VisionCentric,
        }
    }

    /// Name of the metric the score is.
    pub fn metric(self) -> &'static str {
        use Benchmark::*;
        match self {
            Mme => "mme_perception_score",
            MmBench => "circular_accuracy",
            Sqa => "multimodal_accuracy",
            TextVqa => "vqa_soft_accuracy",
            DocVqa => "anls",
            ChartQa => "relaxed_accuracy",
            OcrBench => "substring_accuracy",
            Mmvp => "pair_accuracy",
            CvBench2d => "mean_source_accuracy",
            _ => "accuracy",
        }
    }

    /// The score on the 0–100 scale the group averages use: MME-P (0–2000) / 20; every other score
    /// is already a percentage (OCRBench as % of questions = the 0–1000 count / 10).
    pub fn to_percent(self, score: f64) -> f64 {
        if self == Benchmark::Mme {
            score / 20.0
        } else {
            score
        }
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s)
    }
}

/// Which reference implementation's per-question rules to follow.
///
/// `Cambrian` (default) is what the Web-SSL tables are based on and covers all 16 benchmarks.
/// `LmmsEval` follows lmms-eval @ 75571cf where its rule is a local, deterministic function that is
/// ported here: MME (Otter yes/no parsing), GQA (`exact_match`, ignore case + punctuation, no strip),
/// ChartQA (`relaxed_correctness`, `%` aware), TextVQA and DocVQA (same rules as Cambrian), CV-Bench
/// 2D/3D (`_extract_answer_letter` vs `answer.strip("()")`; the `cv_bench_2d` task reports plain
/// accuracy over both sources, not their mean). Other benchmarks are refused under `LmmsEval`: their
/// lmms-eval scoring (VLMEvalKit `can_infer`, GPT answer extraction, MMVP's pattern cascade, ...) is
/// not ported, and silently falling back to Cambrian's rule would mislabel the number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    #[default]
    Cambrian,
    LmmsEval,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Cambrian => "cambrian",
            Protocol::LmmsEval => "lmms-eval",
        }
    }

    /// Parse `cambrian` or `lmms-eval` (also `lmms_eval`, `lmms`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_lowercase().replace('_', "-").as_str() {
            "cambrian" => Ok(Protocol::Cambrian),
            "lmms-eval" | "lmms" => Ok(Protocol::LmmsEval),
            _ => Err(EvalError::Mismatch {
                benchmark: "-".into(),
                message: format!("unknown protocol {name:?}; valid: cambrian, lmms-eval"),
            }),
        }
    }

    /// Whether this protocol has a ported rule for `b`.
    pub fn supports(self, b: Benchmark) -> bool {
        use Benchmark::*;
        match self {
            Protocol::Cambrian => true,
            Protocol::LmmsEval => matches!(
                b,
                Mme | Gqa | ChartQa | TextVqa | DocVqa | CvBench2d | CvBench3d
            ),
        }
    }
}

/// Scoring options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreOptions {
    /// Fail on missing predictions or predictions for unknown ids instead of reporting them.
    pub strict: bool,
    /// Reference implementation to follow.
    pub protocol: Protocol,
}

/// A count with a few example ids.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IdSample {
    pub count: usize,
    pub examples: Vec<String>,
}

impl IdSample {
    fn from_ids(ids: &[&QuestionId]) -> Self {
        Self {
            count: ids.len(),
            examples: ids
                .iter()
                .take(super::io::MAX_EXAMPLES)
                .map(|i| i.shown())
                .collect(),
        }
    }
}

/// Result of scoring one benchmark (written as JSON by the CLI).
#[derive(Debug, Clone, Serialize)]
pub struct BenchmarkReport {
    pub benchmark: Benchmark,
    pub protocol: Protocol,
    pub display_name: &'static str,
    pub group: Group,
    pub metric: &'static str,
    /// The benchmark's own scale: MME-P 0–2000, everything else a percentage.
    pub score: f64,
    /// 0–100 scale used for group averages (`score / 20` for MME-P).
    pub score_percent: f64,
    /// Records in the annotation file.
    pub n_annotations: usize,
    /// Questions that enter the score.
    pub n_scored: usize,
    /// Records deliberately left out (MME cognition, MMBench unlabelled rows, SQA without image).
    pub n_excluded: usize,
    pub n_predictions: usize,
    /// Scored questions without a prediction (counted wrong).
    pub missing_predictions: IdSample,
    /// Predictions whose id is not in the annotations (ignored).
    pub unknown_predictions: IdSample,
    /// Scored questions whose prediction is empty or whitespace.
    pub empty_predictions: usize,
    pub warnings: Vec<String>,
    /// Sub-scores (per category / source / alternative aggregates).
    pub details: BTreeMap<String, f64>,
}

/// Per-question outcome before aggregation.
struct Item<'a> {
    ann: &'a Annotation,
    /// Score in [0, 1]; 0 when the prediction is missing.
    value: f64,
}

fn bad(
    bench: Benchmark,
    a: &Annotation,
    field: &'static str,
    message: impl Into<String>,
) -> EvalError {
    EvalError::BadField {
        benchmark: bench.name().to_string(),
        question_id: a.question_id.to_string(),
        field,
        message: message.into(),
    }
}

fn req_answer(b: Benchmark, a: &Annotation) -> Result<&str> {
    a.answer
        .as_ref()
        .map(|t| t.0.as_str())
        .ok_or_else(|| bad(b, a, "answer", "missing"))
}

fn req_answers(b: Benchmark, a: &Annotation) -> Result<&[String]> {
    match a.answers.as_ref() {
        Some(l) if !l.0.is_empty() => Ok(&l.0),
        Some(_) => Err(bad(b, a, "answers", "empty list")),
        None => Err(bad(
            b,
            a,
            "answers",
            "missing (a list of acceptable answers)",
        )),
    }
}

fn req_str<'a>(
    b: Benchmark,
    a: &'a Annotation,
    v: &'a Option<String>,
    field: &'static str,
) -> Result<&'a str> {
    v.as_deref().ok_or_else(|| bad(b, a, field, "missing"))
}

fn req_options(b: Benchmark, a: &Annotation) -> Result<&[String]> {
    a.options
        .as_deref()
        .ok_or_else(|| bad(b, a, "options", "missing (option texts in letter order)"))
}

/// `"(A)"` → index 0, checked against the number of options.
fn paren_index(b: Benchmark, a: &Annotation, gt: &str, n_options: usize) -> Result<(char, usize)> {
    let letter = mcq::paren_letter(gt)
        .ok_or_else(|| bad(b, a, "answer", format!("{gt:?} is not of the form \"(A)\"")))?;
    match mcq::letter_index(letter) {
        Some(i) if i < n_options => Ok((letter, i)),
        _ => Err(bad(
            b,
            a,
            "answer",
            format!("{gt:?} names no option among {n_options}"),
        )),
    }
}

const MME_PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
const MME_COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

/// Whether a record enters the score at all (before predictions are looked at).
fn included(b: Benchmark, a: &Annotation) -> Result<bool> {
    Ok(match b {
        Benchmark::Mme => {
            let c = req_str(b, a, &a.category, "category")?;
            if MME_COGNITION.contains(&c) {
                false
            } else if MME_PERCEPTION.contains(&c) {
                true
            } else {
                return Err(bad(
                    b,
                    a,
                    "category",
                    format!("{c:?} is not an MME category; perception: {MME_PERCEPTION:?}"),
                ));
            }
        }
        Benchmark::MmBench => a.answer.as_ref().is_some_and(|t| !t.0.is_empty()),
        Benchmark::Sqa => a.has_image.unwrap_or(true),
        _ => true,
    })
}

/// Score one included question: 1.0/0.0 for exact rules, [0, 1] for soft ones.
fn score_item(b: Benchmark, a: &Annotation, pred: &str, protocol: Protocol) -> Result<f64> {
    use Benchmark::*;
    let hit = |x: bool| if x { 1.0 } else { 0.0 };
    if protocol == Protocol::LmmsEval {
        match b {
            Mme => {
                // `gt_ans = doc["answer"].lower().strip().replace(".", "")`, asserted yes/no.
                let gt = py::strip(&py::lower(req_answer(b, a)?)).replace('.', "");
                if gt != "yes" && gt != "no" {
                    return Err(bad(
                        b,
                        a,
                        "answer",
                        format!("{gt:?}: MME answers are yes/no"),
                    ));
                }
                return Ok(hit(mcq::mme_otter_parse(pred).as_str() == gt));
            }
            Gqa => {
                return Ok(hit(metrics::exact_match_hf(
                    pred,
                    req_answer(b, a)?,
                    true,
                    true,
                )));
            }
            ChartQa => return Ok(hit(metrics::chartqa_lmms(pred, req_answer(b, a)?))),
            CvBench2d | CvBench3d => {
                let gt = req_answer(b, a)?.trim_matches(['(', ')']);
                return Ok(hit(mcq::cv_bench_letter(pred) == gt));
            }
            // TextVQA and DocVQA use the same rules as Cambrian; the rest is refused earlier.
            _ => {}
        }
    }
    Ok(match b {
        Mme | Gqa => hit(metrics::lower_rstrip_period_match(pred, req_answer(b, a)?)),
        MmBench => {
            // Without the group the circular rule would silently become plain accuracy.
            req_str(b, a, &a.group, "group")?;
            hit(mcq::extract_mcq(pred, McqStyle::Truncate) == py::lower(req_answer(b, a)?))
        }
        Seed => {
            hit(mcq::extract_mcq(pred, McqStyle::TruncatePeriod) == py::lower(req_answer(b, a)?))
        }
        Sqa => {
            let gt = py::lower(py::strip(req_answer(b, a)?));
            let text = py::lower(py::strip(req_str(b, a, &a.answer_text, "answer_text")?));
            let answer = mcq::extract_single_answer(pred);
            let option = py::before_first(&answer, ".");
            let norm =
                |s: &str| py::strip(&py::lower(&py::remove_ascii_punctuation(s))).to_string();
            hit(norm(&answer) == norm(&text) || option == gt)
        }
        Mmmu => {
            let qt = req_str(b, a, &a.question_type, "question_type")?;
            let answer = if qt == "multiple-choice" {
                mcq::extract_mcq(pred, McqStyle::Truncate)
            } else {
                mcq::extract_single_answer(pred)
            };
            hit(metrics::numeric_or_exact_cambrian(
                &answer,
                req_answer(b, a)?,
            ))
        }
        MathVista => {
            let mut answer = py::strip(&py::lower(pred)).to_string();
            if a.question_type.as_deref() == Some("multiple-choice") {
                answer = py::before_first(&answer, ".").to_string();
            }
            hit(metrics::numeric_or_exact_cambrian(
                &answer,
                req_answer(b, a)?,
            ))
        }
        Ai2d => {
            let answer = mcq::extract_mcq(pred, McqStyle::Truncate);
            let mapped = match answer.as_str() {
                "a" => "0",
                "b" => "1",
                "c" => "2",
                "d" => "3",
                other => other,
            };
            hit(mapped == py::lower(req_answer(b, a)?))
        }
        ChartQa => hit(metrics::chartqa_cambrian(pred, req_answer(b, a)?)),
        OcrBench => hit(metrics::ocrbench_match(
            pred,
            req_answers(b, a)?,
            req_str(b, a, &a.category, "category")?,
        )),
        TextVqa => metrics::vqa_soft_accuracy(pred, req_answers(b, a)?),
        DocVqa => metrics::anls(pred, req_answers(b, a)?, 0.5),
        RealWorldQa => {
            let gt = py::lower(req_answer(b, a)?);
            hit(mcq::extract_first_word(pred).is_some_and(|w| w == gt))
        }
        Mmvp => {
            let options = req_options(b, a)?;
            let (letter, k) = paren_index(b, a, req_answer(b, a)?, options.len())?;
            let answer = mcq::extract_mcq(pred, McqStyle::Full);
            hit(answer == letter.to_string() || answer == py::lower(&options[k]))
        }
        CvBench2d => {
            let gt = req_answer(b, a)?;
            let letter = mcq::paren_letter(gt)
                .ok_or_else(|| bad(b, a, "answer", format!("{gt:?} is not of the form \"(A)\"")))?;
            hit(mcq::extract_mcq(pred, McqStyle::TruncatePeriod) == letter.to_string())
        }
        CvBench3d => {
            let options = req_options(b, a)?;
            let (letter, k) = paren_index(b, a, req_answer(b, a)?, options.len())?;
            let answer = mcq::extract_mcq(pred, McqStyle::Truncate);
            hit(answer == letter.to_string() || answer == options[k])
        }
    })
}

/// Validate the fields a record needs even when its prediction is missing (so that a broken
/// annotation file fails the same way whatever the predictions are).
fn validate(b: Benchmark, a: &Annotation, protocol: Protocol) -> Result<()> {
    score_item(b, a, "", protocol).map(|_| ())
}

fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in xs {
        sum += x;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// Score `predictions` against `annotations` for benchmark `b`.
pub fn score_benchmark(
    b: Benchmark,
    annotations: &Annotations,
    predictions: &Predictions,
    opts: ScoreOptions,
) -> Result<BenchmarkReport> {
    let name = b.name().to_string();
    if !opts.protocol.supports(b) {
        return Err(EvalError::Mismatch {
            benchmark: name,
            message: format!(
                "the {} protocol is not implemented for this benchmark (supported: {})",
                opts.protocol.name(),
                Benchmark::ALL
                    .iter()
                    .filter(|x| opts.protocol.supports(**x))
                    .map(|x| x.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let records = annotations.records();
    if records.is_empty() {
        return Err(EvalError::Empty {
            benchmark: name,
            message: format!("{} has no records", annotations.source().display()),
        });
    }
    let ann_ids: HashSet<&QuestionId> = records.iter().map(|a| &a.question_id).collect();
    let unknown: Vec<&QuestionId> = predictions
        .ids()
        .iter()
        .filter(|id| !ann_ids.contains(id))
        .collect();

    let mut items = Vec::new();
    let mut missing = Vec::new();
    let mut empty = 0usize;
    let mut n_excluded = 0usize;
    let mut warnings = Vec::new();
    for a in records {
        if !included(b, a)? {
            n_excluded += 1;
            continue;
        }
        validate(b, a, opts.protocol)?;
        let value = match predictions.get(&a.question_id) {
            Some(p) => {
                if py::strip(p).is_empty() {
                    empty += 1;
                }
                score_item(b, a, p, opts.protocol)?
            }
            None => {
                missing.push(&a.question_id);
                0.0
            }
        };
        items.push(Item { ann: a, value });
    }
    if items.is_empty() {
        return Err(EvalError::Empty {
            benchmark: name,
            message: format!(
                "no scorable record in {} ({n_excluded} excluded)",
                annotations.source().display()
            ),
        });
    }
    if missing.len() == items.len() {
        return Err(EvalError::Mismatch {
            benchmark: name,
            message: format!(
                "none of the {} scored questions has a prediction in {} ({} predictions, e.g. ids {}; annotation ids e.g. {}): wrong files?",
                items.len(),
                predictions.source().display(),
                predictions.len(),
                examples(&predictions.ids().iter().collect::<Vec<_>>()),
                examples(&items.iter().map(|i| &i.ann.question_id).collect::<Vec<_>>()),
            ),
        });
    }
    if opts.strict && (!missing.is_empty() || !unknown.is_empty()) {
        return Err(EvalError::Mismatch {
            benchmark: name,
            message: {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "{} scored question(s) without a prediction (e.g. {})",
                        missing.len(),
                        examples(&missing)
                    ));
                }
                if !unknown.is_empty() {
                    parts.push(format!(
                        "{} prediction(s) for ids not in the annotations (e.g. {})",
                        unknown.len(),
                        examples(&unknown)
                    ));
                }
                format!("--strict: {}", parts.join("; "))
            },
        });
    }
    if !missing.is_empty() {
        let w = format!(
            "{} of {} questions have no prediction and count as wrong (e.g. {})",
            missing.len(),
            items.len(),
            examples(&missing)
        );
        tracing::warn!(benchmark = %b, "{w}");
        warnings.push(w);
    }
    if !unknown.is_empty() {
        let w = format!(
            "{} prediction(s) for ids not in the annotations were ignored (e.g. {})",
            unknown.len(),
            examples(&unknown)
        );
        tracing::warn!(benchmark = %b, "{w}");
        warnings.push(w);
    }

    if b == Benchmark::MmBench && n_excluded > 0 {
        // Expected for test-split rows; a misspelt `answer` key would land here too, so say it.
        warnings.push(format!(
            "{n_excluded} record(s) without a ground-truth answer were skipped (test-split rows)"
        ));
    }

    let mut details = BTreeMap::new();
    let plain = mean(items.iter().map(|i| i.value)).unwrap_or(0.0) * 100.0;
    let score = match b {
        Benchmark::Mme => mme_score(b, &items, &mut details)?,
        Benchmark::MmBench => {
            details.insert("accuracy".into(), plain);
            circular_score(&items, &mut details)
        }
        Benchmark::Mmvp => {
            details.insert("question_accuracy".into(), plain);
            pair_score(b, &items)?
        }
        // lmms-eval's `cv_bench_2d` task: plain accuracy over both sources.
        Benchmark::CvBench2d if opts.protocol == Protocol::LmmsEval => plain,
        Benchmark::CvBench2d => source_score(b, &items, &mut details)?,
        Benchmark::TextVqa => {
            let odd = items
                .iter()
                .filter(|i| i.ann.answers.as_ref().is_some_and(|l| l.0.len() != 10))
                .count();
            if odd > 0 {
                warnings.push(format!("{odd} question(s) do not have exactly 10 answers (Cambrian asserts 10; scored with the count given)"));
            }
            plain
        }
        Benchmark::OcrBench => {
            per_category(&items, &mut details);
            plain
        }
        _ => plain,
    };
    Ok(BenchmarkReport {
        benchmark: b,
        protocol: opts.protocol,
        display_name: b.display_name(),
        group: b.group(),
        metric: b.metric(),
        score,
        score_percent: b.to_percent(score),
        n_annotations: records.len(),
        n_scored: items.len(),
        n_excluded,
        n_predictions: predictions.len(),
        missing_predictions: IdSample::from_ids(&missing),
        unknown_predictions: IdSample::from_ids(&unknown),
        empty_predictions: empty,
        warnings,
        details,
    })
}

fn per_category(items: &[Item<'_>], details: &mut BTreeMap<String, f64>) {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in items {
        by.entry(i.ann.category.as_deref().unwrap_or(""))
            .or_default()
            .push(i.value);
    }
    for (c, v) in by {
        details.insert(format!("accuracy/{c}"), mean(v).unwrap_or(0.0) * 100.0);
    }
}

/// MME-P: per category `100·(acc + acc+)`, summed. acc+ counts images whose 2 questions are right.
fn mme_score(b: Benchmark, items: &[Item<'_>], details: &mut BTreeMap<String, f64>) -> Result<f64> {
    // category -> image -> values
    let mut by: BTreeMap<&str, HashMap<&str, Vec<f64>>> = BTreeMap::new();
    for i in items {
        let cat = i.ann.category.as_deref().unwrap_or("");
        let img = req_str(b, i.ann, &i.ann.image, "image")?;
        by.entry(cat)
            .or_default()
            .entry(img)
            .or_default()
            .push(i.value);
    }
    let mut total = 0.0;
    for (cat, images) in &by {
        let bad_images: Vec<&&str> = images
            .iter()
            .filter(|(_, v)| v.len() != 2)
            .map(|(k, _)| k)
            .collect();
        if !bad_images.is_empty() {
            return Err(EvalError::Structure {
                benchmark: b.name().into(),
                message: format!(
                    "category {cat:?}: {} image(s) without exactly 2 questions (e.g. {}); MME scores yes/no pairs",
                    bad_images.len(),
                    examples(&bad_images)
                ),
            });
        }
        let n_q: usize = images.values().map(Vec::len).sum();
        let right: f64 = images.values().flatten().sum();
        let both = images
            .values()
            .filter(|v| v.iter().all(|&x| x == 1.0))
            .count();
        let acc = right / n_q as f64;
        let acc_plus = both as f64 / images.len() as f64;
        let s = 100.0 * (acc + acc_plus);
        details.insert(format!("score/{cat}"), s);
        total += s;
    }
    let missing: Vec<&&str> = MME_PERCEPTION
        .iter()
        .filter(|c| !by.contains_key(**c))
        .collect();
    if !missing.is_empty() {
        return Err(EvalError::Structure {
            benchmark: b.name().into(),
            message: format!(
                "perception categories without questions: {}; MME-P sums all 10",
                examples(&missing)
            ),
        });
    }
    Ok(total)
}

/// MMBench circular accuracy: a (category, group) is right only if all its rotations are.
fn circular_score(items: &[Item<'_>], details: &mut BTreeMap<String, f64>) -> f64 {
    let mut groups: HashMap<(&str, &str), bool> = HashMap::new();
    for i in items {
        let key = (
            i.ann.category.as_deref().unwrap_or(""),
            i.ann.group.as_deref().unwrap_or_default(),
        );
        let ok = i.value == 1.0;
        groups.entry(key).and_modify(|g| *g &= ok).or_insert(ok);
    }
    let right = groups.values().filter(|&&g| g).count();
    details.insert("circular_groups".into(), groups.len() as f64);
    100.0 * right as f64 / groups.len() as f64
}

/// MMVP: consecutive records form a pair; a pair scores only if both are right.
fn pair_score(b: Benchmark, items: &[Item<'_>]) -> Result<f64> {
    if !items.len().is_multiple_of(2) {
        return Err(EvalError::Structure {
            benchmark: b.name().into(),
            message: format!(
                "{} questions: MMVP pairs consecutive records, so the count must be even",
                items.len()
            ),
        });
    }
    let pairs = items.len() / 2;
    let right = items
        .chunks_exact(2)
        .filter(|p| p[0].value == 1.0 && p[1].value == 1.0)
        .count();
    Ok(100.0 * right as f64 / pairs as f64)
}

/// CV-Bench 2D: mean of the ADE20K and COCO accuracies (lmms-eval's "original formula").
fn source_score(
    b: Benchmark,
    items: &[Item<'_>],
    details: &mut BTreeMap<String, f64>,
) -> Result<f64> {
    const SOURCES: [&str; 2] = ["ADE20K", "COCO"];
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in items {
        let s = req_str(b, i.ann, &i.ann.source, "source")?;
        if !SOURCES.contains(&s) {
            return Err(bad(
                b,
                i.ann,
                "source",
                format!("{s:?}; expected one of {SOURCES:?}"),
            ));
        }
        by.entry(s).or_default().push(i.value);
    }
    let mut accs = Vec::new();
    for s in SOURCES {
        let acc = by
            .get(s)
            .and_then(|v| mean(v.iter().copied()))
            .ok_or_else(|| EvalError::Structure {
                benchmark: b.name().into(),
                message: format!(
                    "no {s} questions: CV-Bench 2D averages the ADE20K and COCO accuracies"
                ),
            })?
            * 100.0;
        details.insert(format!("accuracy/{s}"), acc);
        accs.push(acc);
    }
    Ok((accs[0] + accs[1]) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        assert_eq!(Benchmark::from_name("MME-P").unwrap(), Benchmark::Mme);
        assert_eq!(
            Benchmark::from_name("cv_bench_2d").unwrap(),
            Benchmark::CvBench2d
        );
        assert_eq!(Benchmark::from_name("ScienceQA").unwrap(), Benchmark::Sqa);
        let err = Benchmark::from_name("vqav2").unwrap_err().to_string();
        assert!(
            err.contains("vqav2") && err.contains("mmbench") && err.contains("cvbench3d"),
            "{err}"
        );
        for b in Benchmark::ALL {
            assert_eq!(Benchmark::from_name(b.name()).unwrap(), b);
        }
    }

    #[test]
    fn groups_have_four_each() {
        for g in Group::ALL {
            assert_eq!(Benchmark::ALL.iter().filter(|b| b.group() == g).count(), 4);
        }
        assert_eq!(Benchmark::Mme.to_percent(1500.0), 75.0);
    }
}
