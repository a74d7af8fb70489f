//! CLIP against the reference values of `fixtures/clip/make_clip.py` (PyTorch, open_clip / OpenAI CLIP
//! semantics): symmetric InfoNCE and its gradients, the logit-scale clamp, the causal text tower with
//! EOT pooling; plus the tokenizer round trip and gradient flow to every parameter of both towers.

mod support;

use burn::tensor::{Device, Int, Tensor, TensorData};
use support::tensor;
use webssl_models::checkpoint;
use webssl_models::params::to_host;
use webssl_models::text::{TextActivation, TextConfig, TextTransformer};
use webssl_models::{Precision, autocast};
use webssl_train::clip::{ClipModel, ClipTokenizer};
use webssl_train::clip_grad::ParamGrads;
use webssl_train::objectives::clip::{
    clamp_logit_scale, clip_loss, logit_scale_init, logit_scale_max,
};

fn json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(support::fixture_path("clip/clip.json")).unwrap())
        .unwrap()
}

/// max |a − b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn infonce_loss_and_gradients_match_open_clip() {
    let j = json();
    let s = support::fixture("clip/clip.safetensors");
    let device = Device::flex().autodiff();
    for (case, c) in j["loss"].as_array().unwrap().iter().enumerate() {
        let t0 = c["logit_scale"].as_f64().unwrap();
        let img = tensor::<2>(&s, "loss.image", &device).require_grad();
        let txt = tensor::<2>(&s, "loss.text", &device).require_grad();
        let t =
            Tensor::<1>::from_data(TensorData::new(vec![t0 as f32], [1]), &device).require_grad();
        let loss = clip_loss(img.clone(), txt.clone(), t.clone());
        let v = to_host(loss.clone())[0] as f64;
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (v - want).abs() <= 1e-5 * want.abs().max(1.0),
            "case {case}: loss {v} vs {want}"
        );
        let grads = loss.backward();
        let gi = to_host(img.grad(&grads).unwrap());
        let gt = to_host(txt.grad(&grads).unwrap());
        let gs = to_host(t.grad(&grads).unwrap())[0] as f64;
        let (_, ri) = s.read_f32(&format!("loss.{case}.grad_image")).unwrap();
        let (_, rt) = s.read_f32(&format!("loss.{case}.grad_text")).unwrap();
        assert!(
            rel_err(&gi, &ri) < 1e-4,
            "case {case}: image grad {}",
            rel_err(&gi, &ri)
        );
        assert!(
            rel_err(&gt, &rt) < 1e-4,
            "case {case}: text grad {}",
            rel_err(&gt, &rt)
        );
        let want_gs = c["grad_logit_scale"].as_f64().unwrap();
        assert!(
            (gs - want_gs).abs() < 1e-5 * want_gs.abs().max(1.0),
            "case {case}: d/dt {gs} vs {want_gs}"
        );
    }
}

