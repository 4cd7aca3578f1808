//! Rotary positions (the "halves" layout) on the cpu: each row rotated in
//! one pass (burn's broadcasting multiplies walked every value through a
//! strided index).

use rayon::prelude::*;

/// Rows below which one thread rotates them all.
const PARALLEL_ROWS: usize = 64;

/// `x[b, h, s] = x · cos[b, s] + (-x₂, x₁) · sin[b, s]` in place, for `x:
/// [batch, heads, seq, dim]` and tables `[batch, seq, dim]` (`dim` even).
pub fn rotate_halves(x: &mut [f32], [heads, seq, dim]: [usize; 3], cos: &[f32], sin: &[f32]) {
    let half = dim / 2;
    let rotate = |(index, row): (usize, &mut [f32])| {
        let (b, s) = (index / (heads * seq), index % seq);
        let at = (b * seq + s) * dim;
        let (cos, sin) = (&cos[at..at + dim], &sin[at..at + dim]);
        let (first, second) = row.split_at_mut(half);
        for i in 0..half {
            let (a, c) = (first[i], second[i]);
            first[i] = a * cos[i] - c * sin[i];
            second[i] = c * cos[half + i] + a * sin[half + i];
        }
    };
    if x.len() < PARALLEL_ROWS * dim {
        x.chunks_exact_mut(dim).enumerate().for_each(rotate);
    } else {
        x.par_chunks_exact_mut(dim).enumerate().for_each(rotate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_rotate_by_their_sequences_positions() {
        let (batch, heads, seq, dim) = (2, 3, 2, 4);
        let x: Vec<f32> = (0..batch * heads * seq * dim)
            .map(|i| i as f32 * 0.1 - 2.0)
            .collect();
        let cos: Vec<f32> = (0..batch * seq * dim)
            .map(|i| (i as f32 * 0.3).cos())
            .collect();
        let sin: Vec<f32> = (0..batch * seq * dim)
            .map(|i| (i as f32 * 0.3).sin())
            .collect();
        let mut got = x.clone();
        rotate_halves(&mut got, [heads, seq, dim], &cos, &sin);
        for (index, row) in x.chunks(dim).enumerate() {
            let (b, s) = (index / (heads * seq), index % seq);
            let table = (b * seq + s) * dim;
            let rotated = [-row[2], -row[3], row[0], row[1]];
            for i in 0..dim {
                let want = row[i] * cos[table + i] + rotated[i] * sin[table + i];
                assert!(
                    (got[index * dim + i] - want).abs() < 1e-6,
                    "row {index} dim {i}"
                );
            }
        }
    }
}
