//! Levenshtein distance with a cutoff, for ANLS.
//!
//! lmms-eval's `anls` (the reference) computes the full O(n·m) edit distance of every reference
//! against the prediction, with no length cap: two 200k-character answers cost 4·10¹⁰ cells. ANLS
//! only needs a distance when it is small enough to pass the 0.5 threshold, so
//! [`levenshtein_within`] answers "the distance, if it is at most `max`": common prefix and suffix
//! are stripped, a length difference above `max` ends it at once, and the rest runs Myers'
//! bit-parallel algorithm (64 rows per machine word, in the multi-block form of Hyyrö 2003 / edlib)
//! and stops as soon as the bottom row can no longer come back under `max`. The distance it returns
//! is exact (unit costs over Unicode code points, as the reference and `strsim::levenshtein`).

use std::collections::HashMap;

/// The edit distance of `a` and `b` over `char`s when it is at most `max`, else `None`.
pub fn levenshtein_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // A shared prefix or suffix never changes the distance.
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[pre..], &b[pre..]);
    let suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suf], &b[..b.len() - suf]);
    let (pattern, text) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    // The distance is at least the length difference, and the shorter string empty makes it that.
    if text.len() - pattern.len() > max {
        return None;
    }
    if pattern.is_empty() {
        return Some(text.len());
    }
    myers(pattern, text, max)
}

/// Slots of one block's match table: a block has at most 64 distinct characters, so a table of
/// 128 with linear probing stays short (rapidfuzz's `BlockPatternMatchVector` does the same).
const SLOTS: usize = 128;
const EMPTY: u32 = u32::MAX;

/// Per 64-row block of the pattern, which rows hold each character (`Peq` in Myers' paper), keyed
/// by the character's id among the pattern's distinct characters. Memory is O(pattern length)
/// whatever the alphabet, unlike a dense character × block table.
struct MatchTable {
    keys: Vec<u32>,
    masks: Vec<u64>,
}

impl MatchTable {
    fn new(ids: &[u32], blocks: usize) -> Self {
        let mut t = MatchTable {
            keys: vec![EMPTY; blocks * SLOTS],
            masks: vec![0; blocks * SLOTS],
        };
        for (row, &id) in ids.iter().enumerate() {
            let slot = t.slot(row / 64, id);
            t.keys[slot] = id;
            t.masks[slot] |= 1 << (row % 64);
        }
        t
    }

    /// The slot of `id` in `block`: where it is, or the empty one where it would go.
    fn slot(&self, block: usize, id: u32) -> usize {
        let base = block * SLOTS;
        let mut i = (id.wrapping_mul(0x9E37_79B1) >> 25) as usize;
        loop {
            let k = self.keys[base + i];
            if k == id || k == EMPTY {
                return base + i;
            }
            i = (i + 1) % SLOTS;
        }
    }

    fn get(&self, block: usize, id: u32) -> u64 {
        let slot = self.slot(block, id);
        if self.keys[slot] == id {
            self.masks[slot]
        } else {
            0
        }
    }
}

