//! DINOv2 training steps with bf16 matrix products and f32 master weights (issue #9,
//! `webssl_models::precision`, `[run] precision = "bf16"`): the same recipe and batches (the tiny
//! recipe of `dist_dino.rs`, one process with the whole global batch) run in f32
//! and in bf16 for a few optimizer steps; the bf16 run's losses and gradient norms stay within bf16's
//! error of the f32 run's, its parameters move the same way, and the student's and teacher's weights
//! stay f32 (the AdamW moments are made from the f32 gradients `tests/mae.rs` checks).

mod support;

use burn::tensor::{DType, Device};
use support::{dino_batch, dino_config};
use webssl_models::checkpoint;
use webssl_models::{Precision, autocast};
use webssl_train::dino::{DinoConfig, DinoTrainer};
use webssl_train::dist::Dist;

/// Images per view of each global batch: half of `dist_dino.rs`'s global batch (see `support`).
const B: usize = 4;
const STEPS: u64 = 3;
const LOGGED: [&str; 4] = [
    "dino_loss",
    "ibot_loss",
    "grad_norm_backbone",
    "grad_norm_dino_head",
];

/// The student's parameters flattened, and the logged values per step.
fn train(cfg: &DinoConfig, precision: Precision) -> (Vec<f32>, Vec<f64>) {
    let dist = Dist::single();
    let mut trainer = DinoTrainer::new(cfg, &dist, &Device::flex()).unwrap();
    let mut logged = Vec::new();
    for step in 0..STEPS {
        let values;
        (trainer, values) = {
            let _mixed = autocast(precision);
            trainer
                .step(step, &[dino_batch(cfg, B, step, None)], &dist)
                .unwrap()
        };
        for name in LOGGED {
            logged.push(values.iter().find(|(k, _)| *k == name).unwrap().1);
        }
    }
    // Master weights: nothing the optimizer, the EMA or a checkpoint sees became bf16.
    for model in [&trainer.student, &trainer.teacher] {
        for (name, t) in [
            ("patch_embed", model.backbone.patch_embed.proj.weight.val()),
            ("qkv", model.backbone.blocks[0].attn.qkv.weight.val()),
            ("dino head v", model.dino_head.last_layer.weight_v.val()),
        ] {
            assert_eq!(t.dtype(), DType::F32, "{name} ({precision})");
        }
    }
    let params = checkpoint::named_parameters(&trainer.student)
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
    (params, logged)
}

#[test]
fn bf16_steps_follow_the_f32_steps_with_f32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dino_config(dir.path(), 2 * B, false);
    let init: Vec<f32> = {
        let t = DinoTrainer::new(&cfg, &Dist::single(), &Device::flex()).unwrap();
        checkpoint::named_parameters(&t.student)
            .into_iter()
            .flat_map(|(_, _, v)| v)
            .collect()
    };
    let (p32, l32) = train(&cfg, Precision::F32);
    let (p16, l16) = train(&cfg, Precision::Bf16);

    // Losses and gradient norms: within bf16's error, and not equal (bf16 was really used). Losses
    // measured ≤ 2e-3 relative; gradient norms 8e-3, up to 3e-2 where the norm is small (step 2:
    // 1.37 after 45 and 79) and its terms partly cancel.
    let mut max_rel = 0f64;
    for (i, (a, b)) in l32.iter().zip(&l16).enumerate() {
        let (name, step) = (LOGGED[i % LOGGED.len()], i / LOGGED.len());
        let rel = (a - b).abs() / a.abs().max(1e-3);
        eprintln!("step {step} {name}: f32 {a:.6} bf16 {b:.6} ({rel:.1e})");
        assert!(
            b.is_finite() && rel < if name.starts_with("grad") { 1e-1 } else { 1e-2 },
            "{name} at step {step}: f32 {a} vs bf16 {b}"
        );
        max_rel = max_rel.max(rel);
    }
    assert!(
        max_rel > 1e-6,
        "bf16 steps equal the f32 steps: the switch is dead"
    );

    // Parameters: the bf16 run's updates point the same way as the f32 run's.
    let (mut dot, mut n32, mut n16) = (0f64, 0f64, 0f64);
    for ((a, b), p0) in p32.iter().zip(&p16).zip(&init) {
        let (u32, u16) = ((a - p0) as f64, (b - p0) as f64);
        dot += u32 * u16;
        n32 += u32 * u32;
        n16 += u16 * u16;
    }
    let cos = dot / (n32.sqrt() * n16.sqrt());
    eprintln!("losses/grad norms: max relative difference {max_rel:.2e}; update cosine {cos:.5}");
    assert!(n32 > 0.0 && cos > 0.95, "update cosine f32 vs bf16: {cos}");
}
