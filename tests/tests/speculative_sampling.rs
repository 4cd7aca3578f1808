//! Speculative sampling keeps the model's distribution: on a fixture model
//! drafted by a lossy conversion of itself (its mixed-quantization GGUF:
//! about two drafts in three are kept, the rest rejected and drawn from the
//! residual distribution), the first three sampled positions over 5,000
//! seeds are distributed as without a draft (χ² test of homogeneity per
//! position, p > 0.001; keeping every draft, or drawing a rejection's
//! replacement from the model's distribution instead of the residual, gives
//! p < 1e-11). Deterministic: the seeds are fixed.

use std::collections::BTreeMap;
use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob, DeviceChoice};
use airllm_core::{
    BatchShape, ComputeBackend, DraftCounts, DraftKind, DraftSettings, GenerationConfig, Result,
    SamplingConfig, Scheduler, SchedulerLimits, TokenControl,
};
use airllm_tests::*;
use burn::tensor::backend::Backend;
use statrs::distribution::{ChiSquared, ContinuousCDF};

const TARGET: &str = "llama-gqa";
const DRAFT: &str = "llama-mixed.gguf";
const SEEDS: u64 = 5_000;
/// Positions compared; one more is generated so that both are drafted.
const POSITIONS: usize = 3;
const MAX_BATCH: usize = 500;

/// The first tokens of every seed's answer, with `draft` or without.
struct Samples {
    draft: bool,
}

impl BackendJob for Samples {
    type Output = (Vec<Vec<u32>>, DraftCounts);

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let prompt = reference(TARGET).prompts[0].ids.clone();
        let shape = BatchShape {
            batch: MAX_BATCH,
            chunk: prompt.len(),
            context: prompt.len() + POSITIONS + 1,
        };
        let (target, draft) = (fixture(TARGET), fixture(DRAFT));
        let mut engine = match self.draft {
            true => drafted_engine(&target, &draft, backend, Budget::Resident, shape)?,
            false => engine(&target, backend, Budget::Resident, 1, shape)?,
        };
        engine.prepare(shape.batch, shape.chunk, shape.context)?;
        let limits = SchedulerLimits {
            max_batch: MAX_BATCH,
            prefill_chunk: prompt.len(),
        };
        let mut scheduler = Scheduler::new(limits, engine.arch().dims());
        for seed in 0..SEEDS {
            let config = GenerationConfig {
                max_new_tokens: POSITIONS + 1,
                sampling: SamplingConfig {
                    temperature: 1.0,
                    top_k: 16,
                    seed,
                    ..SamplingConfig::default()
                },
                draft: self.draft.then_some(DraftSettings {
                    kind: DraftKind::Model,
                    tokens: 4,
                }),
                ..GenerationConfig::default()
            };
            scheduler.submit(seed, prompt.clone(), &config)?;
        }
        let mut answers = vec![Vec::new(); SEEDS as usize];
        while !scheduler.is_empty() {
            let ended = scheduler
                .step(&mut engine, &mut |_, _| TokenControl::Continue)
                .map_err(|failed| failed.error)?;
            for (seed, answer) in ended {
                answers[seed as usize] = answer.tokens;
            }
        }
        Ok((answers, engine.stats().drafts))
    }
}

/// The p-value of the χ² test that `a` and `b` (counts per token) come from
/// one distribution; tokens expected fewer than 5 times are pooled.
fn homogeneity_p_value(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>) -> f64 {
    let (total_a, total_b) = (
        a.values().sum::<u64>() as f64,
        b.values().sum::<u64>() as f64,
    );
    let share_a = total_a / (total_a + total_b);
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut pooled = (0.0, 0.0);
    let tokens: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
    for token in tokens {
        let (x, y) = (
            a.get(&token).copied().unwrap_or(0) as f64,
            b.get(&token).copied().unwrap_or(0) as f64,
        );
        match (x + y) * share_a.min(1.0 - share_a) < 5.0 {
            true => pooled = (pooled.0 + x, pooled.1 + y),
            false => cells.push((x, y)),
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        cells.push(pooled);
    }
    let statistic: f64 = cells
        .iter()
        .map(|&(x, y)| {
            let expected_a = (x + y) * share_a;
            let expected_b = (x + y) * (1.0 - share_a);
            (x - expected_a).powi(2) / expected_a + (y - expected_b).powi(2) / expected_b
        })
        .sum();
    let freedom = (cells.len() - 1) as f64;
    1.0 - ChiSquared::new(freedom).unwrap().cdf(statistic)
}

fn counts_at(answers: &[Vec<u32>], position: usize) -> BTreeMap<u32, u64> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer[position]).or_default() += 1;
    }
    counts
}

#[test]
fn drafted_samples_are_distributed_as_undrafted_ones() {
    let sample = |draft| dispatch(DeviceChoice::Cpu, EXACT, Samples { draft }).unwrap();
    let (plain, _) = sample(false);
    let (drafted, counts) = sample(true);
    assert!(
        counts.accepted > counts.proposed / 10 && counts.accepted < counts.proposed * 9 / 10,
        "drafts are kept and rejected: {counts:?}"
    );
    for position in 0..POSITIONS {
        let (a, b) = (counts_at(&plain, position), counts_at(&drafted, position));
        let p = homogeneity_p_value(&a, &b);
        assert!(p > 0.001, "position {position}: p = {p:.2e}");
        assert!(a.len() > 4, "position {position} varies: {a:?}");
    }
}
