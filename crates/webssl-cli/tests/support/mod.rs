//! What the end-to-end tests of the `webssl` binary share: running it and checking its output, the
//! repository's fixtures and configs, the tiny run configs, the kill-then-resume skeleton and the
//! checks of a finished pretraining run.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `webssl` binary under test.
pub fn webssl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webssl"))
}

/// Runs `webssl ARGS` to the end.
pub fn run(args: &[&str]) -> Output {
    webssl().args(args).output().unwrap()
}

/// Stdout of a run that must have succeeded (else panics with both streams).
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stderr of a run that must have failed.
pub fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded unexpectedly:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `fixtures/<sub>` of the repository.
pub fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(sub)
}

/// The repository's `configs/`.
pub fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `seed`, `[data]` and `[model]` of the tiny runs: 32 synthetic 48-px images generated into
/// `dir/data`, batches of 4, and a 2-block ViT of width 32.
fn tiny_head(dir: &Path) -> String {
    format!(
        r#"seed = 1
[data]
train = "{data}"
batch_size = 4
num_workers = 2
shuffle_buffer = 8
decode_threads = 2
synth = {{ samples = 32, size = 48, seed = 2 }}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
"#,
        data = dir.join("data").display()
    )
}

/// `[run]` of the tiny runs: in `dir/<run>`, a checkpoint every step, no TensorBoard.
fn tiny_run(dir: &Path, run: &str) -> String {
    format!(
        "[run]\ndir = \"{}\"\ncheckpoint_every_steps = 1\nkeep_last = 2\ntensorboard = false\n",
        dir.join(run).display()
    )
}

/// Writes `dir/<name>.toml`: `text` with `overrides` applied (`section.key=value` with a TOML
/// value, as the binary's `--set`).
fn write_toml(dir: &Path, name: &str, text: &str, overrides: &[&str]) -> PathBuf {
    let mut table: toml::Table = toml::from_str(text).unwrap();
    for o in overrides {
        let (key, value) = o.split_once('=').expect("section.key=value");
        let value: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap();
        let mut t = &mut table;
        for part in parts {
            t = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        t.insert(last.to_owned(), value["v"].clone());
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

/// A tiny DINOv2 run of `steps` steps in `dir/<run>` (data in `dir/data`), config `dir/<run>.toml`.
pub fn dino_config(dir: &Path, run: &str, steps: u64, overrides: &[&str]) -> PathBuf {
    let text = format!(
        "{}[crops]\nglobal_size = 42\nlocal_size = 14\nn_local = 2\n\
         [heads]\ndino_prototypes = 64\nibot_prototypes = 64\nhidden_dim = 32\n\
         dino_bottleneck_dim = 16\nibot_bottleneck_dim = 16\n\
         [optim]\ntotal_steps = {steps}\nwarmup_steps = 2\nlr_per_1024 = 0.05\n{}",
        tiny_head(dir),
        tiny_run(dir, run)
    );
    write_toml(dir, run, &text, overrides)
}

/// A tiny CLIP run of 3 steps in `dir/run` (data in `dir/data`) with the kNN report on synthetic
/// shards `dir/knn-train` and `dir/knn-val`; config `dir/clip.toml`.
pub fn clip_config(dir: &Path, overrides: &[&str]) -> PathBuf {
    let text = format!(
        "{}[image]\nsize = 28\n\
         [text]\nvocab_size = 300\ntokenizer_train_samples = 24\ncontext_length = 16\nwidth = 16\n\
         heads = 2\nlayers = 1\n\
         [clip]\nembed_dim = 8\n\
         [optim]\ntotal_steps = 3\nwarmup_steps = 1\nlr = 1e-3\n{}\
         [eval]\nknn_train = \"{}\"\nknn_val = \"{}\"\n\
         knn_train_synth = {{ samples = 24, size = 48, seed = 3 }}\n\
         knn_val_synth = {{ samples = 12, size = 48, seed = 4 }}\n",
        tiny_head(dir),
        tiny_run(dir, "run"),
        dir.join("knn-train").display(),
        dir.join("knn-val").display(),
    );
    // CLIP's smaller run: 24 images, one checkpoint kept.
    let mut all = vec![
        "data.synth={ samples = 24, size = 48, seed = 2 }",
        "run.keep_last=1",
    ];
    all.extend_from_slice(overrides);
    write_toml(dir, "clip", &text, &all)
}

/// The resume-test skeleton's interruption: starts `cmd` (output discarded) and SIGKILLs it as soon
/// as `ready()` holds. Panics if the process ended by itself first, or `ready()` did not come
/// within `limit`.
pub fn kill_when(mut cmd: Command, ready: impl Fn() -> bool, limit: Duration) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process ended ({status}) before it could be killed");
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("not ready to be killed after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The `metrics.jsonl` of run directory `run`.
pub fn metrics(run: &Path) -> String {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}/metrics.jsonl: {e}", run.display()))
}

/// A finished pretraining run in directory `dir`: `files` exist, `metrics.jsonl` has `steps` lines,
/// and the exported backbone is what `webssl embed` reads (embedding `images` beside `dir`).
/// Returns the metrics.
pub fn check_finished_run(dir: &Path, files: &[&str], steps: usize, images: &Path) -> String {
    for f in files {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let m = metrics(dir);
    assert_eq!(m.lines().count(), steps);
    let feats = dir.with_extension("embed-check.safetensors");
    ok(&run(&[
        "embed",
        "--model",
        p(&dir.join("export")),
        "--input",
        p(images),
        "--output",
        p(&feats),
    ]));
    assert!(feats.is_file());
    m
}

/// `webssl pretrain <objective> --preset <preset> --dry-run` with the repository's configs: its
/// stdout (the resolved config and the plan).
pub fn dry_run_preset(objective: &str, preset: &str) -> String {
    ok(&run(&[
        "pretrain",
        objective,
        "--preset",
        preset,
        "--dry-run",
        "--configs-dir",
        p(&configs()),
    ]))
}

/// `webssl ARGS --set SET` fails naming `field`, for each `(SET, field)` of `cases`.
pub fn rejects_sets(args: &[String], cases: &[(&str, &str)]) {
    for (set, field) in cases {
        let out = webssl().args(args).args(["--set", set]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(field), "{set}: {stderr}");
    }
}
