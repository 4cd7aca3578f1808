//! Token sampling: greedy, temperature, top-k, top-p and repetition penalty,
//! applied in the order Hugging Face's `generate` applies them, after
//! OpenAI's presence and frequency penalties.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1: no limit).
    pub top_p: f32,
    /// Penalty > 1 discourages tokens already in the sequence (1: none).
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated so far (OpenAI's
    /// `presence_penalty`; 0: none).
    pub presence_penalty: f32,
    /// Subtracted from the logit of each token generated so far, once per
    /// time it was (OpenAI's `frequency_penalty`; 0: none).
    pub frequency_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// Picks tokens for one sequence.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

/// What the sampling settings make of one position's logits.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Greedy: this token, with certainty.
    Token(u32),
    /// A draw from these probabilities, one per token (zero outside top-k
    /// and top-p).
    Probabilities(Vec<f32>),
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Sampler { config, rng }
    }

    /// Chooses the next token from `logits`, given the tokens so far
    /// (`history`, of which the first `prompt` are the prompt).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], prompt: usize) -> u32 {
        match self.choice(logits, history, prompt) {
            Choice::Token(token) => token,
            Choice::Probabilities(probabilities) => self.draw(&probabilities),
        }
    }

    /// The distribution the next token is drawn from, given the tokens so
    /// far (`history`, of which the first `prompt` are the prompt): the
    /// penalties, then greedy, or temperature, top-k and top-p. `logits`
    /// is left penalised.
    pub fn choice(&self, logits: &mut [f32], history: &[u32], prompt: usize) -> Choice {
        let (presence, frequency) = (self.config.presence_penalty, self.config.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            let mut generated: HashMap<u32, u32> = HashMap::new();
            for &token in &history[prompt.min(history.len())..] {
                *generated.entry(token).or_default() += 1;
            }
            for (token, count) in generated {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= presence + frequency * count as f32;
                }
            }
        }
        let penalty = self.config.repetition_penalty;
        if penalty != 1.0 {
            for &token in history {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        if self.config.temperature <= 0.0 {
            return Choice::Token(argmax(logits));
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / self.config.temperature))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.config.top_k > 0 {
            candidates.truncate(self.config.top_k);
        }
        let max = candidates[0].1;
        let mut kept: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = kept.iter().sum();
        kept.iter_mut().for_each(|p| *p /= total);
        if self.config.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = kept
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= self.config.top_p
                })
                .map_or(kept.len(), |i| i + 1);
            kept.truncate(keep);
        }
        let total: f32 = kept.iter().sum();
        let mut probabilities = vec![0.0; logits.len()];
        for (candidate, p) in candidates.iter().zip(&kept) {
            probabilities[candidate.0 as usize] = p / total;
        }
        Choice::Probabilities(probabilities)
    }

    /// A token drawn from `probabilities` (which sum to 1).
    pub fn draw(&mut self, probabilities: &[f32]) -> u32 {
        let mut draw = self.uniform();
        let mut last = 0;
        for (token, &p) in probabilities.iter().enumerate() {
            if p > 0.0 {
                if draw < p {
                    return token as u32;
                }
                draw -= p;
                last = token;
            }
        }
        last as u32
    }

    /// A number drawn uniformly from [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
}

/// Speculative sampling's test of a drafted token: the probability of
/// keeping `token`, drawn from the draft's `q`, when the model's
/// distribution is `p`: min(1, p / q).
pub fn acceptance(p: &[f32], q: &[f32], token: u32) -> f32 {
    let (p, q) = (
        p.get(token as usize).copied().unwrap_or(0.0),
        q.get(token as usize).copied().unwrap_or(0.0),
    );
    match q > 0.0 {
        true => (p / q).min(1.0),
        false => 1.0,
    }
}

/// Speculative sampling's distribution after a rejection: max(0, p − q),
/// normalised (`q` may be narrower than `p`: its missing tokens have
/// probability 0). Drawing a drafted token from `q`, keeping it with
/// [`acceptance`] and else drawing from this gives a token distributed as
/// `p`. When nothing is left (p = q up to rounding) it is `p`.
pub fn residual(p: &[f32], q: &[f32]) -> Vec<f32> {
    let mut rest: Vec<f32> = p
        .iter()
        .enumerate()
        .map(|(i, &p)| (p - q.get(i).copied().unwrap_or(0.0)).max(0.0))
        .collect();
    let total: f32 = rest.iter().sum();
    if total <= 0.0 {
        return p.to_vec();
    }
    rest.iter_mut().for_each(|r| *r /= total);
    rest
}

/// How likely a sampled token was: its natural-log probability under the
/// model's distribution (the raw logits' softmax, before any sampling
/// setting), and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    /// The sampled token's log-probability.
    pub logprob: f32,
    /// Up to the number asked of the most likely tokens and their
    /// log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// The log-probability of `token` and of the `top` most likely tokens
    /// under `logits`.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_total = max + sum.ln() as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || best.last().is_some_and(|b| l > b.1) {
                let at = best.partition_point(|b| b.1 >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
        Logprobs {
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |l| l - log_total),
            top: best.into_iter().map(|(t, l)| (t, l - log_total)).collect(),
        }
    }
}

