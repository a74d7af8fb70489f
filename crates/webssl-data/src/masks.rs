//! Token masks: iBOT block masking with dinov2's batch collation, and MAE random masking.
//!
//! # What is implemented
//!
//! - [`MaskingGenerator`]: BEiT-style block masking as `dinov2/data/masking.py` (facebookresearch/dinov2
//!   at b8931f7b): blocks of area `U(min_num_patches, budget)` and log-uniform aspect in `[0.3, 1/0.3]`,
//!   `h = round(sqrt(area·ar))`, `w = round(sqrt(area/ar))` (Python's round-half-to-even), up to 10
//!   attempts per block, a block counts only if it adds `0 < new ≤ budget` cells; stops early when one
//!   round of attempts adds nothing. Optional `complete_randomly` (dinov3's addition, **off** by default
//!   because dinov2 at b8931f7b does not have it) tops the mask up with uniformly chosen free cells so the
//!   count equals the target exactly.
//! - [`collate_ibot_masks`]: dinov2 `collate_data_and_cast` for the `n_crops = 2·B` global crops:
//!   `n_masked = int(n_crops · p)`, strata `torch.linspace(min, max, n_masked + 1)` in float32, per
//!   stratum `ratio = lo + (hi − lo)·U` and target `int(N · ratio)` (float32 arithmetic, as the reference
//!   computes on 0-dim float tensors), the other crops unmasked, the list shuffled over crops; then
//!   `mask_indices_list`, `masks_weight = 1/max(1, |mask_b|)` per masked token, `n_masked_patches` and
//!   `upperbound = Σ int(N · hi)`.
//! - [`mae_mask_from_noise`] / [`mae_random_mask`]: `facebookresearch/mae` `random_masking`: noise →
//!   `ids_shuffle = argsort(noise)` (small = keep) → `ids_restore = argsort(ids_shuffle)`,
//!   `len_keep = int(L·(1 − ratio))`, mask (1 = removed) in original token order.
//!
//! # Randomness and parity
//!
//! All draws go through [`MaskDraws`], implemented for `ChaCha8Rng` (streams from
//! [`crate::sampler::rng_stream`]). The committed script `fixtures/masks/make_masks.py` runs the
//! reference dinov2 code while *recording* every draw; the tests replay those draws through the same
//! trait and reproduce the reference masks, strata, `upperbound`, indices and weights exactly. With our
//! own ChaCha streams only invariants can be tested (counts, bounds, block geometry).
//!
//! # Deliberate deviations
//!
//! - `torch.linspace` is reproduced as torch's FMA-compiled CPU kernels round it ([`torch_linspace`]);
//!   a torch build without FMA could differ by an ulp, which would flip `int(N·ratio)` only when the
//!   product lands exactly on an integer.
//! - Ties in MAE's `argsort` (equal noise values, probability ~L²/2²⁴ per sample) are broken by token
//!   index (stable sort); torch's unstable argsort leaves them unspecified.

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::sampler::{below, shuffle, unit_f64};

/// The random draws masking needs, in the form the reference code makes them.
///
/// Implemented for `ChaCha8Rng`; the tests implement it by replaying draws recorded from the Python
/// reference, which is how exact parity of the algorithm (not of the RNG) is checked.
pub trait MaskDraws {
    /// A uniform `f64` in `[0, 1)` (Python `random.random()`; `uniform(a, b) = a + (b − a)·unit()`).
    fn unit(&mut self) -> f64;
    /// A uniform integer in `[lo, hi]`, both inclusive (Python `random.randint`).
    fn randint(&mut self, lo: usize, hi: usize) -> usize;
    /// A uniformly random permutation `p` of `0..n`; the shuffled list is `new[i] = old[p[i]]`.
    fn permutation(&mut self, n: usize) -> Vec<usize>;
    /// `k ≤ pool.len()` distinct elements of `pool` (numpy `choice(pool, k, replace=False)`).
    fn choose(&mut self, pool: &[usize], k: usize) -> Vec<usize>;
}

