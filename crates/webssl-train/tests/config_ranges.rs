//! Property test of issue 16: random values of every numeric config field either run or fail with
//! an error naming the field — never a panic, a signal or a hang. DINO configs that validate take
//! one optimizer step of a tiny model; MAE and CLIP configs that validate are planned as
//! `--dry-run` does and build their models. Each case sets one to three fields of a tiny recipe to
//! values drawn from edge cases (0, ±1, NaN, ±inf, ±1e308, 2⁴⁰, i64::MAX, small valid values).

mod support;

use std::path::Path;

use burn::tensor::Device;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde::Serialize;
use serde::de::DeserializeOwned;
use webssl_data::loader::{Batch, ViewGroup};
use webssl_data::masks::IbotMasks;
use webssl_train::Recipe;
use webssl_train::clip::ClipConfig;
use webssl_train::dino::{DinoConfig, DinoTrainer};
use webssl_train::dist::Dist;
use webssl_train::mae::{self, MaeConfig};
use webssl_train::run::config::load_config;

/// TOML literals tried for every field: small valid values and the hostile ones.
const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "0.5",
    "1e-9",
    "2.5",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "1099511627776",
    "9223372036854775807",
];

const DINO: &str = r#"
seed = 7
[data]
train = "unused"
batch_size = 2
[model]
arch = "vit-tiny"
embed_dim = 16
depth = 1
num_heads = 2
[crops]
global_size = 28
local_size = 14
n_local = 1
[heads]
dino_prototypes = 8
ibot_prototypes = 8
hidden_dim = 8
dino_bottleneck_dim = 4
ibot_bottleneck_dim = 4
[loss]
teacher_temp_warmup_steps = 2
[optim]
total_steps = 4
warmup_steps = 1
lr_per_1024 = 0.5
"#;

/// Every numeric field of `DinoConfig` (pairs take `[a, b]`).
const DINO_FIELDS: &[&str] = &[
    "seed",
    "data.batch_size",
    "data.num_workers",
    "data.shuffle_buffer",
    "data.decode_threads",
    "model.embed_dim",
    "model.depth",
    "model.num_heads",
    "model.patch_size",
    "model.img_size",
    "model.layerscale_init",
    "model.drop_path_rate",
    "crops.global_size",
    "crops.local_size",
    "crops.n_local",
    "crops.global_scale",
    "crops.local_scale",
    "heads.dino_prototypes",
    "heads.ibot_prototypes",
    "heads.hidden_dim",
    "heads.dino_bottleneck_dim",
    "heads.ibot_bottleneck_dim",
    "loss.student_temp",
    "loss.warmup_teacher_temp",
    "loss.teacher_temp",
    "loss.teacher_temp_warmup_steps",
    "loss.dino_weight",
    "loss.ibot_weight",
    "loss.koleo_weight",
    "loss.mask_ratio",
    "loss.mask_probability",
    "optim.total_steps",
    "optim.warmup_steps",
    "optim.lr_per_1024",
    "optim.min_lr",
    "optim.weight_decay",
    "optim.weight_decay_end",
    "optim.momentum_teacher",
    "optim.final_momentum_teacher",
    "optim.clip_grad",
    "optim.layerwise_decay",
    "optim.patch_embed_lr_mult",
    "optim.freeze_last_layer_steps",
    "optim.betas",
    "run.checkpoint_every_steps",
    "run.keep_last",
    "run.export_every_steps",
];

const MAE: &str = r#"
seed = 7
[data]
train = "unused"
batch_size = 2
[model]
arch = "vit-tiny"
embed_dim = 16
depth = 1
num_heads = 2
[decoder]
embed_dim = 8
depth = 1
num_heads = 2
[crop]
size = 28
[optim]
total_steps = 4
warmup_steps = 1
"#;

