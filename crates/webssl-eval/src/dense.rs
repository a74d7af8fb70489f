//! Dense linear probes on frozen patch tokens: semantic segmentation (mIoU) and monocular depth as
//! 256-bin classification (RMSE), after the DINOv2 "linear" dense protocol.
//!
//! Reference: DINOv2 (arXiv 2304.07193) §7.4 and `facebookresearch/dinov2`
//! `dinov2/eval/segmentation/models/decode_heads/linear_head.py` (`BNHead`: a 1×1 conv on the patch
//! tokens, logits resized bilinearly, `align_corners=False`, to the label size) and
//! `dinov2/eval/depth/models/decode_heads/decode_head.py` (`classify=True`, 256 bins spaced linearly
//! in `[min_depth, max_depth]`, prediction = bin centres weighted by the normalised scores, the depth map
//! resized bilinearly to the image).
//!
//! # Protocol implemented here
//!
//! - **Head**: one linear map per token (`W ∈ R^{C×D}`, `b`), i.e. a 1×1 conv on the `[D, h, w]` token
//!   grid, on the final-norm patch tokens of a frozen backbone (dinov2 "linear", without its BatchNorm:
//!   the tokens are already layer-normed and a BN in front of a linear map is itself linear at test time).
//! - **Training targets**: labels resized with NEAREST (PIL rule `src = ⌊(i + ½)·in/out⌋`, the pixel at
//!   each patch's centre) to the patch grid; softmax cross-entropy per token, ignore index
//!   [`IGNORE_INDEX`]; AdamW (torch semantics, weight decay on `W` only) with linear ("poly", power 1)
//!   decay to 0, as mmseg's dinov2 configs (AdamW lr 1e-3, wd 1e-4, poly). Minibatches of tokens from
//!   a ChaCha8 permutation per epoch: deterministic given the seed.
//! - **Evaluation** at full label resolution: seg logits `[C, h, w]` are upsampled bilinearly
//!   (`align_corners=False`, torch's `F.interpolate` rule) to the label size and arg-maxed; mIoU is the
//!   mean IoU over the classes present in the val labels or predicted (a class with empty union is
//!   skipped, as mmseg's `nanmean`), plus pixel accuracy. Depth: bin `k` has centre
//!   `k/(bins−1)·max_depth` (the synthetic `depth.png` rule: 8-bit value `d` ↔ depth `d/255·max_depth`);
//!   the per-token prediction is the softmax-weighted mean of the centres, the `[h, w]` depth map is
//!   upsampled bilinearly, and RMSE / abs-rel (pixels with target > 0) / δ<1.25 are reported in depth
//!   units.
//!
//! # Input
//!
//! [`read_dense_split`] reads WebDataset shards in the synthetic generator's layout (per sample an image,
//! `seg.png` and/or `depth.png`, 8-bit grayscale, same size as the image). The image is preprocessed
//! with an exact square resize (`EvalTransform::square`, bicubic) and the label map NEAREST-resized to
//! the same size, so labels and pixels stay aligned (a centre crop would need the same crop on the
//! labels; the CLI uses the square transform only). Scores are computed at that input resolution,
//! which equals the label resolution when `--size` is the data's own size (the default).
//!
//! # Deliberate deviations
//!
//! - Training is at token resolution (targets resized to the grid) rather than on logits upsampled to
//!   the label size: the probe stays one GEMM per step on CPU; evaluation is at full resolution as in dinov2.
//! - Depth is trained with cross-entropy on the label's bin (a "256-bin classification") instead of
//!   dinov2's SigLoss + gradient loss on the regressed map, and the bin scores are normalised with
//!   softmax instead of `relu + 0.1` normalisation.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::features::{Matrix, read_f32};

/// Label value that is never trained on or scored (mmseg's `ignore_index`).
pub const IGNORE_INDEX: u8 = 255;
/// Number of depth bins (one per 8-bit depth value).
pub const DEPTH_BINS: usize = 256;

fn probe_err(message: impl Into<String>) -> EvalError {
    EvalError::Probe {
        context: "dense".into(),
        message: message.into(),
    }
}

