//! Named model shapes for synthetic benchmark models, and the config.json
//! that describes one in a family's own keys, so the families can be
//! compared on the same shape.

use airllm_core::{Error, Result};
use serde_json::{json, Value};

use crate::registry::{Synthetic, SUPPORTED};

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

/// Families a synthetic model of a dense shape can be written as
/// (`--family`): their `model_type`s.
pub fn synthetic_families() -> Vec<&'static str> {
    SUPPORTED
        .iter()
        .filter(|f| matches!(f.synthetic, Synthetic::Dense(_)))
        .map(|f| f.files.model_type)
        .collect()
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<ModelShape> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Positions every synthetic config allows.
pub(crate) const CONTEXT: usize = 2048;

impl ModelShape {
    /// A config.json for this shape (bf16, untied, 2048 positions) in the
    /// keys of `family` (one of [`synthetic_families`]); a shape with experts
    /// is always its [`ModelShape::moe_family`].
    pub fn config(&self, family: &str) -> Result<Value> {
        let written = SUPPORTED.iter().find_map(|f| match f.synthetic {
            Synthetic::Experts(config)
                if self.experts > 0 && f.files.model_type == self.moe_family =>
            {
                Some(config)
            }
            Synthetic::Dense(config) if self.experts == 0 && f.files.model_type == family => {
                Some(config)
            }
            _ => None,
        });
        match written {
            Some(config) => Ok(config(self)),
            None => Err(Error::Request(format!(
                "unknown family `{family}`; choose one of {}",
                synthetic_families().join(", ")
            ))),
        }
    }

    /// A config.json for this shape in Llama's keys, with `architecture`
    /// and the keys of `extra`.
    pub(crate) fn llama_config(&self, architecture: &str, extra: Value) -> Value {
        let mut config = json!({
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
            config["head_dim"] = json!(self.head_dim);
        }
        config["architectures"] = json!([architecture]);
        for (key, value) in extra.as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        config
    }
}