/// Myers/Hyyrö bit-parallel global edit distance of `pattern` (rows) against `text` (columns),
/// `None` once it must exceed `max`. Each column updates every block's vertical deltas (`pv`, `mv`:
/// +1/−1 between consecutive rows) with the horizontal delta carried out of the block above
/// (edlib's `calculateBlock`); `score` follows the bottom row, D[m][j].
fn myers(pattern: &[char], text: &[char], max: usize) -> Option<usize> {
    let mut ids: HashMap<char, u32> = HashMap::new();
    let pattern_ids: Vec<u32> = pattern
        .iter()
        .map(|c| {
            let next = ids.len() as u32;
            *ids.entry(*c).or_insert(next)
        })
        .collect();
    let m = pattern.len();
    let blocks = m.div_ceil(64);
    let table = MatchTable::new(&pattern_ids, blocks);
    // The bottom row of the last block is row m, not the word's high bit.
    let last_bit = 1u64 << ((m - 1) % 64);
    let mut pv = vec![!0u64; blocks];
    let mut mv = vec![0u64; blocks];
    let mut score = m;
    for (j, c) in text.iter().enumerate() {
        let id = ids.get(c).copied();
        // Row 0 is D[0][j] = j: the top enters every column with +1.
        let mut hin: i32 = 1;
        for b in 0..blocks {
            let eq = id.map_or(0, |id| table.get(b, id));
            let (p, n) = (pv[b], mv[b]);
            let hin_neg = u64::from(hin < 0);
            let xv = eq | n;
            let eq = eq | hin_neg;
            let xh = ((eq & p).wrapping_add(p) ^ p) | eq;
            let mut ph = n | !(xh | p);
            let mut mh = p & xh;
            let bit = if b + 1 == blocks { last_bit } else { 1 << 63 };
            let hout = i32::from(ph & bit != 0) - i32::from(mh & bit != 0);
            ph = (ph << 1) | u64::from(hin > 0);
            mh = (mh << 1) | hin_neg;
            pv[b] = mh | !(xv | ph);
            mv[b] = ph & xv;
            hin = hout;
        }
        score = score.checked_add_signed(hin as isize).expect("D[m][j] ≥ 0");
        // The bottom row moves by at most 1 per column: past this, it cannot end under `max`.
        if score > max + (text.len() - j - 1) {
            return None;
        }
    }
    (score <= max).then_some(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator (no rand dependency in this crate's tests).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    fn random_string(state: &mut u64, alphabet: &[char], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[lcg(state) as usize % alphabet.len()])
            .collect()
    }

    #[test]
    fn matches_the_full_distance_for_every_cutoff() {
        let alphabets: [&[char]; 3] = [
            &['a', 'b'],
            &['a', 'b', 'c', 'ß', 'é', '文', ' '],
            &['x', 'y', 'z', 'w', 'v', 'u', 't', 's', 'r', 'q', 'p', 'o'],
        ];
        let mut state = 7;
        for round in 0..600 {
            let alphabet = alphabets[round % 3];
            // Lengths around the 64-row block edges, with related and unrelated pairs.
            let la = lcg(&mut state) as usize % 200;
            let a = random_string(&mut state, alphabet, la);
            let b = if round % 2 == 0 {
                let lb = lcg(&mut state) as usize % 200;
                random_string(&mut state, alphabet, lb)
            } else {
                let mut b: Vec<char> = a.chars().collect();
                for _ in 0..lcg(&mut state) % 20 {
                    let i = lcg(&mut state) as usize % (b.len() + 1);
                    let c = alphabet[lcg(&mut state) as usize % alphabet.len()];
                    match lcg(&mut state) % 3 {
                        0 => b.insert(i, c),
                        1 if i < b.len() => b[i] = c,
                        _ if i < b.len() => {
                            b.remove(i);
                        }
                        _ => {}
                    }
                }
                b.into_iter().collect()
            };
            let full = strsim::levenshtein(&a, &b);
            for max in [0, full.saturating_sub(1), full, full + 1, usize::MAX / 2] {
                let want = (full <= max).then_some(full);
                assert_eq!(
                    levenshtein_within(&a, &b, max),
                    want,
                    "{a:?} vs {b:?}, max {max}"
                );
            }
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(levenshtein_within("", "", 0), Some(0));
        assert_eq!(levenshtein_within("abc", "", 3), Some(3));
        assert_eq!(levenshtein_within("", "abc", 2), None);
        assert_eq!(levenshtein_within("kitten", "sitting", 3), Some(3));
        assert_eq!(levenshtein_within("kitten", "sitting", 2), None);
        let long_a = "a".repeat(130);
        let long_b = "b".repeat(130);
        assert_eq!(levenshtein_within(&long_a, &long_b, 200), Some(130));
        assert_eq!(levenshtein_within(&long_a, &long_b, 129), None);
    }
}
