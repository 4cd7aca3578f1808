//! InternLM, first generation (`InternLMForCausalLM`, remote code): Llama's
//! names and shapes with biases on q, k, v and o when `bias` is true (its
//! default). Later releases describe the rotary in their own key,
//! `"rotary": {"base", "type": "origin" | "dynamic", "scaling_factor"}`,
//! read here as `rope_theta` and `rope_scaling` (dynamic NTK changes nothing
//! up to `max_position_embeddings`).

use airllm_core::{Error, Result};
use serde_json::{json, Value};

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{llama_layout, LlamaVariant};

/// Builds the InternLM decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let variant = LlamaVariant::biased("internlm", c.bool_or("bias", true)?, false);
    match c.get("rotary") {
        None => llama_layout(&c, variant),
        Some(rotary) => llama_layout(&Config(&with_llama_rope_keys(config, rotary)?), variant),
    }
}

/// `config` with InternLM's `rotary` settings under Llama's keys.
fn with_llama_rope_keys(config: &Value, rotary: &Value) -> Result<Value> {
    let r = Config(rotary);
    let mut config = config.clone();
    config["rope_theta"] = json!(r.opt_f64("base")?.unwrap_or(10_000.0));
    match r.opt_str("type")? {
        None | Some("origin") => {}
        Some("dynamic") => {
            let factor = r.opt_f64("scaling_factor")?.unwrap_or(1.0);
            config["rope_scaling"] = json!({"rope_type": "dynamic", "factor": factor});
        }
        Some(other) => {
            return Err(Error::config(
                "rotary.type",
                format!("`{other}` is not supported; supported: origin, dynamic"),
            ))
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bias: Option<bool>) -> Value {
        let mut config = json!({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 256});
        if let Some(bias) = bias {
            config["bias"] = bias.into();
        }
        config
    }

    fn tensor_names(config: &Value) -> Vec<String> {
        let decoder = from_config(config).unwrap();
        decoder.unit_specs()[1]
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    #[test]
    fn attention_biases_follow_bias_and_default_to_on() {
        let biases = |c: &Value| {
            tensor_names(c)
                .iter()
                .filter(|n| n.ends_with(".bias"))
                .count()
        };
        assert_eq!(biases(&config(None)), 4);
        assert_eq!(biases(&config(Some(true))), 4);
        assert_eq!(biases(&config(Some(false))), 0);
        assert!(
            tensor_names(&config(None)).contains(&"model.layers.0.self_attn.o_proj.bias".into())
        );
    }

    #[test]
    fn rotary_settings_read_as_llama_keys() {
        let mut dynamic = config(None);
        dynamic["rotary"] = json!({"base": 5000.0, "type": "dynamic", "scaling_factor": 2.0});
        assert_eq!(
            from_config(&dynamic).unwrap().model_dims().max_positions,
            512
        );
        dynamic["rotary"]["type"] = "yarn".into();
        let err = from_config(&dynamic).unwrap_err().to_string();
        assert!(err.contains("rotary.type") && err.contains("yarn"), "{err}");
    }
}
