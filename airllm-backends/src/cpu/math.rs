//! Elementwise functions the cpu ops share, written so that loops over
//! them vectorize.

/// `eˣ` to a few ulp, branch-free so loops over it vectorize: `x = n·ln2 +
/// r` with `|r| ≤ ln2/2`, a degree-6 polynomial for `eʳ`, and `2ⁿ` built in
/// the exponent bits. Arguments below -87 (masked scores, `-inf`) give about
/// 1e-38 instead of 0, which no sum of weights of at least 1 notices.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + SHIFT) - SHIFT;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_the_library_exp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "{x}: {got} vs {want}"
            );
            x += 0.0137;
        }
        assert!(exp(f32::NEG_INFINITY) < 1e-37 && exp(-1.0e30) < 1e-37);
    }
}
