//! Python `str` semantics that the reference scorers depend on, reproduced exactly.
//!
//! The VQA scorers we port (Cambrian `eval/eval/*_test.py`, lmms-eval task utils, MMF's EvalAI processor)
//! are Python; their results hinge on CPython details that differ from Rust's standard library:
//!
//! * `str.isspace()` (used by `strip()`/`split()`) also counts U+001C..U+001F (the ASCII information
//!   separators, bidi class B/S); Rust's `char::is_whitespace` (Unicode `White_Space`) does not.
//! * `re`'s `\d` and `float()` accept every Unicode decimal digit (general category Nd: Arabic-Indic,
//!   Devanagari, full-width, ...), and `float()` allows `_` between digits.
//! * `[A-Z]` under `re.IGNORECASE` also matches U+0130 `İ`, U+0131 `ı`, U+017F `ſ` and U+212A (Kelvin).
//! * `len()` counts code points; `str.lower()`/`upper()` use the full (multi-char) case mappings, which
//!   Rust's `to_lowercase`/`to_uppercase` also use (final sigma included).
//!
//! Tables are checked against CPython 3.11 (Unicode 14.0) by the golden test (`py_isspace`,
//! `py_nd_zeros`, `py_ascii_letter_ignorecase` in `fixtures/vqa/golden.json`). Hand-written because no
//! crate offers "CPython's str": the alternative (a Unicode-category crate) would still need the
//! CPython-specific whitespace and float rules on top.

/// CPython `str.isspace()` for one character.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The first code point (the "zero") of each run of ten Unicode decimal digits (category Nd), as in
/// CPython 3.11's Unicode 14.0 database. Every Nd character is `zero + k` for k in 0..10.
const ND_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The decimal value of `c` if it is a Unicode decimal digit (Python `\d`, `unicodedata.decimal`).
pub fn decimal_value(c: char) -> Option<u32> {
    let cp = c as u32;
    // The table is sorted: find the last zero <= cp.
    let i = ND_ZEROS.partition_point(|&z| z <= cp);
    if i == 0 {
        return None;
    }
    let d = cp - ND_ZEROS[i - 1];
    (d < 10).then_some(d)
}

/// Python `\d` (for `str` patterns): a Unicode decimal digit.
pub fn is_decimal(c: char) -> bool {
    decimal_value(c).is_some()
}

/// All code points Python's `re.fullmatch('[A-Z]', c, re.IGNORECASE)` accepts.
pub fn is_ascii_letter_ignorecase(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '\u{130}' | '\u{131}' | '\u{17f}' | '\u{212a}')
}

/// `s.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()` (no argument: runs of whitespace, no empty pieces).
pub fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// `s.lower()`.
pub fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// `len(s)` (code points).
pub fn len(s: &str) -> usize {
    s.chars().count()
}

/// `s.lstrip(chars)`.
pub fn lstrip_chars<'a>(s: &'a str, chars: &str) -> &'a str {
    s.trim_start_matches(|c| chars.contains(c))
}

/// `s.rstrip(chars)`.
pub fn rstrip_chars<'a>(s: &'a str, chars: &str) -> &'a str {
    s.trim_end_matches(|c| chars.contains(c))
}

/// `s.split(sep)[-1]`: the text after the last occurrence of `sep` (all of `s` when absent).
pub fn after_last<'a>(s: &'a str, sep: &str) -> &'a str {
    s.rsplit_once(sep).map_or(s, |(_, after)| after)
}

/// `s.split(sep)[0]`.
pub fn before_first<'a>(s: &'a str, sep: &str) -> &'a str {
    s.split_once(sep).map_or(s, |(before, _)| before)
}

/// `s.translate(str.maketrans('', '', string.punctuation))`: delete ASCII punctuation.
pub fn remove_ascii_punctuation(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

/// CPython `float(s)` for a `str` argument; `None` where Python raises `ValueError`.
///
/// CPython first maps non-ASCII decimal digits to ASCII and non-ASCII whitespace to spaces, strips ASCII
/// whitespace, then
/// parses `[sign] (digits [. digits] | . digits) [e [sign] digits]` or `inf`/`infinity`/`nan` (any case),
/// where a single `_` may separate two digits (PEP 515). Rust's `f64::from_str` is correctly rounded,
/// as is CPython's `dtoa`, so parsed values agree bit for bit.
pub fn float(s: &str) -> Option<f64> {
    // `_PyUnicode_TransformDecimalAndSpaceToASCII`: code points < 127 pass unchanged; above, Unicode
    // whitespace becomes ' ' and decimal digits their ASCII digit; anything else fails.
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            ascii.push(c);
        } else if is_space(c) {
            ascii.push(' ');
        } else if let Some(d) = decimal_value(c) {
            ascii.push(char::from_digit(d, 10)?);
        } else {
            return None;
        }
    }
    // Then only C-locale ASCII whitespace is stripped (so U+001C..U+001F, which `str.strip()` removes,
    // make `float()` fail).
    let t = ascii.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower_body = body.to_ascii_lowercase();
    if matches!(lower_body.as_str(), "inf" | "infinity" | "nan") {
        // Rust accepts the same spellings (case-insensitive, optional sign).
        return t.parse::<f64>().ok();
    }
    // Grammar check (Rust's parser is more permissive in no case we rely on, but be explicit), and
    // underscores: only between two ASCII digits.
    let bytes = t.as_bytes();
    let mut cleaned = String::with_capacity(t.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let prev_digit = i > 0 && bytes[i - 1].is_ascii_digit();
            let next_digit = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !(prev_digit && next_digit) {
                return None;
            }
        } else {
            cleaned.push(b as char);
        }
    }
    if !is_decimal_literal(&cleaned) {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// `[+-]? (d+ (. d*)? | . d+) ([eE] [+-]? d+)?`
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - f;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_differs_from_rust_on_information_separators() {
        assert!(is_space('\u{1c}') && !'\u{1c}'.is_whitespace());
        assert_eq!(strip("\u{1f} yes\u{3000}"), "yes");
        assert_eq!(
            split_whitespace(" a\u{1e}b  c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn float_follows_cpython() {
        assert_eq!(float(" 3.5 "), Some(3.5));
        assert_eq!(float("1_000"), Some(1000.0));
        assert_eq!(float("1__000"), None);
        assert_eq!(float("١٢٣"), Some(123.0));
        assert_eq!(float("1,000"), None);
        assert_eq!(float("."), None);
        assert_eq!(float("5."), Some(5.0));
        assert!(float("-Infinity").is_some_and(|x| x == f64::NEG_INFINITY));
        assert!(float("nan").is_some_and(f64::is_nan));
        assert_eq!(float("1e"), None);
        assert_eq!(float("12%"), None);
    }

    #[test]
    fn decimal_digits_cover_runs_of_ten() {
        assert_eq!(decimal_value('0'), Some(0));
        assert_eq!(decimal_value('9'), Some(9));
        assert_eq!(decimal_value(':'), None);
        assert_eq!(decimal_value('\u{ff13}'), Some(3)); // full-width 3
        assert_eq!(decimal_value('\u{b2}'), None); // superscript two is No, not Nd
    }
}
