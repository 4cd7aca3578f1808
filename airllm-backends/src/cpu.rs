//! The CPU backend: burn's flex for everything but the linear op, which reads
//! matrices straight from their memory-mapped encoding (f32, bf16, f16 or
//! GGUF's quantized blocks), widening or decoding inside the kernel; for one
//! or two input rows, Q8_0/Q4_0/Q4_1 rows are dotted without decoding them.
//! Nothing is copied or widened on upload, and a bf16 model moves half the
//! bytes through memory per token that an f32 copy would (a Q4_1 model a
//! sixth).

use airllm_core::backend::{DeviceTensor, StagedTensor};
use airllm_core::{
    dequant, BlockKind, ComputeBackend, Error, HostTensor, Result, StorageKind, WeightLayout,
};
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Matrices stay in their stored encoding (see [`CpuBackend::stage`]).
pub const CPU_WEIGHT_LAYOUT: WeightLayout = WeightLayout::MatricesAsStored;

/// Input rows up to which block-quantized weights are dotted in their
/// encoding; above it, decoding each weight row once and reusing it for
/// every input row is cheaper.
const MAX_FUSED_ROWS: usize = 2;

/// Output columns one task computes at least (keeps task overhead small).
const MIN_COLUMNS_PER_TASK: usize = 64;

/// burn's flex device with the skinny-product kernel below.
pub struct CpuBackend {
    device: FlexDevice,
}

impl CpuBackend {
    /// The CPU device.
    pub fn new() -> Self {
        CpuBackend { device: FlexDevice }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
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
        let [batch, seq, inner] = x.dims();
        let (outputs, columns) = matrix_shape(w)?;
        if columns != inner {
            return Err(Error::Backend(format!(
                "`{}` has {columns} columns, the input has {inner}",
                w.name
            )));
        }
        let rows = batch * seq;
        let input: Vec<f32> = x
            .into_data()
            .into_vec()
            .map_err(|e| Error::Backend(format!("reading activations: {e:?}")))?;
        let product = skinny_product(&input, rows, w, outputs, columns)?;
        Ok(Tensor::from_data(
            TensorData::new(product, [batch, seq, outputs]),
            &self.device,
        ))
    }
}

fn matrix_shape(w: &HostTensor) -> Result<(usize, usize)> {
    match w.shape[..] {
        [outputs, columns] => Ok((outputs, columns)),
        _ => Err(Error::Backend(format!(
            "tensor `{}` is not a matrix",
            w.name
        ))),
    }
}

/// `x · wᵀ` for `x: [rows, columns]` (f32) and `w: [outputs, columns]` in its
/// stored encoding; returns `[rows, outputs]`. Each weight row is widened
/// once into a small buffer and dotted with every input row, so the weight
/// bytes stream through memory once per call whatever the batch.
fn skinny_product(
    x: &[f32],
    rows: usize,
    w: &HostTensor,
    outputs: usize,
    columns: usize,
) -> Result<Vec<f32>> {
    let threads = rayon::current_num_threads().max(1);
    let per_task = outputs.div_ceil(threads * 4).max(MIN_COLUMNS_PER_TASK);
    // Transposed result: each task owns a contiguous run of outputs.
    let mut transposed = vec![0.0f32; outputs * rows];
    let fused = match w.kind {
        StorageKind::Block(kind) if rows <= MAX_FUSED_ROWS => Some(kind),
        _ => None,
    };
    transposed
        .par_chunks_mut(per_task * rows)
        .enumerate()
        .try_for_each(|(task, out)| -> Result<()> {
            let mut row = vec![0.0f32; columns];
            let first = task * per_task;
            for (offset, out) in out.chunks_mut(rows).enumerate() {
                let index = first + offset;
                if let Some(kind) = fused {
                    if fused_dots(kind, w, index, columns, x, out) {
                        continue;
                    }
                }
                w.decode_range(index * columns, &mut row)?;
                dot_rows(x, &row, out);
            }
            Ok(())
        })?;
    let mut product = vec![0.0f32; rows * outputs];
    for (o, column) in transposed.chunks(rows).enumerate() {
        for (r, value) in column.iter().enumerate() {
            product[r * outputs + o] = *value;
        }
    }
    Ok(product)
}

/// `out[r] = x[r] · w[index]` computed on the encoded blocks of weight row
/// `index`; false where the kind has no fused dot on this CPU.
fn fused_dots(
    kind: BlockKind,
    w: &HostTensor,
    index: usize,
    columns: usize,
    x: &[f32],
    out: &mut [f32],
) -> bool {
    let row_bytes = columns / kind.block_len() * kind.block_bytes();
    let row = &w.bytes.as_slice()[index * row_bytes..(index + 1) * row_bytes];
    for (r, value) in out.iter_mut().enumerate() {
        match dequant::dot(kind, row, &x[r * columns..(r + 1) * columns]) {
            Some(dot) => *value = dot,
            None => return false,
        }
    }
    true
}

/// `out[r] = x[r] · row` for every row `r` of `x` (`out.len()` rows of
/// `row.len()` values), with AVX2 and FMA where the CPU has them.
fn dot_rows(x: &[f32], row: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { dot_rows_avx2_fma(x, row, out) };
    }
    dot_rows_with::<false>(x, row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2_fma(x: &[f32], row: &[f32], out: &mut [f32]) {
    dot_rows_with::<true>(x, row, out);
}

#[inline(always)]
fn dot_rows_with<const FMA: bool>(x: &[f32], row: &[f32], out: &mut [f32]) {
    let columns = row.len();
    for (r, value) in out.iter_mut().enumerate() {
        *value = dot::<FMA>(&x[r * columns..(r + 1) * columns], row);
    }
}

/// Dot product with sixteen independent accumulators (vectorizes); `FMA`
/// fuses multiply and add, which is only fast where the CPU has FMA.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let split = a.len() - a.len() % LANES;
    let (a_body, a_rest) = a.split_at(split);
    let (b_body, b_rest) = b.split_at(split);
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for i in 0..LANES {
            lanes[i] = if FMA {
                x[i].mul_add(y[i], lanes[i])
            } else {
                lanes[i] + x[i] * y[i]
            };
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use airllm_core::{DType, HostBytes};

    fn host(values: &[f32], shape: [usize; 2], dtype: DType) -> HostTensor {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        HostTensor {
            name: "w".into(),
            kind: StorageKind::Dense(dtype),
            shape: shape.to_vec(),
            bytes: HostBytes::from_vec(bytes),
        }
    }

    #[test]
    fn matches_a_plain_product_for_every_dtype() {
        let (rows, outputs, columns) = (3, 130, 19);
        let x: Vec<f32> = (0..rows * columns)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0)
            .collect();
        let w: Vec<f32> = (0..outputs * columns)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 16.0)
            .collect();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let got = skinny_product(
                &x,
                rows,
                &host(&w, [outputs, columns], dtype),
                outputs,
                columns,
            )
            .unwrap();
            for r in 0..rows {
                for o in 0..outputs {
                    let want: f32 = (0..columns)
                        .map(|c| x[r * columns + c] * w[o * columns + c])
                        .sum();
                    assert!(
                        (got[r * outputs + o] - want).abs() < 1e-4,
                        "{dtype:?} [{r},{o}]"
                    );
                }
            }
        }
    }
}
