//! `webssl pretrain mae` as a user runs it: the committed demo config, shrunk with `--set` to a few
//! steps on tiny synthetic data, ends with the encoder exported for `webssl embed` and the kNN report
//! (initialisation vs trained); `--dry-run` prints the plan of a paper preset; bad values name the
//! field.

mod support;

use std::path::Path;

use support::{check_finished_run, configs, dry_run_preset, ok, rejects_sets, webssl};

/// `configs/mae-demo.toml` with everything that costs time made tiny and every path in `dir`.
fn tiny(dir: &Path) -> Vec<String> {
    let d = |name: &str| dir.join(name).display().to_string();
    [
        format!("data.train=\"{}\"", d("data")),
        "data.synth={ samples = 16, size = 48, seed = 2 }".into(),
        "data.batch_size=4".into(),
        "data.shuffle_buffer=8".into(),
        "data.decode_threads=2".into(),
        "model.embed_dim=32".into(),
        "model.depth=1".into(),
        "model.num_heads=2".into(),
        "crop.size=56".into(),
        "decoder.embed_dim=16".into(),
        "decoder.depth=1".into(),
        "decoder.num_heads=2".into(),
        "optim.total_steps=2".into(),
        "optim.warmup_steps=1".into(),
        format!("run.dir=\"{}\"", d("run")),
        "run.tensorboard=false".into(),
        format!("eval.knn_train=\"{}\"", d("knn-train")),
        format!("eval.knn_val=\"{}\"", d("knn-val")),
        "eval.knn_train_synth={ samples = 16, size = 48, seed = 3 }".into(),
        "eval.knn_val_synth={ samples = 8, size = 48, seed = 4 }".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

#[test]
fn the_demo_config_shrunk_trains_exports_and_reports_knn() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = ok(&webssl()
        .args(["pretrain", "mae", "--config"])
        .arg(configs().join("mae-demo.toml"))
        .args(tiny(tmp.path()))
        .output()
        .unwrap());
    assert!(stdout.contains("# plan"), "{stdout}");
    assert!(stdout.contains("4 of 16 patches visible"), "{stdout}");
    assert!(stdout.contains("encoder exported to"), "{stdout}");
    assert!(stdout.contains("initialisation"), "{stdout}");
    assert!(stdout.contains("trained (MAE)"), "{stdout}");
    let files = [
        "export/config.json",
        "export/model.safetensors",
        "export/preprocessor_config.json",
        "eval/knn.json",
        "metrics.jsonl",
        "config.resolved.toml",
    ];
    check_finished_run(
        &tmp.path().join("run"),
        &files,
        2,
        &tmp.path().join("knn-val"),
    );
}

#[test]
fn dry_run_prints_the_web_mae_plan_and_bad_values_name_the_field() {
    let stdout = dry_run_preset("mae", "web-mae-2b");
    // The paper's Web-MAE recipe: global batch 4096, lr 1.6e-3, 80k warm-up, 2B samples seen.
    assert!(
        stdout.contains(
            "global batch 4096 = 1 process(es) × 64 forward(s) × 64 · 488282 steps (80000 warm-up)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("lr 1.600e-3"), "{stdout}");
    assert!(stdout.contains("64 of 256 patches visible"), "{stdout}");
    assert!(stdout.contains("arch = \"web-mae-2b\""), "{stdout}");

    let tmp = tempfile::tempdir().unwrap();
    let mut args = ["pretrain", "mae", "--dry-run", "--config"]
        .map(String::from)
        .to_vec();
    args.push(configs().join("mae-demo.toml").display().to_string());
    args.extend(tiny(tmp.path()));
    rejects_sets(
        &args,
        &[
            ("crop.size=90", "crop.size"),
            ("loss.mask_ratio=1.0", "loss.mask_ratio"),
            ("decoder.embed_dim=30", "decoder.embed_dim"),
            ("optim.lr_per_256=\"fast\"", "optim.lr_per_256"),
        ],
    );
}
