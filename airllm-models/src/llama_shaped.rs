//! The decoder of every family with Llama's computation: each builds
//! through [`llama_layout`], from config.json in Llama's keys (a family
//! with keys of its own translates them first), with its own
//! [`LlamaVariant`] and tensor names ([`LlamaNames`], Llama's own by
//! default). GQA, a `head_dim` override, tied embeddings and `rope_scaling`
//! come from config.json; the names llama.cpp's converter gives Llama's
//! tensors in GGUF are [`GGUF_NAMES`].

use airllm_core::family::{ExpertNames, GgufArchitecture, GgufNames};
use airllm_core::{Error, ModelDims, Result};

use crate::blocks::attention::{Attention, HeadNorms, QkvProjection};
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
    /// The tensor names.
    pub names: &'static LlamaNames,
    /// Sliding window of each layer.
    pub windows: Vec<Option<usize>>,
    /// ALiBi instead of rotary positions (Baichuan 13B).
    pub alibi: bool,
    /// Longest context, when the family does not read it from
    /// `max_position_embeddings`.
    pub max_positions: Option<usize>,
    /// LM head rows normalised to unit length (Baichuan 2).
    pub normalized_head: bool,
    /// RMSNorm on each query and key head (Qwen3's `q_norm`, `k_norm`).
    pub head_norms: bool,
    /// A routed mixture of experts in place of the MLP (Mixtral, Qwen3-MoE).
    pub experts: Option<ExpertLayout>,
}

