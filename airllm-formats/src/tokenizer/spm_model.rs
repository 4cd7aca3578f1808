//! SentencePiece's `tokenizer.model` (ChatGLM, Baichuan): the protobuf
//! `ModelProto`, read with `prost`, and what it says about pieces and text
//! handling, as a [`Vocabulary`] and [`SpmText`] for the SentencePiece builder.

use std::path::Path;

use prost::Message;
use tokenizers::normalizers::precompiled::Precompiled;

use super::sentencepiece::{SpmModel, SpmText};
use super::Vocabulary;
use crate::{FormatError, Result};

/// `sentencepiece.ModelProto`, the fields a tokenizer needs.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, prost::Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
}

/// `sentencepiece.TrainerSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "22")]
    split_by_whitespace: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    bos_id: Option<i32>,
}

/// `sentencepiece.NormalizerSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
}

/// Piece types of `ModelProto.SentencePiece.Type`.
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Model types of `TrainerSpec.ModelType`.
const UNIGRAM: i32 = 1;
const BPE: i32 = 2;

/// A SentencePiece model file, read.
pub struct SpmFile {
    /// Its pieces, scores, special pieces, unknown and BOS ids.
    pub vocab: Vocabulary,
    /// How it segments.
    pub model: SpmModel,
    /// How it treats text before segmenting.
    pub text: SpmText,
}

/// Whether `bytes` look like a tiktoken vocabulary (base64 token, space,
/// rank, per line) rather than a protobuf.
pub fn is_tiktoken(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    let token_like = parts.next().is_some_and(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    });
    token_like
        && parts
            .next()
            .is_some_and(|r| r.trim().parse::<u64>().is_ok())
}

/// Reads the SentencePiece model at `path`.
pub fn read(path: &Path) -> Result<SpmFile> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    let bad = |detail: String| FormatError::NotAModel {
        path: path.to_path_buf(),
        detail,
    };
    let proto = ModelProto::decode(bytes.as_slice())
        .map_err(|e| bad(format!("is not a SentencePiece model ({e})")))?;
    if proto.pieces.is_empty() {
        return Err(bad("is a SentencePiece model without pieces".into()));
    }
    let trainer = proto.trainer_spec.unwrap_or_default();
    let normalizer = proto.normalizer_spec.unwrap_or_default();
    let model = match trainer.model_type.unwrap_or(UNIGRAM) {
        UNIGRAM => SpmModel::Unigram,
        BPE => SpmModel::Bpe,
        other => {
            return Err(bad(format!(
                "is a SentencePiece model of type {other}; supported: 1 (unigram), 2 (BPE)"
            )))
        }
    };
    let of_type = |wanted: i32| -> Vec<u32> {
        (0..proto.pieces.len() as u32)
            .filter(|&id| proto.pieces[id as usize].r#type == Some(wanted))
            .collect()
    };
    let id = |value: Option<i32>, default: i32| {
        u32::try_from(value.unwrap_or(default))
            .ok()
            .filter(|&id| (id as usize) < proto.pieces.len())
    };
    let vocab = Vocabulary {
        tokens: proto
            .pieces
            .iter()
            .map(|p| p.piece.clone().unwrap_or_default())
            .collect(),
        merges: Vec::new(),
        scores: proto
            .pieces
            .iter()
            .map(|p| p.score.unwrap_or(0.0))
            .collect(),
        special: of_type(CONTROL),
        user_defined: of_type(USER_DEFINED),
        bos: id(trainer.bos_id, 1),
        unk: id(trainer.unk_id, 0).or(of_type(UNKNOWN).first().copied()),
        prefix: Vec::new(),
    };
    let charsmap = normalizer.precompiled_charsmap.unwrap_or_default();
    let identity = normalizer.name.as_deref() == Some("identity");
    if !identity && !charsmap.is_empty() && Precompiled::from(&charsmap).is_err() {
        return Err(bad(
            "is a SentencePiece model whose normalization rules (precompiled_charsmap) are corrupt"
                .into(),
        ));
    }
    let text = SpmText {
        add_dummy_prefix: normalizer.add_dummy_prefix.unwrap_or(true),
        remove_extra_whitespaces: normalizer.remove_extra_whitespaces.unwrap_or(true),
        precompiled_charsmap: (!identity && !charsmap.is_empty()).then_some(charsmap),
        split_by_whitespace: trainer.split_by_whitespace.unwrap_or(true),
        byte_fallback: trainer.byte_fallback.unwrap_or(false),
    };
    Ok(SpmFile { vocab, model, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiktoken_files_are_told_from_protobufs() {
        assert!(is_tiktoken(b"IQ== 0\nIg== 1\n"));
        assert!(!is_tiktoken(
            b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02"
        ));
    }

    #[test]
    fn garbage_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.model");
        std::fs::write(&path, b"\xff\xff\xff\xff").unwrap();
        let err = read(&path).err().expect("refused").to_string();
        assert!(err.contains("tokenizer.model"), "{err}");
    }
}
