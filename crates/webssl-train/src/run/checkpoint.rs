//! Crash-safe checkpoint directories with last-N retention and `--resume auto|never|PATH`.
//!
//! A checkpoint is a directory `checkpoints/step-{step:09}/` holding the caller's files (the
//! serialized TrainState: params, optimizer moments, EMA teacher, schedules, RNG seeds, data
//! cursor) plus a `COMPLETE` manifest listing every file with its length and CRC-32C.
//!
//! Write protocol ([`CheckpointManager::save`]): all files go into `.tmp-step-…` in the same
//! parent, each fsynced, the manifest last, the temp dir fsynced, then one `rename` puts the
//! directory in place and the parent is fsynced. A crash at any moment therefore leaves the
//! previous checkpoints plus either nothing new or the complete new one; a leftover `.tmp-*` dir
//! is never mistaken for a checkpoint, and a `step-*` dir without a valid `COMPLETE` manifest
//! (copied by hand, truncated by a full disk) is ignored by [`CheckpointManager::latest`].
//! [`CheckpointManager::load_file`] re-checks length and CRC, and a resume verifies every file of
//! the checkpoint before anything is read ([`CheckpointManager::verify`]; the tensor files are
//! memory-mapped, which checks nothing), so silent corruption is an error naming the file, not a
//! mysteriously diverging run. `--resume auto` then falls back to the previous intact checkpoint
//! with a warning ([`CheckpointManager::latest_intact`]).
//!
//! "latest" is derived by listing complete directories instead of a separate pointer file: a
//! pointer is a second source of truth that can disagree with the directories after a crash.
//!
//! Reference: docs/design.md "Checkpoints"; open_clip `--resume latest`, solo-learn
//! `auto_resume`, dinov2's default resume (docs/reference/ecosystem-and-style.md §2.10.8). Deviation from
//! "keep last N + best": the best-by-metric rule is left to the caller (it needs eval results); instead
//! [`CheckpointManager::with_keep_every`] keeps milestone checkpoints (every N steps) forever, which
//! is what scaling-curve evaluations over training need.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::sync_dir;
use crate::error::{Result, TrainError};

/// Name of the checkpoints folder inside a run dir.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The completion marker / manifest written last into every checkpoint directory.
pub const MANIFEST: &str = "COMPLETE";
const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestEntry {
    name: String,
    bytes: u64,
    crc32c: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    step: u64,
    files: Vec<ManifestEntry>,
}

/// Saves, lists and prunes the checkpoints of one run.
#[derive(Debug, Clone)]
pub struct CheckpointManager {
    dir: PathBuf,
    keep_last: usize,
    keep_every: Option<u64>,
}

impl CheckpointManager {
    /// Manages `run_dir/checkpoints`, keeping the newest `keep_last` complete checkpoints
    /// (`keep_last == 0` keeps all). The folder is created on the first save.
    pub fn new(run_dir: impl AsRef<Path>, keep_last: usize) -> Self {
        CheckpointManager {
            dir: run_dir.as_ref().join(CHECKPOINTS_DIR),
            keep_last,
            keep_every: None,
        }
    }

    /// Also keep, forever, every checkpoint whose step is a multiple of `every` (0 = off).
    pub fn with_keep_every(mut self, every: u64) -> Self {
        self.keep_every = (every > 0).then_some(every);
        self
    }

