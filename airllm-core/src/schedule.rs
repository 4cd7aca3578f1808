//! Continuous batching: sequences join and leave a running batch between
//! forward passes. Each pass runs every running sequence at once (one read
//! of each streamed layer serves them all): a sequence still reading its
//! prompt takes the next chunk of it, one that is generating takes its last
//! token. Each keeps its own KV cache, positions, sampler and limits, so what
//! it generates does not depend on what else shares the pass.

use std::collections::VecDeque;
use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::draft::{DraftRow, Proposal};
use crate::sampling::{acceptance, residual, Choice, Logprobs};
use crate::{
    DraftKind, Engine, Error, Finish, Generated, GenerationConfig, KvCache, Logits, ModelDims,
    Result, Sampler, TokenControl,
};

/// A token a sequence generated.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: u32,
    /// How likely it was, when the sequence's config asks.
    pub logprobs: Option<Logprobs>,
}

/// How many sequences run at once and how fast prompts are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Most sequences in one pass; later ones wait their turn.
    pub max_batch: usize,
    /// Most prompt tokens of one sequence in one pass.
    pub prefill_chunk: usize,
}

/// A pass failed: its error, and the sequences it ended (their caches are
/// dropped, as the pass left them half-written).
#[derive(Debug)]
pub struct PassFailed {
    /// What went wrong.
    pub error: Error,
    /// Ids of the sequences that were running.
    pub failed: Vec<u64>,
}

/// One sequence, waiting or running.
struct Sequence<B: Backend> {
    id: u64,
    /// Prompt, then the tokens generated so far.
    history: Vec<u32>,
    prompt: usize,
    config: GenerationConfig,
    sampler: Sampler,
    /// Allocated when the sequence starts running.
    kv: Option<KvCache<B>>,
    /// Its drafter's state (a draft model's cache), when it drafts.
    draft_cache: Option<KvCache<B>>,
    /// What was drafted for the pass being run.
    proposal: Proposal,
    /// Tokens it drafts next (adapted to how many the model keeps).
    draft_len: usize,
}

impl<B: Backend> Sequence<B> {
    fn generated(&self) -> &[u32] {
        &self.history[self.prompt..]
    }

    /// Tokens already in the cache.
    fn cached(&self) -> usize {
        self.kv.as_ref().map_or(0, KvCache::positions)
    }

    /// Positions its caches hold: its prompt and answer.
    fn room(&self) -> usize {
        self.prompt + self.config.max_new_tokens
    }

