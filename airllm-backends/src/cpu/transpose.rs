//! In-register transposes (AVX-512), for the kernels that change a block's
//! layout: packing activations for the tile units, writing their results,
//! turning a chunk of keys for attention.

/// Transposes a 16 × 16 matrix of 32-bit values held as 16 rows (the
/// values are only moved, so any 32-bit type may travel as f32 bits).
///
/// # Safety
/// The CPU has AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose_16x16(rows: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved: in each 128-bit lane `l` of `pairs[2i]`,
    // columns 4l and 4l + 1 of rows 2i and 2i + 1; of `pairs[2i + 1]`,
    // columns 4l + 2 and 4l + 3.
    let pairs: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i / 2 * 2], rows[i / 2 * 2 + 1]);
        match i % 2 {
            0 => _mm512_unpacklo_ps(a, b),
            _ => _mm512_unpackhi_ps(a, b),
        }
    });
    // Quads: in lane `l` of `quads[4i + c]`, column 4l + c of rows
    // 4i..4i + 4.
    let quads: [__m512; 16] = std::array::from_fn(|i| {
        let (quad, c) = (i / 4, i % 4);
        let a = _mm512_castps_pd(pairs[4 * quad + c / 2]);
        let b = _mm512_castps_pd(pairs[4 * quad + 2 + c / 2]);
        _mm512_castpd_ps(match c % 2 {
            0 => _mm512_unpacklo_pd(a, b),
            _ => _mm512_unpackhi_pd(a, b),
        })
    });
    // Column 4l + c: lane `l` of quads `c`, `4 + c`, `8 + c`, `12 + c`.
    for c in 0..4 {
        let (a, b, e, d) = (quads[c], quads[4 + c], quads[8 + c], quads[12 + c]);
        let ab_low = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
        let ab_high = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
        let ed_low = _mm512_shuffle_f32x4::<0b01_00_01_00>(e, d);
        let ed_high = _mm512_shuffle_f32x4::<0b11_10_11_10>(e, d);
        rows[c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_low, ed_low);
        rows[4 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_low, ed_low);
        rows[8 + c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_high, ed_high);
        rows[12 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_high, ed_high);
    }
}
