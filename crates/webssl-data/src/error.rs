//! The crate's one error type. Every variant names the file, key or field at fault.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bytes that are not a decodable image (corrupt, truncated, unsupported format, zero bytes).
    #[error("cannot decode image {what}: {reason}")]
    Decode { what: String, reason: String },
    /// An image whose pixel count exceeds the decompression-bomb cap.
    #[error("image {what} is {width}x{height} = {} pixels, over the cap of {cap}", *width as u64 * *height as u64)]
    TooLarge {
        what: String,
        width: u32,
        height: u32,
        cap: u64,
    },
    /// A malformed or truncated shard, index or member.
    #[error("shard {}: {reason}", path.display())]
    Shard { path: PathBuf, reason: String },
    /// One sample that was skipped (duplicate member, missing caption, ...); `what` is `shard.tar:key`.
    #[error("{what}: {reason}")]
    Sample { what: String, reason: String },
    /// A configuration value that is out of range or inconsistent; names the field.
    #[error("invalid `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// The data loader's background threads failed (a transform panicked or a thread stopped).
    #[error("data loader failed: {reason}")]
    Loader { reason: String },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::Config`] naming `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DataError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
