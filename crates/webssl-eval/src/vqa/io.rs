//! Reading predictions and annotations, with validation.
//!
//! * **Predictions**: JSONL, one object per line with `question_id` (string or integer) and
//!   `prediction` (string; the model's raw answer). Other keys (`model_id`, `prompt`, ...) are
//!   ignored. Blank lines are skipped. A malformed line is an error naming the line.
//! * **Annotations**: a JSON array of objects, or JSONL (detected from the first non-blank character).
//!   Every record has `question_id`; the other fields depend on the benchmark (see
//!   [`super::benchmarks`]). Unknown keys are ignored so that dataset exports can be used as they are.
//!
//! Question ids are compared as strings: the integer `7` and the string `"7"` are the same id (both
//! files come from the same dataset, but one writer may quote ids and another not). A duplicated id
//! in either file is an error: with two predictions for one question there is no right one to score.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::{EvalError, Result};

/// How many example ids error messages and reports list.
pub const MAX_EXAMPLES: usize = 5;

/// A question id, normalised to its string form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuestionId(pub String);

/// Longest id shown whole in messages and reports; a longer one is cut there (the data keeps it
/// whole, so matching is unaffected).
const MAX_ID_CHARS: usize = 64;

impl QuestionId {
    /// The id for messages and reports: whole up to [`MAX_ID_CHARS`] characters, else its start and
    /// its length (a 10 MB id must not be copied into every log line and report).
    pub fn shown(&self) -> String {
        match self.0.char_indices().nth(MAX_ID_CHARS) {
            None => self.0.clone(),
            Some((cut, _)) => format!(
                "{}… ({} characters)",
                &self.0[..cut],
                self.0.chars().count()
            ),
        }
    }
}

impl std::fmt::Display for QuestionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl<'de> Deserialize<'de> for QuestionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(QuestionId(s)),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                Ok(QuestionId(n.to_string()))
            }
            other => Err(serde::de::Error::custom(format!(
                "question_id must be a string or an integer, got {other}"
            ))),
        }
    }
}

/// A string-or-number field (AI2D stores the answer index as an integer, ScienceQA sometimes too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Text(s)),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Text(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or an integer, got {other}"
            ))),
        }
    }
}

/// A list of strings, or one string taken as a list of one (OCRBench stores both forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextList(pub Vec<String>);

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => TextList(vec![s]),
            OneOrMany::Many(v) => TextList(v),
        })
    }
}

/// One model answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    pub question_id: QuestionId,
    pub prediction: String,
}

/// One ground-truth record; which fields are required depends on the benchmark.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Annotation {
    pub question_id: QuestionId,
    /// The single ground-truth answer (letter, word, number, `"(A)"`, option index).
    #[serde(default)]
    pub answer: Option<Text>,
    /// Several acceptable answers (TextVQA: 10 human answers; DocVQA, OCRBench).
    #[serde(default)]
    pub answers: Option<TextList>,
    #[serde(default)]
    pub category: Option<String>,
    /// MME: the image both yes/no questions are about (the pair key).
    #[serde(default)]
    pub image: Option<String>,
    /// MMBench: the circular group shared by the rotated copies of one question.
    #[serde(default)]
    pub group: Option<String>,
    /// CV-Bench 2D: `"ADE20K"` or `"COCO"`.
    #[serde(default)]
    pub source: Option<String>,
    /// MMVP, CV-Bench 3D: option texts in letter order.
    #[serde(default)]
    pub options: Option<Vec<String>>,
    /// ScienceQA: the text of the correct option.
    #[serde(default)]
    pub answer_text: Option<String>,
    /// ScienceQA: whether the question has an image (only those count in the reported score).
    #[serde(default)]
    pub has_image: Option<bool>,
    /// MMMU, MathVista: the dataset's question type string.
    #[serde(default)]
    pub question_type: Option<String>,
}

/// Predictions keyed by question id; constructed only through validation (unique ids).
#[derive(Debug, Clone)]
pub struct Predictions {
    source: PathBuf,
    by_id: HashMap<QuestionId, String>,
    order: Vec<QuestionId>,
}

impl Predictions {
    /// Validate `records` read from `source` (a path or a label used in messages).
    pub fn new(records: Vec<Prediction>, source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        check_unique(records.iter().map(|r| &r.question_id), &source)?;
        let order = records.iter().map(|r| r.question_id.clone()).collect();
        let by_id = records
            .into_iter()
            .map(|r| (r.question_id, r.prediction))
            .collect();
        Ok(Self {
            source,
            by_id,
            order,
        })
    }

