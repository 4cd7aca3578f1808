//! InternLM2 / InternLM2.5 (`InternLM2ForCausalLM`, remote code): Llama's
//! computation and config keys under names of its own, with q, k and v fused
//! in `attention.wqkv` per KV head (each KV head's group of query heads,
//! then its key head, then its value head) and biased on `wqkv` and `wo`
//! when `bias`. llama.cpp's converter splits `wqkv` into `attn_q`, `attn_k`
//! and `attn_v` (q and k rows permuted); the config it implies says
//! `split_qkv`, and the decoder then asks for `attention.wq`, `wk` and `wv`.

use airllm_core::Result;
use serde_json::Value;

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{
    llama_layout, LlamaNames, LlamaVariant, MlpNames, QkvNames, LLAMA_NAMES,
};

/// InternLM2's tensor names (its layers and final norm are named as
/// Llama's).
const NAMES: LlamaNames = LlamaNames {
    embed: "model.tok_embeddings",
    input_norm: "attention_norm",
    qkv: QkvNames::PerKvHead("attention.wqkv"),
    o: "attention.wo",
    post_norm: "ffn_norm",
    mlp: MlpNames::Separate(["feed_forward.w1", "feed_forward.w3", "feed_forward.w2"]),
    head: "output",
    ..LLAMA_NAMES
};

/// The names of a file whose `wqkv` llama.cpp's converter split.
const SPLIT_NAMES: LlamaNames = LlamaNames {
    qkv: QkvNames::Separate(["attention.wq", "attention.wk", "attention.wv"]),
    ..NAMES
};

/// Builds the InternLM2 decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let variant = LlamaVariant {
        names: match c.bool_or("split_qkv", false)? {
            true => &SPLIT_NAMES,
            false => &NAMES,
        },
        ..LlamaVariant::biased("internlm2", c.bool_or("bias", false)?, false)
    };
    llama_layout(&c, variant)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> Value {
        json!({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
            "max_position_embeddings": 256, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    }

    fn layer_tensors(config: &Value) -> Vec<(String, Vec<usize>)> {
        let decoder = from_config(config).unwrap();
        let specs = &decoder.unit_specs()[1].tensors;
        specs
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    #[test]
    fn wqkv_holds_every_group_and_its_biases_follow_bias() {
        let tensors = layer_tensors(&config());
        let wqkv = (
            "model.layers.0.attention.wqkv.weight".into(),
            vec![(4 + 2 * 2) * 16, 64],
        );
        assert!(tensors.contains(&wqkv), "{tensors:?}");
        assert!(!tensors.iter().any(|(n, _)| n.ends_with(".bias")));
        let mut biased = config();
        biased["bias"] = true.into();
        let biases: Vec<_> = layer_tensors(&biased)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".bias"))
            .collect();
        assert_eq!(biases.len(), 2, "{biases:?}");
        assert_eq!(
            from_config(&config()).unwrap().model_dims().max_positions,
            512
        );
    }

    #[test]
    fn a_split_file_asks_for_q_k_and_v() {
        let mut split = config();
        split["split_qkv"] = true.into();
        let names: Vec<_> = layer_tensors(&split).into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"model.layers.0.attention.wk.weight".into()),
            "{names:?}"
        );
    }
}
