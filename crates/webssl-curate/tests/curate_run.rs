//! The streaming pass end to end on synthetic shards with a stand-in classifier: counts, corrupt
//! members and damaged shards counted not fatal, re-sharding keeps every member, and a run killed
//! mid-way resumes to a byte-identical manifest; a finished output is not redone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use image::RgbImage;
use webssl_curate::classifier::Classifier;
use webssl_curate::config::ChainConfig;
use webssl_curate::run::{
    CurateOptions, MANIFEST_FILE, Record, SHARDS_DIR, STATE_FILE, SUMMARY_FILE, Summary,
    curate_with,
};
use webssl_data::shards::{Sample, ShardIndex, ShardLimits, ShardReader, ShardWriter};
use webssl_data::synth::{Mix, SynthConfig, generate};

/// "Text" = a large share of dark pixels; deterministic and fast.
struct DarkShare;
impl Classifier for DarkShare {
    fn score_batch(&mut self, images: &[&RgbImage]) -> Vec<Result<f64, String>> {
        images
            .iter()
            .map(|img| {
                let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 90)).count();
                Ok(dark as f64 / (img.width() * img.height()) as f64)
            })
            .collect()
    }
    fn threshold(&self) -> f64 {
        0.02
    }
}

const CHAIN: &str = r#"
[chain]
batch_size = 4
[[filter]]
kind = "image"
min_side = 16
[[filter]]
kind = "exact_dedup"
[[filter]]
kind = "near_dup"
max_distance = 2
[[filter]]
kind = "probe"
name = "light"
path = "unused"
"#;

/// Three shards: 12 synthetic samples with an exact duplicate and a corrupt png in shard 0, a
/// shard cut in the middle, and a clean one.
fn make_inputs(dir: &Path) -> Vec<String> {
    let cfg = SynthConfig {
        size: 40,
        seed: 3,
        mix: Mix::full(),
    };
    let sample = |i: u64| {
        let s = generate(&cfg, i);
        let mut out = Sample::new(format!("s{i:04}"));
        for (ext, bytes) in s.encode().unwrap() {
            out.files.insert(ext, bytes);
        }
        out
    };
    let limits = ShardLimits {
        max_samples: None,
        max_bytes: None,
    };
    let mut w = ShardWriter::create(dir.join("a"), "a", limits).unwrap();
    for i in 0..10 {
        w.write(&sample(i)).unwrap();
    }
    let mut dup = sample(2);
    dup.key = "dup-of-s0002".into();
    w.write(&dup).unwrap();
    let mut bad = sample(10);
    bad.files
        .insert("png".into(), b"\x89PNG\r\n\x1a\n garbage".to_vec());
    bad.key = "corrupt".into();
    w.write(&bad).unwrap();
    w.finish().unwrap();

    let mut w = ShardWriter::create(dir.join("b"), "b", limits).unwrap();
    for i in 20..26 {
        w.write(&sample(i)).unwrap();
    }
    w.finish().unwrap();
    let b = dir.join("b/b-000000.tar");
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() * 2 / 3]).unwrap();

    let mut w = ShardWriter::create(dir.join("c"), "c", limits).unwrap();
    for i in 30..37 {
        w.write(&sample(i)).unwrap();
    }
    w.finish().unwrap();
    ["a/a-000000.tar", "b/b-000000.tar", "c/c-000000.tar"]
        .iter()
        .map(|p| dir.join(p).display().to_string())
        .collect()
}

fn opts(inputs: &[String], out: &Path, reshard: bool, resume: bool) -> CurateOptions {
    CurateOptions {
        inputs: inputs.to_vec(),
        output: out.to_path_buf(),
        reshard,
        resume,
        commit_every: 8,
        shard_limits: ShardLimits {
            max_samples: Some(5),
            max_bytes: None,
        },
    }
}

fn run(
    cfg: &ChainConfig,
    o: &CurateOptions,
    on_batch: &mut dyn FnMut(u64),
) -> webssl_curate::Result<Summary> {
    curate_with(
        cfg,
        o,
        &mut |_| Ok(Box::new(DarkShare) as Box<dyn Classifier>),
        &mut |p| on_batch(p.new_samples),
    )
}

