//! A few to a few dozen activation rows in f32 against weights in any
//! encoding: [`TILE_OUTPUTS`] weight rows at a time are decoded into a small
//! buffer that stays in L1, and a register-blocked micro-kernel dots them
//! with several activation rows at once. Each accumulator holds one vector
//! of partial sums for one (weight row, activation row) pair, so neither
//! the weights nor the activations are ever transposed; the lanes are
//! summed once per pair, after the last column.
//!
//! Per vector of columns, the kernel loads `TILE_OUTPUTS` weight vectors and
//! one vector per activation row, and issues one FMA per pair: with four
//! weight rows and six activation rows (AVX-512), 10 loads feed 24 FMAs.

use airllm_core::{HostTensor, Result};

use super::{decode, f32_in_place, over_output_tiles};

/// Weight rows one micro-kernel call dots at once.
pub const TILE_OUTPUTS: usize = 4;

/// Whether this CPU runs the tile kernel (the other paths serve it otherwise).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::Kernel::widest().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// `x · wᵀ` for `x: [rows, columns]` and `w: [outputs, columns]`; returns
/// `[rows, outputs]`, or `None` where the CPU lacks the instructions.
pub fn product(
    x: &[f32],
    rows: usize,
    w: &HostTensor,
    outputs: usize,
    columns: usize,
) -> Option<Result<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    {
        let kernel = x86::Kernel::widest()?;
        let in_place = f32_in_place(w);
        Some(over_output_tiles(
            rows,
            outputs,
            TILE_OUTPUTS,
            || vec![0.0f32; TILE_OUTPUTS * columns],
            |buffer, first, values| {
                let count = values.len() / rows;
                let whole = first * columns..(first + TILE_OUTPUTS) * columns;
                let weights = match in_place {
                    Some(all) if count == TILE_OUTPUTS => &all[whole],
                    _ => {
                        let (decoded, padding) = buffer.split_at_mut(count * columns);
                        decode(w, first * columns, decoded)?;
                        padding.fill(0.0);
                        &buffer[..]
                    }
                };
                kernel.tile(x, rows, columns, weights, values);
                Ok(())
            },
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, rows, w, outputs, columns);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::avx2::sum_256;
    use super::TILE_OUTPUTS;

    /// A vector of f32 lanes the micro-kernel runs on.
    trait Vector: Copy {
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(at: *const f32) -> Self;
        /// `a · b + acc`.
        unsafe fn fma(a: Self, b: Self, acc: Self) -> Self;
        /// The sum of the lanes.
        unsafe fn sum(self) -> f32;
    }

    impl Vector for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            _mm512_loadu_ps(at)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, acc: Self) -> Self {
            _mm512_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self)
        }
    }

    impl Vector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            _mm256_loadu_ps(at)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, acc: Self) -> Self {
            _mm256_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            sum_256(self)
        }
    }

    /// `out[o · out_stride + r] = w[o] · x[r]` for the [`TILE_OUTPUTS`]
    /// weight rows at `w` and the `R` activation rows at `x` (rows of
    /// `columns` values, `columns` apart).
    ///
    /// # Safety
    /// The CPU has `V`'s instructions; `w` and `x` hold the rows read, and
    /// `out` the values written.
    #[inline(always)]
    unsafe fn dots<V: Vector, const R: usize>(
        x: *const f32,
        w: *const f32,
        columns: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let mut acc = [[V::zero(); TILE_OUTPUTS]; R];
        let body = columns - columns % V::LANES;
        let mut c = 0;
        while c < body {
            let mut weights = [V::zero(); TILE_OUTPUTS];
            for (o, weight) in weights.iter_mut().enumerate() {
                *weight = V::load(w.add(o * columns + c));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xr = V::load(x.add(r * columns + c));
                for (acc, weight) in acc.iter_mut().zip(&weights) {
                    *acc = V::fma(*weight, xr, *acc);
                }
            }
            c += V::LANES;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (o, acc) in acc.iter().enumerate() {
                let mut total = acc.sum();
                for c in body..columns {
                    total += *w.add(o * columns + c) * *x.add(r * columns + c);
                }
                *out.add(o * out_stride + r) = total;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dots_avx512<const R: usize>(
        x: *const f32,
        w: *const f32,
        columns: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        dots::<__m512, R>(x, w, columns, out, out_stride);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2<const R: usize>(
        x: *const f32,
        w: *const f32,
        columns: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        dots::<__m256, R>(x, w, columns, out, out_stride);
    }

    /// Activation rows one micro-kernel call takes at most (AVX-512).
    const MAX_ROWS: usize = 6;

    /// One micro-kernel: `R` activation rows against the tile's weight rows.
    type DotsFn = unsafe fn(*const f32, *const f32, usize, *mut f32, usize);

    /// The micro-kernels of one vector width, by activation rows (index
    /// `R - 1`): 6 rows at 512 bits (24 accumulators of 32 registers), 2 at
    /// 256 bits (8 of 16).
    #[derive(Clone, Copy)]
    pub struct Kernel {
        by_rows: &'static [DotsFn],
    }

    const AVX512: [DotsFn; MAX_ROWS] = [
        dots_avx512::<1>,
        dots_avx512::<2>,
        dots_avx512::<3>,
        dots_avx512::<4>,
        dots_avx512::<5>,
        dots_avx512::<6>,
    ];

    const AVX2: [DotsFn; 2] = [dots_avx2::<1>, dots_avx2::<2>];

    impl Kernel {
        /// The widest kernel this CPU runs; `None` without AVX2 and FMA.
        pub fn widest() -> Option<Self> {
            if is_x86_feature_detected!("avx512f") {
                Some(Kernel { by_rows: &AVX512 })
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                Some(Kernel { by_rows: &AVX2 })
            } else {
                None
            }
        }

        /// `values[o · rows + r] = weights[o] · x[r]` for the
        /// `values.len() / rows` first of the [`TILE_OUTPUTS`] weight rows
        /// in `weights` and every row of `x`.
        pub fn tile(
            &self,
            x: &[f32],
            rows: usize,
            columns: usize,
            weights: &[f32],
            values: &mut [f32],
        ) {
            assert!(
                x.len() == rows * columns
                    && weights.len() >= TILE_OUTPUTS * columns
                    && values.len() <= TILE_OUTPUTS * rows
                    && values.len().is_multiple_of(rows)
            );
            let count = values.len() / rows;
            let most = self.by_rows.len();
            let mut sums = [0.0f32; TILE_OUTPUTS * MAX_ROWS];
            let mut first = 0;
            while first < rows {
                let block = most.min(rows - first);
                // SAFETY: `widest` checked the CPU's features; the rows read
                // are `first..first + block` of `x` and the tile's weight
                // rows, inside the slices checked above; `sums` holds
                // `TILE_OUTPUTS` strides of `block` ≤ 6 values.
                unsafe {
                    (self.by_rows[block - 1])(
                        x.as_ptr().add(first * columns),
                        weights.as_ptr(),
                        columns,
                        sums.as_mut_ptr(),
                        block,
                    )
                };
                for o in 0..count {
                    values[o * rows + first..o * rows + first + block]
                        .copy_from_slice(&sums[o * block..(o + 1) * block]);
                }
                first += block;
            }
        }
    }
}
