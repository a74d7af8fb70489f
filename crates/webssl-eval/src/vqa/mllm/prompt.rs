//! The question prompt of each benchmark, as Cambrian-1's answering scripts build it.
//!
//! Reference: cambrian-mllm/cambrian @ 539ffc3, `eval/eval/<bench>/<bench>_eval.py` (`process` or
//! `CustomDataset.__getitem__`, and each script's `--question_extension` / `--max_new_tokens`
//! defaults); summary in `docs/reference/evaluation.md` §A.1. Golden strings:
//! `fixtures/mllm/make_mllm.py` (a transcription of those functions) → `fixtures/mllm/golden.json`.
//!
//! The result is the *user message* (`<image>\n` first when the question has an image); the chat
//! template ([`super::conversation`]) wraps it. Where Cambrian's dataset row has a field of another
//! name, the question file uses the common one: MathVista's `query` and CV-Bench's `prompt` are
//! `question`; MMBench's columns `A`..`D` and SEED's `choice_a`..`choice_d` are `options` (MMBench's
//! `"nan"` entries are skipped as there, keeping the other letters). MMMU's `options` may be the
//! dataset's string (`"['x', 'y']"`, read with Cambrian's `'(.*?)'` regex) or a list; MMVP's the
//! dataset's `"(a) x (b) y"` string or a list.
//!
//! Quirks kept: MathVista multiple choice asks for reasoning ("First show your reasoning process and
//! then give the final answer.", the script's default, not the short MCQ suffix); RealWorldQA adds no
//! suffix (its questions carry their own instruction); ScienceQA and AI2D list options without
//! `" Options:"`; TextVQA always writes `"\nReference OCR tokens:"`, even with no tokens.

use serde::Deserialize;

use super::super::Benchmark;
use super::super::io::QuestionId;
use crate::error::{EvalError, Result};

/// "Answer the question using a single word or phrase."
pub const SHORT: &str = "Answer the question using a single word or phrase.";
/// "Answer with the option's letter from the given choices directly."
pub const MCQ: &str = "Answer with the option's letter from the given choices directly.";
const CHART: &str = "Answer the question using a single number or phrase.";
const DIRECT: &str = "Give the short answer directly.";
const SQA: &str =
    "Please answer directly with only the letter of the correct option and nothing else.";
const MATHVISTA_MC: &str = "First show your reasoning process and then give the final answer.";

/// The image placeholder of LLaVA/Cambrian prompts (`DEFAULT_IMAGE_TOKEN`).
pub const IMAGE_TOKEN: &str = "<image>";

/// Option texts: a list, or the dataset's single string (MMMU, MMVP).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Options {
    List(Vec<String>),
    Raw(String),
}

/// One question of a `--questions` JSONL file.
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub question_id: QuestionId,
    /// Image file (relative to `--images`) or shard key; absent for a text-only question (ScienceQA).
    #[serde(default)]
    pub image: Option<String>,
    /// The question (MathVista: the `query`; CV-Bench: the `prompt`, options included).
    pub question: String,
    /// MMBench and ScienceQA context.
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub options: Option<Options>,
    /// TextVQA: the OCR tokens the protocol lists in the prompt.
    #[serde(default)]
    pub ocr_tokens: Option<Vec<String>>,
    /// MMMU (`"multiple-choice"` / `"open"`), MathVista (`"multi_choice"` / `"free_form"`).
    #[serde(default)]
    pub question_type: Option<String>,
}

/// The decoding budget of Cambrian's script for `b` (`--max_new_tokens` default).
pub fn max_new_tokens(b: Benchmark) -> usize {
    match b {
        Benchmark::Mme => 32,
        Benchmark::Gqa | Benchmark::ChartQa | Benchmark::DocVqa => 128,
        _ => 512,
    }
}

fn letter(i: usize) -> char {
    char::from(b'A' + i as u8)
}

