//! `airllm eval`: scores a text with a model, and beside a reference model
//! (perplexity ratio, mean KL divergence, top-1 agreement).

use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{score_text, ByteSize, ComputeBackend, Engine, Error, Result, ScoreReport};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;

use crate::cli::{EngineArgs, EvalArgs};
use crate::{model, text};

/// Runs the command.
pub fn run(args: EvalArgs) -> Result<()> {
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, EvalJob { args })
}

struct EvalJob {
    args: EvalArgs,
}

/// The text's tokens under `dir`'s tokenizer.
fn tokenize(dir: &ModelDir, content: &str) -> Result<Vec<u32>> {
    let tokenizer = dir.tokenizer()?.ok_or_else(|| {
        Error::Request(format!(
            "{} has no tokenizer; eval scores text, which needs one",
            dir.path.display()
        ))
    })?;
    text::encode(&tokenizer, content)
}

impl BackendJob for EvalJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let content = std::fs::read_to_string(&args.text).map_err(|e| Error::io(&args.text, e))?;
        let dir = model::open_dir(&args.model)?;
        let tokens = tokenize(&dir, &content)?;
        let reference_dir = args.reference.as_deref().map(model::open_dir).transpose()?;
        if let Some(reference) = &reference_dir {
            let theirs = tokenize(reference, &content)?;
            if let Some(at) =
                (0..tokens.len().max(theirs.len())).find(|&i| tokens.get(i) != theirs.get(i))
            {
                return Err(Error::Request(format!(
                    "{} and {} tokenize the text differently (from token {at} on); compare models that share a tokenizer",
                    dir.path.display(),
                    reference.path.display()
                )));
            }
        }
        let engine_args = shared_budget(&args.engine, &*backend, reference_dir.is_some());
        let mut engine = model::open_engine::<B>(&dir, backend.clone(), &engine_args)?;
        let mut reference: Option<Engine<B>> = reference_dir
            .map(|r| model::open_engine::<B>(&r, backend.clone(), &engine_args))
            .transpose()?;
        if let (Some(theirs), Some(path)) = (&reference, &args.reference) {
            let (vocab, their_vocab) = (engine.arch().dims().vocab, theirs.arch().dims().vocab);
            if vocab != their_vocab {
                return Err(Error::Request(format!(
                    "{} has a vocabulary of {vocab}, {} of {their_vocab}; compare models that share a tokenizer",
                    args.model.display(),
                    path.display()
                )));
            }
        }
        let window = args.window.min(engine.arch().dims().max_positions);
        let chunk = args.engine.prefill_chunk;
        let scores = score_text(&mut engine, reference.as_mut(), &tokens, window, chunk)?;
        print(&scores.report(), args.json);
        Ok(())
    }
}

/// The engine settings each model runs under: with a reference, each takes
/// half of the budget (`--max-memory`, else the device's default).
fn shared_budget<B: Backend>(
    args: &EngineArgs,
    backend: &dyn ComputeBackend<B>,
    with_reference: bool,
) -> EngineArgs {
    let mut args = args.clone();
    if with_reference {
        let budget = args
            .max_memory
            .map_or_else(|| backend.default_budget(), |m| m.0);
        args.max_memory = Some(ByteSize(budget / 2));
    }
    args
}

fn print(report: &ScoreReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("scores serialize")
        );
        return;
    }
    println!(
        "{} tokens scored: perplexity {:.4}",
        report.tokens, report.perplexity
    );
    if let (Some(reference), Some(ratio), Some(kl), Some(agreement)) = (
        report.reference_perplexity,
        report.perplexity_ratio,
        report.mean_kl,
        report.top1_agreement,
    ) {
        println!(
            "reference perplexity {reference:.4}: ratio {ratio:.4}, mean KL {kl:.5} nats, top-1 agreement {:.2}%",
            agreement * 100.0
        );
    }
}
