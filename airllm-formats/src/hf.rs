//! A Hugging Face model directory read in place: `model.safetensors` or a
//! sharded `model.safetensors.index.json`, grouped into the architecture's
//! units without a second copy on disk.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use airllm_core::{HostUnit, LayerStore, UnitInfo, UnitSpec};

use crate::error::read_json;
use crate::placed::{Placed, PlacedUnits};
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

/// A Hugging Face directory as a [`LayerStore`].
pub struct HfStore {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    placed: PlacedUnits,
}

impl HfStore {
    /// Opens `dir`, parses every weights file's header, and groups tensors
    /// into the units `specs` lists. Tensors that are absent are left out of
    /// the unit lists (the engine's check names them).
    pub fn open(dir: &Path, specs: &[UnitSpec]) -> Result<Self> {
        let (files, owner_of, location) = open_weights(dir)?;
        let paths = files.iter().map(|f| f.path.clone()).collect();
        let placed = PlacedUnits::group(paths, specs, &location.display().to_string(), |name| {
            let Some(&file) = owner_of.get(name) else {
                return Ok(None);
            };
            let Some((entry, kind)) = files[file].entry(name)? else {
                return Err(FormatError::NotAModel {
                    path: location.clone(),
                    detail: format!(
                        "the index places `{name}` in {}, which does not hold it; download the model again",
                        files[file].path.display()
                    ),
                });
            };
            Ok(Some(Placed {
                file,
                name: name.to_string(),
                kind,
                shape: entry.shape.clone(),
                range: entry.range.clone(),
                frame: None,
            }))
        })?;
        Ok(HfStore {
            dir: dir.to_path_buf(),
            files,
            placed,
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
        self.placed.units()
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        Ok(self.placed.read(index, only)?)
    }

    fn verify_unit(&self, index: usize) -> airllm_core::Result<()> {
        for file_index in self.placed.files_of(index) {
            let file = &self.files[file_index];
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
