//! The server's request parser under hostile input: mutants of real chat
//! and completion bodies (the no-crash harness's JSON mutations: extreme
//! numbers, wrong types, deep nesting, bytes cut or flipped) are each
//! accepted or refused with a 400 that says what is wrong; never a panic.
//!
//! `AIRLLM_REQUEST_MUTANTS` sets how many (default 20000, about a second).

use airllm_server::openai::{parse, RequestLimits};
use airllm_server::StatusCode;
use airllm_tests::mutate::{FileKind, Mutator};
use serde_json::json;

#[test]
fn mutated_requests_are_accepted_or_refused_with_a_400() {
    let count: u64 = std::env::var("AIRLLM_REQUEST_MUTANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let bases = [
        (
            true,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
                ],
                "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                "seed": 5, "stop": ["\n", "END"], "stream": true,
                "stream_options": {"include_usage": true}, "n": 1,
                "repetition_penalty": 1.1, "user": "u"
            }),
        ),
        (
            false,
            json!({"model": "m", "prompt": ["Once"], "max_completion_tokens": 8, "stop": "x"}),
        ),
    ];
    let limits = RequestLimits::default();
    let (mut accepted, mut refused) = (0, 0);
    for index in 0..count {
        let (chat, body) = &bases[index as usize % bases.len()];
        let mut mutator = Mutator::new(0x5e12e, index);
        let (bytes, what) = mutator.mutate(FileKind::Json, body.to_string().as_bytes());
        match parse(&bytes, *chat, &limits, 0) {
            Ok(request) => {
                accepted += 1;
                assert!(
                    request.stop.len() <= limits.max_stops,
                    "mutant {index} ({what})"
                );
            }
            Err(error) => {
                refused += 1;
                assert_eq!(
                    error.status,
                    StatusCode::BAD_REQUEST,
                    "mutant {index} ({what})"
                );
                assert!(!error.message.is_empty(), "mutant {index} ({what})");
            }
        }
    }
    eprintln!("request mutants: {accepted} accepted, {refused} refused");
    assert!(accepted > 0 && refused > 0);
}
