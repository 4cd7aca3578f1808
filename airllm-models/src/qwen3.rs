//! Qwen3 (`Qwen3ForCausalLM`) and Qwen3-MoE (`Qwen3MoeForCausalLM`):
//! Qwen2's layout without the q/k/v biases, an RMSNorm on each query and key
//! head before the rotary, an explicit `head_dim`. Qwen3-MoE routes each
//! token to `num_experts_per_tok` of `num_experts` experts
//! (`mlp.experts.E.*`, `moe_intermediate_size` wide), renormalised when
//! `norm_topk_prob`; layers in `mlp_only_layers`, or off the
//! `decoder_sparse_step` stride, keep a dense MLP.

use airllm_core::family::ExpertNames;
use airllm_core::{Error, Result};
use serde_json::Value;

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, ExpertCounts, ExpertLayout, LlamaVariant};
use crate::qwen2::qwen_windows;

/// Qwen3-MoE's router and experts: `mlp.gate`, `mlp.experts.E.{gate_proj,
/// up_proj, down_proj}`.
pub(crate) const EXPERTS: ExpertNames = ExpertNames {
    block: "mlp",
    router: "gate",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

/// Qwen3's choices under `family`'s name, with sliding windows as Qwen2 sets them.
fn qwen3_variant(c: &Config<'_>, family: &'static str) -> Result<LlamaVariant> {
    let windows = qwen_windows(c)?;
    let attention_bias = c.bool_or("attention_bias", false)?;
    Ok(LlamaVariant {
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        head_norms: true,
        windows,
        ..LlamaVariant::plain(family)
    })
}

/// Builds the Qwen3 decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    llama_layout(&c, qwen3_variant(&c, "qwen3")?)
}

/// Builds the Qwen3-MoE decoder from config.json.
pub fn moe_from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let layers = c.usize("num_hidden_layers")?;
    let step = c.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(Error::config("decoder_sparse_step", "must be at least 1"));
    }
    let dense: Vec<u64> = match c.get("mlp_only_layers") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .and_then(|l| l.iter().map(Value::as_u64).collect())
            .ok_or_else(|| Error::config("mlp_only_layers", "expected a list of layer numbers"))?,
    };
    let sparse = (0..layers)
        .map(|i| !dense.contains(&(i as u64)) && (i + 1) % step == 0)
        .collect();
    llama_layout(
        &c,
        LlamaVariant {
            experts: Some(ExpertLayout {
                counts: ExpertCounts::from_config(&c, &["num_experts", "num_local_experts"])?,
                inner: c.usize("moe_intermediate_size")?,
                names: EXPERTS,
                sparse,
                renormalize: c.bool_or("norm_topk_prob", false)?,
            }),
            ..qwen3_variant(&c, "qwen3_moe")?
        },
    )
}