fn records(out: &Path) -> Vec<Record> {
    std::fs::read_to_string(out.join(MANIFEST_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn counts_reshards_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = make_inputs(tmp.path());
    let cfg = ChainConfig::parse(CHAIN, "chain.toml").unwrap();

    // Uninterrupted reference run.
    let full: PathBuf = tmp.path().join("full");
    let s = run(&cfg, &opts(&inputs, &full, true, false), &mut |_| {}).unwrap();
    let recs = records(&full);
    assert_eq!(recs.len() as u64, s.samples);
    assert!(s.finished);
    // Shard a: 12 samples; b: damaged, the samples before the cut then one error; c: 7.
    let a = recs.iter().filter(|r| r.input == 0).count();
    let b_err = recs
        .iter()
        .filter(|r| r.input == 1 && r.error.is_some())
        .count();
    assert_eq!(a, 12);
    assert_eq!(b_err, 1, "one error for the damaged shard");
    assert_eq!(recs.iter().filter(|r| r.input == 2).count(), 7);
    assert_eq!(s.unreadable, 1);

    let by_key = |k: &str| recs.iter().find(|r| r.key.as_deref() == Some(k)).unwrap();
    let dup = by_key("dup-of-s0002");
    assert!(!dup.kept);
    let exact = dup
        .filters
        .iter()
        .find(|v| v.filter == "exact_dedup")
        .unwrap();
    assert!(!exact.keep, "{dup:?}");
    let corrupt = by_key("corrupt");
    assert!(!corrupt.kept);
    assert!(corrupt.filters[0].error.is_some(), "{corrupt:?}");
    let image = s.filters.iter().find(|f| f.name == "image").unwrap();
    assert_eq!(image.errors, 1);
    assert_eq!(
        s.filters
            .iter()
            .find(|f| f.name == "exact_dedup")
            .unwrap()
            .dropped,
        1
    );
    let light = s.filters.iter().find(|f| f.name == "light").unwrap();
    assert!(light.kept > 0 && light.dropped > 0, "{light:?}");
    assert_eq!(s.kept, light.kept);

    // Re-sharded: exactly the kept samples, in order, with all their members.
    let r = s.reshard.as_ref().unwrap();
    assert_eq!(r.samples, s.kept);
    let index = ShardIndex::load(full.join(SHARDS_DIR)).unwrap();
    assert_eq!(index.total_samples(), s.kept);
    assert_eq!(index.shards.len() as u64, s.kept.div_ceil(5));
    let kept_keys: Vec<String> = recs
        .iter()
        .filter(|r| r.kept)
        .map(|r| r.key.clone().unwrap())
        .collect();
    let mut written = Vec::new();
    for p in index.paths(full.join(SHARDS_DIR)) {
        for smp in ShardReader::open(p).unwrap() {
            let smp = smp.unwrap();
            let exts: Vec<&str> = smp.files.keys().map(String::as_str).collect();
            assert_eq!(exts, ["cls", "depth.png", "json", "png", "seg.png", "txt"]);
            written.push(smp.key);
        }
    }
    assert_eq!(written, kept_keys);

    // Killed after the second batch: the state points at the last commit (8 samples).
    let part = tmp.path().join("part");
    let killed = catch_unwind(AssertUnwindSafe(|| {
        run(&cfg, &opts(&inputs, &part, true, false), &mut |n| {
            if n >= 12 {
                panic!("simulated crash");
            }
        })
    }));
    assert!(killed.is_err());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(part.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(state["next_input"], 0);
    assert_eq!(state["next_index"], 8);
    assert!(!part.join(SUMMARY_FILE).exists());

    // Without --resume it refuses; with it, the manifest comes out identical.
    let e = run(&cfg, &opts(&inputs, &part, true, false), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let mut judged = 0;
    let s2 = run(&cfg, &opts(&inputs, &part, true, true), &mut |n| judged = n).unwrap();
    assert_eq!(
        judged,
        s.samples - 8,
        "only the uncommitted samples are judged again"
    );
    assert_eq!(
        std::fs::read(part.join(MANIFEST_FILE)).unwrap(),
        std::fs::read(full.join(MANIFEST_FILE)).unwrap()
    );
    assert_eq!(
        s2,
        Summary {
            reshard: s2.reshard.clone(),
            ..s.clone()
        }
    );
    assert_eq!(s2.reshard.as_ref().unwrap().samples, r.samples);

    // A finished output is not redone.
    let mut called = false;
    let s3 = run(&cfg, &opts(&inputs, &part, true, true), &mut |_| {
        called = true
    })
    .unwrap();
    assert!(!called);
    assert_eq!(s3, s2);

    // Another chain on the same output is refused.
    let other = ChainConfig::parse("[[filter]]\nkind = \"exact_dedup\"\n", "other.toml").unwrap();
    let e = run(&other, &opts(&inputs, &part, false, true), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("another filter chain"), "{e}");
}

#[test]
fn folder_inputs_and_real_images() {
    // The committed real photos: the resized astronaut is a near-duplicate, nothing else is.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/curate");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ChainConfig::parse(
        "[[filter]]\nkind = \"exact_dedup\"\n[[filter]]\nkind = \"near_dup\"\nmax_distance = 6\n",
        "t",
    )
    .unwrap();
    let inputs = vec![
        fixtures.join("real").display().to_string(),
        fixtures.join("near").display().to_string(),
    ];
    let out = tmp.path().join("o");
    let s = run(&cfg, &opts(&inputs, &out, true, false), &mut |_| {}).unwrap();
    let recs = records(&out);
    assert_eq!(s.samples, 22);
    let dropped: Vec<&str> = recs
        .iter()
        .filter(|r| !r.kept)
        .map(|r| r.key.as_deref().unwrap())
        .collect();
    assert_eq!(dropped, ["astronaut_small"]);
    assert_eq!(s.reshard.unwrap().samples, 21);
}
