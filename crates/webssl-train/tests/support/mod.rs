//! What the multi-process equivalence tests (`dist_dino.rs`, `dist_mae.rs`, `dist_clip.rs`) share: each
//! parent test starts `mpirun -np 2` on its own test binary, running only the ignored `rank_of_two`
//! (which does nothing unless [`OUT`] is set); the ranks write their results as raw f32 files that the
//! parent compares with the one-process reference. Also the tiny DINOv2 recipe and hand-made batches
//! of `dist_dino.rs`, which `mixed_precision.rs` trains too, and what the end-to-end resume tests
//! (`dino_resume.rs`, `mae_resume.rs`, `clip_resume.rs`) share: the tiny run's common sections
//! ([`tiny_config`]) and the straight-vs-interrupted skeleton ([`straight_and_resumed`]); and the
//! reference fixtures of the parity tests (`objectives.rs`, `mae.rs`, `clip.rs`): [`fixture`],
//! [`read`], [`tensor`], [`assert_close`].
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde::de::DeserializeOwned;

use burn::tensor::{Device, Tensor, TensorData};
use webssl_data::loader::{Batch, ViewGroup};
use webssl_data::masks::IbotMasks;
use webssl_models::checkpoint::store::TensorStore;
use webssl_train::Recipe;
use webssl_train::dino::DinoConfig;
use webssl_train::dist::Dist;
use webssl_train::run::TrainOutcome;
use webssl_train::run::checkpoint::Resume;
use webssl_train::run::config::load_config;

/// The directory the ranks write to; unset in an ordinary test run.
pub const OUT: &str = "WEBSSL_DIST_TEST_OUT";

/// Runs this test binary's ignored `rank_of_two` as 2 MPI ranks writing to `out`, single-threaded per
/// rank (2 ranks on a 2-core CI machine, reproducible reductions); panics unless the job succeeds.
pub fn run_two_ranks(out: &Path) {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", "2", "--oversubscribe", "--bind-to", "none"]);
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    let status = cmd
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "rank_of_two", "--nocapture"])
        .env("RAYON_NUM_THREADS", "1")
        .env(OUT, out)
        .env("WEBSSL_COLLECTIVE_TIMEOUT", "120")
        .status()
        .expect("mpirun (Open MPI) must be installed for the `mpi` feature's tests");
    assert!(status.success(), "the 2-rank job failed: {status}");
}

