//! End to end: `webssl synth` → `webssl model init` (tiny random ViT) → `webssl curate
//! train-filter` → `webssl curate` with the trained probe in a chain (+ --reshard, --resume) →
//! `webssl curate eval-filter` on the committed real images. Mechanics only: a random-init encoder
//! gives no meaningful precision (the measured numbers with a trained encoder are in
//! fixtures/curate/README.md).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{kill_when, ok, p, run, webssl};

fn fixtures() -> PathBuf {
    support::fixtures("curate")
}

/// `samples` synthetic images of `size` px in shards of `shard_size` (`dir/synth`), and a random
/// tiny ViT for 28-px inputs (`dir/model`).
fn data_and_model(dir: &Path, samples: u32, size: u32, shard_size: u32) -> (PathBuf, PathBuf) {
    let data = dir.join("synth");
    ok(&run(&[
        "synth",
        "--samples",
        &samples.to_string(),
        "--size",
        &size.to_string(),
        "--shard-size",
        &shard_size.to_string(),
        "--out",
        p(&data),
    ]));
    let model = dir.join("model");
    ok(&run(&[
        "model",
        "init",
        "--arch",
        "vit-tiny",
        "--img-size",
        "28",
        "--out",
        p(&model),
    ]));
    (data, model)
}

#[test]
fn train_filter_then_curate_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = data_and_model(tmp.path(), 40, 48, 16);

    let filter = tmp.path().join("light");
    let stdout = ok(&webssl()
        .args([
            "curate",
            "train-filter",
            "--label",
            "light",
            "--batch-size",
            "16",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--input")
        .arg(&data)
        .arg("--output")
        .arg(&filter)
        .output()
        .unwrap());
    assert!(
        stdout.contains("embedded 40 labelled images (20 yes)"),
        "{stdout}"
    );
    assert!(stdout.contains("held-out"), "{stdout}");
    for f in ["filter.toml", "probe.safetensors", "report.json"] {
        assert!(filter.join(f).is_file(), "{f}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(filter.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["n_heldout"], 8);
    assert_eq!(report["n_train"], 32);

    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        "[chain]\nbatch_size = 8\n[[filter]]\nkind = \"exact_dedup\"\n[[filter]]\nkind = \"probe\"\nname = \"light\"\npath = \"light\"\n",
    )
    .unwrap();
    let out = tmp.path().join("curated");
    let curate = || {
        let mut c = webssl();
        c.args([
            "curate",
            "--reshard",
            "--commit-every",
            "8",
            "--shard-size",
            "10",
        ])
        .arg("--input")
        .arg(&data)
        .arg("--filters")
        .arg(&chain)
        .arg("--output")
        .arg(&out);
        c
    };
    let stdout = ok(&curate().output().unwrap());
    assert!(stdout.contains("40 samples from 3 input(s)"), "{stdout}");
    assert!(stdout.contains("light"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let kept = summary["kept"].as_u64().unwrap();
    assert_eq!(summary["samples"], 40);
    assert_eq!(summary["reshard"]["samples"].as_u64().unwrap(), kept);
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 40);
    let first: serde_json::Value = serde_json::from_str(manifest.lines().next().unwrap()).unwrap();
    let score = first["filters"][1]["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{first}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("shards/index.json")).unwrap()).unwrap();
    assert_eq!(index["total_samples"].as_u64().unwrap(), kept);

    // A finished output is not redone; --resume on it is a no-op with the same manifest.
    let stdout = ok(&curate().arg("--resume").output().unwrap());
    assert!(stdout.contains("40 samples"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.jsonl")).unwrap(),
        manifest
    );

    // A filter retrained in place (another threshold here) is not the filter the output was made
    // with: the finished output is not silently reused.
    let toml = std::fs::read_to_string(filter.join("filter.toml")).unwrap();
    std::fs::write(
        filter.join("filter.toml"),
        toml.replace("threshold = 0.5", "threshold = 0.6"),
    )
    .unwrap();
    let o = curate().arg("--resume").output().unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("another filter chain"), "{stderr}");
    std::fs::write(filter.join("filter.toml"), toml).unwrap();

    // The probe on the committed real images (mechanics: it runs and counts every image).
    let stdout = ok(&webssl()
        .args([
            "curate",
            "eval-filter",
            "--label",
            "folder:text,document",
            "--filter",
        ])
        .arg(&filter)
        .arg("--input")
        .arg(fixtures().join("real"))
        .output()
        .unwrap());
    assert!(stdout.contains("n    21  yes     7"), "{stdout}");
}

#[test]
fn bad_chain_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = tmp.path().join("chain.toml");
    std::fs::write(&chain, "[[filter]]\nkind = \"near_dup\"\nmax_dist = 3\n").unwrap();
    let out = webssl()
        .args(["curate", "--input"])
        .arg(fixtures().join("real"))
        .arg("--filters")
        .arg(&chain)
        .arg("--output")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_dist") && stderr.contains("chain.toml"),
        "{stderr}"
    );
}

#[test]
fn sigkill_then_resume_gives_the_same_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = data_and_model(tmp.path(), 240, 32, 80);
    let filter = tmp.path().join("heavy");
    ok(&webssl()
        .args([
            "curate",
            "train-filter",
            "--label",
            "heavy",
            "--max-samples",
            "60",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--input")
        .arg(&data)
        .arg("--output")
        .arg(&filter)
        .output()
        .unwrap());
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        "[chain]\nbatch_size = 8\n[[filter]]\nkind = \"near_dup\"\n[[filter]]\nkind = \"probe\"\nname = \"heavy\"\npath = \"heavy\"\n",
    )
    .unwrap();
    let curate = |out: &Path| {
        let mut c = webssl();
        c.args(["curate", "--commit-every", "16", "--threads", "1"])
            .arg("--input")
            .arg(&data)
            .arg("--filters")
            .arg(&chain)
            .arg("--output")
            .arg(out);
        c
    };
    let full = tmp.path().join("full");
    ok(&curate(&full).output().unwrap());

    // Kill -9 once a commit past the start is on disk, then resume.
    let part = tmp.path().join("part");
    let state_file = part.join("state.json");
    let committed = || {
        std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| {
                s["next_index"].as_u64().unwrap_or(0) + s["next_input"].as_u64().unwrap_or(0) > 0
            })
    };
    kill_when(curate(&part), committed, Duration::from_secs(120));
    assert!(!part.join("summary.json").exists());
    let stdout = ok(&curate(&part).arg("--resume").output().unwrap());
    assert!(stdout.contains("240 samples"), "{stdout}");
    assert_eq!(
        std::fs::read(part.join("manifest.jsonl")).unwrap(),
        std::fs::read(full.join("manifest.jsonl")).unwrap()
    );
}
