//! Frozen features: computed from a backbone ([`Encoder`], the one place features are extracted) or
//! cached in a `webssl embed` file ([`FeatureFile`]), and their labels, for the probes.
//!
//! **Features** come from a `webssl embed` safetensors file ([`FeatureFile::load`]): the 2-D tensors
//! `cls` `[N, D]`, `patch_mean` `[N, D]` and, with `--last-layers K`, `layer-{k}.cls` /
//! `layer-{k}.patch_mean` (k = K..1, 1 = the last block), plus `__metadata__["webssl"]` JSON whose
//! `"keys"` lists the N sample keys in row order. 3-D tensors (`patch_tokens`, `registers`) are not
//! read. A file whose key list does not match its row count, or that repeats a key, is rejected:
//! labels are matched **by key**, never by position, so the keys must be unambiguous.
//!
//! **Labels** ([`read_labels`]) come from the same inputs the features were computed from:
//! - WebDataset shards (a `.tar`, a brace pattern, a directory with `index.json` or of `*.tar`):
//!   [`LabelSpec::Cls`] reads the `.cls` member (what `webssl shards build/import` and `webssl synth`
//!   write), [`LabelSpec::Meta`] a path into the `json` member (`meta:labels.shape`);
//! - class folders (torchvision `ImageFolder` rules, as `webssl shards build --class-folders`):
//!   classes are the sorted names of the root's subdirectories, label = position; the key is the
//!   path relative to the root without extension, which is what `webssl embed` gives a folder input.
//!
//! Shard samples that cannot be read (no image member) are skipped and counted; a Fashion-MNIST
//! IDX directory is imported to shards first (`webssl shards import fashion-mnist`; `webssl eval`
//! does that on the fly for `fashion-mnist:DIR:SPLIT` inputs).
//!
//! String labels (`meta:` paths such as `labels.shape` = `"circle"`) become class ids by sorting the
//! distinct strings of train **and** val together (bytewise), so both splits share one mapping; the
//! mapping is reported. Integer labels are used as given (must be ≥ 0). A feature key without a label
//! is an error that says how many and shows examples ([`align_labels`]); labels for keys without
//! features (images skipped at embedding time) are only counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::tensor::{Dtype, SafeTensors};
use webssl_data::import::class_folder_classes;
use webssl_data::source::{InputSpec, folder_key, iter_items, resolve_inputs, walk_images};

use crate::error::{EvalError, Result};

mod extract;

pub use extract::{Encoder, Extracted, Feature, Preprocess};

fn probe_err(context: impl Into<String>, message: impl Into<String>) -> EvalError {
    EvalError::Probe {
        context: context.into(),
        message: message.into(),
    }
}

/// Reads a tensor back to the host as f32 values, row-major (`context` names the probe in errors).
pub(crate) fn read_f32<const D: usize>(
    t: burn::tensor::Tensor<D>,
    context: &str,
) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| probe_err(context, format!("reading a tensor back: {e:?}")))
}

/// A dense row-major `[rows, cols]` f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// Wraps `data`; its length must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(probe_err(
                "matrix",
                format!("{} values do not fill [{rows}, {cols}]", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Concatenates matrices with the same row count along the columns.
    pub fn hcat(parts: &[&Matrix]) -> Result<Matrix> {
        let Some(first) = parts.first() else {
            return Err(probe_err("matrix", "nothing to concatenate"));
        };
        let rows = first.rows;
        if let Some(bad) = parts.iter().find(|m| m.rows != rows) {
            return Err(probe_err(
                "matrix",
                format!("cannot concatenate {} rows with {rows}", bad.rows),
            ));
        }
        let cols: usize = parts.iter().map(|m| m.cols).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for m in parts {
                data.extend_from_slice(m.row(r));
            }
        }
        Ok(Matrix { rows, cols, data })
    }
}

