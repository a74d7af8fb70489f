//! `webssl pretrain clip` as a user runs it: a few steps on tiny synthetic data end with the image tower
//! exported for `webssl embed`, the full CLIP and its tokenizer in the run dir, and the kNN report
//! (initialisation vs trained); `--dry-run` prints the plan of a paper preset; bad configs name the
//! field.

use std::path::Path;
use std::process::Command;

fn webssl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webssl"))
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("clip.toml");
    std::fs::write(
        &path,
        format!(
            r#"
seed = 1
[data]
train = "{data}"
batch_size = 4
num_workers = 2
shuffle_buffer = 8
decode_threads = 2
synth = {{ samples = 24, size = 48, seed = 2 }}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
[image]
size = 28
[text]
vocab_size = 300
tokenizer_train_samples = 24
context_length = 16
width = 16
heads = 2
layers = 1
[clip]
embed_dim = 8
[optim]
total_steps = 3
warmup_steps = 1
lr = 1e-3
[run]
dir = "{run}"
checkpoint_every_steps = 1
keep_last = 1
tensorboard = false
[eval]
knn_train = "{knn_train}"
knn_val = "{knn_val}"
knn_train_synth = {{ samples = 24, size = 48, seed = 3 }}
knn_val_synth = {{ samples = 12, size = 48, seed = 4 }}
"#,
            data = dir.join("data").display(),
            run = dir.join("run").display(),
            knn_train = dir.join("knn-train").display(),
            knn_val = dir.join("knn-val").display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_short_clip_run_exports_the_image_tower_and_reports_knn() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let out = webssl()
        .args(["pretrain", "clip", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# plan"), "{stdout}");
    assert!(stdout.contains("text tower"), "{stdout}");
    assert!(stdout.contains("image tower exported to"), "{stdout}");
    assert!(stdout.contains("initialisation"), "{stdout}");
    assert!(stdout.contains("trained (CLIP)"), "{stdout}");
    let run = tmp.path().join("run");
    for f in [
        "export/config.json",
        "export/model.safetensors",
        "export/preprocessor_config.json",
        "clip.safetensors",
        "clip_config.json",
        "tokenizer.json",
        "eval/knn.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);

    // The export is what `webssl embed` reads.
    let embed_out = tmp.path().join("feats.safetensors");
    let out = webssl()
        .args(["embed", "--model"])
        .arg(run.join("export"))
        .arg("--input")
        .arg(tmp.path().join("knn-val"))
        .arg("--output")
        .arg(&embed_out)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(embed_out.is_file());

    // Run again: already finished, nothing to train, the outputs stay.
    let out = webssl()
        .args(["pretrain", "clip", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(again, metrics);
}

#[test]
fn dry_run_prints_the_plan_and_bad_configs_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let out = webssl()
        .args([
            "pretrain",
            "clip",
            "--preset",
            "clip-7b",
            "--dry-run",
            "--configs-dir",
        ])
        .arg(&configs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("parameters: image tower 6450"), "{stdout}");
    assert!(stdout.contains("vocab ≤ 49408"), "{stdout}");
    assert!(
        stdout.contains("global batch 128 · 61035 steps"),
        "{stdout}"
    );

    let cfg = write_config(tmp.path());
    for (set, field) in [
        ("image.size=50", "image.size"),
        ("data.batch_size=1", "data.batch_size"),
        ("text.heads=3", "text.heads"),
        ("optim.lr=\"fast\"", "optim.lr"),
    ] {
        let out = webssl()
            .args(["pretrain", "clip", "--dry-run", "--config"])
            .arg(&cfg)
            .args(["--set", set])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(field), "{set}: {stderr}");
    }
}
