//! webssl-data: the tensor-free data pipeline.
//!
//! Everything between bytes on disk and a batch of plain `f32` NCHW buffers lives here: WebDataset
//! shards, decoding, PIL/torchvision-exact resampling and augmentation, iBOT/MAE masks, the resumable
//! sampler and the multi-threaded loader, importers and the synthetic web-like generator.
//! This crate never imports a tensor library, so it builds and tests in seconds and feeds any backend.

pub mod error;

pub mod decode;
pub mod import;
pub mod npy;
pub mod shards;
pub mod source;

pub mod augment;
pub mod resize;
pub mod transform;

pub mod loader;
pub mod masks;
pub mod recipe;
pub mod sampler;

pub mod synth;

pub use error::{DataError, Result};
