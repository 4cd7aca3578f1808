//! The OpenAI request bodies this server takes, checked into a
//! [`Request`], and the response bodies it writes. A field that would
//! change what comes back and is not supported is a 400 naming it, never
//! ignored; fields that change nothing here (`user`, `model`) are taken and
//! other unknown fields are ignored, as OpenAI's own server does.

use airllm_core::SamplingConfig;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Its text.
    pub content: String,
}

/// What the model continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text (`/v1/completions`).
    Text(String),
    /// Messages through the model's chat template (`/v1/chat/completions`).
    Chat(Vec<ChatMessage>),
}

/// A checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate (`None`: up to the context limit).
    pub max_tokens: Option<usize>,
    /// How tokens are chosen.
    pub sampling: SamplingConfig,
    /// Strings that end the answer (not included in it).
    pub stop: Vec<String>,
    /// Whether the answer streams as Server-Sent Events.
    pub stream: bool,
    /// Whether a streamed answer ends with a usage chunk.
    pub include_usage: bool,
    /// Report each token's log-probability and this many alternatives
    /// (`logprobs` and `top_logprobs`); `None`: not asked.
    pub logprobs: Option<usize>,
    /// Generate `max_tokens` whatever the model's end-of-sequence tokens
    /// say (`ignore_eos`, as vLLM and llama.cpp's server take it; for
    /// benchmarks).
    pub ignore_eos: bool,
}

/// Limits on what a request may ask.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Most stop strings.
    pub max_stops: usize,
    /// Longest stop string, in bytes.
    pub max_stop_len: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_stops: 16,
            max_stop_len: 256,
        }
    }
}

/// Fields that would change the answer and are not supported.
const UNSUPPORTED: [&str; 9] = [
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "echo",
    "suffix",
    "best_of",
];

/// OpenAI's default temperature (a request that names none samples).
const DEFAULT_TEMPERATURE: f32 = 1.0;

fn number(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a number"),
        )),
    }
}

fn in_range(
    body: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, ApiError> {
    match number(body, field)? {
        Some(v) if !range.contains(&v) => Err(ApiError::bad_field(
            field,
            format!(
                "`{field}` is {v}; it must lie in {}..={}",
                range.start(),
                range.end()
            ),
        )),
        v => Ok(v),
    }
}

fn whole(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_field(field, format!("`{field}` must be a whole number"))),
    }
}

fn flag(body: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be true or false"),
        )),
    }
}

/// A string or a list of strings (`stop`, `prompt`).
fn strings(value: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad_field(
            field,
            format!("`{field}` must be a string or a list of strings"),
        )
    };
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// A message's content: a string, or a list of text parts.
fn content(value: &Value) -> Result<String, ApiError> {
    let bad = |what: &str| ApiError::bad_field("messages", what.to_string());
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                    (Some(kind), _) => Err(bad(&format!(
                        "message content parts of type `{kind}` are not supported; send text"
                    ))),
                    _ => Err(bad("a message content part needs `type` and `text`")),
                },
            )
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        _ => Err(bad(
            "a message's `content` must be a string or a list of text parts",
        )),
    }
}

fn messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_field("messages", "`messages` is empty"))
        }
        _ => {
            return Err(ApiError::bad_field(
                "messages",
                "`messages` must be a list of {\"role\", \"content\"}",
            ))
        }
    };
    list.iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_field("messages", "every message needs a string `role`")
            })?;
            if m.get("tool_calls").is_some() || role == "tool" {
                return Err(ApiError::bad_field(
                    "messages",
                    "tool calls are not supported",
                ));
            }
            Ok(ChatMessage {
                role: role.to_string(),
                content: content(m.get("content").unwrap_or(&Value::Null))?,
            })
        })
        .collect()
}

fn prompt_text(body: &Map<String, Value>) -> Result<String, ApiError> {
    let value = body
        .get("prompt")
        .ok_or_else(|| ApiError::bad_field("prompt", "`prompt` is required"))?;
    match strings(value, "prompt")?.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ApiError::bad_field(
            "prompt",
            "give one prompt per request (a list of several would need n > 1 choices)",
        )),
    }
}

