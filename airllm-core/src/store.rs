//! [`LayerStore`]: where weights live, listed as units and read one unit at a time.

use std::collections::BTreeSet;

use crate::{ComputeDType, DType, Error, HostUnit, Result, StorageKind};

/// The role of a unit in the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Token embedding.
    Embedding,
    /// Decoder layer `n` (0-based).
    Layer(usize),
    /// Final norm and LM head.
    Head,
}

impl UnitKind {
    /// Whether a tensor of `rank` in a unit of this kind stays in host
    /// memory as stored on every backend: the embedding table, of which a
    /// pass uploads only the rows it looks up
    /// ([`ComputeBackend::embedding`](crate::ComputeBackend::embedding)).
    pub fn stays_on_host(self, rank: usize) -> bool {
        self == UnitKind::Embedding && rank == 2
    }
}

/// A tensor an architecture needs, with the shape its config implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the model's own on-disk naming.
    pub name: String,
    /// Expected logical shape.
    pub shape: Vec<usize>,
}

/// A unit as the architecture defines it: its role, a short name used in file
/// names and messages, and the tensors it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    /// Role in the pass.
    pub kind: UnitKind,
    /// Short name, e.g. `embed`, `layer.007`, `head`.
    pub name: String,
    /// Tensors the unit needs.
    pub tensors: Vec<TensorSpec>,
    /// For a mixture-of-experts layer, the names of each routed expert's
    /// tensors (also listed in `tensors`). A streamed pass reads the other
    /// tensors first and then only the experts its router picks.
    pub experts: Vec<Vec<String>>,
    /// For a mixture-of-experts layer, its router's weight: a split keeps
    /// it in a float dtype whatever its compression (its logits pick the
    /// experts; llama.cpp does not quantize `ffn_gate_inp` either).
    pub routers: Vec<String>,
}

impl UnitSpec {
    /// Whether tensor `name` belongs to a routed expert.
    pub fn is_expert_tensor(&self, name: &str) -> bool {
        self.experts.iter().flatten().any(|t| t == name)
    }

    /// The tensors every pass reads: all of them but the experts'.
    pub fn shared_tensors(&self) -> Vec<&str> {
        self.tensors
            .iter()
            .map(|t| t.name.as_str())
            .filter(|name| !self.is_expert_tensor(name))
            .collect()
    }
}

impl TensorSpec {
    /// A tensor `name` of logical shape `shape`.
    pub fn new(name: &str, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
        }
    }
}

/// A tensor as a store holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Storage kind on disk.
    pub kind: StorageKind,
    /// Logical shape.
    pub shape: Vec<usize>,
}

/// A unit as a store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// Role in the pass.
    pub kind: UnitKind,
    /// Short name.
    pub name: String,
    /// Where it lives (file path), for messages.
    pub location: String,
    /// Its tensors.
    pub tensors: Vec<TensorInfo>,
    /// Bytes read to load it.
    pub bytes: u64,
    /// Host bytes held while it is decoded, besides its tensors: its
    /// compressed frames and the decoder's scratch (0 for a unit read in
    /// place).
    pub decode_bytes: u64,
}

/// How a backend holds weights once uploaded, which sets what a unit costs
/// in the residency plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// Every tensor widened to f32 on the device.
    Widened,
    /// Matrices kept in their stored encoding (a bf16 or Q4_1 matrix costs
    /// its file bytes); vectors widened to f32.
    MatricesAsStored,
    /// Matrices kept in their stored encoding and expanded to the compute
    /// dtype one at a time when used (wgpu, cuda): each costs its file
    /// bytes, and the expansion needs a buffer per size of matrix in the
    /// unit that needs the most ([`WeightLayout::expansion_bytes`]).
    MatricesExpandedOnUse,
}

impl WeightLayout {
    /// Device bytes for expanding matrices before use under
    /// [`WeightLayout::MatricesExpandedOnUse`] (nothing under the other
    /// layouts): the most any unit needs, a buffer for each size of matrix
    /// it expands, in `dtype` (one expansion is dropped before the next,
    /// and the device reuses a buffer for the next matrix of its size, see
    /// [`ComputeBackend::allocate_exactly`](crate::ComputeBackend::allocate_exactly)).
    /// Matrices stored in f32 need no expansion, nor, when the compute
    /// dtype is a half one, those stored in f16 or bf16 (made the compute
    /// dtype once, at upload).
    pub fn expansion_bytes(self, units: &[UnitInfo], dtype: ComputeDType) -> u64 {
        if self != WeightLayout::MatricesExpandedOnUse {
            return 0;
        }
        let expanded = |kind: StorageKind| match kind {
            StorageKind::Dense(DType::F32) => false,
            StorageKind::Dense(_) => dtype == ComputeDType::F32,
            StorageKind::Block(_) => true,
        };
        units
            .iter()
            .map(|unit| {
                let sizes: BTreeSet<u64> = unit
                    .tensors
                    .iter()
                    .filter(|t| {
                        t.shape.len() == 2 && !unit.kind.stays_on_host(2) && expanded(t.kind)
                    })
                    .map(|t| t.elements().saturating_mul(dtype.bytes()))
                    .collect();
                sizes.into_iter().fold(0u64, u64::saturating_add)
            })
            .max()
            .unwrap_or(0)
    }
}

