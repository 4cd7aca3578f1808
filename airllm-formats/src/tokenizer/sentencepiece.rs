//! SentencePiece vocabularies (GGUF's `tokenizer.ggml.model = llama`, and
//! `tokenizer.model` files): `▁` stands for a space and may be put before
//! the text, unknown characters may fall back to `<0xNN>` byte tokens, and
//! BPE merges come from the source or, when it has none, from the scores of
//! the vocabulary. The unknown token is matched whole like the control
//! tokens (as transformers' LlamaTokenizer does).

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{json, Value};

use super::Vocabulary;

/// How a SentencePiece vocabulary segments words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpmModel {
    /// Byte-pair merges, ranked by the merged piece's score.
    Bpe,
    /// The unigram language model: the segmentation of highest total score.
    Unigram,
}

/// How SentencePiece treats text before segmenting it, and after decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpmText {
    /// Put `▁` before the text.
    pub add_dummy_prefix: bool,
    /// Strip the text and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// The compiled normalization rules (NFKC and friends), if any.
    pub precompiled_charsmap: Option<Vec<u8>>,
    /// Pieces never span a `▁` other than their first character.
    pub split_by_whitespace: bool,
    /// Characters outside the vocabulary become `<0xNN>` byte pieces.
    pub byte_fallback: bool,
}

impl SpmText {
    /// What llama.cpp's `llama` vocabularies assume.
    pub const LLAMA: SpmText = SpmText {
        add_dummy_prefix: true,
        remove_extra_whitespaces: false,
        precompiled_charsmap: None,
        split_by_whitespace: false,
        byte_fallback: true,
    };

    fn normalizer(&self) -> Value {
        let mut steps = Vec::new();
        if let Some(charsmap) = &self.precompiled_charsmap {
            let encoded = base64::engine::general_purpose::STANDARD.encode(charsmap);
            steps.push(json!({"type": "Precompiled", "precompiled_charsmap": encoded}));
        }
        if self.remove_extra_whitespaces {
            steps.push(json!({"type": "Strip", "strip_left": true, "strip_right": true}));
            steps.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
        }
        match steps.is_empty() {
            true => Value::Null,
            false => json!({"type": "Sequence", "normalizers": steps}),
        }
    }

    fn decoder(&self) -> Value {
        let mut steps = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_dummy_prefix {
            steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({"type": "Sequence", "decoders": steps})
    }
}

/// Merges implied by a scored vocabulary: every split of a token into two
/// tokens, best score first (ties: longer left part first, then longer
/// right part), as transformers derives them.
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str, f32)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// The tokenizer.json of a SentencePiece vocabulary segmented by `model`,
/// its text treated as `text` says.
pub fn tokenizer_json(vocab: &Vocabulary, model: SpmModel, text: &SpmText) -> Value {
    let unk = vocab.unk.and_then(|id| vocab.tokens.get(id as usize));
    let model = match model {
        SpmModel::Bpe => bpe_model(vocab, unk, text.byte_fallback),
        SpmModel::Unigram => {
            let pieces: Vec<Value> = vocab
                .tokens
                .iter()
                .enumerate()
                .map(|(id, t)| json!([t, vocab.scores.get(id).copied().unwrap_or(0.0)]))
                .collect();
            json!({"type": "Unigram", "unk_id": vocab.unk, "vocab": pieces,
                   "byte_fallback": text.byte_fallback})
        }
    };
    let prepend = if text.add_dummy_prefix {
        "first"
    } else {
        "never"
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.with_special(vocab.unk).added_tokens(|_| true),
        "normalizer": text.normalizer(),
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": prepend, "split": text.split_by_whitespace},
        "post_processor": vocab.post_processor(),
        "decoder": text.decoder(),
        "model": model,
    })
}

/// The BPE model of a SentencePiece vocabulary.
fn bpe_model(vocab: &Vocabulary, unk: Option<&String>, byte_fallback: bool) -> Value {
    let merges: Vec<Value> = if vocab.merges.is_empty() {
        merges_from_scores(&vocab.tokens, &vocab.scores)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect()
    } else {
        vocab
            .merges
            .iter()
            .filter_map(|m| m.split_once(' '))
            .map(|(l, r)| json!([l, r]))
            .collect()
    };
    let ids: serde_json::Map<String, Value> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), json!(id)))
        .collect();
    json!({"type": "BPE", "dropout": null, "unk_token": unk,
           "continuing_subword_prefix": null, "end_of_word_suffix": null,
           "fuse_unk": true, "byte_fallback": byte_fallback, "ignore_merges": false,
           "vocab": ids, "merges": merges})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_scores_of_the_merged_tokens() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let merges = merges_from_scores(&tokens, &scores);
        let expected = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        assert_eq!(merges, expected);
    }
}
