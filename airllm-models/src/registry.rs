//! Picks the family from config.json: `architectures[0]`, falling back to
//! `model_type`.

use std::sync::Arc;

use airllm_core::{Architecture, Error, ModelDims, Result, UnitSpec};
use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::decoder::Decoder;

/// One supported family: the names config.json may give it and the reader
/// that checks its config and builds its decoder.
pub struct Family {
    /// `architectures[0]` values.
    pub architectures: &'static [&'static str],
    /// `model_type` value (used when `architectures` is absent).
    pub model_type: &'static str,
    /// Checks config.json and builds the decoder.
    pub build: fn(&Value) -> Result<Decoder>,
}

/// Every family this build supports.
pub const SUPPORTED: &[Family] = &[
    Family {
        architectures: &["LlamaForCausalLM"],
        model_type: "llama",
        build: crate::llama::from_config,
    },
    Family {
        architectures: &["Qwen2ForCausalLM"],
        model_type: "qwen2",
        build: crate::qwen2::from_config,
    },
    Family {
        architectures: &["Qwen3ForCausalLM"],
        model_type: "qwen3",
        build: crate::qwen3::from_config,
    },
    Family {
        architectures: &["Qwen3MoeForCausalLM"],
        model_type: "qwen3_moe",
        build: crate::qwen3::moe_from_config,
    },
    Family {
        architectures: &["QWenLMHeadModel"],
        model_type: "qwen",
        build: crate::qwen::from_config,
    },
    Family {
        architectures: &["MistralForCausalLM"],
        model_type: "mistral",
        build: crate::mistral::from_config,
    },
    Family {
        architectures: &["MixtralForCausalLM"],
        model_type: "mixtral",
        build: crate::mixtral::from_config,
    },
    Family {
        architectures: &["ChatGLMModel", "ChatGLMForConditionalGeneration"],
        model_type: "chatglm",
        build: crate::chatglm::from_config,
    },
    Family {
        architectures: &["BaichuanForCausalLM", "BaiChuanForCausalLM"],
        model_type: "baichuan",
        build: crate::baichuan::from_config,
    },
];

/// Builds the architecture config.json describes.
pub fn architecture<B: Backend>(config: &Value) -> Result<Arc<dyn Architecture<B>>> {
    Ok(Arc::new(build(config)?))
}

/// What a model is, independent of any device: family, sizes and units.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Family name.
    pub family: &'static str,
    /// Sizes.
    pub dims: ModelDims,
    /// Units in forward order.
    pub units: Vec<UnitSpec>,
}

/// The layout config.json implies (for `split` and `inspect`).
pub fn layout(config: &Value) -> Result<Layout> {
    let decoder = build(config)?;
    Ok(Layout {
        family: decoder.family_name(),
        dims: decoder.model_dims().clone(),
        units: decoder.unit_specs().to_vec(),
    })
}

/// The family config.json names: `architectures[0]`, else `model_type`.
pub fn family(config: &Value) -> Result<&'static Family> {
    let declared = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let model_type = config.get("model_type").and_then(Value::as_str);
    let found = match declared {
        Some(name) => SUPPORTED.iter().find(|f| f.architectures.contains(&name)),
        None => SUPPORTED.iter().find(|f| Some(f.model_type) == model_type),
    };
    found.ok_or_else(|| Error::UnknownArchitecture {
        name: declared
            .or(model_type)
            .unwrap_or("(none given)")
            .to_string(),
        known: SUPPORTED
            .iter()
            .flat_map(|f| f.architectures.iter().copied())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn build(config: &Value) -> Result<Decoder> {
    let decoder = (family(config)?.build)(config)?;
    decoder.config().check()?;
    Ok(decoder)
}
