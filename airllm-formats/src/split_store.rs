//! Reads the split layout: the manifest, then one memory-mapped unit file per
//! read, sizes checked always and checksums on request.

use std::path::{Path, PathBuf};

use airllm_compress::codec::PLANE_RUN;
use airllm_core::store::element_count;
use airllm_core::{HostUnit, LayerStore, StorageKind, UnitInfo};

use crate::manifest::{Manifest, ManifestUnit, JOURNAL_FILE, MANIFEST_FILE};
use crate::placed::{tensor_info, Placed, PlacedUnits};
use crate::{checksum, FormatError, Result};

/// A split directory as a [`LayerStore`].
pub struct SplitStore {
    dir: PathBuf,
    manifest: Manifest,
    placed: PlacedUnits,
}

impl SplitStore {
    /// Opens a split directory and checks every unit file's size.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            let detail = if dir.join(JOURNAL_FILE).is_file() {
                "the split was interrupted before it finished; rerun `airllm split` with the same arguments"
            } else {
                "no manifest.json; this is not a split directory"
            };
            return Err(FormatError::NotAModel {
                path: dir.to_path_buf(),
                detail: detail.into(),
            });
        }
        let manifest = Manifest::read(&manifest_path)?;
        let files: Vec<PathBuf> = manifest.units.iter().map(|u| dir.join(&u.file)).collect();
        let placements: Vec<Vec<Placed>> = manifest
            .units
            .iter()
            .enumerate()
            .map(|(file, u)| {
                u.tensors
                    .iter()
                    .map(|t| Placed {
                        file,
                        name: t.name.clone(),
                        kind: t.kind,
                        shape: t.shape.clone(),
                        range: t.range[0] as usize..t.range[1] as usize,
                        frame: t.frame,
                    })
                    .collect()
            })
            .collect();
        let units = manifest
            .units
            .iter()
            .zip(&files)
            .zip(&placements)
            .map(|((u, path), placed)| UnitInfo {
                kind: u.kind,
                name: u.name.clone(),
                location: path.display().to_string(),
                tensors: placed.iter().map(tensor_info).collect(),
                bytes: u.stored_bytes,
                decode_bytes: decode_bytes(u),
            })
            .collect();
        let stored = manifest.units.iter().map(|u| u.stored_bytes).sum();
        let store = SplitStore {
            dir: dir.to_path_buf(),
            placed: PlacedUnits::new(files, units, placements, stored),
            manifest,
        };
        for index in 0..store.manifest.units.len() {
            store.check_size(index)?;
            store.check_ranges(index)?;
        }
        Ok(store)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn unit_path(&self, index: usize) -> PathBuf {
        self.dir.join(&self.manifest.units[index].file)
    }

    fn bad_unit(&self, index: usize, detail: String) -> FormatError {
        FormatError::BadUnit {
            path: self.unit_path(index),
            dir: self.dir.clone(),
            detail,
        }
    }

    /// Every tensor's byte range holds exactly its shape's values and lies
    /// in the unit file, as the manifest records them.
    fn check_ranges(&self, index: usize) -> Result<()> {
        let unit = &self.manifest.units[index];
        for t in &unit.tensors {
            let [start, end] = t.range;
            let expected = element_count(&t.shape).and_then(|n| t.kind.encoded_bytes(n));
            let holds = t.frame.map_or(end.wrapping_sub(start), |f| f.raw_bytes);
            if start > end || end > unit.stored_bytes || expected.map(|e| e as u64) != Some(holds) {
                return Err(self.bad_unit(
                    index,
                    format!(
                        "has tensor `{}` ({}, shape {:?}) at bytes {start}..{end} in the manifest, which does not fit it",
                        t.name, t.kind, t.shape
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_size(&self, index: usize) -> Result<()> {
        let path = self.unit_path(index);
        let expected = self.manifest.units[index].stored_bytes;
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == expected => Ok(()),
            Ok(m) => Err(self.bad_unit(
                index,
                format!("has {} bytes, the manifest records {expected}", m.len()),
            )),
            Err(e) => Err(self.bad_unit(index, format!("cannot be read ({e})"))),
        }
    }
}

/// Host bytes a unit holds while it is decoded, besides its tensors: its
/// frames, mapped, and the staging buffer of byte planes (one run, or the
/// largest planar tensor when that is smaller).
fn decode_bytes(unit: &ManifestUnit) -> u64 {
    let frames = unit
        .tensors
        .iter()
        .filter_map(|t| Some((t.frame?, t.range)));
    let staging = frames
        .clone()
        .filter(|(frame, _)| frame.planes)
        .map(|(frame, _)| frame.raw_bytes.min(2 * PLANE_RUN as u64))
        .max();
    let stored: u64 = frames.map(|(_, [start, end])| end - start).sum();
    stored + staging.unwrap_or(0)
}

impl LayerStore for SplitStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn units(&self) -> &[UnitInfo] {
        self.placed.units()
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        self.check_size(index)?;
        Ok(self.placed.read(index, only)?)
    }

    fn verify_unit(&self, index: usize) -> airllm_core::Result<()> {
        self.check_size(index)?;
        let found = checksum::of_file(&self.unit_path(index))?;
        let expected = &self.manifest.units[index].checksum;
        if &found != expected {
            return Err(self
                .bad_unit(
                    index,
                    format!("has checksum {found}, the manifest records {expected}: it is damaged"),
                )
                .into());
        }
        for t in self.read_unit(index, None)?.tensors {
            if let (StorageKind::Block(_), Some(block)) =
                (t.kind, t.kind.first_non_finite(t.bytes.as_slice()))
            {
                let detail = format!(
                    "has tensor `{}` ({}) whose block {block} has a scale that is not finite",
                    t.name, t.kind
                );
                return Err(self.bad_unit(index, detail).into());
            }
        }
        Ok(())
    }
}
