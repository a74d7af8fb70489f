//! Issue #20: a DINOv2 run is reproducible as a user runs it, at more than one thread. A demo-like
//! config (configs/demo.toml: 84 + 42 px crops, 6 blocks, 1024 prototypes, Sinkhorn-Knopp targets;
//! here batches of 16 for 20 steps on 128 images, a checkpoint every 5 steps, no kNN report) run
//! twice as separate processes at 2 threads gives byte-identical metrics.jsonl, checkpoints and
//! exported teacher; a run killed with SIGKILL after its first checkpoint and restarted with
//! `--resume auto` at 2 threads equals the uninterrupted one; and since no reduction order follows
//! the thread count, a run at 1 thread equals them too. Batches of 16 give the kernels 19 chunks of
//! rows per global-crop LayerNorm, so an order that followed the scheduling would show. (Before the fix, the 2-thread runs differed from step 1:
//! `grad_norm_backbone` in the 12th digit, from LayerNorm and bias gradients summed over rayon's
//! scheduling order.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{configs, kill_when, metrics, ok, webssl};

const STEPS: i64 = 20;
const EVERY: i64 = 5;

/// configs/demo.toml as a 20-step run of batches of 16 in `dir/<run>` on 128 synthetic images in
/// `dir/data`, keeping every checkpoint, without the kNN report; written to `dir/<run>.toml`.
fn demo_like(dir: &Path, run: &str) -> PathBuf {
    let text = std::fs::read_to_string(configs().join("demo.toml")).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    cfg.remove("eval");
    let section = |cfg: &toml::Table, name: &str| cfg[name].as_table().unwrap().clone();
    let mut data = section(&cfg, "data");
    data.insert(
        "train".into(),
        dir.join("data").display().to_string().into(),
    );
    data.insert("batch_size".into(), 16.into());
    let mut synth = data["synth"].as_table().unwrap().clone();
    synth.insert("samples".into(), 128.into());
    data.insert("synth".into(), synth.into());
    let mut optim = section(&cfg, "optim");
    for (k, v) in [
        ("total_steps", STEPS),
        ("warmup_steps", 5),
        ("freeze_last_layer_steps", 5),
    ] {
        optim.insert(k.into(), v.into());
    }
    let mut run_t = section(&cfg, "run");
    run_t.insert("dir".into(), dir.join(run).display().to_string().into());
    run_t.insert("checkpoint_every_steps".into(), EVERY.into());
    run_t.insert("keep_last".into(), (STEPS / EVERY).into());
    run_t.insert("tensorboard".into(), false.into());
    let mut loss = section(&cfg, "loss");
    loss.insert("teacher_temp_warmup_steps".into(), 10.into());
    for (name, t) in [
        ("data", data),
        ("optim", optim),
        ("run", run_t),
        ("loss", loss),
    ] {
        cfg.insert(name.into(), t.into());
    }
    let path = dir.join(format!("{run}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn pretrain(config: &Path, threads: usize) -> Command {
    let mut cmd = webssl();
    cmd.args(["pretrain", "dino", "--config"])
        .arg(config)
        .env("RAYON_NUM_THREADS", threads.to_string());
    cmd
}

/// Every file of the run's checkpoints and export, by path relative to the run directory.
fn artefacts(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["checkpoints", "export"] {
        let mut stack = vec![run.join(sub)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(run).unwrap().display().to_string();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
    }
    out.sort();
    out
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.lines().count(), STEPS as usize, "{what}");
    if let Some((i, (x, y))) = ma
        .lines()
        .zip(mb.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
    {
        panic!(
            "{what}: metrics.jsonl differs from step {}:\n{x}\n{y}",
            i + 1
        );
    }
    assert_eq!(ma, mb, "{what}: metrics.jsonl");
    let (fa, fb) = (artefacts(a), artefacts(b));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "{what}: checkpoint / export files");
    assert!(fa.iter().any(|(n, _)| n.ends_with("model.safetensors")));
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{what}: {name} differs");
    }
}

#[test]
fn demo_runs_are_byte_identical_at_2_threads_after_kill_and_resume_and_at_1_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for run in ["a", "b"] {
        ok(&pretrain(&demo_like(dir, run), 2).output().unwrap());
    }
    assert_same_run(&dir.join("a"), &dir.join("b"), "two processes at 2 threads");

    // SIGKILL as soon as the first checkpoint is complete, then `--resume auto`.
    let killed = demo_like(dir, "killed");
    let ckpts = dir.join("killed/checkpoints");
    let first = || {
        std::fs::read_dir(&ckpts)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("step-")
                        && e.path().join("COMPLETE").is_file()
                })
            })
            .unwrap_or(false)
    };
    kill_when(pretrain(&killed, 2), first, Duration::from_secs(600));
    let partial = std::fs::read_to_string(dir.join("killed/metrics.jsonl")).unwrap_or_default();
    assert!(
        partial.lines().count() < STEPS as usize,
        "the process finished before it was killed"
    );
    let mut resume = pretrain(&killed, 2);
    resume.args(["--resume", "auto"]);
    ok(&resume.output().unwrap());
    assert_same_run(
        &dir.join("a"),
        &dir.join("killed"),
        "kill -9 + resume at 2 threads",
    );

    ok(&pretrain(&demo_like(dir, "t1"), 1).output().unwrap());
    assert_same_run(&dir.join("a"), &dir.join("t1"), "1 vs 2 threads");
}
