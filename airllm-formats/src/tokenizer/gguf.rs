//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.

use serde_json::Value;
use tokenizers::Tokenizer;

use super::sentencepiece::{SpmModel, SpmText};
use super::{byte_level, from_json, sentencepiece, Vocabulary};
use crate::gguf::{GgufFile, MetaValue};
use crate::{FormatError, Result};

/// llama.cpp's token types.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

fn array<'a>(file: &'a GgufFile, key: &str) -> &'a [MetaValue] {
    file.get(key).and_then(MetaValue::as_array).unwrap_or(&[])
}

/// The vocabulary in the file's metadata.
pub fn vocabulary(file: &GgufFile, default_add_bos: bool) -> Result<Vocabulary> {
    let strings = |key: &str| -> Vec<String> {
        array(file, key)
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    if tokens.is_empty() {
        return Err(FormatError::NotAModel {
            path: file.path.clone(),
            detail: "it holds no tokenizer (no tokenizer.ggml.tokens); pass --prompt-ids instead of text".into(),
        });
    }
    let types: Vec<u64> = array(file, "tokenizer.ggml.token_type")
        .iter()
        .map(|v| v.as_u64().unwrap_or(1))
        .collect();
    let with_type = |wanted: u64| {
        types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == wanted)
            .map(|(id, _)| id as u32)
            .collect::<Vec<_>>()
    };
    let id = |key: &str| {
        file.get(&format!("tokenizer.ggml.{key}"))
            .and_then(MetaValue::as_u64)
            .map(|id| id as u32)
            .filter(|&id| (id as usize) < tokens.len())
    };
    let bos = id("bos_token_id");
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(default_add_bos);
    Ok(Vocabulary {
        merges: strings("tokenizer.ggml.merges"),
        scores: array(file, "tokenizer.ggml.scores")
            .iter()
            .map(|v| v.as_f64().unwrap_or(0.0) as f32)
            .collect(),
        special: with_type(CONTROL),
        user_defined: with_type(USER_DEFINED),
        bos,
        unk: id("unknown_token_id"),
        prefix: bos.filter(|_| add_bos).into_iter().collect(),
        tokens,
    })
}

/// The tokenizer.json the file's metadata describes.
pub fn tokenizer_json(file: &GgufFile) -> Result<Value> {
    match file.string("tokenizer.ggml.model") {
        Some("gpt2") => Ok(byte_level::tokenizer_json(
            &vocabulary(file, false)?,
            file.string("tokenizer.ggml.pre"),
        )),
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        Some("llama") => Ok(sentencepiece::tokenizer_json(
            &vocabulary(file, true)?,
            SpmModel::Bpe,
            &SpmText::LLAMA,
        )),
        other => Err(FormatError::UnsupportedGguf {
            path: file.path.clone(),
            detail: format!(
                "tokenizer.ggml.model is {other:?}; tokenizers built from GGUF: gpt2 (byte-level BPE), llama (SentencePiece)"
            ),
        }),
    }
}

/// The tokenizer the file's metadata describes.
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    from_json(&tokenizer_json(file)?, &file.path)
}
