//! Qwen2 / Qwen2.5 / Qwen1.5 (`Qwen2ForCausalLM`): Llama's layout with
//! biases on q, k and v, and a sliding window on the layers from
//! `max_window_layers` on when `use_sliding_window` is set.

use airllm_core::Result;
use serde_json::Value;

use crate::config::{layer_windows, Config};
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, LlamaVariant};

/// Each layer's window as Qwen2 and Qwen3 set them: none unless
/// `use_sliding_window`, then on the layers from `max_window_layers` on
/// (or as `layer_types` says).
pub(crate) fn qwen_windows(c: &Config<'_>) -> Result<Vec<Option<usize>>> {
    let layers = c.usize("num_hidden_layers")?;
    match c.bool_or("use_sliding_window", false)? {
        false => Ok(vec![None; layers]),
        true => {
            let first = c.opt_usize("max_window_layers")?.unwrap_or(layers);
            layer_windows(c, layers, |i| i >= first)
        }
    }
}

/// Builds the Qwen2 decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    llama_layout(
        &c,
        LlamaVariant {
            qkv_bias: true,
            windows: qwen_windows(&c)?,
            ..LlamaVariant::plain("qwen2")
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn windows(config: &Value) -> Vec<Option<usize>> {
        let decoder = from_config(config).unwrap();
        decoder
            .config()
            .layers
            .iter()
            .map(|l| l.attention.window)
            .collect()
    }

    #[test]
    fn windows_follow_max_window_layers_and_layer_types_win() {
        let mut config = json!({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 3, "vocab_size": 100, "sliding_window": 8, "max_window_layers": 1,
            "use_sliding_window": false});
        assert_eq!(windows(&config), [None, None, None]);
        config["use_sliding_window"] = true.into();
        assert_eq!(windows(&config), [None, Some(8), Some(8)]);
        config["layer_types"] = json!(["sliding_attention", "full_attention", "sliding_attention"]);
        assert_eq!(windows(&config), [Some(8), None, Some(8)]);
        config["layer_types"] = json!(["sliding_attention"]);
        let err = from_config(&config).unwrap_err().to_string();
        assert!(err.contains("layer_types"), "{err}");
    }
}
