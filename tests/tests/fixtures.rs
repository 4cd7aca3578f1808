//! Every family's fixtures against their reference records: logits within 1e-3 and
//! greedy tokens exactly, resident and streaming, from the Hugging Face
//! directory and from its split; batches equal solo runs; streaming never
//! holds more than prefetch + 1 units.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_backends::budget::DEDICATED_UNKNOWN_BUDGET;
use airllm_backends::{BackendJob, BurnBackend, DeviceChoice};
use airllm_core::{
    BatchShape, ComputeBackend, EngineOptions, GenerationConfig, Result, TokenControl,
    UnitPlacement,
};
use airllm_tests::*;
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::backend::Backend;

const NEW_TOKENS: usize = 24;
/// The batched run's shape: three prompts (the longest 30 tokens) in chunks
/// of 7, plus 24 new tokens. The streaming budget is this shape's minimum
/// working set, so the batched run streams every layer.
const SHAPE: BatchShape = BatchShape {
    batch: 3,
    chunk: 7,
    context: 30 + NEW_TOKENS,
};

fn greedy() -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: NEW_TOKENS,
        eos: vec![0],
        prefill_chunk: 7,
        ..Default::default()
    }
}

/// Checks one model directory against the records of fixture `name`.
struct CheckModel {
    name: &'static str,
    dir: PathBuf,
    budget: Budget,
    prefetch: usize,
    /// Keep every streamed unit that can be in the host tier.
    host_tier: bool,
}

impl CheckModel {
    fn new(name: &'static str, dir: &Path, budget: Budget, prefetch: usize) -> Self {
        CheckModel {
            name,
            dir: dir.to_path_buf(),
            budget,
            prefetch,
            host_tier: false,
        }
    }

    /// Runs on the test device, where the host tier can be on the cpu
    /// (which computes in host memory) on burn's flex device behind the
    /// generic backend.
    fn run_on_test_device(self) -> Result<()> {
        match (test_device(), self.host_tier) {
            (DeviceChoice::Cpu, true) => {
                let flex = BurnBackend::<Flex>::new(FlexDevice, "flex".into());
                self.run::<Flex>(Arc::new(flex))
            }
            _ => on_test_device(self),
        }
    }
}

impl BackendJob for CheckModel {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let reference = reference(self.name);
        let options = EngineOptions {
            prefetch: self.prefetch,
            verify: true,
            max_host_memory: self.host_tier.then_some(1 << 40),
            // Device memory is sampled in units timed to completion.
            sync_units: self.budget == Budget::KvOnHost,
            ..Default::default()
        };
        let mut engine = engine_with(&self.dir, backend, self.budget, SHAPE, options)?;
        let label = format!(
            "{} {:?} prefetch {}{}",
            self.dir.display(),
            self.budget,
            self.prefetch,
            if self.host_tier { " host tier" } else { "" }
        );
        for record in &reference.prompts {
            // Chunks of 5 exercise chunked prefill over the KV cache.
            let logits = engine.prompt_logits(&record.ids, 5)?;
            assert_eq!(logits.len(), record.logits.len());
            for (position, (ours, theirs)) in logits.iter().zip(&record.logits).enumerate() {
                let diff = max_abs_diff(ours, theirs);
                assert!(
                    diff <= LOGIT_TOLERANCE,
                    "{label}: position {position} differs by {diff}"
                );
            }
        }
        for record in &reference.prompts {
            let answer =
                engine.generate(std::slice::from_ref(&record.ids), &greedy(), &mut |_, _| {
                    TokenControl::Continue
                })?;
            assert_eq!(answer[0].tokens, record.greedy, "{label}: greedy tokens");
        }
        let prompts: Vec<Vec<u32>> = reference.prompts.iter().map(|r| r.ids.clone()).collect();
        engine.reset_stats();
        let answers = engine.generate(&prompts, &greedy(), &mut |_, _| TokenControl::Continue)?;
        for (answer, record) in answers.iter().zip(&reference.prompts) {
            assert_eq!(
                answer.tokens, record.greedy,
                "{label}: batched greedy tokens"
            );
        }
        // The plan in force is the batched run's (solo runs above may fit entirely).
        let plan = engine.plan().expect("planned");
        let stats = engine.stats();
        if self.budget == Budget::Resident {
            assert_eq!(plan.streamed(), 0, "{label}: everything fits");
        } else {
            assert_eq!(
                plan.streamed(),
                engine.arch().dims().layers + 1,
                "{label}: all layers and the head stream"
            );
            assert!(
                stats.peak_streamed_units >= 1,
                "{label}: streaming happened"
            );
            let on_host: Vec<_> = (plan.placements.iter().zip(&stats.units))
                .filter(|(p, _)| **p == UnitPlacement::Host)
                .map(|(_, unit)| (unit.reads, unit.bytes_read))
                .collect();
            assert_eq!(!on_host.is_empty(), self.host_tier, "{label}: {on_host:?}");
            assert!(
                on_host
                    .iter()
                    .all(|&(reads, bytes)| reads > 0 && bytes == 0),
                "{label}: host-tier units are uploaded every pass, never read: {on_host:?}"
            );
            assert!(
                stats.peak_streamed_units <= self.prefetch + 1,
                "{label}: {} streamed units alive at once with prefetch {}",
                stats.peak_streamed_units,
                self.prefetch
            );
        }
        if self.budget == Budget::KvOnHost {
            let on_host = plan.kv_on_host.iter().filter(|on_host| **on_host).count();
            assert!(
                on_host > 0 && plan.host_kv_bytes > 0,
                "{label}: some layers' KV cache waits in host memory: {plan:?}"
            );
            // What the runtime's pools held (0 where it cannot tell: the
            // cpu, flex) within what the plan predicted.
            eprintln!(
                "{label}: KV cache of {on_host} layers in host memory, peak device bytes {} of {} predicted",
                stats.peak_device_bytes,
                plan.predicted_peak()
            );
            // Experts read on request (and cached) are not yet held to the
            // prediction: their reads land in the reader's pool at times
            // the samples do not bound (seen 2.7% over on a loaded
            // machine); dense models are.
            let on_request_experts = engine.arch().dims().experts_per_token > 0;
            assert!(
                on_request_experts || stats.peak_device_bytes <= plan.predicted_peak(),
                "{label}: peak device bytes {} over the predicted {}",
                stats.peak_device_bytes,
                plan.predicted_peak()
            );
        }
        Ok(())
    }
}

