//! NF4 as bitsandbytes' `quantize_4bit` writes it (blocks of 64, its default
//! torch implementation): each value times the reciprocal of the block's
//! absolute maximum, clamped to −1..1, takes the index of the table value
//! whose interval holds it (a value on a midpoint takes the lower one).

use airllm_core::storage::NF4_VALUES;

/// The 15 midpoints between neighbouring table values, in f32.
fn midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_VALUES[i] + NF4_VALUES[i + 1]) / 2.0)
}

/// One block: the absolute maximum as an f32, then the 64 indices, the
/// first of each pair in the high nibble.
pub fn nf4(values: &[f32], out: &mut [u8]) {
    let bounds = midpoints();
    let absmax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let reciprocal = 1.0 / absmax.max(1e-38);
    let index = |v: &f32| {
        let scaled = (v * reciprocal).clamp(-1.0, 1.0);
        bounds.iter().filter(|b| **b < scaled).count() as u8
    };
    out[..4].copy_from_slice(&absmax.to_le_bytes());
    for (byte, pair) in out[4..36].iter_mut().zip(values.chunks_exact(2)) {
        *byte = (index(&pair[0]) << 4) | index(&pair[1]);
    }
}