    /// A request for proposals from a drafter of `kind`, when the sequence
    /// drafts with it and generates this pass: no more than it may still
    /// generate after the token the pass chooses anyway, within the
    /// model's `max_positions`.
    fn draft_row(&mut self, kind: DraftKind, max_positions: usize) -> Option<DraftRow<'_, B>> {
        let settings = self.config.draft.as_ref()?;
        let left = self
            .config
            .max_new_tokens
            .saturating_sub(self.generated().len());
        let count = self
            .draft_len
            .min(left.saturating_sub(1))
            .min(max_positions.saturating_sub(self.history.len()));
        if settings.kind != kind || self.cached() < self.prompt || count == 0 {
            return None;
        }
        let room = self.room();
        Some(DraftRow {
            history: &self.history,
            prompt: self.prompt,
            count,
            room,
            sampler: &mut self.sampler,
            cache: &mut self.draft_cache,
            proposal: &mut self.proposal,
        })
    }

    /// The tokens this pass feeds (the next chunk of the prompt, or the
    /// last token generated and what was drafted after it), and how many
    /// of their positions choose tokens: none while the prompt is still
    /// being read, else the last and each drafted.
    fn next_tokens(&self, chunk: usize) -> (Vec<u32>, usize) {
        let from = self.cached();
        let mut tokens = self.history[from..(from + chunk).min(self.history.len())].to_vec();
        if from + tokens.len() < self.history.len() {
            return (tokens, 0);
        }
        tokens.extend_from_slice(&self.proposal.tokens);
        (tokens, 1 + self.proposal.tokens.len())
    }

    /// Why the sequence ends after `token` (just pushed), if it does.
    fn finish(&self, token: u32, control: TokenControl, max_positions: usize) -> Option<Finish> {
        if self.config.eos.contains(&token) {
            Some(Finish::Eos)
        } else if control == TokenControl::Stop {
            Some(Finish::Stopped)
        } else if self.generated().len() >= self.config.max_new_tokens {
            Some(Finish::Length)
        } else if self.history.len() >= max_positions {
            Some(Finish::Context)
        } else {
            None
        }
    }

    /// Chooses tokens from `logits`, the model's logits at the last input
    /// token and at each drafted one: a drafted token is kept while it is
    /// the token chosen there (with speculative sampling's test when a
    /// model drew it at random), and the first choice that differs (or the
    /// one after the last drafted) ends the pass's tokens. The caches keep
    /// the positions of the tokens kept. Why the sequence ends, if it does.
    fn verify(
        &mut self,
        logits: Vec<Vec<f32>>,
        on_token: &mut dyn FnMut(u64, &Sampled) -> TokenControl,
        max_positions: usize,
        counts: &mut DraftCounts,
    ) -> Option<Finish> {
        let proposal = std::mem::take(&mut self.proposal);
        if logits.is_empty() {
            return None;
        }
        let before = self.history.len();
        let drafted = &proposal.tokens;
        counts.proposed += drafted.len() as u64;
        for (at, mut logits) in logits.into_iter().enumerate() {
            // Sampling settings change the logits: keep the model's own.
            let raw = self.config.logprobs.map(|top| (logits.clone(), top));
            let token = self.choose(&mut logits, drafted.get(at), proposal.probabilities.get(at));
            self.history.push(token);
            let sampled = Sampled {
                token,
                logprobs: raw.map(|(logits, top)| Logprobs::of(&logits, token, top)),
            };
            let control = on_token(self.id, &sampled);
            if let Some(finish) = self.finish(token, control, max_positions) {
                return Some(finish);
            }
            if drafted.get(at) != Some(&token) {
                self.adapt_draft_len(drafted.len(), at);
                break;
            }
            counts.accepted += 1;
        }
        let kept = self.history.len() - 1;
        if !drafted.is_empty() {
            if let Some(kv) = self.kv.as_mut() {
                kv.truncate(kept);
            }
        }
        // The draft read the history and all it proposed but the last.
        if let Some(cache) = self.draft_cache.as_mut() {
            let agreed = before + (kept - before).min(drafted.len());
            cache.truncate(cache.positions().min(agreed));
        }
        None
    }

    /// The token at a checked position: drawn from the model's `logits`,
    /// or for a token a model drafted at random from distribution `q`,
    /// speculative sampling's choice (kept with min(1, p/q), else drawn
    /// from what p has beyond q), which is distributed as the model's own.
    fn choose(&mut self, logits: &mut [f32], drafted: Option<&u32>, q: Option<&Vec<f32>>) -> u32 {
        let (Some(&drafted), Some(q)) = (drafted, q) else {
            return self.sampler.sample(logits, &self.history, self.prompt);
        };
        match self.sampler.choice(logits, &self.history, self.prompt) {
            Choice::Token(token) => token,
            Choice::Probabilities(p) => match self.sampler.uniform() < acceptance(&p, q, drafted) {
                true => drafted,
                false => self.sampler.draw(&residual(&p, q)),
            },
        }
    }

    /// After a pass that proposed `proposed` tokens and kept `kept`: one
    /// more next time if it kept them all, else as many as it kept (at
    /// least 1), within the settings' most.
    fn adapt_draft_len(&mut self, proposed: usize, kept: usize) {
        let most = self.config.draft.as_ref().map_or(0, |d| d.tokens);
        if proposed == 0 {
            return;
        }
        self.draft_len = match kept == proposed {
            true => (self.draft_len + 1).min(most),
            false => kept.clamp(1, most.max(1)),
        };
    }

    fn answer(self, finish: Finish) -> (u64, Generated) {
        let tokens = self.history[self.prompt..].to_vec();
        (self.id, Generated { tokens, finish })
    }
}

/// Runs sequences in shared forward passes, admitting waiting ones as
/// running ones leave.
pub struct Scheduler<B: Backend> {
    limits: SchedulerLimits,
    dims: ModelDims,
    waiting: VecDeque<Sequence<B>>,
    running: Vec<Sequence<B>>,
}

/// What drafting has done (in the engine's telemetry, since its last reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DraftCounts {
    /// Tokens drafters proposed.
    pub proposed: u64,
    /// Proposed tokens the model agreed with.
    pub accepted: u64,
}

impl DraftCounts {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: DraftCounts) {
        self.proposed += other.proposed;
        self.accepted += other.accepted;
    }
}

