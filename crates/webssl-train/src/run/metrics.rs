//! `metrics.jsonl` and `timing.jsonl`: one JSON object per logged step, resumable.
//!
//! Two files, because a resumed run must be *bit-identical* to an uninterrupted one and the test
//! of that is `cmp metrics.jsonl`:
//!
//! - `metrics.jsonl` holds what the computation determines: loss terms, lr, wd, momentum, teacher
//!   temperature, grad norms, ... `{"step":120,"loss":8.123,"lr":0.0004,...}`. Keys in the
//!   caller's order, floats in serde_json's shortest round-trip form (ryu), so equal values give
//!   equal bytes. No wall-clock field.
//! - `timing.jsonl` holds what the machine determines: `time` (unix seconds, added here), img/s,
//!   loader wait fraction, skipped-sample counts. Never compared; plotted for throughput.
//!
//! Resume ([`MetricsWriter::open`] with the checkpoint's step): lines with `step >` that step are
//! removed from both files (they belong to steps that will be re-run), as is a torn last line
//! left by a crash, so the resumed run appends exactly where the checkpoint stands. The
//! convention this relies on: the step recorded in a checkpoint is the `step` of the last
//! metrics line it covers (the trainer logs step `s`, then saves checkpoint `s`). A fresh start
//! (`0`) empties the files.
//!
//! Each line goes out in one `write` and is flushed, so a crash tears at most the last line.
//! [`MetricsWriter::sync`] makes the lines durable against power loss; call it when saving a
//! checkpoint. Non-finite values are written as `null` (JSON has no NaN) and read back as NaN;
//! [`check_finite`] is the guard that stops a run at the first one.
//!
//! Reference: dinov2 `training_metrics.json` (one JSON object per logged iteration); docs/design.md
//! "Logs and progress".

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Deterministic per-step metrics.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Wall-clock and throughput per step.
pub const TIMING_FILE: &str = "timing.jsonl";

/// Appends per-step records to `metrics.jsonl` and `timing.jsonl` of a run dir.
#[derive(Debug)]
pub struct MetricsWriter {
    metrics: File,
    timing: File,
    metrics_path: PathBuf,
    timing_path: PathBuf,
    last_step: Option<u64>,
}

impl MetricsWriter {
    /// Opens both files of `run_dir` for a run whose completed steps are `resumed_step` (the
    /// checkpoint's step; 0 for a fresh start): lines with a larger step, and torn lines, are
    /// removed first (atomically), then new lines are appended.
    pub fn open(run_dir: &Path, resumed_step: u64) -> Result<Self> {
        let metrics_path = run_dir.join(METRICS_FILE);
        let timing_path = run_dir.join(TIMING_FILE);
        for p in [&metrics_path, &timing_path] {
            let dropped = truncate_after(p, resumed_step)?;
            if dropped > 0 {
                tracing::info!(file = %p.display(), dropped, resumed_step, "dropped metrics lines of steps that will be re-run");
            }
        }
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| TrainError::io(p, e))
        };
        Ok(MetricsWriter {
            metrics: open(&metrics_path)?,
            timing: open(&timing_path)?,
            metrics_path,
            timing_path,
            last_step: None,
        })
    }

    pub fn metrics_path(&self) -> &Path {
        &self.metrics_path
    }
    pub fn timing_path(&self) -> &Path {
        &self.timing_path
    }

    /// Writes step `step`: `values` to `metrics.jsonl`, `timing` (plus `time`) to `timing.jsonl`;
    /// an empty slice writes no line to that file. Keys must be unique and must not be `step`
    /// (or `time` in `timing`).
    pub fn write(
        &mut self,
        step: u64,
        values: &[(&str, f64)],
        timing: &[(&str, f64)],
    ) -> Result<()> {
        if !values.is_empty() {
            let line =
                json_line(step, None, values).map_err(|r| TrainError::config("metrics", r))?;
            write_line(&mut self.metrics, &self.metrics_path, &line)?;
        }
        if !timing.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            // Milliseconds are plenty and keep the lines short.
            let now = (now * 1000.0).round() / 1000.0;
            let line =
                json_line(step, Some(now), timing).map_err(|r| TrainError::config("metrics", r))?;
            write_line(&mut self.timing, &self.timing_path, &line)?;
        }
        self.last_step = Some(step);
        Ok(())
    }

    /// fsyncs both files (call when a checkpoint is saved, so the history it covers is durable).
    pub fn sync(&mut self) -> Result<()> {
        self.metrics
            .sync_data()
            .map_err(|e| TrainError::io(&self.metrics_path, e))?;
        self.timing
            .sync_data()
            .map_err(|e| TrainError::io(&self.timing_path, e))
    }

    /// The step of the last record written through this writer.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }
}

