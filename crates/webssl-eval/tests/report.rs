//! `webssl report` on synthetic run directories: discovery, config inference, the Markdown table, and
//! the plot files (PNG decodes, SVG has text, CSV holds exactly the plotted points).

use std::fs;
use std::path::Path;

use webssl_eval::report::{self, Axis};
use webssl_eval::results::{Baseline, Metrics, ProbeResult};
use webssl_models::presets;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn dino_config(arch: &str, steps: u64, batch: u64) -> String {
    format!(
        "seed = 0\n[data]\nbatch_size = {batch}\ntrain = \"runs/data/synth-train\"\n[data.synth]\nmix = \"full\"\n\
         [model]\narch = \"{arch}\"\n[crops]\nglobal_size = 224\n[heads]\ndino_prototypes = 1024\n\
         [optim]\ntotal_steps = {steps}\n"
    )
}

fn eval_json(method: &str, task: Option<&str>, metrics: serde_json::Value) -> String {
    let mut v =
        serde_json::json!({"method": method, "model": "m", "dataset": "d", "metrics": metrics});
    if let Some(t) = task {
        v["task"] = t.into();
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// `webssl pretrain`'s kNN results: the trained backbone, and the initialisation as its baseline.
fn pretrain_knn(init: f64, trained: f64) -> String {
    let metrics = |top1: f64, top5: f64| {
        Metrics::from([
            ("top1".into(), top1),
            ("top5".into(), top5),
            ("k".into(), 20.0),
            ("top1@10".into(), top1 - 1.0),
        ])
    };
    let dataset = serde_json::json!({"train": "knn-train", "val": "knn-val"});
    let mut r = ProbeResult::new("knn", "export", dataset, metrics(trained, 61.0));
    r.baseline = Some(Baseline {
        model: "initialisation".into(),
        metrics: metrics(init, 51.0),
    });
    r.to_json()
}

fn params(arch: &str) -> u64 {
    let mut v = presets::preset(arch).unwrap();
    v.img_size = 224;
    presets::param_count(&v)
}

#[test]
fn report_from_synthetic_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    // dino: small and base at 3,200 samples, small again at 6,400 samples.
    write(
        &root.join("dino-s/config.resolved.toml"),
        &dino_config("vit-small", 100, 32),
    );
    write(
        &root.join("dino-s/eval/knn.json"),
        &pretrain_knn(10.0, 30.0),
    );
    write(
        &root.join("dino-s/eval/seg.json"),
        &eval_json(
            "dense",
            Some("seg"),
            serde_json::json!({"miou": 41.5, "pixel_acc": 80.0}),
        ),
    );
    write(
        &root.join("dino-b/config.resolved.toml"),
        &dino_config("vit-base", 100, 32),
    );
    write(
        &root.join("dino-b/eval/knn.json"),
        &pretrain_knn(11.0, 40.0),
    );
    write(
        &root.join("dino-s-long/config.resolved.toml"),
        &dino_config("vit-small", 200, 32),
    );
    write(
        &root.join("dino-s-long/eval/knn.json"),
        &pretrain_knn(10.0, 35.0),
    );
    // A checkpoint-side JSON and a non-results JSON must be ignored.
    write(
        &root.join("dino-s-long/checkpoints/step-1/state.json"),
        r#"{"method": "knn", "metrics": {"top1": 99}}"#,
    );
    write(&root.join("dino-s-long/eval/notes.json"), r#"{"hello": 1}"#);
    // mae: method from the `[decoder]` section, explicit params, world size 2; results from `webssl eval`.
    write(
        &root.join("group/web-x/config.resolved.toml"),
        "[decoder]\ndepth = 8\n[model]\narch = \"vit-base\"\nparams = 123456789\n[data]\nbatch_size = 16\nmix = \"light\"\n\
         [optim]\ntotal_steps = 100\n[run]\nworld_size = 2\n",
    );
    write(
        &root.join("group/web-x/probes/knn-result.json"),
        &eval_json(
            "knn",
            None,
            serde_json::json!({"top1": 25.0, "top5": 70.0, "k": 20, "top1@10": 24.0}),
        ),
    );

    let collected = report::collect(std::slice::from_ref(&root)).unwrap();
    let names: Vec<&str> = collected.runs.iter().map(|r| r.name.as_str()).collect();
    // Sorted by method, params, samples.
    assert_eq!(names, ["dino-s", "dino-s-long", "dino-b", "group/web-x"]);
    assert_eq!(
        collected.skipped_files, 1,
        "notes.json (state.json is under checkpoints/)"
    );
    let r = &collected.runs[0];
    assert_eq!(r.method, "dino");
    assert_eq!(r.params, Some(params("vit-small")));
    assert_eq!(r.samples_seen, Some(3_200));
    assert_eq!(r.data.as_deref(), Some("full"));
    assert_eq!(r.metrics["knn/top1"], 30.0);
    assert_eq!(r.metrics["knn@init/top1"], 10.0);
    assert_eq!(r.metrics["dense-seg/miou"], 41.5);
    let mae = &collected.runs[3];
    assert_eq!(mae.method, "mae");
    assert_eq!(mae.params, Some(123_456_789));
    assert_eq!(mae.samples_seen, Some(3_200));
    assert_eq!(mae.data.as_deref(), Some("light"));
    assert!(!mae.metrics.contains_key("knn/k") && !mae.metrics.contains_key("knn/top1@10"));

    let out = tmp.path().join("report");
    let files = report::write_report(&collected, &out).unwrap();
    let md = fs::read_to_string(&files.markdown).unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| run"))
        .collect();
    assert_eq!(rows.len(), 4, "{md}");
    assert!(
        rows[0].starts_with(&format!(
            "| dino-s | dino | vit-small | {} |",
            report::human_count(params("vit-small"))
        )),
        "{}",
        rows[0]
    );
    assert!(
        rows[0].contains("| 3.2K | full |") && rows[0].contains("| 41.50 |"),
        "{}",
        rows[0]
    );
    assert!(
        rows[3].starts_with("| group/web-x | mae | vit-base | 123M | 3.2K | light |"),
        "{}",
        rows[3]
    );
    assert!(md.contains("dense-seg/miou") && md.contains("knn@init/top1"));

    // knn/top1 vs params: dino splits into two lines (3.2K and 6.4K samples), mae is one line.
    let csv = fs::read_to_string(out.join("knn_top1_vs_params.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "series,method,run,params,knn/top1");
    let ps = params("vit-small");
    let pb = params("vit-base");
    assert_eq!(
        &lines[1..],
        [
            format!("dino @ 3.2K samples,dino,dino-s,{ps},30"),
            format!("dino @ 3.2K samples,dino,dino-b,{pb},40"),
            format!("dino @ 6.4K samples,dino,dino-s-long,{ps},35"),
            "mae,mae,group/web-x,123456789,25".to_string(),
        ]
    );
    // knn/top1 vs samples: dino vit-small is a two-point sweep, dino vit-base and mae single points.
    let s = report::series(&collected.runs, "knn/top1", Axis::Samples);
    let labels: Vec<&str> = s.iter().map(|l| l.label.as_str()).collect();
    let hs = report::human_count(params("vit-small"));
    let hb = report::human_count(params("vit-base"));
    assert_eq!(
        labels,
        [
            format!("dino @ {hs} params"),
            format!("dino @ {hb} params"),
            "mae".into()
        ]
    );
    assert_eq!(
        s[0].points.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(),
        [(3200.0, 30.0), (6400.0, 35.0)]
    );

    // Only one run has the seg metric: still plotted.
    for stem in [
        "knn_top1_vs_params",
        "knn_top1_vs_samples",
        "dense-seg_miou_vs_params",
        "knn_init_top1_vs_samples",
    ] {
        for ext in ["png", "svg", "csv"] {
            assert!(
                out.join(format!("{stem}.{ext}")).is_file(),
                "{stem}.{ext} missing"
            );
        }
    }
    let img = image::open(out.join("knn_top1_vs_params.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), report::PLOT_SIZE);
    // Text and lines were drawn: plenty of non-white pixels, and dino's blue is there.
    let dark = img
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 100))
        .count();
    assert!(dark > 2_000, "only {dark} dark pixels");
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    let svg = fs::read_to_string(out.join("knn_top1_vs_params.svg")).unwrap();
    assert!(svg.contains("model size (backbone parameters, log scale)"));
    assert!(svg.contains("dino @ 6.4K samples") && svg.contains("\nmae\n"));
}

#[test]
fn newer_file_wins_and_dir_without_config_is_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf-dinov2-small");
    write(
        &dir.join("a.json"),
        &eval_json("knn", None, serde_json::json!({"top1": 1.0})),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(
        &dir.join("b.json"),
        &eval_json("knn", None, serde_json::json!({"top1": 2.0})),
    );
    // Make sure b is strictly newer even on coarse-mtime file systems.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(dir.join("b.json"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let c = report::collect(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(c.runs.len(), 1);
    assert_eq!(c.runs[0].method, "dino", "from the directory name");
    assert_eq!(c.runs[0].params, None);
    assert_eq!(c.runs[0].metrics["knn/top1"], 2.0);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    // No params / samples: the table has the row, no plots are written.
    let files = report::write_report(&c, &tmp.path().join("out")).unwrap();
    assert!(files.plots.is_empty());
    assert!(
        fs::read_to_string(&files.markdown)
            .unwrap()
            .contains("| hf-dinov2-small | dino | – | – | – | – | 2.00 |")
    );
    assert!(report::collect(&[tmp.path().join("missing")]).is_err());
}

#[test]
fn a_broken_results_file_is_skipped_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write(
        &dir.join("ok.json"),
        &eval_json("knn", None, serde_json::json!({"top1": 1.0})),
    );
    write(
        &dir.join("bad.json"),
        r#"{"method": "knn", "metrics": [1, 2]}"#,
    );
    let c = report::collect(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(c.runs[0].metrics["knn/top1"], 1.0);
    assert_eq!(c.skipped_files, 1);
    assert!(
        c.warnings.len() == 1 && c.warnings[0].contains("bad.json"),
        "{:?}",
        c.warnings
    );
}
