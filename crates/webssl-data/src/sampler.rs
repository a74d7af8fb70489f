//! The resumable shard sampler, and the pipeline's randomness streams.
//!
//! # What is implemented
//!
//! An infinite, deterministic stream of sample *addresses* `(shard, index)` per rank, computed from the
//! shard index alone (sample counts per shard), so it is pure logic and tested without reading tars;
//! the loader fetches the bytes.
//!
//! For epoch `e`:
//! 1. **Shard permutation** of the non-empty shards from stream `(seed, "shards", e)` (webdataset PR #299:
//!    shuffle shards *before* splitting, or every worker sees the same subset each epoch, which PR #73
//!    measured as a drastic quality drop for contrastive models).
//! 2. **Split into parts**, `P = world_size · num_workers`: permuted shard `i` goes to rank `i mod W`,
//!    then within that rank to worker `(i / W) mod num_workers` (round-robin, webdataset's node- then
//!    worker-split). Part sizes differ by at most one shard.
//!    **Fewer non-empty shards than parts:** whole-shard assignment would leave parts empty, so the
//!    sampler falls back to *sample-level striding*: position `g` of the epoch's concatenated permuted
//!    sequence goes to part `g mod P`. Every sample is still seen exactly once per epoch, but every
//!    worker then reads (and skips through) every shard, so I/O is amplified `P`×; have at least `P`
//!    shards (ideally ≥ 4·P, webdataset#71) for real runs.
//! 3. **Shuffle buffer** per part and epoch (stream `(seed, "shuffle", e, rank, worker)`), webdataset
//!    style: the first `shuffle_buffer` samples only fill it (warm-up), then each new sample replaces
//!    a uniformly chosen one, which is emitted; at the end of the epoch the buffer drains in random
//!    order. It is reset at epoch boundaries so "exactly once per epoch" holds per part.
//! 4. **Interleave** a rank's `num_workers` part streams round-robin, one sample at a time (what a
//!    PyTorch `DataLoader` does per batch). `num_workers` is a *logical* split fixed by the config and
//!    part of the resume contract; the loader's decode-thread count is independent of it.
//! 5. Each part stream is infinite: after epoch `e` it continues with `e + 1`. Parts have slightly
//!    different lengths (by up to one shard when shards do not divide evenly), so ranks cross epoch
//!    boundaries at slightly different steps. Which part gets the extra shard is re-drawn every
//!    epoch, so the lag between parts is a random walk (≈ √epochs shard lengths after many epochs),
//!    not a drift in one direction. Training length is counted in samples/steps, never in epochs (P4).
//!
//! # Resume
//!
//! [`SamplerCursor`] (serde JSON) stores, per worker, `(epoch, emitted)`, plus the rank's total and a
//! fingerprint of the configuration and index. Resuming replays each part's epoch from its start on
//! addresses (O(samples of one part-epoch), microseconds per thousand) and continues exactly where it
//! stopped; the property tests check that resuming at any step yields exactly the remaining sequence.
//! Resume requires the same world size, worker count, buffer size, seed and index (checked); when the
//! layout changes, [`Sampler::restart_after`] continues at the start of the next epoch instead.
//!
//! # Randomness
//!
//! No global RNG: every stream is derived from `(seed, purpose, ids…)` by [`rng_stream`], a fixed hash.
//!
//! References: docs/reference/ecosystem-and-style.md P3–P5 (webdataset#71, #271, PR #73, PR #299);
//! dinov2 `ShardedInfiniteSampler` (docs/reference/training-algorithms.md §2) for the infinite stream.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 finaliser: a bijective 64-bit mixer with full avalanche (Steele et al. 2014).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a 64 over bytes: a fixed, platform-independent hash (std's `RandomState` is randomised per
/// process, which would break reproducibility). The project's one string hash: random-stream names
/// here, recipe and shard-list identities and collective consistency checks in webssl-train.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The ChaCha8 stream for `(seed, purpose, ids)`.
///
/// `purpose` names the consumer ("shards", "shuffle", "augment", "ibot", "mae", …) so streams of
/// different consumers never coincide; `ids` are the coordinates (epoch, rank, worker, step, sample…).
/// The hash chain absorbs the length of `ids`, so `[1]` and `[1, 0]` give different streams.
pub fn rng_stream(seed: u64, purpose: &str, ids: &[u64]) -> ChaCha8Rng {
    let mut s = mix64(seed ^ GOLDEN);
    s = mix64(s ^ fnv1a64(purpose.as_bytes()));
    s = mix64(s.wrapping_add(GOLDEN) ^ ids.len() as u64);
    for &id in ids {
        s = mix64(s.wrapping_add(GOLDEN) ^ id);
    }
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        let w = mix64(s.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1)));
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A uniform `f64` in `[0, 1)` with 53 random bits (the resolution of Python's `random.random()`).
pub fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform integer in `[0, n)`, unbiased (Lemire's multiply-shift with rejection). `n` must be > 0.
pub fn below(rng: &mut impl Rng, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// In-place Fisher–Yates shuffle (from the back, like Python's `random.shuffle`).
pub fn shuffle<T>(rng: &mut impl Rng, xs: &mut [T]) {
    for i in (1..xs.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        xs.swap(i, j);
    }
}

/// A sample's address: shard number (position in the shard index) and member index within the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleAddr {
    pub shard: u32,
    pub index: u64,
}

/// Sampler configuration. Everything but `rank` must agree across ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Logical data workers per rank (shard split and resume unit), not decode threads.
    pub num_workers: usize,
    /// Shuffle-buffer capacity in samples per worker; 0 or 1 = no sample shuffle.
    pub shuffle_buffer: usize,
    /// Permute shards every epoch (on by default; off only for debugging or evaluation passes).
    pub shuffle_shards: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            rank: 0,
            world_size: 1,
            num_workers: 1,
            shuffle_buffer: 1000,
            shuffle_shards: true,
        }
    }
}

