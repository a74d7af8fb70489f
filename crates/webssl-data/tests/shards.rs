//! WebDataset shard reader/writer/index: round trips, webdataset key grouping, damage handling.

use std::collections::BTreeMap;
use std::path::Path;

use webssl_data::DataError;
use webssl_data::shards::{
    Sample, ShardIndex, ShardIter, ShardLimits, ShardReader, ShardWriter, list_shard_files,
};

mod support;

fn sample(i: usize) -> Sample {
    Sample::new(format!("s{i:04}"))
        .with("jpg", vec![(i % 251) as u8; 100 + 37 * i])
        .with("txt", format!("caption {i}"))
        .with("cls", format!("{}", i % 3))
        .with("json", format!("{{\"i\": {i}}}"))
}

fn read_all(path: &Path) -> Vec<Result<Sample, DataError>> {
    ShardReader::open(path).unwrap().collect()
}

/// Raw tar with arbitrary member names (the tar crate's builder, as other tools would write them).
fn raw_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn iter_bytes(bytes: Vec<u8>) -> ShardIter {
    ShardIter::from_reader("mem.tar", std::io::Cursor::new(bytes)).unwrap()
}

#[test]
fn round_trip_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(
        dir.path(),
        "shard",
        ShardLimits {
            max_samples: Some(4),
            max_bytes: None,
        },
    )
    .unwrap();
    let originals: Vec<Sample> = (0..10).map(sample).collect();
    for s in &originals {
        w.write(s).unwrap();
    }
    let index = w.finish().unwrap();
    assert_eq!(
        index.shards.iter().map(|s| s.samples).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    assert_eq!(index.shards[1].file, "shard-000001.tar");
    assert_eq!(ShardIndex::load(dir.path()).unwrap(), index);
    let mut back = Vec::new();
    for (entry, path) in index.shards.iter().zip(index.paths(dir.path())) {
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            entry.bytes,
            "index bytes = file size"
        );
        back.extend(read_all(&path).into_iter().map(|r| r.unwrap()));
    }
    assert_eq!(back, originals);
    assert_eq!(back[5].caption(), Some("caption 5"));
    assert_eq!(back[5].label(), Some(2));
    assert_eq!(back[5].meta().unwrap()["i"], 5);
    assert_eq!(back[5].image_bytes().unwrap().0, "jpg");
    // The scan of the directory agrees with the written index.
    assert_eq!(ShardIndex::scan(dir.path()).unwrap(), index);
    // Python's tarfile must be able to read it too: check the checksum/format via the tar crate.
    let mut ar =
        tar::Archive::new(std::fs::File::open(dir.path().join("shard-000000.tar")).unwrap());
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        &names[..4],
        &["s0000.cls", "s0000.jpg", "s0000.json", "s0000.txt"]
    );
}

#[test]
fn rebuilding_is_byte_identical() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        let mut w = ShardWriter::create(d.path(), "x", ShardLimits::default()).unwrap();
        for i in 0..5 {
            w.write(&sample(i)).unwrap();
        }
        w.finish().unwrap();
    }
    let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("x-000000.tar")).unwrap();
    assert_eq!(read(&a), read(&b));
}

#[test]
fn byte_limit_rolls_over_and_never_exceeds_unless_single_sample() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * 1024;
    let mut w = ShardWriter::create(
        dir.path(),
        "b",
        ShardLimits {
            max_samples: None,
            max_bytes: Some(max),
        },
    )
    .unwrap();
    for i in 0..30 {
        w.write(&sample(i)).unwrap();
    }
    w.write(&Sample::new("huge").with("png", vec![7u8; 20_000]))
        .unwrap();
    let index = w.finish().unwrap();
    assert_eq!(index.total_samples(), 31);
    let (last, rest) = index.shards.split_last().unwrap();
    assert!(rest.len() >= 3);
    for s in rest {
        assert!(s.bytes <= max, "{s:?}");
    }
    assert_eq!(last.samples, 1, "oversized sample gets its own shard");
}

