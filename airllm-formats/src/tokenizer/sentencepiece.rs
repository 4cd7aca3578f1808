//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`): `▁` stands for
//! a space and is put before the text, unknown characters fall back to
//! `<0xNN>` byte tokens, and merges come from the source or, when it has
//! none, from the scores of the vocabulary. The unknown token is matched
//! whole like the control tokens (as transformers' LlamaTokenizer does).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::Vocabulary;

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

/// The tokenizer.json of a SentencePiece-style vocabulary.
pub fn tokenizer_json(vocab: &Vocabulary) -> Value {
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
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.with_special(vocab.unk).added_tokens(|_| true),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": vocab.post_processor(),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null,
                  "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": ids, "merges": merges}
    })
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
