//! Input sources: what `webssl embed --input PATH...` and `webssl shards build --input PATH...` accept.
//!
//! An argument is first brace-expanded (webdataset/`braceexpand` syntax: `shard-{000..009}.tar`,
//! `{train,val}`), then resolved to an [`InputSpec`]:
//!
//! - a directory with an `index.json` → the tar shards listed in it, in index order;
//! - a directory holding `*.tar` files and no images at its top level → those shards, sorted;
//! - any other directory → an image folder, walked recursively;
//! - a path ending in `.tar`, `.tar.gz` or `.tgz` → one shard;
//! - a file with an image extension (jpg/jpeg/png/webp/gif, any case) → that one image, keyed by its
//!   name without the extension;
//! - any other file → a file list: one image path per line, optionally followed by a TAB and a
//!   caption; blank lines and lines starting with `#` are ignored; relative paths are resolved
//!   against the list file's directory (so a list travels with its images).
//!
//! [`iter_items`] streams [`Item`]s in a deterministic order: folders depth-first with entries sorted
//! bytewise by name at every level (only files with an image extension, case-insensitive), shards in
//! the given order and member order, lists in line order. Nothing is decoded here; unreadable files
//! and shard damage come out as `Err` items so a caller can skip and count them.
//!
//! Keys: a key holding a control character (newline, tab, CR, …) is rejected as an `Err` item (the
//! sample is skipped and counted): keys are written one per line (`embed`'s `keys.txt`) and a
//! rejected key is clearer than an escaped one that no longer matches its shard. Within one folder
//! or file list two images with the same key (`a.jpg` and `a.png`) are an error for the second:
//! in WebDataset the key is the name without its extension, so the two would be one sample with
//! two images, and features or labels matched by key would be ambiguous. (Keys may still repeat
//! across different inputs, whose relative names are independent.)

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::decode::is_image_ext;
use crate::error::{DataError, Result};
use crate::shards::{INDEX_FILE, ShardIndex, ShardReader, list_shard_files};

/// More names than this from one pattern is almost certainly a typo (`{0..99999999}`).
const MAX_EXPANSION: usize = 1_000_000;

fn brace_err(pattern: &str, reason: impl Into<String>) -> DataError {
    DataError::config(format!("input pattern `{pattern}`"), reason)
}

/// Expands shell-style braces as webdataset's `braceexpand` does: comma alternatives `{a,b}`,
/// numeric ranges `{000..009}` (zero padding kept when either end has a leading zero; optional step
/// `{0..10..2}`; descending ranges count down), character ranges `{a..e}`, nesting, several groups
/// (expanded left to right, leftmost varying slowest) and `\{` `\}` `\,` escapes. A brace group
/// without a top-level comma or range (`{x}`) stays literal. Unbalanced braces are an error.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let chars: Vec<char> = pattern.chars().collect();
    let out = expand(&chars, pattern)?;
    Ok(out.into_iter().map(|s| unescape(&s)).collect())
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands `s`, keeping escapes (removed once at the end).
fn expand(s: &[char], pattern: &str) -> Result<Vec<String>> {
    // Find the first top-level `{` and its matching `}`.
    let mut i = 0;
    let mut open = None;
    while i < s.len() {
        match s[i] {
            '\\' => i += 1,
            '{' => {
                open = Some(i);
                break;
            }
            '}' => return Err(brace_err(pattern, "`}` without a matching `{`")),
            _ => {}
        }
        i += 1;
    }
    let Some(open) = open else {
        return Ok(vec![s.iter().collect()]);
    };
    let mut depth = 0;
    let mut close = None;
    let mut commas = Vec::new();
    let mut j = open;
    while j < s.len() {
        match s[j] {
            '\\' => j += 1,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(j),
            _ => {}
        }
        j += 1;
    }
    let Some(close) = close else {
        return Err(brace_err(pattern, "`{` without a matching `}`"));
    };
    let prefix: String = s[..open].iter().collect();
    let inner = &s[open + 1..close];
    let alternatives: Vec<String> = if !commas.is_empty() {
        let mut alts = Vec::new();
        let mut start = open + 1;
        for &c in commas.iter().chain(std::iter::once(&close)) {
            alts.extend(expand(&s[start..c], pattern)?);
            start = c + 1;
        }
        alts
    } else if let Some(range) = expand_range(&inner.iter().collect::<String>(), pattern)? {
        range
    } else {
        expand(inner, pattern)?
            .into_iter()
            .map(|x| format!("{{{x}}}"))
            .collect()
    };
    let rest = expand(&s[close + 1..], pattern)?;
    if alternatives.len().saturating_mul(rest.len()) > MAX_EXPANSION {
        return Err(brace_err(
            pattern,
            format!("expands to more than {MAX_EXPANSION} names"),
        ));
    }
    let mut out = Vec::with_capacity(alternatives.len() * rest.len());
    for a in &alternatives {
        for r in &rest {
            out.push(format!("{prefix}{a}{r}"));
        }
    }
    Ok(out)
}

