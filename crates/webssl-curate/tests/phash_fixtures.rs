//! pHash against the imagehash-style reference computed by fixtures/curate/make_curate.py
//! (Pillow LANCZOS + scipy DCT) on real scikit-image photos and text images.

use std::path::Path;

use webssl_curate::phash::{hamming, phash};

#[test]
fn phash_matches_the_python_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/curate");
    let reference: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("phash.json")).unwrap()).unwrap();
    assert_eq!(reference.len(), 22);
    let mut exact = 0;
    for (rel, hex) in &reference {
        let bytes = std::fs::read(dir.join(rel)).unwrap();
        let img = webssl_data::decode::decode_rgb(&bytes, rel, 1 << 26).unwrap();
        let ours = phash(&img).unwrap();
        let want = u64::from_str_radix(hex.as_str().unwrap(), 16).unwrap();
        // A coefficient within float rounding of the median may flip; allow 2 bits.
        assert!(
            hamming(ours, want) <= 2,
            "{rel}: {ours:016x} vs {want:016x}"
        );
        exact += usize::from(ours == want);
    }
    assert!(exact >= 20, "only {exact} of 22 hashes are bit-exact");
    // The resized copy is a near-duplicate; distinct photos are far apart.
    let h = |k: &str| u64::from_str_radix(reference[k].as_str().unwrap(), 16).unwrap();
    assert!(hamming(h("real/photo/astronaut.png"), h("near/astronaut_small.png")) <= 2);
    assert!(hamming(h("real/photo/astronaut.png"), h("real/photo/chelsea.png")) > 16);
}
