//! `webssl curate`: one streaming, resumable pass of a filter chain over any number of inputs.
//!
//! **Output directory**
//! - `manifest.jsonl`: one [`Record`] per sample read, in input order — input index and position,
//!   key, `kept`, and per filter its decision, score, reason, error and hash. Unreadable members
//!   and damaged shards get a record too (`error`), so every sample is accounted for;
//! - `summary.json`: counts per filter ([`Summary`]), written atomically at the end;
//! - `state.json`: the commit point (next input and position, committed manifest length, counts),
//!   written atomically (temp file, fsync, rename) after the manifest is flushed and fsynced;
//! - `chain.resolved.toml`: the chain as it ran;
//! - with `--reshard`: `shards/kept-000000.tar`… + `shards/index.json`, every member of each kept
//!   sample (image, caption, json, dense labels), in input order.
//!
//! **Memory** is bounded by one batch of samples (`[chain] batch_size`) plus the dedup seen-sets
//! (see [`crate::filters`]); inputs are streamed, never listed or loaded whole.
//!
//! **Resume**: a run commits every `commit_every` samples (rounded up to whole batches) and at the
//! end of each input. After a crash, `--resume` truncates the manifest to the committed length,
//! replays the committed records into the filters (the dedup seen-sets are rebuilt from the hashes
//! in the manifest, nothing else is kept), skips the committed samples (read, not decoded) and goes
//! on. Batches start at the same positions as in an uninterrupted run, so the resumed manifest is
//! byte-identical. The state records a fingerprint of the chain, the inputs and the probe filters'
//! files; resuming with others (or a filter retrained in place) is refused. A finished output is not redone (only a missing re-shard is done).
//!
//! **Re-sharding** is a second streaming pass after the manifest is complete: the inputs are read
//! again alongside the manifest (each record must match its input and position) and kept samples
//! are written with [`ShardWriter`]. It is not resumable within itself (a crash there redoes only
//! this pass, which reads and writes but decodes nothing). Keys that are not valid shard member
//! names (a folder file `a.b.jpg` gives key `a.b`) are skipped and counted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webssl_data::DataError;
use webssl_data::decode::sniff_ext;
use webssl_data::shards::{Sample, ShardLimits, ShardReader, ShardWriter, write_atomic};
use webssl_data::source::{InputSpec, iter_items, resolve_inputs};

use crate::config::ChainConfig;
use crate::error::{CurateError, Result};
use crate::filters::{Candidate, Chain, ClassifierLoader, Verdict};

pub const MANIFEST_FILE: &str = "manifest.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const STATE_FILE: &str = "state.json";
pub const CHAIN_FILE: &str = "chain.resolved.toml";
pub const SHARDS_DIR: &str = "shards";
const STATE_FORMAT: &str = "webssl-curate-state/1";

/// One line of `manifest.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Index of the input (shard, folder or list) in resolution order.
    pub input: usize,
    /// Position of the sample within its input (0-based, counting unreadable ones).
    pub index: u64,
    /// The input path.
    pub source: String,
    /// The sample key (absent when the sample could not be read at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kept: bool,
    /// The sample or shard could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The verdicts of the filters that judged it, in chain order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Verdict>,
}

/// Counts of one filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterCounts {
    pub name: String,
    pub kind: String,
    /// Samples it judged.
    pub judged: u64,
    pub kept: u64,
    pub dropped: u64,
    /// Samples it could not judge (decided by `on_error`, counted in kept/dropped too).
    pub errors: u64,
}

/// What the re-sharding pass wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReshardSummary {
    pub dir: String,
    pub shards: usize,
    pub samples: u64,
    /// Kept samples that could not be written (key not a valid member name).
    pub skipped: u64,
}