impl MaskDraws for ChaCha8Rng {
    fn unit(&mut self) -> f64 {
        unit_f64(self)
    }
    fn randint(&mut self, lo: usize, hi: usize) -> usize {
        lo + below(self, (hi - lo) as u64 + 1) as usize
    }
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        shuffle(self, &mut p);
        p
    }
    fn choose(&mut self, pool: &[usize], k: usize) -> Vec<usize> {
        // Partial Fisher–Yates: the first k slots of a shuffled copy.
        let mut xs = pool.to_vec();
        let k = k.min(xs.len());
        for i in 0..k {
            let j = i + below(self, (xs.len() - i) as u64) as usize;
            xs.swap(i, j);
        }
        xs.truncate(k);
        xs
    }
}

/// One rectangle placed by the block-masking loop (grid coordinates, in patches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
    /// Cells this block newly masked (it may overlap earlier blocks).
    pub added: usize,
    /// The sampled area and aspect (`height/width` before rounding) the rectangle came from.
    pub area: f64,
    pub aspect: f64,
}

/// A generated mask with the blocks that made it (for diagnostics and invariant tests).
#[derive(Clone, Debug)]
pub struct BlockMask {
    /// Row-major `height × width`, `true` = masked.
    pub mask: Vec<bool>,
    pub blocks: Vec<Block>,
    /// Cells added by `complete_randomly` (0 when it is off).
    pub completed: usize,
}

/// Block-wise mask generator (dinov2 `MaskingGenerator`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskingGenerator {
    /// Patch grid rows.
    pub height: usize,
    /// Patch grid columns.
    pub width: usize,
    /// Lower end of a block's sampled area (dinov2: 4).
    pub min_num_patches: f64,
    /// Cap on one block's budget (dinov2 train: `0.5·img // patch · img // patch`, see [`Self::dinov2`]).
    pub max_num_patches: f64,
    /// Aspect range `[min_aspect, max_aspect]`, sampled log-uniformly (dinov2: 0.3 and 1/0.3).
    pub min_aspect: f64,
    pub max_aspect: f64,
    /// Rectangles tried per block before giving up (dinov2: 10).
    pub max_attempts: usize,
    /// Top up with random free cells to hit the target exactly (dinov3); dinov2 leaves it short.
    pub complete_randomly: bool,
}

