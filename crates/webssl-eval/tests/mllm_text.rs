//! The MLLM probe. Golden parity of its inputs with Cambrian-1 (`fixtures/mllm/make_mllm.py`
//! transcribes its prompt, template and label code and runs torch for the connector; see its
//! header): benchmark prompts and the llama_v3 answer prompt byte for byte, token ids and labels
//! exactly, the spliced batch exactly, resampled tokens within 1e-6·max|y|, the connector and the
//! loss within 1e-5. Then a tiny random MLLM: masks, gradients, answers, and answer → resume →
//! `vqa-score` end to end.

use std::sync::OnceLock;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use tokenizers::Tokenizer;
use webssl_eval::vqa::mllm::answer::{AnswerLog, answer_all, read_questions};
use webssl_eval::vqa::mllm::connector::{
    Connector, ImageTokenTable, ImageTokens, image_key, resample_bilinear,
};
use webssl_eval::vqa::mllm::conversation::{
    Batch, IGNORE_INDEX, IMAGE_TOKEN_INDEX, LLAMA_V3_SYSTEM, Preprocessed, Record, llama_v3_prompt,
    preprocess_llama_v3, tokenize_with_image,
};
use webssl_eval::vqa::mllm::model::{Mllm, answer_loss};
use webssl_eval::vqa::mllm::prompt::{Question, user_message};
use webssl_eval::vqa::{Benchmark, ScoreOptions, score_files};
use webssl_models::lm::{CausalLm, LmConfig, LmFlavour};
use webssl_models::params::to_host;

fn fixture(name: &str) -> String {
    format!("{}/../../fixtures/mllm/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name))
        .unwrap_or_else(|e| panic!("fixtures/mllm/{name} (run make_mllm.py): {e}"));
    serde_json::from_str(&text).expect("fixture parses")
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| json("golden.json"))
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(fixture("tokenizer.json")).expect("tokenizer.json"))
}

fn encode(s: &str) -> webssl_eval::error::Result<Vec<u32>> {
    Ok(tokenizer()
        .encode(s, false)
        .expect("encode")
        .get_ids()
        .to_vec())
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn benchmark_prompts_match_cambrian() {
    let g = golden();
    assert_eq!(g["system"].as_str().unwrap(), LLAMA_V3_SYSTEM);
    let cases = g["prompts"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for c in cases {
        let b = Benchmark::from_name(c["benchmark"].as_str().unwrap()).unwrap();
        seen.insert(b);
        let q: Question = serde_json::from_value(c["question"].clone()).unwrap();
        let user = user_message(b, &q).unwrap();
        assert_eq!(user, c["user"].as_str().unwrap(), "{b}: {q:?}");
        assert_eq!(
            llama_v3_prompt(LLAMA_V3_SYSTEM, &[&user]),
            c["prompt"].as_str().unwrap(),
            "{b}"
        );
    }
    assert_eq!(seen.len(), 16, "every benchmark has a golden prompt");
}

#[test]
fn labels_match_cambrian_preprocess_llama_3() {
    let cases = golden()["conversations"].as_array().unwrap();
    let mut masked = 0;
    for c in cases {
        let rec: Record = serde_json::from_value(c["record"].clone()).unwrap();
        let max = c["max_length"].as_u64().unwrap() as usize;
        let got = preprocess_llama_v3(&rec, LLAMA_V3_SYSTEM, max, &encode).unwrap();
        assert_eq!(got.input_ids, ints(&c["input_ids"]), "{} ids", rec.id);
        assert_eq!(got.labels, ints(&c["labels"]), "{} labels", rec.id);
        masked += usize::from(got.all_ignored());
    }
    // c5 (image in a later turn) and the truncated text-only sample are Cambrian's mismatches.
    assert!(
        masked >= 2,
        "the fixture exercises the all-masked path ({masked})"
    );
    assert!(
        masked < cases.len() / 2,
        "most samples carry loss ({masked})"
    );
}

#[test]
fn batches_match_llava_splice_and_padding() {
    let g = golden();
    let samples: Vec<_> = g["conversations"].as_array().unwrap()[..4]
        .iter()
        .map(|c| {
            let rec: Record = serde_json::from_value(c["record"].clone()).unwrap();
            preprocess_llama_v3(&rec, LLAMA_V3_SYSTEM, 2048, &encode).unwrap()
        })
        .collect();
    for b in g["batches"].as_array().unwrap() {
        let n = b["image_tokens"].as_u64().unwrap() as usize;
        let max = b["max_length"].as_u64().unwrap() as usize;
        let pad = b["pad_id"].as_u64().unwrap() as u32;
        let got = Batch::collate(&samples, n, max, pad).unwrap();
        let flat =
            |k: &str| -> Vec<i64> { b[k].as_array().unwrap().iter().flat_map(ints).collect() };
        assert_eq!(
            got.input_ids
                .iter()
                .map(|&t| i64::from(t))
                .collect::<Vec<_>>(),
            flat("input_ids")
        );
        assert_eq!(got.labels, flat("labels"));
        assert_eq!(
            got.attention_mask
                .iter()
                .map(|&t| i64::from(t))
                .collect::<Vec<_>>(),
            flat("attention_mask")
        );
        let slots: Vec<Option<(usize, usize)>> = b["image_slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array().map(|a| {
                    (
                        a[0].as_u64().unwrap() as usize,
                        a[1].as_u64().unwrap() as usize,
                    )
                })
            })
            .collect();
        assert_eq!(got.image_slots, slots, "image_tokens {n}, max_length {max}");
    }
}

