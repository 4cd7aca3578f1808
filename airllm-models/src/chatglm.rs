//! ChatGLM2 / ChatGLM3 (`ChatGLMModel`, remote code): q, k and v fused in
//! `self_attention.query_key_value` (multi-query groups stacked after the
//! queries), gate and up fused in `mlp.dense_h_to_4h`, rotary positions as
//! interleaved pairs over the first half of each head, and
//! `output_layer` as the LM head.

use airllm_core::family::{FamilyFiles, SpecialTokens, TiktokenHints, TokenizerHints};
use airllm_core::{Error, ModelDims, Result};
use serde_json::{json, Value};

use crate::blocks::attention::{Attention, QkvProjection};
use crate::blocks::linear::LinearNames;
use crate::blocks::mlp::{GateUp, GatedMlp};
use crate::blocks::rope::{Rope, RopeStyle};
use crate::config::Config;
use crate::decoder::{Decoder, DecoderConfig, FeedForward, LayerNames, PositionEncoding};
use crate::presets::{ModelShape, CONTEXT};
use crate::registry::{Family, Synthetic};

/// ChatGLM's descriptor. Its SentencePiece tokenizer (ChatGLM2/3) numbers
/// its specials after the pieces and puts `[gMASK] sop` before every text;
/// GLM-4 ships a tiktoken `tokenizer.model`. The chat format is ChatGLM3's
/// `build_chat_input`: per message the role token, a newline and the
/// content, then `<|assistant|>`; the spaces stand for the dummy prefix
/// that SentencePiece puts before each separately encoded part.
pub static FAMILY: Family = Family {
    files: FamilyFiles {
        architectures: &["ChatGLMModel", "ChatGLMForConditionalGeneration"],
        model_type: "chatglm",
        gguf: &[],
        tokenizer: TokenizerHints {
            sentencepiece: Some(SpecialTokens {
                tokens: &["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>",
                    "<|assistant|>", "<|observation|>"],
                extra: 0,
                prefix: &["[gMASK]", "sop"],
            }),
            tiktoken: Some(TiktokenHints {
                file: "tokenizer.model",
                pre: "llama3",
                specials: SpecialTokens {
                    tokens: &["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                        "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                        "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                        "<|end_of_video|>"],
                    extra: 0,
                    prefix: &["[gMASK]", "<sop>"],
                },
            }),
        },
        chat_template: Some("[gMASK]sop{% for m in messages %}<|{{ m.role }}|> {{ '\\n' }} {{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
    },
    build: from_config,
    synthetic: Synthetic::Dense(synthetic_config),
};

/// ChatGLM's own keys for a synthetic model of `shape`.
fn synthetic_config(shape: &ModelShape) -> Value {
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
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let layers = c.usize("num_layers")?;
    let head_dim = c.usize("kv_channels")?;
    let (kv_heads, qkv_layout): (usize, fn(LinearNames) -> QkvProjection) =
        match c.bool_or("multi_query_attention", false)? {
            true => (c.usize("multi_query_group_num")?, QkvProjection::Stacked),
            false => (heads, QkvProjection::PerHead),
        };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::config(
            "multi_query_group_num",
            format!("{kv_heads} groups do not divide num_attention_heads = {heads}"),
        ));
    }
    let context = c.usize("seq_length")?;
    let theta = ROPE_BASE * c.opt_f64("rope_ratio")?.unwrap_or(1.0);
    let rope = Rope::new(head_dim / 2, theta, context).with_style(RopeStyle::Interleaved);
    let qkv_bias = c.bool_or("add_qkv_bias", false)?;
    let linear_bias = c.bool_or("add_bias_linear", false)?;
    let ffn = c.usize("ffn_hidden_size")?;
    let layer_names = (0..layers)
        .map(|i| {
            let p = format!("transformer.encoder.layers.{i}");
            let linear = |name: &str| LinearNames::new(&format!("{p}.{name}"), linear_bias);
            let attention = Attention {
                heads,
                kv_heads,
                head_dim,
                qkv: qkv_layout(LinearNames::new(
                    &format!("{p}.self_attention.query_key_value"),
                    qkv_bias,
                )),
                o: linear("self_attention.dense"),
                window: None,
                head_norms: None,
            };
            let mlp = GatedMlp {
                inner: ffn,
                gate_up: GateUp::Fused(linear("mlp.dense_h_to_4h")),
                down: linear("mlp.dense_4h_to_h"),
            };
            LayerNames::with_layernorm_names(&p, attention, FeedForward::Dense(mlp))
        })
        .collect();
    Ok(Decoder::new(DecoderConfig {
        family: "chatglm",
        dims: ModelDims {
            layers,
            hidden,
            intermediate: ffn,
            heads,
            kv_heads,
            head_dim,
            vocab: c.usize("padded_vocab_size")?,
            max_positions: context,
            experts_per_token: 0,
        },
        eps: c.opt_f64("layernorm_epsilon")?.unwrap_or(1e-5),
        positions: PositionEncoding::Rotary(rope),
        embed: "transformer.embedding.word_embeddings.weight".into(),
        final_norm: "transformer.encoder.final_layernorm.weight".into(),
        lm_head: "transformer.output_layer.weight".into(),
        normalized_head: false,
        layers: layer_names,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
