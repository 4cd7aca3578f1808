//! Generation over a batch of prompts, run by the [`Scheduler`], and the
//! logits of every position of one prompt.

use burn::tensor::backend::Backend;

use crate::schedule::{check_prompt, Scheduler, SchedulerLimits};
use crate::{DraftSettings, Engine, Error, KvCache, Logits, Result, SamplingConfig};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerationConfig {
    /// Most tokens generated per sequence.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingConfig,
    /// Tokens that end a sequence (from generation_config.json).
    pub eos: Vec<u32>,
    /// Most prompt tokens per sequence in one prefill pass.
    pub prefill_chunk: usize,
    /// Report each token's log-probability and this many of the most
    /// likely alternatives ([`Sampled::logprobs`](crate::schedule::Sampled));
    /// `None`: none.
    pub logprobs: Option<usize>,
    /// Speculative decoding: the drafter whose proposals each pass checks
    /// (`None`: one token a pass). Greedy answers are the same either way.
    pub draft: Option<DraftSettings>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            sampling: SamplingConfig::default(),
            eos: Vec::new(),
            prefill_chunk: 512,
            logprobs: None,
            draft: None,
        }
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// It produced an end-of-sequence token (kept in its tokens).
    Eos,
    /// It reached `max_new_tokens`.
    Length,
    /// The token callback asked it to stop (stop strings).
    Stopped,
    /// It reached the model's context length.
    Context,
}

/// The answer to one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: Finish,
}

/// The token callback's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenControl {
    /// Keep generating this sequence.
    Continue,
    /// Stop this sequence now.
    Stop,
}

impl<B: Backend> Engine<B> {
    /// Generates continuations of every prompt in one batch, sequences
    /// leaving as they finish (a client of [`Scheduler`]: no prompt is
    /// padded, and each answer is the one its prompt gets alone, up to the
    /// kernel's rounding across row counts); `on_token(i, id)` sees each
    /// token of prompt `i` as it is decoded. Answers come back in prompt
    /// order.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(usize, u32) -> TokenControl,
    ) -> Result<Vec<Generated>> {
        if prompts.is_empty() {
            return Err(Error::Request("no prompt given".into()));
        }
        let dims = self.arch().dims().clone();
        for (i, prompt) in prompts.iter().enumerate() {
            check_prompt(&format!("prompt {i}"), prompt, &dims)?;
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let context = longest
            .saturating_add(config.max_new_tokens)
            .min(dims.max_positions);
        let chunk = config.prefill_chunk.clamp(1, longest);
        // A drafted pass checks the last token and every proposal.
        let checked = config.draft.as_ref().map_or(1, |d| d.tokens + 1);
        self.prepare(prompts.len(), chunk.max(checked), context)?;
        let limits = SchedulerLimits {
            max_batch: prompts.len(),
            prefill_chunk: chunk,
        };
        let mut scheduler = Scheduler::new(limits, &dims);
        for (i, prompt) in prompts.iter().enumerate() {
            scheduler.submit(i as u64, prompt.clone(), config)?;
        }
        let mut answers: Vec<Option<Generated>> = vec![None; prompts.len()];
        while !scheduler.is_empty() {
            let ended = scheduler
                .step(self, &mut |id, sampled| {
                    on_token(id as usize, sampled.token)
                })
                .map_err(|failed| failed.error)?;
            for (id, answer) in ended {
                answers[id as usize] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every prompt finishes"))
            .collect())
    }

    /// Logits of every position of one prompt, `[seq][vocab]` (scoring and tests).
    pub fn prompt_logits(&mut self, prompt: &[u32], chunk: usize) -> Result<Vec<Vec<f32>>> {
        check_prompt("the prompt", prompt, self.arch().dims())?;
        let chunk = chunk.clamp(1, prompt.len());
        self.prepare(1, chunk, prompt.len())?;
        let mut kv = KvCache::new(self.arch().dims().layers, prompt.len());
        let mut all = Vec::with_capacity(prompt.len());
        for part in prompt.chunks(chunk) {
            let logits = self.forward(&[part.to_vec()], &mut [&mut kv], Logits::All)?;
            all.extend(logits.expect("asked for logits"));
        }
        Ok(all)
    }
}
