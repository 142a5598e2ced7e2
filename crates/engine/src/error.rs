//! Error type shared by the engine modules.

use std::path::PathBuf;

use crate::event::DecodeError;

/// Errors returned by the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// An operating-system I/O call failed. `context` says which one and on what path.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing (includes the path when there is one).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Committed data failed verification: a record in a sealed (not the last) segment
    /// is malformed, fails its CRC, or the segment chain has a gap. The engine never
    /// drops such data silently; an operator has to look at `path` at `offset`.
    #[error("corrupt WAL segment {} at offset {offset} (lsn {lsn}): {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record inside `path`.
        offset: u64,
        /// Global LSN of the bad record (segment base + offset).
        lsn: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// A batch payload could not be decoded.
    #[error("batch decode failed: {0}")]
    Decode(#[from] DecodeError),

    /// An earlier write or fsync failed; the writer stopped accepting appends because
    /// the state of the file (and of the page cache) is unknown. Reopen the intake to
    /// recover from what is on disk.
    #[error("intake writer is poisoned by an earlier failure: {0}")]
    Poisoned(String),

    /// The intake was shut down (or its writer thread exited).
    #[error("intake is shut down")]
    Closed,

    /// A single encoded batch is larger than [`crate::intake::MAX_RECORD_BYTES`].
    #[error("encoded batch of {size} bytes exceeds the maximum record size of {max} bytes")]
    BatchTooLarge {
        /// Encoded payload size.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The LSN handed to a reader is not a batch boundary of the retained WAL.
    #[error("invalid LSN {lsn}: {reason}")]
    InvalidLsn {
        /// The LSN that was asked for.
        lsn: u64,
        /// Why it cannot be used.
        reason: String,
    },

    /// The WAL directory is already opened by another [`crate::Intake`], in this process or another one.
    #[error("WAL directory {} is already in use (is another flywheel process running on this data directory?)", .0.display())]
    AlreadyOpen(PathBuf),

    /// A columnar segment or manifest could not be written or read.
    #[error("segment {}: {reason}", path.display())]
    Segment {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The configuration is not usable.
    #[error("invalid intake configuration: {0}")]
    Config(String),
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}