    /// The `checkpoints/` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path that the checkpoint of `step` has (or will have).
    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{step:09}"))
    }

    /// Writes `step-{step:09}/` with the given files atomically (see the module docs), then prunes
    /// to the retention policy. Returns the checkpoint's path. File names must be plain names
    /// (no `/`, not `.`/`..`, not `COMPLETE`) and unique. Saving a step that already exists
    /// replaces it (the old copy is moved aside first and removed after the new one is in place).
    pub fn save(&self, step: u64, files: &[(&str, Vec<u8>)]) -> Result<PathBuf> {
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        self.save_streamed(step, &names, |i| {
            Ok(std::borrow::Cow::Borrowed(&files[i].1))
        })
    }

    /// [`CheckpointManager::save`] with each file's bytes made by `produce(i)` (for `names[i]`) just
    /// before it is written and dropped right after, so only one file is in memory at a time (a model's
    /// weights, then its teacher's, then the optimizer state — not all of them at once).
    pub fn save_streamed<'a>(
        &self,
        step: u64,
        names: &[&str],
        mut produce: impl FnMut(usize) -> Result<std::borrow::Cow<'a, [u8]>>,
    ) -> Result<PathBuf> {
        let mut seen = BTreeSet::new();
        for name in names {
            validate_name(name).map_err(|reason| TrainError::Checkpoint {
                path: self.step_dir(step),
                reason,
            })?;
            if !seen.insert(*name) {
                return Err(TrainError::Checkpoint {
                    path: self.step_dir(step),
                    reason: format!("file `{name}` given twice"),
                });
            }
        }
        fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{PREFIX}{step:09}-{}-{nonce}",
            std::process::id()
        ));
        let final_dir = self.step_dir(step);

        let mut write = || -> std::result::Result<(), WriteError> {
            fs::create_dir(&tmp)?;
            let mut entries = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                let bytes = produce(i).map_err(WriteError::Produce)?;
                let bytes = &bytes[..];
                write_synced(&tmp.join(name), bytes)?;
                entries.push(ManifestEntry {
                    name: name.to_string(),
                    bytes: bytes.len() as u64,
                    crc32c: crc32c::crc32c(bytes),
                });
            }
            let manifest = Manifest {
                step,
                files: entries,
            };
            let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
            write_synced(&tmp.join(MANIFEST), &text)?;
            sync_dir(&tmp)?;
            // rename(2) cannot replace a non-empty directory: move an existing copy aside first.
            // A crash between the two renames loses only this step's *old* copy; earlier
            // checkpoints are untouched, so `latest` falls back to the previous one.
            let trash = self.dir.join(format!(
                "{TRASH_PREFIX}{PREFIX}{step:09}-{}-{nonce}",
                std::process::id()
            ));
            let had_old = match fs::rename(&final_dir, &trash) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            fs::rename(&tmp, &final_dir)?;
            sync_dir(&self.dir)?;
            if had_old {
                fs::remove_dir_all(&trash)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(match e {
                WriteError::Io(e) => TrainError::io(&final_dir, e),
                WriteError::Produce(e) => e,
            });
        }
        self.prune(step)?;
        Ok(final_dir)
    }

    /// All complete checkpoints, oldest first. Temp dirs, trash dirs and `step-*` dirs without a
    /// valid manifest are skipped (the latter with a warning, since a human may want to look).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(step) = name.to_str().and_then(parse_step_name) else {
                continue;
            };
            let path = entry.path();
            match read_manifest(&path) {
                Ok(m) if m.step == step => out.push((step, path)),
                Ok(m) => {
                    tracing::warn!(dir = %path.display(), manifest_step = m.step, "checkpoint manifest names another step; ignored")
                }
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "incomplete checkpoint ignored")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<(u64, PathBuf)>> {
        Ok(self.list()?.pop())
    }

    /// The newest checkpoint whose every file matches its manifest ([`CheckpointManager::verify`]),
    /// for a resume. A damaged one is skipped with a warning naming the file, so the run falls back
    /// to the previous complete checkpoint (`keep_last` of them are kept); when there are
    /// checkpoints but none is intact, that is an error (a silent fresh start would throw the
    /// run's progress away).
    pub fn latest_intact(&self) -> Result<Option<(u64, PathBuf)>> {
        let all = self.list()?;
        let mut damaged = Vec::new();
        for (step, path) in all.iter().rev() {
            match Self::verify(path) {
                Ok(()) => return Ok(Some((*step, path.clone()))),
                Err(e) => {
                    tracing::warn!(
                        "checkpoint of step {step} is damaged, falling back to the previous one: {e}"
                    );
                    damaged.push(e.to_string());
                }
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        Err(TrainError::Checkpoint {
            path: self.dir.clone(),
            reason: format!(
                "none of the {} checkpoints is intact ({}); resume from a copy with --resume PATH or start over with --resume never",
                damaged.len(),
                damaged.join("; ")
            ),
        })
    }

    /// Checks every file listed in checkpoint `dir`'s manifest (length and CRC-32C), reading each
    /// in chunks. A resume opens the tensor files by memory map, which checks nothing: this is what
    /// stands between a flipped bit on disk and a silently different run.
    pub fn verify(dir: &Path) -> Result<()> {
        let manifest = read_manifest(dir).map_err(|reason| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        })?;
        for entry in &manifest.files {
            let path = dir.join(&entry.name);
            let (bytes, crc) = crc_of_file(&path).map_err(|e| TrainError::io(&path, e))?;
            check_entry(&path, entry, bytes, crc)?;
        }
        Ok(())
    }

    /// Reads one file of checkpoint `dir`, verifying its length and CRC-32C against the manifest.
    pub fn load_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
        let manifest = read_manifest(dir).map_err(|reason| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        })?;
        let Some(entry) = manifest.files.iter().find(|e| e.name == name) else {
            let names: Vec<&str> = manifest.files.iter().map(|e| e.name.as_str()).collect();
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "no file `{name}` in this checkpoint (it has: {})",
                    names.join(", ")
                ),
            });
        };
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        check_entry(&path, entry, bytes.len() as u64, crc32c::crc32c(&bytes))?;
        Ok(bytes)
    }

    /// The names of the files stored in checkpoint `dir` (from its manifest).
    pub fn file_names(dir: &Path) -> Result<Vec<String>> {
        let manifest = read_manifest(dir).map_err(|reason| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        })?;
        Ok(manifest.files.into_iter().map(|e| e.name).collect())
    }

    /// The step recorded in checkpoint `dir`'s manifest.
    pub fn step_of(dir: &Path) -> Result<u64> {
        read_manifest(dir)
            .map(|m| m.step)
            .map_err(|reason| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason,
            })
    }

    /// Applies the retention policy and removes leftovers of crashed saves. Only called after a
    /// successful save, and the run dir is locked (one writer), so every `.tmp-*`/`.trash-*` dir
    /// here is stale. Retention counts back from the checkpoint just saved (`saved`), which is
    /// never removed; later steps are left alone: they are a damaged checkpoint that a resume fell
    /// back past, or an earlier run's (`--resume never`), and this run replaces them when it gets
    /// there — pruning by step alone would delete the checkpoint just written instead.
    fn prune(&self, saved: u64) -> Result<()> {
        let mut complete = self.list()?;
        complete.retain(|(step, _)| *step <= saved);
        if self.keep_last > 0 && complete.len() > self.keep_last {
            let cut = complete.len() - self.keep_last;
            for (step, path) in &complete[..cut] {
                if self.keep_every.is_some_and(|every| step % every == 0) {
                    continue;
                }
                fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
            }
        }
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for entry in rd.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
                    tracing::warn!(dir = %entry.path().display(), "removing leftover of an interrupted checkpoint save");
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!("`{name}` is not a plain file name"));
    }
    if name == MANIFEST {
        return Err(format!(
            "`{MANIFEST}` is reserved for the checkpoint manifest"
        ));
    }
    Ok(())
}

