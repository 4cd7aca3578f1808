//! Drafting for speculative decoding: a drafter proposes the tokens a
//! sequence is likely to continue with, and one pass of the model checks
//! them all (the scheduler keeps those the model would have chosen itself).

use burn::tensor::backend::Backend;

use crate::{DraftModel, Engine, KvCache, Result, Sampler};

/// Which drafter a sequence uses, and how many tokens it proposes a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftSettings {
    /// The drafter.
    pub kind: DraftKind,
    /// Most tokens proposed per pass; each sequence proposes fewer after a
    /// rejection (down to 1) and one more after a pass that kept them all.
    pub tokens: usize,
}

/// The drafters there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftKind {
    /// [`PromptLookup`].
    PromptLookup,
    /// [`DraftModel`]: the engine's draft model ([`Engine::set_draft`]).
    Model,
}

impl DraftKind {
    /// The drafter, for passes that read prompts `chunk` tokens at a time.
    pub fn drafter<B: Backend>(self, chunk: usize) -> Box<dyn Drafter<B>> {
        match self {
            DraftKind::PromptLookup => Box::new(PromptLookup::default()),
            DraftKind::Model => Box::new(DraftModel { chunk }),
        }
    }
}

/// What a drafter proposed for one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proposal {
    /// The tokens, in order.
    pub tokens: Vec<u32>,
    /// For each token, the distribution it was drawn from, when a model
    /// drew it at random (speculative sampling weighs the model's
    /// distribution against it); empty otherwise.
    pub probabilities: Vec<Vec<f32>>,
}

/// One sequence asking for proposals.
pub struct DraftRow<'a, B: Backend> {
    /// Its prompt, then the tokens generated so far.
    pub history: &'a [u32],
    /// Of `history`, the prompt's length.
    pub prompt: usize,
    /// Most tokens to propose.
    pub count: usize,
    /// Positions the sequence may reach (its caches' room).
    pub room: usize,
    /// The sequence's sampler: a model drafter draws with its settings.
    pub sampler: &'a mut Sampler,
    /// The drafter's state for this sequence (a draft model's KV cache),
    /// kept across passes; the scheduler truncates it to the tokens kept.
    pub cache: &'a mut Option<KvCache<B>>,
    /// Where the proposals go (empty when asked).
    pub proposal: &'a mut Proposal,
}

/// Proposes tokens likely to follow sequences.
pub trait Drafter<B: Backend> {
    /// Fills each row's proposal with up to its `count` tokens (fewer, or
    /// none, when it has no guess). `engine` runs the model being drafted
    /// for (a draft model is the one [`Engine::set_draft`] gave it).
    fn propose(&mut self, engine: &mut Engine<B>, rows: &mut [DraftRow<'_, B>]) -> Result<()>;
}

/// Proposals from the sequence itself (prompt lookup decoding): the tokens
/// that followed the latest earlier occurrence of its last `n` tokens, the
/// longest `n` first (an occurrence close to the end repeats, as a loop
/// in the text would). Documents, retrieved passages, code edits and
/// summaries repeat their input, so these are often right, and cost nothing.
#[derive(Clone, Debug)]
pub struct PromptLookup {
    /// Longest suffix matched.
    pub max_ngram: usize,
    /// Shortest suffix matched.
    pub min_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            max_ngram: 3,
            min_ngram: 2,
        }
    }
}

impl<B: Backend> Drafter<B> for PromptLookup {
    fn propose(&mut self, _: &mut Engine<B>, rows: &mut [DraftRow<'_, B>]) -> Result<()> {
        for row in rows {
            row.proposal.tokens = self.lookup(row.history, row.count);
        }
        Ok(())
    }
}

impl PromptLookup {
    /// Up to `count` tokens that followed the latest earlier occurrence of
    /// `history`'s last n tokens.
    pub fn lookup(&self, history: &[u32], count: usize) -> Vec<u32> {
        let len = history.len();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if len <= n || count == 0 {
                continue;
            }
            let tail = &history[len - n..];
            // Occurrences that end before the tail itself, latest first.
            if let Some(start) = (0..len - n).rev().find(|&s| &history[s..s + n] == tail) {
                // Copied as an overlapping copy is: past the end of the
                // history, the proposal repeats itself (a loop continues).
                let from = start + n;
                let mut proposal: Vec<u32> = Vec::with_capacity(count);
                for at in from..from + count {
                    let token = match at < len {
                        true => history[at],
                        false => proposal[at - len],
                    };
                    proposal.push(token);
                }
                return proposal;
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_continues_the_latest_longest_match() {
        let lookup = PromptLookup {
            min_ngram: 1,
            ..PromptLookup::default()
        };
        // "5 6 7" occurred before, followed by 8 9; "7" alone was later followed by 1.
        let history = [5, 6, 7, 8, 9, 7, 1, 2, 5, 6, 7];
        assert_eq!(lookup.lookup(&history, 2), [8, 9]);
        assert_eq!(lookup.lookup(&history, 5), [8, 9, 7, 1, 2]);
        assert_eq!(lookup.lookup(&[3, 7, 1, 2, 7], 3), [1, 2, 7]);
        assert!(lookup.lookup(&[1, 2, 3], 4).is_empty());
        // A match that ends near the end continues the loop it found.
        assert_eq!(lookup.lookup(&[1, 2, 1, 2, 1], 4), [2, 1, 2, 1]);
        assert_eq!(lookup.lookup(&[4, 5, 5, 5], 3), [5, 5, 5]);
        assert!(lookup.lookup(&history, 0).is_empty());
        // By default one token in common is too weak a hint.
        assert!(PromptLookup::default()
            .lookup(&[3, 7, 1, 2, 7], 3)
            .is_empty());
    }
}
