//! Data-parallel MAE across processes (issue #9): 2 MPI ranks × batch B reproduce 1 process × batch
//! 2B over a few optimizer steps, to float tolerance.
//!
//! Same harness as `dist_dino.rs`: the parent test starts `mpirun -np 2` on this very test binary,
//! running only the ignored [`rank_of_two`] (which does nothing unless `WEBSSL_DIST_TEST_OUT` is set);
//! each rank trains on its slice (images `r·B .. (r+1)·B`, with their masks) of the same hand-made
//! global batches and writes its parameters and logged values. The parent trains the 1-process
//! reference on the whole batches in-process and compares.
//!
//! What makes the two equal (and what the test therefore checks): gradients averaged over ranks
//! *before* the global-norm clipping (the clip threshold is set low enough that it scales every step,
//! so clipping per rank first would show), the loss a mean over equal per-rank batches with the same
//! number of removed patches per image, and the lr scaled by the global batch on both sides.
//! Single-threaded children (`RAYON_NUM_THREADS=1`), so the only differences are the summation orders
//! that splitting a batch changes.
//!
//! ZeRO-1 (`run.shard_optimizer_state`): the ranks run the same job again with the AdamW moments
//! sharded; each parameter is stepped by its owner and copied to the other rank, so the models and
//! logged values must be bit-identical to the unsharded 2-rank run, with every parameter's moments
//! kept by exactly one rank.
//! Then whole runs through `Recipe::train` on built-in data (the shared loop of `run::driver`):
//! stopped at step 2 and resumed with the sharding switched either way, they end with the straight
//! unsharded run's metrics.jsonl and export, bit for bit, and the sharded checkpoint holds the
//! whole optimizer state.
#![cfg(feature = "mpi")]

mod support;

use std::path::Path;

use burn::tensor::Device;
use support::{OUT, fill, load_recipe, max_abs_diff, read_f32, write_f32};
use webssl_data::loader::{Batch, ViewGroup};
use webssl_data::masks::{MaeMasks, mae_random_mask};
use webssl_data::sampler::rng_stream;
use webssl_models::checkpoint;
use webssl_train::Recipe;
use webssl_train::dist::Dist;
use webssl_train::mae::{MaeConfig, MaeTrainer};
use webssl_train::run::checkpoint::Resume;

const B: usize = 3; // images per rank
const STEPS: u64 = 3;
const SIZE: usize = 28;
const PATCH: usize = 7;
const CLIP_GRAD: f64 = 0.05;

/// The run config with `batch` images per process.
fn config(dir: &Path, batch: usize, sharded: bool) -> MaeConfig {
    config_with(dir, batch, sharded, &[]).0
}

/// [`config`] with `overrides` (`--set` syntax), and the resolved table.
fn config_with(
    dir: &Path,
    batch: usize,
    sharded: bool,
    overrides: &[String],
) -> (MaeConfig, toml::Table) {
    let recipe = format!(
        r#"
seed = 11
[data]
train = "{dir}/unused"
batch_size = {batch}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
patch_size = {PATCH}
[decoder]
embed_dim = 16
depth = 1
num_heads = 2
[crop]
size = {SIZE}
[optim]
total_steps = 10
warmup_steps = 1
lr_per_256 = 2.0
clip_grad = {CLIP_GRAD}
[run]
dir = "{dir}/run"
shard_optimizer_state = {sharded}
"#,
        dir = dir.display()
    );
    load_recipe(dir, &format!("dist-{batch}-{sharded}"), &recipe, overrides)
}

/// A whole run `name` through `Recipe::train` on built-in data in `dir`, as this rank of `dist`, to
/// `stop_after` steps (resuming from the run's latest checkpoint).
fn whole_run(dir: &Path, name: &str, sharded: bool, stop_after: Option<u64>, dist: &Dist) {
    let overrides = support::whole_run_overrides(dir, name);
    let (cfg, resolved) = config_with(dir, B, sharded, &overrides);
    cfg.train(&resolved, Resume::Auto, &Device::flex(), stop_after, dist)
        .unwrap();
}

