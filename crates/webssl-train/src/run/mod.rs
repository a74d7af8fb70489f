//! The run directory: everything one training run writes, in one place.
//!
//! ```text
//! runs/demo/
//!   run.lock               PID lock: one writer per run dir (stale locks of dead PIDs are taken over)
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
//! Deliberate deviations: the lock is a PID file rather than `flock`, because `flock` is silently
//! a no-op on some network filesystems where cluster runs live; a lock held by another *host*
//! cannot be checked for liveness and is never taken over automatically (remove it by hand).

pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod sections;
pub mod state;
pub mod tensorboard;

pub use checkpoint::{CheckpointManager, Resume};
pub use config::{diff_tables, load_config, to_toml_string};
pub use metrics::{MetricsWriter, check_finite, read_jsonl};
pub use progress::{Progress, ProgressMode, ProgressUpdate};
pub use sections::ensure_synth;
pub use state::{DataIdentity, OptimizerSet, StateMeta, TrainOutcome, recipe_hash};
pub use tensorboard::{EventWriter, read_scalars};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

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

/// Whether process `pid` exists on this host. `kill(pid, 0)` sends nothing; EPERM means it exists
/// but belongs to another user (still alive: never take its lock).
fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill with signal 0 performs only the existence/permission check.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// A PID lock file: `{"pid":..,"host":..}`, created with `O_EXCL` and removed on drop.
#[derive(Debug)]
struct RunLock {
    path: PathBuf,
    pid: u32,
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
        // Two attempts: the second after a stale lock was moved away.
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let body = serde_json::to_string(&me).expect("plain struct serializes");
                    f.write_all(body.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| TrainError::io(path, e))?;
                    return Ok(RunLock {
                        path: path.to_path_buf(),
                        pid: me.pid,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
                    let held: Option<LockInfo> = serde_json::from_str(&text).ok();
                    let reason = match &held {
                        Some(h) if h.host != me.host => Some(format!(
                            "locked by pid {} on host `{}`; liveness cannot be checked from `{}`: if that run is gone, delete the lock file",
                            h.pid, h.host, me.host
                        )),
                        Some(h) if h.pid == me.pid => {
                            Some(format!("already locked by this process (pid {})", h.pid))
                        }
                        Some(h) if pid_alive(h.pid) => Some(format!(
                            "another run (pid {}) is writing this run dir",
                            h.pid
                        )),
                        Some(h) => {
                            tracing::warn!(lock = %path.display(), pid = h.pid, "taking over a stale run lock: its process is gone");
                            None
                        }
                        // An empty/garbled lock: its writer died between create and write.
                        None => {
                            tracing::warn!(lock = %path.display(), "taking over an unreadable run lock");
                            None
                        }
                    };
                    if let Some(reason) = reason {
                        return Err(TrainError::Checkpoint {
                            path: path.to_path_buf(),
                            reason,
                        });
                    }
                    // Rename first, so that of two processes taking over at once only one removes
                    // the stale file and both then race fairly on `create_new`.
                    let aside = path.with_extension(format!("stale-{}", me.pid));
                    if fs::rename(path, &aside).is_ok() {
                        let _ = fs::remove_file(&aside);
                    }
                }
                Err(e) => return Err(TrainError::io(path, e)),
            }
        }
        Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: "another process took the lock".into(),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove only our own lock: if it was (wrongly) taken over, leave the new owner's file.
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<LockInfo>(&t).ok())
            .is_some_and(|h| h.pid == self.pid);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
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
