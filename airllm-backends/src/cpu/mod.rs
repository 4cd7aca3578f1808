//! The CPU backend: burn's flex for everything but the linear op, which reads
//! matrices straight from their memory-mapped encoding (f32, bf16, f16 or
//! GGUF's quantized blocks) in [`kernel`]. Nothing is copied or widened on
//! upload, and a bf16 model moves half the bytes through memory per token
//! that an f32 copy would (a Q4_1 model a sixth).

pub mod kernel;

use airllm_core::backend::{DeviceTensor, StagedTensor};
use airllm_core::{ComputeBackend, Error, HostTensor, Result, WeightLayout};
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::{Tensor, TensorData};

use crate::Activations;

/// Matrices stay in their stored encoding (see [`CpuBackend::stage`]).
pub const CPU_WEIGHT_LAYOUT: WeightLayout = WeightLayout::MatricesAsStored;

/// burn's flex device with the matrix-product kernel of [`kernel`].
pub struct CpuBackend {
    device: FlexDevice,
    activations: Activations,
}

impl CpuBackend {
    /// The CPU device, quantizing activations for block-quantized weights
    /// as `activations` says.
    pub fn new(activations: Activations) -> Self {
        CpuBackend {
            device: FlexDevice,
            activations,
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new(Activations::default())
    }
}

impl ComputeBackend<Flex> for CpuBackend {
    fn device(&self) -> &FlexDevice {
        &self.device
    }

    fn name(&self) -> String {
        "cpu".into()
    }

    fn default_budget(&self) -> u64 {
        airllm_core::memory::default_host_budget()
    }

    fn weight_layout(&self) -> WeightLayout {
        CPU_WEIGHT_LAYOUT
    }

    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        match (tensor.shape.len(), tensor.kind) {
            (2, _) => Ok(StagedTensor::Host(tensor.clone())),
            _ => StagedTensor::decode(tensor),
        }
    }

    fn linear(&self, x: Tensor<Flex, 3>, w: &DeviceTensor<Flex>) -> Result<Tensor<Flex, 3>> {
        let DeviceTensor::Host(w) = w else {
            return Err(Error::Backend(
                "the cpu backend keeps matrices on the host".into(),
            ));
        };
        let [batch, seq, _] = x.dims();
        let (outputs, _) = kernel::matrix_shape(w)?;
        let input: Vec<f32> = x
            .into_data()
            .into_vec()
            .map_err(|e| Error::Backend(format!("reading activations: {e:?}")))?;
        let product = kernel::linear(&input, batch * seq, w, self.activations)?;
        Ok(Tensor::from_data(
            TensorData::new(product, [batch, seq, outputs]),
            &self.device,
        ))
    }
}