/// `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub inputs: usize,
    /// Samples read (including unreadable ones).
    pub samples: u64,
    pub kept: u64,
    /// Members or shards that could not be read.
    pub unreadable: u64,
    pub filters: Vec<FilterCounts>,
    pub finished: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard: Option<ReshardSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: String,
    fingerprint: String,
    next_input: usize,
    next_index: u64,
    manifest_bytes: u64,
    summary: Summary,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct CurateOptions {
    /// `--input` arguments (brace patterns, shard dirs, folders, lists; see `webssl_data::source`).
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub reshard: bool,
    pub resume: bool,
    /// Commit at least this often (samples; rounded up to whole batches).
    pub commit_every: usize,
    pub shard_limits: ShardLimits,
}

/// Reported after every batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub samples: u64,
    pub kept: u64,
    pub unreadable: u64,
    pub input: usize,
    pub inputs: usize,
    /// Samples processed by this process (not replayed).
    pub new_samples: u64,
}

fn manifest_err(path: &Path, reason: impl Into<String>) -> CurateError {
    CurateError::Manifest {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The samples of one input, all members kept (folder and list images become `{ext, txt}` samples).
fn input_samples(
    spec: &InputSpec,
) -> Box<dyn Iterator<Item = std::result::Result<Sample, DataError>> + Send> {
    match spec {
        InputSpec::Tar(p) => match ShardReader::open(p) {
            Ok(it) => Box::new(it),
            Err(e) => Box::new(std::iter::once(Err(e))),
        },
        other => Box::new(iter_items(std::slice::from_ref(other)).map(|r| {
            r.map(|item| {
                let ext = sniff_ext(&item.bytes)
                    .map(str::to_string)
                    .or_else(|| {
                        Path::new(&item.source)
                            .extension()
                            .map(|e| e.to_string_lossy().to_lowercase())
                    })
                    .unwrap_or_else(|| "jpg".into());
                let mut s = Sample::new(item.key).with(ext, item.bytes);
                if let Some(c) = item.caption {
                    s = s.with("txt", c.into_bytes());
                }
                s
            })
        })),
    }
}

/// What a resumed run must share with the interrupted one: the chain, the inputs, and the content
/// of each probe filter's files (a filter retrained in place would otherwise mix two classifiers
/// in one manifest). Files that cannot be read hash as absent; loading the filter reports them.
fn fingerprint(cfg: &ChainConfig, inputs: &[InputSpec]) -> String {
    let probes: Vec<String> = cfg
        .filter
        .iter()
        .filter_map(|f| match f {
            crate::config::FilterConfig::Probe(p) => Some(p),
            _ => None,
        })
        .map(|p| {
            let mut h = Sha256::new();
            for file in [crate::probe::FILTER_FILE, crate::probe::PROBE_FILE] {
                h.update(file.as_bytes());
                h.update(std::fs::read(p.path.join(file)).unwrap_or_default());
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    let json = serde_json::json!({
        "chain": cfg,
        "inputs": inputs.iter().map(|s| s.path().display().to_string()).collect::<Vec<_>>(),
        "probes": probes,
    });
    let digest = Sha256::digest(json.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| manifest_err(path, format!("cannot serialise: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)?;
    Ok(())
}

fn load_state(path: &Path) -> Result<State> {
    let bytes = std::fs::read(path).map_err(|e| CurateError::io(path, e))?;
    let state: State = serde_json::from_slice(&bytes)
        .map_err(|e| manifest_err(path, format!("not a curate state file: {e}")))?;
    if state.format != STATE_FORMAT {
        return Err(manifest_err(
            path,
            format!("format `{}`, expected `{STATE_FORMAT}`", state.format),
        ));
    }
    Ok(state)
}

/// Reads the records of `manifest.jsonl` (the first `limit` bytes).
fn read_records(path: &Path, limit: u64) -> Result<impl Iterator<Item = Result<Record>>> {
    let file = File::open(path).map_err(|e| CurateError::io(path, e))?;
    let reader = BufReader::new(std::io::Read::take(file, limit));
    let path = path.to_path_buf();
    Ok(reader.lines().enumerate().map(move |(i, line)| {
        let line = line.map_err(|e| CurateError::io(&path, e))?;
        serde_json::from_str::<Record>(&line)
            .map_err(|e| manifest_err(&path, format!("line {}: {e}", i + 1)))
    }))
}

impl Summary {
    fn new(cfg: &ChainConfig, inputs: usize) -> Self {
        Summary {
            inputs,
            filters: cfg
                .filter
                .iter()
                .map(|f| FilterCounts {
                    name: f.name(),
                    kind: f.kind().into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn add(&mut self, r: &Record) {
        self.samples += 1;
        self.kept += u64::from(r.kept);
        self.unreadable += u64::from(r.error.is_some());
        for v in &r.filters {
            if let Some(c) = self.filters.iter_mut().find(|c| c.name == v.filter) {
                c.judged += 1;
                if v.keep {
                    c.kept += 1;
                } else {
                    c.dropped += 1;
                }
                c.errors += u64::from(v.error.is_some());
            }
        }
    }
}

/// Runs (or resumes) a curation pass; see the module docs. `load_classifier` builds the
/// classifiers of `probe` filters.
pub fn curate(
    chain_path: &Path,
    opts: &CurateOptions,
    load_classifier: &mut ClassifierLoader<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let cfg = ChainConfig::load(chain_path)?;
    curate_with(&cfg, opts, load_classifier, progress)
}

/// [`curate`] with a parsed chain.
pub fn curate_with(
    cfg: &ChainConfig,
    opts: &CurateOptions,
    load_classifier: &mut ClassifierLoader<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let inputs = resolve_inputs(&opts.inputs)?;
    if inputs.is_empty() {
        return Err(CurateError::config("--input", "input", "no inputs given"));
    }
    let out = &opts.output;
    std::fs::create_dir_all(out).map_err(|e| CurateError::io(out, e))?;
    // `summary.json.tmp-<pid>` and the like of a killed run.
    webssl_data::shards::remove_stale_temps(out)?;
    let state_path = out.join(STATE_FILE);
    let manifest_path = out.join(MANIFEST_FILE);
    let fp = fingerprint(cfg, &inputs);

    let previous = if state_path.is_file() {
        let s = load_state(&state_path)?;
        if s.fingerprint != fp {
            return Err(manifest_err(
                &state_path,
                "this output holds a run with another filter chain, other inputs or other probe filter files; use a new --output",
            ));
        }
        if !s.summary.finished && !opts.resume {
            return Err(manifest_err(
                &state_path,
                "this output holds an unfinished run; pass --resume to continue it or use a new --output",
            ));
        }
        Some(s)
    } else {
        None
    };

    if let Some(s) = &previous
        && s.summary.finished
    {
        tracing::info!("{}: already finished, nothing to redo", out.display());
        let mut summary = s.summary.clone();
        if opts.reshard && summary.reshard.is_none() {
            summary.reshard = Some(reshard(out, &inputs, opts.shard_limits)?);
            save_json(&out.join(SUMMARY_FILE), &summary)?;
            save_json(
                &state_path,
                &State {
                    summary: summary.clone(),
                    ..s.clone()
                },
            )?;
        }
        return Ok(summary);
    }

    let mut chain = Chain::build(cfg, load_classifier)?;
    let chain_toml = toml::to_string_pretty(cfg)
        .map_err(|e| manifest_err(&out.join(CHAIN_FILE), e.to_string()))?;
    write_atomic(out.join(CHAIN_FILE), chain_toml.as_bytes())?;

    let mut state = match previous {
        Some(s) => s,
        None => State {
            format: STATE_FORMAT.into(),
            fingerprint: fp,
            next_input: 0,
            next_index: 0,
            manifest_bytes: 0,
            summary: Summary::new(cfg, inputs.len()),
        },
    };
    // Drop anything written after the last commit, then relearn the committed records.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&manifest_path)
        .map_err(|e| CurateError::io(&manifest_path, e))?;
    let len = file
        .metadata()
        .map_err(|e| CurateError::io(&manifest_path, e))?
        .len();
    if len < state.manifest_bytes {
        return Err(manifest_err(
            &manifest_path,
            format!(
                "is {len} bytes, shorter than the {} committed; the output was modified",
                state.manifest_bytes
            ),
        ));
    }
    file.set_len(state.manifest_bytes)
        .map_err(|e| CurateError::io(&manifest_path, e))?;
    if state.manifest_bytes > 0 {
        let mut replayed = 0u64;
        for r in read_records(&manifest_path, state.manifest_bytes)? {
            let r = r?;
            chain.restore(r.key.as_deref().unwrap_or(""), &r.filters)?;
            replayed += 1;
        }
        if replayed != state.summary.samples {
            return Err(manifest_err(
                &manifest_path,
                format!(
                    "holds {replayed} committed records, the state says {}",
                    state.summary.samples
                ),
            ));
        }
        tracing::info!(
            "resuming at input {} position {} ({} samples committed)",
            state.next_input,
            state.next_index,
            replayed
        );
    }
    let mut file = file;
    file.seek(SeekFrom::End(0))
        .map_err(|e| CurateError::io(&manifest_path, e))?;
    let mut manifest = BufWriter::with_capacity(1 << 20, file);

    let batch_size = cfg.chain.batch_size;
    let commit_every = opts.commit_every.max(1).div_ceil(batch_size) * batch_size;
    let mut new_samples = 0u64;
    let commit = |manifest: &mut BufWriter<File>,
                  state: &mut State,
                  next_input: usize,
                  next_index: u64|
     -> Result<()> {
        manifest
            .flush()
            .map_err(|e| CurateError::io(&manifest_path, e))?;
        let f = manifest.get_ref();
        f.sync_data()
            .map_err(|e| CurateError::io(&manifest_path, e))?;
        state.manifest_bytes = f
            .metadata()
            .map_err(|e| CurateError::io(&manifest_path, e))?
            .len();
        state.next_input = next_input;
        state.next_index = next_index;
        save_json(&state_path, state)
    };

    let started = Instant::now();
    for ui in state.next_input..inputs.len() {
        let spec = &inputs[ui];
        let source = spec.path().display().to_string();
        let mut samples = input_samples(spec);
        let mut index = 0u64;
        if ui == state.next_input {
            while index < state.next_index {
                if samples.next().is_none() {
                    return Err(manifest_err(
                        &state_path,
                        format!(
                            "{source} now ends after {index} samples, but {} were committed; the input changed",
                            state.next_index
                        ),
                    ));
                }
                index += 1;
            }
        }
        let mut since_commit = 0usize;
        loop {
            let items: Vec<(u64, std::result::Result<Sample, DataError>)> = samples
                .by_ref()
                .take(batch_size)
                .map(|r| {
                    index += 1;
                    (index - 1, r)
                })
                .collect();
            if items.is_empty() {
                break;
            }
            let mut records: Vec<Record> = Vec::with_capacity(items.len());
            let mut candidates = Vec::new();
            let mut at = Vec::new();
            for (i, r) in items {
                let mut rec = Record {
                    input: ui,
                    index: i,
                    source: source.clone(),
                    key: None,
                    kept: false,
                    error: None,
                    filters: Vec::new(),
                };
                match r {
                    Ok(mut s) => {
                        rec.key = Some(s.key.clone());
                        let what = format!("{source}:{}", s.key);
                        match s.image_bytes().map(|(ext, _)| ext.to_string()) {
                            Some(ext) => {
                                let bytes = s.files.remove(&ext).unwrap_or_default();
                                at.push(records.len());
                                candidates.push(Candidate::new(
                                    s.key.clone(),
                                    what,
                                    bytes,
                                    s.meta(),
                                    cfg.chain.max_pixels,
                                ));
                            }
                            None => {
                                let exts: Vec<&str> = s.files.keys().map(String::as_str).collect();
                                rec.error = Some(format!(
                                    "no image member (jpg/jpeg/png/webp/gif); has {exts:?}"
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("skipped: {e}");
                        rec.error = Some(e.to_string());
                    }
                }
                records.push(rec);
            }
            for (slot, (kept, verdicts)) in at.into_iter().zip(chain.judge(&mut candidates)) {
                records[slot].kept = kept;
                records[slot].filters = verdicts;
            }
            for r in &records {
                let line = serde_json::to_string(r)
                    .map_err(|e| manifest_err(&manifest_path, e.to_string()))?;
                manifest
                    .write_all(line.as_bytes())
                    .and_then(|_| manifest.write_all(b"\n"))
                    .map_err(|e| CurateError::io(&manifest_path, e))?;
                state.summary.add(r);
            }
            new_samples += records.len() as u64;
            since_commit += records.len();
            if since_commit >= commit_every {
                commit(&mut manifest, &mut state, ui, index)?;
                since_commit = 0;
            }
            progress(Progress {
                samples: state.summary.samples,
                kept: state.summary.kept,
                unreadable: state.summary.unreadable,
                input: ui,
                inputs: inputs.len(),
                new_samples,
            });
        }
        commit(&mut manifest, &mut state, ui + 1, 0)?;
    }
    drop(manifest);
    tracing::info!(
        "judged {new_samples} samples in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    state.summary.finished = true;
    if opts.reshard {
        state.summary.reshard = Some(reshard(out, &inputs, opts.shard_limits)?);
    }
    save_json(&out.join(SUMMARY_FILE), &state.summary)?;
    save_json(&state_path, &state)?;
    Ok(state.summary)
}

/// Writes the kept samples of a finished manifest into `out/shards` (module docs).
fn reshard(out: &Path, inputs: &[InputSpec], limits: ShardLimits) -> Result<ReshardSummary> {
    let dir = out.join(SHARDS_DIR);
    if dir.is_dir() {
        // A previous, interrupted pass: its shards are not indexed and would be stale.
        for entry in std::fs::read_dir(&dir).map_err(|e| CurateError::io(&dir, e))? {
            let p = entry.map_err(|e| CurateError::io(&dir, e))?.path();
            if p.is_file() {
                std::fs::remove_file(&p).map_err(|e| CurateError::io(&p, e))?;
            }
        }
    }
    let manifest_path = out.join(MANIFEST_FILE);
    let mut records = read_records(&manifest_path, u64::MAX)?;
    let mut writer = ShardWriter::create(&dir, "kept", limits)?;
    let mut skipped = 0u64;
    for (ui, spec) in inputs.iter().enumerate() {
        for (i, sample) in input_samples(spec).enumerate() {
            let rec = records.next().ok_or_else(|| {
                manifest_err(
                    &manifest_path,
                    "has fewer records than the inputs have samples",
                )
            })??;
            if rec.input != ui || rec.index != i as u64 {
                return Err(manifest_err(
                    &manifest_path,
                    format!(
                        "record for input {} position {} where input {ui} position {i} was expected; the inputs changed",
                        rec.input, rec.index
                    ),
                ));
            }
            let Ok(sample) = sample else { continue };
            if !rec.kept {
                continue;
            }
            if rec.key.as_deref() != Some(sample.key.as_str()) {
                return Err(manifest_err(
                    &manifest_path,
                    format!(
                        "record key {:?} but the input has `{}` at input {ui} position {i}",
                        rec.key, sample.key
                    ),
                ));
            }
            match writer.write(&sample) {
                Ok(()) => {}
                Err(DataError::Sample { what, reason }) => {
                    tracing::warn!("not re-sharded: {what}: {reason}");
                    skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let samples = writer.samples_written();
    let index = writer.finish()?;
    Ok(ReshardSummary {
        dir: dir.display().to_string(),
        shards: index.shards.len(),
        samples,
        skipped,
    })
}
