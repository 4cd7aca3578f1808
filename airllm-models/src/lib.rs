//! Model family adapters for airllm-rs. A family is configuration and tensor
//! names ([`llama`], [`qwen2`], [`qwen3`], [`qwen`], [`mistral`], [`mixtral`], [`chatglm`],
//! [`baichuan`]) over shared blocks ([`blocks`]) assembled by the
//! generic [`decoder::Decoder`]; [`registry`] picks the family from
//! config.json.
//!
//! This crate computes on burn tensors through the core traits; it must not
//! read files or pick a device.

pub mod baichuan;
pub mod blocks;
pub mod chatglm;
pub mod config;
pub mod decoder;
pub mod llama;
pub mod mistral;
pub mod mixtral;
pub mod presets;
pub mod qwen;
pub mod qwen2;
pub mod qwen3;
pub mod registry;

pub use registry::{architecture, family, layout, Family, Layout, SUPPORTED};
