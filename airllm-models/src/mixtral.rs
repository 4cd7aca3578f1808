//! Mixtral (`MixtralForCausalLM`): Mistral with a routed mixture of gated
//! MLP experts in every layer (`num_local_experts`, `num_experts_per_tok`).
//! A streamed layer reads its attention and router, then only the experts
//! its tokens are routed to.

use airllm_core::family::ExpertNames;
use airllm_core::Result;
use serde_json::Value;

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, ExpertCounts, ExpertLayout, LlamaVariant};
use crate::mistral::mistral_windows;

/// Mixtral's router and experts: `block_sparse_moe.gate`,
/// `block_sparse_moe.experts.E.{w1, w3, w2}`.
pub(crate) const EXPERTS: ExpertNames = ExpertNames {
    block: "block_sparse_moe",
    router: "gate",
    gate: "w1",
    up: "w3",
    down: "w2",
};

/// Builds the Mixtral decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let layers = c.usize("num_hidden_layers")?;
    llama_layout(
        &c,
        LlamaVariant {
            windows: mistral_windows(&c)?,
            experts: Some(ExpertLayout {
                counts: ExpertCounts::from_config(&c, &["num_local_experts"])?,
                inner: c.usize("intermediate_size")?,
                names: EXPERTS,
                sparse: vec![true; layers],
                renormalize: true,
            }),
            ..LlamaVariant::plain("mixtral")
        },
    )
}
