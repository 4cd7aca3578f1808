//! The manifest of a split directory: format version, architecture, config,
//! and per unit its file, codec, sizes, checksum and tensor byte ranges.

use std::path::Path;

use airllm_core::{StorageKind, UnitKind};

use crate::frames::{Frame, CODECS, CODEC_ZSTD};
use crate::split::StorageSettings;

use crate::error::read_json;
use crate::{FormatError, Result};

/// File name of the manifest, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the progress journal of an unfinished split.
pub const JOURNAL_FILE: &str = "manifest.partial.json";
/// Format name recorded in every manifest.
pub const FORMAT_NAME: &str = "airllm-split";
/// Version of the layout this crate writes (2: block-quantized tensors,
/// zstd frames and the storage settings). It reads this one and every
/// earlier one.
pub const FORMAT_VERSION: u32 = 2;

/// A tensor inside a unit file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestTensor {
    /// Tensor name.
    pub name: String,
    /// Storage kind.
    pub kind: StorageKind,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Byte range `[start, end)` in the unit file: the tensor's bytes, or
    /// its zstd frame.
    pub range: [u64; 2],
    /// The zstd frame the range holds, in a unit of codec `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<Frame>,
}

/// One unit file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestUnit {
    /// Unit name.
    pub name: String,
    /// Role in the pass.
    pub kind: UnitKind,
    /// File path relative to the split directory.
    pub file: String,
    /// Codec of the tensors in the file: `none` (stored as they are) or
    /// `zstd` (each tensor one zstd frame).
    pub codec: String,
    /// Bytes once decoded.
    pub raw_bytes: u64,
    /// Bytes on disk.
    pub stored_bytes: u64,
    /// Checksum of the file (see `checksum`).
    pub checksum: String,
    /// Tensors in the file.
    pub tensors: Vec<ManifestTensor>,
}

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Layout version.
    pub version: u32,
    /// `architectures[0]` of the model.
    pub architecture: String,
    /// The model's config.json.
    pub config: serde_json::Value,
    /// Checksum algorithm.
    pub checksum: String,
    /// How the split stored the weights (`None` in version 1 manifests,
    /// written before the setting existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSettings>,
    /// Units in forward order.
    pub units: Vec<ManifestUnit>,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn read(path: &Path) -> Result<Manifest> {
        let manifest: Manifest = read_json(path)?;
        let bad = |detail: String| FormatError::Manifest {
            path: path.to_path_buf(),
            detail,
        };
        if manifest.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is `{}`, not `{FORMAT_NAME}`",
                manifest.format
            )));
        }
        if manifest.version > FORMAT_VERSION {
            return Err(bad(format!(
                "layout version {} was written by a newer airllm-rs (this one reads up to {FORMAT_VERSION}); upgrade airllm-rs, or split the model again with this one",
                manifest.version
            )));
        }
        if manifest.checksum != crate::checksum::ALGORITHM {
            return Err(bad(format!("unknown checksum `{}`", manifest.checksum)));
        }
        for unit in &manifest.units {
            if !CODECS.contains(&unit.codec.as_str()) {
                return Err(bad(format!(
                    "unit `{}` uses unknown codec `{}`; the known codecs are {}",
                    unit.name,
                    unit.codec,
                    CODECS.join(", ")
                )));
            }
            let framed = unit.codec == CODEC_ZSTD;
            if let Some(t) = unit.tensors.iter().find(|t| t.frame.is_some() != framed) {
                let needs = if framed { "needs" } else { "cannot have" };
                return Err(bad(format!(
                    "tensor `{}` of unit `{}` (codec `{}`) {needs} a zstd frame",
                    t.name, unit.name, unit.codec
                )));
            }
        }
        Ok(manifest)
    }
}

/// Writes `bytes` to `path` crash-safely: a temporary file, synced, renamed,
/// and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FormatError::io(&tmp, e)
        })?;
    rename_synced(&tmp, path)
}

/// Renames `from` to `to` and syncs the directory so the rename survives a crash.
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| FormatError::io(to, e))?;
    if let Some(parent) = to.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| FormatError::io(parent, e))?;
    }
    Ok(())
}
