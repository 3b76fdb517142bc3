//! The one error type of the simulator's library API.
//!
//! Data errors name the file and the 1-based line so that a bad row in a large JSONL file can
//! be found with an editor; everything else wraps the I/O error with what was being done.

use std::path::PathBuf;

/// What can go wrong when loading data or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A data file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data line is not a valid routing record.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The file name (or the name given to [`crate::Dataset::from_jsonl_str`]).
        file: String,
        /// 1-based line number.
        line: usize,
        message: String,
    },
    /// The call log file could not be opened for appending.
    #[error("cannot open call log {}: {source}", path.display())]
    CallLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The listener has no usable local address.
    #[error("cannot use listener: {0}")]
    Listener(#[source] std::io::Error),
}
