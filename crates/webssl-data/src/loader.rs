//! The multi-threaded, resumable data loader: shards → samples → decode/augment → collated batches.
//!
//! # Pipeline
//!
//! ```text
//! reader thread per logical worker (sampler part): WorkerStream over addresses, reads its shards
//!   sequentially, holds the raw samples in the seeded shuffle buffer → bounded channel
//! dispatcher: takes the workers' outputs round-robin (the sampler's interleave), numbers them
//!   (`seq`), needs a *ticket* per sample → bounded job channel
//! N decode threads: decode + transform (+ MAE mask) each job → result channel
//! consumer (`next_batch`, the caller's thread): reorders by `seq`, skips bad samples, collates
//!   `batch_size` good ones, draws the iBOT masks, returns a ticket per consumed sample
//! ```
//!
//! **Back-pressure**: at most `prefetch_samples` samples are between the dispatcher and the consumer
//! (tickets), plus `reader_queue` per reader channel; a slow consumer stalls the whole pipeline instead
//! of growing memory.
//!
//! **Determinism**: the sample order is the sampler's; the augmentation stream of a sample is
//! `rng_stream(seed, "augment", [epoch, shard, index])` and its MAE stream `(seed, "mae", …)`, so a
//! sample's views do not depend on the thread that made them, the decode-thread count, the rank or the
//! world size. iBOT masks use `(seed, "ibot", [rank, batch])`. Results are reordered by `seq` before
//! collation, so batches are identical for 1 or 16 decode threads.
//!
//! **Bad input**: a member that cannot be read (corrupt tar member, truncated shard, unopenable shard),
//! a sample without an image, an undecodable image or a transform error is skipped and counted with
//! `shard:key` (or `shard:#index` when the key is unknown) and the reason, never fatal. Skips depend only
//! on the bytes, so they are deterministic and resume stays exact. Only a panicking transform or dead
//! threads are fatal ([`DataError::Loader`]).
//!
//! **Resume**: [`LoaderCursor`] after batch `k` holds the sampler position just after the last sample
//! of batch `k` (skipped samples before it included) and the batch count; a loader built from it yields
//! batch `k + 1` exactly. The reader threads replay their epoch on addresses and then re-read only the
//! samples still sitting in their shuffle buffer (grouped per shard, one forward pass each). An item
//! survives `k` later reads with probability `(1 − 1/buffer)^k`, so with shards much larger than the
//! buffer this re-reads the current and usually one previous shard per worker.
//!
//! **Collation** follows dinov2's `collate_data_and_cast`: views are stacked *view-major*, i.e. for a
//! group of `V` views the buffer is `[V·B, C, H, W]` with view `v` of image `i` at row `v·B + i`.
//!
//! **Plugging in**: the source is a [`ShardSource`] ([`TarShards`] over a shard directory's
//! `index.json`, [`MemorySource`] for tests and benchmarks); the per-sample transform is a
//! [`SampleTransform`] ([`DinoViews`] wraps [`DinoAugment`], [`SingleView`] the MAE/CLIP crop);
//! decoding is a [`DecodeFn`] (default [`pil_decoder`], PIL `convert("RGB")` semantics).
//!
//! Usage (one loader per rank):
//!
//! ```text
//! let source = Arc::new(TarShards::open("shards/")?);
//! let dino = Arc::new(DinoViews::new(DinoAugment::new(DinoAugConfig::default())?));
//! let masks = MaskSpec::Ibot { generator: MaskingGenerator::dinov2(224, 14)?, config: IbotMaskConfig::default(), group: 0 };
//! let mut loader = Loader::new(source, sampler_cfg, dino, masks, LoaderConfig::new(64), checkpoint.cursor.as_ref())?;
//! let batch = loader.next_batch()?;      // views[0]: [2·64, 3, 224, 224], views[1]: [8·64, 3, 98, 98]
//! checkpoint.cursor = Some(loader.cursor());  // serde JSON, resumes at the next batch
//! ```
//!
//! Memory: each reader's shuffle buffer holds up to `shuffle_buffer` raw (encoded) samples, e.g.
//! 1000 × ~100 kB = 100 MB per logical worker. The per-sample view buffers (~2 MB for a DINO
//! sample) are pooled and reused, at most `prefetch_samples + batch_size + decode_threads` of them,
//! since faulting in and zeroing fresh pages for every sample cost more than the colour jitter;
//! a consumer can also hand a batch back with [`Loader::recycle`] so that the next one is collated
//! into its buffers.
//!
//! Reference: dinov2 `dinov2/data/{collate,loaders}.py`, webdataset's pipeline;
//! docs/reference/ecosystem-and-style.md P3 (resume), P5 (splitting), P6 (loader wait fraction).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{DinoAugment, SingleViewTransform};
use crate::error::{DataError, Result};
use crate::masks::{
    IbotMaskConfig, IbotMasks, MaeMask, MaeMasks, MaskingGenerator, collate_ibot_masks,
    mae_random_mask,
};
use crate::sampler::{
    EpochAddr, PartEpoch, SampleAddr, Sampler, SamplerConfig, SamplerCursor, WorkerCursor,
    rng_stream,
};
use crate::shards::{ShardIndex, ShardReader};

