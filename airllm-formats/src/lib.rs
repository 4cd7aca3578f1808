//! Weight sources for airllm-rs: Hugging Face model directories read in
//! place, GGUF files read in place (still quantized), the split per-layer
//! layout (writer, reader, manifest), and a synthetic source of random
//! weights for benchmarks. Every source is a [`airllm_core::LayerStore`].
//! Also the model's text side: tokenizers (tokenizer.json, or built from a
//! GGUF vocabulary) and chat templates.
//!
//! This crate reads and writes files; it must not compute with tensors or
//! know a model family beyond what it is handed: the unit list of the
//! architecture, and the families' descriptors as plain data
//! ([`airllm_core::family`]: names, GGUF tensor names, tokenizer and chat
//! hints).

pub mod chat;
pub mod checksum;
pub mod error;
pub mod frames;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod manifest;
pub mod mapped;
pub mod model_dir;
pub mod placed;
pub mod safetensors_file;
pub mod split;
pub mod split_store;
pub mod synthetic;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use error::{FormatError, Result};
pub use gguf::{GgufFile, GgufStore};
pub use hf::HfStore;
pub use manifest::{Manifest, MANIFEST_FILE};
pub use model_dir::{ModelDir, ModelKind};
pub use split::{split_model, SplitOptions, SplitProgress};
pub use split_store::SplitStore;
pub use synthetic::SyntheticStore;