/// A run of member indices `start, start + step, …` (< the shard's size) of one shard, in read order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub shard: u32,
    pub start: u64,
    pub step: u64,
}

/// The sampler: shard sizes + configuration → per-part epoch plans and streams.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    sizes: Arc<[u64]>,
    /// Shards with at least one sample (empty shards are never scheduled).
    nonempty: Vec<u32>,
    total: u64,
}

impl Sampler {
    /// A sampler over shards with the given sample counts (from the shard index).
    pub fn new(shard_sizes: Vec<u64>, cfg: SamplerConfig) -> Result<Self> {
        let bad = |field: &str, reason: String| {
            Err(DataError::Config {
                field: field.into(),
                reason,
            })
        };
        if cfg.world_size == 0 {
            return bad("world_size", "must be at least 1".into());
        }
        if cfg.rank >= cfg.world_size {
            return bad(
                "rank",
                format!(
                    "rank {} is not below world_size {}",
                    cfg.rank, cfg.world_size
                ),
            );
        }
        if cfg.num_workers == 0 {
            return bad("num_workers", "must be at least 1".into());
        }
        if shard_sizes.len() > u32::MAX as usize {
            return bad(
                "shards",
                format!("{} shards exceed the u32 shard id", shard_sizes.len()),
            );
        }
        let nonempty: Vec<u32> = (0..shard_sizes.len() as u32)
            .filter(|&s| shard_sizes[s as usize] > 0)
            .collect();
        let total: u64 = shard_sizes.iter().sum();
        let parts = (cfg.world_size * cfg.num_workers) as u64;
        if total < parts {
            return bad(
                "shards",
                format!(
                    "{total} samples cannot feed world_size {} x num_workers {} = {parts} data workers",
                    cfg.world_size, cfg.num_workers
                ),
            );
        }
        Ok(Self {
            cfg,
            sizes: shard_sizes.into(),
            nonempty,
            total,
        })
    }