/// The number of values of a tensor of `shape`; `None` past `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl TensorInfo {
    /// Number of logical values (saturating: stores check shapes against
    /// their bytes, so only a corrupt shape gets there).
    pub fn elements(&self) -> u64 {
        element_count(&self.shape).map_or(u64::MAX, |n| n as u64)
    }

    /// Bytes the tensor takes once uploaded under `layout`.
    pub fn device_bytes(&self, layout: WeightLayout) -> u64 {
        let widened = self.elements().saturating_mul(4);
        match layout {
            WeightLayout::MatricesAsStored | WeightLayout::MatricesExpandedOnUse
                if self.shape.len() == 2 =>
            {
                self.kind
                    .encoded_bytes(self.elements() as usize)
                    .map_or(widened, |b| b as u64)
            }
            _ => widened,
        }
    }
}

impl UnitInfo {
    /// Bytes the unit takes once uploaded under `layout` (none for what
    /// stays on the host, see [`UnitKind::stays_on_host`]).
    pub fn device_bytes(&self, layout: WeightLayout) -> u64 {
        self.tensors
            .iter()
            .filter(|t| !self.kind.stays_on_host(t.shape.len()))
            .map(|t| t.device_bytes(layout))
            .fold(0, u64::saturating_add)
    }

    /// Bytes its tensors named in `names` take once uploaded under `layout`.
    pub fn device_bytes_of<S: AsRef<str>>(&self, names: &[S], layout: WeightLayout) -> u64 {
        self.tensors
            .iter()
            .filter(|t| names.iter().any(|n| n.as_ref() == t.name))
            .map(|t| t.device_bytes(layout))
            .fold(0, u64::saturating_add)
    }
}

/// Where weights live. Implementations: a Hugging Face directory read in
/// place, the split per-layer layout, GGUF.
pub trait LayerStore: Send + Sync {
    /// A human-readable description of the source (its path).
    fn describe(&self) -> String;

    /// The units, in forward order.
    fn units(&self) -> &[UnitInfo];

    /// Reads unit `index`: all its tensors, or only those named in `only`.
    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> Result<HostUnit>;

    /// Checks unit `index` against its recorded checksum. Stores without
    /// checksums only check sizes.
    fn verify_unit(&self, index: usize) -> Result<()>;
}

/// Checks that a store's units carry every tensor the architecture expects,
/// with the expected shapes; errors name the tensor and the file.
pub fn check_units(store: &[UnitInfo], expected: &[UnitSpec]) -> Result<()> {
    if store.len() != expected.len() {
        return Err(Error::Corrupt {
            location: "the weight store".into(),
            detail: format!(
                "it lists {} units, the config implies {}",
                store.len(),
                expected.len()
            ),
            remedy: "Re-split the model from its original directory.".into(),
        });
    }
    for (unit, spec) in store.iter().zip(expected) {
        for want in &spec.tensors {
            let found = unit
                .tensors
                .iter()
                .find(|t| t.name == want.name)
                .ok_or_else(|| Error::MissingTensor {
                    tensor: want.name.clone(),
                    location: unit.location.clone(),
                })?;
            if found.shape != want.shape {
                return Err(Error::ShapeMismatch {
                    tensor: want.name.clone(),
                    location: unit.location.clone(),
                    expected: want.shape.clone(),
                    found: found.shape.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockKind;

    fn tensor(name: &str, kind: StorageKind, shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            kind,
            shape: shape.to_vec(),
        }
    }

    fn unit(kind: UnitKind, tensors: Vec<TensorInfo>) -> UnitInfo {
        UnitInfo {
            kind,
            name: format!("{kind:?}"),
            location: String::new(),
            tensors,
            bytes: 0,
            decode_bytes: 0,
        }
    }

    #[test]
    fn matrices_expanded_on_use_cost_their_bytes_and_a_buffer_per_size() {
        let q4 = StorageKind::Block(BlockKind::Q4_0);
        let units = [
            // The embedding table stays on the host: never expanded.
            unit(UnitKind::Embedding, vec![tensor("embed", q4, &[1000, 64])]),
            unit(
                UnitKind::Layer(0),
                vec![
                    tensor("up", q4, &[128, 64]),
                    // Expanded after `up` is dropped, into its buffer.
                    tensor("up2", q4, &[128, 64]),
                    tensor("down", StorageKind::Dense(DType::BF16), &[64, 192]),
                    // f32 matrices are uploaded as they are.
                    tensor("gate", StorageKind::Dense(DType::F32), &[256, 64]),
                    tensor("norm", StorageKind::Dense(DType::BF16), &[64]),
                ],
            ),
            // Smaller matrices than layer 0's together.
            unit(UnitKind::Head, vec![tensor("head", q4, &[160, 64])]),
        ];
        let layout = WeightLayout::MatricesExpandedOnUse;
        // Q4_0: 18 bytes per 32 values; bf16 2 bytes, f32 4; vectors in f32.
        assert_eq!(
            units[1].device_bytes(layout),
            2 * 128 * 64 / 32 * 18 + 64 * 192 * 2 + 256 * 64 * 4 + 64 * 4
        );
        let f32 = ComputeDType::F32;
        // A buffer for `up` (and `up2`) and one for `down`.
        assert_eq!(
            layout.expansion_bytes(&units, f32),
            (128 * 64 + 64 * 192) * 4
        );
        // In f16 the bf16 matrix is made f16 at upload: only blocks expand,
        // and the head's one matrix is then the most.
        assert_eq!(
            layout.expansion_bytes(&units, ComputeDType::F16),
            160 * 64 * 2
        );
        assert_eq!(
            WeightLayout::MatricesAsStored.expansion_bytes(&units, f32),
            0
        );
        assert_eq!(WeightLayout::Widened.expansion_bytes(&units, f32), 0);
    }
}
