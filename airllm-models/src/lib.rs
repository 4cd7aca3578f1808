//! Model family adapters for airllm-rs. A family is one file with its
//! builder ([`llama`], [`qwen2`], [`qwen3`], [`qwen`], [`mistral`],
//! [`mixtral`], [`chatglm`], [`baichuan`], [`internlm`], [`internlm2`]):
//! configuration and tensor names over shared blocks ([`blocks`]) assembled
//! by the generic [`decoder::Decoder`]; the families with Llama's
//! computation build through one shared builder (`llama_shaped`). Each has
//! one descriptor in [`descriptors`] ([`Family`]: names, GGUF tensor names,
//! tokenizer and chat hints, synthetic config). [`registry`] picks a family
//! from config.json; [`catalog`] hands the descriptors to the file formats.
//!
//! This crate computes on burn tensors through the core traits; it must not
//! read files or pick a device.

pub mod baichuan;
pub mod blocks;
pub mod chatglm;
pub mod config;
pub mod decoder;
pub mod descriptors;
pub mod internlm;
pub mod internlm2;
pub mod llama;
mod llama_shaped;
pub mod mistral;
pub mod mixtral;
pub mod presets;
pub mod qwen;
pub mod qwen2;
pub mod qwen3;
pub mod registry;

pub use registry::{architecture, catalog, family, layout, Family, Layout, Synthetic, SUPPORTED};
