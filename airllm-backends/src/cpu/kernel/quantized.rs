//! Few activation rows against block-quantized weights, in integers: the
//! rows are quantized once to 16-bit groups, and each weight row is dotted
//! with them group by group in its own encoding (AVX2 where the CPU has it).

use airllm_core::{BlockKind, Result};

use super::activations::{QuantizedRow, QuantizedRows};
use super::{groups, over_outputs};

/// `x · wᵀ` for `x: [rows, columns]` and `w: [outputs, columns]` of whole
/// blocks of `kind` (`bytes`); returns `[rows, outputs]`.
pub fn product(
    x: &[f32],
    rows: usize,
    kind: BlockKind,
    bytes: &[u8],
    outputs: usize,
    columns: usize,
) -> Result<Vec<f32>> {
    let quantized = QuantizedRows::new(x, rows, columns);
    let activations: Vec<QuantizedRow<'_>> = (0..rows).map(|r| quantized.row(r)).collect();
    let row_bytes = columns / kind.block_len() * kind.block_bytes();
    #[cfg(target_arch = "x86_64")]
    let simd: Option<Vec<_>> = activations
        .chunks(super::avx2::MAX_ROWS)
        .map(|x| super::avx2::RowDots::widest(kind, x))
        .collect();
    over_outputs(
        rows,
        outputs,
        || (),
        |_, index, out| {
            let row = &bytes[index * row_bytes..(index + 1) * row_bytes];
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = &simd {
                for (dots, out) in simd.iter().zip(out.chunks_mut(super::avx2::MAX_ROWS)) {
                    dots.dot(row, out);
                }
                return Ok(());
            }
            for (x, value) in activations.iter().zip(out) {
                *value = groups::row_dot(kind, row, *x);
            }
            Ok(())
        },
    )
}
