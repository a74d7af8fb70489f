//! Linear probes on frozen, cached features: the dinov2 classifier grid and logistic regression.
//!
//! **Grid** ([`train_grid`], [`evaluate_grid`]) — `facebookresearch/dinov2` `dinov2/eval/linear.py`
//! (docs/reference/training-algorithms.md §6.2, docs/reference/evaluation.md §A.5):
//! - one `Linear(in, C)` per (n_last_blocks ∈ {1, 4}) × (avgpool ∈ {false, true}) × (lr ∈ the 13
//!   dinov2 learning rates × batch / 256), weights N(0, 0.01²), bias 0, all trained together on the
//!   same batches;
//! - input = `create_linear_input`: the CLS tokens of the last n blocks, oldest first, concatenated,
//!   then (avgpool) the mean patch token of the last block; from a `webssl embed --last-layers 4`
//!   file that is `layer-n.cls ‖ … ‖ layer-1.cls (‖ layer-1.patch_mean)` ([`BlockFeatures`]);
//! - loss = Σ over classifiers of the mean cross-entropy (so each classifier gets its own mean-CE
//!   gradient); SGD momentum 0.9 (torch: `buf = 0.9·buf + g`, `p -= lr·buf`), weight decay 0;
//!   `CosineAnnealingLR(max_iter, eta_min=0)` stepped every iteration, i.e. the lr of iteration t
//!   is `lr·(1 + cos(π t / max_iter)) / 2` (closed form of torch's recursion; equal to ~1e-16);
//! - batches come from an endless shuffled sample stream (dinov2's `InfiniteSampler`): one
//!   permutation of the train set per pass, concatenated, cut into full batches; max_iter =
//!   epochs × epoch_length (epoch_length defaults to ⌈n_train / batch⌉ instead of dinov2's fixed
//!   1250, which only fits ImageNet at batch 1024);
//! - the best classifier is the first in grid order with the highest val top-1 (dinov2's strict
//!   `>` scan); all classifiers are reported.
//!
//! Deliberate deviations: the features are cached, so there is no train-time augmentation (dinov2
//! trains on RandomResizedCrop + flip views through the frozen backbone); validation happens once at
//! the end (dinov2 also evaluates every 1250 iterations but reports the final classifiers). Random
//! streams are explicit ChaCha8 streams derived from the seed (`init`, `shuffle`), so a run is
//! reproducible bit for bit on the same machine and thread count; the values differ from torch's
//! generator, so the parity test replays torch's init and order through [`TrainHooks`].
//!
//! The arithmetic runs on burn tensors (burn-flex GEMM: `[B, D] × [D, 13·C]` forward and
//! `[13·C, B] × [B, D]` weight gradient per step, the 13 learning rates of one input sharing one
//! matrix), in f32 like the reference.
//!
//! **Logistic regression** ([`fit_logreg`], [`logreg_sweep`]) — `dinov2/eval/log_regression.py`:
//! cuML `LogisticRegression(penalty="l2", C, max_iter=1000, tol=1e-12)` on the CLS features in
//! float64, i.e. the sklearn multinomial objective `Σ_i CE_i + ‖W‖² / (2C)` (intercept not
//! penalised). We minimise exactly that objective in f64 with L-BFGS (history 10, backtracking
//! Armijo line search, curvature-checked updates); it is strictly convex, so any converged solver
//! reaches the same optimum (the fixture checks it against torch L-BFGS to 1e-6). C is swept over
//! `10^linspace(-6, 5, 45)`, chosen on a held-out 10 % of train (dinov2's default; or on val with
//! `finetune_on_val`), then the model is refit on train + held-out with the best C and scored on
//! val. Deviations: the held-out split is drawn from our seeded stream (dinov2: `torch.manual_seed(0)`
//! randperm), and C values are fitted in ascending order each warm-started from the previous
//! optimum (same optima, far fewer iterations).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::features::Matrix;

fn probe_err(message: impl Into<String>) -> EvalError {
    EvalError::Probe {
        context: "linear".into(),
        message: message.into(),
    }
}

/// dinov2's default `--learning-rates`.
pub const DINOV2_LEARNING_RATES: [f64; 13] = [
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,
];

/// Stream ids of the explicit random streams.
const STREAM_INIT: u64 = 0x6c69_6e2d_696e_6974; // "lin-init"
const STREAM_SHUFFLE: u64 = 0x6c69_6e2d_7368_7566; // "lin-shuf"
const STREAM_HOLDOUT: u64 = 0x6c6f_6772_2d68_6f6c; // "logr-hol"