#[test]
fn resampling_and_connector_match_torch() {
    let f = json("connector.json");
    for c in f["resample"].as_array().unwrap() {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (h, w, d, t) = (u("h"), u("w"), u("d"), u("to"));
        let y = resample_bilinear(&floats(&c["x"]), (h, w), d, (t, t));
        let want = floats(&c["y"]);
        let err = max_abs_diff(&y, &want);
        // The same weights and indices as torch (checked in f32 by the formula); torch's
        // vectorised kernel sums in another order, which moves the last bits (1.4e-6 on |y| ≤ 3).
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 1e-6 * scale,
            "{h}x{w}→{t}: max |Δ| {err} (|y| ≤ {scale})"
        );
        // Through ImageTokens: resampled when the count differs, CLS first when asked.
        let sel = ImageTokens {
            count: t * t,
            cls: true,
        };
        let cls = vec![7.0; d];
        let got = sel.select(&floats(&c["x"]), &cls, (h, w), d).unwrap();
        assert_eq!(got.len(), sel.len((h, w)) * d);
        assert_eq!(&got[..d], &cls[..]);
        assert_eq!(&got[d..], &y[..]);
    }

    let c = &f["connector"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let (dv, dl, n) = (u("d_vis"), u("d_lm"), u("n"));
    let device = Device::default();
    let mut m = Connector::new(dv, dl, 0, &device);
    // PyTorch stores Linear weights [out, in]; burn [in, out].
    let linear = |k: &str, i: usize, o: usize| -> (Tensor<2>, Tensor<1>) {
        let w = Tensor::<2>::from_data(
            TensorData::new(floats(&c[format!("{k}.weight")]), [o, i]),
            &device,
        );
        let b = Tensor::<1>::from_data(
            TensorData::new(floats(&c[format!("{k}.bias")]), [o]),
            &device,
        );
        (w.transpose(), b)
    };
    let (w1, b1) = linear("fc1", dv, dl);
    let (w2, b2) = linear("fc2", dl, dl);
    m.fc1.weight = Param::from_tensor(w1);
    m.fc1.bias = Some(Param::from_tensor(b1));
    m.fc2.weight = Param::from_tensor(w2);
    m.fc2.bias = Some(Param::from_tensor(b2));
    let x = Tensor::<2>::from_data(TensorData::new(floats(&c["x"]), [n, dv]), &device);
    let y: Vec<f32> = m
        .forward(x)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let err = max_abs_diff(&y, &floats(&c["y"]));
    assert!(err <= 1e-5, "connector max |Δ| {err}");
}

