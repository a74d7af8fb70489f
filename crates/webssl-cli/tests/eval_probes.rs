//! End to end: `webssl eval knn` / `webssl eval linear` on synthetic shards and a tiny Fashion-MNIST
//! IDX set, with a model from fixtures/backbones (features computed through the embed path) or with
//! `webssl embed` files; results JSON shape, key-matched labels and clear label errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{err, ok, p, read_json as json};

fn model() -> PathBuf {
    support::fixtures("backbones/dinov2-reg4")
}

fn webssl(args: &[&str]) -> Output {
    support::webssl()
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[test]
fn knn_and_linear_on_synthetic_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let (tr, va) = (tmp.path().join("tr"), tmp.path().join("va"));
    for (dir, n, seed, split) in [(&tr, "120", "0", "train"), (&va, "60", "1", "val")] {
        ok(&webssl(&[
            "synth",
            "--out",
            p(dir),
            "--samples",
            n,
            "--size",
            "56",
            "--seed",
            seed,
            "--split",
            split,
        ]));
    }
    let out = tmp.path().join("res/knn.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let m = model();
    let stdout = ok(&webssl(&[
        "eval",
        "knn",
        "--model",
        p(&m),
        "--train",
        p(&tr),
        "--val",
        p(&va),
        "--resolution",
        "56",
        "--output",
        p(&out),
    ]));
    assert!(stdout.contains("knn: top-1 @k=20 = "), "{stdout}");
    assert!(stdout.contains("(train 120, val 60, "), "{stdout}");
    let v = json(&out);
    assert_eq!(v["method"], "knn");
    assert_eq!(v["dataset"], "tr");
    assert_eq!(v["sizes"]["train"], 120);
    assert_eq!(v["protocol"]["max_k"], 120); // 200 capped at the train size
    let top1 = v["metrics"]["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1));
    assert_eq!(v["metrics"]["top1@20"], v["metrics"]["top1"]);
    // The computed features were kept beside the output and give the same result from files.
    let (trf, vaf) = (
        tmp.path().join("res/knn.train.safetensors"),
        tmp.path().join("res/knn.val.safetensors"),
    );
    // `webssl eval PROBE` on those files, with the train labels read from `labels`.
    let on_files = |probe: &str, labels: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            probe,
            "--train-features",
            p(&trf),
            "--val-features",
            p(&vaf),
            "--train-labels",
            p(labels),
            "--val-labels",
            p(&va),
        ];
        args.extend_from_slice(extra);
        webssl(&args)
    };
    let out2 = tmp.path().join("res/knn-files.json");
    ok(&on_files("knn", &tr, &["--output", p(&out2)]));
    assert_eq!(json(&out2)["metrics"], v["metrics"]);

    // Labels from the wrong inputs: every row unlabelled, said clearly.
    let e = err(&on_files("knn", &va, &[]));
    assert!(e.contains("120 of 120 feature rows have no label"), "{e}");
    // A meta label only scenes carry: an error, or the labelled subset with --drop-unlabelled.
    let shape = ["--label", "meta:labels.shape"];
    let e = err(&on_files("knn", &tr, &shape));
    assert!(
        e.contains("feature rows have no label") && e.contains("--drop-unlabelled"),
        "{e}"
    );
    let out3 = tmp.path().join("res/shape.json");
    let with_drop = [&shape[..], &["--drop-unlabelled", "--output", p(&out3)]].concat();
    let stdout = ok(&on_files("knn", &tr, &with_drop));
    assert!(stdout.contains("0=circle"), "{stdout}");
    let s = json(&out3);
    let kept = s["sizes"]["train"].as_u64().unwrap();
    assert_eq!(
        kept + s["labels"]["dropped_unlabelled"]["train"].as_u64().unwrap(),
        120
    );
    assert!(s["labels"]["class_names"].as_array().unwrap().len() >= 2);

    // Linear grid with --model: the 3-block fixture model gives n_last_blocks = 1 and 3 blocks are
    // embedded; n = 4 is skipped and reported.
    let lin = tmp.path().join("res/lin.json");
    let stdout = ok(&webssl(&[
        "eval",
        "linear",
        "--model",
        p(&m),
        "--train",
        p(&tr),
        "--val",
        p(&va),
        "--resolution",
        "56",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--output",
        p(&lin),
    ]));
    assert!(stdout.contains("linear: top-1 = "), "{stdout}");
    let l = json(&lin);
    assert_eq!(l["method"], "linear");
    assert_eq!(l["classifiers"].as_array().unwrap().len(), 26);
    assert_eq!(l["protocol"]["n_last_blocks_skipped"][0], 4);
    let best = l["metrics"]["top1"].as_f64().unwrap();
    let max = l["classifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["top1"].as_f64().unwrap())
        .fold(0f64, f64::max);
    assert_eq!(best, max);
    assert_eq!(l["protocol"]["max_iter"], 2 * 4); // ⌈120 / 32⌉ = 4 per epoch

    let lr = tmp.path().join("res/logreg.json");
    ok(&on_files(
        "linear",
        &tr,
        &[
            "--method",
            "logreg",
            "--c-values",
            "0.01,1",
            "--max-iter",
            "50",
            "--output",
            p(&lr),
        ],
    ));
    let r = json(&lr);
    assert_eq!(r["method"], "logreg");
    assert_eq!(r["result"]["sweep"].as_array().unwrap().len(), 2);
}

fn idx(kind: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, kind];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn knn_on_fashion_mnist_idx_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fmnist");
    std::fs::create_dir(&dir).unwrap();
    // Two trivially separable classes: dark and bright images.
    for (split, n) in [("train", 20u32), ("t10k", 10)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let pixels: Vec<u8> = labels
            .iter()
            .flat_map(|&l| {
                (0..784).map(move |j| {
                    if l == 0 {
                        (j % 7) as u8
                    } else {
                        250 - (j % 5) as u8
                    }
                })
            })
            .collect();
        std::fs::write(
            dir.join(format!("{split}-images-idx3-ubyte")),
            idx(3, &[n, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{split}-labels-idx1-ubyte")),
            idx(1, &[n], &labels),
        )
        .unwrap();
    }
    let out = tmp.path().join("fm.json");
    let train = format!("fashion-mnist:{}:train", dir.display());
    let val = format!("fashion-mnist:{}:t10k", dir.display());
    let m = model();
    let stdout = ok(&webssl(&[
        "eval",
        "knn",
        "--model",
        p(&m),
        "--train",
        &train,
        "--val",
        &val,
        "--resolution",
        "28",
        "--k",
        "1,5",
        "--output",
        p(&out),
    ]));
    assert!(stdout.contains("(train 20, val 10, 2 classes)"), "{stdout}");
    let v = json(&out);
    assert_eq!(v["dataset"], "fashion-mnist");
    assert_eq!(v["metrics"]["top1@1"], 100.0);
    assert_eq!(v["metrics"]["top1@5"], 100.0);
}