#[test]
fn logit_scale_clamp_matches_torch_and_keeps_the_parameter_trainable() {
    let j = json();
    let before: Vec<f32> = j["clamp"]["before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let after: Vec<f32> = j["clamp"]["after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let n = before.len();
    let got = to_host(clamp_logit_scale(Tensor::<1>::from_data(
        TensorData::new(before, [n]),
        &Device::flex(),
    )));
    assert_eq!(
        got, after,
        "clamp must equal torch's clamp_(0, ln 100) bit for bit"
    );
    assert!((logit_scale_init() - (1.0f64 / 0.07).ln()).abs() < 1e-15);
    assert_eq!(logit_scale_max(), 100f64.ln());

    // On the model: a scale pushed past ln 100 comes back to it and still receives gradients.
    let device = Device::flex().autodiff();
    let (vit, text) = tiny_towers(40);
    let mut model = ClipModel::new(&vit, &text, 9.0, 0, &device).unwrap();
    model = model.clamp_logit_scale();
    assert!((model.logit_scale_value() - logit_scale_max()).abs() < 1e-6);
    let g = grads_of(&model, &device);
    assert!(
        g.get("logit_scale").is_some(),
        "logit_scale lost its gradient"
    );
}

fn text_from_fixture(activation: TextActivation, device: &Device) -> TextTransformer {
    let j = json();
    let t = &j["text"];
    let u = |k: &str| t[k].as_u64().unwrap() as usize;
    let cfg = TextConfig {
        vocab_size: u("vocab_size"),
        context_length: u("context_length"),
        width: u("width"),
        heads: u("heads"),
        layers: u("layers"),
        mlp_ratio: 4.0,
        embed_dim: u("embed_dim"),
        activation,
        ln_eps: t["ln_eps"].as_f64().unwrap(),
    };
    let fresh = TextTransformer::new(&cfg, 0, device).unwrap();
    let weights = support::fixture("clip/text_tower.safetensors");
    checkpoint::assign_named_parameters(fresh, &weights, device).unwrap()
}

#[test]
fn text_tower_matches_the_reference_with_causal_mask_and_eot_pooling() {
    let device = Device::flex();
    let s = support::fixture("clip/clip.safetensors");
    let (shape, ids) = s.read_f32("text.ids").unwrap();
    let (_, eot) = s.read_f32("text.eot").unwrap();
    let (b, l) = (shape[0], shape[1]);
    let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let eot: Vec<usize> = eot.iter().map(|&x| x as usize).collect();
    for (act, key) in [
        (TextActivation::QuickGelu, "text.out_quick_gelu"),
        (TextActivation::Gelu, "text.out_gelu"),
    ] {
        let tower = text_from_fixture(act, &device);
        let (_, want) = s.read_f32(key).unwrap();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, l]), &device);
        let got = to_host(tower.forward(tokens, &eot));
        let err = rel_err(&got, &want);
        assert!(err <= 1e-4, "{key}: relative error {err}");

        // Rows 1 and 2 cut right after their EOT (what the trainer does with short captions): the
        // causal mask makes the result identical.
        let cut = 6;
        let short: Vec<i64> = (1..3)
            .flat_map(|r| ids[r * l..r * l + cut].to_vec())
            .collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(short, [2, cut]), &device);
        let got = to_host(tower.forward(tokens, &eot[1..3]));
        let e = want.len() / b;
        let err = rel_err(&got, &want[e..3 * e]);
        assert!(err <= 1e-4, "{key} (cut): relative error {err}");
    }
    // Pooling at argmax(ids) instead of the EOT position would read row 0 at position 8 (id 39):
    // the reference is sensitive to the position.
    let tower = text_from_fixture(TextActivation::QuickGelu, &device);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids[..l].to_vec(), [1, l]), &device);
    let wrong = to_host(tower.forward(tokens, &[8]));
    let (_, want) = s.read_f32("text.out_quick_gelu").unwrap();
    assert!(rel_err(&wrong, &want[..wrong.len()]) > 1e-2);
}

/// Mixed precision: with bf16 products (the causal attention included) the text tower stays within
/// bf16's error of the f32 reference, and off the f32 result (the switch reaches the tower).
#[test]
fn text_tower_in_bf16_stays_within_bf16_error() {
    let device = Device::flex();
    let s = support::fixture("clip/clip.safetensors");
    let (shape, ids) = s.read_f32("text.ids").unwrap();
    let (_, eot) = s.read_f32("text.eot").unwrap();
    let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let eot: Vec<usize> = eot.iter().map(|&x| x as usize).collect();
    let tower = text_from_fixture(TextActivation::Gelu, &device);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let got = {
        let _mixed = autocast(Precision::Bf16);
        to_host(tower.forward(tokens, &eot))
    };
    let (_, want) = s.read_f32("text.out_gelu").unwrap();
    let err = rel_err(&got, &want);
    eprintln!("text tower bf16: relative error {err:.2e}");
    assert!(err > 1e-4 && err <= 3e-2, "bf16: relative error {err}");
}

fn captions() -> Vec<String> {
    let nouns = [
        "cat",
        "dog",
        "bar chart",
        "red circle",
        "street sign",
        "table",
    ];
    let adj = ["a small", "the large", "a blue", "one striped", "a green"];
    let mut out = Vec::new();
    for (i, n) in nouns.iter().enumerate() {
        for (k, a) in adj.iter().enumerate() {
            out.push(format!(
                "{a} {n} on   a {} background, number {}",
                adj[(i + k) % 5],
                i * 7 + k
            ));
        }
    }
    out
}

