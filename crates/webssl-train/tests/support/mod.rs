//! What the multi-process equivalence tests (`dist_dino.rs`, `dist_mae.rs`, `dist_clip.rs`) share: each
//! parent test starts `mpirun -np 2` on its own test binary, running only the ignored `rank_of_two`
//! (which does nothing unless [`OUT`] is set); the ranks write their results as raw f32 files that the
//! parent compares with the one-process reference. Also the tiny DINOv2 recipe and hand-made batches
//! of `dist_dino.rs`, which `mixed_precision.rs` trains too.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::Command;

use webssl_data::loader::{Batch, ViewGroup};
use webssl_data::masks::IbotMasks;
use webssl_train::dino::DinoConfig;
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

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The recipe, with `batch` images per process (the lr scales with the global batch), optionally with
/// the AdamW moments sharded over the ranks (ZeRO-1).
pub fn dino_config(dir: &Path, batch: usize, sharded: bool) -> DinoConfig {
    // Per process: the two ranks write their configs at the same time.
    let file = dir.join(format!(
        "dist-{batch}-{sharded}-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &file,
        format!(
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
        ),
    )
    .unwrap();
    let (cfg, _): (DinoConfig, toml::Table) = load_config(Some(&file), dir, None, &[]).unwrap();
    cfg
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
