//! The no-crash harness: mutants of the committed fixture models go through
//! the public loading path (open the model, its tokenizer, chat template and
//! generation settings, plan the run, generate one token), and every one must
//! end in `Ok` or a named error: never a panic, an abort or a hang.
//!
//! `AIRLLM_MUTANTS` sets how many (default 3000, seconds on the cpu);
//! `AIRLLM_MUTANT_SEED` the run's seed; `AIRLLM_MUTANT=N` reruns mutant N
//! alone and prints what it was. The long run is in the README.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airllm_backends::{dispatch, BackendJob, DeviceChoice};
use airllm_core::{
    BatchShape, ComputeBackend, ComputeDType, EngineOptions, GenerationConfig, Result, TokenControl,
};
use airllm_formats::tokenizer::REFUSED_BY_LIBRARY;
use airllm_formats::{GgufFile, Message, ModelDir};
use airllm_tests::mutate::{FileKind, Mutator};
use airllm_tests::{engine_with, fixture, fixtures_dir, split_to, Budget, FIXTURES};
use burn::tensor::backend::Backend;

/// Longest a mutant may take before it counts as a hang.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// A chat template with the constructs released templates use.
const TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(system='') %}\
{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}{% endfor %}\
{% if ns.system %}<|system|>{{ ns.system }}\n{% endif %}\
{% for m in messages[::-1] if m.role != 'system' %}{% if loop.first %}<|last|>{% endif %}{% endfor %}\
{% for m in messages if m.role != 'system' %}<|{{ m.role }}|>{{ m.content | trim }}{{ eos_token }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// A model the harness mutates: a directory (or one GGUF file) in the
/// harness's scratch space, and which of its files to mutate as what.
struct Base {
    path: PathBuf,
    files: Vec<(PathBuf, FileKind)>,
}

/// How a file of a model directory is mutated, by its name.
fn kind_of(path: &Path) -> FileKind {
    let name = path.file_name().unwrap().to_string_lossy();
    match () {
        _ if name.ends_with(".json") => FileKind::Json,
        _ if name.ends_with(".safetensors") => FileKind::Safetensors,
        _ if name.ends_with(".jinja") || name.ends_with(".tiktoken") => FileKind::Text,
        _ => FileKind::Binary {
            header: std::fs::metadata(path)
                .map(|m| m.len() as usize)
                .unwrap_or(0),
        },
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(
                files_under(&path)
                    .into_iter()
                    .map(|p| Path::new(path.file_name().unwrap()).join(p)),
            );
        } else {
            out.push(PathBuf::from(path.file_name().unwrap()));
        }
    }
    out.sort();
    out
}

/// Copies directory `from` to `to` (one level of subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        std::fs::create_dir_all(to.join(&file).parent().unwrap()).unwrap();
        std::fs::copy(from.join(&file), to.join(&file)).unwrap();
    }
}

/// A directory base: its files other than the fixture's own records.
fn dir_base(path: PathBuf) -> Base {
    let files = files_under(&path)
        .into_iter()
        .filter(|f| f != Path::new("reference.json"))
        .map(|f| {
            let kind = kind_of(&path.join(&f));
            (f, kind)
        })
        .collect();
    Base { path, files }
}

/// The models to mutate, made in `scratch`: every fixture, splits of three,
/// models with SentencePiece and tiktoken vocabularies, and a model with a
/// chat template in each place one is found.
fn bases(scratch: &Path) -> Vec<Base> {
    let mut bases = Vec::new();
    for name in FIXTURES {
        let path = scratch.join(name);
        if name.ends_with(".gguf") {
            std::fs::copy(fixture(name), &path).unwrap();
            let file = GgufFile::open(&path).unwrap();
            let header = file.tensors.iter().map(|t| t.range.start).min().unwrap();
            bases.push(Base {
                files: vec![(PathBuf::new(), FileKind::Binary { header })],
                path,
            });
        } else {
            copy_dir(&fixture(name), &path);
            bases.push(dir_base(path));
        }
    }
    for name in ["llama-gqa", "mixtral-moe", "llama-mixed.gguf"] {
        let out = scratch.join(format!("{name}.split"));
        bases.push(dir_base(split_to(&fixture(name), &out)));
    }
    // Models with a vocabulary file in place of tokenizer.json.
    for (model, vocabulary) in [
        ("chatglm3", "chatglm3/tokenizer.model"),
        ("baichuan2-rope", "baichuan/tokenizer.model"),
        ("llama-gqa", "unigram/tokenizer.model"),
        ("qwen-v1", "qwen-v1/qwen.tiktoken"),
        ("chatglm3", "glm4/tokenizer.model"),
    ] {
        let source = fixtures_dir().join("tokenizers").join(vocabulary);
        let file = PathBuf::from(source.file_name().unwrap());
        let path = scratch.join(format!("{model}+{}", vocabulary.replace('/', "-")));
        copy_dir(&fixture(model), &path);
        let _ = std::fs::remove_file(path.join("tokenizer.json"));
        std::fs::copy(&source, path.join(&file)).unwrap();
        let kind = kind_of(&path.join(&file));
        bases.push(Base {
            files: vec![(file, kind)],
            path,
        });
    }
    let config = serde_json::json!({
        "chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}
    });
    for (file, contents) in [
        ("tokenizer_config.json", config.to_string()),
        ("chat_template.jinja", TEMPLATE.to_string()),
    ] {
        let path = scratch.join(format!("chat-{file}"));
        copy_dir(&fixture("llama-gqa"), &path);
        std::fs::write(path.join(file), contents).unwrap();
        bases.push(Base {
            files: vec![(PathBuf::from(file), kind_of(&path.join(file)))],
            path,
        });
    }
    bases
}

