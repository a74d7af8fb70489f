//! Golden parity with the Python reference functions (`fixtures/vqa/make_vqa_golden.py`, which
//! transcribes Cambrian-1 / lmms-eval / EvalAI; see its header for sources). Strings must match
//! exactly, booleans exactly, float scores within 1e-9. Every section reports all mismatches.

use std::sync::OnceLock;

use serde_json::Value;
use webssl_eval::vqa::io::{Annotation, Annotations, Prediction, Predictions};
use webssl_eval::vqa::mcq::{self, McqStyle};
use webssl_eval::vqa::{
    Benchmark, Protocol, ScoreOptions, metrics, normalize, py, score_benchmark,
};

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/vqa/golden.json"
        );
        let text = std::fs::read_to_string(path)
            .expect("fixtures/vqa/golden.json (run make_vqa_golden.py)");
        serde_json::from_str(&text).expect("golden.json parses")
    })
}

fn cases(section: &str) -> &'static [Value] {
    let v = golden()[section]
        .as_array()
        .unwrap_or_else(|| panic!("golden section {section} missing"));
    assert!(!v.is_empty(), "golden section {section} is empty");
    v
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| s(x).to_string())
        .collect()
}

/// Run `check` on every case of `section`; fail listing the mismatches.
fn each(section: &str, check: impl Fn(&Value) -> Option<String>) {
    let all = cases(section);
    let bad: Vec<String> = all.iter().filter_map(&check).collect();
    assert!(
        bad.is_empty(),
        "{section}: {} of {} mismatches:\n{}",
        bad.len(),
        all.len(),
        bad.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn eq_str(what: &str, input: &Value, got: &str, want: &Value) -> Option<String> {
    (got != s(want)).then(|| format!("{what}({input}) = {got:?}, want {want}"))
}

#[test]
fn python_whitespace_digits_and_letter_tables() {
    let want: Vec<u32> = cases("py_isspace")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let got: Vec<u32> = (0..0x110000u32)
        .filter(|&c| char::from_u32(c).is_some_and(py::is_space))
        .collect();
    assert_eq!(got, want, "str.isspace()");

    let zeros: Vec<u32> = cases("py_nd_zeros")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let got_zeros: Vec<u32> = (0..0x110000u32)
        .filter(|&c| char::from_u32(c).is_some_and(|ch| py::decimal_value(ch) == Some(0)))
        .collect();
    assert_eq!(got_zeros, zeros, "Unicode Nd zeros");
    let n_digits = (0..0x110000u32)
        .filter(|&c| char::from_u32(c).is_some_and(py::is_decimal))
        .count();
    assert_eq!(n_digits, 10 * zeros.len());

    let letters: Vec<u32> = cases("py_ascii_letter_ignorecase")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let got_letters: Vec<u32> = (0..0x110000u32)
        .filter(|&c| char::from_u32(c).is_some_and(py::is_ascii_letter_ignorecase))
        .collect();
    assert_eq!(got_letters, letters, "re [A-Z] IGNORECASE");
}

#[test]
fn python_float() {
    each("py_float", |c| {
        let got = py::float(s(&c["s"]));
        let ok = match (&got, c["out"].as_str()) {
            (None, None) => true,
            (Some(x), Some(r)) => match r {
                "nan" => x.is_nan(),
                "inf" => *x == f64::INFINITY,
                "-inf" => *x == f64::NEG_INFINITY,
                r => r.parse::<f64>().is_ok_and(|w| w.to_bits() == x.to_bits()),
            },
            _ => false,
        };
        (!ok).then(|| format!("float({}) = {got:?}, want {}", c["s"], c["out"]))
    });
}

#[test]
fn python_lower_upper_strip_split() {
    each("py_lower", |c| {
        eq_str("lower", &c["s"], &py::lower(s(&c["s"])), &c["out"])
    });
    each("py_upper_len", |c| {
        let got = py::len(&s(&c["s"]).to_uppercase());
        (got as u64 != c["out"].as_u64().unwrap())
            .then(|| format!("len(upper({})) = {got}", c["s"]))
    });
    each("py_strip_split", |c| {
        let x = s(&c["s"]);
        let split: Vec<String> = py::split_whitespace(x).map(str::to_string).collect();
        (py::strip(x) != s(&c["strip"]) || split != strings(&c["split"]))
            .then(|| format!("strip/split({}) = {:?} {split:?}", c["s"], py::strip(x)))
    });
}

#[test]
fn evalai_normalizer_every_stage() {
    each("evalai", |c| {
        let x = s(&c["s"]);
        eq_str(
            "word_tokenize",
            &c["s"],
            &normalize::word_tokenize(x),
            &c["word_tokenize"],
        )
        .or_else(|| {
            eq_str(
                "process_punctuation",
                &c["s"],
                &normalize::process_punctuation(x),
                &c["process_punctuation"],
            )
        })
        .or_else(|| {
            eq_str(
                "process_digit_article",
                &c["s"],
                &normalize::process_digit_article(x),
                &c["process_digit_article"],
            )
        })
        .or_else(|| {
            eq_str(
                "normalize",
                &c["s"],
                &normalize::normalize_answer(x),
                &c["normalize"],
            )
        })
    });
}

fn close(what: &str, got: f64, want: &Value) -> Option<String> {
    let w = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {want}"));
    ((got - w).abs() > 1e-9).then(|| format!("{what}: got {got}, want {w}"))
}

fn flag(what: String, got: bool, want: &Value) -> Option<String> {
    (Some(got) != want.as_bool()).then(|| format!("{what}: got {got}, want {want}"))
}

#[test]
fn soft_accuracy_anls_levenshtein() {
    each("vqa_soft_accuracy", |c| {
        close(
            &format!("soft({}, {})", c["pred"], c["gts"]),
            metrics::vqa_soft_accuracy(s(&c["pred"]), &strings(&c["gts"])),
            &c["out"],
        )
    });
    each("anls", |c| {
        close(
            &format!("anls({}, {})", c["pred"], c["refs"]),
            metrics::anls(s(&c["pred"]), &strings(&c["refs"]), 0.5),
            &c["out"],
        )
    });
    each("levenshtein", |c| {
        let got = metrics::levenshtein(s(&c["a"]), s(&c["b"]));
        (Some(got as u64) != c["out"].as_u64())
            .then(|| format!("lev({}, {}) = {got}", c["a"], c["b"]))
    });
}

#[test]
fn relaxed_and_exact_match_variants() {
    each("chartqa_cambrian", |c| {
        flag(
            format!("chartqa_cambrian({}, {})", c["pred"], c["gt"]),
            metrics::chartqa_cambrian(s(&c["pred"]), s(&c["gt"])),
            &c["out"],
        )
    });
    each("chartqa_lmms", |c| {
        flag(
            format!("chartqa_lmms({}, {})", c["pred"], c["gt"]),
            metrics::chartqa_lmms(s(&c["pred"]), s(&c["gt"])),
            &c["out"],
        )
    });
    each("lower_rstrip_period_match", |c| {
        flag(
            format!("gqa({}, {})", c["pred"], c["gt"]),
            metrics::lower_rstrip_period_match(s(&c["pred"]), s(&c["gt"])),
            &c["out"],
        )
    });
    each("exact_match_hf", |c| {
        let got = metrics::exact_match_hf(
            s(&c["pred"]),
            s(&c["gt"]),
            c["ignore_case"].as_bool().unwrap(),
            c["ignore_punctuation"].as_bool().unwrap(),
        );
        flag(format!("exact_match_hf({c})"), got, &c["out"])
    });
    each("ocrbench_cambrian", |c| {
        flag(
            format!("ocrbench({c})"),
            metrics::ocrbench_match(s(&c["pred"]), &strings(&c["gts"]), s(&c["category"])),
            &c["out"],
        )
    });
}

/// Score one (annotation, prediction) through the benchmark layer, the way the whole-file scorer does.
fn item(b: Benchmark, ann: Value, pred: &str) -> f64 {
    let mut ann = ann;
    ann["question_id"] = Value::from("q");
    let a: Annotation = serde_json::from_value(ann).expect("annotation");
    let anns = Annotations::new(vec![a], "golden").unwrap();
    let preds = Predictions::new(
        vec![Prediction {
            question_id: serde_json::from_value(Value::from("q")).unwrap(),
            prediction: pred.to_string(),
        }],
        "golden",
    )
    .unwrap();
    score_benchmark(b, &anns, &preds, ScoreOptions::default())
        .unwrap()
        .score
        / 100.0
}

#[test]
fn per_benchmark_rules() {
    use serde_json::json;
    let hit = |x: f64| x == 1.0;
    each("mathvista_cambrian", |c| {
        let got = item(
            Benchmark::MathVista,
            json!({"answer": c["gt"], "question_type": c["qtype"]}),
            s(&c["pred"]),
        );
        flag(format!("mathvista({c})"), hit(got), &c["out"])
    });
    each("mmmu_cambrian", |c| {
        let got = item(
            Benchmark::Mmmu,
            json!({"answer": c["gt"], "question_type": c["qtype"]}),
            s(&c["pred"]),
        );
        flag(format!("mmmu({c})"), hit(got), &c["out"])
    });
    each("realworldqa_cambrian", |c| {
        // null: the reference raises IndexError; we score it wrong.
        let want = c["out"].as_bool().unwrap_or(false);
        let got = hit(item(
            Benchmark::RealWorldQa,
            json!({"answer": c["gt"]}),
            s(&c["pred"]),
        ));
        (got != want).then(|| format!("realworldqa({c}): got {got}"))
    });
    each("mcq_letter_cambrian", |c| {
        let got = item(
            Benchmark::MmBench,
            json!({"answer": c["gt"], "group": "g"}),
            s(&c["pred"]),
        );
        flag(format!("mmbench({c})"), hit(got), &c["out"])
    });
    each("seed_cambrian", |c| {
        flag(
            format!("seed({c})"),
            hit(item(
                Benchmark::Seed,
                json!({"answer": c["gt"]}),
                s(&c["pred"]),
            )),
            &c["out"],
        )
    });
    each("ai2d_cambrian", |c| {
        flag(
            format!("ai2d({c})"),
            hit(item(
                Benchmark::Ai2d,
                json!({"answer": c["gt"]}),
                s(&c["pred"]),
            )),
            &c["out"],
        )
    });
    each("sqa_cambrian", |c| {
        let got = item(
            Benchmark::Sqa,
            json!({"answer": c["gt"], "answer_text": c["text_answer"]}),
            s(&c["pred"]),
        );
        flag(format!("sqa({c})"), hit(got), &c["out"])
    });
    each("omni_cambrian", |c| {
        let got = item(
            Benchmark::CvBench3d,
            json!({"answer": c["gt"], "options": c["options"]}),
            s(&c["pred"]),
        );
        flag(format!("omni({c})"), hit(got), &c["out"])
    });
    each("ocrbench_cambrian", |c| {
        let got = item(
            Benchmark::OcrBench,
            json!({"answers": c["gts"], "category": c["category"]}),
            s(&c["pred"]),
        );
        flag(format!("ocrbench item({c})"), hit(got), &c["out"])
    });
    each("chartqa_cambrian", |c| {
        flag(
            format!("chartqa item({c})"),
            hit(item(
                Benchmark::ChartQa,
                json!({"answer": c["gt"]}),
                s(&c["pred"]),
            )),
            &c["out"],
        )
    });
}

#[test]
fn cv_bench_2d_and_mmvp_item_rules() {
    use serde_json::json;
    // CV-Bench 2D needs both sources to score; give each case its twin from the other source.
    each("cvbench_2d_cambrian", |c| {
        let anns = vec![
            serde_json::from_value::<Annotation>(
                json!({"question_id": "q", "answer": c["gt"], "source": "ADE20K"}),
            )
            .unwrap(),
            serde_json::from_value::<Annotation>(
                json!({"question_id": "r", "answer": "(A)", "source": "COCO"}),
            )
            .unwrap(),
        ];
        let preds = vec![
            serde_json::from_value::<Prediction>(
                json!({"question_id": "q", "prediction": c["pred"]}),
            )
            .unwrap(),
            serde_json::from_value::<Prediction>(json!({"question_id": "r", "prediction": "A"}))
                .unwrap(),
        ];
        let r = score_benchmark(
            Benchmark::CvBench2d,
            &Annotations::new(anns, "g").unwrap(),
            &Predictions::new(preds, "g").unwrap(),
            ScoreOptions::default(),
        )
        .unwrap();
        flag(
            format!("cv2d({c})"),
            r.details["accuracy/ADE20K"] == 100.0,
            &c["out"],
        )
    });
    // MMVP scores pairs; per item, read the per-question accuracy detail.
    each("mmvp_item_cambrian", |c| {
        let anns = vec![
            serde_json::from_value::<Annotation>(
                json!({"question_id": "q", "answer": c["gt"], "options": c["options"]}),
            )
            .unwrap(),
            serde_json::from_value::<Annotation>(
                json!({"question_id": "r", "answer": "(a)", "options": ["x", "y"]}),
            )
            .unwrap(),
        ];
        let preds = vec![
            serde_json::from_value::<Prediction>(
                json!({"question_id": "q", "prediction": c["pred"]}),
            )
            .unwrap(),
            serde_json::from_value::<Prediction>(json!({"question_id": "r", "prediction": "a"}))
                .unwrap(),
        ];
        let r = score_benchmark(
            Benchmark::Mmvp,
            &Annotations::new(anns, "g").unwrap(),
            &Predictions::new(preds, "g").unwrap(),
            ScoreOptions::default(),
        )
        .unwrap();
        flag(format!("mmvp({c})"), r.score == 100.0, &c["out"])
    });
}

#[test]
fn extractors() {
    each("mcq", |c| {
        let x = s(&c["s"]);
        eq_str(
            "mcq",
            &c["s"],
            &mcq::extract_mcq(x, McqStyle::Truncate),
            &c["mcq"],
        )
        .or_else(|| {
            eq_str(
                "mcq_period",
                &c["s"],
                &mcq::extract_mcq(x, McqStyle::TruncatePeriod),
                &c["mcq_period"],
            )
        })
        .or_else(|| {
            eq_str(
                "mcq_full",
                &c["s"],
                &mcq::extract_mcq(x, McqStyle::Full),
                &c["mcq_full"],
            )
        })
        .or_else(|| {
            eq_str(
                "single",
                &c["s"],
                &mcq::extract_single_answer(x),
                &c["single"],
            )
        })
        .or_else(|| {
            eq_str(
                "sqa_extract",
                &c["s"],
                &mcq::extract_single_answer(x),
                &c["sqa_extract"],
            )
        })
        .or_else(|| {
            let got = mcq::extract_first_word(x);
            (got.as_deref() != c["first_word"].as_str())
                .then(|| format!("first_word({}) = {got:?}, want {}", c["s"], c["first_word"]))
        })
        .or_else(|| {
            eq_str(
                "cv_bench_letter",
                &c["s"],
                &mcq::cv_bench_letter(x),
                &c["cv_bench_letter"],
            )
        })
        .or_else(|| {
            eq_str(
                "mme_otter",
                &c["s"],
                mcq::mme_otter_parse(x).as_str(),
                &c["mme_otter"],
            )
        })
    });
}

#[test]
fn whole_benchmarks_match_cambrian_programs() {
    let all = cases("benchmarks");
    assert_eq!(all.len(), 16, "one case per benchmark");
    let mut seen = std::collections::HashSet::new();
    for c in all {
        let b = Benchmark::from_name(s(&c["benchmark"])).unwrap();
        seen.insert(b);
        let anns: Vec<Annotation> = serde_json::from_value(c["annotations"].clone()).unwrap();
        let preds: Vec<Prediction> = serde_json::from_value(c["predictions"].clone()).unwrap();
        let r = score_benchmark(
            b,
            &Annotations::new(anns, "golden").unwrap(),
            &Predictions::new(preds, "golden").unwrap(),
            ScoreOptions {
                strict: true,
                protocol: Protocol::Cambrian,
            },
        )
        .unwrap_or_else(|e| panic!("{b}: {e}"));
        let want = c["score"].as_f64().unwrap();
        assert!(
            (r.score - want).abs() < 1e-9,
            "{b}: score {} want {want}",
            r.score
        );
        if let Some(details) = c.get("details").and_then(Value::as_object) {
            for (cat, v) in details {
                if cat == "commonsense_reasoning" {
                    assert!(
                        !r.details.contains_key(&format!("score/{cat}")),
                        "cognition must not enter MME-P"
                    );
                    continue;
                }
                let got = r.details[&format!("score/{cat}")];
                assert!(
                    (got - v.as_f64().unwrap()).abs() < 1e-9,
                    "{b} {cat}: {got} want {v}"
                );
            }
        }
    }
    assert_eq!(seen.len(), 16, "all 16 benchmarks covered");
}

#[test]
fn whole_benchmarks_match_lmms_eval_tasks() {
    let all = cases("benchmarks_lmms");
    for c in all {
        let b = Benchmark::from_name(s(&c["benchmark"])).unwrap();
        assert!(Protocol::LmmsEval.supports(b));
        let anns: Vec<Annotation> = serde_json::from_value(c["annotations"].clone()).unwrap();
        let preds: Vec<Prediction> = serde_json::from_value(c["predictions"].clone()).unwrap();
        let (anns, preds) = (
            Annotations::new(anns, "golden").unwrap(),
            Predictions::new(preds, "golden").unwrap(),
        );
        let opts = ScoreOptions {
            strict: true,
            protocol: Protocol::LmmsEval,
        };
        let r = score_benchmark(b, &anns, &preds, opts).unwrap_or_else(|e| panic!("{b}: {e}"));
        let want = c["score"].as_f64().unwrap();
        assert!(
            (r.score - want).abs() < 1e-9,
            "{b} (lmms-eval): score {} want {want}",
            r.score
        );
        // The two protocols must actually differ somewhere on these tricky answers.
        let cambrian = score_benchmark(
            b,
            &anns,
            &preds,
            ScoreOptions {
                strict: true,
                protocol: Protocol::Cambrian,
            },
        );
        if let Ok(cr) = cambrian {
            assert_ne!(
                cr.score, r.score,
                "{b}: protocols agree on every tricky answer?"
            );
        }
    }
    // Benchmarks without a ported lmms-eval rule are refused, not silently scored the Cambrian way.
    let anns = Annotations::new(
        serde_json::from_value(serde_json::json!([{"question_id": 1, "answer": "A"}])).unwrap(),
        "g",
    )
    .unwrap();
    let preds = Predictions::new(
        serde_json::from_value(serde_json::json!([{"question_id": 1, "prediction": "A"}])).unwrap(),
        "g",
    )
    .unwrap();
    let e = score_benchmark(
        Benchmark::Seed,
        &anns,
        &preds,
        ScoreOptions {
            strict: false,
            protocol: Protocol::LmmsEval,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("not implemented"), "{e}");
}
