//! A GGUF file as a [`LayerStore`]: each unit's tensors are read in place,
//! still quantized, from maps of the file (q and k keep the converter's row
//! order; the implied config pairs their rotary dims to match). Each expert
//! of a 3-D expert stack is its own 2-D byte range under its Hugging Face
//! name, so it is read alone.

use std::ops::Range;
use std::sync::Arc;

use airllm_core::{HostUnit, LayerStore, UnitInfo, UnitSpec};

use super::family::{GgufFamily, Located};
use super::file::GgufFile;
use crate::placed::{Placed, PlacedUnits};
use crate::Result;

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
    placed: PlacedUnits,
}

impl GgufStore {
    /// Groups the tensors of `file`, named as `family` says, into the units
    /// `specs` lists. Tensors that are absent are left out (the engine's
    /// check names them).
    pub fn open(file: Arc<GgufFile>, family: GgufFamily, specs: &[UnitSpec]) -> Result<Self> {
        let location = file.path.display().to_string();
        let placed = PlacedUnits::group(vec![file.path.clone()], specs, &location, |name| {
            let Some(located) = family.locate(name, &file) else {
                return Ok(None);
            };
            Ok(extent(&file, located).map(|(shape, range)| Placed {
                file: 0,
                name: name.to_string(),
                kind: file.tensors[located.tensor].kind,
                shape,
                range,
                frame: None,
            }))
        })?;
        Ok(GgufStore { file, placed })
    }
}

impl LayerStore for GgufStore {
    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }

    fn units(&self) -> &[UnitInfo] {
        self.placed.units()
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        Ok(self.placed.read(index, only)?)
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
