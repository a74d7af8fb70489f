//! End-to-end `webssl shards` runs: build with bad inputs, inspect, Fashion-MNIST import.

mod support;

use std::path::Path;
use std::process::Command;

use support::p;

fn webssl(args: &[&str]) -> (bool, String, String) {
    let out = support::run(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gray_png(w: u32, h: u32, v: u8) -> Vec<u8> {
    webssl_data::import::encode_gray_png(&vec![v; (w * h) as usize], w, h).unwrap()
}

#[test]
fn build_then_inspect_reports_skips_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("cats")).unwrap();
    std::fs::create_dir_all(src.join("dogs")).unwrap();
    std::fs::write(src.join("cats/c1.png"), gray_png(4, 4, 10)).unwrap();
    std::fs::write(src.join("cats/c2.png"), gray_png(4, 4, 20)).unwrap();
    std::fs::write(src.join("dogs/d1.png"), gray_png(4, 4, 30)).unwrap();
    std::fs::write(src.join("dogs/zero.jpg"), b"").unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = webssl(&[
        "shards",
        "build",
        "--input",
        p(&src),
        "--output",
        p(&out),
        "--class-folders",
        "--max-samples",
        "2",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kept 3 samples in 2 shards"), "{stdout}");
    assert!(
        stdout.contains("skipped 1: ") && stdout.contains("zero.jpg"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = webssl(&["shards", "inspect", p(&out), "--json"]);
    assert!(ok, "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stats["samples"], 3);
    assert_eq!(stats["shards"], 2);
    assert_eq!(stats["labels"]["0"], 2);
    assert_eq!(stats["labels"]["1"], 1);
    assert_eq!(stats["with_caption"], 3, "class name is the caption");
    assert!(stats["index_mismatches"].as_array().unwrap().is_empty());

    // A damaged shard is reported by inspect, not fatal.
    let tar = out.join("shard-000000.tar");
    let bytes = std::fs::read(&tar).unwrap();
    std::fs::write(&tar, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, stdout, _) = webssl(&["shards", "inspect", p(&out)]);
    assert!(ok);
    assert!(
        stdout.contains("index mismatch") && stdout.contains("truncated"),
        "{stdout}"
    );
}

#[test]
fn import_fashion_mnist_from_raw_idx() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 3, 4, 8, 0],
    )
    .unwrap();
    let out = dir.path().join("fm");
    let (ok, stdout, stderr) = webssl(&[
        "shards",
        "import",
        "fashion-mnist",
        "--dir",
        p(dir.path()),
        "--split",
        "test",
        "--output",
        p(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kept 3 samples"), "{stdout}");
    assert!(out.join("fashion-mnist-test-000000.tar").is_file());
    let (ok, _, stderr) = webssl(&[
        "shards",
        "import",
        "fashion-mnist",
        "--dir",
        p(&out),
        "--output",
        p(&out),
    ]);
    assert!(
        !ok && stderr.contains("train-images-idx3-ubyte"),
        "{stderr}"
    );
}

fn index_of(dir: &Path) -> webssl_data::shards::ShardIndex {
    webssl_data::shards::ShardIndex::open(dir).unwrap()
}

/// Issue #16 item 4: `webssl synth` rewriting a directory with another shard size, killed (-9)
/// once its first new shard is written, leaves the old shards and an index that still describes
/// them; the next run removes the dead run's staging directory and commits a consistent set.
#[test]
fn synth_killed_mid_rewrite_leaves_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let synth = |samples: &str, shard_size: &str| {
        Command::new(env!("CARGO_BIN_EXE_webssl"))
            .args(["synth", "--out", p(&out), "--size", "32", "--threads", "1"])
            .args(["--samples", samples, "--shard-size", shard_size])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    assert!(synth("40", "10").wait().unwrap().success());
    let old = index_of(&out);
    assert_eq!((old.shards.len(), old.total_samples()), (4, 40));

    let mut child = synth("4000", "7");
    let stage = out.join(format!(".train-staging.tmp-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !stage.join("train-000000.tar").exists() {
        assert!(std::time::Instant::now() < deadline, "no shard written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        index_of(&out),
        old,
        "the old set is intact and its index agrees"
    );
    assert!(stage.is_dir(), "the killed run's staging directory is left");

    assert!(synth("40", "7").wait().unwrap().success());
    let new = index_of(&out);
    assert_eq!((new.shards.len(), new.total_samples()), (6, 40));
    assert!(!stage.exists(), "a dead run's leftovers are removed");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar") || n.contains(".tmp-"))
        .collect();
    assert_eq!(names.len(), 6, "no stale shard or temp file: {names:?}");
}

/// Issue #16 item 8: `shards build` from tar shards keeps a sample's other members (depth and
/// segmentation maps) instead of dropping them silently.
#[test]
fn build_from_tars_keeps_extra_members() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut w = webssl_data::shards::ShardWriter::create(
        &src,
        "in",
        webssl_data::shards::ShardLimits::default(),
    )
    .unwrap();
    for i in 0..3u8 {
        w.write(
            &webssl_data::shards::Sample::new(format!("k{i}"))
                .with("png", gray_png(4, 4, i))
                .with("depth.png", gray_png(4, 4, 100 + i))
                .with("seg.png", gray_png(4, 4, 200 + i))
                .with("txt", "a caption"),
        )
        .unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) =
        webssl(&["shards", "build", "--input", p(&src), "--output", p(&out)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kept 3 samples"), "{stdout}");
    let samples: Vec<_> = webssl_data::shards::ShardReader::open(out.join("shard-000000.tar"))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(samples.len(), 3);
    for (i, s) in samples.iter().enumerate() {
        let exts: Vec<&str> = s.files.keys().map(String::as_str).collect();
        assert_eq!(exts, ["depth.png", "json", "png", "seg.png", "txt"]);
        assert_eq!(s.files["depth.png"], gray_png(4, 4, 100 + i as u8));
        assert_eq!(s.files["seg.png"], gray_png(4, 4, 200 + i as u8));
    }
}

/// Logs and progress bars written to a pipe (a file, a SLURM log, CI) carry no ANSI escape codes:
/// `shards build` logs its inputs at info and draws a progress bar. `NO_COLOR` and `RUST_LOG` are
/// cleared so the check does not pass (or filter) by accident of the environment.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.png"), gray_png(4, 4, 10)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webssl"))
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .args(["--log", "debug", "shards", "build", "--input", p(&src)])
        .args(["--output", p(&dir.path().join("out"))])
        .output()
        .expect("run webssl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("inputs: 1 folders"),
        "no log line: {stderr}"
    );
    assert!(!stderr.contains('\x1b'), "escape codes in {stderr:?}");
}
