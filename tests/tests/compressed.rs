//! Compressed splits (`split --compress`): the kernel computes on the
//! blocks the compressor writes as it would on the same values widened to
//! f32; a 256-wide model takes q4_k with no fallback; the writer resumes
//! only with the same settings, re-splits a split, and copies blocks as
//! they are under `keep`; `--zstd` reads back byte for byte.

use std::path::Path;
use std::sync::Arc;

use airllm_backends::{Activations, BackendJob, DeviceOptions};
use airllm_core::{
    BlockKind, ComputeBackend, DType, Engine, EngineOptions, HostTensor, HostUnit, LayerStore,
    Result, StorageKind, UnitInfo,
};
use airllm_formats::split::EndStorage;
use airllm_formats::split::{Compression, StorageSettings};
use airllm_formats::{Manifest, ModelDir, SyntheticStore, MANIFEST_FILE};
use airllm_tests::*;
use burn::tensor::backend::Backend;

/// Fixtures that between them hold every role: biases (qwen2), a tied bf16
/// head, a MoE router and experts, and a block-quantized source (GGUF).
const SOURCES: [&str; 5] = [
    "llama-gqa",
    "llama-tied-bf16",
    "qwen2-window",
    "mixtral-moe",
    "llama-mixed.gguf",
];

const KINDS: [BlockKind; 3] = [BlockKind::Q8_0, BlockKind::Q4_K, BlockKind::NF4];

/// A store that hands over every tensor of another widened to f32 by the
/// portable decoding: the same weights, computed on as floats.
struct Widened {
    inner: Arc<dyn LayerStore>,
    units: Vec<UnitInfo>,
}

impl Widened {
    fn new(inner: Arc<dyn LayerStore>) -> Self {
        let mut units = inner.units().to_vec();
        for unit in &mut units {
            for t in &mut unit.tensors {
                t.kind = StorageKind::Dense(DType::F32);
            }
        }
        Widened { inner, units }
    }
}

impl LayerStore for Widened {
    fn describe(&self) -> String {
        format!("{} widened to f32", self.inner.describe())
    }

    fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    fn read_unit(&self, index: usize, only: Option<&[&str]>) -> Result<HostUnit> {
        let unit = self.inner.read_unit(index, only)?;
        let tensors = unit
            .tensors
            .into_iter()
            .map(|t| {
                let values = t.to_f32()?;
                Ok(HostTensor {
                    kind: StorageKind::Dense(DType::F32),
                    bytes: airllm_core::HostBytes::from_vec(
                        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                    ..t
                })
            })
            .collect::<Result<_>>()?;
        Ok(HostUnit::in_place(tensors))
    }

    fn verify_unit(&self, index: usize) -> Result<()> {
        self.inner.verify_unit(index)
    }
}

/// One prompt's logits, per position: read as stored, and widened.
type LogitPair = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Prompt logits of the split at `dir`, read as stored and widened.
struct Compare {
    dir: std::path::PathBuf,
    prompts: Vec<Vec<u32>>,
}

impl BackendJob for Compare {
    type Output = Vec<LogitPair>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let model = ModelDir::open(&self.dir, &airllm_models::catalog())?;
        let engine = |store: Arc<dyn LayerStore>| -> Result<Engine<B>> {
            let arch = airllm_models::architecture::<B>(&model.config)?;
            let options = EngineOptions {
                max_memory: Some(1 << 40),
                ..Default::default()
            };
            Engine::new(store, arch, backend.clone(), options)
        };
        let specs = airllm_models::layout(&model.config)?.units;
        let mut stored = engine(model.open_store(&specs)?)?;
        let mut widened = engine(Arc::new(Widened::new(model.open_store(&specs)?)))?;
        self.prompts
            .iter()
            .map(|ids| {
                Ok((
                    stored.prompt_logits(ids, 8)?,
                    widened.prompt_logits(ids, 8)?,
                ))
            })
            .collect()
    }
}

fn prompts(name: &str) -> Vec<Vec<u32>> {
    reference(name).prompts.into_iter().map(|p| p.ids).collect()
}

fn compare(dir: &Path, prompts: Vec<Vec<u32>>, activations: Activations) -> Vec<LogitPair> {
    let options = DeviceOptions {
        activations,
        ..EXACT
    };
    let job = Compare {
        dir: dir.to_path_buf(),
        prompts,
    };
    on_test_device_with(options, job).expect("compressed split runs")
}

