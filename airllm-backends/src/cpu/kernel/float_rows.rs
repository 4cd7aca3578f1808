//! Few activation rows in f32 against a weight matrix in its stored
//! encoding, on CPUs without the tile kernel: each weight row is widened once
//! into a small buffer and dotted with every input row.

use airllm_core::Result;

use super::{decode, over_outputs, prefetch, Product};

/// How far past the end of the weight row being dotted the weights are
/// prefetched, in bytes (see the integer path's `PREFETCH_AHEAD`; the gain
/// is in docs/kernel.md).
const PREFETCH_AHEAD: usize = 4096;

/// Each weight row decoded once and dotted with every activation row in
/// f32: every CPU, every encoding.
pub(super) fn multiply(p: Product<'_>) -> Result<Vec<f32>> {
    let (x, rows, w, outputs, columns) = (p.x, p.rows, p.w, p.outputs, p.columns);
    let bytes = w.bytes.as_slice();
    // `linear_on` checked that whole rows of `columns` values fit the encoding.
    let row_bytes = w.kind.encoded_bytes(columns).unwrap_or(0);
    over_outputs(
        rows,
        outputs,
        || vec![0.0f32; columns],
        |row, index, out| {
            let ahead = (index + 1) * row_bytes + PREFETCH_AHEAD;
            prefetch(&bytes[ahead.min(bytes.len())..(ahead + row_bytes).min(bytes.len())]);
            decode(w, index * columns, row)?;
            dot_rows(x, row, out);
            Ok(())
        },
    )
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
