//! Dense probes end to end on hand-made tokens: features that encode the label must give mIoU ≈ 100% and
//! a small depth RMSE, uninformative features must not, and training is deterministic given the seed.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use webssl_eval::dense::{
    self, DEPTH_BINS, DenseConfig, DenseImage, IGNORE_INDEX, LinearHead, resize_nearest,
};
use webssl_eval::features::Matrix;

const P: usize = 14; // patch size
const G: usize = 4; // grid side
const S: usize = P * G; // image side

struct Set {
    tokens: Vec<Matrix>,
    labels: Vec<Vec<u8>>,
}

impl Set {
    fn images(&self) -> Vec<DenseImage<'_>> {
        self.tokens
            .iter()
            .zip(&self.labels)
            .map(|(t, l)| DenseImage {
                tokens: t,
                grid: (G, G),
                label: l,
                size: (S, S),
            })
            .collect()
    }

    /// The same images with their labels NEAREST-resized to the token grid (no upsampling at eval).
    fn at_grid(&self) -> Set {
        Set {
            tokens: self.tokens.clone(),
            labels: self
                .labels
                .iter()
                .map(|l| resize_nearest(l, S, S, G, G))
                .collect(),
        }
    }

    fn grid_images(&self) -> Vec<DenseImage<'_>> {
        self.images()
            .into_iter()
            .map(|mut i| {
                i.size = (G, G);
                i
            })
            .collect()
    }

    /// All tokens stacked and their NEAREST grid targets (the probe's training input).
    fn train_input(&self) -> (Matrix, Vec<u8>) {
        let d = self.tokens[0].cols;
        let mut data = Vec::new();
        let mut targets = Vec::new();
        for (t, l) in self.tokens.iter().zip(&self.labels) {
            data.extend_from_slice(&t.data);
            targets.extend(resize_nearest(l, S, S, G, G));
        }
        (Matrix::new(targets.len(), d, data).unwrap(), targets)
    }
}

/// Block labels (one class per patch, some patches ignored) and tokens = one-hot(class) + noise, or
/// pure noise when `informative` is false.
fn seg_set(seed: u64, n: usize, classes: usize, informative: bool) -> Set {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = classes + 2;
    let mut out = Set {
        tokens: vec![],
        labels: vec![],
    };
    for _ in 0..n {
        let cls: Vec<u8> = (0..G * G)
            .map(|_| {
                if rng.next_u64() % 20 == 0 {
                    IGNORE_INDEX
                } else {
                    (rng.next_u64() % classes as u64) as u8
                }
            })
            .collect();
        let mut tok = Vec::with_capacity(G * G * d);
        for &c in &cls {
            for j in 0..d {
                let noise = (rng.next_u64() % 1000) as f32 / 1000.0 * 0.04 - 0.02;
                let hot = informative && c != IGNORE_INDEX && j == c as usize;
                tok.push(if hot { 1.0 } else { 0.0 } + noise);
            }
        }
        let label: Vec<u8> = (0..S * S)
            .map(|p| cls[(p / S / P) * G + (p % S) / P])
            .collect();
        out.tokens.push(Matrix::new(G * G, d, tok).unwrap());
        out.labels.push(label);
    }
    out
}

fn train(set: &Set, classes: usize, cfg: &DenseConfig) -> LinearHead {
    let (x, y) = set.train_input();
    let ignore = (classes < DEPTH_BINS).then_some(IGNORE_INDEX);
    dense::train_head(&x, &y, classes, ignore, cfg).unwrap()
}

