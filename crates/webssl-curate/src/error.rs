//! The crate's one error type. Every variant names the file, field or sample at fault.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = CurateError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A filter-chain or filter-file value that is missing, unknown or out of range; names the field.
    #[error("{file}: `{field}`: {reason}")]
    Config {
        file: String,
        field: String,
        reason: String,
    },
    /// A manifest or state file that does not fit this run (other filters/inputs, damaged line).
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    /// Probe training or scoring failed (too few labelled samples, one class only, ...).
    #[error("probe: {0}")]
    Probe(String),
    #[error(transparent)]
    Data(#[from] webssl_data::DataError),
    #[error(transparent)]
    Model(#[from] webssl_models::ModelError),
    #[error(transparent)]
    Eval(#[from] webssl_eval::error::EvalError),
}

impl CurateError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CurateError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CurateError::Config {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