/// The tensor names of a Llama-shaped model, without the `.weight` /
/// `.bias` suffix; those inside a layer follow `{layers}.N.`.
pub(crate) struct LlamaNames {
    /// The token embedding.
    pub embed: &'static str,
    /// The prefix of the layers.
    pub layers: &'static str,
    /// The norm before attention.
    pub input_norm: &'static str,
    /// The q, k and v projections.
    pub qkv: QkvNames,
    /// The attention output projection.
    pub o: &'static str,
    /// The RMSNorms of each query and key head (read when the variant has
    /// them).
    pub head_norms: [&'static str; 2],
    /// The norm before the MLP.
    pub post_norm: &'static str,
    /// The MLP's projections.
    pub mlp: MlpNames,
    /// The norm after the last layer.
    pub final_norm: &'static str,
    /// The LM head (when not tied to the embedding).
    pub head: &'static str,
}

/// Where q, k and v come from.
pub(crate) enum QkvNames {
    /// Three matrices: q, k, v.
    Separate([&'static str; 3]),
    /// One matrix of all of q, then k, then v (Baichuan's `W_pack`).
    Stacked(&'static str),
    /// One matrix holding, for each KV head in turn, its group of query
    /// heads, its key head and its value head.
    PerKvHead(&'static str),
}

/// Where the MLP's gate, up and down projections come from.
pub(crate) enum MlpNames {
    /// Three matrices: gate, up, down.
    Separate([&'static str; 3]),
    /// Gate and up stacked in one matrix (ChatGLM's `dense_h_to_4h`), then
    /// down.
    Fused {
        /// The stacked gate and up projections.
        gate_up: &'static str,
        /// The down projection.
        down: &'static str,
    },
}

/// Llama's tensor names.
pub(crate) const LLAMA_NAMES: LlamaNames = LlamaNames {
    embed: "model.embed_tokens",
    layers: "model.layers",
    input_norm: "input_layernorm",
    qkv: QkvNames::Separate(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    o: "self_attn.o_proj",
    head_norms: ["self_attn.q_norm", "self_attn.k_norm"],
    post_norm: "post_attention_layernorm",
    mlp: MlpNames::Separate(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    final_norm: "model.norm",
    head: "lm_head",
};

/// How a family's mixture-of-experts layers are laid out.
pub(crate) struct ExpertLayout {
    /// Experts per layer and per token.
    pub counts: ExpertCounts,
    /// Width of each expert's MLP.
    pub inner: usize,
    /// The released checkpoints' tensor names of router and experts.
    pub names: ExpertNames,
    /// Per layer, whether it routes (the others have a dense MLP of
    /// `intermediate_size`).
    pub sparse: Vec<bool>,
    /// Whether the top-k routing weights are renormalised to sum to one.
    pub renormalize: bool,
}

/// How many experts a mixture-of-experts layer has and uses per token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExpertCounts {
    /// Experts per layer.
    pub count: usize,
    /// Experts each token is routed to.
    pub per_token: usize,
}

impl ExpertCounts {
    /// The expert count (the first of `count_keys` present) and
    /// `num_experts_per_tok`, which must lie between 1 and the count.
    pub fn from_config(c: &Config<'_>, count_keys: &[&str]) -> Result<Self> {
        let count = c.usize_of(count_keys)?;
        let per_token = c.usize("num_experts_per_tok")?;
        if per_token == 0 || per_token > count {
            return Err(Error::config(
                "num_experts_per_tok",
                format!(
                    "{per_token} is not between 1 and {} = {count}",
                    count_keys[0]
                ),
            ));
        }
        Ok(ExpertCounts { count, per_token })
    }
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
            names: &LLAMA_NAMES,
            windows: Vec::new(),
            alibi: false,
            max_positions: None,
            normalized_head: false,
            head_norms: false,
            experts: None,
        }
    }

    /// Llama's choices under `family`'s name with biases on q, k, v and o
    /// when `attention`, and on the MLP when `mlp`.
    pub fn biased(family: &'static str, attention: bool, mlp: bool) -> Self {
        LlamaVariant {
            qkv_bias: attention,
            o_bias: attention,
            mlp_bias: mlp,
            ..LlamaVariant::plain(family)
        }
    }
}

/// The GGUF names of the Llama-shaped tensors outside the experts.
pub(crate) const GGUF_NAMES: GgufNames = GgufNames {
    global: &[
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
    ],
    layer: &[
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
    ],
    experts: None,
};

/// What the config implied by a GGUF file says when llama.cpp's converter
/// permuted the rows of q and k (it does for `llama` files): the rotary
/// embedding pairs neighbouring dims.
pub(crate) const PERMUTED_QK: &[(&str, bool)] = &[("rope_interleave", true)];

/// A GGUF architecture `name` whose tensors carry Llama-shaped names, with
/// `experts` named so when its layers route, and the config keys `implied`
/// by how the converter stored them.
pub(crate) const fn gguf(
    name: &'static str,
    implied: &'static [(&'static str, bool)],
    experts: Option<ExpertNames>,
) -> GgufArchitecture {
    GgufArchitecture {
        name,
        experts: experts.is_some(),
        implied,
        names: GgufNames {
            experts,
            ..GGUF_NAMES
        },
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

/// The leading dims of each head the rotary turns: `partial_rotary_factor`
/// of them (all by default).
fn rotary_dims(c: &Config<'_>, head_dim: usize) -> Result<usize> {
    match c.opt_f64("partial_rotary_factor")? {
        None => Ok(head_dim),
        Some(factor) if (0.0..=1.0).contains(&factor) => Ok((head_dim as f64 * factor) as usize),
        Some(factor) => Err(Error::config(
            "partial_rotary_factor",
            format!("{factor} is not between 0 and 1"),
        )),
    }
}

/// A decoder with Llama's config keys and tensor names, as `variant` changes them.
pub(crate) fn llama_layout(c: &Config<'_>, variant: LlamaVariant) -> Result<Decoder> {
    let hidden = c.usize("hidden_size")?;
    let (heads, kv_heads) = heads(c)?;
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / heads);
    let layers = c.usize("num_hidden_layers")?;
    let tied = c.bool_or("tie_word_embeddings", false)?;
    let rope = Rope::from_config(c, rotary_dims(c, head_dim)?)?;
    let intermediate = c.usize("intermediate_size")?;
    let eps = c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
    let dims = ModelDims {
        layers,
        hidden,
        intermediate: intermediate.max(variant.experts.as_ref().map_or(0, |e| e.inner)),
        heads,
        kv_heads,
        head_dim,
        vocab: c.usize("vocab_size")?,
        max_positions: variant.max_positions.unwrap_or(rope.context_limit()),
        experts_per_token: variant.experts.as_ref().map_or(0, |e| e.counts.per_token),
    };
    let layer_names = (0..layers)
        .map(|i| layer(&variant, &dims, intermediate, eps, i))
        .collect();
    let names = variant.names;
    let embed = format!("{}.weight", names.embed);
    Ok(Decoder::new(DecoderConfig {
        family: variant.family,
        dims,
        eps,
        positions: match variant.alibi {
            true => PositionEncoding::Alibi,
            false => PositionEncoding::Rotary(rope),
        },
        lm_head: if tied {
            embed.clone()
        } else {
            format!("{}.weight", names.head)
        },
        embed,
        final_norm: format!("{}.weight", names.final_norm),
        normalized_head: variant.normalized_head,
        layers: layer_names,
    }))
}

/// The tensors of layer `i`; a dense MLP is `intermediate` wide.
fn layer(
    variant: &LlamaVariant,
    dims: &ModelDims,
    intermediate: usize,
    eps: f64,
    i: usize,
) -> LayerNames {
    let names = variant.names;
    let p = format!("{}.{i}", names.layers);
    let named = |name: &str, bias: bool| LinearNames::new(&format!("{p}.{name}"), bias);
    let qkv = match names.qkv {
        QkvNames::Separate([q, k, v]) => QkvProjection::Separate {
            q: named(q, variant.qkv_bias),
            k: named(k, variant.qkv_bias),
            v: named(v, variant.qkv_bias),
        },
        QkvNames::Stacked(qkv) => QkvProjection::Stacked(named(qkv, variant.qkv_bias)),
        QkvNames::PerKvHead(qkv) => QkvProjection::PerHead(named(qkv, variant.qkv_bias)),
    };
    let [q_norm, k_norm] = names.head_norms;
    let attention = Attention {
        heads: dims.heads,
        kv_heads: dims.kv_heads,
        head_dim: dims.head_dim,
        qkv,
        o: named(names.o, variant.o_bias),
        window: variant.windows.get(i).copied().flatten(),
        head_norms: variant.head_norms.then(|| HeadNorms {
            q: format!("{p}.{q_norm}.weight"),
            k: format!("{p}.{k_norm}.weight"),
            eps,
        }),
    };
    let ffn = match &variant.experts {
        Some(experts) if experts.sparse.get(i).copied().unwrap_or(true) => {
            FeedForward::Sparse(routed_experts(&p, experts))
        }
        _ => {
            let linear = |name: &str| named(name, variant.mlp_bias);
            FeedForward::Dense(match names.mlp {
                MlpNames::Separate([gate, up, down]) => {
                    gated_mlp(intermediate, linear(gate), linear(up), linear(down))
                }
                MlpNames::Fused { gate_up, down } => GatedMlp {
                    inner: intermediate,
                    gate_up: GateUp::Fused(linear(gate_up)),
                    down: linear(down),
                },
            })
        }
    };
    LayerNames {
        input_norm: format!("{p}.{}.weight", names.input_norm),
        post_norm: format!("{p}.{}.weight", names.post_norm),
        attention,
        ffn,
    }
}

fn gated_mlp(inner: usize, gate: LinearNames, up: LinearNames, down: LinearNames) -> GatedMlp {
    GatedMlp {
        inner,
        gate_up: GateUp::Separate { gate, up },
        down,
    }
}

/// The router and experts under layer prefix `p`, as the released
/// checkpoints of the family name them.
fn routed_experts(p: &str, layout: &ExpertLayout) -> SparseMoe {
    let linear = |name: String| LinearNames::new(&name, false);
    let ExpertNames {
        block,
        router,
        gate,
        up,
        down,
    } = layout.names;
    SparseMoe {
        router: linear(format!("{p}.{block}.{router}")),
        experts: (0..layout.counts.count)
            .map(|e| {
                let w = |n: &str| linear(format!("{p}.{block}.experts.{e}.{n}"));
                gated_mlp(layout.inner, w(gate), w(up), w(down))
            })
            .collect(),
        per_token: layout.counts.per_token,
        renormalize: layout.renormalize,
    }
}
