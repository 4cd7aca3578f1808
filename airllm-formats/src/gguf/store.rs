//! A GGUF file as a [`LayerStore`]: each unit's tensors are read in place,
//! still quantized, from maps of the file; only q and k rows are copied to
//! undo the converter's permutation.

use std::sync::Arc;

use airllm_core::{HostBytes, HostTensor, HostUnit, LayerStore, TensorInfo, UnitInfo, UnitSpec};

use super::family::{unpermute_rows, GgufFamily, PermutedRows};
use super::file::GgufFile;
use crate::mapped::{map_tensors, TensorPlacement};
use crate::Result;

/// Where an adapter tensor lives in the file.
struct Placement {
    /// The adapter's (Hugging Face) name.
    name: String,
    /// Index into the file's tensors.
    tensor: usize,
    /// Rows to put back in Hugging Face order.
    permuted: Option<PermutedRows>,
}

/// A GGUF file grouped into the architecture's units.
pub struct GgufStore {
    file: Arc<GgufFile>,
    units: Vec<UnitInfo>,
    placements: Vec<Vec<Placement>>,
}

impl GgufStore {
    /// Groups the tensors of `file` into the units `specs` lists; `config` is
    /// the config implied by the file (it gives the head counts of q and k).
    /// Tensors that are absent are left out (the engine's check names them).
    pub fn open(
        file: Arc<GgufFile>,
        specs: &[UnitSpec],
        config: &serde_json::Value,
    ) -> Result<Self> {
        let family = GgufFamily::of(&file)?;
        let location = file.path.display().to_string();
        let mut units = Vec::with_capacity(specs.len());
        let mut placements = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut tensors = Vec::new();
            let mut placement = Vec::new();
            let mut bytes = 0;
            for want in &spec.tensors {
                let Some(index) = family
                    .gguf_name(&want.name)
                    .and_then(|gguf| file.position(&gguf))
                else {
                    continue;
                };
                let tensor = &file.tensors[index];
                bytes += tensor.range.len() as u64;
                tensors.push(TensorInfo {
                    name: want.name.clone(),
                    kind: tensor.kind,
                    shape: tensor.shape.clone(),
                });
                placement.push(Placement {
                    name: want.name.clone(),
                    tensor: index,
                    permuted: family.permuted_rows(&want.name, config),
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
            file,
            units,
            placements,
        })
    }
}

/// `tensor` with its rows put back in Hugging Face order.
fn unpermuted(tensor: HostTensor, permuted: PermutedRows) -> HostTensor {
    let rows = tensor.shape[0];
    let row_bytes = tensor.bytes.len() / rows.max(1);
    let bytes = unpermute_rows(tensor.bytes.as_slice(), row_bytes, rows, permuted.heads);
    HostTensor {
        bytes: HostBytes::from_vec(bytes),
        ..tensor
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
            .map(|p| {
                let tensor = &self.file.tensors[p.tensor];
                TensorPlacement {
                    path: &self.file.path,
                    name: &p.name,
                    kind: tensor.kind,
                    shape: &tensor.shape,
                    range: tensor.range.clone(),
                }
            })
            .collect();
        let tensors = map_tensors(&places)?
            .into_iter()
            .zip(&wanted)
            .map(|(tensor, p)| match p.permuted {
                Some(permuted) => unpermuted(tensor, permuted),
                None => tensor,
            })
            .collect();
        Ok(HostUnit { tensors })
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
