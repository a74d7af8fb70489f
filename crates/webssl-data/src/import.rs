//! Importers and the shard builder: image sources → validated, labelled WebDataset shards.
//!
//! - [`write_items`] is the engine behind `webssl shards build` and both importers: it validates
//!   each item (full decode with the pixel cap by default, in parallel batches with rayon, order
//!   kept), sniffs the real format from the bytes (a PNG named `.jpg` is stored as `png`), and writes
//!   `<key>.<ext>`, `<key>.txt` (caption), `<key>.cls` (label) and `<key>.json` (meta with the
//!   original `source`) through an atomic [`ShardWriter`]. Keys are sequential (`000000000`, ...):
//!   file names often contain dots, which webdataset would split on, and sequential keys can never
//!   collide (the original name is kept in the json `source`). The image bytes are stored as they
//!   came, never re-encoded. The other members of a shard input's sample (depth or segmentation
//!   maps, …) are written beside them under their own extensions. Bad items are skipped and
//!   counted with their `shard:key` or path.
//! - **Fashion-MNIST** ([`fashion_mnist_items`]): the original IDX files, gzipped or not, from any
//!   directory (the Debian package `dataset-fashion-mnist` installs
//!   `/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`). Images
//!   are stored as 28×28 8-bit grayscale PNG; decoding converts L→RGB by replication, which is what
//!   torchvision's `FashionMNIST` + `convert("RGB")` gives. Caption = class name; meta has the label,
//!   class name, split and index. IDX format: Y. LeCun's MNIST page (magic `0x00000803` images,
//!   `0x00000801` labels, big-endian `u32` dimensions).
//! - **Class folders** ([`class_folder_items`]): torchvision `ImageFolder` rules — classes are the
//!   sorted names of the root's subdirectories, label = position, images found recursively inside
//!   each class; an empty class directory is an error as in `ImageFolder` (`allow_empty=False`).
//!   Deviation: only the formats we decode (jpg/jpeg/png/webp/gif) count as images.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::json;

use crate::decode::{DEFAULT_MAX_PIXELS, check_pixels, decode_rgb, image_dimensions, sniff_ext};
use crate::error::{DataError, Result};
use crate::shards::{Sample, ShardIndex, ShardWriter};
use crate::source::{Item, sidecar_caption, walk_images};

/// How thoroughly [`write_items`] checks images before writing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validate {
    /// Decode every image fully (catches truncated and corrupt data). The default.
    #[default]
    Decode,
    /// Only parse the header (format, dimensions, pixel cap): fast, misses corrupt pixel data.
    Header,
    /// Trust the input (importers that produced the bytes themselves).
    None,
}

/// Options for [`write_items`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    pub validate: Validate,
    /// Pixel cap for validation (see [`crate::decode::DEFAULT_MAX_PIXELS`]).
    pub max_pixels: u64,
    /// Skip (and count) items without a caption, as CLIP training needs one.
    pub require_captions: bool,
    /// How many skipped items to keep with their reasons (all are counted).
    pub keep_skipped: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            validate: Validate::Decode,
            max_pixels: DEFAULT_MAX_PIXELS,
            require_captions: false,
            keep_skipped: 1000,
        }
    }
}

/// What [`write_items`] did.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub kept: u64,
    pub skipped: u64,
    /// The first `keep_skipped` skipped items: (`shard:key` or path, reason).
    pub skipped_items: Vec<(String, String)>,
    /// The index as written (all prefixes in the directory).
    pub index: ShardIndex,
}

impl BuildReport {
    /// One summary line: counts and the first `n` skipped items.
    pub fn summary(&self, n: usize) -> String {
        let mut line = format!(
            "kept {} samples in {} shards ({} in the directory index), skipped {}",
            self.kept,
            self.index.shards.len(),
            self.index.total_samples(),
            self.skipped
        );
        if self.skipped > 0 {
            let shown: Vec<&str> = self
                .skipped_items
                .iter()
                .take(n)
                .map(|(w, _)| w.as_str())
                .collect();
            line.push_str(&format!(": {}", shown.join(", ")));
            if self.skipped as usize > shown.len() {
                line.push_str(", ...");
            }
        }
        line
    }
}

