//! Tokenizer access, incremental decoding for streaming, and stop strings.

use airllm_core::{Error, Result};
use tokenizers::Tokenizer;

/// Decodes ids to text.
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| Error::Request(format!("decoding tokens: {e}")))
}

/// Follows one sequence's tokens, yielding text as it becomes whole and
/// noticing stop strings.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stops: &'a [String],
    tokens: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    /// A stream that stops at any of `stops`.
    pub fn new(tokenizer: &'a Tokenizer, stops: &'a [String]) -> Self {
        TextStream {
            tokenizer,
            stops,
            tokens: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns new printable text and whether a stop string appeared.
    pub fn push(&mut self, token: u32) -> Result<(String, bool)> {
        self.tokens.push(token);
        let text = decode(self.tokenizer, &self.tokens)?;
        if let Some(cut) = first_stop(&text, self.stops) {
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
