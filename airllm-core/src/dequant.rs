//! Decoding of the block-quantized layouts ([`BlockKind`]) to f32, value for
//! value as GGML's reference `dequantize_row_*` functions compute them.
//!
//! Every function takes whole blocks (`bytes.len()` a multiple of the kind's
//! block bytes) and writes `block_len` values per block into `out`.

use crate::BlockKind;

/// Decodes whole blocks of `kind` from `bytes` into `out`
/// (`out.len() == bytes.len() / block_bytes * block_len`).
pub fn dequantize(kind: BlockKind, bytes: &[u8], out: &mut [f32]) {
    let (len, size) = (kind.block_len(), kind.block_bytes());
    debug_assert_eq!(bytes.len() / size * len, out.len());
    let decode_block: fn(&[u8], &mut [f32]) = match kind {
        BlockKind::Q8_0 => q8_0,
        BlockKind::Q4_0 => q4_0,
        BlockKind::Q4_1 => q4_1,
        BlockKind::Q5_0 => q5_0,
        BlockKind::Q5_1 => q5_1,
        BlockKind::Q4_K => q4_k,
        BlockKind::Q5_K => q5_k,
        BlockKind::Q6_K => q6_k,
    };
    for (block, values) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(len)) {
        decode_block(block, values);
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// `d: f16, qs: [i8; 32]`.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, q) in out.iter_mut().zip(&block[2..34]) {
        *o = (*q as i8) as f32 * d;
    }
}

/// `d: f16, qs: [u8; 16]`; low nibbles are values 0..16, high nibbles 16..32.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let (low, high) = out.split_at_mut(16);
    for (j, q) in block[2..18].iter().enumerate() {
        low[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        high[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let (low, high) = out.split_at_mut(16);
    for (j, q) in block[4..20].iter().enumerate() {
        low[j] = (q & 0x0F) as f32 * d + m;
        high[j] = (q >> 4) as f32 * d + m;
    }
}

/// The fifth bits of a Q5 block's 32 values: bit `j` of `qh` belongs to value `j`.
fn fifth_bits(qh: &[u8], j: usize) -> (u8, u8) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    (
        (((qh >> j) << 4) & 0x10) as u8,
        ((qh >> (j + 12)) & 0x10) as u8,
    )
}

/// `d: f16, qh: [u8; 4], qs: [u8; 16]`.
fn q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let (low, high) = out.split_at_mut(16);
    for (j, q) in block[6..22].iter().enumerate() {
        let (h0, h1) = fifth_bits(&block[2..6], j);
        low[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
        high[j] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]`.
fn q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let (low, high) = out.split_at_mut(16);
    for (j, q) in block[8..24].iter().enumerate() {
        let (h0, h1) = fifth_bits(&block[4..8], j);
        low[j] = ((q & 0x0F) | h0) as f32 * d + m;
        high[j] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// Scale and min of sub-block `j` (of 8) from the 12 packed 6-bit pairs of
/// a Q4_K / Q5_K super-block.
fn scale_min_k4(j: usize, scales: &[u8]) -> (f32, f32) {
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

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32.
fn q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let qs = &block[16..144];
    for (chunk, (q, values)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
        let (low, high) = values.split_at_mut(32);
        for l in 0..32 {
            low[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            high[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
fn q5_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let qh = &block[16..48];
    let qs = &block[48..176];
    for (chunk, (q, values)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
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
fn q6_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = scale(0) * q1 as f32;
            y[l + 32] = scale(2) * q2 as f32;
            y[l + 64] = scale(4) * q3 as f32;
            y[l + 96] = scale(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
