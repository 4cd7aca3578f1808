//! Matrices stored in f16 or bf16, staged for a device computing in a half
//! dtype: in that dtype, 16 bits a value across the bus and on the device,
//! and never expanded again (f16 stays f16, bf16 stays bf16; the other is
//! converted on the reader thread).

use airllm_core::{ComputeDType, DType, Error, HostTensor, Result, StagedTensor};
use burn::tensor::TensorData;
use half::{bf16, f16};

/// The largest finite f16, 65504: a bf16 weight beyond it has no f16.
const F16_MAX: f32 = 65504.0;

/// `tensor`, stored as `stored` (f16 or bf16), in `dtype` (f16 or bf16).
/// A bf16 value beyond f16's range is an error naming the tensor.
pub fn stage_in_half(
    tensor: &HostTensor,
    stored: DType,
    dtype: ComputeDType,
) -> Result<StagedTensor> {
    let bits = tensor
        .bytes
        .as_slice()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    let data = match (stored, dtype) {
        (DType::F16, ComputeDType::F16) => half_data(tensor, bits.map(f16::from_bits).collect()),
        (DType::BF16, ComputeDType::BF16) => half_data(tensor, bits.map(bf16::from_bits).collect()),
        (DType::F16, ComputeDType::BF16) => half_data(
            tensor,
            bits.map(|b| bf16::from_f32(f16::from_bits(b).to_f32()))
                .collect(),
        ),
        (DType::BF16, ComputeDType::F16) => {
            let mut values = Vec::with_capacity(tensor.elements());
            for (i, b) in bits.enumerate() {
                let value = bf16::from_bits(b).to_f32();
                if value.abs() > F16_MAX || value.is_nan() {
                    return Err(beyond_f16(tensor, i, value));
                }
                values.push(f16::from_f32(value));
            }
            half_data(tensor, values)
        }
        (stored, dtype) => {
            return Err(Error::Backend(format!(
                "`{}`: no half staging from {stored:?} to {dtype}",
                tensor.name
            )))
        }
    };
    Ok(StagedTensor::Decoded {
        name: tensor.name.clone(),
        data,
    })
}

fn half_data<E: burn::tensor::Element>(tensor: &HostTensor, values: Vec<E>) -> TensorData {
    TensorData::new(values, tensor.shape.clone())
}

/// The error for bf16 value `value` at `index` of `tensor`, which f16
/// cannot hold.
fn beyond_f16(tensor: &HostTensor, index: usize, value: f32) -> Error {
    Error::UnsupportedStorage {
        tensor: tensor.name.clone(),
        kind: "bf16".into(),
        detail: format!(
            "holds {value} at element {index}, beyond f16's range (±65504); compute in f32 \
             (--dtype f32), or in bf16 on cuda (--dtype bf16)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airllm_core::{HostBytes, StorageKind};

    fn bf16_matrix(values: &[f32]) -> HostTensor {
        let bytes = values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        HostTensor {
            name: "layers.0.mlp.down_proj.weight".into(),
            kind: StorageKind::Dense(DType::BF16),
            shape: vec![2, values.len() / 2],
            bytes: HostBytes::from_vec(bytes),
        }
    }

    #[test]
    fn bf16_beyond_f16_is_an_error_naming_the_tensor() {
        let tensor = bf16_matrix(&[1.0, -2.5, 70000.0, 3.0]);
        let err = stage_in_half(&tensor, DType::BF16, ComputeDType::F16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layers.0.mlp.down_proj.weight")
                && err.contains("element 2")
                && err.contains("65504")
                && err.contains("--dtype f32"),
            "{err}"
        );
        // In bf16 it is kept as stored.
        let staged = stage_in_half(&tensor, DType::BF16, ComputeDType::BF16).unwrap();
        assert_eq!(staged.upload_bytes(), 8);
    }

    #[test]
    fn bf16_within_range_becomes_f16() {
        // 65280 is the largest bf16 within f16's range.
        let tensor = bf16_matrix(&[1.0, -2.5, 65280.0, 0.1]);
        let StagedTensor::Decoded { data, .. } =
            stage_in_half(&tensor, DType::BF16, ComputeDType::F16).unwrap()
        else {
            panic!("decoded")
        };
        let values: Vec<f16> = data.into_vec().unwrap();
        let expected: Vec<f16> = [1.0, -2.5, 65280.0, bf16::from_f32(0.1).to_f32()]
            .into_iter()
            .map(f16::from_f32)
            .collect();
        assert_eq!(values, expected);
    }
}