    pub fn get(&self, id: &QuestionId) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// Ids in file order.
    pub fn ids(&self) -> &[QuestionId] {
        &self.order
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Annotation records in file order, with unique ids.
#[derive(Debug, Clone)]
pub struct Annotations {
    source: PathBuf,
    records: Vec<Annotation>,
}

impl Annotations {
    pub fn new(records: Vec<Annotation>, source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        check_unique(records.iter().map(|r| &r.question_id), &source)?;
        Ok(Self { source, records })
    }

    pub fn records(&self) -> &[Annotation] {
        &self.records
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

pub(crate) fn check_unique<'a>(
    ids: impl Iterator<Item = &'a QuestionId>,
    source: &Path,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut dups: Vec<&QuestionId> = Vec::new();
    let mut dup_set = HashSet::new();
    for id in ids {
        if !seen.insert(id) && dup_set.insert(id) {
            dups.push(id);
        }
    }
    if dups.is_empty() {
        return Ok(());
    }
    Err(EvalError::DuplicateIds {
        path: source.to_path_buf(),
        count: dups.len(),
        examples: examples(&dups),
    })
}

/// `"a", "b", ... (+N more)` for messages.
pub fn examples<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = items
        .iter()
        .take(MAX_EXAMPLES)
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_EXAMPLES {
        s.push_str(&format!(" (+{} more)", items.len() - MAX_EXAMPLES));
    }
    s
}

/// Reads a UTF-8 file; a leading byte-order mark (Windows tools write one) is dropped, as
/// Python's `utf-8-sig` does, instead of failing as "expected value at line 1 column 1".
fn read_text(path: &Path) -> Result<String> {
    let mut text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

pub(crate) fn parse_jsonl<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(line).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message: e.to_string(),
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Read a predictions JSONL file.
pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let text = read_text(path)?;
    Predictions::new(parse_jsonl(&text, path)?, path)
}

/// Read an annotations file: a JSON array, or JSONL.
pub fn read_annotations(path: &Path) -> Result<Annotations> {
    Annotations::new(read_records(path)?, path)
}

/// Records of a JSON array file, or of JSONL (detected from the first non-blank character; a
/// leading BOM is dropped).
pub fn read_records<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = read_text(path)?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })
    } else {
        parse_jsonl(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_unify_integers_and_strings() {
        let p: Prediction =
            serde_json::from_str(r#"{"question_id": 7, "prediction": "A"}"#).unwrap();
        assert_eq!(p.question_id, QuestionId("7".into()));
        let bad = serde_json::from_str::<Prediction>(r#"{"question_id": 7.5, "prediction": "A"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn duplicates_are_errors_with_examples() {
        let recs = ["1", "2", "1", "1", "3", "2"]
            .iter()
            .map(|i| Prediction {
                question_id: QuestionId(i.to_string()),
                prediction: String::new(),
            })
            .collect();
        let err = Predictions::new(recs, "p.jsonl").unwrap_err().to_string();
        assert!(
            err.contains("2 duplicated") && err.contains("\"1\", \"2\""),
            "{err}"
        );
    }

    #[test]
    fn bom_is_accepted_and_long_ids_are_cut_in_messages_only() {
        let dir = tempfile::tempdir().unwrap();
        let long = "q".repeat(10_000_000);
        let p = dir.path().join("p.jsonl");
        std::fs::write(
            &p,
            format!(
                "\u{feff}{{\"question_id\": \"{long}\", \"prediction\": \"A\"}}\n{{\"question_id\": \"{long}\", \"prediction\": \"B\"}}\n"
            ),
        )
        .unwrap();
        // The BOM is skipped; the duplicate id is named, cut to its first 64 characters.
        let err = read_predictions(&p).unwrap_err().to_string();
        assert!(err.contains("duplicated"), "{err}");
        assert!(
            err.len() < 500 && err.contains("(10000000 characters)"),
            "{}",
            &err[..200]
        );
        std::fs::write(
            &p,
            format!("\u{feff}{{\"question_id\": \"{long}\", \"prediction\": \"A\"}}\n"),
        )
        .unwrap();
        let preds = read_predictions(&p).unwrap();
        assert_eq!(
            preds.ids()[0].0.len(),
            10_000_000,
            "the data keeps the whole id"
        );
        let a = dir.path().join("a.json");
        std::fs::write(&a, "\u{feff}[{\"question_id\": 1, \"answer\": \"x\"}]").unwrap();
        assert_eq!(read_annotations(&a).unwrap().records().len(), 1);
        assert_eq!(QuestionId("é".repeat(64)).shown(), "é".repeat(64));
    }

    #[test]
    fn one_string_answers_become_a_list() {
        let a: Annotation =
            serde_json::from_str(r#"{"question_id": "x", "answers": "hi", "answer": 3}"#).unwrap();
        assert_eq!(a.answers, Some(TextList(vec!["hi".into()])));
        assert_eq!(a.answer, Some(Text("3".into())));
    }
}
