//! Recognises what a model path is (a Hugging Face directory or a split
//! directory) and opens its config, side files and weight store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_core::{LayerStore, UnitSpec};

use crate::error::read_json;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::{FormatError, HfStore, Result, SplitStore};

/// The kind of model directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A Hugging Face directory (config.json + safetensors).
    HuggingFace,
    /// The split per-layer layout (manifest.json + units/).
    Split,
}

/// A model directory with its config.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// What kind it is.
    pub kind: ModelKind,
    /// Its config.json (from the manifest for a split).
    pub config: serde_json::Value,
}

impl ModelDir {
    /// Recognises `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(FormatError::NotAModel {
                path: path.to_path_buf(),
                detail: "no such file or directory".into(),
            });
        }
        let manifest = path.join(MANIFEST_FILE);
        let config = path.join("config.json");
        if manifest.is_file() {
            Ok(ModelDir {
                path: path.to_path_buf(),
                kind: ModelKind::Split,
                config: Manifest::read(&manifest)?.config,
            })
        } else if config.is_file() {
            Ok(ModelDir {
                path: path.to_path_buf(),
                kind: ModelKind::HuggingFace,
                config: read_json(&config)?,
            })
        } else if path.join(crate::manifest::JOURNAL_FILE).is_file() {
            Err(FormatError::NotAModel {
                path: path.to_path_buf(),
                detail: "this split was interrupted before it finished; rerun `airllm split` with the same arguments".into(),
            })
        } else {
            Err(FormatError::NotAModel {
                path: path.to_path_buf(),
                detail: "neither config.json (a Hugging Face model directory) nor manifest.json (a split directory) is here".into(),
            })
        }
    }

    /// `architectures[0]` of the config, if any.
    pub fn architecture(&self) -> Option<&str> {
        self.config.get("architectures")?.get(0)?.as_str()
    }

    /// A side file (tokenizer.json, generation_config.json, ...) if present.
    pub fn side_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.path.join(name)).filter(|p| p.is_file())
    }

    /// generation_config.json, if present.
    pub fn generation_config(&self) -> Result<Option<serde_json::Value>> {
        self.side_file("generation_config.json")
            .map(|p| read_json(&p))
            .transpose()
    }

    /// Opens the weights as a store grouped into `specs` units.
    pub fn open_store(&self, specs: &[UnitSpec]) -> Result<Arc<dyn LayerStore>> {
        Ok(match self.kind {
            ModelKind::HuggingFace => Arc::new(HfStore::open(&self.path, specs)?),
            ModelKind::Split => Arc::new(SplitStore::open(&self.path)?),
        })
    }
}