#[test]
fn index_keeps_other_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    for prefix in ["train", "test"] {
        let mut w = ShardWriter::create(dir.path(), prefix, ShardLimits::default()).unwrap();
        w.write(&sample(1)).unwrap();
        w.finish().unwrap();
    }
    let index = ShardIndex::load(dir.path()).unwrap();
    let files: Vec<&str> = index.shards.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(files, ["test-000000.tar", "train-000000.tar"]);
    // Rewriting one prefix replaces only its entries.
    let mut w = ShardWriter::create(dir.path(), "train", ShardLimits::default()).unwrap();
    w.write(&sample(1)).unwrap();
    w.write(&sample(2)).unwrap();
    let index = w.finish().unwrap();
    assert_eq!(index.total_samples(), 3);
    assert_eq!(list_shard_files(dir.path()).unwrap().len(), 2);
}

#[test]
fn groups_members_by_key_like_webdataset() {
    let bytes = raw_tar(&[
        ("a.b.seg.png", b"seg"),
        ("a.JPG", b"img"),
        ("__key__", b"meta"),
        ("noextension", b"x"),
        (
            "d.1/sub/a.txt",
            b"other key: directory prefix is part of it",
        ),
        ("b.txt", b"b1"),
        ("a.cls", b"7"), // `a` again after `b`: a new sample, as in webdataset
    ]);
    let mut it = iter_bytes(bytes);
    let samples: Vec<Sample> = (&mut it).map(|r| r.unwrap()).collect();
    let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["a", "d.1/sub/a", "b", "a"]);
    let exts: Vec<&String> = samples[0].files.keys().collect();
    assert_eq!(
        exts,
        ["b.seg.png", "jpg"],
        "extension after the first dot, lowercased"
    );
    assert_eq!(samples[0].image_bytes(), Some(("jpg", &b"img"[..])));
    assert_eq!(samples[3].label(), Some(7));
    assert_eq!(it.skipped_members(), ["__key__", "noextension"]);
}

#[test]
fn long_names_round_trip() {
    let long_key = format!("{}/{}", "d".repeat(120), "k".repeat(90));
    let bytes = raw_tar(&[(&format!("{long_key}.txt"), b"long"), ("z.txt", b"z")]);
    let samples: Vec<Sample> = iter_bytes(bytes).map(|r| r.unwrap()).collect();
    assert_eq!(samples[0].key, long_key);
    assert_eq!(samples[0].caption(), Some("long"));
    // Our writer handles them too.
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), "l", ShardLimits::default()).unwrap();
    w.write(&Sample::new(&long_key).with("txt", "x")).unwrap();
    w.finish().unwrap();
    assert_eq!(
        read_all(&dir.path().join("l-000000.tar"))[0]
            .as_ref()
            .unwrap()
            .key,
        long_key
    );
}

