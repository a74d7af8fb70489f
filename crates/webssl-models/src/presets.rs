//! Named architectures: every released Web-DINO and Web-MAE backbone (docs/reference/webssl-paper.md §2.1)
//! plus small ViTs for experiments. Names are what `--arch` and the TOML configs accept.

use crate::config::{Ffn, Flavour, PosInterp, VitConfig};
use crate::error::{ModelError, Result};

/// DINOv2's own interpolation as Web-DINO runs it (`interpolate_offset=0.1`, no antialias).
const DINOV2_INTERP: PosInterp = PosInterp::Dinov2 {
    offset: 0.1,
    antialias: false,
};

fn web_dino(embed_dim: usize, depth: usize, num_heads: usize) -> VitConfig {
    VitConfig {
        flavour: Flavour::Dinov2,
        img_size: 224,
        patch_size: 14,
        in_chans: 3,
        embed_dim,
        depth,
        num_heads,
        ffn: Ffn::Swiglu,
        mlp_ratio: 4.0,
        num_register_tokens: 0,
        layerscale_init: Some(1e-5),
        qkv_bias: true,
        ln_eps: 1e-6,
        mask_token: true,
        pos_interp: DINOV2_INTERP,
    }
}

fn web_mae(embed_dim: usize, depth: usize, num_heads: usize, patch_size: usize) -> VitConfig {
    VitConfig {
        flavour: Flavour::Vit,
        img_size: 224,
        patch_size,
        in_chans: 3,
        embed_dim,
        depth,
        num_heads,
        ffn: Ffn::Gelu,
        mlp_ratio: 4.0,
        num_register_tokens: 0,
        layerscale_init: None,
        qkv_bias: true,
        ln_eps: 1e-6,
        mask_token: false,
        pos_interp: PosInterp::Size,
    }
}

/// A DINOv2-style GELU ViT/14 with LayerScale, as the small DINOv2 models.
fn dinov2_small(embed_dim: usize, depth: usize, num_heads: usize) -> VitConfig {
    VitConfig {
        ffn: Ffn::Gelu,
        ..web_dino(embed_dim, depth, num_heads)
    }
}

/// All preset names, in display order.
pub const PRESETS: &[&str] = &[
    "vit-tiny",
    "vit-small",
    "vit-base",
    "vit-large",
    "web-dino-300m",
    "web-dino-1b",
    "web-dino-2b",
    "web-dino-3b",
    "web-dino-5b",
    "web-dino-7b",
    "web-mae-300m",
    "web-mae-700m",
    "web-mae-1b",
    "web-mae-2b",
    "web-mae-3b",
];

/// Looks up a preset by name; the error lists the valid names.
pub fn preset(name: &str) -> Result<VitConfig> {
    Ok(match name {
        "vit-tiny" => dinov2_small(192, 12, 3),
        "vit-small" => dinov2_small(384, 12, 6),
        "vit-base" => dinov2_small(768, 12, 12),
        "vit-large" => dinov2_small(1024, 24, 16),
        "web-dino-300m" => web_dino(1024, 24, 16),
        "web-dino-1b" => web_dino(1536, 40, 24),
        "web-dino-2b" => web_dino(2688, 24, 21),
        "web-dino-3b" => web_dino(3072, 26, 24),
        "web-dino-5b" => web_dino(3584, 32, 28),
        "web-dino-7b" => web_dino(4096, 32, 32),
        "web-mae-300m" => web_mae(1024, 24, 16, 16),
        "web-mae-700m" => web_mae(1280, 32, 16, 14),
        "web-mae-1b" => web_mae(1536, 40, 24, 14),
        "web-mae-2b" => web_mae(2688, 24, 21, 14),
        "web-mae-3b" => web_mae(3072, 26, 24, 14),
        other => {
            return Err(ModelError::config(
                "arch",
                format!(
                    "unknown preset `{other}`; expected one of {}",
                    PRESETS.join(", ")
                ),
            ));
        }
    })
}

/// Number of parameters of the backbone (patch embed, CLS/registers/mask token, position embeddings,
/// blocks, final norm), computed from the config without allocating it.
pub fn param_count(cfg: &VitConfig) -> u64 {
    let d = cfg.embed_dim as u64;
    let p = cfg.patch_size as u64;
    let h = cfg.ffn_hidden() as u64;
    let patch = (cfg.in_chans as u64 * p * p) * d + d;
    let tokens = d * (1 + cfg.num_register_tokens as u64 + cfg.mask_token as u64);
    let pos = (1 + cfg.num_patches() as u64) * d;
    let attn = d * 3 * d + if cfg.qkv_bias { 3 * d } else { 0 } + d * d + d;
    let ffn = match cfg.ffn {
        Ffn::Gelu => d * h + h + h * d + d,
        Ffn::Swiglu => d * 2 * h + 2 * h + h * d + d,
    };
    let norms = 4 * d;
    let ls = if cfg.layerscale_init.is_some() {
        2 * d
    } else {
        0
    };
    let block = attn + ffn + norms + ls;
    patch + tokens + pos + cfg.depth as u64 * block + 2 * d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts of docs/reference/webssl-paper.md §2.1 ("Params (computed)", in billions, 3
    /// decimals).
    #[test]
    fn released_presets_match_the_paper_table() {
        let table = [
            ("web-dino-300m", 0.304),
            ("web-dino-1b", 1.135),
            ("web-dino-2b", 2.084),
            ("web-dino-3b", 2.948),
            ("web-dino-5b", 4.938),
            ("web-dino-7b", 6.450),
            ("web-mae-300m", 0.303),
            ("web-mae-700m", 0.631),
            ("web-mae-1b", 1.135),
            ("web-mae-2b", 2.084),
            ("web-mae-3b", 2.948),
        ];
        for (name, billions) in table {
            let cfg = preset(name).unwrap();
            cfg.validate().unwrap();
            let got = param_count(&cfg) as f64 / 1e9;
            assert!(
                (got - billions).abs() < 0.0005 + 1e-9,
                "{name}: {got:.4}B vs paper {billions}B"
            );
        }
    }

    #[test]
    fn swiglu_hidden_widths_match_the_paper_table() {
        for (name, hidden) in [
            ("web-dino-300m", 2736),
            ("web-dino-1b", 4096),
            ("web-dino-2b", 7168),
            ("web-dino-3b", 8192),
            ("web-dino-5b", 9560),
            ("web-dino-7b", 10928),
        ] {
            assert_eq!(preset(name).unwrap().ffn_hidden(), hidden, "{name}");
        }
    }

    #[test]
    fn unknown_preset_lists_the_valid_names() {
        let err = preset("web-dino-9b").unwrap_err().to_string();
        assert!(err.contains("web-dino-7b") && err.contains("arch"), "{err}");
    }
}