/// Global batch `step` of 2B images with one random MAE mask each, or rank `rank`'s slice of it
/// (images `rank·B .. (rank+1)·B`).
fn batch(cfg: &MaeConfig, step: u64, part: Option<usize>) -> Batch {
    let per = 3 * SIZE * SIZE;
    let n_tokens = (SIZE / PATCH) * (SIZE / PATCH);
    let images = fill(2 * B * per, 300 + step);
    let masks: Vec<_> = (0..2 * B as u64)
        .map(|i| {
            mae_random_mask(
                n_tokens,
                cfg.loss.mask_ratio,
                &mut rng_stream(99, "mae", &[step, i]),
            )
        })
        .collect();
    let (n, first) = match part {
        None => (2 * B, 0),
        Some(r) => (B, r * B),
    };
    Batch {
        index: step,
        batch_size: n,
        groups: Vec::<ViewGroup>::new(),
        views: vec![images[first * per..(first + n) * per].to_vec()],
        keys: Vec::new(),
        addrs: Vec::new(),
        captions: Vec::new(),
        labels: Vec::new(),
        ibot: None,
        mae: Some(MaeMasks::stack(&masks[first..first + n])),
    }
}

/// Trains `STEPS` steps (the whole batches on one process, or this rank's slices) and returns the
/// parameters flattened, the logged loss and grad norm per step, and how many parameters this rank
/// keeps AdamW moments for.
fn train(cfg: &MaeConfig, dist: &Dist) -> (Vec<f32>, Vec<f64>, Vec<f64>, usize) {
    let mut trainer = MaeTrainer::new(cfg, dist, &Device::flex()).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let get = |values: &[(&str, f64)], k: &str| values.iter().find(|(n, _)| *n == k).unwrap().1;
    for step in 0..STEPS {
        let part = (dist.world_size() > 1).then(|| dist.rank());
        let values;
        (trainer, values) = trainer.step(step, &[batch(cfg, step, part)], dist).unwrap();
        losses.push(get(&values, "loss"));
        norms.push(get(&values, "grad_norm"));
    }
    let params = checkpoint::named_parameters(&trainer.model)
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
    (params, losses, norms, trainer.optimizer_states())
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
        let cfg = config(out, B, sharded);
        let (params, losses, norms, states) = train(&cfg, &dist);
        let tag = format!("{}{}", if sharded { "zero-" } else { "" }, dist.rank());
        write_f32(&out.join(format!("params-{tag}.bin")), &params);
        let logged: Vec<f32> = losses.iter().chain(&norms).map(|&x| x as f32).collect();
        write_f32(&out.join(format!("logged-{tag}.bin")), &logged);
        std::fs::write(out.join(format!("states-{tag}")), states.to_string()).unwrap();
    }
    // Whole runs through the shared loop: stopped at step 2 and resumed with sharding switched (a
    // sharded checkpoint gathered on rank 0, read back unsharded; an unsharded one read back and cut
    // to each rank's share), against a straight unsharded run.
    whole_run(out, "straight", false, None, &dist);
    whole_run(out, "zero-first", true, Some(2), &dist);
    whole_run(out, "zero-first", false, None, &dist);
    whole_run(out, "zero-second", false, Some(2), &dist);
    whole_run(out, "zero-second", true, None, &dist);
}

fn trainer_init(cfg: &MaeConfig) -> MaeTrainer<'_> {
    MaeTrainer::new(cfg, &Dist::single(), &Device::flex()).unwrap()
}

