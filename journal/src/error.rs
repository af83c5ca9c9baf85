//! The journal's error type.

use std::path::{Path, PathBuf};

use crate::merkle::ProofError;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The node key file is unusable.
    #[error("node key: {0}")]
    Key(String),
    /// The log was written by another key than the one offered.
    #[error("this log was written by node key {expected}, not {found}; refusing to open it")]
    KeyMismatch {
        /// Public key (base64) recorded in the log.
        expected: String,
        /// Public key (base64) offered.
        found: String,
    },
    /// Verification found a bad entry or checkpoint.
    #[error("journal corrupt at seq {seq}: {reason}")]
    Corrupt {
        /// First bad sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The journal's writer has stopped (after shutdown or a fatal storage error).
    #[error("journal is closed")]
    Closed,
    /// Encoding or decoding an event failed.
    #[error(transparent)]
    Schema(#[from] isnad_schemas::Error),
    /// A proof request was invalid.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A requested item does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A caller passed something unusable.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A write to a log opened read-only (the auditor's tools open it so).
    #[error("the log is open read-only")]
    ReadOnly,
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
