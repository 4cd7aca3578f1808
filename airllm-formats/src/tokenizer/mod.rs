//! Tokenizers: loaded from `tokenizer.json`, or built from a vocabulary
//! stored elsewhere (GGUF metadata today; the other families' SentencePiece
//! and tiktoken files come through the same builders). A builder writes the
//! tokenizer in the `tokenizer.json` schema and the `tokenizers` crate loads
//! it, so a built tokenizer can also be saved next to a split.

pub mod byte_level;
pub mod gguf;
pub mod sentencepiece;

use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::{FormatError, Result};

/// A vocabulary as a tokenizer source lists it.
#[derive(Clone, Debug, Default)]
pub struct Vocabulary {
    /// Token strings; a token's id is its index.
    pub tokens: Vec<String>,
    /// Merge rules `"left right"`, best first (empty when the source has none).
    pub merges: Vec<String>,
    /// Per-token scores (SentencePiece), if the source has them.
    pub scores: Vec<f32>,
    /// Ids of tokens that are matched whole in text and skipped when
    /// decoding with special tokens hidden (control tokens).
    pub special: Vec<u32>,
    /// Ids of tokens that are matched whole in text but are ordinary text.
    pub user_defined: Vec<u32>,
    /// The beginning-of-sequence token, if any.
    pub bos: Option<u32>,
    /// The unknown token, if any.
    pub unk: Option<u32>,
    /// Whether encoding puts BOS first.
    pub add_bos: bool,
}

impl Vocabulary {
    /// This vocabulary with `id` (if any) also matched whole as a special token.
    fn with_special(&self, id: Option<u32>) -> Vocabulary {
        let mut vocab = self.clone();
        vocab.special.extend(id);
        vocab
    }

    /// The `added_tokens` entries of the tokenizer.json schema.
    fn added_tokens(&self, usable: impl Fn(&str) -> bool) -> Vec<Value> {
        let entry = |id: u32, special: bool| {
            let content = &self.tokens[id as usize];
            usable(content).then(|| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
            })
        };
        let mut ids: Vec<(u32, bool)> = self.special.iter().map(|&id| (id, true)).collect();
        ids.extend(self.user_defined.iter().map(|&id| (id, false)));
        ids.sort_unstable();
        ids.dedup_by_key(|(id, _)| *id);
        ids.into_iter()
            .filter(|(id, _)| (*id as usize) < self.tokens.len())
            .filter_map(|(id, special)| entry(id, special))
            .collect()
    }

    /// The post-processor: BOS before the sequence when `add_bos` says so.
    fn post_processor(&self) -> Value {
        let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        match self.bos.filter(|_| self.add_bos) {
            Some(bos) => {
                let token = &self.tokens[bos as usize];
                let special = json!({"SpecialToken": {"id": token, "type_id": 0}});
                json!({"type": "TemplateProcessing",
                       "single": [special, sequence("A", 0)],
                       "pair": [special, sequence("A", 0), special, sequence("B", 1)],
                       "special_tokens": {token: {"id": token, "ids": [bos], "tokens": [token]}}})
            }
            None => json!({"type": "TemplateProcessing",
                           "single": [sequence("A", 0)],
                           "pair": [sequence("A", 0), sequence("B", 1)],
                           "special_tokens": {}}),
        }
    }
}

/// Loads a tokenizer written in the tokenizer.json schema.
pub fn from_json(value: &Value, source: &Path) -> Result<Tokenizer> {
    Tokenizer::from_str(&value.to_string()).map_err(|e| FormatError::NotAModel {
        path: source.to_path_buf(),
        detail: format!("cannot build its tokenizer: {e}"),
    })
}

/// Loads `tokenizer.json`.
pub fn from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| FormatError::NotAModel {
        path: path.to_path_buf(),
        detail: format!("cannot load the tokenizer: {e}"),
    })
}
