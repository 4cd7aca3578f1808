//! A Hugging Face model directory read in place: `model.safetensors` or a
//! sharded `model.safetensors.index.json`, grouped into the architecture's
//! units without a second copy on disk.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use airllm_core::{HostUnit, LayerStore, TensorInfo, UnitInfo, UnitSpec};

use crate::error::read_json;
use crate::mapped::{map_tensors, FileMaps, TensorPlacement};
use crate::safetensors_file::SafetensorsFile;
use crate::{FormatError, Result};

/// Single-file weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// Where a unit's tensor lives: file index and tensor name.
type Placement = Vec<(usize, String)>;

/// A Hugging Face directory as a [`LayerStore`].
pub struct HfStore {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    units: Vec<UnitInfo>,
    placements: Vec<Placement>,
    maps: FileMaps,
}

impl HfStore {
    /// Opens `dir`, parses every weights file's header, and groups tensors
    /// into the units `specs` lists. Tensors that are absent are left out of
    /// the unit lists (the engine's check names them).
    pub fn open(dir: &Path, specs: &[UnitSpec]) -> Result<Self> {
        let (files, owner_of, location) = open_weights(dir)?;
        let mut units = Vec::with_capacity(specs.len());
        let mut placements = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut tensors = Vec::new();
            let mut placement = Vec::new();
            let mut bytes = 0;
            for want in &spec.tensors {
                let Some(&file) = owner_of.get(&want.name) else {
                    continue;
                };
                let Some((entry, kind)) = files[file].entry(&want.name)? else {
                    return Err(FormatError::NotAModel {
                        path: location.clone(),
                        detail: format!(
                            "the index places `{}` in {}, which does not hold it; download the model again",
                            want.name,
                            files[file].path.display()
                        ),
                    });
                };
                bytes += entry.range.len() as u64;
                tensors.push(TensorInfo {
                    name: want.name.clone(),
                    kind,
                    shape: entry.shape.clone(),
                });
                placement.push((file, want.name.clone()));
            }
            units.push(UnitInfo {
                kind: spec.kind,
                name: spec.name.clone(),
                location: location.display().to_string(),
                tensors,
                bytes,
            });
            placements.push(placement);
        }
        Ok(HfStore {
            maps: FileMaps::new(units.iter().map(|u| u.bytes).sum()),
            dir: dir.to_path_buf(),
            files,
            units,
            placements,
        })
    }
}

/// How many tensors the weights of Hugging Face directory `dir` hold (the
/// shard index's entries, or the single file's).
pub fn tensor_count(dir: &Path) -> Result<usize> {
    Ok(open_weights(dir)?.1.len())
}

/// Parses the weights files of `dir`: the files, which file holds each
/// tensor, and the path to name in messages.
fn open_weights(dir: &Path) -> Result<(Vec<SafetensorsFile>, HashMap<String, usize>, PathBuf)> {
    let index_path = dir.join(INDEX_FILE);
    let single_path = dir.join(SINGLE_FILE);
    if index_path.is_file() {
        let index: ShardIndex = read_json(&index_path)?;
        let names: BTreeSet<&String> = index.weight_map.values().collect();
        let files = names
            .iter()
            .map(|name| SafetensorsFile::open(&dir.join(name)))
            .collect::<Result<Vec<_>>>()?;
        let file_index: HashMap<&String, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let owner_of = index
            .weight_map
            .iter()
            .map(|(tensor, file)| (tensor.clone(), file_index[file]))
            .collect();
        Ok((files, owner_of, index_path))
    } else if single_path.is_file() {
        let file = SafetensorsFile::open(&single_path)?;
        let owner_of = file.tensors.keys().map(|name| (name.clone(), 0)).collect();
        Ok((vec![file], owner_of, single_path))
    } else {
        Err(FormatError::NotAModel {
            path: dir.to_path_buf(),
            detail: format!(
                "no {SINGLE_FILE} or {INDEX_FILE}; only safetensors weights are read (convert .bin weights with transformers' save_pretrained)"
            ),
        })
    }
}

impl LayerStore for HfStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        let wanted: Vec<TensorPlacement<'_>> = self.placements[index]
            .iter()
            .filter(|(_, name)| only.is_none_or(|names| names.contains(&name.as_str())))
            .map(|(file, name)| {
                let file = &self.files[*file];
                let entry = &file.tensors[name];
                TensorPlacement {
                    path: &file.path,
                    name,
                    kind: entry.kind.expect("checked readable at open"),
                    shape: &entry.shape,
                    range: entry.range.clone(),
                }
            })
            .collect();
        Ok(HostUnit {
            tensors: map_tensors(&self.maps, &wanted)?,
        })
    }

    fn verify_unit(&self, index: usize) -> airllm_core::Result<()> {
        for (file_index, _) in &self.placements[index] {
            let file = &self.files[*file_index];
            let len = std::fs::metadata(&file.path)
                .map_err(|e| FormatError::io(&file.path, e))?
                .len();
            if len != file.len {
                return Err(FormatError::BadSafetensors {
                    path: file.path.clone(),
                    detail: format!(
                        "it changed size from {} to {len} bytes while open",
                        file.len
                    ),
                }
                .into());
            }
        }
        Ok(())
    }
}
