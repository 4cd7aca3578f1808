//! The no-crash harness: mutants of the committed fixture models go through
//! the public loading path (open the model, its tokenizer, chat template and
//! generation settings, plan the run, generate one token), and every one must
//! end in `Ok` or a named error: never a panic, an abort or a hang.
//!
//! `AIRLLM_MUTANTS` sets how many (default 3000, seconds on the cpu);
//! `AIRLLM_MUTANT_SEED` the run's seed; `AIRLLM_MUTANT=N` reruns mutant N
//! alone and prints what it was. The long run is in docs/architecture.md.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airllm_backends::{dispatch, BackendJob, DeviceChoice, DeviceOptions};
use airllm_core::{
    BatchShape, ComputeBackend, EngineOptions, GenerationConfig, Result, TokenControl,
};
use airllm_formats::tokenizer::REFUSED_BY_LIBRARY;
use airllm_formats::{Message, ModelDir};
use airllm_tests::mutate::{bases, write_mutant};
use airllm_tests::{engine_with, Budget};
use burn::tensor::backend::Backend;

/// Longest a mutant may take before it counts as a hang.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// The loading path a user's `airllm run` takes, up to one new token.
/// `index` picks streaming or resident, and whether the tokenizer's ids go
/// to the model as they are or folded into the small fixture vocabularies.
fn load_and_generate<B: Backend>(
    path: &Path,
    backend: &Arc<dyn ComputeBackend<B>>,
    index: u64,
) -> Result<()> {
    let streaming = index % 2 == 1;
    let dir = ModelDir::open(path, &airllm_models::catalog())?;
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
    let failures = dispatch(DeviceChoice::Cpu, DeviceOptions::default(), harness).unwrap();
    assert!(
        failures.is_empty(),
        "{} mutants crashed (rerun one with AIRLLM_MUTANT=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
