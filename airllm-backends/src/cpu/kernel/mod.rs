//! The cpu backend's matrix product `x · wᵀ`, for activation rows in f32
//! and a weight matrix in its stored encoding (f32, bf16, f16 or a GGUF
//! block kind); no widened copy of the matrix is ever made. Five paths,
//! chosen by the number of activation rows and the activations' precision
//! ([`path`]):
//!
//! - block-quantized weights with [`Activations::Reduced`] and up to
//!   [`QUANTIZED_MAX_ROWS`] rows ([`QUANTIZED_MAX_ROWS_AVX2`] on CPUs with
//!   AVX2 but not AVX-512): the rows are quantized to 16-bit groups
//!   and dotted with the weights in integers, block by block ([`quantized`]);
//! - from [`AMX_MIN_ROWS_BF16`] rows (bf16 weights), [`AMX_MIN_ROWS_CODES`]
//!   (block kinds but Q6_K) or past [`TILES_MAX_ROWS`] (the others) with
//!   [`Activations::Reduced`] on CPUs with AMX: activations split into high
//!   and low bf16 parts, block kinds as their integer codes, f32 and f16
//!   weights split too, multiplied by the tile units ([`amx`]);
//! - up to [`TILES_MAX_ROWS`] rows: tiles of four weight rows (block kinds
//!   decoded into L1, bf16 and f16 widened in registers, f32 as stored) are
//!   dotted with several activation rows at once by a register-blocked
//!   kernel ([`tiles`]; AVX-512 or AVX2);
//! - few rows on CPUs without the tile kernel: each weight row is decoded
//!   once and dotted with every row in f32 ([`float_rows`]);
//! - more rows: panels of weight rows are decoded into a cached buffer and
//!   multiplied by `gemm`'s register-blocked kernels ([`panel`]).
//!
//! The work is spread over the current rayon pool by output columns. Why
//! each crossover lies where it does, with the figures, is in
//! docs/kernel.md.

mod activations;
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod float_rows;
mod groups;
mod panel;
mod quantized;
mod tiles;

use airllm_core::{DType, Error, HostTensor, Result, StorageKind};
use rayon::prelude::*;

use crate::Activations;
use amx::Amx;
use quantized::Quantized;
use tiles::Tiles;

/// Rows up to which block-quantized weights take the integer path when
/// activations may be quantized: at one row it is ahead of the tiles, at
/// two behind or level (the crossovers are measured in docs/kernel.md).
pub const QUANTIZED_MAX_ROWS: usize = 1;

/// [`QUANTIZED_MAX_ROWS`] on CPUs with AVX2 but not AVX-512, where the
/// tiles multiply 8 lanes at a time and the integer path stays ahead to 4
/// rows.
pub const QUANTIZED_MAX_ROWS_AVX2: usize = 4;

/// Rows up to which block-quantized weights take the integer path on this CPU.
fn quantized_max_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() && !avx2::wide_available() {
        return QUANTIZED_MAX_ROWS_AVX2;
    }
    QUANTIZED_MAX_ROWS
}

/// Rows from which [`Activations::Reduced`] takes the AMX path for bf16
/// weights, where the CPU has it (two tile products per weight tile: the
/// activations' high and low bf16 parts). f32 and f16 weights, and Q6_K,
/// take three tile products (the weights are split too) and pass the tiles
/// only near 64 rows, so they take AMX where the panels would
/// ([`TILES_MAX_ROWS`]).
pub const AMX_MIN_ROWS_BF16: usize = 10;

/// Rows from which the block kinds that AMX multiplies as integer codes
/// (all but Q6_K) take it. A partial last block of 16 rows costs it a
/// whole one.
pub const AMX_MIN_ROWS_CODES: usize = 12;

/// Rows up to which the tile kernel multiplies, where the CPU runs it: it
/// is ahead of every other path up to about 48 rows and level with the
/// panels at 64.
pub const TILES_MAX_ROWS: usize = 64;

