//! WebDataset tar shards: streaming reader, atomic size-capped writer, and the shard index.
//!
//! Reference: webdataset (`webdataset/tariterators.py`, `webdataset/writer.py`). A shard is a plain
//! POSIX tar; consecutive members that share a *key* form one sample. As in webdataset's
//! `base_plus_ext` (`^((?:.*/|)[^.]+)[.]([^/]*)$`), the key is the directory prefix plus the
//! basename up to its **first** dot, and the extension is everything after it, lowercased
//! (`dir/a.b.seg.png` → key `dir/a`, extension `b.seg.png`). Members whose basename has no dot
//! (or starts with one), webdataset's metadata (`__name__` or `__name__/...`), and non-regular
//! entries are skipped and counted. A key that reappears after a different key starts a new
//! sample, as in webdataset. Checked against webdataset 1.0.2 on a PAX tar written by Python
//! (`fixtures/shards/make_shards.py`). Deviation: webdataset raises on a duplicate member; we
//! report that one sample as an error and continue.
//!
//! Reader: a streaming parser over 512-byte tar blocks (header fields, checksums, GNU long names and
//! PAX paths are parsed with the `tar` crate's `Header`/`PaxExtensions`). We stream by hand rather
//! than through `tar::Archive` because `Archive::entries` borrows the archive (no owned iterator)
//! and, more importantly, cannot tell a tar cut on a member boundary from a complete one: we
//! require the end-of-archive zero block. Damage (short read, bad checksum, missing end marker,
//! I/O error, bad gzip) yields the samples completed *before* the damage, then exactly one
//! [`DataError::Shard`] error, then the iterator ends; the sample in progress is dropped because
//! it may be missing members. Sample-level problems (a duplicate member) yield one
//! [`DataError::Sample`] and iteration continues. Gzipped shards (`.tar.gz`, sniffed by magic)
//! are read transparently.
//!
//! Writer: members are written in sorted extension order with deterministic headers (mode 0444,
//! uid/gid 0, mtime 0), so rebuilding from the same inputs gives byte-identical shards. Shards roll
//! over by sample count and/or bytes (webdataset `ShardWriter(maxcount, maxsize)`); a single sample
//! larger than `max_bytes` is written alone in its own shard. A write is atomic at the level of the
//! directory: shards go into a hidden staging directory beside them (`.{prefix}-staging.tmp-<pid>`),
//! each as `name.tmp-<pid>`, fsynced and renamed; only [`ShardWriter::finish`] moves them in,
//! removes this prefix's shards of an earlier write that the new set does not replace, and then
//! writes the index. An error, a drop without `finish` or a kill therefore leaves the directory's
//! shards and index as they were (a kill leaves the staging directory, which the next writer in the
//! directory removes once its process is gone: [`remove_stale_temps`]).
//!
//! Index: `index.json` next to the shards lists `{file, samples, bytes}` per shard (webdataset has
//! no index; we keep one so samplers know shard sizes without reading every tar). Readers
//! ([`ShardIndex::open`]) check it against the files — every listed shard present with its size, no
//! unlisted shard beside them — and refuse one that disagrees; a directory of tars without an index
//! (as webdataset's and img2dataset's writers leave it) is read as it is, by scanning the tars.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::IMAGE_EXTENSIONS;
use crate::error::{DataError, Result};

/// Name of the shard index written next to the shards.
pub const INDEX_FILE: &str = "index.json";

const BLOCK: usize = 512;

