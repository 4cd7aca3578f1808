//! Batches and prompts on CPUs with AMX (Intel's tile matrix units,
//! Sapphire Rapids and later), with [`crate::Activations::Reduced`]: the
//! products run on the tile units' bf16 dot products, which sum in f32.
//! One tile product does 16 × 16 × 32 multiply-adds; a core here does about
//! 880 GFLOP/s this way, against about 150 in AVX-512 f32 FMAs.
//!
//! bf16 alone (8 significant bits) changed the greedy tokens of most test
//! fixtures, so each activation is split into a high bf16 part and a low
//! one (the rounded rest), and so is each weight that is not bf16 already:
//! `w·x ≈ w_high·x_high + w_high·x_low + w_low·x_high`, within about 2⁻¹⁶
//! of each term, two or three tile products where one would do.
//!
//! The weights are the left operand: a panel of weight rows (decoded or
//! copied) is laid out tile by tile, 16 rows of 32 columns each. The
//! activations are packed once per product into the right operand's pair
//! layout (row `p` of a tile holds columns `2p, 2p + 1` of 16 activation
//! rows). Each result tile is `[16 outputs, 16 rows]`, written transposed
//! into the `[rows, outputs]` product.

use airllm_core::{HostTensor, Result};

/// Columns one tile row holds (64 bytes of bf16).
pub const CHUNK: usize = 32;

/// Whether this CPU has AMX bf16 and the OS lets this process use it.
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return x86::permitted();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    return false;
}

