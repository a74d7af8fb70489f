//! Shard building from folders with bad inputs, Fashion-MNIST IDX import, class folders.

use std::io::Write;
use std::path::Path;

use webssl_data::decode::{DEFAULT_MAX_PIXELS, decode_rgb};
use webssl_data::import::{
    BuildOptions, FASHION_MNIST_CLASSES, Validate, class_folder_items, encode_gray_png,
    fashion_mnist_items, write_items,
};
use webssl_data::shards::{Sample, ShardIndex, ShardLimits, ShardReader, ShardWriter};
use webssl_data::source::{SourceOptions, iter_items_with, resolve_inputs};

mod support;
use support::{per_shard, touch, write_shards};

fn png(seed: u8) -> Vec<u8> {
    encode_gray_png(&[seed; 6], 3, 2).unwrap()
}

fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 99]));
    support::jpeg(&img, 90)
}

fn read_samples(dir: &Path) -> Vec<Sample> {
    ShardIndex::load(dir)
        .unwrap()
        .paths(dir)
        .iter()
        .flat_map(|p| {
            ShardReader::open(p)
                .unwrap()
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn build_skips_and_counts_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let good_jpeg = jpeg();
    touch(&src.join("a_good.jpg"), &good_jpeg);
    touch(&src.join("b_zero.png"), b"");
    touch(&src.join("c_text.jpg"), b"this is not an image");
    touch(
        &src.join("d_truncated.jpg"),
        &good_jpeg[..good_jpeg.len() / 3],
    );
    touch(&src.join("e_png_named_jpg.jpg"), &png(5));
    touch(&src.join("f.v2.png"), &png(9));
    touch(&src.join("f.v2.txt"), b"caption for f");
    let inputs = resolve_inputs(&[src.to_string_lossy().into_owned()]).unwrap();
    let items = iter_items_with(
        &inputs,
        SourceOptions {
            sidecar_captions: true,
        },
    );
    let out = dir.path().join("out");
    let writer = ShardWriter::create(&out, "shard", per_shard(2)).unwrap();
    let mut calls = 0;
    let report = write_items(items, writer, &BuildOptions::default(), &mut |_, _| {
        calls += 1
    })
    .unwrap();
    assert!(calls >= 1);
    assert_eq!((report.kept, report.skipped), (3, 3), "{report:?}");
    let skipped: Vec<&str> = report
        .skipped_items
        .iter()
        .map(|(w, _)| w.as_str())
        .collect();
    assert!(
        skipped[0].ends_with("b_zero.png") && skipped[1].ends_with("c_text.jpg"),
        "{skipped:?}"
    );
    assert!(skipped[2].ends_with("d_truncated.jpg"));
    assert!(
        report.summary(20).contains("skipped 3: "),
        "{}",
        report.summary(20)
    );

    let samples = read_samples(&out);
    let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["000000000", "000000001", "000000002"]);
    assert_eq!(
        samples[0].files["jpg"], good_jpeg,
        "stored as-is, never re-encoded"
    );
    assert!(
        samples[1].files.contains_key("png"),
        "format sniffed from bytes, not the name"
    );
    assert_eq!(samples[2].caption(), Some("caption for f"));
    assert!(
        samples[2].meta().unwrap()["source"]
            .as_str()
            .unwrap()
            .ends_with("f.v2.png")
    );

    // With captions required (CLIP), the two caption-less images are skipped too.
    let out2 = dir.path().join("out2");
    let writer = ShardWriter::create(&out2, "shard", ShardLimits::default()).unwrap();
    let opts = BuildOptions {
        require_captions: true,
        ..Default::default()
    };
    let report = write_items(
        iter_items_with(
            &inputs,
            SourceOptions {
                sidecar_captions: true,
            },
        ),
        writer,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((report.kept, report.skipped), (1, 5));
    assert!(
        report
            .skipped_items
            .iter()
            .any(|(_, r)| r == "missing caption")
    );
}

#[test]
fn build_from_damaged_shard_keeps_what_is_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("in");
    let samples = (0..4).flat_map(|i| {
        let good = Sample::new(format!("k{i}"))
            .with("png", png(i))
            .with("cls", format!("{i}"));
        // Corrupt and zero-byte image members between the good samples.
        let bad = match i {
            0 => Some(Sample::new("bad0").with("png", &b"\x89PNG garbage"[..])),
            1 => Some(Sample::new("bad1").with("jpg", Vec::new())),
            _ => None,
        };
        std::iter::once(good).chain(bad)
    });
    write_shards(&shards, "in", ShardLimits::default(), samples);
    let tar = shards.join("in-000000.tar");
    let bytes = std::fs::read(&tar).unwrap();
    std::fs::write(&tar, &bytes[..bytes.len() - 1024 - 200]).unwrap(); // cut inside the last sample
    let inputs = resolve_inputs(&[tar.to_string_lossy().into_owned()]).unwrap();
    let out = dir.path().join("out");
    let writer = ShardWriter::create(&out, "s", ShardLimits::default()).unwrap();
    let report = write_items(
        iter_items_with(&inputs, SourceOptions::default()),
        writer,
        &BuildOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((report.kept, report.skipped), (3, 3));
    let whats: Vec<&str> = report
        .skipped_items
        .iter()
        .map(|(w, _)| w.as_str())
        .collect();
    assert!(
        whats[0].ends_with("in-000000.tar:bad0") && whats[1].ends_with("in-000000.tar:bad1"),
        "{whats:?}"
    );
    assert!(
        report.skipped_items[2].1.contains("truncated"),
        "{:?}",
        report.skipped_items[2]
    );
    let labels: Vec<i64> = read_samples(&out)
        .iter()
        .map(|s| s.label().unwrap())
        .collect();
    assert_eq!(labels, [0, 1, 2]);
}

#[test]
fn pixel_cap_applies_during_build() {
    let dir = tempfile::tempdir().unwrap();
    touch(
        &dir.path().join("src/big.png"),
        &encode_gray_png(&[0u8; 100 * 100], 100, 100).unwrap(),
    );
    let inputs = resolve_inputs(&[dir.path().join("src").to_string_lossy().into_owned()]).unwrap();
    let writer = ShardWriter::create(dir.path().join("out"), "s", ShardLimits::default()).unwrap();
    let opts = BuildOptions {
        max_pixels: 9_999,
        validate: Validate::Header,
        ..Default::default()
    };
    let report = write_items(
        iter_items_with(&inputs, SourceOptions::default()),
        writer,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((report.kept, report.skipped), (0, 1));
    assert!(
        report.skipped_items[0].1.contains("over the cap"),
        "{:?}",
        report.skipped_items
    );
}

fn write_idx(path: &Path, dims: &[u32], data: &[u8], gz: bool) {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    if gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&v).unwrap();
        v = e.finish().unwrap();
    }
    std::fs::write(path, v).unwrap();
}

#[test]
fn fashion_mnist_from_synthetic_idx() {
    let dir = tempfile::tempdir().unwrap();
    let (n, h, w) = (5usize, 4u32, 3u32);
    let pixels: Vec<u8> = (0..n * 12).map(|i| (i * 7 % 256) as u8).collect();
    let labels = [9u8, 0, 3, 3, 7];
    // Train gzipped (as the Debian package), test raw.
    write_idx(
        &dir.path().join("train-images-idx3-ubyte.gz"),
        &[n as u32, h, w],
        &pixels,
        true,
    );
    write_idx(
        &dir.path().join("train-labels-idx1-ubyte.gz"),
        &[n as u32],
        &labels,
        true,
    );
    write_idx(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &[1, h, w],
        &pixels[..12],
        false,
    );
    write_idx(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &[2],
        &[1, 2],
        false,
    );

    let items: Vec<_> = fashion_mnist_items(dir.path(), "train")
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0].caption.as_deref(), Some("Ankle boot"));
    assert_eq!(items[2].label, Some(3));
    assert_eq!(
        items[4].meta.as_ref().unwrap()["class"],
        FASHION_MNIST_CLASSES[7]
    );
    // Pixels survive the PNG round trip and decode to gray replicated in RGB.
    let rgb = decode_rgb(&items[1].bytes, "t", DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(rgb.dimensions(), (w, h));
    let px = rgb.get_pixel(2, 1).0; // row 1, col 2 of image 1
    assert_eq!(px, [pixels[12 + 5]; 3]);

    // Mismatched label count is an error naming the file.
    let err = fashion_mnist_items(dir.path(), "test")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("t10k-labels"), "{err}");
    assert!(fashion_mnist_items(dir.path(), "val").is_err());
    assert!(fashion_mnist_items(&dir.path().join("nope"), "train").is_err());

    let out = dir.path().join("shards");
    let writer = ShardWriter::create(
        &out,
        "fmnist-train",
        ShardLimits {
            max_samples: Some(2),
            max_bytes: None,
        },
    )
    .unwrap();
    let opts = BuildOptions {
        validate: Validate::None,
        ..Default::default()
    };
    let report = write_items(
        fashion_mnist_items(dir.path(), "train").unwrap(),
        writer,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.index.shards.len(), 3);
    let samples = read_samples(&out);
    assert_eq!(
        samples
            .iter()
            .map(|s| s.label().unwrap())
            .collect::<Vec<_>>(),
        labels.map(i64::from)
    );
    assert_eq!(samples[0].caption(), Some("Ankle boot"));
}

#[test]
fn class_folders_follow_imagefolder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagenet");
    touch(&root.join("zebra/z1.png"), &png(1));
    touch(&root.join("ant/deep/a2.png"), &png(2));
    touch(&root.join("ant/a1.png"), &png(3));
    touch(&root.join("ant/a1.txt"), b"an ant");
    touch(&root.join("stray.png"), &png(4)); // files at the root are not in any class
    let (classes, items) = class_folder_items(&root, true).unwrap();
    assert_eq!(classes, ["ant", "zebra"]);
    let items: Vec<_> = items.map(|r| r.unwrap()).collect();
    let view: Vec<(&str, i64, &str)> = items
        .iter()
        .map(|i| {
            (
                i.key.as_str(),
                i.label.unwrap(),
                i.caption.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("ant/a1", 0, "an ant"),
            ("ant/deep/a2", 0, "ant"),
            ("zebra/z1", 1, "zebra")
        ]
    );
    std::fs::create_dir_all(root.join("empty")).unwrap();
    assert!(
        class_folder_items(&root, false)
            .err()
            .unwrap()
            .to_string()
            .contains("`empty`")
    );
}