/// NEAREST resize of a row-major `h × w` label map to `out_h × out_w` (PIL's rule:
/// `src = ⌊(i + ½)·in/out⌋`, so each output cell takes the label at its centre).
pub fn resize_nearest(label: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    assert_eq!(label.len(), h * w, "label map is not h × w");
    let src = |i: usize, n_in: usize, n_out: usize| {
        (((i as f64 + 0.5) * n_in as f64 / n_out as f64) as usize).min(n_in - 1)
    };
    let mut out = Vec::with_capacity(out_h * out_w);
    for y in 0..out_h {
        let sy = src(y, h, out_h);
        for x in 0..out_w {
            out.push(label[sy * w + src(x, w, out_w)]);
        }
    }
    out
}

/// Bilinear upsampling of a channel-major `[C, h, w]` map to `[C, out_h, out_w]` with torch's
/// `align_corners=False` rule: `src = max((i + ½)·in/out − ½, 0)`, neighbours clamped at the edge.
pub fn resize_bilinear(
    map: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(map.len(), c * h * w, "map is not C × h × w");
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|i| {
                let s = ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (s - i0 as f64) as f32)
            })
            .collect()
    };
    let ys = axis(h, out_h);
    let xs = axis(w, out_w);
    let mut out = vec![0f32; c * out_h * out_w];
    for ch in 0..c {
        let m = &map[ch * h * w..(ch + 1) * h * w];
        let o = &mut out[ch * out_h * out_w..(ch + 1) * out_h * out_w];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let top = m[y0 * w + x0] * (1.0 - fx) + m[y0 * w + x1] * fx;
                let bot = m[y1 * w + x0] * (1.0 - fx) + m[y1 * w + x1] * fx;
                o[oy * out_w + ox] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    out
}

/// A `C × C` confusion matrix (`counts[target · C + pred]`), ignore-index aware.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    pub num_classes: usize,
    pub counts: Vec<u64>,
}

/// Segmentation scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegScores {
    /// Mean IoU in % over the classes with a non-empty union.
    pub miou: f64,
    /// Pixel accuracy in % over non-ignored pixels.
    pub pixel_acc: f64,
    /// IoU in % per class; `None` where the class is neither present nor predicted.
    pub per_class_iou: Vec<Option<f64>>,
    pub pixels: u64,
}

impl Confusion {
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Adds one pixel; targets equal to [`IGNORE_INDEX`] are skipped. Returns false for a target
    /// outside the class range (the caller counts those).
    pub fn add(&mut self, target: u8, pred: usize) -> bool {
        if target == IGNORE_INDEX {
            return true;
        }
        let t = target as usize;
        if t >= self.num_classes || pred >= self.num_classes {
            return false;
        }
        self.counts[t * self.num_classes + pred] += 1;
        true
    }

    /// IoU per class, mIoU (classes with an empty union skipped) and pixel accuracy.
    pub fn scores(&self) -> SegScores {
        let c = self.num_classes;
        let mut per = Vec::with_capacity(c);
        let (mut correct, mut total) = (0u64, 0u64);
        for k in 0..c {
            let tp = self.counts[k * c + k];
            let row: u64 = self.counts[k * c..(k + 1) * c].iter().sum();
            let col: u64 = (0..c).map(|t| self.counts[t * c + k]).sum();
            let union = row + col - tp;
            per.push((union > 0).then(|| 100.0 * tp as f64 / union as f64));
            correct += tp;
            total += row;
        }
        let valid: Vec<f64> = per.iter().flatten().copied().collect();
        SegScores {
            miou: if valid.is_empty() {
                0.0
            } else {
                valid.iter().sum::<f64>() / valid.len() as f64
            },
            pixel_acc: if total == 0 {
                0.0
            } else {
                100.0 * correct as f64 / total as f64
            },
            per_class_iou: per,
            pixels: total,
        }
    }
}

/// Depth scores, in depth units.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DepthScores {
    pub rmse: f64,
    /// Mean `|pred − gt| / gt` over pixels with `gt > 0`.
    pub abs_rel: f64,
    /// % of pixels (gt > 0) with `max(pred/gt, gt/pred) < 1.25`.
    pub delta1: f64,
    pub pixels: u64,
}

