//! `webssl pretrain clip` as a user runs it: a few steps on tiny synthetic data end with the image tower
//! exported for `webssl embed`, the full CLIP and its tokenizer in the run dir, and the kNN report
//! (initialisation vs trained); `--dry-run` prints the plan of a paper preset; bad configs name the
//! field.

mod support;

use support::{check_finished_run, clip_config, dry_run_preset, ok, p, rejects_sets, run};

#[test]
fn a_short_clip_run_exports_the_image_tower_and_reports_knn() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = clip_config(tmp.path(), &[]);
    let stdout = ok(&run(&["pretrain", "clip", "--config", p(&cfg)]));
    assert!(stdout.contains("# plan"), "{stdout}");
    assert!(stdout.contains("text tower"), "{stdout}");
    assert!(stdout.contains("image tower exported to"), "{stdout}");
    assert!(stdout.contains("initialisation"), "{stdout}");
    assert!(stdout.contains("trained (CLIP)"), "{stdout}");
    let files = [
        "export/config.json",
        "export/model.safetensors",
        "export/preprocessor_config.json",
        "clip.safetensors",
        "clip_config.json",
        "tokenizer.json",
        "eval/knn.json",
        "metrics.jsonl",
    ];
    let run_dir = tmp.path().join("run");
    let metrics = check_finished_run(&run_dir, &files, 3, &tmp.path().join("knn-val"));

    // Run again: already finished, nothing to train, the outputs stay.
    ok(&run(&["pretrain", "clip", "--config", p(&cfg)]));
    assert_eq!(support::metrics(&run_dir), metrics);
}

#[test]
fn dry_run_prints_the_plan_and_bad_configs_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = dry_run_preset("clip", "clip-7b");
    assert!(stdout.contains("parameters: image tower 6450"), "{stdout}");
    assert!(stdout.contains("vocab ≤ 49408"), "{stdout}");
    assert!(
        stdout.contains("global batch 32768 = 1 process(es) × 256 forward(s) × 128 · 61035 steps"),
        "{stdout}"
    );

    let cfg = clip_config(tmp.path(), &[]);
    let args = ["pretrain", "clip", "--dry-run", "--config", p(&cfg)].map(String::from);
    rejects_sets(
        &args,
        &[
            ("image.size=50", "image.size"),
            ("data.batch_size=1", "data.batch_size"),
            ("text.heads=3", "text.heads"),
            ("optim.lr=\"fast\"", "optim.lr"),
        ],
    );
}