/// One WebDataset sample: a key and its members by extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Directory prefix + basename up to the first dot (never contains a dot in its last component).
    pub key: String,
    /// Lowercase extension (everything after the first dot of the basename) -> member bytes.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Sample {
    /// An empty sample with this key.
    pub fn new(key: impl Into<String>) -> Self {
        Sample {
            key: key.into(),
            files: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a member; builder style.
    pub fn with(mut self, ext: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.insert(ext.into(), bytes.into());
        self
    }

    /// The image member, preferring `jpg`, `jpeg`, `png`, `webp`, `gif` in that order.
    pub fn image_bytes(&self) -> Option<(&str, &[u8])> {
        IMAGE_EXTENSIONS.iter().find_map(|ext| {
            self.files
                .get_key_value(*ext)
                .map(|(k, v)| (k.as_str(), v.as_slice()))
        })
    }

    /// The `txt` caption, trimmed; `None` when absent, empty or not UTF-8.
    pub fn caption(&self) -> Option<&str> {
        let text = std::str::from_utf8(self.files.get("txt")?).ok()?.trim();
        (!text.is_empty()).then_some(text)
    }

    /// The `cls` label: a decimal integer (surrounding whitespace allowed), as webdataset writes it.
    pub fn label(&self) -> Option<i64> {
        std::str::from_utf8(self.files.get("cls")?)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The `json` metadata, parsed; `None` when absent or not valid JSON.
    pub fn meta(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.files.get("json")?).ok()
    }

    /// Sum of member sizes in bytes.
    pub fn payload_bytes(&self) -> u64 {
        self.files.values().map(|v| v.len() as u64).sum()
    }
}

/// Splits a member name into `(key, extension)` exactly as webdataset's `base_plus_ext`:
/// the key keeps the directory prefix and the basename up to the first dot; the extension may be
/// empty (`name.`). `None` when the basename has no dot or starts with one.
pub fn split_member_name(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_start..].find('.')? + base_start;
    if dot == base_start {
        return None;
    }
    Some((&name[..dot], &name[dot + 1..]))
}

/// webdataset skips its own metadata: members whose first path component is `__name__`
/// (`tar_file_iterator`'s `skip_meta = r"__[^/]*__($|/)"` and the `__`/`__` prefix/suffix check).
fn is_meta_member(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    first.len() >= 4 && first.starts_with("__") && first.ends_with("__")
}

/// Opens tar shards for streaming.
pub struct ShardReader;

impl ShardReader {
    /// Streams the samples of one tar (or gzipped tar) file; see the module docs for the
    /// error contract (sample-level errors continue, damage ends the iteration).
    pub fn open(path: impl AsRef<Path>) -> Result<ShardIter> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        ShardIter::from_reader(path, file)
    }
}

/// Iterator over the samples of one shard (see [`ShardReader::open`]).
pub struct ShardIter {
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    pending: Option<Pending>,
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    done: bool,
    members: u64,
    skipped_members: Vec<String>,
}

struct Pending {
    sample: Sample,
    /// Set when the sample is invalid (duplicate member); it is reported instead of yielded.
    problem: Option<String>,
}

impl ShardIter {
    /// Streams samples from any reader; `path` is only used to name the shard in errors.
    /// Gzip input is detected from its magic bytes.
    pub fn from_reader(
        path: impl Into<PathBuf>,
        reader: impl Read + Send + 'static,
    ) -> Result<Self> {
        let path = path.into();
        let mut buffered = BufReader::with_capacity(1 << 20, reader);
        let head = buffered.fill_buf().map_err(|e| DataError::io(&path, e))?;
        let reader: Box<dyn Read + Send> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(buffered),
            ))
        } else {
            Box::new(buffered)
        };
        Ok(ShardIter {
            path,
            reader,
            pending: None,
            long_name: None,
            pax_path: None,
            done: false,
            members: 0,
            skipped_members: Vec::new(),
        })
    }

    /// The shard path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tar members read so far (including skipped ones).
    pub fn members(&self) -> u64 {
        self.members
    }

    /// Names of members skipped because they cannot belong to a sample (no extension,
    /// `__meta__`, non-UTF-8 name, non-regular entry).
    pub fn skipped_members(&self) -> &[String] {
        &self.skipped_members
    }

    /// `shard:key` for logs and summaries.
    pub fn what(&self, key: &str) -> String {
        format!("{}:{key}", self.path.display())
    }

    fn damage(&mut self, reason: String) -> Option<Result<Sample>> {
        self.done = true;
        let reason = match self.pending.take() {
            Some(p) => format!(
                "{reason}; dropped the sample in progress `{}`",
                p.sample.key
            ),
            None => reason,
        };
        Some(Err(DataError::Shard {
            path: self.path.clone(),
            reason,
        }))
    }

    fn finish_pending(&mut self, p: Pending) -> Result<Sample> {
        match p.problem {
            None => Ok(p.sample),
            Some(reason) => Err(DataError::Sample {
                what: self.what(&p.sample.key),
                reason,
            }),
        }
    }

    /// Reads up to `buf.len()` bytes; returns how many (fewer only at end of input).
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

fn header_checksum_ok(block: &[u8; BLOCK], header: &tar::Header) -> bool {
    let Ok(stored) = header.cksum() else {
        return false;
    };
    // POSIX: sum of all header bytes with the checksum field (148..156) read as spaces.
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum
}

fn trim_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