/// Accumulates depth errors over images.
#[derive(Clone, Debug, Default)]
pub struct DepthAccumulator {
    sq: f64,
    n: u64,
    rel: f64,
    d1: u64,
    n_pos: u64,
}

impl DepthAccumulator {
    pub fn add(&mut self, pred: &[f32], target: &[f32]) {
        for (&p, &t) in pred.iter().zip(target) {
            let (p, t) = (p as f64, t as f64);
            self.sq += (p - t) * (p - t);
            self.n += 1;
            if t > 0.0 {
                self.rel += (p - t).abs() / t;
                self.n_pos += 1;
                if p > 0.0 && (p / t).max(t / p) < 1.25 {
                    self.d1 += 1;
                }
            }
        }
    }

    pub fn scores(&self) -> DepthScores {
        let div = |a: f64, n: u64| if n == 0 { 0.0 } else { a / n as f64 };
        DepthScores {
            rmse: div(self.sq, self.n).sqrt(),
            abs_rel: div(self.rel, self.n_pos),
            delta1: 100.0 * div(self.d1 as f64, self.n_pos),
            pixels: self.n,
        }
    }
}

/// Depth of bin `k` of `bins` spread over `[0, max_depth]`.
pub fn bin_centre(k: usize, bins: usize, max_depth: f32) -> f32 {
    k as f32 / (bins - 1) as f32 * max_depth
}

/// Training hyper-parameters of the linear head.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DenseConfig {
    pub epochs: usize,
    /// Tokens per step.
    pub batch_tokens: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for DenseConfig {
    /// mmseg's dinov2 linear configs: AdamW lr 1e-3, wd 1e-4, poly decay; 8 images of 512² at
    /// patch 14 ≈ 10k tokens per step there, 1024 here (small synthetic sets need more steps).
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_tokens: 1024,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// A trained per-token linear head.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    /// `[C, D]`.
    pub weight: Matrix,
    pub bias: Vec<f32>,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    pub steps: usize,
}