/// The features of one `webssl embed` file.
#[derive(Clone, Debug)]
pub struct FeatureFile {
    pub path: PathBuf,
    /// Sample keys in row order.
    pub keys: Vec<String>,
    /// The `"model"` recorded by `webssl embed`, if any.
    pub model: Option<String>,
    /// Every 2-D f32 tensor by name (`cls`, `patch_mean`, `layer-1.cls`, ...).
    pub tensors: BTreeMap<String, Matrix>,
}

/// One tensor of a `webssl embed` file ([`FeatureFile::load_tensor`]).
#[derive(Clone, Debug)]
pub struct EmbedTensor {
    /// Sample keys in row order.
    pub keys: Vec<String>,
    /// `[N, ...]`.
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// The preprocessed image size `(h, w)`, when recorded.
    pub image_size: Option<(usize, usize)>,
}

/// An open `webssl embed` safetensors file: its mapping, header and unique sample keys, checked.
struct EmbedFile {
    path: PathBuf,
    bytes: memmap2::Mmap,
    header_len: usize,
    meta: safetensors::tensor::Metadata,
    webssl: serde_json::Value,
    keys: Vec<String>,
    model: Option<String>,
}

impl EmbedFile {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only mapping; a feature file modified while we read it is outside our
        // contract, as for every mmap-based safetensors reader.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let parse = |message: String| EvalError::Parse {
            path: path.to_path_buf(),
            line: None,
            message,
        };
        let (header_len, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| parse(format!("not a safetensors file: {e}")))?;
        let webssl = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("webssl"))
            .ok_or_else(|| {
                parse("no `webssl` metadata (sample keys): is this a `webssl embed` file?".into())
            })?;
        let webssl: serde_json::Value = serde_json::from_str(webssl)
            .map_err(|e| parse(format!("`webssl` metadata is not JSON: {e}")))?;
        let keys: Vec<String> = webssl
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| parse("`webssl` metadata has no `keys` array".into()))?
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| parse(format!("key {k} is not a string")))
            })
            .collect::<Result<_>>()?;
        let model = webssl
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_owned);
        let mut seen = HashSet::with_capacity(keys.len());
        let dups: Vec<&str> = keys
            .iter()
            .filter(|k| !seen.insert(k.as_str()))
            .map(String::as_str)
            .collect();
        if !dups.is_empty() {
            return Err(parse(format!(
                "{} duplicated sample key(s), e.g. {:?}: labels cannot be matched by key",
                dups.len(),
                &dups[..dups.len().min(5)]
            )));
        }
        Ok(EmbedFile {
            path: path.to_path_buf(),
            bytes,
            header_len,
            meta,
            webssl,
            keys,
            model,
        })
    }

    fn err(&self, message: String) -> EvalError {
        EvalError::Parse {
            path: self.path.clone(),
            line: None,
            message,
        }
    }

    /// The f32 values of tensor `name`, whose first dimension must be the sample count.
    fn read(&self, name: &str, info: &safetensors::tensor::TensorInfo) -> Result<Vec<f32>> {
        if info.dtype != Dtype::F32 {
            return Err(self.err(format!("tensor `{name}` is {:?}, expected F32", info.dtype)));
        }
        if info.shape.first() != Some(&self.keys.len()) {
            return Err(self.err(format!(
                "tensor `{name}` has shape {:?} but the metadata lists {} keys",
                info.shape,
                self.keys.len()
            )));
        }
        let start = 8 + self.header_len;
        // read_metadata validated the offsets against the file length.
        let raw = self
            .bytes
            .get(start + info.data_offsets.0..start + info.data_offsets.1)
            .ok_or_else(|| self.err(format!("tensor `{name}` points past the end")))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl FeatureFile {
    /// Reads an embed safetensors file (see the module docs for the layout). The file is
    /// memory-mapped and only the 2-D tensors are read, so `patch_tokens` (N × P × D, often most of
    /// the file) costs nothing.
    pub fn load(path: &Path) -> Result<Self> {
        let embed = EmbedFile::open(path)?;
        let mut tensors = BTreeMap::new();
        for (name, info) in embed.meta.tensors() {
            let shape = &info.shape;
            if shape.len() != 2 {
                continue;
            }
            let m = Matrix::new(shape[0], shape[1], embed.read(&name, info)?)
                .map_err(|e| embed.err(format!("tensor `{name}`: {e}")))?;
            tensors.insert(name, m);
        }
        if tensors.is_empty() {
            return Err(embed.err("no [N, D] feature tensors".into()));
        }
        Ok(FeatureFile {
            path: path.to_path_buf(),
            keys: embed.keys,
            model: embed.model,
            tensors,
        })
    }

    /// Reads one tensor of any rank (`patch_tokens` `[N, P, D]`, `registers`) from an embed file:
    /// the sample keys, the tensor's shape and values, and the preprocessed `image_size` `(h, w)`
    /// that `webssl embed` records.
    pub fn load_tensor(path: &Path, name: &str) -> Result<EmbedTensor> {
        let embed = EmbedFile::open(path)?;
        let tensors = embed.meta.tensors();
        let info = tensors.get(name).ok_or_else(|| {
            let mut have: Vec<&String> = tensors.keys().collect();
            have.sort();
            embed.err(format!("no tensor `{name}`; it has {have:?}"))
        })?;
        let values = embed.read(name, info)?;
        let image_size = embed
            .webssl
            .get("image_size")
            .and_then(|s| serde_json::from_value::<(usize, usize)>(s.clone()).ok());
        Ok(EmbedTensor {
            shape: info.shape.clone(),
            values,
            image_size,
            keys: embed.keys,
        })
    }

    /// The tensor `name`, or an error listing the available ones.
    pub fn get(&self, name: &str) -> Result<&Matrix> {
        self.tensors.get(name).ok_or_else(|| {
            probe_err(
                self.path.display().to_string(),
                format!(
                    "no tensor `{name}`; it has {:?}{}",
                    self.tensors.keys().collect::<Vec<_>>(),
                    if name.starts_with("layer-") {
                        " (embed with --last-layers 4 for the 4-block linear probes)"
                    } else {
                        ""
                    }
                ),
            )
        })
    }

    /// The same file restricted to `rows` (in that order).
    pub fn select_rows(&self, rows: &[usize]) -> FeatureFile {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, m)| {
                let mut data = Vec::with_capacity(rows.len() * m.cols);
                for &r in rows {
                    data.extend_from_slice(m.row(r));
                }
                let m = Matrix {
                    rows: rows.len(),
                    cols: m.cols,
                    data,
                };
                (name.clone(), m)
            })
            .collect();
        FeatureFile {
            path: self.path.clone(),
            keys: rows.iter().map(|&r| self.keys[r].clone()).collect(),
            model: self.model.clone(),
            tensors,
        }
    }

    /// How many `layer-{k}.cls` tensors (consecutive from k = 1) the file has.
    pub fn last_layers(&self) -> usize {
        (1..)
            .take_while(|k| self.tensors.contains_key(&format!("layer-{k}.cls")))
            .count()
    }
}

