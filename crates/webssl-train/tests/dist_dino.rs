//! Data-parallel DINOv2 across processes (issue #9): 2 MPI ranks × batch B reproduce 1 process ×
//! batch 2B over a few optimizer steps, to float tolerance.
//!
//! The parent test starts `mpirun -np 2` on this very test binary, running only the ignored
//! [`rank_of_two`] (which does nothing unless `WEBSSL_DIST_TEST_OUT` is set); each rank trains on its
//! slice of the same hand-made global batches and writes its student parameters. The parent trains the
//! 1-process reference on the whole batches in-process and compares.
//!
//! What makes the two equal (and what the test therefore checks): gradients averaged over ranks before
//! clipping, Sinkhorn-Knopp with the total mass, the per-prototype shift and row sums reduced over ranks
//! and the global row count, iBOT with the global masked count (a rank with no masked patch at all still
//! takes part), the EMA teacher on identical students. KoLeo is per rank by design (dinov2: its
//! neighbours are the local batch), so it is off here; drop path is off (its sample draws are per rank).
//! Single-threaded (`RAYON_NUM_THREADS=1`) so that the only differences are the summation orders that
//! splitting a batch changes.
#![cfg(feature = "mpi")]

mod support;

use std::path::Path;

use burn::tensor::Device;
use support::{OUT, dino_batch, dino_config, read_f32, write_f32};
use webssl_models::checkpoint;
use webssl_train::dino::{DinoConfig, DinoTrainer};
use webssl_train::dist::Dist;

const B: usize = 4; // images per rank
const STEPS: u64 = 3;
/// The logged values compared per step: the losses and the norms of the rank-averaged gradients.
const LOGGED: [&str; 6] = [
    "loss",
    "dino_loss",
    "ibot_loss",
    "grad_norm_backbone",
    "grad_norm_dino_head",
    "grad_norm_ibot_head",
];

/// Trains `STEPS` steps (the whole batches on one process, or this rank's slices) and returns the
/// student's parameters flattened, plus the logged values per step (`LOGGED` order).
fn train(cfg: &DinoConfig, dist: &Dist) -> (Vec<f32>, Vec<f64>, usize) {
    let device = Device::flex();
    let mut trainer = DinoTrainer::new(cfg, dist, &device).unwrap();
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let part = (dist.world_size() > 1).then(|| dist.rank());
        let b = dino_batch(cfg, B, step, part);
        let values;
        (trainer, values) = trainer.step(step, std::slice::from_ref(&b), dist).unwrap();
        for name in LOGGED {
            losses.push(values.iter().find(|(k, _)| *k == name).unwrap().1);
        }
    }
    let params = checkpoint::named_parameters(&trainer.student)
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
    (params, losses, trainer.optimizer_states())
}

/// One rank of the job the parent test launches.
#[test]
#[ignore = "a rank of `two_ranks_of_b_reproduce_one_process_of_2b`, started by it under mpirun"]
fn rank_of_two() {
    let Some(out) = std::env::var_os(OUT) else {
        return;
    };
    let out = Path::new(&out);
    let dist = Dist::from_env().unwrap();
    assert_eq!(dist.world_size(), 2);
    for sharded in [false, true] {
        let cfg = dino_config(out, B, sharded);
        let (params, losses, states) = train(&cfg, &dist);
        let tag = format!("{sharded}-{}", dist.rank());
        write_f32(&out.join(format!("params-{tag}.bin")), &params);
        let bytes: Vec<u8> = losses.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(out.join(format!("logged-{tag}.bin")), bytes).unwrap();
        std::fs::write(out.join(format!("states-{tag}")), states.to_string()).unwrap();
    }
}

#[test]
fn two_ranks_of_b_reproduce_one_process_of_2b() {
    let tmp = tempfile::tempdir().unwrap();
    support::run_two_ranks(tmp.path());

    // One process with the whole global batch: batch_size 2B.
    let cfg = dino_config(tmp.path(), 2 * B, false);
    let (reference, ref_losses, ref_states) = train(&cfg, &Dist::single());
    let rank0 = read_f32(&tmp.path().join("params-false-0.bin"));
    let rank1 = read_f32(&tmp.path().join("params-false-1.bin"));
    assert_eq!(rank0, rank1, "the two ranks' students differ");
    assert_eq!(rank0.len(), reference.len());

    // Training moved the parameters (the comparison is not between two copies of the init).
    let init = {
        let t = DinoTrainer::new(&cfg, &Dist::single(), &Device::flex()).unwrap();
        checkpoint::named_parameters(&t.student)
            .into_iter()
            .flat_map(|(_, _, v)| v)
            .collect::<Vec<f32>>()
    };
    let moved = init
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "training did not move the parameters ({moved})"
    );

    // Logged values every step: losses (which, from step 1 on, depend on the updated parameters) and
    // the norms of the averaged gradients.
    let logged: Vec<f64> = std::fs::read(tmp.path().join("logged-false-0.bin"))
        .unwrap()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(logged.len(), ref_losses.len());
    for (i, (a, b)) in logged.iter().zip(&ref_losses).enumerate() {
        let (step, name) = (i / LOGGED.len(), LOGGED[i % LOGGED.len()]);
        eprintln!("step {step} {name}: 2 ranks {a:.9} / 1 process {b:.9}");
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
            "step {step}: {name} {a} (2 ranks) vs {b} (1 process)"
        );
    }

    // Parameters: AdamW's first updates are ±lr for any gradient, so a gradient that is ~0 up to
    // summation order can move a parameter either way; compare the distance to the reference with the
    // distance travelled.
    let dist2 = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (off, travelled) = (dist2(&rank0, &reference), dist2(&init, &reference));
    eprintln!("‖2 ranks − 1 process‖ = {off:.3e}, ‖trained − init‖ = {travelled:.3e}");
    assert!(
        off < 1e-3 * travelled,
        "2 ranks × B end {off} away from 1 process × 2B (travelled {travelled})"
    );

    // ZeRO-1: the same update computed by each parameter's owner, so the students are bit-identical
    // to the unsharded 2-rank run, while each rank keeps moments for its share only.
    support::assert_zero1_shares(tmp.path(), &rank0, ref_states, "false-", "true-");
}
