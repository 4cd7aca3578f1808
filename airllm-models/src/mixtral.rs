//! Mixtral (`MixtralForCausalLM`): Mistral with a routed mixture of gated
//! MLP experts in every layer (`num_local_experts`, `num_experts_per_tok`).
//! A streamed layer reads its attention and router, then only the experts
//! its tokens are routed to.

use airllm_core::{Error, Result};
use serde_json::Value;

use crate::config::{layer_windows, Config};
use crate::decoder::Decoder;
use crate::llama::{llama_layout, ExpertCounts, LlamaVariant};

/// Builds the Mixtral decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let layers = c.usize("num_hidden_layers")?;
    let count = c.usize("num_local_experts")?;
    let per_token = c.usize("num_experts_per_tok")?;
    if per_token == 0 || per_token > count {
        return Err(Error::config(
            "num_experts_per_tok",
            format!("{per_token} is not between 1 and num_local_experts = {count}"),
        ));
    }
    llama_layout(
        &c,
        LlamaVariant {
            windows: layer_windows(&c, layers, |_| true)?,
            experts: Some(ExpertCounts { count, per_token }),
            ..LlamaVariant::plain("mixtral")
        },
    )
}
