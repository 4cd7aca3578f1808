//! Attention on the cpu in one pass per block of queries: scores for a
//! chunk of [`KEYS`] keys at a time, an online softmax (a running maximum
//! and sum per query, earlier terms rescaled when the maximum grows) and the
//! weighted values added at once, so no score matrix larger than a chunk
//! exists. Query heads that share a KV head are computed together and read
//! each key chunk once. Chunks every query of a block has masked out are
//! skipped, which halves a causal prompt's work.

use airllm_core::{Error, Result};
use rayon::prelude::*;

use super::math::exp;

/// Keys per chunk: one AVX-512 vector of scores.
pub const KEYS: usize = 16;

/// Queries (per head) in one parallel task.
const QUERIES: usize = 16;

/// Query rows whose scores for a key chunk are computed together (one
/// accumulator vector each; one row alone waits on each FMA's latency).
const DOT_ROWS: usize = 8;

/// A bias at or below this hides its key (masks use -1e30).
const HIDDEN: f32 = -1.0e29;

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (dividing `heads`).
    pub kv_heads: usize,
    /// Queries per sequence.
    pub seq: usize,
    /// Keys per sequence.
    pub total: usize,
    /// Positions between the starts of consecutive (sequence, KV head)
    /// blocks of keys and of values (at least `total`: a cache with room for
    /// more positions is read where it lies).
    pub kv_room: usize,
    /// Dims per head.
    pub head_dim: usize,
    /// Heads of the bias: 1 (shared) or `heads`.
    pub bias_heads: usize,
}

impl AttentionShape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One attention problem: queries `q: [batch, heads, seq, head_dim]`,
/// `keys`, `values: [batch, kv_heads, total, head_dim]` (each block of
/// `total` positions `kv_room` positions after the last) and `bias: [batch,
/// bias_heads, seq, total]`, all row-major; query head `h` reads KV head
/// `h / (heads / kv_heads)`.
#[derive(Clone, Copy, Debug)]
pub struct Problem<'a> {
    /// The queries.
    pub q: &'a [f32],
    /// The keys.
    pub keys: &'a [f32],
    /// The values.
    pub values: &'a [f32],
    /// The additive bias.
    pub bias: &'a [f32],
    /// Their dimensions.
    pub shape: AttentionShape,
}

impl Problem<'_> {
    /// An error naming the shape the inputs do not fit.
    fn check(&self) -> Result<()> {
        let s = self.shape;
        let grouped = s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads);
        let consistent = grouped
            && (s.bias_heads == 1 || s.bias_heads == s.heads)
            && self.q.len() == s.batch * s.heads * s.seq * s.head_dim
            && s.kv_room >= s.total
            && self.keys.len() == kv_values(s)
            && self.values.len() == self.keys.len()
            && self.bias.len() == s.batch * s.bias_heads * s.seq * s.total;
        match consistent {
            true => Ok(()),
            false => Err(Error::Backend(format!(
                "attention inputs do not fit {s:?}: {} query, {} key, {} value and {} bias values",
                self.q.len(),
                self.keys.len(),
                self.values.len(),
                self.bias.len()
            ))),
        }
    }

    /// The parallel tasks of this problem: a block of queries of every
    /// head of one KV head of one sequence.
    fn tasks(&self, index: usize, scale: f32) -> impl Iterator<Item = Task> + '_ {
        let s = self.shape;
        let blocks = s.seq.div_ceil(QUERIES);
        (0..s.batch).flat_map(move |b| {
            (0..s.kv_heads).flat_map(move |kv| {
                (0..blocks).map(move |block| Task {
                    problem: index,
                    shape: s,
                    b,
                    kv,
                    queries: block * QUERIES..((block + 1) * QUERIES).min(s.seq),
                    scale,
                })
            })
        })
    }
}

/// `softmax(q · kᵀ · scale + bias) · v` of one [`Problem`] (its inputs
/// given one by one). Returns `[batch, seq, heads, head_dim]`, the order
/// the output projection reads (the heads of each position side by side);
/// an error names the shape the inputs do not fit.
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    bias: &[f32],
    shape: AttentionShape,
    scale: f32,
) -> Result<Vec<f32>> {
    let problem = Problem {
        q,
        keys,
        values,
        bias,
        shape,
    };
    let mut outputs = attention_on(Isa::widest(), &[problem], scale)?;
    Ok(outputs.pop().expect("one problem, one output"))
}

