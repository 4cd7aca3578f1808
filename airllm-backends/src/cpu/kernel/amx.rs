//! Batches and prompts on CPUs with AMX (Intel's tile matrix units,
//! Sapphire Rapids and later), with [`crate::Activations::Reduced`]: the
//! products run on the tile units' bf16 dot products, which sum in f32.
//! One tile product does 16 × 16 × 32 multiply-adds; a core here does about
//! 880 GFLOP/s this way, against about 150 in AVX-512 f32 FMAs.
//!
//! bf16 alone (8 significant bits) changed the greedy tokens of most test
//! fixtures, so each activation is split into a high bf16 part and a low
//! one (the rounded rest), and so is each f32 or f16 weight:
//! `w·x ≈ w_high·x_high + w_high·x_low + w_low·x_high`, within about 2⁻¹⁶
//! of each term, two or three tile products where one would do. Block
//! kinds whose groups of 32 weights share one scale and minimum (all but
//! Q6_K) need no split: their integer codes are exact in bf16, so each
//! group of 32 columns is its own pair of tile products (`codes · x_high +
//! codes · x_low`), scaled in f32 per weight row and group, plus the
//! minimum times the activations' sum over the group ([`codes_panel`]).
//!
//! The weights are the left operand: a panel of weight rows (decoded or
//! copied; for block kinds, 256 columns of 32 rows at a time, decoded into
//! L1 just before their products) is laid out tile by tile, 16 rows of 32
//! columns each. The
//! activations are packed once per product into the right operand's pair
//! layout (row `p` of a tile holds columns `2p, 2p + 1` of 16 activation
//! rows). Each result tile is `[16 outputs, 16 rows]`, written transposed
//! into the `[rows, outputs]` product.

use airllm_core::{BlockKind, Result, StorageKind};

use super::{Product, ProductPath};

/// Columns one tile row holds (64 bytes of bf16).
pub const CHUNK: usize = 32;

/// Whether weights of `kind` are multiplied as integer codes: the block
/// kinds whose groups of 32 weights are exactly a scale times a code plus a
/// minimum (all but Q6_K, whose halves have their own scales, and NF4,
/// whose values are a table's).
pub fn takes_codes(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::Block(block) if !matches!(block, BlockKind::Q6_K | BlockKind::NF4))
}

/// The AMX tile units, where the CPU has AMX bf16 and the OS lets this
/// process use them; `None` when `columns` is not a multiple of [`CHUNK`].
pub struct Amx;