/// Trains the head with softmax cross-entropy on `tokens` (`[n, D]`) and `targets` (`[n]`, class ids),
/// AdamW with linear decay (module docs). Gradients are the closed form of the
/// linear softmax-CE (`∂L/∂z = softmax(z) − onehot`, averaged over the non-ignored tokens of the batch),
/// computed with burn GEMMs.
/// `ignore`: the target value that is skipped (segmentation: `Some(IGNORE_INDEX)`; depth: `None`, every
/// 8-bit value is a bin).
pub fn train_head(
    tokens: &Matrix,
    targets: &[u8],
    num_classes: usize,
    ignore: Option<u8>,
    cfg: &DenseConfig,
) -> Result<LinearHead> {
    let (n, d, c) = (tokens.rows, tokens.cols, num_classes);
    if targets.len() != n {
        return Err(probe_err(format!(
            "{n} tokens but {} targets",
            targets.len()
        )));
    }
    if c == 0 || c > 256 {
        return Err(probe_err(format!("{c} classes (expected 1..=256)")));
    }
    let skip = |t: u8| Some(t) == ignore;
    if let Some(&bad) = targets.iter().find(|&&t| !skip(t) && t as usize >= c) {
        return Err(probe_err(format!("target {bad} ≥ num_classes {c}")));
    }
    let used: Vec<usize> = (0..n).filter(|&i| !skip(targets[i])).collect();
    if used.is_empty() {
        return Err(probe_err("no labelled training tokens"));
    }
    if cfg.epochs == 0 || cfg.batch_tokens == 0 || !cfg.lr.is_finite() || cfg.lr <= 0.0 {
        return Err(probe_err("epochs, batch_tokens and lr must be positive"));
    }
    if !cfg.weight_decay.is_finite() || cfg.weight_decay < 0.0 {
        return Err(probe_err("weight decay must be finite and ≥ 0"));
    }
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6465_6e73_6568_6561); // "denshea"
    // dinov2's linear heads start from N(0, 0.01²) and a zero bias.
    let w0: Vec<f32> = (0..c * d).map(|_| 0.01 * normal(&mut rng)).collect();
    let mut w = Tensor::<2>::from_data(TensorData::new(w0, [d, c]), &device);
    let mut b = Tensor::<2>::zeros([1, c], &device);
    let (mut mw, mut vw) = (w.zeros_like(), w.zeros_like());
    let (mut mb, mut vb) = (b.zeros_like(), b.zeros_like());
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let steps_per_epoch = used.len().div_ceil(cfg.batch_tokens);
    let total = cfg.epochs * steps_per_epoch;
    let mut step = 0usize;
    let mut final_loss = 0.0;
    for _ in 0..cfg.epochs {
        let mut order = used.clone();
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut epoch_loss: Option<Tensor<1>> = None;
        for chunk in order.chunks(cfg.batch_tokens) {
            let m = chunk.len();
            let mut xb = Vec::with_capacity(m * d);
            let mut onehot = vec![0f32; m * c];
            for (r, &i) in chunk.iter().enumerate() {
                xb.extend_from_slice(tokens.row(i));
                onehot[r * c + targets[i] as usize] = 1.0;
            }
            let x = Tensor::<2>::from_data(TensorData::new(xb, [m, d]), &device);
            let y = Tensor::<2>::from_data(TensorData::new(onehot, [m, c]), &device);
            let z = x.clone().matmul(w.clone()).add(b.clone());
            let zmax = z.clone().max_dim(1);
            let e = z.clone().sub(zmax.clone()).exp();
            let se = e.clone().sum_dim(1);
            let p = e.div(se.clone());
            // CE = logsumexp(z) − z_y.
            let lse = se.log().add(zmax);
            let zy = z.mul(y.clone()).sum_dim(1);
            // Summed on the device and read once per epoch: a per-step readback is a sync point.
            let batch_loss = webssl_models::kernels::sum(lse.sub(zy));
            epoch_loss = Some(match epoch_loss {
                Some(l) => batch_loss.add(l),
                None => batch_loss,
            });
            let g = p.sub(y).div_scalar(m as f32);
            let gw = x.transpose().matmul(g.clone());
            let gb = g.sum_dim(0);
            // Poly (power 1) decay from lr to 0 over all steps, evaluated before the step as mmseg.
            let lr = cfg.lr * (1.0 - step as f64 / total as f64);
            step += 1;
            let bc1 = 1.0 - beta1.powi(step as i32);
            let bc2 = 1.0 - beta2.powi(step as i32);
            let adam =
                |p: Tensor<2>, m: &mut Tensor<2>, v: &mut Tensor<2>, g: Tensor<2>, wd: f64| {
                    *m = m
                        .clone()
                        .mul_scalar(beta1 as f32)
                        .add(g.clone().mul_scalar((1.0 - beta1) as f32));
                    *v = v
                        .clone()
                        .mul_scalar(beta2 as f32)
                        .add(g.clone().mul(g).mul_scalar((1.0 - beta2) as f32));
                    let denom = v
                        .clone()
                        .div_scalar(bc2 as f32)
                        .sqrt()
                        .add_scalar(eps as f32);
                    let upd = m.clone().div(denom).mul_scalar((lr / bc1) as f32);
                    p.mul_scalar((1.0 - lr * wd) as f32).sub(upd)
                };
            w = adam(w, &mut mw, &mut vw, gw, cfg.weight_decay);
            b = adam(b, &mut mb, &mut vb, gb, 0.0);
        }
        if let Some(l) = epoch_loss {
            final_loss = read_f32(l.reshape([1, 1]), "dense")?[0] as f64 / used.len() as f64;
        }
    }
    let weight = Matrix::new(d, c, read_f32(w, "dense")?)?;
    // Stored as [C, D] (a 1×1 conv weight without the spatial dims).
    let mut wt = vec![0f32; c * d];
    for i in 0..d {
        for k in 0..c {
            wt[k * d + i] = weight.data[i * c + k];
        }
    }
    Ok(LinearHead {
        weight: Matrix::new(c, d, wt)?,
        bias: read_f32(b, "dense")?,
        final_loss,
        steps: total,
    })
}

