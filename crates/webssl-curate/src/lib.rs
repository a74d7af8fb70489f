//! webssl-curate: data curation for language-free visual pretraining — the Light and Heavy text
//! filters of Web-SSL (docs/reference/webssl-paper.md §5), decode/size checks, exact and near-duplicate
//! removal, and resumable, streaming manifests over WebDataset shards.
//!
//! - [`config`]: the filter chain as a TOML file (`configs/curate/*.toml`);
//! - [`filters`]: the chain and the image / exact-dedup / near-dup filters;
//! - [`classifier`]: the [`classifier::Classifier`] trait (what an MLLM or OCR filter implements)
//!   and the filter around it;
//! - [`probe`]: the built-in classifier, a logistic probe on frozen webssl features, its training
//!   and precision/recall metrics;
//! - [`phash`]: the 64-bit DCT perceptual hash;
//! - [`run`]: `webssl curate`'s streaming, resumable pass and the optional re-sharding.

pub mod classifier;
pub mod config;
pub mod error;
pub mod filters;
pub mod phash;
pub mod probe;

pub use error::{CurateError, Result};
pub mod run;
