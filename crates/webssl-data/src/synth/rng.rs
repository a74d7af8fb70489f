//! The per-sample random stream.
//!
//! Sample `i` of a run with seed `s` draws every random choice from its own ChaCha8 stream: the key is
//! derived from `s` (and a fixed domain tag, so other crates' streams from the same seed never collide) and
//! the ChaCha stream id is `i`. Nothing else feeds the generator, so samples can be produced in any order or
//! in parallel and `--samples N+M` reproduces the first N samples byte for byte.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// Domain tag mixed into the key: bump it when the generator's output changes on purpose.
const DOMAIN: u64 = 0x7765_6273_736c_0001; // "webssl" + version 1

/// SplitMix64 step: a bijective 64-bit mixer, used only to spread the user seed over the 256-bit key.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 256-bit ChaCha key for a run seed.
pub(crate) fn key_for(seed: u64) -> [u8; 32] {
    let mut state = seed ^ DOMAIN;
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    key
}

/// A uniform number in `[0, 1)` derived from the seed alone (used for the low-discrepancy category offset).
pub(crate) fn seed_unit(seed: u64) -> f64 {
    let mut state = seed ^ DOMAIN ^ 0x5555_5555_5555_5555;
    (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Random helpers over one sample's ChaCha8 stream.
pub(crate) struct SynthRng(ChaCha8Rng);

impl SynthRng {
    /// The stream of sample `index` for run `seed`.
    pub(crate) fn new(seed: u64, index: u64) -> Self {
        let mut rng = ChaCha8Rng::from_seed(key_for(seed));
        rng.set_stream(index);
        SynthRng(rng)
    }

    /// Uniform in `[0, 1)` with 24 bits of resolution (exact in f32).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `lo..=hi` (the modulo bias is below 2^-40 for the small ranges used here).
    pub(crate) fn int(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = (hi - lo + 1) as u64;
        lo + (self.0.next_u64() % span) as i64
    }

    /// Uniform index in `0..n` (`n > 0`).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.int(0, n as i64 - 1) as usize
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// A uniformly chosen element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// Approximately standard normal (Irwin–Hall sum of 4 uniforms, rescaled): bounded tails keep pixel
    /// noise from ever producing outliers, and it costs 4 draws instead of a log and a cosine.
    pub(crate) fn normalish(&mut self) -> f32 {
        let s = self.unit() + self.unit() + self.unit() + self.unit() - 2.0;
        s * 1.732_050_8 // sqrt(12 / 4)
    }

    /// `k` distinct indices from `0..n`, in random order (`k <= n`).
    pub(crate) fn distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.index(n - i);
            all.swap(i, j);
        }
        all.truncate(k.min(n));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u32> = (0..8).map(|_| SynthRng::new(7, 3).0.next_u32()).collect();
        assert!(
            a.windows(2).all(|w| w[0] == w[1]),
            "same (seed, index) must give the same first word"
        );
        let mut x = SynthRng::new(7, 3);
        let mut y = SynthRng::new(7, 4);
        let mut z = SynthRng::new(8, 3);
        let xs: Vec<u32> = (0..4).map(|_| x.0.next_u32()).collect();
        let ys: Vec<u32> = (0..4).map(|_| y.0.next_u32()).collect();
        let zs: Vec<u32> = (0..4).map(|_| z.0.next_u32()).collect();
        assert_ne!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut r = SynthRng::new(1, 1);
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let v = r.int(-2, 3);
            assert!((-2..=3).contains(&v));
            let n = r.normalish();
            assert!(n.abs() <= 3.5);
        }
        let d = r.distinct(10, 10);
        let mut s = d.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
}
