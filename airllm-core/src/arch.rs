//! [`Architecture`]: what to compute. A model family maps its config to
//! units and tensor names, and runs embed, one decoder layer and the head on
//! burn tensors.

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::{ComputeBackend, ComputeDType, DeviceTensor, StagedTensor};
use crate::kv::KvSlot;
use crate::{Error, Result, UnitSpec};

/// Sizes the engine needs for memory planning and validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Widest MLP inner size.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// Vocabulary size (logits width).
    pub vocab: usize,
    /// Longest sequence the model accepts.
    pub max_positions: usize,
    /// Experts each token is routed to (0 for dense models).
    pub experts_per_token: usize,
}

impl ModelDims {
    /// KV-cache bytes one token costs across all layers in `dtype`. Sizes
    /// multiply saturating: a size past `u64` fits no budget.
    pub fn kv_bytes_per_token(&self, dtype: ComputeDType) -> u64 {
        product(&[2, self.layers, self.kv_heads, self.head_dim]).saturating_mul(dtype.bytes())
    }

    /// Working activation bytes of one pass over `rows` new tokens attending
    /// over `context` positions in `dtype`.
    pub fn activation_bytes(&self, rows: usize, context: usize, dtype: ComputeDType) -> u64 {
        let per_row = [
            product(&[4, self.hidden]),
            product(&[3, self.intermediate]),
            product(&[2, self.heads, self.head_dim]),
            product(&[2, self.heads, context]),
            self.vocab as u64,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add);
        per_row
            .saturating_mul(rows as u64)
            .saturating_mul(dtype.bytes())
    }
}

/// The product of `factors`, saturating at `u64::MAX`.
fn product(factors: &[usize]) -> u64 {
    factors
        .iter()
        .fold(1u64, |acc, &f| acc.saturating_mul(f as u64))
}

/// A unit's weights on the compute device.
pub struct DeviceUnit<B: Backend> {
    name: String,
    tensors: HashMap<String, DeviceTensor<B>>,
}

impl<B: Backend> DeviceUnit<B> {
    /// Uploads staged tensors through `backend`.
    pub fn upload(
        name: &str,
        staged: Vec<StagedTensor>,
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Self> {
        let mut tensors = HashMap::with_capacity(staged.len());
        for tensor in staged {
            let key = tensor.name().to_string();
            tensors.insert(key, backend.upload(tensor)?);
        }
        Ok(DeviceUnit {
            name: name.to_string(),
            tensors,
        })
    }

    fn get(&self, name: &str) -> Result<&DeviceTensor<B>> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            location: format!("unit `{}`", self.name),
        })
    }

    /// The 2-D weight `name` (on the device or kept on the host).
    pub fn matrix(&self, name: &str) -> Result<&DeviceTensor<B>> {
        match self.get(name)? {
            DeviceTensor::Vector(_) => Err(self.rank_error(name, 2)),
            matrix => Ok(matrix),
        }
    }

    /// The 1-D weight `name`.
    pub fn vector(&self, name: &str) -> Result<&Tensor<B, 1>> {
        match self.get(name)? {
            DeviceTensor::Vector(v) => Ok(v),
            _ => Err(self.rank_error(name, 1)),
        }
    }

    fn rank_error(&self, name: &str, rank: usize) -> Error {
        Error::Backend(format!(
            "tensor `{name}` in unit `{}` is not {rank}-D",
            self.name
        ))
    }
}

/// Where the tokens of one forward pass sit. A pass runs several
/// sequences (rows), each over its own KV cache: its new tokens are packed
/// one row after another into one sequence of [`PassInfo::tokens`] (hidden
/// states `[1, tokens, hidden]`), with no padding, and each row's queries
/// attend over its own cached positions and its new ones. Positions count
/// from 0 at each row's first token, so a row's new tokens sit at
/// `cached..cached + new`; a family builds its own causal, window or ALiBi
/// bias from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassInfo {
    /// The rows, in packing order.
    pub rows: Vec<RowSpan>,
}