/// The per-block features of one split.
#[derive(Clone, Debug)]
pub struct BlockFeatures {
    /// CLS token of the last blocks: `cls[0]` = the last block (embed's `layer-1.cls`), `cls[1]` the
    /// one before, ...
    pub cls: Vec<Matrix>,
    /// Mean patch token of the last block (embed's `layer-1.patch_mean`).
    pub patch_mean: Matrix,
}

impl BlockFeatures {
    pub fn rows(&self) -> usize {
        self.patch_mean.rows
    }

    /// dinov2 `create_linear_input(x, n, avgpool)`: `cls[n-1] ‖ … ‖ cls[0] (‖ patch_mean)`.
    pub fn linear_input(&self, n_blocks: usize, avgpool: bool) -> Result<Matrix> {
        if n_blocks == 0 || n_blocks > self.cls.len() {
            return Err(probe_err(format!(
                "{n_blocks} last blocks requested but the features have {} (embed with --last-layers {n_blocks})",
                self.cls.len()
            )));
        }
        let mut parts: Vec<&Matrix> = self.cls[..n_blocks].iter().rev().collect();
        if avgpool {
            parts.push(&self.patch_mean);
        }
        Matrix::hcat(&parts)
    }
}

/// Settings of the classifier grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinearConfig {
    pub n_last_blocks: Vec<usize>,
    pub avgpool: Vec<bool>,
    /// Base learning rates, scaled by `batch_size / 256` (dinov2 `scale_lr`, one process).
    pub learning_rates: Vec<f64>,
    pub batch_size: usize,
    pub epochs: usize,
    /// Iterations per epoch; `None` = ⌈n_train / batch_size⌉.
    pub epoch_length: Option<usize>,
    pub momentum: f64,
    pub seed: u64,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            n_last_blocks: vec![1, 4],
            avgpool: vec![false, true],
            learning_rates: DINOV2_LEARNING_RATES.to_vec(),
            batch_size: 128,
            epochs: 10,
            epoch_length: None,
            momentum: 0.9,
            seed: 0,
        }
    }
}

/// One trained classifier of the grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classifier {
    /// dinov2's name, e.g. `classifier_4_blocks_avgpool_True_lr_0_00500` (`lr_3_125e-7` style when
    /// dinov2's 5 decimals would give two classifiers the same name).
    pub name: String,
    pub n_blocks: usize,
    pub avgpool: bool,
    pub base_lr: f64,
    /// The scaled lr (base × batch / 256).
    pub lr: f64,
    #[serde(skip)]
    pub weight: Matrix,
    #[serde(skip)]
    pub bias: Vec<f32>,
    /// Mean train cross-entropy over the last epoch_length iterations.
    pub final_train_loss: f64,
}

/// Test and inspection hooks for [`train_grid`].
#[derive(Clone, Debug, Default)]
pub struct TrainHooks {
    /// Initial weights, one `[C, in]` per classifier in grid order (default: N(0, 0.01²) from the
    /// seed's `init` stream).
    pub init: Option<Vec<Matrix>>,
    /// The sample stream (train row per slot), at least `max_iter × batch` long (default: seeded
    /// shuffled passes).
    pub order: Option<Vec<usize>>,
    /// Record (weight, bias) of this classifier after every iteration.
    pub trace: Option<usize>,
}

/// What [`train_grid`] returns.
#[derive(Clone, Debug)]
pub struct GridRun {
    pub classifiers: Vec<Classifier>,
    pub max_iter: usize,
    pub epoch_length: usize,
    /// `[iteration][classifier]` mean cross-entropy of the batch.
    pub losses: Vec<Vec<f32>>,
    /// (weight, bias) of the traced classifier after each iteration.
    pub trace: Vec<(Vec<f32>, Vec<f32>)>,
}

/// dinov2's classifier name (`f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:.5f}"`, dots → `_`).
pub fn classifier_name(n: usize, avgpool: bool, lr: f64) -> String {
    format!(
        "classifier_{n}_blocks_avgpool_{}_lr_{lr:.5}",
        if avgpool { "True" } else { "False" }
    )
    .replace('.', "_")
}

