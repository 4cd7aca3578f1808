//! Writes the split layout: one safetensors file per unit, each written under
//! a temporary name, synced and renamed; a journal after every unit; the
//! manifest last. A rerun after any interruption keeps the finished units
//! whose checksums still match, written with the same storage settings, and
//! writes the rest. Each tensor is stored in the encoding the settings give
//! it (`encode`): as read, widened to a float dtype, or quantized.

mod encode;
mod settings;

use std::path::{Path, PathBuf};

use airllm_core::{ByteSize, HostTensor, LayerStore, StorageKind, UnitInfo};

pub use encode::{wanted, Role};
pub use settings::{parse_zstd_level, Compression, EndStorage, StorageSettings};

use crate::frames::{Frame, CODEC_NONE, CODEC_ZSTD};
use crate::manifest::{
    rename_synced, write_atomic, Manifest, ManifestTensor, ManifestUnit, FORMAT_NAME,
    FORMAT_VERSION, JOURNAL_FILE, MANIFEST_FILE,
};
use crate::safetensors_file::{SafetensorsFile, TensorWriteView};
use crate::{checksum, FormatError, Result};

/// Files copied next to the manifest when the source directory has them.
pub const SIDE_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Directory of the unit files inside a split.
pub const UNITS_DIR: &str = "units";

/// Extra room kept free beyond the bytes a split writes.
const DISK_MARGIN: u64 = 16 << 20;

/// What happened, for progress reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitProgress {
    /// The split starts: `kept` units are reused, `total` in all, `bytes` to write.
    Start {
        /// Units in the model.
        total: usize,
        /// Finished units kept from an earlier run.
        kept: usize,
        /// Bytes still to write.
        bytes: u64,
    },
    /// A unit was written.
    Unit {
        /// Its name.
        name: String,
        /// Its bytes.
        bytes: u64,
    },
}

/// Settings of a split run.
pub struct SplitOptions<'a> {
    /// `architectures[0]` recorded in the manifest.
    pub architecture: String,
    /// The model's config.json.
    pub config: serde_json::Value,
    /// Tokenizer and config files written next to the manifest, as (file
    /// name, contents); [`crate::ModelDir::side_files`] gives them.
    pub side_files: Vec<(String, Vec<u8>)>,
    /// How the weights are stored.
    pub storage: StorageSettings,
    /// Names of the tensors the layout marks as MoE routers, which stay in
    /// a float dtype whatever the compression.
    pub routers: Vec<String>,
    /// Reports free bytes at a path (the default asks the file system).
    pub free_space: &'a dyn Fn(&Path) -> std::io::Result<u64>,
    /// Called after each step; returning `false` stops the split (as Ctrl-C would).
    pub progress: &'a mut dyn FnMut(&SplitProgress) -> bool,
}

/// Free bytes on the file system holding `path`.
pub fn file_system_free_space(path: &Path) -> std::io::Result<u64> {
    fs4::available_space(path)
}

/// Writes `source` into the split layout at `out`; returns the manifest.
pub fn split_model(
    source: &dyn LayerStore,
    out: &Path,
    options: SplitOptions<'_>,
) -> Result<Manifest> {
    let units_dir = out.join(UNITS_DIR);
    std::fs::create_dir_all(&units_dir).map_err(|e| FormatError::io(&units_dir, e))?;
    remove_temporaries(&units_dir)?;

    let units = source.units();
    let encoding = Encoding {
        storage: options.storage,
        routers: &options.routers,
    };
    let mut done = finished_units(out, options.storage)?;
    done.retain(|u| units.iter().any(|s| s.name == u.name && s.kind == u.kind));
    let todo: Vec<usize> = (0..units.len())
        .filter(|&i| !done.iter().any(|u| u.name == units[i].name))
        .collect();
    let needed: u64 = todo
        .iter()
        .map(|&i| encoding.written_bytes(&units[i]))
        .sum();
    let available = (options.free_space)(out).map_err(|e| FormatError::io(out, e))?;
    if !todo.is_empty() && available < needed + DISK_MARGIN {
        return Err(FormatError::DiskFull {
            path: out.to_path_buf(),
            needed: ByteSize(needed + DISK_MARGIN),
            available: ByteSize(available),
        });
    }
    let start = SplitProgress::Start {
        total: units.len(),
        kept: done.len(),
        bytes: needed,
    };
    if !(options.progress)(&start) {
        return Err(interrupted(out));
    }
    let mut warned = false;
    for index in todo {
        let unit = write_unit(source, index, &units_dir, &encoding, &mut warned)?;
        let step = SplitProgress::Unit {
            name: unit.name.clone(),
            bytes: unit.stored_bytes,
        };
        done.push(unit);
        write_journal(out, options.storage, &done)?;
        if !(options.progress)(&step) {
            return Err(interrupted(out));
        }
    }
    for (name, bytes) in &options.side_files {
        write_atomic(&out.join(name), bytes)?;
    }
    done.sort_by_key(|u| units.iter().position(|s| s.name == u.name));
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        architecture: options.architecture,
        config: options.config,
        checksum: checksum::ALGORITHM.into(),
        storage: Some(options.storage),
        units: done,
    };
    write_atomic(&out.join(MANIFEST_FILE), &to_json(&manifest))?;
    let journal = out.join(JOURNAL_FILE);
    if journal.exists() {
        std::fs::remove_file(&journal).map_err(|e| FormatError::io(&journal, e))?;
    }
    Ok(manifest)
}

