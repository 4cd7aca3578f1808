//! The cpu backend's kernel on the fixtures: with integer activations every
//! fixture keeps transformers' logits and greedy tokens, and one thread and
//! two threads compute the same logits.

use std::path::PathBuf;
use std::sync::Arc;

use airllm_backends::{dispatch, Activations, BackendJob, DeviceChoice, DeviceOptions};
use airllm_core::{BatchShape, ComputeBackend, GenerationConfig, Result, TokenControl};
use airllm_tests::*;
use burn::tensor::backend::Backend;

const NEW_TOKENS: usize = 24;

/// Every prompt's logits and greedy continuation, resident, the prompts
/// run `chunk` rows at a time.
struct Outputs {
    model: PathBuf,
    prompts: Vec<Vec<u32>>,
    chunk: usize,
}

type PromptOutputs = Vec<(Vec<Vec<f32>>, Vec<u32>)>;

impl BackendJob for Outputs {
    type Output = PromptOutputs;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<PromptOutputs> {
        let shape = BatchShape {
            batch: 1,
            chunk: self.chunk,
            context: 30 + NEW_TOKENS,
        };
        let mut engine = engine(&self.model, backend, Budget::Resident, 1, shape)?;
        let config = GenerationConfig {
            max_new_tokens: NEW_TOKENS,
            eos: vec![0],
            ..Default::default()
        };
        let mut outputs = Vec::new();
        for ids in &self.prompts {
            let logits = engine.prompt_logits(ids, self.chunk)?;
            let answer = engine.generate(std::slice::from_ref(ids), &config, &mut |_, _| {
                TokenControl::Continue
            })?;
            outputs.push((logits, answer[0].tokens.clone()));
        }
        Ok(outputs)
    }
}

fn outputs(name: &str, options: DeviceOptions) -> PromptOutputs {
    outputs_in_chunks(name, options, 5)
}

fn outputs_in_chunks(name: &str, options: DeviceOptions, chunk: usize) -> PromptOutputs {
    let prompts = reference(name).prompts.into_iter().map(|r| r.ids).collect();
    let job = Outputs {
        model: fixture(name),
        prompts,
        chunk,
    };
    dispatch(DeviceChoice::Cpu, options, job).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Logit tolerance of the integer path: ten times the f32 path's (the
/// 16-bit rounding of activations moves these fixtures' logits by about
/// 1e-3; SmolLM2's 30 greedy tokens stay those of transformers).
const INTEGER_LOGIT_TOLERANCE: f32 = 10.0 * LOGIT_TOLERANCE;

/// The integer path (prompts run in chunks of 5 rows, decoding one) keeps
/// every greedy token.
#[test]
fn integer_activations_keep_every_fixtures_logits_and_greedy_tokens() {
    let options = DeviceOptions {
        activations: Activations::Reduced,
        ..EXACT
    };
    for name in FIXTURES {
        assert_close_to_reference(name, outputs(name, options));
    }
}

/// Each prompt's logits within [`INTEGER_LOGIT_TOLERANCE`] of the
/// reference's, and its greedy tokens the same.
fn assert_close_to_reference(name: &str, outputs: PromptOutputs) {
    let reference = reference(name);
    for (record, (logits, greedy)) in reference.prompts.iter().zip(outputs) {
        for (ours, theirs) in logits.iter().zip(&record.logits) {
            let diff = max_abs_diff(ours, theirs);
            assert!(
                diff <= INTEGER_LOGIT_TOLERANCE,
                "{name}: logits differ by {diff}"
            );
        }
        assert_eq!(greedy, record.greedy, "{name}: greedy tokens");
    }
}

/// Whole prompts in one pass: 18 and 30 rows against bf16 weights and
/// against the GGUF fixtures' block kinds take the AMX path where the CPU
/// has it (bf16 tile products on the activations' high and low parts, the
/// block kinds as integer codes), and keep the logits and greedy tokens.
#[test]
fn reduced_precision_whole_prompts_keep_logits_and_greedy_tokens() {
    let options = DeviceOptions {
        activations: Activations::Reduced,
        ..EXACT
    };
    for name in ["llama-tied-bf16", "llama-mixed.gguf", "qwen2-mixed.gguf"] {
        assert_close_to_reference(name, outputs_in_chunks(name, options, 30));
    }
}

#[test]
fn one_and_two_threads_give_the_same_logits_and_tokens() {
    for name in ["llama-gqa", "llama-mixed.gguf", "qwen3-moe"] {
        for activations in [Activations::F32, Activations::Reduced] {
            let run = |threads| {
                let options = DeviceOptions {
                    threads: Some(threads),
                    activations,
                    ..EXACT
                };
                outputs(name, options)
            };
            let (one, two) = (run(1), run(2));
            for ((logits_one, tokens_one), (logits_two, tokens_two)) in one.iter().zip(&two) {
                assert_eq!(tokens_one, tokens_two, "{name} {activations:?}: tokens");
                for (a, b) in logits_one.iter().zip(logits_two) {
                    let diff = max_abs_diff(a, b);
                    assert!(
                        diff <= 1e-5,
                        "{name} {activations:?}: logits differ by {diff}"
                    );
                }
            }
        }
    }
}
