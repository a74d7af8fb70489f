//! End to end: `webssl lm generate` on the random-weight fixtures of fixtures/lm/make_lm.py gives the
//! greedy ids of transformers' `generate`, from an HF directory and a GGUF file, and fails clearly on
//! bad arguments.

mod support;

use support::{err, fixtures, ok, p, read_json, run};

#[test]
fn greedy_ids_equal_transformers_generate() {
    let reference = read_json(&fixtures("lm").join("reference.json"));
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    for model in ["qwen2", "llama.Q4_1.gguf"] {
        let path = fixtures("lm").join(model);
        // Row 1 of the reference batch is "the sky" (left-padded there, alone here).
        let out = ok(&run(&[
            "lm",
            "generate",
            "--model",
            p(&path),
            "--prompt",
            "the sky",
            "--max-new-tokens",
            "8",
            "--json",
        ]));
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let mask = ids(&reference["attention_mask"][1]);
        let prompt: Vec<u64> = ids(&reference["input_ids"][1])
            .into_iter()
            .zip(mask)
            .filter(|&(_, m)| m == 1)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(ids(&got["prompt_ids"]), prompt, "{model}");
        assert_eq!(
            ids(&got["generated_ids"]),
            ids(&reference["greedy"][model][1]),
            "{model}"
        );
        assert!(got["text"].is_string());
    }
}

#[test]
fn bad_arguments_fail_clearly() {
    let llama = fixtures("lm").join("llama");
    let e = err(&run(&[
        "lm",
        "generate",
        "--model",
        p(&llama),
        "--prompt",
        "hi",
        "--chat",
        "--template",
        "jinja",
    ]));
    assert!(e.contains("unknown `jinja`"), "{e}");
    let e = err(&run(&[
        "lm",
        "generate",
        "--model",
        "no/such/dir",
        "--prompt",
        "hi",
    ]));
    assert!(e.contains("no/such/dir"), "{e}");
    let e = err(&run(&[
        "lm",
        "generate",
        "--model",
        p(&llama),
        "--prompt",
        "",
    ]));
    assert!(e.contains("empty"), "{e}");
}
