//! `webssl experiment`: a tiny grid trains, evaluates and reports; a rerun skips finished cells and
//! redoes only what is missing; cells that would read different data are refused before training.

mod support;

use std::path::Path;
use std::process::Output;

use support::text;

fn webssl(args: &[&str]) -> Output {
    support::webssl()
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// DINO, MAE and CLIP (the repository's demo configs, shrunk) at two depths on the same data, a kNN
/// probe and a linear probe.
fn write_experiment(dir: &Path, extra_method: &str) -> std::path::PathBuf {
    let d = dir.display();
    let configs = support::configs();
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            r#"
dir = "{d}/runs"
set = ["optim.total_steps=3", "optim.warmup_steps=1", "data.batch_size=8", "data.decode_threads=2",
       "data.train={d}/data/train", "data.synth={{samples=48, size=56, seed=0}}",
       "model.embed_dim=32", "model.num_heads=2", "run.tensorboard=false", "eval={{}}"]
[[method]]
name = "dino"
config = "{configs}/demo.toml"
set = ["crops.global_size=42", "crops.local_size=14", "heads.dino_prototypes=64",
       "heads.ibot_prototypes=64", "heads.hidden_dim=32"]
[[method]]
name = "mae"
config = "{configs}/mae-demo.toml"
set = ["crop.size=42", "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2"]
[[method]]
name = "clip"
config = "{configs}/clip-demo.toml"
set = ["image.size=42", "text.width=32", "text.heads=2", "text.layers=1", "text.vocab_size=300",
       "text.tokenizer_train_samples=48", "clip.embed_dim=16"]
{extra_method}
[[size]]
name = "d1"
set = ["model.depth=1"]
[[size]]
name = "d2"
set = ["model.depth=2"]
[[prepare]]
creates = "{d}/data/prepared"
args = ["synth", "--out", "{d}/data/prepared", "--samples", "4", "--size", "32", "--seed", "3"]
[[eval_data]]
path = "{d}/data/probe-train"
synth = {{ samples = 40, size = 56, seed = 1 }}
[[eval_data]]
path = "{d}/data/probe-val"
synth = {{ samples = 20, size = 56, seed = 2 }}
[[probe]]
name = "knn"
args = ["knn", "--model", "{{export}}", "--resolution", "{{image_size}}", "--train", "{d}/data/probe-train", "--val", "{d}/data/probe-val"]
[[probe]]
name = "category"
args = ["linear", "--method", "logreg", "--c-values", "0.1,10", "--label", "meta:category", "--model", "{{export}}", "--resolution", "{{image_size}}", "--train", "{d}/data/probe-train", "--val", "{d}/data/probe-val"]
"#,
            configs = configs.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn trains_evaluates_reports_and_skips_finished_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = write_experiment(tmp.path(), "");
    let cfg = exp.to_str().unwrap();
    let out = webssl(&["experiment", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = tmp.path().join("runs");
    assert!(tmp.path().join("data/prepared/index.json").is_file());
    let report = std::fs::read_to_string(runs.join("report/report.md")).unwrap();
    for needle in [
        "dino-d1",
        "dino-d2",
        "mae-d1",
        "clip-d2",
        "knn/top1",
        "category/top1",
    ] {
        assert!(report.contains(needle), "{needle} missing from\n{report}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("experiment.json")).unwrap()).unwrap();
    let cells = summary["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    for c in cells {
        assert_eq!(c["action"], "trained");
        assert_eq!(c["steps"], 3);
        assert_eq!(c["samples_seen"], 24);
        // Both cells read the same shards.
        assert_eq!(c["data_identity"], cells[0]["data_identity"]);
        assert!(c["results"]["knn"]["top1"].is_number());
    }
    let knn = runs.join("dino-d1/eval/knn.json");
    let knn_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&knn).unwrap()).unwrap();
    assert_eq!(knn_json["method"], "knn");
    let stamp = std::fs::metadata(&knn).unwrap().modified().unwrap();
    let export = runs.join("dino-d2/export/model.safetensors");
    let export_stamp = std::fs::metadata(&export).unwrap().modified().unwrap();

    // Rerun: nothing is redone.
    let out = webssl(&["experiment", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert_eq!(log.matches("done earlier, skipped").count(), 6, "{log}");
    assert!(
        !log.contains(": training") && !log.contains("prepare:"),
        "{log}"
    );
    assert_eq!(std::fs::metadata(&knn).unwrap().modified().unwrap(), stamp);
    assert_eq!(
        std::fs::metadata(&export).unwrap().modified().unwrap(),
        export_stamp
    );

    // A lost results file is recomputed, and only that one.
    std::fs::remove_file(runs.join("mae-d2/eval/category.json")).unwrap();
    let out = webssl(&["experiment", "--config", cfg]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("mae-d2: probe category"), "{log}");
    assert_eq!(log.matches(": probe").count(), 1, "{log}");
    assert!(!log.contains(": training"), "{log}");
    assert!(runs.join("mae-d2/eval/category.json").is_file());
}

#[test]
fn cells_reading_different_data_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mae-demo.toml");
    let extra = format!(
        "[[method]]\nname = \"mae-reseeded\"\nobjective = \"mae\"\nconfig = \"{}\"\nset = [\"seed=5\", \"crop.size=42\"]",
        demo.display()
    );
    let exp = write_experiment(tmp.path(), &extra);
    let out = webssl(&["experiment", "--config", exp.to_str().unwrap()]);
    assert!(!out.status.success());
    let log = text(&out);
    assert!(log.contains("would read different data: seed"), "{log}");
    assert!(!tmp.path().join("runs/dino-d1").exists());
}

#[test]
fn a_typo_in_the_experiment_file_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "dir = \"x\"\n[[method]]\nname = \"dino\"\nconfgi = \"c.toml\"\n",
    )
    .unwrap();
    let out = webssl(&["experiment", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let log = text(&out);
    assert!(log.contains("confgi"), "{log}");
}
