//! The crate's one error type. Every variant names the file, tensor or field at fault.

use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A checkpoint file that is not valid safetensors / JSON / an index.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// A configuration value that is missing, out of range or contradicts the weights.
    #[error("invalid config `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// A tensor the model needs that the checkpoint lacks.
    #[error("checkpoint is missing tensor(s) for `{name}` (looked for {looked_for})")]
    MissingTensor { name: String, looked_for: String },
    /// A tensor whose shape differs from the model's.
    #[error(
        "tensor `{name}` (checkpoint key `{key}`): expected shape {expected:?}, found {found:?}"
    )]
    Shape {
        name: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor with a dtype we cannot read as float.
    #[error("tensor `{key}` has dtype {dtype}, expected F32, BF16 or F16")]
    Dtype { key: String, dtype: String },
    /// A tensor holding NaN or infinite values (a corrupt or diverged checkpoint).
    #[error("tensor `{key}` has {count} non-finite value(s) (NaN or ±inf) of {total}")]
    NonFinite {
        key: String,
        count: usize,
        total: usize,
    },
    /// Checkpoint tensors that no model parameter consumed.
    #[error("checkpoint has {} tensor(s) the model does not use: {}", keys.len(), keys.iter().take(8).cloned().collect::<Vec<_>>().join(", "))]
    Unexpected { keys: Vec<String> },
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