#[test]
fn tokenizer_training_is_deterministic_and_round_trips_through_tokenizer_json() {
    let caps = captions();
    let a = ClipTokenizer::train(caps.clone().into_iter(), 300, 12).unwrap();
    let b = ClipTokenizer::train(caps.clone().into_iter(), 300, 12).unwrap();
    let json = a.to_json().unwrap();
    assert_eq!(
        json,
        b.to_json().unwrap(),
        "BPE training is not deterministic"
    );
    assert_eq!(a.vocab_size(), 300);
    assert_eq!(a.token_to_id("<|startoftext|>"), Some(0));
    assert_eq!(a.token_to_id("<|endoftext|>"), Some(1));
    assert_eq!(a.token_to_id("<|pad|>"), Some(2));

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    a.save(&path).unwrap();
    let c = ClipTokenizer::load(&path, 12).unwrap();
    assert_eq!(
        c.to_json().unwrap(),
        json,
        "save → load changed the tokenizer"
    );

    // Framing: SOT … EOT, normalised (case, whitespace), merges learned (fewer tokens than bytes).
    let text = "A Small   CAT on  blue";
    let ids = c.encode(text).unwrap();
    assert_eq!(ids, a.encode("a small cat on blue").unwrap());
    assert_eq!((ids[0], *ids.last().unwrap()), (0, 1));
    assert!(ids.len() < 2 + "a small cat on blue".len() - 5, "{ids:?}");
    assert_eq!(c.decode(&ids).unwrap().trim(), "a small cat on blue");
    // Truncation keeps the EOT inside the context.
    let long = c.encode(&"number 12345 ".repeat(20)).unwrap();
    assert_eq!(long.len(), 12);
    assert_eq!((long[0], long[11]), (0, 1));
    // Batches: padded with PAD, EOT positions explicit.
    let batch = c.encode_batch(&["cat", &"dog ".repeat(30)]).unwrap();
    assert_eq!((batch.batch, batch.len), (2, 12));
    assert_eq!(batch.eot[1], 11);
    let e0 = batch.eot[0];
    assert_eq!(batch.ids[e0], 1);
    assert!(batch.ids[e0 + 1..12].iter().all(|&t| t == 2));
}

fn tiny_towers(vocab: usize) -> (webssl_models::VitConfig, TextConfig) {
    let mut vit = webssl_models::presets::preset("vit-tiny").unwrap();
    vit.embed_dim = 32;
    vit.depth = 2;
    vit.num_heads = 2;
    vit.img_size = 28;
    let text = TextConfig {
        context_length: 8,
        ..TextConfig::new(vocab, 16, 2, 2, 8)
    };
    (vit, text)
}

fn grads_of(model: &ClipModel, device: &Device) -> ParamGrads {
    let b = 3;
    let pixels: Vec<f32> = (0..b * 3 * 28 * 28)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, 28, 28]), device);
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 5, 9, 1, 0, 7, 1, 2, 0, 3, 4, 1], [b, 4]),
        device,
    );
    let img = model.encode_image(images);
    let txt = model.encode_text(ids, &[3, 2, 3]);
    let loss = clip_loss(img, txt, model.logit_scale.val());
    let grads = loss.backward();
    ParamGrads::from_module(model, &grads)
}

#[test]
fn gradient_reaches_every_parameter_of_both_towers_and_the_logit_scale() {
    let device = Device::flex().autodiff();
    let (vit, text) = tiny_towers(10);
    let model = ClipModel::new(&vit, &text, logit_scale_init(), 1, &device).unwrap();
    let g = grads_of(&model, &device);
    let names: Vec<String> = checkpoint::named_parameters(&model)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert!(names.iter().any(|n| n.starts_with("visual.blocks.1.")));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("text.blocks.1.attn.qkv"))
    );
    for n in &names {
        // iBOT's mask token is only used on masked crops: CLIP never masks.
        if n == "visual.mask_token" {
            continue;
        }
        let grad = g.get(n).unwrap_or_else(|| panic!("no gradient for {n}"));
        let norm = to_host(grad.clone().square().sum())[0];
        assert!(norm > 0.0, "zero gradient for {n}");
    }
}

