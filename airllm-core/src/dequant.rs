//! Decoding of the block-quantized layouts ([`BlockKind`]) to f32, value for
//! value as GGML's reference `dequantize_row_*` functions compute them.
//!
//! Every function takes whole blocks (`bytes.len()` a multiple of the kind's
//! block bytes) and writes `block_len` values per block into `out`.

use crate::BlockKind;

/// Decodes whole blocks of `kind` from `bytes` into `out`
/// (`out.len() == bytes.len() / block_bytes * block_len`). The 32-value
/// kinds models use most have AVX2 versions that give the same values.
pub fn dequantize(kind: BlockKind, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(
        bytes.len() / kind.block_bytes() * kind.block_len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let done = match kind {
            // SAFETY (all three): the CPU supports AVX2, checked just above.
            BlockKind::Q8_0 => unsafe { simd::q8_0(bytes, out) },
            BlockKind::Q4_0 => unsafe { simd::q4(bytes, out, 2, Some(-8.0)) },
            BlockKind::Q4_1 => unsafe { simd::q4(bytes, out, 4, None) },
            _ => false,
        };
        if done {
            return;
        }
    }
    dequantize_with(kind, bytes, out);
}

/// `x · row` for a row of whole blocks of `kind` (`x.len()` values), without
/// decoding the row first: per block, the scale times the dot of the raw
/// quants with `x` (plus the block's min times the sum of `x`). `None` for
/// kinds or CPUs without a fused version (decode the row instead).
pub fn dot(kind: BlockKind, row: &[u8], x: &[f32]) -> Option<f32> {
    debug_assert_eq!(row.len() / kind.block_bytes() * kind.block_len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY (all three): the CPU supports AVX2 and FMA, checked just above.
        return match kind {
            BlockKind::Q8_0 => Some(unsafe { simd::q8_0_dot(row, x) }),
            BlockKind::Q4_0 => Some(unsafe { simd::q4_dot(row, x, 2, Some(-8.0)) }),
            BlockKind::Q4_1 => Some(unsafe { simd::q4_dot(row, x, 4, None) }),
            _ => None,
        };
    }
    None
}

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