/// The parts of a sample the loader uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawSample {
    pub key: String,
    /// Encoded image bytes (`None` if the sample has no image member).
    pub image: Option<Vec<u8>>,
    pub caption: Option<String>,
    pub label: Option<i64>,
}

/// Members of one shard, in order. An `Err` item is a member that could not be read; the iterator may
/// end before the index's count (a truncated shard): the loader skips and counts both.
pub type ShardMembers = Box<dyn Iterator<Item = Result<RawSample>> + Send>;

/// Where the loader gets shards from (tar shards on disk, or memory).
pub trait ShardSource: Send + Sync {
    fn num_shards(&self) -> usize;
    /// Samples in `shard` according to the index (the sampler's unit of account).
    fn shard_len(&self, shard: usize) -> u64;
    /// A short name for messages (`shard:key`), e.g. the shard's file name.
    fn shard_name(&self, shard: usize) -> String;
    fn open(&self, shard: usize) -> Result<ShardMembers>;
}

/// Shards held in memory (tests, benchmarks, synthetic data). Each member is a sample or a read error.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    pub shards: Vec<MemoryShard>,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryShard {
    pub name: String,
    /// What the index claims; may exceed `members.len()` to model a truncated shard.
    pub len: u64,
    /// `Err(reason)` models a corrupt member.
    pub members: Vec<std::result::Result<RawSample, String>>,
}

impl ShardSource for MemorySource {
    fn num_shards(&self) -> usize {
        self.shards.len()
    }
    fn shard_len(&self, shard: usize) -> u64 {
        self.shards[shard].len
    }
    fn shard_name(&self, shard: usize) -> String {
        self.shards[shard].name.clone()
    }
    fn open(&self, shard: usize) -> Result<ShardMembers> {
        let s = &self.shards[shard];
        let name = s.name.clone();
        let members = s.members.clone();
        Ok(Box::new(members.into_iter().map(move |m| {
            m.map_err(|reason| DataError::Shard {
                path: name.clone().into(),
                reason,
            })
        })))
    }
}

/// WebDataset tar shards of one directory, sized by its `index.json` ([`crate::shards`]).
///
/// Position semantics: the index counts the samples the reader yields as `Ok`, so sample-level
/// errors (e.g. a duplicated member) are dropped here (logged with `shard:key`) and do not take a
/// position; damage (truncation, bad checksum) ends the shard, and the loader skips the indexed
/// samples that are missing, naming them `shard:#index`.
#[derive(Clone, Debug)]
pub struct TarShards {
    index: ShardIndex,
    paths: Vec<PathBuf>,
}

impl TarShards {
    /// Opens the shards of `dir`: its `index.json`, checked against the files, or the tars as they
    /// are when there is no index ([`ShardIndex::open`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let index = ShardIndex::open(dir.as_ref())?;
        Ok(Self::from_index(dir, index))
    }

    /// Shards listed in `index`, relative to `dir`.
    pub fn from_index(dir: impl AsRef<Path>, index: ShardIndex) -> Self {
        let paths = index.paths(dir);
        Self { index, paths }
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }
}

impl ShardSource for TarShards {
    fn num_shards(&self) -> usize {
        self.index.shards.len()
    }
    fn shard_len(&self, shard: usize) -> u64 {
        self.index.shards[shard].samples
    }
    fn shard_name(&self, shard: usize) -> String {
        self.index.shards[shard].file.clone()
    }
    fn open(&self, shard: usize) -> Result<ShardMembers> {
        let members = ShardReader::open(&self.paths[shard])?;
        Ok(Box::new(members.filter_map(|item| match item {
            Ok(mut sample) => {
                let image = sample.image_bytes().map(|(ext, _)| ext.to_string());
                Some(Ok(RawSample {
                    caption: sample.caption().map(str::to_string),
                    label: sample.label(),
                    image: image.and_then(|ext| sample.files.remove(&ext)),
                    key: std::mem::take(&mut sample.key),
                }))
            }
            Err(DataError::Sample { what, reason }) => {
                tracing::warn!(%what, %reason, "sample not in the index, dropped");
                None
            }
            Err(e) => Some(Err(e)),
        })))
    }
}

/// Shape of one view, `C × H × W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ViewShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }
    /// Number of `f32` values.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `count` views of one shape (e.g. DINO: 2 global 3×224×224, 8 local 3×98×98).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewGroup {
    pub name: String,
    pub count: usize,
    pub shape: ViewShape,
}