    /// A sampler over the shards of a shard index (`index.json`).
    pub fn from_index(index: &crate::shards::ShardIndex, cfg: SamplerConfig) -> Result<Self> {
        Self::new(index.shards.iter().map(|s| s.samples).collect(), cfg)
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Samples per shard, as given.
    pub fn shard_sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// Total samples in the index (one epoch over all ranks and workers).
    pub fn total_samples(&self) -> u64 {
        self.total
    }

    /// `world_size · num_workers`.
    pub fn num_parts(&self) -> usize {
        self.cfg.world_size * self.cfg.num_workers
    }

    /// The part number of `(rank, worker)`: `rank + world_size · worker`.
    pub fn part(&self, rank: usize, worker: usize) -> usize {
        rank + self.cfg.world_size * worker
    }

    /// Whether shards are split whole (`true`) or samples are strided (fewer shards than parts).
    pub fn splits_whole_shards(&self) -> bool {
        self.nonempty.len() >= self.num_parts()
    }

    /// Epoch `epoch`'s order of the non-empty shards.
    pub fn shard_order(&self, epoch: u64) -> Vec<u32> {
        let mut order = self.nonempty.clone();
        if self.cfg.shuffle_shards {
            shuffle(
                &mut rng_stream(self.cfg.seed, "shards", &[epoch]),
                &mut order,
            );
        }
        order
    }

    /// What part `(rank, worker)` reads in epoch `epoch`, in read order (before the shuffle buffer).
    pub fn epoch_spans(&self, epoch: u64, rank: usize, worker: usize) -> Vec<Span> {
        let order = self.shard_order(epoch);
        let parts = self.num_parts() as u64;
        let part = self.part(rank, worker) as u64;
        if self.splits_whole_shards() {
            order
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u64 % parts == part)
                .map(|(_, &shard)| Span {
                    shard,
                    start: 0,
                    step: 1,
                })
                .collect()
        } else {
            let mut spans = Vec::new();
            let mut offset = 0u64; // global position of this shard's first sample
            for &shard in &order {
                let size = self.sizes[shard as usize];
                // First index i ≥ 0 with (offset + i) ≡ part (mod parts).
                let start = (part + parts - offset % parts) % parts;
                if start < size {
                    spans.push(Span {
                        shard,
                        start,
                        step: parts,
                    });
                }
                offset += size;
            }
            spans
        }
    }

    /// Samples part `(rank, worker)` sees in epoch `epoch`.
    pub fn epoch_len(&self, epoch: u64, rank: usize, worker: usize) -> u64 {
        self.epoch_spans(epoch, rank, worker)
            .iter()
            .map(|s| self.span_len(s))
            .sum()
    }

    fn span_len(&self, s: &Span) -> u64 {
        let size = self.sizes[s.shard as usize];
        if s.start >= size {
            0
        } else {
            (size - s.start).div_ceil(s.step)
        }
    }

    /// A part's epoch stream; `T` is what the shuffle buffer holds (addresses here, data in the loader).
    pub fn part_epoch<T>(&self, epoch: u64, rank: usize, worker: usize) -> PartEpoch<T> {
        let rng = rng_stream(
            self.cfg.seed,
            "shuffle",
            &[epoch, rank as u64, worker as u64],
        );
        PartEpoch {
            sizes: self.sizes.clone(),
            spans: self.epoch_spans(epoch, rank, worker),
            span_i: 0,
            next_index: None,
            buffer: ShuffleBuffer::new(self.cfg.shuffle_buffer, rng),
        }
    }

    /// Worker `worker` of this rank, starting at `(epoch, emitted)`: replays to that point.
    pub fn worker_stream<T>(
        &self,
        worker: usize,
        at: WorkerCursor,
        mut placeholder: impl FnMut(SampleAddr) -> T,
    ) -> WorkerStream<T> {
        let mut part = self.part_epoch(at.epoch, self.cfg.rank, worker);
        for _ in 0..at.emitted {
            if part.next_with(&mut placeholder).is_none() {
                break;
            }
        }
        WorkerStream {
            sampler: self.clone(),
            worker,
            epoch: at.epoch,
            emitted: at.emitted,
            part,
        }
    }

