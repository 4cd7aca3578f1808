//! The scheduler on every fixture (cpu, f32 activations, every layer
//! streamed): sequences of different lengths joining a running batch at
//! different passes, waiting for room, leaving early or cancelled, each
//! get exactly the greedy tokens of their solo run; with prompt lookup
//! drafting, exactly the undrafted tokens.

use std::collections::HashMap;
use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob, DeviceChoice};
use airllm_core::{
    BatchShape, ComputeBackend, DraftCounts, DraftKind, DraftSettings, Engine, Generated,
    GenerationConfig, Result, Scheduler, SchedulerLimits, TokenControl,
};
use airllm_tests::*;
use burn::tensor::backend::Backend;

/// Sequences at most in one pass (the rest wait).
const MAX_BATCH: usize = 3;
const CHUNK: usize = 4;
const LONGEST: usize = 30 + 20;
const SHAPE: BatchShape = BatchShape {
    batch: MAX_BATCH,
    chunk: CHUNK,
    context: LONGEST,
};

/// The requests: each reference prompt and a shorter prefix of it, with
/// different limits, submitted before the given pass.
fn requests(prompts: &[Vec<u32>]) -> Vec<(usize, Vec<u32>, usize)> {
    let mut requests = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        requests.push((3 * i, prompt.clone(), 6 + 5 * i));
        let prefix = prompt[..prompt.len().div_ceil(2)].to_vec();
        requests.push((3 * i + 1, prefix, 20 - 4 * i));
    }
    requests
}

fn config(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        prefill_chunk: CHUNK,
        ..Default::default()
    }
}

/// Solo answers, then the same requests through one scheduler.
struct JoinMidRun {
    name: &'static str,
}

struct Runs {
    solo: Vec<Generated>,
    scheduled: HashMap<u64, Generated>,
    /// Tokens seen by the callback, per sequence.
    streamed: HashMap<u64, Vec<u32>>,
    most_running: usize,
    cancelled_left: bool,
}

impl BackendJob for JoinMidRun {
    type Output = Runs;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Runs> {
        let prompts: Vec<Vec<u32>> = reference(self.name)
            .prompts
            .into_iter()
            .map(|r| r.ids)
            .collect();
        let requests = requests(&prompts);
        let mut engine = engine(&fixture(self.name), backend, Budget::StreamAll, 1, SHAPE)?;
        let mut solo = Vec::new();
        for (_, prompt, limit) in &requests {
            let answer = engine.generate(
                std::slice::from_ref(prompt),
                &config(*limit),
                &mut |_, _| TokenControl::Continue,
            )?;
            solo.extend(answer);
        }
        engine.prepare(MAX_BATCH, CHUNK, LONGEST)?;
        let limits = SchedulerLimits {
            max_batch: MAX_BATCH,
            prefill_chunk: CHUNK,
        };
        let mut scheduler = Scheduler::new(limits, engine.arch().dims());
        // A sequence that is cancelled after its first pass.
        let cancelled = requests.len() as u64;
        scheduler.submit(cancelled, prompts[0].clone(), &config(20))?;
        let mut runs = Runs {
            solo,
            scheduled: HashMap::new(),
            streamed: HashMap::new(),
            most_running: 0,
            cancelled_left: false,
        };
        let mut pass = 0;
        while runs.scheduled.len() < requests.len() {
            for (id, (at, prompt, limit)) in requests.iter().enumerate() {
                if *at == pass {
                    scheduler.submit(id as u64, prompt.clone(), &config(*limit))?;
                }
            }
            if pass == 1 {
                runs.cancelled_left = scheduler.cancel(cancelled);
            }
            let streamed = &mut runs.streamed;
            let ended = scheduler
                .step(&mut engine, &mut |id, sampled| {
                    streamed.entry(id).or_default().push(sampled.token);
                    TokenControl::Continue
                })
                .map_err(|failed| failed.error)?;
            runs.most_running = runs.most_running.max(scheduler.running() + ended.len());
            runs.scheduled.extend(ended);
            pass += 1;
            assert!(
                pass < 1000,
                "{}: the scheduler stopped making progress",
                self.name
            );
        }
        Ok(runs)
    }
}

