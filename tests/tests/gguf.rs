//! GGUF input: every readable type dequantizes as the Python package `gguf`
//! does, tokenizers built from GGUF metadata equal the tokenizer.json a
//! byte-level vocabulary was made from and transformers' tokenizer for a
//! SentencePiece vocabulary, and bad files give named errors. (The GGUF model itself is
//! checked against transformers with the other fixtures in fixtures.rs.)

use std::path::{Path, PathBuf};

use airllm_core::{HostBytes, HostTensor};
use airllm_formats::{GgufFile, ModelDir};
use airllm_tests::*;

fn gguf_fixture(name: &str) -> PathBuf {
    fixtures_dir().join("gguf").join(name)
}

#[test]
fn every_type_dequantizes_as_the_gguf_package_does() {
    let file = GgufFile::open(&gguf_fixture("blocks.gguf")).unwrap();
    let bytes = std::fs::read(&file.path).unwrap();
    let expected = std::fs::read(gguf_fixture("blocks.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]
    );
    for tensor in &file.tensors {
        let host = HostTensor {
            name: tensor.name.clone(),
            kind: tensor.kind,
            shape: tensor.shape.clone(),
            bytes: HostBytes::from_vec(bytes[tensor.range.clone()].to_vec()),
        };
        let ours = host.to_f32().unwrap();
        let theirs: Vec<f32> = expected
            .tensor(&tensor.name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(tensor.shape, [2, 256], "{}", tensor.name);
        assert!(
            theirs.iter().any(|v| *v != 0.0),
            "{}: all zero",
            tensor.name
        );
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{} value {i}: {a} vs {b}",
                tensor.name
            );
        }
    }
}

#[test]
fn gguf_tokenizer_equals_the_tokenizer_it_was_made_from() {
    let gguf = ModelDir::open(&fixture("llama-mixed.gguf"), &airllm_models::catalog())
        .unwrap()
        .tokenizer()
        .unwrap()
        .expect("the GGUF holds a vocabulary");
    let original =
        tokenizers::Tokenizer::from_file(fixture("llama-gqa").join("tokenizer.json")).unwrap();
    for text in [
        "The capital of France is Paris.",
        "def add(a, b):\n    return a + b\n",
        "  spaces, digits 0123 and ünïcödé 日本",
        "<|endoftext|>after a special token",
    ] {
        let ours = gguf.encode(text, true).unwrap();
        let theirs = original.encode(text, true).unwrap();
        assert_eq!(ours.get_ids(), theirs.get_ids(), "{text:?}");
        assert_eq!(
            gguf.decode(ours.get_ids(), false).unwrap(),
            text,
            "{text:?} round-trips"
        );
    }
}

#[test]
fn sentencepiece_vocabulary_tokenizes_as_transformers_does() {
    let tokenizer = ModelDir::open(&gguf_fixture("spm-vocab.gguf"), &airllm_models::catalog())
        .unwrap()
        .tokenizer()
        .unwrap()
        .expect("the GGUF holds a vocabulary");
    let cases: Vec<TokenizerCase> =
        serde_json::from_slice(&std::fs::read(gguf_fixture("spm-vocab.json")).unwrap()).unwrap();
    assert!(
        cases
            .iter()
            .any(|c| c.ids.iter().any(|&id| (3..259).contains(&id))),
        "byte fallback exercised"
    );
    check_tokenizer(&tokenizer, &cases, false);
}

/// A copy of fixture file `name` changed by `edit`, in a temporary directory.
fn edited(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(gguf_fixture(name)).unwrap();
    edit(&mut bytes);
    let path = tmp.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (tmp, path)
}

/// Offset just past GGUF string `text` (length prefix + bytes) in `bytes`.
fn after_string(bytes: &[u8], text: &str) -> usize {
    let mut needle = (text.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(text.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{text:?} not in the file"));
    at + needle.len()
}

fn open_error(path: &Path) -> String {
    match ModelDir::open(path, &airllm_models::catalog()) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_metadata_is_a_named_error() {
    let (_tmp, path) = edited("llama-mixed.gguf", |b| b.truncate(600));
    let message = open_error(&path);
    assert!(message.contains("llama-mixed.gguf"), "{message}");
    assert!(message.contains("runs past the end"), "{message}");
    assert!(message.contains("download it again"), "{message}");
}

#[test]
fn tensor_data_past_the_end_is_a_named_error() {
    let (_tmp, path) = edited("llama-mixed.gguf", |b| b.truncate(b.len() - 100));
    let message = open_error(&path);
    assert!(message.contains("tensor `output.weight`"), "{message}");
    assert!(message.contains("runs past the end"), "{message}");
}

#[test]
fn unknown_type_id_is_a_named_error() {
    let (_tmp, path) = edited("blocks.gguf", |b| {
        // After the name: dimension count (u32), two dimensions (u64), type (u32).
        let at = after_string(b, "q4_1") + 4 + 16;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    let message = GgufFile::open(&path).unwrap_err().to_string();
    assert!(message.contains("tensor `q4_1`"), "{message}");
    assert!(message.contains("GGML type 99"), "{message}");
    assert!(message.contains("supported: F32"), "{message}");
}

#[test]
fn unsupported_architecture_is_a_named_error() {
    let (_tmp, path) = edited("llama-mixed.gguf", |b| {
        // The value: type (u32), then the string "llama" with its length.
        let at = after_string(b, "general.architecture") + 4 + 8;
        b[at..at + 5].copy_from_slice(b"mamba");
    });
    let message = open_error(&path);
    assert!(message.contains("`mamba` is not supported"), "{message}");
    assert!(message.contains("supported: llama"), "{message}");
}