/// Standard normal from the stream (Box–Muller; one draw per call keeps the stream simple).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl LinearHead {
    /// Logits of the rows of `x` (`[n, D]`) as a row-major `[n, C]` buffer.
    pub fn logits(&self, x: &Matrix) -> Result<Vec<f32>> {
        crate::linear::logits(x, &self.weight, &self.bias)
    }

    pub fn num_classes(&self) -> usize {
        self.weight.rows
    }
}

/// One val image: its tokens (`[gh·gw, D]`, row-major grid) and full-resolution label map.
pub struct DenseImage<'a> {
    pub tokens: &'a Matrix,
    pub grid: (usize, usize),
    pub label: &'a [u8],
    pub size: (usize, usize),
}

fn token_logits_chw(head: &LinearHead, img: &DenseImage<'_>) -> Result<Vec<f32>> {
    let (gh, gw) = img.grid;
    if img.tokens.rows != gh * gw {
        return Err(probe_err(format!(
            "{} tokens for a {gh}×{gw} grid",
            img.tokens.rows
        )));
    }
    if img.label.len() != img.size.0 * img.size.1 {
        return Err(probe_err("label map size does not match its dimensions"));
    }
    let c = head.num_classes();
    let z = head.logits(img.tokens)?;
    // [N, C] → [C, N]
    let mut chw = vec![0f32; c * gh * gw];
    for t in 0..gh * gw {
        for k in 0..c {
            chw[k * gh * gw + t] = z[t * c + k];
        }
    }
    Ok(chw)
}

/// Segmentation: logits upsampled bilinearly to each label map, arg-max, confusion over all images.
/// Returns the scores and the number of pixels whose label is outside the class range (skipped).
pub fn evaluate_seg(head: &LinearHead, images: &[DenseImage<'_>]) -> Result<(SegScores, u64)> {
    let c = head.num_classes();
    let mut conf = Confusion::new(c);
    let mut bad = 0u64;
    for img in images {
        let chw = token_logits_chw(head, img)?;
        let (h, w) = img.size;
        let up = resize_bilinear(&chw, c, img.grid.0, img.grid.1, h, w);
        for (p, &t) in img.label.iter().enumerate() {
            let mut best = 0;
            for k in 1..c {
                if up[k * h * w + p] > up[best * h * w + p] {
                    best = k;
                }
            }
            if !conf.add(t, best) {
                bad += 1;
            }
        }
    }
    Ok((conf.scores(), bad))
}

/// Depth: per-token expected bin centre under the softmax, the map upsampled bilinearly, errors
/// against `label · max_depth / (bins − 1)` at full resolution.
pub fn evaluate_depth(
    head: &LinearHead,
    images: &[DenseImage<'_>],
    max_depth: f32,
) -> Result<DepthScores> {
    let bins = head.num_classes();
    if bins < 2 {
        return Err(probe_err("a depth head needs at least 2 bins"));
    }
    let centres: Vec<f32> = (0..bins).map(|k| bin_centre(k, bins, max_depth)).collect();
    let mut acc = DepthAccumulator::default();
    for img in images {
        let (gh, gw) = img.grid;
        let z = {
            token_logits_chw(head, img)?; // validates the shapes
            head.logits(img.tokens)?
        };
        let mut depth = vec![0f32; gh * gw];
        for (t, out) in depth.iter_mut().enumerate() {
            let row = &z[t * bins..(t + 1) * bins];
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut num, mut den) = (0f64, 0f64);
            for (k, &v) in row.iter().enumerate() {
                let e = ((v - mx) as f64).exp();
                num += e * centres[k] as f64;
                den += e;
            }
            *out = (num / den) as f32;
        }
        let (h, w) = img.size;
        let up = resize_bilinear(&depth, 1, gh, gw, h, w);
        let target: Vec<f32> = img
            .label
            .iter()
            .map(|&v| bin_centre(v as usize, bins, max_depth))
            .collect();
        acc.add(&up, &target);
    }
    Ok(acc.scores())
}

/// One dense-labelled sample, preprocessed: the image at `size × size` (CHW, normalised) and its label
/// map NEAREST-resized to the same size.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseSample {
    pub key: String,
    pub pixels: Vec<f32>,
    pub label: Vec<u8>,
    pub size: u32,
}

