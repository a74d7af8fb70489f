//! One module per top-level command. Each exposes clap `Args`/`Command` and a `run` function.

pub mod curate;
pub mod embed;
pub mod eval;
pub mod experiment;
pub mod launch;
pub mod model;
pub mod pretrain;
pub mod report;
pub mod shards;
pub mod synth;
