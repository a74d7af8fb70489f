//! The one declarative map between our parameter names (= DINOv2/timm native names) and the names used
//! by HF `Dinov2Model` / `Dinov2WithRegistersModel` / `ViTModel` checkpoints.
//!
//! A parameter may be stored under several spellings: released checkpoints use the names
//! `save_pretrained` writes (`attention.attention.query`, `mlp.weights_in`), while transformers ≥ 5
//! modules call them `q_proj`, `gate_proj`, ... . Each name maps to a list of *alternatives*; an
//! alternative is a list of keys concatenated along dim 0 (HF's separate Q/K/V become our fused `qkv`;
//! `gate_proj` + `up_proj` become `w12`). Export writes the first alternative, the on-disk HF layout.

use crate::config::Flavour;

/// Which naming a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// HF `Dinov2Model` / `Dinov2WithRegistersModel`.
    HfDinov2,
    /// HF `ViTModel` / `ViTMAEModel`.
    HfVit,
    /// DINOv2 / timm native names (our own), chunked `blocks.<chunk>.<i>` already flattened.
    Native,
}

impl Layout {
    pub fn hf_for(flavour: Flavour) -> Self {
        match flavour {
            Flavour::Dinov2 => Layout::HfDinov2,
            Flavour::Vit => Layout::HfVit,
        }
    }
}

/// `(our suffix within a block, alternatives of HF suffixes)`; `{}` in a HF suffix is `weight`/`bias`.
type Rule = (&'static str, &'static [&'static [&'static str]]);

const DINOV2_BLOCK: &[Rule] = &[
    ("norm1", &[&["norm1"]]),
    ("norm2", &[&["norm2"]]),
    (
        "attn.qkv",
        &[
            &[
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
            ],
            &["attention.q_proj", "attention.k_proj", "attention.v_proj"],
        ],
    ),
    (
        "attn.proj",
        &[&["attention.output.dense"], &["attention.o_proj"]],
    ),
    ("ls1.gamma", &[&["layer_scale1.lambda1"]]),
    ("ls2.gamma", &[&["layer_scale2.lambda1"]]),
    ("mlp.fc1", &[&["mlp.fc1"]]),
    ("mlp.fc2", &[&["mlp.fc2"]]),
    (
        "mlp.w12",
        &[&["mlp.weights_in"], &["mlp.gate_proj", "mlp.up_proj"]],
    ),
    ("mlp.w3", &[&["mlp.weights_out"], &["mlp.down_proj"]]),
];

const VIT_BLOCK: &[Rule] = &[
    ("norm1", &[&["layernorm_before"]]),
    ("norm2", &[&["layernorm_after"]]),
    (
        "attn.qkv",
        &[
            &[
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
            ],
            &["attention.q_proj", "attention.k_proj", "attention.v_proj"],
        ],
    ),
    (
        "attn.proj",
        &[&["attention.output.dense"], &["attention.o_proj"]],
    ),
    ("mlp.fc1", &[&["intermediate.dense"], &["mlp.fc1"]]),
    ("mlp.fc2", &[&["output.dense"], &["mlp.fc2"]]),
];

const TOP: &[Rule] = &[
    ("cls_token", &[&["embeddings.cls_token"]]),
    ("pos_embed", &[&["embeddings.position_embeddings"]]),
    ("register_tokens", &[&["embeddings.register_tokens"]]),
    ("mask_token", &[&["embeddings.mask_token"]]),
    (
        "patch_embed.proj",
        &[&["embeddings.patch_embeddings.projection"]],
    ),
    ("norm", &[&["layernorm"]]),
];

