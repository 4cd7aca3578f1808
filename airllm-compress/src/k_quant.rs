//! Q4_K as llama.cpp's `quantize_row_q4_K_ref` writes it: each sub-block of
//! 32 gets a scale and a minimum from a weighted least-squares search
//! (`make_qkx2_quants`), both stored as 6-bit multiples of the
//! super-block's f16 `d` and `dmin`, then every value is quantized again
//! against the stored scales.

use super::f16_bytes;

/// GGML's `nearest_int`, round half to even by its own trick: adding
/// 1.5·2²³ leaves the integer in the low mantissa bits (plain adds; the
/// library's rounding is a function call on CPUs without SSE4.1). Exact
/// for magnitudes up to 2²² − 1, to which the value is clamped first.
fn nearest_int(value: f32) -> i32 {
    const LIMIT: f32 = 4_194_303.0;
    let shifted = value.clamp(-LIMIT, LIMIT) + 12_582_912.0;
    (shifted.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// A sub-block's best scale and minimum (returned as `−min`, the amount
/// subtracted) with its quants in `quants`: `make_qkx2_quants(32, 15, x,
/// weights, L, &min, Laux, -1, 0.1, 20, false)`.
fn scale_and_min(x: &[f32; 32], weights: &[f32; 32], quants: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: f32 = 15.0;
    let (rmin, rdelta, steps) = (-1.0f32, 0.1f32, 20);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        quants.fill(0);
        return (0.0, -min);
    }
    let quantize =
        |iscale: f32, min: f32, i: usize| nearest_int(iscale * (x[i] - min)).clamp(0, 15) as u8;
    let mut iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        quants[i] = quantize(iscale, min, i);
        let diff = scale * f32::from(quants[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for step in 0..=steps {
        iscale = (rmin + rdelta * step as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            trial[i] = quantize(iscale, min, i);
            let (w, l) = (weights[i], f32::from(trial[i]));
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let determinant = sum_w * sum_l2 - sum_l * sum_l;
        if determinant > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / determinant;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / determinant;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * f32::from(trial[i]) + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                *quants = trial;
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One super-block of 256 values: `d: f16, dmin: f16, scales: [u8; 12],
/// qs: [u8; 128]`.
pub fn q4_k(values: &[f32], out: &mut [u8]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut quants = [[0u8; 32]; 8];
    for (j, x) in values.chunks_exact(32).enumerate() {
        let x: &[f32; 32] = x.try_into().expect("32 values");
        let sum_x2: f32 = x.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = x.map(|v| av_x + v.abs());
        (scales[j], mins[j]) = scale_and_min(x, &weights, &mut quants[j]);
    }
    let max_scale = scales.iter().fold(0.0f32, |m, s| m.max(*s));
    let max_min = mins.iter().fold(0.0f32, |m, s| m.max(*s));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut out[4..16];
    packed.fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    out[..2].copy_from_slice(&f16_bytes(max_scale / 63.0));
    out[2..4].copy_from_slice(&f16_bytes(max_min / 63.0));
    for (j, x) in values.chunks_exact(32).enumerate() {
        let (sc, m) = airllm_core::dequant::scale_min_k4(j, &out[4..16]);
        let d = d.to_f32() * sc;
        if d == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m;
        for (q, v) in quants[j].iter_mut().zip(x) {
            *q = nearest_int((v + dm) / d).clamp(0, 15) as u8;
        }
    }
    for (chunk, q) in out[16..144].chunks_exact_mut(32).enumerate() {
        let (low, high) = (&quants[2 * chunk], &quants[2 * chunk + 1]);
        for l in 0..32 {
            q[l] = low[l] | (high[l] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_int;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (value, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (14.49, 14),
            (-3.7, -4),
        ] {
            assert_eq!(nearest_int(value), want, "{value}");
        }
        assert_eq!(nearest_int(1e9), 4_194_303);
        assert_eq!(nearest_int(-1e9), -4_194_303);
    }
}