    /// This rank's address stream from the start (epoch 0).
    pub fn stream(&self) -> AddressStream {
        let workers = (0..self.cfg.num_workers)
            .map(|w| self.worker_stream(w, WorkerCursor::default(), |a| a))
            .collect();
        AddressStream {
            consumed: 0,
            workers,
        }
    }

    /// This rank's address stream resumed from `cursor` (written by [`AddressStream::cursor`] or the
    /// loader). Fails if the cursor was written for another configuration or shard index.
    pub fn resume(&self, cursor: &SamplerCursor) -> Result<AddressStream> {
        self.check_cursor(cursor)?;
        let workers = cursor
            .workers
            .iter()
            .enumerate()
            .map(|(w, &at)| self.worker_stream(w, at, |a| a))
            .collect();
        Ok(AddressStream {
            consumed: cursor.consumed,
            workers,
        })
    }

    /// Validates that `cursor` belongs to this sampler (same seed, layout, buffer and index).
    pub fn check_cursor(&self, c: &SamplerCursor) -> Result<()> {
        let mismatch = |field: &str, theirs: String, ours: String| {
            Err(DataError::Config {
                field: format!("cursor.{field}"),
                reason: format!(
                    "the cursor was written with {theirs}, this run has {ours}; resume needs the same"
                ),
            })
        };
        if c.version != CURSOR_VERSION {
            return mismatch("version", c.version.to_string(), CURSOR_VERSION.to_string());
        }
        let cfg = &self.cfg;
        if c.seed != cfg.seed {
            return mismatch("seed", c.seed.to_string(), cfg.seed.to_string());
        }
        if (c.rank, c.world_size) != (cfg.rank, cfg.world_size) {
            return mismatch(
                "rank",
                format!("rank {}/{}", c.rank, c.world_size),
                format!("rank {}/{}", cfg.rank, cfg.world_size),
            );
        }
        if c.num_workers != cfg.num_workers || c.workers.len() != cfg.num_workers {
            return mismatch(
                "num_workers",
                c.num_workers.to_string(),
                cfg.num_workers.to_string(),
            );
        }
        if c.shuffle_buffer != cfg.shuffle_buffer || c.shuffle_shards != cfg.shuffle_shards {
            return mismatch(
                "shuffle_buffer",
                format!("{} (shard shuffle {})", c.shuffle_buffer, c.shuffle_shards),
                format!(
                    "{} (shard shuffle {})",
                    cfg.shuffle_buffer, cfg.shuffle_shards
                ),
            );
        }
        if (c.n_shards, c.total_samples) != (self.sizes.len(), self.total) {
            return mismatch(
                "total_samples",
                format!("{} shards / {} samples", c.n_shards, c.total_samples),
                format!("{} shards / {} samples", self.sizes.len(), self.total),
            );
        }
        Ok(())
    }

    /// Builds a cursor for this sampler from per-worker positions.
    pub fn cursor(&self, consumed: u64, workers: Vec<WorkerCursor>) -> SamplerCursor {
        SamplerCursor {
            version: CURSOR_VERSION,
            seed: self.cfg.seed,
            rank: self.cfg.rank,
            world_size: self.cfg.world_size,
            num_workers: self.cfg.num_workers,
            shuffle_buffer: self.cfg.shuffle_buffer,
            shuffle_shards: self.cfg.shuffle_shards,
            n_shards: self.sizes.len(),
            total_samples: self.total,
            consumed,
            workers,
        }
    }