#[test]
fn duplicate_member_skips_that_sample_only() {
    let bytes = raw_tar(&[("a.txt", b"1"), ("a.txt", b"2"), ("b.txt", b"3")]);
    let out: Vec<_> = iter_bytes(bytes).collect();
    assert_eq!(out.len(), 2);
    match &out[0] {
        Err(DataError::Sample { what, reason }) => {
            assert_eq!(what, "mem.tar:a");
            assert!(reason.contains("duplicate"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out[1].as_ref().unwrap().key, "b");
}

/// Cut a valid shard at many points: the reader must yield only complete, unaltered samples from
/// before the damage, then exactly one error, then stop.
#[test]
fn truncated_tar_yields_prefix_then_one_error() {
    let originals: Vec<Sample> = (0..6).map(sample).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), "t", ShardLimits::default()).unwrap();
    for s in &originals {
        w.write(s).unwrap();
    }
    w.finish().unwrap();
    let full = std::fs::read(dir.path().join("t-000000.tar")).unwrap();
    // Where each sample's last member ends (the reader needs to see the next header to be sure).
    let mut cuts: Vec<usize> = (0..full.len()).step_by(512).collect();
    cuts.extend((0..full.len()).step_by(97));
    let end_marker = full.len() - 1024;
    let mut checked_errors = 0;
    for cut in cuts {
        let out: Vec<_> = iter_bytes(full[..cut].to_vec()).collect();
        let (last, ok) = out
            .split_last()
            .map(|(l, r)| (Some(l), r))
            .unwrap_or((None, &[]));
        if cut >= end_marker + 512 {
            assert!(out.iter().all(|r| r.is_ok()), "cut {cut}: complete archive");
            assert_eq!(out.len(), originals.len());
            continue;
        }
        let last = last.expect("at least the error");
        assert!(
            matches!(last, Err(DataError::Shard { .. })),
            "cut {cut}: ends with the damage error: {last:?}"
        );
        for (i, r) in ok.iter().enumerate() {
            assert_eq!(
                r.as_ref().unwrap(),
                &originals[i],
                "cut {cut}: sample {i} intact"
            );
        }
        // No complete sample is lost except the one in progress at the cut.
        let complete_before_cut = originals
            .iter()
            .scan(0usize, |pos, s| {
                *pos += s
                    .files
                    .values()
                    .map(|d| 512 + d.len().div_ceil(512) * 512)
                    .sum::<usize>();
                Some(*pos)
            })
            .filter(|&end| end <= cut)
            .count();
        assert!(
            ok.len() + 1 >= complete_before_cut && ok.len() <= complete_before_cut,
            "cut {cut}: {}",
            ok.len()
        );
        checked_errors += 1;
    }
    assert!(checked_errors > 20);
}

#[test]
fn zero_byte_and_garbage_files_are_one_error() {
    let out: Vec<_> = iter_bytes(Vec::new()).collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].as_ref().unwrap_err().to_string().contains("empty"));
    let out: Vec<_> = iter_bytes(vec![0x42; 3000]).collect();
    assert_eq!(out.len(), 1);
    assert!(
        out[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
}

#[test]
fn gzipped_shards_are_read_and_truncated_gzip_is_damage() {
    use std::io::Write;
    let tar = raw_tar(&[("a.txt", b"hello"), ("b.txt", b"world")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let samples: Vec<Sample> = iter_bytes(gz.clone()).map(|r| r.unwrap()).collect();
    assert_eq!(samples.len(), 2);
    // Cut inside the deflate stream (a cut in the trailer alone is after the end-of-archive block).
    let out: Vec<_> = iter_bytes(gz[..gz.len() / 2].to_vec()).collect();
    assert!(out.last().unwrap().is_err());
}

#[test]
fn sample_accessors_reject_bad_members() {
    let mut files = BTreeMap::new();
    files.insert("cls".to_string(), b"not a number".to_vec());
    files.insert("txt".to_string(), b"  \n".to_vec());
    files.insert("json".to_string(), b"{bad".to_vec());
    files.insert("webp".to_string(), b"..".to_vec());
    files.insert("png".to_string(), b"..".to_vec());
    let s = Sample {
        key: "k".into(),
        files,
    };
    assert_eq!(s.label(), None);
    assert_eq!(s.caption(), None, "blank caption counts as missing");
    assert!(s.meta().is_none());
    assert_eq!(s.image_bytes().unwrap().0, "png", "png preferred over webp");
}

/// Parity with webdataset 1.0.2 (`fixtures/shards/make_shards.py`): a tar written by Python's
/// tarfile in PAX format with tricky names must group into exactly the samples webdataset yields.
#[test]
fn grouping_matches_webdataset_fixture() {
    let dir = support::fixture("shards");
    let expected = support::read_json(&dir.join("webdataset_names.json"));
    let got: Vec<Sample> = read_all(&dir.join("webdataset_names.tar"))
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let want = expected["samples"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.key, w["key"].as_str().unwrap());
        let files: BTreeMap<String, String> = g
            .files
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
            .collect();
        let want_files: BTreeMap<String, String> =
            serde_json::from_value(w["files"].clone()).unwrap();
        assert_eq!(files, want_files, "sample {}", g.key);
    }
}