/// The per-sample transform: one image in, every view out as CHW `f32`.
///
/// `out` holds one slice per view, groups in order, views within a group in order, each exactly
/// `shape.len()` long, and must be written in full: the loader reuses these buffers from sample to
/// sample, so on entry they hold an earlier sample's values. All randomness must come from `rng`
/// (the sample's own stream).
pub trait SampleTransform: Send + Sync {
    fn groups(&self) -> &[ViewGroup];
    fn apply(&self, image: &RgbImage, rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> Result<()>;
}

/// DINOv2 multi-crop as a loader transform: groups `global` (2 views) and `local` (`n_local`).
pub struct DinoViews {
    aug: DinoAugment,
    groups: Vec<ViewGroup>,
}

impl DinoViews {
    pub fn new(aug: DinoAugment) -> Self {
        let c = aug.config();
        let (g, l) = (c.global_size as usize, c.local_size as usize);
        let groups = vec![
            ViewGroup {
                name: "global".into(),
                count: 2,
                shape: ViewShape::new(3, g, g),
            },
            ViewGroup {
                name: "local".into(),
                count: c.n_local,
                shape: ViewShape::new(3, l, l),
            },
        ];
        Self { aug, groups }
    }
}

impl SampleTransform for DinoViews {
    fn groups(&self) -> &[ViewGroup] {
        &self.groups
    }
    fn apply(&self, image: &RgbImage, rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> Result<()> {
        let [g0, g1, local @ ..] = out else {
            return Err(DataError::Config {
                field: "views".into(),
                reason: "DINO needs 2 global views".into(),
            });
        };
        self.aug
            .apply_into(image, rng, [&mut **g0, &mut **g1], local)
            .map(|_| ())
    }
}

/// One random view (MAE or CLIP crop) as a loader transform: group `view` with one view.
pub struct SingleView {
    t: SingleViewTransform,
    groups: Vec<ViewGroup>,
}

impl SingleView {
    pub fn new(t: SingleViewTransform) -> Result<Self> {
        t.validate()?;
        let s = t.size as usize;
        let groups = vec![ViewGroup {
            name: "view".into(),
            count: 1,
            shape: ViewShape::new(3, s, s),
        }];
        Ok(Self { t, groups })
    }
}

impl SampleTransform for SingleView {
    fn groups(&self) -> &[ViewGroup] {
        &self.groups
    }
    fn apply(&self, image: &RgbImage, rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> Result<()> {
        let [view] = out else {
            return Err(DataError::Config {
                field: "views".into(),
                reason: "a single-view transform".into(),
            });
        };
        self.t.apply_into(image, rng, view).map(|_| ())
    }
}

/// Image decoder: bytes and a `shard:key` label → RGB.
pub type DecodeFn = Arc<dyn Fn(&[u8], &str) -> Result<RgbImage> + Send + Sync>;

/// [`crate::decode::decode_rgb`] (PIL `convert("RGB")` semantics, header-first pixel cap).
pub fn pil_decoder(max_pixels: u64) -> DecodeFn {
    Arc::new(move |bytes: &[u8], what: &str| crate::decode::decode_rgb(bytes, what, max_pixels))
}

/// Token masks drawn with each batch.
#[derive(Clone, Debug, Default)]
pub enum MaskSpec {
    #[default]
    None,
    /// iBOT block masks over the `count · B` crops of view group `group` (dinov2: the global crops).
    Ibot {
        generator: MaskingGenerator,
        config: IbotMaskConfig,
        group: usize,
    },
    /// MAE random masks, one per sample, over `n_tokens` patches.
    Mae { n_tokens: usize, mask_ratio: f64 },
}

/// Loader settings.
#[derive(Clone)]
pub struct LoaderConfig {
    /// Images per batch on this rank.
    pub batch_size: usize,
    /// Decode/augment threads (does not change the output).
    pub decode_threads: usize,
    /// Samples allowed between the dispatcher and the consumer (≥ 1; a few batches is plenty).
    pub prefetch_samples: usize,
    /// Read-ahead per reader thread, in samples.
    pub reader_queue: usize,
    /// How many skipped samples to list by name in [`LoaderStats::skipped`] (all are counted).
    pub max_skip_log: usize,
    /// The most samples skipped in a row before the loader gives up on data that nothing decodes
    /// (it also gives up earlier, once a whole pass over this rank's share was skipped).
    pub max_consecutive_skips: u64,
    pub decode: DecodeFn,
}

impl LoaderConfig {
    /// Defaults for `batch_size`: threads = available cores, prefetch 4 batches, Pillow's pixel cap.
    /// With several ranks per machine, set `decode_threads` to cores / local ranks to avoid
    /// oversubscription (each rank's loader is independent).
    pub fn new(batch_size: usize) -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self {
            batch_size,
            decode_threads: threads,
            prefetch_samples: 4 * batch_size.max(1),
            reader_queue: 64,
            max_skip_log: 1000,
            max_consecutive_skips: 100_000,
            decode: pil_decoder(crate::decode::DEFAULT_MAX_PIXELS),
        }
    }
}

/// A collated batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Batch number on this rank (0-based, continues across resume).
    pub index: u64,
    pub batch_size: usize,
    pub groups: Vec<ViewGroup>,
    /// Per group, `[count · B, C, H, W]` view-major (view `v` of image `i` at row `v·B + i`).
    pub views: Vec<Vec<f32>>,
    pub keys: Vec<String>,
    /// Where each image came from, with its epoch.
    pub addrs: Vec<EpochAddr>,
    pub captions: Vec<Option<String>>,
    pub labels: Vec<Option<i64>>,
    pub ibot: Option<IbotMasks>,
    pub mae: Option<MaeMasks>,
}

/// A skipped sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// `shard:key`, or `shard:#index` when the member could not be read at all.
    pub what: String,
    pub reason: String,
}