/// `a..b[..step]` with integers or single characters; `None` if `inner` is not a range.
fn expand_range(inner: &str, pattern: &str) -> Result<Option<Vec<String>>> {
    let parts: Vec<&str> = inner.split("..").collect();
    if !(parts.len() == 2 || parts.len() == 3) {
        return Ok(None);
    }
    let step: i64 = match parts.get(2) {
        Some(p) => match p.parse::<i64>() {
            Ok(0) => return Err(brace_err(pattern, "range step must not be 0")),
            Ok(v) => v.abs(),
            Err(_) => return Ok(None),
        },
        None => 1,
    };
    let is_int = |p: &str| {
        let digits = p.strip_prefix('-').unwrap_or(p);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let (a, b) = (parts[0], parts[1]);
    let seq = |from: i64, to: i64| -> Result<Vec<i64>> {
        let n = (from - to).unsigned_abs() / step as u64 + 1;
        if n > MAX_EXPANSION as u64 {
            return Err(brace_err(
                pattern,
                format!("range {from}..{to} has more than {MAX_EXPANSION} values"),
            ));
        }
        let dir = if to >= from { step } else { -step };
        Ok((0..n as i64).map(|k| from + k * dir).collect())
    };
    if is_int(a) && is_int(b) {
        let (Ok(from), Ok(to)) = (a.parse::<i64>(), b.parse::<i64>()) else {
            return Err(brace_err(pattern, "range bound out of range"));
        };
        let padded = |p: &str| {
            let d = p.strip_prefix('-').unwrap_or(p);
            d.len() > 1 && d.starts_with('0')
        };
        let width = if padded(a) || padded(b) {
            a.len().max(b.len())
        } else {
            0
        };
        return Ok(Some(
            seq(from, to)?
                .into_iter()
                .map(|v| format!("{v:0width$}"))
                .collect(),
        ));
    }
    let (mut ca, mut cb) = (a.chars(), b.chars());
    if let (Some(x), None, Some(y), None) = (ca.next(), ca.next(), cb.next(), cb.next())
        && x.is_ascii_alphabetic()
        && y.is_ascii_alphabetic()
    {
        return Ok(Some(
            seq(x as i64, y as i64)?
                .into_iter()
                .map(|v| char::from(v as u8).to_string())
                .collect(),
        ));
    }
    Ok(None)
}

/// A resolved input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// A folder of images, walked recursively.
    Folder(PathBuf),
    /// One WebDataset tar shard.
    Tar(PathBuf),
    /// A text file with one image path per line (optional TAB caption).
    FileList(PathBuf),
    /// One image file.
    Image(PathBuf),
}

impl InputSpec {
    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            InputSpec::Folder(p)
            | InputSpec::Tar(p)
            | InputSpec::FileList(p)
            | InputSpec::Image(p) => p,
        }
    }
}

fn is_shard_name(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(is_image_ext)
}

/// Resolves CLI arguments (brace-expanded) to inputs; see the module docs for the rules.
pub fn resolve_inputs(args: &[String]) -> Result<Vec<InputSpec>> {
    let mut out = Vec::new();
    for arg in args {
        for name in expand_braces(arg)? {
            let path = PathBuf::from(&name);
            if path.is_dir() {
                if path.join(INDEX_FILE).is_file() {
                    let index = ShardIndex::load(&path)?;
                    index.check_files(&path)?;
                    out.extend(index.paths(&path).into_iter().map(InputSpec::Tar));
                    continue;
                }
                let shards = list_shard_files(&path)?;
                let top_has_images = std::fs::read_dir(&path)
                    .map_err(|e| DataError::io(&path, e))?
                    .filter_map(|e| e.ok())
                    .any(|e| has_image_ext(&e.path()));
                if !shards.is_empty() && !top_has_images {
                    out.extend(shards.into_iter().map(InputSpec::Tar));
                } else {
                    out.push(InputSpec::Folder(path));
                }
            } else if !path.exists() {
                return Err(DataError::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "input does not exist"),
                ));
            } else if is_shard_name(&path) {
                out.push(InputSpec::Tar(path));
            } else if has_image_ext(&path) {
                out.push(InputSpec::Image(path));
            } else {
                out.push(InputSpec::FileList(path));
            }
        }
    }
    Ok(out)
}

