//! End to end: `webssl probe vqa answer` on a tiny random MLLM run directory (a Llama-flavour LM in
//! HF layout as the base, stage-2 weights in `lm.safetensors`, a connector) with the image tokens of
//! a `webssl embed`-format file: the answers are the library's greedy answers with the stage-2
//! weights, a rerun skips what is answered, `eval vqa-score` scores the file, and bad input is a
//! clear error.

mod support;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use support::{err, ok, p};
use webssl_eval::vqa::mllm::connector::{Connector, ImageTokens};
use webssl_eval::vqa::mllm::conversation::{LLAMA_V3_SYSTEM, llama_v3_prompt, tokenize_with_image};
use webssl_eval::vqa::mllm::model::Mllm;
use webssl_eval::vqa::mllm::run::{ProbeConfig, write_run};
use webssl_models::checkpoint::export::{write_safetensors, write_safetensors_with_metadata};
use webssl_models::checkpoint::named_parameters;
use webssl_models::lm::{CausalLm, LmConfig, load_lm};

const D_VIS: usize = 6;

/// A tiny Llama-flavour LM (GQA, 2 layers, width 16), as its HF `config.json` says it.
fn lm_config(vocab: usize) -> LmConfig {
    LmConfig::from_hf_json(&serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": false,
    }))
    .unwrap()
}