/// `shard:key` or the path an error is about, for logs and summaries.
pub fn error_what(err: &DataError) -> String {
    match err {
        DataError::Decode { what, .. }
        | DataError::TooLarge { what, .. }
        | DataError::Sample { what, .. } => what.clone(),
        DataError::Io { path, .. } | DataError::Shard { path, .. } => path.display().to_string(),
        other => other.to_string(),
    }
}

/// The reason part of an error, without the `what`.
fn error_reason(err: &DataError) -> String {
    match err {
        DataError::Decode { reason, .. }
        | DataError::Sample { reason, .. }
        | DataError::Shard { reason, .. } => reason.clone(),
        DataError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Checks one item and turns it into the parts of a sample: (image extension, item).
fn validate(item: Item, opts: &BuildOptions) -> Result<(&'static str, Item)> {
    let what = item.source.as_str();
    let Some(ext) = sniff_ext(&item.bytes) else {
        let reason = if item.bytes.is_empty() {
            "zero bytes"
        } else {
            "not a jpg/png/webp/gif image"
        };
        return Err(DataError::Decode {
            what: what.to_string(),
            reason: reason.to_string(),
        });
    };
    match opts.validate {
        Validate::Decode => {
            decode_rgb(&item.bytes, what, opts.max_pixels)?;
        }
        Validate::Header => {
            let (w, h) = image_dimensions(&item.bytes, what)?;
            check_pixels(w, h, what, opts.max_pixels)?;
        }
        Validate::None => {}
    }
    if opts.require_captions && item.caption.is_none() {
        return Err(DataError::Sample {
            what: what.to_string(),
            reason: "missing caption".to_string(),
        });
    }
    Ok((ext, item))
}

fn to_sample(key: String, ext: &str, item: Item) -> Sample {
    let mut meta = match item.meta {
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => {
            let mut m = serde_json::Map::new();
            m.insert("meta".into(), other);
            m
        }
        None => serde_json::Map::new(),
    };
    meta.entry("source").or_insert_with(|| json!(item.source));
    meta.entry("key").or_insert_with(|| json!(item.key));
    if let Some(label) = item.label {
        meta.entry("label").or_insert_with(|| json!(label));
    }
    let mut sample = Sample::new(key).with(ext, item.bytes);
    // A shard input's other members (depth, segmentation, …) travel with the image. One whose
    // extension the image now takes (a `.jpg` member that holds PNG bytes, beside a `.png`) cannot.
    for (member, bytes) in item.extra {
        match sample.files.entry(member) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(bytes);
            }
            std::collections::btree_map::Entry::Occupied(o) => tracing::warn!(
                "{}: member `{}` dropped: the image is written under that extension",
                item.source,
                o.key()
            ),
        }
    }
    if let Some(c) = item.caption {
        sample.files.insert("txt".into(), c.into_bytes());
    }
    if let Some(l) = item.label {
        sample
            .files
            .insert("cls".into(), l.to_string().into_bytes());
    }
    // Serialising a map of JSON values cannot fail.
    sample
        .files
        .insert("json".into(), serde_json::to_vec(&meta).unwrap_or_default());
    sample
}

