//! The 32-value kinds, exactly as the `gguf` package's `quants.py` writes
//! them (which matches GGML's reference quantizers): f32 arithmetic, scales
//! stored as f16 but the quants computed with the f32 scale.

use super::{f16_bytes, pack_low_high};

/// Index of the value of largest magnitude (the first, on ties: numpy's
/// `argmax`).
fn largest_magnitude(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if v.abs() > values[best].abs() {
            best = i;
        }
    }
    best
}

/// `1 / d`, or 0 where `d` is 0.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// `d = max|x| / 127`, quants `round(x / d)` (half away from zero).
pub fn q8_0(values: &[f32], out: &mut [u8]) {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_bytes(d));
    for (q, v) in out[2..34].iter_mut().zip(values) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// `d = x[argmax |x|] / −8`, quants `trunc(x / d + 8.5)` clipped to 0..=15.
pub fn q4_0(values: &[f32], out: &mut [u8]) {
    let max = values[largest_magnitude(values)];
    let d = max / -8.0;
    let id = inverse(d);
    let quants: [u8; 32] = std::array::from_fn(|i| nibble((values[i] * id + 8.5).trunc()));
    out[..2].copy_from_slice(&f16_bytes(d));
    pack_low_high(&quants, &mut out[2..18]);
}

/// `d = (max − min) / 15`, `m = min`, quants `trunc((x − min) / d + 0.5)`
/// clipped to 0..=15.
pub fn q4_1(values: &[f32], out: &mut [u8]) {
    let max = values.iter().fold(f32::MIN, |m, v| m.max(*v));
    let min = values.iter().fold(f32::MAX, |m, v| m.min(*v));
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let quants: [u8; 32] = std::array::from_fn(|i| nibble(((values[i] - min) * id + 0.5).trunc()));
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    pack_low_high(&quants, &mut out[4..20]);
}

/// A truncated value as numpy's `astype(uint8).clip(0, 15)` gives it for
/// the values these quantizers produce (0 to 16.5).
fn nibble(truncated: f32) -> u8 {
    (truncated as u8).min(15)
}