impl MaskingGenerator {
    /// A generator for a `height × width` grid with dinov2's defaults and `max_num_patches = 0.5·N`.
    pub fn new(height: usize, width: usize) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(DataError::Config {
                field: "mask grid".into(),
                reason: format!("grid must be non-empty, got {height}x{width}"),
            });
        }
        Ok(Self {
            height,
            width,
            min_num_patches: 4.0,
            max_num_patches: 0.5 * (height * width) as f64,
            min_aspect: 0.3,
            max_aspect: 1.0 / 0.3,
            max_attempts: 10,
            complete_randomly: false,
        })
    }

    /// The generator dinov2's `train.py` builds for `img_size`/`patch_size`, including its
    /// `max_num_patches = 0.5 * img_size // patch_size * img_size // patch_size`, which (by Python's
    /// left-to-right float floor division) is `128` for 224/14 and `98` for 224/16, but e.g. `666`
    /// rather than `684.5` for 518/14.
    pub fn dinov2(img_size: usize, patch_size: usize) -> Result<Self> {
        if patch_size == 0 || img_size < patch_size {
            return Err(DataError::Config {
                field: "patch_size".into(),
                reason: format!("image size {img_size} must be at least one patch of {patch_size}"),
            });
        }
        let grid = img_size / patch_size;
        let (img, p) = (img_size as f64, patch_size as f64);
        let max = (((0.5 * img) / p).floor() * img / p).floor();
        Ok(Self {
            max_num_patches: max,
            ..Self::new(grid, grid)?
        })
    }

    /// Number of grid cells `N = height · width`.
    pub fn num_patches(&self) -> usize {
        self.height * self.width
    }

    /// A mask with (up to, or exactly with `complete_randomly`) `target` masked cells, row-major.
    pub fn generate(&self, target: usize, draws: &mut impl MaskDraws) -> Vec<bool> {
        self.generate_blocks(target, draws).mask
    }

    /// As [`Self::generate`], also returning the placed blocks.
    pub fn generate_blocks(&self, target: usize, draws: &mut impl MaskDraws) -> BlockMask {
        let target = target.min(self.num_patches());
        let mut mask = vec![false; self.num_patches()];
        let mut blocks = Vec::new();
        let mut count = 0usize;
        while count < target {
            let budget = ((target - count) as f64).min(self.max_num_patches);
            let delta = self.place_block(&mut mask, budget, draws, &mut blocks);
            if delta == 0 {
                break;
            }
            count += delta;
        }
        let mut completed = 0;
        if self.complete_randomly && count < target {
            let free: Vec<usize> = (0..mask.len()).filter(|&i| !mask[i]).collect();
            for i in draws.choose(&free, target - count) {
                mask[i] = true;
                completed += 1;
            }
        }
        BlockMask {
            mask,
            blocks,
            completed,
        }
    }

    /// One block: up to `max_attempts` rectangles until one adds `0 < new ≤ budget` cells.
    fn place_block(
        &self,
        mask: &mut [bool],
        budget: f64,
        draws: &mut impl MaskDraws,
        blocks: &mut Vec<Block>,
    ) -> usize {
        let (log_lo, log_hi) = (self.min_aspect.ln(), self.max_aspect.ln());
        for _ in 0..self.max_attempts {
            let area = self.min_num_patches + (budget - self.min_num_patches) * draws.unit();
            let aspect = (log_lo + (log_hi - log_lo) * draws.unit()).exp();
            // Python's round() is round-half-to-even.
            let h = (area * aspect).sqrt().round_ties_even() as usize;
            let w = (area / aspect).sqrt().round_ties_even() as usize;
            if w < self.width && h < self.height {
                let top = draws.randint(0, self.height - h);
                let left = draws.randint(0, self.width - w);
                let mut already = 0;
                for r in top..top + h {
                    already += mask[r * self.width + left..r * self.width + left + w]
                        .iter()
                        .filter(|&&m| m)
                        .count();
                }
                let new = h * w - already;
                if new > 0 && new as f64 <= budget {
                    for r in top..top + h {
                        mask[r * self.width + left..r * self.width + left + w].fill(true);
                    }
                    blocks.push(Block {
                        top,
                        left,
                        height: h,
                        width: w,
                        added: new,
                        area,
                        aspect,
                    });
                    return new;
                }
            }
        }
        0
    }
}

/// `torch.linspace(start, end, steps)` in float32 as torch's CPU kernel computes it: `step = (end −
/// start)/(steps − 1)`; index `i < steps/2` gives `start + step·i`, else `end − step·(steps − i − 1)`,
/// each a fused multiply-add (the AVX2/AVX-512 kernels are compiled with FMA contraction). Checked
/// bit for bit against torch for 1–257 steps (fixtures/masks).
pub fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => return Vec::new(),
        1 => return vec![start],
        _ => {}
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// iBOT mask-sampling parameters (dinov2 `ibot.mask_ratio_min_max`, `ibot.mask_sample_probability`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IbotMaskConfig {
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Fraction of the global crops that get a mask (dinov2: 0.5).
    pub probability: f64,
}

impl Default for IbotMaskConfig {
    fn default() -> Self {
        Self {
            ratio_min: 0.1,
            ratio_max: 0.5,
            probability: 0.5,
        }
    }
}

impl IbotMaskConfig {
    /// Checks `0 ≤ min ≤ max ≤ 1` and `0 ≤ probability ≤ 1`.
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..=1.0).contains(&self.ratio_min)
            && (0.0..=1.0).contains(&self.ratio_max)
            && self.ratio_min <= self.ratio_max;
        if !ok {
            return Err(DataError::Config {
                field: "ibot.mask_ratio_min_max".into(),
                reason: format!(
                    "need 0 <= min <= max <= 1, got [{}, {}]",
                    self.ratio_min, self.ratio_max
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(DataError::Config {
                field: "ibot.mask_sample_probability".into(),
                reason: format!("need a probability in [0, 1], got {}", self.probability),
            });
        }
        Ok(())
    }
}

/// The deterministic half of the collate: per-crop targets before the shuffle, and `upperbound`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbotPlan {
    /// `n_crops` targets; the first `n_masked` come from the strata, the rest are 0.
    pub targets: Vec<usize>,
    pub upperbound: usize,
}

