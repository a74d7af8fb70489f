//! One DINOv2 forward: teacher targets, student logits and the three losses
//! (docs/reference/training-algorithms.md §0, §4). Separate forwards for global and local crops replace
//! dinov2's packed sequence (§1.5: mathematically identical).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand_core::Rng;
use webssl_data::loader::Batch;
use webssl_models::kernels;
use webssl_models::params::scalar;

use super::config::{Centering, DinoConfig};
use super::model::DinoModel;
use crate::dist::{Dist, ReduceOp};
use crate::objectives::{self, Centering as CenterState};

/// Loss terms of one step (the total keeps the autodiff graph).
pub struct StepLoss {
    pub total: Tensor<1>,
    pub dino: f64,
    pub ibot: f64,
    pub koleo: f64,
    /// Mean entropy of the teacher's DINO targets (nats): ≈ ln K is uniform collapse, ≈ 0 one-hot.
    pub teacher_entropy: f64,
    pub n_masked: usize,
}

/// Centres carried across steps in `centering` mode.
pub struct Centres {
    pub dino: CenterState,
    pub ibot: CenterState,
}

fn tensor4(values: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Stochastic-depth keep-sets for every block of one forward, from an explicit stream.
fn keep_sets(
    rate: f64,
    batch: usize,
    depth: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Vec<(Tensor<1, Int>, Tensor<1, Int>)> {
    let keep = ((batch as f64 * (1.0 - rate)) as usize).max(1);
    let mut draw = || {
        // Partial Fisher-Yates: the first `keep` of a uniform permutation (torch.randperm(B)[:keep]).
        let mut idx: Vec<i64> = (0..batch as i64).collect();
        for i in 0..keep {
            let j = i + (rng.next_u64() % (batch - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut chosen = idx[..keep].to_vec();
        chosen.sort_unstable();
        Tensor::<1, Int>::from_data(TensorData::new(chosen, [keep]), device)
    };
    (0..depth).map(|_| (draw(), draw())).collect()
}

/// Teacher targets and student losses for one batch.
pub fn forward(
    cfg: &DinoConfig,
    student: &DinoModel,
    teacher: &DinoModel,
    batch: &Batch,
    teacher_temp: f64,
    centres: &mut Option<Centres>,
    drop_rng: &mut impl Rng,
    dist: &Dist,
    device: &Device,
) -> StepLoss {
    let b = batch.batch_size;
    let g = cfg.crops.global_size as usize;
    let l = cfg.crops.local_size as usize;
    let n_local = cfg.crops.n_local;
    let inner = device.clone().inner();
    let globals_t = tensor4(&batch.views[0], [2 * b, 3, g, g], &inner);
    let globals_s = tensor4(&batch.views[0], [2 * b, 3, g, g], device);
    // No local crops (`crops.n_local = 0`) is a valid recipe: dinov2 then has no local-crop loss
    // terms (`if n_local_crops > 0`), and an empty batch must not reach the ViT's kernels.
    let locals_s = (n_local > 0).then(|| tensor4(&batch.views[1], [n_local * b, 3, l, l], device));

    let ibot = batch
        .ibot
        .as_ref()
        .expect("the DINO loader draws iBOT masks");
    let n_tokens = ibot.n_tokens;
    let m = ibot.n_masked_patches;
    // Masked patches over all ranks: iBOT runs (and takes part in the collectives) everywhere when
    // any rank has one, even on a rank that has none itself.
    let mut m_all = [m as f64];
    dist.all_reduce_f64("masked patch count", &mut m_all, ReduceOp::Sum);
    let ibot_on = m_all[0] > 0.0;
    let mask_idx = |dev: &Device| {
        Tensor::<1, Int>::from_data(TensorData::new(ibot.mask_indices_list.clone(), [m]), dev)
    };
    let masks = Tensor::<2, Bool>::from_data(
        TensorData::new(ibot.masks.clone(), [2 * b, n_tokens]),
        device,
    );

    // ---- teacher: global crops, unmasked, no gradient ----
    let t_out = teacher.backbone.forward_features(globals_t, None);
    let d = t_out.cls.dims()[1];
    let t_cls_logits = teacher.dino_head.forward(t_out.cls);
    let k_dino = t_cls_logits.dims()[1];
    let t_patch_logits = (m > 0).then(|| {
        let patches = t_out
            .patches
            .reshape([2 * b * n_tokens, d])
            .select(0, mask_idx(&inner));
        teacher.patch_head().forward(patches)
    });
    let k_ibot = if cfg.heads.ibot_separate_head {
        cfg.heads.ibot_prototypes
    } else {
        k_dino
    };
    let (t_cls, t_patch) = match (cfg.loss.centering, centres.as_mut()) {
        (Centering::SinkhornKnopp, _) => {
            let sk = |t: Option<Tensor<2>>, k: usize| {
                objectives::sinkhorn_knopp_dist(t, k, teacher_temp, 3, dist, &inner)
            };
            let cls = sk(Some(t_cls_logits.clone()), k_dino).expect("local cls logits");
            let patch = if ibot_on {
                sk(t_patch_logits, k_ibot)
            } else {
                None
            };
            (cls, patch)
        }
        (Centering::Centering, Some(c)) => {
            let cls = c.dino.softmax_centered(t_cls_logits.clone(), teacher_temp);
            let patch = t_patch_logits
                .as_ref()
                .map(|t| c.ibot.softmax_centered(t.clone(), teacher_temp));
            if ibot_on {
                c.ibot.update_mean_of_ranks(t_patch_logits, dist);
            }
            c.dino.update_global(t_cls_logits.clone(), dist);
            (cls, patch)
        }
        (Centering::Centering, None) => unreachable!("centres exist in centering mode"),
    };
    let teacher_entropy = entropy(&t_cls);
    // Teacher targets per global view in natural order; `dino_loss` pairs student view v with teacher 1 - v.
    let t_views = vec![
        Tensor::from_inner(t_cls.clone().slice(0..b)),
        Tensor::from_inner(t_cls.slice(b..2 * b)),
    ];

    // ---- student: masked global crops and local crops ----
    let rate = cfg.drop_path_rate();
    let depth = student.backbone.blocks.len();
    let mut drop = |n: usize| (rate > 0.0).then(|| keep_sets(rate, n, depth, drop_rng, device));
    let keep_g = drop(2 * b);
    let s_g = student
        .backbone
        .forward_features_drop(globals_s, Some(masks), &mut |i| {
            keep_g.as_ref().map(|k| k[i].clone())
        });
    let s_l = locals_s.map(|locals_s| {
        let keep_l = drop(n_local * b);
        student
            .backbone
            .forward_features_drop(locals_s, None, &mut |i| {
                keep_l.as_ref().map(|k| k[i].clone())
            })
    });
    // The DINO head once over every row it sees — global and local cls tokens, and the masked patch
    // tokens when iBOT shares it — as dinov2 does: the weight-normalised 65,536-prototype layer is
    // formed (and back-propagated) once per step instead of three times. The head is row-wise, so this
    // is the same function of each row.
    let s_patch = t_patch.as_ref().map(|_| {
        s_g.patches
            .clone()
            .reshape([2 * b * n_tokens, d])
            .select(0, mask_idx(device))
    });
    let shared = student.ibot_head.is_none();
    let (n_g, n_l) = (2 * b, n_local * b);
    let mut rows = vec![s_g.cls.clone()];
    rows.extend(s_l.map(|s_l| s_l.cls));
    if let (true, Some(p)) = (shared, s_patch.as_ref()) {
        rows.push(p.clone());
    }
    let head_out = student.dino_head.forward(Tensor::cat(rows, 0));
    let n_rows = head_out.dims()[0];
    let s_g_logits = head_out.clone().slice(0..n_g);
    let s_l_logits = (n_l > 0).then(|| head_out.clone().slice(n_g..n_g + n_l));
    let s_patch_logits = match (shared, s_patch) {
        (true, Some(_)) => Some(head_out.slice(n_g + n_l..n_rows)),
        (false, Some(p)) => Some(student.patch_head().forward(p)),
        (_, None) => None,
    };
    let mut student_crops = vec![s_g_logits.clone().slice(0..b), s_g_logits.slice(b..2 * b)];
    if let Some(s_l_logits) = s_l_logits {
        for v in 0..n_local {
            student_crops.push(s_l_logits.clone().slice(v * b..(v + 1) * b));
        }
    }
    let dino = objectives::dino_loss(&student_crops, &t_views, cfg.loss.student_temp);

    let ibot_loss = match (t_patch, s_patch_logits) {
        // No masked patch on this rank (but on another): the iBOT term is 0 here; averaging the
        // gradients over ranks then weighs each rank's images as the one-process global batch does.
        (Some(t_patch), Some(s_patch_logits)) => {
            let weights =
                Tensor::<1>::from_data(TensorData::new(ibot.masks_weight.clone(), [m]), device);
            objectives::ibot_loss(
                s_patch_logits,
                Tensor::from_inner(t_patch),
                weights,
                2 * b,
                cfg.loss.student_temp,
            )
        }
        _ => Tensor::zeros([1], device),
    };
    let koleo = objectives::koleo_loss(s_g.cls.clone().slice(0..b))
        + objectives::koleo_loss(s_g.cls.slice(b..2 * b));

    let (dino_v, ibot_v, koleo_v) = (
        scalar(dino.clone()),
        scalar(ibot_loss.clone()),
        scalar(koleo.clone()),
    );
    let total = dino * cfg.loss.dino_weight
        + ibot_loss * cfg.loss.ibot_weight
        + koleo * cfg.loss.koleo_weight;
    StepLoss {
        total,
        dino: dino_v,
        ibot: ibot_v,
        koleo: koleo_v,
        teacher_entropy,
        n_masked: m,
    }
}

/// Mean row entropy of a `[B, K]` probability matrix.
fn entropy(p: &Tensor<2>) -> f64 {
    let p = p.clone();
    let h = kernels::mean((p.clone() * p.clamp_min(1e-12).log()).sum_dim(1).neg());
    scalar(h)
}
