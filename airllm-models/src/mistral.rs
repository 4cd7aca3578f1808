//! Mistral (`MistralForCausalLM`): Llama's layout with a sliding window
//! (`sliding_window`, null for full attention) on every layer.

use airllm_core::Result;
use serde_json::Value;

use crate::config::{layer_windows, Config};
use crate::decoder::Decoder;
use crate::llama::{llama_layout, LlamaVariant};

/// Builds the Mistral decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let layers = c.usize("num_hidden_layers")?;
    llama_layout(
        &c,
        LlamaVariant {
            windows: layer_windows(&c, layers, |_| true)?,
            ..LlamaVariant::plain("mistral")
        },
    )
}
