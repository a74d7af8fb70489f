//! The filters of a chain and how a chain judges a batch of samples.
//!
//! A [`Chain`] runs its filters in file order over one batch at a time: each filter sees the
//! samples still kept (all samples with `[chain] evaluate_all`), in input order, and returns one
//! [`Judgement`] per sample. Per-image work (decoding, hashing) runs in parallel on the rayon pool;
//! filters with state (the dedup seen-sets) then decide sequentially in input order, so the result
//! does not depend on the thread count. A filter that fails on one image (undecodable bytes, a
//! classifier error, even a panic inside a classifier) records the error for that image and its
//! `on_error` policy decides; the run goes on.
//!
//! Memory: a batch holds its encoded and decoded images; the dedup filters hold their seen-sets —
//! [`ExactDedupFilter`] 16 bytes per distinct kept image (the first 128 bits of SHA-256; ~1.6 GB
//! per 10⁸ images with the hash-set overhead, so shard a larger corpus by hash prefix or run
//! exact dedup per subset), [`NearDupFilter`] a fixed ring of `window` (64-bit pHash, key) pairs
//! scanned linearly (65,536 entries ≈ 3 MB with 30-byte keys, ~30 µs per image): near-duplicates
//! further apart than `window` kept images are not caught (web-scale near-dup needs an embedding
//! index, out of scope).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webssl_data::decode::{decode_rgb, image_dimensions};

use crate::classifier::{Classifier, ClassifierFilter};
use crate::config::{ChainConfig, FilterConfig, ImageCheck, OnError};
use crate::error::Result;
use crate::phash::{hamming, phash};

/// One sample as the filters see it.
pub struct Candidate {
    pub key: String,
    /// `shard.tar:key` or the file path, for messages.
    pub source: String,
    /// The encoded image member.
    pub bytes: Vec<u8>,
    /// The `json` member, when there is one.
    pub meta: Option<serde_json::Value>,
    max_pixels: u64,
    image: OnceLock<std::result::Result<RgbImage, String>>,
}

impl Candidate {
    pub fn new(
        key: String,
        source: String,
        bytes: Vec<u8>,
        meta: Option<serde_json::Value>,
        max_pixels: u64,
    ) -> Self {
        Candidate {
            key,
            source,
            bytes,
            meta,
            max_pixels,
            image: OnceLock::new(),
        }
    }

