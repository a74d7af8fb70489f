//! Hostile-but-realistic input through the binary (issue 16, items 1, 2, 6 and 7): every case ends
//! with a clear error naming the field or the files, or trains correctly — never a signal, a panic
//! or a hang — and a failed run leaves no `run.lock` behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use webssl_data::shards::{Sample, ShardLimits, ShardWriter};

mod support;

use support::webssl;

/// Runs `cmd` to completion, failing the test (and killing it) past `secs`: a hang is a failure,
/// not a stuck CI job.
fn run(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{cmd:?} still running after {secs} s: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A failed run: exit status 1 (an error, not a signal or a panic's 101) with `needles` on stderr.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", out.status);
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

/// A tiny DINO recipe over `data` (synthetic, 32 samples, when `synth`).
fn write_config(dir: &Path, data: &Path, synth: bool) -> PathBuf {
    let path = dir.join("dino.toml");
    let synth = if synth {
        "synth = { samples = 32, size = 48, seed = 2 }"
    } else {
        ""
    };
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
{synth}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
[crops]
global_size = 42
local_size = 14
n_local = 2
[heads]
dino_prototypes = 64
ibot_prototypes = 64
hidden_dim = 32
dino_bottleneck_dim = 16
ibot_bottleneck_dim = 16
[optim]
total_steps = 2
warmup_steps = 1
lr_per_1024 = 0.05
[run]
dir = "{run_dir}"
checkpoint_every_steps = 1
keep_last = 1
tensorboard = false
"#,
            data = data.display(),
            run_dir = dir.join("run").display(),
        ),
    )
    .unwrap();
    path
}

fn pretrain(cfg: &Path, sets: &[&str]) -> Command {
    let mut cmd = webssl();
    cmd.args(["pretrain", "dino", "--config"]).arg(cfg);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// Item 1: `crops.n_local = 0` is dinov2's `local_crops_number: 0` — no local-crop loss terms — and
/// trains (it used to hand an empty batch to the GEMM: a segfault, `run.lock` left behind).
#[test]
fn zero_local_crops_train() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &tmp.path().join("data"), true);
    let out = run(&mut pretrain(&cfg, &["crops.n_local=0"]), 300);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(tmp.path().join("run/export/model.safetensors").is_file());
    assert!(!tmp.path().join("run/run.lock").exists());
}

/// Item 6: every value of the issue is refused before any work — `--dry-run` included — naming
/// the field; none reaches a kernel.
#[test]
fn out_of_range_values_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &tmp.path().join("data"), true);
    let cases = [
        ("heads.dino_prototypes=0", "must be ≥ 1, got 0"),
        ("heads.hidden_dim=0", "must be ≥ 1, got 0"),
        ("heads.dino_bottleneck_dim=0", "must be ≥ 1, got 0"),
        ("loss.student_temp=0", "finite number in (0"),
        ("model.patch_size=0", "must be ≥ 1, got 0"),
        ("optim.lr_per_1024=-1", "got -1"),
        ("optim.weight_decay=-1", "got -1"),
        ("optim.momentum_teacher=2", "[0, 1], got 2"),
        ("optim.total_steps=0", "must be ≥ 1, got 0"),
        ("model.layerscale_init=nan", "got NaN"),
        ("model.img_size=280000", "must be ≤ 8192"),
    ];
    for (set, reason) in cases {
        let field = set.split('=').next().unwrap();
        for dry_run in [true, false] {
            let mut cmd = pretrain(&cfg, &[set]);
            if dry_run {
                cmd.arg("--dry-run");
            }
            let out = run(&mut cmd, 60);
            assert_error(&out, &[&format!("`{field}`"), reason]);
        }
    }
    // Nothing was started: no run dir, no data generated.
    assert!(!tmp.path().join("run").exists() && !tmp.path().join("data").exists());
}

/// Item 6: dinov2 drops the last incomplete batch, so a data set smaller than one global batch gives
/// no step at all: an error naming `data.batch_size` and the data set's size, no lock left.
#[test]
fn a_batch_larger_than_the_data_set_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &tmp.path().join("data"), true);
    let out = run(&mut pretrain(&cfg, &["data.batch_size=40"]), 300);
    assert_error(&out, &["`data.batch_size`", "40", "32 samples"]);
    assert!(!tmp.path().join("run/run.lock").exists());
}

/// Item 2: shards in which no image decodes. `pretrain` and `shards bench` used to spin forever;
/// now both stop after a whole pass with an error naming the shards, and the run's lock is gone.
#[test]
fn shards_without_a_decodable_image_end_with_an_error_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("junk");
    let limits = ShardLimits {
        max_samples: Some(10),
        max_bytes: None,
    };
    let mut w = ShardWriter::create(&data, "junk", limits).unwrap();
    for i in 0..30 {
        let jpg = b"\xff\xd8\xff\xe0 not a jpeg at all".to_vec();
        w.write(&Sample::new(format!("s{i:04}")).with("jpg", jpg))
            .unwrap();
    }
    w.finish().unwrap().save(&data).unwrap();

    let cfg = write_config(tmp.path(), &data, false);
    let out = run(&mut pretrain(&cfg, &[]), 300);
    assert_error(
        &out,
        &[
            "no sample could be used",
            "junk-000000.tar",
            "cannot decode",
        ],
    );
    assert!(!tmp.path().join("run/run.lock").exists());

    let mut bench = webssl();
    bench.args(["shards", "bench"]).arg(&data).args([
        "--batch-size",
        "4",
        "--size",
        "28",
        "--local-size",
        "14",
    ]);
    let out = run(&mut bench, 300);
    assert_error(&out, &["no sample could be used", "junk-00000"]);
}

/// Item 6: `embed --resolution 0` (and a side no image could have) is refused by name before the
/// model is even read.
#[test]
fn embed_resolution_out_of_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for res in ["0", "100000"] {
        let mut cmd = webssl();
        cmd.args(["embed", "--model"])
            .arg(tmp.path().join("no-model"))
            .args(["--input"])
            .arg(tmp.path())
            .args(["--output"])
            .arg(tmp.path().join("f.npy"))
            .args(["--resolution", res]);
        let out = run(&mut cmd, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "clap's usage error: {stderr}");
        assert!(stderr.contains("--resolution"), "{stderr}");
    }
}