/// `Err(NonFinite)` naming the first value that is NaN or infinite: the run stops there, before
/// the optimizer step and before any checkpoint, so the last checkpoint on disk is a good one.
pub fn check_finite(step: u64, values: &[(&str, f64)]) -> Result<()> {
    match values.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, v)) => Err(TrainError::NonFinite {
            step,
            what: name.to_string(),
            value: *v,
        }),
        None => Ok(()),
    }
}

/// Reads a metrics/timing JSONL file: `(step, key -> value)` per line, `null` as NaN.
/// Non-numeric fields are skipped; a malformed line is an error naming its line number.
pub fn read_jsonl(path: &Path) -> Result<Vec<(u64, BTreeMap<String, f64>)>> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (step, obj) = parse_line(line).ok_or_else(|| {
            TrainError::config(
                format!("{}:{}", path.display(), i + 1),
                "not a JSON object with an integer `step`",
            )
        })?;
        let values = obj
            .into_iter()
            .filter(|(k, _)| k != "step")
            .filter_map(|(k, v)| match v {
                serde_json::Value::Number(n) => n.as_f64().map(|f| (k, f)),
                serde_json::Value::Null => Some((k, f64::NAN)),
                _ => None,
            })
            .collect();
        out.push((step, values));
    }
    Ok(out)
}

fn parse_line(line: &str) -> Option<(u64, serde_json::Map<String, serde_json::Value>)> {
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).ok()?;
    let step = obj.get("step")?.as_u64()?;
    Some((step, obj))
}

