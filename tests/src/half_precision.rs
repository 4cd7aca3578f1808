//! Half precision held to f32, teacher-forced: each fixture's prompts and
//! their recorded greedy tokens run as one sequence, and every position's
//! logits compared with an f32 run's (burn's ndarray backend, so the device
//! under test may compute in half: burn fixes a device's dtype once per
//! process).

use std::sync::Arc;

use airllm_backends::BurnBackend;
use airllm_core::{BatchShape, ComputeBackend, EngineOptions, Result};
use burn::backend::ndarray::{NdArray, NdArrayDevice};
use burn::tensor::backend::Backend;

use crate::{engine_with, fixture, max_abs_diff, reference, Budget};

/// The fixtures the half dtypes are checked on: a dense model with grouped
/// queries, a GGUF with seven matrix encodings, a mixture of experts, and
/// one with q/k norms.
pub const HALF_FIXTURES: [&str; 4] = [
    "llama-gqa",
    "llama-mixed.gguf",
    "mixtral-moe",
    "qwen3-dense",
];

/// f16 logits of a dense model may differ from f32 ones by this much.
/// The fixtures are random models initialised with a spread of 0.2, whose
/// logits reach ±7: there f16's own rounding moves them by up to 0.026
/// (qwen3-dense) and 0.078 (llama-gqa, llama-mixed.gguf), alike on wgpu and
/// on flex.
pub const F16_LOGIT_TOLERANCE: f32 = 0.1;

/// The share of decisive steps whose half argmax must be the recorded
/// token in f16: every one for a dense model; a mixture of experts can
/// route a token to other experts when its router's scores nearly tie,
/// which moves its logits far (mixtral-moe: 3 of 69 steps, f32 gaps 0.07 to
/// 0.13).
pub const F16_AGREEMENT: f64 = 0.95;

/// The same in bf16, whose 8-bit mantissa rounds logits of ±7 by up to
/// 0.03: 63 to 67 of 66 to 69 steps agree on the four fixtures.
pub const BF16_AGREEMENT: f64 = 0.9;

/// Where the f32 top-2 gap is at least this, the half argmax must be the
/// recorded token.
pub const DECISIVE_GAP: f32 = 0.05;

/// One prompt and its recorded greedy continuation, as one sequence.
pub struct Forced {
    /// Prompt then greedy tokens.
    pub ids: Vec<u32>,
    /// Prompt length.
    pub prompt: usize,
}

/// Each prompt of fixture `name` with its recorded greedy tokens.
pub fn forced_sequences(name: &str) -> Vec<Forced> {
    reference(name)
        .prompts
        .into_iter()
        .map(|p| Forced {
            prompt: p.ids.len(),
            ids: p.ids.into_iter().chain(p.greedy).collect(),
        })
        .collect()
}

/// Logits at every position of each sequence, computed by fixture `name`
/// on `backend` with every unit resident.
pub fn forced_logits<B: Backend>(
    backend: Arc<dyn ComputeBackend<B>>,
    name: &str,
    sequences: &[Forced],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let longest = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let shape = BatchShape {
        batch: 1,
        chunk: longest,
        context: longest,
    };
    let mut engine = engine_with(
        &fixture(name),
        backend,
        Budget::Resident,
        shape,
        EngineOptions::default(),
    )?;
    sequences
        .iter()
        .map(|s| engine.prompt_logits(&s.ids, longest))
        .collect()
}

/// The same in f32 on burn's ndarray backend.
pub fn f32_forced_logits(name: &str, sequences: &[Forced]) -> Vec<Vec<Vec<f32>>> {
    let ndarray = BurnBackend::<NdArray>::new(NdArrayDevice::Cpu, "ndarray".into());
    forced_logits::<NdArray>(Arc::new(ndarray), name, sequences).unwrap()
}

fn top_two(logits: &[f32]) -> (usize, f32) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    (order[0], logits[order[0]] - logits[order[1]])
}

/// How half logits compare with f32 ones, teacher-forced.
#[derive(Debug, Default)]
pub struct HalfReport {
    /// The largest difference of a logit.
    pub max_diff: f32,
    /// Recorded steps where the f32 top-2 gap is decisive.
    pub decisive: usize,
    /// Of those, the ones whose half argmax is not the recorded token, as
    /// (sequence, position, f32 gap).
    pub flips: Vec<(usize, usize, f32)>,
}

impl HalfReport {
    /// The share of decisive steps whose argmax is the recorded token.
    pub fn agreement(&self) -> f64 {
        match self.decisive {
            0 => 0.0,
            n => (n - self.flips.len()) as f64 / n as f64,
        }
    }
}

/// Compares half logits with f32 ones: the largest difference, and
/// wherever the f32 top-2 gap is decisive, whether the argmax is the
/// recorded token.
pub fn compare_half(
    label: &str,
    sequences: &[Forced],
    half: &[Vec<Vec<f32>>],
    full: &[Vec<Vec<f32>>],
) -> HalfReport {
    let mut report = HalfReport::default();
    for (s, sequence) in sequences.iter().enumerate() {
        assert_eq!(half[s].len(), sequence.ids.len(), "{label}: positions");
        for (position, (ours, theirs)) in half[s].iter().zip(&full[s]).enumerate() {
            report.max_diff = report.max_diff.max(max_abs_diff(ours, theirs));
            let Some(&recorded) = sequence.ids.get(position + 1) else {
                continue;
            };
            let (f32_top, gap) = top_two(theirs);
            if position + 1 < sequence.prompt || gap < DECISIVE_GAP {
                continue;
            }
            assert_eq!(f32_top as u32, recorded, "{label}: f32 follows the record");
            report.decisive += 1;
            if top_two(ours).0 as u32 != recorded {
                report.flips.push((s, position, gap));
            }
        }
    }
    eprintln!("{label}: {report:?}");
    report
}
