//! Mixture-of-experts streaming: a streamed pass reads each layer's shared
//! tensors and only the experts its tokens are routed to; the expert cache
//! spends the memory the plan leaves over and serves repeated routings.

use std::sync::Arc;

use airllm_backends::BackendJob;
use airllm_core::{
    BatchShape, ComputeBackend, EngineOptions, Result, UnitInfo, UnitKind, UnitPlacement,
};
use airllm_tests::*;
use burn::tensor::backend::Backend;

/// Mixtral as a Hugging Face directory, and as a GGUF whose experts are
/// 3-D stacks (each expert a slice of them).
const FIXTURES: [&str; 2] = ["mixtral-moe", "mixtral-stacked.gguf"];
/// Experts per layer and per token in the fixture.
const EXPERTS: usize = 4;
const PER_TOKEN: usize = 2;
/// One token, one pass: each layer routes it to exactly `PER_TOKEN` experts.
const SHAPE: BatchShape = BatchShape {
    batch: 1,
    chunk: 1,
    context: 1,
};

/// Stored bytes of the tensors of `unit` whose names satisfy `pick`.
fn stored_bytes(unit: &UnitInfo, pick: impl Fn(&str) -> bool) -> u64 {
    unit.tensors
        .iter()
        .filter(|t| pick(&t.name))
        .map(|t| t.kind.encoded_bytes(t.elements() as usize).unwrap() as u64)
        .sum()
}

fn is_expert(name: &str) -> bool {
    name.contains(".experts.")
}

fn is_expert_0(name: &str) -> bool {
    name.contains(".experts.0.")
}

struct RoutedReads {
    fixture: &'static str,
    cache: bool,
    /// Room above the minimum budget, in experts' bytes.
    spare_experts: u64,
    /// Room too for every layer's shared tensors (which then stay).
    keep_shared: bool,
}

/// Stored bytes of every layer's shared tensors.
fn all_shared_bytes(units: &[UnitInfo]) -> u64 {
    units
        .iter()
        .filter(|u| matches!(u.kind, UnitKind::Layer(_)))
        .map(|u| stored_bytes(u, |n| !is_expert(n)))
        .sum()
}

/// Per pass: bytes read from each layer unit, expert cache hits, and the
/// logits of the pass.
type PassReads = Vec<(Vec<u64>, u64, Vec<f32>)>;

impl BackendJob for RoutedReads {
    type Output = (Vec<UnitInfo>, PassReads);

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let dir = fixture(self.fixture);
        let store_units = {
            let model = airllm_formats::ModelDir::open(&dir, &airllm_models::catalog())?;
            let layout = airllm_models::layout(&model.config)?;
            model.open_store(&layout.units)?.units().to_vec()
        };
        let expert_bytes = stored_bytes(&store_units[1], is_expert_0);
        let options = EngineOptions {
            prefetch: 1,
            expert_cache: self.cache,
            ..Default::default()
        };
        let shared = match self.keep_shared {
            true => all_shared_bytes(&store_units),
            false => 0,
        };
        let budget = Budget::AboveMinimum(self.spare_experts * expert_bytes + shared);
        let mut engine = engine_with(&dir, backend, budget, SHAPE, options)?;
        let token = reference(self.fixture).prompts[0].ids[0];
        let mut passes = Vec::new();
        for _ in 0..2 {
            engine.reset_stats();
            let logits = engine.prompt_logits(&[token], 1)?.remove(0);
            let stats = engine.stats();
            let layers = store_units
                .iter()
                .zip(&stats.units)
                .filter(|(unit, _)| matches!(unit.kind, UnitKind::Layer(_)))
                .map(|(_, s)| s.bytes_read)
                .collect();
            passes.push((layers, stats.expert_hits, logits));
        }
        let plan = engine.plan().expect("planned");
        let layers = &plan.placements[1..store_units.len() - 1];
        let expected = match self.keep_shared {
            true => UnitPlacement::SharedResident,
            false => UnitPlacement::Streamed,
        };
        assert!(layers.iter().all(|p| *p == expected), "{layers:?}");
        Ok((store_units, passes))
    }
}

#[test]
fn a_streamed_pass_reads_only_the_routed_experts() {
    for fixture in FIXTURES {
        let (units, passes) = on_test_device(RoutedReads {
            fixture,
            cache: false,
            spare_experts: 0,
            keep_shared: false,
        })
        .unwrap();
        for (layer_reads, hits, _) in passes {
            assert_eq!(hits, 0, "no cache, no hits");
            for (unit, &read) in units[1..].iter().zip(&layer_reads) {
                let shared = stored_bytes(unit, |n| !is_expert(n));
                let expert = stored_bytes(unit, is_expert_0);
                let name = format!("{fixture} {}", unit.name);
                assert_eq!(read, shared + PER_TOKEN as u64 * expert, "{name}");
                assert_eq!(unit.bytes, shared + EXPERTS as u64 * expert, "{name}");
            }
        }
    }
}

#[test]
fn the_expert_cache_serves_repeated_routings() {
    // Room for every layer's shared tensors and 2 of the 6 routed experts a
    // token needs, less than a layer.
    let (units, passes) = on_test_device(RoutedReads {
        fixture: FIXTURES[0],
        cache: true,
        spare_experts: 2,
        keep_shared: true,
    })
    .unwrap();
    let layers = units.len() - 2;
    let expert = stored_bytes(&units[1], is_expert_0);
    assert_eq!(passes[0].1, 0, "the first pass finds the cache empty");
    assert_eq!(
        passes[1].1, 2,
        "the second pass finds the 2 experts it kept"
    );
    let first: u64 = passes[0].0.iter().sum();
    let second: u64 = passes[1].0.iter().sum();
    // The first pass also loaded the shared parts once.
    assert_eq!(first - second, all_shared_bytes(&units) + 2 * expert);
    assert_eq!(passes[1].0.len(), layers);
}

#[test]
fn resident_shared_parts_leave_only_the_routed_experts_to_read() {
    for fixture in FIXTURES {
        let (units, passes) = on_test_device(RoutedReads {
            fixture,
            cache: false,
            spare_experts: 0,
            keep_shared: true,
        })
        .unwrap();
        let reference = &reference(fixture).prompts[0].logits[0];
        // The first pass also loads the shared parts once.
        for (pass, (layer_reads, _, logits)) in passes.iter().enumerate() {
            for (unit, &read) in units[1..].iter().zip(layer_reads) {
                let expert = stored_bytes(unit, is_expert_0);
                let shared = stored_bytes(unit, |n| !is_expert(n));
                let once = if pass == 0 { shared } else { 0 };
                let name = format!("{fixture} {} pass {pass}", unit.name);
                assert_eq!(read, once + PER_TOKEN as u64 * expert, "{name}");
            }
            let diff = max_abs_diff(logits, reference);
            assert!(diff < LOGIT_TOLERANCE, "{fixture}: logits differ by {diff}");
        }
    }
}
