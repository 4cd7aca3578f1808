//! RMSNorm on the cpu: each row's mean square and the scaled row in one
//! pass over it, rows in parallel (burn's broadcasting multiply walked every
//! value through a strided index instead).

use rayon::prelude::*;

/// Rows below which one thread normalises them all.
const PARALLEL_ROWS: usize = 32;

/// `x[r] = weight · x[r] / sqrt(mean(x[r]²) + eps)` for every row of
/// `weight.len()` values.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    let normalise = |row: &mut [f32]| {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inverse = 1.0 / (mean_square + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * inverse * w;
        }
    };
    if x.len() < PARALLEL_ROWS * width {
        x.chunks_exact_mut(width).for_each(normalise);
    } else {
        x.par_chunks_exact_mut(width).for_each(normalise);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_normalised_and_scaled() {
        for rows in [1, 40] {
            let mut x: Vec<f32> = (0..rows * 6).map(|i| (i % 7) as f32 - 3.0).collect();
            let want: Vec<f64> = x
                .chunks(6)
                .flat_map(|row| {
                    let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 6.0;
                    let inverse = 1.0 / (ms + 1e-5).sqrt();
                    row.iter()
                        .enumerate()
                        .map(move |(i, v)| *v as f64 * inverse * (i + 1) as f64)
                        .collect::<Vec<_>>()
                })
                .collect();
            rms_norm(&mut x, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1e-5);
            for (g, w) in x.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{g} vs {w}"
                );
            }
        }
    }
}
