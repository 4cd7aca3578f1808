//! Errors of the formats crate; converted into [`airllm_core::Error`] at the
//! `LayerStore` boundary.

use std::path::PathBuf;

/// What can go wrong reading or writing model files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A safetensors file is truncated or its header is malformed.
    #[error("{} is not a valid safetensors file ({detail}); it is probably truncated or corrupt: download it again", path.display())]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A GGUF file is truncated or malformed.
    #[error("{} is not a valid GGUF file ({detail}); it is probably truncated or corrupt: download it again", path.display())]
    BadGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field or tensor.
        detail: String,
    },
    /// A GGUF file uses something this crate does not read (an architecture,
    /// a tensor type).
    #[error("{}: {detail}", path.display())]
    UnsupportedGguf {
        /// The file.
        path: PathBuf,
        /// What is unsupported and what is.
        detail: String,
    },
    /// A file's bytes end before a tensor's data does.
    #[error("{}: {detail}; the file is truncated or corrupt: download the model again (for a unit of a split, rerun `airllm split`)", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which bytes are missing.
        detail: String,
    },
    /// A chat template does not compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A tensor uses a dtype this crate does not read.
    #[error("tensor `{tensor}` in {} has dtype {dtype}; supported: F32, F16, BF16", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A path holds no model this crate recognises.
    #[error("{}: {detail}", path.display())]
    NotAModel {
        /// The path.
        path: PathBuf,
        /// What is missing and what to do.
        detail: String,
    },
    /// A JSON file could not be parsed, or holds what this crate does not
    /// know (an unknown variant lists the known ones).
    #[error("{} cannot be read as {}: {source}", path.display(), if source.is_data() { "expected" } else { "JSON" })]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error.
        source: serde_json::Error,
    },
    /// The manifest of a split directory is unusable.
    #[error("{}: {detail}; rerun `airllm split` to rewrite the split", path.display())]
    Manifest {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A unit file does not match the manifest.
    #[error("unit file {} {detail}; rerun `airllm split MODEL {}` to rewrite it (finished units are kept)", path.display(), dir.display())]
    BadUnit {
        /// The unit file.
        path: PathBuf,
        /// The split directory.
        dir: PathBuf,
        /// What is wrong (size, checksum).
        detail: String,
    },
    /// A tensor could not be written in the encoding the split asked for.
    #[error("tensor `{tensor}` of {}: {detail}", path.display())]
    Encode {
        /// The model being split.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Not enough free disk for a split.
    #[error("not enough free disk in {}: the split needs {needed} more, {available} is free; free some space or choose another output directory", path.display())]
    DiskFull {
        /// The output directory.
        path: PathBuf,
        /// Bytes still to write.
        needed: airllm_core::ByteSize,
        /// Bytes free.
        available: airllm_core::ByteSize,
    },
}

impl FormatError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<FormatError> for airllm_core::Error {
    fn from(e: FormatError) -> Self {
        airllm_core::Error::Store(Box::new(e))
    }
}

/// Result alias of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|source| FormatError::Json {
        path: path.to_path_buf(),
        source,
    })
}