fn normal_init(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    // Box-Muller on 53-bit uniforms; u1 in (0, 1] so ln is finite.
    let uni = |rng: &mut ChaCha8Rng| ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (uni(rng), uni(rng));
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((std * r * t.cos()) as f32);
        out.push((std * r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Fisher–Yates with an explicit stream.
fn permutation(rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Lemire-free modulo: bias ≤ n / 2^64, irrelevant for shuffling.
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

fn to_tensor(m: &Matrix, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(m.data.clone(), [m.rows, m.cols]), device)
}

fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    crate::features::read_f32(t, "linear")
}

/// Trains the dinov2 classifier grid (module docs) on cached train features.
pub fn train_grid(
    train: &BlockFeatures,
    labels: &[usize],
    num_classes: usize,
    cfg: &LinearConfig,
    hooks: &TrainHooks,
) -> Result<GridRun> {
    let n = train.rows();
    if labels.len() != n {
        return Err(probe_err(format!(
            "{n} train feature rows but {} labels",
            labels.len()
        )));
    }
    if n == 0 {
        return Err(probe_err("no train samples"));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= num_classes) {
        return Err(probe_err(format!(
            "train label {bad} ≥ num_classes {num_classes}"
        )));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 || cfg.learning_rates.is_empty() {
        return Err(probe_err(
            "batch size, epochs and the learning-rate list must be non-zero",
        ));
    }
    if cfg.n_last_blocks.is_empty() || cfg.avgpool.is_empty() {
        return Err(probe_err("empty n_last_blocks or avgpool grid"));
    }
    let bsz = cfg.batch_size;
    let epoch_length = cfg.epoch_length.unwrap_or(n.div_ceil(bsz)).max(1);
    let max_iter = cfg.epochs * epoch_length;
    let c = num_classes;
    let g = cfg.learning_rates.len();
    let scale = bsz as f64 / 256.0;

    // Inputs per (n, avgpool) group, in dinov2's grid order.
    let mut groups = Vec::new();
    for &nb in &cfg.n_last_blocks {
        for &ap in &cfg.avgpool {
            groups.push((nb, ap, train.linear_input(nb, ap)?));
        }
    }
    let total = groups.len() * g;
    if let Some(init) = &hooks.init
        && init.len() != total
    {
        return Err(probe_err(format!(
            "{} initial weights for {total} classifiers",
            init.len()
        )));
    }

    // The sample stream.
    let needed = max_iter * bsz;
    let order: Vec<usize> = match &hooks.order {
        Some(o) => {
            if o.len() < needed || o.iter().any(|&i| i >= n) {
                return Err(probe_err(format!(
                    "sample order has {} entries (need {needed} below {n})",
                    o.len()
                )));
            }
            o[..needed].to_vec()
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ STREAM_SHUFFLE);
            let mut o = Vec::with_capacity(needed + n);
            while o.len() < needed {
                o.extend(permutation(&mut rng, n));
            }
            o.truncate(needed);
            o
        }
    };

    let device = Device::flex();
    let mut init_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ STREAM_INIT);
    struct State {
        x: Tensor<2>,
        w: Tensor<2>,
        b: Tensor<1>,
        buf_w: Tensor<2>,
        buf_b: Tensor<1>,
        lr_col: Vec<f64>,
        dim: usize,
    }
    let mut states = Vec::with_capacity(groups.len());
    for (gi, (_, _, x)) in groups.iter().enumerate() {
        let dim = x.cols;
        let mut w0 = Vec::with_capacity(g * c * dim);
        for li in 0..g {
            let idx = gi * g + li;
            match &hooks.init {
                Some(init) => {
                    let m = &init[idx];
                    if m.rows != c || m.cols != dim {
                        return Err(probe_err(format!(
                            "initial weight {idx} is [{}, {}], expected [{c}, {dim}]",
                            m.rows, m.cols
                        )));
                    }
                    w0.extend_from_slice(&m.data);
                }
                None => w0.extend(normal_init(&mut init_rng, c * dim, 0.01)),
            }
        }
        let w = Tensor::<2>::from_data(TensorData::new(w0, [g * c, dim]), &device);
        states.push(State {
            x: to_tensor(x, &device),
            buf_w: Tensor::zeros([g * c, dim], &device),
            w,
            b: Tensor::zeros([g * c], &device),
            buf_b: Tensor::zeros([g * c], &device),
            lr_col: cfg.learning_rates.iter().map(|lr| lr * scale).collect(),
            dim,
        });
    }

    let mut losses = Vec::with_capacity(max_iter);
    let mut trace = Vec::new();
    let momentum = cfg.momentum as f32;
    for it in 0..max_iter {
        let rows = &order[it * bsz..(it + 1) * bsz];
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [bsz]),
            &device,
        );
        let mut onehot = vec![0f32; bsz * c];
        for (i, &r) in rows.iter().enumerate() {
            onehot[i * c + labels[r]] = 1.0;
        }
        let y =
            Tensor::<2>::from_data(TensorData::new(onehot, [bsz, c]), &device).reshape([bsz, 1, c]);
        // torch's CosineAnnealingLR factor for this iteration.
        let factor = (1.0 + (std::f64::consts::PI * it as f64 / max_iter as f64).cos()) / 2.0;
        let mut step_losses = Vec::with_capacity(total);
        for st in states.iter_mut() {
            let xb = st.x.clone().select(0, idx.clone());
            let logits = xb
                .clone()
                .matmul(st.w.clone().transpose())
                .add(st.b.clone().reshape([1, g * c]))
                .reshape([bsz, g, c]);
            let ce = log_softmax(logits.clone(), 2)
                .mul(y.clone())
                .sum_dim(2)
                .mean_dim(0)
                .neg();
            step_losses.extend(read_f32(ce)?);
            let grad = softmax(logits, 2)
                .sub(y.clone())
                .div_scalar(bsz as f32)
                .reshape([bsz, g * c]);
            let grad_w = grad.clone().transpose().matmul(xb);
            let grad_b = grad.sum_dim(0).reshape([g * c]);
            st.buf_w = st.buf_w.clone().mul_scalar(momentum).add(grad_w);
            st.buf_b = st.buf_b.clone().mul_scalar(momentum).add(grad_b);
            // Per-row lr (f32, as torch passes the group lr to the f32 kernel).
            let lrs: Vec<f32> = st
                .lr_col
                .iter()
                .flat_map(|lr| std::iter::repeat_n((lr * factor) as f32, c))
                .collect();
            let lr_t = Tensor::<1>::from_data(TensorData::new(lrs, [g * c]), &device);
            st.w =
                st.w.clone()
                    .sub(st.buf_w.clone().mul(lr_t.clone().reshape([g * c, 1])));
            st.b = st.b.clone().sub(st.buf_b.clone().mul(lr_t));
        }
        if let Some(t) = hooks.trace {
            let (gi, li) = (t / g, t % g);
            let st = states
                .get(gi)
                .ok_or_else(|| probe_err(format!("trace index {t} out of range")))?;
            let w = read_f32(st.w.clone().slice([li * c..(li + 1) * c, 0..st.dim]))?;
            let b = read_f32(st.b.clone().slice(li * c..(li + 1) * c))?;
            trace.push((w, b));
        }
        losses.push(step_losses);
    }

    let tail = epoch_length.min(max_iter);
    // dinov2's names use `lr:.5f`, which merges the smallest scaled rates at small batch sizes
    // (3.1e-7 and 6.2e-7 both print 0.00000, and dinov2's ModuleDict then silently drops
    // classifiers); we keep every classifier and switch to `lr:.3e` names when that happens.
    let short: Vec<String> = cfg
        .learning_rates
        .iter()
        .map(|b| classifier_name(1, false, b * scale))
        .collect();
    let distinct = short.iter().collect::<std::collections::HashSet<_>>().len() == short.len();
    let name_of = |nb: usize, ap: bool, lr: f64| {
        if distinct {
            classifier_name(nb, ap, lr)
        } else {
            format!(
                "classifier_{nb}_blocks_avgpool_{}_lr_{lr:.3e}",
                if ap { "True" } else { "False" }
            )
            .replace('.', "_")
        }
    };
    let mut classifiers = Vec::with_capacity(total);
    for (gi, ((nb, ap, _), st)) in groups.iter().zip(&states).enumerate() {
        let w = read_f32(st.w.clone())?;
        let b = read_f32(st.b.clone())?;
        for (li, base) in cfg.learning_rates.iter().enumerate() {
            let idx = gi * g + li;
            let lr = base * scale;
            let final_train_loss = losses[max_iter - tail..]
                .iter()
                .map(|l| f64::from(l[idx]))
                .sum::<f64>()
                / tail as f64;
            classifiers.push(Classifier {
                name: name_of(*nb, *ap, lr),
                n_blocks: *nb,
                avgpool: *ap,
                base_lr: *base,
                lr,
                weight: Matrix {
                    rows: c,
                    cols: st.dim,
                    data: w[li * c * st.dim..(li + 1) * c * st.dim].to_vec(),
                },
                bias: b[li * c..(li + 1) * c].to_vec(),
                final_train_loss,
            });
        }
    }
    Ok(GridRun {
        classifiers,
        max_iter,
        epoch_length,
        losses,
        trace,
    })
}

