//! The backend for GPUs (wgpu and cuda), over burn's cubecl backend:
//! matrices cross to the device as stored (f16, bf16, GGML blocks, NF4),
//! as u32 words, and a CubeCL kernel ([`expand`]) expands each to the
//! compute dtype just before its matmul, so a 4-bit matrix crosses the bus
//! in a seventh of its f32 bytes. In a half compute dtype, f16 and bf16
//! matrices are made that dtype once, on the reader thread, and need no
//! expansion ([`half_precision`]). f32 matrices and vectors are uploaded as
//! f32 (and converted to the compute dtype by burn).

pub mod expand;
pub mod half_precision;

use airllm_core::{
    ComputeBackend, ComputeDType, DType, DeviceTensor, EncodedMatrix, Error, HostTensor, Result,
    StagedTensor, StorageKind, WeightLayout,
};
use burn::tensor::{Device, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::MemoryAllocationMode;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};

use crate::budget::{Budgets, DeviceMemory};

/// burn's cubecl backend over runtime `R` in f32.
pub type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

/// How [`CubeComputeBackend`] holds weights: matrices as stored, each
/// expanded before use.
pub const CUBE_WEIGHT_LAYOUT: WeightLayout = WeightLayout::MatricesExpandedOnUse;

/// A cubecl device (wgpu or cuda) whose matrices stay in their stored
/// encoding on the device until used.
pub struct CubeComputeBackend<R: CubeRuntime, BT: BoolElement> {
    device: Device<Cube<R, BT>>,
    name: String,
    budgets: Budgets,
    dtype: ComputeDType,
}

impl<R: CubeRuntime, BT: BoolElement> CubeComputeBackend<R, BT> {
    /// Wraps `device` under a display name, its default budgets set by the
    /// memory it computes in, computing in `dtype` (which the device's
    /// float default must already be, see `dispatch`).
    pub fn new(
        device: Device<Cube<R, BT>>,
        name: String,
        memory: DeviceMemory,
        dtype: ComputeDType,
    ) -> Self {
        let budgets = Budgets::for_device(memory, airllm_core::memory::default_host_budget());
        tracing::info!(device = %name, "{}", budgets.describe(memory));
        CubeComputeBackend {
            device,
            name,
            budgets,
            dtype,
        }
    }

    /// `matrix` expanded to the compute dtype by the kernel of its encoding.
    fn expand_encoded(
        &self,
        matrix: &EncodedMatrix<Cube<R, BT>>,
    ) -> Result<Tensor<Cube<R, BT>, 2>> {
        let words: CubeTensor<R> = matrix.words.clone().into_primitive();
        let [rows, columns] = matrix.shape;
        let elements = rows * columns;
        let expected_words = matrix
            .kind
            .encoded_bytes(elements)
            .map(|bytes| bytes.div_ceil(4));
        let word_count = words.meta.num_elements();
        if expected_words != Some(word_count) {
            return Err(Error::Backend(format!(
                "`{}` ({:?}, {rows}×{columns}) has {word_count} words on the device, not {expected_words:?}",
                matrix.name, matrix.kind
            )));
        }
        let client = words.client.clone();
        let out = empty_device_contiguous_dtype(
            client.clone(),
            words.device.clone(),
            Shape::new([rows, columns]),
            self.dtype.burn_dtype(),
        );
        expand::launch(
            &client,
            self.dtype,
            matrix.kind,
            elements,
            words.into_array_arg(),
            out.clone().into_array_arg(),
        )
        .map_err(|e| Error::Backend(format!("expanding `{}`: {e}", matrix.name)))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }
}

impl<R: CubeRuntime, BT: BoolElement> ComputeBackend<Cube<R, BT>> for CubeComputeBackend<R, BT> {
    fn device(&self) -> &Device<Cube<R, BT>> {
        &self.device
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn default_budget(&self) -> u64 {
        self.budgets.device
    }

    fn default_host_budget(&self) -> u64 {
        self.budgets.host_tier
    }

    fn dtype(&self) -> ComputeDType {
        self.dtype
    }

    fn weight_layout(&self) -> WeightLayout {
        CUBE_WEIGHT_LAYOUT
    }

    fn memory_in_use(&self) -> Option<u64> {
        R::client(&self.device)
            .memory_usage()
            .ok()
            .map(|usage| usage.bytes_reserved)
    }

    fn allocate_exactly(&self) {
        // SAFETY: the mode is the calling thread's stream's own, and the
        // engine gives back what it leaves unused after each pass
        // (`release_unused`), so exact-sized buffers do not pile up.
        unsafe { R::client(&self.device).allocation_mode(MemoryAllocationMode::Persistent) }
    }

    fn release_unused(&self) {
        R::client(&self.device).memory_cleanup();
    }

    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        let matrix = tensor.shape.len() == 2;
        match (tensor.kind, self.dtype) {
            (
                StorageKind::Dense(stored @ (DType::F16 | DType::BF16)),
                ComputeDType::F16 | ComputeDType::BF16,
            ) if matrix => half_precision::stage_in_half(tensor, stored, self.dtype),
            (kind, _) if matrix && expand::expands_on_device(kind) => StagedTensor::encoded(tensor),
            _ => crate::stage_widened(tensor),
        }
    }

    fn expand(&self, w: &DeviceTensor<Cube<R, BT>>) -> Result<Tensor<Cube<R, BT>, 2>> {
        match w {
            DeviceTensor::Encoded(matrix) => self.expand_encoded(matrix),
            other => airllm_core::backend::widened_matrix(other, &self.device),
        }
    }
}
