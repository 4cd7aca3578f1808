//! A GGUF file as a [`LayerStore`]: each unit's tensors are read in place,
//! still quantized, from maps of the file (q and k keep the converter's row
//! order; the implied config pairs their rotary dims to match). Each expert
//! of a 3-D expert stack is its own 2-D byte range under its Hugging Face
//! name, so it is read alone.

use std::ops::Range;
use std::sync::Arc;

use airllm_core::{HostUnit, LayerStore, StorageKind, TensorInfo, UnitInfo, UnitSpec};

use super::family::{GgufFamily, Located};
use super::file::GgufFile;
use crate::mapped::{map_tensors, FileMaps, TensorPlacement};
use crate::Result;

/// Where an adapter tensor lives in the file.
struct Placement {
    /// The adapter's (Hugging Face) name.
    name: String,
    /// Its encoding.
    kind: StorageKind,
    /// Its shape (one expert's, for a slice of an expert stack).
    shape: Vec<usize>,
    /// Its absolute byte range.
    range: Range<usize>,
}

/// The shape and bytes of `located` in `file`: the whole tensor, or one
/// expert's slice of a `[experts, rows, cols]` stack.
fn extent(file: &GgufFile, located: Located) -> Option<(Vec<usize>, Range<usize>)> {
    let tensor = &file.tensors[located.tensor];
    let Some(expert) = located.expert else {
        return Some((tensor.shape.clone(), tensor.range.clone()));
    };
    let [experts, rows, cols] = tensor.shape[..] else {
        return None;
    };
    if expert >= experts {
        return None;
    }
    let per_expert = tensor.range.len() / experts;
    let start = tensor.range.start + expert * per_expert;
    Some((vec![rows, cols], start..start + per_expert))
}

/// A GGUF file grouped into the architecture's units.
pub struct GgufStore {
    file: Arc<GgufFile>,
    units: Vec<UnitInfo>,
    placements: Vec<Vec<Placement>>,
    maps: FileMaps,
}

impl GgufStore {
    /// Groups the tensors of `file`, named as `family` says, into the units
    /// `specs` lists. Tensors that are absent are left out (the engine's
    /// check names them).
    pub fn open(file: Arc<GgufFile>, family: GgufFamily, specs: &[UnitSpec]) -> Result<Self> {
        let location = file.path.display().to_string();
        let mut units = Vec::with_capacity(specs.len());
        let mut placements = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut tensors = Vec::new();
            let mut placement = Vec::new();
            let mut bytes = 0;
            for want in &spec.tensors {
                let Some(located) = family.locate(&want.name, &file) else {
                    continue;
                };
                let Some((shape, range)) = extent(&file, located) else {
                    continue;
                };
                let kind = file.tensors[located.tensor].kind;
                bytes += range.len() as u64;
                tensors.push(TensorInfo {
                    name: want.name.clone(),
                    kind,
                    shape: shape.clone(),
                });
                placement.push(Placement {
                    name: want.name.clone(),
                    kind,
                    shape,
                    range,
                });
            }
            units.push(UnitInfo {
                kind: spec.kind,
                name: spec.name.clone(),
                location: location.clone(),
                tensors,
                bytes,
            });
            placements.push(placement);
        }
        Ok(GgufStore {
            maps: FileMaps::new(units.iter().map(|u| u.bytes).sum()),
            file,
            units,
            placements,
        })
    }
}

impl LayerStore for GgufStore {
    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }

    fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        let wanted: Vec<&Placement> = self.placements[index]
            .iter()
            .filter(|p| only.is_none_or(|names| names.contains(&p.name.as_str())))
            .collect();
        let places: Vec<TensorPlacement<'_>> = wanted
            .iter()
            .map(|p| TensorPlacement {
                path: &self.file.path,
                name: &p.name,
                kind: p.kind,
                shape: &p.shape,
                range: p.range.clone(),
            })
            .collect();
        Ok(HostUnit {
            tensors: map_tensors(&self.maps, &places)?,
        })
    }

    fn verify_unit(&self, _index: usize) -> airllm_core::Result<()> {
        let len = std::fs::metadata(&self.file.path)
            .map_err(|e| crate::FormatError::io(&self.file.path, e))?
            .len();
        let end = self
            .file
            .tensors
            .iter()
            .map(|t| t.range.end)
            .max()
            .unwrap_or(0);
        if len < end as u64 {
            return Err(crate::FormatError::Truncated {
                path: self.file.path.clone(),
                detail: format!("it is {len} bytes now, its tensors end at byte {end}"),
            }
            .into());
        }
        Ok(())
    }
}