/// `x · wᵀ` for `x: [rows, columns]` and `w: [outputs, columns]`; returns
/// `[rows, outputs]`, or `None` without AMX or when `columns` is not a
/// multiple of [`CHUNK`].
pub fn product(
    x: &[f32],
    rows: usize,
    w: &HostTensor,
    outputs: usize,
    columns: usize,
) -> Option<Result<Vec<f32>>> {
    if !available() || !columns.is_multiple_of(CHUNK) {
        return None;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return Some(x86::product(x, rows, w, outputs, columns));
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (x, rows, w, outputs);
        None
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::asm;
    use std::cell::RefCell;
    use std::sync::OnceLock;

    use airllm_core::{DType, HostTensor, Result, StorageKind};
    use rayon::prelude::*;

    use super::super::{decode, Output};
    use super::CHUNK;

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
        /// The bf16 values of `half` (16 of them) widened to f32.
        #[inline(always)]
        unsafe fn widen(half: __m256i) -> __m512 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
        }
        for i in (0..count).step_by(32) {
            let first = _mm512_loadu_ps(from.add(i));
            let second = _mm512_loadu_ps(from.add(i + 16));
            let top = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(second, first));
            _mm512_storeu_si512(high.add(i) as *mut _, top);
            let first_rest = _mm512_sub_ps(first, widen(_mm512_castsi512_si256(top)));
            let second_rest = _mm512_sub_ps(second, widen(_mm512_extracti64x4_epi64::<1>(top)));
            let bottom = _mm512_cvtne2ps_pbh(second_rest, first_rest);
            _mm512_storeu_si512(
                low.add(i) as *mut _,
                std::mem::transmute::<__m512bh, __m512i>(bottom),
            );
        }
    }

    /// u32s (column pairs) in one packed tile.
    const TILE_PAIRS: usize = TILE_VALUES / 2;

    /// `x: [rows, columns]` in the tile units' pair layout, into `packed`:
    /// for each block of 16 rows and each chunk of 32 columns, a tile of
    /// the values' high bf16 parts then one of their low parts; row `p` of
    /// a tile holds columns `2p, 2p + 1` of the 16 rows (rows past `rows`
    /// zero). Column pairs are moved as one u32: a row's pairs go 16 apart.
    fn pack_activations(x: &[f32], rows: usize, columns: usize, packed: &mut Vec<u32>) {
        let chunks = columns / CHUNK;
        let blocks = rows.div_ceil(TILE);
        packed.resize(blocks * chunks * 2 * TILE_PAIRS, 0);
        packed
            .par_chunks_mut(chunks * 2 * TILE_PAIRS)
            .enumerate()
            .for_each_init(
                || (vec![0u32; columns / 2], vec![0u32; columns / 2]),
                |(high, low), (block, tiles)| {
                    let first = block * TILE;
                    for r in first..first + TILE {
                        if r < rows {
                            let row = &x[r * columns..(r + 1) * columns];
                            split_bf16(
                                row,
                                bytemuck::cast_slice_mut(high),
                                bytemuck::cast_slice_mut(low),
                            );
                        } else {
                            high.fill(0);
                            low.fill(0);
                        }
                        // SAFETY: AVX-512 (`permitted`); `tiles` holds the
                        // block's `2 · chunks` tiles, `high` and `low` a row.
                        unsafe { scatter_pairs(high, low, tiles[r - first..].as_mut_ptr()) };
                    }
                },
            );
    }

    /// Writes a row's column pairs (`high`, `low`: 16 per chunk) into
    /// column `row` of its block's tiles (`row` is where `tiles` starts):
    /// pair `p` of chunk `c` goes to `tiles[c · 2 · TILE_PAIRS + 16p]`, the
    /// low parts a tile later.
    ///
    /// # Safety
    /// AVX-512; `tiles` holds `high.len() / 16` chunks of two tiles, less
    /// the row's offset.
    #[target_feature(enable = "avx512f")]
    unsafe fn scatter_pairs(high: &[u32], low: &[u32], tiles: *mut u32) {
        use std::arch::x86_64::*;
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(TILE as i32),
        );
        for (chunk, (high, low)) in high.chunks_exact(16).zip(low.chunks_exact(16)).enumerate() {
            let at = tiles.add(chunk * 2 * TILE_PAIRS);
            _mm512_i32scatter_epi32::<4>(
                at as *mut _,
                offsets,
                _mm512_loadu_si512(high.as_ptr() as *const _),
            );
            _mm512_i32scatter_epi32::<4>(
                at.add(TILE_PAIRS) as *mut _,
                offsets,
                _mm512_loadu_si512(low.as_ptr() as *const _),
            );
        }
    }

    /// A thread's room for decoded weight rows, kept between products.
    #[derive(Default)]
    struct WeightBuffer {
        /// One row in f32, as decoded.
        row: Vec<f32>,
        /// The panel's rows, high bf16 parts.
        high: Vec<u16>,
        /// The panel's rows, low bf16 parts.
        low: Vec<u16>,
    }

    thread_local! {
        static WEIGHTS: RefCell<WeightBuffer> = RefCell::default();
        static PACKED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// Weight rows `first..first + panel` (`panel` a multiple of
    /// [`GROUP`]) in bf16, laid out as the kernels read them: group after
    /// group, chunk after chunk, the 16 rows of the group's first half then
    /// those of its second (each tile 1 KiB, read sequentially). The high
    /// parts, and the low parts unless the weights are bf16; zero past the
    /// last output.
    fn weight_panel<'a>(
        w: &HostTensor,
        first: usize,
        panel: usize,
        outputs: usize,
        columns: usize,
        buffer: &'a mut WeightBuffer,
    ) -> Result<(&'a [u16], Option<&'a [u16]>)> {
        let count = panel.min(outputs - first);
        let padded = panel * columns;
        buffer.high.resize(padded, 0);
        let bf16 = match w.kind {
            StorageKind::Dense(DType::BF16) => {
                bytemuck::try_cast_slice::<u8, u16>(w.bytes.as_slice()).ok()
            }
            _ => None,
        };
        if let Some(all) = bf16 {
            for o in 0..count {
                let row = &all[(first + o) * columns..(first + o + 1) * columns];
                place_row(row, o, &mut buffer.high);
            }
        } else {
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
        }
        let zero_rows = |tiles: &mut [u16]| {
            for o in count..count.next_multiple_of(GROUP) {
                for at in tile_rows(o, columns) {
                    tiles[at..at + CHUNK].fill(0);
                }
            }
        };
        zero_rows(&mut buffer.high);
        if bf16.is_some() {
            return Ok((&buffer.high[..padded], None));
        }
        zero_rows(&mut buffer.low);
        Ok((&buffer.high[..padded], Some(&buffer.low[..padded])))
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
        for (half, [even, odd]) in sums.0.iter().enumerate() {
            let outputs_here = (group + half * TILE)..outputs.min(group + (half + 1) * TILE);
            for (i, o) in outputs_here.enumerate() {
                for (j, r) in rows_here.clone().enumerate() {
                    let value = even[i * TILE + j] + odd[i * TILE + j];
                    // SAFETY: the caller's rows and `o < outputs` lie in the
                    // product; only the caller's task writes these outputs.
                    unsafe { *output.at(r * outputs + o) = value };
                }
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

    pub fn product(
        x: &[f32],
        rows: usize,
        w: &HostTensor,
        outputs: usize,
        columns: usize,
    ) -> Result<Vec<f32>> {
        debug_assert!(permitted() && columns.is_multiple_of(CHUNK) && x.len() == rows * columns);
        let mut packed = PACKED.take();
        pack_activations(x, rows, columns, &mut packed);
        let result = multiply(&packed, rows, w, outputs, columns);
        PACKED.set(packed);
        result
    }

    /// The product for activations packed by [`pack_activations`].
    fn multiply(
        packed: &[u32],
        rows: usize,
        w: &HostTensor,
        outputs: usize,
        columns: usize,
    ) -> Result<Vec<f32>> {
        let chunks = columns / CHUNK;
        let blocks = rows.div_ceil(TILE);
        let groups = outputs.div_ceil(GROUP);
        let panel = panel_groups(groups, columns) * GROUP;
        let mut product = vec![0.0f32; rows * outputs];
        let output = Output(product.as_mut_ptr());
        (0..outputs.div_ceil(panel))
            .into_par_iter()
            .try_for_each(|task| -> Result<()> {
                WEIGHTS.with_borrow_mut(|buffer| {
                    let first = task * panel;
                    let (high, low) = weight_panel(w, first, panel, outputs, columns, buffer)?;
                    let mut sums = Sums([[[0.0; TILE * TILE]; 2]; 2]);
                    let _tiles = Tiles::configure();
                    for block in 0..blocks {
                        let b = packed[block * chunks * 2 * TILE_PAIRS..].as_ptr();
                        let rows_here = block * TILE..rows.min((block + 1) * TILE);
                        for group in (first..outputs.min(first + panel)).step_by(GROUP) {
                            let at = (group - first) * columns;
                            // SAFETY: the tiles are configured; `high` and
                            // `low` hold GROUP rows of `columns` values from
                            // `at`, `packed` the block's `2 · chunks` tiles.
                            unsafe {
                                let low = low.map_or(std::ptr::null(), |low| low[at..].as_ptr());
                                group_by_block(high[at..].as_ptr(), low, b, chunks, &mut sums)
                            }
                            write_sums(&sums, group, rows_here.clone(), outputs, output);
                        }
                    }
                    Ok(())
                })
            })?;
        Ok(product)
    }
}