/// 0-based rank of `target` among `scores` (descending; ties → lower class id first).
fn rank_f32(scores: &[f32], target: usize) -> usize {
    let t = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(c, &s)| s > t || (s == t && c < target))
        .count()
}

/// Validation accuracy of one classifier.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassifierScore {
    pub name: String,
    pub n_blocks: usize,
    pub avgpool: bool,
    pub base_lr: f64,
    pub lr: f64,
    pub top1: f64,
    pub top5: f64,
    pub final_train_loss: f64,
}

/// Result of the grid on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GridResult {
    pub n_train: usize,
    pub n_val: usize,
    pub num_classes: usize,
    pub max_iter: usize,
    pub epoch_length: usize,
    pub top5_n: usize,
    pub config: LinearConfig,
    /// All classifiers in grid order.
    pub classifiers: Vec<ClassifierScore>,
    /// Index into `classifiers` of the best (first highest val top-1).
    pub best: usize,
}

impl GridResult {
    pub fn best(&self) -> &ClassifierScore {
        &self.classifiers[self.best]
    }
}

/// Logits `x · Wᵀ + b` of one classifier, `[rows, C]`.
pub fn logits(x: &Matrix, weight: &Matrix, bias: &[f32]) -> Result<Vec<f32>> {
    if x.cols != weight.cols || bias.len() != weight.rows {
        return Err(probe_err(format!(
            "input dim {} vs classifier [{}, {}] + bias {}",
            x.cols,
            weight.rows,
            weight.cols,
            bias.len()
        )));
    }
    let device = Device::flex();
    let b = Tensor::<1>::from_data(TensorData::new(bias.to_vec(), [bias.len()]), &device);
    read_f32(
        to_tensor(x, &device)
            .matmul(to_tensor(weight, &device).transpose())
            .add(b.reshape([1, weight.rows])),
    )
}