/// Stratified per-crop mask targets (see the module docs); draws one `unit()` per masked crop.
pub fn ibot_plan(
    n_crops: usize,
    n_tokens: usize,
    cfg: &IbotMaskConfig,
    draws: &mut impl MaskDraws,
) -> IbotPlan {
    let strata = Strata::new(n_crops, n_tokens, cfg);
    let mut targets: Vec<usize> = (0..strata.n_masked)
        .map(|i| strata.target(i, draws.unit()))
        .collect();
    targets.resize(n_crops, 0);
    IbotPlan {
        targets,
        upperbound: strata.upperbound(),
    }
}

/// The float32 strata of dinov2's collate.
struct Strata {
    n_masked: usize,
    probs: Vec<f32>,
    n: f32,
}

impl Strata {
    fn new(n_crops: usize, n_tokens: usize, cfg: &IbotMaskConfig) -> Self {
        let n_masked = ((n_crops as f64 * cfg.probability) as usize).min(n_crops);
        let probs = torch_linspace(cfg.ratio_min as f32, cfg.ratio_max as f32, n_masked + 1);
        Self {
            n_masked,
            probs,
            n: n_tokens as f32,
        }
    }

    /// `int(N · (lo + (hi − lo)·u))` for stratum `i`, in float32 like the 0-dim tensors of the reference.
    fn target(&self, i: usize, u: f64) -> usize {
        let (lo, hi) = (self.probs[i], self.probs[i + 1]);
        (self.n * (lo + (hi - lo) * u as f32)) as usize
    }

    fn upperbound(&self) -> usize {
        (0..self.n_masked)
            .map(|i| (self.n * self.probs[i + 1]) as usize)
            .sum()
    }
}

/// iBOT masks for a batch of global crops, with dinov2's collate extras.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IbotMasks {
    pub n_crops: usize,
    pub n_tokens: usize,
    /// `[n_crops, n_tokens]` row-major, `true` = masked; crop order as the collated global crops.
    pub masks: Vec<bool>,
    /// Flat indices `crop·n_tokens + token` of the masked tokens, ascending.
    pub mask_indices_list: Vec<i64>,
    /// Per masked token (same order): `1 / max(1, masked tokens in its crop)`.
    pub masks_weight: Vec<f32>,
    /// `mask_indices_list.len()`.
    pub n_masked_patches: usize,
    /// `Σ int(N · hi)` over the strata: a static bound on `n_masked_patches`.
    pub upperbound: usize,
}

impl IbotMasks {
    /// The collate extras for given masks (`[n_crops, n_tokens]` row-major).
    pub fn from_masks(
        masks: Vec<bool>,
        n_crops: usize,
        n_tokens: usize,
        upperbound: usize,
    ) -> Self {
        assert_eq!(
            masks.len(),
            n_crops * n_tokens,
            "masks must be [n_crops, n_tokens]"
        );
        let mut mask_indices_list = Vec::new();
        let mut masks_weight = Vec::new();
        for c in 0..n_crops {
            let row = &masks[c * n_tokens..(c + 1) * n_tokens];
            let count = row.iter().filter(|&&m| m).count();
            let weight = 1.0f32 / count.max(1) as f32;
            for (t, &m) in row.iter().enumerate() {
                if m {
                    mask_indices_list.push((c * n_tokens + t) as i64);
                    masks_weight.push(weight);
                }
            }
        }
        let n_masked_patches = mask_indices_list.len();
        Self {
            n_crops,
            n_tokens,
            masks,
            mask_indices_list,
            masks_weight,
            n_masked_patches,
            upperbound,
        }
    }

    /// Masked-token count of each crop.
    pub fn counts(&self) -> Vec<usize> {
        self.masks
            .chunks(self.n_tokens.max(1))
            .map(|r| r.iter().filter(|&&m| m).count())
            .collect()
    }
}

