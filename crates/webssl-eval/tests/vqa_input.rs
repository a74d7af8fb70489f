//! Bad and incomplete input: every case is a clear error or a counted, reported warning, and a score
//! is never computed over the wrong question set.

use std::path::{Path, PathBuf};

use webssl_eval::error::EvalError;
use webssl_eval::vqa::{Benchmark, Protocol, ScoreOptions, discover_dir, score_files};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn gqa_files(dir: &Path, preds: &str) -> (PathBuf, PathBuf) {
    let ann = write(
        dir,
        "gqa.annotations.json",
        r#"[{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "left"},
            {"question_id": 3, "answer": "red"}, {"question_id": 4, "answer": "2"}]"#,
    );
    (write(dir, "gqa.jsonl", preds), ann)
}

const LENIENT: ScoreOptions = ScoreOptions {
    strict: false,
    protocol: Protocol::Cambrian,
};
const STRICT: ScoreOptions = ScoreOptions {
    strict: true,
    protocol: Protocol::Cambrian,
};

#[test]
fn missing_predictions_count_as_wrong_and_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let (p, a) = gqa_files(
        d.path(),
        "{\"question_id\": 1, \"prediction\": \"Yes.\"}\n{\"question_id\": \"2\", \"prediction\": \"left\"}\n",
    );
    let r = score_files(Benchmark::Gqa, &p, &a, LENIENT).unwrap();
    assert_eq!(
        r.score, 50.0,
        "2 right of 4; the 2 missing are wrong, not dropped"
    );
    assert_eq!(r.n_scored, 4);
    assert_eq!(r.missing_predictions.count, 2);
    assert_eq!(r.missing_predictions.examples, ["3", "4"]);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("2 of 4 questions have no prediction"))
    );
    let e = score_files(Benchmark::Gqa, &p, &a, STRICT)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--strict") && e.contains("2 scored question(s) without a prediction"),
        "{e}"
    );
}

#[test]
fn missing_is_not_an_empty_string() {
    // An empty ground truth is a substring of everything: an empty *prediction* is right under the
    // OCRBench rule, a missing one must not be.
    let d = tempfile::tempdir().unwrap();
    let a = write(
        d.path(),
        "o.json",
        r#"[{"question_id": "a", "answers": [""], "category": "x"}, {"question_id": "b", "answers": [""], "category": "x"}]"#,
    );
    let p = write(
        d.path(),
        "o.jsonl",
        "{\"question_id\": \"a\", \"prediction\": \"\"}\n",
    );
    let r = score_files(Benchmark::OcrBench, &p, &a, LENIENT).unwrap();
    assert_eq!(r.score, 50.0);
    assert_eq!(r.empty_predictions, 1);
    assert_eq!(r.missing_predictions.count, 1);
}

#[test]
fn unknown_ids_warn_or_fail_and_no_overlap_always_fails() {
    let d = tempfile::tempdir().unwrap();
    let (p, a) = gqa_files(
        d.path(),
        r#"{"question_id": 1, "prediction": "yes"}
{"question_id": 2, "prediction": "left"}
{"question_id": 3, "prediction": "red"}
{"question_id": 4, "prediction": "two"}
{"question_id": 99, "prediction": "x"}
"#,
    );
    let r = score_files(Benchmark::Gqa, &p, &a, LENIENT).unwrap();
    assert_eq!(r.score, 75.0);
    assert_eq!(r.unknown_predictions.count, 1);
    assert!(matches!(
        score_files(Benchmark::Gqa, &p, &a, STRICT),
        Err(EvalError::Mismatch { .. })
    ));

    let (p, a) = gqa_files(
        d.path(),
        "{\"question_id\": \"x1\", \"prediction\": \"yes\"}\n",
    );
    let e = score_files(Benchmark::Gqa, &p, &a, LENIENT).unwrap_err();
    assert!(
        matches!(e, EvalError::Mismatch { .. }) && e.to_string().contains("wrong files"),
        "{e}"
    );
}

#[test]
fn duplicates_and_malformed_lines_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let (p, a) = gqa_files(
        d.path(),
        "{\"question_id\": 1, \"prediction\": \"yes\"}\n{\"question_id\": \"1\", \"prediction\": \"no\"}\n",
    );
    let e = score_files(Benchmark::Gqa, &p, &a, LENIENT).unwrap_err();
    assert!(matches!(e, EvalError::DuplicateIds { count: 1, .. }), "{e}");
    assert!(e.to_string().contains("gqa.jsonl"));

    let (p, a) = gqa_files(
        d.path(),
        "{\"question_id\": 1, \"prediction\": \"yes\"}\n\n{\"question_id\": 2}\n",
    );
    let e = score_files(Benchmark::Gqa, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gqa.jsonl:3") && e.contains("prediction"), "{e}");

    let a2 = write(
        d.path(),
        "dup.json",
        r#"[{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}]"#,
    );
    assert!(matches!(
        score_files(Benchmark::Gqa, &p, &a2, LENIENT),
        Err(EvalError::DuplicateIds { .. })
    ));
}

