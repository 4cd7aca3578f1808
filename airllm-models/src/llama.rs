//! Llama (1, 2, 3, 3.1; `LlamaForCausalLM`): the Llama-shaped decoder with
//! the attention and MLP biases config.json asks for (`attention_bias`,
//! `mlp_bias`).

use airllm_core::family::FamilyFiles;
use airllm_core::Result;
use serde_json::{json, Value};

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{gguf, llama_layout, LlamaVariant, PERMUTED_QK};
use crate::registry::{Family, Synthetic};

/// Llama's descriptor.
pub static FAMILY: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("llama", PERMUTED_QK, None)],
        ..FamilyFiles::named(&["LlamaForCausalLM"], "llama")
    },
    build: from_config,
    synthetic: Synthetic::Dense(|shape| shape.llama_config("LlamaForCausalLM", json!({}))),
};

/// Builds the Llama decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let attention_bias = c.bool_or("attention_bias", false)?;
    let variant = LlamaVariant {
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: c.bool_or("mlp_bias", false)?,
        ..LlamaVariant::plain("llama")
    };
    llama_layout(&c, variant)
}
