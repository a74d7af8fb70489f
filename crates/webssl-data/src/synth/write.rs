//! Writing generated samples as WebDataset shards (the `webssl synth` driver).
//!
//! Samples are generated in chunks, each chunk in parallel (rayon), then written in index order with
//! [`ShardWriter`], whose deterministic tar headers make the whole output a pure function of
//! `(seed, size, mix, samples, split, limits)`: same arguments, same bytes. Keys are `{split}-{index:08}`
//! and shards `{split}-{000000}.tar`, so a train and a held-out split can share a directory (the index
//! keeps both) or live in their own. Next to the shards, `synth-{split}.json` records the generator
//! settings and the label vocabularies (class names, segmentation classes, shapes, colours, words), so a
//! consumer can map label names to ids without linking this crate.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    CLASS_NAMES, Category, GENERATOR, SEG_CLASSES, SynthConfig, chart, document, generate, palette,
    scene, sign, words,
};
use crate::error::{DataError, Result};
use crate::shards::{Sample, ShardIndex, ShardLimits, ShardWriter, write_atomic};

/// Samples generated in parallel before being written in order; bounds memory (~40 KB each at 112 px).
const CHUNK: u64 = 256;

/// Counts of what was written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    pub samples: u64,
    /// Samples per category, in [`Category::ALL`] order.
    pub per_category: [u64; 4],
    /// Samples per default-probe class ([`CLASS_NAMES`]).
    pub per_class: Vec<u64>,
    /// Samples containing text.
    pub with_text: u64,
    /// Bytes of the shards written.
    pub bytes: u64,
    /// Shards written.
    pub shards: usize,
}

impl SynthSummary {
    /// Samples of one category.
    pub fn count(&self, c: Category) -> u64 {
        self.per_category[c as usize]
    }
}

/// The record written as `synth-{split}.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthRecord {
    pub generator: String,
    pub split: String,
    pub seed: u64,
    pub size: u32,
    pub samples: u64,
    /// Normalised category weights.
    pub mix: std::collections::BTreeMap<String, f64>,
    pub summary: SynthSummary,
    pub class_names: Vec<String>,
    pub seg_classes: Vec<String>,
    pub shapes: Vec<String>,
    pub colors: Vec<String>,
    pub vocab: Vec<String>,
    pub chart_types: Vec<String>,
    pub layouts: Vec<String>,
    pub sign_kinds: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Name of the record file of a split.
pub fn record_file(split: &str) -> String {
    format!("synth-{split}.json")
}

/// Checks a split name: it becomes part of keys and file names.
pub fn validate_split(split: &str) -> Result<()> {
    if split.is_empty()
        || !split
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(DataError::Config {
            field: "split".into(),
            reason: format!(
                "`{split}` must be non-empty and use only letters, digits, `_` and `-`"
            ),
        });
    }
    Ok(())
}

/// The shard key of sample `index`.
pub fn sample_key(split: &str, index: u64) -> String {
    format!("{split}-{index:08}")
}

/// Generates samples `0..samples` into `dir` as shards and writes `index.json` and `synth-{split}.json`.
/// `progress` is called with the number of samples written so far after each chunk.
pub fn write_shards(
    dir: &Path,
    cfg: &SynthConfig,
    samples: u64,
    split: &str,
    limits: ShardLimits,
    progress: &mut dyn FnMut(u64),
) -> Result<(SynthSummary, ShardIndex)> {
    cfg.validate()?;
    validate_split(split)?;
    let mut writer = ShardWriter::create(dir, split, limits)?;
    let mut summary = SynthSummary {
        per_class: vec![0; CLASS_NAMES.len()],
        ..SynthSummary::default()
    };
    let mut start = 0;
    while start < samples {
        let end = (start + CHUNK).min(samples);
        let chunk: Vec<Result<(Sample, Category, u32)>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let s = generate(cfg, i);
                let files = s.encode()?;
                Ok((
                    Sample {
                        key: sample_key(split, i),
                        files,
                    },
                    s.meta.category,
                    s.meta.class_id,
                ))
            })
            .collect();
        for item in chunk {
            let (sample, category, class_id) = item?;
            writer.write(&sample)?;
            summary.samples += 1;
            summary.per_category[category as usize] += 1;
            summary.per_class[class_id as usize] += 1;
            summary.with_text += category.has_text() as u64;
        }
        progress(end);
        start = end;
    }
    let index = writer.finish()?;
    // The index also lists other splits' shards; ours are exactly `{split}-NNNNNN.tar`.
    let ours: Vec<_> = index
        .shards
        .iter()
        .filter(|s| {
            s.file
                .strip_prefix(split)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".tar"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    summary.shards = ours.len();
    summary.bytes = ours.iter().map(|s| s.bytes).sum();

    let record = SynthRecord {
        generator: GENERATOR.to_string(),
        split: split.to_string(),
        seed: cfg.seed,
        size: cfg.size,
        samples,
        mix: Category::ALL
            .iter()
            .map(|&c| (c.name().to_string(), cfg.mix.weight(c)))
            .collect(),
        summary: summary.clone(),
        class_names: strings(&CLASS_NAMES),
        seg_classes: strings(&SEG_CLASSES),
        shapes: strings(&scene::SHAPES),
        colors: strings(&palette::COLOR_NAMES),
        vocab: strings(&words::VOCAB),
        chart_types: strings(&chart::CHART_TYPES),
        layouts: strings(&document::LAYOUTS),
        sign_kinds: strings(&sign::SIGN_KINDS),
    };
    let mut json = serde_json::to_vec_pretty(&record).map_err(|e| DataError::Config {
        field: "synth record".into(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_atomic(dir.join(record_file(split)), &json)?;
    Ok((summary, index))
}
