//! What a supported family is ([`Family`]: its descriptor), the list of them
//! ([`SUPPORTED`], in `descriptors.rs`), and the choice of one from
//! config.json: `architectures[0]`, falling back to `model_type`.

use std::sync::Arc;

use airllm_core::family::{declared_architecture, FamilyFiles};
use airllm_core::{Architecture, Error, ModelDims, Result, UnitSpec};
use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::decoder::Decoder;
pub use crate::descriptors::SUPPORTED;
use crate::presets::ModelShape;

/// One supported family: what the file formats need to know of it, the
/// reader that checks its config and builds its decoder, and the config of
/// a synthetic model of any shape in its keys.
pub struct Family {
    /// Its names in config.json, GGUF architectures and tensor names,
    /// tokenizer hints and built-in chat format (plain data for
    /// `airllm-formats`).
    pub files: FamilyFiles,
    /// Checks config.json and builds the decoder.
    pub build: fn(&Value) -> Result<Decoder>,
    /// The config.json of a synthetic model of a shape (`bench --preset`).
    pub synthetic: Synthetic,
}

/// Whether and how a family writes the config of a synthetic model.
pub enum Synthetic {
    /// It does not (its models are benchmarked as another family's shape).
    No,
    /// A dense shape, written when `--family` names the family.
    Dense(fn(&ModelShape) -> Value),
    /// A shape with experts, written when its [`ModelShape::moe_family`]
    /// names the family.
    Experts(fn(&ModelShape) -> Value),
}

/// The descriptors the file formats read (`airllm_formats::ModelDir::open`).
pub fn catalog() -> Vec<&'static FamilyFiles> {
    SUPPORTED.iter().map(|f| &f.files).collect()
}

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
    let found = SUPPORTED
        .iter()
        .copied()
        .find(|f| f.files.is_named_by(config));
    found.ok_or_else(|| Error::UnknownArchitecture {
        name: declared_architecture(config)
            .or(config.get("model_type").and_then(Value::as_str))
            .unwrap_or("(none given)")
            .to_string(),
        known: SUPPORTED
            .iter()
            .flat_map(|f| f.files.architectures.iter().copied())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn build(config: &Value) -> Result<Decoder> {
    let decoder = (family(config)?.build)(config)?;
    decoder.config().check()?;
    Ok(decoder)
}
