//! Generation over a batch: left-padded prompts prefilled in chunks, then one
//! token per sequence per pass, sequences dropping out as they finish.

use burn::tensor::backend::Backend;

use crate::{Engine, Error, KvCache, Logits, PassInfo, Result, Sampler, SamplingConfig};

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
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            sampling: SamplingConfig::default(),
            eos: Vec::new(),
            prefill_chunk: 512,
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

/// One running sequence of the batch.
struct Row {
    prompt: usize,
    pad: usize,
    history: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
}

impl Row {
    /// Why the row ends after `token` (just pushed), if it does.
    fn finish(
        &self,
        token: u32,
        control: TokenControl,
        config: &GenerationConfig,
        max_positions: usize,
    ) -> Option<Finish> {
        if config.eos.contains(&token) {
            Some(Finish::Eos)
        } else if control == TokenControl::Stop {
            Some(Finish::Stopped)
        } else if self.generated.len() >= config.max_new_tokens {
            Some(Finish::Length)
        } else if self.history.len() >= max_positions {
            Some(Finish::Context)
        } else {
            None
        }
    }
}

impl<B: Backend> Engine<B> {
    /// Generates continuations of every prompt in one batch; `on_token(i, id)`
    /// sees each token of prompt `i` as it is decoded. Answers come back in
    /// prompt order.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(usize, u32) -> TokenControl,
    ) -> Result<Vec<Generated>> {
        let longest = self.check_prompts(prompts)?;
        let max_positions = self.arch().dims().max_positions;
        let context = longest
            .saturating_add(config.max_new_tokens)
            .min(max_positions);
        let chunk = config.prefill_chunk.clamp(1, longest);
        self.prepare(prompts.len(), chunk, context)?;

        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                prompt: i,
                pad: longest - p.len(),
                history: p.clone(),
                generated: Vec::new(),
                sampler: Sampler::new(config.sampling.clone()),
            })
            .collect();
        let mut answers: Vec<Option<Generated>> = vec![None; prompts.len()];
        let mut kv = KvCache::new(self.arch().dims().layers, context);

        let mut logits = self.prefill(&rows, longest, chunk, &mut kv)?;
        let mut columns = longest;

        if config.max_new_tokens == 0 {
            for row in &rows {
                answers[row.prompt] = Some(Generated {
                    tokens: Vec::new(),
                    finish: Finish::Length,
                });
            }
            rows.clear();
        }
        while !rows.is_empty() {
            let mut finished = Vec::new();
            for (r, row) in rows.iter_mut().enumerate() {
                let token = row.sampler.sample(&mut logits[r], &row.history);
                row.history.push(token);
                row.generated.push(token);
                let control = on_token(row.prompt, token);
                if let Some(finish) = row.finish(token, control, config, max_positions) {
                    finished.push(r);
                    answers[row.prompt] = Some(Generated {
                        tokens: std::mem::take(&mut row.generated),
                        finish,
                    });
                }
            }
            if !finished.is_empty() {
                let keep: Vec<usize> = (0..rows.len()).filter(|r| !finished.contains(r)).collect();
                if keep.is_empty() {
                    break;
                }
                kv.retain_rows(&keep, self.backend().device());
                let mut index = 0;
                rows.retain(|_| {
                    index += 1;
                    !finished.contains(&(index - 1))
                });
            }
            let tokens: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| vec![*r.history.last().unwrap()])
                .collect();
            logits = self
                .forward_rows(&tokens, &rows, columns, &mut kv, Logits::Last)?
                .map(last_positions)
                .expect("decode passes ask for logits");
            columns += 1;
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every prompt finishes"))
            .collect())
    }

    /// Runs the prompts of `rows`, left-padded to `longest` tokens, through
    /// the model `chunk` tokens a pass, and returns each row's logits for
    /// the token after its prompt.
    fn prefill(
        &mut self,
        rows: &[Row],
        longest: usize,
        chunk: usize,
        kv: &mut KvCache<B>,
    ) -> Result<Vec<Vec<f32>>> {
        let padded: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(0, r.pad)
                    .chain(r.history.iter().copied())
                    .collect()
            })
            .collect();
        let mut logits = None;
        for start in (0..longest).step_by(chunk) {
            let end = (start + chunk).min(longest);
            let tokens: Vec<Vec<u32>> = padded.iter().map(|p| p[start..end].to_vec()).collect();
            let want = if end == longest {
                Logits::Last
            } else {
                Logits::Skip
            };
            logits = self
                .forward_rows(&tokens, rows, start, kv, want)?
                .map(last_positions);
        }
        Ok(logits.expect("the last prefill chunk asks for logits"))
    }

    /// Logits of every position of one prompt, `[seq][vocab]` (scoring and tests).
    pub fn prompt_logits(&mut self, prompt: &[u32], chunk: usize) -> Result<Vec<Vec<f32>>> {
        let prompts = [prompt.to_vec()];
        let longest = self.check_prompts(&prompts)?;
        let chunk = chunk.clamp(1, longest);
        self.prepare(1, chunk, longest)?;
        let rows = [Row {
            prompt: 0,
            pad: 0,
            history: prompt.to_vec(),
            generated: Vec::new(),
            sampler: Sampler::new(SamplingConfig::default()),
        }];
        let mut kv = KvCache::new(self.arch().dims().layers, longest);
        let mut all = Vec::with_capacity(longest);
        for start in (0..longest).step_by(chunk) {
            let end = (start + chunk).min(longest);
            let tokens = vec![prompt[start..end].to_vec()];
            let logits = self.forward_rows(&tokens, &rows, start, &mut kv, Logits::All)?;
            let mut rows = logits.expect("asked for logits");
            all.append(&mut rows[0]);
        }
        Ok(all)
    }

    fn check_prompts(&self, prompts: &[Vec<u32>]) -> Result<usize> {
        let dims = self.arch().dims();
        if prompts.is_empty() {
            return Err(Error::Request("no prompt given".into()));
        }
        for (i, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(Error::Request(format!("prompt {i} is empty")));
            }
            if prompt.len() > dims.max_positions {
                return Err(Error::Request(format!(
                    "prompt {i} has {} tokens, longer than the model's context of {}; shorten it",
                    prompt.len(),
                    dims.max_positions
                )));
            }
            if let Some(bad) = prompt.iter().find(|&&t| t as usize >= dims.vocab) {
                return Err(Error::Request(format!(
                    "prompt {i} holds token id {bad}, outside the vocabulary of {}",
                    dims.vocab
                )));
            }
        }
        Ok(prompts.iter().map(Vec::len).max().unwrap_or(0))
    }

    /// Runs a pass over columns `start..start + seq` and returns logits as
    /// `[row][position][vocab]` on the host.
    #[allow(clippy::type_complexity)]
    fn forward_rows(
        &mut self,
        tokens: &[Vec<u32>],
        rows: &[Row],
        start: usize,
        kv: &mut KvCache<B>,
        want: Logits,
    ) -> Result<Option<Vec<Vec<Vec<f32>>>>> {
        let pass = pass_info(rows, start, tokens[0].len());
        let Some(logits) = self.forward(tokens, &pass, kv, want)? else {
            return Ok(None);
        };
        let [batch, positions, vocab] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))?;
        Ok(Some(
            values
                .chunks(positions * vocab)
                .take(batch)
                .map(|row| row.chunks(vocab).map(<[f32]>::to_vec).collect())
                .collect(),
        ))
    }
}

/// The last position's logits of each row.
fn last_positions(per_row: Vec<Vec<Vec<f32>>>) -> Vec<Vec<f32>> {
    per_row
        .into_iter()
        .map(|mut positions| positions.pop().unwrap_or_default())
        .collect()
}

/// Positions of columns `0..start + seq`: each row's prompt starts after its
/// left padding at position 0.
fn pass_info(rows: &[Row], start: usize, seq: usize) -> PassInfo {
    let total = start + seq;
    PassInfo {
        start,
        columns: rows
            .iter()
            .map(|row| (0..total).map(|col| col.checked_sub(row.pad)).collect())
            .collect(),
    }
}
