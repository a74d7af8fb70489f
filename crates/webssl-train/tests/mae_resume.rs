//! MAE end to end on a tiny model: a run interrupted and resumed from its checkpoint produces the same
//! metrics and the same exported encoder, bit for bit, as one that ran straight through; the export
//! loads as an HF ViTModel backbone with the trained features; the schedule is MAE's.

mod support;

use std::path::Path;

use burn::tensor::{Device, Distribution, Tensor};
use webssl_models::checkpoint::{self, store::TensorStore};
use webssl_models::mae::sincos_pos_embed_2d;
use webssl_train::Recipe;
use webssl_train::mae::{self, MaeConfig, model::MaeModel};
use webssl_train::run::metrics::read_jsonl;

fn config(dir: &Path, data: &Path, run: &str, extra: &[&str]) -> (MaeConfig, toml::Table) {
    let sections = r#"
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
patch_size = 7
[decoder]
embed_dim = 16
depth = 1
num_heads = 2
[crop]
size = 28
[optim]
total_steps = 8
warmup_steps = 2
lr_per_256 = 0.05
"#;
    support::tiny_config(dir, data, run, false, sections, extra)
}

#[test]
fn resume_is_bit_exact_and_the_export_is_the_trained_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let device = Device::flex();
    let config = |run: &str, extra: &[&str]| config(tmp.path(), &data, run, extra);
    let (straight, second) = support::straight_and_resumed(config);
    let (cfg, _) = config("interrupted", &[]);

    let ea = std::fs::read(straight.export_dir.join("model.safetensors")).unwrap();
    let eb = std::fs::read(second.export_dir.join("model.safetensors")).unwrap();
    assert!(ea == eb, "exported encoder differs");

    // MAE's schedule: linear warm-up from 0, peak blr·batch/256, then half-cosine; constant wd.
    let rows = read_jsonl(&straight.run_dir.join("metrics.jsonl")).unwrap();
    let at = |i: usize, k: &str| rows[i].1[k];
    let peak = 0.05 * 4.0 / 256.0;
    assert_eq!(at(0, "lr"), 0.0);
    assert!((at(1, "lr") - peak / 2.0).abs() < 1e-15);
    assert!((at(2, "lr") - peak).abs() < 1e-15);
    assert!(at(7, "lr") < at(3, "lr"));
    assert!(rows.iter().all(|(_, m)| m["wd"] == 0.05
        && m["visible_patches"] == 4.0
        && m["loss"] > 0.0
        && m["grad_norm"] > 0.0));

    // The export is the encoder of the last checkpoint, loadable as an HF ViTModel backbone: same
    // features; the position table is still the fixed sin-cos one; training moved the weights.
    let exported = checkpoint::load(&straight.export_dir, None, &device).unwrap();
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.export_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(hf["model_type"], "vit");
    assert_eq!(hf["layer_norm_eps"], 1e-6);
    let ckpt = webssl_train::run::CheckpointManager::new(&straight.run_dir, 2);
    let (step, dir) = ckpt.latest().unwrap().unwrap();
    assert_eq!(step, 8);
    let fresh = MaeModel::new(
        &cfg.vit().unwrap(),
        &cfg.decoder().unwrap(),
        cfg.seed,
        &device,
    )
    .unwrap();
    let init_params = checkpoint::named_parameters(&fresh.encoder);
    let trained = checkpoint::assign_named_parameters(
        fresh,
        &TensorStore::open_file(&dir.join("model.safetensors")).unwrap(),
        &device,
    )
    .unwrap();
    let x = Tensor::<4>::random([2, 3, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let want = trained.encoder.forward_features(x.clone(), None);
    let got = exported.model.forward_features(x, None);
    let diff = (want.cls - got.cls).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "export features differ by {diff}");
    let trained_params = checkpoint::named_parameters(&trained.encoder);
    for ((name, _, before), (_, _, after)) in init_params.iter().zip(&trained_params) {
        if name == "pos_embed" {
            assert_eq!(
                after,
                &sincos_pos_embed_2d(32, 4, true),
                "pos_embed trained"
            );
        } else {
            assert_ne!(before, after, "{name} did not move");
        }
    }
    // The kNN baseline encoder is the step-0 encoder.
    let init = mae::init_backbone(&cfg, &device).unwrap();
    assert_eq!(checkpoint::named_parameters(&init), init_params);

    support::assert_refuses_a_changed_recipe(config, "loss.mask_ratio=0.5");
}