/// Deterministic irregular values in [-1, 1) (xorshift).
pub fn fill(n: usize, salt: u64) -> Vec<f32> {
    let mut x = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// ZeRO-1 against the unsharded 2-rank run: the same update computed by each parameter's owner, so
/// both sharded ranks' parameters (`params-{sharded}{r}.bin`) are bit-identical to the unsharded
/// rank 0's `rank0`, while each rank keeps moments for its share only (`states-{sharded}{r}`), every
/// parameter exactly once; the unsharded rank keeps them all (`states-{unsharded}0` = `ref_states`,
/// the one-process count).
pub fn assert_zero1_shares(
    dir: &Path,
    rank0: &[f32],
    ref_states: usize,
    unsharded: &str,
    sharded: &str,
) {
    for r in 0..2 {
        let params = read_f32(&dir.join(format!("params-{sharded}{r}.bin")));
        assert!(
            params == rank0,
            "ZeRO-1 rank {r} differs from the unsharded run"
        );
    }
    let states = |tag: String| -> usize {
        std::fs::read_to_string(dir.join(format!("states-{tag}")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(states(format!("{unsharded}0")), ref_states);
    let (s0, s1) = (states(format!("{sharded}0")), states(format!("{sharded}1")));
    assert!(
        s0 > 0 && s1 > 0 && s0 < ref_states && s1 < ref_states,
        "{s0} {s1} of {ref_states}"
    );
    assert_eq!(s0 + s1, ref_states, "every parameter has exactly one owner");
    eprintln!(
        "ZeRO-1: moments of {s0} + {s1} of {ref_states} parameters; models bit-identical to the unsharded run"
    );
}

/// Steps of the whole runs of `dist_mae.rs` / `dist_clip.rs` (checkpoints every 2).
pub const RUN_STEPS: u64 = 4;

/// The `--set` overrides of a whole run `name` in `dir` on small built-in data: [`RUN_STEPS`] steps,
/// a checkpoint every 2, single-threaded loading, no TensorBoard.
pub fn whole_run_overrides(dir: &Path, name: &str) -> Vec<String> {
    let d = |s: &str| dir.join(s).display().to_string();
    vec![
        format!("data.train=\"{}\"", d("data")),
        "data.synth={ samples = 16, size = 32, seed = 5 }".into(),
        "data.num_workers=1".into(),
        "data.decode_threads=1".into(),
        "data.shuffle_buffer=4".into(),
        format!("optim.total_steps={RUN_STEPS}"),
        format!("run.dir=\"{}\"", d(name)),
        "run.checkpoint_every_steps=2".into(),
        "run.tensorboard=false".into(),
    ]
}

/// Whole runs under `dir` that switch sharding at a resume (`zero-first`, `zero-second`) end like the
/// `straight` run of [`RUN_STEPS`] steps, bit for bit (metrics and export); the sharded checkpoint at
/// step 2 holds the whole optimizer state, as the unsharded one does.
pub fn assert_resumes_switching_sharding(dir: &Path) {
    let file = |run: &str, path: &str| std::fs::read(dir.join(run).join(path)).unwrap();
    let straight = file("straight", "metrics.jsonl");
    assert_eq!(
        straight.iter().filter(|&&b| b == b'\n').count(),
        RUN_STEPS as usize
    );
    for run in ["zero-first", "zero-second"] {
        assert!(
            file(run, "metrics.jsonl") == straight,
            "{run}: metrics differ from the straight run"
        );
        assert!(
            file(run, "export/model.safetensors") == file("straight", "export/model.safetensors"),
            "{run}: export differs from the straight run"
        );
    }
    let step2 = "checkpoints/step-000000002/optim.safetensors";
    assert!(
        file("zero-first", step2) == file("straight", step2),
        "the sharded run's checkpoint does not hold the whole optimizer state"
    );
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Writes `recipe` (TOML) to a file of its own under `dir` — named by `tag` and this process, since the
/// ranks of a job write theirs at the same time — and loads it as `webssl pretrain --config` does, with
/// `overrides` in `--set` syntax.
pub fn load_recipe<T: DeserializeOwned + Serialize>(
    dir: &Path,
    tag: &str,
    recipe: &str,
    overrides: &[String],
) -> (T, toml::Table) {
    let file = dir.join(format!("{tag}-{}.toml", std::process::id()));
    std::fs::write(&file, recipe).unwrap();
    load_config(Some(&file), dir, None, overrides).unwrap()
}

/// The recipe, with `batch` images per process (the lr scales with the global batch), optionally with
/// the AdamW moments sharded over the ranks (ZeRO-1).
pub fn dino_config(dir: &Path, batch: usize, sharded: bool) -> DinoConfig {
    let recipe = format!(
        r#"
seed = 7
[data]
train = "{dir}/unused"
batch_size = {batch}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
drop_path_rate = 0.0
[crops]
global_size = 28
local_size = 14
n_local = 2
[heads]
dino_prototypes = 48
ibot_prototypes = 40
hidden_dim = 32
dino_bottleneck_dim = 16
ibot_bottleneck_dim = 16
ibot_separate_head = true
[loss]
centering = "sinkhorn_knopp"
koleo_weight = 0.0
teacher_temp_warmup_steps = 2
[optim]
total_steps = 10
warmup_steps = 1
lr_per_1024 = 0.5
[run]
dir = "{dir}/run"
shard_optimizer_state = {sharded}
"#,
        dir = dir.display()
    );
    load_recipe(dir, &format!("dist-{batch}-{sharded}"), &recipe, &[]).0
}

/// Global batch `step` of 2·`per_rank` images (views and iBOT masks), or rank `rank`'s slice of it:
/// images `rank·per_rank .. (rank+1)·per_rank`, in every view. In step 0 the second half of the images has no masked
/// patch, so rank 1 has none at all while rank 0 has some.
pub fn dino_batch(cfg: &DinoConfig, per_rank: usize, step: u64, part: Option<usize>) -> Batch {
    let bg = 2 * per_rank;
    let (g, l, nl) = (
        cfg.crops.global_size as usize,
        cfg.crops.local_size as usize,
        cfg.crops.n_local,
    );
    let n_tokens = (g / 14) * (g / 14);
    let global = fill(2 * bg * 3 * g * g, 100 + step);
    let local = fill(nl * bg * 3 * l * l, 200 + step);
    let mask: Vec<bool> = (0..2 * bg * n_tokens)
        .map(|i| {
            let (row, tok) = (i / n_tokens, i % n_tokens);
            let image = row % bg;
            !(step == 0 && image >= per_rank) && (tok + row + step as usize).is_multiple_of(3)
        })
        .collect();
    let (images, first) = match part {
        None => (bg, 0),
        Some(r) => (per_rank, r * per_rank),
    };
    // view-major rows: view v of image i at row v·bg + i
    let take = |values: &[f32], views: usize, per: usize| -> Vec<f32> {
        (0..views)
            .flat_map(|v| {
                let start = (v * bg + first) * per;
                values[start..start + images * per].to_vec()
            })
            .collect()
    };
    let masks: Vec<bool> = (0..2)
        .flat_map(|v| {
            let start = (v * bg + first) * n_tokens;
            mask[start..start + images * n_tokens].to_vec()
        })
        .collect();
    Batch {
        index: step,
        batch_size: images,
        groups: Vec::<ViewGroup>::new(),
        views: vec![take(&global, 2, 3 * g * g), take(&local, nl, 3 * l * l)],
        keys: Vec::new(),
        addrs: Vec::new(),
        captions: Vec::new(),
        labels: Vec::new(),
        ibot: Some(IbotMasks::from_masks(masks, 2 * images, n_tokens, n_tokens)),
        mae: None,
    }
}

/// The tiny run of the resume tests around the objective's `sections` (`[model]`, `[optim]`, …),
/// loaded with the `extra` overrides: seed 3, 24 built-in 32-px images in `data`, 4 per step from
/// two loader workers, the run dir `dir/<run>` with a checkpoint every 2 steps (the last 2 kept),
/// TensorBoard as `tensorboard` says.
pub fn tiny_config<T: DeserializeOwned + Serialize>(
    dir: &Path,
    data: &Path,
    run: &str,
    tensorboard: bool,
    sections: &str,
    extra: &[&str],
) -> (T, toml::Table) {
    let recipe = format!(
        r#"
seed = 3
[data]
train = "{data}"
batch_size = 4
num_workers = 2
shuffle_buffer = 8
decode_threads = 2
synth = {{ samples = 24, size = 32, seed = 5 }}
[run]
dir = "{run}"
checkpoint_every_steps = 2
keep_last = 2
tensorboard = {tensorboard}
{sections}"#,
        data = data.display(),
        run = dir.join(run).display(),
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    load_recipe(dir, "tiny", &recipe, &overrides)
}

/// Trains `cfg` (resolved as `resolved`) from scratch on one process.
pub fn train_fresh<C: Recipe>(cfg: &C, resolved: &toml::Table) -> TrainOutcome {
    cfg.train(
        resolved,
        Resume::Never,
        &Device::flex(),
        None,
        &Dist::single(),
    )
    .unwrap()
}

/// `config` with `extra` overrides before each call's own (e.g. gradient accumulation).
pub fn with_overrides<'a, C>(
    config: impl Fn(&str, &[&str]) -> (C, toml::Table) + 'a,
    extra: &'a [&'a str],
) -> impl Fn(&str, &[&str]) -> (C, toml::Table) + 'a {
    move |run, own| {
        let all: Vec<&str> = extra.iter().chain(own).copied().collect();
        config(run, &all)
    }
}

/// Trains the run of `config(run, overrides)` (the recipe of run dir `run`) on one process.
fn train_tiny<C: Recipe>(
    config: &impl Fn(&str, &[&str]) -> (C, toml::Table),
    run: &str,
    overrides: &[&str],
    resume: Resume,
    stop_after: Option<u64>,
) -> (u64, webssl_train::Result<TrainOutcome>) {
    let (cfg, resolved) = config(run, overrides);
    let outcome = cfg.train(
        &resolved,
        resume,
        &Device::flex(),
        stop_after,
        &Dist::single(),
    );
    (cfg.total_steps(), outcome)
}

/// The resume skeleton: `config(run, overrides)` gives the recipe of run dir `run`. Trains
/// `straight` through and `interrupted` stopped after 3 steps, then resumed; the resumed run's
/// metrics equal the straight one's line for line. Returns the straight and the resumed outcome.
pub fn straight_and_resumed<C: Recipe>(
    config: impl Fn(&str, &[&str]) -> (C, toml::Table),
) -> (TrainOutcome, TrainOutcome) {
    let (total, straight) = train_tiny(&config, "straight", &[], Resume::Never, None);
    let straight = straight.unwrap();
    assert_eq!(straight.steps, total);
    let first = train_tiny(&config, "interrupted", &[], Resume::Auto, Some(3))
        .1
        .unwrap();
    assert_eq!(first.steps, 3);
    let resumed = train_tiny(&config, "interrupted", &[], Resume::Auto, None)
        .1
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(3));

    let a = std::fs::read_to_string(straight.run_dir.join("metrics.jsonl")).unwrap();
    let b = std::fs::read_to_string(resumed.run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(a.lines().count() as u64, total);
    assert_eq!(a, b, "resumed metrics differ from the uninterrupted run");
    (straight, resumed)
}

/// After [`straight_and_resumed`]: `interrupted` with the `changed` override (another recipe)
/// refuses to resume from its checkpoints.
pub fn assert_refuses_a_changed_recipe<C: Recipe>(
    config: impl Fn(&str, &[&str]) -> (C, toml::Table),
    changed: &str,
) {
    let err = train_tiny(&config, "interrupted", &[changed], Resume::Auto, None)
        .1
        .unwrap_err()
        .to_string();
    assert!(err.contains("different recipe"), "{err}");
}

/// `fixtures/<rel>` at the repository root (written by the scripts beside them).
pub fn fixture_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// The fixture tensors of `fixtures/<rel>`.
pub fn fixture(rel: &str) -> TensorStore {
    TensorStore::open_file(&fixture_path(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A fixture tensor's shape and values; panics naming the key.
pub fn read(s: &TensorStore, key: &str) -> (Vec<usize>, Vec<f32>) {
    s.read_f32(key).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// A fixture tensor of rank `D` on `device`.
pub fn tensor<const D: usize>(s: &TensorStore, key: &str, device: &Device) -> Tensor<D> {
    let (shape, v) = read(s, key);
    assert_eq!(shape.len(), D, "{key}");
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Every value of `got` finite and within `tol · max|want|` of `want`; a failure names the worst
/// element.
#[track_caller]
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want
        .iter()
        .fold(0f64, |m, &w| m.max((w as f64).abs()))
        .max(1e-30);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{name}[{i}] = {g}");
        let d = (g as f64 - w as f64).abs();
        if d > worst {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= tol * scale,
        "{name}: max |diff| {worst:.3e} at {at} (got {}, want {}) > {tol:e} · {scale:.3e}",
        got[at],
        want[at]
    );
}