#[test]
fn perfect_seg_features_give_full_miou() {
    let classes = 5;
    let cfg = DenseConfig {
        epochs: 30,
        batch_tokens: 64,
        lr: 1e-2,
        ..DenseConfig::default()
    };
    let head = train(&seg_set(1, 40, classes, true), classes, &cfg);
    let val = seg_set(2, 20, classes, true);
    let (s, bad) = dense::evaluate_seg(&head, &val.images()).unwrap();
    assert_eq!(bad, 0);
    // Only pixels next to a 4-patch junction can flip under bilinear logit upsampling.
    // At token resolution the probe is exact.
    let grid = val.at_grid();
    let (g, _) = dense::evaluate_seg(&head, &grid.grid_images()).unwrap();
    assert_eq!((g.miou, g.pixel_acc), (100.0, 100.0), "{g:?}");
    // At full resolution only pixels near a patch border can flip under bilinear logit upsampling
    // (every border here is a random class change; ≈ 3% of pixels measured).
    assert!(s.miou > 90.0, "mIoU {:.2}", s.miou);
    assert!(s.pixel_acc > 95.0, "pixel acc {:.2}", s.pixel_acc);
    assert!(s.per_class_iou.iter().all(Option::is_some));
    // Ignored pixels are not scored.
    let ignored: usize = val
        .labels
        .iter()
        .flatten()
        .filter(|&&v| v == IGNORE_INDEX)
        .count();
    assert!(ignored > 0);
    assert_eq!(s.pixels as usize, 20 * S * S - ignored);

    // Uninformative tokens: chance level (≈ 1/5 pixel accuracy), far below.
    let noise_head = train(&seg_set(1, 40, classes, false), classes, &cfg);
    let (n, _) =
        dense::evaluate_seg(&noise_head, &seg_set(2, 20, classes, false).images()).unwrap();
    assert!(n.miou < 40.0, "noise mIoU {:.2}", n.miou);
}

#[test]
fn training_is_deterministic_given_the_seed() {
    let set = seg_set(3, 10, 4, true);
    let cfg = DenseConfig {
        epochs: 3,
        batch_tokens: 32,
        ..DenseConfig::default()
    };
    let a = train(&set, 4, &cfg);
    let b = train(&set, 4, &cfg);
    assert_eq!(a, b);
    assert_eq!(
        a.steps,
        3 * (set
            .train_input()
            .1
            .iter()
            .filter(|&&t| t != IGNORE_INDEX)
            .count())
        .div_ceil(32)
    );
    let c = train(&set, 4, &DenseConfig { seed: 1, ..cfg });
    assert_ne!(a.weight, c.weight);
    // Bad input is an error, not a panic.
    let (x, y) = set.train_input();
    assert!(
        dense::train_head(&x, &y[1..], 4, Some(IGNORE_INDEX), &DenseConfig::default()).is_err()
    );
    assert!(
        dense::train_head(&x, &y, 2, Some(IGNORE_INDEX), &DenseConfig::default()).is_err(),
        "targets ≥ classes"
    );
}

/// Depth ramps (8-bit bins growing down the image, random offset per image); tokens = one-hot of the
/// bin at the patch centre when informative.
fn depth_set(seed: u64, n: usize, informative: bool) -> Set {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Set {
        tokens: vec![],
        labels: vec![],
    };
    for i in 0..n {
        // Train sets (n ≥ 80) cover every offset, so every val token's bin was seen in training.
        let offset = if n >= 80 {
            i % 80
        } else {
            (rng.next_u64() % 80) as usize
        };
        let label: Vec<u8> = (0..S * S).map(|p| (offset + 3 * (p / S)) as u8).collect();
        let centres = resize_nearest(&label, S, S, G, G);
        let mut tok = vec![0f32; G * G * DEPTH_BINS];
        for (t, &c) in centres.iter().enumerate() {
            if informative {
                tok[t * DEPTH_BINS + c as usize] = 1.0;
            } else {
                tok[t * DEPTH_BINS + (rng.next_u64() % DEPTH_BINS as u64) as usize] = 1.0;
            }
        }
        out.tokens
            .push(Matrix::new(G * G, DEPTH_BINS, tok).unwrap());
        out.labels.push(label);
    }
    out
}

