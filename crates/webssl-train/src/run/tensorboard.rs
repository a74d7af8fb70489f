//! TensorBoard scalar event files: writer and reader (no TensorFlow, no protobuf dependency).
//!
//! Format (tensorflow `core/util/event.proto`, `core/framework/summary.proto`,
//! `core/lib/io/record_writer.cc`): a file of TFRecords, each
//! `u64 len | u32 masked_crc32c(len) | data | u32 masked_crc32c(data)` (little endian), where
//! `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. Each record is an `Event`:
//! `wall_time` (1, double), `step` (2, int64), `file_version` (3, string, `"brain.Event:2"` in the
//! first record), `summary` (5) = `Summary { repeated Value value = 1 }`,
//! `Value { tag = 1 (string), simple_value = 2 (float) }`.
//!
//! Protobuf is hand-encoded: three message types with five scalar fields do not justify a
//! code-generation step (prost-build needs `protoc`). The reader is used by our tests and by
//! anyone who wants curves without Python; it checks both CRCs and accepts the two scalar
//! encodings TensorBoard writers emit: `simple_value` (torch `SummaryWriter.add_scalar`, TF1) and
//! a rank-0 `tensor` (field 8, DT_FLOAT/DT_DOUBLE via `float_val`/`double_val`/`tensor_content`;
//! TF2 `tf.summary.scalar`, torch `new_style=True`). Other summaries (images, histograms, text)
//! are skipped.
//!
//! Compatibility is pinned by fixtures made with TensorBoard's own code
//! (`fixtures/tensorboard/make_tensorboard.py`): `ours.tfevents` was written by this module and
//! read back by TensorBoard's `EventAccumulator`; `torch.tfevents` was written by
//! `torch.utils.tensorboard.SummaryWriter` and must parse here to the values TensorBoard reads.
//!
//! File names follow TensorBoard's `events.out.tfevents.{secs:010}.{host}` plus torch's
//! `.{pid}.{n}` suffix, so two writers in one second never collide. A resumed run opens a new
//! file; TensorBoard orders files by name and drops the re-run steps' old points itself.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Result, TrainError};

