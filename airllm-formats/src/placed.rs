//! What every weight store shares: each unit's tensors placed in weight
//! files (file, encoding, shape, byte range), the unit list the engine
//! sees, and the read of a unit, or of a named subset of its tensors,
//! through the stores' file maps.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use airllm_core::{HostUnit, StorageKind, TensorInfo, UnitInfo, UnitSpec};

use crate::frames::{DecodeBuffers, Frame};
use crate::mapped::{map_tensors, FileMaps, TensorPlacement};
use crate::Result;

/// Where one tensor of a unit lies.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Index of its file among the store's files.
    pub file: usize,
    /// The name the architecture asks for it by.
    pub name: String,
    /// Its encoding.
    pub kind: StorageKind,
    /// Its logical shape.
    pub shape: Vec<usize>,
    /// Its absolute byte range in the file.
    pub range: Range<usize>,
    /// The zstd frame the range holds, if it is stored as one.
    pub frame: Option<Frame>,
}

/// Units of tensors placed in weight files, read through shared maps.
pub struct PlacedUnits {
    files: Vec<PathBuf>,
    units: Vec<UnitInfo>,
    placements: Vec<Vec<Placed>>,
    maps: FileMaps,
    buffers: DecodeBuffers,
}

impl PlacedUnits {
    /// Groups into the units `specs` lists the tensors `place` finds in
    /// `files` (by the name the architecture asks for); tensors it does not
    /// find are left out, for the engine's check to name. `location` names
    /// the units' source in messages.
    pub fn group(
        files: Vec<PathBuf>,
        specs: &[UnitSpec],
        location: &str,
        mut place: impl FnMut(&str) -> Result<Option<Placed>>,
    ) -> Result<Self> {
        let mut units = Vec::with_capacity(specs.len());
        let mut placements = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut placed = Vec::new();
            for want in &spec.tensors {
                placed.extend(place(&want.name)?);
            }
            units.push(UnitInfo {
                kind: spec.kind,
                name: spec.name.clone(),
                location: location.to_string(),
                tensors: placed.iter().map(tensor_info).collect(),
                bytes: placed.iter().map(|p| p.range.len() as u64).sum(),
                decode_bytes: 0,
            });
            placements.push(placed);
        }
        let weight_bytes = units.iter().map(|u| u.bytes).sum();
        Ok(PlacedUnits::new(files, units, placements, weight_bytes))
    }

    /// Units already grouped and placed; `weight_bytes` is what the files
    /// hold in all (see [`FileMaps::new`]).
    pub fn new(
        files: Vec<PathBuf>,
        units: Vec<UnitInfo>,
        placements: Vec<Vec<Placed>>,
        weight_bytes: u64,
    ) -> Self {
        PlacedUnits {
            maps: FileMaps::new(weight_bytes),
            buffers: DecodeBuffers::default(),
            files,
            units,
            placements,
        }
    }

    /// The units in forward order.
    pub fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    /// The indices of the files unit `index` reads, each once.
    pub fn files_of(&self, index: usize) -> Vec<usize> {
        let mut files: Vec<usize> = self.placements[index].iter().map(|p| p.file).collect();
        files.sort_unstable();
        files.dedup();
        files
    }

    /// Reads unit `index`, or only its tensors named in `only`; tensors
    /// stored as zstd frames are decoded.
    pub fn read(&self, index: usize, only: Option<&[&str]>) -> Result<HostUnit> {
        let wanted: Vec<TensorPlacement<'_>> = self.placements[index]
            .iter()
            .filter(|p| only.is_none_or(|names| names.contains(&p.name.as_str())))
            .map(|p| TensorPlacement {
                path: &self.files[p.file],
                name: &p.name,
                kind: p.kind,
                shape: &p.shape,
                range: p.range.clone(),
                frame: p.frame,
            })
            .collect();
        let mapped = map_tensors(&self.maps, &wanted)?;
        let Some(framed) = wanted.iter().find(|p| p.frame.is_some()) else {
            return Ok(HostUnit::in_place(mapped));
        };
        let started = Instant::now();
        let stored_bytes = mapped.iter().map(|t| t.bytes.len() as u64).sum();
        let frames = mapped.into_iter().zip(wanted.iter().map(|p| p.frame));
        let tensors = self.buffers.decode(framed.path, frames.collect())?;
        Ok(HostUnit {
            tensors,
            stored_bytes,
            decompress: started.elapsed(),
        })
    }
}

/// What the engine is told of a placed tensor.
pub fn tensor_info(placed: &Placed) -> TensorInfo {
    TensorInfo {
        name: placed.name.clone(),
        kind: placed.kind,
        shape: placed.shape.clone(),
    }
}
