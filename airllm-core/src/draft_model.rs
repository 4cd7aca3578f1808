//! Drafting with a small model held resident beside the one it drafts for:
//! each sequence keeps a KV cache in the draft model, which first reads
//! what the sequence gained since its last proposals, then proposes one
//! token a pass. All drafting sequences share each pass of the draft.

use burn::tensor::backend::Backend;

use crate::draft::{DraftRow, Drafter};
use crate::sampling::Choice;
use crate::{Engine, Error, KvCache, Logits, Result};

/// Proposals from the engine's draft model ([`Engine::set_draft`]), drawn
/// with each sequence's sampling settings: its most likely token when
/// greedy, else a draw whose distribution goes with the token, for
/// speculative sampling's test.
pub struct DraftModel {
    /// Most tokens of one sequence the draft reads in one pass.
    pub chunk: usize,
}

/// A row still reading or proposing: its index and the tokens it feeds next.
struct Pending {
    row: usize,
    feed: Vec<u32>,
    /// Most tokens it proposes.
    count: usize,
    /// Its history and what it proposed so far (the sampler's context).
    seen: Vec<u32>,
}

impl<B: Backend> Drafter<B> for DraftModel {
    fn propose(&mut self, engine: &mut Engine<B>, rows: &mut [DraftRow<'_, B>]) -> Result<()> {
        let target_vocab = engine.arch().dims().vocab;
        let draft = engine.draft_mut().ok_or_else(|| {
            Error::Request(
                "drafting with a model needs a draft model; load one with --draft MODEL".into(),
            )
        })?;
        let dims = draft.arch().dims().clone();
        let chunk = self.chunk.max(1);
        let mut pending: Vec<Pending> = Vec::new();
        for (index, row) in rows.iter_mut().enumerate() {
            let count = row
                .count
                .min(dims.max_positions.saturating_sub(row.history.len()));
            let room = row.room.min(dims.max_positions);
            let cache = row
                .cache
                .get_or_insert_with(|| KvCache::new(dims.layers, room));
            let feed = row.history[cache.positions()..].to_vec();
            // A token the draft cannot read (its vocabulary is narrower)
            // ends this sequence's drafting.
            if count > 0 && !feed.is_empty() && feed.iter().all(|&t| (t as usize) < dims.vocab) {
                pending.push(Pending {
                    row: index,
                    feed,
                    count,
                    seen: row.history.to_vec(),
                });
            }
        }
        while !pending.is_empty() {
            // Rows with more than a chunk to read read a chunk and propose
            // nothing yet; the others read the rest and propose a token.
            let inputs: Vec<Vec<u32>> = pending
                .iter()
                .map(|p| p.feed[..p.feed.len().min(chunk)].to_vec())
                .collect();
            let tails: Vec<usize> = pending
                .iter()
                .map(|p| usize::from(p.feed.len() <= chunk))
                .collect();
            let mut caches: Vec<&mut KvCache<B>> = rows
                .iter_mut()
                .enumerate()
                .filter(|(index, _)| pending.iter().any(|p| p.row == *index))
                .map(|(_, row)| row.cache.as_mut().expect("given above"))
                .collect();
            let logits = draft.forward(&inputs, &mut caches, Logits::Tails(tails.clone()))?;
            let mut logits = logits.unwrap_or_default().into_iter();
            let mut next = Vec::with_capacity(pending.len());
            for (mut p, tail) in pending.into_iter().zip(tails) {
                if tail == 0 {
                    p.feed.drain(..chunk);
                    next.push(p);
                    continue;
                }
                let mut logits = logits.next().expect("one logit row per row asked");
                let row = &mut rows[p.row];
                let token = draw(row, &p.seen, &mut logits);
                if token as usize >= target_vocab {
                    row.proposal
                        .probabilities
                        .truncate(row.proposal.tokens.len());
                    continue;
                }
                row.proposal.tokens.push(token);
                p.seen.push(token);
                if row.proposal.tokens.len() < p.count {
                    p.feed = vec![token];
                    next.push(p);
                }
            }
            pending = next;
        }
        Ok(())
    }
}

/// The draft's next token for `row` from `logits`, with the sequence's
/// sampling settings over `seen` (its history and what it proposed so
/// far); a random draw keeps its distribution in the proposal.
fn draw<B: Backend>(row: &mut DraftRow<'_, B>, seen: &[u32], logits: &mut [f32]) -> u32 {
    match row.sampler.choice(logits, seen, row.prompt) {
        Choice::Token(token) => token,
        Choice::Probabilities(q) => {
            let token = row.sampler.draw(&q);
            row.proposal.probabilities.push(q);
            token
        }
    }
}
