//! A sparse mixture of gated-MLP experts (Mixtral, Qwen3-MoE): the
//! router's softmax in f32 picks the top k experts of each token, their
//! weights renormalised to sum to one where the family does; each token's
//! output is the weighted sum of its experts' outputs. Only the routed experts run, and a streamed layer reads only
//! those.

use airllm_core::arch::LayerContext;
use airllm_core::store::TensorSpec;
use airllm_core::{DeviceUnit, Error, Experts, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::linear::LinearNames;
use super::mlp::GatedMlp;

/// Router and experts of one layer.
#[derive(Clone, Debug)]
pub struct SparseMoe {
    /// Router `[experts, hidden]`.
    pub router: LinearNames,
    /// The experts, in the router's order.
    pub experts: Vec<GatedMlp>,
    /// Experts each token is routed to.
    pub per_token: usize,
    /// Whether the top-k weights are renormalised to sum to one (else they
    /// stay softmax probabilities over all experts).
    pub renormalize: bool,
}

/// The experts one pass routes to: for each, the token rows it serves and
/// their routing weights.
#[derive(Debug, Default, PartialEq)]
struct Routing {
    experts: Vec<usize>,
    rows: Vec<Vec<i64>>,
    weights: Vec<Vec<f32>>,
}

/// Routes each row of router logits `[rows][experts]`: softmax, the top
/// `k` (ties to the lower index), weights renormalised over those `k` when
/// `renormalize`.
fn route(logits: &[f32], experts: usize, k: usize, renormalize: bool) -> Routing {
    let mut per_expert: Vec<(Vec<i64>, Vec<f32>)> = vec![Default::default(); experts];
    for (row, scores) in logits.chunks(experts).enumerate() {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
        let top = &order[..k];
        let kept: f32 = match renormalize {
            true => top.iter().map(|&e| exp[e] / total).sum(),
            false => 1.0,
        };
        for &e in top {
            per_expert[e].0.push(row as i64);
            per_expert[e].1.push(exp[e] / total / kept);
        }
    }
    let mut routing = Routing::default();
    for (e, (rows, weights)) in per_expert.into_iter().enumerate() {
        if !rows.is_empty() {
            routing.experts.push(e);
            routing.rows.push(rows);
            routing.weights.push(weights);
        }
    }
    routing
}

impl SparseMoe {
    /// The tensors this block reads, for hidden size `hidden`.
    pub fn tensor_specs(&self, hidden: usize) -> Vec<TensorSpec> {
        let mut specs = self.router.specs(self.experts.len(), hidden);
        specs.extend(self.expert_specs(hidden).into_iter().flatten());
        specs
    }

    /// Each expert's tensors.
    pub fn expert_specs(&self, hidden: usize) -> Vec<Vec<TensorSpec>> {
        self.experts
            .iter()
            .map(|e| e.tensor_specs(hidden))
            .collect()
    }

    /// Runs the experts on `x: [batch, seq, hidden]`.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        x: Tensor<B, 3>,
        ctx: &mut LayerContext<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let count = self.experts.len();
        let logits = ctx
            .backend
            .linear(x.clone(), unit.matrix(&self.router.weight)?)?;
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| Error::Backend(format!("reading router logits: {e:?}")))?;
        let routing = route(&logits, count, self.per_token, self.renormalize);
        let loaded = match &mut ctx.experts {
            Experts::InUnit => None,
            Experts::OnRequest(loader) => Some(loader.load(&routing.experts)?),
        };
        let device = x.device();
        let flat = x.reshape([batch * seq, hidden]);
        let mut out = Tensor::<B, 2>::zeros([batch * seq, hidden], &device);
        for (j, &expert) in routing.experts.iter().enumerate() {
            let n = routing.rows[j].len();
            let rows = Tensor::<B, 1, Int>::from_data(
                TensorData::new(routing.rows[j].clone(), [n]),
                &device,
            );
            let weights = Tensor::<B, 2>::from_data(
                TensorData::new(routing.weights[j].clone(), [n, 1]),
                &device,
            );
            let weights_unit = loaded.as_ref().map_or(unit, |units| &*units[j]);
            let input = flat.clone().select(0, rows.clone()).reshape([1, n, hidden]);
            let output = self.experts[expert].forward(weights_unit, ctx.backend, input)?;
            let output = output.reshape([n, hidden]) * weights;
            out = out.select_assign(0, rows, output, IndexingUpdateOp::Add);
        }
        Ok(out.reshape([batch, seq, hidden]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_each_row_to_its_top_k_with_renormalised_weights() {
        // Row 0 prefers experts 2 then 0; row 1 prefers 1 then 2.
        let logits = [1.0, 0.0, 2.0, 0.0, 3.0, 1.0];
        let routing = route(&logits, 3, 2, true);
        assert_eq!(routing.experts, [0, 1, 2]);
        assert_eq!(routing.rows, [vec![0], vec![1], vec![0, 1]]);
        let e = std::f32::consts::E;
        assert!((routing.weights[2][0] - e / (e + 1.0)).abs() < 1e-6);
        assert!((routing.weights[0][0] + routing.weights[2][0] - 1.0).abs() < 1e-6);
        assert!((routing.weights[1][0] - e * e / (e * e + 1.0)).abs() < 1e-6);
    }
}
