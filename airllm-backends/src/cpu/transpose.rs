//! In-register transposes (AVX-512 and AVX), for the kernels that change a
//! block's layout: packing activations for the tile units, writing their
//! results, turning a chunk of keys for attention.

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

/// Transposes an 8 × 8 matrix of 32-bit values held as 8 rows.
///
/// # Safety
/// The CPU has AVX.
#[cfg(feature = "cpu")]
#[inline]
#[target_feature(enable = "avx")]
pub unsafe fn transpose_8x8(rows: &mut [std::arch::x86_64::__m256; 8]) {
    use std::arch::x86_64::*;
    // In each 128-bit lane `l` of `pairs[2i]`, columns 4l and 4l + 1 of
    // rows 2i and 2i + 1; of `pairs[2i + 1]`, columns 4l + 2 and 4l + 3.
    let pairs: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (rows[i / 2 * 2], rows[i / 2 * 2 + 1]);
        match i % 2 {
            0 => _mm256_unpacklo_ps(a, b),
            _ => _mm256_unpackhi_ps(a, b),
        }
    });
    // In lane `l` of `quads[4i + c]`, column 4l + c of rows 4i..4i + 4.
    let quads: [__m256; 8] = std::array::from_fn(|i| {
        let (quad, c) = (i / 4, i % 4);
        let a = _mm256_castps_pd(pairs[4 * quad + c / 2]);
        let b = _mm256_castps_pd(pairs[4 * quad + 2 + c / 2]);
        _mm256_castpd_ps(match c % 2 {
            0 => _mm256_unpacklo_pd(a, b),
            _ => _mm256_unpackhi_pd(a, b),
        })
    });
    // Column `c` (lane 0) and `4 + c` (lane 1): rows 0..4 from `quads[c]`,
    // rows 4..8 from `quads[4 + c]`.
    for c in 0..4 {
        rows[c] = _mm256_permute2f128_ps::<0x20>(quads[c], quads[4 + c]);
        rows[4 + c] = _mm256_permute2f128_ps::<0x31>(quads[c], quads[4 + c]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_8x8_swaps_rows_and_columns() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx") {
            return;
        }
        let values: Vec<f32> = (0..64).map(|v| v as f32).collect();
        let mut out = [[0.0f32; 8]; 8];
        // SAFETY: the CPU has AVX, checked above; loads and stores stay in
        // `values` and `out`.
        unsafe {
            let mut rows: [__m256; 8] =
                std::array::from_fn(|r| _mm256_loadu_ps(values[r * 8..].as_ptr()));
            transpose_8x8(&mut rows);
            for (row, v) in out.iter_mut().zip(rows) {
                _mm256_storeu_ps(row.as_mut_ptr(), v);
            }
        }
        for (c, row) in out.iter().enumerate() {
            for (r, value) in row.iter().enumerate() {
                assert_eq!(*value, values[r * 8 + c]);
            }
        }
    }
}
