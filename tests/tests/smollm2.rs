//! The demo model, SmolLM2-135M-Instruct (its Q4_1 GGUF, fetched by
//! `scripts/fetch-smollm2`), against the record `generate_gguf.py` took from
//! transformers on the same file: greedy tokens equal, resident, streaming
//! and from its split; the tokenizer built from the GGUF encodes and decodes
//! as transformers' does; the chat template renders the same text.

use std::path::PathBuf;
use std::sync::Arc;

use airllm_backends::{dispatch, Activations, BackendJob, DeviceChoice, DeviceOptions};
use airllm_core::{
    BatchShape, ComputeBackend, DraftCounts, DraftKind, DraftSettings, GenerationConfig, Result,
    TokenControl,
};
use airllm_formats::split::{Compression, StorageSettings};
use airllm_formats::{Message, ModelDir};
use airllm_tests::*;
use burn::tensor::backend::Backend;

#[derive(serde::Deserialize)]
struct ChatRecord {
    messages: Vec<Message>,
    rendered: String,
}

#[derive(serde::Deserialize)]
struct Record {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy: Vec<u32>,
    greedy_text: String,
    tokenizer: Vec<TokenizerCase>,
    chat: ChatRecord,
}

fn record() -> Record {
    let path = fixtures_dir().join("gguf/smollm2.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The prompt encodes to the recorded ids.
fn check_prompt(tokenizer: &tokenizers::Tokenizer, record: &Record) {
    let ids = tokenizer.encode(record.prompt.as_str(), true).unwrap();
    assert_eq!(ids.get_ids(), record.prompt_ids);
}

#[test]
fn tokenizer_encodes_and_decodes_as_transformers_does() {
    let dir = ModelDir::open(&smollm2(), &airllm_models::catalog()).unwrap();
    let tokenizer = dir.tokenizer().unwrap().unwrap();
    let record = record();
    check_prompt(&tokenizer, &record);
    check_tokenizer(&tokenizer, &record.tokenizer, false);
    let greedy = tokenizer.decode(&record.greedy, false).unwrap();
    assert_eq!(greedy, record.greedy_text);
}

#[test]
fn chat_template_renders_as_transformers_does() {
    let record = record();
    let dir = ModelDir::open(&smollm2(), &airllm_models::catalog()).unwrap();
    let template = dir.chat_template().unwrap().unwrap();
    let rendered = template.render(&record.chat.messages, true).unwrap();
    assert_eq!(rendered, record.chat.rendered);
}

/// Greedy decoding of the recorded prompt.
struct Greedy {
    model: PathBuf,
    budget: Budget,
}

impl BackendJob for Greedy {
    type Output = Vec<u32>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Vec<u32>> {
        let record = record();
        let shape = BatchShape {
            batch: 1,
            chunk: record.prompt_ids.len(),
            context: record.prompt_ids.len() + record.greedy.len(),
        };
        let mut engine = engine(&self.model, backend, self.budget, 1, shape)?;
        let config = GenerationConfig {
            max_new_tokens: record.greedy.len(),
            eos: vec![2],
            ..Default::default()
        };
        let answer = engine.generate(&[record.prompt_ids], &config, &mut |_, _| {
            TokenControl::Continue
        })?;
        Ok(answer[0].tokens.clone())
    }
}

/// On the CPU backend whatever the device under test: the tiny fixtures
/// (llama-mixed.gguf among them) cover the devices, and a 135M model on
/// wgpu's software Vulkan takes minutes.
fn greedy(model: PathBuf, budget: Budget, activations: Activations) -> Vec<u32> {
    let options = DeviceOptions {
        activations,
        ..EXACT
    };
    dispatch(DeviceChoice::Cpu, options, Greedy { model, budget })
        .unwrap_or_else(|e| panic!("{budget:?}: {e}"))
}

#[test]
fn greedy_tokens_equal_transformers_resident_and_streaming() {
    let record = record();
    assert!(
        record.greedy_text.starts_with(" Paris."),
        "{:?}",
        record.greedy_text
    );
    for budget in [Budget::Resident, Budget::StreamAll] {
        assert_eq!(greedy(smollm2(), budget, Activations::F32), record.greedy);
    }
}

/// The integer decode path gives the same answer.
#[test]
fn greedy_tokens_with_integer_activations_equal_transformers() {
    let record = record();
    for budget in [Budget::Resident, Budget::StreamAll] {
        let tokens = greedy(smollm2(), budget, Activations::Reduced);
        assert_eq!(tokens, record.greedy, "{budget:?}");
    }
}

/// The recorded prompt and two shorter prefixes of it, alone and then
/// together in one ragged batch.
struct SoloAndBatched;

impl BackendJob for SoloAndBatched {
    type Output = (Vec<Vec<u32>>, Vec<Vec<u32>>);

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let ids = record().prompt_ids;
        let prompts: Vec<Vec<u32>> = [ids.len(), ids.len() - 3, ids.len() / 2]
            .iter()
            .map(|&n| ids[..n].to_vec())
            .collect();
        let shape = BatchShape {
            batch: prompts.len(),
            chunk: ids.len(),
            context: ids.len() + 16,
        };
        let mut engine = engine(&smollm2(), backend, Budget::Resident, 1, shape)?;
        let config = GenerationConfig {
            max_new_tokens: 16,
            ..Default::default()
        };
        let mut generate = |prompts: &[Vec<u32>]| {
            engine
                .generate(prompts, &config, &mut |_, _| TokenControl::Continue)
                .map(|answers| answers.into_iter().map(|a| a.tokens).collect::<Vec<_>>())
        };
        let mut solo = Vec::new();
        for prompt in &prompts {
            solo.extend(generate(std::slice::from_ref(prompt))?);
        }
        Ok((solo, generate(&prompts)?))
    }
}

/// At the default (integer) activations the kernel's results depend on the
/// rows of a pass, but SmolLM2's margins keep every greedy token.
#[test]
fn a_ragged_batch_gets_each_prompts_solo_tokens_at_the_defaults() {
    let options = DeviceOptions {
        activations: Activations::default(),
        ..EXACT
    };
    let (solo, batched) = dispatch(DeviceChoice::Cpu, options, SoloAndBatched).unwrap();
    assert_eq!(batched, solo);
}

#[test]
fn split_of_the_gguf_gives_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("split");
    split_to(&smollm2(), &out);
    let split = ModelDir::open(&out, &airllm_models::catalog()).unwrap();
    let tokenizer = split.tokenizer().unwrap().expect("tokenizer.json written");
    let record = record();
    check_prompt(&tokenizer, &record);
    assert!(split.chat_template().unwrap().is_some());
    assert_eq!(
        greedy(out, Budget::StreamAll, Activations::F32),
        record.greedy
    );
}

