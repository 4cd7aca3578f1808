//! Storage kinds of host tensors: dense dtypes and block-quantized layouts.
//!
//! Block kinds are described here (block length and bytes per block) so that
//! the GGUF reader, the split files, the compressor and the kernels share
//! one definition.

use std::fmt;

/// A dense element type as stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name safetensors uses for this dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// A block-quantized layout: `block_len` values stored in `block_bytes` bytes
/// (names as GGML spells them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types)]
pub enum BlockKind {
    /// 32 values: f16 scale + 32 × i8.
    Q8_0,
    /// 32 values: f16 scale + 16 bytes of 4-bit values.
    Q4_0,
    /// 32 values: f16 scale + f16 min + 16 bytes of 4-bit values.
    Q4_1,
    /// 32 values: f16 scale + 4 bytes of high bits + 16 bytes of low nibbles.
    Q5_0,
    /// 32 values: f16 scale + f16 min + 4 bytes of high bits + 16 bytes.
    Q5_1,
    /// 256-value super-block with 6-bit sub-block scales and mins.
    Q4_K,
    /// 256-value super-block, 5-bit values.
    Q5_K,
    /// 256-value super-block, 6-bit values.
    Q6_K,
    /// bitsandbytes' NormalFloat4 (AirLLM's 4-bit layout), 64 values: their
    /// absolute maximum as an f32, then 32 bytes of 4-bit indices into
    /// [`NF4_VALUES`], the first value in the high nibble (4.5 bits a value).
    NF4,
}

/// The 16 values an NF4 index stands for, times its block's absolute
/// maximum (bitsandbytes' table: the quantiles of a normal distribution,
/// scaled to −1..1, with an exact zero). The digits are bitsandbytes' own,
/// so that the two tables read alike; each is exactly an f32.
#[allow(clippy::excessive_precision)]
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

impl BlockKind {
    /// Every block kind, in declaration order.
    pub const ALL: [BlockKind; 9] = [
        BlockKind::Q8_0,
        BlockKind::Q4_0,
        BlockKind::Q4_1,
        BlockKind::Q5_0,
        BlockKind::Q5_1,
        BlockKind::Q4_K,
        BlockKind::Q5_K,
        BlockKind::Q6_K,
        BlockKind::NF4,
    ];

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            BlockKind::Q8_0
            | BlockKind::Q4_0
            | BlockKind::Q4_1
            | BlockKind::Q5_0
            | BlockKind::Q5_1 => 32,
            BlockKind::NF4 => 64,
            BlockKind::Q4_K | BlockKind::Q5_K | BlockKind::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockKind::Q8_0 => 34,
            BlockKind::Q4_0 => 18,
            BlockKind::Q4_1 => 20,
            BlockKind::Q5_0 => 22,
            BlockKind::Q5_1 => 24,
            BlockKind::Q4_K => 144,
            BlockKind::Q5_K => 176,
            BlockKind::Q6_K => 210,
            BlockKind::NF4 => 36,
        }
    }
}

impl BlockKind {
    /// Where each block keeps its floating-point factors: the byte offsets
    /// of its f16 scales (and minimum scales), or of NF4's f32 maximum, and
    /// their width in bytes (2 or 4).
    pub fn float_factors(self) -> (&'static [usize], usize) {
        match self {
            BlockKind::Q8_0 | BlockKind::Q4_0 | BlockKind::Q5_0 => (&[0], 2),
            BlockKind::Q4_1 | BlockKind::Q5_1 | BlockKind::Q4_K | BlockKind::Q5_K => (&[0, 2], 2),
            BlockKind::Q6_K => (&[208], 2),
            BlockKind::NF4 => (&[0], 4),
        }
    }
}

/// How a tensor's bytes encode its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Plain little-endian elements.
    Dense(DType),
    /// Block-quantized rows.
    Block(BlockKind),
}

impl StorageKind {
    /// Bytes that `elements` values take in this encoding; `None` when a
    /// block kind's block length does not divide `elements`.
    pub fn encoded_bytes(self, elements: usize) -> Option<usize> {
        match self {
            StorageKind::Dense(dtype) => elements.checked_mul(dtype.size()),
            StorageKind::Block(kind) => elements
                .is_multiple_of(kind.block_len())
                .then(|| elements / kind.block_len() * kind.block_bytes()),
        }
    }

    /// The first value (dense kinds) or block (block kinds, by their
    /// scales) in `bytes` that is NaN or infinite; `None` when all are
    /// finite. Reads the bits only (no decoding).
    pub fn first_non_finite(self, bytes: &[u8]) -> Option<usize> {
        // All exponent bits set: an infinity or a NaN.
        let f16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 == 0x7C00;
        let f32 =
            |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7F80_0000 == 0x7F80_0000;
        match self {
            StorageKind::Dense(DType::F32) => bytes.chunks_exact(4).position(f32),
            StorageKind::Dense(DType::F16) => bytes.chunks_exact(2).position(f16),
            StorageKind::Dense(DType::BF16) => bytes
                .chunks_exact(2)
                .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7F80 == 0x7F80),
            StorageKind::Block(kind) => {
                let (offsets, width) = kind.float_factors();
                let bad = |b: &[u8]| if width == 4 { f32(b) } else { f16(b) };
                bytes
                    .chunks_exact(kind.block_bytes())
                    .position(|block| offsets.iter().any(|&at| bad(&block[at..at + width])))
            }
        }
    }

    /// Values that are decoded together: 1 for dense kinds, the block length
    /// for block kinds. Decoded ranges start and end on multiples of it.
    pub fn granule(self) -> usize {
        match self {
            StorageKind::Dense(_) => 1,
            StorageKind::Block(kind) => kind.block_len(),
        }
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageKind::Dense(d) => write!(f, "{d:?}"),
            StorageKind::Block(b) => write!(f, "{b:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_and_scales_are_found() {
        let mut f32s: Vec<u8> = [1.0f32, 2.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            StorageKind::Dense(DType::F32).first_non_finite(&f32s),
            Some(2)
        );
        f32s.truncate(8);
        assert_eq!(StorageKind::Dense(DType::F32).first_non_finite(&f32s), None);
        let bf16 = [0x80, 0x3F, 0x80, 0xFF]; // 1.0, −inf
        assert_eq!(
            StorageKind::Dense(DType::BF16).first_non_finite(&bf16),
            Some(1)
        );
        let f16 = [0x00, 0x3C, 0x00, 0x7E]; // 1.0, NaN
        assert_eq!(
            StorageKind::Dense(DType::F16).first_non_finite(&f16),
            Some(1)
        );
        for kind in BlockKind::ALL {
            let mut blocks = vec![0u8; 3 * kind.block_bytes()];
            let kind_of = StorageKind::Block(kind);
            assert_eq!(kind_of.first_non_finite(&blocks), None, "{kind:?}");
            let (offsets, width) = kind.float_factors();
            let at = kind.block_bytes() + offsets[offsets.len() - 1];
            blocks[at + width - 2..at + width].copy_from_slice(&[0xFF, 0x7F]);
            assert_eq!(kind_of.first_non_finite(&blocks), Some(1), "{kind:?}");
        }
    }
}
