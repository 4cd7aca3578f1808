//! ChatGLM2 / ChatGLM3 (`ChatGLMModel`, remote code): q, k and v fused in
//! `self_attention.query_key_value` (multi-query groups stacked after the
//! queries), gate and up fused in `mlp.dense_h_to_4h`, rotary positions as
//! interleaved pairs over the first half of each head, and
//! `output_layer` as the LM head.

use airllm_core::{Error, Result};
use serde_json::{json, Value};

use crate::config::Config;
use crate::decoder::Decoder;
use crate::llama_shaped::{
    llama_layout, LlamaNames, LlamaVariant, MlpNames, QkvNames, LLAMA_NAMES,
};
use crate::presets::{ModelShape, CONTEXT};

/// ChatGLM's own keys for a synthetic model of `shape`.
pub(crate) fn synthetic_config(shape: &ModelShape) -> Value {
    json!({"architectures": ["ChatGLMModel"], "num_layers": shape.layers,
        "hidden_size": shape.hidden, "num_attention_heads": shape.heads,
        "kv_channels": shape.hidden / shape.heads, "multi_query_attention": true,
        "multi_query_group_num": shape.kv_heads, "ffn_hidden_size": shape.intermediate,
        "padded_vocab_size": shape.vocab, "seq_length": CONTEXT, "layernorm_epsilon": 1e-5,
        "add_qkv_bias": true, "add_bias_linear": false, "torch_dtype": "bfloat16"})
}

/// Rotary base before `rope_ratio` scales it.
const ROPE_BASE: f64 = 10_000.0;

/// Settings of the reference code this adapter does not implement, with the
/// value every released checkpoint has.
const FIXED_SETTINGS: [(&str, bool); 3] = [
    ("rmsnorm", true),
    ("post_layer_norm", true),
    ("apply_residual_connection_post_layernorm", false),
];

/// ChatGLM's tensor names; without multi-query groups q, k and v are fused
/// per head.
const NAMES: LlamaNames = LlamaNames {
    embed: "transformer.embedding.word_embeddings",
    layers: "transformer.encoder.layers",
    qkv: QkvNames::PerKvHead("self_attention.query_key_value"),
    o: "self_attention.dense",
    mlp: MlpNames::Fused {
        gate_up: "mlp.dense_h_to_4h",
        down: "mlp.dense_4h_to_h",
    },
    final_norm: "transformer.encoder.final_layernorm",
    head: "transformer.output_layer",
    ..LLAMA_NAMES
};

/// The names with multi-query groups: all queries, then the groups' keys,
/// then their values.
const GROUPED_NAMES: LlamaNames = LlamaNames {
    qkv: QkvNames::Stacked("self_attention.query_key_value"),
    ..NAMES
};

/// Builds the ChatGLM decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    for (key, supported) in FIXED_SETTINGS {
        if c.bool_or(key, supported)? != supported {
            return Err(Error::config(
                key,
                format!("only {supported} is supported (every released ChatGLM2/3 model)"),
            ));
        }
    }
    let heads = c.usize("num_attention_heads")?;
    let (kv_heads, names) = match c.bool_or("multi_query_attention", false)? {
        true => (c.usize("multi_query_group_num")?, &GROUPED_NAMES),
        false => (heads, &NAMES),
    };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::config(
            "multi_query_group_num",
            format!("{kv_heads} groups do not divide num_attention_heads = {heads}"),
        ));
    }
    // Rotary positions as interleaved pairs over the first half of each head.
    let llama_keys = json!({
        "hidden_size": c.usize("hidden_size")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": c.usize("kv_channels")?,
        "num_hidden_layers": c.usize("num_layers")?,
        "intermediate_size": c.usize("ffn_hidden_size")?,
        "vocab_size": c.usize("padded_vocab_size")?,
        "max_position_embeddings": c.usize("seq_length")?,
        "rms_norm_eps": c.opt_f64("layernorm_epsilon")?.unwrap_or(1e-5),
        "rope_theta": ROPE_BASE * c.opt_f64("rope_ratio")?.unwrap_or(1.0),
        "partial_rotary_factor": 0.5,
        "rope_interleave": true,
    });
    let linear_bias = c.bool_or("add_bias_linear", false)?;
    let variant = LlamaVariant {
        qkv_bias: c.bool_or("add_qkv_bias", false)?,
        o_bias: linear_bias,
        mlp_bias: linear_bias,
        names,
        ..LlamaVariant::plain("chatglm")
    };
    llama_layout(&Config(&llama_keys), variant)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::blocks::attention::QkvProjection;

    fn config() -> Value {
        json!({"architectures": ["ChatGLMModel"], "num_layers": 2, "hidden_size": 64,
            "num_attention_heads": 4, "kv_channels": 16, "multi_query_attention": true,
            "multi_query_group_num": 2, "ffn_hidden_size": 128, "padded_vocab_size": 100,
            "seq_length": 256, "add_qkv_bias": true})
    }

    #[test]
    fn query_key_value_rows_follow_multi_query_attention() {
        let mqa = from_config(&config()).unwrap();
        let qkv = &mqa.unit_specs()[1].tensors[2];
        assert_eq!(
            qkv.name,
            "transformer.encoder.layers.0.self_attention.query_key_value.weight"
        );
        assert_eq!(qkv.shape, [4 * 16 + 2 * 2 * 16, 64]);
        let mut mha = config();
        mha["multi_query_attention"] = false.into();
        let mha = from_config(&mha).unwrap();
        let attention = &mha.config().layers[0].attention;
        assert!(matches!(attention.qkv, QkvProjection::PerHead(_)));
        assert_eq!(mha.unit_specs()[1].tensors[2].shape, [3 * 4 * 16, 64]);
    }

    #[test]
    fn unsupported_reference_settings_are_named() {
        let mut layer_norm = config();
        layer_norm["rmsnorm"] = false.into();
        let err = from_config(&layer_norm).unwrap_err().to_string();
        assert!(err.contains("rmsnorm"), "{err}");
    }
}