/// Normalized mean squared error of `got` against `want`.
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let error: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    error / norm
}

#[test]
fn compressed_splits_compute_as_their_widened_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for name in SOURCES {
        for kind in KINDS {
            let storage = StorageSettings::new(Compression::Blocks(kind), None);
            let out = tmp.path().join(format!("{name}-{kind:?}"));
            split_stored(&fixture(name), &out, storage);
            let label = format!("{name} as {kind:?}");
            check_layout(&out, kind, &label);
            for (stored, widened) in compare(&out, prompts(name), Activations::F32) {
                for (s, w) in stored.iter().zip(&widened) {
                    let diff = max_abs_diff(s, w);
                    assert!(diff <= LOGIT_TOLERANCE, "{label}: logits differ by {diff}");
                }
            }
            for (stored, widened) in compare(&out, prompts(name), Activations::Reduced) {
                for (s, w) in stored.iter().zip(&widened) {
                    let error = nmse(s, w);
                    assert!(error <= 5e-4, "{label}, reduced: normalized MSE {error}");
                }
            }
        }
    }
}

fn manifest(dir: &Path) -> Manifest {
    Manifest::read(&dir.join(MANIFEST_FILE)).unwrap()
}

/// Every matrix but the MoE routers is stored as blocks (the embedding as
/// Q8_0, the others as `kind` or its fallback for rows of their width);
/// every vector in floats.
fn check_layout(dir: &Path, kind: BlockKind, label: &str) {
    for unit in manifest(dir).units {
        for t in &unit.tensors {
            let columns = *t.shape.last().unwrap();
            let expected = match (t.shape.len(), unit.name.as_str()) {
                (1, _) => None,
                (_, _) if t.name.ends_with(".gate.weight") => None,
                (_, "embed" | "head") => Some(BlockKind::Q8_0),
                _ if columns % kind.block_len() == 0 => Some(kind),
                _ => Some(BlockKind::Q4_1),
            };
            let stored = match t.kind {
                StorageKind::Block(block) => Some(block),
                StorageKind::Dense(_) => None,
            };
            assert_eq!(stored, expected, "{label}: {} in {}", t.name, unit.name);
        }
    }
}

/// A llama-shaped model 256 wide with a 512-wide MLP: whole blocks of 256
/// everywhere, so q4_k needs no fallback.
fn wide_model(out: &Path, storage: StorageSettings) -> std::path::PathBuf {
    let shape = airllm_models::presets::ModelShape {
        layers: 2,
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        vocab: 320,
        ..airllm_models::presets::preset("smollm2-135m").unwrap()
    };
    let config = shape.config("llama").unwrap();
    let source = out.with_extension("source");
    let specs = airllm_models::layout(&config).unwrap().units;
    let store = SyntheticStore::new(&specs, 7);
    let options = airllm_formats::split::SplitOptions {
        architecture: "LlamaForCausalLM".into(),
        config: config.clone(),
        side_files: vec![("config.json".into(), serde_json::to_vec(&config).unwrap())],
        storage: StorageSettings::default(),
        routers: Vec::new(),
        free_space: &airllm_formats::split::file_system_free_space,
        progress: &mut |_| true,
    };
    airllm_formats::split::split_model(&store, &source, options).unwrap();
    split_stored(&source, out, storage)
}

#[test]
fn a_model_of_whole_256_blocks_takes_q4_k_without_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = StorageSettings::new(Compression::Blocks(BlockKind::Q4_K), None);
    let out = wide_model(&tmp.path().join("wide"), storage);
    check_layout(&out, BlockKind::Q4_K, "wide q4_k");
    let prompts = vec![vec![1, 5, 9, 200, 17, 3, 64, 128, 7, 11]];
    for (stored, widened) in compare(&out, prompts, Activations::F32) {
        for (s, w) in stored.iter().zip(&widened) {
            assert!(
                max_abs_diff(s, w) <= LOGIT_TOLERANCE,
                "{}",
                max_abs_diff(s, w)
            );
        }
    }
}

