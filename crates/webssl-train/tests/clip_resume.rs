//! CLIP end to end on a tiny model: a run interrupted and resumed from its checkpoint produces the
//! same metrics and weights, bit for bit, as one that ran straight through; the tokenizer is trained
//! once and reused; samples without a caption are dropped from their batch and counted.

mod support;

use std::path::Path;

use burn::tensor::Device;
use webssl_data::shards::{ShardLimits, ShardReader, ShardWriter};
use webssl_train::clip::{self, ClipConfig};
use webssl_train::run::metrics::read_jsonl;

fn config(dir: &Path, data: &Path, run: &str, extra: &[&str]) -> (ClipConfig, toml::Table) {
    let sections = r#"
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
[image]
size = 28
[text]
vocab_size = 300
tokenizer_train_samples = 20
context_length = 16
width = 16
heads = 2
layers = 2
[clip]
embed_dim = 8
[optim]
total_steps = 6
warmup_steps = 2
lr = 1e-3
"#;
    support::tiny_config(dir, data, run, false, sections, extra)
}

#[test]
fn resume_is_bit_exact_and_the_run_dir_holds_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let device = Device::flex();
    let config = |run: &str, extra: &[&str]| config(tmp.path(), &data, run, extra);
    let (straight, second) = support::straight_and_resumed(config);

    for f in [
        "export/model.safetensors",
        "clip.safetensors",
        "tokenizer.json",
    ] {
        let x = std::fs::read(straight.run_dir.join(f)).unwrap();
        let y = std::fs::read(second.run_dir.join(f)).unwrap();
        assert!(x == y, "{f} differs after resume");
    }

    // The export is an image backbone `webssl embed` can load.
    let loaded = webssl_models::checkpoint::load(&straight.export_dir, None, &device).unwrap();
    assert_eq!(loaded.model.config().embed_dim, 32);
    let pre = loaded.preprocessor.unwrap();
    assert!((pre["image_mean"][0].as_f64().unwrap() - 0.481_454_66).abs() < 1e-8);

    // The full model reads back with both towers.
    let full = clip::load_clip(&straight.run_dir, &device).unwrap();
    assert_eq!(full.text.config.vocab_size, 300);
    assert!((full.logit_scale_value() - rows_last_scale(&straight.run_dir)).abs() < 1e-6);

    // Schedule, clamp and pairs are what the recipe says.
    let rows = read_jsonl(&straight.run_dir.join("metrics.jsonl")).unwrap();
    let at = |i: usize, k: &str| rows[i].1[k];
    assert!(
        (at(0, "lr") - 5e-4).abs() < 1e-15,
        "warm-up lr·(step+1)/warmup"
    );
    assert!((at(1, "lr") - 1e-3).abs() < 1e-15);
    assert!(at(5, "lr") < at(2, "lr"));
    for (_, m) in &rows {
        assert!(m["loss"].is_finite() && m["loss"] > 0.0);
        assert!(m["grad_norm"] > 0.0);
        assert_eq!(m["pairs"], 4.0);
        assert_eq!(m["captions_missing"], 0.0);
        assert!((0.0..=100f64.ln() + 1e-6).contains(&m["logit_scale"]));
    }
    // The scale moved from its init (it is trained).
    assert!((at(5, "logit_scale") - (1.0f64 / 0.07).ln()).abs() > 1e-7);

    support::assert_refuses_a_changed_recipe(config, "optim.lr=2e-3");
}

fn rows_last_scale(run: &Path) -> f64 {
    let rows = read_jsonl(&run.join("metrics.jsonl")).unwrap();
    rows.last().unwrap().1["logit_scale"]
}

#[test]
fn samples_without_captions_are_dropped_from_their_batch_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let (cfg, _) = config(tmp.path(), &full, "unused", &[]);
    webssl_train::run::sections::ensure_synth(&full, cfg.data.synth.as_ref(), "train").unwrap();

    // Copy the shards, removing the caption of every third sample.
    let holes = tmp.path().join("holes");
    let mut writer = ShardWriter::create(&holes, "train", ShardLimits::default()).unwrap();
    let mut removed = 0;
    let index = webssl_data::shards::ShardIndex::load(&full).unwrap();
    for path in index.paths(&full) {
        for (i, s) in ShardReader::open(&path).unwrap().enumerate() {
            let mut s = s.unwrap();
            if i % 3 == 0 {
                s.files.remove("txt");
                removed += 1;
            }
            writer.write(&s).unwrap();
        }
    }
    writer.finish().unwrap();
    assert!(removed > 0);

    let (mut cfg, resolved) = config(tmp.path(), &holes, "holes", &["optim.total_steps=4"]);
    cfg.data.synth = None;
    let out = support::train_fresh(&cfg, &resolved);
    let rows = read_jsonl(&out.run_dir.join("metrics.jsonl")).unwrap();
    let missing: f64 = rows.iter().map(|(_, m)| m["captions_missing"]).sum();
    assert!(missing > 0.0, "no caption-less sample was seen in 16 draws");
    for (_, m) in &rows {
        assert_eq!(m["pairs"] + m["captions_missing"], 4.0);
        assert!(m["loss"].is_finite());
    }
}
