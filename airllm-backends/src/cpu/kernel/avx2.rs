//! AVX2 and AVX-512 integer dot products of quantized weight rows with
//! 16-bit activation rows. Each block kind unpacks a group of 32 weights
//! into one AVX2 vector of signed bytes (the groups of `groups.rs`); one
//! shared loop widens it to 16 bits and multiplies it with up to
//! [`MAX_ROWS`] activation rows (`madd`: pairwise products summed into
//! 32-bit lanes), then applies the scales in f32, at 256 or 512 bits.

use std::arch::x86_64::*;

use airllm_core::{BlockKind, DType};

use super::activations::{QuantizedRow, GROUP};
use super::groups::NF4_CODES;
use super::{ProductColumns, Rounding};
use airllm_core::dequant::scale_min_k4;
use airllm_core::storage::NF4_VALUES;

const PREFETCH_AHEAD: usize = 2048;

/// Activation rows one pass over a weight row serves.
pub const MAX_ROWS: usize = 4;

/// Whether this CPU runs the functions here.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// A block kind's groups as vectors of 32 signed bytes.
trait Groups {
    /// Groups per block.
    const GROUPS: usize;
    /// Bytes per block.
    const BLOCK_BYTES: usize;
    /// Whether the weights have a per-group minimum.
    const HAS_MIN: bool;
    /// Whether the first and second 16 weights of a group have their own scales.
    const SPLIT_SCALES: bool = false;
    /// Whether every quant lies in −32..=31 (all kinds but Q8_0).
    const SIX_BITS: bool = true;

    /// Group `g` of the block at `block`: the quants, the scales of the
    /// first and second 16 of them, and the minimum.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available and `block` points at a whole block.
    unsafe fn group(block: *const u8, g: usize) -> (__m256i, [f32; 2], f32);

    /// [`Groups::group`] with the quants widened to 16 bits, the first 16
    /// and the second 16 (kinds whose quants unpack straight to 16 bits
    /// override it).
    ///
    /// # Safety
    /// As [`Groups::group`].
    #[inline(always)]
    unsafe fn words(block: *const u8, g: usize) -> ([__m256i; 2], [f32; 2], f32) {
        let (q, scales, min) = Self::group(block, g);
        let first = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
        let second = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q));
        ([first, second], scales, min)
    }
}

/// The f16 at `block + at`, as an f32.
#[inline(always)]
unsafe fn f16_at(block: *const u8, at: usize) -> f32 {
    let bits = u16::from_le_bytes([*block.add(at), *block.add(at + 1)]);
    _mm_cvtss_f32(f16_lanes(u32::from(bits)))
}

/// The two f16 values in `bits` (the first in the low half) as f32 lanes
/// 0 and 1.
///
/// Converted in assembly: from the intrinsics the compiler loaded the 16
/// or 32 bits with `vpinsrw` into whatever vector register it liked (the
/// upper lanes of the conversion go unused), often a row's accumulator, so
/// that each block's scale waited for the previous block's sum. `vmovd`
/// depends on nothing but the bits (docs/kernel.md has the gain).
#[inline(always)]
unsafe fn f16_lanes(bits: u32) -> __m128 {
    let lanes: __m128;
    // SAFETY: every function here runs with F16C; the instructions touch
    // only the two registers named.
    std::arch::asm!(
        "vmovd {lanes}, {bits:e}",
        "vcvtph2ps {lanes}, {lanes}",
        bits = in(reg) bits,
        lanes = out(xmm_reg) lanes,
        options(pure, nomem, nostack, preserves_flags),
    );
    lanes
}

/// 16 bytes of nibbles as 32 bytes: low nibbles, then high nibbles.
#[inline(always)]
unsafe fn nibbles(at: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(at as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Bit `i` of `bits` as 0x10 or 0 in byte `i`.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0x0000_0000_0000_0000,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// 16 bytes of nibbles as two vectors of 16-bit lanes: the low nibbles
/// (weights 0–15), then the high nibbles (weights 16–31).
#[inline(always)]
unsafe fn nibble_words(at: *const u8) -> [__m256i; 2] {
    let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(at as *const __m128i));
    [
        _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)),
        _mm256_srli_epi16::<4>(bytes),
    ]
}

