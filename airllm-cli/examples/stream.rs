//! Streams a model through the public API: open, plan within 64 MiB, generate.
//! Run: `cargo run --release --example stream -- MODEL` (a GGUF file or a directory)
use std::sync::Arc;

use airllm_backends::{cpu::CpuBackend, Activations};
use airllm_core::{Engine, EngineOptions, GenerationConfig, TokenControl};
use airllm_formats::ModelDir;
use burn::backend::flex::Flex;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::args().nth(1).ok_or("usage: stream MODEL")?;
    let model = ModelDir::open(path.as_ref(), &airllm_models::catalog())?;
    let arch = airllm_models::architecture::<Flex>(&model.config)?;
    let store = model.open_store(arch.units())?;
    let backend = Arc::new(CpuBackend::new(Activations::default()));
    let options = EngineOptions {
        max_memory: Some(64 << 20),
        ..Default::default()
    };
    let mut engine = Engine::new(store, arch, backend, options)?;

    let tokenizer = model.tokenizer()?.ok_or("the model has no tokenizer")?;
    let prompt = tokenizer.encode("The capital of France is", true)?;
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..Default::default()
    };
    let answers = engine.generate(&[prompt.get_ids().to_vec()], &config, &mut |_, token| {
        print!("{}", tokenizer.decode(&[token], true).unwrap_or_default());
        TokenControl::Continue
    })?;
    println!(
        "\n({} tokens, {} layers streamed)",
        answers[0].tokens.len(),
        engine.plan().map_or(0, |p| p.streamed())
    );
    Ok(())
}