impl Iterator for ShardIter {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Result<Sample>> {
        loop {
            if self.done {
                return None;
            }
            let mut block = [0u8; BLOCK];
            let n = match self.read_full(&mut block) {
                Ok(n) => n,
                Err(e) => return self.damage(format!("read error: {e}")),
            };
            if n < BLOCK {
                let reason = if n == 0 && self.members == 0 {
                    "empty file (not a tar)".to_string()
                } else {
                    format!(
                        "truncated: ends without the end-of-archive block after {} members",
                        self.members
                    )
                };
                return self.damage(reason);
            }
            if block.iter().all(|&b| b == 0) {
                // End of archive. (POSIX writes two zero blocks; like GNU tar and the tar crate we
                // accept one. Anything after it is ignored.)
                self.done = true;
                let p = self.pending.take()?;
                return Some(self.finish_pending(p));
            }
            let header = tar::Header::from_byte_slice(&block);
            if !header_checksum_ok(&block, header) {
                return self.damage(format!(
                    "corrupt tar header (bad checksum) at member {}",
                    self.members
                ));
            }
            let size = match header.entry_size() {
                Ok(s) => s,
                Err(e) => return self.damage(format!("corrupt tar header: {e}")),
            };
            self.members += 1;
            let mut data = Vec::new();
            let got = match (&mut self.reader).take(size).read_to_end(&mut data) {
                Ok(n) => n as u64,
                Err(e) => return self.damage(format!("read error: {e}")),
            };
            let entry_type = header.entry_type();
            let name_bytes = if entry_type.is_pax_local_extensions() || entry_type.is_gnu_longname()
            {
                None
            } else {
                Some(
                    self.pax_path
                        .take()
                        .or_else(|| self.long_name.take())
                        .unwrap_or_else(|| header.path_bytes().into_owned()),
                )
            };
            if got < size {
                let name = name_bytes
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return self.damage(format!(
                    "truncated inside member `{name}` ({got} of {size} bytes)"
                ));
            }
            let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
            if pad > 0 {
                let mut padding = [0u8; BLOCK];
                match self.read_full(&mut padding[..pad]) {
                    Ok(k) if k == pad => {}
                    Ok(_) => return self.damage("truncated inside member padding".to_string()),
                    Err(e) => return self.damage(format!("read error: {e}")),
                }
            }
            if entry_type.is_gnu_longname() {
                self.long_name = Some(trim_nuls(data));
                continue;
            }
            if entry_type.is_pax_local_extensions() {
                for ext in tar::PaxExtensions::new(&data).flatten() {
                    if ext.key() == Ok("path") {
                        self.pax_path = Some(ext.value_bytes().to_vec());
                    }
                }
                continue;
            }
            let name_bytes = name_bytes.unwrap_or_default();
            let Ok(name) = String::from_utf8(name_bytes) else {
                self.skipped_members
                    .push(format!("<non-UTF-8 name at member {}>", self.members));
                continue;
            };
            if !(entry_type.is_file() || entry_type.is_contiguous()) {
                if !entry_type.is_dir() && !entry_type.is_pax_global_extensions() {
                    self.skipped_members.push(name);
                }
                continue;
            }
            if is_meta_member(&name) {
                self.skipped_members.push(name);
                continue;
            }
            let Some((key, ext)) = split_member_name(&name) else {
                self.skipped_members.push(name);
                continue;
            };
            let ext = ext.to_lowercase();
            match &mut self.pending {
                Some(p) if p.sample.key == key => {
                    if p.sample.files.contains_key(&ext) {
                        p.problem = Some(format!("duplicate member `{name}`"));
                    }
                    p.sample.files.insert(ext, data);
                }
                _ => {
                    let next = Pending {
                        sample: Sample::new(key).with(ext, data),
                        problem: None,
                    };
                    if let Some(done) = self.pending.replace(next) {
                        return Some(self.finish_pending(done));
                    }
                }
            }
        }
    }
}

/// When a [`ShardWriter`] starts a new shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLimits {
    /// At most this many samples per shard.
    pub max_samples: Option<usize>,
    /// At most this many tar bytes per shard (a single larger sample still gets its own shard).
    pub max_bytes: Option<u64>,
}

impl Default for ShardLimits {
    /// webdataset's `ShardWriter` defaults: 100 000 samples or 3 GB.
    fn default() -> Self {
        ShardLimits {
            max_samples: Some(100_000),
            max_bytes: Some(3_000_000_000),
        }
    }
}

