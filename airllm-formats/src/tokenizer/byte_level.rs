//! Byte-level BPE (GPT-2 style; `tokenizer.ggml.model = gpt2`): tokens are
//! spelled in GPT-2's printable byte alphabet, text is split by a regex
//! (GPT-2's own unless the vocabulary names another), and merges apply
//! within the pieces.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::Vocabulary;

/// The split regex of a pre-tokenizer named by llama.cpp's
/// `tokenizer.ggml.pre`, where it differs from GPT-2's.
pub fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

/// GPT-2's map from bytes to printable characters.
pub fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[byte as usize] = if printable {
            byte as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("valid code point")
        };
    }
    map
}

/// The tokenizer.json of a byte-level BPE vocabulary; `pre` is the
/// pre-tokenizer name the source gives, if any.
pub fn tokenizer_json(vocab: &Vocabulary, pre: Option<&str>) -> Value {
    let alphabet = byte_alphabet();
    let printable: HashSet<char> = alphabet.iter().copied().collect();
    let in_alphabet = |token: &str| token.chars().all(|c| printable.contains(&c));
    // Tokens stored as raw text are respelled in the byte alphabet.
    let spelled: serde_json::Map<String, Value> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            let spelling = if in_alphabet(token) {
                token.clone()
            } else {
                token.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (spelling, json!(id))
        })
        .collect();
    let merges = known_merges(&vocab.merges, &spelled);
    let byte_level = |prefix: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre.and_then(split_regex) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        None => byte_level(false),
    };
    // A control token spelled outside the byte alphabet is a converter
    // mislabel; it stays an ordinary vocabulary entry.
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(in_alphabet),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": vocab.post_processor(),
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": spelled, "merges": merges}
    })
}

/// The merges whose two parts and result are all in `vocab`, as
/// tokenizer.json lists them. Some converted vocabularies carry merges of
/// tokens they lack; llama.cpp never applies those, and they are skipped
/// here with one warning (the tokenizers crate refuses the whole model).
fn known_merges(merges: &[String], vocab: &serde_json::Map<String, Value>) -> Vec<Value> {
    let mut skipped = Vec::new();
    let kept = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .filter(|(l, r)| {
            let known = vocab.contains_key(*l)
                && vocab.contains_key(*r)
                && vocab.contains_key(&format!("{l}{r}"));
            if !known {
                skipped.push(format!("{l} {r}"));
            }
            known
        })
        .map(|(l, r)| json!([l, r]))
        .collect();
    if let Some(first) = skipped.first() {
        tracing::warn!(
            "skipped {} merges that name tokens missing from the vocabulary (the first: `{first}`), as llama.cpp does",
            skipped.len()
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_of_missing_tokens_are_skipped() {
        let vocab: serde_json::Map<String, Value> = ["a", "b", "ab", "c"]
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), json!(id)))
            .collect();
        let merges = ["a b", "b c", "x a", "ab c"].map(String::from);
        assert_eq!(known_merges(&merges, &vocab), vec![json!(["a", "b"])]);
    }

    #[test]
    fn alphabet_spells_space_and_newline_as_gpt2_does() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet[b' ' as usize], 'Ġ');
        assert_eq!(alphabet[b'\n' as usize], 'Ċ');
        assert_eq!(alphabet[b'a' as usize], 'a');
    }
}
