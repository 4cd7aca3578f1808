//! Decoding of the block-quantized layouts ([`BlockKind`]) to f32, value for
//! value as GGML's reference `dequantize_row_*` functions compute them (NF4
//! as bitsandbytes does).
//!
//! Every function takes whole blocks (`bytes.len()` a multiple of the kind's
//! block bytes) and writes `block_len` values per block into `out`.
//!
//! Portable code only, as everything in this crate: the vector decoding and
//! the dots on the blocks belong to the cpu kernel (`airllm-backends`,
//! `cpu/kernel/`), which the host widening for other devices calls too.

use crate::storage::NF4_VALUES;
use crate::BlockKind;

/// Decodes each block with `$decode` (a direct call, which inlines).
macro_rules! each_block {
    ($bytes:expr, $out:expr, $decode:ident, $size:literal, $len:literal) => {
        for (block, values) in $bytes.chunks_exact($size).zip($out.chunks_exact_mut($len)) {
            $decode(
                block.try_into().expect("whole block"),
                values.try_into().expect("whole block"),
            );
        }
    };
}

/// Decodes whole blocks of `kind` from `bytes` into `out`
/// (`out.len() == bytes.len() / block_bytes * block_len`). Portable code;
/// the cpu kernel's vector decoding gives the same values bit for bit.
pub fn dequantize(kind: BlockKind, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(
        bytes.len() / kind.block_bytes() * kind.block_len(),
        out.len()
    );
    match kind {
        BlockKind::Q8_0 => each_block!(bytes, out, q8_0, 34, 32),
        BlockKind::Q4_0 => each_block!(bytes, out, q4_0, 18, 32),
        BlockKind::Q4_1 => each_block!(bytes, out, q4_1, 20, 32),
        BlockKind::Q5_0 => each_block!(bytes, out, q5_0, 22, 32),
        BlockKind::Q5_1 => each_block!(bytes, out, q5_1, 24, 32),
        BlockKind::Q4_K => each_block!(bytes, out, q4_k, 144, 256),
        BlockKind::Q5_K => each_block!(bytes, out, q5_k, 176, 256),
        BlockKind::Q6_K => each_block!(bytes, out, q6_k, 210, 256),
        BlockKind::NF4 => each_block!(bytes, out, nf4, 36, 64),
    }
}