#[test]
fn answer_loss_matches_torch_cross_entropy() {
    let f = json("connector.json");
    let c = &f["loss"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let (b, t, v) = (u("b"), u("t"), u("v"));
    let device = Device::default();
    let logits = Tensor::<3>::from_data(TensorData::new(floats(&c["logits"]), [b, t, v]), &device);
    let loss = answer_loss(logits, &ints(&c["labels"])).unwrap();
    let got = loss
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()[0];
    let want = c["loss"].as_f64().unwrap() as f32;
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{got} vs torch {want}"
    );
}

/// Cached image tokens → question prompt → `llama_v3` → tokens with the image placeholder → a tiny
/// random MLLM's greedy answer → the resumable predictions file → `vqa-score`'s GQA rule.
#[test]
fn answer_resume_and_score_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::default();
    // An embed file of 3 images: 16 patch tokens of width 6 on an 8x8 image (patch 2).
    let (n, p, d) = (3usize, 16usize, 6usize);
    let embed = dir.path().join("features.safetensors");
    let meta = serde_json::json!({"keys": ["img0", "img1", "img2"], "image_size": [8, 8]});
    webssl_models::checkpoint::export::write_safetensors_with_metadata(
        &embed,
        &[(
            "patch_tokens".into(),
            vec![n, p, d],
            (0..n * p * d).map(|x| (x as f32 * 0.61).sin()).collect(),
        )],
        &[("webssl", meta.to_string())],
    )
    .unwrap();
    let table = ImageTokenTable::from_embed(
        &embed,
        ImageTokens {
            count: 4,
            cls: false,
        },
    )
    .unwrap();
    let questions = dir.path().join("gqa.questions.jsonl");
    std::fs::write(
        &questions,
        (0..n)
            .map(|i| format!("{{\"question_id\": {i}, \"image\": \"img{i}.jpg\", \"question\": \"What is in the image?\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let qs = read_questions(&questions).unwrap();

    let m = tiny_mllm(tokenizer().get_vocab_size(true), d, &device);
    let eot = tokenizer().token_to_id("<|eot_id|>").unwrap();
    let mut asked = 0;
    let mut ask = |q: &Question, user: &str| {
        asked += 1;
        let prompt = tokenize_with_image(&llama_v3_prompt(LLAMA_V3_SYSTEM, &[user]), &encode)?;
        let key = image_key(q.image.as_deref().unwrap());
        let tokens = table.get(&key).unwrap().to_vec();
        let img = Tensor::<2>::from_data(TensorData::new(tokens, [table.len, table.dim]), &device);
        let ids = m.answer(&prompt, Some(img), 6, &[eot])?;
        Ok(tokenizer().decode(&ids, true).unwrap())
    };

    // Two questions, a "kill", then the rest: the first two are not asked again.
    let out = dir.path().join("gqa.jsonl");
    let mut log = AnswerLog::open(&out).unwrap();
    answer_all(Benchmark::Gqa, &qs[..2], &mut log, &mut ask).unwrap();
    drop(log);
    let mut log = AnswerLog::open(&out).unwrap();
    let s = answer_all(Benchmark::Gqa, &qs, &mut log, &mut ask).unwrap();
    assert_eq!((s.answered, s.skipped, asked), (1, 2, 3));

    // Score: question 0's ground truth is what the model said, the others something it did not.
    let preds = webssl_eval::vqa::read_predictions(&out).unwrap();
    let said = |i: usize| preds.get(&qs[i].question_id).unwrap().to_string();
    let ann: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let answer = if i == 0 {
                said(0).trim_end_matches('.').to_lowercase()
            } else {
                format!("not {}", said(i))
            };
            serde_json::json!({"question_id": i, "answer": answer})
        })
        .collect();
    let ann_path = dir.path().join("gqa.annotations.json");
    std::fs::write(&ann_path, serde_json::to_string(&ann).unwrap()).unwrap();
    let report = score_files(Benchmark::Gqa, &out, &ann_path, ScoreOptions::default()).unwrap();
    assert_eq!(report.n_scored, 3);
    assert!(
        (report.score - 100.0 / 3.0).abs() < 1e-9,
        "{} ({:?})",
        report.score,
        said(0)
    );
}

