//! Qwen, first generation (`QWenLMHeadModel`, remote code): q, k and v
//! stacked in `attn.c_attn` (with bias), MLP `c_proj(w1(x) * silu(w2(x)))`
//! (w2 is the gate), rotary positions over `kv_channels * rotary_pct` dims.
//! Reads both generations of config key names.
//!
//! Dynamic NTK and log-n attention scaling change nothing up to
//! `seq_length`, so the context is capped there.

use airllm_core::{Error, ModelDims, Result};
use serde_json::Value;

use crate::blocks::attention::{Attention, QkvProjection};
use crate::blocks::linear::LinearNames;
use crate::blocks::mlp::{GateUp, GatedMlp};
use crate::blocks::rope::Rope;
use crate::config::Config;
use crate::decoder::{Decoder, DecoderConfig, FeedForward, LayerNames, PositionEncoding};

/// Builds the Qwen-1 decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let hidden = c.usize_of(&["hidden_size", "n_embd"])?;
    let heads = c.usize_of(&["num_attention_heads", "n_head"])?;
    let layers = c.usize_of(&["num_hidden_layers", "n_layer"])?;
    let ffn = c.usize_of(&["intermediate_size", "ffn_hidden_size"])?;
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::config(
            "num_attention_heads",
            format!("{heads} heads do not divide hidden_size {hidden}"),
        ));
    }
    let head_dim = hidden / heads;
    if let Some(kv_channels) = c.opt_usize("kv_channels")? {
        if kv_channels != head_dim {
            return Err(Error::config(
                "kv_channels",
                format!("{kv_channels} differs from hidden_size / heads = {head_dim}"),
            ));
        }
    }
    let rotary_pct = c.opt_f64("rotary_pct")?.unwrap_or(1.0);
    let rotary_dims = (head_dim as f64 * rotary_pct) as usize;
    if !rotary_dims.is_multiple_of(2) || !(0.0..=1.0).contains(&rotary_pct) {
        return Err(Error::config(
            "rotary_pct",
            format!("{rotary_pct} of {head_dim} head dims is not an even count of rotated dims"),
        ));
    }
    let theta = c.opt_f64("rotary_emb_base")?.unwrap_or(10_000.0);
    let context = c.usize_of(&["seq_length", "max_position_embeddings", "n_positions"])?;
    let rope = Rope::new(rotary_dims, theta, context);
    let bias = !c.bool_or("no_bias", true)?;
    let inner = ffn / 2;
    let layer_names = (0..layers)
        .map(|i| {
            let p = format!("transformer.h.{i}");
            let mlp = |name: &str| LinearNames::new(&format!("{p}.mlp.{name}"), bias);
            LayerNames {
                input_norm: format!("{p}.ln_1.weight"),
                post_norm: format!("{p}.ln_2.weight"),
                attention: Attention {
                    heads,
                    kv_heads: heads,
                    head_dim,
                    qkv: QkvProjection::Stacked(LinearNames::new(
                        &format!("{p}.attn.c_attn"),
                        true,
                    )),
                    o: LinearNames::new(&format!("{p}.attn.c_proj"), bias),
                    window: None,
                    head_norms: None,
                },
                ffn: FeedForward::Dense(GatedMlp {
                    inner,
                    gate_up: GateUp::Separate {
                        gate: mlp("w2"),
                        up: mlp("w1"),
                    },
                    down: mlp("c_proj"),
                }),
            }
        })
        .collect();
    let embed = "transformer.wte.weight".to_string();
    Ok(Decoder::new(DecoderConfig {
        family: "qwen",
        dims: ModelDims {
            layers,
            hidden,
            intermediate: inner,
            heads,
            kv_heads: heads,
            head_dim,
            vocab: c.usize_of(&["padded_vocab_size", "vocab_size"])?,
            max_positions: context,
            experts_per_token: 0,
        },
        eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
        positions: PositionEncoding::Rotary(rope),
        lm_head: match c.bool_or("tie_word_embeddings", false)? {
            true => embed.clone(),
            false => "lm_head.weight".into(),
        },
        embed,
        final_norm: "transformer.ln_f.weight".into(),
        normalized_head: false,
        layers: layer_names,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_generations_of_key_names_read_alike() {
        let early = json!({"n_embd": 64, "n_head": 4, "n_layer": 2, "ffn_hidden_size": 256,
            "seq_length": 512, "padded_vocab_size": 128, "vocab_size": 120, "kv_channels": 16});
        let later = json!({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 256, "seq_length": 512, "vocab_size": 128, "kv_channels": 16});
        let early = from_config(&early).unwrap();
        assert_eq!(
            early.model_dims(),
            from_config(&later).unwrap().model_dims()
        );
        assert_eq!(early.model_dims().intermediate, 128);
        assert_eq!(early.model_dims().vocab, 128);
        let wrong = json!({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 256, "seq_length": 512, "vocab_size": 128, "kv_channels": 32});
        let err = from_config(&wrong).unwrap_err().to_string();
        assert!(err.contains("kv_channels"), "{err}");
    }
}
