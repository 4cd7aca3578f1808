//! Teacher-forced scoring of a text: how well a model predicts each next
//! token (perplexity), and, beside a reference model on the same text, how
//! far its next-token distributions are from the reference's (mean KL
//! divergence) and how often both rank the same token first (top-1
//! agreement). What `airllm eval` reports, to check a compressed model
//! against the one it was made from.

use burn::tensor::backend::Backend;

use crate::{Engine, Error, Result};

/// Sums over the scored positions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    tokens: u64,
    nll: f64,
    reference: Option<ReferenceSums>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ReferenceSums {
    nll: f64,
    kl: f64,
    agreements: u64,
}

/// The figures of [`Scores`]; the reference's are `None` without one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScoreReport {
    /// Positions scored (each predicts the token after it).
    pub tokens: u64,
    /// exp of the mean negative log-likelihood of the text.
    pub perplexity: f64,
    /// The reference model's perplexity on the same positions.
    pub reference_perplexity: Option<f64>,
    /// `perplexity / reference_perplexity`.
    pub perplexity_ratio: Option<f64>,
    /// Mean over positions of KL(reference ‖ model), in nats.
    pub mean_kl: Option<f64>,
    /// Share of positions where both models rank the same token first.
    pub top1_agreement: Option<f64>,
}

/// Log-probabilities of `logits` (softmax in f64).
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&x| x as f64 - log_z).collect()
}

/// The first index of the largest logit.
fn top1(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

impl Scores {
    /// Scores one position: `logits` are the model's for the token that
    /// follows, `target` the text's; `reference` the reference model's
    /// logits at the same position (with a reference, give them at every
    /// position).
    pub fn add(&mut self, logits: &[f32], target: u32, reference: Option<&[f32]>) {
        let model = log_softmax(logits);
        self.tokens += 1;
        self.nll -= model[target as usize];
        if let Some(reference_logits) = reference {
            let theirs = log_softmax(reference_logits);
            let kl: f64 = theirs
                .iter()
                .zip(&model)
                .map(|(r, m)| r.exp() * (r - m))
                .sum();
            let sums = self.reference.get_or_insert_with(Default::default);
            sums.nll -= theirs[target as usize];
            sums.kl += kl.max(0.0);
            sums.agreements += u64::from(top1(logits) == top1(reference_logits));
        }
    }

    /// The figures so far.
    pub fn report(&self) -> ScoreReport {
        let n = self.tokens.max(1) as f64;
        let perplexity = (self.nll / n).exp();
        let reference_perplexity = self.reference.as_ref().map(|r| (r.nll / n).exp());
        ScoreReport {
            tokens: self.tokens,
            perplexity,
            reference_perplexity,
            perplexity_ratio: reference_perplexity.map(|r| perplexity / r),
            mean_kl: self.reference.as_ref().map(|r| r.kl / n),
            top1_agreement: self.reference.as_ref().map(|r| r.agreements as f64 / n),
        }
    }
}

/// Scores `tokens` with `model` (and `reference`, if given) window by
/// window: each window of up to `window` tokens is one prompt, run in
/// prefill chunks of `chunk`, and every position but its last predicts the
/// token after it. The two models take turns per window, so each holds one
/// window's logits at a time.
pub fn score_text<B: Backend>(
    model: &mut Engine<B>,
    mut reference: Option<&mut Engine<B>>,
    tokens: &[u32],
    window: usize,
    chunk: usize,
) -> Result<Scores> {
    if tokens.len() < 2 {
        return Err(Error::Request(format!(
            "the text has {} token(s); scoring needs at least 2",
            tokens.len()
        )));
    }
    let window = window.max(2);
    let mut scores = Scores::default();
    for start in (0..tokens.len() - 1).step_by(window - 1) {
        let ids = &tokens[start..(start + window).min(tokens.len())];
        let ours = model.prompt_logits(ids, chunk)?;
        let theirs = match reference.as_deref_mut() {
            Some(engine) => Some(engine.prompt_logits(ids, chunk)?),
            None => None,
        };
        for (position, &target) in ids.iter().enumerate().skip(1) {
            let at = position - 1;
            let reference_logits = theirs.as_ref().map(|t| t[at].as_slice());
            scores.add(&ours[at], target, reference_logits);
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn uniform_logits_score_the_vocabulary_size() {
        let mut scores = Scores::default();
        for target in 0..4 {
            scores.add(&[0.5; 4], target, None);
        }
        let report = scores.report();
        assert_eq!(report.tokens, 4);
        assert!(close(report.perplexity, 4.0), "{report:?}");
        assert_eq!(report.mean_kl, None);
    }

    #[test]
    fn a_model_against_itself_and_against_another() {
        let mut same = Scores::default();
        let logits = [2.0, -1.0, 0.5];
        same.add(&logits, 0, Some(&logits));
        let report = same.report();
        assert_eq!(report.perplexity_ratio, Some(1.0));
        assert_eq!(report.mean_kl, Some(0.0));
        assert_eq!(report.top1_agreement, Some(1.0));

        // p = (0.5, 0.5) against the reference's q = (0.8, 0.2).
        let (p, q) = ([0.0f32, 0.0], [(0.8f32 / 0.2).ln(), 0.0]);
        let mut other = Scores::default();
        other.add(&p, 0, Some(&q));
        let report = other.report();
        let kl = 0.8 * (0.8f64 / 0.5).ln() + 0.2 * (0.2f64 / 0.5).ln();
        assert!(close(report.mean_kl.unwrap(), kl), "{report:?}");
        assert!(close(report.perplexity, 2.0), "{report:?}");
        assert!(close(report.reference_perplexity.unwrap(), 1.0 / 0.8));
        assert!(close(report.perplexity_ratio.unwrap(), 1.6));
        // A tie ranks the first token first, as the reference does.
        assert_eq!(report.top1_agreement, Some(1.0));
        other.add(&[0.0, 1.0], 1, Some(&q));
        assert_eq!(other.report().top1_agreement, Some(0.5));
    }
}
