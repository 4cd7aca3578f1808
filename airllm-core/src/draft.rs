//! Drafting for speculative decoding: a drafter proposes the tokens a
//! sequence is likely to continue with, and one pass of the model checks
//! them all (the scheduler keeps those the model would have chosen itself).

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
}

impl DraftSettings {
    /// A drafter for one sequence.
    pub fn drafter(&self) -> Box<dyn Drafter> {
        match self.kind {
            DraftKind::PromptLookup => Box::new(PromptLookup::default()),
        }
    }
}

/// Proposes tokens likely to follow a sequence.
pub trait Drafter: Send {
    /// Up to `count` tokens likely to follow `history` (fewer, or none,
    /// when it has no guess).
    fn propose(&mut self, history: &[u32], count: usize) -> Vec<u32>;
}

/// Proposals from the sequence itself (prompt lookup decoding): the tokens
/// that followed the latest earlier occurrence of its last `n` tokens, the
/// longest `n` first. Documents, retrieved passages, code edits and
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

impl Drafter for PromptLookup {
    fn propose(&mut self, history: &[u32], count: usize) -> Vec<u32> {
        let len = history.len();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if len <= n || count == 0 {
                continue;
            }
            let tail = &history[len - n..];
            // Occurrences that end before the tail itself, latest first.
            if let Some(start) = (0..len - n).rev().find(|&s| &history[s..s + n] == tail) {
                let from = start + n;
                return history[from..(from + count).min(len)].to_vec();
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
        let mut lookup = PromptLookup {
            min_ngram: 1,
            ..PromptLookup::default()
        };
        // "5 6 7" occurred before, followed by 8 9; "7" alone was later followed by 1.
        let history = [5, 6, 7, 8, 9, 7, 1, 2, 5, 6, 7];
        assert_eq!(lookup.propose(&history, 2), [8, 9]);
        assert_eq!(lookup.propose(&history, 5), [8, 9, 7, 1, 2]);
        assert_eq!(lookup.propose(&[3, 7, 1, 2, 7], 3), [1, 2, 7]);
        assert!(lookup.propose(&[1, 2, 3], 4).is_empty());
        assert!(lookup.propose(&history, 0).is_empty());
        // By default one token in common is too weak a hint.
        assert!(PromptLookup::default()
            .propose(&[3, 7, 1, 2, 7], 3)
            .is_empty());
    }
}