/// Scores every classifier of `run` on the val features and picks the best (dinov2's scan).
pub fn evaluate_grid(
    run: &GridRun,
    val: &BlockFeatures,
    val_labels: &[usize],
    num_classes: usize,
    n_train: usize,
    cfg: &LinearConfig,
) -> Result<GridResult> {
    if val.rows() != val_labels.len() {
        return Err(probe_err(format!(
            "{} val feature rows but {} labels",
            val.rows(),
            val_labels.len()
        )));
    }
    if val_labels.is_empty() {
        return Err(probe_err("no val samples"));
    }
    if let Some(&bad) = val_labels.iter().find(|&&l| l >= num_classes) {
        return Err(probe_err(format!(
            "val label {bad} ≥ num_classes {num_classes}"
        )));
    }
    let top5_n = num_classes.min(5);
    let nv = val_labels.len();
    let mut scores = Vec::with_capacity(run.classifiers.len());
    let mut inputs: Vec<((usize, bool), Matrix)> = Vec::new();
    for cl in &run.classifiers {
        let key = (cl.n_blocks, cl.avgpool);
        if !inputs.iter().any(|(k, _)| *k == key) {
            inputs.push((key, val.linear_input(cl.n_blocks, cl.avgpool)?));
        }
        let x = &inputs
            .iter()
            .find(|(k, _)| *k == key)
            .expect("inserted above")
            .1;
        // Val rows in chunks so the logits stay ≤ ~64 MiB (ImageNet val: 50k × 1000 classes).
        let chunk = ((16 << 20) / num_classes.max(1)).max(1);
        let (mut h1, mut h5) = (0usize, 0usize);
        for start in (0..nv).step_by(chunk) {
            let end = (start + chunk).min(nv);
            let part = Matrix {
                rows: end - start,
                cols: x.cols,
                data: x.data[start * x.cols..end * x.cols].to_vec(),
            };
            let l = logits(&part, &cl.weight, &cl.bias)?;
            let (a, b) = l
                .par_chunks(num_classes)
                .zip(val_labels[start..end].par_iter())
                .map(|(row, &t)| {
                    let r = rank_f32(row, t);
                    (usize::from(r == 0), usize::from(r < top5_n))
                })
                .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            h1 += a;
            h5 += b;
        }
        scores.push(ClassifierScore {
            name: cl.name.clone(),
            n_blocks: cl.n_blocks,
            avgpool: cl.avgpool,
            base_lr: cl.base_lr,
            lr: cl.lr,
            top1: 100.0 * h1 as f64 / nv as f64,
            top5: 100.0 * h5 as f64 / nv as f64,
            final_train_loss: cl.final_train_loss,
        });
    }
    // dinov2: `if acc > max_accuracy` from 0 in grid order (we fall back to the first when all are 0).
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.top1 > scores[best].top1 {
            best = i;
        }
    }
    Ok(GridResult {
        n_train,
        n_val: nv,
        num_classes,
        max_iter: run.max_iter,
        epoch_length: run.epoch_length,
        top5_n,
        config: cfg.clone(),
        classifiers: scores,
        best,
    })
}

// ---------------------------------------------------------------------------------------------
// Logistic regression

