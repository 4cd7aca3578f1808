//! A source of random weights with a given unit layout, for benchmarks:
//! written unit by unit into the split layout, so the model never sits whole
//! in memory.

use airllm_core::{
    DType, HostBytes, HostTensor, HostUnit, LayerStore, StorageKind, TensorInfo, UnitInfo, UnitSpec,
};

/// Random bf16 weights for the units an architecture lists: 1-D tensors (norm
/// scales) are ones, matrices uniform in ±1/√in, reproducible from a seed.
pub struct SyntheticStore {
    units: Vec<UnitInfo>,
    seed: u64,
}

impl SyntheticStore {
    /// A store for `specs`.
    pub fn new(specs: &[UnitSpec], seed: u64) -> Self {
        let units = specs
            .iter()
            .map(|spec| {
                let tensors: Vec<TensorInfo> = spec
                    .tensors
                    .iter()
                    .map(|t| TensorInfo {
                        name: t.name.clone(),
                        kind: StorageKind::Dense(DType::BF16),
                        shape: t.shape.clone(),
                    })
                    .collect();
                let bytes = tensors
                    .iter()
                    .map(|t| 2 * t.shape.iter().product::<usize>() as u64)
                    .sum();
                UnitInfo {
                    kind: spec.kind,
                    name: spec.name.clone(),
                    location: format!("synthetic unit `{}`", spec.name),
                    tensors,
                    bytes,
                    decode_bytes: 0,
                }
            })
            .collect();
        SyntheticStore { units, seed }
    }
}

/// Random bf16 values for a tensor of `shape`.
fn random_bf16(shape: &[usize], mut state: u64) -> Vec<u8> {
    let count: usize = shape.iter().product();
    if shape.len() == 1 {
        return std::iter::repeat_n(half::bf16::ONE.to_le_bytes(), count)
            .flatten()
            .collect();
    }
    let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
    let mut bytes = Vec::with_capacity(count * 2);
    for _ in 0..count {
        // xorshift64*: fast and good enough for benchmark weights.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        let unit = bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        bytes.extend_from_slice(&half::bf16::from_f32(unit * scale).to_le_bytes());
    }
    bytes
}

impl LayerStore for SyntheticStore {
    fn describe(&self) -> String {
        "synthetic weights".into()
    }

    fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> airllm_core::Result<HostUnit> {
        let tensors = self.units[index]
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| only.is_none_or(|names| names.contains(&t.name.as_str())))
            .map(|(i, t)| {
                let seed = self.seed
                    ^ ((index as u64) << 32 | i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    | 1;
                HostTensor {
                    name: t.name.clone(),
                    kind: t.kind,
                    shape: t.shape.clone(),
                    bytes: HostBytes::from_vec(random_bf16(&t.shape, seed)),
                }
            })
            .collect();
        Ok(HostUnit::in_place(tensors))
    }

    fn verify_unit(&self, _index: usize) -> airllm_core::Result<()> {
        Ok(())
    }
}
