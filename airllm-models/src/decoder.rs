//! The pre-norm decoder shared by the Llama-like families: embedding, layers
//! of `x + attn(norm(x))` then `x + mlp(norm(x))`, final norm and LM head.
//! A family supplies names and sizes; this file supplies the computation and
//! the unit list with expected shapes.

use std::any::Any;

use airllm_core::arch::LayerContext;
use airllm_core::store::TensorSpec;
use airllm_core::{
    Architecture, ComputeBackend, DeviceUnit, Error, ModelDims, PassInfo, Result, UnitKind,
    UnitSpec,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::blocks::attention::Attention;
use crate::blocks::linear::LinearNames;
use crate::blocks::mlp::GatedMlp;
use crate::blocks::norm::rms_norm;
use crate::blocks::rope::{Rope, RopeTables};

/// Tensor names of one decoder layer.
#[derive(Clone, Debug)]
pub struct LayerNames {
    /// Norm before attention.
    pub input_norm: String,
    /// Norm before the MLP.
    pub post_norm: String,
    /// Attention block.
    pub attention: Attention,
    /// MLP block.
    pub mlp: GatedMlp,
}

/// Everything a family decides.
pub struct DecoderConfig {
    /// Family name.
    pub family: &'static str,
    /// Sizes.
    pub dims: ModelDims,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Rotary embedding.
    pub rope: Rope,
    /// Embedding matrix `[vocab, hidden]`.
    pub embed: String,
    /// Final norm scale.
    pub final_norm: String,
    /// LM head matrix `[vocab, hidden]` (the embedding's name when tied).
    pub lm_head: String,
    /// Per-layer names.
    pub layers: Vec<LayerNames>,
}

/// A pre-norm decoder-only transformer.
pub struct Decoder {
    config: DecoderConfig,
    units: Vec<UnitSpec>,
}

fn spec(name: &str, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
    }
}

fn linear_specs(names: &LinearNames, out: usize, inner: usize) -> Vec<TensorSpec> {
    let mut specs = vec![spec(&names.weight, &[out, inner])];
    if let Some(bias) = &names.bias {
        specs.push(spec(bias, &[out]));
    }
    specs
}

impl Decoder {
    /// Builds the unit list from the config's names and sizes.
    pub fn new(config: DecoderConfig) -> Self {
        let d = &config.dims;
        let (h, q_out, kv_out) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let mut units = vec![UnitSpec {
            kind: UnitKind::Embedding,
            name: "embed".into(),
            tensors: vec![spec(&config.embed, &[d.vocab, h])],
        }];
        for (i, layer) in config.layers.iter().enumerate() {
            let a = &layer.attention;
            let m = &layer.mlp;
            let mut tensors = vec![spec(&layer.input_norm, &[h]), spec(&layer.post_norm, &[h])];
            tensors.extend(linear_specs(&a.q, q_out, h));
            tensors.extend(linear_specs(&a.k, kv_out, h));
            tensors.extend(linear_specs(&a.v, kv_out, h));
            tensors.extend(linear_specs(&a.o, h, q_out));
            tensors.extend(linear_specs(&m.gate, d.intermediate, h));
            tensors.extend(linear_specs(&m.up, d.intermediate, h));
            tensors.extend(linear_specs(&m.down, h, d.intermediate));
            units.push(UnitSpec {
                kind: UnitKind::Layer(i),
                name: format!("layer.{i:03}"),
                tensors,
            });
        }
        units.push(UnitSpec {
            kind: UnitKind::Head,
            name: "head".into(),
            tensors: vec![
                spec(&config.final_norm, &[h]),
                spec(&config.lm_head, &[d.vocab, h]),
            ],
        });
        Decoder { config, units }
    }

    /// Units in forward order with the tensors each needs.
    pub fn unit_specs(&self) -> &[UnitSpec] {
        &self.units
    }

    /// Sizes.
    pub fn model_dims(&self) -> &ModelDims {
        &self.config.dims
    }

    /// Family name.
    pub fn family_name(&self) -> &'static str {
        self.config.family
    }
}

impl<B: Backend> Architecture<B> for Decoder {
    fn family(&self) -> &'static str {
        self.family_name()
    }

    fn dims(&self) -> &ModelDims {
        self.model_dims()
    }

    fn units(&self) -> &[UnitSpec] {
        self.unit_specs()
    }

    fn begin_pass(&self, pass: &PassInfo<B>, device: &B::Device) -> Box<dyn Any> {
        Box::new(self.config.rope.tables::<B>(&pass.positions, device))
    }

    fn embed(
        &self,
        unit: &DeviceUnit<B>,
        tokens: &[Vec<u32>],
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>> {
        let (batch, seq) = (tokens.len(), tokens.first().map_or(0, Vec::len));
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let rows = backend.embedding(unit.matrix(&self.config.embed)?, &ids)?;
        Ok(rows.reshape([batch, seq, self.config.dims.hidden]))
    }

    fn layer(
        &self,
        index: usize,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        ctx: LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let names = &self.config.layers[index];
        let rope = ctx
            .prepared
            .downcast_ref::<RopeTables<B>>()
            .ok_or_else(|| Error::Backend("pass state is not this decoder's".into()))?;
        let backend = ctx.backend;
        let eps = self.config.eps;
        let normed = rms_norm(hidden.clone(), unit.vector(&names.input_norm)?, eps);
        let hidden = hidden + names.attention.forward(unit, normed, rope, ctx)?;
        let normed = rms_norm(hidden.clone(), unit.vector(&names.post_norm)?, eps);
        Ok(hidden + names.mlp.forward(unit, backend, normed)?)
    }

    fn head(
        &self,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>> {
        let normed = rms_norm(
            hidden,
            unit.vector(&self.config.final_norm)?,
            self.config.eps,
        );
        backend.linear(normed, unit.matrix(&self.config.lm_head)?)
    }
}