/// Rows up to which f32 activations are dotted row by row rather than
/// multiplied panel by panel, on CPUs without the tile kernel.
pub const FLOAT_MAX_ROWS: usize = 10;

/// Rows up to which f32 matrices go to `gemm` directly on CPUs without the
/// tile kernel: its matrix-vector kernels read f32 weights faster than the
/// row dots.
pub const F32_GEMM_MAX_ROWS: usize = 3;

/// Output columns one task computes at least on the row-by-row paths
/// (keeps task overhead small).
const MIN_COLUMNS_PER_TASK: usize = 64;

/// `[outputs, columns]` of a matrix.
pub fn matrix_shape(w: &HostTensor) -> Result<(usize, usize)> {
    match w.shape[..] {
        [outputs, columns] => Ok((outputs, columns)),
        _ => Err(Error::Backend(format!(
            "tensor `{}` is not a matrix",
            w.name
        ))),
    }
}

/// `x · wᵀ` for `x: [rows, columns]` (f32, row-major) and
/// `w: [outputs, columns]`; returns `[rows, outputs]`.
pub fn linear(
    x: &[f32],
    rows: usize,
    w: &HostTensor,
    activations: Activations,
) -> Result<Vec<f32>> {
    linear_on(path(w.kind, rows, activations), x, rows, w)
}

/// One of the kernel's ways to multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// 16-bit activations dotted with the blocks in integers (block kinds only).
    Quantized,
    /// f32 activations dotted with each decoded weight row.
    FloatRows,
    /// Decoded panels of weight rows through `gemm`.
    Panel,
    /// Decoded tiles of weight rows through the register-blocked dot kernel
    /// (the panels on CPUs without AVX2).
    Tiles,
    /// bf16 tiles through the AMX units (where the CPU lacks them or the
    /// columns are not a multiple of 32, the path f32 activations take).
    Amx,
}

/// The path [`linear`] takes for `rows` activation rows and weights of `kind`.
pub fn path(kind: StorageKind, rows: usize, activations: Activations) -> KernelPath {
    match kind {
        StorageKind::Block(_)
            if activations == Activations::Reduced && rows <= quantized_max_rows() =>
        {
            KernelPath::Quantized
        }
        _ if activations == Activations::Reduced
            && rows >= amx_min_rows(kind)
            && Amx::available() =>
        {
            KernelPath::Amx
        }
        _ if rows <= TILES_MAX_ROWS && Tiles::available() => KernelPath::Tiles,
        StorageKind::Dense(DType::F32) if rows <= F32_GEMM_MAX_ROWS => KernelPath::Panel,
        _ if rows <= FLOAT_MAX_ROWS => KernelPath::FloatRows,
        _ => KernelPath::Panel,
    }
}

/// Rows from which reduced precision takes the AMX path for `kind`.
fn amx_min_rows(kind: StorageKind) -> usize {
    match kind {
        StorageKind::Dense(DType::BF16) => AMX_MIN_ROWS_BF16,
        _ if amx::takes_codes(kind) => AMX_MIN_ROWS_CODES,
        _ => TILES_MAX_ROWS + 1,
    }
}