/// `keep` copies a GGUF's blocks byte for byte (no f32 copy), and a tied
/// head is its own copy in `head`.
#[test]
fn keep_copies_blocks_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixture("llama-mixed.gguf");
    let out = split_stored(
        &source,
        &tmp.path().join("keep"),
        StorageSettings::default(),
    );
    let model = ModelDir::open(&source, &airllm_models::catalog()).unwrap();
    let specs = airllm_models::layout(&model.config).unwrap().units;
    let gguf = model.open_store(&specs).unwrap();
    let split = manifest(&out);
    assert_eq!(split.storage, Some(StorageSettings::default()));
    for (unit, stored) in gguf.units().iter().zip(&split.units) {
        let read = gguf
            .read_unit(stored_index(&split, &stored.name), None)
            .unwrap();
        for t in &stored.tensors {
            let original = unit.tensors.iter().find(|o| o.name == t.name).unwrap();
            assert_eq!(t.kind, original.kind, "{}", t.name);
            let bytes = std::fs::read(out.join(&stored.file)).unwrap();
            let ours = &bytes[t.range[0] as usize..t.range[1] as usize];
            let theirs = read.tensors.iter().find(|r| r.name == t.name).unwrap();
            assert_eq!(ours, theirs.bytes.as_slice(), "{}", t.name);
        }
    }
}

fn stored_index(manifest: &Manifest, name: &str) -> usize {
    manifest.units.iter().position(|u| u.name == name).unwrap()
}

/// A rerun into the same directory with other settings rewrites every
/// unit; a split directory splits again into another kind.
#[test]
fn other_settings_rewrite_and_splits_split_again() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("split");
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    split_stored(&fixture("llama-gqa"), &out, q8);
    let nf4 = StorageSettings::new(Compression::Blocks(BlockKind::NF4), Some(EndStorage::Same))
        .with_head(Some(EndStorage::Same));
    split_stored(&fixture("llama-gqa"), &out, nf4);
    assert_eq!(manifest(&out).storage, Some(nf4));
    for unit in manifest(&out).units {
        for t in unit.tensors.iter().filter(|t| t.shape.len() == 2) {
            assert_eq!(t.kind, StorageKind::Block(BlockKind::NF4), "{}", t.name);
        }
    }
    let again = split_stored(&out, &tmp.path().join("again"), q8);
    check_layout(&again, BlockKind::Q8_0, "nf4 split as q8_0");
}

/// `--zstd` is lossless: every unit of a zstd split reads back byte for
/// byte as the same split without it (dense 16-bit tensors as byte planes,
/// f32 vectors, blocks; a MoE layer's experts read alone), and counts the
/// fewer bytes it read from disk.
#[test]
fn zstd_splits_read_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    for (name, storage) in [
        ("llama-tied-bf16", StorageSettings::default()),
        ("mixtral-moe", StorageSettings::default()),
        ("llama-gqa", q8),
    ] {
        let plain = split_stored(
            &fixture(name),
            &tmp.path().join(format!("{name}.plain")),
            storage,
        );
        let zstd = storage.with_zstd(Some(3));
        let packed = split_stored(
            &fixture(name),
            &tmp.path().join(format!("{name}.zstd")),
            zstd,
        );
        assert_eq!(manifest(&packed).storage, Some(zstd));
        let plain = airllm_formats::SplitStore::open(&plain).unwrap();
        let packed = airllm_formats::SplitStore::open(&packed).unwrap();
        let mut planar = 0;
        for (index, unit) in packed.manifest().units.iter().enumerate() {
            assert_eq!(unit.codec, "zstd");
            planar += unit
                .tensors
                .iter()
                .filter(|t| t.frame.unwrap().planes)
                .count();
            let names: Vec<&str> = unit.tensors.iter().map(|t| t.name.as_str()).collect();
            for only in [None, Some(&names[names.len() / 2..])] {
                let want = plain.read_unit(index, only).unwrap();
                let got = packed.read_unit(index, only).unwrap();
                assert_eq!(got.tensors.len(), want.tensors.len());
                for (g, w) in got.tensors.iter().zip(&want.tensors) {
                    assert_eq!((&g.name, g.kind, &g.shape), (&w.name, w.kind, &w.shape));
                    assert!(
                        g.bytes.as_slice() == w.bytes.as_slice(),
                        "{name}: {}",
                        g.name
                    );
                }
                assert_eq!(want.stored_bytes, want.bytes());
                assert_eq!(got.bytes(), want.bytes());
                let frames: u64 = got.stored_bytes;
                assert!(frames > 0 && frames != got.bytes(), "{name} {}", unit.name);
            }
            packed.verify_unit(index).unwrap();
        }
        if name == "llama-tied-bf16" {
            assert!(planar > 0, "its bf16 tensors go as byte planes");
        }
    }
}
