//! Answering a benchmark: the question file, the resumable predictions file, and the loop that asks
//! a model each question not yet answered.
//!
//! The predictions file is what `webssl eval vqa-score` reads ([`crate::vqa::io`]): JSONL, one
//! `{"question_id", "prediction"}` per line. Each answer is one `write` of a whole line to a file
//! opened for appending, then `fsync`, so a kill leaves at most one torn last line; reopening drops
//! that line (and says so) and skips every id already answered. The answer is the decoded generation
//! stripped of surrounding whitespace, as Cambrian's scripts do
//! (`tokenizer.batch_decode(..., skip_special_tokens=True)[0].strip()`).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::prompt::{Question, user_message};
use crate::error::{EvalError, Result};
use crate::vqa::Benchmark;
use crate::vqa::io::{self, Prediction, QuestionId};

/// Read a question file: JSONL or a JSON array of [`Question`]s, ids unique.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let questions: Vec<Question> = io::read_records(path)?;
    io::check_unique(questions.iter().map(|q| &q.question_id), path)?;
    Ok(questions)
}

/// An append-only predictions file that knows which questions it already answers.
pub struct AnswerLog {
    path: PathBuf,
    file: File,
    done: HashSet<QuestionId>,
    /// Bytes of a torn last line dropped on open (0 normally).
    pub dropped_tail: usize,
}

impl AnswerLog {
    /// Opens (creating) `path`; complete lines are kept and their ids marked answered, a last line
    /// without its newline (a kill mid-write) is cut off.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existing = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let keep = existing
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&existing[..keep]).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: None,
            message: format!("not UTF-8: {e}"),
        })?;
        let lines: Vec<Prediction> = io::parse_jsonl(text, path)?;
        io::check_unique(lines.iter().map(|p| &p.question_id), path)?;
        let done = lines.into_iter().map(|p| p.question_id).collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if keep < existing.len() {
            file.set_len(keep as u64).map_err(io)?;
            tracing::warn!(
                "{}: dropped a torn last line ({} bytes) left by an interrupted run",
                path.display(),
                existing.len() - keep
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
            dropped_tail: existing.len() - keep,
        })
    }

    pub fn is_done(&self, id: &QuestionId) -> bool {
        self.done.contains(id)
    }

    pub fn answered(&self) -> usize {
        self.done.len()
    }

    /// Appends one answer as a single line and syncs it to disk.
    pub fn append(&mut self, id: &QuestionId, prediction: &str) -> Result<()> {
        let mut line = serde_json::to_string(&serde_json::json!({
            "question_id": id.0,
            "prediction": prediction,
        }))
        .expect("a JSON object serialises");
        line.push('\n');
        let io = |source| EvalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.done.insert(id.clone());
        Ok(())
    }
}

/// What [`answer_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSummary {
    pub answered: usize,
    pub skipped: usize,
}

/// Asks `generate(question, user message)` every question of `b` not yet in `log`, in file order,
/// and appends each stripped answer.
pub fn answer_all(
    b: Benchmark,
    questions: &[Question],
    log: &mut AnswerLog,
    mut generate: impl FnMut(&Question, &str) -> Result<String>,
) -> Result<AnswerSummary> {
    let mut s = AnswerSummary {
        answered: 0,
        skipped: 0,
    };
    for q in questions {
        if log.is_done(&q.question_id) {
            s.skipped += 1;
            continue;
        }
        let message = user_message(b, q)?;
        let text = generate(q, &message)?;
        log.append(&q.question_id, crate::vqa::py::strip(&text))?;
        s.answered += 1;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str) -> Question {
        serde_json::from_value(
            serde_json::json!({"question_id": id, "image": "x.png", "question": "Is it red?"}),
        )
        .unwrap()
    }

    #[test]
    fn resumes_skipping_answered_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.jsonl");
        let qs: Vec<Question> = ["a", "b", "c"].iter().map(|i| q(i)).collect();
        let mut log = AnswerLog::open(&out).unwrap();
        let mut asked = Vec::new();
        let mut gen_fn = |q: &Question, m: &str| {
            assert!(
                m.starts_with("<image>\nIs it red?\nAnswer the question"),
                "{m}"
            );
            asked.push(q.question_id.0.clone());
            Ok(format!("  yes {}\n", q.question_id.0))
        };
        answer_all(Benchmark::Gqa, &qs[..2], &mut log, &mut gen_fn).unwrap();
        drop(log);
        // A kill mid-write leaves a torn line: it is dropped, "c" asked again, "a", "b" skipped.
        let mut f = OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(br#"{"question_id": "c", "predic"#).unwrap();
        let mut log = AnswerLog::open(&out).unwrap();
        assert_eq!((log.answered(), log.dropped_tail), (2, 28));
        let s = answer_all(Benchmark::Gqa, &qs, &mut log, &mut gen_fn).unwrap();
        assert_eq!(
            s,
            AnswerSummary {
                answered: 1,
                skipped: 2
            }
        );
        assert_eq!(asked, vec!["a", "b", "c"]);
        let preds = crate::vqa::read_predictions(&out).unwrap();
        assert_eq!(preds.len(), 3);
        assert_eq!(preds.get(&QuestionId("c".into())), Some("yes c"));
    }
}
