//! The gated MLP: `down(silu(gate(x)) * up(x))`, with gate and up as two
//! matrices or one fused matrix.

use airllm_core::store::TensorSpec;
use airllm_core::{ComputeBackend, DeviceUnit, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::linear::LinearNames;

/// How the gate and up projections are stored.
#[derive(Clone, Debug)]
pub enum GateUp {
    /// Two matrices.
    Separate {
        /// Gate projection (goes through SiLU).
        gate: LinearNames,
        /// Up projection.
        up: LinearNames,
    },
    /// One matrix of `2 * inner` rows: the gate's, then the up's (ChatGLM
    /// `dense_h_to_4h`).
    Fused(LinearNames),
}

/// Sizes and tensor names of a gated MLP.
#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// Inner (intermediate) width.
    pub inner: usize,
    /// Gate and up projections.
    pub gate_up: GateUp,
    /// Down projection.
    pub down: LinearNames,
}

impl GatedMlp {
    /// The tensors this block reads, with their shapes, for hidden size `hidden`.
    pub fn tensor_specs(&self, hidden: usize) -> Vec<TensorSpec> {
        let mut specs = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let mut specs = gate.specs(self.inner, hidden);
                specs.extend(up.specs(self.inner, hidden));
                specs
            }
            GateUp::Fused(gate_up) => gate_up.specs(2 * self.inner, hidden),
        };
        specs.extend(self.down.specs(hidden, self.inner));
        specs
    }

    /// Runs the MLP on `x: [batch, seq, hidden]`.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        backend: &dyn ComputeBackend<B>,
        x: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (
                gate.forward(unit, backend, x.clone())?,
                up.forward(unit, backend, x)?,
            ),
            GateUp::Fused(gate_up) => {
                let both = gate_up.forward(unit, backend, x)?;
                (
                    both.clone().narrow(2, 0, self.inner),
                    both.narrow(2, self.inner, self.inner),
                )
            }
        };
        let activated = backend.gated_silu(gate, up)?;
        self.down.forward(unit, backend, activated)
    }
}
