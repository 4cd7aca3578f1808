//! Rotary positions on the cpu, in both layouts: each row rotated in one
//! pass (burn's broadcasting multiplies walked every value through a strided
//! index).

use rayon::prelude::*;

/// A rotation in place of `x: [batch, heads, seq, dim]` (the `[heads, seq,
/// dim]` given) by cos and sin tables.
pub type RotateRows = fn(&mut [f32], [usize; 3], &[f32], &[f32]);

/// Rows below which one thread rotates them all.
const PARALLEL_ROWS: usize = 64;

/// `x[b, h, s] = x · cos[b, s] + (-x₂, x₁) · sin[b, s]` in place, for `x:
/// [batch, heads, seq, dim]` and tables `[batch, seq, dim]` (`dim` even).
pub fn rotate_halves(x: &mut [f32], [heads, seq, dim]: [usize; 3], cos: &[f32], sin: &[f32]) {
    let half = dim / 2;
    for_each_row(x, [heads, seq, dim], dim, |row, at| {
        let (cos, sin) = (&cos[at..at + dim], &sin[at..at + dim]);
        let (first, second) = row.split_at_mut(half);
        for i in 0..half {
            let (a, c) = (first[i], second[i]);
            first[i] = a * cos[i] - c * sin[i];
            second[i] = c * cos[half + i] + a * sin[half + i];
        }
    });
}

/// Each pair `(a, b)` of dims `2i, 2i + 1` of `x: [batch, heads, seq, dim]`
/// becomes `(a cos − b sin, b cos + a sin)` in place, with tables `[batch,
/// seq, dim / 2]` (`dim` even).
pub fn rotate_pairs(x: &mut [f32], [heads, seq, dim]: [usize; 3], cos: &[f32], sin: &[f32]) {
    let half = dim / 2;
    for_each_row(x, [heads, seq, dim], half, |row, at| {
        let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
        for (i, pair) in row.chunks_exact_mut(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos[i] - b * sin[i];
            pair[1] = b * cos[i] + a * sin[i];
        }
    });
}

/// Calls `rotate(row, at)` for every row of `x: [batch, heads, seq, dim]`,
/// `at` being where the row's entries start in tables of `width` values per
/// position.
fn for_each_row(
    x: &mut [f32],
    [heads, seq, dim]: [usize; 3],
    width: usize,
    rotate: impl Fn(&mut [f32], usize) + Sync,
) {
    let each = |(index, row): (usize, &mut [f32])| {
        let (b, s) = (index / (heads * seq), index % seq);
        rotate(row, (b * seq + s) * width);
    };
    if x.len() < PARALLEL_ROWS * dim {
        x.chunks_exact_mut(dim).enumerate().for_each(each);
    } else {
        x.par_chunks_exact_mut(dim).enumerate().for_each(each);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 2;
    const HEADS: usize = 3;
    const SEQ: usize = 2;
    const DIM: usize = 4;

    /// Queries or keys `[BATCH, HEADS, SEQ, DIM]` and tables of `width`
    /// entries per position.
    fn inputs(width: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..BATCH * HEADS * SEQ * DIM).map(|i| i as f32 * 0.1 - 2.0);
        let angles = (0..BATCH * SEQ * width).map(|i| i as f32 * 0.3);
        (
            x.collect(),
            angles.clone().map(f32::cos).collect(),
            angles.map(f32::sin).collect(),
        )
    }

    #[test]
    fn rows_rotate_by_their_sequences_positions() {
        let (heads, seq, dim) = (HEADS, SEQ, DIM);
        let (x, cos, sin) = inputs(dim);
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

    #[test]
    fn pairs_rotate_by_their_sequences_positions() {
        let (heads, seq, dim) = (HEADS, SEQ, DIM);
        let half = dim / 2;
        let (x, cos, sin) = inputs(half);
        let mut got = x.clone();
        rotate_pairs(&mut got, [heads, seq, dim], &cos, &sin);
        for (index, row) in x.chunks(dim).enumerate() {
            let (b, s) = (index / (heads * seq), index % seq);
            let table = (b * seq + s) * half;
            for i in 0..half {
                let (a, c) = (row[2 * i], row[2 * i + 1]);
                let (cos, sin) = (cos[table + i], sin[table + i]);
                let want = [a * cos - c * sin, c * cos + a * sin];
                for (j, want) in want.iter().enumerate() {
                    let got = got[index * dim + 2 * i + j];
                    assert!((got - want).abs() < 1e-6, "row {index} dim {}", 2 * i + j);
                }
            }
        }
    }
}