fn check(name: &'static str, dir: &Path, budget: Budget, prefetch: usize) {
    on_test_device(CheckModel::new(name, dir, budget, prefetch))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[test]
fn resident_from_hf_dir() {
    for name in fixtures_for_test_device() {
        check(name, &fixture(name), Budget::Resident, 1);
    }
}

#[test]
fn streaming_from_hf_dir() {
    for name in fixtures_for_test_device() {
        check(name, &fixture(name), Budget::StreamAll, 1);
    }
}

#[test]
fn streaming_and_resident_from_split_dir() {
    for name in fixtures_for_test_device() {
        let tmp = tempfile::tempdir().unwrap();
        let split = split_fixture(name, &tmp.path().join("split"));
        check(name, &split, Budget::StreamAll, 1);
        check(name, &split, Budget::Resident, 1);
    }
}

/// Without flags, the budgets follow the memory the device computes in:
/// the host's budget and no host tier in host memory (the cpu; wgpu on a
/// `Cpu` adapter such as lavapipe, or an integrated GPU), or a budget of
/// the device's own and the host's for the host tier.
#[test]
fn default_budgets_follow_the_device_memory() {
    struct DefaultBudgets;
    impl BackendJob for DefaultBudgets {
        type Output = (u64, u64);

        fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<(u64, u64)> {
            Ok((backend.default_budget(), backend.default_host_budget()))
        }
    }
    let (device, host_tier) = on_test_device(DefaultBudgets).unwrap();
    let host = airllm_core::memory::default_host_budget();
    let near_host = |bytes: u64| bytes.abs_diff(host) < host / 10;
    let in_host_memory = near_host(device) && host_tier == 0;
    let dedicated = device > 0 && near_host(host_tier);
    eprintln!(
        "{}: device budget {device}, host tier {host_tier}",
        test_device()
    );
    match test_device() {
        DeviceChoice::Cpu => assert!(in_host_memory),
        DeviceChoice::Wgpu(_) => assert!(
            in_host_memory || (dedicated && device == DEDICATED_UNKNOWN_BUDGET),
            "{device} {host_tier}"
        ),
        _ => assert!(dedicated, "{device} {host_tier}"),
    }
}

/// Timed to completion, a streamed run reports the device memory the
/// runtime's pools held at their peak where the device can tell (wgpu,
/// cuda), no more than the plan predicted, and none on the cpu.
#[test]
fn streamed_runs_report_device_memory() {
    struct PeakDeviceBytes;
    impl BackendJob for PeakDeviceBytes {
        type Output = (u64, u64);

        fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<(u64, u64)> {
            let name = "llama-gqa";
            let ids = reference(name).prompts.remove(0).ids;
            let options = EngineOptions {
                sync_units: true,
                ..Default::default()
            };
            let mut engine =
                engine_with(&fixture(name), backend, Budget::StreamAll, SHAPE, options)?;
            engine.prompt_logits(&ids, 5)?;
            let predicted = engine.plan().expect("planned").predicted_peak();
            Ok((engine.stats().peak_device_bytes, predicted))
        }
    }
    let (peak, predicted) = on_test_device(PeakDeviceBytes).unwrap();
    eprintln!(
        "{}: peak device bytes {peak}, plan predicted {predicted}",
        test_device()
    );
    match test_device() {
        DeviceChoice::Cpu => assert_eq!(peak, 0, "the cpu reports no device memory"),
        // The engine's threads allocate exactly and give back what a unit
        // left unused, so the pools hold what the plan counts.
        _ => assert!(
            peak > 0 && peak <= predicted,
            "a GPU runtime reports its pools, within the plan's prediction"
        ),
    }
}

#[test]
fn streaming_with_prefetch_zero() {
    check("llama-gqa", &fixture("llama-gqa"), Budget::StreamAll, 0);
}

/// The host tier: streamed units kept in host memory and uploaded every
/// pass answer as when read from disk, and are never read again. The cpu
/// computes in host memory, so there the tier runs on burn's flex device
/// behind the generic backend.
#[test]
fn streaming_from_the_host_tier() {
    check_with_host_tier(Budget::StreamAll);
}

/// A device budget below the minimum working set with the whole KV cache
/// on the device: the last layers keep theirs in host memory, uploaded
/// with the layer, beside units of the host tier; the answers are the
/// recorded ones, and the runtime's pools (wgpu, cuda) hold no more than
/// the plan predicted.
#[test]
fn kv_cache_in_host_memory_beside_the_host_tier() {
    check_with_host_tier(Budget::KvOnHost);
}

/// A dense model, one with seven matrix encodings and a mixture of
/// experts under `budget`, with a host tier.
fn check_with_host_tier(budget: Budget) {
    for name in ["llama-gqa", "llama-mixed.gguf", "mixtral-moe"] {
        let job = CheckModel {
            host_tier: true,
            ..CheckModel::new(name, &fixture(name), budget, 1)
        };
        job.run_on_test_device()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
