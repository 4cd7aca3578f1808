//! Mistral (`MistralForCausalLM`): Llama's layout with a sliding window
//! (`sliding_window`, null for full attention) on every layer. llama.cpp
//! stores Mistral as `llama`, which loads as Llama.

use airllm_core::Result;
use serde_json::Value;

use crate::config::{layer_windows, Config};
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, LlamaVariant};

/// Each layer's window as Mistral and Mixtral set them: `sliding_window`
/// on every layer, unless `layer_types` says otherwise.
pub(crate) fn mistral_windows(c: &Config<'_>) -> Result<Vec<Option<usize>>> {
    layer_windows(c, c.usize("num_hidden_layers")?, |_| true)
}

/// Builds the Mistral decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    llama_layout(
        &c,
        LlamaVariant {
            windows: mistral_windows(&c)?,
            ..LlamaVariant::plain("mistral")
        },
    )
}