/// [`attention`] of several problems (the rows of a pass, each over its
/// own keys) in one parallel sweep; one output per problem.
pub fn attention_many(problems: &[Problem<'_>], scale: f32) -> Result<Vec<Vec<f32>>> {
    attention_on(Isa::widest(), problems, scale)
}

/// [`attention_many`] with the instructions of `isa`.
fn attention_on(isa: Isa, problems: &[Problem<'_>], scale: f32) -> Result<Vec<Vec<f32>>> {
    for problem in problems {
        problem.check()?;
    }
    let tasks: Vec<Task> = problems
        .iter()
        .enumerate()
        .flat_map(|(index, problem)| problem.tasks(index, scale))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|task| {
            let p = &problems[task.problem];
            isa.run(task, p.q, p.keys, p.values, p.bias)
        })
        .collect();
    let mut outputs: Vec<Vec<f32>> = problems.iter().map(|p| vec![0.0f32; p.q.len()]).collect();
    for (task, result) in tasks.iter().zip(results) {
        let s = task.shape;
        let (group, first) = (s.group(), task.queries.start);
        let out = &mut outputs[task.problem];
        for g in 0..group {
            let head = task.kv * group + g;
            for r in 0..task.queries.len() {
                let at = ((task.b * s.seq + first + r) * s.heads + head) * s.head_dim;
                let from = (g * task.queries.len() + r) * s.head_dim;
                out[at..at + s.head_dim].copy_from_slice(&result[from..from + s.head_dim]);
            }
        }
    }
    Ok(outputs)
}

/// Values the keys (or the values) of shape `s` span: every (sequence, KV
/// head) block but the last takes `kv_room` positions, the last `total`.
fn kv_values(s: AttentionShape) -> usize {
    match s.batch * s.kv_heads {
        0 => 0,
        blocks => ((blocks - 1) * s.kv_room + s.total) * s.head_dim,
    }
}

/// One parallel task: a block of queries of every head of one KV head.
struct Task {
    /// Which problem of the sweep.
    problem: usize,
    shape: AttentionShape,
    b: usize,
    kv: usize,
    queries: std::ops::Range<usize>,
    scale: f32,
}

/// The running softmax of one query row.
struct Row {
    /// Largest score so far.
    max: f32,
    /// Σ exp(score - max) so far.
    sum: f32,
}

/// The instructions attention's inner loops are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// Every one this CPU runs, widest first.
    fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if has!("avx2") && has!("fma") {
                isas.push(Isa::Avx2);
            }
        }
        isas.push(Isa::Portable);
        isas
    }

    /// The widest one this CPU runs.
    fn widest() -> Isa {
        Isa::available()[0]
    }

    /// The task's outputs, `[group, queries, head_dim]`.
    fn run(self, task: &Task, q: &[f32], keys: &[f32], values: &[f32], bias: &[f32]) -> Vec<f32> {
        match self {
            // SAFETY: `available` offers these only where the CPU has them.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { run_avx512(task, q, keys, values, bias) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { run_avx2(task, q, keys, values, bias) },
            _ => run_portable(task, q, keys, values, bias),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512(task: &Task, q: &[f32], k: &[f32], v: &[f32], bias: &[f32]) -> Vec<f32> {
    // SAFETY: this function runs only where the CPU has AVX-512F.
    run_with(
        task,
        q,
        k,
        v,
        bias,
        |keys, transposed| unsafe { avx512_transpose_keys(keys, transposed) },
        |query_dims, keys, dots| unsafe { avx512_chunk_dots(query_dims, keys, dots) },
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(task: &Task, q: &[f32], k: &[f32], v: &[f32], bias: &[f32]) -> Vec<f32> {
    // Closures, not the functions themselves: a closure inherits this
    // function's target features, a function item's call shim does not
    // (its `mul_add`s became calls to the library's `fmaf`).
    // SAFETY: this function runs only where the CPU has AVX2 and FMA.
    run_with(
        task,
        q,
        k,
        v,
        bias,
        |keys, transposed| unsafe { avx2_transpose_keys(keys, transposed) },
        |query_dims, keys, dots| unsafe { avx2_chunk_dots(query_dims, keys, dots) },
    )
}

/// Plain loops over fixed-size arrays, written to vectorize at whatever
/// width the caller's target features allow.
#[inline(always)]
fn run_portable(task: &Task, q: &[f32], keys: &[f32], values: &[f32], bias: &[f32]) -> Vec<f32> {
    run_with(
        task,
        q,
        keys,
        values,
        bias,
        portable_transpose_keys,
        portable_chunk_dots,
    )
}

/// A chunk of keys (`[width, head_dim]`, at most [`KEYS`] of them) into
/// `transposed` (`[head_dim][KEYS]`); columns past `width` keep what they
/// held (their scores are masked).
#[inline(always)]
fn portable_transpose_keys(keys: &[f32], transposed: &mut [[f32; KEYS]]) {
    let d = transposed.len();
    for (j, key) in keys.chunks_exact(d).enumerate() {
        for (dim, value) in key.iter().enumerate() {
            transposed[dim][j] = *value;
        }
    }
}

/// [`portable_transpose_keys`] by 16 × 16 blocks in registers where the
/// head's dims are a multiple of 16 (columns past `width` zero).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx512_transpose_keys(keys: &[f32], transposed: &mut [[f32; KEYS]]) {
    use std::arch::x86_64::*;
    let d = transposed.len();
    if !d.is_multiple_of(KEYS) {
        return portable_transpose_keys(keys, transposed);
    }
    for (block, out) in transposed.chunks_exact_mut(KEYS).enumerate() {
        let mut rows = [_mm512_setzero_ps(); KEYS];
        for (row, key) in rows.iter_mut().zip(keys.chunks_exact(d)) {
            *row = _mm512_loadu_ps(key[block * KEYS..(block + 1) * KEYS].as_ptr());
        }
        super::transpose::transpose_16x16(&mut rows);
        for (dims, row) in out.iter_mut().zip(rows) {
            _mm512_storeu_ps(dims.as_mut_ptr(), row);
        }
    }
}

/// [`portable_transpose_keys`] by 8 × 8 blocks in registers where the
/// head's dims are a multiple of 8 (columns past `width` zero).
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_transpose_keys(keys: &[f32], transposed: &mut [[f32; KEYS]]) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 8;
    let d = transposed.len();
    if !d.is_multiple_of(BLOCK) {
        return portable_transpose_keys(keys, transposed);
    }
    let width = keys.len() / d;
    for half in 0..KEYS / BLOCK {
        let first = half * BLOCK;
        for (block, out) in transposed.chunks_exact_mut(BLOCK).enumerate() {
            let mut rows = [_mm256_setzero_ps(); BLOCK];
            for (j, row) in rows
                .iter_mut()
                .enumerate()
                .take(width.saturating_sub(first))
            {
                let key = &keys[(first + j) * d..(first + j + 1) * d];
                *row = _mm256_loadu_ps(key[block * BLOCK..(block + 1) * BLOCK].as_ptr());
            }
            super::transpose::transpose_8x8(&mut rows);
            for (dims, row) in out.iter_mut().zip(rows) {
                _mm256_storeu_ps(dims[first..first + BLOCK].as_mut_ptr(), row);
            }
        }
    }
}

/// The scores of [`DOT_ROWS`] query rows against a key chunk, in plain loops.
#[inline(always)]
fn portable_chunk_dots(
    query_dims: &[[f32; DOT_ROWS]],
    keys: &[[f32; KEYS]],
    dots: &mut [[f32; KEYS]],
) {
    let mut acc = [[0.0f32; KEYS]; DOT_ROWS];
    for (query, key) in query_dims.iter().zip(keys) {
        for (acc, q) in acc.iter_mut().zip(query) {
            for (a, k) in acc.iter_mut().zip(key) {
                *a = q.mul_add(*k, *a);
            }
        }
    }
    dots.copy_from_slice(&acc);
}

/// [`portable_chunk_dots`] with one AVX-512 accumulator per query row (the
/// compiler vectorizes the plain loops across the rows, with gathers).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx512_chunk_dots(
    query_dims: &[[f32; DOT_ROWS]],
    keys: &[[f32; KEYS]],
    dots: &mut [[f32; KEYS]],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); DOT_ROWS];
    for (query, key) in query_dims.iter().zip(keys) {
        let key = _mm512_loadu_ps(key.as_ptr());
        for (acc, q) in acc.iter_mut().zip(query) {
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(*q), key, *acc);
        }
    }
    for (dots, acc) in dots.iter_mut().zip(acc) {
        _mm512_storeu_ps(dots.as_mut_ptr(), acc);
    }
}

