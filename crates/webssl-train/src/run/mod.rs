//! The run directory: everything one training run writes, in one place.
//!
//! ```text
//! runs/demo/
//!   run.lock               flock + PID: one writer per run dir (stale locks of dead PIDs are taken over)
//!   config.resolved.toml   the resolved config (defaults filled in), written before step 0
//!   metrics.jsonl          deterministic per-step scalars (bit-identical across resume)     [metrics]
//!   timing.jsonl           wall-clock, throughput, loader wait (volatile, never compared)   [metrics]
//!   events/                TensorBoard event files                                         [tensorboard]
//!   checkpoints/step-000001000/{...,COMPLETE}   atomic, last-N kept                       [checkpoint]
//! ```
//!
//! Reference: docs/design.md "Conventions" (Config, Logs, Checkpoints); the layout follows dinov2's
//! `output_dir` (config.yaml, training_metrics.json, model_*.rank_*.pth) and open_clip's `latest`
//! resume, with the crash-safety made explicit: every file that a resumed run reads is written
//! with [`atomic_write`] (temp file in the same directory, fsync, rename, fsync of the directory).
//!
//! The lock is an exclusive `flock` on `run.lock`, held for the run's life, plus the holder's PID
//! and host in the file. `flock` alone can be local to one host on some network filesystems where
//! cluster runs live, so a lock file left by another *host* cannot be checked for liveness and is
//! never taken over automatically (remove it by hand); one left by a dead process of this host is
//! taken over with a warning.

pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod recipe;
pub mod sections;
pub mod state;
pub mod tensorboard;

pub use checkpoint::{CheckpointManager, Resume};
pub use config::{diff_tables, load_config, to_toml_string};
pub use metrics::{MetricsWriter, check_finite, read_jsonl};
pub use progress::{Progress, ProgressMode, ProgressUpdate};
pub use recipe::{Plan, Recipe};
pub use sections::ensure_synth;
pub use state::{DataIdentity, StateMeta, TrainOutcome, recipe_hash};
pub use tensorboard::{EventWriter, read_scalars};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use webssl_data::shards::pid_alive;

/// File name of the resolved config inside a run dir.
pub const RESOLVED_CONFIG: &str = "config.resolved.toml";
/// File name of the run lock inside a run dir.
pub const LOCK_FILE: &str = "run.lock";

/// A run directory, locked for this process for as long as the value lives (by rank 0 in a
/// multi-process run: the other ranks hold no lock and write nothing there).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    lock: Option<RunLock>,
}