/// The data-parallel CLIP step's gradient routing (`webssl_train::clip::gather`), with the ranks
/// simulated in one process so that it runs without MPI: the pairs split unevenly over two "ranks"
/// (2 + 3), each rank's towers on its own pairs, the gathered features, each rank's local loss and its
/// feature gradients, their sum (what the all-reduce does), the surrogate backward through each
/// rank's towers, and the mean of the two parameter gradients (what `all_reduce_mean` does) must give
/// the gradient of the one-process loss over all five pairs — for every parameter, the logit scale
/// included — and the shares must sum to that loss. (`tests/dist_clip.rs` runs the real thing on two
/// MPI processes.)
#[test]
fn gathered_local_losses_reproduce_the_global_batch_gradient() {
    use webssl_train::clip::gather::{Gathered, local_loss_grads, surrogate};
    use webssl_train::objectives::clip::l2_normalize;

    let device = Device::flex().autodiff();
    let (vit, text) = tiny_towers(10);
    let model = ClipModel::new(&vit, &text, logit_scale_init(), 4, &device).unwrap();
    let (n, l) = (5usize, 4usize);
    let pixels: Vec<f32> = (0..n * 3 * 28 * 28)
        .map(|i| ((i * 7919 + 13) % 251) as f32 / 125.0 - 1.0)
        .collect();
    let ids: Vec<i64> = (0..n * l).map(|i| ((i * 7 + 3) % 10) as i64).collect();
    let eot = [3usize, 2, 3, 1, 3];
    let towers = |rows: std::ops::Range<usize>| {
        let k = rows.len();
        let images = Tensor::<4>::from_data(
            TensorData::new(
                pixels[rows.start * 3 * 28 * 28..rows.end * 3 * 28 * 28].to_vec(),
                [k, 3, 28, 28],
            ),
            &device,
        );
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(ids[rows.start * l..rows.end * l].to_vec(), [k, l]),
            &device,
        );
        (
            model.encode_image(images),
            model.encode_text(tokens, &eot[rows]),
        )
    };

    // One process, all five pairs.
    let (img, txt) = towers(0..n);
    let loss = clip_loss(img, txt, model.logit_scale.val());
    let whole_loss = to_host(loss.clone())[0] as f64;
    let whole = ParamGrads::from_module(&model, &loss.backward());

    // Two ranks: 0..2 and 2..5.
    let splits = [0..2, 2..5];
    let feats: Vec<(Tensor<2>, Tensor<2>)> = splits
        .iter()
        .map(|r| {
            let (i, t) = towers(r.clone());
            (l2_normalize(i), l2_normalize(t))
        })
        .collect();
    let e = text.embed_dim;
    let gathered = Gathered::concat(
        &feats
            .iter()
            .map(|(i, t)| (to_host(i.clone().inner()), to_host(t.clone().inner())))
            .collect::<Vec<_>>(),
        e,
    );
    assert_eq!(gathered.counts, [2, 3]);
    let t = model.logit_scale_value() as f32;
    let locals: Vec<_> = (0..2)
        .map(|r| local_loss_grads(&gathered, r, 2, t, &device))
        .collect();
    let shares: f64 = locals.iter().map(|g| g.share).sum();
    assert!(
        (shares - whole_loss).abs() < 1e-5 * whole_loss.max(1.0),
        "shares {shares} vs loss {whole_loss}"
    );
    let sum = |f: fn(&webssl_train::clip::gather::LocalGrads) -> &Vec<f32>| -> Vec<f32> {
        (0..n * e)
            .map(|k| f(&locals[0])[k] + f(&locals[1])[k])
            .collect()
    };
    let (d_image, d_text) = (sum(|g| &g.d_image), sum(|g| &g.d_text));
    let per_rank: Vec<ParamGrads> = (0..2)
        .map(|r| {
            let rows = gathered.rows(r);
            let span = rows.start * e..rows.end * e;
            let (i, tf) = feats[r].clone();
            let s = surrogate(
                i,
                tf,
                model.logit_scale.val(),
                &d_image[span.clone()],
                &d_text[span],
                locals[r].d_logit_scale,
            );
            ParamGrads::from_module(&model, &s.backward())
        })
        .collect();

    let (mut checked, mut worst) = (0, 0f32);
    for path in whole.paths() {
        let want = to_host(whole.get(path).unwrap().clone());
        let part = |r: usize| to_host(per_rank[r].get(path).unwrap().clone());
        let got: Vec<f32> = part(0)
            .iter()
            .zip(part(1))
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        let err = rel_err(&got, &want);
        assert!(err < 1e-4, "{path}: relative error {err}");
        worst = worst.max(err);
        checked += 1;
    }
    eprintln!(
        "simulated 2 ranks vs 1 process: max relative gradient error {worst:.2e} over {checked} parameters"
    );
    assert!(checked > 20 && whole.get("logit_scale").is_some());
}