/// The two f16 values at `block` and `block + 2`, converted together.
#[inline(always)]
unsafe fn f16_pair(block: *const u8) -> (f32, f32) {
    let both = f16_lanes(read_u32(block));
    (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
}

#[inline(always)]
unsafe fn read_u32(at: *const u8) -> u32 {
    u32::from_le_bytes(std::ptr::read_unaligned(at as *const [u8; 4]))
}

struct Q8_0;
impl Groups for Q8_0 {
    const GROUPS: usize = 1;
    const BLOCK_BYTES: usize = 34;
    const HAS_MIN: bool = false;
    const SIX_BITS: bool = false;
    #[inline(always)]
    unsafe fn group(block: *const u8, _: usize) -> (__m256i, [f32; 2], f32) {
        let q = _mm256_loadu_si256(block.add(2) as *const __m256i);
        (q, [f16_at(block, 0); 2], 0.0)
    }
}

struct Q4_0;
impl Groups for Q4_0 {
    const GROUPS: usize = 1;
    const BLOCK_BYTES: usize = 18;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn group(block: *const u8, _: usize) -> (__m256i, [f32; 2], f32) {
        let q = _mm256_sub_epi8(nibbles(block.add(2)), _mm256_set1_epi8(8));
        (q, [f16_at(block, 0); 2], 0.0)
    }
    #[inline(always)]
    unsafe fn words(block: *const u8, _: usize) -> ([__m256i; 2], [f32; 2], f32) {
        let eight = _mm256_set1_epi16(8);
        let [first, second] = nibble_words(block.add(2));
        let q = [
            _mm256_sub_epi16(first, eight),
            _mm256_sub_epi16(second, eight),
        ];
        (q, [f16_at(block, 0); 2], 0.0)
    }
}

struct Q4_1;
impl Groups for Q4_1 {
    const GROUPS: usize = 1;
    const BLOCK_BYTES: usize = 20;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn group(block: *const u8, _: usize) -> (__m256i, [f32; 2], f32) {
        let (scale, min) = f16_pair(block);
        (nibbles(block.add(4)), [scale; 2], min)
    }
    #[inline(always)]
    unsafe fn words(block: *const u8, _: usize) -> ([__m256i; 2], [f32; 2], f32) {
        let (scale, min) = f16_pair(block);
        (nibble_words(block.add(4)), [scale; 2], min)
    }
}

struct Q5_0;
impl Groups for Q5_0 {
    const GROUPS: usize = 1;
    const BLOCK_BYTES: usize = 22;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn group(block: *const u8, _: usize) -> (__m256i, [f32; 2], f32) {
        let q = _mm256_or_si256(nibbles(block.add(6)), fifth_bits(read_u32(block.add(2))));
        let q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        (q, [f16_at(block, 0); 2], 0.0)
    }
}

struct Q5_1;
impl Groups for Q5_1 {
    const GROUPS: usize = 1;
    const BLOCK_BYTES: usize = 24;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn group(block: *const u8, _: usize) -> (__m256i, [f32; 2], f32) {
        let q = _mm256_or_si256(nibbles(block.add(8)), fifth_bits(read_u32(block.add(4))));
        (q, [f16_at(block, 0); 2], f16_at(block, 2))
    }
}

/// Low (even `g`) or high (odd `g`) nibbles of the 32 bytes for group `g`
/// of a K-quant, with `(scale, -min)` of the group.
#[inline(always)]
unsafe fn k_nibbles(block: *const u8, qs: usize, g: usize) -> (__m256i, f32, f32) {
    let bytes = _mm256_loadu_si256(block.add(qs + 32 * (g / 2)) as *const __m256i);
    let shifted = _mm256_srl_epi16(bytes, _mm_cvtsi32_si128(4 * (g % 2) as i32));
    let q = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
    let scales = std::slice::from_raw_parts(block.add(4), 12);
    let (scale, min) = scale_min_k4(g, scales);
    (q, f16_at(block, 0) * scale, -f16_at(block, 2) * min)
}

struct Q4K;
impl Groups for Q4K {
    const GROUPS: usize = 8;
    const BLOCK_BYTES: usize = 144;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn group(block: *const u8, g: usize) -> (__m256i, [f32; 2], f32) {
        let (q, scale, min) = k_nibbles(block, 16, g);
        (q, [scale; 2], min)
    }
}

struct Q5K;
impl Groups for Q5K {
    const GROUPS: usize = 8;
    const BLOCK_BYTES: usize = 176;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn group(block: *const u8, g: usize) -> (__m256i, [f32; 2], f32) {
        let (q, scale, min) = k_nibbles(block, 48, g);
        let qh = _mm256_loadu_si256(block.add(16) as *const __m256i);
        let bit = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(g as i32)),
            _mm256_set1_epi8(1),
        );
        let q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
        (q, [scale; 2], min)
    }
}

