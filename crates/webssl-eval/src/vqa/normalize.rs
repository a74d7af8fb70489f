//! The VQAv2 / EvalAI answer normaliser, bug for bug.
//!
//! Port of `EvalAIAnswerProcessor` (MMF `pythia/tasks/processors.py`, copied verbatim into Cambrian
//! `eval/eval/textvqa/m4c_evaluator.py` and lmms-eval `tasks/_task_utils/vqa_eval_metric.py`;
//! docs/reference/evaluation.md A.2 (1)). Kept quirks, each pinned by the golden test:
//!
//! * `process_punctuation` decides "delete or replace by a space" per punctuation mark by looking at the
//!   **input** string (`p + " "` or `" " + p` anywhere, or a comma between digits anywhere), not at the
//!   partially processed one.
//! * `PERIOD_STRIP = (?!<=\d)(\.)(?!\d)`: the first group is a negative *lookahead* (a typo for a
//!   lookbehind) and so never fires; a period is deleted when the next character is not a digit.
//!   It is called as `.sub("", text, re.UNICODE)`, i.e. with `count = 32`: at most 32 periods go.
//! * `word_tokenize` has already deleted every comma before `process_punctuation` runs, so the
//!   comma-between-digits rule only matters when `process_punctuation` is called on its own.
//! * Contraction keys with capitals (`Im`, `Ive`, `Id've`) can never match the lowercased words.

use super::py;

/// `EvalAIAnswerProcessor.CONTRACTIONS`.
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// `EvalAIAnswerProcessor.NUMBER_MAP`.
const NUMBER_MAP: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// `EvalAIAnswerProcessor.PUNCTUATIONS`, in order (order matters: replacements are sequential).
const PUNCTUATIONS: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// `re.sub` count passed by mistake as `re.UNICODE` (= 32).
const PERIOD_STRIP_MAX: usize = 32;

/// `word_tokenize`: lowercase, delete `,` and `?`, `'s` → ` 's`, strip.
pub fn word_tokenize(s: &str) -> String {
    let w = py::lower(s).replace([',', '?'], "").replace("'s", " 's");
    py::strip(&w).to_string()
}

/// `COMMA_STRIP = (?<=\d)(\,)+(?=\d)` searched anywhere: a run of commas between two digits.
fn has_comma_between_digits(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ',' && i > 0 && py::is_decimal(chars[i - 1]) {
            let mut j = i;
            while j < chars.len() && chars[j] == ',' {
                j += 1;
            }
            if j < chars.len() && py::is_decimal(chars[j]) {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

/// `process_punctuation`.
pub fn process_punctuation(in_text: &str) -> String {
    let comma_between_digits = has_comma_between_digits(in_text);
    let mut out = in_text.to_string();
    let mut buf = [0u8; 4];
    for p in PUNCTUATIONS {
        let ps: &str = p.encode_utf8(&mut buf);
        let spaced = in_text.contains(&format!("{ps} ")) || in_text.contains(&format!(" {ps}"));
        let replacement = if spaced || comma_between_digits {
            ""
        } else {
            " "
        };
        out = out.replace(p, replacement);
    }
    period_strip(&out)
}

/// `PERIOD_STRIP.sub("", text, 32)`: drop up to 32 periods not followed by a decimal digit.
fn period_strip(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        // The lookahead looks at the original string, so a run ".." loses both periods.
        let next_is_digit = chars.get(i + 1).is_some_and(|&n| py::is_decimal(n));
        if c == '.' && !next_is_digit && removed < PERIOD_STRIP_MAX {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// `process_digit_article`: number words → digits, drop articles, expand contractions.
pub fn process_digit_article(in_text: &str) -> String {
    let lowered = py::lower(in_text);
    let words = py::split_whitespace(&lowered)
        .map(|w| {
            NUMBER_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        });
    words.collect::<Vec<_>>().join(" ")
}

/// The full processor (`EvalAIAnswerProcessor.__call__`).
pub fn normalize_answer(s: &str) -> String {
    let item = word_tokenize(s);
    let item = item.replace(['\n', '\t'], " ");
    let item = process_punctuation(py::strip(&item));
    process_digit_article(&item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples() {
        assert_eq!(normalize_answer("Two dogs."), "2 dogs");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("it's red"), "it 's red");
        assert_eq!(normalize_answer("The answer: (A)"), "answer:"); // the article "a" is dropped
        assert_eq!(process_punctuation("1,000"), "1000");
        assert_eq!(process_punctuation("red,blue"), "red blue");
    }

    #[test]
    fn period_strip_stops_after_32() {
        let s = format!("a{}", ".".repeat(35));
        assert_eq!(process_punctuation(&s), "a...");
        assert_eq!(process_punctuation("3.5."), "3.5");
    }
}
