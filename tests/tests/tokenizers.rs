//! Tokenizers built from SentencePiece `tokenizer.model` and tiktoken files
//! give the ids the families' own tokenizers give (reproduced by
//! `fixtures/generate_tokenizers.py`), decode back to the text, and render
//! the built-in chat formats as those tokenizers build them.

use std::path::PathBuf;

use airllm_formats::{Message, ModelDir};
use airllm_tests::{check_tokenizer, fixtures_dir, TokenizerCase};

#[derive(serde::Deserialize)]
struct Expected {
    cases: Vec<TokenizerCase>,
    chat: Option<Chat>,
}

#[derive(serde::Deserialize)]
struct Chat {
    messages: Vec<Message>,
    ids: Vec<u32>,
}

fn vocabulary_dir(name: &str) -> PathBuf {
    fixtures_dir().join("tokenizers").join(name)
}

fn check(name: &str) {
    let dir = vocabulary_dir(name);
    let expected: Expected =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let model = ModelDir::open(&dir, &airllm_models::catalog()).unwrap();
    let tokenizer = model.tokenizer().unwrap().expect("a tokenizer");
    check_tokenizer(&tokenizer, &expected.cases, true);
    if let Some(chat) = expected.chat {
        let template = model
            .chat_template()
            .unwrap()
            .expect("a built-in chat format");
        let text = template.render(&chat.messages, true).unwrap();
        let ids = tokenizer.encode(text.as_str(), false).unwrap();
        assert_eq!(ids.get_ids(), chat.ids, "{text:?}");
    }
}

#[test]
fn chatglm3_sentencepiece_with_its_specials_and_chat_format() {
    check("chatglm3");
}

#[test]
fn baichuan_sentencepiece_without_the_dummy_prefix() {
    check("baichuan");
}

#[test]
fn sentencepiece_unigram_with_nfkc_and_whitespace_removal() {
    check("unigram");
}

#[test]
fn qwen_v1_tiktoken_with_its_specials_and_chatml() {
    check("qwen-v1");
}

#[test]
fn glm4_tiktoken_tokenizer_model() {
    check("glm4");
}

#[test]
fn a_split_carries_the_built_tokenizer_as_tokenizer_json() {
    for name in ["chatglm3", "qwen-v1"] {
        let files = ModelDir::open(&vocabulary_dir(name), &airllm_models::catalog())
            .unwrap()
            .side_files()
            .unwrap();
        let (_, json) = files
            .iter()
            .find(|(file, _)| file == "tokenizer.json")
            .expect("tokenizer.json among the side files");
        assert!(tokenizers::Tokenizer::from_bytes(json).is_ok());
    }
}

#[test]
fn a_tiktoken_tokenizer_model_outside_chatglm_is_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        vocabulary_dir("glm4").join("tokenizer.model"),
        tmp.path().join("tokenizer.model"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"]}"#,
    )
    .unwrap();
    let err = ModelDir::open(tmp.path(), &airllm_models::catalog())
        .unwrap()
        .tokenizer()
        .expect_err("refused");
    assert!(err.to_string().contains("tokenizer.model"), "{err}");
}
