//! Tokenizer access, incremental decoding for streaming, and stop strings.

use std::collections::BTreeMap;

use airllm_core::{Error, Result};
use airllm_formats::{ChatTemplate, Message, ModelDir};
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

    /// The text not yet returned, once the sequence has ended (an
    /// incomplete character held back at the end), up to a stop string.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let text = decode(tokenizer, &self.tokens)?;
        let end = first_stop(&text, &self.stops).unwrap_or(text.len());
        let fresh = text
            .get(self.emitted.min(end)..end)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.emitted.max(end);
        Ok(fresh)
    }
}

/// Byte offset of the earliest stop string in `text`.
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Checks that the draft model `draft` reads and writes the tokens `model`
/// does: the same vocabulary (each token at the same id) and the same
/// special tokens. A model may draft for itself.
pub fn check_same_tokenizer(model: &ModelDir, draft: &ModelDir) -> Result<()> {
    let same_place = |a: &ModelDir, b: &ModelDir| {
        a.path
            .canonicalize()
            .ok()
            .is_some_and(|a| b.path.canonicalize().ok() == Some(a))
    };
    if same_place(model, draft) {
        return Ok(());
    }
    let mismatch = |detail: String| {
        Error::Config {
        setting: "--draft".into(),
        detail: format!(
            "{} cannot draft for {}: {detail}; a draft model must share the model's tokenizer (a smaller model of the same family, or the model compressed)",
            draft.path.display(),
            model.path.display()
        ),
    }
    };
    let (ours, theirs) = match (model.tokenizer()?, draft.tokenizer()?) {
        (Some(ours), Some(theirs)) => (ours, theirs),
        (None, _) => {
            return Err(mismatch(format!(
                "{} has no tokenizer to compare",
                model.path.display()
            )))
        }
        (_, None) => {
            return Err(mismatch(format!(
                "{} has no tokenizer to compare",
                draft.path.display()
            )))
        }
    };
    let differences = tokenizer_differences(&ours, &theirs);
    match differences.is_empty() {
        true => Ok(()),
        false => Err(mismatch(differences.join("; "))),
    }
}

/// How tokenizer `theirs` differs from `ours`, in words (nothing when
/// they agree).
fn tokenizer_differences(ours: &Tokenizer, theirs: &Tokenizer) -> Vec<String> {
    const SHOWN: usize = 3;
    let mut differences = Vec::new();
    let (vocab, other) = (ours.get_vocab(true), theirs.get_vocab(true));
    if vocab.len() != other.len() {
        differences.push(format!(
            "its vocabulary has {} tokens, the model's {}",
            other.len(),
            vocab.len()
        ));
    }
    let mut moved: Vec<(u32, &String)> = vocab
        .iter()
        .filter(|(token, id)| other.get(*token) != Some(id))
        .map(|(token, id)| (*id, token))
        .collect();
    moved.sort();
    if !moved.is_empty() {
        let shown: Vec<String> = moved
            .iter()
            .take(SHOWN)
            .map(|(id, token)| match other.get(*token) {
                Some(theirs) => format!("{token:?} is {theirs} there, {id} here"),
                None => format!("{token:?} ({id}) is missing"),
            })
            .collect();
        differences.push(format!(
            "{} tokens differ ({})",
            moved.len(),
            shown.join(", ")
        ));
    }
    let specials = |tokenizer: &Tokenizer| -> BTreeMap<u32, String> {
        tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, token)| (id, token.content))
            .collect()
    };
    let (ours, theirs) = (specials(ours), specials(theirs));
    if ours != theirs {
        let describe = |a: &BTreeMap<u32, String>, b: &BTreeMap<u32, String>| {
            let only: Vec<String> = a
                .iter()
                .filter(|(id, token)| b.get(id) != Some(token))
                .take(SHOWN)
                .map(|(id, token)| format!("{token:?} = {id}"))
                .collect();
            match only.is_empty() {
                true => "none".to_string(),
                false => only.join(", "),
            }
        };
        differences.push(format!(
            "special tokens differ (only the draft has: {}; only the model has: {})",
            describe(&theirs, &ours),
            describe(&ours, &theirs)
        ));
    }
    differences
}