/// A sample that was skipped, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

/// Decodes an 8-bit grayscale PNG label map (`seg.png`: class per pixel; `depth.png`: depth bin).
/// Colour or 16-bit maps are refused: converting them would silently change the class ids.
pub fn decode_label_png(bytes: &[u8]) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    match img {
        image::DynamicImage::ImageLuma8(g) => {
            let (w, h) = g.dimensions();
            Ok((g.into_raw(), w, h))
        }
        other => Err(format!(
            "label PNG is {:?}, expected 8-bit grayscale (one class / depth bin per pixel)",
            other.color()
        )),
    }
}

/// The shard files of `input`: a directory's `*.tar*` shards, or the file itself.
fn shard_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        webssl_data::shards::list_shard_files(input).map_err(|e| EvalError::Probe {
            context: input.display().to_string(),
            message: e.to_string(),
        })
    } else if input.is_file() {
        Ok(vec![input.to_path_buf()])
    } else {
        Err(EvalError::Io {
            path: input.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such shard file or directory",
            ),
        })
    }
}

/// Reads the samples of WebDataset shards that have an image and the `member` label map (`seg.png` or
/// `depth.png`), preprocesses the image with `transform` (it must give `size × size`) and
/// NEAREST-resizes the label to `size × size`. Samples without the member, or whose image or label
/// cannot be decoded, are skipped and reported; at most `limit` samples are kept. Everything is held in
/// memory (3·size² f32 per image): use [`for_each_dense_batch`] for large splits.
pub fn read_dense_split(
    inputs: &[PathBuf],
    member: &str,
    transform: &webssl_data::transform::EvalTransform,
    size: u32,
    limit: Option<usize>,
) -> Result<(Vec<DenseSample>, Vec<Skipped>)> {
    let mut out = Vec::new();
    let skipped = for_each_dense_batch(inputs, member, transform, size, limit, 64, &mut |b| {
        out.extend(b);
        Ok(())
    })?;
    Ok((out, skipped))
}