/// A fitted multinomial logistic regression (f64).
#[derive(Clone, Debug, PartialEq)]
pub struct LogRegModel {
    /// `[C, D]` row-major.
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub classes: usize,
    pub dim: usize,
    /// Final objective `Σ CE + ‖W‖²/(2C)`.
    pub objective: f64,
    pub iterations: usize,
    /// Infinity norm of the final gradient.
    pub grad_norm: f64,
    pub converged: bool,
}

/// Objective and gradient of `Σ_i CE_i + ‖W‖² / (2 c_reg)`; params = `[W (C×D) | b (C)]`.
fn logreg_obj(
    x: &Matrix,
    y: &[usize],
    classes: usize,
    c_reg: f64,
    params: &[f64],
) -> (f64, Vec<f64>) {
    let d = x.cols;
    let (w, b) = params.split_at(classes * d);
    let chunk = 256;
    let (loss, mut grad) = (0..x.rows.div_ceil(chunk))
        .into_par_iter()
        .map(|ci| {
            let mut grad = vec![0f64; classes * d + classes];
            let mut loss = 0f64;
            let mut z = vec![0f64; classes];
            for i in ci * chunk..((ci + 1) * chunk).min(x.rows) {
                let row = x.row(i);
                for k in 0..classes {
                    let wk = &w[k * d..(k + 1) * d];
                    z[k] = b[k]
                        + wk.iter()
                            .zip(row)
                            .map(|(a, v)| a * f64::from(*v))
                            .sum::<f64>();
                }
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
                let lse = m + s.ln();
                loss += lse - z[y[i]];
                for k in 0..classes {
                    let p = (z[k] - lse).exp() - if k == y[i] { 1.0 } else { 0.0 };
                    let gk = &mut grad[k * d..(k + 1) * d];
                    for (gv, v) in gk.iter_mut().zip(row) {
                        *gv += p * f64::from(*v);
                    }
                    grad[classes * d + k] += p;
                }
            }
            (loss, grad)
        })
        .reduce(
            || (0.0, vec![0f64; classes * d + classes]),
            |mut a, b| {
                a.0 += b.0;
                for (x, y) in a.1.iter_mut().zip(b.1) {
                    *x += y;
                }
                a
            },
        );
    let mut reg = 0.0;
    for (gv, wv) in grad[..classes * d].iter_mut().zip(w) {
        reg += wv * wv;
        *gv += wv / c_reg;
    }
    (loss + reg / (2.0 * c_reg), grad)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits `Σ_i CE_i + ‖W‖²/(2 c_reg)` with L-BFGS (module docs). Stops when the gradient's infinity
/// norm is ≤ `tol · max(1, |f|)`, when f stops decreasing (line search fails), or at `max_iter`.
pub fn fit_logreg(
    x: &Matrix,
    y: &[usize],
    classes: usize,
    c_reg: f64,
    max_iter: usize,
    tol: f64,
    warm: Option<&LogRegModel>,
) -> Result<LogRegModel> {
    if x.rows != y.len() || x.rows == 0 {
        return Err(probe_err(format!(
            "logistic regression: {} rows, {} labels",
            x.rows,
            y.len()
        )));
    }
    if !(c_reg > 0.0 && c_reg.is_finite()) {
        return Err(probe_err(format!("C must be > 0, got {c_reg}")));
    }
    if let Some(&bad) = y.iter().find(|&&l| l >= classes) {
        return Err(probe_err(format!("label {bad} ≥ num_classes {classes}")));
    }
    let d = x.cols;
    let np = classes * d + classes;
    let mut p = match warm {
        Some(m) if m.classes == classes && m.dim == d => {
            let mut v = m.weight.clone();
            v.extend_from_slice(&m.bias);
            v
        }
        _ => vec![0f64; np],
    };
    const HISTORY: usize = 10;
    let (mut f, mut g) = logreg_obj(x, y, classes, c_reg, &p);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let mut converged = false;
    let inf_norm = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
    while iterations < max_iter {
        if inf_norm(&g) <= tol * f.abs().max(1.0) {
            converged = true;
            break;
        }
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, yv) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(yv, s);
            let a = rho * dot(s, &q);
            for (qi, yi) in q.iter_mut().zip(yv) {
                *qi -= a * yi;
            }
            alphas.push((a, rho));
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yv)) => dot(s, yv) / dot(yv, yv),
            _ => 1.0 / inf_norm(&g).max(1e-300),
        };
        for qi in q.iter_mut() {
            *qi *= gamma;
        }
        for ((s, yv), (a, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.into_iter().rev()) {
            let bta = rho * dot(yv, &q);
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - bta) * si;
            }
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            slope = -dot(&g, &g);
            g.iter()
                .map(|v| -v / inf_norm(&g).max(1e-300))
                .collect::<Vec<_>>()
        } else {
            dir
        };
        if slope >= 0.0 {
            converged = true;
            break;
        }
        // Backtracking Armijo line search.
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..50 {
            let cand: Vec<f64> = p.iter().zip(&dir).map(|(a, b)| a + step * b).collect();
            let (fc, gc) = logreg_obj(x, y, classes, c_reg, &cand);
            if fc.is_finite() && fc <= f + 1e-4 * step * slope {
                accepted = Some((cand, fc, gc));
                break;
            }
            step *= 0.5;
        }
        iterations += 1;
        let Some((cand, fc, gc)) = accepted else {
            // No decrease possible at f64 precision: at the optimum.
            converged = true;
            break;
        };
        let s: Vec<f64> = cand.iter().zip(&p).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gc.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &yv) > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() {
            s_hist.push(s);
            y_hist.push(yv);
            if s_hist.len() > HISTORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let decrease = f - fc;
        p = cand;
        f = fc;
        g = gc;
        if decrease <= f64::EPSILON * f.abs() {
            converged = true;
            break;
        }
    }
    let grad_norm = inf_norm(&g);
    let bias = p.split_off(classes * d);
    Ok(LogRegModel {
        weight: p,
        bias,
        classes,
        dim: d,
        objective: f,
        iterations,
        grad_norm,
        converged,
    })
}

