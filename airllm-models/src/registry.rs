//! Picks the family from config.json: `architectures[0]`, falling back to
//! `model_type`.

use std::sync::Arc;

use airllm_core::{Architecture, Error, ModelDims, Result, UnitSpec};
use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::decoder::Decoder;

/// `architectures` names (and `model_type`s) this build supports.
pub const SUPPORTED: &[(&str, &str)] = &[("LlamaForCausalLM", "llama")];

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

fn build(config: &Value) -> Result<Decoder> {
    let declared = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let model_type = config.get("model_type").and_then(Value::as_str);
    let family = SUPPORTED
        .iter()
        .find(|(arch, ty)| {
            Some(*arch) == declared || (declared.is_none() && Some(*ty) == model_type)
        })
        .map(|(_, ty)| *ty);
    match family {
        Some("llama") => crate::llama::from_config(config),
        _ => Err(Error::UnknownArchitecture {
            name: declared
                .or(model_type)
                .unwrap_or("(none given)")
                .to_string(),
            known: SUPPORTED
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
