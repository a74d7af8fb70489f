//! Golden parity with `transformers` (fixtures/backbones/make_backbones.py): tiny random-weight
//! checkpoints of each flavour, run on real photos at the native, a smaller and a non-square size.
//!
//! Tolerance: ‖ours − reference‖∞ / ‖reference‖∞ ≤ 1e-4 (f32), on the full token sequence. Pixel inputs
//! are compared separately (`preprocessing_matches_hf_processor`), so a failure says which half broke.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use webssl_models::checkpoint::{self, export, keymap::Layout, store::TensorStore};
use webssl_models::{Precision, Vit, autocast, presets};

mod support;

use support::{TOL, rel_err};
use webssl_models::params::to_host;

fn fixtures() -> PathBuf {
    support::fixture("backbones")
}

fn device() -> Device {
    Device::flex()
}

fn reference(model: &str) -> TensorStore {
    TensorStore::open_file(&fixtures().join(model).join("reference.safetensors")).unwrap()
}

fn tensor4(store: &TensorStore, key: &str) -> Tensor<4> {
    let (shape, values) = store.read_f32(key).unwrap();
    Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        &device(),
    )
}

/// The whole normed sequence `[CLS, registers, patches]`, as HF's `last_hidden_state`.
fn hidden(model: &Vit, pixels: Tensor<4>) -> Vec<f32> {
    let out = model.forward_features(pixels, None);
    let [b, d] = out.cls.dims();
    let seq = Tensor::cat(
        vec![out.cls.reshape([b, 1, d]), out.registers, out.patches],
        1,
    );
    to_host(seq)
}

fn check_model(name: &str, model: &Vit, key_suffix: &str) {
    let reference = reference(name);
    for img in ["astronaut", "chelsea", "coffee"] {
        for res in ["native", "small", "wide"] {
            let key = format!("{img}.{res}.{key_suffix}");
            if !reference.contains(&key) {
                continue;
            }
            let pixels = tensor4(&reference, &format!("{img}.{res}.pixels"));
            let (_, want) = reference.read_f32(&key).unwrap();
            let err = rel_err(&hidden(model, pixels), &want);
            assert!(err <= TOL, "{name} {key}: relative error {err:e} > {TOL:e}");
        }
    }
}

#[test]
fn every_flavour_matches_transformers() {
    for name in [
        "dinov2-gelu",
        "dinov2-swiglu",
        "dinov2-reg4",
        "vit-p16",
        "vit-p16-sharded",
    ] {
        let loaded = checkpoint::load(&fixtures().join(name), None, &device()).unwrap();
        let reference_name = name.trim_end_matches("-sharded");
        check_model(reference_name, &loaded.model, "hidden");
    }
}

#[test]
fn intermediate_layers_are_normed_block_outputs() {
    let loaded = checkpoint::load(&fixtures().join("dinov2-swiglu"), None, &device()).unwrap();
    let reference = reference("dinov2-swiglu");
    for res in ["native", "wide"] {
        let pixels = tensor4(&reference, &format!("chelsea.{res}.pixels"));
        let layers = loaded.model.intermediate_layers(pixels, 2);
        let (_, want) = reference
            .read_f32(&format!("chelsea.{res}.layer-2"))
            .unwrap();
        let err = rel_err(&to_host(layers[0].clone()), &want);
        assert!(err <= TOL, "layer -2 at {res}: {err:e}");
        let (_, last) = reference
            .read_f32(&format!("chelsea.{res}.hidden"))
            .unwrap();
        assert!(rel_err(&to_host(layers[1].clone()), &last) <= TOL);
    }
}

/// The same SwiGLU weights under DINOv2 native names (chunked blocks) run with dinov2's own
/// position-embedding interpolation (offset 0.1), which differs from HF's at other resolutions.
#[test]
fn native_checkpoint_uses_dinov2_interpolation() {
    let mut arch = presets::preset("web-dino-300m").unwrap();
    arch.embed_dim = 48;
    arch.depth = 3;
    arch.num_heads = 3;
    arch.img_size = 56;
    arch.layerscale_init = Some(1.0);
    // The same weights as safetensors and as the `torch.save` pickle DINOv2 releases.
    for file in ["native.safetensors", "native.pth"] {
        let path = fixtures().join("dinov2-swiglu").join(file);
        let loaded = checkpoint::load(&path, Some(&arch), &device()).unwrap();
        assert_eq!(loaded.layout, Layout::Native);
        check_model("dinov2-swiglu", &loaded.model, "native");
    }
    // And the HF path differs from it at a resampled size, so the test above is not vacuous.
    let reference = reference("dinov2-swiglu");
    let (_, hf) = reference.read_f32("astronaut.wide.hidden").unwrap();
    let (_, native) = reference.read_f32("astronaut.wide.native").unwrap();
    assert!(rel_err(&native, &hf) > 10.0 * TOL);
}