/// An HF model directory for `lm`: config.json, model.safetensors (PyTorch layout: linear weights
/// `[out, in]`), and the fixture tokenizer.
fn write_hf_dir(dir: &Path, cfg: &LmConfig, lm: &CausalLm) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
    std::fs::copy(
        support::fixtures("mllm/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let tensors: Vec<_> = named_parameters(lm)
        .into_iter()
        .map(|(name, shape, v)| {
            if shape.len() != 2 || name == "model.embed_tokens.weight" {
                return (name, shape, v);
            }
            let (i, o) = (shape[0], shape[1]);
            let mut t = vec![0f32; v.len()];
            for a in 0..i {
                for b in 0..o {
                    t[b * i + a] = v[a * o + b];
                }
            }
            (name, vec![o, i], t)
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
}

#[test]
fn answer_resumes_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::default();
    let (lm_dir, run) = (tmp.path().join("lm"), tmp.path().join("run"));
    // The base LM (seed 3) and the stage-2 LM (seed 4) that the run's lm.safetensors replaces it by.
    let vocab = tokenizers_vocab();
    let cfg = lm_config(vocab);
    write_hf_dir(&lm_dir, &cfg, &CausalLm::new(&cfg, 3, &device).unwrap());
    let stage2 = CausalLm::new(&cfg, 4, &device).unwrap();
    let connector = Connector::new(D_VIS, 16, 7, &device);
    let sel = ImageTokens {
        count: 4,
        cls: false,
    };
    let config = ProbeConfig {
        lm: "../lm".into(),
        d_vis: D_VIS,
        image_tokens: sel,
    };
    write_run(&run, &config, &connector, Some(&stage2)).unwrap();

    // 3 images of 16 patch tokens on an 8x8 grid of patch 2; question 3 names a missing image.
    let (n, pt) = (3usize, 16usize);
    let embed = tmp.path().join("features.safetensors");
    write_embed(&embed, n, pt);
    let line = |i: usize, img: &str| {
        format!(
            "{{\"question_id\": {i}, \"image\": \"{img}\", \"question\": \"What is in the image?\"}}\n"
        )
    };
    let (q2, q3, bad) = (
        tmp.path().join("q2.jsonl"),
        tmp.path().join("q3.jsonl"),
        tmp.path().join("bad.jsonl"),
    );
    std::fs::write(&q2, line(0, "img0.jpg") + &line(1, "img1.jpg")).unwrap();
    std::fs::write(
        &q3,
        line(0, "img0.jpg") + &line(1, "img1.jpg") + &line(2, "img2.jpg"),
    )
    .unwrap();
    std::fs::write(&bad, line(9, "missing.jpg")).unwrap();
    let out = tmp.path().join("preds/gqa.jsonl");
    let answer = |questions: &Path, output: &Path| {
        support::run(&[
            "probe",
            "vqa",
            "answer",
            "--run",
            p(&run),
            "--benchmark",
            "gqa",
            "--questions",
            p(questions),
            "--image-tokens",
            p(&embed),
            "--output",
            p(output),
        ])
    };
    let first = ok(&answer(&q2, &out));
    assert!(first.contains("answered 2, skipped 0"), "{first}");
    let second = ok(&answer(&q3, &out));
    assert!(second.contains("answered 1, skipped 2"), "{second}");

    // The answers are the library's: stage-2 LM + connector, Cambrian's GQA prompt in llama_v3.
    let tok = load_lm(&lm_dir, &device).unwrap().tokenizer;
    let m = Mllm {
        connector,
        lm: stage2,
    };
    let table =
        webssl_eval::vqa::mllm::connector::ImageTokenTable::from_embed(&embed, sel).unwrap();
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    let preds = webssl_eval::vqa::read_predictions(&out).unwrap();
    assert_eq!(preds.len(), 3);
    for i in 0..n {
        let user =
            "<image>\nWhat is in the image?\nAnswer the question using a single word or phrase.";
        let encode =
            |s: &str| -> webssl_eval::error::Result<Vec<u32>> { Ok(tok.encode(s, false)?) };
        let prompt =
            tokenize_with_image(&llama_v3_prompt(LLAMA_V3_SYSTEM, &[user]), &encode).unwrap();
        let img = Tensor::<2>::from_data(
            TensorData::new(table.get(&format!("img{i}")).unwrap().to_vec(), [4, D_VIS]),
            &device,
        );
        let ids = m.answer(&prompt, Some(img), 128, &[eot]).unwrap();
        let want = tok.decode(&ids, true).unwrap();
        let id = webssl_eval::vqa::io::QuestionId(i.to_string());
        assert_eq!(preds.get(&id), Some(want.trim()), "question {i}");
    }

    // vqa-score reads the file: question 0's ground truth is what the model said.
    let said = preds
        .get(&webssl_eval::vqa::io::QuestionId("0".into()))
        .unwrap()
        .to_string();
    let ann: Vec<_> = (0..n)
        .map(|i| {
            let a = if i == 0 {
                said.trim_end_matches('.').to_lowercase()
            } else {
                "not this".into()
            };
            serde_json::json!({"question_id": i, "answer": a})
        })
        .collect();
    let ann_path = tmp.path().join("gqa.annotations.json");
    std::fs::write(&ann_path, serde_json::to_string(&ann).unwrap()).unwrap();
    let score = ok(&support::run(&[
        "eval",
        "vqa-score",
        "--benchmark",
        "gqa",
        "--predictions",
        p(&out),
        "--annotations",
        p(&ann_path),
    ]));
    assert!(score.contains("33.3"), "{score}");

    // Bad input names what is wrong.
    let e = err(&answer(&bad, &tmp.path().join("bad-out.jsonl")));
    assert!(e.contains("question 9") && e.contains("missing.jpg"), "{e}");
    let e = err(&support::run(&[
        "probe",
        "vqa",
        "answer",
        "--run",
        p(tmp.path()),
        "--benchmark",
        "gqa",
        "--questions",
        p(&q2),
        "--image-tokens",
        p(&embed),
        "--output",
        p(&out),
    ]));
    assert!(e.contains("mllm.toml"), "{e}");
}

/// A `webssl embed` file of `n` images `img{i}` with `pt` patch tokens of width [`D_VIS`] each on an
/// 8x8 image (patch 2).
fn write_embed(path: &Path, n: usize, pt: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("img{i}")).collect();
    let meta = serde_json::json!({"keys": keys, "image_size": [8, 8]});
    write_safetensors_with_metadata(
        path,
        &[(
            "patch_tokens".into(),
            vec![n, pt, D_VIS],
            (0..n * pt * D_VIS)
                .map(|x| (x as f32 * 0.61).sin())
                .collect(),
        )],
        &[("webssl", meta.to_string())],
    )
    .unwrap();
}

/// Stage 1 (6 steps: 5 conversations, batch 2, 2 epochs) killed after its 2nd checkpoint and resumed
/// ends byte-identical to the uninterrupted run (metrics, connector); stage 2 from it trains the LM
/// too, and its run directory answers.
#[test]
fn two_stages_resume_exactly_after_kill_and_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let device = Device::default();
    let cfg = lm_config(tokenizers_vocab());
    let lm_dir = t.join("lm");
    write_hf_dir(&lm_dir, &cfg, &CausalLm::new(&cfg, 3, &device).unwrap());
    let embed = t.join("features.safetensors");
    write_embed(&embed, 3, 16);
    let words = ["red", "a cat", "two", "yes", "the sky"];
    let data: Vec<_> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut r = serde_json::json!({"id": i, "conversations": [
                {"from": "human", "value": format!("<image>\nWhat is it {i}?")},
                {"from": "gpt", "value": w}]});
            if i < 4 {
                r["image"] = format!("img{}.jpg", i % 3).into();
            } else {
                r["conversations"][0]["value"] = "Say something.".into();
            }
            r
        })
        .collect();
    let data_path = t.join("data.json");
    std::fs::write(&data_path, serde_json::to_string(&data).unwrap()).unwrap();
    let config = t.join("probe.toml");
    std::fs::write(
        &config,
        format!(
            "lm = {:?}\ndata = {:?}\nimage_tokens_file = {:?}\nlr = 0.05\nbatch_size = 2\nepochs = 2\n\
             max_length = 400\nwarmup_ratio = 0.2\nweight_decay = 0.01\n\
             [image_tokens]\ncount = 4\ncls = false\n",
            p(&lm_dir),
            p(&data_path),
            p(&embed)
        ),
    )
    .unwrap();
    let train = |run: &Path, stage: &str, extra: &[&str]| {
        let mut c = support::webssl();
        c.args([
            "probe",
            "vqa",
            "train",
            "--config",
            p(&config),
            "--stage",
            stage,
            "--run",
            p(run),
        ]);
        c.args(extra);
        c
    };
    let (a, b) = (t.join("s1a"), t.join("s1b"));
    let out = ok(&train(&a, "1", &[]).output().unwrap());
    assert!(out.contains("6 steps (0 resumed) on 5 samples"), "{out}");
    // Killed as soon as a checkpoint is complete (step 1 or later).
    let ckpt = b.join("checkpoints");
    let saved = || {
        std::fs::read_dir(&ckpt).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("step-")
                    && e.path().join("COMPLETE").is_file()
            })
        })
    };
    support::kill_when(
        train(&b, "1", &[]),
        saved,
        std::time::Duration::from_secs(120),
    );
    let out = ok(&train(&b, "1", &[]).output().unwrap());
    assert!(!out.contains("(0 resumed)"), "{out}");
    assert_eq!(support::metrics(&a), support::metrics(&b));
    assert_eq!(support::metrics(&a).lines().count(), 6);
    let read = |d: &Path| std::fs::read(d.join("connector.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b));
    // Warm-up (2 steps) then cosine decay.
    let lr: Vec<f64> = support::metrics(&a)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(lr[0] < lr[1] && lr[5] < lr[2] && lr[5] > 0.0, "{lr:?}");

    // Stage 2 from stage 1's connector: the LM trains too.
    let s2 = t.join("s2");
    let init = format!("init={}", p(&a));
    ok(&train(&s2, "2", &["--set", &init, "--set", "epochs=1"])
        .output()
        .unwrap());
    assert!(s2.join("lm.safetensors").is_file());
    let e = err(&train(&t.join("s2bad"), "2", &[]).output().unwrap());
    assert!(e.contains("init"), "{e}");

    let q = t.join("q.jsonl");
    std::fs::write(
        &q,
        "{\"question_id\": 1, \"image\": \"img1.png\", \"question\": \"What?\"}\n",
    )
    .unwrap();
    let answered = ok(&support::run(&[
        "probe",
        "vqa",
        "answer",
        "--run",
        p(&s2),
        "--benchmark",
        "gqa",
        "--questions",
        p(&q),
        "--image-tokens",
        p(&embed),
        "--output",
        p(&t.join("p.jsonl")),
    ]));
    assert!(answered.contains("answered 1"), "{answered}");
}

/// One past the largest token id of the fixture tokenizer (vocabulary and added tokens).
fn tokenizers_vocab() -> usize {
    let t = support::read_json(&support::fixtures("mllm/tokenizer.json"));
    let ids = t["model"]["vocab"].as_object().unwrap().values();
    let added = t["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["id"]);
    ids.chain(added)
        .map(|v| v.as_u64().unwrap() as usize)
        .max()
        .unwrap()
        + 1
}