fn dequantize_with(kind: BlockKind, bytes: &[u8], out: &mut [f32]) {
    match kind {
        BlockKind::Q8_0 => each_block!(bytes, out, q8_0, 34, 32),
        BlockKind::Q4_0 => each_block!(bytes, out, q4_0, 18, 32),
        BlockKind::Q4_1 => each_block!(bytes, out, q4_1, 20, 32),
        BlockKind::Q5_0 => each_block!(bytes, out, q5_0, 22, 32),
        BlockKind::Q5_1 => each_block!(bytes, out, q5_1, 24, 32),
        BlockKind::Q4_K => each_block!(bytes, out, q4_k, 144, 256),
        BlockKind::Q5_K => each_block!(bytes, out, q5_k, 176, 256),
        BlockKind::Q6_K => each_block!(bytes, out, q6_k, 210, 256),
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

/// AVX2 versions: the same arithmetic (a multiply, then an add; no fused
/// multiply-add), so the values equal the portable code's bit for bit.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::f16_at;

    /// The low eight bytes of `bytes` widened to eight f32 values (signed or not).
    #[inline(always)]
    unsafe fn widen(bytes: __m128i, signed: bool) -> __m256 {
        let ints = match signed {
            true => _mm256_cvtepi8_epi32(bytes),
            false => _mm256_cvtepu8_epi32(bytes),
        };
        _mm256_cvtepi32_ps(ints)
    }

    /// Q8_0: `d · q`. Returns true (it handles every Q8_0 input).
    #[target_feature(enable = "avx2")]
    pub unsafe fn q8_0(bytes: &[u8], out: &mut [f32]) -> bool {
        for (block, values) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(block, 0));
            for part in 0..4 {
                let q = _mm_loadl_epi64(block.as_ptr().add(2 + 8 * part) as *const __m128i);
                let v = _mm256_mul_ps(widen(q, true), d);
                _mm256_storeu_ps(values.as_mut_ptr().add(8 * part), v);
            }
        }
        true
    }

    /// The sum of the eight lanes of `v`.
    #[inline(always)]
    unsafe fn sum_lanes(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    /// The 32 quants of a 4-bit block (16 bytes at `at`), as four vectors of
    /// eight values each (values 0–7, 8–15, 16–23, 24–31).
    #[inline(always)]
    unsafe fn nibbles(block: &[u8], at: usize) -> [__m256; 4] {
        let mask = _mm_set1_epi8(0x0F);
        let q = _mm_loadu_si128(block.as_ptr().add(at) as *const __m128i);
        let low = _mm_and_si128(q, mask);
        let high = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        [
            widen(low, false),
            widen(_mm_srli_si128(low, 8), false),
            widen(high, false),
            widen(_mm_srli_si128(high, 8), false),
        ]
    }

    /// `x · row` for Q8_0 blocks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_0_dot(row: &[u8], x: &[f32]) -> f32 {
        let mut total = _mm256_setzero_ps();
        for (block, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
            let mut acc = _mm256_setzero_ps();
            for part in 0..4 {
                let q = _mm_loadl_epi64(block.as_ptr().add(2 + 8 * part) as *const __m128i);
                let xv = _mm256_loadu_ps(xs.as_ptr().add(8 * part));
                acc = _mm256_fmadd_ps(widen(q, true), xv, acc);
            }
            total = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(block, 0)), acc, total);
        }
        sum_lanes(total)
    }

    /// `x · row` for Q4_0 (`offset` −8) and Q4_1 (a min after the scale)
    /// blocks whose nibbles start at byte `start`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_dot(row: &[u8], x: &[f32], start: usize, offset: Option<f32>) -> f32 {
        let mut total = _mm256_setzero_ps();
        let mut mins = _mm256_setzero_ps();
        let shift = _mm256_set1_ps(offset.unwrap_or(0.0));
        for (block, xs) in row.chunks_exact(start + 16).zip(x.chunks_exact(32)) {
            let mut acc = _mm256_setzero_ps();
            let mut x_sum = _mm256_setzero_ps();
            for (part, q) in nibbles(block, start).into_iter().enumerate() {
                let xv = _mm256_loadu_ps(xs.as_ptr().add(8 * part));
                acc = _mm256_fmadd_ps(_mm256_add_ps(q, shift), xv, acc);
                x_sum = _mm256_add_ps(x_sum, xv);
            }
            total = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(block, 0)), acc, total);
            if offset.is_none() {
                mins = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(block, 2)), x_sum, mins);
            }
        }
        sum_lanes(_mm256_add_ps(total, mins))
    }

    /// Q4_0 (`offset` −8: `d · (q − 8)`) and Q4_1 (`m` after `d`:
    /// `d · q + m`); the nibbles start at byte `start` of each block.
    #[target_feature(enable = "avx2")]
    pub unsafe fn q4(bytes: &[u8], out: &mut [f32], start: usize, offset: Option<f32>) -> bool {
        for (block, values) in bytes.chunks_exact(start + 16).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(block, 0));
            for (part, q) in nibbles(block, start).into_iter().enumerate() {
                let v = match offset {
                    Some(offset) => _mm256_mul_ps(_mm256_add_ps(q, _mm256_set1_ps(offset)), d),
                    None => _mm256_add_ps(_mm256_mul_ps(q, d), _mm256_set1_ps(f16_at(block, 2))),
                };
                _mm256_storeu_ps(values.as_mut_ptr().add(8 * part), v);
            }
        }
        true
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
    fn simd_and_portable_decoding_agree() {
        let bytes: Vec<u8> = (0..20 * 34 * 18).map(|i| (i * 7919 % 251) as u8).collect();
        for kind in [BlockKind::Q8_0, BlockKind::Q4_0, BlockKind::Q4_1] {
            let size = kind.block_bytes();
            let mut blocks = bytes[..size * 20].to_vec();
            for block in blocks.chunks_exact_mut(size) {
                block[..2].copy_from_slice(&half::f16::from_f32(0.37).to_bits().to_le_bytes());
            }
            let mut fast = vec![0.0; 20 * 32];
            let mut portable = vec![0.0; 20 * 32];
            dequantize(kind, &blocks, &mut fast);
            dequantize_with(kind, &blocks, &mut portable);
            assert_eq!(fast, portable, "{kind:?}");
        }
    }

    #[test]
    fn fused_dot_equals_decode_then_dot() {
        let bytes: Vec<u8> = (0..20 * 8)
            .flat_map(|i: u32| i.wrapping_mul(2654435761).to_le_bytes())
            .collect();
        let x: Vec<f32> = (0..8 * 32)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        for kind in [BlockKind::Q8_0, BlockKind::Q4_0, BlockKind::Q4_1] {
            let mut row = bytes[..kind.block_bytes() * 8].to_vec();
            for block in row.chunks_exact_mut(kind.block_bytes()) {
                block[..2].copy_from_slice(&half::f16::from_f32(0.05).to_bits().to_le_bytes());
                if kind == BlockKind::Q4_1 {
                    block[2..4].copy_from_slice(&half::f16::from_f32(-0.3).to_bits().to_le_bytes());
                }
            }
            let mut values = vec![0.0; x.len()];
            dequantize(kind, &row, &mut values);
            let expected: f32 = values.iter().zip(&x).map(|(v, x)| v * x).sum();
            if let Some(fused) = dot(kind, &row, &x) {
                assert!(
                    (fused - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                    "{kind:?}: {fused} vs {expected}"
                );
            }
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
}
