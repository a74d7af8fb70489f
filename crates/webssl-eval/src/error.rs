//! The crate's one error type. Every variant names the input (file, benchmark, field) and what was
//! expected, so the CLI can print it as is; the CLI adds the command context with `anyhow`.

use std::path::PathBuf;

/// Errors of the evaluation library.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not valid JSON / JSONL of the expected shape (`line` is 1-based, for JSONL).
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A benchmark name that is not one of the 16 (the message lists the valid names and aliases).
    #[error("unknown benchmark {name:?}; valid names: {valid}")]
    UnknownBenchmark { name: String, valid: String },

    /// A record lacks a field its benchmark needs, or the field has the wrong form.
    #[error("{benchmark}: question {question_id}: field `{field}`: {message}")]
    BadField {
        benchmark: String,
        question_id: String,
        field: &'static str,
        message: String,
    },

    /// The same question id appears more than once in one file.
    #[error("{}: {count} duplicated question id(s), e.g. {examples}", path.display())]
    DuplicateIds {
        path: PathBuf,
        count: usize,
        examples: String,
    },

    /// An annotation file with no (scorable) records.
    #[error("{benchmark}: {message}")]
    Empty { benchmark: String, message: String },

    /// Predictions and annotations do not describe the same question set (strict mode, or no overlap
    /// at all, which always means the wrong file was given).
    #[error("{benchmark}: {message}")]
    Mismatch { benchmark: String, message: String },

    /// The annotation set breaks a structural rule of its benchmark (MME images with other than 2
    /// questions, an odd MMVP count, a CV-Bench 2D source missing, ...).
    #[error("{benchmark}: {message}")]
    Structure { benchmark: String, message: String },

    /// Group-table input that cannot be aggregated (unknown or repeated benchmark, non-finite score).
    #[error("aggregate: {0}")]
    Aggregate(String),

    /// Probe input that cannot be evaluated: feature/label count or key mismatch, unlabelled keys,
    /// an empty split, a bad hyper-parameter (`context` names the file, split or option).
    #[error("{context}: {message}")]
    Probe { context: String, message: String },

    /// A backbone whose preprocessing cannot feed it: images of varying size, or a size that is not
    /// a positive multiple of the patch size (`model` names the checkpoint).
    #[error("{model}: {message}")]
    Preprocess { model: String, message: String },

    /// A checkpoint that cannot be loaded.
    #[error(transparent)]
    Model(#[from] webssl_models::ModelError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
