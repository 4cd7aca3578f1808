//! Tokenizers of model directories that ship no `tokenizer.json`: a
//! SentencePiece `tokenizer.model` (ChatGLM2/3, Baichuan) or a tiktoken
//! vocabulary (Qwen-1's `qwen.tiktoken`, GLM-4's `tokenizer.model`), with
//! the special tokens the family's descriptor says its own tokenizer adds.

use std::path::Path;

use airllm_core::family::TokenizerHints;
use serde_json::Value;

use super::sentencepiece;
use super::spm_model::{self, SpmFile};
use super::tiktoken;
use crate::{FormatError, Result};

/// The tokenizer.json of the vocabulary files in `dir`, if it has any;
/// `hints` are those of the model's family (`None` for a family that is
/// not known), `tokenizer_config` its tokenizer_config.json (`null` when
/// absent).
pub fn tokenizer_json(
    dir: &Path,
    hints: Option<&TokenizerHints>,
    tokenizer_config: &Value,
) -> Result<Option<Value>> {
    let tiktoken = hints.and_then(|h| h.tiktoken.as_ref());
    if let Some(hint) = tiktoken.filter(|t| t.file != "tokenizer.model") {
        let file = dir.join(hint.file);
        if file.is_file() {
            let ranks = tiktoken::read_ranks(&file)?;
            return Ok(Some(tiktoken::tokenizer_json(&ranks, hint)));
        }
    }
    let model = dir.join("tokenizer.model");
    if !model.is_file() {
        return Ok(None);
    }
    let head = read_head(&model)?;
    if spm_model::is_tiktoken(&head) {
        let Some(hint) = tiktoken.filter(|t| t.file == "tokenizer.model") else {
            return Err(FormatError::NotAModel {
                path: model,
                detail: "is a tiktoken vocabulary, which this model's family does not ship as tokenizer.model (GLM-4 does); add the model's tokenizer.json".into(),
            });
        };
        let ranks = tiktoken::read_ranks(&model)?;
        return Ok(Some(tiktoken::tokenizer_json(&ranks, hint)));
    }
    let SpmFile {
        mut vocab,
        model: kind,
        text,
    } = spm_model::read(&model)?;
    match hints.and_then(|h| h.sentencepiece.as_ref()) {
        Some(specials) => {
            // ChatGLM's tokenizer numbers its own specials after the pieces
            // and puts some of them (`[gMASK] sop`) before every text.
            let first = vocab.tokens.len() as u32;
            let names = specials.all();
            vocab.prefix = specials
                .prefix
                .iter()
                .filter_map(|p| names.iter().position(|n| n == p))
                .map(|i| first + i as u32)
                .collect();
            vocab.tokens.extend(names);
            vocab.scores.resize(vocab.tokens.len(), 0.0);
            vocab.special.extend(first..vocab.tokens.len() as u32);
        }
        None => {
            // LlamaTokenizer and Baichuan's put BOS first unless told otherwise.
            let add_bos = tokenizer_config
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            vocab.prefix = vocab.bos.filter(|_| add_bos).into_iter().collect();
        }
    }
    Ok(Some(sentencepiece::tokenizer_json(&vocab, kind, &text)))
}

/// The first bytes of `path`, enough to tell a protobuf from text.
fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(256).read_to_end(&mut head))
        .map_err(|e| FormatError::io(path, e))?;
    Ok(head)
}
