//! k-NN probe: parity with the dinov2 `KnnModule` transcription in `fixtures/probes/make_probes.py`,
//! determinism, label/feature mismatch errors, and sanity on separable / random-label data.

mod support;

use std::path::Path;

use support::{Fixture, Mix};
use webssl_eval::features::{Matrix, Split};
use webssl_eval::knn::{self, KnnConfig};

fn case_splits(f: &Fixture, case: &str) -> (Split, Split) {
    let train = Split::new(
        "train",
        f.matrix(&format!("knn.{case}.train")),
        f.labels(&format!("knn.{case}.train_labels")),
    )
    .unwrap();
    let val = Split::new(
        "val",
        f.matrix(&format!("knn.{case}.val")),
        f.labels(&format!("knn.{case}.val_labels")),
    )
    .unwrap();
    (train, val)
}

#[test]
fn neighbours_and_votes_match_dinov2() {
    let f = Fixture::load();
    for case in ["clusters", "small"] {
        let meta = &f.json["knn"][case];
        let ks: Vec<usize> = meta["ks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap() as usize)
            .collect();
        let c = meta["num_classes"].as_u64().unwrap() as usize;
        let (train, val) = case_splits(&f, case);
        let max_k = *ks.iter().max().unwrap();
        let nb = knn::nearest(
            &knn::normalize_rows(&train.features),
            &knn::normalize_rows(&val.features),
            max_k,
            7, // several chunks
        )
        .unwrap();
        let (_, ref_idx) = f.tensor(&format!("knn.{case}.topk_index"));
        let (_, ref_sims) = f.tensor(&format!("knn.{case}.topk_sims"));
        let idx: Vec<f64> = nb.index.iter().map(|&i| i as f64).collect();
        assert_eq!(idx, ref_idx, "{case}: neighbour indices");
        for (a, b) in nb.sims.iter().zip(&ref_sims) {
            assert!((*a as f64 - b).abs() < 1e-5, "{case}: sim {a} vs {b}");
        }
        for r in 0..val.len() {
            let labels: Vec<usize> = nb.index[r * max_k..(r + 1) * max_k]
                .iter()
                .map(|&i| train.labels[i as usize])
                .collect();
            let scores =
                knn::class_scores(&nb.sims[r * max_k..(r + 1) * max_k], &labels, &ks, 0.07, c);
            for (ki, k) in ks.iter().enumerate() {
                let (_, p) = f.tensor(&format!("knn.{case}.probas.{k}"));
                for cl in 0..c {
                    let (a, b) = (scores[ki][cl], p[r * c + cl]);
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                        "{case} row {r} k {k} class {cl}: {a} vs {b}"
                    );
                }
            }
        }
        let cfg = KnnConfig {
            ks: ks.clone(),
            ..Default::default()
        };
        let res = knn::evaluate(&train, &val, c, &cfg).unwrap();
        for k in &ks {
            let s = res.at(*k).unwrap();
            let t1 = meta["top1"][k.to_string()].as_f64().unwrap();
            let t5 = meta["top5"][k.to_string()].as_f64().unwrap();
            assert!(
                (s.top1 - t1).abs() < 1e-9,
                "{case} k {k}: top-1 {} vs {t1}",
                s.top1
            );
            assert!(
                (s.top5 - t5).abs() < 1e-9,
                "{case} k {k}: top-5 {} vs {t5}",
                s.top5
            );
        }
        assert_eq!(res.n_train, train.len());
        assert_eq!(res.top5_n, c.min(5));
    }
}