#[test]
fn missing_fields_name_question_and_field() {
    let d = tempfile::tempdir().unwrap();
    let a = write(
        d.path(),
        "a.jsonl",
        "{\"question_id\": 1, \"answer\": \"(A)\"}\n",
    );
    let p = write(
        d.path(),
        "p.jsonl",
        "{\"question_id\": 1, \"prediction\": \"A\"}\n",
    );
    let e = score_files(Benchmark::CvBench3d, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cvbench3d") && e.contains("question \"1\"") && e.contains("`options`"),
        "{e}"
    );
    let e = score_files(Benchmark::MmBench, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`group`"), "{e}");
    let a = write(
        d.path(),
        "b.jsonl",
        "{\"question_id\": 1, \"answer\": \"(E)\", \"options\": [\"x\", \"y\"]}\n",
    );
    let e = score_files(Benchmark::CvBench3d, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no option"), "{e}");
}

#[test]
fn structural_rules() {
    let d = tempfile::tempdir().unwrap();
    // MME: an image with a single question.
    let a = write(
        d.path(),
        "mme.json",
        r#"[{"question_id": 1, "answer": "Yes", "category": "count", "image": "i1"}]"#,
    );
    let p = write(
        d.path(),
        "mme.jsonl",
        "{\"question_id\": 1, \"prediction\": \"yes\"}\n",
    );
    let e = score_files(Benchmark::Mme, &p, &a, LENIENT).unwrap_err();
    assert!(
        matches!(e, EvalError::Structure { .. }) && e.to_string().contains("exactly 2"),
        "{e}"
    );
    // MME: unknown category.
    let a = write(
        d.path(),
        "mme2.json",
        r#"[{"question_id": 1, "answer": "Yes", "category": "vibes", "image": "i1"}]"#,
    );
    assert!(
        score_files(Benchmark::Mme, &p, &a, LENIENT)
            .unwrap_err()
            .to_string()
            .contains("not an MME category")
    );
    // MMVP: odd number of questions.
    let a = write(
        d.path(),
        "mmvp.json",
        r#"[{"question_id": 1, "answer": "(a)", "options": ["x", "y"]}]"#,
    );
    let e = score_files(Benchmark::Mmvp, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be even"), "{e}");
    // CV-Bench 2D: only one source.
    let a = write(
        d.path(),
        "cv.json",
        r#"[{"question_id": 1, "answer": "(A)", "source": "ADE20K"}]"#,
    );
    let e = score_files(Benchmark::CvBench2d, &p, &a, LENIENT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no COCO questions"), "{e}");
    // Empty annotation file.
    let a = write(d.path(), "empty.json", "[]");
    assert!(matches!(
        score_files(Benchmark::Gqa, &p, &a, LENIENT),
        Err(EvalError::Empty { .. })
    ));
}

#[test]
fn exclusions_are_counted_not_scored() {
    let d = tempfile::tempdir().unwrap();
    // SQA: only questions with an image count; MMBench: unlabelled rows are skipped.
    let a = write(
        d.path(),
        "sqa.json",
        r#"[{"question_id": 1, "answer": "A", "answer_text": "cat", "has_image": true},
            {"question_id": 2, "answer": "B", "answer_text": "dog", "has_image": false}]"#,
    );
    let p = write(
        d.path(),
        "sqa.jsonl",
        "{\"question_id\": 1, \"prediction\": \"A\"}\n{\"question_id\": 2, \"prediction\": \"A\"}\n",
    );
    let r = score_files(Benchmark::Sqa, &p, &a, STRICT).unwrap();
    assert_eq!((r.score, r.n_scored, r.n_excluded), (100.0, 1, 1));

    let a = write(
        d.path(),
        "mmb.json",
        r#"[{"question_id": 1, "answer": "A", "group": "g1"}, {"question_id": 2, "answer": "B", "group": "g1"},
            {"question_id": 3, "answer": "C", "group": "g2"}, {"question_id": 4, "answer": null, "group": "g3"}]"#,
    );
    let p = write(
        d.path(),
        "mmb.jsonl",
        "{\"question_id\": 1, \"prediction\": \"A\"}\n{\"question_id\": 2, \"prediction\": \"C\"}\n{\"question_id\": 3, \"prediction\": \"(C)\"}\n",
    );
    let r = score_files(Benchmark::MmBench, &p, &a, STRICT).unwrap();
    assert_eq!(
        r.score, 50.0,
        "g1 fails on its second rotation, g2 is right"
    );
    assert_eq!(r.n_excluded, 1);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("1 record(s) without a ground-truth answer"))
    );
    assert!((r.details["accuracy"] - 200.0 / 3.0).abs() < 1e-9);
}

#[test]
fn directory_discovery() {
    let d = tempfile::tempdir().unwrap();
    gqa_files(d.path(), "{\"question_id\": 1, \"prediction\": \"yes\"}\n");
    write(
        d.path(),
        "ChartQA.jsonl",
        "{\"question_id\": 1, \"prediction\": \"3\"}\n",
    );
    write(
        d.path(),
        "ChartQA.annotations.jsonl",
        "{\"question_id\": 1, \"answer\": \"3.1\"}\n",
    );
    write(d.path(), "notes.txt", "ignored");
    let found = discover_dir(d.path()).unwrap();
    assert_eq!(
        found.iter().map(|e| e.benchmark).collect::<Vec<_>>(),
        [Benchmark::Gqa, Benchmark::ChartQa]
    );

    write(d.path(), "vqav2.jsonl", "");
    let e = discover_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("vqav2") && e.contains("valid names"), "{e}");
    std::fs::remove_file(d.path().join("vqav2.jsonl")).unwrap();

    write(d.path(), "mmvp.jsonl", "");
    let e = discover_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("mmvp.annotations.json"), "{e}");
}
