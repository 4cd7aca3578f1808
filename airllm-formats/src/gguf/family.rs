//! What a GGUF architecture means in Hugging Face terms: the `config.json`
//! its metadata implies, and the GGUF name of each tensor the adapter asks
//! for by its Hugging Face name.

use serde_json::{json, Map, Value};

use super::file::GgufFile;
use crate::{FormatError, Result};

/// A GGUF architecture this crate maps.
#[derive(Debug)]
pub struct GgufFamily {
    /// `general.architecture` in the file.
    pub gguf_name: &'static str,
    /// `architectures[0]` of the implied config.
    pub architecture: &'static str,
    /// `model_type` of the implied config.
    pub model_type: &'static str,
    /// Whether llama.cpp's converter permuted the rows of q and k so that
    /// each head's rotary pairs are neighbours (dims 2i and 2i + 1). The rows
    /// are read as stored and the implied config says so
    /// (`rope_interleave`), so the rotary embedding pairs them that way:
    /// attention scores are the same, and a streamed layer's q and k are not
    /// copied back into Hugging Face order on every read.
    pub permuted_qk: bool,
}

const FAMILIES: &[GgufFamily] = &[
    GgufFamily {
        gguf_name: "llama",
        architecture: "LlamaForCausalLM",
        model_type: "llama",
        permuted_qk: true,
    },
    GgufFamily {
        gguf_name: "qwen2",
        architecture: "Qwen2ForCausalLM",
        model_type: "qwen2",
        permuted_qk: false,
    },
    GgufFamily {
        gguf_name: "qwen3",
        architecture: "Qwen3ForCausalLM",
        model_type: "qwen3",
        permuted_qk: false,
    },
    GgufFamily {
        gguf_name: "qwen3moe",
        architecture: "Qwen3MoeForCausalLM",
        model_type: "qwen3_moe",
        permuted_qk: false,
    },
];

/// Hugging Face names outside the layers and their GGUF names.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
];

/// Hugging Face names inside `model.layers.N.` and their GGUF names inside `blk.N.`.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("block_sparse_moe.gate", "ffn_gate_inp"),
    ("mlp.gate", "ffn_gate_inp"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
];

/// Expert matrices inside a layer (`block_sparse_moe.experts.E.w1` for
/// Mixtral, `mlp.experts.E.gate_proj` for Qwen3-MoE) and their GGUF stems:
/// `blk.N.ffn_gate.E` (older converters) or slice E of the 3-D
/// `blk.N.ffn_gate_exps`.
const EXPERT_NAMES: &[(&str, &str, &str)] = &[
    ("block_sparse_moe.experts.", "w1", "ffn_gate"),
    ("block_sparse_moe.experts.", "w2", "ffn_down"),
    ("block_sparse_moe.experts.", "w3", "ffn_up"),
    ("mlp.experts.", "gate_proj", "ffn_gate"),
    ("mlp.experts.", "down_proj", "ffn_down"),
    ("mlp.experts.", "up_proj", "ffn_up"),
];

/// Where a tensor an adapter asks for lies in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Index into the file's tensors.
    pub tensor: usize,
    /// For a slice of a 3-D expert stack, which expert.
    pub expert: Option<usize>,
}

