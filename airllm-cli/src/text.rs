//! Tokenizer access, incremental decoding for streaming, and stop strings.

use airllm_core::{Error, Result};
use airllm_formats::{ChatTemplate, Message};
use tokenizers::Tokenizer;

/// Tokenizes `text` as a prompt (with the special tokens the tokenizer adds).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, true)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Request(format!("tokenizing a prompt: {e}")))
}

/// Renders `messages` with the chat template, ready for the assistant's
/// turn, and tokenizes the result as transformers does (the template
/// already holds every special token).
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<Vec<u32>> {
    let text = template.render(messages, true)?;
    tokenizer
        .encode(text.as_str(), false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Request(format!("tokenizing the chat: {e}")))
}

/// Decodes ids to text.
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| Error::Request(format!("decoding tokens: {e}")))
}

/// Follows one sequence's tokens, yielding text as it becomes whole and
/// noticing stop strings.
pub struct TextStream {
    stops: Vec<String>,
    tokens: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// A stream that stops at any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            stops,
            tokens: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns new printable text and whether a stop string appeared.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<(String, bool)> {
        self.tokens.push(token);
        let text = decode(tokenizer, &self.tokens)?;
        if let Some(cut) = first_stop(&text, &self.stops) {
            let fresh = text[self.emitted.min(cut)..cut].to_string();
            self.emitted = cut;
            return Ok((fresh, true));
        }
        // Hold back text that ends in an incomplete UTF-8 sequence.
        if text.ends_with('\u{fffd}') || text.len() < self.emitted {
            return Ok((String::new(), false));
        }
        let fresh = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok((fresh, false))
    }
}

/// Byte offset of the earliest stop string in `text`.
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}