#[test]
fn sequences_joining_mid_run_get_their_solo_greedy_tokens() {
    for name in FIXTURES {
        let runs = dispatch(DeviceChoice::Cpu, EXACT, JoinMidRun { name })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            runs.cancelled_left,
            "{name}: the cancelled sequence was running"
        );
        assert_eq!(runs.most_running, MAX_BATCH, "{name}: the batch filled");
        for (id, solo) in runs.solo.iter().enumerate() {
            let id = id as u64;
            let scheduled = &runs.scheduled[&id];
            assert_eq!(scheduled, solo, "{name}: sequence {id}");
            assert_eq!(
                runs.streamed[&id], solo.tokens,
                "{name}: sequence {id} streamed"
            );
        }
        assert_eq!(
            runs.scheduled.len(),
            runs.solo.len(),
            "{name}: nothing else ended"
        );
    }
}

/// A sequence whose callback stops it leaves with `Stopped`; one whose
/// limit is zero ends without a pass.
struct Stops;

impl BackendJob for Stops {
    type Output = Vec<(u64, Generated)>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let name = FIXTURES[0];
        let prompt = reference(name).prompts[0].ids.clone();
        let mut engine: Engine<B> = engine(&fixture(name), backend, Budget::Resident, 1, SHAPE)?;
        engine.prepare(MAX_BATCH, CHUNK, LONGEST)?;
        let limits = SchedulerLimits {
            max_batch: MAX_BATCH,
            prefill_chunk: CHUNK,
        };
        let mut scheduler = Scheduler::new(limits, engine.arch().dims());
        scheduler.submit(0, prompt.clone(), &config(10))?;
        scheduler.submit(1, prompt, &config(0))?;
        let mut ended = Vec::new();
        let mut seen = 0;
        while !scheduler.is_empty() {
            let passes_before = engine.stats().passes;
            let step = scheduler.step(&mut engine, &mut |_, _| {
                seen += 1;
                match seen {
                    3 => TokenControl::Stop,
                    _ => TokenControl::Continue,
                }
            });
            let step = step.map_err(|failed| failed.error)?;
            if step.iter().any(|(id, _)| *id == 1) {
                assert_eq!(
                    engine.stats().passes,
                    passes_before + 1,
                    "one pass, for sequence 0"
                );
            }
            ended.extend(step);
        }
        Ok(ended)
    }
}

#[test]
fn a_stopped_sequence_leaves_and_a_zero_limit_ends_at_once() {
    let ended = dispatch(DeviceChoice::Cpu, EXACT, Stops).unwrap();
    assert_eq!(ended[0].0, 1, "the zero-limit sequence ends first");
    assert_eq!(ended[0].1.tokens, Vec::<u32>::new());
    assert_eq!(ended[0].1.finish, airllm_core::Finish::Length);
    assert_eq!(ended[1].0, 0);
    assert_eq!(ended[1].1.tokens.len(), 3);
    assert_eq!(ended[1].1.finish, airllm_core::Finish::Stopped);
}

/// Who drafts in a run.
#[derive(Clone, Copy, Debug)]
enum Drafting {
    None,
    PromptLookup,
    /// This fixture, held resident.
    Model(&'static str),
}

/// The reference prompts as one batch through a scheduler, greedy, drafted
/// as `drafting` says.
struct Drafted {
    name: &'static str,
    budget: Budget,
    drafting: Drafting,
    /// Each prompt repeated to this many tokens (`None`: as recorded).
    prompt_len: Option<usize>,
}

impl BackendJob for Drafted {
    type Output = (Vec<Generated>, DraftCounts);

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        let prompts: Vec<Vec<u32>> = reference(self.name)
            .prompts
            .into_iter()
            .map(|r| match self.prompt_len {
                Some(len) => r.ids.iter().copied().cycle().take(len).collect(),
                None => r.ids,
            })
            .collect();
        let shape = BatchShape {
            context: self.prompt_len.map_or(LONGEST, |len| len + 20),
            ..SHAPE
        };
        let target = fixture(self.name);
        let (mut engine, kind) = match self.drafting {
            Drafting::None => (engine(&target, backend, self.budget, 1, shape)?, None),
            Drafting::PromptLookup => (
                engine(&target, backend, self.budget, 1, shape)?,
                Some(DraftKind::PromptLookup),
            ),
            Drafting::Model(draft) => (
                drafted_engine(&target, &fixture(draft), backend, self.budget, shape)?,
                Some(DraftKind::Model),
            ),
        };
        engine.prepare(shape.batch, shape.chunk, shape.context)?;
        let limits = SchedulerLimits {
            max_batch: MAX_BATCH,
            prefill_chunk: CHUNK,
        };
        let mut scheduler = Scheduler::new(limits, engine.arch().dims());
        let config = GenerationConfig {
            draft: kind.map(|kind| DraftSettings { kind, tokens: 4 }),
            ..config(20)
        };
        for (id, prompt) in prompts.iter().enumerate() {
            scheduler.submit(id as u64, prompt.clone(), &config)?;
        }
        let mut answers = vec![None; prompts.len()];
        while !scheduler.is_empty() {
            let ended = scheduler
                .step(&mut engine, &mut |_, _| TokenControl::Continue)
                .map_err(|failed| failed.error)?;
            for (id, answer) in ended {
                answers[id as usize] = Some(answer);
            }
        }
        let answers = answers.into_iter().map(Option::unwrap).collect();
        Ok((answers, engine.stats().drafts))
    }
}