impl GgufFamily {
    /// The family of `file`, or an error naming the supported ones.
    pub fn of(file: &GgufFile) -> Result<&'static GgufFamily> {
        let name = file.architecture()?;
        FAMILIES
            .iter()
            .find(|f| f.gguf_name == name)
            .ok_or_else(|| FormatError::UnsupportedGguf {
                path: file.path.clone(),
                detail: format!(
                    "GGUF architecture `{name}` is not supported; supported: {}",
                    FAMILIES
                        .iter()
                        .map(|f| f.gguf_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// Where in `file` the tensor the adapter calls `hf_name` lies.
    pub fn locate(&self, hf_name: &str, file: &GgufFile) -> Option<Located> {
        if let Some(tensor) = self.gguf_name(hf_name).and_then(|n| file.position(&n)) {
            return Some(Located {
                tensor,
                expert: None,
            });
        }
        let (stem, suffix) = hf_name.rsplit_once('.')?;
        let rest = stem.strip_prefix("model.layers.")?;
        let (layer, inner) = rest.split_once('.')?;
        let (_, _, gguf, expert) = EXPERT_NAMES.iter().find_map(|&(block, hf, gguf)| {
            let (expert, matrix) = inner.strip_prefix(block)?.split_once('.')?;
            (matrix == hf).then_some((block, hf, gguf, expert))
        })?;
        if let Some(tensor) = file.position(&format!("blk.{layer}.{gguf}.{expert}.{suffix}")) {
            return Some(Located {
                tensor,
                expert: None,
            });
        }
        let tensor = file.position(&format!("blk.{layer}.{gguf}_exps.{suffix}"))?;
        Some(Located {
            tensor,
            expert: Some(expert.parse().ok()?),
        })
    }

    /// The GGUF name of the tensor the adapter calls `hf_name` (outside the
    /// expert stacks).
    pub fn gguf_name(&self, hf_name: &str) -> Option<String> {
        let (stem, suffix) = hf_name.rsplit_once('.')?;
        if let Some(rest) = stem.strip_prefix("model.layers.") {
            let (layer, inner) = rest.split_once('.')?;
            let (_, gguf) = LAYER_NAMES.iter().find(|(hf, _)| *hf == inner)?;
            return Some(format!("blk.{layer}.{gguf}.{suffix}"));
        }
        let (_, gguf) = GLOBAL_NAMES.iter().find(|(hf, _)| *hf == stem)?;
        Some(format!("{gguf}.{suffix}"))
    }

    /// The `config.json` the file's metadata implies.
    pub fn config(&self, file: &GgufFile) -> Result<Value> {
        let arch = self.gguf_name;
        let meta = |key: &str| file.get(&format!("{arch}.{key}"));
        let number = |key: &str| meta(key).and_then(|v| v.as_f64());
        let required = |key: &str| {
            meta(key)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| FormatError::BadGguf {
                    path: file.path.clone(),
                    detail: format!("metadata `{arch}.{key}` is missing or not an integer"),
                })
        };
        let hidden = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let vocab = meta("vocab_size")
            .and_then(|v| v.as_u64())
            .or_else(|| {
                file.get("tokenizer.ggml.tokens")
                    .and_then(|t| t.as_array())
                    .map(|t| t.len() as u64)
            })
            .or_else(|| file.tensor("token_embd.weight").map(|t| t.shape[0] as u64));
        let mut config = Map::new();
        let experts = meta("expert_count").and_then(|v| v.as_u64()).unwrap_or(0);
        if experts > 0 && self.gguf_name == "llama" {
            // llama.cpp stores Mixtral as `llama` with experts.
            config.insert("architectures".into(), json!(["MixtralForCausalLM"]));
            config.insert("model_type".into(), json!("mixtral"));
        } else {
            config.insert("architectures".into(), json!([self.architecture]));
            config.insert("model_type".into(), json!(self.model_type));
        }
        if experts > 0 {
            config.insert("num_local_experts".into(), json!(experts));
            config.insert(
                "num_experts_per_tok".into(),
                json!(required("expert_used_count")?),
            );
            if let Some(width) = meta("expert_feed_forward_length").and_then(|v| v.as_u64()) {
                config.insert("moe_intermediate_size".into(), json!(width));
            }
            // llama.cpp renormalises Qwen3-MoE's top-k weights.
            config.insert("norm_topk_prob".into(), json!(true));
        }
        if self.permuted_qk {
            config.insert("rope_interleave".into(), json!(true));
        }
        if let Some(window) = meta("attention.sliding_window").and_then(|v| v.as_u64()) {
            config.insert("sliding_window".into(), json!(window));
        }
        config.insert("hidden_size".into(), json!(hidden));
        config.insert(
            "intermediate_size".into(),
            json!(required("feed_forward_length")?),
        );
        config.insert("num_hidden_layers".into(), json!(required("block_count")?));
        config.insert("num_attention_heads".into(), json!(heads));
        config.insert(
            "num_key_value_heads".into(),
            json!(meta("attention.head_count_kv")
                .and_then(|v| v.as_u64())
                .unwrap_or(heads)),
        );
        if let Some(head_dim) = meta("attention.key_length").and_then(|v| v.as_u64()) {
            config.insert("head_dim".into(), json!(head_dim));
        }
        config.insert(
            "rms_norm_eps".into(),
            json!(number("attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
        );
        config.insert(
            "rope_theta".into(),
            json!(number("rope.freq_base").unwrap_or(10000.0)),
        );
        if let Some(kind) = meta("rope.scaling.type").and_then(|v| v.as_str()) {
            if kind != "none" {
                let mut scaling = json!({"rope_type": kind, "factor": number("rope.scaling.factor").unwrap_or(1.0)});
                for (hf, gguf) in [
                    (
                        "original_max_position_embeddings",
                        "rope.scaling.original_context_length",
                    ),
                    ("beta_fast", "rope.scaling.yarn_beta_fast"),
                    ("beta_slow", "rope.scaling.yarn_beta_slow"),
                ] {
                    if let Some(value) = number(gguf) {
                        scaling[hf] = json!(value);
                    }
                }
                config.insert("rope_scaling".into(), scaling);
            }
        }
        if let Some(context) = meta("context_length").and_then(|v| v.as_u64()) {
            config.insert("max_position_embeddings".into(), json!(context));
        }
        if let Some(vocab) = vocab {
            config.insert("vocab_size".into(), json!(vocab));
        }
        config.insert(
            "tie_word_embeddings".into(),
            json!(file.tensor("output.weight").is_none()),
        );
        for (hf, gguf) in [
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
        ] {
            if let Some(id) = file
                .get(&format!("tokenizer.ggml.{gguf}"))
                .and_then(|v| v.as_u64())
            {
                config.insert(hf.into(), json!(id));
            }
        }
        Ok(Value::Object(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_of_a_layer() {
        let llama = &FAMILIES[0];
        assert_eq!(
            llama.gguf_name("model.layers.12.self_attn.o_proj.weight"),
            Some("blk.12.attn_output.weight".into())
        );
        assert_eq!(
            llama.gguf_name("model.embed_tokens.weight"),
            Some("token_embd.weight".into())
        );
        assert_eq!(llama.gguf_name("model.layers.0.unknown.weight"), None);
    }

    #[test]
    fn qwen3_moe_names_map_to_norms_router_and_expert_stems() {
        let qwen3moe = FAMILIES.iter().find(|f| f.gguf_name == "qwen3moe").unwrap();
        assert_eq!(
            qwen3moe.gguf_name("model.layers.3.self_attn.k_norm.weight"),
            Some("blk.3.attn_k_norm.weight".into())
        );
        assert_eq!(
            qwen3moe.gguf_name("model.layers.3.mlp.gate.weight"),
            Some("blk.3.ffn_gate_inp.weight".into())
        );
    }
}
