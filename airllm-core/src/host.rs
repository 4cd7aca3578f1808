//! Tensors in host memory as a store hands them over: raw bytes (owned, or a
//! window into a memory map), a storage kind and a logical shape.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::{DType, Error, Result, StorageKind};

/// Bytes shared with their owner (a `Vec<u8>`, a memory map, ...), viewed
/// through a byte range. Cloning shares the owner; dropping the last view
/// releases it (for a memory map: unmaps it, so its pages leave the RSS).
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl HostBytes {
    /// A view of `range` inside `owner`. Fails when the range runs past the
    /// end of the owner's bytes.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(HostBytes { owner, range })
    }

    /// Takes ownership of a vector.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        HostBytes {
            owner: Arc::new(bytes),
            range: 0..len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBytes({} bytes)", self.len())
    }
}

/// One tensor in host memory.
#[derive(Clone, Debug)]
pub struct HostTensor {
    /// Tensor name as the architecture knows it.
    pub name: String,
    /// Encoding of `bytes`.
    pub kind: StorageKind,
    /// Logical shape (row-major).
    pub shape: Vec<usize>,
    /// The encoded values.
    pub bytes: HostBytes,
}

impl HostTensor {
    /// Number of logical elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Decodes the values to f32 (the host-side widening that feeds the
    /// compute device). Block kinds are decoded by the crates that own them.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.elements()];
        self.decode_range(0, &mut out)?;
        Ok(out)
    }

    /// Decodes `out.len()` values starting at element `start` (a row of a
    /// matrix, say) into `out`. For block kinds both must be multiples of
    /// the block length (rows of GGUF matrices always are).
    pub fn decode_range(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let granule = self.kind.granule();
        let end = start + out.len();
        let byte_range = match (start % granule, end % granule) {
            (0, 0) => self
                .kind
                .encoded_bytes(start)
                .zip(self.kind.encoded_bytes(end)),
            _ => None,
        }
        .filter(|(_, to)| *to <= self.bytes.len());
        let Some((from, to)) = byte_range else {
            return Err(Error::UnsupportedStorage {
                tensor: self.name.clone(),
                kind: self.kind.to_string(),
                detail: format!(
                    "values {start}..{end} are not whole blocks inside its {} bytes",
                    self.bytes.len()
                ),
            });
        };
        let bytes = &self.bytes.as_slice()[from..to];
        match self.kind {
            StorageKind::Dense(dtype) => decode_dense(dtype, bytes, out),
            StorageKind::Block(kind) => crate::dequant::dequantize(kind, bytes, out),
        }
        Ok(())
    }
}

/// Widens little-endian `dtype` values in `bytes` into `out` (equal counts).
/// Aligned input takes a path the compiler vectorizes.
fn decode_dense(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(values) => out.copy_from_slice(values),
            Err(_) => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        DType::BF16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            Ok(bits) => {
                for (o, b) in out.iter_mut().zip(bits) {
                    *o = f32::from_bits((*b as u32) << 16);
                }
            }
            Err(_) => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
        },
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

/// The tensors of one unit (embedding, one decoder layer, or the head).
#[derive(Debug, Default)]
pub struct HostUnit {
    /// The unit's tensors, in the order the store listed them.
    pub tensors: Vec<HostTensor>,
    /// Bytes read from storage for them: their bytes, or fewer when the
    /// store keeps them compressed.
    pub stored_bytes: u64,
    /// Time spent decompressing them (zero when read in place).
    pub decompress: Duration,
}

impl HostUnit {
    /// Tensors read in place: the bytes stored are their bytes.
    pub fn in_place(tensors: Vec<HostTensor>) -> Self {
        HostUnit {
            stored_bytes: tensors.iter().map(|t| t.bytes.len() as u64).sum(),
            tensors,
            decompress: Duration::ZERO,
        }
    }

    /// Total encoded bytes.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes.len() as u64).sum()
    }
}