#[test]
fn bf16_storage_loads_as_f32() {
    let loaded = checkpoint::load(&fixtures().join("dinov2-gelu-bf16"), None, &device()).unwrap();
    let reference = reference("dinov2-gelu");
    let pixels = tensor4(&reference, "astronaut.native.pixels");
    let (_, want) =
        TensorStore::open_file(&fixtures().join("dinov2-gelu-bf16/reference.safetensors"))
            .unwrap()
            .read_f32("astronaut.native.hidden")
            .unwrap();
    let err = rel_err(&hidden(&loaded.model, pixels), &want);
    assert!(err <= TOL, "bf16: {err:e}");
}

/// Mixed precision (`webssl_models::precision`): with the matrix products in bf16 every flavour stays
/// within bf16's error of transformers' f32 output (8-bit mantissa: ~4e-3 per rounding, a few
/// products deep), and the output really moved off the f32 one — the switch is live at every site.
#[test]
fn bf16_products_stay_within_bf16_error_of_transformers() {
    const BF16_TOL: f32 = 2e-2;
    for name in ["dinov2-gelu", "dinov2-swiglu", "dinov2-reg4", "vit-p16"] {
        let model = checkpoint::load(&fixtures().join(name), None, &device())
            .unwrap()
            .model;
        let reference = reference(name);
        let pixels = tensor4(&reference, "astronaut.native.pixels");
        let (_, want) = reference.read_f32("astronaut.native.hidden").unwrap();
        let f32_err = rel_err(&hidden(&model, pixels.clone()), &want);
        let bf16 = {
            let _mixed = autocast(Precision::Bf16);
            hidden(&model, pixels)
        };
        let err = rel_err(&bf16, &want);
        eprintln!("{name}: bf16 {err:.2e}, f32 {f32_err:.2e}");
        assert!(
            err <= BF16_TOL && err > 10.0 * f32_err,
            "{name}: bf16 relative error {err:e} (f32: {f32_err:e}), expected ≤ {BF16_TOL:e} and well above f32's"
        );
    }
}

#[test]
fn export_round_trips_through_the_hf_layout() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["dinov2-swiglu", "dinov2-reg4", "vit-p16"] {
        let loaded = checkpoint::load(&fixtures().join(name), None, &device()).unwrap();
        let out = dir.path().join(name);
        export::export_hf(&loaded.model, &out, loaded.preprocessor.as_ref()).unwrap();
        // Same key set and values as the file transformers wrote.
        let original = TensorStore::open_hf_dir(&fixtures().join(name)).unwrap();
        let exported = TensorStore::open_hf_dir(&out).unwrap();
        let mut a: Vec<&str> = original
            .keys()
            .filter(|k| !k.starts_with("pooler"))
            .collect();
        let mut b: Vec<&str> = exported.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: exported key set");
        for key in a {
            assert_eq!(
                original.read_f32(key).unwrap(),
                exported.read_f32(key).unwrap(),
                "{name}: {key}"
            );
        }
        // transformers 5 refuses a float `mlp_ratio` (`4.0`) for Dinov2 configs.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert!(
            config
                .get("mlp_ratio")
                .is_none_or(serde_json::Value::is_u64),
            "{name}: {config}"
        );
        let reloaded = checkpoint::load(&out, None, &device()).unwrap();
        check_model(name, &reloaded.model, "hidden");
    }
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("dinov2-gelu");
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["mlp_ratio"] = serde_json::json!(2);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = checkpoint::load(dir.path(), None, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("blocks.0.mlp.fc1.weight") && err.contains("encoder.layer.0.mlp.fc1.weight"),
        "{err}"
    );
    assert!(err.contains("expected shape"), "{err}");
}