impl<B: Backend> Scheduler<B> {
    /// An empty scheduler for a model of `dims`.
    pub fn new(limits: SchedulerLimits, dims: &ModelDims) -> Self {
        Scheduler {
            limits: SchedulerLimits {
                max_batch: limits.max_batch.max(1),
                prefill_chunk: limits.prefill_chunk.max(1),
            },
            dims: dims.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues `prompt` as sequence `id` (ids are the caller's, unique among
    /// the sequences it has in flight); it joins the batch at the first pass
    /// with room. The prompt is checked here.
    pub fn submit(&mut self, id: u64, prompt: Vec<u32>, config: &GenerationConfig) -> Result<()> {
        check_prompt("the prompt", &prompt, &self.dims)?;
        self.waiting.push_back(Sequence {
            id,
            prompt: prompt.len(),
            history: prompt,
            config: config.clone(),
            sampler: Sampler::new(config.sampling.clone()),
            kv: None,
            draft_cache: None,
            proposal: Proposal::default(),
            draft_len: config.draft.as_ref().map_or(0, |d| d.tokens),
        });
        Ok(())
    }

    /// Drops sequence `id`, waiting or running (its cache is freed now);
    /// whether it was there.
    pub fn cancel(&mut self, id: u64) -> bool {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|s| s.id != id);
        self.running.retain(|s| s.id != id);
        before != self.waiting.len() + self.running.len()
    }

    /// Sequences it can take before one would wait for room in the batch.
    pub fn room(&self) -> usize {
        self.limits
            .max_batch
            .saturating_sub(self.running.len() + self.waiting.len())
    }

    /// Sequences waiting for room in the batch.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences in the batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether no sequence is waiting or running.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Admits waiting sequences while the batch has room, runs one pass
    /// over the batch, and samples a token for each sequence whose input
    /// is all in: `on_token(id, sampled)` sees it and may stop the sequence.
    /// Returns the sequences that ended, with their answers.
    pub fn step(
        &mut self,
        engine: &mut Engine<B>,
        on_token: &mut dyn FnMut(u64, &Sampled) -> TokenControl,
    ) -> std::result::Result<Vec<(u64, Generated)>, PassFailed> {
        let mut ended = self.admit();
        if self.running.is_empty() {
            return Ok(ended);
        }
        if let Err(error) = self.draft(engine) {
            return Err(self.fail_running(error));
        }
        let chunk = self.limits.prefill_chunk;
        let (tokens, tails): (Vec<Vec<u32>>, Vec<usize>) =
            self.running.iter().map(|s| s.next_tokens(chunk)).unzip();
        let mut caches: Vec<&mut KvCache<B>> = self
            .running
            .iter_mut()
            .map(|s| s.kv.as_mut().expect("a running sequence has a cache"))
            .collect();
        let logits = match engine.forward(&tokens, &mut caches, Logits::Tails(tails.clone())) {
            Ok(logits) => logits.unwrap_or_default(),
            Err(error) => return Err(self.fail_running(error)),
        };
        let max_positions = self.dims.max_positions;
        let mut finishes = Vec::with_capacity(self.running.len());
        let mut logits = logits.into_iter();
        let mut drafts = DraftCounts::default();
        for (sequence, tail) in self.running.iter_mut().zip(tails) {
            let row: Vec<Vec<f32>> = logits.by_ref().take(tail).collect();
            let finish = sequence.verify(row, on_token, max_positions, &mut drafts);
            finishes.push(finish);
        }
        engine.record_drafts(drafts);
        let running = std::mem::take(&mut self.running);
        for (sequence, finish) in running.into_iter().zip(finishes) {
            match finish {
                Some(finish) => ended.push(sequence.answer(finish)),
                None => self.running.push(sequence),
            }
        }
        Ok(ended)
    }

    /// Ends every running sequence after `error` in their pass (their
    /// caches are dropped half-written).
    fn fail_running(&mut self, error: Error) -> PassFailed {
        let failed = self.running.drain(..).map(|s| s.id).collect();
        PassFailed { error, failed }
    }

    /// Fills the proposals of the running sequences that draft and
    /// generate this pass, each drafter serving all of its sequences at
    /// once; the time goes to the engine's telemetry.
    fn draft(&mut self, engine: &mut Engine<B>) -> Result<()> {
        let started = Instant::now();
        let max_positions = self.dims.max_positions;
        let mut drafted = false;
        for kind in [DraftKind::PromptLookup, DraftKind::Model] {
            let mut rows: Vec<DraftRow<'_, B>> = self
                .running
                .iter_mut()
                .filter_map(|s| s.draft_row(kind, max_positions))
                .collect();
            if !rows.is_empty() {
                drafted = true;
                kind.drafter(self.limits.prefill_chunk)
                    .propose(engine, &mut rows)?;
            }
        }
        if drafted {
            engine.record_draft_time(started.elapsed());
        }
        Ok(())
    }

    /// Moves waiting sequences into the batch while it has room, giving
    /// each a cache with room for its prompt and answer; one that may
    /// generate nothing ends at once.
    fn admit(&mut self) -> Vec<(u64, Generated)> {
        let mut ended = Vec::new();
        while self.running.len() < self.limits.max_batch {
            let Some(mut sequence) = self.waiting.pop_front() else {
                break;
            };
            if sequence.config.max_new_tokens == 0 {
                ended.push(sequence.answer(Finish::Length));
                continue;
            }
            let room = sequence.room().min(self.dims.max_positions);
            sequence.kv = Some(KvCache::new(self.dims.layers, room));
            self.running.push(sequence);
        }
        ended
    }
}

/// Checks that `prompt` (named `label` in errors) is one the model can read.
pub(crate) fn check_prompt(label: &str, prompt: &[u32], dims: &ModelDims) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Request(format!("{label} is empty")));
    }
    if prompt.len() > dims.max_positions {
        return Err(Error::Request(format!(
            "{label} has {} tokens, longer than the model's context of {}; shorten it",
            prompt.len(),
            dims.max_positions
        )));
    }
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= dims.vocab) {
        return Err(Error::Request(format!(
            "{label} holds token id {bad}, outside the vocabulary of {}",
            dims.vocab
        )));
    }
    Ok(())
}