/// One shard in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the index directory.
    pub file: String,
    /// Samples in the shard.
    pub samples: u64,
    /// Size of the tar file in bytes.
    pub bytes: u64,
}

/// The shard index (`index.json`) of one directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub shards: Vec<ShardEntry>,
}

#[derive(Serialize)]
struct IndexOut<'a> {
    format: &'static str,
    total_samples: u64,
    shards: &'a [ShardEntry],
}

impl ShardIndex {
    /// Reads `dir/index.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(INDEX_FILE);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let index: ShardIndex = serde_json::from_slice(&bytes).map_err(|e| DataError::Shard {
            path: path.clone(),
            reason: format!("bad index: {e}"),
        })?;
        for s in &index.shards {
            if Path::new(&s.file).is_absolute() || s.file.split('/').any(|c| c == "..") {
                return Err(DataError::Shard {
                    path,
                    reason: format!("shard path `{}` escapes the directory", s.file),
                });
            }
        }
        Ok(index)
    }

    /// Writes `dir/index.json` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let out = IndexOut {
            format: "webssl-shards/1",
            total_samples: self.total_samples(),
            shards: &self.shards,
        };
        let mut json = serde_json::to_vec_pretty(&out).map_err(|e| DataError::Shard {
            path: dir.as_ref().join(INDEX_FILE),
            reason: format!("cannot serialise index: {e}"),
        })?;
        json.push(b'\n');
        write_atomic(dir.as_ref().join(INDEX_FILE), &json)
    }

    /// The shards of `dir` for reading: its `index.json`, checked against the files
    /// ([`ShardIndex::check_files`]), or, when there is none, an index made by reading every tar
    /// ([`ShardIndex::scan`]; nothing is written into the directory). No shards at all is an error.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index = match Self::load(dir) {
            Ok(index) => {
                index.check_files(dir)?;
                index
            }
            Err(DataError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && dir.is_dir() =>
            {
                let index = Self::scan(dir)?;
                tracing::info!(
                    "{}: no {INDEX_FILE}; read {} shards ({} samples) as they are",
                    dir.display(),
                    index.shards.len(),
                    index.total_samples()
                );
                index
            }
            Err(e) => return Err(e),
        };
        if index.shards.is_empty() {
            return Err(DataError::Shard {
                path: dir.to_path_buf(),
                reason: "no tar shards here".into(),
            });
        }
        Ok(index)
    }

    /// Checks the index against the directory, cheaply (file sizes, no reading): every listed
    /// shard exists with the listed size, and no `*.tar`/`*.tar.gz`/`*.tgz` beside the index is
    /// missing from it. A disagreement means the files were changed after the index was written (an
    /// interrupted rewrite, shards copied in or out by hand), so the sample counts the sampler
    /// would rely on are wrong: an error naming the shard.
    pub fn check_files(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let refuse = |reason: String| {
            Err(DataError::Shard {
                path: dir.join(INDEX_FILE),
                reason: format!(
                    "{reason}; the index does not describe these shards: rebuild them, or delete {INDEX_FILE} to read the tars as they are"
                ),
            })
        };
        for s in &self.shards {
            let path = dir.join(&s.file);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == s.bytes => {}
                Ok(m) => {
                    return refuse(format!(
                        "`{}` is {} bytes, the index says {}",
                        s.file,
                        m.len(),
                        s.bytes
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return refuse(format!("`{}` is listed but missing", s.file));
                }
                Err(e) => return Err(DataError::io(&path, e)),
            }
        }
        let listed: std::collections::HashSet<&str> =
            self.shards.iter().map(|s| s.file.as_str()).collect();
        let unlisted: Vec<String> = list_shard_files(dir)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| !listed.contains(n.as_str()))
            .collect();
        if let Some(first) = unlisted.first() {
            return refuse(format!(
                "{} shard file(s) here are not in it (`{first}`…)",
                unlisted.len()
            ));
        }
        Ok(())
    }

    /// Builds an index by reading every `*.tar`/`*.tar.gz`/`*.tgz` directly in `dir` (sorted by
    /// name). Damaged shards are counted up to the damage.
    pub fn scan(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut shards = Vec::new();
        for path in list_shard_files(dir)? {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| DataError::io(&path, e))?
                .len();
            let samples = ShardReader::open(&path)?.filter(|r| r.is_ok()).count() as u64;
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            shards.push(ShardEntry {
                file,
                samples,
                bytes,
            });
        }
        Ok(ShardIndex { shards })
    }

    /// Total samples over all shards.
    pub fn total_samples(&self) -> u64 {
        self.shards.iter().map(|s| s.samples).sum()
    }

    /// Absolute-or-relative paths of the shards, joined onto `dir`.
    pub fn paths(&self, dir: impl AsRef<Path>) -> Vec<PathBuf> {
        self.shards
            .iter()
            .map(|s| dir.as_ref().join(&s.file))
            .collect()
    }
}