impl LogRegModel {
    /// (top-1 hits, top-n hits) on `x` with labels `y`.
    pub fn hits(&self, x: &Matrix, y: &[usize], top_n: usize) -> (usize, usize) {
        (0..x.rows)
            .into_par_iter()
            .map(|i| {
                let row = x.row(i);
                let z: Vec<f64> = (0..self.classes)
                    .map(|k| {
                        self.bias[k]
                            + self.weight[k * self.dim..(k + 1) * self.dim]
                                .iter()
                                .zip(row)
                                .map(|(a, v)| a * f64::from(*v))
                                .sum::<f64>()
                    })
                    .collect();
                let t = z[y[i]];
                let r = z
                    .iter()
                    .enumerate()
                    .filter(|&(c, &s)| s > t || (s == t && c < y[i]))
                    .count();
                (usize::from(r == 0), usize::from(r < top_n))
            })
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

/// dinov2's C grid: `10 ** torch.linspace(-6, 5, 45)`.
pub fn dinov2_c_values() -> Vec<f64> {
    (0..45)
        .map(|i| 10f64.powf(-6.0 + 11.0 * i as f64 / 44.0))
        .collect()
}

/// Settings of the logistic-regression sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogRegConfig {
    pub c_values: Vec<f64>,
    pub max_iter: usize,
    pub tol: f64,
    /// Choose C on val (dinov2 `--finetune-on-val`) instead of a held-out 10 % of train.
    pub finetune_on_val: bool,
    pub seed: u64,
}

impl Default for LogRegConfig {
    fn default() -> Self {
        LogRegConfig {
            c_values: dinov2_c_values(),
            max_iter: 1000,
            tol: 1e-12,
            finetune_on_val: false,
            seed: 0,
        }
    }
}

/// One C of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogRegPoint {
    pub c: f64,
    /// top-1 on the selection split, percent.
    pub selection_top1: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// Result of [`logreg_sweep`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogRegResult {
    pub n_train: usize,
    pub n_val: usize,
    pub num_classes: usize,
    pub top5_n: usize,
    /// "held-out 10% of train" or "val".
    pub selection: String,
    pub sweep: Vec<LogRegPoint>,
    pub best_c: f64,
    pub top1: f64,
    pub top5: f64,
    pub final_iterations: usize,
    pub final_converged: bool,
    pub config: LogRegConfig,
}

fn take_rows(x: &Matrix, rows: &[usize]) -> Matrix {
    let mut data = Vec::with_capacity(rows.len() * x.cols);
    for &r in rows {
        data.extend_from_slice(x.row(r));
    }
    Matrix {
        rows: rows.len(),
        cols: x.cols,
        data,
    }
}

