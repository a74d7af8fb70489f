//! Answer extraction: multiple-choice letters, short answers, yes/no (docs/reference/evaluation.md A.2 (6),
//! (7)).
//!
//! The Cambrian extractors (`extract_mcq_answer` and friends in `eval/eval/<bench>/<bench>_test.py`)
//! all start the same way — lowercase, strip, then for each keyword in `["answer is", "answer is:",
//! "answer:"]` keep the text after its **last** occurrence — and differ in the tail:
//!
//! | [`McqStyle`] | used by | tail |
//! |---|---|---|
//! | `Truncate` | MMBench, AI2D, MMMU (MC), CV-Bench 3D (Omni) | `strip().rstrip('.:,').lstrip('(').rstrip(')')`, then the first character if longer than 1 |
//! | `TruncatePeriod` | SEED, CV-Bench 2D (ADE, COCO) | `rstrip('.')` only, then the first character |
//! | `Full` | MMVP | `rstrip('.:,')`, no truncation (so a whole option text can match) |
//!
//! Also here: Cambrian's short-answer extractors (MMMU open, ScienceQA, RealWorldQA's first word),
//! lmms-eval's CV-Bench letter regex `[\(\s]*([A-Z])[\)\.\s]*` (re.IGNORECASE, at the start) and the
//! Otter yes/no parser lmms-eval uses for MME. Small extractor differences move scores by about a
//! point, which is why the benchmark layer pins one extractor per benchmark (Cambrian's).

use super::py;

/// The answer keywords, in the order the reference applies them.
const KEYWORDS: [&str; 3] = ["answer is", "answer is:", "answer:"];

/// Which tail the Cambrian MCQ extractor applies (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McqStyle {
    /// `rstrip('.:,')` + first character (MMBench, AI2D, MMMU, Omni).
    Truncate,
    /// `rstrip('.')` + first character (SEED, ADE, COCO).
    TruncatePeriod,
    /// `rstrip('.:,')`, whole text kept (MMVP).
    Full,
}

/// Lowercase, strip, and keep the text after the last occurrence of each keyword in turn.
fn after_keywords(text: &str) -> String {
    let mut t = py::strip(&py::lower(text)).to_string();
    for kw in KEYWORDS {
        if t.contains(kw) {
            t = py::after_last(&t, kw).to_string();
        }
    }
    t
}

/// Cambrian `extract_mcq_answer` in the given style. Returns the lowercase letter (or text, for
/// [`McqStyle::Full`]); may be empty.
pub fn extract_mcq(text: &str, style: McqStyle) -> String {
    let t = after_keywords(text);
    let tail = if style == McqStyle::TruncatePeriod {
        "."
    } else {
        ".:,"
    };
    let t = py::rstrip_chars(
        py::lstrip_chars(py::rstrip_chars(py::strip(&t), tail), "("),
        ")",
    );
    match style {
        McqStyle::Full => t.to_string(),
        // `if len(text) > 1: text = text[0]`
        _ => {
            let mut it = t.chars();
            match (it.next(), it.next()) {
                (Some(first), Some(_)) => first.to_string(),
                _ => t.to_string(),
            }
        }
    }
}

/// Cambrian `extract_single_answer` (MMMU open questions) and ScienceQA's `extract_answer`: keywords,
/// strip, `rstrip('.')`.
pub fn extract_single_answer(text: &str) -> String {
    py::rstrip_chars(py::strip(&after_keywords(text)), ".").to_string()
}

/// Cambrian RealWorldQA: [`extract_single_answer`] then the first whitespace token. `None` where the
/// reference raises `IndexError` (nothing left); the benchmark layer scores that as wrong.
pub fn extract_first_word(text: &str) -> Option<String> {
    let t = extract_single_answer(text);
    py::split_whitespace(&t).next().map(str::to_string)
}

/// lmms-eval CV-Bench `_extract_answer_letter`: strip, skip leading `(` and whitespace, take one
/// letter matching `[A-Z]` case-insensitively (Python's rule, which admits `İ ı ſ K`), uppercase it.
/// Empty when there is none. The trailing `[\)\.\s]*` can match nothing, so it never matters.
pub fn cv_bench_letter(text: &str) -> String {
    let t = py::strip(text);
    let mut chars = t.chars().skip_while(|&c| c == '(' || py::is_space(c));
    match chars.next() {
        Some(c) if py::is_ascii_letter_ignorecase(c) => c.to_uppercase().collect(),
        _ => String::new(),
    }
}

/// Yes/no label of an MME answer under lmms-eval's Otter rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YesNo {
    Yes,
    No,
    Other,
}

impl YesNo {
    /// `"yes"`, `"no"` or `"other"`, the reference's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            YesNo::Yes => "yes",
            YesNo::No => "no",
            YesNo::Other => "other",
        }
    }
}

/// lmms-eval `mme/utils.py::parse_pred_ans` (from Otter): lowercase, strip, delete every `.`; exact
/// `yes`/`no`; a single `y`/`n`; otherwise `yes` (then `no`) anywhere in the first 4 characters.
pub fn mme_otter_parse(pred: &str) -> YesNo {
    let p = py::strip(&py::lower(pred)).replace('.', "");
    match p.as_str() {
        "yes" => YesNo::Yes,
        "no" => YesNo::No,
        "y" => YesNo::Yes,
        "n" => YesNo::No,
        _ if py::len(&p) == 1 => YesNo::Other,
        _ => {
            let prefix: String = p.chars().take(4).collect();
            if prefix.contains("yes") {
                YesNo::Yes
            } else if prefix.contains("no") {
                YesNo::No
            } else {
                YesNo::Other
            }
        }
    }
}

/// The option letter inside a CV-Bench / MMVP ground truth such as `"(A)"`: Cambrian's
/// `gt.lower()[1]`. `None` when the string has fewer than two characters (the reference raises).
pub fn paren_letter(gt: &str) -> Option<char> {
    py::lower(gt).chars().nth(1)
}

/// Index of a lowercase option letter (`ord(letter) - ord('a')`); `None` outside `a..=z`.
pub fn letter_index(letter: char) -> Option<usize> {
    letter
        .is_ascii_lowercase()
        .then(|| (letter as u8 - b'a') as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles() {
        assert_eq!(extract_mcq("The answer is (C).", McqStyle::Truncate), "c");
        assert_eq!(extract_mcq("B: cat", McqStyle::Truncate), "b");
        assert_eq!(extract_mcq("a,", McqStyle::Truncate), "a");
        assert_eq!(extract_mcq("a,", McqStyle::TruncatePeriod), "a"); // "a," truncated to "a"
        assert_eq!(extract_mcq("(b) Open.", McqStyle::Full), "b) open");
        assert_eq!(extract_mcq("Open.", McqStyle::Full), "open");
        assert_eq!(extract_mcq("", McqStyle::Truncate), "");
    }

    #[test]
    fn first_word_and_letters() {
        assert_eq!(
            extract_first_word("The answer is Left side."),
            Some("left".to_string())
        );
        assert_eq!(extract_first_word("answer:"), None);
        assert_eq!(cv_bench_letter("  ( b) cat"), "B");
        assert_eq!(cv_bench_letter("1. A"), "");
        assert_eq!(mme_otter_parse("Yes, there is."), YesNo::Yes);
        assert_eq!(mme_otter_parse("Not really"), YesNo::No);
        assert_eq!(mme_otter_parse("x"), YesNo::Other);
    }
}
