//! webssl-models: the Web-DINO / Web-MAE Vision Transformer backbones on burn, their presets, and
//! checkpoint I/O (HF and native layouts, load and export).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod heads;
pub mod kernels;
pub mod lm;
pub mod mae;
pub mod params;
pub mod pos_embed;
pub mod precision;
pub mod presets;
pub mod text;
pub mod vit;

pub use config::{Ffn, Flavour, PosInterp, VitConfig};
pub use error::{ModelError, Result};
pub use precision::{Precision, autocast};
pub use vit::{Vit, VitOutput};
