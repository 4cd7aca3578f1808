//! A projection by name: the backend's linear op plus an optional bias.

use airllm_core::store::TensorSpec;
use airllm_core::{ComputeBackend, DeviceUnit, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Tensor names of one projection.
#[derive(Clone, Debug)]
pub struct LinearNames {
    /// The `[out, in]` weight.
    pub weight: String,
    /// The `[out]` bias, when the model has one.
    pub bias: Option<String>,
}

impl LinearNames {
    /// Names `{prefix}.weight` and, with `bias`, `{prefix}.bias`.
    pub fn new(prefix: &str, bias: bool) -> Self {
        LinearNames {
            weight: format!("{prefix}.weight"),
            bias: bias.then(|| format!("{prefix}.bias")),
        }
    }

    /// The weight `[out, inner]` and bias `[out]` this projection reads.
    pub fn specs(&self, out: usize, inner: usize) -> Vec<TensorSpec> {
        let mut specs = vec![TensorSpec::new(&self.weight, &[out, inner])];
        if let Some(bias) = &self.bias {
            specs.push(TensorSpec::new(bias, &[out]));
        }
        specs
    }

    /// `x · Wᵀ (+ b)`.
    pub fn forward<B: Backend>(
        &self,
        unit: &DeviceUnit<B>,
        backend: &dyn ComputeBackend<B>,
        x: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        let y = backend.linear(x, unit.matrix(&self.weight)?)?;
        Ok(match &self.bias {
            Some(bias) => y + unit.vector(bias)?.clone().unsqueeze::<3>(),
            None => y,
        })
    }
}
