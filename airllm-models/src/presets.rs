//! Named Llama shapes for synthetic benchmark models, and the config.json
//! that describes one.

use serde_json::{json, Value};

/// A Llama shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaShape {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

/// The named presets.
pub const PRESETS: &[(&str, LlamaShape)] = &[
    (
        "smollm2-135m",
        LlamaShape {
            layers: 30,
            hidden: 576,
            intermediate: 1536,
            heads: 9,
            kv_heads: 3,
            vocab: 49152,
        },
    ),
    (
        "llama-13b",
        LlamaShape {
            layers: 40,
            hidden: 5120,
            intermediate: 13824,
            heads: 40,
            kv_heads: 40,
            vocab: 32000,
        },
    ),
    (
        "llama-70b",
        LlamaShape {
            layers: 80,
            hidden: 8192,
            intermediate: 28672,
            heads: 64,
            kv_heads: 8,
            vocab: 128256,
        },
    ),
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<LlamaShape> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

impl LlamaShape {
    /// A config.json for this shape (bf16, untied, 2048 positions).
    pub fn config(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
        })
    }
}