/// Parses and checks a body of `/v1/chat/completions` (`chat`) or
/// `/v1/completions`; `seed` is used when the request names none.
pub fn parse(
    bytes: &[u8],
    chat: bool,
    limits: &RequestLimits,
    seed: u64,
) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(body) = value else {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    if let Some(field) = UNSUPPORTED
        .iter()
        .find(|f| !matches!(body.get(**f), None | Some(Value::Null)))
    {
        return Err(ApiError::bad_field(
            field,
            format!("`{field}` is not supported by this server"),
        ));
    }
    if let Some(n) = whole(&body, "n")? {
        if n != 1 {
            return Err(ApiError::bad_field("n", "only n = 1 is supported"));
        }
    }
    let logprobs = logprobs(&body, chat)?;
    let prompt = match chat {
        true => Prompt::Chat(messages(&body)?),
        false => Prompt::Text(prompt_text(&body)?),
    };
    let max_tokens = match whole(&body, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => whole(&body, "max_tokens")?,
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => strings(v, "stop")?,
    };
    if stop.len() > limits.max_stops
        || stop
            .iter()
            .any(|s| s.len() > limits.max_stop_len || s.is_empty())
    {
        return Err(ApiError::bad_field(
            "stop",
            format!(
                "give at most {} stop strings, each 1 to {} bytes",
                limits.max_stops, limits.max_stop_len
            ),
        ));
    }
    let sampling = SamplingConfig {
        temperature: in_range(&body, "temperature", 0.0..=2.0)?
            .map_or(DEFAULT_TEMPERATURE, |t| t as f32),
        top_p: in_range(&body, "top_p", 0.0..=1.0)?.map_or(1.0, |p| p as f32),
        top_k: whole(&body, "top_k")?.map_or(0, |k| k as usize),
        repetition_penalty: in_range(&body, "repetition_penalty", 0.0..=10.0)?
            .map_or(1.0, |r| r as f32),
        presence_penalty: in_range(&body, "presence_penalty", -2.0..=2.0)?
            .map_or(0.0, |p| p as f32),
        frequency_penalty: in_range(&body, "frequency_penalty", -2.0..=2.0)?
            .map_or(0.0, |f| f as f32),
        seed: match body.get("seed") {
            None | Some(Value::Null) => seed,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| ApiError::bad_field("seed", "`seed` must be an integer"))?
                as u64,
        },
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => flag(o, "include_usage")?,
        Some(_) => {
            return Err(ApiError::bad_field(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(Request {
        prompt,
        max_tokens: max_tokens.map(|n| n as usize),
        sampling,
        stop,
        stream: flag(&body, "stream")?,
        include_usage,
        ignore_eos: flag(&body, "ignore_eos")?,
        logprobs,
    })
}

/// Most alternatives a request may ask per token (OpenAI's limit).
const MOST_TOP_LOGPROBS: u64 = 20;

/// What a request asks of log-probabilities: chat takes `logprobs: true`
/// and `top_logprobs: N`; text completions `logprobs: N`.
fn logprobs(body: &Map<String, Value>, chat: bool) -> Result<Option<usize>, ApiError> {
    let top = |field: &str| -> Result<Option<usize>, ApiError> {
        match whole(body, field)? {
            Some(n) if n > MOST_TOP_LOGPROBS => Err(ApiError::bad_field(
                field,
                format!("`{field}` is {n}; it must lie in 0..={MOST_TOP_LOGPROBS}"),
            )),
            n => Ok(n.map(|n| n as usize)),
        }
    };
    if !chat {
        return match body.get("logprobs") {
            Some(Value::Bool(asked)) => Ok(asked.then_some(0)),
            _ => top("logprobs"),
        };
    }
    let asked = flag(body, "logprobs")?;
    match (asked, top("top_logprobs")?) {
        (false, Some(n)) if n > 0 => Err(ApiError::bad_field(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        )),
        (false, _) => Ok(None),
        (true, n) => Ok(Some(n.unwrap_or(0))),
    }
}

/// Why an answer ended, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token limit.
    Length,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// One generated token's log-probability, and its position's most likely
/// tokens when asked.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (alone; a piece of a character shows as U+FFFD).
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most likely tokens at its position, most likely first.
    pub top: Vec<(String, f32)>,
}

/// The `logprobs` of a choice holding `tokens`, whose text starts at byte
/// `offset` of the answer: chat's `{"content": [...]}` or the text
/// completion's `{"tokens", "token_logprobs", "top_logprobs",
/// "text_offset"}`; `null` when not asked.
fn logprobs_json(chat: bool, tokens: Option<&[TokenLogprob]>, offset: usize) -> Value {
    let Some(tokens) = tokens else {
        return Value::Null;
    };
    if chat {
        let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let mut one = entry(&t.token, t.logprob);
                one["top_logprobs"] = t.top.iter().map(|(s, l)| entry(s, *l)).collect();
                one
            })
            .collect();
        return json!({"content": content});
    }
    let offsets: Vec<usize> = tokens
        .iter()
        .scan(offset, |at, t| {
            let here = *at;
            *at += t.token.len();
            Some(here)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens
            .iter()
            .map(|t| t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<Map<_, _>>())
            .collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// What identifies one answer in its bodies.
#[derive(Clone, Debug)]
pub struct AnswerId {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// Chat or text completion.
    pub chat: bool,
}

impl AnswerId {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value, usage: Option<Usage>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage.json();
        }
        body
    }

    /// The whole answer of a request that does not stream, with its
    /// tokens' log-probabilities when asked.
    pub fn complete(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprob]>,
        finish: FinishReason,
        usage: Usage,
    ) -> Value {
        let logprobs = logprobs_json(self.chat, logprobs, 0);
        let choice = match self.chat {
            true => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish.name(),
            }),
            false => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish.name(),
            }),
        };
        self.wrap(false, json!([choice]), Some(usage))
    }

    /// A streamed chunk: new text (with its tokens' log-probabilities when
    /// asked; `offset` is where the text starts in the answer), or (with
    /// `finish`) the last one.
    pub fn chunk(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprob]>,
        offset: usize,
        first: bool,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish = finish.map(FinishReason::name);
        let logprobs = logprobs_json(self.chat, logprobs, offset);
        let choice = match self.chat {
            true => {
                let delta = match (first, text.is_empty()) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, true) => json!({}),
                    (false, false) => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            false => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        self.wrap(true, json!([choice]), None)
    }

    /// The usage chunk that ends a stream asked with `include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        self.wrap(true, json!([]), Some(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Request, ApiError> {
        parse(
            body.to_string().as_bytes(),
            true,
            &RequestLimits::default(),
            7,
        )
    }

    #[test]
    fn a_chat_request_takes_the_fields_people_use() {
        let request = chat(json!({
            "model": "anything",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
            ],
            "max_completion_tokens": 12,
            "temperature": 0,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "\n",
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "someone",
            "frequency_penalty": 0.5,
            "presence_penalty": -0.25,
            "ignore_eos": true,
            "logprobs": true,
            "top_logprobs": 3,
            "unknown_field": {"ignored": true}
        }))
        .unwrap();
        assert_eq!(
            request.prompt,
            Prompt::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into()
                },
                ChatMessage {
                    role: "user".into(),
                    content: "Hi".into()
                },
            ])
        );
        assert_eq!(request.max_tokens, Some(12));
        assert_eq!(request.sampling.temperature, 0.0);
        assert_eq!((request.sampling.top_k, request.sampling.seed), (40, 7));
        assert_eq!(request.stop, vec!["\n".to_string()]);
        assert!(request.stream && request.include_usage && request.ignore_eos);
        assert_eq!(request.sampling.frequency_penalty, 0.5);
        assert_eq!(request.sampling.presence_penalty, -0.25);
        assert_eq!(request.logprobs, Some(3));
    }

    #[test]
    fn fields_that_would_change_the_answer_are_named() {
        let base = json!({"messages": [{"role": "user", "content": "Hi"}]});
        for (field, value) in [
            ("tools", json!([{"type": "function"}])),
            ("response_format", json!({"type": "json_object"})),
            ("logit_bias", json!({"1": 5})),
            ("n", json!(2)),
            ("top_logprobs", json!(3)),
            ("presence_penalty", json!(2.5)),
            ("temperature", json!(3.5)),
            ("max_tokens", json!(-1)),
            ("stop", json!(["a", ""])),
        ] {
            let mut body = base.clone();
            body[field] = value;
            let err = chat(body).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{err:?}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let err = parse(b"{not json", true, &RequestLimits::default(), 0).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{err:?}");
        let err = chat(json!({"messages": []})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let text = |prompt: Value| {
            parse(
                json!({"prompt": prompt}).to_string().as_bytes(),
                false,
                &RequestLimits::default(),
                0,
            )
        };
        assert_eq!(
            text(json!(["one"])).unwrap().prompt,
            Prompt::Text("one".into())
        );
        assert_eq!(
            text(json!(["a", "b"])).unwrap_err().param.as_deref(),
            Some("prompt")
        );
    }

    #[test]
    fn answers_have_openais_shape() {
        let id = AnswerId {
            id: "chatcmpl-1".into(),
            created: 5,
            model: "m".into(),
            chat: true,
        };
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let whole = id.complete("Hi", None, FinishReason::Length, usage);
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["choices"][0]["message"]["content"], "Hi");
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["total_tokens"], 5);
        let first = id.chunk("H", None, 0, true, None);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let last = id.chunk("", None, 1, false, Some(FinishReason::Stop));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(id.usage_chunk(usage)["choices"], json!([]));
        let text = AnswerId {
            chat: false,
            ..id.clone()
        };
        assert_eq!(
            text.complete("x", None, FinishReason::Stop, usage)["choices"][0]["text"],
            "x"
        );
        let tokens = [
            TokenLogprob {
                token: "H".into(),
                logprob: -0.5,
                top: vec![("H".into(), -0.5), ("J".into(), -1.5)],
            },
            TokenLogprob {
                token: "i".into(),
                logprob: -0.25,
                top: vec![("i".into(), -0.25), ("o".into(), -2.0)],
            },
        ];
        let chat = id.complete("Hi", Some(&tokens), FinishReason::Stop, usage);
        let content = &chat["choices"][0]["logprobs"]["content"];
        assert_eq!(content[1]["token"], "i");
        assert_eq!(content[1]["logprob"], -0.25);
        assert_eq!(content[1]["bytes"], json!([105]));
        assert_eq!(content[0]["top_logprobs"][1]["token"], "J");
        let chunk = text.chunk("i", Some(&tokens[1..]), 1, false, None);
        let logprobs = &chunk["choices"][0]["logprobs"];
        assert_eq!(logprobs["tokens"], json!(["i"]));
        assert_eq!(logprobs["token_logprobs"], json!([-0.25]));
        assert_eq!(logprobs["top_logprobs"][0]["o"], -2.0);
        assert_eq!(logprobs["text_offset"], json!([1]));
    }
}