/// Loader counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoaderStats {
    pub batches: u64,
    /// Members fetched by the reader threads so far (including read-ahead).
    pub samples_read: u64,
    /// Samples delivered in batches.
    pub samples_decoded: u64,
    pub samples_skipped: u64,
    /// The first `max_skip_log` skips.
    pub skipped: Vec<Skip>,
    /// Time the consumer spent inside `next_batch` (waiting on the pipeline, collating).
    pub wait_secs: f64,
    /// Time from the first `next_batch` call to the end of the last one.
    pub total_secs: f64,
    /// Thread-seconds the decode threads spent decoding and transforming (loader-only throughput is
    /// `samples / busy_secs` per thread).
    pub busy_secs: f64,
}

impl LoaderStats {
    /// "Loader wait %": the share of the consumer's time spent waiting for data (0 = never starved).
    pub fn wait_fraction(&self) -> f64 {
        if self.total_secs > 0.0 {
            (self.wait_secs / self.total_secs).min(1.0)
        } else {
            0.0
        }
    }
}

/// Serializable loader position: resume yields the batch after the last one returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderCursor {
    pub sampler: SamplerCursor,
    /// Batches returned so far on this rank.
    pub batches: u64,
}

type Content = std::result::Result<RawSample, String>;

/// What a reader emits.
struct Fetched {
    epoch: u64,
    addr: SampleAddr,
    content: Content,
    /// The worker's position after this item.
    cursor_after: WorkerCursor,
}

enum Slot {
    Pending(SampleAddr),
    Ready(SampleAddr, Content),
}

struct Job {
    seq: u64,
    item: Fetched,
}

struct Prepared {
    key: String,
    caption: Option<String>,
    label: Option<i64>,
    /// All views, concatenated in group/view order.
    data: Vec<f32>,
    mae: Option<MaeMask>,
}

enum Outcome {
    Ready(Prepared),
    Skipped(Skip),
    Fatal(String),
}

struct Done {
    seq: u64,
    epoch: u64,
    addr: SampleAddr,
    cursor_after: WorkerCursor,
    outcome: Outcome,
}

/// Sequential reader of one worker's shards, seeking forward by skipping members.
struct MemberReader {
    source: Arc<dyn ShardSource>,
    shard: Option<u32>,
    members: Option<ShardMembers>,
    /// Index of the next member `members` yields.
    pos: u64,
    /// Set once the shard cannot yield more: every later member is skipped with this reason.
    broken: Option<String>,
}

impl MemberReader {
    fn new(source: Arc<dyn ShardSource>) -> Self {
        Self {
            source,
            shard: None,
            members: None,
            pos: 0,
            broken: None,
        }
    }

    fn open(&mut self, shard: u32) {
        self.shard = Some(shard);
        self.pos = 0;
        match self.source.open(shard as usize) {
            Ok(m) => {
                self.members = Some(m);
                self.broken = None;
            }
            Err(e) => {
                self.members = None;
                self.broken = Some(format!("cannot open shard: {e}"));
            }
        }
    }

    fn fetch(&mut self, addr: SampleAddr) -> Content {
        if self.shard != Some(addr.shard) || self.pos > addr.index {
            self.open(addr.shard);
        }
        while self.pos < addr.index {
            let _ = self.take();
        }
        self.take()
    }

    fn take(&mut self) -> Content {
        self.pos += 1;
        if let Some(reason) = &self.broken {
            return Err(reason.clone());
        }
        match self.members.as_mut().and_then(Iterator::next) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(e.to_string()),
            None => {
                let shard = self.shard.unwrap_or(0) as usize;
                let reason = format!(
                    "shard ended after {} members but the index lists {}",
                    self.pos - 1,
                    self.source.shard_len(shard)
                );
                self.broken = Some(reason.clone());
                self.members = None;
                Err(reason)
            }
        }
    }
}

/// After a resume, fills the placeholders in the shuffle buffer, one forward pass per shard.
fn materialize(part: &mut PartEpoch<Slot>, reader: &mut MemberReader) {
    let items = part.buffer_mut().items_mut();
    let mut pending: Vec<(SampleAddr, usize)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Pending(a) => Some((*a, i)),
            Slot::Ready(..) => None,
        })
        .collect();
    pending.sort();
    for (addr, i) in pending {
        items[i] = Slot::Ready(addr, reader.fetch(addr));
    }
}

fn reader_main(
    sampler: Sampler,
    worker: usize,
    at: WorkerCursor,
    source: Arc<dyn ShardSource>,
    tx: Sender<Fetched>,
    read: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut reader = MemberReader::new(source);
    let mut stream = sampler.worker_stream(worker, at, Slot::Pending);
    materialize(stream.part_mut(), &mut reader);
    while !stop.load(Ordering::Relaxed) {
        let (epoch, slot) = stream.next_with(|a| {
            read.fetch_add(1, Ordering::Relaxed);
            Slot::Ready(a, reader.fetch(a))
        });
        let (addr, content) = match slot {
            Slot::Ready(a, c) => (a, c),
            // Not reached after `materialize`; correct (if slow) anyway.
            Slot::Pending(a) => (a, reader.fetch(a)),
        };
        let item = Fetched {
            epoch,
            addr,
            content,
            cursor_after: stream.cursor(),
        };
        if tx.send(item).is_err() {
            return;
        }
    }
}