/// One row of a pass: what its cache holds and what the pass adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSpan {
    /// Positions already in the row's KV cache.
    pub cached: usize,
    /// New tokens this pass computes for the row.
    pub new: usize,
}

impl RowSpan {
    /// Positions the row's keys cover after this pass (cached plus new).
    pub fn total(&self) -> usize {
        self.cached + self.new
    }
}

impl PassInfo {
    /// Rows in the pass.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// New tokens of every row together.
    pub fn tokens(&self) -> usize {
        self.rows.iter().map(|r| r.new).sum()
    }

    /// Each row with the index of its first new token in the packed sequence.
    pub fn offsets(&self) -> impl Iterator<Item = (usize, &RowSpan)> {
        self.rows.iter().scan(0, |offset, row| {
            let at = *offset;
            *offset += row.new;
            Some((at, row))
        })
    }

    /// Position of each new token, in packing order (for rotary tables).
    pub fn query_positions(&self) -> Vec<usize> {
        self.rows.iter().flat_map(|r| r.cached..r.total()).collect()
    }
}

/// Reads routed experts' weights while a layer runs.
pub trait ExpertLoader<B: Backend> {
    /// The weights of `experts` (indices into the unit's
    /// [`UnitSpec::experts`](crate::UnitSpec)), one unit per requested expert,
    /// in the order asked.
    fn load(&mut self, experts: &[usize]) -> Result<Vec<Arc<DeviceUnit<B>>>>;
}

/// Where a mixture-of-experts layer finds its experts.
pub enum Experts<'a, B: Backend> {
    /// In the layer's own unit (resident, or a dense layer).
    InUnit,
    /// Read on request: the unit holds only the shared tensors.
    OnRequest(&'a mut dyn ExpertLoader<B>),
}

/// Per-layer context handed to [`LayerPass::layer`].
pub struct LayerContext<'a, B: Backend> {
    /// This pass's positions.
    pub pass: &'a PassInfo,
    /// This layer's KV cache of each row, in packing order.
    pub kv: Vec<&'a mut KvSlot<B>>,
    /// The backend, for its linear op.
    pub backend: &'a dyn ComputeBackend<B>,
    /// Where routed experts come from.
    pub experts: Experts<'a, B>,
}

/// What to compute for a model family.
pub trait Architecture<B: Backend>: Send + Sync {
    /// The family's name (e.g. `llama`).
    fn family(&self) -> &'static str;

    /// Sizes for planning.
    fn dims(&self) -> &ModelDims;

    /// Units in forward order, with the tensors each needs.
    fn units(&self) -> &[UnitSpec];

    /// Starts a pass: the work shared by its layers (rotary tables,
    /// attention masks) is done once, and the returned pass runs the layers
    /// with it. The engine keeps one pass of whatever type the architecture
    /// chooses, so that type is erased here, but never downcast.
    fn begin_pass<'a>(&'a self, pass: &PassInfo, device: &B::Device) -> Box<dyn LayerPass<B> + 'a>;

    /// The packed token ids of a pass to hidden states `[1, tokens, hidden]`.
    fn embed(
        &self,
        unit: &DeviceUnit<B>,
        tokens: &[u32],
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>>;

    /// Final norm and LM head: hidden `[1, positions, hidden]` to logits `[1, positions, vocab]`.
    fn head(
        &self,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        backend: &dyn ComputeBackend<B>,
    ) -> Result<Tensor<B, 3>>;
}

/// One forward pass of an [`Architecture`], holding what it prepared for
/// all layers.
pub trait LayerPass<B: Backend> {
    /// Decoder layer `index` on the packed hidden states `[1, tokens, hidden]`.
    fn layer(
        &self,
        index: usize,
        unit: &DeviceUnit<B>,
        hidden: Tensor<B, 3>,
        ctx: LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>>;
}
