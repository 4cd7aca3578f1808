//! The error type of the core crate; other crates convert theirs into it at
//! the trait boundary.

use std::path::PathBuf;

/// Result alias used across the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, planning or running a model.
/// Each variant names what is wrong (file, tensor, setting) and, where there
/// is one, the remedy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// A tensor the model needs is not in the weights.
    #[error("tensor `{tensor}` is missing from {location}; the weights do not match the config (re-download or re-split the model)")]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// File or unit that should hold it.
        location: String,
    },
    /// A tensor has a different shape from the one the config implies.
    #[error("tensor `{tensor}` in {location} has shape {found:?}, but the config implies {expected:?}; the weights do not match config.json")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// File or unit holding it.
        location: String,
        /// Shape derived from the config.
        expected: Vec<usize>,
        /// Shape found on disk.
        found: Vec<usize>,
    },
    /// A stored tensor's storage kind cannot be used for this operation.
    #[error("tensor `{tensor}` is stored as {kind}, which {detail}")]
    UnsupportedStorage {
        /// Tensor name.
        tensor: String,
        /// Storage kind found.
        kind: String,
        /// What is not supported.
        detail: String,
    },
    /// A model configuration value is missing, malformed or unsupported.
    #[error("config `{setting}`: {detail}")]
    Config {
        /// The config key (or flag) at fault.
        setting: String,
        /// What is wrong with it and how to fix it.
        detail: String,
    },
    /// `architectures` / `model_type` names a family this build does not know.
    #[error("unknown architecture `{name}`; supported: {known}")]
    UnknownArchitecture {
        /// The name found in config.json.
        name: String,
        /// Comma-separated list of supported names.
        known: String,
    },
    /// A weights file or unit is damaged (truncated, bad checksum, bad header).
    #[error("{location} is corrupt: {detail}. {remedy}")]
    Corrupt {
        /// The file or unit.
        location: String,
        /// What was found.
        detail: String,
        /// How to fix it.
        remedy: String,
    },
    /// The memory budget cannot hold the minimum working set.
    #[error("memory budget of {budget} is below the minimum working set of {minimum} ({detail}); raise --max-memory, or lower --prefetch, the batch size or --prefill-chunk")]
    Budget {
        /// Budget in force.
        budget: crate::ByteSize,
        /// Minimum needed.
        minimum: crate::ByteSize,
        /// What the minimum is made of.
        detail: String,
    },
    /// The host tier's budget cannot hold what the device budget leaves to
    /// it (the KV cache of the layers that keep theirs in host memory).
    #[error("host memory budget of {budget} cannot hold {needed} ({detail}); raise --max-host-memory or --max-memory, or lower the batch size or the context")]
    HostBudget {
        /// Host-tier budget in force.
        budget: crate::ByteSize,
        /// Host bytes needed.
        needed: crate::ByteSize,
        /// What they are made of.
        detail: String,
    },
    /// A request (prompt, flag) cannot be served.
    #[error("{0}")]
    Request(String),
    /// The compute backend failed or lacks a feature.
    #[error("backend: {0}")]
    Backend(String),
    /// An error raised by a weight store implementation.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `setting`.
    pub fn config(setting: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            detail: detail.into(),
        }
    }
}