/// Which label to read from each sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelSpec {
    /// The `.cls` member of a shard sample; for class folders, the class index.
    Cls,
    /// A dotted path into the sample's `json` meta, e.g. `labels.shape`.
    Meta(Vec<String>),
}

impl FromStr for LabelSpec {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "cls" {
            return Ok(LabelSpec::Cls);
        }
        if let Some(path) = s.strip_prefix("meta:") {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(probe_err(
                    "--label",
                    format!("`{s}`: empty component in the meta path"),
                ));
            }
            return Ok(LabelSpec::Meta(parts));
        }
        Err(probe_err(
            "--label",
            format!("`{s}`: expected `cls` or `meta:PATH` (e.g. meta:labels.shape)"),
        ))
    }
}

impl std::fmt::Display for LabelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelSpec::Cls => f.write_str("cls"),
            LabelSpec::Meta(p) => write!(f, "meta:{}", p.join(".")),
        }
    }
}

/// A label as read, before string labels are mapped to class ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RawLabel {
    Int(i64),
    Str(String),
}

/// Labels of one split, by sample key.
#[derive(Clone, Debug, Default)]
pub struct RawLabels {
    pub by_key: HashMap<String, RawLabel>,
    /// Samples that could not be read, or carried no label of the requested kind.
    pub skipped: usize,
    /// A few `source: reason` lines for the skipped ones.
    pub skipped_examples: Vec<String>,
}

