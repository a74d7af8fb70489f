//! Data-parallel CLIP across processes (issue #9, docs/reference/training-algorithms.md §8): 2 MPI ranks ×
//! batch B reproduce 1 process × batch 2B over a few optimizer steps, to float tolerance.
//!
//! Same harness as `dist_dino.rs`: the parent test starts `mpirun -np 2` on this very test binary,
//! running only the ignored [`rank_of_two`] (which does nothing unless `WEBSSL_DIST_TEST_OUT` is set);
//! each rank trains on its slice (images and captions `r·B .. (r+1)·B`) of the same hand-made global
//! batches and writes its parameters and logged values. The parent trains the 1-process reference on
//! the whole batches in-process and compares.
//!
//! What makes the two equal (and what the test therefore checks): the features all-gathered, each
//! rank's loss its rows against every column with labels offset by its first row, the feature
//! gradients summed over ranks and routed back through each rank's towers, the logit scale's gradient
//! per rank, all averaged over ranks *before* the global-norm clipping (the threshold is low enough
//! that it scales every step). The batches exercise unequal pair counts: in step 1 rank 0 has an image
//! without a caption, in step 2 rank 1 has no caption at all (it still takes part in every collective)
//! — the 1-process run drops the same images. Single-threaded children (`RAYON_NUM_THREADS=1`), so the
//! only differences are the summation orders that splitting a batch changes.
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
use webssl_models::checkpoint;
use webssl_train::Recipe;
use webssl_train::clip::{ClipConfig, ClipTokenizer, ClipTrainer};
use webssl_train::dist::Dist;
use webssl_train::run::checkpoint::Resume;

const B: usize = 3; // images per rank
const STEPS: u64 = 4;
const SIZE: usize = 28;
const CLIP_GRAD: f64 = 1.0;
/// The logged values compared, per step.
const LOGGED: [&str; 6] = [
    "loss",
    "i2t_acc",
    "t2i_acc",
    "grad_norm",
    "logit_scale",
    "pairs",
];

/// The run config with `batch` images per process.
fn config(dir: &Path, batch: usize, sharded: bool) -> ClipConfig {
    config_with(dir, batch, sharded, &[]).0
}