/// Validates and writes `items` into `writer`, skipping and counting bad ones; finishes the writer
/// (index written) and returns the report. `progress(kept, skipped)` is called after each batch.
/// Only writer I/O errors are fatal (no shard is then left half-written, see [`ShardWriter`]).
pub fn write_items(
    items: impl Iterator<Item = Result<Item>>,
    mut writer: ShardWriter,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BuildReport> {
    // Batches give rayon enough work to hide decode cost while writing stays in input order.
    const BATCH: usize = 256;
    let mut report = BuildReport::default();
    let mut items = items.peekable();
    let skip = |report: &mut BuildReport, err: &DataError| {
        let what = error_what(err);
        tracing::warn!("skipped {what}: {}", error_reason(err));
        report.skipped += 1;
        if report.skipped_items.len() < opts.keep_skipped {
            report.skipped_items.push((what, error_reason(err)));
        }
    };
    while items.peek().is_some() {
        let batch: Vec<Result<Item>> = items.by_ref().take(BATCH).collect();
        let checked: Vec<Result<(&'static str, Item)>> = batch
            .into_par_iter()
            .map(|r| r.and_then(|item| validate(item, opts)))
            .collect();
        for r in checked {
            match r {
                Ok((ext, item)) => {
                    let key = format!("{:09}", report.kept);
                    writer.write(&to_sample(key, ext, item))?;
                    report.kept += 1;
                }
                Err(e) => skip(&mut report, &e),
            }
        }
        progress(report.kept, report.skipped);
    }
    report.index = writer.finish()?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// IDX / Fashion-MNIST

/// An IDX array of unsigned bytes (element type `0x08`), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn idx_err(what: &str, reason: impl Into<String>) -> DataError {
    DataError::Shard {
        path: PathBuf::from(what),
        reason: format!("IDX: {}", reason.into()),
    }
}

/// Parses IDX bytes (gunzipping first when they start with the gzip magic).
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<IdxArray> {
    let owned;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| idx_err(what, format!("bad gzip: {e}")))?;
        owned = out;
        &owned[..]
    } else {
        bytes
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(idx_err(what, "bad magic (expected 00 00 <type> <ndim>)"));
    }
    if bytes[2] != 0x08 {
        return Err(idx_err(
            what,
            format!(
                "element type 0x{:02x} unsupported (only 0x08 unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let ndim = usize::from(bytes[3]);
    if ndim == 0 {
        return Err(idx_err(what, "zero dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(idx_err(what, "truncated header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| idx_err(what, "dimensions overflow"))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(idx_err(
            what,
            format!("dims {dims:?} need {count} bytes, file has {}", body.len()),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Reads an IDX file (`.gz` or raw).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_idx(&bytes, &path.display().to_string())
}

/// Fashion-MNIST class names, by label (Zalando's README).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where the Debian package installs Fashion-MNIST.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Finds the (images, labels) IDX files of a split (`train` or `test`) in `dir`, accepting
/// `.gz` or raw and the `name.idx3-ubyte` spelling some mirrors use.
pub fn find_fashion_mnist(dir: impl AsRef<Path>, split: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = dir.as_ref();
    let stem = match split {
        "train" => "train",
        "test" | "t10k" => "t10k",
        other => {
            return Err(DataError::Config {
                field: "split".into(),
                reason: format!("`{other}`: expected train or test"),
            });
        }
    };
    let find = |kind: &str, idx: &str| -> Result<PathBuf> {
        let bases = [
            format!("{stem}-{kind}-{idx}-ubyte"),
            format!("{stem}-{kind}.{idx}-ubyte"),
        ];
        let tried: Vec<PathBuf> = bases
            .iter()
            .flat_map(|b| [dir.join(b), dir.join(format!("{b}.gz"))])
            .collect();
        tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            let names: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            DataError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("none of {}", names.join(", ")),
                ),
            )
        })
    };
    Ok((find("images", "idx3")?, find("labels", "idx1")?))
}

/// Loads a Fashion-MNIST split and returns its items in file order: 28×28 grayscale PNG bytes,
/// caption = class name, label, meta `{label, class, split, index}`.
pub fn fashion_mnist_items(
    dir: &Path,
    split: &str,
) -> Result<impl Iterator<Item = Result<Item>> + Send + use<>> {
    let (img_path, lbl_path) = find_fashion_mnist(dir, split)?;
    let images = read_idx(&img_path)?;
    let labels = read_idx(&lbl_path)?;
    let what = img_path.display().to_string();
    let [n, h, w] = images.dims[..] else {
        return Err(idx_err(
            &what,
            format!("images must be N×H×W, got {:?}", images.dims),
        ));
    };
    if labels.dims != [n] {
        return Err(idx_err(
            &lbl_path.display().to_string(),
            format!("labels dims {:?} do not match {n} images", labels.dims),
        ));
    }
    if let Some(bad) = labels
        .data
        .iter()
        .find(|&&l| usize::from(l) >= FASHION_MNIST_CLASSES.len())
    {
        return Err(idx_err(
            &lbl_path.display().to_string(),
            format!("label {bad} out of range 0..10"),
        ));
    }
    let split = split.to_string();
    let (width, height) = (w as u32, h as u32);
    Ok((0..n).map(move |i| {
        let pixels = &images.data[i * h * w..(i + 1) * h * w];
        let label = labels.data[i];
        let class = FASHION_MNIST_CLASSES[usize::from(label)];
        let png = encode_gray_png(pixels, width, height).map_err(|reason| DataError::Decode {
            what: format!("{what}[{i}]"),
            reason,
        })?;
        Ok(Item {
            key: format!("{split}-{i:05}"),
            source: format!("fashion-mnist/{split}/{i}"),
            bytes: png,
            caption: Some(class.to_string()),
            label: Some(i64::from(label)),
            meta: Some(json!({"label": label, "class": class, "split": split, "index": i})),
            extra: Default::default(),
        })
    }))
}

/// Encodes 8-bit grayscale pixels as PNG.
pub fn encode_gray_png(
    pixels: &[u8],
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(pixels, width, height, image::ExtendedColorType::L8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Class folders

/// torchvision `find_classes`: sorted names of the subdirectories of `root`.
pub fn class_folder_classes(root: impl AsRef<Path>) -> Result<Vec<String>> {
    let root = root.as_ref();
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        if entry.path().is_dir() {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| DataError::Config {
                    field: "class folder".into(),
                    reason: format!("{n:?} in {} is not UTF-8", root.display()),
                })?;
            classes.push(name);
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Config {
            field: "class folders".into(),
            reason: format!("no class subdirectories in {}", root.display()),
        });
    }
    Ok(classes)
}

/// The classes of `root` and its items: label = class index, caption = the sidecar caption when
/// `sidecar_captions` and one exists, else the class name; meta `{label, class}`.
pub fn class_folder_items(
    root: &Path,
    sidecar_captions: bool,
) -> Result<(
    Vec<String>,
    impl Iterator<Item = Result<Item>> + Send + use<>,
)> {
    let root = root.to_path_buf();
    let classes = class_folder_classes(&root)?;
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let images = walk_images(&root.join(class))?;
        if images.is_empty() {
            return Err(DataError::Config {
                field: "class folders".into(),
                reason: format!(
                    "class `{class}` in {} has no jpg/jpeg/png/webp/gif images",
                    root.display()
                ),
            });
        }
        files.extend(images.into_iter().map(|p| (label, p)));
    }
    let names = classes.clone();
    let iter = files.into_iter().map(move |(label, path)| {
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let class = &names[label];
        let caption = if sidecar_captions {
            sidecar_caption(&path)?
        } else {
            None
        };
        Ok(Item {
            key: crate::source::folder_key(&root, &path),
            source: path.display().to_string(),
            bytes,
            caption: Some(caption.unwrap_or_else(|| class.clone())),
            label: Some(label as i64),
            meta: Some(json!({"label": label, "class": class})),
            extra: Default::default(),
        })
    });
    Ok((classes, iter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(kind: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, kind, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn idx_parses_and_rejects_bad_files() {
        let a = parse_idx(&idx(8, &[2, 3], &[1, 2, 3, 4, 5, 6]), "t").unwrap();
        assert_eq!(a.dims, [2, 3]);
        assert_eq!(a.data, [1, 2, 3, 4, 5, 6]);
        assert!(
            parse_idx(&idx(8, &[2, 3], &[1, 2, 3]), "t")
                .unwrap_err()
                .to_string()
                .contains("need 6 bytes")
        );
        assert!(
            parse_idx(&idx(0x0d, &[1], &[0, 0, 0, 0]), "t").is_err(),
            "float IDX unsupported"
        );
        assert!(parse_idx(&[1, 2, 3, 4], "t").is_err());
        assert!(parse_idx(&idx(8, &[u32::MAX, u32::MAX, u32::MAX], &[]), "t").is_err());
    }
}
