//! Typed errors shared by the library crates. The binary maps them to exit codes
//! (1 = bad input / config, 2 = runtime / I/O); see `Error::is_input_error`.

use std::path::PathBuf;

/// Result alias used across dreamforge libraries.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a dreamforge library can fail with. Each message names the file or key involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error(
        "{path}: pickle checkpoints (.ckpt/.pt/.pth/.bin) are refused because loading them can execute code; convert it to safetensors first"
    )]
    Pickle { path: PathBuf },
    #[error("{path}: missing weight `{key}`{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingKey {
        path: PathBuf,
        key: String,
        hint: Option<String>,
    },
    #[error("{path}: {count} unused weight(s) not consumed by the model, e.g. {}", examples.join(", "))]
    UnusedKeys {
        path: PathBuf,
        count: usize,
        examples: Vec<String>,
    },
    #[error("{path}: weight `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: weight `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("device: {0}")]
    Device(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{path}: cannot write output: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a configuration error on a file.
    pub fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a malformed-content error on a file.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// True for errors caused by what the user gave (files, flags, prompts): exit code 1.
    /// False for runtime failures (I/O while writing, device failures): exit code 2.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            Self::Output { .. } | Self::Device(_) | Self::Interrupted
        ) && !matches!(self, Self::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound && source.kind() != std::io::ErrorKind::InvalidData && source.kind() != std::io::ErrorKind::UnexpectedEof)
    }
}
