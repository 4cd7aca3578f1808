//! tiktoken vocabularies (Qwen-1's `qwen.tiktoken`, GLM-4's
//! `tokenizer.model`): one `base64-token rank` per line, merged by rank over
//! pieces a regex splits off, with the family's special tokens after the
//! ranks. Built as a byte-level BPE whose merges are implied by the ranks.

use std::path::Path;

use airllm_core::family::TiktokenHints;
use base64::Engine as _;
use serde_json::Value;

use super::byte_level::{self, byte_alphabet};
use super::sentencepiece::merges_from_scores;
use super::Vocabulary;
use crate::{FormatError, Result};

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

/// The tokenizer.json of `ranks` with the specials `family` adds.
pub fn tokenizer_json(ranks: &[Vec<u8>], family: &TiktokenHints) -> Value {
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
    let specials = family.specials.all();
    let id_of = |name: &str| {
        specials
            .iter()
            .position(|s| s == name)
            .map(|i| first_special + i as u32)
    };
    let prefix = family
        .specials
        .prefix
        .iter()
        .filter_map(|t| id_of(t))
        .collect();
    tokens.extend(specials.iter().cloned());
    let vocab = Vocabulary {
        merges,
        special: (first_special..tokens.len() as u32).collect(),
        prefix,
        tokens,
        ..Vocabulary::default()
    };
    byte_level::tokenizer_json(&vocab, Some(family.pre))
}