    /// The decoded RGB image (decoded once, on first use, PIL-exact; over `max_pixels` is an error).
    pub fn image(&self) -> std::result::Result<&RgbImage, String> {
        self.image
            .get_or_init(|| {
                decode_rgb(&self.bytes, &self.source, self.max_pixels).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Frees the decoded pixels (the batch keeps the bytes until the manifest is written).
    fn forget_image(&mut self) {
        self.image = OnceLock::new();
    }
}

/// A filter's answer for one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    pub keep: bool,
    /// A classifier's probability, a distance, ...
    pub score: Option<f64>,
    /// Why it was dropped (or a note).
    pub reason: Option<String>,
    /// The content hash / pHash the decision rests on (lets a resumed run rebuild the seen-sets).
    pub hash: Option<String>,
}

impl Judgement {
    pub fn keep() -> Self {
        Judgement {
            keep: true,
            ..Default::default()
        }
    }
    pub fn drop(reason: impl Into<String>) -> Self {
        Judgement {
            keep: false,
            reason: Some(reason.into()),
            ..Default::default()
        }
    }
}

/// A filter in a chain.
pub trait Filter: Send {
    /// Judges `batch` (in input order); `alive[i]` says whether sample `i` is still kept by the
    /// earlier filters (always true unless `evaluate_all`). Returns one result per sample; `Err`
    /// is a failure to judge that sample (recorded, then `on_error` decides).
    fn judge(
        &mut self,
        batch: &[&Candidate],
        alive: &[bool],
    ) -> Vec<std::result::Result<Judgement, String>>;

    /// Replays a committed verdict of this filter for sample `key` (resume): filters with memory
    /// re-learn it. `alive` is whether the sample was still kept when it reached this filter.
    fn restore(&mut self, _key: &str, _verdict: &Verdict, _alive: bool) -> Result<()> {
        Ok(())
    }
}

/// The manifest entry of one filter for one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub filter: String,
    pub keep: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The filter could not judge the sample; `keep` then follows its `on_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

// ---------------------------------------------------------------------------------------------

/// `kind = "image"`: decodes and checks size and aspect ratio.
pub struct ImageFilter {
    cfg: ImageCheck,
}

impl ImageFilter {
    pub fn new(cfg: ImageCheck) -> Self {
        ImageFilter { cfg }
    }

    fn check(&self, c: &Candidate) -> std::result::Result<Judgement, String> {
        // The header first: a decompression bomb is refused before any pixel is decoded.
        let (w, h) = image_dimensions(&c.bytes, &c.source).map_err(|e| e.to_string())?;
        let side = w.min(h);
        if side < self.cfg.min_side {
            return Ok(Judgement::drop(format!(
                "{w}x{h}: side {side} < min_side {}",
                self.cfg.min_side
            )));
        }
        if let Some(max) = self.cfg.max_side
            && w.max(h) > max
        {
            return Ok(Judgement::drop(format!("{w}x{h}: side > max_side {max}")));
        }
        let aspect = f64::from(w.max(h)) / f64::from(side.max(1));
        if let Some(max) = self.cfg.max_aspect
            && aspect > max
        {
            return Ok(Judgement::drop(format!(
                "{w}x{h}: aspect {aspect:.2} > max_aspect {max}"
            )));
        }
        c.image()?;
        Ok(Judgement {
            score: Some(aspect),
            ..Judgement::keep()
        })
    }
}

impl Filter for ImageFilter {
    fn judge(
        &mut self,
        batch: &[&Candidate],
        _alive: &[bool],
    ) -> Vec<std::result::Result<Judgement, String>> {
        batch.par_iter().map(|c| self.check(c)).collect()
    }
}

/// SHA-256 of the bytes, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The seen-set key: the first 128 bits of the hash (collision odds ~n²/2¹²⁹).
fn hash_key(hex: &str) -> Option<u128> {
    u128::from_str_radix(hex.get(..32)?, 16).ok()
}

/// `kind = "exact_dedup"`: drops repeated image bytes (see the module docs for memory).
#[derive(Default)]
pub struct ExactDedupFilter {
    seen: HashSet<u128>,
}

impl Filter for ExactDedupFilter {
    fn judge(
        &mut self,
        batch: &[&Candidate],
        alive: &[bool],
    ) -> Vec<std::result::Result<Judgement, String>> {
        let hashes: Vec<String> = batch.par_iter().map(|c| content_hash(&c.bytes)).collect();
        hashes
            .into_iter()
            .zip(alive)
            .map(|(hex, &alive)| {
                let k = hash_key(&hex).expect("sha256 hex has 64 digits");
                let fresh = !self.seen.contains(&k);
                if fresh && alive {
                    self.seen.insert(k);
                }
                Ok(Judgement {
                    keep: fresh,
                    reason: (!fresh).then(|| "same bytes as an earlier sample".to_string()),
                    hash: Some(hex),
                    ..Default::default()
                })
            })
            .collect()
    }

    fn restore(&mut self, _key: &str, v: &Verdict, alive: bool) -> Result<()> {
        if v.keep
            && alive
            && let Some(k) = v.hash.as_deref().and_then(hash_key)
        {
            self.seen.insert(k);
        }
        Ok(())
    }
}

/// `kind = "near_dup"`: drops images whose pHash is within `max_distance` bits of a recent kept one.
pub struct NearDupFilter {
    max_distance: u32,
    window: usize,
    /// Recently kept (pHash, key), oldest first; the key names the original in drop reasons.
    recent: VecDeque<(u64, Arc<str>)>,
}

impl NearDupFilter {
    pub fn new(max_distance: u32, window: usize) -> Self {
        NearDupFilter {
            max_distance,
            window,
            recent: VecDeque::with_capacity(window.min(1 << 20)),
        }
    }

    fn remember(&mut self, h: u64, key: &str) {
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back((h, Arc::from(key)));
    }

    /// The closest remembered hash (the oldest among equals): (distance, its key).
    fn nearest(&self, h: u64) -> Option<(u32, Arc<str>)> {
        let mut best: Option<(u32, &Arc<str>)> = None;
        for (s, k) in &self.recent {
            let d = hamming(*s, h);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, k));
            }
        }
        best.map(|(d, k)| (d, Arc::clone(k)))
    }
}

impl Filter for NearDupFilter {
    fn judge(
        &mut self,
        batch: &[&Candidate],
        alive: &[bool],
    ) -> Vec<std::result::Result<Judgement, String>> {
        let hashes: Vec<std::result::Result<u64, String>> = batch
            .par_iter()
            .map(|c| {
                let img = c.image()?;
                phash(img).ok_or_else(|| "empty image".to_string())
            })
            .collect();
        hashes
            .into_iter()
            .zip(batch)
            .zip(alive)
            .map(|((h, c), &alive)| {
                let h = h?;
                let nearest = self.nearest(h);
                let dup = nearest
                    .as_ref()
                    .is_some_and(|(d, _)| *d <= self.max_distance);
                if !dup && alive {
                    self.remember(h, &c.key);
                }
                Ok(Judgement {
                    keep: !dup,
                    score: nearest.as_ref().map(|(d, _)| f64::from(*d)),
                    reason: match (&nearest, dup) {
                        (Some((d, k)), true) => Some(format!("pHash {d} bits from `{k}`")),
                        _ => None,
                    },
                    hash: Some(format!("{h:016x}")),
                })
            })
            .collect()
    }

    fn restore(&mut self, key: &str, v: &Verdict, alive: bool) -> Result<()> {
        if v.keep
            && alive
            && let Some(h) = v
                .hash
                .as_deref()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        {
            self.remember(h, key);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

struct Stage {
    name: String,
    on_error: OnError,
    filter: Box<dyn Filter>,
}

/// The filters of a chain file, ready to judge batches.
pub struct Chain {
    stages: Vec<Stage>,
    evaluate_all: bool,
}

/// Builds the classifier of a `kind = "probe"` filter (the chain does not load models itself,
/// so tests and other backends can supply their own).
pub type ClassifierLoader<'a> =
    dyn FnMut(&crate::config::Probe) -> Result<Box<dyn Classifier>> + 'a;

impl Chain {
    /// Builds the filters of `cfg`; probe filters are loaded with `load_classifier`.
    pub fn build(cfg: &ChainConfig, load_classifier: &mut ClassifierLoader<'_>) -> Result<Self> {
        let mut stages = Vec::with_capacity(cfg.filter.len());
        for f in &cfg.filter {
            let filter: Box<dyn Filter> = match f {
                FilterConfig::Image(c) => Box::new(ImageFilter::new(c.clone())),
                FilterConfig::ExactDedup(_) => Box::<ExactDedupFilter>::default(),
                FilterConfig::NearDup(c) => Box::new(NearDupFilter::new(c.max_distance, c.window)),
                FilterConfig::Probe(p) => {
                    let classifier = load_classifier(p)?;
                    let threshold = p.threshold.unwrap_or_else(|| classifier.threshold());
                    Box::new(ClassifierFilter::new(classifier, threshold, p.invert))
                }
            };
            stages.push(Stage {
                name: f.name(),
                on_error: f.on_error(),
                filter,
            });
        }
        Ok(Chain {
            stages,
            evaluate_all: cfg.chain.evaluate_all,
        })
    }

    /// The filter names, in order.
    pub fn names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    /// Judges a batch: per sample, the verdicts of the filters that saw it and whether it is kept.
    pub fn judge(&mut self, batch: &mut [Candidate]) -> Vec<(bool, Vec<Verdict>)> {
        let n = batch.len();
        let mut alive = vec![true; n];
        let mut verdicts: Vec<Vec<Verdict>> = vec![Vec::new(); n];
        for stage in &mut self.stages {
            let idx: Vec<usize> = (0..n).filter(|&i| self.evaluate_all || alive[i]).collect();
            if idx.is_empty() {
                break;
            }
            let refs: Vec<&Candidate> = idx.iter().map(|&i| &batch[i]).collect();
            let alive_in: Vec<bool> = idx.iter().map(|&i| alive[i]).collect();
            let results = stage.filter.judge(&refs, &alive_in);
            assert_eq!(
                results.len(),
                idx.len(),
                "filter {} broke its contract",
                stage.name
            );
            for (&i, r) in idx.iter().zip(results) {
                let v = match r {
                    Ok(j) => Verdict {
                        filter: stage.name.clone(),
                        keep: j.keep,
                        score: j.score,
                        reason: j.reason,
                        error: None,
                        hash: j.hash,
                    },
                    Err(e) => Verdict {
                        filter: stage.name.clone(),
                        keep: stage.on_error == OnError::Keep,
                        score: None,
                        reason: None,
                        error: Some(e),
                        hash: None,
                    },
                };
                alive[i] &= v.keep;
                verdicts[i].push(v);
            }
        }
        for c in batch.iter_mut() {
            c.forget_image();
        }
        alive.into_iter().zip(verdicts).collect()
    }

    /// Replays the verdicts of one committed manifest record (resume).
    pub fn restore(&mut self, key: &str, verdicts: &[Verdict]) -> Result<()> {
        let mut alive = true;
        for v in verdicts {
            if let Some(stage) = self.stages.iter_mut().find(|s| s.name == v.filter) {
                stage.filter.restore(key, v, alive)?;
            }
            alive &= v.keep;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn cand(key: &str, bytes: Vec<u8>) -> Candidate {
        Candidate::new(key.into(), key.into(), bytes, None, 1 << 26)
    }

    fn pattern(seed: u32, w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = (((x * (3 + seed)) ^ (y * (5 + 2 * seed))) % 256) as u8;
            let g = (((x / (4 + seed)) + (y / 7)) % 2 * 200) as u8;
            image::Rgb([v, g, 255 - v])
        })
    }

    fn chain(toml: &str) -> Chain {
        let cfg = ChainConfig::parse(toml, "t").unwrap();
        Chain::build(&cfg, &mut |_| panic!("no probes here")).unwrap()
    }

    #[test]
    fn exact_dedup_drops_identical_bytes_only() {
        let mut ch = chain("[[filter]]\nkind = \"exact_dedup\"\n");
        let a = png(&pattern(1, 40, 30));
        let b = png(&pattern(2, 40, 30));
        let mut batch = vec![cand("a", a.clone()), cand("b", b), cand("a2", a)];
        let out = ch.judge(&mut batch);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(out[0].1[0].hash, out[2].1[0].hash);
        // Memory across batches, and a rebuilt filter relearns it from the verdicts.
        let mut again = vec![cand("a3", png(&pattern(1, 40, 30)))];
        assert!(!ch.judge(&mut again)[0].0);
        let mut fresh = chain("[[filter]]\nkind = \"exact_dedup\"\n");
        fresh.restore("a", &out[0].1).unwrap();
        let mut again = vec![cand("a4", png(&pattern(1, 40, 30)))];
        assert!(!fresh.judge(&mut again)[0].0);
    }

    #[test]
    fn near_dup_catches_a_resized_copy_not_another_image() {
        let mut ch = chain("[[filter]]\nkind = \"near_dup\"\nmax_distance = 6\n");
        let base = pattern(1, 96, 64);
        let smaller =
            image::imageops::resize(&base, 72, 48, image::imageops::FilterType::CatmullRom);
        let mut batch = vec![
            cand("a", png(&base)),
            cand("other", png(&pattern(4, 96, 64))),
            cand("resized", png(&smaller)),
        ];
        let out = ch.judge(&mut batch);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(out[2].1[0].score.unwrap() <= 6.0);
        let reason = out[2].1[0].reason.as_deref().unwrap();
        assert!(reason.ends_with("from `a`"), "{reason}");
    }

    #[test]
    fn undecodable_is_an_error_not_a_crash_and_on_error_decides() {
        let mut ch = chain(
            "[[filter]]\nkind = \"near_dup\"\n[[filter]]\nkind = \"image\"\nname = \"img\"\non_error = \"keep\"\n[chain]\nevaluate_all = true\n",
        );
        let good = png(&pattern(1, 20, 20));
        let mut batch = vec![cand("bad", b"not an image".to_vec()), cand("ok", good)];
        let out = ch.judge(&mut batch);
        assert!(!out[0].0, "near_dup on_error=drop drops it");
        assert!(out[0].1[0].error.is_some());
        assert!(
            out[0].1[1].keep && out[0].1[1].error.is_some(),
            "img on_error=keep"
        );
        assert!(out[1].0);
    }

    #[test]
    fn image_check_sizes() {
        let mut ch = chain("[[filter]]\nkind = \"image\"\nmin_side = 16\nmax_aspect = 2.0\n");
        let mut batch = vec![
            cand("small", png(&pattern(1, 10, 40))),
            cand("wide", png(&pattern(1, 100, 20))),
            cand("fine", png(&pattern(1, 30, 20))),
        ];
        let out = ch.judge(&mut batch);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(out[1].1[0].reason.as_deref().unwrap().contains("aspect"));
    }
}