fn interrupted(out: &Path) -> FormatError {
    FormatError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "split interrupted; rerun the same command to finish it (finished units are kept)",
        ),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("manifests serialize")
}

/// The journal of an unfinished split: its settings and finished units.
#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    storage: StorageSettings,
    units: Vec<ManifestUnit>,
}

fn write_journal(out: &Path, storage: StorageSettings, done: &[ManifestUnit]) -> Result<()> {
    let journal = Journal {
        storage,
        units: done.to_vec(),
    };
    write_atomic(&out.join(JOURNAL_FILE), &to_json(&journal))
}

/// Deletes half-written files left by an interrupted run: nothing written
/// under a temporary name is ever trusted.
fn remove_temporaries(units_dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(units_dir).map_err(|e| FormatError::io(units_dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(|e| FormatError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Units recorded by an earlier run (journal or manifest) with the same
/// storage settings whose files are still whole: the recorded size and
/// checksum match.
fn finished_units(out: &Path, storage: StorageSettings) -> Result<Vec<ManifestUnit>> {
    let journal = out.join(JOURNAL_FILE);
    let manifest = out.join(MANIFEST_FILE);
    let recorded: Option<(Option<StorageSettings>, Vec<ManifestUnit>)> = if journal.is_file() {
        let bytes = std::fs::read(&journal).map_err(|e| FormatError::io(&journal, e))?;
        serde_json::from_slice::<Journal>(&bytes)
            .ok()
            .map(|j| (Some(j.storage), j.units))
    } else if manifest.is_file() {
        Manifest::read(&manifest).ok().map(|m| (m.storage, m.units))
    } else {
        None
    };
    let recorded = match recorded {
        Some((settings, units)) if settings == Some(storage) => units,
        Some((_, units)) if !units.is_empty() => {
            tracing::warn!(
                "the split in {} was written with other storage settings; rewriting every unit",
                out.display()
            );
            Vec::new()
        }
        _ => Vec::new(),
    };
    let mut kept = Vec::new();
    for unit in recorded {
        let path = out.join(&unit.file);
        let whole = std::fs::metadata(&path).is_ok_and(|m| m.len() == unit.stored_bytes)
            && checksum::of_file(&path).is_ok_and(|c| c == unit.checksum);
        if whole {
            kept.push(unit);
        } else {
            tracing::warn!(unit = %unit.name, "unit file damaged or missing; rewriting it");
        }
    }
    Ok(kept)
}

/// The storage settings with what the layout says of each tensor.
struct Encoding<'a> {
    storage: StorageSettings,
    routers: &'a [String],
}

impl Encoding<'_> {
    /// The encoding each tensor of `unit` is written in.
    fn targets(&self, unit: &UnitInfo) -> Vec<StorageKind> {
        unit.tensors
            .iter()
            .map(|t| {
                let role = Role::of(unit.kind, t, self.routers.contains(&t.name));
                encode::target(self.storage, role, t)
            })
            .collect()
    }

    /// Bytes a unit's tensors take in its unit file at most, in their
    /// encodings (as zstd frames: zstd's bound for incompressible bytes).
    fn written_bytes(&self, unit: &UnitInfo) -> u64 {
        unit.tensors
            .iter()
            .zip(self.targets(unit))
            .map(|(t, kind)| {
                let elements = t.shape.iter().product::<usize>();
                let bytes = kind.encoded_bytes(elements).unwrap_or(0);
                match self.storage.zstd {
                    Some(_) => airllm_compress::codec::bound(bytes) as u64,
                    None => bytes as u64,
                }
            })
            .sum()
    }
}

/// Reads unit `index` and encodes each tensor as `encoding` says; warns
/// once per split (`warned`) of a copied tensor with values that are not
/// finite.
fn encoded_unit(
    source: &dyn LayerStore,
    index: usize,
    encoding: &Encoding<'_>,
    warned: &mut bool,
) -> Result<Vec<HostTensor>> {
    let info = &source.units()[index];
    let not_read = |e: airllm_core::Error| FormatError::NotAModel {
        path: PathBuf::from(source.describe()),
        detail: format!("reading unit `{}`: {e}", info.name),
    };
    let unit = source.read_unit(index, None).map_err(not_read)?;
    let targets = encoding.targets(info);
    let mut tensors = Vec::with_capacity(unit.tensors.len());
    for tensor in unit.tensors {
        let at = info.tensors.iter().position(|t| t.name == tensor.name);
        let target = at.map_or(tensor.kind, |at| targets[at]);
        let name = tensor.name.clone();
        let bad = |detail: String| FormatError::Encode {
            path: PathBuf::from(source.describe()),
            tensor: name.clone(),
            detail,
        };
        let encoded = encode::encode(tensor, target).map_err(|e| match e {
            encode::EncodeError::Decode(e) => not_read(e),
            encode::EncodeError::NonFinite(detail) => bad(format!(
                "{detail}; the model file is damaged: download it again"
            )),
            encode::EncodeError::Quantize(e) => bad(format!(
                "{e}; fix the model's weights, or split with --compress keep to copy them as they are"
            )),
        })?;
        if let (StorageKind::Dense(_), false) = (encoded.kind, *warned) {
            if let Some(value) = encoded.kind.first_non_finite(encoded.bytes.as_slice()) {
                tracing::warn!(tensor = %name, value, "the tensor holds values that are not finite (NaN or infinite); copied as they are");
                *warned = true;
            }
        }
        tensors.push(encoded);
    }
    Ok(tensors)
}

/// Each tensor as one zstd frame at `level`: 16-bit dense tensors split
/// into byte planes first.
fn compressed(tensors: &[HostTensor], level: i32) -> Vec<(Vec<u8>, Frame)> {
    let planar = |t: &HostTensor| matches!(t.kind, StorageKind::Dense(dtype) if dtype.size() == 2);
    let inputs: Vec<(&[u8], bool)> = tensors
        .iter()
        .map(|t| (t.bytes.as_slice(), planar(t)))
        .collect();
    let frames = airllm_compress::codec::compress_each(&inputs, level);
    frames
        .into_iter()
        .zip(tensors)
        .map(|(bytes, t)| {
            let frame = Frame {
                raw_bytes: t.bytes.len() as u64,
                planes: planar(t),
            };
            (bytes, frame)
        })
        .collect()
}

/// Writes one unit file crash-safely and describes it.
fn write_unit(
    source: &dyn LayerStore,
    index: usize,
    units_dir: &Path,
    encoding: &Encoding<'_>,
    warned: &mut bool,
) -> Result<ManifestUnit> {
    let info = &source.units()[index];
    let host = encoded_unit(source, index, encoding, warned)?;
    let file_name = format!("{index:03}-{}.safetensors", info.name);
    let path = units_dir.join(&file_name);
    let tmp = path.with_extension("safetensors.tmp");
    let frames = encoding.storage.zstd.map(|level| compressed(&host, level));
    let views: Vec<(String, TensorWriteView<'_>)> = match &frames {
        Some(frames) => host
            .iter()
            .zip(frames)
            .map(|(t, (bytes, _))| (t.name.clone(), TensorWriteView::bytes(bytes)))
            .collect(),
        None => host
            .iter()
            .map(|t| (t.name.clone(), TensorWriteView::new(t)))
            .collect(),
    };
    let written = safetensors::serialize_to_file(views, None, &tmp)
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => FormatError::io(&tmp, io),
            other => FormatError::BadSafetensors {
                path: tmp.clone(),
                detail: format!("{other:?}"),
            },
        })
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| FormatError::io(&tmp, e))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    rename_synced(&tmp, &path)?;
    let parsed = SafetensorsFile::open(&path)?;
    let tensors: Vec<ManifestTensor> = host
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let range = &parsed.tensors[&t.name].range;
            ManifestTensor {
                name: t.name.clone(),
                kind: t.kind,
                shape: t.shape.clone(),
                range: [range.start as u64, range.end as u64],
                frame: frames.as_ref().map(|f| f[i].1),
            }
        })
        .collect();
    drop(host);
    let framed = tensors.iter().filter_map(|t| Some((t.frame?, t.range)));
    let frame_bytes: u64 = framed.clone().map(|(_, [start, end])| end - start).sum();
    let decoded_bytes: u64 = framed.map(|(frame, _)| frame.raw_bytes).sum();
    Ok(ManifestUnit {
        name: info.name.clone(),
        kind: info.kind,
        file: format!("{UNITS_DIR}/{file_name}"),
        codec: if frames.is_some() {
            CODEC_ZSTD
        } else {
            CODEC_NONE
        }
        .into(),
        raw_bytes: parsed.len - frame_bytes + decoded_bytes,
        stored_bytes: parsed.len,
        checksum: checksum::of_file(&path)?,
        tensors,
    })
}
