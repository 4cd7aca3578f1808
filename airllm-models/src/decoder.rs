//! The pre-norm decoder shared by the Llama-like families: embedding, layers
//! of `x + attn(norm(x))` then `x + mlp(norm(x))`, final norm and LM head.
//! A family supplies names and sizes; this file supplies the computation and
//! the unit list with expected shapes.

use std::sync::OnceLock;

use airllm_core::arch::LayerContext;
use airllm_core::store::TensorSpec;
use airllm_core::{
    Architecture, ComputeBackend, DeviceUnit, Error, LayerPass, ModelDims, PassInfo, Result,
    RowSpan, UnitKind, UnitSpec,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::blocks::attention::{Attention, AttentionInputs};
use crate::blocks::mask::{alibi_slopes, causal_mask, key_minus_query};
use crate::blocks::mlp::GatedMlp;
use crate::blocks::moe::SparseMoe;
use crate::blocks::norm::row_norms;
use crate::blocks::rope::{Rope, RopeTables};

/// The feed-forward block of a layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    /// One gated MLP.
    Dense(GatedMlp),
    /// A routed mixture of gated-MLP experts.
    Sparse(SparseMoe),
}

impl FeedForward {
    fn tensor_specs(&self, hidden: usize) -> Vec<TensorSpec> {
        match self {
            FeedForward::Dense(mlp) => mlp.tensor_specs(hidden),
            FeedForward::Sparse(moe) => moe.tensor_specs(hidden),
        }
    }

    /// The router's weight, which a split keeps in a float dtype (none for
    /// a dense block).
    fn router_names(&self) -> Vec<String> {
        match self {
            FeedForward::Dense(_) => Vec::new(),
            FeedForward::Sparse(moe) => vec![moe.router.weight.clone()],
        }
    }

    /// Tensor names of each routed expert (none for a dense block).
    fn expert_names(&self, hidden: usize) -> Vec<Vec<String>> {
        match self {
            FeedForward::Dense(_) => Vec::new(),
            FeedForward::Sparse(moe) => moe
                .expert_specs(hidden)
                .into_iter()
                .map(|specs| specs.into_iter().map(|s| s.name).collect())
                .collect(),
        }
    }
}

/// Tensor names of one decoder layer.
#[derive(Clone, Debug)]
pub struct LayerNames {
    /// Norm before attention.
    pub input_norm: String,
    /// Norm before the feed-forward block.
    pub post_norm: String,
    /// Attention block.
    pub attention: Attention,
    /// Feed-forward block.
    pub ffn: FeedForward,
}

impl LayerNames {
    /// A layer under `prefix` whose norms are `input_layernorm` and
    /// `post_attention_layernorm` (Llama's names, kept by most families).
    pub fn with_layernorm_names(prefix: &str, attention: Attention, ffn: FeedForward) -> Self {
        LayerNames {
            input_norm: format!("{prefix}.input_layernorm.weight"),
            post_norm: format!("{prefix}.post_attention_layernorm.weight"),
            attention,
            ffn,
        }
    }
}

/// How token positions enter attention.
#[derive(Debug)]
pub enum PositionEncoding {
    /// Rotary embeddings on queries and keys.
    Rotary(Rope),
    /// ALiBi: a per-head linear penalty on key distance.
    Alibi,
}

/// Everything a family decides.
#[derive(Debug)]
pub struct DecoderConfig {
    /// Family name.
    pub family: &'static str,
    /// Sizes.
    pub dims: ModelDims,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Position encoding.
    pub positions: PositionEncoding,
    /// Embedding matrix `[vocab, hidden]`.
    pub embed: String,
    /// Final norm scale.
    pub final_norm: String,
    /// LM head matrix `[vocab, hidden]` (the embedding's name when tied).
    pub lm_head: String,
    /// Whether the LM head's rows are normalised to unit length (Baichuan 2's NormHead).
    pub normalized_head: bool,
    /// Per-layer names.
    pub layers: Vec<LayerNames>,
}