#[test]
fn perfect_depth_features_give_small_rmse() {
    let cfg = DenseConfig {
        epochs: 60,
        batch_tokens: 64,
        lr: 5e-2,
        ..DenseConfig::default()
    };
    let max_depth = 10.0;
    let head = train(&depth_set(4, 80, true), DEPTH_BINS, &cfg);
    let val = depth_set(5, 20, true);
    let s = dense::evaluate_depth(&head, &val.images(), max_depth).unwrap();
    let grid = val.at_grid();
    let g = dense::evaluate_depth(&head, &grid.grid_images(), max_depth).unwrap();
    // At the token grid: within a bin or two (one bin = 10/255 ≈ 0.039).
    assert!(g.rmse < 0.08, "grid rmse {:.4}", g.rmse);
    // Full resolution: bilinear upsampling of a ramp is exact except the clamped 7-pixel borders at
    // the top and bottom (up to 7 px × 3 bins off: ≈ 0.23 RMSE from them alone).
    assert!(s.rmse < 0.5, "rmse {:.4}", s.rmse);
    // abs-rel is dominated by the clamped top rows of ramps that start near depth 0.
    assert!(s.abs_rel < 0.15, "abs-rel {:.4}", s.abs_rel);
    let noise = train(&depth_set(4, 80, false), DEPTH_BINS, &cfg);
    let n = dense::evaluate_depth(&noise, &depth_set(5, 20, false).images(), max_depth).unwrap();
    assert!(
        n.rmse > 3.0 * s.rmse,
        "noise rmse {:.4} vs {:.4}",
        n.rmse,
        s.rmse
    );
}

fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Synthetic generator shards: labels are read from `seg.png` / `depth.png` and NEAREST-resized with the
/// image; samples without the member or with a colour label map are skipped with a reason.
#[test]
fn reads_generator_shards_and_skips_bad_samples() {
    use webssl_data::shards::{Sample, ShardLimits, ShardWriter};
    use webssl_data::synth::{self, Mix, SynthConfig};
    use webssl_data::transform::EvalTransform;

    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let cfg = SynthConfig {
        size: 56,
        seed: 7,
        mix: Mix::full(),
    };
    synth::write_shards(&good, &cfg, 5, "val", ShardLimits::default(), &mut |_| {}).unwrap();
    let bad = tmp.path().join("bad");
    let mut w = ShardWriter::create(&bad, "bad", ShardLimits::default()).unwrap();
    let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::new(56, 56));
    w.write(&Sample::new("no-label").with("png", png_bytes(rgb.clone())))
        .unwrap();
    w.write(
        &Sample::new("rgb-label")
            .with("png", png_bytes(rgb.clone()))
            .with("seg.png", png_bytes(rgb)),
    )
    .unwrap();
    w.finish().unwrap();

    let t = EvalTransform::square(28);
    let (samples, skipped) =
        dense::read_dense_split(&[good.clone(), bad], "seg.png", &t, 28, None).unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].why.contains("no image or no `seg.png`"));
    assert!(skipped[1].why.contains("8-bit grayscale"));
    for (i, s) in samples.iter().enumerate() {
        let g = synth::generate(&cfg, i as u64);
        assert_eq!(s.pixels.len(), 3 * 28 * 28);
        assert_eq!(
            s.label,
            resize_nearest(g.seg.as_raw(), 56, 56, 28, 28),
            "sample {i}"
        );
        assert!(
            s.label
                .iter()
                .all(|&c| (c as usize) < synth::SEG_CLASSES.len())
        );
    }
    let (depth, _) = dense::read_dense_split(&[good], "depth.png", &t, 28, Some(2)).unwrap();
    assert_eq!(depth.len(), 2, "limit");
    let g = synth::generate(&cfg, 1);
    assert_eq!(
        depth[1].label,
        resize_nearest(g.depth.as_raw(), 56, 56, 28, 28)
    );
}
