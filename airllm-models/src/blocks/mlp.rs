//! The gated MLP: `down(silu(gate(x)) * up(x))`.

use airllm_core::{ComputeBackend, DeviceUnit, Result};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::linear::LinearNames;

/// Tensor names of a gated MLP.
#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// Gate projection (goes through SiLU).
    pub gate: LinearNames,
    /// Up projection.
    pub up: LinearNames,
    /// Down projection.
    pub down: LinearNames,
}

impl GatedMlp {
    /// Runs the MLP on `x: [batch, seq, hidden]`.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        backend: &dyn ComputeBackend<B>,
        x: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        let gate = silu(self.gate.forward(unit, backend, x.clone())?);
        let up = self.up.forward(unit, backend, x)?;
        self.down.forward(unit, backend, gate * up)
    }
}
