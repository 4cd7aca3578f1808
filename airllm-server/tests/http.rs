//! The HTTP contract on a real server (an ephemeral localhost port) and a
//! real client, over a scripted model: answers, streams, every error
//! status, the API key, loading and shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airllm_server::{ApiError, Event, FinishReason, Model, Prompt, Request, ServeOptions};
use serde_json::{json, Value};

/// Answers with the prompt's words, one token each, waiting `pause`
/// before each; a prompt of `fail` is refused with a 400.
struct Echo {
    pause: Duration,
    answered: Arc<Mutex<Vec<String>>>,
}

impl Model for Echo {
    fn answer(&mut self, request: &Request, emit: &mut dyn FnMut(Event) -> bool) {
        let text = match &request.prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => messages.last().unwrap().content.clone(),
        };
        if text == "fail" {
            emit(Event::Failed(ApiError::bad_field("max_tokens", "too long")));
            return;
        }
        let words: Vec<&str> = text.split(' ').collect();
        emit(Event::Started {
            prompt_tokens: words.len(),
        });
        let limit = request.max_tokens.unwrap_or(usize::MAX);
        for (i, word) in words.iter().take(limit).enumerate() {
            std::thread::sleep(self.pause);
            let piece = if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            };
            if !emit(Event::Text(piece)) {
                self.answered
                    .lock()
                    .unwrap()
                    .push(format!("cancelled {text}"));
                return;
            }
        }
        let finish = if words.len() > limit {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let completion_tokens = words.len().min(limit);
        emit(Event::Done {
            finish,
            completion_tokens,
        });
        self.answered.lock().unwrap().push(text);
    }
}

struct Running {
    base: String,
    server: Option<airllm_server::Server>,
    engine: Option<std::thread::JoinHandle<()>>,
    answered: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
            let _ = server.wait();
        }
        if let Some(engine) = self.engine.take() {
            let _ = engine.join();
        }
    }
}

fn serve(options: ServeOptions, pause: Duration, load: Duration) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, jobs) = airllm_server::start(listener, options).unwrap();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let mut model = Echo {
        pause,
        answered: answered.clone(),
    };
    let engine = std::thread::spawn(move || {
        std::thread::sleep(load);
        jobs.serve(&mut model);
    });
    Running {
        base: format!("http://{}", server.address()),
        server: Some(server),
        engine: Some(engine),
        answered,
    }
}

fn ready(options: ServeOptions) -> Running {
    let running = serve(options, Duration::ZERO, Duration::ZERO);
    while ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    running
}

/// Status and JSON body of a POST.
fn post(running: &Running, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut request =
        ureq::post(&format!("{}{path}", running.base)).set("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    match request.send_string(body) {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn chat_and_completions_answer_in_openais_shape() {
    let running = ready(ServeOptions {
        model_name: "tiny".into(),
        ..Default::default()
    });
    let (status, body) = post(
        &running,
        "/v1/chat/completions",
        &json!({"model": "x", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}).to_string(),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["choices"][0]["message"]["content"], "one two");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
    let (status, body) = post(
        &running,
        "/v1/completions",
        &json!({"prompt": "a b"}).to_string(),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "a b");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let models: Value = ureq::get(&format!("{}/v1/models", running.base))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    let metrics = ureq::get(&format!("{}/metrics", running.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("airllm_requests_total 2")
            && metrics.contains("airllm_completion_tokens_total 4"),
        "{metrics}"
    );
}

#[test]
fn a_stream_sends_chunks_usage_and_done() {
    let running = ready(ServeOptions::default());
    let body = json!({
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": true,
        "stream_options": {"include_usage": true}
    });
    let response = ureq::post(&format!("{}/v1/chat/completions", running.base))
        .send_string(&body.to_string())
        .unwrap();
    assert_eq!(response.content_type(), "text/event-stream");
    let text = response.into_string().unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "one two three");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 3);
}

