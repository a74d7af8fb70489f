//! DINOv2 end to end on a tiny model: the loss goes down, every trainable parameter moves, and a run
//! interrupted and resumed from its checkpoint produces the same metrics, bit for bit, as one that
//! ran straight through.

mod support;

use std::path::Path;

use burn::tensor::Device;
use webssl_train::Recipe;
use webssl_train::dino::DinoConfig;
use webssl_train::dist::Dist;
use webssl_train::run::checkpoint::Resume;
use webssl_train::run::metrics::read_jsonl;

fn config(dir: &Path, data: &Path, run: &str, extra: &[&str]) -> (DinoConfig, toml::Table) {
    let sections = r#"
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
drop_path_rate = 0.2
[crops]
global_size = 42
local_size = 14
n_local = 2
[heads]
dino_prototypes = 64
ibot_prototypes = 32
hidden_dim = 32
dino_bottleneck_dim = 16
ibot_bottleneck_dim = 16
ibot_separate_head = true
[loss]
teacher_temp_warmup_steps = 4
[optim]
total_steps = 8
warmup_steps = 2
lr_per_1024 = 0.05
freeze_last_layer_steps = 2
"#;
    support::tiny_config(dir, data, run, true, sections, extra)
}

#[test]
fn resume_is_bit_exact_and_training_moves_every_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = |run: &str, extra: &[&str]| config(tmp.path(), &data, run, extra);
    let (straight, second) = support::straight_and_resumed(config);

    // The exported teachers are identical too.
    let ta = std::fs::read(straight.export_dir.join("model.safetensors")).unwrap();
    let tb = std::fs::read(second.export_dir.join("model.safetensors")).unwrap();
    assert!(ta == tb, "exported teacher differs");

    // Schedules and losses are what the recipe says.
    let rows = read_jsonl(&straight.run_dir.join("metrics.jsonl")).unwrap();
    let at = |i: usize, k: &str| rows[i].1[k];
    assert_eq!(at(0, "lr"), 0.0, "warm-up starts at 0");
    assert_eq!(at(0, "last_layer_lr"), 0.0);
    assert_eq!(at(1, "last_layer_lr"), 0.0, "last layer frozen for 2 steps");
    assert!(at(2, "last_layer_lr") > 0.0);
    assert!((at(0, "teacher_temp") - 0.04).abs() < 1e-12);
    assert!((at(7, "teacher_temp") - 0.07).abs() < 1e-12);
    assert!(
        rows.iter()
            .all(|(_, m)| m["loss"].is_finite() && m["grad_norm_backbone"] > 0.0)
    );
    // The iBOT head learns exactly when some patches were masked.
    assert!(rows.iter().any(|(_, m)| m["masked_patches"] > 0.0));
    assert!(
        rows.iter()
            .all(|(_, m)| (m["masked_patches"] > 0.0) == (m["grad_norm_ibot_head"] > 0.0))
    );

    // TensorBoard events were written and read back.
    let events = std::fs::read_dir(straight.run_dir.join("events"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let scalars = webssl_train::run::tensorboard::read_scalars(&events).unwrap();
    assert!(
        scalars
            .iter()
            .any(|(tag, step, _)| tag == "dino_loss" && *step == 8)
    );

    support::assert_refuses_a_changed_recipe(config, "optim.lr_per_1024=0.1");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let device = Device::flex();
    let (cfg, resolved) = config(
        tmp.path(),
        &data,
        "diverge",
        &["optim.warmup_steps=0", "optim.total_steps=6"],
    );
    cfg.train(&resolved, Resume::Never, &device, Some(2), &Dist::single())
        .unwrap();
    let (cfg, resolved) = config(
        tmp.path(),
        &data,
        "diverge",
        &[
            "optim.warmup_steps=0",
            "optim.total_steps=6",
            "optim.lr_per_1024=1e38",
            "optim.clip_grad=0.0",
        ],
    );
    // The recipe changed, so resume explicitly from the checkpoint dir is refused too: start fresh
    // into the same run dir instead and let it blow up.
    let err = cfg
        .train(&resolved, Resume::Never, &device, None, &Dist::single())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not finite"), "{err}");
    let ckpts = webssl_train::run::CheckpointManager::new(tmp.path().join("diverge"), 2);
    let (step, _) = ckpts
        .latest()
        .unwrap()
        .expect("the good checkpoint is still there");
    assert_eq!(step, 2);
}

/// Gradient accumulation through the shared loop (`data.global_batch_size = 4` in forwards of 2):
/// the run resumes bit for bit, takes the lr of the global batch, and each step's forwards each
/// normalise over their own 2 images (Sinkhorn-Knopp, KoLeo, iBOT masks: dinov2 at a per-GPU batch
/// of 2), so it is a different run from one forward of 4 — by design, docs/distributed.md.
#[test]
fn accumulated_forwards_resume_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = |run: &str, extra: &[&str]| config(tmp.path(), &data, run, extra);
    let accumulating =
        support::with_overrides(config, &["data.global_batch_size=4", "data.batch_size=2"]);
    let (cfg, _) = accumulating("p", &[]);
    assert_eq!(cfg.scaled_lr(1), config("q", &[]).0.scaled_lr(1));
    let (straight, _) = support::straight_and_resumed(accumulating);
    let (cfg, resolved) = config("one-forward", &[]);
    let one = support::train_fresh(&cfg, &resolved);
    let rows_a = read_jsonl(&straight.run_dir.join("metrics.jsonl")).unwrap();
    let rows_b = read_jsonl(&one.run_dir.join("metrics.jsonl")).unwrap();
    let first = |rows: &[(u64, std::collections::BTreeMap<String, f64>)], k: &str| rows[0].1[k];
    assert_eq!(first(&rows_a, "lr"), first(&rows_b, "lr"));
    // The same images at step 1, normalised per forward of 2 instead of 4 (and iBOT masks drawn
    // per forward, as dinov2's collate draws them per GPU batch).
    assert_ne!(first(&rows_a, "dino_loss"), first(&rows_b, "dino_loss"));
}