/// The draft model for fixture `FIXTURES[index]`: the next fixture, one of
/// the vocabulary of 320 (qwen-v1's is 315: it is drafted by a wider
/// model, whose proposals past its vocabulary are dropped).
fn other_fixture(index: usize) -> &'static str {
    (1..FIXTURES.len())
        .map(|step| FIXTURES[(index + step) % FIXTURES.len()])
        .find(|name| *name != "qwen-v1")
        .expect("another fixture")
}

/// Greedy with `drafting` equals greedy without on every fixture, resident
/// and every layer streamed, a batch of 3; the drafts counted.
fn greedy_equals_undrafted(drafting: impl Fn(usize) -> Drafting) -> DraftCounts {
    let mut total = DraftCounts::default();
    for (index, name) in FIXTURES.into_iter().enumerate() {
        for budget in [Budget::Resident, Budget::StreamAll] {
            let run = |drafting| {
                dispatch(
                    DeviceChoice::Cpu,
                    EXACT,
                    Drafted {
                        name,
                        budget,
                        drafting,
                        prompt_len: None,
                    },
                )
                .unwrap_or_else(|e| panic!("{name} {budget:?} {drafting:?}: {e}"))
            };
            let (plain, _) = run(Drafting::None);
            let (drafted, counts) = run(drafting(index));
            assert_eq!(drafted, plain, "{name} {budget:?} {:?}", drafting(index));
            total.add(counts);
        }
    }
    total
}

/// Prompt lookup proposes, the model keeps some and rejects others (the
/// cache forgets those), and every greedy answer is the undrafted one.
#[test]
fn greedy_with_prompt_lookup_equals_greedy_without() {
    let total = greedy_equals_undrafted(|_| Drafting::PromptLookup);
    assert!(total.accepted > 0, "{total:?}: nothing accepted");
    assert!(
        total.proposed > total.accepted,
        "{total:?}: nothing rejected"
    );
}

/// Another fixture drafts: it proposes what its own weights say, most of
/// it rejected (both caches forget those positions), and every greedy
/// answer is the undrafted one.
#[test]
fn greedy_drafted_by_another_model_equals_greedy_without() {
    let total = greedy_equals_undrafted(|index| Drafting::Model(other_fixture(index)));
    assert!(total.accepted > 0, "{total:?}: nothing accepted");
    assert!(
        total.proposed > 2 * total.accepted,
        "{total:?}: too little rejected"
    );
}

/// A model drafting for itself: the mechanics of a draft that is nearly
/// always right (f32 gives the same logits whatever a pass's rows).
#[test]
fn a_model_drafting_for_itself_is_nearly_always_kept() {
    let total = greedy_equals_undrafted(|index| Drafting::Model(FIXTURES[index]));
    assert!(
        total.accepted * 10 >= total.proposed * 9 && total.proposed > 100,
        "{total:?}"
    );
}

/// Drafts stop at the model's context: prompts 7 positions short of it
/// (these fixtures take 128), a model drafting for itself (which proposes
/// all it may) and prompt lookup end at the context with the undrafted
/// tokens, and never run a position past it.
#[test]
fn drafts_stop_at_the_context() {
    for name in ["llama-gqa", "baichuan-alibi", "qwen-v1"] {
        let run = |drafting| {
            let job = Drafted {
                name,
                budget: Budget::Resident,
                drafting,
                prompt_len: Some(121),
            };
            dispatch(DeviceChoice::Cpu, EXACT, job).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let (plain, _) = run(Drafting::None);
        assert!(
            plain
                .iter()
                .all(|a| a.finish == airllm_core::Finish::Context && a.tokens.len() == 7),
            "{name}: {plain:?}"
        );
        for drafting in [Drafting::Model(name), Drafting::PromptLookup] {
            let (drafted, counts) = run(drafting);
            assert_eq!(drafted, plain, "{name} {drafting:?} {counts:?}");
        }
    }
}