/// [`linear`] on a chosen path, for measuring where one path overtakes
/// another. `Quantized` on a dense matrix takes `FloatRows`.
pub fn linear_on(path: KernelPath, x: &[f32], rows: usize, w: &HostTensor) -> Result<Vec<f32>> {
    let (outputs, columns) = matrix_shape(w)?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    if x.len() != rows * columns {
        return Err(Error::Backend(format!(
            "`{}` has {columns} columns; the input has {} values for {rows} rows",
            w.name,
            x.len()
        )));
    }
    let whole = outputs
        .checked_mul(columns)
        .filter(|values| values % w.kind.granule() == 0 && columns % w.kind.granule() == 0)
        .and_then(|values| w.kind.encoded_bytes(values))
        .is_some_and(|bytes| bytes <= w.bytes.len());
    if !whole {
        return Err(Error::UnsupportedStorage {
            tensor: w.name.clone(),
            kind: w.kind.to_string(),
            detail: format!(
                "{} bytes do not hold {outputs} rows of {columns} values in whole blocks",
                w.bytes.len()
            ),
        });
    }
    let p = Product {
        x,
        rows,
        w,
        outputs,
        columns,
    };
    let whole_rows = || float_rows::multiply(p);
    let panels = || panel::multiply(p);
    match path {
        KernelPath::Quantized => Quantized::product(p).unwrap_or_else(whole_rows),
        KernelPath::FloatRows => whole_rows(),
        KernelPath::Panel => panels(),
        KernelPath::Tiles => Tiles::product(p).unwrap_or_else(panels),
        KernelPath::Amx => Amx::product(p)
            .unwrap_or_else(|| linear_on(self::path(w.kind, rows, Activations::F32), x, rows, w)),
    }
}

/// One product for the kernel: `x · wᵀ` for f32 activations
/// `x: [rows, columns]` and a weight matrix `w: [outputs, columns]` in its
/// stored encoding (whole rows of it, as [`linear_on`] checks). Every path
/// returns `[rows, outputs]`.
#[derive(Clone, Copy)]
pub struct Product<'a> {
    /// The activations, row after row.
    pub x: &'a [f32],
    /// Activation rows.
    pub rows: usize,
    /// The weights.
    pub w: &'a HostTensor,
    /// Weight rows (outputs).
    pub outputs: usize,
    /// Values per row.
    pub columns: usize,
}

/// A way the kernel computes a [`Product`] that a CPU or an encoding may
/// lack (the integer dots, the tiles, AMX); the panels and the row dots,
/// which every CPU runs for every encoding, are the fallbacks.
pub trait ProductPath {
    /// Whether this CPU runs it.
    fn available() -> bool {
        true
    }

    /// The product, or `None` where this path does not take it (the CPU
    /// lacks its instructions, or the weights are not of its kind); the
    /// caller then takes another.
    fn product(p: Product<'_>) -> Option<Result<Vec<f32>>>;
}

/// The values of an f32 matrix where they lie in its bytes (`None` for
/// other encodings, or bytes not aligned for f32).
fn f32_in_place(w: &HostTensor) -> Option<&[f32]> {
    match w.kind {
        StorageKind::Dense(DType::F32) => bytemuck::try_cast_slice(w.bytes.as_slice()).ok(),
        _ => None,
    }
}

/// How the vector decoding rounds `quant · scale + min` (block kinds with
/// a minimum: Q4_1, Q5_1, Q4_K, Q5_K; the others round once either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Once, by an FMA: the kernel's own products. The separate add costs
    /// those kinds' decoding about a tenth more time (docs/kernel.md).
    Fused,
    /// After the multiply and again after the add, as the portable
    /// decoding (`airllm_core::dequant`) rounds: its values bit for bit.
    Portable,
}

/// Every value of `w` widened to f32, the portable decoding's values at the
/// vector code's speed: the host widening for devices that compute in f32
/// (`BurnBackend::stage`).
pub fn widen(w: &HostTensor) -> Result<Vec<f32>> {
    let mut out = vec![0.0; w.elements()];
    decode_rounded(w, 0, &mut out, Rounding::Portable)?;
    Ok(out)
}

/// [`decode_rounded`] with the kernel's rounding ([`Rounding::Fused`]).
fn decode(w: &HostTensor, start: usize, out: &mut [f32]) -> Result<()> {
    decode_rounded(w, start, out, Rounding::Fused)
}

