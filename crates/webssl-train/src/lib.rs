//! webssl-train: pretraining objectives (DINOv2 = DINO + iBOT + KoLeo, MAE, CLIP), teacher EMA,
//! schedules, parameter groups, the optimizer, gradient clipping, and the run directory (config,
//! metrics, TensorBoard events, atomic checkpoints with resume).

pub mod error;

pub mod objectives;

pub mod clip_grad;
pub mod cuda_libs;
pub mod dist;
pub mod ema;
pub mod mllm;
pub mod optim;
pub mod param_groups;
pub mod schedule;
pub mod zero;

pub mod run;

pub mod clip;
pub mod dino;
pub mod mae;

pub mod registry;

pub use error::{Result, TrainError};
pub use registry::{OBJECTIVES, Objective};
pub use run::recipe::{Plan, Recipe};