const FILE_VERSION: &str = "brain.Event:2";
/// Flush at least this often, so a live TensorBoard sees new points (torch's default is 120 s).
const FLUSH_EVERY: Duration = Duration::from_secs(30);
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes scalar summaries to one new event file.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
    last_flush: Instant,
    /// Fixed wall time for byte-reproducible fixtures; `None` = the clock.
    fixed_time: Option<f64>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new `events.out.tfevents.*` file in it, starting with the
    /// `file_version` record.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{}",
            now as u64,
            super::hostname(),
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_file(&dir.join(name), None)
    }

    /// Writes to exactly `path`, stamping every event with `wall_time` if given (fixtures).
    fn create_file(path: &Path, fixed_time: Option<f64>) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let file = File::create(path).map_err(|e| TrainError::io(path, e))?;
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            last_flush: Instant::now(),
            fixed_time,
        };
        let mut ev = Vec::new();
        put_double(&mut ev, 1, w.wall_time());
        put_bytes(&mut ev, 3, FILE_VERSION.as_bytes());
        w.record(&ev)?;
        w.flush()?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one scalar point. Non-finite values are written as they are (TensorBoard shows
    /// NaN/inf), so a diverging curve is visible.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        let mut val = Vec::with_capacity(tag.len() + 8);
        put_bytes(&mut val, 1, tag.as_bytes());
        put_float(&mut val, 2, value);
        let mut summary = Vec::with_capacity(val.len() + 2);
        put_bytes(&mut summary, 1, &val);
        let mut ev = Vec::with_capacity(summary.len() + 24);
        put_double(&mut ev, 1, self.wall_time());
        put_varint_field(&mut ev, 2, step as u64);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)?;
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Pushes buffered events to the file (not fsynced: event files are not resume state).
    pub fn flush(&mut self) -> Result<()> {
        self.last_flush = Instant::now();
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    fn wall_time(&self) -> f64 {
        self.fixed_time.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        })
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out
            .write_all(&buf)
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// TFRecord's CRC mask (record_writer.cc): CRCs of data that contains CRCs are weak otherwise.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}
fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}
fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, 0);
    put_varint(buf, v);
}
fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    put_key(buf, field, 1);
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_float(buf: &mut Vec<u8>, field: u32, v: f32) {
    put_key(buf, field, 5);
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_key(buf, field, 2);
    put_varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// One decoded protobuf field.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Iterates the fields of one protobuf message; an `Err` ends the message (malformed).
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("field needs {n} bytes, {} left", self.buf.len()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = std::result::Result<(u32, Field<'a>), String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let mut step = || -> std::result::Result<(u32, Field<'a>), String> {
            let key = self.varint()?;
            let field = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
            let f = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => Field::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                    Field::Bytes(self.take(n)?)
                }
                5 => Field::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((field, f))
        };
        let r = step();
        if r.is_err() {
            self.buf = &[];
        }
        Some(r)
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

/// Scalar points `(tag, step, value)` of an event file, or of every `*tfevents*` file in a
/// directory (in name order), in file order. Both CRCs of every record are checked; a torn final
/// record (a writer killed mid-write) ends the file quietly, any other damage is an error.
pub fn read_scalars(path: &Path) -> Result<Vec<(String, i64, f32)>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| TrainError::io(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
            })
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            out.extend(read_scalars(&f)?);
        }
        return Ok(out);
    }
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |reason: String| {
        TrainError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    let mut index = 0usize;
    while !rest.is_empty() {
        if rest.len() < 12 {
            break; // torn header
        }
        let len_bytes: [u8; 8] = rest[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if masked_crc(&len_bytes) != len_crc {
            return Err(bad(format!("record {index}: length CRC mismatch")));
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .map_err(|_| bad(format!("record {index}: length overflows")))?;
        if rest.len() - 12 < len.saturating_add(4) {
            break; // torn body
        }
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if masked_crc(data) != data_crc {
            return Err(bad(format!("record {index}: data CRC mismatch")));
        }
        decode_event(data, &mut out).map_err(|r| bad(format!("record {index}: {r}")))?;
        rest = &rest[16 + len..];
        index += 1;
    }
    Ok(out)
}

fn decode_event(data: &[u8], out: &mut Vec<(String, i64, f32)>) -> std::result::Result<(), String> {
    let mut step = 0i64;
    let mut summaries = Vec::new();
    for f in fields(data) {
        match f? {
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Bytes(b)) => summaries.push(b),
            _ => {}
        }
    }
    for summary in summaries {
        for f in fields(summary) {
            if let (1, Field::Bytes(value)) = f?
                && let Some((tag, v)) = decode_value(value)?
            {
                out.push((tag, step, v));
            }
        }
    }
    Ok(())
}

/// A `Summary.Value` holding a scalar: `(tag, value)`; other kinds of summary give `None`.
fn decode_value(value: &[u8]) -> std::result::Result<Option<(String, f32)>, String> {
    let mut tag = None;
    let mut scalar = None;
    for f in fields(value) {
        match f? {
            (1, Field::Bytes(b)) => tag = Some(String::from_utf8_lossy(b).into_owned()),
            (2, Field::Fixed32(b)) => scalar = Some(f32::from_le_bytes(b)),
            (8, Field::Bytes(t)) => scalar = decode_scalar_tensor(t)?,
            _ => {}
        }
    }
    Ok(tag.zip(scalar))
}

/// A rank-0 (or one-element) DT_FLOAT/DT_DOUBLE `TensorProto` as f32, else `None`.
fn decode_scalar_tensor(t: &[u8]) -> std::result::Result<Option<f32>, String> {
    const DT_FLOAT: u64 = 1;
    const DT_DOUBLE: u64 = 2;
    let mut dtype = 0;
    let mut floats: Vec<f32> = Vec::new();
    let mut doubles: Vec<f64> = Vec::new();
    let mut content: &[u8] = &[];
    for f in fields(t) {
        match f? {
            (1, Field::Varint(d)) => dtype = d,
            (4, Field::Bytes(b)) => content = b,
            (5, Field::Fixed32(b)) => floats.push(f32::from_le_bytes(b)),
            (5, Field::Bytes(packed)) => floats.extend(
                packed
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
            ),
            (6, Field::Fixed64(b)) => doubles.push(f64::from_le_bytes(b)),
            (6, Field::Bytes(packed)) => doubles.extend(
                packed
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8"))),
            ),
            _ => {}
        }
    }
    Ok(match dtype {
        DT_FLOAT if content.len() == 4 => Some(f32::from_le_bytes(content.try_into().expect("4"))),
        DT_FLOAT => floats.first().copied(),
        DT_DOUBLE if content.len() == 8 => {
            Some(f64::from_le_bytes(content.try_into().expect("8")) as f32)
        }
        DT_DOUBLE => doubles.first().map(|&d| d as f32),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The points in `fixtures/tensorboard/ours.tfevents` (make_tensorboard.py lists them too).
    fn fixture_points() -> Vec<(&'static str, i64, f32)> {
        let mut v = Vec::new();
        for step in 1..=5i64 {
            v.push(("loss", step, 10.0 / step as f32));
            v.push(("optim/lr", step, 1e-4 * step as f32));
        }
        v.push(("grad_norm/backbone", 1_000_000_007, -3.5e-8));
        v.push(("neg_step", -3, 7.25));
        v
    }

    fn write_fixture(path: &Path) {
        let mut w = EventWriter::create_file(path, Some(1_700_000_000.5)).unwrap();
        for (tag, step, v) in fixture_points() {
            w.add_scalar(tag, v, step).unwrap();
        }
        w.flush().unwrap();
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tensorboard")
            .join(name)
    }

    #[test]
    fn round_trip_through_our_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&tmp.path().join("events")).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("events.out.tfevents.") && name.contains(&super::super::hostname()),
            "{name}"
        );
        let mut expect = Vec::new();
        for step in 0..200i64 {
            let v = (step as f32 * 0.37).sin() * 100.0;
            w.add_scalar("loss/dino", v, step).unwrap();
            expect.push(("loss/dino".to_string(), step, v));
        }
        w.add_scalar("nan", f32::NAN, 200).unwrap();
        w.flush().unwrap();
        let got = read_scalars(w.path()).unwrap();
        assert_eq!(&got[..200], &expect[..]);
        assert!(got[200].2.is_nan());
        // A second writer in the same dir: a new file, and the dir reads as both in name order.
        let mut w2 = EventWriter::create(&tmp.path().join("events")).unwrap();
        assert_ne!(w2.path(), w.path());
        w2.add_scalar("x", 1.0, 201).unwrap();
        w2.flush().unwrap();
        assert_eq!(read_scalars(&tmp.path().join("events")).unwrap().len(), 202);
    }

    #[test]
    fn our_writer_reproduces_the_fixture_tensorboard_read() {
        // `ours.tfevents` was read by TensorBoard's EventAccumulator (make_tensorboard.py); our
        // writer must still produce exactly those bytes.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("ours.tfevents");
        write_fixture(&p);
        if std::env::var_os("WEBSSL_WRITE_TB_FIXTURE").is_some() {
            fs::copy(&p, fixture("ours.tfevents")).unwrap();
        }
        assert_eq!(
            fs::read(&p).unwrap(),
            fs::read(fixture("ours.tfevents")).unwrap()
        );
        let got = read_scalars(&p).unwrap();
        let want: Vec<(String, i64, f32)> = fixture_points()
            .into_iter()
            .map(|(t, s, v)| (t.to_string(), s, v))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reads_torch_summary_writer_file_like_tensorboard() {
        // Written by torch.utils.tensorboard.SummaryWriter (simple_value and new_style tensor
        // scalars, plus a histogram and text that must be skipped); `torch.expected.json` is what
        // TensorBoard's EventAccumulator reads from it.
        let got = read_scalars(&fixture("torch.tfevents")).unwrap();
        let text = fs::read_to_string(fixture("torch.expected.json")).unwrap();
        let want: Vec<(String, i64, f64)> = serde_json::from_str(&text).unwrap();
        assert_eq!(got.len(), want.len());
        for ((tag, step, v), (wtag, wstep, wv)) in got.iter().zip(&want) {
            assert_eq!((tag, step), (wtag, wstep));
            // EventAccumulator widens the stored f32 to a Python float: exact.
            assert_eq!(f64::from(*v), *wv, "{tag}@{step}");
        }
        assert!(
            want.iter().any(|(t, _, _)| t == "new_style/acc"),
            "the tensor encoding is covered"
        );
    }

    #[test]
    fn corruption_is_detected_and_torn_tail_tolerated() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("e.tfevents");
        write_fixture(&p);
        let good = fs::read(&p).unwrap();
        let n = read_scalars(&p).unwrap().len();
        // Torn last record: the complete ones are still read.
        fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert_eq!(read_scalars(&p).unwrap().len(), n - 1);
        // A flipped bit in a record body is an error naming the record.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        fs::write(&p, &bad).unwrap();
        let err = read_scalars(&p).unwrap_err().to_string();
        assert!(err.contains("CRC mismatch"), "{err}");
    }
}
