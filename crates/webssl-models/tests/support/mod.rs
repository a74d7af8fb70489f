//! What the integration tests of webssl-models share: the repository's `fixtures/` folder and the
//! one error measure every numeric comparison uses.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

/// The relative error every comparison here allows (f32).
pub const TOL: f32 = 1e-4;

/// `fixtures/<rel>` at the repository root (the Python reference outputs, committed).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// ‖a − b‖∞ / ‖b‖∞, with `b` the reference; panics on a length mismatch or a non-finite difference.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff.is_finite(), "non-finite values");
    diff / scale
}