/// [`config`] with `overrides` (`--set` syntax), and the resolved table.
fn config_with(
    dir: &Path,
    batch: usize,
    sharded: bool,
    overrides: &[String],
) -> (ClipConfig, toml::Table) {
    let recipe = format!(
        r#"
seed = 5
[data]
train = "{dir}/unused"
batch_size = {batch}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
[image]
size = {SIZE}
[text]
vocab_size = 300
context_length = 16
width = 16
heads = 2
layers = 2
[clip]
embed_dim = 8
[optim]
total_steps = 10
warmup_steps = 1
lr = 1e-3
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
    let mut overrides = support::whole_run_overrides(dir, name);
    overrides.push("text.tokenizer_train_samples=16".into());
    let (cfg, resolved) = config_with(dir, B, sharded, &overrides);
    cfg.train(&resolved, Resume::Auto, &Device::flex(), stop_after, dist)
        .unwrap();
}

const NOUNS: [&str; 6] = [
    "cat",
    "dog",
    "bar chart",
    "red circle",
    "street sign",
    "table",
];
const ADJ: [&str; 4] = ["a small", "the large", "a blue", "one striped"];

/// The same BPE on every process (training is deterministic).
fn tokenizer() -> ClipTokenizer {
    let captions = NOUNS
        .iter()
        .flat_map(|n| ADJ.iter().map(move |a| format!("{a} {n} on a table")));
    ClipTokenizer::train(captions, 300, 16).unwrap()
}

/// Global batch `step` of 2B images with captions of varied lengths, or rank `rank`'s slice of it
/// (images `rank·B .. (rank+1)·B`). Step 1: image 1 (rank 0's) has no caption; step 2: none of rank
/// 1's images has one.
fn batch(step: u64, part: Option<usize>) -> Batch {
    let per = 3 * SIZE * SIZE;
    let images = fill(2 * B * per, 500 + step);
    let captions: Vec<Option<String>> = (0..2 * B)
        .map(|i| {
            let missing = (step == 1 && i == 1) || (step == 2 && i >= B);
            let k = i + 3 * step as usize;
            let long = if k.is_multiple_of(2) {
                " with a dog"
            } else {
                ""
            };
            (!missing).then(|| format!("{} {}{long}", ADJ[k % 4], NOUNS[k % 6]))
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
        captions: captions[first..first + n].to_vec(),
        labels: Vec::new(),
        ibot: None,
        mae: None,
    }
}

/// Trains `STEPS` steps (the whole batches on one process, or this rank's slices) and returns the
/// parameters flattened, the [`LOGGED`] values of every step, and how many parameters this rank keeps
/// AdamW moments for.
fn train(cfg: &ClipConfig, dist: &Dist) -> (Vec<f32>, Vec<f64>, usize) {
    let mut trainer = ClipTrainer::new(cfg, tokenizer(), dist, &Device::flex()).unwrap();
    let mut logged = Vec::new();
    for step in 0..STEPS {
        let part = (dist.world_size() > 1).then(|| dist.rank());
        let values;
        (trainer, values) = trainer.step(step, &[batch(step, part)], dist).unwrap();
        for k in LOGGED {
            logged.push(values.iter().find(|(n, _)| *n == k).unwrap().1);
        }
    }
    let params = checkpoint::named_parameters(&trainer.model)
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
    (params, logged, trainer.optimizer_states())
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
        let (params, logged, states) = train(&cfg, &dist);
        let tag = format!("{}{}", if sharded { "zero-" } else { "" }, dist.rank());
        write_f32(&out.join(format!("params-{tag}.bin")), &params);
        let logged: Vec<f32> = logged.iter().map(|&x| x as f32).collect();
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

fn params_of(trainer: &ClipTrainer<'_>) -> Vec<(String, Vec<f32>)> {
    checkpoint::named_parameters(&trainer.model)
        .into_iter()
        .map(|(name, _, v)| (name, v))
        .collect()
}

/// The largest |a − b| over the parameters (in the flattening order of `init`), the parameter it is
/// in, and the largest over the attention *key* biases alone, which are left out of the first:
/// softmax over the keys is invariant to a shift every key shares, so their gradient is zero up to
/// rounding noise (~1e-9) that AdamW's normalisation turns into lr-sized steps of any sign — the
/// summation order of a split batch decides them.
fn compare(init: &[(String, Vec<f32>)], a: &[f32], b: &[f32]) -> (f32, String, f32) {
    let (mut diff, mut worst, mut key_bias) = (0f32, String::new(), 0f32);
    let mut at = 0;
    for (name, v) in init {
        let n = v.len();
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

    let cfg = config(tmp.path(), 2 * B, false);
    let (reference, ref_logged, ref_states) = train(&cfg, &Dist::single());
    let rank0 = read_f32(&tmp.path().join("params-0.bin"));
    let rank1 = read_f32(&tmp.path().join("params-1.bin"));
    assert_eq!(rank0, rank1, "the two ranks' models differ");
    assert_eq!(rank0.len(), reference.len());

    // Training moved the parameters (the logit scale too), and clipping was active at every step.
    let init =
        params_of(&ClipTrainer::new(&cfg, tokenizer(), &Dist::single(), &Device::flex()).unwrap());
    let flat: Vec<f32> = init.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let moved = max_abs_diff(&flat, &reference);
    assert!(
        moved > 1e-3,
        "training did not move the parameters ({moved})"
    );
    let per_step = |logged: &[f64], k: &str| -> Vec<f64> {
        let i = LOGGED.iter().position(|n| *n == k).unwrap();
        logged
            .iter()
            .skip(i)
            .step_by(LOGGED.len())
            .copied()
            .collect()
    };
    let norms = per_step(&ref_logged, "grad_norm");
    assert!(
        norms.iter().all(|&n| n > 2.0 * CLIP_GRAD),
        "clipping was not active: grad norms {norms:?}"
    );
    assert_eq!(per_step(&ref_logged, "pairs"), [6.0, 5.0, 3.0, 6.0]);

    let (diff, worst, key_bias) = compare(&init, &rank0, &reference);
    eprintln!(
        "CLIP: max |2 ranks − 1 process| over {} parameters: {diff:.3e} (in {worst}; moved \
         {moved:.3e}); attention key biases (zero gradient up to rounding): {key_bias:.3e}",
        rank0.len()
    );
    assert!(
        diff < 1e-5,
        "2 ranks × B differ from 1 process × 2B by {diff} in {worst}"
    );

    let logged = read_f32(&tmp.path().join("logged-0.bin"));
    assert_eq!(logged.len(), ref_logged.len());
    let mut worst_rel = 0f64;
    for (i, (a, b)) in logged.iter().zip(&ref_logged).enumerate() {
        let (step, what) = (i / LOGGED.len(), LOGGED[i % LOGGED.len()]);
        let rel = (*a as f64 - b).abs() / b.abs().max(1.0);
        worst_rel = worst_rel.max(rel);
        assert!(rel < 1e-5, "step {step}: logged {what} {a} vs {b}");
    }
    eprintln!(
        "CLIP: logged values (loss, accuracies, grad norm, logit scale) within {worst_rel:.3e}"
    );

    // ZeRO-1: the same update computed by each parameter's owner (the logit scale's too, clamped
    // after the sync), so both ranks' models and the logged values are bit-identical to the unsharded
    // 2-rank run — including the step without an update — while each rank keeps moments for its
    // share only (every parameter exactly once).
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
