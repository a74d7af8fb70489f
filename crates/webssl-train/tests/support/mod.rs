//! What the multi-process equivalence tests (`dist_dino.rs`, `dist_mae.rs`, `dist_clip.rs`) share: each
//! parent test starts `mpirun -np 2` on its own test binary, running only the ignored `rank_of_two`
//! (which does nothing unless [`OUT`] is set); the ranks write their results as raw f32 files that the
//! parent compares with the one-process reference.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::Command;

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