const MAE_FIELDS: &[&str] = &[
    "data.batch_size",
    "model.embed_dim",
    "model.depth",
    "model.num_heads",
    "model.patch_size",
    "decoder.embed_dim",
    "decoder.depth",
    "decoder.num_heads",
    "decoder.mlp_ratio",
    "crop.size",
    "crop.scale",
    "loss.mask_ratio",
    "optim.total_steps",
    "optim.warmup_steps",
    "optim.lr_per_256",
    "optim.min_lr",
    "optim.weight_decay",
    "optim.betas",
    "optim.clip_grad",
];

const CLIP: &str = r#"
seed = 7
[data]
train = "unused"
batch_size = 2
[model]
arch = "vit-tiny"
embed_dim = 16
depth = 1
num_heads = 2
[image]
size = 28
[text]
vocab_size = 300
tokenizer_train_samples = 8
context_length = 8
width = 16
heads = 2
layers = 1
[clip]
embed_dim = 8
[optim]
total_steps = 4
warmup_steps = 1
lr = 1e-3
"#;

const CLIP_FIELDS: &[&str] = &[
    "data.batch_size",
    "model.embed_dim",
    "model.num_heads",
    "model.patch_size",
    "model.img_size",
    "model.layerscale_init",
    "image.size",
    "image.scale",
    "text.vocab_size",
    "text.tokenizer_train_samples",
    "text.context_length",
    "text.width",
    "text.heads",
    "text.layers",
    "text.mlp_ratio",
    "clip.embed_dim",
    "clip.logit_scale_init",
    "optim.total_steps",
    "optim.warmup_steps",
    "optim.lr",
    "optim.weight_decay",
    "optim.betas",
    "optim.eps",
    "optim.clip_grad",
];

/// Fields that take a pair (`loss.mask_ratio` is one in DINO, a single ratio in MAE).
const PAIRS: &[&str] = &[
    "crops.global_scale",
    "crops.local_scale",
    "crop.scale",
    "image.scale",
    "optim.betas",
];

/// `--set` overrides for one case: `(field, value, second value)` index triples into `fields`
/// and [`VALUES`].
fn overrides(fields: &[&str], picks: &[(usize, usize, usize)], mae: bool) -> Vec<String> {
    picks
        .iter()
        .map(|&(f, a, b)| {
            let field = fields[f % fields.len()];
            let (a, b) = (VALUES[a % VALUES.len()], VALUES[b % VALUES.len()]);
            // MAE's mask ratio is one number; DINO's a range.
            if PAIRS.contains(&field) || (!mae && field == "loss.mask_ratio") {
                format!("{field}=[{a}, {b}]")
            } else {
                format!("{field}={a}")
            }
        })
        .collect()
}

/// Loads `recipe` with `sets` and validates it. `Ok(None)`: refused with an error naming one of
/// the fields set (checked here); `Ok(Some(cfg))`: valid.
fn load_checked<T: DeserializeOwned + Serialize>(
    dir: &Path,
    recipe: &str,
    sets: &[String],
    validate: impl Fn(&T) -> webssl_train::Result<()>,
) -> Result<Option<T>, TestCaseError> {
    let file = dir.join("recipe.toml");
    std::fs::write(&file, recipe).unwrap();
    let names_a_field = |msg: &str| {
        sets.iter().any(|s| {
            let key = s.split('=').next().unwrap();
            let leaf = key.rsplit('.').next().unwrap();
            msg.contains(key) || msg.contains(leaf)
        })
    };
    let cfg = match load_config::<T>(Some(&file), dir, None, sets) {
        Ok((cfg, _)) => cfg,
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(names_a_field(&msg), "{sets:?}: {msg}");
            return Ok(None);
        }
    };
    match validate(&cfg) {
        Ok(()) => Ok(Some(cfg)),
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(names_a_field(&msg), "{sets:?}: {msg}");
            Ok(None)
        }
    }
}