fn dispatcher_main(
    readers: Vec<Receiver<Fetched>>,
    mut seq: u64,
    tickets: Receiver<()>,
    jobs: Sender<Job>,
) {
    let n = readers.len() as u64;
    loop {
        if tickets.recv().is_err() {
            return;
        }
        let Ok(item) = readers[(seq % n) as usize].recv() else {
            return;
        };
        if jobs.send(Job { seq, item }).is_err() {
            return;
        }
        seq += 1;
    }
}

/// What the decode threads share.
struct Prep {
    source: Arc<dyn ShardSource>,
    transform: Arc<dyn SampleTransform>,
    decode: DecodeFn,
    seed: u64,
    mae: Option<(usize, f64)>,
    view_lens: Vec<usize>,
    busy_nanos: Arc<AtomicU64>,
    pool: Arc<BufferPool>,
}

/// Per-sample view buffers returned by the consumer after collation and handed to the decode
/// threads again. A DINO sample is ~2 MB of `f32`; allocating it fresh for every sample made the
/// kernel fault in and zero those pages each time (~15 % of the loader's CPU time, measured).
struct BufferPool {
    bufs: std::sync::Mutex<Vec<Vec<f32>>>,
    /// Buffers kept at most (enough for every sample that can be in flight).
    cap: usize,
    len: usize,
}

impl BufferPool {
    /// A buffer of `self.len` values (contents unspecified).
    fn take(&self) -> Vec<f32> {
        let reused = self.bufs.lock().ok().and_then(|mut b| b.pop());
        reused.unwrap_or_else(|| vec![0f32; self.len])
    }

    fn give(&self, buf: Vec<f32>) {
        if buf.len() != self.len {
            return;
        }
        if let Ok(mut b) = self.bufs.lock()
            && b.len() < self.cap
        {
            b.push(buf);
        }
    }
}

impl Prep {
    fn prepare(&self, item: &Fetched) -> Outcome {
        let name = self.source.shard_name(item.addr.shard as usize);
        let raw = match &item.content {
            Ok(raw) => raw,
            Err(reason) => {
                return Outcome::Skipped(Skip {
                    what: format!("{name}:#{}", item.addr.index),
                    reason: reason.clone(),
                });
            }
        };
        let what = format!("{name}:{}", raw.key);
        let skip = |reason: String| {
            Outcome::Skipped(Skip {
                what: what.clone(),
                reason,
            })
        };
        let Some(bytes) = &raw.image else {
            return skip("no image member".into());
        };
        let image = match (self.decode)(bytes, &what) {
            Ok(i) => i,
            Err(e) => return skip(e.to_string()),
        };
        let ids = [item.epoch, u64::from(item.addr.shard), item.addr.index];
        let mut data = self.pool.take();
        let mut slices: Vec<&mut [f32]> = Vec::with_capacity(self.view_lens.len());
        let mut rest = data.as_mut_slice();
        for &len in &self.view_lens {
            let (head, tail) = rest.split_at_mut(len);
            slices.push(head);
            rest = tail;
        }
        let mut rng = rng_stream(self.seed, "augment", &ids);
        if let Err(e) = self.transform.apply(&image, &mut rng, &mut slices) {
            self.pool.give(data);
            return skip(format!("transform: {e}"));
        }
        let mae = self
            .mae
            .map(|(n, ratio)| mae_random_mask(n, ratio, &mut rng_stream(self.seed, "mae", &ids)));
        Outcome::Ready(Prepared {
            key: raw.key.clone(),
            caption: raw.caption.clone(),
            label: raw.label,
            data,
            mae,
        })
    }
}

fn decode_main(jobs: Receiver<Job>, results: Sender<Done>, prep: Arc<Prep>) {
    while let Ok(Job { seq, item }) = jobs.recv() {
        let t0 = Instant::now();
        let outcome =
            catch_unwind(AssertUnwindSafe(|| prep.prepare(&item))).unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Fatal(format!(
                    "transform panicked on shard {} member {}: {msg}",
                    item.addr.shard, item.addr.index
                ))
            });
        prep.busy_nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let done = Done {
            seq,
            epoch: item.epoch,
            addr: item.addr,
            cursor_after: item.cursor_after,
            outcome,
        };
        if results.send(done).is_err() {
            return;
        }
    }
}

/// The current run of consecutive skipped samples. Skips are otherwise never fatal, but data that
/// nothing decodes would make `next_batch` read forever: the run ends the loader once it spans a
/// whole pass over this rank's share (every worker skipped all of one of its epochs) or
/// [`LoaderConfig::max_consecutive_skips`] samples, with an error naming the shards.
#[derive(Default)]
struct SkipRun {
    len: u64,
    /// Per worker: the epoch of its first skip in the run.
    first_epoch: Vec<Option<u64>>,
    /// Per worker: whether the run holds one of its epochs whole (it reached `first + 2`).
    whole_epoch: Vec<bool>,
    shards: std::collections::BTreeSet<u32>,
    last_reason: String,
}

impl SkipRun {
    fn new(workers: usize) -> Self {
        Self {
            first_epoch: vec![None; workers],
            whole_epoch: vec![false; workers],
            ..Self::default()
        }
    }

    fn reset(&mut self) {
        if self.len > 0 {
            *self = Self::new(self.first_epoch.len());
        }
    }