    /// A cursor for *this* sampler that continues a run whose layout changed (world size, workers,
    /// shuffle buffer) from `old`: exact resume is impossible then (the parts differ), so the new run
    /// starts at the beginning of the epoch after the furthest one `old` reached. The rest of the
    /// interrupted epoch is not seen; nothing is seen twice within an epoch. Every rank of the new run
    /// must pass the same `old` (e.g. rank 0's) so they agree. Seed and shard index must match.
    pub fn restart_after(&self, old: &SamplerCursor) -> Result<SamplerCursor> {
        let same_data = old.seed == self.cfg.seed
            && old.n_shards == self.sizes.len()
            && old.total_samples == self.total
            && old.shuffle_shards == self.cfg.shuffle_shards;
        if !same_data {
            return Err(DataError::Config {
                field: "cursor".into(),
                reason: format!(
                    "written for seed {} over {} shards / {} samples, this run has seed {} over {} / {}",
                    old.seed,
                    old.n_shards,
                    old.total_samples,
                    self.cfg.seed,
                    self.sizes.len(),
                    self.total
                ),
            });
        }
        let epoch = old.workers.iter().map(|w| w.epoch).max().unwrap_or(0) + 1;
        let workers = vec![WorkerCursor { epoch, emitted: 0 }; self.cfg.num_workers];
        Ok(self.cursor(0, workers))
    }

    /// Per-part sample counts for epoch `epoch` over all ranks and workers (a coverage simulation for
    /// `shards inspect --simulate-epoch`): index `part(rank, worker)`.
    pub fn simulate_epoch(&self, epoch: u64) -> Vec<u64> {
        let mut counts = vec![0; self.num_parts()];
        for rank in 0..self.cfg.world_size {
            for worker in 0..self.cfg.num_workers {
                counts[self.part(rank, worker)] = self.epoch_len(epoch, rank, worker);
            }
        }
        counts
    }
}

/// Seeded shuffle buffer (webdataset `shuffle(n)` semantics, see the module docs).
///
/// Which slot is emitted depends only on the RNG and the number of items, never on the items, so an
/// address buffer and a data buffer fed the same sequence emit in the same order.
#[derive(Clone, Debug)]
pub struct ShuffleBuffer<T> {
    cap: usize,
    buf: Vec<T>,
    rng: ChaCha8Rng,
}

impl<T> ShuffleBuffer<T> {
    pub fn new(cap: usize, rng: ChaCha8Rng) -> Self {
        Self {
            cap,
            buf: Vec::with_capacity(cap.min(1 << 16)),
            rng,
        }
    }

    /// Offers `x`; returns the item to emit now, if any (none while warming up).
    pub fn push(&mut self, x: T) -> Option<T> {
        if self.cap <= 1 {
            return Some(x);
        }
        if self.buf.len() < self.cap {
            self.buf.push(x);
            return None;
        }
        let k = below(&mut self.rng, self.cap as u64) as usize;
        Some(std::mem::replace(&mut self.buf[k], x))
    }

    /// After the input ended: emits a uniformly chosen remaining item.
    pub fn drain_one(&mut self) -> Option<T> {
        if self.buf.is_empty() {
            return None;
        }
        let k = below(&mut self.rng, self.buf.len() as u64) as usize;
        Some(self.buf.swap_remove(k))
    }

    /// The buffered items (the loader fills placeholders after a resume).
    pub fn items_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// One part's stream for one epoch: spans in read order → shuffle buffer.
#[derive(Clone, Debug)]
pub struct PartEpoch<T> {
    sizes: Arc<[u64]>,
    spans: Vec<Span>,
    span_i: usize,
    /// Next index to read in `spans[span_i]` (`None` = span not started).
    next_index: Option<u64>,
    buffer: ShuffleBuffer<T>,
}

impl<T> PartEpoch<T> {
    /// The next address in read order (before shuffling), or `None` at the end of the epoch.
    pub fn next_read(&mut self) -> Option<SampleAddr> {
        while let Some(span) = self.spans.get(self.span_i) {
            let index = self.next_index.unwrap_or(span.start);
            if index < self.sizes[span.shard as usize] {
                self.next_index = Some(index + span.step);
                return Some(SampleAddr {
                    shard: span.shard,
                    index,
                });
            }
            self.span_i += 1;
            self.next_index = None;
        }
        None
    }

