//! Llama (1, 2, 3, 3.1; `LlamaForCausalLM`): config keys and tensor names
//! over the shared decoder. GQA, `head_dim` override, tied embeddings,
//! attention/MLP biases and `rope_scaling` come from config.json.

use airllm_core::{Error, ModelDims, Result};
use serde_json::Value;

use crate::blocks::attention::Attention;
use crate::blocks::linear::LinearNames;
use crate::blocks::mlp::GatedMlp;
use crate::blocks::rope::Rope;
use crate::config::Config;
use crate::decoder::{Decoder, DecoderConfig, LayerNames};

/// Builds the Llama decoder from config.json.
pub fn from_config(config: &Value) -> Result<Decoder> {
    let c = Config(config);
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::config(
            "num_key_value_heads",
            format!("{kv_heads} does not divide num_attention_heads = {heads}"),
        ));
    }
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / heads);
    let layers = c.usize("num_hidden_layers")?;
    let attention_bias = c.bool_or("attention_bias", false)?;
    let mlp_bias = c.bool_or("mlp_bias", false)?;
    let tied = c.bool_or("tie_word_embeddings", false)?;
    let rope = Rope::from_config(&c, head_dim)?;
    let dims = ModelDims {
        layers,
        hidden,
        intermediate: c.usize("intermediate_size")?,
        heads,
        kv_heads,
        head_dim,
        vocab: c.usize("vocab_size")?,
        max_positions: rope.context_limit(),
    };
    let layer_names = (0..layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            LayerNames {
                input_norm: format!("{p}.input_layernorm.weight"),
                post_norm: format!("{p}.post_attention_layernorm.weight"),
                attention: Attention {
                    heads,
                    kv_heads,
                    head_dim,
                    q: LinearNames::new(&format!("{p}.self_attn.q_proj"), attention_bias),
                    k: LinearNames::new(&format!("{p}.self_attn.k_proj"), attention_bias),
                    v: LinearNames::new(&format!("{p}.self_attn.v_proj"), attention_bias),
                    o: LinearNames::new(&format!("{p}.self_attn.o_proj"), attention_bias),
                },
                mlp: GatedMlp {
                    gate: LinearNames::new(&format!("{p}.mlp.gate_proj"), mlp_bias),
                    up: LinearNames::new(&format!("{p}.mlp.up_proj"), mlp_bias),
                    down: LinearNames::new(&format!("{p}.mlp.down_proj"), mlp_bias),
                },
            }
        })
        .collect();
    let embed = "model.embed_tokens.weight".to_string();
    Ok(Decoder::new(DecoderConfig {
        family: "llama",
        dims,
        eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope,
        lm_head: if tied {
            embed.clone()
        } else {
            "lm_head.weight".into()
        },
        embed,
        final_norm: "model.norm.weight".into(),
        layers: layer_names,
    }))
}