/// Greedy decoding of the recorded prompt with every layer of `model`
/// streamed, drafted as `kind` says (a draft model: the one at `draft`).
struct Drafted {
    model: PathBuf,
    kind: Option<DraftKind>,
    draft: PathBuf,
}

/// New tokens in the drafted runs: long enough for the drafts to matter.
const DRAFTED_TOKENS: usize = 32;

impl BackendJob for Drafted {
    type Output = (Vec<u32>, DraftCounts);

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let prompt = record().prompt_ids;
        let shape = BatchShape {
            batch: 1,
            chunk: prompt.len(),
            context: prompt.len() + DRAFTED_TOKENS,
        };
        let mut engine = match self.kind {
            Some(DraftKind::Model) => {
                drafted_engine(&self.model, &self.draft, backend, Budget::StreamAll, shape)?
            }
            _ => engine(&self.model, backend, Budget::StreamAll, 1, shape)?,
        };
        let config = GenerationConfig {
            max_new_tokens: DRAFTED_TOKENS,
            draft: self.kind.map(|kind| DraftSettings { kind, tokens: 4 }),
            ..Default::default()
        };
        let answer = engine.generate(&[prompt], &config, &mut |_, _| TokenControl::Continue)?;
        Ok((answer[0].tokens.clone(), engine.stats().drafts))
    }
}

/// Greedy tokens of `model` (every layer streamed) with each drafter and
/// without, under `activations`: the Q4_1 GGUF drafting, and prompt lookup.
fn drafted_runs(model: PathBuf, activations: Activations) -> Vec<(Vec<u32>, DraftCounts)> {
    let options = DeviceOptions {
        activations,
        ..EXACT
    };
    [None, Some(DraftKind::Model), Some(DraftKind::PromptLookup)]
        .into_iter()
        .map(|kind| {
            let job = Drafted {
                model: model.clone(),
                kind,
                draft: smollm2(),
            };
            dispatch(DeviceChoice::Cpu, options, job).unwrap_or_else(|e| panic!("{kind:?}: {e}"))
        })
        .collect()
}

/// SmolLM2 at f32 (a split of the GGUF, every tensor widened), streamed:
/// drafted by its Q4_1 GGUF, which is mostly right, and by prompt lookup,
/// the greedy tokens are the undrafted ones.
#[test]
fn greedy_drafted_by_the_gguf_or_prompt_lookup_equals_greedy_without() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("f32");
    split_stored(
        &smollm2(),
        &split,
        StorageSettings::new(Compression::F32, None),
    );
    let runs = drafted_runs(split, Activations::F32);
    let (plain, _) = &runs[0];
    assert_eq!(plain[..record().greedy.len()], record().greedy);
    for (drafted, counts) in &runs[1..] {
        assert_eq!(drafted, plain, "{counts:?}");
    }
    let by_model = runs[1].1;
    assert!(by_model.accepted * 2 > by_model.proposed, "{by_model:?}");
}

/// At the defaults (integer activations), the GGUF drafting for itself
/// and prompt lookup keep its greedy tokens too.
#[test]
fn greedy_drafted_at_the_defaults_equals_greedy_without() {
    let runs = drafted_runs(smollm2(), Activations::default());
    for (drafted, counts) in &runs[1..] {
        assert_eq!(drafted, &runs[0].0, "{counts:?}");
    }
}
