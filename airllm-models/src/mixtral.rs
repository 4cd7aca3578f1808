//! Mixtral (`MixtralForCausalLM`): Mistral with a routed mixture of gated
//! MLP experts in every layer (`num_local_experts`, `num_experts_per_tok`).
//! A streamed layer reads its attention and router, then only the experts
//! its tokens are routed to.

use airllm_core::family::{ExpertNames, FamilyFiles};
use airllm_core::Result;
use serde_json::{json, Value};

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{
    gguf, llama_layout, ExpertCounts, ExpertLayout, LlamaVariant, PERMUTED_QK,
};
use crate::mistral::mistral_windows;
use crate::registry::{Family, Synthetic};

/// Mixtral's router and experts: `block_sparse_moe.gate`,
/// `block_sparse_moe.experts.E.{w1, w3, w2}`.
const EXPERTS: ExpertNames = ExpertNames {
    block: "block_sparse_moe",
    router: "gate",
    gate: "w1",
    up: "w3",
    down: "w2",
};

/// Mixtral's descriptor; llama.cpp stores Mixtral as `llama` with experts.
pub static FAMILY: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("llama", PERMUTED_QK, Some(EXPERTS))],
        ..FamilyFiles::named(&["MixtralForCausalLM"], "mixtral")
    },
    build: from_config,
    synthetic: Synthetic::Experts(|shape| {
        let extra = json!({"num_local_experts": shape.experts,
            "num_experts_per_tok": shape.experts_per_token});
        shape.llama_config("MixtralForCausalLM", extra)
    }),
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