/// Tar shard files directly inside `dir`, sorted by name.
pub fn list_shard_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_lowercase();
        let is_shard =
            name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz");
        if is_shard && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `{prefix}-{index:06}.tar`.
pub fn shard_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:06}.tar")
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|f| f.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Whether process `pid` exists on this host (`kill(pid, 0)`; EPERM means it exists under another
/// user). Where that cannot be asked, every process counts as alive.
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: signal 0 only checks existence and permission.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes what killed writers left in `dir`: files and directories named `….tmp-<pid>` (temp
/// shards, `index.json.tmp-…`, `summary.json.tmp-…`, staging directories) whose process is gone. A
/// live process's temp files are left alone (it may be writing beside us). Returns how many were
/// removed; each is logged.
pub fn remove_stale_temps(dir: impl AsRef<Path>) -> Result<usize> {
    let dir = dir.as_ref();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => {
                tracing::warn!(
                    "removed {}, left by an interrupted run (pid {pid})",
                    path.display()
                );
                removed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&path, e)),
        }
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable. Best effort: some filesystems refuse fsync on directories.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: `path.tmp-<pid>`, fsync, rename, fsync the directory.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Counts bytes (for size-capped shards) and, in tests, injects a write failure.
struct CountingWriter<W> {
    inner: W,
    count: u64,
    fail_after: Option<u64>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.fail_after
            && self.count + buf.len() as u64 > limit
        {
            return Err(io::Error::other("injected write failure"));
        }
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct OpenShard {
    builder: Option<tar::Builder<CountingWriter<BufWriter<File>>>>,
    tmp: PathBuf,
    path: PathBuf,
    file: String,
    samples: u64,
}

impl OpenShard {
    fn bytes(&self) -> u64 {
        self.builder.as_ref().map_or(0, |b| b.get_ref().count)
    }
}

impl Drop for OpenShard {
    fn drop(&mut self) {
        // Unfinished (error or drop without finish): never leave the temp file behind.
        // `tar::Builder`'s own drop only appends end blocks to the temp file, which we then delete.
        if let Some(b) = self.builder.take() {
            drop(b);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes samples into `{prefix}-{000000}.tar` shards in one directory (see module docs).
pub struct ShardWriter {
    dir: PathBuf,
    /// Where the shards are written until [`ShardWriter::finish`] moves them into `dir`.
    stage: PathBuf,
    prefix: String,
    limits: ShardLimits,
    current: Option<OpenShard>,
    written: Vec<ShardEntry>,
    next_index: usize,
    failed: bool,
    fail_after: Option<u64>,
}

fn config_err(field: &str, reason: impl Into<String>) -> DataError {
    DataError::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Checks that a key/extension pair round-trips through webdataset's name splitting.
pub fn validate_member(key: &str, ext: &str) -> Result<()> {
    let what = format!("{key}.{ext}");
    let bad = |reason: &str| {
        Err(DataError::Sample {
            what: what.clone(),
            reason: reason.to_string(),
        })
    };
    let base = key.rsplit('/').next().unwrap_or(key);
    if key.is_empty() || base.is_empty() {
        return bad("empty key");
    }
    if base.contains('.') {
        return bad("the key's basename must not contain '.' (webdataset splits at the first dot)");
    }
    if key.starts_with('/') || key.split('/').any(|c| c == ".." || c.is_empty()) {
        return bad("the key must be a relative path without '..' or empty components");
    }
    if key.contains('\0') || ext.contains('\0') {
        return bad("NUL byte in name");
    }
    if ext.is_empty() || ext.contains('/') {
        return bad("the extension must be non-empty and contain no '/'");
    }
    if ext != ext.to_lowercase() {
        return bad("extensions must be lowercase (readers lowercase them)");
    }
    if is_meta_member(&what) {
        return bad("`__name__` members are reserved by webdataset");
    }
    Ok(())
}

impl ShardWriter {
    /// Creates `dir` if needed; shards are named `{prefix}-{000000}.tar`.
    pub fn create(dir: impl AsRef<Path>, prefix: &str, limits: ShardLimits) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if prefix.is_empty() || prefix.contains('/') || prefix.contains('\\') {
            return Err(config_err(
                "prefix",
                format!("`{prefix}` must be a non-empty file name"),
            ));
        }
        if limits.max_samples == Some(0) {
            return Err(config_err("max_samples", "must be at least 1"));
        }
        if limits.max_bytes == Some(0) {
            return Err(config_err("max_bytes", "must be at least 1"));
        }
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        remove_stale_temps(&dir)?;
        let stage = dir.join(format!(".{prefix}-staging.tmp-{}", std::process::id()));
        // Exists only if this process wrote here before and that writer is still alive; two
        // writers of one prefix in one directory at once would overwrite each other's shards.
        std::fs::create_dir(&stage).map_err(|e| DataError::io(&stage, e))?;
        Ok(ShardWriter {
            dir,
            stage,
            prefix: prefix.to_string(),
            limits,
            current: None,
            written: Vec::new(),
            next_index: 0,
            failed: false,
            fail_after: None,
        })
    }

    /// The shards finished so far.
    pub fn shards_written(&self) -> &[ShardEntry] {
        &self.written
    }

    /// Total samples written so far (finished shards and the open one).
    pub fn samples_written(&self) -> u64 {
        self.written.iter().map(|s| s.samples).sum::<u64>()
            + self.current.as_ref().map_or(0, |c| c.samples)
    }

    /// Appends one sample. A sample with an invalid name is rejected without side effects; an I/O
    /// error removes the shard being written and makes every later call fail.
    pub fn write(&mut self, sample: &Sample) -> Result<()> {
        if self.failed {
            return Err(config_err(
                "shard writer",
                "an earlier write failed; the writer is unusable",
            ));
        }
        if sample.files.is_empty() {
            return Err(DataError::Sample {
                what: sample.key.clone(),
                reason: "sample has no members".into(),
            });
        }
        for ext in sample.files.keys() {
            validate_member(&sample.key, ext)?;
        }
        let estimate: u64 = sample
            .files
            .iter()
            .map(|(ext, data)| {
                let name_len = sample.key.len() + 1 + ext.len();
                // Header, padded data, and a GNU long-name entry for names over 100 bytes.
                let long = if name_len > 100 {
                    BLOCK as u64 + (name_len as u64).div_ceil(512) * 512
                } else {
                    0
                };
                BLOCK as u64 + (data.len() as u64).div_ceil(512) * 512 + long
            })
            .sum();
        let rotate = self.current.as_ref().is_some_and(|c| {
            c.samples > 0
                && (self
                    .limits
                    .max_samples
                    .is_some_and(|m| c.samples >= m as u64)
                    || self
                        .limits
                        .max_bytes
                        .is_some_and(|m| c.bytes() + estimate + 2 * BLOCK as u64 > m))
        });
        let result = (|| {
            if rotate {
                self.finish_current()?;
            }
            if self.current.is_none() {
                self.open_next()?;
            }
            let cur = self.current.as_mut().expect("opened above");
            let builder = cur.builder.as_mut().expect("open shard has a builder");
            for (ext, data) in &sample.files {
                let name = format!("{}.{ext}", sample.key);
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_mode(0o444);
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_entry_type(tar::EntryType::Regular);
                builder
                    .append_data(&mut header, &name, data.as_slice())
                    .map_err(|e| DataError::io(&cur.tmp, e))?;
            }
            cur.samples += 1;
            Ok(())
        })();
        if result.is_err() {
            self.failed = true;
            self.current = None; // drops the temp file
        }
        result
    }

    fn open_next(&mut self) -> Result<()> {
        let file = shard_name(&self.prefix, self.next_index);
        let path = self.stage.join(&file);
        let tmp = tmp_path(&path);
        let f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let counting = CountingWriter {
            inner: BufWriter::with_capacity(1 << 20, f),
            count: 0,
            fail_after: self.fail_after,
        };
        let mut builder = tar::Builder::new(counting);
        builder.mode(tar::HeaderMode::Deterministic);
        self.current = Some(OpenShard {
            builder: Some(builder),
            tmp,
            path,
            file,
            samples: 0,
        });
        self.next_index += 1;
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        let builder = cur.builder.take().expect("open shard has a builder");
        let result = (|| {
            let counting = builder.into_inner()?;
            let bytes = counting.count;
            let file = counting.inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&cur.tmp, &cur.path)?;
            Ok::<_, io::Error>(bytes)
        })();
        match result {
            Ok(bytes) => {
                self.written.push(ShardEntry {
                    file: cur.file.clone(),
                    samples: cur.samples,
                    bytes,
                });
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&cur.tmp);
                Err(DataError::io(&cur.path, e))
            }
        }
    }

    /// Finishes the open shard and commits the write: the new shards move from the staging
    /// directory into `dir`, this prefix's shards of an earlier write that they do not replace are
    /// removed, and `dir/index.json` is written atomically (entries of other prefixes kept, this
    /// prefix's replaced). Returns the index as written. Until this call the directory is as it was.
    pub fn finish(mut self) -> Result<ShardIndex> {
        if self.failed {
            return Err(config_err(
                "shard writer",
                "an earlier write failed; nothing was indexed",
            ));
        }
        if let Err(e) = self.finish_current() {
            self.failed = true;
            return Err(e);
        }
        let mut index = match ShardIndex::load(&self.dir) {
            Ok(i) => i,
            Err(DataError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                ShardIndex::default()
            }
            Err(e) => return Err(e),
        };
        let ours = |file: &str| {
            file.strip_prefix(&self.prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".tar"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        // The commit. A kill in here leaves the old index beside some new shards, which readers
        // refuse (sizes and names disagree) instead of training on them.
        for w in &self.written {
            let (from, to) = (self.stage.join(&w.file), self.dir.join(&w.file));
            std::fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
        }
        let mut stale = 0;
        for path in list_shard_files(&self.dir)? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if ours(&name) && !self.written.iter().any(|w| w.file == name) {
                std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
                stale += 1;
            }
        }
        if stale > 0 {
            tracing::info!(
                "{}: removed {stale} `{}-*.tar` shard(s) of an earlier write that this one does not replace",
                self.dir.display(),
                self.prefix
            );
        }
        index.shards.retain(|s| !ours(&s.file));
        index.shards.extend(self.written.iter().cloned());
        index.shards.sort_by(|a, b| a.file.cmp(&b.file));
        index.save(&self.dir)?;
        Ok(index)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // After `finish` the staging directory is empty; after an error or without `finish` it
        // holds shards that were never committed.
        self.current = None;
        let _ = std::fs::remove_dir_all(&self.stage);
    }
}

#[cfg(test)]
impl ShardWriter {
    /// Makes the underlying file writer fail once this many bytes would be exceeded (tests only).
    fn inject_write_failure_after(&mut self, bytes: u64) {
        self.fail_after = Some(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tars_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn splits_names_like_webdataset() {
        assert_eq!(split_member_name("a.b.seg.png"), Some(("a", "b.seg.png")));
        assert_eq!(
            split_member_name("dir.x/sub/k1.JPG"),
            Some(("dir.x/sub/k1", "JPG"))
        );
        assert_eq!(split_member_name("./a.jpg"), Some(("./a", "jpg")));
        assert_eq!(split_member_name("noext"), None);
        assert_eq!(split_member_name("dir/.hidden"), None);
        assert_eq!(split_member_name("a."), Some(("a", "")));
        assert!(is_meta_member("__key__") && is_meta_member("__meta__/x.txt"));
        assert!(!is_meta_member("d/__key__") && !is_meta_member("__x__.jpg"));
    }

    #[test]
    fn io_failure_mid_shard_leaves_no_tar() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(
            dir.path(),
            "shard",
            ShardLimits {
                max_samples: Some(2),
                max_bytes: None,
            },
        )
        .unwrap();
        // Samples 0 and 1 fill shard 0, which is finished and renamed when sample 2 opens shard 1.
        // Shard 1 gets an injected 2.5 KB write limit; sample 3's 4 KB member overflows it.
        for i in 0..3 {
            if i == 2 {
                w.inject_write_failure_after(2_560);
            }
            w.write(&Sample::new(format!("k{i}")).with("bin", vec![i as u8; 600]))
                .unwrap();
        }
        let err = w
            .write(&Sample::new("k3").with("bin", vec![3u8; 4000]))
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(
            w.write(&Sample::new("k4").with("bin", vec![1u8])).is_err(),
            "writer must stay failed"
        );
        assert!(w.finish().is_err());
        // Nothing was committed: the directory is as it was (empty), no shard, temp file or
        // staging directory left.
        assert!(tars_in(dir.path()).is_empty(), "{:?}", tars_in(dir.path()));
    }

    #[test]
    fn drop_without_finish_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(dir.path(), "p", ShardLimits::default()).unwrap();
        w.write(&Sample::new("a").with("txt", "x")).unwrap();
        let stage = format!(".p-staging.tmp-{}", std::process::id());
        assert_eq!(
            tars_in(dir.path()),
            std::slice::from_ref(&stage),
            "only the staging dir"
        );
        assert!(tars_in(&dir.path().join(&stage))[0].starts_with("p-000000.tar.tmp-"));
        drop(w);
        assert!(tars_in(dir.path()).is_empty());
    }

    #[test]
    fn rewrite_commits_at_finish_and_readers_refuse_a_lying_index() {
        let dir = tempfile::tempdir().unwrap();
        let write = |n: usize, per_shard: usize| {
            let limits = ShardLimits {
                max_samples: Some(per_shard),
                max_bytes: None,
            };
            let mut w = ShardWriter::create(dir.path(), "t", limits).unwrap();
            for i in 0..n {
                w.write(&Sample::new(format!("k{i}")).with("txt", "x"))
                    .unwrap();
            }
            w
        };
        let old = write(8, 2).finish().unwrap();
        assert_eq!(old.shards.len(), 4);
        // A rewrite with another shard size, not finished (a kill): the old shards and index stand.
        let w = write(8, 3);
        assert_eq!(ShardIndex::open(dir.path()).unwrap(), old);
        std::mem::forget(w); // as a kill would: no drop, the staging dir stays
        let stale = format!(".t-staging.tmp-{}", std::process::id());
        assert!(dir.path().join(&stale).is_dir());
        // Finished: 3 shards, the 4th old one removed, the index agrees.
        std::fs::remove_dir_all(dir.path().join(&stale)).unwrap(); // (our pid is alive)
        let new = write(8, 3).finish().unwrap();
        assert_eq!(new.shards.len(), 3);
        assert_eq!(ShardIndex::open(dir.path()).unwrap(), new);
        assert_eq!(
            tars_in(dir.path()),
            ["index.json", "t-000000.tar", "t-000001.tar", "t-000002.tar"]
        );
        // What an interrupted commit (or an older writer) leaves: the old index beside other files.
        old.save(dir.path()).unwrap();
        let err = ShardIndex::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("t-000000.tar") && err.contains("bytes"),
            "{err}"
        );
        new.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("t-000009.tar"), b"").unwrap();
        let err = ShardIndex::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not in it") && err.contains("t-000009.tar"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("t-000002.tar")).unwrap();
        let err = ShardIndex::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("t-000002.tar") && err.contains("missing"),
            "{err}"
        );
        // Without an index the tars are read as they are.
        std::fs::remove_file(dir.path().join("t-000009.tar")).unwrap();
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        let scanned = ShardIndex::open(dir.path()).unwrap();
        assert_eq!(scanned.total_samples(), 6);
        assert!(
            !dir.path().join(INDEX_FILE).exists(),
            "reading writes nothing"
        );
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's pid_max (4194304) cannot exist.
        let dead = 4_294_967u32;
        let me = std::process::id();
        for name in [
            format!("t-000000.tar.tmp-{dead}"),
            format!("summary.json.tmp-{dead}"),
            format!("t-000001.tar.tmp-{me}"),
            "notes.tmp-x".to_string(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".t-staging.tmp-{dead}"))).unwrap();
        std::fs::write(
            dir.path()
                .join(format!(".t-staging.tmp-{dead}/t-000000.tar")),
            b"x",
        )
        .unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 3);
        assert_eq!(
            tars_in(dir.path()),
            ["notes.tmp-x".to_string(), format!("t-000001.tar.tmp-{me}")],
            "a live process's temp files and other names stay"
        );
    }

    #[test]
    fn invalid_names_are_rejected_without_poisoning() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(dir.path(), "p", ShardLimits::default()).unwrap();
        for (key, ext) in [
            ("a.b", "jpg"),
            ("", "jpg"),
            ("../x", "jpg"),
            ("a", "JPG"),
            ("a", ""),
            ("/abs", "txt"),
        ] {
            assert!(
                w.write(&Sample::new(key).with(ext, "x")).is_err(),
                "{key}.{ext}"
            );
        }
        w.write(&Sample::new("ok/dir.v2/k").with("txt", "fine"))
            .unwrap();
        let index = w.finish().unwrap();
        assert_eq!(index.total_samples(), 1);
        let s: Vec<Sample> = ShardReader::open(dir.path().join("p-000000.tar"))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(s[0].key, "ok/dir.v2/k");
    }
}
