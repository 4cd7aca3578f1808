//! tiktoken vocabularies (Qwen-1's `qwen.tiktoken`, GLM-4's
//! `tokenizer.model`): one `base64-token rank` per line, merged by rank over
//! pieces a regex splits off, with the family's special tokens after the
//! ranks. Built as a byte-level BPE whose merges are implied by the ranks.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use super::byte_level::{self, byte_alphabet};
use super::sentencepiece::merges_from_scores;
use super::Vocabulary;
use crate::{FormatError, Result};

/// What a family puts around a tiktoken vocabulary.
pub struct TiktokenFamily {
    /// The pre-tokenizer's name (see [`byte_level::split_regex`]).
    pub pre: &'static str,
    /// Special tokens, numbered from the end of the ranks on.
    pub specials: Vec<String>,
    /// Special tokens put before every encoded text.
    pub prefix: &'static [&'static str],
}

impl TiktokenFamily {
    /// Qwen-1 (`QWenLMHeadModel`): `<|endoftext|>`, `<|im_start|>`,
    /// `<|im_end|>` and 205 `<|extra_N|>`.
    pub fn qwen() -> Self {
        let mut specials: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(String::from)
            .to_vec();
        specials.extend((0..205).map(|i| format!("<|extra_{i}|>")));
        TiktokenFamily {
            pre: "qwen2",
            specials,
            prefix: &[],
        }
    }

    /// GLM-4 (`ChatGLMModel` with a tiktoken `tokenizer.model`).
    pub fn glm4() -> Self {
        let specials = [
            "<|endoftext|>",
            "[MASK]",
            "[gMASK]",
            "[sMASK]",
            "<sop>",
            "<eop>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|observation|>",
            "<|begin_of_image|>",
            "<|end_of_image|>",
            "<|begin_of_video|>",
            "<|end_of_video|>",
        ];
        TiktokenFamily {
            pre: "llama3",
            specials: specials.map(String::from).to_vec(),
            prefix: &["[gMASK]", "<sop>"],
        }
    }
}

/// The token bytes of the tiktoken file at `path`, by rank.
pub fn read_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let bad = |line: usize, detail: &str| FormatError::NotAModel {
        path: path.to_path_buf(),
        detail: format!("line {line} {detail}; a tiktoken file holds `base64-token rank` lines"),
    };
    let mut ranked: Vec<(u64, Vec<u8>)> = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (token, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad(index + 1, "has no rank"))?;
        let token = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| bad(index + 1, "has a token that is not base64"))?;
        let rank = rank
            .trim()
            .parse()
            .map_err(|_| bad(index + 1, "has a rank that is not a whole number"))?;
        ranked.push((rank, token));
    }
    ranked.sort_unstable_by_key(|(rank, _)| *rank);
    if let Some(gap) = (0..ranked.len()).find(|&i| ranked[i].0 != i as u64) {
        return Err(FormatError::NotAModel {
            path: path.to_path_buf(),
            detail: format!("its ranks skip or repeat rank {gap}; ranks run 0, 1, 2, ..."),
        });
    }
    Ok(ranked.into_iter().map(|(_, token)| token).collect())
}

/// The tokenizer.json of `ranks` for `family`.
pub fn tokenizer_json(ranks: &[Vec<u8>], family: &TiktokenFamily) -> Value {
    let alphabet = byte_alphabet();
    let mut tokens: Vec<String> = ranks
        .iter()
        .map(|bytes| bytes.iter().map(|&b| alphabet[b as usize]).collect())
        .collect();
    let scores: Vec<f32> = (0..tokens.len()).map(|rank| -(rank as f32)).collect();
    let merges = merges_from_scores(&tokens, &scores)
        .into_iter()
        .map(|(l, r)| format!("{l} {r}"))
        .collect();
    let first_special = tokens.len() as u32;
    tokens.extend(family.specials.iter().cloned());
    let id_of = |name: &str| {
        family
            .specials
            .iter()
            .position(|s| s == name)
            .map(|i| first_special + i as u32)
    };
    let vocab = Vocabulary {
        merges,
        special: (first_special..tokens.len() as u32).collect(),
        prefix: family.prefix.iter().filter_map(|t| id_of(t)).collect(),
        tokens,
        ..Vocabulary::default()
    };
    byte_level::tokenizer_json(&vocab, Some(family.pre))
}
