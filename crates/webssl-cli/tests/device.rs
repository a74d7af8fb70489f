//! The global `--device` flag as the binary parses it: accepted before or after the subcommand,
//! bad values rejected by clap, and — in a build without the `cuda` feature — `--device cuda` is a
//! clear error naming the feature, raised before any model is touched.

mod support;

fn webssl(args: &[&str]) -> (bool, String) {
    let out = support::run(args);
    (out.status.success(), support::text(&out))
}

#[test]
fn device_flag_parses_in_either_position_and_rejects_junk() {
    let (ok, text) = webssl(&["--device", "cpu", "model", "presets"]);
    assert!(ok, "{text}");
    assert!(text.contains("vit-small"), "{text}");
    let (ok, text) = webssl(&["model", "presets", "--device", "cuda:0"]);
    assert!(
        ok,
        "model commands run on the CPU whatever --device says: {text}"
    );
    let (ok, text) = webssl(&["--device", "tpu", "model", "presets"]);
    assert!(!ok);
    assert!(text.contains("expected cpu, cuda or cuda:N"), "{text}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f.safetensors");
    let (ok, text) = webssl(&[
        "embed",
        "--device",
        "cuda",
        "--model",
        "no-such-model",
        "--input",
        "no-such-input",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        text.contains("--features cuda") && text.contains("built without CUDA support"),
        "{text}"
    );
    assert!(
        !text.contains("no-such-model"),
        "device checked first: {text}"
    );
}