/// One image to process, before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Sample key: the shard key, or the path relative to its folder (or as listed) without the
    /// image extension.
    pub key: String,
    /// Where it came from, for logs: `shard.tar:key` or the file path.
    pub source: String,
    /// The encoded image.
    pub bytes: Vec<u8>,
    pub caption: Option<String>,
    pub label: Option<i64>,
    /// The shard's `json` member, when there is one.
    pub meta: Option<serde_json::Value>,
    /// A shard sample's other members (depth or segmentation maps, a second image, …) by
    /// extension, so that rewriting shards keeps them; empty for files.
    pub extra: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Options for [`iter_items_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// For folder and list inputs, read the caption from a sidecar `img.txt` next to `img.jpg`
    /// (a list's TAB caption takes precedence).
    pub sidecar_captions: bool,
}

/// Streams items from all inputs in order (see module docs); no sidecar captions.
pub fn iter_items(inputs: &[InputSpec]) -> impl Iterator<Item = Result<Item>> + Send + use<> {
    iter_items_with(inputs, SourceOptions::default())
}

/// Streams items from all inputs in order with options.
pub fn iter_items_with(
    inputs: &[InputSpec],
    options: SourceOptions,
) -> impl Iterator<Item = Result<Item>> + Send + use<> {
    // Owned copy: the stream must not borrow the caller's slice (it outlives it in loaders).
    let owned: Vec<InputSpec> = inputs.to_vec();
    owned.into_iter().flat_map(
        move |spec| -> Box<dyn Iterator<Item = Result<Item>> + Send> {
            let items: Box<dyn Iterator<Item = Result<Item>> + Send> = match spec {
                InputSpec::Folder(root) => match walk_images(&root) {
                    Ok(files) => {
                        let mut keys = UniqueKeys::default();
                        Box::new(files.into_iter().map(move |path| {
                            let key = keys.check(folder_key(&root, &path), &path)?;
                            file_item(key, path, None, options)
                        }))
                    }
                    Err(e) => Box::new(std::iter::once(Err(e))),
                },
                InputSpec::Tar(path) => match ShardReader::open(&path) {
                    Ok(iter) => {
                        let shard = path.display().to_string();
                        Box::new(iter.map(move |r| r.and_then(|s| sample_item(&shard, s))))
                    }
                    Err(e) => Box::new(std::iter::once(Err(e))),
                },
                InputSpec::FileList(list) => match read_file_list(&list) {
                    Ok(entries) => {
                        let mut keys = UniqueKeys::default();
                        Box::new(entries.into_iter().map(move |entry| {
                            let ListEntry { key, path, caption } = entry?;
                            let key = keys.check(key, &path)?;
                            file_item(key, path, caption, options)
                        }))
                    }
                    Err(e) => Box::new(std::iter::once(Err(e))),
                },
                InputSpec::Image(path) => {
                    let key = path
                        .file_name()
                        .map(|n| {
                            Path::new(n)
                                .with_extension("")
                                .to_string_lossy()
                                .into_owned()
                        })
                        .unwrap_or_default();
                    Box::new(std::iter::once(file_item(key, path, None, options)))
                }
            };
            Box::new(items.map(|r| r.and_then(check_key)))
        },
    )
}

/// Refuses a key with a control character (see the module docs).
fn check_key(item: Item) -> Result<Item> {
    if let Some(c) = item.key.chars().find(|c| c.is_control()) {
        return Err(DataError::Sample {
            what: item.source,
            reason: format!(
                "the key {:?} contains the control character {c:?}; keys are written one per line, so such samples are skipped",
                item.key
            ),
        });
    }
    Ok(item)
}

/// The keys seen so far in one folder or file list, with the file each came from.
#[derive(Default)]
struct UniqueKeys(std::collections::HashMap<String, PathBuf>);

impl UniqueKeys {
    fn check(&mut self, key: String, path: &Path) -> Result<String> {
        match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => Err(DataError::Sample {
                what: path.display().to_string(),
                reason: format!(
                    "duplicate key `{}` (also {}): a WebDataset key is the name without its extension, so both would be one sample; rename one",
                    first.key(),
                    first.get().display()
                ),
            }),
            std::collections::hash_map::Entry::Vacant(v) => {
                let key = v.key().clone();
                v.insert(path.to_path_buf());
                Ok(key)
            }
        }
    }
}

/// Converts a shard sample to an item; a sample without an image member is an error.
pub fn sample_item(shard: &str, mut sample: crate::shards::Sample) -> Result<Item> {
    let source = format!("{shard}:{}", sample.key);
    let Some((ext, _)) = sample.image_bytes() else {
        let exts: Vec<&str> = sample.files.keys().map(String::as_str).collect();
        return Err(DataError::Sample {
            what: source,
            reason: format!("no image member (jpg/jpeg/png/webp/gif); has {exts:?}"),
        });
    };
    let ext = ext.to_string();
    let (caption, label, meta) = (
        sample.caption().map(str::to_string),
        sample.label(),
        sample.meta(),
    );
    let bytes = sample
        .files
        .remove(&ext)
        .expect("the image member was found above");
    for known in ["txt", "cls", "json"] {
        sample.files.remove(known);
    }
    Ok(Item {
        bytes,
        caption,
        label,
        meta,
        source,
        key: sample.key,
        extra: sample.files,
    })
}

fn file_item(
    key: String,
    path: PathBuf,
    caption: Option<String>,
    options: SourceOptions,
) -> Result<Item> {
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let caption = match caption {
        Some(c) => Some(c),
        None if options.sidecar_captions => sidecar_caption(&path)?,
        None => None,
    };
    Ok(Item {
        key,
        source: path.display().to_string(),
        bytes,
        caption,
        label: None,
        meta: None,
        extra: Default::default(),
    })
}

/// The caption in `img.txt` next to `img.jpg`: trimmed, `None` when missing or blank.
pub fn sidecar_caption(image: &Path) -> Result<Option<String>> {
    let txt = image.with_extension("txt");
    match std::fs::read(&txt) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| DataError::Sample {
                what: txt.display().to_string(),
                reason: "caption is not UTF-8".into(),
            })?;
            let text = text.trim();
            Ok((!text.is_empty()).then(|| text.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(&txt, e)),
    }
}

/// Relative path from `root` with `/` separators and the final extension removed.
pub fn folder_key(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path).with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// All image files under `root` (by extension), depth-first, entries sorted bytewise by name at
/// every level. Symlinked directories are followed once (cycles are cut).
pub fn walk_images(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    walk(root, &mut out, &mut seen)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let canonical = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let mut entries: Vec<(OsString, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| {
            e.map(|e| (e.file_name(), e.path()))
                .map_err(|err| DataError::io(dir, err))
        })
        .collect::<Result<_>>()?;
    entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    for (_, path) in entries {
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else if has_image_ext(&path) {
            out.push(path);
        }
    }
    Ok(())
}

struct ListEntry {
    key: String,
    path: PathBuf,
    caption: Option<String>,
}

fn read_file_list(list: &Path) -> Result<Vec<Result<ListEntry>>> {
    let text = std::fs::read_to_string(list).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DataError::Config {
            field: list.display().to_string(),
            reason: "not a file list (one image path per line, UTF-8) nor an image (jpg/jpeg/png/webp/gif) nor a tar shard".into(),
        },
        _ => DataError::io(list, e),
    })?;
    let base = list.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (file, caption) = match line.split_once('\t') {
            Some((f, c)) => (
                f.trim(),
                Some(c.trim()).filter(|c| !c.is_empty()).map(str::to_string),
            ),
            None => (line.trim(), None),
        };
        let rel = Path::new(file);
        if !has_image_ext(rel) {
            out.push(Err(DataError::Sample {
                what: format!("{}:{}", list.display(), lineno + 1),
                reason: format!(
                    "`{file}` does not have an image extension (jpg/jpeg/png/webp/gif)"
                ),
            }));
            continue;
        }
        let path = if rel.is_absolute() {
            rel.to_path_buf()
        } else {
            base.join(rel)
        };
        let key = rel.with_extension("").to_string_lossy().replace('\\', "/");
        out.push(Ok(ListEntry { key, path, caption }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &str) -> Vec<String> {
        expand_braces(p).unwrap()
    }

    #[test]
    fn braces_like_braceexpand() {
        let v = ex("shard-{000..009}.tar");
        assert_eq!(v.len(), 10);
        assert_eq!(v[0], "shard-000.tar");
        assert_eq!(v[9], "shard-009.tar");
        assert_eq!(ex("{a,b}-{1..2}"), ["a-1", "a-2", "b-1", "b-2"]);
        assert_eq!(ex("x{1..10..4}"), ["x1", "x5", "x9"]);
        assert_eq!(ex("{3..1}"), ["3", "2", "1"]);
        assert_eq!(ex("{8..010}"), ["008", "009", "010"]);
        assert_eq!(ex("{a..c}"), ["a", "b", "c"]);
        assert_eq!(ex("{a,{b,c}d}"), ["a", "bd", "cd"]);
        assert_eq!(ex("plain.tar"), ["plain.tar"]);
        assert_eq!(ex("{x}"), ["{x}"], "no comma, no range: literal");
        assert_eq!(ex(r"a\{1,2\}"), ["a{1,2}"]);
        assert!(expand_braces("shard-{000..009.tar").is_err());
        assert!(expand_braces("a}b").is_err());
        assert!(expand_braces("{0..99999999}").is_err());
        assert!(expand_braces("{0..5..0}").is_err());
    }

    #[test]
    fn folder_keys_are_relative_without_extension() {
        assert_eq!(
            folder_key(Path::new("/r"), Path::new("/r/a/b.v2.jpg")),
            "a/b.v2"
        );
    }
}