/// [`read_dense_split`] in batches of up to `batch` samples handed to `f` as they are read, so a
/// caller can turn pixels into features without holding the whole split. Returns the skipped samples.
pub fn for_each_dense_batch(
    inputs: &[PathBuf],
    member: &str,
    transform: &webssl_data::transform::EvalTransform,
    size: u32,
    limit: Option<usize>,
    batch: usize,
    f: &mut dyn FnMut(Vec<DenseSample>) -> Result<()>,
) -> Result<Vec<Skipped>> {
    let mut out = Vec::new();
    let mut kept = 0usize;
    let mut skipped = Vec::new();
    let max = limit.unwrap_or(usize::MAX);
    let batch = batch.max(1);
    let preprocess = crate::features::Preprocess {
        transform: transform.clone(),
        size: (size, size),
    };
    'files: for input in inputs {
        for file in shard_files(input)? {
            let iter =
                webssl_data::shards::ShardReader::open(&file).map_err(|e| EvalError::Probe {
                    context: file.display().to_string(),
                    message: e.to_string(),
                })?;
            for sample in iter {
                if kept >= max {
                    break 'files;
                }
                let sample = sample.map_err(|e| EvalError::Probe {
                    context: file.display().to_string(),
                    message: e.to_string(),
                })?;
                let what = format!("{}:{}", file.display(), sample.key);
                let mut skip = |why: String| {
                    skipped.push(Skipped {
                        what: what.clone(),
                        why,
                    })
                };
                let (Some((ext, img_bytes)), Some(label_bytes)) =
                    (sample.image_bytes(), sample.files.get(member))
                else {
                    skip(format!("no image or no `{member}` member"));
                    continue;
                };
                let img = match webssl_data::decode::decode_rgb(
                    img_bytes,
                    &format!("{what}.{ext}"),
                    webssl_data::decode::DEFAULT_MAX_PIXELS,
                ) {
                    Ok(i) => i,
                    Err(e) => {
                        skip(e.to_string());
                        continue;
                    }
                };
                let (label, lw, lh) = match decode_label_png(label_bytes) {
                    Ok(l) => l,
                    Err(e) => {
                        skip(format!("{member}: {e}"));
                        continue;
                    }
                };
                if (lw, lh) != img.dimensions() {
                    skip(format!(
                        "{member} is {lw}x{lh} but the image is {}x{}",
                        img.width(),
                        img.height()
                    ));
                    continue;
                }
                let pixels = match preprocess.apply(&img) {
                    Ok(px) => px,
                    Err(why) => {
                        skip(why);
                        continue;
                    }
                };
                let label = resize_nearest(
                    &label,
                    lh as usize,
                    lw as usize,
                    size as usize,
                    size as usize,
                );
                out.push(DenseSample {
                    key: sample.key.clone(),
                    pixels,
                    label,
                    size,
                });
                kept += 1;
                if out.len() == batch {
                    f(std::mem::take(&mut out))?;
                }
            }
        }
    }
    if !out.is_empty() {
        f(out)?;
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miou_on_a_hand_made_confusion() {
        // 3 classes; class 2 never appears nor is predicted → skipped.
        let mut c = Confusion::new(3);
        for (t, p, n) in [(0u8, 0usize, 8), (0, 1, 2), (1, 1, 5), (1, 0, 1)] {
            for _ in 0..n {
                assert!(c.add(t, p));
            }
        }
        assert!(
            c.add(IGNORE_INDEX, 2),
            "ignored pixels are accepted and not counted"
        );
        assert!(!c.add(3, 0));
        let s = c.scores();
        // IoU0 = 8 / (10 + 9 − 8) = 8/11; IoU1 = 5 / (6 + 7 − 5) = 5/8.
        let expect = 100.0 * (8.0 / 11.0 + 5.0 / 8.0) / 2.0;
        assert!((s.miou - expect).abs() < 1e-9, "{} vs {expect}", s.miou);
        assert!((s.pixel_acc - 100.0 * 13.0 / 16.0).abs() < 1e-9);
        assert_eq!(s.per_class_iou[2], None);
        assert_eq!(s.pixels, 16);
    }

    #[test]
    fn depth_errors() {
        let mut a = DepthAccumulator::default();
        a.add(&[1.0, 2.0, 3.0, 0.5], &[1.0, 2.5, 2.0, 0.0]);
        let s = a.scores();
        // Squared errors 0, 0.25, 1, 0.25 → RMSE √(1.5/4); abs-rel over gt > 0: (0 + 0.2 + 0.5) / 3;
        // δ1: ratios 1, 1.25 (not < 1.25), 1.5 → 1 of 3.
        assert!((s.rmse - (1.5f64 / 4.0).sqrt()).abs() < 1e-9);
        assert!((s.abs_rel - 0.7 / 3.0).abs() < 1e-9);
        assert!((s.delta1 - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(bin_centre(255, 256, 10.0), 10.0);
        assert_eq!(bin_centre(0, 256, 10.0), 0.0);
    }

    #[test]
    fn nearest_takes_patch_centres() {
        // 4×4 → 2×2 takes pixels (1, 1), (1, 3), (3, 1), (3, 3) (PIL: ⌊(i + ½)·2⌋ = 1, 3).
        let label: Vec<u8> = (0..16).collect();
        assert_eq!(resize_nearest(&label, 4, 4, 2, 2), vec![5, 7, 13, 15]);
        // Upscaling repeats; identity is identity.
        assert_eq!(resize_nearest(&[1, 2], 1, 2, 1, 4), vec![1, 1, 2, 2]);
        assert_eq!(resize_nearest(&label, 4, 4, 4, 4), label);
    }

    #[test]
    fn bilinear_matches_torch_align_corners_false() {
        // torch: F.interpolate(tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode="bilinear",
        // align_corners=False) rows: [0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5],
        // [2, 2.25, 2.75, 3].
        let up = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in up.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{up:?}");
        }
        // Channels are independent; same size is identity.
        let m: Vec<f32> = (0..18).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&m, 2, 3, 3, 3, 3), m);
    }
}