/// `step-000001000` -> 1000; anything else (temp dirs, other files) -> None.
fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_manifest(dir: &Path) -> std::result::Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes =
        fs::read(&path).map_err(|e| format!("{}: {e} (checkpoint incomplete)", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable manifest: {e}", path.display()))
}

/// Length and CRC-32C of a file, streamed (tensor files can be larger than we want in memory twice).
fn crc_of_file(path: &Path) -> io::Result<(u64, u32)> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok((len, crc)),
            Ok(n) => {
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A file's length and CRC-32C against its manifest entry; the error names the file.
fn check_entry(path: &Path, entry: &ManifestEntry, bytes: u64, crc: u32) -> Result<()> {
    if bytes == entry.bytes && crc == entry.crc32c {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!(
            "corrupt: {bytes} bytes / crc32c {crc:08x} on disk, manifest says {} bytes / {:08x}",
            entry.bytes, entry.crc32c
        ),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Where a run starts: `--resume auto` (default) | `never` | `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// The newest complete checkpoint of this run dir if there is one, else a fresh start.
    #[default]
    Auto,
    /// Always start fresh (existing checkpoints are kept; new ones are added beside them).
    Never,
    /// A checkpoint dir (`…/step-000001000`), a `checkpoints/` dir, or a run dir (its latest).
    From(PathBuf),
}

impl FromStr for Resume {
    type Err = TrainError;
    /// `auto` and `never` are keywords (case-insensitive); anything else is a path (write `./auto`
    /// for a directory called `auto`). An empty string is an error.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" => Err(TrainError::config(
                "resume",
                "expected `auto`, `never` or a checkpoint path, got an empty string",
            )),
            k if k.eq_ignore_ascii_case("auto") => Ok(Resume::Auto),
            k if k.eq_ignore_ascii_case("never") => Ok(Resume::Never),
            _ => Ok(Resume::From(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resume::Auto => f.write_str("auto"),
            Resume::Never => f.write_str("never"),
            Resume::From(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Resume {
    /// Parses `auto` | `never` | PATH (same as `str::parse`).
    pub fn parse(s: &str) -> Result<Self> {
        s.parse()
    }

    /// The checkpoint to resume from: `(step, dir)`, or `None` for a fresh start. `From(path)`
    /// must lead to a complete checkpoint (an explicit request that cannot be honoured is an
    /// error, never a silent fresh start).
    pub fn resolve(&self, manager: &CheckpointManager) -> Result<Option<(u64, PathBuf)>> {
        match self {
            Resume::Never => Ok(None),
            Resume::Auto => manager.latest_intact(),
            Resume::From(path) => {
                if path.join(MANIFEST).is_file() {
                    // Asked for by name: a damaged one is an error, not a reason to pick another.
                    let step = CheckpointManager::step_of(path)?;
                    CheckpointManager::verify(path)?;
                    return Ok(Some((step, path.clone())));
                }
                if !path.is_dir() {
                    return Err(TrainError::Checkpoint {
                        path: path.clone(),
                        reason: "no such checkpoint directory".into(),
                    });
                }
                // A checkpoints/ dir or a run dir: take its newest complete checkpoint.
                let as_ckpts = CheckpointManager {
                    dir: path.clone(),
                    keep_last: 0,
                    keep_every: None,
                };
                let as_run = CheckpointManager::new(path, 0);
                if let Some(found) = as_ckpts.latest_intact()?.or(as_run.latest_intact()?) {
                    return Ok(Some(found));
                }
                Err(TrainError::Checkpoint {
                    path: path.clone(),
                    reason: format!(
                        "no complete checkpoint here (expected a `{MANIFEST}` file, a `step-*` dir or a run dir with `{CHECKPOINTS_DIR}/`)"
                    ),
                })
            }
        }
    }
}

/// Why writing a checkpoint directory failed: the filesystem, or making a file's bytes.
enum WriteError {
    Io(io::Error),
    Produce(TrainError),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(step: u64) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (
                "model.safetensors",
                (0..1000u32).map(|i| (i * 7 + step as u32) as u8).collect(),
            ),
            ("state.json", format!("{{\"step\":{step}}}").into_bytes()),
            ("empty.bin", Vec::new()),
        ]
    }

    #[test]
    fn save_reads_back_identical_and_prunes_to_keep_last() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 2);
        assert_eq!(m.latest().unwrap(), None, "no checkpoints dir yet");
        for step in [10, 20, 30, 40] {
            let dir = m.save(step, &files(step)).unwrap();
            assert_eq!(dir, m.step_dir(step));
            assert!(dir.ends_with(format!("step-{step:09}")));
            for (name, bytes) in files(step) {
                assert_eq!(
                    CheckpointManager::load_file(&dir, name).unwrap(),
                    bytes,
                    "{name}"
                );
            }
        }
        let steps: Vec<u64> = m.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![30, 40]);
        assert_eq!(m.latest().unwrap().unwrap().0, 40);
        assert!(!m.step_dir(10).exists() && !m.step_dir(20).exists());
        assert_eq!(
            CheckpointManager::file_names(&m.step_dir(40)).unwrap(),
            vec!["model.safetensors", "state.json", "empty.bin"]
        );
    }

    #[test]
    fn keep_every_keeps_milestones_and_zero_keeps_all() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 1).with_keep_every(100);
        for step in [50, 100, 150, 200, 250] {
            m.save(step, &files(step)).unwrap();
        }
        let steps: Vec<u64> = m.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![100, 200, 250]);

        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 0);
        for step in 1..=5 {
            m.save(step, &files(step)).unwrap();
        }
        assert_eq!(m.list().unwrap().len(), 5);
    }

    #[test]
    fn crash_leftovers_are_ignored_then_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 3);
        m.save(100, &files(100)).unwrap();
        // Simulated crashes: a temp dir mid-write (a later step, even with a manifest in it), a
        // step dir whose manifest was never written, one with a truncated manifest, and a manifest
        // that names another step (a dir renamed by hand).
        let tmp_dir = m.dir().join(".tmp-step-000000200-1-2");
        fs::create_dir_all(&tmp_dir).unwrap();
        fs::write(tmp_dir.join("model.safetensors"), b"partial").unwrap();
        fs::write(tmp_dir.join(MANIFEST), br#"{"step":200,"files":[]}"#).unwrap();
        let no_marker = m.step_dir(300);
        fs::create_dir_all(&no_marker).unwrap();
        fs::write(
            no_marker.join("model.safetensors"),
            b"whole file but no marker",
        )
        .unwrap();
        let truncated = m.step_dir(400);
        fs::create_dir_all(&truncated).unwrap();
        fs::write(truncated.join(MANIFEST), br#"{"step":400,"fi"#).unwrap();
        let renamed = m.step_dir(500);
        fs::create_dir_all(&renamed).unwrap();
        fs::write(renamed.join(MANIFEST), br#"{"step":7,"files":[]}"#).unwrap();
        fs::write(m.dir().join("notes.txt"), b"a stray file").unwrap();
        // A crash between "old copy moved aside" and "new copy renamed in" leaves a trash dir
        // holding a complete checkpoint: it must not be resumed from (it is being replaced).
        let trash = m.dir().join(".trash-step-000000900-1-2");
        fs::create_dir_all(&trash).unwrap();
        fs::write(trash.join(MANIFEST), br#"{"step":900,"files":[]}"#).unwrap();

        let (step, dir) = m.latest().unwrap().unwrap();
        assert_eq!((step, dir.clone()), (100, m.step_dir(100)));
        assert_eq!(Resume::Auto.resolve(&m).unwrap().unwrap().0, 100);

        // The next save works (and replaces nothing it should not), and cleans the temp dir.
        m.save(150, &files(150)).unwrap();
        assert!(
            !tmp_dir.exists(),
            "stale temp dir removed after a successful save"
        );
        assert!(
            !trash.exists(),
            "stale trash dir removed after a successful save"
        );
        assert!(
            no_marker.exists(),
            "incomplete step dirs are left for a human to inspect"
        );
        assert_eq!(m.latest().unwrap().unwrap().0, 150);
        // Re-saving an existing incomplete step replaces it with a complete one.
        m.save(300, &files(300)).unwrap();
        assert_eq!(m.latest().unwrap().unwrap().0, 300);
        assert_eq!(
            CheckpointManager::load_file(&no_marker, "state.json").unwrap(),
            files(300)[1].1
        );
        let leftovers = fs::read_dir(m.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn resave_same_step_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 3);
        m.save(5, &[("a", vec![1, 2, 3]), ("b", vec![9])]).unwrap();
        m.save(5, &[("a", vec![4, 5])]).unwrap();
        let dir = m.step_dir(5);
        assert_eq!(CheckpointManager::load_file(&dir, "a").unwrap(), vec![4, 5]);
        assert!(!dir.join("b").exists(), "the old copy is gone, not merged");
        let err = CheckpointManager::load_file(&dir, "b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no file `b`") && err.contains("it has: a"),
            "{err}"
        );
    }

    #[test]
    fn corruption_and_bad_names_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 3);
        let dir = m.save(1, &files(1)).unwrap();
        let p = dir.join("model.safetensors");
        let mut bytes = fs::read(&p).unwrap();
        bytes[500] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let err = CheckpointManager::load_file(&dir, "model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt") && err.contains("model.safetensors"),
            "{err}"
        );

        for bad in ["", "..", "a/b", MANIFEST] {
            assert!(m.save(2, &[(bad, vec![1])]).is_err(), "{bad:?} accepted");
        }
        assert!(
            m.save(2, &[("x", vec![1]), ("x", vec![2])])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert_eq!(
            m.latest().unwrap().unwrap().0,
            1,
            "failed saves leave nothing behind"
        );
    }

    /// Overwrites `n` bytes in the middle of a checkpoint file, keeping its length (as a bad disk
    /// or a stray `dd` would): only the CRC can tell.
    fn damage(dir: &Path, name: &str, n: usize) {
        let p = dir.join(name);
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2 - n / 2;
        for b in &mut bytes[mid..mid + n] {
            *b = !*b;
        }
        fs::write(&p, &bytes).unwrap();
    }

    #[test]
    fn resume_verifies_every_file_and_falls_back_past_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 2);
        m.save(10, &files(10)).unwrap();
        m.save(20, &files(20)).unwrap();
        // The tensors, not state.json (the only file a resume used to check), are damaged.
        damage(&m.step_dir(20), "model.safetensors", 100);
        let err = CheckpointManager::verify(&m.step_dir(20))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        assert_eq!(
            Resume::Auto.resolve(&m).unwrap(),
            Some((10, m.step_dir(10))),
            "auto falls back to the previous intact checkpoint"
        );
        // A run dir given as --resume PATH does the same; a damaged checkpoint named explicitly
        // is an error naming the file.
        assert_eq!(
            Resume::From(tmp.path().to_path_buf()).resolve(&m).unwrap(),
            Some((10, m.step_dir(10)))
        );
        let err = Resume::From(m.step_dir(20))
            .resolve(&m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");

        // The resumed run saves step 15 with keep_last = 1: the checkpoint just written stays
        // (pruning by step alone would have kept only the damaged step 20).
        let m1 = CheckpointManager::new(tmp.path(), 1);
        m1.save(15, &files(15)).unwrap();
        let steps: Vec<u64> = m1.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![15, 20]);
        assert_eq!(Resume::Auto.resolve(&m1).unwrap().unwrap().0, 15);
        // Reaching step 20 replaces the damaged copy.
        m1.save(20, &files(20)).unwrap();
        assert_eq!(Resume::Auto.resolve(&m1).unwrap().unwrap().0, 20);

        // Every checkpoint damaged (a truncated file, an empty one): an error naming both, never
        // a silent fresh start.
        let m2 = CheckpointManager::new(tmp.path().join("b"), 2);
        m2.save(1, &files(1)).unwrap();
        m2.save(2, &files(2)).unwrap();
        fs::write(m2.step_dir(1).join("state.json"), b"{").unwrap();
        fs::write(m2.step_dir(2).join("model.safetensors"), b"").unwrap();
        let err = Resume::Auto.resolve(&m2).unwrap_err().to_string();
        assert!(
            err.contains("none of the 2 checkpoints is intact")
                && err.contains("state.json")
                && err.contains("model.safetensors"),
            "{err}"
        );
        fs::remove_file(m2.step_dir(2).join("model.safetensors")).unwrap();
        assert!(
            CheckpointManager::verify(&m2.step_dir(2)).is_err(),
            "a missing file"
        );
    }

    #[test]
    fn resume_parsing_and_resolution() {
        assert_eq!(Resume::parse("auto").unwrap(), Resume::Auto);
        assert_eq!(Resume::parse("AUTO").unwrap(), Resume::Auto);
        assert_eq!(Resume::parse("never").unwrap(), Resume::Never);
        assert_eq!(
            Resume::parse("./auto").unwrap(),
            Resume::From(PathBuf::from("./auto"))
        );
        assert_eq!(
            Resume::parse("runs/a/checkpoints/step-000000010")
                .unwrap()
                .to_string(),
            "runs/a/checkpoints/step-000000010"
        );
        assert!(Resume::parse("  ").is_err());
        assert_eq!(Resume::default(), Resume::Auto);

        let tmp = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(tmp.path(), 5);
        assert_eq!(
            Resume::Auto.resolve(&m).unwrap(),
            None,
            "auto with nothing = fresh start"
        );
        m.save(10, &files(10)).unwrap();
        m.save(20, &files(20)).unwrap();
        assert_eq!(Resume::Never.resolve(&m).unwrap(), None);
        assert_eq!(
            Resume::Auto.resolve(&m).unwrap(),
            Some((20, m.step_dir(20)))
        );
        let other = CheckpointManager::new(tmp.path().join("elsewhere"), 5);
        // An explicit checkpoint dir, a checkpoints/ dir and a run dir all resolve.
        assert_eq!(
            Resume::From(m.step_dir(10)).resolve(&other).unwrap(),
            Some((10, m.step_dir(10)))
        );
        assert_eq!(
            Resume::From(m.dir().to_path_buf()).resolve(&other).unwrap(),
            Some((20, m.step_dir(20)))
        );
        assert_eq!(
            Resume::From(tmp.path().to_path_buf())
                .resolve(&other)
                .unwrap(),
            Some((20, m.step_dir(20)))
        );
        // An explicit path that leads nowhere is an error, not a fresh start.
        let err = Resume::From(tmp.path().join("nope"))
            .resolve(&m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such checkpoint"), "{err}");
        fs::create_dir_all(tmp.path().join("empty")).unwrap();
        let err = Resume::From(tmp.path().join("empty"))
            .resolve(&m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no complete checkpoint"), "{err}");
    }
}