struct Q6K;
impl Groups for Q6K {
    const GROUPS: usize = 8;
    const BLOCK_BYTES: usize = 210;
    const HAS_MIN: bool = false;
    const SPLIT_SCALES: bool = true;
    #[inline(always)]
    unsafe fn group(block: *const u8, g: usize) -> (__m256i, [f32; 2], f32) {
        let (half, k) = (g / 4, g % 4);
        let ql = _mm256_loadu_si256(block.add(64 * half + 32 * (k % 2)) as *const __m256i);
        let qh = _mm256_loadu_si256(block.add(128 + 32 * half) as *const __m256i);
        let low = _mm256_and_si256(
            _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2) as i32)),
            _mm256_set1_epi8(0x0F),
        );
        let high = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)),
            _mm256_set1_epi8(3),
        );
        let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
        let q = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
        let d = f16_at(block, 208);
        let sc = block.add(192 + 8 * half + 2 * k);
        let scales = [d * (*sc as i8) as f32, d * (*sc.add(1) as i8) as f32];
        (q, scales, 0.0)
    }
}

/// NF4, for the integer dots: the table's codes ([`NF4_CODES`], looked up
/// 32 at a time) with a scale of the block's absolute maximum / 127. Its
/// exact values come from [`decode_nf4`].
struct Nf4;
impl Groups for Nf4 {
    const GROUPS: usize = 2;
    const BLOCK_BYTES: usize = 36;
    const HAS_MIN: bool = false;
    const SIX_BITS: bool = false;
    #[inline(always)]
    unsafe fn group(block: *const u8, g: usize) -> (__m256i, [f32; 2], f32) {
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_CODES.as_ptr() as *const __m128i));
        let codes = _mm256_shuffle_epi8(table, nf4_indices(block.add(4 + 16 * g)));
        let scale = f32::from_bits(read_u32(block)) / 127.0;
        (codes, [scale; 2], 0.0)
    }
}

/// The 32 indices in 16 bytes of NF4, in value order (each byte's high
/// nibble first).
#[inline(always)]
unsafe fn nf4_indices(at: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(at as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    let low = _mm_and_si128(bytes, mask);
    _mm256_set_m128i(_mm_unpackhi_epi8(high, low), _mm_unpacklo_epi8(high, low))
}

/// Decodes whole NF4 blocks: each index looked up in [`NF4_VALUES`] (two
/// eight-entry permutes and a blend) and multiplied by the block's absolute
/// maximum, as the portable decoding does (one rounding either way).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_nf4(bytes: &[u8], out: &mut [f32]) {
    let low_table = _mm256_loadu_ps(NF4_VALUES.as_ptr());
    let high_table = _mm256_loadu_ps(NF4_VALUES.as_ptr().add(8));
    for (b, block) in bytes.chunks_exact(36).enumerate() {
        let absmax = _mm256_set1_ps(f32::from_bits(read_u32(block.as_ptr())));
        for g in 0..2 {
            let indices = nf4_indices(block.as_ptr().add(4 + 16 * g));
            let to = out.as_mut_ptr().add(64 * b + 32 * g);
            let halves = [
                _mm256_castsi256_si128(indices),
                _mm256_extracti128_si256::<1>(indices),
            ];
            for (half, sixteen) in halves.into_iter().enumerate() {
                for (quarter, eight) in [sixteen, _mm_srli_si128::<8>(sixteen)]
                    .into_iter()
                    .enumerate()
                {
                    let index = _mm256_cvtepu8_epi32(eight);
                    let low = _mm256_permutevar8x32_ps(low_table, index);
                    let high = _mm256_permutevar8x32_ps(high_table, index);
                    // Bit 3 of the index, moved to the sign bit, picks the table half.
                    let upper = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(index));
                    let value = _mm256_blendv_ps(low, high, upper);
                    _mm256_storeu_ps(
                        to.add(16 * half + 8 * quarter),
                        _mm256_mul_ps(value, absmax),
                    );
                }
            }
        }
    }
}

/// A vector width the group loop runs at: AVX2 (two 256-bit `madd`s per
/// group) or AVX-512 (one 512-bit `madd`).
trait Width {
    /// One row's accumulator.
    type Acc: Copy;
    /// A group's 32 quants, widened to 16 bits.
    type Quants: Copy;

    /// A zero accumulator.
    unsafe fn zero() -> Self::Acc;

    /// Group `g` of the block at `block`, as [`Groups::group`].
    unsafe fn quants<K: Groups>(block: *const u8, g: usize) -> (Self::Quants, [f32; 2], f32);

    /// `acc` plus the products of weights `w` with the 32 activations at
    /// `x`, the first 16 scaled by `scales[0]`, the second by `scales[1]`
    /// (equal unless `split`).
    unsafe fn add_dot(
        w: Self::Quants,
        x: *const i16,
        scales: [f32; 2],
        split: bool,
        acc: Self::Acc,
    ) -> Self::Acc;

