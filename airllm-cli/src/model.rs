//! Opening a model directory into an engine.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airllm_core::{ComputeBackend, Engine, EngineOptions, LoadObserver, LoadProgress, Result};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{DraftArgs, EngineArgs, Switch};
use crate::text::check_same_tokenizer;

/// Recognises the model at `path`.
pub fn open_dir(path: &Path) -> Result<ModelDir> {
    open_dir_with_token(path, None)
}

/// [`open_dir`], with `token` as the hub's access token (else `HF_TOKEN`).
pub fn open_dir_with_token(path: &Path, token: Option<&str>) -> Result<ModelDir> {
    Ok(ModelDir::open_with_token(
        path,
        &airllm_models::catalog(),
        token,
    )?)
}

/// Builds the architecture, opens the store and returns the engine.
pub fn open_engine<B: Backend>(
    dir: &ModelDir,
    backend: Arc<dyn ComputeBackend<B>>,
    args: &EngineArgs,
) -> Result<Engine<B>> {
    let mut engine = engine_with(dir, backend, engine_options(args))?;
    engine.on_load(load_bar());
    Ok(engine)
}

/// The engine settings the flags give.
fn engine_options(args: &EngineArgs) -> EngineOptions {
    EngineOptions {
        prefetch: args.prefetch,
        max_memory: args.max_memory.map(|m| m.0),
        max_host_memory: args.max_host_memory.map(|m| m.0),
        verify: args.verify,
        expert_cache: args.expert_cache == Switch::On,
        ..Default::default()
    }
}

/// [`open_engine`], with the draft model `--draft` names (if it names
/// one) beside it: it must share the model's tokenizer, and is planned
/// wholly resident within the same budget.
pub fn open_drafted_engine<B: Backend>(
    dir: &ModelDir,
    backend: Arc<dyn ComputeBackend<B>>,
    args: &EngineArgs,
    draft: &DraftArgs,
) -> Result<Engine<B>> {
    let mut engine = open_engine(dir, backend.clone(), args)?;
    if let Some(path) = draft.model() {
        let draft_dir = open_dir(path)?;
        check_same_tokenizer(dir, &draft_dir)?;
        // Its budget is set when the model's plan places it.
        let options = EngineOptions {
            max_memory: None,
            expert_cache: false,
            ..engine_options(args)
        };
        engine.set_draft(engine_with(&draft_dir, backend, options)?)?;
    }
    Ok(engine)
}

fn engine_with<B: Backend>(
    dir: &ModelDir,
    backend: Arc<dyn ComputeBackend<B>>,
    options: EngineOptions,
) -> Result<Engine<B>> {
    let arch = airllm_models::architecture::<B>(&dir.config)?;
    let store = dir.open_store(arch.units())?;
    Engine::new(store, arch, backend, options)
}

/// A progress bar on stderr for loading resident units (drawn only on a
/// terminal, and only for loads that take a moment).
fn load_bar() -> LoadObserver {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("loading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    Box::new(move |progress: LoadProgress| {
        if bar.is_hidden() && started.elapsed() > Duration::from_millis(500) {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_length(progress.total_bytes);
        bar.set_position(progress.bytes);
        if progress.units == progress.total_units {
            bar.finish_and_clear();
        }
    })
}
