//! Tokenizers: loaded from `tokenizer.json`, or built from a vocabulary
//! stored elsewhere (GGUF metadata, SentencePiece `tokenizer.model`,
//! tiktoken files). A builder writes the
//! tokenizer in the `tokenizer.json` schema and the `tokenizers` crate loads
//! it, so a built tokenizer can also be saved next to a split.

pub mod byte_level;
pub mod gguf;
pub mod model_files;
pub mod sentencepiece;
pub mod spm_model;
pub mod tiktoken;

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
    /// Tokens encoding puts before the text (BOS, or ChatGLM's `[gMASK] sop`).
    pub prefix: Vec<u32>,
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

    /// The post-processor: [`Vocabulary::prefix`] before the sequence.
    fn post_processor(&self) -> Value {
        let prefix: Vec<&String> = self
            .prefix
            .iter()
            .filter_map(|&id| self.tokens.get(id as usize))
            .collect();
        let special = |token: &String| json!({"SpecialToken": {"id": token, "type_id": 0}});
        let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let mut single: Vec<Value> = prefix.iter().map(|t| special(t)).collect();
        single.push(sequence("A", 0));
        let mut pair = single.clone();
        pair.extend(prefix.iter().map(|t| special(t)));
        pair.push(sequence("B", 1));
        let special_tokens: serde_json::Map<String, Value> = self
            .prefix
            .iter()
            .zip(&prefix)
            .map(|(id, token)| {
                let entry = json!({"id": token, "ids": [id], "tokens": [token]});
                (token.to_string(), entry)
            })
            .collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair,
               "special_tokens": special_tokens})
    }
}

/// Loads a tokenizer written in the tokenizer.json schema.
pub fn from_json(value: &Value, source: &Path) -> Result<Tokenizer> {
    guarded(source, "build its tokenizer", || {
        Tokenizer::from_str(&value.to_string())
    })
}

/// Loads `tokenizer.json`. Its JSON syntax is checked first: the
/// `tokenizers` library panics on some syntax errors inside its parts.
pub fn from_file(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|source| {
        FormatError::Json {
            path: path.to_path_buf(),
            source,
        }
    })?;
    guarded(path, "load the tokenizer", || Tokenizer::from_bytes(&bytes))
}

/// What a tokenizer that the `tokenizers` library refused by panicking
/// is reported as (its own message is printed above the error).
pub const REFUSED_BY_LIBRARY: &str = "the tokenizers library failed on it";

/// Runs a `tokenizers` load, which panics on some malformed input instead
/// of returning an error, and names either failure after `source`.
fn guarded(
    source: &Path,
    what: &str,
    load: impl FnOnce() -> tokenizers::Result<Tokenizer>,
) -> Result<Tokenizer> {
    let detail = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
        Ok(Ok(tokenizer)) => return Ok(tokenizer),
        Ok(Err(e)) => e.to_string(),
        Err(_) => REFUSED_BY_LIBRARY.to_string(),
    };
    Err(FormatError::NotAModel {
        path: source.to_path_buf(),
        detail: format!("cannot {what}: {detail}"),
    })
}
