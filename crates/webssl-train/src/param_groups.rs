//! Per-parameter optimisation rules (lr multiplier, weight-decay multiplier, last-layer flag), decided
//! by parameter path exactly like the reference implementations decide them by `named_parameters()`.
//!
//! - [`dinov2_rule`]: `facebookresearch/dinov2` @ b8931f7b `dinov2/utils/param_groups.py`
//!   (`get_params_groups_with_decay` + `get_vit_lr_decay_rate`), see
//!   `docs/reference/training-algorithms.md` §5.3. Layer id 0 for `pos_embed`, `patch_embed.*`,
//!   `mask_token`, `cls_token`, `register_tokens`; block `i` → `i+1`; everything else → `L+1`;
//!   `lr_mult = decay^(L+1−layer_id)`, × `patch_embed_lr_mult` for `patch_embed`; `wd_mult = 0` for
//!   `*.bias`, `*norm*`, `*gamma*`; `is_last_layer` for `*last_layer*`.
//! - [`mae_rule`]: facebookresearch/mae `main_pretrain.py` → timm `optim_factory.add_weight_decay`:
//!   no decay for 1-D parameters and `*.bias` (reference §7.5).
//! - [`clip_rule`]: MetaCLIP `src/training/main.py`: no decay for `ndim < 2`, names containing `bn`,
//!   `ln`, `bias` or `logit_scale` (reference §8).
//!
//! Names are our dotted module paths (`blocks.3.attn.qkv.weight`, `ls1.gamma`, `dino_head.mlp.0.weight`,
//! `dino_head.last_layer.weight_g`). Matching is by substring, as in the references, so an optional
//! sub-module prefix (`backbone.`, `dino_head.`) changes nothing: dinov2 evaluates heads with
//! `n_blocks = 0` (multiplier 1), and a head path contains none of the backbone markers, so it also gets
//! layer `L+1`, multiplier 1, when evaluated with the backbone's depth (checked against dinov2 in the
//! tests). Deviation: dinov2's chunked-FSDP names (`blocks.<chunk>.<i>.…`) are not produced by our ViT
//! and not recognised; a block index that does not parse (Python would raise) is treated as "not a
//! block" (layer `L+1`).

use std::collections::HashMap;

use burn::module::Module;

/// How one parameter is optimised relative to the scheduled lr / wd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamRule {
    /// Multiplies the scheduled lr (layer-wise decay × patch-embed multiplier).
    pub lr_mult: f64,
    /// Multiplies the scheduled weight decay (0 or 1 in every reference).
    pub wd_mult: f64,
    /// Uses the last-layer lr schedule (frozen during the first epoch in DINOv2).
    pub is_last_layer: bool,
}

impl ParamRule {
    /// lr 1×, wd 1×, not a last layer.
    pub const PLAIN: ParamRule = ParamRule {
        lr_mult: 1.0,
        wd_mult: 1.0,
        is_last_layer: false,
    };
}

const LAYER0_MARKERS: [&str; 5] = [
    "pos_embed",
    "patch_embed",
    "mask_token",
    "cls_token",
    "register_tokens",
];

/// dinov2's `get_vit_lr_decay_rate(name, decay, num_layers=depth, force_is_backbone=depth > 0)`.
/// `depth == 0` is dinov2's "not a ViT" case (its heads): multiplier 1.
pub fn dinov2_lr_decay_rate(name: &str, depth: usize, layerwise_decay: f64) -> f64 {
    let layer_id = dinov2_layer_id(name, depth);
    let exponent = depth as i64 + 1 - layer_id as i64;
    // Python's `float ** int` is C `pow`; `powf` is the same libm call (powi would round differently).
    layerwise_decay.powf(exponent as f64)
}

/// The layer id dinov2 assigns (0 = embeddings, `i+1` = block `i`, `depth+1` = the rest).
pub fn dinov2_layer_id(name: &str, depth: usize) -> usize {
    let rest = depth + 1;
    // `name.startswith("backbone") or force_is_backbone`
    if !(name.starts_with("backbone") || depth > 0) {
        return rest;
    }
    // `.pos_embed` etc. (first branch) or, with force_is_backbone, `pos_embed` etc.: since
    // force_is_backbone is `depth > 0`, only a `backbone*` name at depth 0 needs the dotted form.
    let force = depth > 0;
    if LAYER0_MARKERS.iter().any(|m| {
        if force {
            name.contains(m)
        } else {
            name.contains(&format!(".{m}"))
        }
    }) {
        return 0;
    }
    let block_index = |from: &str, field: usize| -> Option<usize> {
        let at = name.find(from)?;
        name[at..].split('.').nth(field)?.parse::<usize>().ok()
    };
    if name.contains(".blocks.") && !name.contains(".residual.") {
        return block_index(".blocks.", 2).map_or(rest, |i| i + 1);
    }
    if name.contains("blocks.") && !name.contains("residual.") {
        return block_index("blocks.", 1).map_or(rest, |i| i + 1);
    }
    rest
}