/// [`portable_chunk_dots`] with two AVX2 accumulators per query row, half
/// the rows at a time (all of them would take every register).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_chunk_dots(
    query_dims: &[[f32; DOT_ROWS]],
    keys: &[[f32; KEYS]],
    dots: &mut [[f32; KEYS]],
) {
    use std::arch::x86_64::*;
    const HALF: usize = DOT_ROWS / 2;
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 2]; HALF];
        for (query, key) in query_dims.iter().zip(keys) {
            let low = _mm256_loadu_ps(key.as_ptr());
            let high = _mm256_loadu_ps(key[8..].as_ptr());
            for (acc, q) in acc.iter_mut().zip(&query[half * HALF..]) {
                let q = _mm256_set1_ps(*q);
                acc[0] = _mm256_fmadd_ps(q, low, acc[0]);
                acc[1] = _mm256_fmadd_ps(q, high, acc[1]);
            }
        }
        for (dots, acc) in dots[half * HALF..].iter_mut().zip(acc) {
            _mm256_storeu_ps(dots.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(dots[8..].as_mut_ptr(), acc[1]);
        }
    }
}

/// The task's outputs; `transpose_keys(keys, transposed)` turns a chunk of
/// keys as [`portable_transpose_keys`] does; `chunk_dots(query_dims, keys,
/// dots)` computes the scores of a block of [`DOT_ROWS`] query rows (dims
/// `[head_dim][DOT_ROWS]`) against a chunk of keys (`[head_dim][KEYS]`)
/// into `dots` (`[DOT_ROWS][KEYS]`).
#[inline(always)]
fn run_with(
    task: &Task,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    bias: &[f32],
    transpose_keys: impl Fn(&[f32], &mut [[f32; KEYS]]),
    chunk_dots: impl Fn(&[[f32; DOT_ROWS]], &[[f32; KEYS]], &mut [[f32; KEYS]]),
) -> Vec<f32> {
    let s = task.shape;
    let (d, group, count) = (s.head_dim, s.group(), task.queries.len());
    let rows = group * count;
    let mut out = vec![0.0f32; rows * d];
    let mut state: Vec<Row> = (0..rows)
        .map(|_| Row {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        })
        .collect();
    let query_row = |r: usize| {
        let (g, i) = (r / count, r % count);
        let head = task.kv * group + g;
        let at = ((task.b * s.heads + head) * s.seq + task.queries.start + i) * d;
        (&q[at..at + d], head, task.queries.start + i)
    };
    let bias_row = |head: usize, query: usize| {
        let bias_head = if s.bias_heads == 1 { 0 } else { head };
        let at = ((task.b * s.bias_heads + bias_head) * s.seq + query) * s.total;
        &bias[at..at + s.total]
    };
    // The queries transposed in blocks of `DOT_ROWS` rows, `[block][head_dim]
    // [DOT_ROWS]` (rows past the last are zero), so one key dim meets the
    // block's rows as independent accumulators.
    let blocks = rows.div_ceil(DOT_ROWS);
    let mut query_dims = vec![[0.0f32; DOT_ROWS]; blocks * d];
    for r in 0..rows {
        let (query, _, _) = query_row(r);
        let block = &mut query_dims[r / DOT_ROWS * d..(r / DOT_ROWS + 1) * d];
        for (dims, value) in block.iter_mut().zip(query) {
            dims[r % DOT_ROWS] = *value;
        }
    }
    // Keys of the chunk transposed, `[head_dim][KEYS]`, so each query dim
    // scales one vector of key values.
    let mut transposed = vec![[0.0f32; KEYS]; d];
    let mut dots = vec![[0.0f32; KEYS]; blocks * DOT_ROWS];
    let kv_base = (task.b * s.kv_heads + task.kv) * s.kv_room * d;
    for start in (0..s.total).step_by(KEYS) {
        let width = KEYS.min(s.total - start);
        let visible = (0..rows).any(|r| {
            let (_, head, query) = query_row(r);
            bias_row(head, query)[start..start + width]
                .iter()
                .any(|&b| b > HIDDEN)
        });
        if !visible {
            continue;
        }
        transpose_keys(
            &keys[kv_base + start * d..kv_base + (start + width) * d],
            &mut transposed,
        );
        for (block_dims, block_dots) in query_dims
            .chunks_exact(d)
            .zip(dots.chunks_exact_mut(DOT_ROWS))
        {
            chunk_dots(block_dims, &transposed, block_dots);
        }
        let chunk_values = &values[kv_base + start * d..kv_base + (start + width) * d];
        for (r, (row, dots)) in state.iter_mut().zip(&dots).enumerate() {
            let (_, head, position) = query_row(r);
            // Columns past the chunk's width stay at -inf: weight 0.
            let mut scores = [f32::NEG_INFINITY; KEYS];
            let row_bias = &bias_row(head, position)[start..start + width];
            for (score, (dot, b)) in scores.iter_mut().zip(dots.iter().zip(row_bias)) {
                *score = dot * task.scale + b;
            }
            // `>` rather than `f32::max` (which orders NaNs) so the
            // maximum vectorizes.
            let chunk_max = scores
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let max = row.max.max(chunk_max);
            let rescale = exp(row.max - max);
            let mut weights = [0.0f32; KEYS];
            for (weight, score) in weights.iter_mut().zip(&scores) {
                *weight = exp(score - max);
            }
            weights[width..].fill(0.0);
            row.sum = row.sum * rescale + lane_sum(&weights);
            row.max = max;
            add_weighted(
                &mut out[r * d..(r + 1) * d],
                rescale,
                &weights,
                chunk_values,
            );
        }
    }
    for (row, acc) in state.iter().zip(out.chunks_exact_mut(d)) {
        let inverse = 1.0 / row.sum;
        for a in acc {
            *a *= inverse;
        }
    }
    out
}

