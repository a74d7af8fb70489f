//! What the integration tests of webssl-data share: the repository's `fixtures/` folder, tiny
//! encoded images, and files and shards written into a temporary directory.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use image::{ImageEncoder, RgbImage};
use webssl_data::shards::{Sample, ShardIndex, ShardLimits, ShardWriter};

/// `fixtures/<rel>` at the repository root (the Python reference outputs, committed).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// A JSON file, parsed; panics naming the file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Writes `bytes` to `path`, creating the parent folders.
pub fn touch(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `img` encoded as PNG.
pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// `img` encoded as JPEG at `quality`.
pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

/// At most `n` samples per shard, no byte limit.
pub fn per_shard(n: usize) -> ShardLimits {
    ShardLimits {
        max_samples: Some(n),
        max_bytes: None,
    }
}

/// Writes `samples` in order as shards `<prefix>-NNNNNN.tar` (+ index) in `dir`.
pub fn write_shards(
    dir: &Path,
    prefix: &str,
    limits: ShardLimits,
    samples: impl IntoIterator<Item = Sample>,
) -> ShardIndex {
    let mut w = ShardWriter::create(dir, prefix, limits).unwrap();
    for s in samples {
        w.write(&s).unwrap();
    }
    w.finish().unwrap()
}
