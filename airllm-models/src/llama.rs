//! Llama (1, 2, 3, 3.1; `LlamaForCausalLM`): config keys and tensor names
//! over the shared decoder. GQA, `head_dim` override, tied embeddings,
//! attention/MLP biases and `rope_scaling` come from config.json.
//!
//! The families that keep Llama's layout and names (Qwen2, Mistral,
//! Baichuan) build through [`llama_layout`] with their own [`LlamaVariant`].

use airllm_core::{Error, ModelDims, Result};
use serde_json::Value;

use crate::blocks::attention::{Attention, QkvProjection};
use crate::blocks::linear::LinearNames;
use crate::blocks::mlp::{GateUp, GatedMlp};
use crate::blocks::moe::SparseMoe;
use crate::blocks::rope::Rope;
use crate::config::Config;
use crate::decoder::{Decoder, DecoderConfig, FeedForward, LayerNames, PositionEncoding};

/// What a family with Llama's layout changes.
pub(crate) struct LlamaVariant {
    /// Family name.
    pub family: &'static str,
    /// Bias on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// q, k and v stacked in one `self_attn.W_pack` matrix (Baichuan).
    pub packed_qkv: bool,
    /// Sliding window of each layer.
    pub windows: Vec<Option<usize>>,
    /// ALiBi instead of rotary positions (Baichuan 13B).
    pub alibi: bool,
    /// Longest context, when the family does not read it from
    /// `max_position_embeddings`.
    pub max_positions: Option<usize>,
    /// LM head rows normalised to unit length (Baichuan 2).
    pub normalized_head: bool,
    /// A routed mixture of experts in place of the MLP (Mixtral).
    pub experts: Option<ExpertCounts>,
}

/// How many experts a mixture-of-experts layer has and uses per token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExpertCounts {
    /// Experts per layer.
    pub count: usize,
    /// Experts each token is routed to.
    pub per_token: usize,
}

impl LlamaVariant {
    /// Llama's own choices under `family`'s name: no biases, separate q/k/v,
    /// full attention, rotary positions.
    pub fn plain(family: &'static str) -> Self {
        LlamaVariant {
            family,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            packed_qkv: false,
            windows: Vec::new(),
            alibi: false,
            max_positions: None,
            normalized_head: false,
            experts: None,
        }
    }

    /// Llama with the biases config.json asks for.
    fn llama(c: &Config<'_>) -> Result<Self> {
        let attention_bias = c.bool_or("attention_bias", false)?;
        Ok(LlamaVariant {
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: c.bool_or("mlp_bias", false)?,
            ..LlamaVariant::plain("llama")
        })
    }
}

/// Attention heads as config.json gives them: `(heads, kv_heads)`.
pub(crate) fn heads(c: &Config<'_>) -> Result<(usize, usize)> {
    let heads = c.usize("num_attention_heads")?;
    let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::config(
            "num_key_value_heads",
            format!("{kv_heads} does not divide num_attention_heads = {heads}"),
        ));
    }
    Ok((heads, kv_heads))
}

/// Builds the Llama decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    llama_layout(&c, LlamaVariant::llama(&c)?)
}

/// A decoder with Llama's config keys and tensor names, as `variant` changes them.
pub(crate) fn llama_layout(c: &Config<'_>, variant: LlamaVariant) -> Result<Decoder> {
    let hidden = c.usize("hidden_size")?;
    let (heads, kv_heads) = heads(c)?;
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / heads);
    let layers = c.usize("num_hidden_layers")?;
    let tied = c.bool_or("tie_word_embeddings", false)?;
    let rope = Rope::from_config(c, head_dim)?;
    let intermediate = c.usize("intermediate_size")?;
    let dims = ModelDims {
        layers,
        hidden,
        intermediate,
        heads,
        kv_heads,
        head_dim,
        vocab: c.usize("vocab_size")?,
        max_positions: variant.max_positions.unwrap_or(rope.context_limit()),
        experts_per_token: variant.experts.map_or(0, |e| e.per_token),
    };
    let layer_names = (0..layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            let qkv = if variant.packed_qkv {
                QkvProjection::Stacked(LinearNames::new(
                    &format!("{p}.self_attn.W_pack"),
                    variant.qkv_bias,
                ))
            } else {
                let projection = |name: &str| {
                    LinearNames::new(&format!("{p}.self_attn.{name}"), variant.qkv_bias)
                };
                QkvProjection::Separate {
                    q: projection("q_proj"),
                    k: projection("k_proj"),
                    v: projection("v_proj"),
                }
            };
            let mlp = |name: &str| LinearNames::new(&format!("{p}.mlp.{name}"), variant.mlp_bias);
            let attention = Attention {
                heads,
                kv_heads,
                head_dim,
                qkv,
                o: LinearNames::new(&format!("{p}.self_attn.o_proj"), variant.o_bias),
                window: variant.windows.get(i).copied().flatten(),
            };
            let ffn = match variant.experts {
                None => FeedForward::Dense(gated_mlp(
                    intermediate,
                    mlp("gate_proj"),
                    mlp("up_proj"),
                    mlp("down_proj"),
                )),
                Some(counts) => FeedForward::Sparse(mixtral_experts(&p, intermediate, counts)),
            };
            LayerNames::with_layernorm_names(&p, attention, ffn)
        })
        .collect();
    let embed = "model.embed_tokens.weight".to_string();
    Ok(Decoder::new(DecoderConfig {
        family: variant.family,
        dims,
        eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        positions: match variant.alibi {
            true => PositionEncoding::Alibi,
            false => PositionEncoding::Rotary(rope),
        },
        lm_head: if tied {
            embed.clone()
        } else {
            "lm_head.weight".into()
        },
        embed,
        final_norm: "model.norm.weight".into(),
        normalized_head: variant.normalized_head,
        layers: layer_names,
    }))
}

fn gated_mlp(inner: usize, gate: LinearNames, up: LinearNames, down: LinearNames) -> GatedMlp {
    GatedMlp {
        inner,
        gate_up: GateUp::Separate { gate, up },
        down,
    }
}

/// Mixtral's router and experts under layer prefix `p`, as released
/// checkpoints name them: `block_sparse_moe.gate` and
/// `block_sparse_moe.experts.E.{w1, w3, w2}` (gate, up, down).
fn mixtral_experts(p: &str, inner: usize, counts: ExpertCounts) -> SparseMoe {
    let linear = |name: String| LinearNames::new(&name, false);
    SparseMoe {
        router: linear(format!("{p}.block_sparse_moe.gate")),
        experts: (0..counts.count)
            .map(|e| {
                let w = |n: &str| linear(format!("{p}.block_sparse_moe.experts.{e}.{n}"));
                gated_mlp(inner, w("w1"), w("w3"), w("w2"))
            })
            .collect(),
        per_token: counts.per_token,
    }
}