/// One batch of `cfg`'s views with every third patch of each global crop masked for iBOT.
fn dino_batch(cfg: &DinoConfig) -> Batch {
    let b = cfg.data.batch_size;
    let (g, l, nl) = (
        cfg.crops.global_size as usize,
        cfg.crops.local_size as usize,
        cfg.crops.n_local,
    );
    let p = cfg.vit().unwrap().patch_size;
    let n_tokens = (g / p) * (g / p);
    let masks = (0..2 * b * n_tokens)
        .map(|i: usize| i.is_multiple_of(3))
        .collect();
    Batch {
        index: 0,
        batch_size: b,
        groups: Vec::<ViewGroup>::new(),
        views: vec![
            support::fill(2 * b * 3 * g * g, 1),
            support::fill(nl * b * 3 * l * l, 2),
        ],
        keys: Vec::new(),
        addrs: Vec::new(),
        captions: Vec::new(),
        labels: Vec::new(),
        ibot: Some(IbotMasks::from_masks(masks, 2 * b, n_tokens, n_tokens)),
        mae: None,
    }
}

fn picks() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    proptest::collection::vec((0..64usize, 0..64usize, 0..64usize), 1..=3)
}

proptest! {
    // A fixed seed: CI explores the same 64 cases every run (a failure is reproducible, not a
    // flake); PROPTEST_RNG_SEED=<u64> explores others.
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed),
        ),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// DINO: a valid config plans (`--dry-run`) and takes an optimizer step (which may stop with
    /// a non-finite-loss error for, say, a learning rate of 1e308 — an error, not a crash).
    #[test]
    fn dino_values_run_or_name_the_field(picks in picks()) {
        let tmp = tempfile::tempdir().unwrap();
        let sets = overrides(DINO_FIELDS, &picks, false);
        if let Some(cfg) = load_checked::<DinoConfig>(tmp.path(), DINO, &sets, DinoConfig::validate)? {
            cfg.plan(1).unwrap().to_string();
            let dist = Dist::single();
            let trainer = DinoTrainer::new(&cfg, &dist, &Device::flex()).unwrap();
            let _ = trainer.step(0, &[dino_batch(&cfg)], &dist);
        }
    }

    /// MAE: a valid config plans and builds its encoder.
    #[test]
    fn mae_values_plan_or_name_the_field(picks in picks()) {
        let tmp = tempfile::tempdir().unwrap();
        let sets = overrides(MAE_FIELDS, &picks, true);
        if let Some(cfg) = load_checked::<MaeConfig>(tmp.path(), MAE, &sets, MaeConfig::validate)? {
            cfg.plan(1).unwrap().to_string();
            mae::init_backbone(&cfg, &Device::flex()).unwrap();
        }
    }

    /// CLIP: a valid config plans and builds its text tower's config.
    #[test]
    fn clip_values_plan_or_name_the_field(picks in picks()) {
        let tmp = tempfile::tempdir().unwrap();
        let sets = overrides(CLIP_FIELDS, &picks, false);
        if let Some(cfg) = load_checked::<ClipConfig>(tmp.path(), CLIP, &sets, ClipConfig::validate)? {
            cfg.plan(1).unwrap().to_string();
            cfg.text_tower(cfg.text.vocab_size).unwrap();
        }
    }
}

/// The issue's own cases, each named in the error.
#[test]
fn the_issue_cases_name_their_field() {
    let tmp = tempfile::tempdir().unwrap();
    for set in [
        "heads.dino_prototypes=0",
        "heads.hidden_dim=0",
        "heads.dino_bottleneck_dim=0",
        "loss.student_temp=0",
        "model.patch_size=0",
        "optim.lr_per_1024=-1",
        "optim.weight_decay=-1",
        "optim.momentum_teacher=2",
        "optim.total_steps=0",
    ] {
        let file = tmp.path().join("recipe.toml");
        std::fs::write(&file, DINO).unwrap();
        let (cfg, _) =
            load_config::<DinoConfig>(Some(&file), tmp.path(), None, &[set.into()]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        let field = set.split('=').next().unwrap();
        assert!(err.contains(&format!("`{field}`")), "{set}: {err}");
    }
}