#[test]
fn every_error_has_its_status_and_openais_shape() {
    let running = ready(ServeOptions {
        api_key: Some("secret".into()),
        max_body: 1000,
        ..Default::default()
    });
    let chat =
        |content: &str| json!({"messages": [{"role": "user", "content": content}]}).to_string();
    let cases = [
        (
            "/v1/chat/completions",
            "{not json".to_string(),
            Some("secret"),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "tools": []}).to_string(),
            Some("secret"),
            400,
            Some("tools"),
        ),
        (
            "/v1/chat/completions",
            chat("fail"),
            Some("secret"),
            400,
            Some("max_tokens"),
        ),
        ("/v1/chat/completions", chat("a"), None, 401, None),
        ("/v1/chat/completions", chat("a"), Some("wrong"), 401, None),
        ("/v1/embeddings", chat("a"), Some("secret"), 404, None),
        (
            "/v1/chat/completions",
            chat(&"a ".repeat(600)),
            Some("secret"),
            413,
            None,
        ),
    ];
    for (path, body, key, status, param) in cases {
        let (got, body) = post(&running, path, &body, key);
        assert_eq!(got, status, "{path}: {body}");
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        assert_eq!(error["param"].as_str(), param, "{body}");
    }
    assert!(ureq::get(&format!("{}/health", running.base))
        .call()
        .is_ok());
    let (status, _) = post(&running, "/v1/chat/completions", &chat("a"), Some("secret"));
    assert_eq!(status, 200);
}

#[test]
fn loading_is_a_503_and_a_full_queue_a_429_and_slow_answers_a_504() {
    let options = ServeOptions {
        max_queue: 1,
        request_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let running = serve(
        options,
        Duration::from_millis(100),
        Duration::from_millis(400),
    );
    let health = ureq::get(&format!("{}/health", running.base)).call();
    match health {
        Err(ureq::Error::Status(503, response)) => {
            assert_eq!(response.into_json::<Value>().unwrap()["status"], "loading")
        }
        other => panic!("{other:?}"),
    }
    let (status, body) = post(
        &running,
        "/v1/completions",
        &json!({"prompt": "a"}).to_string(),
        None,
    );
    assert_eq!(status, 503, "{body}");
    while ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Twenty words at 100 ms: 2 s, past the 1.5 s limit.
    let long = json!({"prompt": "w ".repeat(20).trim()}).to_string();
    let base = running.base.clone();
    let first = std::thread::spawn({
        let long = long.clone();
        move || match ureq::post(&format!("{base}/v1/completions")).send_string(&long) {
            Err(ureq::Error::Status(code, _)) => code,
            Ok(response) => response.status(),
            Err(e) => panic!("{e}"),
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    // The first runs; one waits in the queue; the next is refused.
    let base = running.base.clone();
    let second = std::thread::spawn(move || {
        ureq::post(&format!("{base}/v1/completions"))
            .send_string(&json!({"prompt": "b"}).to_string())
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    let refused = ureq::post(&format!("{}/v1/completions", running.base))
        .send_string(&json!({"prompt": "c"}).to_string());
    match refused {
        Err(ureq::Error::Status(429, response)) => {
            assert_eq!(response.header("Retry-After"), Some("1"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(first.join().unwrap(), 504);
    assert!(second.join().unwrap().is_ok());
    // The timed-out answer stopped at its next token.
    std::thread::sleep(Duration::from_millis(300));
    let answered = running.answered.lock().unwrap().clone();
    assert!(
        answered.iter().any(|a| a.starts_with("cancelled w")),
        "{answered:?}"
    );
}

#[test]
fn stopping_with_a_request_in_flight_finishes_it() {
    let mut running = serve(
        ServeOptions::default(),
        Duration::from_millis(50),
        Duration::ZERO,
    );
    while ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let base = running.base.clone();
    let in_flight = std::thread::spawn(move || {
        ureq::post(&format!("{base}/v1/completions"))
            .send_string(&json!({"prompt": "a b c d e f"}).to_string())
            .map(|r| r.into_json::<Value>().unwrap())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut server = running.server.take().unwrap();
    server.stop();
    server.wait().unwrap();
    let answer = in_flight.join().unwrap().unwrap();
    assert_eq!(answer["choices"][0]["text"], "a b c d e f");
    running.engine.take().unwrap().join().unwrap();
    assert!(ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err());
}
