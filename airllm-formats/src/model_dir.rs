//! Recognises what a model path is (a Hugging Face directory, a split
//! directory or a GGUF file) and opens its config, tokenizer, chat template,
//! side files and weight store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_core::family::{declared_architecture, family_of, FamilyFiles};
use airllm_core::{LayerStore, UnitSpec};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::error::read_json;
use crate::gguf::{is_gguf, GgufFamily, GgufFile, GgufStore};
use crate::hub::{self, is_hub_id};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::split::SIDE_FILES;
use crate::{tokenizer, FormatError, HfStore, Result, SplitStore};

/// The kind of model path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A Hugging Face directory (config.json + safetensors).
    HuggingFace,
    /// The split per-layer layout (manifest.json + units/).
    Split,
    /// A GGUF file.
    Gguf,
}

/// Config keys that count layers or experts. Each is checked against the
/// tensors the weights actually hold before anything is sized from it, so
/// a corrupt count is an error rather than an allocation that aborts.
const COUNT_KEYS: [&str; 6] = [
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
];

/// A model path with its config.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The directory (or, for GGUF, the file).
    pub path: PathBuf,
    /// What kind it is.
    pub kind: ModelKind,
    /// Its config.json (from the manifest for a split, implied by the
    /// metadata for GGUF).
    pub config: Value,
    /// The descriptor of the family the config names, if it is among those
    /// the model was opened with.
    family: Option<&'static FamilyFiles>,
    gguf: Option<(Arc<GgufFile>, GgufFamily)>,
}

