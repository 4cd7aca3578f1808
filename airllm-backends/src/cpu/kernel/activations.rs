//! Activation rows quantized to 16-bit integers, 32 values per group with
//! an f32 scale each, for the integer dot products of the decode path.
//!
//! llama.cpp pairs its weights with 8-bit activations (Q8_0/Q8_1/Q8_K). On
//! real models that is not close enough: a group holding one of the few
//! large channels of a transformer's activations (here 14–22 times the row's
//! RMS) leaves the rest of the group a few steps, and SmolLM2-135M's k and v
//! products came out with a normalized error of up to 2.3e-3, which changed
//! its greedy answer at the sixth token. 16-bit steps are 256 times finer,
//! SmolLM2 keeps its answer, and the dot is still integer multiply-adds per
//! block.

/// Values per quantization group (every GGUF block kind is made of whole
/// groups of 32 weights).
pub const GROUP: usize = 32;

/// The quant a group's largest magnitude maps to.
const LARGEST: f32 = i16::MAX as f32;

/// Activation rows as groups of 32 signed 16-bit integers: value ≈ `scale · q`.
pub struct QuantizedRows {
    /// Groups per row.
    groups: usize,
    /// Scale of each group, row after row.
    scales: Vec<f32>,
    /// `scale · Σq` of each group (what a per-group weight minimum multiplies).
    sums: Vec<f32>,
    /// The quants, row after row.
    quants: Vec<i16>,
}

/// One quantized row.
#[derive(Clone, Copy)]
pub struct QuantizedRow<'a> {
    /// Scale of each group.
    pub scales: &'a [f32],
    /// `scale · Σq` of each group.
    pub sums: &'a [f32],
    /// The quants, `32 · groups`.
    pub quants: &'a [i16],
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `columns` values (`columns` a multiple of
    /// [`GROUP`]): each group's scale maps its largest magnitude to
    /// [`LARGEST`], and values round to the nearest quant.
    pub fn new(x: &[f32], rows: usize, columns: usize) -> Self {
        debug_assert_eq!(columns % GROUP, 0);
        debug_assert_eq!(x.len(), rows * columns);
        let groups = columns / GROUP;
        let mut quantized = QuantizedRows {
            groups,
            scales: Vec::with_capacity(rows * groups),
            sums: Vec::with_capacity(rows * groups),
            quants: vec![0; rows * columns],
        };
        for (values, quants) in x
            .chunks_exact(GROUP)
            .zip(quantized.quants.chunks_exact_mut(GROUP))
        {
            let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = largest / LARGEST;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in quants.iter_mut().zip(values) {
                *q = round_to_integer(v * inverse) as i16;
                sum += i32::from(*q);
            }
            quantized.scales.push(scale);
            quantized.sums.push(scale * sum as f32);
        }
        quantized
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> QuantizedRow<'_> {
        let groups = r * self.groups..(r + 1) * self.groups;
        QuantizedRow {
            scales: &self.scales[groups.clone()],
            sums: &self.sums[groups.clone()],
            quants: &self.quants[groups.start * GROUP..groups.end * GROUP],
        }
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2²²`: adding
/// and subtracting 1.5·2²³ leaves no fraction bits (this vectorizes where
/// `f32::round_ties_even` calls libm).
#[inline(always)]
fn round_to_integer(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quants_reproduce_the_values_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 61) as f32 - 30.0) / 7.0)
            .collect();
        let q = QuantizedRows::new(&x, 2, 32);
        for r in 0..2 {
            let row = q.row(r);
            let step = row.scales[0];
            for (i, v) in x[32 * r..32 * r + 32].iter().enumerate() {
                assert!((row.quants[i] as f32 * step - v).abs() <= step / 2.0 + 1e-6);
            }
            let sum: i32 = row.quants.iter().map(|&q| i32::from(q)).sum();
            assert_eq!(row.sums[0], step * sum as f32);
        }
    }

    #[test]
    fn rounding_matches_round_ties_even() {
        for v in [
            -32767.5f32,
            -2.5,
            -1.5,
            -0.5,
            0.49,
            0.5,
            1.5,
            2.5,
            3.7,
            32766.5,
        ] {
            assert_eq!(round_to_integer(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn a_zero_group_has_zero_scale_and_quants() {
        let q = QuantizedRows::new(&[0.0; 32], 1, 32);
        assert_eq!(q.row(0).scales, &[0.0]);
        assert!(q.row(0).quants.iter().all(|&v| v == 0));
    }
}
