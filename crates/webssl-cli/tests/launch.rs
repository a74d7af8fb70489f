//! `webssl launch` and multi-process `webssl pretrain dino` as a user runs them (issue #9): a 2-rank run
//! stopped and resumed ends with the same metrics as an uninterrupted one; only rank 0 writes; a
//! checkpoint of 2 ranks refuses to resume on 1; a torchrun-style environment without an MPI launcher,
//! configs that differ between ranks, a rank that hangs and a rank that dies all end the job with a
//! clear error, in bounded time.
#![cfg(feature = "mpi")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{dino_config, ok};

fn webssl() -> Command {
    let mut cmd = support::webssl();
    // One compute thread per rank: 2 ranks on a 2-core CI machine, and bit-reproducible reductions.
    cmd.env("RAYON_NUM_THREADS", "1");
    // A broken test fails in a minute instead of the default 10.
    cmd.env("WEBSSL_COLLECTIVE_TIMEOUT", "60");
    cmd
}

/// The tiny DINOv2 run, lighter per rank: one loader worker and decode thread, 28-px crops.
fn write_config(dir: &Path, run: &str, steps: u64) -> PathBuf {
    dino_config(
        dir,
        run,
        steps,
        &[
            "data.num_workers=1",
            "data.decode_threads=1",
            "data.synth={ samples = 64, size = 40, seed = 2 }",
            "crops.global_size=28",
            "run.checkpoint_every_steps=2",
        ],
    )
}

fn launch(config: &Path, extra: &[&str]) -> Command {
    let mut cmd = webssl();
    cmd.args([
        "launch", "--nproc", "2", "--", "pretrain", "dino", "--config",
    ])
    .arg(config)
    .args(extra);
    cmd
}

#[test]
fn two_ranks_stop_and_resume_like_an_uninterrupted_run_and_refuse_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = write_config(tmp.path(), "straight", 6);
    ok(&launch(&straight, &[]).output().unwrap());
    let cut = write_config(tmp.path(), "cut", 6);
    // The first part with the AdamW moments sharded over the ranks (ZeRO-1), the rest without: the
    // checkpoint holds the whole state either way, and the update is the same.
    ok(&launch(
        &cut,
        &[
            "--stop-after",
            "3",
            "--set",
            "run.shard_optimizer_state=true",
        ],
    )
    .output()
    .unwrap());
    let out = launch(&cut, &[]).output().unwrap();
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("resumed from"), "{log}");

    // Rank 0 alone wrote the log: one line per step, and the resumed run's equals the straight one's.
    let metrics =
        |run: &str| std::fs::read_to_string(tmp.path().join(run).join("metrics.jsonl")).unwrap();
    assert_eq!(metrics("straight").lines().count(), 6);
    assert_eq!(metrics("straight"), metrics("cut"));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            tmp.path()
                .join("straight/checkpoints/step-000000006/state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2);
    assert_eq!(state["rank_loaders"].as_array().unwrap().len(), 1);
    assert_eq!(state["samples_seen"], 6 * 8);
    assert!(
        tmp.path()
            .join("straight/export/model.safetensors")
            .is_file()
    );

    // The same run dir on one process: refused, saying how to resume.
    let more = write_config(tmp.path(), "straight", 6);
    let out = webssl()
        .args(["pretrain", "dino", "--config"])
        .arg(&more)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("world size 2") && err.contains("webssl launch --nproc 2"),
        "{err}"
    );
}

#[test]
fn a_torchrun_environment_without_an_mpi_launcher_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "run", 2);
    let out = webssl()
        .args(["pretrain", "dino", "--config"])
        .arg(&config)
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "29500")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("torchrun") && err.contains("not started by an MPI launcher"),
        "{err}"
    );
}

#[test]
fn configs_that_differ_between_ranks_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "run", 2);
    let script = format!(
        "exec {} pretrain dino --config {} --set optim.lr_per_1024=0.0${{OMPI_COMM_WORLD_RANK}}5",
        env!("CARGO_BIN_EXE_webssl"),
        config.display()
    );
    // `launch` gives every rank the same command line; a per-rank one needs mpirun directly.
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", "2", "--oversubscribe", "--bind-to", "none"]);
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    let out = cmd
        .args(["sh", "-c", &script])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("differs between ranks"), "{err}");
}

/// The pid of rank `rank` of the job whose command line mentions `needle`.
fn rank_pid(needle: &str, rank: usize) -> Option<i32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let has = |hay: &[u8], s: &str| hay.split(|&b| b == 0).any(|w| w == s.as_bytes());
        let mentions = String::from_utf8_lossy(&cmdline).contains(needle);
        (mentions && has(&environ, &want)).then_some(pid)
    })
}

/// Starts a long 2-rank run, waits until it is training, sends `signal` to rank 1 and returns the
/// launcher's output and how long it took to end after the signal.
fn hurt_rank_one(signal: i32) -> (Output, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "long", 100_000);
    let child: Child = launch(&config, &[])
        .env("WEBSSL_COLLECTIVE_TIMEOUT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = tmp.path().join("long/metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let needle = config.display().to_string();
    let pid = rank_pid(&needle, 1).expect("rank 1 is running");
    unsafe { libc::kill(pid, signal) };
    let hurt = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = hurt.elapsed();
    // A stopped rank that the launcher did not reap must not outlive the test.
    if rank_pid(&needle, 1).is_some() {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    (out, took)
}

#[test]
fn a_hung_rank_ends_the_job_within_the_collective_timeout() {
    let (out, took) = hurt_rank_one(libc::SIGSTOP);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another rank died or hangs"),
        "rank 0 did not report the hang: {err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_dead_rank_ends_the_job() {
    let (out, took) = hurt_rank_one(libc::SIGKILL);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