#[test]
fn config_errors_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (set, field) in [
        ("crop.size=30", "crop.size"),
        ("loss.mask_ratio=0.99", "loss.mask_ratio"),
        ("decoder.num_heads=3", "decoder.num_heads"),
        ("optim.warmup_steps=9", "optim.warmup_steps"),
    ] {
        let (cfg, _) = config(tmp.path(), &data, "bad", &[set]);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{set}: {err}");
    }
    let plan = config(tmp.path(), &data, "p", &[])
        .0
        .plan(1)
        .unwrap()
        .to_string();
    assert!(plan.contains("4 of 16 patches visible"), "{plan}");
}

/// Gradient accumulation through the shared loop (`data.global_batch_size`): a global batch of 4 in
/// two forwards of 2 takes the steps of one forward of 4 — the same images and masks, since the
/// loader's per-sample streams do not depend on the batch, and MAE's loss is a mean over images
/// with the same number of removed patches each — to float tolerance; and it resumes bit for bit.
#[test]
fn two_forwards_of_two_take_the_steps_of_one_forward_of_four() {
    use webssl_train::run::state::read_all;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = |run: &str, extra: &[&str]| config(tmp.path(), &data, run, extra);
    let accumulating =
        support::with_overrides(config, &["data.global_batch_size=4", "data.batch_size=2"]);
    let plan = accumulating("p", &[]).0.plan(1).unwrap();
    assert_eq!((plan.batch.micro, plan.batch.accumulation), (2, 2));
    assert!(
        plan.to_string()
            .contains("global batch 4 = 1 process(es) × 2 forward(s) × 2"),
        "{plan}"
    );
    let (accumulated, _) = support::straight_and_resumed(accumulating);

    let (cfg, resolved) = config("one-forward", &[]);
    let one = support::train_fresh(&cfg, &resolved);
    let rows_a = read_jsonl(&accumulated.run_dir.join("metrics.jsonl")).unwrap();
    let rows_b = read_jsonl(&one.run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows_a.len(), rows_b.len());
    let (mut loss_diff, mut norm_diff) = (0f64, 0f64);
    for ((_, a), (_, b)) in rows_a.iter().zip(&rows_b) {
        // The same global batch, so the same lr; the same images, so the same visible patches.
        assert_eq!(
            (a["lr"], a["visible_patches"]),
            (b["lr"], b["visible_patches"])
        );
        loss_diff = loss_diff.max((a["loss"] - b["loss"]).abs() / b["loss"].abs());
        norm_diff = norm_diff.max((a["grad_norm"] - b["grad_norm"]).abs() / b["grad_norm"].abs());
    }
    // The exported encoders, but for the attention key biases: softmax over the keys is invariant
    // to a shift every key shares, so their gradient is zero up to rounding noise that AdamW's
    // normalisation turns into lr-sized steps of either sign (see tests/dist_mae.rs).
    let export = |o: &webssl_train::run::TrainOutcome| {
        read_all(&TensorStore::open_file(&o.export_dir.join("model.safetensors")).unwrap()).unwrap()
    };
    let (ea, eb) = (export(&accumulated), export(&one));
    assert_eq!(ea.len(), eb.len());
    let mut param_diff = 0f32;
    for ((name, _, a), (name_b, _, b)) in ea.iter().zip(&eb) {
        assert_eq!(name, name_b);
        if !name.ends_with("key.bias") {
            param_diff = param_diff.max(support::max_abs_diff(a, b));
        }
    }
    eprintln!(
        "MAE, 2 forwards of 2 vs 1 of 4 over {} steps: loss {loss_diff:.2e}, grad norm {norm_diff:.2e} \
         (relative), exported parameters {param_diff:.2e} (absolute)",
        rows_a.len()
    );
    assert!(
        loss_diff < 1e-5 && norm_diff < 1e-4,
        "{loss_diff} {norm_diff}"
    );
    assert!(
        param_diff < 1e-5,
        "exported encoders differ by {param_diff}"
    );
}
