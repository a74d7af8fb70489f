//! The crate's one error type; every variant names the file, field or step at fault.

use std::path::PathBuf;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration value that is missing, malformed or out of range; names the field.
    #[error("invalid config `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// A config file or `--set` override that does not fit the config struct: names where the
    /// value came from (`configs/demo.toml`, `--set optim.lr=x`) and its full dotted key.
    #[error("{origin}: {key}: {reason}")]
    ConfigValue {
        origin: String,
        key: String,
        reason: String,
    },
    /// A checkpoint or run directory that cannot be used (corrupt, incompatible, wrong world size).
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// A non-finite loss or gradient; training stops and the last good checkpoint is kept.
    #[error("step {step}: {what} is not finite ({value})")]
    NonFinite { step: u64, what: String, value: f64 },
    /// Optimizer state that does not fit (a missing moment, a wrong shape, a bad step count).
    #[error("optimizer state `{key}`: {reason}")]
    OptimizerState { key: String, reason: String },
    /// A multi-process job that cannot start or continue (launch environment, collective engine).
    #[error("distributed: {0}")]
    Distributed(String),
    #[error(transparent)]
    Model(#[from] webssl_models::ModelError),
    #[error(transparent)]
    Data(#[from] webssl_data::DataError),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TrainError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