/// The user message for `q` in benchmark `b`.
pub fn user_message(b: Benchmark, q: &Question) -> Result<String> {
    let bad = |field: &'static str, message: String| EvalError::BadField {
        benchmark: b.name().into(),
        question_id: q.question_id.shown(),
        field,
        message,
    };
    let list = |what: &str| -> Result<&[String]> {
        match &q.options {
            Some(Options::List(v)) => Ok(v),
            Some(Options::Raw(_)) => Err(bad(
                "options",
                format!("{what} takes a list of option texts"),
            )),
            None => Err(bad("options", "missing (a list of option texts)".into())),
        }
    };
    let hint = q.hint.as_deref().filter(|h| !h.is_empty() && *h != "nan");
    let mut qs;
    match b {
        Benchmark::Mme
        | Benchmark::Gqa
        | Benchmark::ChartQa
        | Benchmark::OcrBench
        | Benchmark::DocVqa => {
            let suffix = match b {
                Benchmark::ChartQa => CHART,
                Benchmark::OcrBench | Benchmark::DocVqa => DIRECT,
                _ => SHORT,
            };
            qs = format!("{}\n{suffix}", q.question);
        }
        Benchmark::RealWorldQa => qs = q.question.clone(),
        Benchmark::CvBench2d | Benchmark::CvBench3d => qs = format!("{}\n{MCQ}", q.question),
        Benchmark::TextVqa => {
            let tokens = q
                .ocr_tokens
                .as_ref()
                .ok_or_else(|| bad("ocr_tokens", "missing (a list, possibly empty)".into()))?;
            qs = format!("{}\nReference OCR tokens:", q.question);
            for (i, t) in tokens.iter().enumerate() {
                qs.push_str(if i == 0 { " " } else { ", " });
                qs.push_str(t);
            }
            qs.push_str(&format!("\n{SHORT}"));
        }
        Benchmark::MmBench => {
            qs = match hint {
                Some(h) => format!("{h}\n{} Options:", q.question),
                None => format!("{} Options:", q.question),
            };
            let opts = list("MMBench")?;
            if opts.len() > 4 {
                return Err(bad(
                    "options",
                    format!("{} options; MMBench has A-D", opts.len()),
                ));
            }
            for (i, o) in opts.iter().enumerate().filter(|(_, o)| *o != "nan") {
                qs.push_str(&format!("\n{}. {o}", letter(i)));
            }
            qs.push_str(&format!("\n{MCQ}"));
        }
        Benchmark::Seed => {
            let opts = list("SEED")?;
            if opts.len() != 4 {
                return Err(bad(
                    "options",
                    format!("{} options; SEED has exactly 4", opts.len()),
                ));
            }
            qs = format!("{} Options:", q.question);
            push_lettered(&mut qs, opts);
            qs.push_str(&format!("\n{MCQ}"));
        }
        Benchmark::Sqa => {
            qs = match hint {
                Some(h) => format!("{h} {}", q.question),
                None => q.question.clone(),
            };
            push_lettered(&mut qs, list("ScienceQA")?);
            qs.push_str(&format!("\n{SQA}"));
        }
        Benchmark::Ai2d => {
            let opts = list("AI2D")?;
            if opts.len() > 4 {
                return Err(bad(
                    "options",
                    format!("{} options; AI2D has A-D", opts.len()),
                ));
            }
            qs = q.question.clone();
            push_lettered(&mut qs, opts);
            qs.push_str(&format!("\n{MCQ}"));
        }
        Benchmark::Mmmu => {
            qs = q.question.clone();
            if q.question_type.as_deref() == Some("multiple-choice") {
                qs.push_str(" Options:");
                let opts = match &q.options {
                    Some(Options::List(v)) => v.clone(),
                    Some(Options::Raw(s)) => quoted(s),
                    None => {
                        return Err(bad(
                            "options",
                            "missing for a multiple-choice question".into(),
                        ));
                    }
                };
                push_lettered(&mut qs, &opts);
                qs.push_str(&format!("\n{MCQ}"));
            } else {
                qs.push_str(&format!("\n{SHORT}"));
            }
        }
        Benchmark::MathVista => {
            let suffix = if q.question_type.as_deref() == Some("multi_choice") {
                MATHVISTA_MC
            } else {
                SHORT
            };
            qs = format!("{}\n{suffix}", q.question);
        }
        Benchmark::Mmvp => {
            qs = format!("{} Options:", q.question);
            match &q.options {
                Some(Options::List(v)) => push_lettered(&mut qs, v),
                Some(Options::Raw(s)) => {
                    for part in mmvp_parts(s) {
                        qs.push_str(&format!("\n{part}"));
                    }
                }
                None => return Err(bad("options", "missing".into())),
            }
            qs.push_str(&format!("\n{MCQ}"));
        }
    }
    if q.image.is_some() {
        qs = format!("{IMAGE_TOKEN}\n{qs}");
    }
    if b == Benchmark::Mmmu {
        // `re.sub(r'<image \d+>', '', qs).strip()`, after the image token went in front.
        qs = crate::vqa::py::strip(&strip_image_tags(&qs)).to_string();
    }
    Ok(qs)
}

fn push_lettered(qs: &mut String, opts: &[String]) {
    for (i, o) in opts.iter().enumerate() {
        qs.push_str(&format!("\n{}. {o}", letter(i)));
    }
}

/// Python's `re.findall(r"'(.*?)'", s)`: the texts between successive pairs of single quotes on one
/// line (`.` does not match a newline, so a pair never spans one).
fn quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('\'') {
        let after = &rest[open + 1..];
        match after.find(['\'', '\n']) {
            Some(end) if after.as_bytes()[end] == b'\'' => {
                out.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            // A newline before the closing quote: the match attempt fails at this quote; the
            // regex engine retries from the next character.
            Some(_) => rest = after,
            None => break,
        }
    }
    out
}

/// Cambrian's MMVP option parsing: split on `(b)`, strip, `(a)` → `A.`, `(b)` → `B.`, the second
/// part prefixed with `B. `.
fn mmvp_parts(s: &str) -> Vec<String> {
    let mut parts: Vec<String> = s
        .split("(b)")
        .map(|p| {
            crate::vqa::py::strip(p)
                .replace("(a)", "A.")
                .replace("(b)", "B.")
        })
        .collect();
    if parts.len() > 1 {
        parts[1] = format!("B. {}", parts[1]);
    }
    parts
}

/// Python's `re.sub(r'<image \d+>', '', s)` (`\d` is any Unicode decimal digit in a `str` pattern).
fn strip_image_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("<image ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + "<image ".len()..];
        let digits: usize = tail
            .char_indices()
            .take_while(|(_, c)| crate::vqa::py::is_decimal(*c))
            .map(|(j, c)| j + c.len_utf8())
            .last()
            .unwrap_or(0);
        if digits > 0 && tail[digits..].starts_with('>') {
            rest = &tail[digits + 1..];
        } else {
            out.push_str("<image ");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_regex_helpers() {
        assert_eq!(quoted("['a', 'b c', '']"), vec!["a", "b c", ""]);
        assert_eq!(quoted("['it''s']"), vec!["it", "s"]);
        assert_eq!(quoted("'a\n' 'b'"), vec![" "]);
        assert_eq!(
            strip_image_tags("x <image 1> y <image a> <image 12>"),
            "x  y <image a> "
        );
        assert_eq!(
            mmvp_parts("(a) Open (b) Closed"),
            vec!["A. Open".to_string(), "B. Closed".to_string()]
        );
    }
}