    /// The sum of two accumulators' lanes.
    unsafe fn total(a: Self::Acc, b: Self::Acc) -> f32;
}

/// The sum of the 8 lanes, halving the vector until one lane is left.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(super) unsafe fn sum_256(v: __m256) -> f32 {
    let four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)))
}

struct Avx2;
impl Width for Avx2 {
    type Acc = __m256;
    type Quants = [__m256i; 2];

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline(always)]
    unsafe fn quants<K: Groups>(block: *const u8, g: usize) -> ([__m256i; 2], [f32; 2], f32) {
        K::words(block, g)
    }

    #[inline(always)]
    unsafe fn add_dot(
        [first, second]: [__m256i; 2],
        x: *const i16,
        scales: [f32; 2],
        split: bool,
        acc: __m256,
    ) -> __m256 {
        let first = _mm256_madd_epi16(first, _mm256_loadu_si256(x as *const __m256i));
        let second = _mm256_madd_epi16(second, _mm256_loadu_si256(x.add(16) as *const __m256i));
        if !split {
            let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(first, second));
            return _mm256_fmadd_ps(dot, _mm256_set1_ps(scales[0]), acc);
        }
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(first), _mm256_set1_ps(scales[0]), acc);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(second), _mm256_set1_ps(scales[1]), acc)
    }

    #[inline(always)]
    unsafe fn total(a: __m256, b: __m256) -> f32 {
        sum_256(_mm256_add_ps(a, b))
    }
}

struct Avx512;
impl Width for Avx512 {
    type Acc = __m512;
    type Quants = __m512i;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline(always)]
    unsafe fn quants<K: Groups>(block: *const u8, g: usize) -> (__m512i, [f32; 2], f32) {
        let (q, scales, min) = K::group(block, g);
        (_mm512_cvtepi8_epi16(q), scales, min)
    }

    #[inline(always)]
    unsafe fn add_dot(
        w: __m512i,
        x: *const i16,
        scales: [f32; 2],
        split: bool,
        acc: __m512,
    ) -> __m512 {
        // Lanes 0–7 hold the first 16 weights' pair sums, lanes 8–15 the second's.
        let pairs = _mm512_madd_epi16(w, _mm512_loadu_si512(x as *const _));
        let scale = match split {
            true => {
                _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(scales[0]), _mm512_set1_ps(scales[1]))
            }
            false => _mm512_set1_ps(scales[0]),
        };
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(pairs), scale, acc)
    }

    #[inline(always)]
    unsafe fn total(a: __m512, b: __m512) -> f32 {
        let both = _mm512_castps_pd(_mm512_add_ps(a, b));
        let low = _mm256_castpd_ps(_mm512_castpd512_pd256(both));
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(both));
        sum_256(_mm256_add_ps(low, high))
    }
}