#[test]
fn missing_and_extra_tensors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = checkpoint::load(&fixtures().join("vit-p16"), None, &device()).unwrap();
    let mut tensors = export::torch_tensors(&loaded.model, Layout::HfVit).unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("vit-p16/config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), &cfg).unwrap();
    // Missing: drop the final norm's bias.
    let dropped: Vec<_> = tensors
        .iter()
        .filter(|t| t.0 != "layernorm.bias")
        .cloned()
        .collect();
    export::write_safetensors(&dir.path().join("model.safetensors"), &dropped).unwrap();
    let err = checkpoint::load(dir.path(), None, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("norm.bias") && err.contains("layernorm.bias"),
        "{err}"
    );
    // Extra: a tensor nothing uses.
    tensors.push(("encoder.layer.0.surprise".into(), vec![2], vec![0.0, 1.0]));
    export::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let err = checkpoint::load(dir.path(), None, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("encoder.layer.0.surprise"), "{err}");
    // A missing directory names the path.
    let err = checkpoint::load(&dir.path().join("nope"), None, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn random_model_has_the_analytic_parameter_count() {
    let mut cfg = presets::preset("vit-small").unwrap();
    cfg.depth = 2;
    let model = Vit::new(&cfg, &device());
    let n: usize = checkpoint::named_parameters(&model)
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(n as u64, presets::param_count(&cfg));
    let mut swiglu = presets::preset("web-dino-300m").unwrap();
    swiglu.depth = 1;
    swiglu.num_register_tokens = 4;
    let model = Vit::new(&swiglu, &device());
    let n: usize = checkpoint::named_parameters(&model)
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(n as u64, presets::param_count(&swiglu));
}

/// HF image processor parity: our EvalTransform from preprocessor_config.json reproduces the
/// processor's `pixel_values` for the native configuration (shortest-edge resize, bicubic, center
/// crop, rescale, normalise) and the direct resize used by the webssl demos.
#[test]
fn preprocessing_matches_hf_processor() {
    use webssl_data::transform::EvalTransform;
    for name in ["dinov2-gelu", "vit-p16"] {
        let pre: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(name).join("preprocessor_config.json"))
                .unwrap(),
        )
        .unwrap();
        let reference = reference(name);
        let patch = if name == "vit-p16" { 16 } else { 14 };
        for img in ["astronaut", "chelsea", "coffee"] {
            let rgb = image::open(fixtures().join("images").join(format!("{img}.png")))
                .unwrap()
                .to_rgb8();
            for (res, transform) in [
                (
                    "native",
                    EvalTransform::from_hf_preprocessor_config(&pre).unwrap(),
                ),
                ("wide", {
                    let mut p = pre.clone();
                    p["size"] = serde_json::json!({"height": 3 * patch, "width": 5 * patch});
                    p["do_center_crop"] = serde_json::json!(false);
                    EvalTransform::from_hf_preprocessor_config(&p).unwrap()
                }),
            ] {
                let (ours, _, _) = transform.apply(&rgb);
                let (_, want) = reference.read_f32(&format!("{img}.{res}.pixels")).unwrap();
                assert_eq!(ours.len(), want.len(), "{name} {img} {res}");
                let max = ours
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(max <= 1e-5, "{name} {img} {res}: max abs pixel diff {max}");
            }
        }
    }
}

/// A copy of the fixture `name` in `dir` with `edit` applied to its `config.json`.
fn copy_with_config(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let src = fixtures().join(name);
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Hostile `config.json` values (issue 16, item 7) are refused on load, naming the file and the
/// field, before anything is allocated: an `image_size` of 280000 once grew the process to 13 GB,
/// and `layer_norm_eps = -1` gave all-NaN features with exit 0.
#[test]
fn hostile_config_values_are_refused_before_allocating() {
    let cases: [(&str, serde_json::Value, &str); 8] = [
        ("image_size", serde_json::json!(280_000), "must be ≤ 8192"),
        ("image_size", serde_json::json!(0), "must be ≥ 1"),
        ("patch_size", serde_json::json!(0), "must be ≥ 1"),
        (
            "layer_norm_eps",
            serde_json::json!(-1.0),
            "must be finite and > 0",
        ),
        (
            "layer_norm_eps",
            serde_json::json!(0.0),
            "must be finite and > 0",
        ),
        ("num_attention_heads", serde_json::json!(5), "not divisible"),
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000),
            "must be ≤ 1024",
        ),
        (
            "hidden_size",
            serde_json::json!(1u64 << 40),
            "must be ≤ 65536",
        ),
    ];
    for (key, value, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_with_config(dir.path(), "dinov2-gelu", |c| c[key] = value.clone());
        let err = checkpoint::load(dir.path(), None, &device())
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} loaded"))
            .to_string();
        assert!(
            err.contains(&format!("config.json: {key}`")) && err.contains(reason),
            "{key} = {value}: {err}"
        );
    }
    // Within every bound but too large for any machine: the parameter estimate refuses it.
    let dir = tempfile::tempdir().unwrap();
    copy_with_config(dir.path(), "vit-p16", |c| {
        c["hidden_size"] = serde_json::json!(65_536);
        c["intermediate_size"] = serde_json::json!(65_536 * 64);
        c["num_attention_heads"] = serde_json::json!(64);
        c["num_hidden_layers"] = serde_json::json!(1024);
    });
    let err = checkpoint::load(dir.path(), None, &device())
        .err()
        .unwrap()
        .to_string();
    if webssl_models::config::physical_memory_bytes().is_some() {
        assert!(err.contains("memory") && err.contains("GiB"), "{err}");
    }
}

/// NaN or infinite weights (a corrupt or diverged checkpoint) are an error naming the tensor, not
/// NaN features.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let loaded = checkpoint::load(&fixtures().join("vit-p16"), None, &device()).unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("vit-p16/config.json")).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &cfg).unwrap();
        let mut tensors = export::torch_tensors(&loaded.model, Layout::HfVit).unwrap();
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "encoder.layer.0.attention.output.dense.weight")
            .expect("the tensor exists");
        t.2[3] = bad;
        t.2[7] = bad;
        export::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
        let err = checkpoint::load(dir.path(), None, &device())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("encoder.layer.0.attention.output.dense.weight")
                && err.contains("2 non-finite"),
            "{err}"
        );
    }
}
