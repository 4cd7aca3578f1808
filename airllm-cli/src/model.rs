//! Opening a model directory into an engine.

use std::path::Path;
use std::sync::Arc;

use airllm_core::{ComputeBackend, Engine, EngineOptions, Result};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;

use crate::cli::EngineArgs;

/// Recognises the model at `path`.
pub fn open_dir(path: &Path) -> Result<ModelDir> {
    Ok(ModelDir::open(path)?)
}

/// Builds the architecture, opens the store and returns the engine.
pub fn open_engine<B: Backend>(
    dir: &ModelDir,
    backend: Arc<dyn ComputeBackend<B>>,
    args: &EngineArgs,
) -> Result<Engine<B>> {
    let arch = airllm_models::architecture::<B>(&dir.config)?;
    let store = dir.open_store(arch.units())?;
    Engine::new(
        store,
        arch,
        backend,
        EngineOptions {
            prefetch: args.prefetch,
            max_memory: args.max_memory.map(|m| m.0),
            verify: args.verify,
        },
    )
}
