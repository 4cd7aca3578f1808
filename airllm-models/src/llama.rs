//! Llama (1, 2, 3, 3.1; `LlamaForCausalLM`): the Llama-shaped decoder with
//! the attention and MLP biases config.json asks for (`attention_bias`,
//! `mlp_bias`).

use airllm_core::Result;
use serde_json::Value;

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, LlamaVariant};

/// Builds the Llama decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let attention = c.bool_or("attention_bias", false)?;
    let variant = LlamaVariant::biased("llama", attention, c.bool_or("mlp_bias", false)?);
    llama_layout(&c, variant)
}
