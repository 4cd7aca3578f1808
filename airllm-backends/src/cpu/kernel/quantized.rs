//! Few activation rows against block-quantized weights, in integers: the
//! rows are quantized once to 16-bit groups, and each weight row is dotted
//! with them group by group in its own encoding (AVX2 where the CPU has it).

use airllm_core::{BlockKind, Result, StorageKind};

use super::activations::{QuantizedRow, QuantizedRows};
use super::{groups, over_output_tiles, Product, ProductPath};

/// Weight rows one call of the dot loop takes. Each task's run of outputs
/// is rounded up to a multiple of it; SmolLM2's runs (48, 72, 192, 6144)
/// already are.
const TILE_OUTPUTS: usize = 8;

/// Activation rows quantized to 16-bit groups and dotted with block-quantized
/// weights in integers; `None` for weights that are not blocks.
pub struct Quantized;

impl ProductPath for Quantized {
    fn product(p: Product<'_>) -> Option<Result<Vec<f32>>> {
        match p.w.kind {
            StorageKind::Block(kind) => Some(multiply(p, kind)),
            StorageKind::Dense(_) => None,
        }
    }
}

/// The product in integers, for weights of whole blocks of `kind`.
fn multiply(p: Product<'_>, kind: BlockKind) -> Result<Vec<f32>> {
    let (x, rows, outputs, columns) = (p.x, p.rows, p.outputs, p.columns);
    let bytes = p.w.bytes.as_slice();
    let quantized = QuantizedRows::new(x, rows, columns);
    let activations: Vec<QuantizedRow<'_>> = (0..rows).map(|r| quantized.row(r)).collect();
    let row_bytes = columns / kind.block_len() * kind.block_bytes();
    #[cfg(target_arch = "x86_64")]
    let simd: Option<Vec<_>> = activations
        .chunks(super::avx2::MAX_ROWS)
        .map(|x| super::avx2::RowDots::widest(kind, x))
        .collect();
    over_output_tiles(
        rows,
        outputs,
        TILE_OUTPUTS,
        || (),
        |_, mut columns| {
            let first = columns.first();
            let weights = &bytes[first * row_bytes..(first + columns.count()) * row_bytes];
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = &simd {
                for (chunk, dots) in simd.iter().enumerate() {
                    dots.dots(weights, &mut columns, chunk * super::avx2::MAX_ROWS);
                }
                return Ok(());
            }
            for (o, row) in weights.chunks_exact(row_bytes).enumerate() {
                for (r, x) in activations.iter().enumerate() {
                    columns.set(r, o, groups::row_dot(kind, row, *x));
                }
            }
            Ok(())
        },
    )
}