/// Index of the first largest value.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[], 0), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [1.0, 1.5, 0.0], &[1], 1), 0);
    }

    #[test]
    fn presence_and_frequency_penalties_count_the_tokens_picked() {
        let mut s = Sampler::new(SamplingConfig {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        });
        // Prompt tokens are not penalised: only the generated ones.
        assert_eq!(s.sample(&mut [1.0, 1.6, 0.0], &[1, 1, 1], 3), 1);
        // 1.6 - 0.75 < 1.0.
        assert_eq!(s.sample(&mut [1.0, 1.6, 0.0], &[1, 1, 1, 1], 3), 0);
        // Token 1 once (-0.75 → 1.85), token 0 once (-0.75 → 0.3).
        assert_eq!(s.sample(&mut [1.05, 2.6, 0.0], &[1, 0], 0), 1);
        // Token 1 twice: 2.6 - 0.5 - 0.5 = 1.6; token 0: 2.3 - 0.75 = 1.55.
        assert_eq!(s.sample(&mut [2.3, 2.6, 0.0], &[1, 0, 1], 0), 1);
        // Token 1 three times: 2.6 - 1.25 = 1.35 < 2.3 - 0.75.
        assert_eq!(s.sample(&mut [2.3, 2.6, 0.0], &[1, 0, 1, 1], 0), 0);
    }

    #[test]
    fn top_k_and_top_p_leave_the_kept_tokens_probabilities() {
        let s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 3,
            top_p: 0.6,
            ..Default::default()
        });
        let logits = [2.0f32.ln(), 0.0, 3.0f32.ln(), 4.0f32.ln()];
        // Top 3: 4, 3, 2 (of 9); top-p 0.6 keeps 4 and 3 (7/9 ≥ 0.6).
        let Choice::Probabilities(p) = s.choice(&mut logits.clone(), &[], 0) else {
            panic!("temperature 1 draws");
        };
        let expected = [0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0];
        assert!(
            p.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{p:?}"
        );
    }

    /// The chance that speculative sampling outputs token x: drafted as x
    /// and kept, or drafted as anything, rejected, and x drawn from the
    /// residual.
    fn output_distribution(p: &[f32], q: &[f32]) -> Vec<f32> {
        let rejected: f32 = (0..q.len())
            .map(|t| q[t] * (1.0 - acceptance(p, q, t as u32)))
            .sum();
        let rest = residual(p, q);
        (0..p.len())
            .map(|x| {
                let kept = q.get(x).map_or(0.0, |&qx| qx * acceptance(p, q, x as u32));
                kept + rejected * rest[x]
            })
            .collect()
    }

    #[test]
    fn speculative_sampling_keeps_the_models_distribution() {
        let p = [0.5f32, 0.25, 0.125, 0.125];
        let q = [0.25f32, 0.5, 0.25, 0.0];
        assert_eq!(acceptance(&p, &q, 0), 1.0);
        assert_eq!(acceptance(&p, &q, 1), 0.5);
        assert_eq!(acceptance(&p, &q, 2), 0.5);
        // max(0, p - q) = [0.25, 0, 0, 0.125], over 0.375.
        assert_eq!(residual(&p, &q), [2.0 / 3.0, 0.0, 0.0, 1.0 / 3.0]);
        // Rejected with 0.5·0.5 + 0.25·0.5 = 0.375: 0.25 + 0.375·2/3 = 0.5, …
        let out = output_distribution(&p, &q);
        assert!(
            out.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-6),
            "{out:?}"
        );
        // A draft narrower than the model (its logits end earlier).
        let q = [0.5f32, 0.5];
        let out = output_distribution(&p, &q);
        assert!(
            out.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-6),
            "{out:?}"
        );
        // The same distribution: every draft kept, nothing left over.
        assert_eq!(acceptance(&p, &p, 3), 1.0);
        assert_eq!(residual(&p, &p), p);
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_the_most_likely_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        let p = Logprobs::of(&logits, 2, 3);
        assert!((p.logprob - (2.0 - total.ln())).abs() < 1e-6);
        let tokens: Vec<u32> = p.top.iter().map(|t| t.0).collect();
        assert_eq!(tokens, [1, 3, 2]);
        assert!((p.top[0].1 - (3.0 - total.ln())).abs() < 1e-6);
        assert!(Logprobs::of(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_repeats() {
        let config = SamplingConfig {
            temperature: 0.8,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(config);
        assert_eq!(s.sample(&mut [0.0, 2.0, 1.0], &[], 0), 1);
        let config = SamplingConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draws = |c: &SamplingConfig| {
            let mut s = Sampler::new(c.clone());
            (0..20)
                .map(|_| s.sample(&mut [0.5, 0.4, 0.3, 0.2], &[], 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(&config), draws(&config));
        assert!(draws(&config).iter().any(|&t| t != 0));
    }
}