/// dinov2 `collate_data_and_cast` masks for `n_crops` global crops of `generator.num_patches()` tokens.
pub fn collate_ibot_masks(
    generator: &MaskingGenerator,
    n_crops: usize,
    cfg: &IbotMaskConfig,
    draws: &mut impl MaskDraws,
) -> IbotMasks {
    let n_tokens = generator.num_patches();
    let strata = Strata::new(n_crops, n_tokens, cfg);
    // Draw order as the reference: each stratum's ratio, then that crop's blocks.
    let mut per_crop = Vec::with_capacity(n_crops);
    for i in 0..strata.n_masked {
        let target = strata.target(i, draws.unit());
        per_crop.push(generator.generate(target, draws));
    }
    per_crop.resize(n_crops, vec![false; n_tokens]);
    let perm = draws.permutation(n_crops);
    let mut masks = Vec::with_capacity(n_crops * n_tokens);
    for &p in &perm {
        masks.extend_from_slice(&per_crop[p]);
    }
    IbotMasks::from_masks(masks, n_crops, n_tokens, strata.upperbound())
}

/// `len_keep = int(L · (1 − ratio))` (float64, truncation, as the reference).
pub fn mae_len_keep(length: usize, mask_ratio: f64) -> usize {
    ((length as f64 * (1.0 - mask_ratio)) as usize).min(length)
}

/// One sample's MAE masking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaeMask {
    pub len_keep: usize,
    /// Token indices sorted by noise (ascending); the first `len_keep` are kept.
    pub ids_shuffle: Vec<usize>,
    /// Inverse permutation of `ids_shuffle`.
    pub ids_restore: Vec<usize>,
    /// `true` = removed, in original token order.
    pub mask: Vec<bool>,
}

impl MaeMask {
    /// The kept token indices (`ids_shuffle[..len_keep]`).
    pub fn ids_keep(&self) -> &[usize] {
        &self.ids_shuffle[..self.len_keep]
    }
}

/// MAE masking for a given noise vector (one value per token).
pub fn mae_mask_from_noise(noise: &[f32], mask_ratio: f64) -> MaeMask {
    let length = noise.len();
    let len_keep = mae_len_keep(length, mask_ratio);
    let mut ids_shuffle: Vec<usize> = (0..length).collect();
    ids_shuffle.sort_by(|&a, &b| noise[a].total_cmp(&noise[b]));
    let mut ids_restore = vec![0; length];
    for (rank, &id) in ids_shuffle.iter().enumerate() {
        ids_restore[id] = rank;
    }
    let mask = ids_restore.iter().map(|&r| r >= len_keep).collect();
    MaeMask {
        len_keep,
        ids_shuffle,
        ids_restore,
        mask,
    }
}

/// MAE masking with noise `U[0, 1)` at float32 resolution (24 bits, like `torch.rand`).
pub fn mae_random_mask(length: usize, mask_ratio: f64, rng: &mut ChaCha8Rng) -> MaeMask {
    use rand_core::Rng;
    let noise: Vec<f32> = (0..length)
        .map(|_| (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32))
        .collect();
    mae_mask_from_noise(&noise, mask_ratio)
}

/// MAE masks for a batch, flattened `[n, length]` for the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaeMasks {
    pub n: usize,
    pub length: usize,
    pub len_keep: usize,
    pub ids_shuffle: Vec<i64>,
    pub ids_restore: Vec<i64>,
    /// `1.0` = removed (the loss weight), `0.0` = kept.
    pub mask: Vec<f32>,
}

impl MaeMasks {
    /// Stacks per-sample masks (all of one length and ratio).
    pub fn stack(per_sample: &[MaeMask]) -> Self {
        let length = per_sample.first().map_or(0, |m| m.ids_shuffle.len());
        let len_keep = per_sample.first().map_or(0, |m| m.len_keep);
        let mut out = Self {
            n: per_sample.len(),
            length,
            len_keep,
            ids_shuffle: Vec::with_capacity(per_sample.len() * length),
            ids_restore: Vec::with_capacity(per_sample.len() * length),
            mask: Vec::with_capacity(per_sample.len() * length),
        };
        for m in per_sample {
            assert_eq!(
                m.ids_shuffle.len(),
                length,
                "MAE masks of different lengths"
            );
            out.ids_shuffle
                .extend(m.ids_shuffle.iter().map(|&i| i as i64));
            out.ids_restore
                .extend(m.ids_restore.iter().map(|&i| i as i64));
            out.mask
                .extend(m.mask.iter().map(|&b| if b { 1.0 } else { 0.0 }));
        }
        out
    }
}