/// The DINOv2 rule for one parameter (§5.3). `depth` is the backbone depth (pass it for head
/// parameters too, or 0: both give multiplier 1 there, as in dinov2).
pub fn dinov2_rule(
    name: &str,
    depth: usize,
    layerwise_decay: f64,
    patch_embed_lr_mult: f64,
) -> ParamRule {
    let mut lr_mult = dinov2_lr_decay_rate(name, depth, layerwise_decay);
    let is_last_layer = name.contains("last_layer");
    let wd_mult = if name.ends_with(".bias") || name.contains("norm") || name.contains("gamma") {
        0.0
    } else {
        1.0
    };
    if name.contains("patch_embed") {
        lr_mult *= patch_embed_lr_mult;
    }
    ParamRule {
        lr_mult,
        wd_mult,
        is_last_layer,
    }
}

/// MAE (timm `add_weight_decay`): no decay for 1-D parameters and biases; lr multiplier 1.
/// `ndim` is the parameter's rank (cls/mask tokens are 3-D, so they are decayed).
pub fn mae_rule(name: &str, ndim: usize) -> ParamRule {
    let decay = !(ndim == 1 || name.ends_with(".bias"));
    ParamRule {
        lr_mult: 1.0,
        wd_mult: if decay { 1.0 } else { 0.0 },
        is_last_layer: false,
    }
}

/// MetaCLIP: no decay for `ndim < 2`, or names containing `bn`, `ln`, `bias`, `logit_scale`.
pub fn clip_rule(name: &str, ndim: usize) -> ParamRule {
    let exclude = ndim < 2
        || name.contains("bn")
        || name.contains("ln")
        || name.contains("bias")
        || name.contains("logit_scale");
    ParamRule {
        lr_mult: 1.0,
        wd_mult: if exclude { 0.0 } else { 1.0 },
        is_last_layer: false,
    }
}

/// Rank of every float parameter of `module` by dotted path, for the rank-based rules
/// ([`mae_rule`], [`clip_rule`]) behind an `Fn(&str) -> ParamRule` closure.
pub fn param_ranks<M: Module>(module: &M) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    webssl_models::params::visit(module, |path, p| {
        out.insert(path.to_owned(), p.shape().len());
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_anchors() {
        let r = dinov2_rule("blocks.11.attn.qkv.weight", 12, 0.9, 0.2);
        assert_eq!(
            r,
            ParamRule {
                lr_mult: 0.9,
                wd_mult: 1.0,
                is_last_layer: false
            }
        );
        let r = dinov2_rule("blocks.0.ls1.gamma", 12, 0.9, 0.2);
        assert_eq!((r.lr_mult, r.wd_mult), (0.9f64.powf(12.0), 0.0));
        let r = dinov2_rule("patch_embed.proj.bias", 12, 0.9, 0.2);
        assert_eq!((r.lr_mult, r.wd_mult), (0.9f64.powf(13.0) * 0.2, 0.0));
        let r = dinov2_rule("norm.weight", 12, 0.9, 0.2);
        assert_eq!((r.lr_mult, r.wd_mult), (1.0, 0.0));
        let r = dinov2_rule("dino_head.last_layer.weight_g", 12, 0.9, 0.2);
        assert_eq!(
            r,
            ParamRule {
                lr_mult: 1.0,
                wd_mult: 1.0,
                is_last_layer: true
            }
        );
        assert_eq!(dinov2_rule("cls_token", 12, 0.9, 0.2).wd_mult, 1.0);
        assert_eq!(
            dinov2_rule("blocks.3.norm1.weight", 12, 1.0, 0.2).lr_mult,
            1.0
        );
    }

    #[test]
    fn mae_and_clip_no_decay() {
        assert_eq!(mae_rule("cls_token", 3).wd_mult, 1.0);
        assert_eq!(mae_rule("blocks.0.norm1.weight", 1).wd_mult, 0.0);
        assert_eq!(mae_rule("blocks.0.attn.qkv.bias", 1).wd_mult, 0.0);
        assert_eq!(mae_rule("blocks.0.attn.qkv.weight", 2).wd_mult, 1.0);
        assert_eq!(clip_rule("logit_scale", 0).wd_mult, 0.0);
        assert_eq!(
            clip_rule("transformer.resblocks.0.ln_1.weight", 1).wd_mult,
            0.0
        );
        assert_eq!(clip_rule("visual.proj", 2).wd_mult, 1.0);
    }
}
