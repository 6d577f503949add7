//! The library's error type: every variant carries the place at fault (file, line, key, rank).

use std::path::PathBuf;

/// Errors from the accel library. The binary adds context with anyhow and prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key or value is wrong; `key` is the dotted key at fault.
    #[error("config {key}: {message}")]
    Config { key: String, message: String },

    /// Reading or writing a file failed. The OS error is part of the message, not a separate
    /// source, so that printing the error chain does not repeat it.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },

    /// Input data is malformed; `line` is 1-based in the file when known.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data { path: PathBuf, line: Option<usize>, message: String },

    /// A dataset or model could not be found in any of the places looked.
    #[error("{what} not found; looked in: {}", looked.join("; "))]
    NotFound { what: String, looked: Vec<String> },

    /// The tokenizers crate failed.
    #[error("tokenizer {context}: {cause}")]
    Tokenizer { context: String, cause: tokenizers::Error },

    /// A collective between ranks failed or timed out; names the backend, the operation and the rank.
    #[error("{backend} {op} on rank {rank}: {message}")]
    Dist { backend: &'static str, op: &'static str, rank: usize, message: String },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Training stopped for preemption after `step`, with a checkpoint of it in `checkpoint`.
    #[error("preempted: stopped after step {step} with a checkpoint of it, {}; resume with resume_from_checkpoint = \"latest\"", checkpoint.display())]
    Preempted { step: usize, checkpoint: PathBuf },

    /// Anything else, with a message that says what was being done.
    #[error("{0}")]
    Msg(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), cause: source }
    }

    /// A data error at `path`, line `line` (1-based).
    pub fn data(path: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        Self::Data { path: path.into(), line, message: message.into() }
    }

    /// A config error at `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { key: key.into(), message: message.into() }
    }

    /// A collective error on `rank` of a `backend` process group.
    pub fn dist(backend: &'static str, op: &'static str, rank: usize, message: impl Into<String>) -> Self {
        Self::Dist { backend, op, rank, message: message.into() }
    }

    /// A tokenizer error with what was being done.
    pub fn tokenizer(context: impl Into<String>, source: tokenizers::Error) -> Self {
        Self::Tokenizer { context: context.into(), cause: source }
    }
}

/// Builds an [`Error::Msg`] and returns it.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
