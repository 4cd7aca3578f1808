//! Three or more activation rows: panels of weight rows are decoded once
//! into an f32 buffer that stays in cache, and the `gemm` crate's
//! register-blocked micro-kernels multiply every activation row with the
//! panel. Panels run in parallel; an f32 matrix whose bytes are aligned is
//! multiplied where it lies.

use airllm_core::Result;
use rayon::prelude::*;

use super::{decode, f32_in_place, Output, Product};

/// Bytes of decoded weights one panel holds at most (fits in L2 with room
/// for the activations' packed tiles).
const PANEL_BYTES: usize = 512 * 1024;

/// Weight rows per panel, a multiple of 16, at least 16: small enough that
/// every thread gets several panels and a panel stays in cache.
fn panel_rows(outputs: usize, columns: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_cache = PANEL_BYTES / (4 * columns.max(1));
    let by_threads = outputs.div_ceil(4 * threads);
    (by_cache.min(by_threads).max(16)).next_multiple_of(16)
}

/// Panels of weight rows decoded into a cached buffer, multiplied by
/// `gemm`'s kernels: every CPU, every encoding.
pub(super) fn multiply(p: Product<'_>) -> Result<Vec<f32>> {
    let (x, rows, w, outputs, columns) = (p.x, p.rows, p.w, p.outputs, p.columns);
    debug_assert_eq!(x.len(), rows * columns);
    let panel = panel_rows(outputs, columns);
    let mut product = vec![0.0f32; rows * outputs];
    let output = Output(product.as_mut_ptr());
    let in_place = f32_in_place(w);
    (0..outputs.div_ceil(panel))
        .into_par_iter()
        .try_for_each_init(Vec::new, |buffer: &mut Vec<f32>, p| -> Result<()> {
            let first = p * panel;
            let count = panel.min(outputs - first);
            let weights = match in_place {
                Some(all) => &all[first * columns..(first + count) * columns],
                None => {
                    buffer.resize(count * columns, 0.0);
                    decode(w, first * columns, buffer)?;
                    &buffer[..]
                }
            };
            // SAFETY: `x` is `[rows, columns]` and `weights` `[count, columns]`,
            // read through the strides given; the task writes only columns
            // `first..first + count` of each output row, which no other task
            // touches, and `product` outlives the parallel loop.
            unsafe {
                gemm::gemm(
                    rows,
                    count,
                    columns,
                    output.at(first),
                    1,
                    outputs as isize,
                    false,
                    x.as_ptr(),
                    1,
                    columns as isize,
                    weights.as_ptr(),
                    columns as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            Ok(())
        })?;
    Ok(product)
}
