//! Causal self-attention with grouped KV heads, rotary positions and the KV
//! cache. Query head `h` reads KV head `h / (heads / kv_heads)`.

use airllm_core::arch::LayerContext;
use airllm_core::{DeviceUnit, Result};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::linear::LinearNames;
use super::rope::RopeTables;

/// Shape and tensor names of one attention block.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dims per head.
    pub head_dim: usize,
    /// Query projection.
    pub q: LinearNames,
    /// Key projection.
    pub k: LinearNames,
    /// Value projection.
    pub v: LinearNames,
    /// Output projection.
    pub o: LinearNames,
}

impl Attention {
    fn split_heads<B: Backend>(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, heads, self.head_dim])
            .swap_dims(1, 2)
    }

    /// Attends `x: [batch, seq, hidden]` over the cache plus itself.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        ctx: LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let backend = ctx.backend;
        let [batch, seq, _] = x.dims();
        let q = self.split_heads(self.q.forward(unit, backend, x.clone())?, self.heads);
        let k = self.split_heads(self.k.forward(unit, backend, x.clone())?, self.kv_heads);
        let v = self.split_heads(self.v.forward(unit, backend, x)?, self.kv_heads);
        let (q, k) = (rope.apply(q), rope.apply(k));
        let (keys, values) = ctx.kv.append(k, v);
        let total = keys.dims()[2];

        // Group query heads under their KV head: [b, kv, group*seq, d].
        let group = self.heads / self.kv_heads;
        let q = q.reshape([batch, self.kv_heads, group * seq, self.head_dim]);
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = q.matmul(keys.swap_dims(2, 3)).mul_scalar(scale);
        let scores = scores.reshape([batch, self.heads, seq, total]) + ctx.pass.mask.clone();
        let probs = softmax(scores, 3).reshape([batch, self.kv_heads, group * seq, total]);
        let out = probs
            .matmul(values)
            .reshape([batch, self.heads, seq, self.head_dim])
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * self.head_dim]);
        self.o.forward(unit, backend, out)
    }
}