/// Writes mutant `index` of base `base` to `out`; returns its path and
/// what was mutated.
fn write_mutant(base: &Base, seed: u64, index: u64, out: &Path) -> (PathBuf, String) {
    let mut mutator = Mutator::new(seed, index);
    let (file, kind) = &base.files[mutator.below(base.files.len())];
    let source = match base.path.is_file() {
        true => base.path.clone(),
        false => base.path.join(file),
    };
    let (bytes, what) = mutator.mutate(*kind, &std::fs::read(&source).unwrap());
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let what = format!(
        "{} {}: {what}",
        base.path.file_name().unwrap().to_string_lossy(),
        file.display()
    );
    if base.path.is_file() {
        let path = out.join(base.path.file_name().unwrap());
        std::fs::write(&path, bytes).unwrap();
        return (path, what);
    }
    for other in files_under(&base.path) {
        let target = out.join(&other);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if &other == file {
            std::fs::write(&target, &bytes).unwrap();
        } else {
            std::fs::hard_link(base.path.join(&other), &target).unwrap();
        }
    }
    (out.to_path_buf(), what)
}

/// The loading path a user's `airllm run` takes, up to one new token.
/// `index` picks streaming or resident, and whether the tokenizer's ids go
/// to the model as they are or folded into the small fixture vocabularies.
fn load_and_generate<B: Backend>(
    path: &Path,
    backend: &Arc<dyn ComputeBackend<B>>,
    index: u64,
) -> Result<()> {
    let streaming = index % 2 == 1;
    let dir = ModelDir::open(path)?;
    let mut prompt = vec![1, 2, 3];
    if let Some(tokenizer) = dir.tokenizer()? {
        if let Ok(encoding) = tokenizer.encode("Hello, world! 123", true) {
            prompt = encoding.get_ids().to_vec();
            if !index.is_multiple_of(3) {
                prompt.iter_mut().for_each(|id| *id %= 256);
            }
            let _ = tokenizer.decode(&prompt, true);
        }
        if let Some(template) = dir.chat_template()? {
            let messages = [
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ];
            let text = template.render(&messages, true)?;
            let _ = tokenizer.encode(text.as_str(), false);
        }
    }
    let _ = dir.generation_config()?;
    let budget = match streaming {
        true => Budget::StreamAll,
        false => Budget::Resident,
    };
    let shape = BatchShape {
        batch: 1,
        chunk: 16,
        context: 64,
    };
    let options = EngineOptions {
        verify: streaming,
        ..Default::default()
    };
    let mut engine = engine_with(path, backend.clone(), budget, shape, options)?;
    prompt.truncate(16);
    if prompt.is_empty() {
        prompt.push(1);
    }
    let config = GenerationConfig {
        max_new_tokens: 1,
        ..Default::default()
    };
    engine.generate(&[prompt], &config, &mut |_, _| TokenControl::Continue)?;
    Ok(())
}

/// Panics seen anywhere in the process (the engine's threads included).
static PANICS: AtomicUsize = AtomicUsize::new(0);

struct Harness {
    count: u64,
    seed: u64,
    only: Option<u64>,
}

impl BackendJob for Harness {
    type Output = Vec<String>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Vec<String>> {
        let scratch = tempfile::tempdir().unwrap();
        let bases = bases(scratch.path());
        let current = Arc::new(Mutex::new((Instant::now(), String::new())));
        let watched = current.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let (started, what) = watched.lock().unwrap().clone();
            if started.elapsed() > HANG_LIMIT {
                eprintln!("HANG (over {HANG_LIMIT:?}): {what}");
                std::process::exit(2);
            }
        });
        let mut failures = Vec::new();
        let indices: Vec<u64> = match self.only {
            Some(index) => vec![index],
            None => (0..self.count).collect(),
        };
        let (mut ok, mut named) = (0, 0);
        for index in indices {
            let base = &bases[(index as usize) % bases.len()];
            let out = scratch.path().join("mutant");
            let (path, what) = write_mutant(base, self.seed, index, &out);
            let what = format!("mutant {index}: {what}");
            if self.only.is_some() {
                eprintln!("{what}");
            }
            *current.lock().unwrap() = (Instant::now(), what.clone());
            let panics = PANICS.load(Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load_and_generate(&path, &backend, index)
            }));
            // A dependency's panic that the loading path catches and names
            // is a named error.
            let caught = |e: &airllm_core::Error| e.to_string().contains(REFUSED_BY_LIBRARY);
            match outcome {
                Ok(Err(e)) if caught(&e) => named += 1,
                Ok(_) if PANICS.load(Ordering::SeqCst) != panics => {
                    failures.push(format!("{what}: a thread panicked"))
                }
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    named += 1;
                    if self.only.is_some() {
                        eprintln!("error: {e}");
                    }
                }
                Err(_) => failures.push(format!("{what}: panicked")),
            }
        }
        eprintln!(
            "mutants: {ok} ran, {named} named errors, {} failures",
            failures.len()
        );
        Ok(failures)
    }
}

fn env_number(key: &str) -> Option<u64> {
    std::env::var(key)
        .ok()
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn every_mutant_ends_in_ok_or_a_named_error() {
    if !matches!(airllm_tests::test_device(), DeviceChoice::Cpu) {
        eprintln!("the mutation harness runs in the cpu pass only");
        return;
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let harness = Harness {
        count: env_number("AIRLLM_MUTANTS").unwrap_or(3000),
        seed: env_number("AIRLLM_MUTANT_SEED").unwrap_or(1),
        only: env_number("AIRLLM_MUTANT"),
    };
    let failures = dispatch(DeviceChoice::Cpu, ComputeDType::F32, harness).unwrap();
    assert!(
        failures.is_empty(),
        "{} mutants crashed (rerun one with AIRLLM_MUTANT=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
