//! A few to a few dozen activation rows in f32 against weights in any
//! encoding: [`TILE_OUTPUTS`] weight rows at a time are decoded into a small
//! buffer that stays in L1, and a register-blocked micro-kernel dots them
//! with several activation rows at once. Each accumulator holds one vector
//! of partial sums for one (weight row, activation row) pair, so neither
//! the weights nor the activations are ever transposed; the lanes are
//! summed once per pair, after the last column. f32 weights are read where
//! they lie, and bf16 and f16 weights are widened in registers as the kernel
//! loads them (ahead of decoding each tile into the buffer first; see
//! docs/kernel.md).
//!
//! Per vector of columns, the kernel loads one vector per activation row,
//! then each of the `TILE_OUTPUTS` weight vectors in turn, and issues one
//! FMA per pair: with four weight rows and six activation rows (AVX-512), 10
//! loads feed 24 FMAs; with three activation rows (AVX2), 7 loads feed 12
//! FMAs, and the 12 accumulators, 3 activation vectors and the weight
//! vector fill the 16 registers. Loading the four weight vectors first
//! leaves no room for a third row (the compiler spills), and two rows keep
//! only 8 accumulators, too few to hide the FMA latency.

use airllm_core::{DType, HostTensor, Result, StorageKind};

use super::{decode, f32_in_place, over_output_tiles, prefetch, Product, ProductPath};

/// Weight rows one micro-kernel call dots at once.
pub const TILE_OUTPUTS: usize = 4;

/// Tiles up to this many encoded bytes have the next tile prefetched while
/// they are dotted; longer rows the hardware prefetcher follows by itself,
/// and a burst of prefetches for them was slower (docs/kernel.md).
const PREFETCH_MAX_TILE_BYTES: usize = 8192;

/// The dtype in which the kernel reads `w`'s tiles as stored; `None` where
/// they must be decoded into f32 first (block kinds, f32 bytes not aligned
/// for f32).
fn stored_dtype(w: &HostTensor) -> Option<DType> {
    match w.kind {
        StorageKind::Dense(DType::F32) => f32_in_place(w).map(|_| DType::F32),
        StorageKind::Dense(dtype) => Some(dtype),
        StorageKind::Block(_) => None,
    }
}

/// The tile kernel, where the CPU has AVX2 (the other paths serve it
/// otherwise).
pub struct Tiles;

impl ProductPath for Tiles {
    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return x86::Kernel::widest().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    fn product(p: Product<'_>) -> Option<Result<Vec<f32>>> {
        multiply(p)
    }
}