#[test]
fn deterministic_and_chunk_independent() {
    let f = Fixture::load();
    let (train, val) = case_splits(&f, "clusters");
    let a = knn::evaluate(&train, &val, 12, &KnnConfig::default()).unwrap();
    let b = knn::evaluate(
        &train,
        &val,
        12,
        &KnnConfig {
            chunk_rows: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn k_is_capped_at_train_size() {
    let f = Fixture::load();
    let (train, val) = case_splits(&f, "small"); // 40 train rows
    let res = knn::evaluate(
        &train,
        &val,
        3,
        &KnnConfig {
            ks: vec![10, 100, 200],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(res.max_k, 40);
    assert_eq!(res.per_k.len(), 2);
    assert_eq!(res.per_k[1].k, 40);
    assert_eq!(res.per_k[1].requested, vec![100, 200]);
    // k = 40 over the whole train set equals the fixture's k = 40.
    let t1 = f.json["knn"]["small"]["top1"]["40"].as_f64().unwrap();
    assert!((res.at(200).unwrap().top1 - t1).abs() < 1e-9);
}

fn blobs(n: usize, d: usize, c: usize, spread: f32, seed: u64, random_labels: bool) -> Split {
    let mut g = Mix(seed);
    let mut means = Mix(42);
    let centres: Vec<f32> = (0..c * d).map(|_| means.normal() * 4.0).collect();
    let mut data = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let l = i % c;
        for j in 0..d {
            data.push(centres[l * d + j] + spread * g.normal());
        }
        labels.push(if random_labels {
            (g.next() * c as f64) as usize % c
        } else {
            l
        });
    }
    Split::new("blobs", Matrix::new(n, d, data).unwrap(), labels).unwrap()
}

#[test]
fn separable_clusters_score_100_and_random_labels_score_chance() {
    let train = blobs(1000, 32, 10, 0.5, 1, false);
    let val = blobs(300, 32, 10, 0.5, 2, false);
    let res = knn::evaluate(&train, &val, 10, &KnnConfig::default()).unwrap();
    for s in &res.per_k {
        assert_eq!(s.top1, 100.0, "k {}", s.k);
        assert_eq!(s.top5, 100.0);
    }
    let train = blobs(1000, 32, 10, 0.5, 1, true);
    let val = blobs(1000, 32, 10, 0.5, 2, true);
    let res = knn::evaluate(&train, &val, 10, &KnnConfig::default()).unwrap();
    for s in &res.per_k {
        // chance is 10% (top-1) and 50% (top-5); 1000 samples: ±3σ ≈ ±9%, ±4.7%.
        assert!((s.top1 - 10.0).abs() < 9.0, "k {}: top-1 {}", s.k, s.top1);
        assert!((s.top5 - 50.0).abs() < 15.0, "k {}: top-5 {}", s.k, s.top5);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let f = Fixture::load();
    let (train, val) = case_splits(&f, "small");
    // Labels beyond num_classes.
    let e = knn::evaluate(&train, &val, 2, &KnnConfig::default()).unwrap_err();
    assert!(e.to_string().contains("num_classes"), "{e}");
    // Dimension mismatch.
    let other = Split::new("val", Matrix::new(1, 3, vec![1.0; 3]).unwrap(), vec![0]).unwrap();
    let e = knn::evaluate(&train, &other, 3, &KnnConfig::default()).unwrap_err();
    assert!(e.to_string().contains("dimension"), "{e}");
    // k = 0 and bad temperature.
    let bad_k = KnnConfig {
        ks: vec![0],
        ..Default::default()
    };
    assert!(knn::evaluate(&train, &val, 3, &bad_k).is_err());
    let bad_t = KnnConfig {
        temperature: 0.0,
        ..Default::default()
    };
    assert!(knn::evaluate(&train, &val, 3, &bad_t).is_err());
    // Label count mismatch is caught when building a split.
    assert!(Split::new("val", val.features.clone(), vec![0; 3]).is_err());
}

/// An embed-style file: `cls` [N, 2] plus a 3-D `patch_tokens` [N, 3, 2] that loading must skip.
fn write_embed_file(path: &Path, keys: &[&str], rows: &[[f32; 2]]) {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let tokens: Vec<f32> = (0..rows.len() * 6).map(|i| i as f32).collect();
    let meta = serde_json::json!({"keys": keys, "model": "m"}).to_string();
    webssl_models::checkpoint::export::write_safetensors_with_metadata(
        path,
        &[
            ("cls".into(), vec![rows.len(), 2], data),
            ("patch_tokens".into(), vec![rows.len(), 3, 2], tokens),
        ],
        &[("webssl", meta)],
    )
    .unwrap();
}

#[test]
fn labels_are_matched_by_key_not_position() {
    use webssl_data::shards::{Sample, ShardLimits, ShardWriter};
    use webssl_eval::features::{LabelSpec, load_labelled};
    let tmp = tempfile::tempdir().unwrap();
    let png = webssl_data::import::encode_gray_png(&[0u8; 4], 2, 2).unwrap();
    let shards = tmp.path().join("shards");
    let mut w = ShardWriter::create(&shards, "s", ShardLimits::default()).unwrap();
    for (key, label, shape) in [("a", 0, "ring"), ("b", 1, "circle"), ("c", 2, "star")] {
        let meta = serde_json::json!({"labels": {"shape": shape}}).to_string();
        let s = Sample::new(key)
            .with("png", png.clone())
            .with("cls", label.to_string())
            .with("json", meta);
        w.write(&s).unwrap();
    }
    // A sample without a label is skipped and counted, not fatal.
    w.write(&Sample::new("d").with("png", png.clone())).unwrap();
    w.finish().unwrap();
    let feats = tmp.path().join("f.safetensors");
    write_embed_file(
        &feats,
        &["c", "a", "b"],
        &[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
    );
    let inputs = vec![shards.display().to_string()];
    let lf = load_labelled(&feats, &inputs, &feats, &inputs, &LabelSpec::Cls, false).unwrap();
    assert_eq!(lf.train_labels, [2, 0, 1]);
    assert_eq!(lf.train.tensors.keys().collect::<Vec<_>>(), ["cls"]);
    assert_eq!(lf.train.get("cls").unwrap().row(2), [1.0, 1.0]);
    assert_eq!(lf.train.model.as_deref(), Some("m"));
    assert_eq!(lf.mapping.num_classes, 3);
    assert_eq!(lf.skipped, (1, 1));
    let spec: LabelSpec = "meta:labels.shape".parse().unwrap();
    let lf = load_labelled(&feats, &inputs, &feats, &inputs, &spec, false).unwrap();
    assert_eq!(lf.mapping.names, ["circle", "ring", "star"]);
    assert_eq!(lf.train_labels, [2, 1, 0]);

    // A feature key the labels do not know: an error with the count, or dropped on request.
    let more = tmp.path().join("g.safetensors");
    write_embed_file(&more, &["a", "zz", "b", "yy"], &[[0.0, 1.0]; 4]);
    let e = load_labelled(&more, &inputs, &feats, &inputs, &LabelSpec::Cls, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 of 4 feature rows have no label"), "{e}");
    let lf = load_labelled(&more, &inputs, &feats, &inputs, &LabelSpec::Cls, true).unwrap();
    assert_eq!(lf.train.keys, ["a", "b"]);
    assert_eq!(lf.train_labels, [0, 1]);
    assert_eq!(lf.train.get("cls").unwrap().rows, 2);
    assert_eq!(lf.dropped, (2, 0));

    // Class folders: ImageFolder classes, keys relative to the root.
    let root = tmp.path().join("folders");
    for (class, name) in [("dog", "x"), ("cat", "y"), ("cat", "sub/z")] {
        let p = root.join(class).join(format!("{name}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &png).unwrap();
    }
    let ff = tmp.path().join("folders.safetensors");
    write_embed_file(&ff, &["dog/x", "cat/sub/z", "cat/y"], &[[1.0, 0.0]; 3]);
    let roots = vec![root.display().to_string()];
    let lf = load_labelled(&ff, &roots, &ff, &roots, &LabelSpec::Cls, false).unwrap();
    assert_eq!(lf.train_labels, [1, 0, 0]);
    // Folders carry no json meta.
    assert!(load_labelled(&ff, &roots, &ff, &roots, &spec, false).is_err());

    // Embed files whose key list does not match the rows, or repeats a key, are rejected.
    let bad = tmp.path().join("bad.safetensors");
    write_embed_file(&bad, &["a", "b"], &[[0.0, 1.0]; 3]);
    assert!(load_labelled(&bad, &inputs, &feats, &inputs, &LabelSpec::Cls, false).is_err());
    write_embed_file(&bad, &["a", "a"], &[[0.0, 1.0]; 2]);
    let e = load_labelled(&bad, &inputs, &feats, &inputs, &LabelSpec::Cls, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicated"), "{e}");
}