/// The largest |a − b| over the parameters `names` (name, length; in the flattening order), the
/// parameter it is in, and the largest over the attention *key* biases alone, which are left out of
/// the first: softmax over the keys is invariant to a shift every key shares, so their gradient is
/// zero up to rounding noise (~1e-9) that AdamW's normalisation turns into lr-sized steps of any sign
/// — the summation order of a split batch decides them.
fn compare(names: &[(String, usize)], a: &[f32], b: &[f32]) -> (f32, String, f32) {
    let (mut diff, mut worst, mut key_bias) = (0f32, String::new(), 0f32);
    let mut at = 0;
    for (name, n) in names {
        let (x, y) = (&a[at..at + n], &b[at..at + n]);
        let d = if name.ends_with("attn.qkv.bias") {
            let w = n / 3;
            key_bias = key_bias.max(max_abs_diff(&x[w..2 * w], &y[w..2 * w]));
            max_abs_diff(&x[..w], &y[..w]).max(max_abs_diff(&x[2 * w..], &y[2 * w..]))
        } else {
            max_abs_diff(x, y)
        };
        if d > diff {
            (diff, worst) = (d, name.clone());
        }
        at += n;
    }
    assert_eq!(at, a.len());
    (diff, worst, key_bias)
}

#[test]
fn two_ranks_of_b_reproduce_one_process_of_2b() {
    let tmp = tempfile::tempdir().unwrap();
    support::run_two_ranks(tmp.path());

    // The reference is the one-process run of the global batch: its lr scales with 2B too.
    let cfg = config(tmp.path(), 2 * B, false);
    assert_eq!(
        cfg.scaled_lr(1),
        config(tmp.path(), B, false).scaled_lr(2),
        "both sides train with the lr of the global batch"
    );
    let (reference, ref_losses, ref_norms, ref_states) = train(&cfg, &Dist::single());
    let rank0 = read_f32(&tmp.path().join("params-0.bin"));
    let rank1 = read_f32(&tmp.path().join("params-1.bin"));
    assert_eq!(rank0, rank1, "the two ranks' models differ");
    assert_eq!(rank0.len(), reference.len());

    // Training moved the parameters, and clipping was active at every step.
    let init: Vec<f32> = checkpoint::named_parameters(&trainer_init(&cfg).model)
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
    let moved = max_abs_diff(&init, &reference);
    assert!(
        moved > 1e-3,
        "training did not move the parameters ({moved})"
    );
    assert!(
        ref_norms.iter().all(|&n| n > 2.0 * CLIP_GRAD),
        "clipping was not active: grad norms {ref_norms:?}"
    );

    let names: Vec<(String, usize)> = checkpoint::named_parameters(&trainer_init(&cfg).model)
        .into_iter()
        .map(|(name, _, v)| (name, v.len()))
        .collect();
    let (diff, worst, key_bias) = compare(&names, &rank0, &reference);
    eprintln!(
        "MAE: max |2 ranks − 1 process| over {} parameters: {diff:.3e} (in {worst}; moved {moved:.3e}); \
         attention key biases (zero gradient up to rounding): {key_bias:.3e}",
        rank0.len()
    );
    assert!(
        diff < 1e-5,
        "2 ranks × B differ from 1 process × 2B by {diff} in {worst}"
    );

    let logged = read_f32(&tmp.path().join("logged-0.bin"));
    let (losses, norms) = logged.split_at(STEPS as usize);
    for (step, (a, b)) in losses.iter().zip(&ref_losses).enumerate() {
        assert!(
            (*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0),
            "step {step}: logged loss {a} vs {b}"
        );
    }
    for (step, (a, b)) in norms.iter().zip(&ref_norms).enumerate() {
        assert!(
            (*a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
            "step {step}: logged grad norm {a} vs {b}"
        );
    }

    // ZeRO-1: the same update computed by each parameter's owner, so both ranks' models and the
    // logged values are bit-identical to the unsharded 2-rank run, while each rank keeps moments for
    // its share only (every parameter exactly once).
    support::assert_zero1_shares(tmp.path(), &rank0, ref_states, "", "zero-");
    assert_eq!(
        read_f32(&tmp.path().join("logged-zero-0.bin")),
        logged,
        "ZeRO-1 logged other values"
    );

    // Whole runs switching sharding at a resume end like the straight run, bit for bit; the sharded
    // checkpoint holds the whole optimizer state, as the unsharded one does.
    support::assert_resumes_switching_sharding(tmp.path());
}
