//! Linear probes: parity with the dinov2 `linear.py` grid transcription (`fixtures/probes`), the
//! logistic-regression optimum, determinism, bad input, and separable / random-label sanity.

mod support;

use support::{Fixture, Mix};
use webssl_eval::features::Matrix;
use webssl_eval::linear::{
    self, BlockFeatures, DINOV2_LEARNING_RATES, LinearConfig, LogRegConfig, TrainHooks,
};

/// The fixture's 4-block features of `split`.
fn blocks(f: &Fixture, split: &str) -> BlockFeatures {
    BlockFeatures {
        cls: (1..=4)
            .map(|k| f.matrix(&format!("linear.{split}.layer-{k}.cls")))
            .collect(),
        patch_mean: f.matrix(&format!("linear.{split}.layer-1.patch_mean")),
    }
}

fn fixture_config(f: &Fixture) -> LinearConfig {
    let j = &f.json["linear"];
    LinearConfig {
        batch_size: j["batch_size"].as_u64().unwrap() as usize,
        epochs: j["epochs"].as_u64().unwrap() as usize,
        ..Default::default()
    }
}

/// Max |a - b| relative to max |b|.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0f64, f64::max)
        / scale
}

#[test]
fn grid_training_matches_dinov2() {
    let f = Fixture::load();
    let j = &f.json["linear"];
    let cfg = fixture_config(&f);
    let train = blocks(&f, "train");
    let labels = f.labels("linear.train_labels");
    let names: Vec<&str> = j["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let c = j["num_classes"].as_u64().unwrap() as usize;
    let init: Vec<Matrix> = (0..names.len())
        .map(|i| f.matrix(&format!("linear.init.{i}.weight")))
        .collect();
    let trace = j["trace_index"].as_u64().unwrap() as usize;
    let hooks = TrainHooks {
        init: Some(init.clone()),
        order: Some(f.labels("linear.order")),
        trace: Some(trace),
    };
    let run = linear::train_grid(&train, &labels, c, &cfg, &hooks).unwrap();
    assert_eq!(run.max_iter, j["max_iter"].as_u64().unwrap() as usize);
    // Names: dinov2's wherever dinov2's are unique; ours are always unique.
    let got: Vec<&str> = run.classifiers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(got.len(), names.len());
    let uniq: std::collections::HashSet<&&str> = got.iter().collect();
    assert_eq!(uniq.len(), got.len());
    assert!(got[0].ends_with("lr_3_125e-7"), "{}", got[0]);

    // The traced classifier (4 blocks + avgpool, lr 0.1): every step, weight change and bias.
    let (_, tw) = f.tensor("linear.trace.weight");
    let (_, tb) = f.tensor("linear.trace.bias");
    let w0 = &init[trace].data;
    let per = w0.len();
    for (it, (w, b)) in run.trace.iter().enumerate() {
        let dw: Vec<f32> = w.iter().zip(w0).map(|(a, b)| a - b).collect();
        let ref_dw: Vec<f64> = tw[it * per..(it + 1) * per]
            .iter()
            .zip(w0)
            .map(|(a, b)| a - f64::from(*b))
            .collect();
        let e = rel_err(&dw, &ref_dw);
        assert!(e <= 1e-5, "iteration {it}: weight update rel err {e}");
        let e = rel_err(b, &tb[it * c..(it + 1) * c]);
        assert!(e <= 1e-5, "iteration {it}: bias rel err {e}");
    }
    // Per-step losses of every classifier.
    let (_, losses) = f.tensor("linear.losses");
    for (it, l) in run.losses.iter().enumerate() {
        let e = rel_err(l, &losses[it * names.len()..(it + 1) * names.len()]);
        assert!(e <= 1e-5, "iteration {it}: losses rel err {e}");
    }
    // Final weights of all 52 classifiers (update relative to the largest update).
    for (i, cl) in run.classifiers.iter().enumerate() {
        let (_, fw) = f.tensor(&format!("linear.final.{i}.weight"));
        let dw: Vec<f32> = cl
            .weight
            .data
            .iter()
            .zip(&init[i].data)
            .map(|(a, b)| a - b)
            .collect();
        let ref_dw: Vec<f64> = fw
            .iter()
            .zip(&init[i].data)
            .map(|(a, b)| a - f64::from(*b))
            .collect();
        let e = rel_err(&dw, &ref_dw);
        assert!(e <= 1e-4, "{}: final weight update rel err {e}", cl.name);
    }
    // Validation: logits of every classifier, accuracies and dinov2's best pick.
    let val = blocks(&f, "val");
    let val_labels = f.labels("linear.val_labels");
    let res = linear::evaluate_grid(&run, &val, &val_labels, c, labels.len(), &cfg).unwrap();
    let ref_acc: Vec<f64> = j["val_top1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (s, r) in res.classifiers.iter().zip(&ref_acc) {
        assert!((s.top1 - r).abs() < 1e-9, "{}: {} vs {r}", s.name, s.top1);
    }
    assert_eq!(res.best, j["best"]["index"].as_u64().unwrap() as usize);
    let cl = &run.classifiers[trace];
    let x = val.linear_input(cl.n_blocks, cl.avgpool).unwrap();
    let logits = linear::logits(&x, &cl.weight, &cl.bias).unwrap();
    let (_, ref_logits) = f.tensor(&format!("linear.val_logits.{trace}"));
    let e = rel_err(&logits, &ref_logits);
    assert!(e <= 1e-5, "val logits rel err {e}");
}

#[test]
fn grid_is_deterministic_from_the_seed() {
    let f = Fixture::load();
    let cfg = fixture_config(&f);
    let train = blocks(&f, "train");
    let labels = f.labels("linear.train_labels");
    let a = linear::train_grid(&train, &labels, 5, &cfg, &TrainHooks::default()).unwrap();
    let b = linear::train_grid(&train, &labels, 5, &cfg, &TrainHooks::default()).unwrap();
    assert_eq!(a.classifiers, b.classifiers);
    assert_eq!(a.losses, b.losses);
    let other = LinearConfig {
        seed: 1,
        ..cfg.clone()
    };
    let c = linear::train_grid(&train, &labels, 5, &other, &TrainHooks::default()).unwrap();
    assert_ne!(a.classifiers[0].weight, c.classifiers[0].weight);
}

#[test]
fn logreg_reaches_the_reference_optimum() {
    let f = Fixture::load();
    let x = f.matrix("linear.train.layer-1.cls");
    let y = f.labels("linear.train_labels");
    for j in 0..3 {
        let meta = &f.json["logreg"][j.to_string()];
        let c_reg = meta["C"].as_f64().unwrap();
        let m = linear::fit_logreg(&x, &y, 5, c_reg, 5000, 1e-12, None).unwrap();
        let obj = meta["objective"].as_f64().unwrap();
        assert!(
            (m.objective - obj).abs() <= 1e-9 * obj.abs().max(1.0),
            "C={c_reg}: objective {} vs {obj}",
            m.objective
        );
        let (_, w) = f.tensor(&format!("logreg.{j}.weight"));
        let (_, b) = f.tensor(&format!("logreg.{j}.bias"));
        let scale = w.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (a, r) in m.weight.iter().zip(&w).chain(m.bias.iter().zip(&b)) {
            assert!((a - r).abs() <= 1e-5 * scale, "C={c_reg}: {a} vs {r}");
        }
    }
}

/// 4 blocks of cluster features: class centres shared across blocks and splits.
fn blob_blocks(
    n: usize,
    d: usize,
    c: usize,
    seed: u64,
    random_labels: bool,
) -> (BlockFeatures, Vec<usize>) {
    let mut g = Mix(seed);
    let mut cg = Mix(7);
    let centres: Vec<f32> = (0..c * d).map(|_| cg.normal() * 3.0).collect();
    let labels: Vec<usize> = (0..n)
        .map(|i| {
            if random_labels {
                (g.next() * c as f64) as usize % c
            } else {
                i % c
            }
        })
        .collect();
    let block = |g: &mut Mix| {
        let mut data = Vec::with_capacity(n * d);
        for i in 0..n {
            let l = i % c;
            for j in 0..d {
                data.push(centres[l * d + j] + 0.5 * g.normal());
            }
        }
        Matrix::new(n, d, data).unwrap()
    };
    let cls = (0..4).map(|_| block(&mut g)).collect();
    (
        BlockFeatures {
            cls,
            patch_mean: block(&mut g),
        },
        labels,
    )
}

#[test]
fn separable_clusters_near_100_random_labels_near_chance() {
    let cfg = LinearConfig {
        batch_size: 64,
        epochs: 5,
        ..Default::default()
    };
    let (train, tl) = blob_blocks(640, 16, 8, 1, false);
    let (val, vl) = blob_blocks(320, 16, 8, 2, false);
    let run = linear::train_grid(&train, &tl, 8, &cfg, &TrainHooks::default()).unwrap();
    let res = linear::evaluate_grid(&run, &val, &vl, 8, tl.len(), &cfg).unwrap();
    assert_eq!(res.classifiers.len(), 52);
    assert_eq!(res.best().top1, 100.0);
    // Every lr = 0.1 classifier (4 input kinds) separates the clusters.
    for s in res.classifiers.iter().filter(|s| s.base_lr == 0.1) {
        assert!(s.top1 >= 99.0, "{}: {}", s.name, s.top1);
    }

    let (train, tl) = blob_blocks(640, 16, 8, 1, true);
    let (val, vl) = blob_blocks(800, 16, 8, 3, true);
    let run = linear::train_grid(&train, &tl, 8, &cfg, &TrainHooks::default()).unwrap();
    let res = linear::evaluate_grid(&run, &val, &vl, 8, tl.len(), &cfg).unwrap();
    // Chance is 12.5%; the best of 52 on 800 samples stays within a few σ (σ ≈ 1.2%).
    assert!(res.best().top1 < 20.0, "best {}", res.best().top1);

    let lr = linear::logreg_sweep(
        &train.cls[0],
        &tl,
        &val.cls[0],
        &vl,
        8,
        &LogRegConfig {
            c_values: vec![1e-4, 1e-2, 1.0],
            max_iter: 200,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(lr.top1 < 20.0, "logreg on random labels: {}", lr.top1);
    let (train, tl) = blob_blocks(400, 16, 8, 1, false);
    let (val, vl) = blob_blocks(200, 16, 8, 2, false);
    let lr = linear::logreg_sweep(
        &train.cls[0],
        &tl,
        &val.cls[0],
        &vl,
        8,
        &LogRegConfig {
            c_values: vec![1e-4, 1e-2, 1.0],
            max_iter: 200,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(lr.top1, 100.0);
    assert_eq!(lr.sweep.len(), 3);
}

#[test]
fn bad_inputs_are_errors() {
    let f = Fixture::load();
    let cfg = fixture_config(&f);
    let train = blocks(&f, "train");
    let labels = f.labels("linear.train_labels");
    // Label count mismatch.
    let e = linear::train_grid(&train, &labels[1..], 5, &cfg, &TrainHooks::default()).unwrap_err();
    assert!(e.to_string().contains("labels"), "{e}");
    // Label beyond the class count.
    assert!(linear::train_grid(&train, &labels, 3, &cfg, &TrainHooks::default()).is_err());
    // Too few blocks for n_last_blocks = 4.
    let one = BlockFeatures {
        cls: vec![train.cls[0].clone()],
        patch_mean: train.patch_mean.clone(),
    };
    let e = linear::train_grid(&one, &labels, 5, &cfg, &TrainHooks::default()).unwrap_err();
    assert!(e.to_string().contains("--last-layers"), "{e}");
    // Wrong number of initial weights.
    let hooks = TrainHooks {
        init: Some(vec![]),
        ..Default::default()
    };
    assert!(linear::train_grid(&train, &labels, 5, &cfg, &hooks).is_err());
    // Val mismatch.
    let run = linear::train_grid(
        &train,
        &labels,
        5,
        &LinearConfig {
            learning_rates: vec![DINOV2_LEARNING_RATES[12]],
            epochs: 1,
            ..cfg.clone()
        },
        &TrainHooks::default(),
    )
    .unwrap();
    let val = blocks(&f, "val");
    assert!(linear::evaluate_grid(&run, &val, &[0, 1], 5, 40, &cfg).is_err());
    assert!(linear::fit_logreg(&train.cls[0], &labels[1..], 5, 1.0, 10, 1e-9, None).is_err());
    assert!(linear::fit_logreg(&train.cls[0], &labels, 5, 0.0, 10, 1e-9, None).is_err());
}