    /// The next emitted item; `fetch` turns each address read into the buffered item.
    pub fn next_with(&mut self, mut fetch: impl FnMut(SampleAddr) -> T) -> Option<T> {
        loop {
            match self.next_read() {
                Some(addr) => {
                    if let Some(out) = self.buffer.push(fetch(addr)) {
                        return Some(out);
                    }
                }
                None => return self.buffer.drain_one(),
            }
        }
    }

    /// The shuffle buffer (the loader materialises placeholder items in it after a resume).
    pub fn buffer_mut(&mut self) -> &mut ShuffleBuffer<T> {
        &mut self.buffer
    }

    /// The spans of this epoch, in read order.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Where reading continues: `(span number, next index)`.
    pub fn read_position(&self) -> (usize, Option<u64>) {
        (self.span_i, self.next_index)
    }
}

/// A worker's position: the epoch it is in and how many samples it has emitted in that epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerCursor {
    pub epoch: u64,
    pub emitted: u64,
}

/// One worker's infinite stream across epochs.
#[derive(Clone, Debug)]
pub struct WorkerStream<T> {
    sampler: Sampler,
    worker: usize,
    epoch: u64,
    emitted: u64,
    part: PartEpoch<T>,
}

impl<T> WorkerStream<T> {
    /// The next item and its epoch; moves on to the next epoch when this one is exhausted.
    pub fn next_with(&mut self, mut fetch: impl FnMut(SampleAddr) -> T) -> (u64, T) {
        loop {
            if let Some(x) = self.part.next_with(&mut fetch) {
                self.emitted += 1;
                return (self.epoch, x);
            }
            // Never loops forever: `Sampler::new` guarantees every part has ≥ 1 sample per epoch.
            self.epoch += 1;
            self.emitted = 0;
            self.part = self
                .sampler
                .part_epoch(self.epoch, self.sampler.cfg.rank, self.worker);
        }
    }

    /// Position after the items returned so far.
    pub fn cursor(&self) -> WorkerCursor {
        WorkerCursor {
            epoch: self.epoch,
            emitted: self.emitted,
        }
    }

    /// The current epoch's stream (read position, buffer).
    pub fn part_mut(&mut self) -> &mut PartEpoch<T> {
        &mut self.part
    }

    pub fn worker(&self) -> usize {
        self.worker
    }
}

/// Version of the cursor JSON layout.
pub const CURSOR_VERSION: u32 = 1;

/// Serializable sampler position of one rank (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerCursor {
    pub version: u32,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    pub num_workers: usize,
    pub shuffle_buffer: usize,
    pub shuffle_shards: bool,
    pub n_shards: usize,
    pub total_samples: u64,
    /// Addresses this rank has consumed since the start of training (the next comes from worker
    /// `consumed mod num_workers`).
    pub consumed: u64,
    pub workers: Vec<WorkerCursor>,
}

impl SamplerCursor {
    /// The epoch of the worker that supplies the next sample (for logging; epochs are per part).
    pub fn epoch(&self) -> u64 {
        self.workers
            .get(self.consumed as usize % self.workers.len().max(1))
            .map_or(0, |w| w.epoch)
    }
}

/// A rank's infinite address stream: its workers' streams interleaved round-robin.
#[derive(Clone, Debug)]
pub struct AddressStream {
    consumed: u64,
    workers: Vec<WorkerStream<SampleAddr>>,
}

/// An address with the epoch it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochAddr {
    pub epoch: u64,
    pub addr: SampleAddr,
}

impl AddressStream {
    /// The position after everything yielded so far.
    pub fn cursor(&self) -> SamplerCursor {
        let sampler = &self.workers[0].sampler;
        sampler.cursor(
            self.consumed,
            self.workers.iter().map(WorkerStream::cursor).collect(),
        )
    }
}

impl Iterator for AddressStream {
    type Item = EpochAddr;

    fn next(&mut self) -> Option<EpochAddr> {
        let w = (self.consumed % self.workers.len() as u64) as usize;
        let (epoch, addr) = self.workers[w].next_with(|a| a);
        self.consumed += 1;
        Some(EpochAddr { epoch, addr })
    }
}