impl RunDir {
    /// Creates `path` (like `mkdir -p`) and takes its lock. Refuses a path that exists and is not a
    /// directory, and a directory locked by a live process.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(TrainError::io(
                &path,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory; choose another run dir",
                ),
            ));
        }
        fs::create_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        let lock = RunLock::acquire(&path.join(LOCK_FILE))?;
        Ok(RunDir {
            path,
            lock: Some(lock),
        })
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(checkpoint::CHECKPOINTS_DIR)
    }
    pub fn events_dir(&self) -> PathBuf {
        self.path.join("events")
    }
    pub fn resolved_config_path(&self) -> PathBuf {
        self.path.join(RESOLVED_CONFIG)
    }
    /// Path of the lock file held by this value (none on ranks other than 0).
    pub fn lock_path(&self) -> Option<&Path> {
        self.lock.as_ref().map(|l| l.path.as_path())
    }

    /// The resolved config a previous run wrote here, if any.
    pub fn read_resolved_config(&self) -> Result<Option<toml::Table>> {
        let p = self.resolved_config_path();
        match fs::read_to_string(&p) {
            Ok(s) => s
                .parse::<toml::Table>()
                .map(Some)
                .map_err(|e| TrainError::config(p.display().to_string(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainError::io(p, e)),
        }
    }

    /// Opens the run dir for a trainer: [`RunDir::create`], then [`RunDir::write_resolved_config`],
    /// warning when the config differs from the one the run was started with.
    pub fn start(path: impl AsRef<Path>, resolved: &toml::Table) -> Result<Self> {
        let run = Self::create(path)?;
        let changed = run.write_resolved_config(resolved)?;
        if !changed.is_empty() {
            tracing::warn!(
                "config differs from the one this run dir was started with: {}",
                changed.join(", ")
            );
        }
        Ok(run)
    }

    /// [`RunDir::start`] on rank 0; the other ranks wait for it and use the same directory without
    /// writing to it (only rank 0 writes checkpoints, logs and exports; the directory must be on a
    /// filesystem every rank sees, as for dinov2).
    pub fn start_ranked(
        path: impl AsRef<Path>,
        resolved: &toml::Table,
        dist: &crate::dist::Dist,
    ) -> Result<Self> {
        let run = dist.on_main("set up the run directory", false, || {
            Self::start(path.as_ref(), resolved)
        })?;
        Ok(run.unwrap_or_else(|| RunDir {
            path: path.as_ref().to_path_buf(),
            lock: None,
        }))
    }

    /// Writes `config.resolved.toml` atomically. When a previous run left a *different* resolved
    /// config (a resume with changed settings), that file is kept as `config.resolved.<n>.toml`
    /// (n = 1, 2, ...) and the changed keys are returned (`"optim.lr: 0.001 -> 0.002"`), so the
    /// caller can warn; an identical one is left as it is and the list is empty.
    pub fn write_resolved_config(&self, resolved: &toml::Table) -> Result<Vec<String>> {
        let p = self.resolved_config_path();
        let mut changes = Vec::new();
        if let Some(old) = self.read_resolved_config()? {
            changes = diff_tables(&old, resolved);
            if changes.is_empty() {
                return Ok(changes);
            }
            let backup = (1u32..)
                .map(|n| self.path.join(format!("config.resolved.{n}.toml")))
                .find(|b| !b.exists())
                .expect("an unbounded range always has a free name");
            fs::rename(&p, &backup).map_err(|e| TrainError::io(&p, e))?;
        }
        let text = toml::to_string_pretty(resolved)
            .map_err(|e| TrainError::config(RESOLVED_CONFIG, e.to_string()))?;
        atomic_write(&p, text.as_bytes())?;
        Ok(changes)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a mix:
/// a temp file in the same directory (rename is only atomic within one filesystem) is written,
/// fsynced, renamed over `path`, and the directory is fsynced so the rename itself is durable.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(&parent)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        TrainError::io(path, e)
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a directory, making renames and creations inside it durable (POSIX needs this separately
/// from the file's own fsync). Directories cannot be opened for sync on Windows: a no-op there.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The host name, for lock files and TensorBoard file names.
pub(crate) fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let h = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !h.is_empty() {
                return h;
            }
        }
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The run lock: `run.lock` held with an exclusive `flock` for the life of the run, and holding
/// `{"pid":..,"host":..}` for the messages. The kernel lock is what excludes a second writer: it is
/// taken on the open file before anything is written, so a lock file that is still empty (its
/// holder between open and write) is never mistaken for an abandoned one, and it goes away with
/// its process however that process ends. Removed on drop.
#[derive(Debug)]
struct RunLock {
    path: PathBuf,
    /// The open lock file: the `flock` lives as long as this descriptor.
    _file: File,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockInfo {
    pid: u32,
    host: String,
}

impl RunLock {
    fn acquire(path: &Path) -> Result<Self> {
        let me = LockInfo {
            pid: std::process::id(),
            host: hostname(),
        };
        let refuse = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        // A few rounds: the file we locked may have been removed by its previous holder between
        // our open and our flock (then it is no longer `path` and we start over).
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| TrainError::io(path, e))?;
            let held = || -> Option<LockInfo> {
                serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
            };
            if !try_flock(&file).map_err(|e| TrainError::io(path, e))? {
                return Err(refuse(match held() {
                    Some(h) if h.pid == me.pid && h.host == me.host => {
                        format!("already locked by this process (pid {})", h.pid)
                    }
                    Some(h) => format!(
                        "another run (pid {} on `{}`) is writing this run dir",
                        h.pid, h.host
                    ),
                    None => "another run is starting in this run dir (its lock is held)".into(),
                }));
            }
            if !same_file(&file, path) {
                continue;
            }
            // We hold the kernel lock. What the file says is a previous holder's record: a run that
            // ended without removing it, or one that never took the kernel lock (another host on a
            // network filesystem where `flock` is local only, an older webssl).
            if let Some(h) = held() {
                if h.host != me.host {
                    return Err(refuse(format!(
                        "locked by pid {} on host `{}`; liveness cannot be checked from `{}`: if that run is gone, delete the lock file",
                        h.pid, h.host, me.host
                    )));
                }
                if h.pid != me.pid && pid_alive(h.pid) {
                    return Err(refuse(format!(
                        "another run (pid {}) is writing this run dir",
                        h.pid
                    )));
                }
                tracing::warn!(lock = %path.display(), pid = h.pid, "taking over a stale run lock: its process is gone");
            }
            let body = serde_json::to_string(&me).expect("plain struct serializes");
            file.set_len(0)
                .and_then(|_| file.write_all(body.as_bytes()))
                .and_then(|_| file.sync_all())
                .map_err(|e| TrainError::io(path, e))?;
            return Ok(RunLock {
                path: path.to_path_buf(),
                _file: file,
            });
        }
        Err(refuse(
            "the lock file keeps being replaced by other processes".into(),
        ))
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds it. Elsewhere than unix
/// there is no lock (`Ok(true)`), as before: the PID record is the only guard there.
fn try_flock(file: &File) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(false),
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

/// Whether the open `file` is still the one at `path` (a holder removes the file on drop; a lock
/// on the removed inode would guard nothing).
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Still holding the kernel lock, so the file is ours: remove it, then the descriptor closes
        // and releases the lock. A process that opened the old file meanwhile sees it is gone
        // (`same_file`) and starts over.
        let _ = fs::remove_file(&self.path);
    }
}

/// Ends a run's log with the loader's skipped samples (count and the first few), if any.
pub fn warn_skipped(stats: &webssl_data::loader::LoaderStats) {
    if stats.samples_skipped > 0 {
        tracing::warn!(
            "{} samples skipped; first: {:?}",
            stats.samples_skipped,
            stats
                .skipped
                .iter()
                .take(5)
                .map(|s| &s.what)
                .collect::<Vec<_>>()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_refuses_a_file_and_locks_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = RunDir::create(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");

        let run = RunDir::create(tmp.path().join("a/b")).unwrap();
        assert!(run.path.is_dir());
        assert!(run.lock_path().unwrap().exists());
        // Same process again: refused (a second writer in this process is a bug too).
        let err = RunDir::create(tmp.path().join("a/b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already locked"), "{err}");
        let lock = run.lock_path().unwrap().to_path_buf();
        drop(run);
        assert!(!lock.exists(), "lock removed on drop");
        RunDir::create(tmp.path().join("a/b")).unwrap();
    }

    #[test]
    fn live_lock_refused_stale_lock_taken_over_foreign_host_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join(LOCK_FILE);
        // pid 1 is always alive (init) on unix.
        fs::write(&lock, format!(r#"{{"pid":1,"host":"{}"}}"#, hostname())).unwrap();
        let err = RunDir::create(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("another run (pid 1)"), "{err}");

        // A pid above the kernel's pid_max (4194304) cannot exist.
        fs::write(
            &lock,
            format!(r#"{{"pid":4294967,"host":"{}"}}"#, hostname()),
        )
        .unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let held: LockInfo = serde_json::from_str(&fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(held.pid, std::process::id());
        drop(run);

        fs::write(&lock, r#"{"pid":4294967,"host":"some-other-node"}"#).unwrap();
        let err = RunDir::create(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("some-other-node") && err.contains("delete the lock"),
            "{err}"
        );
    }

    #[test]
    fn simultaneous_starts_exactly_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let n = 40;
        let go = std::sync::Barrier::new(n);
        let tried = std::sync::Barrier::new(n);
        let wins = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        go.wait();
                        let got = RunDir::create(tmp.path());
                        // Winners keep the lock until every start has been tried.
                        tried.wait();
                        got.is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&won| won)
                .count()
        });
        assert_eq!(wins, 1);
        assert!(
            !tmp.path().join(LOCK_FILE).exists(),
            "released by the winner"
        );
    }

    #[test]
    fn empty_lock_of_a_live_holder_is_not_stolen() {
        // A holder between creating the file and writing its PID: the file is empty, but the
        // kernel lock is held.
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join(LOCK_FILE);
        let holder = File::create(&lock).unwrap();
        assert!(try_flock(&holder).unwrap());
        let err = RunDir::create(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("another run is starting"), "{err}");
        assert_eq!(
            fs::read(&lock).unwrap(),
            b"",
            "the holder's file is untouched"
        );
        // Its process gone (the descriptor closed, the file left behind empty): taken over.
        drop(holder);
        let run = RunDir::create(tmp.path()).unwrap();
        let held: LockInfo = serde_json::from_str(&fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(held.pid, std::process::id());
        drop(run);
    }

    #[test]
    fn resolved_config_written_atomically_and_changes_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let a: toml::Table = "[optim]\nlr = 0.001\nwd = 0.04\n".parse().unwrap();
        assert!(run.write_resolved_config(&a).unwrap().is_empty());
        assert_eq!(run.read_resolved_config().unwrap().unwrap(), a);
        // Same again: nothing changes, no backup.
        assert!(run.write_resolved_config(&a).unwrap().is_empty());
        assert!(!tmp.path().join("config.resolved.1.toml").exists());

        let b: toml::Table = "[optim]\nlr = 0.002\nwd = 0.04\n".parse().unwrap();
        let changes = run.write_resolved_config(&b).unwrap();
        assert_eq!(changes, vec!["optim.lr: 0.001 -> 0.002".to_string()]);
        assert_eq!(run.read_resolved_config().unwrap().unwrap(), b);
        let backup: toml::Table = fs::read_to_string(tmp.path().join("config.resolved.1.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(backup, a);
        // No temp files left behind.
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
