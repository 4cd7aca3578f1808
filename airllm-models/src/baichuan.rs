//! Baichuan and Baichuan 2 (`BaiChuanForCausalLM`, `BaichuanForCausalLM`):
//! Llama's names with q, k and v stacked in `self_attn.W_pack`. The 13B
//! models use ALiBi instead of rotary positions: as llama.cpp decides, ALiBi
//! when `num_hidden_layers` is 40, unless config.json says
//! `"position_embedding": "alibi" | "rope"`. Baichuan 2 (vocabulary 125696,
//! or `"norm_head": true`) normalises the LM head's rows.

use airllm_core::{Error, Result};
use serde_json::Value;

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, LlamaNames, LlamaVariant, QkvNames, LLAMA_NAMES};

/// Llama's names with q, k and v stacked in `self_attn.W_pack`.
const NAMES: LlamaNames = LlamaNames {
    qkv: QkvNames::Stacked("self_attn.W_pack"),
    ..LLAMA_NAMES
};

/// Layer count of the 13B models, which use ALiBi.
const ALIBI_LAYERS: usize = 40;
/// Vocabulary of Baichuan 2, whose LM head is normalised.
const BAICHUAN2_VOCAB: usize = 125_696;

/// Builds the Baichuan decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let alibi = match c.opt_str("position_embedding")? {
        Some("alibi") => true,
        Some("rope") => false,
        Some(other) => {
            return Err(Error::config(
                "position_embedding",
                format!("`{other}` is not supported; supported: alibi, rope"),
            ))
        }
        None => c.usize("num_hidden_layers")? == ALIBI_LAYERS,
    };
    let baichuan2 = c.opt_usize("vocab_size")? == Some(BAICHUAN2_VOCAB);
    let max_positions = match c.opt_usize("model_max_length")? {
        Some(length) => Some(length),
        None => c.opt_usize("max_position_embeddings")?,
    };
    llama_layout(
        &c,
        LlamaVariant {
            names: &NAMES,
            alibi,
            max_positions,
            normalized_head: c.bool_or("norm_head", baichuan2)?,
            ..LlamaVariant::plain("baichuan")
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decoder::PositionEncoding;

    fn config(layers: usize, vocab: usize) -> Value {
        json!({"architectures": ["BaichuanForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
               "num_attention_heads": 4, "num_hidden_layers": layers, "vocab_size": vocab,
               "model_max_length": 4096})
    }

    fn alibi(config: &Value) -> bool {
        let decoder = from_config(config).unwrap();
        matches!(decoder.config().positions, PositionEncoding::Alibi)
    }

    #[test]
    fn alibi_for_40_layers_unless_the_config_says_otherwise() {
        assert!(alibi(&config(40, 64000)));
        assert!(!alibi(&config(32, 64000)));
        let mut overridden = config(40, 64000);
        overridden["position_embedding"] = "rope".into();
        assert!(!alibi(&overridden));
        overridden["position_embedding"] = "none".into();
        let err = from_config(&overridden).unwrap_err().to_string();
        assert!(
            err.contains("position_embedding") && err.contains("none"),
            "{err}"
        );
    }

    #[test]
    fn baichuan2_vocabulary_normalises_the_head() {
        let normalized = |c: &Value| from_config(c).unwrap().config().normalized_head;
        assert!(normalized(&config(32, BAICHUAN2_VOCAB)));
        assert!(!normalized(&config(32, 64000)));
        let mut marked = config(32, 64000);
        marked["norm_head"] = true.into();
        assert!(normalized(&marked));
        assert_eq!(
            from_config(&marked).unwrap().model_dims().max_positions,
            4096
        );
    }
}
