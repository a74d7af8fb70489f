//! Schedules and parameter-group rules against values produced by the real dinov2 code
//! (`fixtures/schedules/make_schedules.py`).

use serde_json::Value;
use webssl_train::param_groups::{dinov2_lr_decay_rate, dinov2_rule};
use webssl_train::schedule::{CosineSchedule, scaled_lr};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../fixtures/schedules/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}
fn u(v: &Value) -> u64 {
    v.as_u64().expect("integer")
}

/// numpy's cos and Rust's libm cos may differ in the last bit; everything else is the same f64
/// operation sequence, so allow 2 ulp-ish relative error.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 4.5e-16 * b.abs().max(a.abs())
}

#[test]
fn cosine_schedules_match_dinov2() {
    let fx = fixture("schedules.json");
    let mut checked = 0;
    for case in fx["cases"].as_array().expect("cases") {
        let s = CosineSchedule::new(
            f(&case["base"]),
            f(&case["final"]),
            u(&case["total_steps"]),
            u(&case["warmup_steps"]),
            f(&case["start_warmup"]),
            u(&case["freeze_steps"]),
        );
        let name = case["name"].as_str().expect("name");
        let steps = case["steps"].as_array().expect("steps");
        let values = case["values"].as_array().expect("values");
        assert_eq!(steps.len(), values.len());
        for (st, v) in steps.iter().zip(values) {
            let (st, want) = (u(st), f(v));
            let got = s.at(st);
            assert!(
                close(got, want),
                "{name} step {st}: got {got:e}, dinov2 {want:e}"
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn lr_scaling_matches_config_rule() {
    let fx = fixture("schedules.json");
    for c in fx["scaled_lr"].as_array().expect("scaled_lr") {
        let got = scaled_lr(f(&c["base"]), u(&c["batch"]) as usize);
        assert!(close(got, f(&c["lr"])), "{c}: {got}");
    }
}

#[test]
fn param_group_rules_match_dinov2() {
    let fx = fixture("param_groups.json");
    let mut checked = 0;
    for case in fx["cases"].as_array().expect("cases") {
        let module = case["module"].as_str().expect("module");
        let depth = u(&case["depth"]) as usize;
        let decay = f(&case["layerwise_decay"]);
        let pe = f(&case["patch_embed_lr_mult"]);
        for p in case["params"].as_array().expect("params") {
            let name = p["name"].as_str().expect("name");
            let want_lr = f(&p["lr_mult"]);
            let want_wd = f(&p["wd_mult"]);
            let want_last = p["is_last_layer"].as_bool().expect("bool");
            let mut variants = vec![(name.to_owned(), depth)];
            if module == "dino_head" {
                // the trainer passes the head's sub-module prefix and the backbone depth
                variants.push((format!("dino_head.{name}"), 12));
                variants.push((format!("ibot_head.{name}"), 40));
            }
            for (n, d) in variants {
                let r = dinov2_rule(&n, d, decay, pe);
                assert_eq!(r.lr_mult, want_lr, "{module} {n} lr_mult");
                assert_eq!(r.wd_mult, want_wd, "{module} {n} wd_mult");
                assert_eq!(r.is_last_layer, want_last, "{module} {n} is_last_layer");
                checked += 1;
            }
        }
    }
    assert!(checked > 400, "{checked}");
    for r in fx["decay_rates_depth12_decay0.9"]
        .as_array()
        .expect("rates")
    {
        let name = r["name"].as_str().expect("name");
        assert_eq!(
            dinov2_lr_decay_rate(name, 12, 0.9),
            f(&r["lr_mult"]),
            "{name}"
        );
    }
}

/// Our ViT's parameter paths are the dinov2 ones, so the name-based rules see what dinov2 sees.
#[test]
fn our_vit_parameter_names_are_dinov2_names() {
    use burn::tensor::Device;
    use webssl_models::checkpoint::named_parameters;
    let fx = fixture("param_groups.json");
    let case = &fx["cases"][0];
    let dinov2: std::collections::HashSet<&str> = case["params"]
        .as_array()
        .expect("params")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    let mut cfg = webssl_models::presets::preset("vit-small").expect("preset");
    cfg.depth = 2;
    cfg.img_size = 28;
    cfg.num_register_tokens = 4;
    let vit = webssl_models::Vit::new(&cfg, &Device::flex());
    let ours = named_parameters(&vit);
    assert!(!ours.is_empty());
    for (name, _, _) in &ours {
        assert!(
            dinov2.contains(name.as_str()),
            "{name} is not a dinov2 parameter name"
        );
    }
}