/// The sum of a chunk's weights, in a tree (a running sum would add them
/// one after another).
#[inline(always)]
fn lane_sum(weights: &[f32; KEYS]) -> f32 {
    let mut half = [0.0f32; KEYS / 2];
    for (h, pair) in half.iter_mut().zip(weights.chunks_exact(2)) {
        *h = pair[0] + pair[1];
    }
    let mut quarter = [0.0f32; KEYS / 4];
    for (q, pair) in quarter.iter_mut().zip(half.chunks_exact(2)) {
        *q = pair[0] + pair[1];
    }
    (quarter[0] + quarter[1]) + (quarter[2] + quarter[3])
}

/// `acc = acc · rescale + Σⱼ weights[j] · values[j]` for the chunk's value
/// rows (`values.len() / acc.len()` of them). Sixteen dims at a time in a
/// local vector, even and odd keys into separate sums, so the adds of
/// consecutive keys do not wait on each other.
#[inline(always)]
fn add_weighted(acc: &mut [f32], rescale: f32, weights: &[f32; KEYS], values: &[f32]) {
    const LANES: usize = 16;
    let d = acc.len();
    let body = d - d % LANES;
    for at in (0..body).step_by(LANES) {
        let mut even = [0.0f32; LANES];
        let mut odd = [0.0f32; LANES];
        let pairs = values.chunks_exact(2 * d);
        let last = pairs.remainder();
        for (pair, weight) in pairs.zip(weights.chunks_exact(2)) {
            let (first, second) = pair.split_at(d);
            for (s, v) in even.iter_mut().zip(&first[at..at + LANES]) {
                *s = weight[0].mul_add(*v, *s);
            }
            for (s, v) in odd.iter_mut().zip(&second[at..at + LANES]) {
                *s = weight[1].mul_add(*v, *s);
            }
        }
        if !last.is_empty() {
            let weight = weights[values.len() / d - 1];
            for (s, v) in even.iter_mut().zip(&last[at..at + LANES]) {
                *s = weight.mul_add(*v, *s);
            }
        }
        for ((a, e), o) in acc[at..at + LANES].iter_mut().zip(&even).zip(&odd) {
            *a = a.mul_add(rescale, e + o);
        }
    }
    for dim in body..d {
        let sum: f32 = values
            .chunks_exact(d)
            .zip(weights)
            .map(|(value, weight)| weight * value[dim])
            .sum();
        acc[dim] = acc[dim].mul_add(rescale, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The plain definition in f64: every score, the softmax, the sum; in
    /// the order of `q` (`[batch, heads, seq, head_dim]`).
    fn reference(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        bias: &[f32],
        s: AttentionShape,
        scale: f64,
    ) -> Vec<f64> {
        let d = s.head_dim;
        let mut out = Vec::new();
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kv = h / s.group();
                let bias_head = if s.bias_heads == 1 { 0 } else { h };
                for i in 0..s.seq {
                    let qi = &q[((b * s.heads + h) * s.seq + i) * d..][..d];
                    let scores: Vec<f64> = (0..s.total)
                        .map(|j| {
                            let kj = &keys[((b * s.kv_heads + kv) * s.kv_room + j) * d..][..d];
                            let dot: f64 =
                                qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let at = ((b * s.bias_heads + bias_head) * s.seq + i) * s.total + j;
                            dot * scale + bias[at] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for dim in 0..d {
                        out.push(
                            (0..s.total)
                                .map(|j| {
                                    let at = ((b * s.kv_heads + kv) * s.kv_room + j) * d + dim;
                                    weights[j] * values[at] as f64
                                })
                                .sum::<f64>()
                                / sum,
                        );
                    }
                }
            }
        }
        out
    }

    fn random(count: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..count).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    /// Causal mask of a pass whose `seq` queries end the `total` keys, the
    /// first `padding` of them padding: hidden from every other query, and
    /// each seeing only itself (as the engine's masks have it).
    fn causal(s: AttentionShape, padding: usize) -> Vec<f32> {
        let mut bias = Vec::new();
        for _ in 0..s.batch * s.bias_heads {
            for i in 0..s.seq {
                let position = s.total - s.seq + i;
                for j in 0..s.total {
                    let hidden = match position < padding {
                        true => j != position,
                        false => j > position || j < padding,
                    };
                    bias.push(if hidden { -1.0e30 } else { 0.0 });
                }
            }
        }
        bias
    }

    #[test]
    fn matches_the_definition_for_grouped_heads_ragged_chunks_and_masks() {
        let mut rng = StdRng::seed_from_u64(3);
        let shapes = [
            // decode step: one query over a cache not a multiple of the chunk
            (1, 6, 2, 1, 37, 64, 1),
            // prompt: queries over several query blocks and key chunks
            (2, 4, 4, 35, 35, 16, 1),
            // a later prompt chunk, per-head bias (ALiBi-like), one KV head
            (1, 3, 1, 20, 53, 8, 3),
        ];
        const SCALE: f64 = 0.125;
        let mut cases = Vec::new();
        for (batch, heads, kv_heads, seq, total, head_dim, bias_heads) in shapes {
            let mut s = AttentionShape {
                batch,
                heads,
                kv_heads,
                seq,
                total,
                kv_room: total,
                head_dim,
                bias_heads,
            };
            // The decode step reads a cache with room for 9 more positions.
            if seq == 1 {
                s.kv_room = total + 9;
            }
            let q = random(batch * heads * seq * head_dim, &mut rng);
            let keys = random(kv_values(s), &mut rng);
            let values = random(keys.len(), &mut rng);
            let mut bias = causal(s, 2);
            if bias_heads > 1 {
                for (i, b) in bias.iter_mut().enumerate() {
                    if *b == 0.0 {
                        *b = -((i % 7) as f32) * 0.25;
                    }
                }
            }
            let want = reference(&q, &keys, &values, &bias, s, SCALE);
            cases.push((s, q, keys, values, bias, want));
        }
        // All the shapes in one sweep, as the rows of a pass are.
        for isa in Isa::available() {
            let problems: Vec<Problem> = cases
                .iter()
                .map(|(s, q, keys, values, bias, _)| Problem {
                    q,
                    keys,
                    values,
                    bias,
                    shape: *s,
                })
                .collect();
            let outputs = attention_on(isa, &problems, SCALE as f32).unwrap();
            for ((s, .., want), got) in cases.iter().zip(outputs) {
                let (heads, seq, head_dim) = (s.heads, s.seq, s.head_dim);
                // `got` is `[batch, seq, heads, head_dim]`: put it in the
                // reference's order.
                let got: Vec<f32> = (0..s.batch * heads * seq)
                    .flat_map(|row| {
                        let (b, h, i) = (row / (heads * seq), row / seq % heads, row % seq);
                        got[((b * seq + i) * heads + h) * head_dim..][..head_dim].to_vec()
                    })
                    .collect();
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{isa:?} {s:?} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn inputs_that_do_not_fit_the_shape_are_an_error() {
        let s = AttentionShape {
            batch: 1,
            heads: 3,
            kv_heads: 2,
            seq: 1,
            total: 1,
            kv_room: 1,
            head_dim: 4,
            bias_heads: 1,
        };
        let error = attention(&[0.0; 12], &[0.0; 8], &[0.0; 8], &[0.0], s, 1.0).unwrap_err();
        assert!(error.to_string().contains("kv_heads: 2"), "{error}");
    }
}
