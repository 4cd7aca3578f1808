//! Named model shapes for synthetic benchmark models, and the config.json
//! that describes one in a family's own keys, so the families can be
//! compared on the same shape.

use airllm_core::{Error, Result};
use serde_json::{json, Value};

/// A decoder shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size (per expert for a mixture of experts).
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Routed experts per layer (0: a dense MLP).
    pub experts: usize,
    /// Experts each token is routed to.
    pub experts_per_token: usize,
    /// Dims per head (0: hidden / heads).
    pub head_dim: usize,
    /// The family a shape with experts is written as (`mixtral`,
    /// `qwen3_moe`).
    pub moe_family: &'static str,
}

const DENSE: ModelShape = ModelShape {
    layers: 0,
    hidden: 0,
    intermediate: 0,
    heads: 0,
    kv_heads: 0,
    vocab: 0,
    experts: 0,
    experts_per_token: 0,
    head_dim: 0,
    moe_family: "mixtral",
};

/// The named presets.
pub const PRESETS: &[(&str, ModelShape)] = &[
    (
        "smollm2-135m",
        ModelShape {
            layers: 30,
            hidden: 576,
            intermediate: 1536,
            heads: 9,
            kv_heads: 3,
            vocab: 49152,
            ..DENSE
        },
    ),
    (
        "llama-13b",
        ModelShape {
            layers: 40,
            hidden: 5120,
            intermediate: 13824,
            heads: 40,
            kv_heads: 40,
            vocab: 32000,
            ..DENSE
        },
    ),
    (
        "llama-70b",
        ModelShape {
            layers: 80,
            hidden: 8192,
            intermediate: 28672,
            heads: 64,
            kv_heads: 8,
            vocab: 128256,
            ..DENSE
        },
    ),
    (
        "mixtral-8x7b",
        ModelShape {
            layers: 32,
            hidden: 4096,
            intermediate: 14336,
            heads: 32,
            kv_heads: 8,
            vocab: 32000,
            experts: 8,
            experts_per_token: 2,
            ..DENSE
        },
    ),
    (
        "qwen3-30b-a3b",
        ModelShape {
            layers: 48,
            hidden: 2048,
            intermediate: 768,
            heads: 32,
            kv_heads: 4,
            vocab: 151936,
            experts: 128,
            experts_per_token: 8,
            head_dim: 128,
            moe_family: "qwen3_moe",
        },
    ),
];

/// Families a synthetic model can be written as (`--family`).
pub const SYNTHETIC_FAMILIES: &[&str] =
    &["llama", "qwen2", "qwen3", "mistral", "chatglm", "baichuan"];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<ModelShape> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Positions every synthetic config allows.
const CONTEXT: usize = 2048;

impl ModelShape {
    /// A config.json for this shape (bf16, untied, 2048 positions) in the
    /// keys of `family` (one of [`SYNTHETIC_FAMILIES`]); a shape with experts
    /// is always its [`ModelShape::moe_family`].
    pub fn config(&self, family: &str) -> Result<Value> {
        let mut llama_keys = json!({
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": CONTEXT,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
        });
        if self.head_dim > 0 {
            llama_keys["head_dim"] = json!(self.head_dim);
        }
        let (architecture, extra) = match (family, self.experts) {
            (_, experts) if experts > 0 && self.moe_family == "qwen3_moe" => (
                "Qwen3MoeForCausalLM",
                json!({"num_experts": experts, "num_experts_per_tok": self.experts_per_token,
                       "moe_intermediate_size": self.intermediate, "norm_topk_prob": true}),
            ),
            (_, experts) if experts > 0 => (
                "MixtralForCausalLM",
                json!({"num_local_experts": experts, "num_experts_per_tok": self.experts_per_token}),
            ),
            ("llama", _) => ("LlamaForCausalLM", json!({})),
            ("qwen2", _) => ("Qwen2ForCausalLM", json!({"use_sliding_window": false})),
            ("qwen3", _) => ("Qwen3ForCausalLM", json!({"use_sliding_window": false})),
            ("mistral", _) => ("MistralForCausalLM", json!({"sliding_window": CONTEXT})),
            ("baichuan", _) => (
                "BaichuanForCausalLM",
                json!({"position_embedding": "rope", "model_max_length": CONTEXT}),
            ),
            ("chatglm", _) => return Ok(self.chatglm_config()),
            (other, _) => {
                return Err(Error::Request(format!(
                    "unknown family `{other}`; choose one of {}",
                    SYNTHETIC_FAMILIES.join(", ")
                )))
            }
        };
        let mut config = llama_keys;
        config["architectures"] = json!([architecture]);
        for (key, value) in extra.as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        Ok(config)
    }

    /// ChatGLM's own keys for this shape.
    fn chatglm_config(&self) -> Value {
        json!({
            "architectures": ["ChatGLMModel"],
            "num_layers": self.layers,
            "hidden_size": self.hidden,
            "num_attention_heads": self.heads,
            "kv_channels": self.hidden / self.heads,
            "multi_query_attention": true,
            "multi_query_group_num": self.kv_heads,
            "ffn_hidden_size": self.intermediate,
            "padded_vocab_size": self.vocab,
            "seq_length": CONTEXT,
            "layernorm_epsilon": 1e-5,
            "add_qkv_bias": true,
            "add_bias_linear": false,
            "torch_dtype": "bfloat16",
        })
    }
}
