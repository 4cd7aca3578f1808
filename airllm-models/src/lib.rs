//! Model family adapters for airllm-rs. A family is one file ([`llama`],
//! [`qwen2`], [`qwen3`], [`qwen`], [`mistral`], [`mixtral`], [`chatglm`],
//! [`baichuan`], [`internlm`]) holding its descriptor ([`Family`]: names, GGUF tensor
//! names, tokenizer and chat hints, synthetic config) and its builder:
//! configuration and tensor names over shared blocks ([`blocks`]) assembled
//! by the generic [`decoder::Decoder`]. The families with Llama's layout
//! build through one shared builder (`llama_shaped`). [`registry`] lists
//! the families and picks one from config.json; [`catalog`] hands their
//! descriptors to the file formats.
//!
//! This crate computes on burn tensors through the core traits; it must not
//! read files or pick a device.

pub mod baichuan;
pub mod blocks;
pub mod chatglm;
pub mod config;
pub mod decoder;
pub mod internlm;
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
