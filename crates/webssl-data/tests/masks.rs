//! Masks against the dinov2/MAE reference (fixtures/masks/make_masks.py) and by invariants.

use std::collections::VecDeque;

use serde_json::Value;
use webssl_data::masks::{
    IbotMaskConfig, MaskDraws, MaskingGenerator, collate_ibot_masks, mae_len_keep,
    mae_mask_from_noise, mae_random_mask, torch_linspace,
};
use webssl_data::sampler::rng_stream;

mod support;

fn fixture() -> Value {
    support::read_json(&support::fixture("masks/masks.json"))
}

/// Replays the draws the Python reference made, checking each is the kind (and range) we ask for.
struct Replay(VecDeque<Value>);

impl Replay {
    fn new(draws: &Value) -> Self {
        Replay(draws.as_array().unwrap().iter().cloned().collect())
    }
    fn next(&mut self, kind: &str) -> Value {
        let d = self
            .0
            .pop_front()
            .unwrap_or_else(|| panic!("reference made fewer draws; wanted {kind}"));
        assert_eq!(d["k"], kind, "draw kind differs from the reference: {d}");
        d
    }
    fn finished(&self) -> bool {
        self.0.is_empty()
    }
}

impl MaskDraws for Replay {
    fn unit(&mut self) -> f64 {
        self.next("u")["v"].as_f64().unwrap()
    }
    fn randint(&mut self, lo: usize, hi: usize) -> usize {
        let d = self.next("i");
        assert_eq!(
            (
                d["lo"].as_u64().unwrap() as usize,
                d["hi"].as_u64().unwrap() as usize
            ),
            (lo, hi)
        );
        d["v"].as_u64().unwrap() as usize
    }
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let p: Vec<usize> = self.next("p")["v"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(p.len(), n);
        p
    }
    fn choose(&mut self, _pool: &[usize], _k: usize) -> Vec<usize> {
        panic!("dinov2 at b8931f7b never completes masks randomly")
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn flat_indices(mask: &[bool]) -> Vec<usize> {
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn torch_linspace_matches_reference_bit_for_bit() {
    let fx = fixture();
    for case in fx["linspace"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let (start, end) = (
            case["start"].as_f64().unwrap() as f32,
            case["end"].as_f64().unwrap() as f32,
        );
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            torch_linspace(start, end, steps),
            want,
            "linspace({start}, {end}, {steps})"
        );
    }
}

#[test]
fn block_masking_replays_reference_exactly() {
    let fx = fixture();
    for case in fx["generator"].as_array().unwrap() {
        let (h, w) = (
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let mut generator = MaskingGenerator::new(h, w).unwrap();
        generator.max_num_patches = case["max_num_patches"].as_f64().unwrap();
        let target = case["target"].as_u64().unwrap() as usize;
        let mut draws = Replay::new(&case["draws"]);
        let mask = generator.generate(target, &mut draws);
        assert_eq!(
            flat_indices(&mask),
            usizes(&case["mask"]),
            "{h}x{w} target {target}"
        );
        assert!(
            draws.finished(),
            "reference made more draws ({h}x{w} target {target})"
        );
    }
}

#[test]
fn dinov2_max_num_patches_follows_train_py_expression() {
    assert_eq!(
        MaskingGenerator::dinov2(224, 14).unwrap().max_num_patches,
        128.0
    );
    assert_eq!(
        MaskingGenerator::dinov2(224, 16).unwrap().max_num_patches,
        98.0
    );
    assert_eq!(
        MaskingGenerator::dinov2(518, 14).unwrap().max_num_patches,
        666.0
    );
    assert_eq!(
        MaskingGenerator::dinov2(98, 14).unwrap().max_num_patches,
        21.0
    );
    assert!(MaskingGenerator::dinov2(8, 14).is_err());
}

#[test]
fn collate_replays_reference_exactly() {
    let fx = fixture();
    for case in fx["collate"].as_array().unwrap() {
        let img = case["img_size"].as_u64().unwrap() as usize;
        let patch = case["patch_size"].as_u64().unwrap() as usize;
        let generator = MaskingGenerator::dinov2(img, patch).unwrap();
        assert_eq!(
            generator.max_num_patches,
            case["max_num_patches"].as_f64().unwrap()
        );
        let cfg = IbotMaskConfig {
            ratio_min: case["ratio_min"].as_f64().unwrap(),
            ratio_max: case["ratio_max"].as_f64().unwrap(),
            probability: case["mask_probability"].as_f64().unwrap(),
        };
        let n_crops = case["n_crops"].as_u64().unwrap() as usize;
        let mut draws = Replay::new(&case["draws"]);
        let out = collate_ibot_masks(&generator, n_crops, &cfg, &mut draws);
        assert!(draws.finished());
        let n_tokens = case["n_tokens"].as_u64().unwrap() as usize;
        assert_eq!(out.n_tokens, n_tokens);
        for (c, want) in case["masks"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                flat_indices(&out.masks[c * n_tokens..(c + 1) * n_tokens]),
                usizes(want),
                "crop {c}"
            );
        }
        let want_idx: Vec<i64> = case["mask_indices_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(out.mask_indices_list, want_idx);
        let want_w: Vec<f32> = case["masks_weight"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(out.masks_weight, want_w);
        assert_eq!(
            out.upperbound,
            case["upperbound"].as_u64().unwrap() as usize
        );
        assert_eq!(
            out.n_masked_patches,
            case["n_masked_patches"].as_u64().unwrap() as usize
        );
    }
}

#[test]
fn mae_masking_matches_reference() {
    let fx = fixture();
    for case in fx["mae"].as_array().unwrap() {
        let ratio = case["mask_ratio"].as_f64().unwrap();
        let length = case["length"].as_u64().unwrap() as usize;
        assert_eq!(
            mae_len_keep(length, ratio),
            case["len_keep"].as_u64().unwrap() as usize
        );
        for (i, noise) in case["noise"].as_array().unwrap().iter().enumerate() {
            let noise: Vec<f32> = noise
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let m = mae_mask_from_noise(&noise, ratio);
            assert_eq!(m.ids_shuffle, usizes(&case["ids_shuffle"][i]));
            assert_eq!(m.ids_restore, usizes(&case["ids_restore"][i]));
            assert_eq!(m.ids_keep(), usizes(&case["ids_keep"][i]).as_slice());
            let want: Vec<bool> = case["mask"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() == 1.0)
                .collect();
            assert_eq!(m.mask, want);
        }
    }
}

#[test]
fn block_masks_respect_target_and_geometry() {
    let g = MaskingGenerator::dinov2(224, 14).unwrap();
    let mut rng = rng_stream(7, "test-blocks", &[]);
    let (lo, hi) = (g.min_aspect.ln(), g.max_aspect.ln());
    let mut total_target = 0;
    let mut total_got = 0;
    for t in 0..=128 {
        let b = g.generate_blocks(t, &mut rng);
        let count = b.mask.iter().filter(|&&m| m).count();
        assert!(count <= t, "never more than the target: {count} > {t}");
        assert_eq!(b.blocks.iter().map(|bl| bl.added).sum::<usize>(), count);
        for bl in &b.blocks {
            assert!(bl.height < g.height && bl.width < g.width);
            assert!(bl.top + bl.height <= g.height && bl.left + bl.width <= g.width);
            assert!(bl.added as f64 <= g.max_num_patches);
            // The sampled shape is in range and the rectangle is its rounding.
            assert!(bl.aspect >= lo.exp() * (1.0 - 1e-12) && bl.aspect <= hi.exp() * (1.0 + 1e-12));
            // Below a budget of 4 the area is drawn from [budget, 4] (uniform(4, budget)).
            assert!(bl.area <= g.max_num_patches.max(4.0) && bl.area <= (t as f64).max(4.0));
            assert_eq!(
                bl.height,
                (bl.area * bl.aspect).sqrt().round_ties_even() as usize
            );
            assert_eq!(
                bl.width,
                (bl.area / bl.aspect).sqrt().round_ties_even() as usize
            );
        }
        total_target += t;
        total_got += count;
    }
    // Early stops are rare: the generator reaches > 99% of the requested cells overall.
    assert!(
        total_got as f64 > 0.99 * total_target as f64,
        "{total_got} of {total_target}"
    );
}

#[test]
fn complete_randomly_hits_target_exactly() {
    let mut g = MaskingGenerator::new(7, 7).unwrap();
    g.complete_randomly = true;
    let mut rng = rng_stream(1, "test-complete", &[]);
    for t in 0..=49 {
        let m = g.generate(t, &mut rng);
        assert_eq!(m.iter().filter(|&&m| m).count(), t);
    }
}

#[test]
fn collate_invariants_with_chacha() {
    let g = MaskingGenerator::dinov2(224, 14).unwrap();
    let cfg = IbotMaskConfig::default();
    for (b, seed) in [(1usize, 0u64), (2, 1), (8, 2), (32, 3), (64, 4)] {
        let n_crops = 2 * b;
        let mut rng = rng_stream(seed, "ibot", &[0]);
        let m = collate_ibot_masks(&g, n_crops, &cfg, &mut rng);
        let counts = m.counts();
        // int(2B·0.5) = B crops masked (an unlucky generator may leave one short, never empty here).
        assert_eq!(counts.iter().filter(|&&c| c > 0).count(), b, "B={b}");
        assert!(m.n_masked_patches <= m.upperbound);
        assert_eq!(m.n_masked_patches, counts.iter().sum::<usize>());
        // Each masked crop lies in [int(N·0.1), int(N·0.5)].
        for &c in counts.iter().filter(|&&c| c > 0) {
            assert!((1..=128).contains(&c), "count {c}");
        }
        // Weights sum to 1 per masked crop.
        let total: f32 = m.masks_weight.iter().sum();
        assert!(
            (total - b as f32).abs() < 1e-4 * b as f32,
            "Σ weights {total} vs {b}"
        );
        assert!(m.mask_indices_list.windows(2).all(|w| w[0] < w[1]));
    }
    // Same stream, same masks; another stream, other masks.
    let a = collate_ibot_masks(&g, 16, &cfg, &mut rng_stream(5, "ibot", &[3]));
    let b = collate_ibot_masks(&g, 16, &cfg, &mut rng_stream(5, "ibot", &[3]));
    let c = collate_ibot_masks(&g, 16, &cfg, &mut rng_stream(5, "ibot", &[4]));
    assert_eq!(a, b);
    assert_ne!(a.masks, c.masks);
}

#[test]
fn mae_random_mask_invariants() {
    let mut rng = rng_stream(0, "mae", &[0]);
    for (l, r) in [
        (196usize, 0.75f64),
        (256, 0.75),
        (49, 0.9),
        (16, 0.0),
        (16, 1.0),
    ] {
        let m = mae_random_mask(l, r, &mut rng);
        let keep = mae_len_keep(l, r);
        assert_eq!(m.len_keep, keep);
        assert_eq!(m.mask.iter().filter(|&&x| !x).count(), keep);
        for (i, &s) in m.ids_shuffle.iter().enumerate() {
            assert_eq!(m.ids_restore[s], i, "ids_restore inverts ids_shuffle");
        }
        for &k in m.ids_keep() {
            assert!(!m.mask[k]);
        }
    }
    assert_eq!(mae_len_keep(196, 0.75), 49);
}