impl RawLabels {
    fn skip(&mut self, why: String) {
        self.skipped += 1;
        if self.skipped_examples.len() < 5 {
            self.skipped_examples.push(why);
        }
    }

    fn insert(&mut self, key: String, label: RawLabel, source: &str) -> Result<()> {
        if let Some(old) = self.by_key.get(&key) {
            if *old != label {
                return Err(probe_err(
                    source.to_owned(),
                    format!("key `{key}` appears twice with different labels ({old:?}, {label:?})"),
                ));
            }
            return Ok(());
        }
        self.by_key.insert(key, label);
        Ok(())
    }
}

fn meta_label(meta: &serde_json::Value, path: &[String]) -> std::result::Result<RawLabel, String> {
    let mut v = meta;
    for p in path {
        v = match v {
            serde_json::Value::Object(m) => m.get(p),
            serde_json::Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("meta has no `{}`", path.join(".")))?;
    }
    match v {
        serde_json::Value::String(s) => Ok(RawLabel::Str(s.clone())),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(RawLabel::Int)
            .ok_or_else(|| format!("`{}` = {n} is not an integer", path.join("."))),
        serde_json::Value::Bool(b) => Ok(RawLabel::Str(b.to_string())),
        other => Err(format!(
            "`{}` = {other} is not a string or integer",
            path.join(".")
        )),
    }
}