/// The product through tiles, or `None` where the CPU lacks the
/// instructions.
fn multiply(p: Product<'_>) -> Option<Result<Vec<f32>>> {
    let (x, rows, w, outputs, columns) = (p.x, p.rows, p.w, p.outputs, p.columns);
    #[cfg(target_arch = "x86_64")]
    {
        let kernel = x86::Kernel::widest()?;
        let stored = stored_dtype(w);
        let bytes = w.bytes.as_slice();
        let tile_bytes = w.kind.encoded_bytes(TILE_OUTPUTS * columns).unwrap_or(0);
        Some(over_output_tiles(
            rows,
            outputs,
            TILE_OUTPUTS,
            || vec![0.0f32; TILE_OUTPUTS * columns],
            |buffer, mut product| {
                let (first, count) = (product.first(), product.count());
                if tile_bytes <= PREFETCH_MAX_TILE_BYTES {
                    let next = (first / TILE_OUTPUTS + 1) * tile_bytes;
                    prefetch(&bytes[next.min(bytes.len())..(next + tile_bytes).min(bytes.len())]);
                }
                let (dtype, weights) = match stored {
                    Some(dtype) if count == TILE_OUTPUTS => {
                        let whole = first * columns * dtype.size()
                            ..(first + TILE_OUTPUTS) * columns * dtype.size();
                        (dtype, &bytes[whole])
                    }
                    _ => {
                        let (decoded, padding) = buffer.split_at_mut(count * columns);
                        decode(w, first * columns, decoded)?;
                        padding.fill(0.0);
                        (DType::F32, bytemuck::cast_slice(&buffer[..]))
                    }
                };
                kernel.tile(dtype, x, columns, weights, &mut product);
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

    use airllm_core::DType;

    use super::super::avx2::{bf16x8, f16x8, sum_256};
    use super::super::ProductColumns;
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

    /// An encoding of weight values, read one at a time.
    trait Encoded {
        /// Bytes a value.
        const BYTES: usize;
        /// The value at `at`, as f32.
        unsafe fn one(at: *const u8) -> f32;
    }

    /// An encoding of weight values the micro-kernel loads into `V`.
    trait Stored<V: Vector>: Encoded {
        /// `V::LANES` values from `at`, as f32.
        unsafe fn load(at: *const u8) -> V;
    }

    /// f32 values.
    struct F32;
    /// bf16 values: the high halves of f32s.
    struct Bf16;
    /// IEEE half-precision values.
    struct F16;

    impl Encoded for F32 {
        const BYTES: usize = 4;
        #[inline(always)]
        unsafe fn one(at: *const u8) -> f32 {
            (at as *const f32).read_unaligned()
        }
    }

    impl Encoded for Bf16 {
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn one(at: *const u8) -> f32 {
            f32::from_bits(u32::from((at as *const u16).read_unaligned()) << 16)
        }
    }

    impl Encoded for F16 {
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn one(at: *const u8) -> f32 {
            half::f16::from_bits((at as *const u16).read_unaligned()).to_f32()
        }
    }

    impl Stored<__m512> for F32 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m512 {
            _mm512_loadu_ps(at as *const f32)
        }
    }

    impl Stored<__m256> for F32 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m256 {
            _mm256_loadu_ps(at as *const f32)
        }
    }

    impl Stored<__m512> for Bf16 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m512 {
            let halves = _mm256_loadu_si256(at as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }

    impl Stored<__m256> for Bf16 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m256 {
            bf16x8(at)
        }
    }

    impl Stored<__m512> for F16 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i))
        }
    }

    impl Stored<__m256> for F16 {
        #[inline(always)]
        unsafe fn load(at: *const u8) -> __m256 {
            f16x8(at)
        }
    }

    /// `out[r · out_stride + o] = w[o] · x[r]` for the first `count` of the
    /// [`TILE_OUTPUTS`] weight rows at `w` (encoded as `S`) and the `R`
    /// activation rows at `x` (rows of `columns` values, `columns` apart).
    ///
    /// # Safety
    /// The CPU has `V`'s instructions; `w` and `x` hold the rows read, and
    /// `out` the values written.
    #[inline(always)]
    unsafe fn dots<V: Vector, S: Stored<V>, const R: usize>(
        x: *const f32,
        w: *const u8,
        columns: usize,
        count: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let at = |o: usize, c: usize| w.add((o * columns + c) * S::BYTES);
        let mut acc = [[V::zero(); TILE_OUTPUTS]; R];
        let body = columns - columns % V::LANES;
        let mut c = 0;
        while c < body {
            let mut xs = [V::zero(); R];
            for (r, xr) in xs.iter_mut().enumerate() {
                *xr = V::load(x.add(r * columns + c));
            }
            for o in 0..TILE_OUTPUTS {
                let weight = S::load(at(o, c));
                for (acc, xr) in acc.iter_mut().zip(&xs) {
                    acc[o] = V::fma(weight, *xr, acc[o]);
                }
            }
            c += V::LANES;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (o, acc) in acc.iter().enumerate().take(count) {
                let mut total = acc.sum();
                for c in body..columns {
                    total += S::one(at(o, c)) * *x.add(r * columns + c);
                }
                *out.add(r * out_stride + o) = total;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dots_avx512<S: Stored<__m512>, const R: usize>(
        x: *const f32,
        w: *const u8,
        columns: usize,
        count: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        dots::<__m512, S, R>(x, w, columns, count, out, out_stride);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots_avx2<S: Stored<__m256>, const R: usize>(
        x: *const f32,
        w: *const u8,
        columns: usize,
        count: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        dots::<__m256, S, R>(x, w, columns, count, out, out_stride);
    }

    /// Activation rows one micro-kernel call takes at most (AVX-512).
    const MAX_ROWS: usize = 6;

    /// One micro-kernel: `R` activation rows against the tile's weight rows.
    type DotsFn = unsafe fn(*const f32, *const u8, usize, usize, *mut f32, usize);

    /// The micro-kernels of one vector width for one encoding, by
    /// activation rows (index `R - 1`).
    type ByRows = &'static [DotsFn];

    /// The micro-kernels of one vector width, one table per encoding: 6
    /// activation rows at 512 bits (24 accumulators of 32 registers), 3 at
    /// 256 bits (12 of 16).
    #[derive(Clone, Copy)]
    pub struct Kernel {
        f32: ByRows,
        bf16: ByRows,
        f16: ByRows,
    }

    /// The AVX-512 micro-kernels for `S`.
    const fn avx512<S: Stored<__m512>>() -> [DotsFn; MAX_ROWS] {
        [
            dots_avx512::<S, 1>,
            dots_avx512::<S, 2>,
            dots_avx512::<S, 3>,
            dots_avx512::<S, 4>,
            dots_avx512::<S, 5>,
            dots_avx512::<S, 6>,
        ]
    }

    /// The AVX2 micro-kernels for `S`.
    const fn avx2<S: Stored<__m256>>() -> [DotsFn; 3] {
        [dots_avx2::<S, 1>, dots_avx2::<S, 2>, dots_avx2::<S, 3>]
    }

    const AVX512: Kernel = Kernel {
        f32: &avx512::<F32>(),
        bf16: &avx512::<Bf16>(),
        f16: &avx512::<F16>(),
    };

    const AVX2: Kernel = Kernel {
        f32: &avx2::<F32>(),
        bf16: &avx2::<Bf16>(),
        f16: &avx2::<F16>(),
    };

    impl Kernel {
        /// The widest kernel this CPU runs; `None` without AVX2, FMA and F16C.
        pub fn widest() -> Option<Self> {
            if is_x86_feature_detected!("avx512f") {
                Some(AVX512)
            } else if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                Some(AVX2)
            } else {
                None
            }
        }

        /// Sets every value of `product` (row `r`, column `o`) to
        /// `weights[o] · x[r]`, for the `product.count()` first of the
        /// [`TILE_OUTPUTS`] weight rows in `weights` (values of `dtype`).
        pub fn tile(
            &self,
            dtype: DType,
            x: &[f32],
            columns: usize,
            weights: &[u8],
            product: &mut ProductColumns,
        ) {
            let (rows, count) = (product.rows(), product.count());
            assert!(
                x.len() == rows * columns
                    && weights.len() >= TILE_OUTPUTS * columns * dtype.size()
                    && count <= TILE_OUTPUTS
            );
            let by_rows = match dtype {
                DType::F32 => self.f32,
                DType::BF16 => self.bf16,
                DType::F16 => self.f16,
            };
            let most = by_rows.len();
            let mut first = 0;
            while first < rows {
                let block = most.min(rows - first);
                // SAFETY: `widest` checked the CPU's features; the rows read
                // are `first..first + block` of `x` and the tile's weight
                // rows in `dtype`, inside the slices checked above; the
                // values written are rows `first..first + block` of the
                // view's `count` columns, inside the product.
                unsafe {
                    (by_rows[block - 1])(
                        x.as_ptr().add(first * columns),
                        weights.as_ptr(),
                        columns,
                        count,
                        product.at(first, 0),
                        product.row_stride(),
                    )
                };
                first += block;
            }
        }
    }
}