    /// Records a skip of `worker`'s sample of `epoch`; whether the run now spans a whole pass.
    fn push(&mut self, worker: usize, epoch: u64, shard: u32, reason: &str) -> bool {
        self.len += 1;
        self.shards.insert(shard);
        reason.clone_into(&mut self.last_reason);
        let first = *self.first_epoch[worker].get_or_insert(epoch);
        if epoch >= first + 2 {
            self.whole_epoch[worker] = true;
        }
        self.whole_epoch.iter().all(|&w| w)
    }

    /// The error that ends the loader.
    fn error(&self, source: &dyn ShardSource, whole_pass: bool) -> DataError {
        const SHOWN: usize = 8;
        let mut names: Vec<String> = self
            .shards
            .iter()
            .take(SHOWN)
            .map(|&s| source.shard_name(s as usize))
            .collect();
        if self.shards.len() > SHOWN {
            names.push(format!("and {} more", self.shards.len() - SHOWN));
        }
        let extent = if whole_pass {
            "a whole pass over this rank's share of the data".to_string()
        } else {
            "the limit of samples skipped in a row".to_string()
        };
        DataError::Loader {
            reason: format!(
                "no sample could be used: {} samples skipped in a row ({extent}) from shard(s) {}; last reason: {}",
                self.len,
                names.join(", "),
                self.last_reason
            ),
        }
    }
}

/// The loader. Iterate with [`Loader::next_batch`] (or as an `Iterator` of `Result<Batch>`).
pub struct Loader {
    sampler: Sampler,
    source: Arc<dyn ShardSource>,
    skip_run: SkipRun,
    cfg: LoaderConfig,
    groups: Vec<ViewGroup>,
    masks: MaskSpec,
    results: Option<Receiver<Done>>,
    tickets: Option<Sender<()>>,
    reorder: BTreeMap<u64, Done>,
    next_seq: u64,
    workers: Vec<WorkerCursor>,
    batches: u64,
    stats: LoaderStats,
    read: Arc<AtomicU64>,
    busy_nanos: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    first_call: Option<Instant>,
    wait: Duration,
    pool: Arc<BufferPool>,
    /// Collated view buffers handed back with [`Loader::recycle`], per group.
    spare_views: Vec<Option<Vec<f32>>>,
}

impl Loader {
    /// Starts the pipeline for `sampler_cfg.rank`, from the beginning or from `resume`.
    pub fn new(
        source: Arc<dyn ShardSource>,
        sampler_cfg: SamplerConfig,
        transform: Arc<dyn SampleTransform>,
        masks: MaskSpec,
        cfg: LoaderConfig,
        resume: Option<&LoaderCursor>,
    ) -> Result<Self> {
        let bad = |field: &str, reason: String| {
            Err(DataError::Config {
                field: field.into(),
                reason,
            })
        };
        if cfg.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        let groups = transform.groups().to_vec();
        match &masks {
            MaskSpec::Ibot { group, config, .. } => {
                config.validate()?;
                if *group >= groups.len() {
                    return bad(
                        "ibot.group",
                        format!(
                            "view group {group} does not exist ({} groups)",
                            groups.len()
                        ),
                    );
                }
            }
            MaskSpec::Mae { mask_ratio, .. } if !(0.0..=1.0).contains(mask_ratio) => {
                return bad(
                    "mae.mask_ratio",
                    format!("need a ratio in [0, 1], got {mask_ratio}"),
                );
            }
            _ => {}
        }
        let sizes = (0..source.num_shards())
            .map(|s| source.shard_len(s))
            .collect();
        let sampler = Sampler::new(sizes, sampler_cfg)?;
        let (workers, consumed, batches) = match resume {
            Some(c) => {
                sampler.check_cursor(&c.sampler)?;
                (c.sampler.workers.clone(), c.sampler.consumed, c.batches)
            }
            None => (
                vec![WorkerCursor::default(); sampler.config().num_workers],
                0,
                0,
            ),
        };
        if !sampler.splits_whole_shards() {
            tracing::warn!(
                shards = source.num_shards(),
                data_workers = sampler.num_parts(),
                "fewer shards than ranks x workers: striding samples, every worker reads every shard"
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| DataError::Loader {
                    reason: format!("cannot start a thread: {e}"),
                })
        };
        let mut reader_rxs = Vec::new();
        for (w, &at) in workers.iter().enumerate() {
            let (tx, rx) = bounded(cfg.reader_queue.max(1));
            reader_rxs.push(rx);
            let (sampler, source, read, stop) =
                (sampler.clone(), source.clone(), read.clone(), stop.clone());
            threads.push(spawn(
                format!("webssl-read-{w}"),
                Box::new(move || reader_main(sampler, w, at, source, tx, read, stop)),
            )?);
        }
        let prefetch = cfg.prefetch_samples.max(1);
        let (ticket_tx, ticket_rx) = bounded(prefetch);
        for _ in 0..prefetch {
            ticket_tx.send(()).map_err(|_| DataError::Loader {
                reason: "ticket channel closed".into(),
            })?;
        }
        let (job_tx, job_rx) = bounded(prefetch);
        threads.push(spawn(
            "webssl-dispatch".into(),
            Box::new(move || dispatcher_main(reader_rxs, consumed, ticket_rx, job_tx)),
        )?);
        let (result_tx, result_rx) = unbounded(); // bounded by the tickets
        let view_lens: Vec<usize> = groups
            .iter()
            .flat_map(|g| std::iter::repeat_n(g.shape.len(), g.count))
            .collect();
        let pool = Arc::new(BufferPool {
            bufs: std::sync::Mutex::new(Vec::new()),
            // In flight at once: the tickets, the batch being collated, one per decode thread.
            cap: prefetch + cfg.batch_size + cfg.decode_threads.max(1),
            len: view_lens.iter().sum(),
        });
        let prep = Arc::new(Prep {
            source: source.clone(),
            transform,
            decode: cfg.decode.clone(),
            seed: sampler.config().seed,
            mae: match &masks {
                MaskSpec::Mae {
                    n_tokens,
                    mask_ratio,
                } => Some((*n_tokens, *mask_ratio)),
                _ => None,
            },
            view_lens,
            busy_nanos: busy_nanos.clone(),
            pool: pool.clone(),
        });
        for t in 0..cfg.decode_threads.max(1) {
            let (jobs, results, prep) = (job_rx.clone(), result_tx.clone(), prep.clone());
            threads.push(spawn(
                format!("webssl-decode-{t}"),
                Box::new(move || decode_main(jobs, results, prep)),
            )?);
        }
        Ok(Self {
            skip_run: SkipRun::new(workers.len()),
            source,
            sampler,
            cfg,
            groups,
            masks,
            results: Some(result_rx),
            tickets: Some(ticket_tx),
            reorder: BTreeMap::new(),
            next_seq: consumed,
            workers,
            batches,
            stats: LoaderStats::default(),
            read,
            busy_nanos,
            stop,
            threads,
            first_call: None,
            wait: Duration::ZERO,
            pool,
            spare_views: Vec::new(),
        })
    }