/// IEEE half to single precision, exactly (inlined; no run-time dispatch).
#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits & 0x8000) as u32) << 16;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let magnitude = match exponent {
        // Zero and subnormals: mantissa · 2⁻²⁴.
        0 => (mantissa as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => 0x7f80_0000 | (mantissa << 13),
        _ => ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// `d: f16, qs: [i8; 32]`.
#[inline(always)]
fn q8_0(block: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (o, q) in out.iter_mut().zip(&block[2..34]) {
        *o = (*q as i8) as f32 * d;
    }
}

/// `d: f16, qs: [u8; 16]`; low nibbles are values 0..16, high nibbles 16..32.
#[inline(always)]
fn q4_0(block: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let (low, high) = halves(out);
    for (j, q) in block[2..18].iter().enumerate() {
        low[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
    }
    for (j, q) in block[2..18].iter().enumerate() {
        high[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`.
#[inline(always)]
fn q4_1(block: &[u8; 20], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let (low, high) = halves(out);
    for (j, q) in block[4..20].iter().enumerate() {
        low[j] = (q & 0x0F) as f32 * d + m;
    }
    for (j, q) in block[4..20].iter().enumerate() {
        high[j] = (q >> 4) as f32 * d + m;
    }
}

/// The fifth bit of value `j` of a Q5 block (bit `j` of `qh`), as 0 or 16.
#[inline(always)]
fn fifth_bit(qh: u32, j: usize) -> u8 {
    (((qh >> j) & 1) << 4) as u8
}

/// The first and second 16 values of a 32-value block.
#[inline(always)]
fn halves(out: &mut [f32; 32]) -> (&mut [f32], &mut [f32]) {
    out.split_at_mut(16)
}

/// `d: f16, qh: [u8; 4], qs: [u8; 16]`.
#[inline(always)]
fn q5_0(block: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let (low, high) = halves(out);
    for (j, q) in block[6..22].iter().enumerate() {
        low[j] = (((q & 0x0F) | fifth_bit(qh, j)) as i32 - 16) as f32 * d;
    }
    for (j, q) in block[6..22].iter().enumerate() {
        high[j] = (((q >> 4) | fifth_bit(qh, j + 16)) as i32 - 16) as f32 * d;
    }
}

/// `d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]`.
#[inline(always)]
fn q5_1(block: &[u8; 24], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let (low, high) = halves(out);
    for (j, q) in block[8..24].iter().enumerate() {
        low[j] = ((q & 0x0F) | fifth_bit(qh, j)) as f32 * d + m;
    }
    for (j, q) in block[8..24].iter().enumerate() {
        high[j] = ((q >> 4) | fifth_bit(qh, j + 16)) as f32 * d + m;
    }
}

/// Scale and min of sub-block `j` (of 8) from the 12 packed 6-bit pairs of
/// a Q4_K / Q5_K super-block.
#[inline(always)]
pub fn scale_min_k4(j: usize, scales: &[u8]) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    };
    (scale as f32, min as f32)
}

/// Scale and min of the two sub-blocks (`2·chunk`, `2·chunk + 1`) that
/// share a chunk's bytes in a Q4_K / Q5_K super-block.
#[inline(always)]
fn sub_block_pair(chunk: usize, d: f32, dmin: f32, scales: &[u8]) -> [(f32, f32); 2] {
    [2 * chunk, 2 * chunk + 1].map(|j| {
        let (scale, min) = scale_min_k4(j, scales);
        (d * scale, dmin * min)
    })
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32.
#[inline(always)]
fn q4_k(block: &[u8; 144], out: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let qs = &block[16..144];
    for (chunk, (q, values)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let [(d1, m1), (d2, m2)] = sub_block_pair(chunk, d, dmin, scales);
        let (low, high) = values.split_at_mut(32);
        for l in 0..32 {
            low[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            high[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
#[inline(always)]
fn q5_k(block: &[u8; 176], out: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let qh = &block[16..48];
    let qs = &block[48..176];
    for (chunk, (q, values)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let [(d1, m1), (d2, m2)] = sub_block_pair(chunk, d, dmin, scales);
        let (bit1, bit2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (low, high) = values.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & bit1 != 0 { 16.0 } else { 0.0 };
            let h2 = if qh[l] & bit2 != 0 { 16.0 } else { 0.0 };
            low[l] = d1 * ((q[l] & 0x0F) as f32 + h1) - m1;
            high[l] = d2 * ((q[l] >> 4) as f32 + h2) - m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: two halves of 128.
#[inline(always)]
fn q6_k(block: &[u8; 210], out: &mut [f32; 256]) {
    let d = f16_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        // Quarter k of the 128 values: low or high nibbles of `ql[0..32]`
        // or `ql[32..64]`, two high bits from `qh` at shift 2k, and the
        // scales `sc[2k]` (first 16 values) and `sc[2k + 1]`.
        for k in 0..4 {
            let low_bits = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            let nibble_shift = 4 * (k / 2) as u32;
            let scales = [
                d * (sc[2 * k] as i8) as f32,
                d * (sc[2 * k + 1] as i8) as f32,
            ];
            for l in 0..32 {
                let q = ((low_bits[l] >> nibble_shift) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4);
                y[32 * k + l] = scales[l / 16] * (q as i32 - 32) as f32;
            }
        }
    }
}

/// `absmax: f32, indices: [u8; 32]`: value `2j` in the high nibble of byte
/// `j`, value `2j + 1` in its low nibble.
#[inline(always)]
fn nf4(block: &[u8; 36], out: &mut [f32; 64]) {
    let absmax = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    for (pair, byte) in out.chunks_exact_mut(2).zip(&block[4..36]) {
        pair[0] = NF4_VALUES[(byte >> 4) as usize] * absmax;
        pair[1] = NF4_VALUES[(byte & 0x0F) as usize] * absmax;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        for bits in 0..=u16::MAX {
            let expected = half::f16::from_bits(bits).to_f32();
            let ours = f16_to_f32(bits);
            assert!(
                ours.to_bits() == expected.to_bits() || (ours.is_nan() && expected.is_nan()),
                "{bits:#06x}: {ours} vs {expected}"
            );
        }
    }

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = (-4i8) as u8;
        block[33] = 6;
        let mut out = vec![0.0; 32];
        dequantize(BlockKind::Q8_0, &block, &mut out);
        assert_eq!((out[0], out[1], out[31]), (-2.0, 0.0, 3.0));
    }

    #[test]
    fn q4_1_puts_high_nibbles_in_the_second_half() {
        let mut block = vec![0u8; 20];
        block[..2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
        block[2..4].copy_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
        block[4] = 0x31;
        let mut out = vec![0.0; 32];
        dequantize(BlockKind::Q4_1, &block, &mut out);
        assert_eq!((out[0], out[16], out[1]), (1.0, 5.0, -1.0));
    }

    #[test]
    fn nf4_puts_the_first_value_in_the_high_nibble() {
        let mut block = vec![0u8; 36];
        block[..4].copy_from_slice(&2.0f32.to_le_bytes());
        block[4] = 0xF0;
        block[35] = 0x7E;
        let mut out = vec![0.0; 64];
        dequantize(BlockKind::NF4, &block, &mut out);
        assert_eq!((out[0], out[1], out[62]), (2.0, -2.0, 0.0));
        assert_eq!(out[63], NF4_VALUES[14] * 2.0);
    }
}