/// Decodes values `start..start + out.len()` of `w` into `out` (whole
/// blocks), at 512 or 256 bits for the block kinds where the CPU has
/// AVX-512 or AVX2 (rounded as `rounding` says), and at 256 bits for bf16
/// and f16 where the CPU has AVX2 and F16C; elsewhere with
/// `HostTensor::decode_range`, the portable decoding.
fn decode_rounded(w: &HostTensor, start: usize, out: &mut [f32], rounding: Rounding) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if let StorageKind::Dense(dtype @ (DType::BF16 | DType::F16)) = w.kind {
        let body = out.len() - out.len() % 8;
        if let Some(bytes) = w.bytes.as_slice().get(2 * start..2 * (start + body)) {
            if avx2::widen_halves(dtype, bytes, &mut out[..body]) {
                return w.decode_range(start + body, &mut out[body..]);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let StorageKind::Block(kind) = w.kind {
        let from = w.kind.encoded_bytes(start);
        let to = w.kind.encoded_bytes(start + out.len());
        let whole =
            start.is_multiple_of(kind.block_len()) && out.len().is_multiple_of(kind.block_len());
        if let (Some(from), Some(to), true) = (from, to, whole) {
            if let Some(bytes) = w.bytes.as_slice().get(from..to) {
                if avx2::decode_blocks(kind, bytes, out, rounding) {
                    return Ok(());
                }
            }
        }
    }
    w.decode_range(start, out)
}

/// Asks the CPU to bring `bytes` into its caches (a hint; nothing on CPUs
/// without the instruction).
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of x86_64, and a prefetch reads nothing.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Runs `each(scratch, output, values)` for every output column in parallel
/// (`values` receives that column's `rows` results), then lays the results
/// out as `[rows, outputs]`. Each task owns a contiguous run of outputs and
/// one `scratch` from `init`.
fn over_outputs<S>(
    rows: usize,
    outputs: usize,
    init: impl Fn() -> S + Sync,
    each: impl Fn(&mut S, usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<Vec<f32>> {
    over_output_tiles(
        rows,
        outputs,
        1,
        || (init(), vec![0.0f32; rows]),
        |(scratch, values), mut column| {
            each(scratch, column.first(), values)?;
            for (r, value) in values.iter().enumerate() {
                column.set(r, 0, *value);
            }
            Ok(())
        },
    )
}

/// Runs `each(scratch, columns)` for every tile of `tile` output columns
/// in parallel (the last tile may be narrower); `each` writes the tile's
/// `rows` results per column straight to their places in the `[rows,
/// outputs]` product (no transposition of the whole product afterwards: for
/// a 49152-column head and 64 rows, that pass wrote 64 rows 196 KB apart
/// for every column). Each task owns a contiguous run of tiles and one
/// `scratch` from `init`.
fn over_output_tiles<S>(
    rows: usize,
    outputs: usize,
    tile: usize,
    init: impl Fn() -> S + Sync,
    each: impl Fn(&mut S, ProductColumns) -> Result<()> + Sync,
) -> Result<Vec<f32>> {
    let per_task =
        task_outputs(outputs, rayon::current_num_threads().max(1)).next_multiple_of(tile);
    let mut product = vec![0.0f32; rows * outputs];
    let output = Output(product.as_mut_ptr());
    (0..outputs.div_ceil(per_task))
        .into_par_iter()
        .try_for_each(|task| -> Result<()> {
            let mut scratch = init();
            let end = outputs.min((task + 1) * per_task);
            for first in (task * per_task..end).step_by(tile) {
                // Only this task writes columns `task * per_task..end`.
                let columns = ProductColumns {
                    output,
                    rows,
                    outputs,
                    first,
                    count: tile.min(end - first),
                };
                each(&mut scratch, columns)?;
            }
            Ok(())
        })?;
    Ok(product)
}

/// Outputs one task of a product over `outputs` columns takes on `threads`
/// threads: about four tasks a thread of at least [`MIN_COLUMNS_PER_TASK`]
/// outputs, then, where that makes more than one task, their count rounded
/// up to a multiple of the threads (a 192-output key projection made three
/// tasks of 64, which left one of two threads idle for a third of the call).
fn task_outputs(outputs: usize, threads: usize) -> usize {
    let per_task = outputs.div_ceil(threads * 4).max(MIN_COLUMNS_PER_TASK);
    match outputs.div_ceil(per_task) {
        0 | 1 => per_task,
        tasks => outputs.div_ceil(tasks.next_multiple_of(threads)),
    }
}

/// Columns `first..first + count` of a `[rows, outputs]` product, which
/// only the task holding this view writes.
pub(crate) struct ProductColumns {
    output: Output,
    rows: usize,
    outputs: usize,
    first: usize,
    count: usize,
}

impl ProductColumns {
    /// The whole `[rows, outputs]` product `product`.
    #[cfg(test)]
    fn whole(product: &mut [f32], rows: usize, outputs: usize) -> Self {
        assert_eq!(product.len(), rows * outputs);
        ProductColumns {
            output: Output(product.as_mut_ptr()),
            rows,
            outputs,
            first: 0,
            count: outputs,
        }
    }

    /// The product's first column in this view.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Columns in this view.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The product's rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values from one row of the product to the next.
    pub fn row_stride(&self) -> usize {
        self.outputs
    }

    /// Sets row `r` of the view's column `o`.
    pub fn set(&mut self, r: usize, o: usize, value: f32) {
        assert!(r < self.rows && o < self.count);
        // SAFETY: inside the product (checked above), which outlives the
        // view; only this view's task writes its columns.
        unsafe { *self.at(r, o) = value };
    }

    /// The address of row `r` of the view's column `o`, for kernels that
    /// write rows `r..` of columns `o..` through [`Self::row_stride`] (at
    /// most [`Self::rows`] and [`Self::count`]).
    pub fn at(&mut self, r: usize, o: usize) -> *mut f32 {
        self.output.at(r * self.outputs + self.first + o)
    }
}

/// The product's buffer, shared by parallel tasks that each write their own
/// output columns.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: the tasks holding it write disjoint columns (see its users).
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The address of value `offset`.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use airllm_core::{BlockKind, HostBytes};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `count` blocks of `kind` with random quants and moderate scales
    /// (NF4's maximums ten times larger, as its values span ±1).
    pub fn random_blocks(kind: BlockKind, count: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bytes: Vec<u8> = (0..count * kind.block_bytes())
            .map(|_| rng.random())
            .collect();
        let (offsets, width) = kind.float_factors();
        for block in bytes.chunks_exact_mut(kind.block_bytes()) {
            for &at in offsets {
                let scale: f32 = rng.random_range(0.002..0.02);
                let stored = match width {
                    4 => (10.0 * scale).to_le_bytes().to_vec(),
                    _ => half::f16::from_f32(scale).to_le_bytes().to_vec(),
                };
                block[at..at + width].copy_from_slice(&stored);
            }
        }
        bytes
    }

    fn matrix(kind: StorageKind, bytes: Vec<u8>, outputs: usize, columns: usize) -> HostTensor {
        HostTensor {
            name: "w".into(),
            kind,
            shape: vec![outputs, columns],
            bytes: HostBytes::from_vec(bytes),
        }
    }

    /// A random `[outputs, columns]` matrix in `kind`.
    fn random_matrix(kind: StorageKind, outputs: usize, columns: usize, seed: u64) -> HostTensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let bytes = match kind {
            StorageKind::Block(block) => {
                random_blocks(block, outputs * columns / block.block_len(), seed)
            }
            StorageKind::Dense(dtype) => (0..outputs * columns)
                .flat_map(|_| {
                    let v: f32 = rng.random_range(-0.1..0.1);
                    match dtype {
                        DType::F32 => v.to_le_bytes().to_vec(),
                        DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                        DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    }
                })
                .collect(),
        };
        matrix(kind, bytes, outputs, columns)
    }

    /// `x · wᵀ` in f64 on the decoded weights, and `Σ|xᵢ·wᵢ|` per output.
    fn reference(x: &[f32], rows: usize, w: &HostTensor) -> (Vec<f64>, Vec<f64>) {
        let (outputs, columns) = matrix_shape(w).unwrap();
        let weights = w.to_f32().unwrap();
        let mut product = vec![0.0; rows * outputs];
        let mut magnitude = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                for c in 0..columns {
                    let term = x[r * columns + c] as f64 * weights[o * columns + c] as f64;
                    product[r * outputs + o] += term;
                    magnitude[r * outputs + o] += term.abs();
                }
            }
        }
        (product, magnitude)
    }

    fn kinds() -> Vec<(StorageKind, usize)> {
        let dense = [DType::F32, DType::BF16, DType::F16].map(|d| (StorageKind::Dense(d), 100));
        let blocks = BlockKind::ALL.map(|k| {
            (
                StorageKind::Block(k),
                match k.block_len() {
                    256 => 768,
                    64 => 832,
                    _ => 800,
                },
            )
        });
        dense.into_iter().chain(blocks).collect()
    }

    /// `rows` activation rows of `columns` values in [-1, 1).
    fn random_rows(rows: usize, columns: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rows * columns)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    const ROWS: [usize; 7] = [1, 2, 3, 7, 16, 64, 300];

    /// Outputs that are not a multiple of the panel or the task size.
    const OUTPUTS: usize = 130;

    #[test]
    fn f32_activations_match_an_f64_reference_on_every_path_encoding_and_row_count() {
        for (kind, columns) in kinds() {
            let w = random_matrix(kind, OUTPUTS, columns, 7);
            for rows in ROWS {
                let x = random_rows(rows, columns, rows as u64);
                let (want, magnitude) = reference(&x, rows, &w);
                let chosen = path(kind, rows, Activations::F32);
                for path in [KernelPath::FloatRows, KernelPath::Panel, KernelPath::Tiles] {
                    let got = linear_on(path, &x, rows, &w).unwrap();
                    for i in 0..rows * OUTPUTS {
                        let error = (got[i] as f64 - want[i]).abs();
                        assert!(
                            error <= 1e-5 * magnitude[i],
                            "{kind} rows {rows} {path:?} (chosen: {chosen:?}) value {i}: \
                             {} vs {} (Σ|xw| {})",
                            got[i],
                            want[i],
                            magnitude[i]
                        );
                    }
                }
            }
        }
    }

    /// Reduced precision on every path that rounds (the integer path, AMX
    /// where the CPU has it) and on the path chosen; float matrices also
    /// with 96 columns, which AMX takes (100 is not a multiple of 32).
    #[test]
    fn quantized_activations_stay_within_the_normalized_error_bound() {
        let dense_whole_chunks =
            [DType::F32, DType::BF16, DType::F16].map(|d| (StorageKind::Dense(d), 96));
        for (kind, columns) in kinds().into_iter().chain(dense_whole_chunks) {
            let w = random_matrix(kind, OUTPUTS, columns, 11);
            for rows in ROWS {
                let x = random_rows(rows, columns, 100 + rows as u64);
                let (want, _) = reference(&x, rows, &w);
                let chosen = linear(&x, rows, &w, Activations::Reduced).unwrap();
                let integer = linear_on(KernelPath::Quantized, &x, rows, &w).unwrap();
                let amx = linear_on(KernelPath::Amx, &x, rows, &w).unwrap();
                for (name, got) in [("chosen", chosen), ("integer", integer), ("amx", amx)] {
                    let error: f64 = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (*g as f64 - w).powi(2))
                        .sum();
                    let norm: f64 = want.iter().map(|w| w * w).sum();
                    assert!(
                        error / norm <= 5e-4,
                        "{kind} rows {rows} ({name} path): normalized MSE {}",
                        error / norm
                    );
                }
            }
        }
    }

    /// Block kinds that the AMX path multiplies as integer codes lose only
    /// the activations' rounding to a high and a low bf16 part (about 2⁻¹⁷
    /// of each value) and f32 sums: each output stays within 1e-5 of
    /// `Σ|xᵢ·wᵢ|`, as the f32 paths do.
    #[test]
    fn amx_codes_match_an_f64_reference() {
        if !Amx::available() {
            return;
        }
        let codes = BlockKind::ALL
            .into_iter()
            .filter(|k| amx::takes_codes(StorageKind::Block(*k)));
        for kind in codes {
            let kind = StorageKind::Block(kind);
            let w = random_matrix(kind, OUTPUTS, 768, 13);
            for rows in ROWS {
                let x = random_rows(rows, 768, 200 + rows as u64);
                let (want, magnitude) = reference(&x, rows, &w);
                let got = linear_on(KernelPath::Amx, &x, rows, &w).unwrap();
                for i in 0..rows * OUTPUTS {
                    let error = (got[i] as f64 - want[i]).abs();
                    assert!(
                        error <= 1e-5 * magnitude[i],
                        "{kind} rows {rows} value {i}: {} vs {} (Σ|xw| {})",
                        got[i],
                        want[i],
                        magnitude[i]
                    );
                }
            }
        }
    }

    #[test]
    fn tasks_come_in_whole_rounds_of_the_threads() {
        // (outputs, threads, tasks): SmolLM2's projections and head, a
        // product too small to split, one thread.
        for (outputs, threads, tasks) in [
            (192, 2, 4),
            (576, 2, 8),
            (1536, 2, 8),
            (49152, 2, 8),
            (100, 2, 2),
            (48, 2, 1),
            (192, 1, 3),
        ] {
            let per_task = task_outputs(outputs, threads);
            assert_eq!(outputs.div_ceil(per_task), tasks, "{outputs} on {threads}");
        }
    }

    /// The vector code computes the same dots as the portable code.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_and_portable_integer_dots_agree() {
        if !avx2::available() {
            return;
        }
        for kind in BlockKind::ALL {
            let columns = 4 * kind.block_len();
            let row = random_blocks(kind, 4, 5);
            let mut rng = StdRng::seed_from_u64(9);
            let x: Vec<f32> = (0..3 * columns)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let q = activations::QuantizedRows::new(&x, 3, columns);
            let rows: Vec<_> = (0..3).map(|r| q.row(r)).collect();
            let widths = [false, true].into_iter();
            for wide in widths.filter(|&wide| !wide || avx2::wide_available()) {
                let mut fast = [0.0f32; 3];
                let dots = avx2::RowDots::new(kind, &rows, wide).unwrap();
                dots.dots(&row, &mut ProductColumns::whole(&mut fast, 3, 1), 0);
                for r in 0..3 {
                    let portable = groups::row_dot(kind, &row, rows[r]);
                    assert!(
                        (fast[r] - portable).abs() <= 1e-4 * portable.abs().max(1.0),
                        "{kind:?} row {r} (512 bits: {wide}): {} vs {portable}",
                        fast[r]
                    );
                }
            }
        }
    }

    /// The 512- and 256-bit decodings give the portable decoding's values:
    /// bit for bit when rounded as it rounds, within the FMA's single
    /// rounding otherwise.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_decoding_matches_the_reference_decoding() {
        if !avx2::available() {
            return;
        }
        let widths = [false, true].into_iter();
        for wide in widths.filter(|&wide| !wide || avx2::wide_available()) {
            for kind in BlockKind::ALL {
                let bytes = random_blocks(kind, 3, 4);
                let mut want = vec![0.0f32; 3 * kind.block_len()];
                airllm_core::dequant::dequantize(kind, &bytes, &mut want);
                let mut got = vec![0.0f32; want.len()];
                let mut fused = vec![0.0f32; want.len()];
                assert!(avx2::decode_blocks_at(
                    kind,
                    &bytes,
                    &mut got,
                    wide,
                    Rounding::Portable
                ));
                assert!(avx2::decode_blocks_at(
                    kind,
                    &bytes,
                    &mut fused,
                    wide,
                    Rounding::Fused
                ));
                for (i, want) in want.iter().enumerate() {
                    let label = format!("{kind:?} (wide: {wide}) value {i}");
                    assert_eq!(
                        got[i].to_bits(),
                        want.to_bits(),
                        "{label}: {} vs {want}",
                        got[i]
                    );
                    assert!(
                        (fused[i] - want).abs() <= 1e-6,
                        "{label}: {} vs {want}",
                        fused[i]
                    );
                }
                assert!(!avx2::decode_blocks_at(
                    kind,
                    &bytes,
                    &mut got[1..],
                    wide,
                    Rounding::Fused
                ));
            }
        }
    }

    /// The host widening gives the portable decoding's values bit for bit,
    /// for every encoding.
    #[test]
    fn widening_gives_the_portable_values() {
        let dense = [DType::F32, DType::BF16, DType::F16].map(StorageKind::Dense);
        let kinds = dense
            .into_iter()
            .chain(BlockKind::ALL.map(StorageKind::Block));
        for kind in kinds {
            let w = random_matrix(kind, 3, 256, 11);
            let got = widen(&w).unwrap();
            let want = w.to_f32().unwrap();
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{kind}");
        }
    }

    /// bf16 and f16 widen to the reference values exactly, over a range
    /// that starts and ends off a vector's width.
    #[test]
    fn half_precision_decoding_matches_the_reference_decoding() {
        for dtype in [DType::BF16, DType::F16] {
            let w = random_matrix(StorageKind::Dense(dtype), 3, 100, 9);
            let mut want = vec![0.0f32; 203];
            w.decode_range(5, &mut want).unwrap();
            let mut got = vec![0.0f32; 203];
            decode(&w, 5, &mut got).unwrap();
            assert_eq!(got, want, "{dtype:?}");
        }
    }

    /// The codes the AMX path multiplies, times their scale plus their
    /// minimum, are the reference values (within one rounding), and the
    /// decoder places each group at its strides.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn affine_codes_rebuild_the_reference_decoding() {
        let strides = avx2::Strides {
            codes: 40,
            scales: 3,
        };
        for kind in BlockKind::ALL {
            let Some(decoder) = avx2::AffineCodes::new(kind) else {
                assert!(!amx::takes_codes(StorageKind::Block(kind)) || !avx2::wide_available());
                continue;
            };
            let bytes = random_blocks(kind, 3, 6);
            let mut want = vec![0.0f32; 3 * kind.block_len()];
            airllm_core::dequant::dequantize(kind, &bytes, &mut want);
            let groups = want.len() / 32;
            let mut codes = vec![0u16; (groups - 1) * strides.codes + 32];
            let (mut scales, mut mins) = (vec![0.0; groups * 3], vec![0.0; groups * 3]);
            assert!(decoder.decode(&bytes, &mut codes, &mut scales, &mut mins, strides));
            for (i, want) in want.iter().enumerate() {
                let (group, at) = (i / 32, i / 32 * strides.codes + i % 32);
                let code = half::bf16::from_bits(codes[at]).to_f32();
                assert_eq!(code, code.round(), "{kind:?} value {i}: code {code}");
                let got = code * scales[group * 3] + mins[group * 3];
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{kind:?} value {i}: {got} vs {want}"
                );
            }
            assert!(!decoder.decode(&bytes, &mut codes[1..], &mut scales, &mut mins, strides));
        }
    }

    #[test]
    fn a_matrix_shorter_than_its_shape_is_an_error() {
        let mut w = random_matrix(StorageKind::Block(BlockKind::Q4_0), 4, 64, 1);
        w.shape = vec![5, 64];
        let error = linear(&[0.0; 64], 1, &w, Activations::Reduced).unwrap_err();
        assert!(error.to_string().contains("`w`"), "{error}");
    }
}