/// Reads the labels of `inputs` (the same arguments as `webssl embed --input`), keyed by sample key.
pub fn read_labels(inputs: &[String], spec: &LabelSpec) -> Result<RawLabels> {
    let specs = resolve_inputs(inputs).map_err(|e| probe_err("labels", e.to_string()))?;
    let mut out = RawLabels::default();
    for input in &specs {
        match input {
            InputSpec::Folder(root) => {
                if *spec != LabelSpec::Cls {
                    return Err(probe_err(
                        root.display().to_string(),
                        format!(
                            "a folder has no json meta for --label {spec}; use --label cls (class folders)"
                        ),
                    ));
                }
                let classes =
                    class_folder_classes(root).map_err(|e| probe_err("labels", e.to_string()))?;
                for (label, class) in classes.iter().enumerate() {
                    let files = walk_images(&root.join(class))
                        .map_err(|e| probe_err("labels", e.to_string()))?;
                    for path in files {
                        let key = folder_key(root, &path);
                        out.insert(
                            key,
                            RawLabel::Int(label as i64),
                            &root.display().to_string(),
                        )?;
                    }
                }
            }
            InputSpec::FileList(list) | InputSpec::Image(list) => {
                return Err(probe_err(
                    list.display().to_string(),
                    "a file list or single image carries no labels; give labelled shards or class folders",
                ));
            }
            InputSpec::Tar(path) => {
                let shard = path.display().to_string();
                for item in iter_items(std::slice::from_ref(input)) {
                    let item = match item {
                        Ok(item) => item,
                        Err(e) => {
                            out.skip(e.to_string());
                            continue;
                        }
                    };
                    let label = match spec {
                        LabelSpec::Cls => item
                            .label
                            .map(RawLabel::Int)
                            .ok_or_else(|| "no (integer) .cls member".to_owned()),
                        LabelSpec::Meta(p) => match &item.meta {
                            Some(m) => meta_label(m, p),
                            None => Err("no json member".to_owned()),
                        },
                    };
                    match label {
                        Ok(l) => out.insert(item.key, l, &shard)?,
                        Err(why) => out.skip(format!("{}: {why}", item.source)),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// How raw labels became class ids.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LabelMapping {
    /// Number of classes: max id + 1 (integer labels, as dinov2's `train_labels.max() + 1`, taken
    /// over both splits so a val-only class still has a slot), or the number of distinct strings.
    pub num_classes: usize,
    /// For string labels: the class names, index = class id (sorted bytewise). Empty for integers.
    pub names: Vec<String>,
}

/// Builds the class-id mapping shared by all splits: integer labels as given (≥ 0), string labels
/// sorted. Mixing the two kinds is an error.
pub fn label_mapping(splits: &[&RawLabels]) -> Result<LabelMapping> {
    let mut strings = BTreeSet::new();
    let mut max_int: Option<i64> = None;
    for s in splits {
        for (key, l) in &s.by_key {
            match l {
                RawLabel::Int(i) => {
                    if *i < 0 {
                        return Err(probe_err(
                            "labels",
                            format!("key `{key}` has negative label {i}"),
                        ));
                    }
                    max_int = Some(max_int.map_or(*i, |m| m.max(*i)));
                }
                RawLabel::Str(s) => {
                    strings.insert(s.clone());
                }
            }
        }
    }
    match (max_int, strings.is_empty()) {
        (Some(_), false) => Err(probe_err(
            "labels",
            "a mix of integer and string labels; pick one meta field",
        )),
        (Some(m), true) => Ok(LabelMapping {
            num_classes: usize::try_from(m)
                .ok()
                .and_then(|m| m.checked_add(1))
                .ok_or_else(|| probe_err("labels", format!("label {m} too large")))?,
            names: Vec::new(),
        }),
        (None, false) => Ok(LabelMapping {
            num_classes: strings.len(),
            names: strings.into_iter().collect(),
        }),
        (None, true) => Err(probe_err("labels", "no labels found")),
    }
}

/// Labels aligned with a feature file's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Aligned {
    /// The feature rows that have a label (all rows, unless unlabelled ones were dropped).
    pub rows: Vec<usize>,
    /// Class id of each kept row, in row order.
    pub labels: Vec<usize>,
    /// Feature rows dropped for lack of a label (only with `drop_unlabelled`).
    pub dropped: usize,
    /// Labels whose key has no feature row (e.g. images skipped when embedding).
    pub unused_labels: usize,
}

/// Matches `keys` (feature rows) to labels **by key**. Any key without a label is an error naming
/// how many and a few of them; a score is never computed over a partially labelled set.
pub fn align_labels(
    context: &str,
    keys: &[String],
    labels: &RawLabels,
    mapping: &LabelMapping,
) -> Result<Aligned> {
    align_labels_with(context, keys, labels, mapping, false)
}

/// [`align_labels`], or with `drop_unlabelled` the labelled subset: unlabelled rows are dropped
/// and counted (`Aligned::dropped`), for labels that only some samples carry (e.g. the synthetic
/// `labels.shape`, present on scenes only). An empty subset is still an error.
pub fn align_labels_with(
    context: &str,
    keys: &[String],
    labels: &RawLabels,
    mapping: &LabelMapping,
    drop_unlabelled: bool,
) -> Result<Aligned> {
    let mut out = Vec::with_capacity(keys.len());
    let mut rows = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (row, key) in keys.iter().enumerate() {
        let id = match labels.by_key.get(key) {
            Some(RawLabel::Int(i)) => Some(*i as usize),
            Some(RawLabel::Str(s)) => mapping.names.binary_search(s).ok(),
            None => None,
        };
        match id {
            Some(i) => {
                out.push(i);
                rows.push(row);
            }
            None => missing.push(key.as_str()),
        }
    }
    // Unlabelled rows are an error unless dropping was asked for and something is left.
    let keep_subset = drop_unlabelled && !out.is_empty();
    if !missing.is_empty() && !keep_subset {
        let mut msg = format!(
            "{} of {} feature rows have no label (e.g. {:?}); the labels have {} keys",
            missing.len(),
            keys.len(),
            &missing[..missing.len().min(5)],
            labels.by_key.len()
        );
        if labels.skipped > 0 {
            msg.push_str(&format!(
                ", {} samples skipped (e.g. {:?})",
                labels.skipped, labels.skipped_examples
            ));
        }
        msg.push_str(if drop_unlabelled {
            ": no labelled row is left"
        } else {
            ": are the labels from the same inputs as the features? (--drop-unlabelled evaluates the labelled subset)"
        });
        return Err(probe_err(context, msg));
    }
    let used: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let unused_labels = labels
        .by_key
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .count();
    Ok(Aligned {
        rows,
        dropped: missing.len(),
        labels: out,
        unused_labels,
    })
}

/// Both splits of a probe: feature files with a class id per (kept) row, matched by key.
#[derive(Clone, Debug)]
pub struct LabelledFeatures {
    /// Train features (only the labelled rows when `drop_unlabelled`).
    pub train: FeatureFile,
    pub val: FeatureFile,
    pub train_labels: Vec<usize>,
    pub val_labels: Vec<usize>,
    /// The class-id mapping shared by both splits.
    pub mapping: LabelMapping,
    /// Labels read for keys without a feature row (train, val).
    pub unused_labels: (usize, usize),
    /// Feature rows dropped for lack of a label (train, val).
    pub dropped: (usize, usize),
    /// Label-source samples that could not be read or had no label of the asked kind (train, val),
    /// with a few examples.
    pub skipped: (usize, usize),
    pub skipped_examples: Vec<String>,
}

/// Loads two `webssl embed` files and the labels of the inputs they were embedded from
/// ([`read_labels`]), builds the shared class mapping ([`label_mapping`]) and matches labels to
/// rows by key ([`align_labels_with`]).
pub fn load_labelled(
    train_file: &Path,
    train_inputs: &[String],
    val_file: &Path,
    val_inputs: &[String],
    spec: &LabelSpec,
    drop_unlabelled: bool,
) -> Result<LabelledFeatures> {
    let train = FeatureFile::load(train_file)?;
    let val = FeatureFile::load(val_file)?;
    let read = |split: &str, inputs: &[String]| {
        read_labels(inputs, spec).map_err(|e| {
            probe_err(
                format!("reading {split} labels ({spec}) from {inputs:?}"),
                e.to_string(),
            )
        })
    };
    let train_raw = read("train", train_inputs)?;
    let val_raw = read("val", val_inputs)?;
    let mapping = label_mapping(&[&train_raw, &val_raw])?;
    let ta = align_labels_with(
        &format!("train features {}", train_file.display()),
        &train.keys,
        &train_raw,
        &mapping,
        drop_unlabelled,
    )?;
    let va = align_labels_with(
        &format!("val features {}", val_file.display()),
        &val.keys,
        &val_raw,
        &mapping,
        drop_unlabelled,
    )?;
    let (train, val) = if ta.dropped + va.dropped > 0 {
        (train.select_rows(&ta.rows), val.select_rows(&va.rows))
    } else {
        (train, val)
    };
    let mut skipped_examples = train_raw.skipped_examples.clone();
    skipped_examples.extend(val_raw.skipped_examples.iter().cloned());
    Ok(LabelledFeatures {
        train,
        val,
        train_labels: ta.labels,
        val_labels: va.labels,
        mapping,
        unused_labels: (ta.unused_labels, va.unused_labels),
        dropped: (ta.dropped, va.dropped),
        skipped: (train_raw.skipped, val_raw.skipped),
        skipped_examples,
    })
}

/// One split ready for a probe: features `[N, D]` and a class id per row.
#[derive(Clone, Debug)]
pub struct Split {
    pub features: Matrix,
    pub labels: Vec<usize>,
}

impl Split {
    /// Checks that there is one label per feature row and at least one row.
    pub fn new(context: &str, features: Matrix, labels: Vec<usize>) -> Result<Self> {
        if features.rows != labels.len() {
            return Err(probe_err(
                context,
                format!("{} feature rows but {} labels", features.rows, labels.len()),
            ));
        }
        if features.rows == 0 {
            return Err(probe_err(context, "no samples"));
        }
        if features.data.iter().any(|v| !v.is_finite()) {
            return Err(probe_err(context, "features contain NaN or infinity"));
        }
        Ok(Split { features, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, RawLabel)]) -> RawLabels {
        RawLabels {
            by_key: pairs
                .iter()
                .map(|(k, l)| (k.to_string(), l.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn label_spec_parses() {
        assert_eq!("cls".parse::<LabelSpec>().unwrap(), LabelSpec::Cls);
        assert_eq!(
            "meta:labels.shape".parse::<LabelSpec>().unwrap(),
            LabelSpec::Meta(vec!["labels".into(), "shape".into()])
        );
        assert!("meta:a..b".parse::<LabelSpec>().is_err());
        assert!("shape".parse::<LabelSpec>().is_err());
    }

    #[test]
    fn string_labels_sorted_across_splits() {
        let train = labels(&[("a", RawLabel::Str("square".into()))]);
        let val = labels(&[("b", RawLabel::Str("circle".into()))]);
        let m = label_mapping(&[&train, &val]).unwrap();
        assert_eq!(m.names, ["circle", "square"]);
        let keys = vec!["b".to_string()];
        assert_eq!(align_labels("val", &keys, &val, &m).unwrap().labels, [0]);
        let mixed = labels(&[("c", RawLabel::Int(1))]);
        assert!(label_mapping(&[&train, &mixed]).is_err());
        assert!(label_mapping(&[&labels(&[("n", RawLabel::Int(-1))])]).is_err());
    }

    #[test]
    fn alignment_is_by_key_and_reports_missing() {
        let l = labels(&[
            ("x", RawLabel::Int(2)),
            ("y", RawLabel::Int(0)),
            ("z", RawLabel::Int(1)),
        ]);
        let m = label_mapping(&[&l]).unwrap();
        assert_eq!(m.num_classes, 3);
        let keys: Vec<String> = ["z", "x"].iter().map(|s| s.to_string()).collect();
        let a = align_labels("train", &keys, &l, &m).unwrap();
        assert_eq!(a.labels, [1, 2]);
        assert_eq!(a.unused_labels, 1);
        let keys: Vec<String> = ["z", "q", "r"].iter().map(|s| s.to_string()).collect();
        let e = align_labels("train", &keys, &l, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 of 3 feature rows have no label"), "{e}");
        let a = align_labels_with("train", &keys, &l, &m, true).unwrap();
        assert_eq!((a.rows, a.labels, a.dropped), (vec![0], vec![1], 2));
        let none: Vec<String> = vec!["q".into()];
        assert!(align_labels_with("train", &none, &l, &m, true).is_err());
    }

    #[test]
    fn split_checks_counts() {
        let f = Matrix::new(2, 1, vec![0.0, 1.0]).unwrap();
        assert!(Split::new("t", f.clone(), vec![0]).is_err());
        assert!(Split::new("t", f, vec![0, 1]).is_ok());
        assert!(Matrix::new(2, 2, vec![0.0; 3]).is_err());
        let nan = Matrix::new(1, 1, vec![f32::NAN]).unwrap();
        assert!(Split::new("t", nan, vec![0]).is_err());
    }

    #[test]
    fn meta_paths() {
        let m = serde_json::json!({"labels": {"shape": "circle", "n": 3, "f": 1.5}, "l": [4]});
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            meta_label(&m, &p("labels.shape")),
            Ok(RawLabel::Str("circle".into()))
        );
        assert_eq!(meta_label(&m, &p("labels.n")), Ok(RawLabel::Int(3)));
        assert_eq!(meta_label(&m, &p("l.0")), Ok(RawLabel::Int(4)));
        assert!(meta_label(&m, &p("labels.f")).is_err());
        assert!(meta_label(&m, &p("labels.color")).is_err());
    }
}
