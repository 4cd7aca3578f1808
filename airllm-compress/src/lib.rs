//! Compression of weights for layer files: quantizers that write the block
//! kinds of `airllm_core::storage` (q8_0, q4_0 and q4_1 exactly as the
//! `gguf` package's `quants.py`, q4_k as llama.cpp's
//! `quantize_row_q4_K_ref`, nf4 as bitsandbytes' `quantize_4bit`), and a
//! lossless zstd codec for a tensor's stored bytes ([`codec`]). Depends on
//! core only: the split writer calls it, and the kernels read what it
//! writes.

pub mod codec;
mod k_quant;
mod legacy;
mod nf4;

use airllm_core::BlockKind;
use rayon::prelude::*;

/// The block kinds [`quantize`] writes.
pub const QUANTIZABLE: [BlockKind; 5] = [
    BlockKind::Q8_0,
    BlockKind::Q4_0,
    BlockKind::Q4_1,
    BlockKind::Q4_K,
    BlockKind::NF4,
];

/// Why values could not be quantized.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantizeError {
    /// The kind has no quantizer here.
    #[error("no quantizer writes {kind:?}; the quantizable kinds are {}", names(&QUANTIZABLE))]
    Unsupported {
        /// The kind asked for.
        kind: BlockKind,
    },
    /// The values do not fill whole blocks.
    #[error("{values} values are not whole blocks of {block_len} ({kind:?})")]
    NotWholeBlocks {
        /// The kind asked for.
        kind: BlockKind,
        /// How many values were given.
        values: usize,
        /// Values per block of the kind.
        block_len: usize,
    },
    /// A value is NaN or infinite: no scale represents it.
    #[error("value {index} is {value}; only finite weights can be quantized")]
    NonFinite {
        /// Its position among the values.
        index: usize,
        /// The value.
        value: f32,
    },
}

fn names(kinds: &[BlockKind]) -> String {
    let names: Vec<String> = kinds
        .iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect();
    names.join(", ")
}

/// Blocks a parallel task quantizes at least (keeps task overhead small).
const BLOCKS_PER_TASK: usize = 256;

/// `values` quantized to whole blocks of `kind`, on every core of the
/// current rayon pool. Every value must be finite, and the values must fill
/// whole blocks (a matrix's rows are quantized whole, so blocks never cross
/// rows when each row is whole blocks).
pub fn quantize(kind: BlockKind, values: &[f32]) -> Result<Vec<u8>, QuantizeError> {
    let block: fn(&[f32], &mut [u8]) = match kind {
        BlockKind::Q8_0 => legacy::q8_0,
        BlockKind::Q4_0 => legacy::q4_0,
        BlockKind::Q4_1 => legacy::q4_1,
        BlockKind::Q4_K => k_quant::q4_k,
        BlockKind::NF4 => nf4::nf4,
        _ => return Err(QuantizeError::Unsupported { kind }),
    };
    let (len, size) = (kind.block_len(), kind.block_bytes());
    if !values.len().is_multiple_of(len) {
        return Err(QuantizeError::NotWholeBlocks {
            kind,
            values: values.len(),
            block_len: len,
        });
    }
    if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(QuantizeError::NonFinite {
            index,
            value: *value,
        });
    }
    let mut out = vec![0u8; values.len() / len * size];
    values
        .par_chunks(len * BLOCKS_PER_TASK)
        .zip(out.par_chunks_mut(size * BLOCKS_PER_TASK))
        .for_each(|(values, out)| {
            for (values, out) in values.chunks_exact(len).zip(out.chunks_exact_mut(size)) {
                block(values, out);
            }
        });
    Ok(out)
}

/// The f16 bytes of `value`, rounded to nearest even (as numpy's
/// `astype(float16)` and GGML's `GGML_FP32_TO_FP16`).
fn f16_bytes(value: f32) -> [u8; 2] {
    half::f16::from_f32(value).to_le_bytes()
}

/// Packs 32 four-bit quants GGML's way: quant `j` in the low nibble of byte
/// `j`, quant `j + 16` in its high nibble.
fn pack_low_high(quants: &[u8; 32], out: &mut [u8]) {
    for (j, byte) in out[..16].iter_mut().enumerate() {
        *byte = quants[j] | (quants[j + 16] << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            quantize(BlockKind::Q6_K, &[0.0; 256]),
            Err(QuantizeError::Unsupported {
                kind: BlockKind::Q6_K
            })
        );
        assert!(quantize(BlockKind::Q6_K, &[0.0; 256])
            .unwrap_err()
            .to_string()
            .contains("q8_0, q4_0, q4_1, q4_k, nf4"));
        assert!(matches!(
            quantize(BlockKind::Q8_0, &[0.0; 33]),
            Err(QuantizeError::NotWholeBlocks { values: 33, .. })
        ));
        let mut values = vec![0.5; 64];
        values[40] = f32::NAN;
        assert!(matches!(
            quantize(BlockKind::NF4, &values),
            Err(QuantizeError::NonFinite { index: 40, .. })
        ));
    }

    /// Every kind decodes to within its step of the values, on many tasks.
    #[test]
    fn decoded_values_stay_within_a_step() {
        let values: Vec<f32> = (0..256 * 600)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 1000.0)
            .collect();
        for kind in QUANTIZABLE {
            let bytes = quantize(kind, &values).unwrap();
            let mut decoded = vec![0.0; values.len()];
            airllm_core::dequant::dequantize(kind, &bytes, &mut decoded);
            // The values span −1..1: a step of Q8_0 is 1/127, of Q4_0 1/8
            // (a positive maximum may clip by a whole step), of Q4_1 2/15
            // (half a step off at most); Q4_K adds its 6-bit scales; NF4's
            // widest gap, −1 to −0.696, is 0.304.
            let bound = match kind {
                BlockKind::Q8_0 => 1.0 / 127.0,
                BlockKind::Q4_0 | BlockKind::Q4_K => 1.0 / 8.0,
                BlockKind::Q4_1 => 1.0 / 15.0,
                _ => 0.153,
            };
            let worst = values
                .iter()
                .zip(&decoded)
                .map(|(v, d)| (v - d).abs())
                .fold(0.0, f32::max);
            assert!(worst <= bound, "{kind:?}: {worst}");
        }
    }
}