/// A tiny random MLLM: a Llama-flavour LM (GQA, 2 layers, width 16) of `vocab` tokens behind a
/// connector from `d_vis`.
fn tiny_mllm(vocab: usize, d_vis: usize, device: &Device) -> Mllm {
    let cfg = LmConfig {
        flavour: LmFlavour::Llama,
        vocab_size: vocab,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: None,
        eos_token_id: vec![],
    };
    Mllm {
        connector: Connector::new(d_vis, 16, 7, device),
        lm: CausalLm::new(&cfg, 3, device).unwrap(),
    }
}

fn sample(ids: &[i64], answer_from: usize) -> Preprocessed {
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i >= answer_from && t >= 0 {
                t
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Preprocessed {
        input_ids: ids.to_vec(),
        labels,
    }
}

fn images(n: usize, l: usize, seed: f32, device: &Device) -> Tensor<3> {
    let v: Vec<f32> = (0..n * l * 6).map(|i| (i as f32 * seed).sin()).collect();
    Tensor::from_data(TensorData::new(v, [n, l, 6]), device)
}

fn scalar(t: Tensor<1>) -> f32 {
    to_host(t)[0]
}

#[test]
fn padded_rows_do_not_change_real_rows_and_gradients_reach_the_connector() {
    let device = Device::flex().autodiff();
    let m = tiny_mllm(50, 6, &device);
    let a = sample(&[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9, 10, 2], 5);
    let b = sample(&[1, 11, 12, 13, 2], 3);
    let n_img = 4;
    let both = Batch::collate(&[a.clone(), b.clone()], n_img, 64, 0).unwrap();
    let imgs = images(1, n_img, 0.37, &device);
    let loss_ab = m.loss(&both, Some(imgs.clone())).unwrap();
    let loss_a = m
        .loss(
            &Batch::collate(&[a], n_img, 64, 0).unwrap(),
            Some(imgs.clone()),
        )
        .unwrap();
    let loss_b = m
        .loss(&Batch::collate(&[b], n_img, 64, 0).unwrap(), None)
        .unwrap();
    // Labelled positions: a has 4 (8, 9, 10, 2 after the 4 image slots), b has 2 (13, 2).
    let (ab, la, lb) = (scalar(loss_ab.clone()), scalar(loss_a), scalar(loss_b));
    assert!(
        (ab * 6.0 - (la * 4.0 + lb * 2.0)).abs() < 1e-4,
        "{ab} vs {la}, {lb}"
    );
    // A random-init LM (weights N(0, 0.02²)) is near uniform over the 50 tokens.
    assert!((ab - 50f32.ln()).abs() < 0.1, "{ab}");
    let grads = loss_ab.backward();
    let g = to_host(m.connector.fc1.weight.val().grad(&grads).unwrap());
    assert!(
        g.iter().any(|&x| x != 0.0),
        "the image tokens reach the loss"
    );
    // Other image tokens, another loss.
    let other = m
        .loss(&both, Some(images(1, n_img, 1.91, &device)))
        .unwrap();
    assert_ne!(scalar(other), ab);
    assert!(m.loss(&both, None).is_err());
}

#[test]
fn answers_are_greedy_and_bounded() {
    let device = Device::flex();
    let m = tiny_mllm(50, 6, &device);
    let prompt = [1, 5, IMAGE_TOKEN_INDEX, 6, 7];
    let img = images(1, 3, 0.5, &device).reshape([3, 6]);
    let a = m.answer(&prompt, Some(img.clone()), 6, &[2]).unwrap();
    assert!(!a.is_empty() && a.len() <= 6);
    assert_eq!(a, m.answer(&prompt, Some(img), 6, &[2]).unwrap());
    let text_only = m.answer(&[1, 5, 6, 7], None, 4, &[]).unwrap();
    assert_eq!(text_only.len(), 4);
    assert!(m.answer(&prompt, None, 4, &[]).is_err());
}