/// Adds group `at` of the weight row at `row` times each activation row
/// to `acc` (and its minimum term to `mins`).
#[inline(always)]
unsafe fn add_group<W: Width, K: Groups, const R: usize>(
    row: *const u8,
    at: usize,
    x: &[QuantizedRow<'_>],
    acc: &mut [W::Acc; R],
    mins: &mut [f32; R],
) {
    let block = row.add(at / K::GROUPS * K::BLOCK_BYTES);
    let (w, scales, min) = W::quants::<K>(block, at % K::GROUPS);
    for r in 0..R {
        let xr = x.get_unchecked(r);
        let x_scale = *xr.scales.get_unchecked(at);
        let scales = [scales[0] * x_scale, scales[1] * x_scale];
        let quants = xr.quants.as_ptr().add(at * GROUP);
        acc[r] = W::add_dot(w, quants, scales, K::SPLIT_SCALES, acc[r]);
        if K::HAS_MIN {
            mins[r] += min * *xr.sums.get_unchecked(at);
        }
    }
}

/// `out[r] = row · x[r]` for `R` activation rows. Even and odd groups add
/// into separate accumulators, so consecutive groups do not wait on each other.
#[inline(always)]
unsafe fn rows<W: Width, K: Groups, const R: usize>(
    row: &[u8],
    x: &[QuantizedRow<'_>],
    out: &mut [f32],
) {
    let zero = [W::zero(); R];
    let (mut even, mut odd) = (zero, zero);
    let (mut even_mins, mut odd_mins) = ([0.0f32; R], [0.0f32; R]);
    let groups = row.len() / K::BLOCK_BYTES * K::GROUPS;
    let row = row.as_ptr();
    for pair in 0..groups / 2 {
        let ahead = row.wrapping_add(2 * pair * K::BLOCK_BYTES / K::GROUPS + PREFETCH_AHEAD);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        add_group::<W, K, R>(row, 2 * pair, x, &mut even, &mut even_mins);
        add_group::<W, K, R>(row, 2 * pair + 1, x, &mut odd, &mut odd_mins);
    }
    if groups % 2 == 1 {
        add_group::<W, K, R>(row, groups - 1, x, &mut even, &mut even_mins);
    }
    for r in 0..R {
        *out.get_unchecked_mut(r) = W::total(even[r], odd[r]) + even_mins[r] + odd_mins[r];
    }
}

/// [`rows`] for every weight row in `weights` (`row_bytes` each): the
/// product of weight row `o` with activation row `r` goes to
/// `out + r * stride + o`. One call serves a tile of weight rows, so that
/// the call through [`RowsFn`] and the stores are not paid once per row.
#[inline(always)]
unsafe fn each_row<W: Width, K: Groups, const R: usize>(
    weights: &[u8],
    row_bytes: usize,
    x: &[QuantizedRow<'_>],
    out: *mut f32,
    stride: usize,
) {
    for (o, row) in weights.chunks_exact(row_bytes).enumerate() {
        let mut values = [0.0f32; R];
        rows::<W, K, R>(row, x, &mut values);
        for (r, value) in values.into_iter().enumerate() {
            *out.add(r * stride + o) = value;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<K: Groups, const R: usize>(
    weights: &[u8],
    row_bytes: usize,
    x: &[QuantizedRow<'_>],
    out: *mut f32,
    stride: usize,
) {
    each_row::<Avx2, K, R>(weights, row_bytes, x, out, stride);
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn rows_avx512<K: Groups, const R: usize>(
    weights: &[u8],
    row_bytes: usize,
    x: &[QuantizedRow<'_>],
    out: *mut f32,
    stride: usize,
) {
    each_row::<Avx512, K, R>(weights, row_bytes, x, out, stride);
}

/// A loop over whole weight rows and `x.len()` activation rows (see
/// [`each_row`]).
type RowsFn = unsafe fn(&[u8], usize, &[QuantizedRow<'_>], *mut f32, usize);

/// The loop for `rows` activation rows at 512 bits (`wide`) or 256.
fn rows_fn<K: Groups>(rows: usize, wide: bool) -> RowsFn {
    match (rows, wide) {
        (1, true) => rows_avx512::<K, 1>,
        (2, true) => rows_avx512::<K, 2>,
        (3, true) => rows_avx512::<K, 3>,
        (4, true) => rows_avx512::<K, 4>,
        (1, false) => rows_avx2::<K, 1>,
        (2, false) => rows_avx2::<K, 2>,
        (3, false) => rows_avx2::<K, 3>,
        _ => rows_avx2::<K, 4>,
    }
}

/// Whether this CPU also runs the AVX-512 loop.
pub fn wide_available() -> bool {
    available() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// Dot products of weight rows of one block kind with up to [`MAX_ROWS`]
/// activation rows. The CPU's features and the rows' lengths are checked
/// once, when it is made, not for every weight row.
pub struct RowDots<'a> {
    /// The activation rows.
    x: &'a [QuantizedRow<'a>],
    /// Bytes of a weight row with as many groups as the activation rows.
    row_bytes: usize,
    /// The loop for this kind, row count and width.
    dots: RowsFn,
}

impl<'a> RowDots<'a> {
    /// Dots for weights of `kind` with the rows `x` (1 to [`MAX_ROWS`] rows
    /// of equal length, whole blocks of `kind`), at 512 bits where `wide`.
    /// `None` where the CPU lacks the instructions or the rows do not fit.
    pub fn new(kind: BlockKind, x: &'a [QuantizedRow<'a>], wide: bool) -> Option<Self> {
        match kind {
            BlockKind::Q8_0 => Self::of::<Q8_0>(x, wide),
            BlockKind::Q4_0 => Self::of::<Q4_0>(x, wide),
            BlockKind::Q4_1 => Self::of::<Q4_1>(x, wide),
            BlockKind::Q5_0 => Self::of::<Q5_0>(x, wide),
            BlockKind::Q5_1 => Self::of::<Q5_1>(x, wide),
            BlockKind::Q4_K => Self::of::<Q4K>(x, wide),
            BlockKind::Q5_K => Self::of::<Q5K>(x, wide),
            BlockKind::Q6_K => Self::of::<Q6K>(x, wide),
            BlockKind::NF4 => Self::of::<Nf4>(x, wide),
        }
    }

    /// [`RowDots::new`] at the widest vectors this CPU has.
    pub fn widest(kind: BlockKind, x: &'a [QuantizedRow<'a>]) -> Option<Self> {
        Self::new(kind, x, wide_available())
    }

    fn of<K: Groups>(x: &'a [QuantizedRow<'a>], wide: bool) -> Option<Self> {
        let supported = available() && (!wide || wide_available());
        let groups = x.first()?.scales.len();
        let fits = x.len() <= MAX_ROWS
            && groups % K::GROUPS == 0
            && x.iter().all(|r| {
                r.quants.len() == groups * GROUP
                    && r.scales.len() == groups
                    && r.sums.len() == groups
            });
        (supported && fits).then(|| RowDots {
            x,
            row_bytes: groups / K::GROUPS * K::BLOCK_BYTES,
            dots: rows_fn::<K>(x.len(), wide),
        })
    }

    /// The products of the weight rows in `weights` (one for each column
    /// of `columns`) with the activation rows, into rows `first_row..` of
    /// `columns`.
    pub fn dots(&self, weights: &[u8], columns: &mut ProductColumns, first_row: usize) {
        assert!(
            weights.len() == columns.count() * self.row_bytes
                && first_row + self.x.len() <= columns.rows()
        );
        // SAFETY: `of` checked the CPU's features and that every activation
        // row holds as many groups as a row of `row_bytes`, so the loads
        // stay inside both; the stores go to rows `first_row..first_row +
        // x.len()` of the view's `count` columns, inside it (checked above).
        unsafe {
            (self.dots)(
                weights,
                self.row_bytes,
                self.x,
                columns.at(first_row, 0),
                columns.row_stride(),
            )
        }
    }
}

/// Decodes the whole blocks of `kind` in `bytes` into `out` (one value per
/// weight, `quant · scale + min` as GGML's reference decoding, rounded as
/// `rounding` says) at 512 bits (`wide`) or 256; false where the CPU lacks
/// the instructions or `out` does not hold the blocks' values.
pub fn decode_blocks_at(
    kind: BlockKind,
    bytes: &[u8],
    out: &mut [f32],
    wide: bool,
    rounding: Rounding,
) -> bool {
    let supported = if wide { wide_available() } else { available() };
    if !supported || !bytes.len().is_multiple_of(kind.block_bytes()) {
        return false;
    }
    if out.len() != bytes.len() / kind.block_bytes() * kind.block_len() {
        return false;
    }
    let decode = match kind {
        BlockKind::Q8_0 => decoder::<Q8_0>(wide, rounding),
        BlockKind::Q4_0 => decoder::<Q4_0>(wide, rounding),
        BlockKind::Q4_1 => decoder::<Q4_1>(wide, rounding),
        BlockKind::Q5_0 => decoder::<Q5_0>(wide, rounding),
        BlockKind::Q5_1 => decoder::<Q5_1>(wide, rounding),
        BlockKind::Q4_K => decoder::<Q4K>(wide, rounding),
        BlockKind::Q5_K => decoder::<Q5K>(wide, rounding),
        BlockKind::Q6_K => decoder::<Q6K>(wide, rounding),
        // One multiply a value: the same at either rounding; 256 bits wide.
        BlockKind::NF4 => decode_nf4,
    };
    // SAFETY: the CPU has the width's instructions (checked above), and
    // `out` holds a value for every weight of the whole blocks in `bytes`.
    unsafe { decode(bytes, out) };
    true
}

/// [`decode_blocks_at`] at the widest vectors this CPU has.
pub fn decode_blocks(kind: BlockKind, bytes: &[u8], out: &mut [f32], rounding: Rounding) -> bool {
    decode_blocks_at(kind, bytes, out, wide_available(), rounding)
}

/// Widens the bf16 or f16 values in `bytes` into `out` (two bytes a value,
/// a multiple of 8 values); false where the CPU lacks AVX2 and F16C, for
/// f32, or where the counts differ. The compiler's own loop for bf16 runs at
/// the baseline's 128 bits, and f16 takes `half`'s scalar conversion.
pub fn widen_halves(dtype: DType, bytes: &[u8], out: &mut [f32]) -> bool {
    if !available() || bytes.len() != 2 * out.len() || !out.len().is_multiple_of(8) {
        return false;
    }
    // SAFETY: the CPU has AVX2 and F16C (checked above), and `bytes` holds
    // two bytes for every value of `out`, a multiple of 8.
    match dtype {
        DType::BF16 => unsafe { widen_bf16(bytes, out) },
        DType::F16 => unsafe { widen_f16(bytes, out) },
        DType::F32 => return false,
    }
    true
}

/// The eight bf16 values at `at`, widened to f32 (in functions with AVX2).
#[inline(always)]
pub(super) unsafe fn bf16x8(at: *const u8) -> __m256 {
    let halves = _mm_loadu_si128(at as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
}

/// The eight f16 values at `at`, widened to f32 (in functions with F16C).
#[inline(always)]
pub(super) unsafe fn f16x8(at: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_bf16(bytes: &[u8], out: &mut [f32]) {
    for (i, to) in out.chunks_exact_mut(8).enumerate() {
        _mm256_storeu_ps(to.as_mut_ptr(), bf16x8(bytes.as_ptr().add(16 * i)));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_f16(bytes: &[u8], out: &mut [f32]) {
    for (i, to) in out.chunks_exact_mut(8).enumerate() {
        _mm256_storeu_ps(to.as_mut_ptr(), f16x8(bytes.as_ptr().add(16 * i)));
    }
}

/// The decoding loop of `K` at 512 bits (`wide`) or 256, rounding as `rounding` says.
fn decoder<K: Groups>(wide: bool, rounding: Rounding) -> unsafe fn(&[u8], &mut [f32]) {
    match (wide, rounding) {
        (true, Rounding::Fused) => decode_blocks_avx512::<K, true>,
        (true, Rounding::Portable) => decode_blocks_avx512::<K, false>,
        (false, Rounding::Fused) => decode_blocks_avx2::<K, true>,
        (false, Rounding::Portable) => decode_blocks_avx2::<K, false>,
    }
}

/// `q · scale + min`: one FMA (`FUSED`), else a multiply and, where `K`
/// has a minimum, an add, rounded as the portable decoding rounds.
#[inline(always)]
unsafe fn affine_256<K: Groups, const FUSED: bool>(
    q: __m256,
    scale: __m256,
    min: __m256,
) -> __m256 {
    match (FUSED, K::HAS_MIN) {
        (true, _) => _mm256_fmadd_ps(q, scale, min),
        (false, true) => _mm256_add_ps(_mm256_mul_ps(q, scale), min),
        (false, false) => _mm256_mul_ps(q, scale),
    }
}

/// [`affine_256`] at 512 bits.
#[inline(always)]
unsafe fn affine_512<K: Groups, const FUSED: bool>(
    q: __m512,
    scale: __m512,
    min: __m512,
) -> __m512 {
    match (FUSED, K::HAS_MIN) {
        (true, _) => _mm512_fmadd_ps(q, scale, min),
        (false, true) => _mm512_add_ps(_mm512_mul_ps(q, scale), min),
        (false, false) => _mm512_mul_ps(q, scale),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_blocks_avx2<K: Groups, const FUSED: bool>(bytes: &[u8], out: &mut [f32]) {
    let groups = bytes.len() / K::BLOCK_BYTES * K::GROUPS;
    for at in 0..groups {
        let block = bytes.as_ptr().add(at / K::GROUPS * K::BLOCK_BYTES);
        let (q, scales, min) = K::group(block, at % K::GROUPS);
        let min = _mm256_set1_ps(min);
        let to = out.as_mut_ptr().add(at * GROUP);
        for (half, bytes) in [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)]
            .into_iter()
            .enumerate()
        {
            let scale = _mm256_set1_ps(scales[half]);
            let low = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            let high = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(bytes)));
            _mm256_storeu_ps(to.add(16 * half), affine_256::<K, FUSED>(low, scale, min));
            _mm256_storeu_ps(
                to.add(16 * half + 8),
                affine_256::<K, FUSED>(high, scale, min),
            );
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn decode_blocks_avx512<K: Groups, const FUSED: bool>(bytes: &[u8], out: &mut [f32]) {
    let groups = bytes.len() / K::BLOCK_BYTES * K::GROUPS;
    for at in 0..groups {
        let block = bytes.as_ptr().add(at / K::GROUPS * K::BLOCK_BYTES);
        let (q, scales, min) = K::group(block, at % K::GROUPS);
        let first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
        let second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
        let min = _mm512_set1_ps(min);
        let to = out.as_mut_ptr().add(at * GROUP);
        let (low, high) = (_mm512_set1_ps(scales[0]), _mm512_set1_ps(scales[1]));
        _mm512_storeu_ps(to, affine_512::<K, FUSED>(first, low, min));
        _mm512_storeu_ps(to.add(16), affine_512::<K, FUSED>(second, high, min));
    }
}

/// Where [`AffineCodes::decode`] writes each group: its 32 codes `codes` values
/// after the previous group's, its scale and minimum `scales` after the
/// previous group's.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    /// Distance between groups' codes (at least 32).
    pub codes: usize,
    /// Distance between groups' scales and minimums (at least 1).
    pub scales: usize,
}

/// Decodes rows of one block kind as groups of 32 integer codes with an
/// affine map each (`value = code · scale + min`, as [`decode_blocks`]
/// computes it): the codes as bf16, exact since every code lies in
/// −128..=127, with one scale and one minimum per group. The CPU's features
/// and the kind are checked once, when it is made.
pub struct AffineCodes {
    kind: BlockKind,
    decode: unsafe fn(&[u8], *mut u16, *mut f32, *mut f32, Strides),
}

impl AffineCodes {
    /// The decoder for `kind`; `None` for Q6_K (the halves of its groups
    /// have their own scales), NF4 (its codes round its values) or on CPUs
    /// without AVX-512 BF16.
    pub fn new(kind: BlockKind) -> Option<Self> {
        if !wide_available() || !is_x86_feature_detected!("avx512bf16") {
            return None;
        }
        let decode = match kind {
            BlockKind::Q8_0 => affine_blocks::<Q8_0>,
            BlockKind::Q4_0 => affine_blocks::<Q4_0>,
            BlockKind::Q4_1 => affine_blocks::<Q4_1>,
            BlockKind::Q5_0 => affine_blocks::<Q5_0>,
            BlockKind::Q5_1 => affine_blocks::<Q5_1>,
            BlockKind::Q4_K => affine_blocks::<Q4K>,
            BlockKind::Q5_K => affine_blocks::<Q5K>,
            BlockKind::Q6_K | BlockKind::NF4 => return None,
        };
        Some(AffineCodes { kind, decode })
    }

    /// The block kind it decodes.
    pub fn kind(&self) -> BlockKind {
        self.kind
    }

    /// Decodes the whole blocks in `bytes`: each group's codes into
    /// `codes`, its scale and minimum into `scales` and `mins`, placed as
    /// `strides` says. False where the outputs do not hold every group.
    pub fn decode(
        &self,
        bytes: &[u8],
        codes: &mut [u16],
        scales: &mut [f32],
        mins: &mut [f32],
        strides: Strides,
    ) -> bool {
        let kind = self.kind;
        let groups = bytes.len() / kind.block_bytes() * kind.block_len() / GROUP;
        let holds = |len: usize, stride: usize, each: usize| {
            groups == 0
                || (groups - 1)
                    .checked_mul(stride)
                    .and_then(|s| s.checked_add(each))
                    <= Some(len)
        };
        let fits = bytes.len().is_multiple_of(kind.block_bytes())
            && strides.codes >= GROUP
            && strides.scales >= 1
            && holds(codes.len(), strides.codes, GROUP)
            && holds(scales.len(), strides.scales, 1)
            && holds(mins.len(), strides.scales, 1);
        if fits {
            let (codes, scales, mins) =
                (codes.as_mut_ptr(), scales.as_mut_ptr(), mins.as_mut_ptr());
            // SAFETY: `new` checked the CPU's features; `codes`, `scales`
            // and `mins` hold every group's values at their strides.
            unsafe { (self.decode)(bytes, codes, scales, mins, strides) };
        }
        fits
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn affine_blocks<K: Groups>(
    bytes: &[u8],
    codes: *mut u16,
    scales: *mut f32,
    mins: *mut f32,
    strides: Strides,
) {
    debug_assert!(!K::SPLIT_SCALES);
    /// The bf16 values of 32 quants (as 16-bit lanes: 16 from `first` in
    /// the low half, 16 from `second`).
    #[inline(always)]
    unsafe fn bf16s(first: __m512i, second: __m512i) -> __m512i {
        let pairs = _mm512_cvtne2ps_pbh(_mm512_cvtepi32_ps(second), _mm512_cvtepi32_ps(first));
        std::mem::transmute::<__m512bh, __m512i>(pairs)
    }
    // The bf16 of each quant −32..=31 by its low six bits: 0..=31, then
    // −32..=−1 (one permutation instead of four conversions).
    let count = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let sixteen = _mm512_set1_epi32(16);
    let low = bf16s(count, _mm512_add_epi32(count, sixteen));
    let minus = _mm512_set1_epi32(-32);
    let high = bf16s(
        _mm512_add_epi32(count, minus),
        _mm512_add_epi32(_mm512_add_epi32(count, sixteen), minus),
    );
    for at in 0..bytes.len() / K::BLOCK_BYTES * K::GROUPS {
        let block = bytes.as_ptr().add(at / K::GROUPS * K::BLOCK_BYTES);
        let (q, scale, min) = K::group(block, at % K::GROUPS);
        let both = match K::SIX_BITS {
            true => _mm512_permutex2var_epi16(low, _mm512_cvtepi8_epi16(q), high),
            false => bf16s(
                _mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)),
                _mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)),
            ),
        };
        _mm512_storeu_si512(codes.add(at * strides.codes) as *mut _, both);
        *scales.add(at * strides.scales) = scale[0];
        *mins.add(at * strides.scales) = min;
    }
}