/// dinov2 `eval_log_regression` on cached features (module docs).
pub fn logreg_sweep(
    train: &Matrix,
    train_labels: &[usize],
    val: &Matrix,
    val_labels: &[usize],
    num_classes: usize,
    cfg: &LogRegConfig,
) -> Result<LogRegResult> {
    if train.rows != train_labels.len() || val.rows != val_labels.len() {
        return Err(probe_err(format!(
            "features/labels: train {} vs {}, val {} vs {}",
            train.rows,
            train_labels.len(),
            val.rows,
            val_labels.len()
        )));
    }
    if val.rows == 0 || cfg.c_values.is_empty() {
        return Err(probe_err("no val samples or no C values"));
    }
    if let Some(&bad) = val_labels.iter().find(|&&l| l >= num_classes) {
        return Err(probe_err(format!(
            "val label {bad} ≥ num_classes {num_classes}"
        )));
    }
    let top5_n = num_classes.min(5);
    let (fit_x, fit_y, sel_x, sel_y, selection) = if cfg.finetune_on_val {
        (
            train.clone(),
            train_labels.to_vec(),
            val.clone(),
            val_labels.to_vec(),
            "val",
        )
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ STREAM_HOLDOUT);
        let perm = permutation(&mut rng, train.rows);
        let (hold, rest) = perm.split_at(train.rows / 10);
        if hold.is_empty() || rest.is_empty() {
            return Err(probe_err(format!(
                "{} train rows are too few for a 10% held-out split",
                train.rows
            )));
        }
        (
            take_rows(train, rest),
            rest.iter().map(|&r| train_labels[r]).collect(),
            take_rows(train, hold),
            hold.iter().map(|&r| train_labels[r]).collect(),
            "held-out 10% of train",
        )
    };
    let mut cs = cfg.c_values.clone();
    cs.sort_by(f64::total_cmp);
    let mut sweep = Vec::with_capacity(cs.len());
    let mut warm: Option<LogRegModel> = None;
    for &c in &cs {
        let m = fit_logreg(
            &fit_x,
            &fit_y,
            num_classes,
            c,
            cfg.max_iter,
            cfg.tol,
            warm.as_ref(),
        )?;
        let (h1, _) = m.hits(&sel_x, &sel_y, top5_n);
        sweep.push(LogRegPoint {
            c,
            selection_top1: 100.0 * h1 as f64 / sel_y.len() as f64,
            iterations: m.iterations,
            converged: m.converged,
        });
        warm = Some(m);
    }
    // torchmetrics MetricTracker(maximize=True).best_metric: the first maximum in sweep order.
    let mut best = 0;
    for (i, p) in sweep.iter().enumerate() {
        if p.selection_top1 > sweep[best].selection_top1 {
            best = i;
        }
    }
    let best_c = sweep[best].c;
    let (final_x, final_y) = if cfg.finetune_on_val {
        (fit_x, fit_y)
    } else {
        let mut x = fit_x;
        x.data.extend_from_slice(&sel_x.data);
        x.rows += sel_x.rows;
        let mut y = fit_y;
        y.extend_from_slice(&sel_y);
        (x, y)
    };
    let m = fit_logreg(
        &final_x,
        &final_y,
        num_classes,
        best_c,
        cfg.max_iter,
        cfg.tol,
        None,
    )?;
    let (h1, h5) = m.hits(val, val_labels, top5_n);
    Ok(LogRegResult {
        n_train: train.rows,
        n_val: val.rows,
        num_classes,
        top5_n,
        selection: selection.into(),
        sweep,
        best_c,
        top1: 100.0 * h1 as f64 / val.rows as f64,
        top5: 100.0 * h5 as f64 / val.rows as f64,
        final_iterations: m.iterations,
        final_converged: m.converged,
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_dinov2() {
        assert_eq!(
            classifier_name(4, true, 0.1 * 128.0 / 256.0),
            "classifier_4_blocks_avgpool_True_lr_0_05000"
        );
        assert_eq!(
            classifier_name(1, false, 1e-5 * 0.5),
            "classifier_1_blocks_avgpool_False_lr_0_00001"
        );
    }

    #[test]
    fn c_grid_matches_linspace() {
        let c = dinov2_c_values();
        assert_eq!(c.len(), 45);
        assert!((c[0] - 1e-6).abs() < 1e-18);
        assert!((c[44] - 1e5).abs() < 1e-7);
        assert!((c[22] / 10f64.powf(-0.5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn linear_input_order() {
        let m = |v: f32| Matrix::new(1, 1, vec![v]).unwrap();
        let b = BlockFeatures {
            cls: vec![m(1.0), m(2.0), m(3.0), m(4.0)],
            patch_mean: m(9.0),
        };
        assert_eq!(b.linear_input(1, false).unwrap().data, [1.0]);
        assert_eq!(
            b.linear_input(4, true).unwrap().data,
            [4.0, 3.0, 2.0, 1.0, 9.0]
        );
        assert!(b.linear_input(5, false).is_err());
    }

    #[test]
    fn normal_init_has_the_right_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let v = normal_init(&mut rng, 20001, 0.01);
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(mean.abs() < 3e-4, "{mean}");
        assert!((var.sqrt() - 0.01).abs() < 3e-4, "{}", var.sqrt());
    }
}
