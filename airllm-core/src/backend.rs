//! [`ComputeBackend`]: where to compute. Owns the burn device, the compute
//! dtype and the way host bytes become device tensors; the linear op goes
//! through it so a faster kernel can replace burn's matmul per device.

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};

use crate::{Error, HostTensor, Result};

/// The dtype activations and weights are computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ComputeDType {
    /// 32-bit floats (the default).
    #[default]
    F32,
    /// 16-bit IEEE floats.
    F16,
    /// bfloat16.
    BF16,
}

impl std::str::FromStr for ComputeDType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ComputeDType::F32),
            "f16" | "float16" => Ok(ComputeDType::F16),
            "bf16" | "bfloat16" => Ok(ComputeDType::BF16),
            _ => Err(format!("unknown dtype `{s}`; use f32, f16 or bf16")),
        }
    }
}

/// A tensor decoded on the host, ready to upload (built on the reader thread
/// so the compute thread only copies it to the device).
#[derive(Debug)]
pub struct StagedTensor {
    /// Tensor name.
    pub name: String,
    /// Decoded values with their shape.
    pub data: TensorData,
}

/// A weight on the compute device.
#[derive(Clone, Debug)]
pub enum DeviceTensor<B: Backend> {
    /// A 1-D weight (norm scales, biases).
    Vector(Tensor<B, 1>),
    /// A 2-D weight `[out, in]` (projections, embeddings).
    Matrix(Tensor<B, 2>),
}

/// Where to compute: a burn device and the operations whose implementation
/// depends on it.
pub trait ComputeBackend<B: Backend>: Send + Sync {
    /// The burn device.
    fn device(&self) -> &Device<B>;

    /// A short name such as `cpu` or `wgpu:0`, for messages and reports.
    fn name(&self) -> String;

    /// Memory the device can give to the model when no budget is set.
    fn default_budget(&self) -> u64;

    /// Decodes a host tensor into uploadable data; runs on the reader thread.
    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        Ok(StagedTensor {
            name: tensor.name.clone(),
            data: TensorData::new(tensor.to_f32()?, tensor.shape.clone()),
        })
    }

    /// Copies staged data to the device; runs on the compute thread.
    fn upload(&self, staged: StagedTensor) -> Result<DeviceTensor<B>> {
        let device = self.device();
        match staged.data.shape.len() {
            1 => Ok(DeviceTensor::Vector(Tensor::from_data(staged.data, device))),
            2 => Ok(DeviceTensor::Matrix(Tensor::from_data(staged.data, device))),
            rank => Err(Error::Backend(format!(
                "tensor `{}` has rank {rank}; only 1-D and 2-D weights are supported",
                staged.name
            ))),
        }
    }

    /// `x · wᵀ` for activations `x: [batch, seq, in]` and a weight `w: [out, in]`.
    fn linear(&self, x: Tensor<B, 3>, w: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [batch, seq, inner] = x.dims();
        let out = w.dims()[0];
        x.reshape([batch * seq, inner])
            .matmul(w.clone().transpose())
            .reshape([batch, seq, out])
    }
}