    /// Hands a consumed batch back so that the next batch is collated into its view buffers
    /// instead of fresh ones (optional: call it once the views have been copied out, e.g. into
    /// tensors). A DINO batch of 32 is 68 MB of views; fresh buffers make the kernel fault in and
    /// zero every page again. The rest of the batch is dropped.
    pub fn recycle(&mut self, batch: Batch) {
        if batch.groups != self.groups {
            return;
        }
        self.spare_views = batch.views.into_iter().map(Some).collect();
    }

    /// The sampler this loader follows.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Position after the last batch returned.
    pub fn cursor(&self) -> LoaderCursor {
        LoaderCursor {
            sampler: self.sampler.cursor(self.next_seq, self.workers.clone()),
            batches: self.batches,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LoaderStats {
        let mut s = self.stats.clone();
        s.samples_read = self.read.load(Ordering::Relaxed);
        s.busy_secs = self.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
        s
    }

    /// The next sample in sequence order (blocking).
    fn next_done(&mut self) -> Result<Done> {
        loop {
            if let Some(d) = self.reorder.remove(&self.next_seq) {
                return Ok(d);
            }
            let rx = self.results.as_ref().ok_or_else(|| DataError::Loader {
                reason: "loader is shut down".into(),
            })?;
            let d = rx.recv().map_err(|_| DataError::Loader {
                reason: "the loader threads stopped".into(),
            })?;
            self.reorder.insert(d.seq, d);
        }
    }

    /// The next batch (blocking).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let start = Instant::now();
        self.first_call.get_or_insert(start);
        let b = self.cfg.batch_size;
        let mut samples: Vec<(EpochAddr, Prepared)> = Vec::with_capacity(b);
        while samples.len() < b {
            let done = self.next_done()?;
            // The sample is consumed: return its ticket and advance the cursor past it.
            if let Some(t) = &self.tickets {
                let _ = t.send(());
            }
            let worker = (done.seq % self.workers.len() as u64) as usize;
            self.workers[worker] = done.cursor_after;
            self.next_seq = done.seq + 1;
            match done.outcome {
                Outcome::Ready(p) => {
                    self.skip_run.reset();
                    samples.push((
                        EpochAddr {
                            epoch: done.epoch,
                            addr: done.addr,
                        },
                        p,
                    ))
                }
                Outcome::Skipped(skip) => {
                    tracing::debug!(what = %skip.what, reason = %skip.reason, "skipped sample");
                    let whole_pass =
                        self.skip_run
                            .push(worker, done.epoch, done.addr.shard, &skip.reason);
                    if whole_pass || self.skip_run.len >= self.cfg.max_consecutive_skips {
                        return Err(self.skip_run.error(self.source.as_ref(), whole_pass));
                    }
                    self.stats.samples_skipped += 1;
                    if self.stats.skipped.len() < self.cfg.max_skip_log {
                        self.stats.skipped.push(skip);
                    }
                }
                Outcome::Fatal(reason) => return Err(DataError::Loader { reason }),
            }
        }
        let batch = self.collate(samples);
        self.batches += 1;
        self.stats.batches = self.batches;
        self.stats.samples_decoded += b as u64;
        let end = Instant::now();
        self.wait += end - start;
        self.stats.wait_secs = self.wait.as_secs_f64();
        self.stats.total_secs = self.first_call.map_or(0.0, |t| (end - t).as_secs_f64());
        Ok(batch)
    }

    fn collate(&mut self, samples: Vec<(EpochAddr, Prepared)>) -> Batch {
        let b = samples.len();
        // Row `v·B + i` of a group is view `v` of image `i` (dinov2's view-major stacking). The copy
        // is memory-bound (a B = 64 DINO batch is 136 MB of f32), so rows are copied in parallel.
        let mut views = Vec::with_capacity(self.groups.len());
        let mut group_offset = 0; // of the group's first view within a sample's concatenated data
        for (gi, g) in self.groups.iter().enumerate() {
            let len = g.shape.len();
            // Every row is overwritten below, so a recycled buffer of the right size needs no
            // clearing.
            let mut buf = match self.spare_views.get_mut(gi).and_then(Option::take) {
                Some(buf) if buf.len() == g.count * b * len => buf,
                _ => vec![0f32; g.count * b * len],
            };
            buf.par_chunks_mut(len.max(1))
                .enumerate()
                .for_each(|(row, dst)| {
                    let (v, i) = (row / b, row % b);
                    let o = group_offset + v * len;
                    dst.copy_from_slice(&samples[i].1.data[o..o + len]);
                });
            views.push(buf);
            group_offset += g.count * len;
        }
        let ibot = match &self.masks {
            MaskSpec::Ibot {
                generator,
                config,
                group,
            } => {
                let mut rng = rng_stream(
                    self.sampler.config().seed,
                    "ibot",
                    &[self.sampler.config().rank as u64, self.batches],
                );
                Some(collate_ibot_masks(
                    generator,
                    self.groups[*group].count * b,
                    config,
                    &mut rng,
                ))
            }
            _ => None,
        };
        let mae = match &self.masks {
            MaskSpec::Mae { .. } => {
                let per: Vec<MaeMask> = samples.iter().filter_map(|(_, p)| p.mae.clone()).collect();
                Some(MaeMasks::stack(&per))
            }
            _ => None,
        };
        let (addrs, rest): (Vec<EpochAddr>, Vec<Prepared>) = samples.into_iter().unzip();
        let mut keys = Vec::with_capacity(b);
        let mut captions = Vec::with_capacity(b);
        let mut labels = Vec::with_capacity(b);
        for p in rest {
            keys.push(p.key);
            captions.push(p.caption);
            labels.push(p.label);
            self.pool.give(p.data);
        }
        Batch {
            index: self.batches,
            batch_size: b,
            groups: self.groups.clone(),
            views,
            keys,
            addrs,
            captions,
            labels,
            ibot,
            mae,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing our channel ends makes every blocked send/recv in the pipeline fail, so all threads exit.
        self.tickets = None;
        self.results = None;
        self.reorder.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::DinoAugConfig;
    use image::ImageEncoder;

    fn png(id: u8, w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([id, (x * 7 + y) as u8, (x ^ y) as u8 * 3])
        });
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// Reused per-sample buffers (the pool) and recycled batch buffers change nothing: the same
    /// batches, byte for byte, as a loader whose batches are dropped, with skips in the stream.
    #[test]
    fn reused_buffers_give_identical_batches() {
        let mut members = Vec::new();
        for id in 0..40u8 {
            members.push(Ok(RawSample {
                key: format!("k{id}"),
                image: Some(png(
                    id,
                    30 + u32::from(id % 5) * 7,
                    24 + u32::from(id % 3) * 9,
                )),
                ..RawSample::default()
            }));
        }
        members.insert(
            7,
            Ok(RawSample {
                key: "bad".into(),
                image: Some(b"not an image".to_vec()),
                ..RawSample::default()
            }),
        );
        let source = MemorySource {
            shards: vec![MemoryShard {
                name: "s0".into(),
                len: members.len() as u64,
                members,
            }],
        };
        let aug = DinoAugment::new(DinoAugConfig {
            global_size: 28,
            local_size: 14,
            n_local: 3,
            ..Default::default()
        })
        .unwrap();
        let transform: Arc<dyn SampleTransform> = Arc::new(DinoViews::new(aug));
        let start = || {
            let mut cfg = LoaderConfig::new(4);
            cfg.decode_threads = 2;
            cfg.prefetch_samples = 6;
            let scfg = SamplerConfig {
                seed: 3,
                shuffle_buffer: 8,
                ..SamplerConfig::default()
            };
            Loader::new(
                Arc::new(source.clone()),
                scfg,
                transform.clone(),
                MaskSpec::None,
                cfg,
                None,
            )
            .unwrap()
        };
        let (mut plain, mut reusing) = (start(), start());
        // 25 batches of 4 = 2.5 epochs: the pool and the recycled buffers are reused many times.
        for i in 0..25 {
            let want = plain.next_batch().unwrap();
            let got = reusing.next_batch().unwrap();
            assert_eq!(got, want, "batch {i}");
            reusing.recycle(got);
        }
        // The bad member came by in each of the three epochs touched.
        assert_eq!(reusing.stats().samples_skipped, 3);
        assert_eq!(plain.stats().samples_skipped, 3);
        assert!(reusing.pool.bufs.lock().unwrap().len() <= reusing.pool.cap);
    }
}