/// The checkpoint keys that may hold our parameter `name` under `layout`: alternatives in priority
/// order, each a list of keys to concatenate along dim 0.
pub fn sources(name: &str, layout: Layout) -> Vec<Vec<String>> {
    if layout == Layout::Native {
        return vec![vec![name.to_owned()]];
    }
    let (rest, rules, hf_prefix) = match name.strip_prefix("blocks.") {
        Some(rest) => {
            let (idx, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let rules = if layout == Layout::HfDinov2 {
                DINOV2_BLOCK
            } else {
                VIT_BLOCK
            };
            (rest, rules, format!("encoder.layer.{idx}."))
        }
        None => (name, TOP, String::new()),
    };
    for (ours, alternatives) in rules {
        // Either the whole name (`ls1.gamma`, `cls_token`) or a module prefix + `.weight`/`.bias`.
        let leaf = if rest == *ours {
            None
        } else if let Some(leaf) = rest.strip_prefix(ours).and_then(|l| l.strip_prefix('.')) {
            Some(leaf)
        } else {
            continue;
        };
        return alternatives
            .iter()
            .map(|keys| {
                keys.iter()
                    .map(|k| match leaf {
                        Some(leaf) => format!("{hf_prefix}{k}.{leaf}"),
                        None => format!("{hf_prefix}{k}"),
                    })
                    .collect()
            })
            .collect();
    }
    Vec::new()
}

/// Rewrites a native checkpoint key to our name: strips wrapper prefixes and flattens DINOv2's
/// FSDP block chunks (`blocks.<chunk>.<i>.` → `blocks.<i>.`; layer indices are global already).
pub fn normalize_native_key(key: &str) -> String {
    let mut k = key;
    for prefix in ["module.", "teacher.backbone.", "backbone."] {
        if let Some(rest) = k.strip_prefix(prefix) {
            k = rest;
        }
    }
    if let Some(rest) = k.strip_prefix("blocks.") {
        let mut parts = rest.splitn(3, '.');
        if let (Some(a), Some(b), Some(tail)) = (parts.next(), parts.next(), parts.next())
            && a.parse::<usize>().is_ok()
            && b.parse::<usize>().is_ok()
        {
            return format!("blocks.{b}.{tail}");
        }
    }
    k.to_owned()
}

/// Keys a checkpoint may carry that a backbone deliberately does not load (heads, poolers,
/// decoders); reported, not an error.
pub fn is_ignorable(key: &str) -> bool {
    [
        "pooler.",
        "classifier.",
        "decoder.",
        "dino_head.",
        "ibot_head.",
        "head.",
        "fc_norm.",
    ]
    .iter()
    .any(|p| key.starts_with(p) || key.contains(&format!(".{p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qkv_concatenates_query_key_value() {
        let s = sources("blocks.3.attn.qkv.weight", Layout::HfDinov2);
        assert_eq!(
            s[0],
            vec![
                "encoder.layer.3.attention.attention.query.weight",
                "encoder.layer.3.attention.attention.key.weight",
                "encoder.layer.3.attention.attention.value.weight"
            ]
        );
        assert_eq!(s[1][0], "encoder.layer.3.attention.q_proj.weight");
    }

    #[test]
    fn whole_names_and_vit_names() {
        assert_eq!(
            sources("blocks.0.ls1.gamma", Layout::HfDinov2),
            vec![vec!["encoder.layer.0.layer_scale1.lambda1"]]
        );
        assert_eq!(
            sources("cls_token", Layout::HfVit),
            vec![vec!["embeddings.cls_token"]]
        );
        assert_eq!(
            sources("norm.bias", Layout::HfVit),
            vec![vec!["layernorm.bias"]]
        );
        assert_eq!(
            sources("blocks.11.mlp.fc2.weight", Layout::HfVit)[0],
            vec!["encoder.layer.11.output.dense.weight"]
        );
        assert_eq!(
            sources("blocks.1.norm1.weight", Layout::HfVit),
            vec![vec!["encoder.layer.1.layernorm_before.weight"]]
        );
        assert!(sources("blocks.0.ls1.gamma", Layout::HfVit).is_empty());
    }

    #[test]
    fn native_chunks_and_prefixes_flatten() {
        assert_eq!(
            normalize_native_key("blocks.2.17.attn.qkv.weight"),
            "blocks.17.attn.qkv.weight"
        );
        assert_eq!(
            normalize_native_key("teacher.backbone.blocks.5.norm1.bias"),
            "blocks.5.norm1.bias"
        );
        assert_eq!(
            normalize_native_key("blocks.5.norm1.bias"),
            "blocks.5.norm1.bias"
        );
        assert_eq!(normalize_native_key("cls_token"), "cls_token");
    }
}