impl ProductPath for Amx {
    fn available() -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        return x86::permitted();
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        return false;
    }

    fn product(p: Product<'_>) -> Option<Result<Vec<f32>>> {
        if !Self::available() || !p.columns.is_multiple_of(CHUNK) {
            return None;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        return Some(x86::product(p));
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        None
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::asm;
    use std::cell::RefCell;
    use std::sync::OnceLock;

    use airllm_core::{BlockKind, DType, HostTensor, Result, StorageKind};
    use rayon::prelude::*;

    use super::super::avx2::{AffineCodes, Strides};
    use super::super::{decode, prefetch, Output, Product};
    use super::CHUNK;
    use crate::cpu::transpose::transpose_16x16;

    /// Rows of a tile (activation rows of a right tile, weight rows of a
    /// left one).
    const TILE: usize = 16;

    /// Weight rows one kernel call multiplies: two left tiles.
    const GROUP: usize = 2 * TILE;

    /// bf16 values in one packed tile (1 KiB).
    const TILE_VALUES: usize = TILE * CHUNK;

    /// `arch_prctl` request for permission to use an extended state
    /// component, and AMX's tile data component.
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;

    /// Whether the CPU reports AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX
    /// bits 24 and 22) and Linux granted this process the tile state.
    pub fn permitted() -> bool {
        static PERMITTED: OnceLock<bool> = OnceLock::new();
        *PERMITTED.get_or_init(|| {
            // CPUID leaf 7 is read where the CPU reports it (leaf 0's EAX).
            let leaf7 = (std::arch::x86_64::__cpuid(0).eax >= 7)
                .then(|| std::arch::x86_64::__cpuid_count(7, 0).edx);
            let cpu = leaf7.is_some_and(|edx| edx & (1 << 24) != 0 && edx & (1 << 22) != 0)
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16");
            // SAFETY: the request only changes this process's permissions.
            cpu && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
        })
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows of 64
    /// bytes (tmm0–3 results, tmm4–5 weights, tmm6–7 activations).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn all_full() -> Self {
            let mut bytes = [0u8; 64];
            bytes[0] = 1;
            for tile in 0..8 {
                bytes[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&64u16.to_le_bytes());
                bytes[48 + tile] = TILE as u8;
            }
            TileConfig(bytes)
        }
    }

    /// The tile state of the running thread, configured for the kernels
    /// while it lives and released after (so context switches stop saving
    /// 8 KiB of tiles).
    struct Tiles;

    impl Tiles {
        fn configure() -> Self {
            let config = TileConfig::all_full();
            // SAFETY: `permitted` was checked; the configuration is valid
            // for palette 1.
            unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releasing configured tiles has no other effect.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// Result tiles of one kernel call: for each of the two weight tiles,
    /// two partial `[16 outputs, 16 rows]` sums (four independent
    /// accumulators keep four tile products in flight), added when the
    /// results are written.
    #[repr(C, align(64))]
    struct Sums([[[f32; TILE * TILE]; 2]; 2]);

    /// One group of weights (`high`: per chunk two tiles of 16 rows, see
    /// [`weight_panel`]; `low` laid out alike, or null) against one block
    /// of packed activations (`b`: per chunk a high tile, then a low tile),
    /// over `chunks` chunks of 32 columns: `w_high · x_high + w_high ·
    /// x_low`, plus `w_low · x_high` where `low` is not null.
    ///
    /// # Safety
    /// The tiles are configured ([`Tiles`]); `high`, `b` and a non-null
    /// `low` hold `2 · chunks` KiB each.
    unsafe fn group_by_block(
        high: *const u16,
        low: *const u16,
        b: *const u32,
        chunks: usize,
        sums: &mut Sums,
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm6, [{b} + {packed}*1]",
            "tileloadd tmm4, [{a} + {packed}*1]",
            "tileloadd tmm7, [{b} + {packed}*1 + 1024]",
            "tileloadd tmm5, [{a} + {packed}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "test {l}, {l}",
            "jz 3f",
            "tileloadd tmm4, [{l} + {packed}*1]",
            "tileloadd tmm5, [{l} + {packed}*1 + 1024]",
            "tdpbf16ps tmm1, tmm4, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm6",
            "add {l}, 2048",
            "3:",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {packed}*1], tmm0",
            "tilestored [{c} + {packed}*1 + 1024], tmm1",
            "tilestored [{c} + {packed}*1 + 2048], tmm2",
            "tilestored [{c} + {packed}*1 + 3072], tmm3",
            a = inout(reg) high => _,
            l = inout(reg) low => _,
            b = inout(reg) b => _,
            packed = in(reg) 64usize,
            n = inout(reg) chunks => _,
            c = in(reg) sums.0.as_mut_ptr(),
            options(nostack),
        );
    }

    /// The result tiles the codes kernel stores to scale them: the first
    /// weight tile's of two chunks in flight, the second's of a whole span.
    #[repr(C, align(64))]
    struct Staged {
        first: [[f32; TILE * TILE]; 2],
        second: [[f32; TILE * TILE]; SPAN],
    }

    /// One chunk's tile products for [`codes_by_block`]: `codes` (the
    /// group's two tiles) times the high and the low activation tile at
    /// `b`, into result tiles tmm0–1 (`slot` 0) or tmm2–3 (`slot` 1), the
    /// first weight tile's stored to `first`, the second's to `second`.
    ///
    /// # Safety
    /// As [`codes_by_block`]; `codes` and `b` hold 2 KiB each, `first` and
    /// `second` 1 KiB.
    #[inline(always)]
    unsafe fn chunk_products(
        codes: *const u16,
        b: *const u32,
        slot: usize,
        first: *mut f32,
        second: *mut f32,
    ) {
        macro_rules! products {
            ($r0:literal, $r1:literal) => {
                asm!(
                    concat!("tilezero ", $r0),
                    concat!("tilezero ", $r1),
                    "tileloadd tmm6, [{b} + {stride}*1]",
                    "tileloadd tmm4, [{a} + {stride}*1]",
                    "tileloadd tmm7, [{b} + {stride}*1 + 1024]",
                    "tileloadd tmm5, [{a} + {stride}*1 + 1024]",
                    concat!("tdpbf16ps ", $r0, ", tmm4, tmm6"),
                    concat!("tdpbf16ps ", $r1, ", tmm5, tmm6"),
                    concat!("tdpbf16ps ", $r0, ", tmm4, tmm7"),
                    concat!("tdpbf16ps ", $r1, ", tmm5, tmm7"),
                    concat!("tilestored [{c} + {stride}*1], ", $r0),
                    concat!("tilestored [{d} + {stride}*1], ", $r1),
                    a = in(reg) codes,
                    b = in(reg) b,
                    c = in(reg) first,
                    d = in(reg) second,
                    stride = in(reg) 64usize,
                    options(nostack),
                )
            };
        }
        match slot {
            0 => products!("tmm0", "tmm1"),
            _ => products!("tmm2", "tmm3"),
        }
    }

    /// One group of weights as integer codes (`weights`, a span decoded by
    /// [`codes_span`]) against one block of packed activations (`b`, as
    /// for [`group_by_block`]; `sums`: per chunk the 16 rows' sums of their
    /// 32 columns), over `chunks` chunks: per chunk `codes · x_high + codes
    /// · x_low` in the tiles, then each weight row's result times its
    /// scale, plus its minimum times the rows' sums (`MIN`), added in f32.
    /// The next chunk's tile products run while one chunk is scaled. The
    /// two `[16 outputs, 16 rows]` results go to the first sum of each half
    /// of `out`, added to what it holds where `add`.
    ///
    /// # Safety
    /// The tiles are configured ([`Tiles`]); `weights` holds `chunks`
    /// chunks, `b` `2 · chunks` KiB, `sums` `16 · chunks` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn codes_by_block<const MIN: bool>(
        weights: &CodesSpan,
        b: *const u32,
        sums: *const f32,
        chunks: usize,
        add: bool,
        out: &mut Sums,
    ) {
        use std::arch::x86_64::*;
        debug_assert!(chunks <= SPAN);
        let codes = weights.codes.as_ptr();
        let mut staged = std::mem::MaybeUninit::<Staged>::uninit();
        let staged = staged.as_mut_ptr();
        let first = |slot: usize| std::ptr::addr_of_mut!((*staged).first[slot]) as *mut f32;
        let second = |chunk: usize| std::ptr::addr_of_mut!((*staged).second[chunk]) as *mut f32;
        let row_sums = |chunk: usize| match MIN {
            true => _mm512_loadu_ps(sums.add(chunk * TILE)),
            false => _mm512_setzero_ps(),
        };
        // The first weight tile's results are scaled while the next chunk's
        // products run, the second's after the span (16 sums in registers
        // at a time: all 32 did not fit).
        let [low_half, high_half] = &mut out.0;
        let mut acc = load_sums(&low_half[0], add);
        chunk_products(codes, b, 0, first(0), second(0));
        for chunk in 0..chunks {
            if chunk + 1 < chunks {
                let next = chunk + 1;
                chunk_products(
                    codes.add(next * 2 * TILE_VALUES),
                    b.add(next * 2 * TILE_PAIRS),
                    next % 2,
                    first(next % 2),
                    second(next),
                );
            }
            // The activations of the chunk after next (2 KiB) brought to L1.
            if chunk + 2 < chunks {
                let ahead = b.add((chunk + 2) * 2 * TILE_PAIRS) as *const i8;
                for line in 0..2 * TILE_PAIRS * 4 / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line * 64));
                }
            }
            let at = chunk * GROUP;
            scale_results::<MIN>(&mut acc, first(chunk % 2), weights, at, row_sums(chunk));
        }
        store_sums(&acc, &mut low_half[0]);
        let mut acc = load_sums(&high_half[0], add);
        for chunk in 0..chunks {
            let at = chunk * GROUP + TILE;
            scale_results::<MIN>(&mut acc, second(chunk), weights, at, row_sums(chunk));
        }
        store_sums(&acc, &mut high_half[0]);
    }

    /// A `[16 outputs, 16 rows]` sum in registers (a weight row's 16
    /// activation rows each), or zeros unless `add`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_sums(sums: &[f32; TILE * TILE], add: bool) -> [std::arch::x86_64::__m512; TILE] {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_setzero_ps(); TILE];
        if add {
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(sums[i * TILE..].as_ptr());
            }
        }
        acc
    }

    /// Writes [`load_sums`]'s registers back.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_sums(acc: &[std::arch::x86_64::__m512; TILE], sums: &mut [f32; TILE * TILE]) {
        for (i, acc) in acc.iter().enumerate() {
            std::arch::x86_64::_mm512_storeu_ps(sums[i * TILE..].as_mut_ptr(), *acc);
        }
    }

    /// Adds a result tile (`results`, `[16 outputs, 16 rows]`) to `acc`:
    /// each weight row's results times its scale (`weights.scales` from
    /// `at`), plus its minimum times the rows' sums (`MIN`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scale_results<const MIN: bool>(
        acc: &mut [std::arch::x86_64::__m512; TILE],
        results: *const f32,
        weights: &CodesSpan,
        at: usize,
        row_sums: std::arch::x86_64::__m512,
    ) {
        use std::arch::x86_64::*;
        let (scales, mins) = (
            weights.scales.as_ptr().add(at),
            weights.mins.as_ptr().add(at),
        );
        for (i, acc) in acc.iter_mut().enumerate() {
            let result = _mm512_load_ps(results.add(i * TILE));
            *acc = _mm512_fmadd_ps(result, _mm512_set1_ps(*scales.add(i)), *acc);
            if MIN {
                *acc = _mm512_fmadd_ps(row_sums, _mm512_set1_ps(*mins.add(i)), *acc);
            }
        }
    }

    /// `from` (a multiple of 32 values) split into bf16 parts: `high`
    /// rounded to nearest even, `low` the rounded rest `from − high`; their
    /// sum is within 2⁻¹⁶ of each value (the high part alone: 2⁻⁸).
    fn split_bf16(from: &[f32], high: &mut [u16], low: &mut [u16]) {
        assert!(
            high.len() == from.len() && low.len() == from.len() && from.len().is_multiple_of(32)
        );
        // SAFETY: `permitted` checked AVX-512 BF16; the slices hold
        // `from.len()` values each.
        unsafe {
            split_bf16_avx512(
                from.as_ptr(),
                high.as_mut_ptr(),
                low.as_mut_ptr(),
                from.len(),
            )
        };
    }

    /// [`split_bf16`] on `count` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn split_bf16_avx512(from: *const f32, high: *mut u16, low: *mut u16, count: usize) {
        use std::arch::x86_64::*;
        for i in (0..count).step_by(32) {
            let (top, bottom) = split_chunk(
                _mm512_loadu_ps(from.add(i)),
                _mm512_loadu_ps(from.add(i + 16)),
            );
            _mm512_storeu_si512(high.add(i) as *mut _, top);
            _mm512_storeu_si512(low.add(i) as *mut _, bottom);
        }
    }

    /// 32 values (`first`, then `second`) split into their high bf16 parts
    /// and their low ones, each 32 bf16 in order (so column pairs are u32s).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn split_chunk(
        first: std::arch::x86_64::__m512,
        second: std::arch::x86_64::__m512,
    ) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        /// The bf16 values of `half` (16 of them) widened to f32.
        #[inline(always)]
        unsafe fn widen(half: __m256i) -> __m512 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
        }
        let top = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(second, first));
        let first_rest = _mm512_sub_ps(first, widen(_mm512_castsi512_si256(top)));
        let second_rest = _mm512_sub_ps(second, widen(_mm512_extracti64x4_epi64::<1>(top)));
        let bottom = _mm512_cvtne2ps_pbh(second_rest, first_rest);
        (top, std::mem::transmute::<__m512bh, __m512i>(bottom))
    }

    /// u32s (column pairs) in one packed tile.
    const TILE_PAIRS: usize = TILE_VALUES / 2;

    /// Activations packed for the tile units ([`pack_activations`]).
    #[derive(Default)]
    struct Packed {
        /// Per block of 16 rows and chunk of 32 columns, a tile of the
        /// values' high bf16 parts, then one of their low parts.
        pairs: Vec<u32>,
        /// Per block and chunk, each row's sum of its 32 values (filled
        /// for weights with minimums only).
        sums: Vec<f32>,
    }

    /// `x: [rows, columns]` in the tile units' pair layout, into `packed`:
    /// for each block of 16 rows and each chunk of 32 columns, a tile of
    /// the values' high bf16 parts then one of their low parts; row `p` of
    /// a tile holds columns `2p, 2p + 1` of the 16 rows (rows past `rows`
    /// zero). With `with_sums`, also each row's sum over each chunk.
    fn pack_activations(
        x: &[f32],
        rows: usize,
        columns: usize,
        packed: &mut Packed,
        with_sums: bool,
    ) {
        let chunks = columns / CHUNK;
        let blocks = rows.div_ceil(TILE);
        packed.pairs.resize(blocks * chunks * 2 * TILE_PAIRS, 0);
        packed.sums.resize(blocks * chunks * TILE, 0.0);
        packed
            .pairs
            .par_chunks_mut(2 * TILE_PAIRS)
            .zip(packed.sums.par_chunks_mut(TILE))
            .enumerate()
            // A block of rows per task: 16 rows fit one (splitting them
            // cost more than it saved).
            .with_min_len(chunks)
            .for_each(|(at, (tiles, sums))| {
                let (block, chunk) = (at / chunks, at % chunks);
                let first = block * TILE;
                let values = (first..rows.min(first + TILE))
                    .map(|r| &x[r * columns + chunk * CHUNK..][..CHUNK]);
                // SAFETY: AVX-512 BF16 (`permitted`).
                unsafe { pack_chunk(values, tiles, sums, with_sums) };
            });
    }

    /// One chunk of up to 16 activation rows (`values`, 32 each) into its
    /// two tiles (`tiles`: high parts, then low parts) and, with
    /// `with_sums`, each row's sum into `sums`: each row is split, and the
    /// 16 × 16 column pairs transposed in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_chunk<'a>(
        values: impl Iterator<Item = &'a [f32]>,
        tiles: &mut [u32],
        sums: &mut [f32],
        with_sums: bool,
    ) {
        use std::arch::x86_64::*;
        assert!(tiles.len() == 2 * TILE_PAIRS && sums.len() == TILE);
        let mut high = [_mm512_setzero_ps(); TILE];
        let mut low = [_mm512_setzero_ps(); TILE];
        let mut totals = [_mm512_setzero_ps(); TILE];
        for (r, row) in values.take(TILE).enumerate() {
            let (first, second) = (
                _mm512_loadu_ps(row.as_ptr()),
                _mm512_loadu_ps(row[16..CHUNK].as_ptr()),
            );
            let (top, bottom) = split_chunk(first, second);
            high[r] = _mm512_castsi512_ps(top);
            low[r] = _mm512_castsi512_ps(bottom);
            totals[r] = _mm512_add_ps(first, second);
        }
        transpose_16x16(&mut high);
        transpose_16x16(&mut low);
        for (p, (high, low)) in high.iter().zip(&low).enumerate() {
            _mm512_storeu_ps(tiles[p * TILE..].as_mut_ptr() as *mut f32, *high);
            _mm512_storeu_ps(
                tiles[TILE_PAIRS + p * TILE..].as_mut_ptr() as *mut f32,
                *low,
            );
        }
        if with_sums {
            transpose_16x16(&mut totals);
            let total = totals
                .iter()
                .fold(_mm512_setzero_ps(), |a, b| _mm512_add_ps(a, *b));
            _mm512_storeu_ps(sums.as_mut_ptr(), total);
        }
    }

    /// A thread's room for decoded weight rows, kept between products.
    #[derive(Default)]
    struct WeightBuffer {
        /// One row in f32, as decoded.
        row: Vec<f32>,
        /// The panel's rows: bf16 weights or high bf16 parts.
        high: Vec<u16>,
        /// The panel's rows, low bf16 parts.
        low: Vec<u16>,
        /// A span of a group's codes.
        span: CodesSpan,
        /// Per block of activation rows, a group's sums ([`codes_panel`]).
        block_sums: Vec<Sums>,
    }

    /// A span of a group of weight rows as integer codes ([`codes_span`]).
    #[derive(Default)]
    struct CodesSpan {
        /// Per chunk the group's two tiles of codes (bf16).
        codes: Vec<u16>,
        /// Per chunk a scale for each of the group's rows.
        scales: Vec<f32>,
        /// Per chunk a minimum for each of the group's rows.
        mins: Vec<f32>,
    }

    impl CodesSpan {
        /// Room for `chunks` chunks (kept when a shorter span comes: growing
        /// back would fill the room with zeros again).
        fn prepare(&mut self, chunks: usize) {
            if self.scales.len() < chunks * GROUP {
                self.codes.resize(chunks * 2 * TILE_VALUES, 0);
                self.scales.resize(chunks * GROUP, 0.0);
                self.mins.resize(chunks * GROUP, 0.0);
            }
        }
    }

    thread_local! {
        static WEIGHTS: RefCell<WeightBuffer> = RefCell::default();
        static PACKED: RefCell<Packed> = RefCell::default();
    }

    /// A panel of weight rows as the kernels read them: group after group,
    /// chunk after chunk, the 16 rows of the group's first half then those
    /// of its second (each tile 1 KiB, read sequentially); zero past the
    /// last output.
    enum Panel<'a> {
        /// bf16 weights as they are.
        Bf16(&'a [u16]),
        /// Other weights split into high and low bf16 parts.
        Split { high: &'a [u16], low: &'a [u16] },
    }

    /// Whether block-kind weights of `kind` have a minimum per group
    /// (`value = code · scale + min`, the minimum not zero).
    fn has_minimums(kind: BlockKind) -> bool {
        matches!(
            kind,
            BlockKind::Q4_1 | BlockKind::Q5_1 | BlockKind::Q4_K | BlockKind::Q5_K
        )
    }

    /// Weight rows `first..first + panel` (`panel` a multiple of
    /// [`GROUP`]) laid out as [`Panel`].
    fn weight_panel<'a>(
        w: &HostTensor,
        first: usize,
        panel: usize,
        outputs: usize,
        columns: usize,
        buffer: &'a mut WeightBuffer,
    ) -> Result<Panel<'a>> {
        let count = panel.min(outputs - first);
        let padded = panel * columns;
        buffer.high.resize(padded, 0);
        let bf16 = match w.kind {
            StorageKind::Dense(DType::BF16) => {
                bytemuck::try_cast_slice::<u8, u16>(w.bytes.as_slice()).ok()
            }
            _ => None,
        };
        let zero_rows = |tiles: &mut [u16]| {
            for o in count..count.next_multiple_of(GROUP) {
                for at in tile_rows(o, columns) {
                    tiles[at..at + CHUNK].fill(0);
                }
            }
        };
        if let Some(all) = bf16 {
            for o in 0..count {
                let row = &all[(first + o) * columns..(first + o + 1) * columns];
                place_row(row, o, &mut buffer.high);
            }
            zero_rows(&mut buffer.high);
            return Ok(Panel::Bf16(&buffer.high[..padded]));
        }
        buffer.row.resize(columns, 0.0);
        buffer.low.resize(padded, 0);
        for o in 0..count {
            decode(w, (first + o) * columns, &mut buffer.row)?;
            let places = tile_rows(o, columns).zip(buffer.row.chunks_exact(CHUNK));
            for (at, values) in places {
                let (high, low) = (&mut buffer.high[at..], &mut buffer.low[at..]);
                split_bf16(values, &mut high[..CHUNK], &mut low[..CHUNK]);
            }
        }
        zero_rows(&mut buffer.high);
        zero_rows(&mut buffer.low);
        Ok(Panel::Split {
            high: &buffer.high[..padded],
            low: &buffer.low[..padded],
        })
    }

    /// Chunks of columns whose codes are decoded at once (256 columns:
    /// whole blocks of every kind; 16 KiB of codes for a group, in L1).
    const SPAN: usize = 8;

    /// Rows `first..first + count` (`count` at most [`GROUP`]) of
    /// block-kind weights, chunks `span` of their columns, as codes into
    /// `out` (prepared for the span), with their scales and minimums. Rows
    /// past `count` are zero.
    fn codes_span(
        w: &HostTensor,
        decoder: &AffineCodes,
        (first, count): (usize, usize),
        span: std::ops::Range<usize>,
        columns: usize,
        out: &mut CodesSpan,
    ) -> Result<()> {
        let kind = decoder.kind();
        // Whole blocks per span: a chunk is a whole number of bytes.
        let chunk_bytes = kind.block_bytes() * CHUNK / kind.block_len();
        let row_bytes = columns / CHUNK * chunk_bytes;
        let bytes = span.start * chunk_bytes..span.end * chunk_bytes;
        let strides = Strides {
            codes: 2 * TILE_VALUES,
            scales: GROUP,
        };
        let all = w.bytes.as_slice();
        let (next_rows, next) = match bytes.end < row_bytes {
            true => (first, bytes.end..row_bytes.min(bytes.end + bytes.len())),
            false => (first + GROUP, 0..row_bytes.min(SPAN * chunk_bytes)),
        };
        for o in 0..GROUP {
            let codes_at = o / TILE * TILE_VALUES + o % TILE * CHUNK;
            if o >= count {
                for chunk in 0..span.len() {
                    let at = codes_at + chunk * strides.codes;
                    out.codes[at..at + CHUNK].fill(0);
                    out.scales[chunk * GROUP + o] = 0.0;
                    out.mins[chunk * GROUP + o] = 0.0;
                }
                continue;
            }
            // The span decoded next, read while this one is multiplied (32
            // rows a few hundred bytes each are too many streams for the
            // hardware prefetcher).
            let ahead = next_rows * row_bytes + o * row_bytes;
            prefetch(all.get(ahead + next.start..ahead + next.end).unwrap_or(&[]));
            let row = &all[(first + o) * row_bytes..][bytes.clone()];
            let decoded = decoder.decode(
                row,
                &mut out.codes[codes_at..],
                &mut out.scales[o..],
                &mut out.mins[o..],
                strides,
            );
            if !decoded {
                return Err(airllm_core::Error::Backend(format!(
                    "`{}`: {kind:?} weights did not fit the tile buffer",
                    w.name
                )));
            }
        }
        Ok(())
    }

    /// Where each chunk of panel row `o` starts in the panel's tile layout
    /// ([`weight_panel`]).
    fn tile_rows(o: usize, columns: usize) -> impl Iterator<Item = usize> {
        let (group, half, row) = (o / GROUP, o % GROUP / TILE, o % TILE);
        (0..columns / CHUNK).map(move |chunk| {
            group * GROUP * columns + (chunk * 2 + half) * TILE_VALUES + row * CHUNK
        })
    }

    /// Puts one row of bf16 weights in its places in the panel's tiles.
    fn place_row(row: &[u16], o: usize, tiles: &mut [u16]) {
        for (at, values) in tile_rows(o, row.len()).zip(row.chunks_exact(CHUNK)) {
            tiles[at..at + CHUNK].copy_from_slice(values);
        }
    }

    /// Adds each kernel call's two partial sums and writes them, transposed,
    /// where outputs `group..` and rows `rows_here` lie in the `[rows,
    /// outputs]` product.
    fn write_sums(
        sums: &Sums,
        group: usize,
        rows_here: std::ops::Range<usize>,
        outputs: usize,
        output: Output,
    ) {
        debug_assert!(rows_here.len() <= TILE && group < outputs);
        // SAFETY: AVX-512 (`permitted`); the caller's rows and outputs from
        // `group` lie in the product (the stores are masked at `outputs`),
        // and only the caller's task writes them.
        unsafe { write_sums_avx512(sums, group, rows_here, outputs, output) }
    }

    /// [`write_sums`]: per half, the 16 × 16 sums transposed in registers,
    /// then a row's 16 outputs stored at once.
    #[target_feature(enable = "avx512f")]
    unsafe fn write_sums_avx512(
        sums: &Sums,
        group: usize,
        rows_here: std::ops::Range<usize>,
        outputs: usize,
        output: Output,
    ) {
        use std::arch::x86_64::*;
        for (half, [even, odd]) in sums.0.iter().enumerate() {
            let start = group + half * TILE;
            if start >= outputs {
                break;
            }
            let mask: __mmask16 = match outputs - start {
                left if left >= TILE => 0xFFFF,
                left => (1u16 << left) - 1,
            };
            let mut lines: [__m512; TILE] = std::array::from_fn(|i| {
                _mm512_add_ps(
                    _mm512_loadu_ps(even[i * TILE..].as_ptr()),
                    _mm512_loadu_ps(odd[i * TILE..].as_ptr()),
                )
            });
            transpose_16x16(&mut lines);
            for (line, r) in lines.iter().zip(rows_here.clone()) {
                _mm512_mask_storeu_ps(output.at(r * outputs + start), mask, *line);
            }
        }
    }

    /// Bytes of decoded weights (both parts) one panel holds at most: with
    /// a block of packed activations it stays in L2, so that each block is
    /// read from memory once per panel rather than once per group.
    const PANEL_BYTES: usize = 768 * 1024;

    /// Groups per panel: at most [`PANEL_BYTES`], at least one, and few
    /// enough that every thread gets two panels or more.
    fn panel_groups(groups: usize, columns: usize) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let by_cache = PANEL_BYTES / (GROUP * columns * 4);
        by_cache.min(groups.div_ceil(2 * threads)).max(1)
    }

    /// The product through the tile units.
    pub fn product(p: Product<'_>) -> Result<Vec<f32>> {
        let (x, rows, w, outputs, columns) = (p.x, p.rows, p.w, p.outputs, p.columns);
        debug_assert!(permitted() && columns.is_multiple_of(CHUNK) && x.len() == rows * columns);
        let mut packed = PACKED.take();
        let with_sums = matches!(w.kind, StorageKind::Block(kind) if has_minimums(kind));
        pack_activations(x, rows, columns, &mut packed, with_sums);
        let result = multiply(&packed, rows, w, outputs, columns);
        PACKED.set(packed);
        result
    }

    /// The product for activations packed by [`pack_activations`]: each
    /// task takes a panel of weight rows.
    fn multiply(
        packed: &Packed,
        rows: usize,
        w: &HostTensor,
        outputs: usize,
        columns: usize,
    ) -> Result<Vec<f32>> {
        let groups = outputs.div_ceil(GROUP);
        let panel = panel_groups(groups, columns) * GROUP;
        let mut product = vec![0.0f32; rows * outputs];
        let output = Output(product.as_mut_ptr());
        let shape = Shape {
            rows,
            outputs,
            columns,
        };
        (0..outputs.div_ceil(panel))
            .into_par_iter()
            .try_for_each(|task| -> Result<()> {
                WEIGHTS.with_borrow_mut(|buffer| {
                    let panel = task * panel..outputs.min((task + 1) * panel);
                    let _tiles = Tiles::configure();
                    match w.kind {
                        StorageKind::Block(kind) if super::takes_codes(w.kind) => {
                            codes_panel(packed, shape, w, kind, panel, output, buffer)
                        }
                        _ => float_panel(packed, shape, w, panel, output, buffer),
                    }
                })
            })?;
        Ok(product)
    }

    /// The dimensions of a product.
    #[derive(Clone, Copy)]
    struct Shape {
        rows: usize,
        outputs: usize,
        columns: usize,
    }

    impl Shape {
        /// Chunks of 32 columns.
        fn chunks(self) -> usize {
            self.columns / CHUNK
        }

        /// Activation rows `block * 16..` (at most 16).
        fn rows_of(self, block: usize) -> std::ops::Range<usize> {
            block * TILE..self.rows.min((block + 1) * TILE)
        }
    }

    /// Outputs `panel` of a product with bf16, f32 or f16 weights (or Q6_K),
    /// decoded into a panel of tiles once and multiplied by every block of
    /// activation rows.
    fn float_panel(
        packed: &Packed,
        shape: Shape,
        w: &HostTensor,
        panel: std::ops::Range<usize>,
        output: Output,
        buffer: &mut WeightBuffer,
    ) -> Result<()> {
        let (chunks, first) = (shape.chunks(), panel.start);
        let padded = panel.len().next_multiple_of(GROUP);
        let weights = weight_panel(w, first, padded, shape.outputs, shape.columns, buffer)?;
        let mut sums = Sums([[[0.0; TILE * TILE]; 2]; 2]);
        for block in 0..shape.rows.div_ceil(TILE) {
            let b = packed.pairs[block * chunks * 2 * TILE_PAIRS..].as_ptr();
            for group in panel.clone().step_by(GROUP) {
                let at = (group - first) * shape.columns;
                let (high, low) = match weights {
                    Panel::Bf16(high) => (high[at..].as_ptr(), std::ptr::null()),
                    Panel::Split { high, low } => (high[at..].as_ptr(), low[at..].as_ptr()),
                };
                // SAFETY: the tiles are configured; the panel holds GROUP
                // rows of `columns` values from `at`, `packed` the block's
                // `2 · chunks` tiles.
                unsafe { group_by_block(high, low, b, chunks, &mut sums) };
                write_sums(&sums, group, shape.rows_of(block), shape.outputs, output);
            }
        }
        Ok(())
    }

    /// Outputs `panel` of a product with block-kind weights, group by group:
    /// [`SPAN`] chunks of a group's codes are decoded into L1 and multiplied
    /// by every block of activation rows, each block's sums kept until the
    /// group's last span.
    fn codes_panel(
        packed: &Packed,
        shape: Shape,
        w: &HostTensor,
        kind: BlockKind,
        panel: std::ops::Range<usize>,
        output: Output,
        buffer: &mut WeightBuffer,
    ) -> Result<()> {
        let chunks = shape.chunks();
        let kernel = match has_minimums(kind) {
            true => codes_by_block::<true>,
            false => codes_by_block::<false>,
        };
        let decoder = AffineCodes::new(kind).ok_or_else(|| {
            airllm_core::Error::Backend(format!("`{}`: no AMX decoder for {kind:?}", w.name))
        })?;
        // The second sum of each half stays zero: the kernel writes the first.
        let mut sums = std::mem::take(&mut buffer.block_sums);
        sums.resize_with(shape.rows.div_ceil(TILE), || {
            Sums([[[0.0; TILE * TILE]; 2]; 2])
        });
        for group in panel.clone().step_by(GROUP) {
            let count = (panel.end - group).min(GROUP);
            for start in (0..chunks).step_by(SPAN) {
                let span = start..chunks.min(start + SPAN);
                buffer.span.prepare(span.len());
                codes_span(
                    w,
                    &decoder,
                    (group, count),
                    span.clone(),
                    shape.columns,
                    &mut buffer.span,
                )?;
                for (block, sums) in sums.iter_mut().enumerate() {
                    let b = packed.pairs[(block * chunks + start) * 2 * TILE_PAIRS..].as_ptr();
                    let row_sums = packed.sums[(block * chunks + start) * TILE..].as_ptr();
                    // SAFETY: the tiles are configured; the span holds its
                    // codes, scales and minimums, `packed` the block's
                    // tiles and sums from the span's first chunk.
                    unsafe { kernel(&buffer.span, b, row_sums, span.len(), start > 0, sums) };
                }
            }
            for (block, sums) in sums.iter().enumerate() {
                write_sums(sums, group, shape.rows_of(block), shape.outputs, output);
            }
        }
        buffer.block_sums = sums;
        Ok(())
    }
}