impl DecoderConfig {
    /// Refuses sizes the blocks cannot run: an empty dimension, or rotary
    /// positions over an odd, empty or too-wide part of the head.
    pub fn check(&self) -> Result<()> {
        let d = &self.dims;
        let sizes = [
            ("hidden size", d.hidden),
            ("vocabulary size", d.vocab),
            ("attention heads", d.heads),
            ("key/value heads", d.kv_heads),
            ("head dims", d.head_dim),
            ("MLP width", d.intermediate),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return Err(Error::config(*name, "must be at least 1"));
        }
        if let PositionEncoding::Rotary(rope) = &self.positions {
            let rotated = rope.rotated_dims();
            if rotated == 0 || !rotated.is_multiple_of(2) || rotated > d.head_dim {
                return Err(Error::config(
                    "head dims",
                    format!(
                        "rotary positions need an even count of rotated dims from 2 to the head's {}; this config rotates {rotated}",
                        d.head_dim
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A pre-norm decoder-only transformer.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    units: Vec<UnitSpec>,
    /// Distinct sliding windows of the layers (`None`: full attention).
    windows: Vec<Option<usize>>,
    /// Per layer, the index of its window in `windows`.
    layer_window: Vec<usize>,
    /// Lengths of the LM head's rows, for a normalised head (computed once).
    head_row_norms: OnceLock<Vec<f32>>,
}

/// A pass of [`Decoder`]: what it prepares once for all layers.
struct DecoderPass<'a, B: Backend> {
    decoder: &'a Decoder,
    rope: Option<RopeTables<B>>,
    /// Per entry of [`Decoder::windows`], one attention bias per row.
    biases: Vec<Vec<Tensor<B, 4>>>,
}

impl Decoder {
    /// Builds the unit list from the config's names and sizes.
    pub fn new(config: DecoderConfig) -> Self {
        let d = &config.dims;
        let h = d.hidden;
        let mut units = vec![UnitSpec {
            kind: UnitKind::Embedding,
            name: "embed".into(),
            tensors: vec![TensorSpec::new(&config.embed, &[d.vocab, h])],
            experts: Vec::new(),
            routers: Vec::new(),
        }];
        let mut windows = Vec::new();
        let mut layer_window = Vec::with_capacity(config.layers.len());
        for (i, layer) in config.layers.iter().enumerate() {
            let mut tensors = vec![
                TensorSpec::new(&layer.input_norm, &[h]),
                TensorSpec::new(&layer.post_norm, &[h]),
            ];
            tensors.extend(layer.attention.tensor_specs(h));
            tensors.extend(layer.ffn.tensor_specs(h));
            units.push(UnitSpec {
                kind: UnitKind::Layer(i),
                name: format!("layer.{i:03}"),
                tensors,
                experts: layer.ffn.expert_names(h),
                routers: layer.ffn.router_names(),
            });
            let window = layer.attention.window;
            layer_window.push(match windows.iter().position(|w| *w == window) {
                Some(known) => known,
                None => {
                    windows.push(window);
                    windows.len() - 1
                }
            });
        }
        units.push(UnitSpec {
            kind: UnitKind::Head,
            name: "head".into(),
            tensors: vec![
                TensorSpec::new(&config.final_norm, &[h]),
                TensorSpec::new(&config.lm_head, &[d.vocab, h]),
            ],
            experts: Vec::new(),
            routers: Vec::new(),
        });
        Decoder {
            config,
            units,
            windows,
            layer_window,
            head_row_norms: OnceLock::new(),
        }
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

    /// What the family decided: names, sizes, positions, head.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The additive attention bias of `row` for layers with sliding window `window`.
    fn attention_bias<B: Backend>(
        &self,
        row: &RowSpan,
        window: Option<usize>,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let mask = causal_mask::<B>(row, window, device);
        match self.config.positions {
            PositionEncoding::Rotary(_) => mask,
            PositionEncoding::Alibi => {
                let heads = self.config.dims.heads;
                let slopes = Tensor::<B, 1>::from_data(
                    TensorData::new(alibi_slopes(heads), [heads]),
                    device,
                )
                .reshape([1, heads, 1, 1]);
                mask + key_minus_query::<B>(row, device) * slopes
            }
        }
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

    fn begin_pass<'a>(&'a self, pass: &PassInfo, device: &B::Device) -> Box<dyn LayerPass<B> + 'a> {
        let rope = match &self.config.positions {
            PositionEncoding::Rotary(rope) => {
                Some(rope.tables::<B>(&[pass.query_positions()], device))
            }
            PositionEncoding::Alibi => None,
        };
        let biases = self
            .windows
            .iter()
            .map(|&window| {
                pass.rows
                    .iter()
                    .map(|row| self.attention_bias::<B>(row, window, device))
                    .collect()
            })
            .collect();
        Box::new(DecoderPass {
            decoder: self,
            rope,
            biases,
        })
    }

    fn embed(
        &self,
        unit: &DeviceUnit<B>,
        tokens: &[u32],
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>> {
        let rows = backend.embedding(unit.matrix(&self.config.embed)?, tokens)?;
        Ok(rows.reshape([1, tokens.len(), self.config.dims.hidden]))
    }

    fn head(
        &self,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>> {
        let normed = backend.rms_norm(
            hidden,
            unit.vector(&self.config.final_norm)?,
            self.config.eps,
        )?;
        let head = unit.matrix(&self.config.lm_head)?;
        // Logits leave in f32 whatever the compute dtype, as transformers'.
        let logits = backend.linear(normed, head)?.cast(DType::F32);
        if !self.config.normalized_head {
            return Ok(logits);
        }
        let norms = match self.head_row_norms.get() {
            Some(norms) => norms,
            None => {
                let norms = row_norms(backend, head)?;
                self.head_row_norms.get_or_init(|| norms)
            }
        };
        let vocab = norms.len();
        let norms = Tensor::<B, 1>::from_data(
            TensorData::new(norms.clone(), [vocab]),
            (backend.device(), DType::F32),
        );
        Ok(logits / norms.reshape([1, 1, vocab]))
    }
}

impl<B: Backend> LayerPass<B> for DecoderPass<'_, B> {
    fn layer(
        &self,
        index: usize,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        ctx: LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let decoder = self.decoder;
        let names = &decoder.config.layers[index];
        let inputs = AttentionInputs {
            rope: self.rope.as_ref(),
            biases: &self.biases[decoder.layer_window[index]],
        };
        let mut ctx = ctx;
        let eps = decoder.config.eps;
        let backend = ctx.backend;
        let normed = backend.rms_norm(hidden.clone(), unit.vector(&names.input_norm)?, eps)?;
        let hidden = hidden + names.attention.forward(unit, normed, inputs, &mut ctx)?;
        let normed = backend.rms_norm(hidden.clone(), unit.vector(&names.post_norm)?, eps)?;
        let update = match &names.ffn {
            FeedForward::Dense(mlp) => mlp.forward(unit, ctx.backend, normed)?,
            FeedForward::Sparse(moe) => moe.forward(unit, normed, &mut ctx)?,
        };
        Ok(hidden + update)
    }
}