impl ModelDir {
    /// Recognises `path` as a model of one of `families` (the descriptors
    /// `airllm_models::catalog()` lists); a path that does not exist but
    /// reads as a hub id (`org/name`) is looked up in the Hugging Face
    /// cache, and downloaded when missing there (see [`crate::hub`]).
    pub fn open(path: &Path, families: &[&'static FamilyFiles]) -> Result<Self> {
        Self::open_with_token(path, families, None)
    }

    /// [`ModelDir::open`], downloading from the hub with `token` (else
    /// `HF_TOKEN`, else the token the cache holds).
    pub fn open_with_token(
        path: &Path,
        families: &[&'static FamilyFiles],
        token: Option<&str>,
    ) -> Result<Self> {
        let mut dir = match path.to_str() {
            Some(id) if !path.exists() && is_hub_id(id) => {
                Self::open_local(&hub::resolve(id, token)?, families)?
            }
            _ => Self::open_local(path, families)?,
        };
        dir.family = family_of(&dir.config, families);
        Ok(dir)
    }

    /// Recognises the local `path`.
    fn open_local(path: &Path, families: &[&'static FamilyFiles]) -> Result<Self> {
        let not_a_model = |detail: &str| FormatError::NotAModel {
            path: path.to_path_buf(),
            detail: detail.into(),
        };
        if !path.exists() {
            return Err(not_a_model("no such file or directory"));
        }
        let opened = |kind, config| ModelDir {
            path: path.to_path_buf(),
            kind,
            config,
            family: None,
            gguf: None,
        };
        if path.is_file() {
            if !is_gguf(path) {
                return Err(not_a_model(
                    "this file is not GGUF; pass a GGUF file, a Hugging Face model directory or a split directory",
                ));
            }
            let file = Arc::new(GgufFile::open(path)?);
            let family = GgufFamily::of(&file, families)?;
            let config = family.config(&file)?;
            check_counts(path, &config, file.tensors.len())?;
            return Ok(ModelDir {
                gguf: Some((file, family)),
                ..opened(ModelKind::Gguf, config)
            });
        }
        let manifest = path.join(MANIFEST_FILE);
        let config = path.join("config.json");
        if manifest.is_file() {
            let manifest = Manifest::read(&manifest)?;
            let tensors = manifest.units.iter().map(|u| u.tensors.len()).sum();
            check_counts(path, &manifest.config, tensors)?;
            Ok(opened(ModelKind::Split, manifest.config))
        } else if config.is_file() {
            let config = read_json(&config)?;
            // Missing or unreadable weights are named when the store opens.
            if let Ok(tensors) = crate::hf::tensor_count(path) {
                check_counts(path, &config, tensors)?;
            }
            Ok(opened(ModelKind::HuggingFace, config))
        } else if path.join(crate::manifest::JOURNAL_FILE).is_file() {
            Err(not_a_model("this split was interrupted before it finished; rerun `airllm split` with the same arguments"))
        } else {
            Err(not_a_model("neither config.json (a Hugging Face model directory) nor manifest.json (a split directory) is here"))
        }
    }

    /// `architectures[0]` of the config, if any.
    pub fn architecture(&self) -> Option<&str> {
        declared_architecture(&self.config)
    }

    /// A side file (tokenizer.json, generation_config.json, ...) of a
    /// directory, if present.
    pub fn side_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.path.join(name)).filter(|p| self.gguf.is_none() && p.is_file())
    }

    /// generation_config.json, if present (for GGUF: the BOS and EOS ids of
    /// its metadata).
    pub fn generation_config(&self) -> Result<Option<Value>> {
        if self.gguf.is_some() {
            let id = |key: &str| self.config.get(key).cloned().unwrap_or(Value::Null);
            return Ok(Some(json!({
                "bos_token_id": id("bos_token_id"),
                "eos_token_id": id("eos_token_id"),
            })));
        }
        self.side_file("generation_config.json")
            .map(|p| read_json(&p))
            .transpose()
    }

    /// The tokenizer: tokenizer.json of a directory, or the one a GGUF
    /// file's metadata describes. `None` when the model has none.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        match &self.gguf {
            Some((file, _)) if file.get("tokenizer.ggml.tokens").is_none() => Ok(None),
            Some((file, _)) => tokenizer::gguf::tokenizer(file).map(Some),
            None => match self.side_file("tokenizer.json") {
                Some(path) => tokenizer::from_file(&path).map(Some),
                None => self
                    .built_tokenizer()?
                    .map(|json| tokenizer::from_json(&json, &self.path))
                    .transpose(),
            },
        }
    }

    /// The tokenizer.json built from a directory's SentencePiece or
    /// tiktoken vocabulary, when it has no tokenizer.json.
    fn built_tokenizer(&self) -> Result<Option<Value>> {
        let hints = self.family.map(|f| &f.tokenizer);
        tokenizer::model_files::tokenizer_json(&self.path, hints, &self.tokenizer_config()?)
    }

    /// The chat template, with the BOS and EOS strings it may refer to;
    /// `None` when the model has none.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        let Some(source) = self.chat_template_source()? else {
            return Ok(None);
        };
        let (bos, eos) = self.special_token_strings()?;
        ChatTemplate::new(source, bos, eos).map(Some)
    }

    /// The template text: `chat_template.jinja`, the `chat_template` of
    /// tokenizer_config.json (a string, or the entry named `default`),
    /// GGUF's `tokenizer.chat_template`, or the family's built-in format.
    fn chat_template_source(&self) -> Result<Option<String>> {
        if let Some((file, _)) = &self.gguf {
            return Ok(file.string("tokenizer.chat_template").map(str::to_string));
        }
        if let Some(path) = self.side_file("chat_template.jinja") {
            return std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| FormatError::io(&path, e));
        }
        Ok(match self.tokenizer_config()?.get("chat_template") {
            Some(Value::String(template)) => Some(template.clone()),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string),
            _ => self
                .family
                .and_then(|f| f.chat_template)
                .map(str::to_string),
        })
    }

    /// tokenizer_config.json (`null` when absent).
    fn tokenizer_config(&self) -> Result<Value> {
        Ok(match self.side_file("tokenizer_config.json") {
            Some(path) => read_json(&path)?,
            None => Value::Null,
        })
    }

    /// The BOS and EOS token strings (empty when the model names none).
    fn special_token_strings(&self) -> Result<(String, String)> {
        if let Some((file, _)) = &self.gguf {
            let token = |key: &str| {
                let id = file.get(&format!("tokenizer.ggml.{key}"))?.as_u64()?;
                let tokens = file.get("tokenizer.ggml.tokens")?.as_array()?;
                Some(tokens.get(id as usize)?.as_str()?.to_string())
            };
            return Ok((
                token("bos_token_id").unwrap_or_default(),
                token("eos_token_id").unwrap_or_default(),
            ));
        }
        let config = self.tokenizer_config()?;
        let token = |key: &str| match config.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        };
        Ok((token("bos_token"), token("eos_token")))
    }

    /// The tokenizer and config files a split of this model carries, as
    /// (file name, contents): copies for a directory, generated from the
    /// metadata for GGUF.
    pub fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let pretty =
            |value: &Value| serde_json::to_vec_pretty(value).expect("JSON values serialize");
        let Some((file, _)) = &self.gguf else {
            let mut files = SIDE_FILES
                .iter()
                .filter_map(|name| self.side_file(name).map(|p| (name, p)))
                .map(|(name, path)| {
                    std::fs::read(&path)
                        .map(|bytes| (name.to_string(), bytes))
                        .map_err(|e| FormatError::io(&path, e))
                })
                .collect::<Result<Vec<_>>>()?;
            if self.side_file("tokenizer.json").is_none() {
                if let Some(built) = self.built_tokenizer()? {
                    files.push(("tokenizer.json".to_string(), pretty(&built)));
                }
            }
            return Ok(files);
        };
        let mut files = vec![
            ("config.json".to_string(), pretty(&self.config)),
            (
                "generation_config.json".to_string(),
                pretty(&self.generation_config()?.unwrap_or(Value::Null)),
            ),
        ];
        if file.get("tokenizer.ggml.tokens").is_some() {
            let tokenizer = tokenizer::gguf::tokenizer_json(file)?;
            files.push(("tokenizer.json".to_string(), pretty(&tokenizer)));
        }
        if let Some(template) = self.chat_template_source()? {
            files.push(("chat_template.jinja".to_string(), template.into_bytes()));
        }
        Ok(files)
    }

    /// Opens the weights as a store grouped into `specs` units.
    pub fn open_store(&self, specs: &[UnitSpec]) -> Result<Arc<dyn LayerStore>> {
        Ok(match (self.kind, &self.gguf) {
            (ModelKind::Gguf, Some((file, family))) => {
                Arc::new(GgufStore::open(file.clone(), *family, specs)?)
            }
            (ModelKind::Split, _) => Arc::new(SplitStore::open(&self.path)?),
            _ => Arc::new(HfStore::open(&self.path, specs)?),
        })
    }
}

/// Refuses a config whose layer or expert counts exceed the `tensors` its
/// weights hold (every layer and every expert has at least one). A file
/// without weights (a vocabulary-only GGUF) may still declare one layer.
fn check_counts(path: &Path, config: &Value, tensors: usize) -> Result<()> {
    for key in COUNT_KEYS {
        if let Some(count) = config.get(key).and_then(Value::as_u64) {
            if count > tensors.max(1) as u64 {
                return Err(FormatError::NotAModel {
                    path: path.to_path_buf(),
                    detail: format!(
                        "its config says {key} = {count}, but its weights hold only {tensors} tensors; the config is corrupt or belongs to another model"
                    ),
                });
            }
        }
    }
    Ok(())
}