/// `{"step":N[,"time":T],"k":v,...}` with keys in the given order.
fn json_line(
    step: u64,
    time: Option<f64>,
    values: &[(&str, f64)],
) -> std::result::Result<String, String> {
    let mut line = format!("{{\"step\":{step}");
    if let Some(t) = time {
        line.push_str(",\"time\":");
        line.push_str(&number(t));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in values {
        if *k == "step" || (time.is_some() && *k == "time") {
            return Err(format!("`{k}` is a reserved key"));
        }
        if !seen.insert(*k) {
            return Err(format!("key `{k}` given twice for step {step}"));
        }
        line.push(',');
        line.push_str(&serde_json::to_string(k).expect("strings serialize"));
        line.push(':');
        line.push_str(&number(*v));
    }
    line.push_str("}\n");
    Ok(line)
}

fn number(v: f64) -> String {
    // serde_json writes non-finite floats as `null`.
    serde_json::to_string(&v).expect("f64 serializes")
}

fn write_line(f: &mut File, path: &Path, line: &str) -> Result<()> {
    // One write_all of the whole line: O_APPEND writes of this size are not interleaved, and a
    // crash tears at most this line.
    f.write_all(line.as_bytes())
        .and_then(|_| f.flush())
        .map_err(|e| TrainError::io(path, e))
}

/// Keeps the complete, parseable lines with `step <= keep_through`; returns how many were dropped.
fn truncate_after(path: &Path, keep_through: u64) -> Result<usize> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let complete = line.last() == Some(&b'\n');
        let keep = complete
            && std::str::from_utf8(line)
                .ok()
                .and_then(|l| parse_line(l.trim_end()))
                .is_some_and(|(step, _)| step <= keep_through);
        if keep {
            kept.extend_from_slice(line);
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            dropped += 1;
        }
    }
    if kept.len() != bytes.len() {
        super::atomic_write(path, &kept)?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(step: u64) -> Vec<(&'static str, f64)> {
        vec![
            ("loss", 10.0 / (step as f64 + 1.0)),
            ("lr", 1e-4 * step as f64),
            ("dino_loss", 0.1 + step as f64),
        ]
    }

    fn run_steps(dir: &Path, from: u64, to: u64) {
        let mut w = MetricsWriter::open(dir, from).unwrap();
        for s in from + 1..=to {
            w.write(
                s,
                &vals(s),
                &[("img_per_s", 1234.5 + s as f64), ("loader_wait", 0.03)],
            )
            .unwrap();
        }
        w.sync().unwrap();
    }

    #[test]
    fn resumed_run_metrics_identical_to_uninterrupted() {
        let straight = tempfile::tempdir().unwrap();
        run_steps(straight.path(), 0, 30);

        let resumed = tempfile::tempdir().unwrap();
        run_steps(resumed.path(), 0, 23); // "crashed" at step 23, last checkpoint at 20
        // A torn line from the crash.
        let mut f = OpenOptions::new()
            .append(true)
            .open(resumed.path().join(METRICS_FILE))
            .unwrap();
        f.write_all(b"{\"step\":24,\"loss\":0.4").unwrap();
        drop(f);
        run_steps(resumed.path(), 20, 30);

        let a = fs::read(straight.path().join(METRICS_FILE)).unwrap();
        let b = fs::read(resumed.path().join(METRICS_FILE)).unwrap();
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        // Timing lines differ in `time` but have the same steps.
        let steps = |d: &Path| {
            read_jsonl(&d.join(TIMING_FILE))
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(straight.path()), (1..=30).collect::<Vec<_>>());
        assert_eq!(steps(resumed.path()), (1..=30).collect::<Vec<_>>());
    }

    #[test]
    fn lines_are_deterministic_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::open(tmp.path(), 0).unwrap();
        w.write(
            7,
            &[("loss", 0.1 + 0.2), ("lr", 1e-3), ("bad", f64::NAN)],
            &[("img_per_s", 99.0)],
        )
        .unwrap();
        w.write(8, &[("loss", 1.0)], &[]).unwrap();
        assert_eq!(w.last_step(), Some(8));
        let text = fs::read_to_string(tmp.path().join(METRICS_FILE)).unwrap();
        assert_eq!(
            text,
            "{\"step\":7,\"loss\":0.30000000000000004,\"lr\":0.001,\"bad\":null}\n{\"step\":8,\"loss\":1.0}\n"
        );
        let back = read_jsonl(&tmp.path().join(METRICS_FILE)).unwrap();
        assert_eq!(back[0].0, 7);
        assert_eq!(back[0].1["loss"], 0.1 + 0.2);
        assert!(back[0].1["bad"].is_nan());
        let timing = read_jsonl(&tmp.path().join(TIMING_FILE)).unwrap();
        assert_eq!(timing.len(), 1, "empty timing slice writes no line");
        assert!(timing[0].1["time"] > 1.6e9, "unix seconds");
        assert_eq!(timing[0].1["img_per_s"], 99.0);

        assert!(w.write(9, &[("step", 1.0)], &[]).is_err());
        assert!(w.write(9, &[("a", 1.0), ("a", 2.0)], &[]).is_err());
        assert!(w.write(9, &[("a", 1.0)], &[("time", 2.0)]).is_err());
    }

    #[test]
    fn fresh_start_empties_and_resume_past_end_keeps_all() {
        let tmp = tempfile::tempdir().unwrap();
        run_steps(tmp.path(), 0, 5);
        let before = fs::read(tmp.path().join(METRICS_FILE)).unwrap();
        drop(MetricsWriter::open(tmp.path(), 100).unwrap());
        assert_eq!(
            fs::read(tmp.path().join(METRICS_FILE)).unwrap(),
            before,
            "nothing after step 100: untouched"
        );
        drop(MetricsWriter::open(tmp.path(), 0).unwrap());
        assert!(fs::read(tmp.path().join(METRICS_FILE)).unwrap().is_empty());
        assert!(fs::read(tmp.path().join(TIMING_FILE)).unwrap().is_empty());
    }

    #[test]
    fn non_finite_guard_names_the_term() {
        assert!(check_finite(3, &[("loss", 1.0), ("lr", 0.1)]).is_ok());
        let err = check_finite(
            3,
            &[("loss", 1.0), ("ibot_loss", f64::INFINITY), ("x", f64::NAN)],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "step 3: ibot_loss is not finite (inf)");
    }

    #[test]
    fn malformed_file_names_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.jsonl");
        fs::write(&p, "{\"step\":1,\"a\":1}\nnot json\n").unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:2"), "{err}");
    }
}
