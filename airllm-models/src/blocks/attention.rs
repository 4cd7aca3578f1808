//! Self-attention with grouped KV heads over the KV cache. Query head `h`
//! reads KV head `h / (heads / kv_heads)`. Queries and keys are projected
//! separately or by one fused matrix, optionally rotated; the family's bias
//! (causal, sliding window, ALiBi) comes prepared for the pass.

use airllm_core::arch::LayerContext;
use airllm_core::backend::RowKeys;
use airllm_core::store::TensorSpec;
use airllm_core::{DeviceUnit, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::linear::LinearNames;
use super::rope::RopeTables;

/// How q, k and v are projected from the hidden states.
#[derive(Clone, Debug)]
pub enum QkvProjection {
    /// Three matrices.
    Separate {
        /// Query projection.
        q: LinearNames,
        /// Key projection.
        k: LinearNames,
        /// Value projection.
        v: LinearNames,
    },
    /// One matrix whose rows are all of q, then all of k, then all of v
    /// (Qwen-1 `c_attn`, Baichuan `W_pack`, ChatGLM `query_key_value` with
    /// multi-query groups).
    Stacked(LinearNames),
    /// One matrix whose rows hold, for each KV head in turn, its group of
    /// query heads, then its key head, then its value head (InternLM2
    /// `wqkv`; ChatGLM `query_key_value` without multi-query groups, where
    /// each group has one query head).
    PerHead(LinearNames),
}

/// RMSNorm of each query and key head before rotation (Qwen3), with
/// `[head_dim]` scales.
#[derive(Clone, Debug)]
pub struct HeadNorms {
    /// Scale of the query heads' norm.
    pub q: String,
    /// Scale of the key heads' norm.
    pub k: String,
    /// RMSNorm epsilon.
    pub eps: f64,
}

/// Shape and tensor names of one attention block.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dims per head.
    pub head_dim: usize,
    /// The q, k, v projections.
    pub qkv: QkvProjection,
    /// Output projection.
    pub o: LinearNames,
    /// Sliding window (keys more than `window - 1` positions back are hidden).
    pub window: Option<usize>,
    /// Per-head norms of queries and keys, if the family has them.
    pub head_norms: Option<HeadNorms>,
}

/// What a layer's attention reads from the pass state.
pub struct AttentionInputs<'a, B: Backend> {
    /// Rotary tables, for families with rotary positions.
    pub rope: Option<&'a RopeTables<B>>,
    /// Each row's additive bias `[1, 1 or heads, new, total]`.
    pub biases: &'a [Tensor<B, 4>],
}

impl Attention {
    /// The tensors this block reads, with their shapes, for hidden size `hidden`.
    pub fn tensor_specs(&self, hidden: usize) -> Vec<TensorSpec> {
        let (q_out, kv_out) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut specs = match &self.qkv {
            QkvProjection::Separate { q, k, v } => {
                let mut specs = q.specs(q_out, hidden);
                specs.extend(k.specs(kv_out, hidden));
                specs.extend(v.specs(kv_out, hidden));
                specs
            }
            QkvProjection::Stacked(qkv) | QkvProjection::PerHead(qkv) => {
                qkv.specs(q_out + 2 * kv_out, hidden)
            }
        };
        specs.extend(self.o.specs(hidden, q_out));
        if let Some(norms) = &self.head_norms {
            specs.push(TensorSpec::new(&norms.q, &[self.head_dim]));
            specs.push(TensorSpec::new(&norms.k, &[self.head_dim]));
        }
        specs
    }

    fn split_heads<B: Backend>(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, heads, self.head_dim])
            .swap_dims(1, 2)
    }

    /// q, k, v as `[batch, seq, heads * head_dim]` (k and v with KV heads).
    fn project<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        ctx: &LayerContext<'_, B>,
        x: Tensor<B, 3>,
    ) -> Result<[Tensor<B, 3>; 3]> {
        let backend = ctx.backend;
        let (q_out, kv_out) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        Ok(match &self.qkv {
            QkvProjection::Separate { q, k, v } => [
                q.forward(unit, backend, x.clone())?,
                k.forward(unit, backend, x.clone())?,
                v.forward(unit, backend, x)?,
            ],
            QkvProjection::Stacked(qkv) => {
                let fused = qkv.forward(unit, backend, x)?;
                [
                    fused.clone().narrow(2, 0, q_out),
                    fused.clone().narrow(2, q_out, kv_out),
                    fused.narrow(2, q_out + kv_out, kv_out),
                ]
            }
            QkvProjection::PerHead(qkv) => {
                let fused = qkv.forward(unit, backend, x)?;
                let [batch, seq, _] = fused.dims();
                let (d, group) = (self.head_dim, self.heads / self.kv_heads);
                let per_head: Tensor<B, 4> =
                    fused.reshape([batch, seq, self.kv_heads, (group + 2) * d]);
                let part = |start: usize, heads: usize| {
                    per_head.clone().narrow(3, start * d, heads * d).reshape([
                        batch,
                        seq,
                        self.kv_heads * heads * d,
                    ])
                };
                [part(0, group), part(group, 1), part(group + 1, 1)]
            }
        })
    }

    /// Attends the packed rows `x: [1, tokens, hidden]`, each over its own
    /// cache plus its new tokens.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        x: Tensor<B, 3>,
        inputs: AttentionInputs<'_, B>,
        ctx: &mut LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let [q, k, v] = self.project(unit, ctx, x)?;
        let q = self.split_heads(q, self.heads);
        let k = self.split_heads(k, self.kv_heads);
        let v = self.split_heads(v, self.kv_heads);
        let (q, k) = match &self.head_norms {
            Some(norms) => (
                head_norm(ctx, q, unit.vector(&norms.q)?, norms.eps)?,
                head_norm(ctx, k, unit.vector(&norms.k)?, norms.eps)?,
            ),
            None => (q, k),
        };
        let (q, k) = match inputs.rope {
            Some(rope) => (rope.apply(ctx.backend, q)?, rope.apply(ctx.backend, k)?),
            None => (q, k),
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut rows = Vec::with_capacity(ctx.pass.batch());
        for ((offset, row), (kv, bias)) in
            ctx.pass.offsets().zip(ctx.kv.iter_mut().zip(inputs.biases))
        {
            let new = |t: &Tensor<B, 4>| t.clone().narrow(2, offset, row.new);
            let (keys, values) = kv.append(ctx.backend, new(&k), new(&v))?;
            rows.push(RowKeys {
                queries: offset..offset + row.new,
                keys,
                values,
                bias,
            });
        }
        let out = ctx.backend.row_attention(q, rows, scale)?;
        self.o.forward(unit, ctx.backend, out)
    }
}

/// RMSNorm of each head of `x: [batch, heads, seq, head_dim]`.
fn head_norm<B: Backend>(
    ctx: &LayerContext<'_, B>,
    x: Tensor<B, 4>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 4>> {
    let [batch, heads, seq, head_dim] = x.dims();
    let rows = x.reshape([batch * heads, seq, head_dim]);
    Ok(ctx
        .backend
        .rms_norm(rows, weight, eps)?
        .reshape([batch, heads, seq, head_dim]))
}
