//! Tokenizers of model directories that ship no `tokenizer.json`: a
//! SentencePiece `tokenizer.model` (ChatGLM2/3, Baichuan), a tiktoken
//! `qwen.tiktoken` (Qwen-1) or a tiktoken `tokenizer.model` (GLM-4), with
//! the special tokens each family's own tokenizer adds.

use std::path::Path;

use serde_json::Value;

use super::sentencepiece;
use super::spm_model::{self, SpmFile};
use super::tiktoken::{self, TiktokenFamily};
use crate::{FormatError, Result};

/// ChatGLM's special tokens, numbered after the SentencePiece pieces.
const CHATGLM_SPECIALS: [&str; 9] = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// Whether config.json names `model_type` or one of `architectures` first.
pub fn is_family(config: &Value, model_type: &str, architectures: &[&str]) -> bool {
    let first = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    config.get("model_type").and_then(Value::as_str) == Some(model_type)
        || first.is_some_and(|a| architectures.contains(&a))
}

/// Whether config.json describes a ChatGLM / GLM-4 model.
pub fn is_chatglm(config: &Value) -> bool {
    is_family(
        config,
        "chatglm",
        &["ChatGLMModel", "ChatGLMForConditionalGeneration"],
    )
}

/// The tokenizer.json of the vocabulary files in `dir`, if it has any;
/// `config` and `tokenizer_config` are the model's config.json and
/// tokenizer_config.json (`null` when absent).
pub fn tokenizer_json(
    dir: &Path,
    config: &Value,
    tokenizer_config: &Value,
) -> Result<Option<Value>> {
    let qwen = dir.join("qwen.tiktoken");
    if qwen.is_file() {
        let ranks = tiktoken::read_ranks(&qwen)?;
        return Ok(Some(tiktoken::tokenizer_json(
            &ranks,
            &TiktokenFamily::qwen(),
        )));
    }
    let model = dir.join("tokenizer.model");
    if !model.is_file() {
        return Ok(None);
    }
    let head = read_head(&model)?;
    if spm_model::is_tiktoken(&head) {
        if !is_chatglm(config) {
            return Err(FormatError::NotAModel {
                path: model,
                detail: "is a tiktoken vocabulary, which only GLM-4 (ChatGLMModel) ships as tokenizer.model; add the model's tokenizer.json".into(),
            });
        }
        let ranks = tiktoken::read_ranks(&model)?;
        return Ok(Some(tiktoken::tokenizer_json(
            &ranks,
            &TiktokenFamily::glm4(),
        )));
    }
    let SpmFile {
        mut vocab,
        model: kind,
        text,
    } = spm_model::read(&model)?;
    if is_chatglm(config) {
        // ChatGLM's tokenizer numbers its own specials after the pieces and
        // puts `[gMASK] sop` before every text.
        let first = vocab.tokens.len() as u32;
        vocab.tokens.extend(CHATGLM_SPECIALS.map(String::from));
        vocab.scores.resize(vocab.tokens.len(), 0.0);
        vocab.special.extend(first..vocab.tokens.len() as u32);
        vocab.prefix = vec![first + 1, first + 3];
    } else {
        // LlamaTokenizer and Baichuan's put BOS first unless told otherwise.
        let add_bos = tokenizer_config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        vocab.prefix = vocab.bos.filter(|_| add_bos).into_iter().collect();
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
