//! The HTTP contract on a real server (an ephemeral localhost port) and a
//! real client, over a scripted model: answers, streams, every error
//! status, the API key, loading, requests sharing passes, cancel by
//! disconnect and shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airllm_server::{ApiError, Event, FinishReason, Model, Prompt, Request, ServeOptions};
use serde_json::{json, Value};

/// Answers with the prompt's words, one token each per pass, up to
/// `max_batch` requests in a pass, each pass taking `pause`; a prompt of
/// `fail` is refused with a 400.
struct Echo {
    pause: Duration,
    max_batch: usize,
    running: Vec<Sequence>,
    answered: Arc<Mutex<Vec<String>>>,
    /// Sequences in each pass.
    widths: Arc<Mutex<Vec<usize>>>,
}

struct Sequence {
    id: u64,
    text: String,
    limit: usize,
    sent: usize,
}

impl Sequence {
    fn words(&self) -> Vec<&str> {
        self.text.split(' ').collect()
    }
}

impl Model for Echo {
    fn room(&self) -> usize {
        self.max_batch - self.running.len()
    }

    fn submit(&mut self, id: u64, request: &Request) -> Result<usize, ApiError> {
        let text = match &request.prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => messages.last().unwrap().content.clone(),
        };
        if text == "fail" {
            return Err(ApiError::bad_field("max_tokens", "too long"));
        }
        let sequence = Sequence {
            id,
            text,
            limit: request.max_tokens.unwrap_or(usize::MAX),
            sent: 0,
        };
        let words = sequence.words().len();
        self.running.push(sequence);
        Ok(words)
    }

    fn cancel(&mut self, id: u64) {
        if let Some(at) = self.running.iter().position(|s| s.id == id) {
            let sequence = self.running.remove(at);
            let note = format!("cancelled {}", sequence.text);
            self.answered.lock().unwrap().push(note);
        }
    }

    fn running(&self) -> usize {
        self.running.len()
    }

    fn step(&mut self, emit: &mut dyn FnMut(u64, Event)) {
        std::thread::sleep(self.pause);
        self.widths.lock().unwrap().push(self.running.len());
        let mut done = Vec::new();
        for sequence in &mut self.running {
            let words = sequence.words().len();
            let word = sequence.words()[sequence.sent].to_string();
            let piece = match sequence.sent {
                0 => word,
                _ => format!(" {word}"),
            };
            let logprobs = Vec::new();
            emit(
                sequence.id,
                Event::Text {
                    text: piece,
                    logprobs,
                },
            );
            sequence.sent += 1;
            if sequence.sent == words || sequence.sent == sequence.limit {
                let finish = match words > sequence.limit {
                    true => FinishReason::Length,
                    false => FinishReason::Stop,
                };
                let completion_tokens = sequence.sent;
                emit(
                    sequence.id,
                    Event::Done {
                        finish,
                        completion_tokens,
                    },
                );
                done.push(sequence.id);
            }
        }
        for id in done {
            let at = self.running.iter().position(|s| s.id == id).unwrap();
            let sequence = self.running.remove(at);
            self.answered.lock().unwrap().push(sequence.text);
        }
    }
}

struct Running {
    base: String,
    server: Option<airllm_server::Server>,
    engine: Option<std::thread::JoinHandle<()>>,
    answered: Arc<Mutex<Vec<String>>>,
    widths: Arc<Mutex<Vec<usize>>>,
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

fn serve(options: ServeOptions, pause: Duration, load: Duration, max_batch: usize) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, jobs) = airllm_server::start(listener, options).unwrap();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let widths = Arc::new(Mutex::new(Vec::new()));
    let mut model = Echo {
        pause,
        max_batch,
        running: Vec::new(),
        answered: answered.clone(),
        widths: widths.clone(),
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
        widths,
    }
}

fn ready(options: ServeOptions) -> Running {
    let running = serve(options, Duration::ZERO, Duration::ZERO, 4);
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
    // One request at a time: the second waits in the queue.
    let running = serve(
        options,
        Duration::from_millis(100),
        Duration::from_millis(400),
        1,
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

/// Starts a streamed completion of `prompt`; returns once its first
/// chunk has come, with the unread rest.
fn start_stream(base: &str, prompt: &str) -> Box<dyn std::io::BufRead + Send> {
    let body = json!({"prompt": prompt, "stream": true});
    let response = ureq::post(&format!("{base}/v1/completions"))
        .send_string(&body.to_string())
        .unwrap();
    let mut reader = std::io::BufReader::new(response.into_reader());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    }
    Box::new(reader)
}

#[test]
fn requests_share_passes_and_a_client_that_disconnects_is_cancelled() {
    let running = serve(
        ServeOptions::default(),
        Duration::from_millis(20),
        Duration::ZERO,
        4,
    );
    while ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let long = "w ".repeat(200).trim().to_string();
    let stream = start_stream(&running.base, &long);
    let (status, body) = post(
        &running,
        "/v1/completions",
        &json!({"prompt": "a b c d e"}).to_string(),
        None,
    );
    assert_eq!(
        (status, body["choices"][0]["text"].as_str()),
        (200, Some("a b c d e"))
    );
    assert!(
        running.widths.lock().unwrap().contains(&2),
        "the two requests never shared a pass"
    );
    drop(stream);
    // Cancelled at the pass after the server notices, far before its 200
    // words (4 s) are done.
    let started = std::time::Instant::now();
    loop {
        let answered = running.answered.lock().unwrap().clone();
        if answered.contains(&format!("cancelled {long}")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "never cancelled: {answered:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let metrics = ureq::get(&format!("{}/metrics", running.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains("airllm_running_sequences 0"), "{metrics}");
}

#[test]
fn stopping_with_requests_in_flight_finishes_them() {
    let mut running = serve(
        ServeOptions::default(),
        Duration::from_millis(50),
        Duration::ZERO,
        4,
    );
    while ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_flight: Vec<_> = ["a b c d e f", "g h i"]
        .into_iter()
        .map(|prompt| {
            let base = running.base.clone();
            std::thread::spawn(move || {
                ureq::post(&format!("{base}/v1/completions"))
                    .send_string(&json!({"prompt": prompt}).to_string())
                    .map(|r| r.into_json::<Value>().unwrap())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut server = running.server.take().unwrap();
    server.stop();
    server.wait().unwrap();
    let answers: Vec<Value> = in_flight
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(answers[0]["choices"][0]["text"], "a b c d e f");
    assert_eq!(answers[1]["choices"][0]["text"], "g h i");
    assert!(
        running.widths.lock().unwrap().contains(&2),
        "they ran together"
    );
    running.engine.take().unwrap().join().unwrap();
    assert!(ureq::get(&format!("{}/health", running.base))
        .call()
        .is_err());
}

#[test]
fn cors_headers_only_for_the_origins_named() {
    let plain = ready(ServeOptions::default());
    let models = ureq::get(&format!("{}/v1/models", plain.base))
        .set("Origin", "http://localhost:3000")
        .call()
        .unwrap();
    assert_eq!(models.header("access-control-allow-origin"), None);
    let open = ready(ServeOptions {
        api_key: Some("secret".into()),
        cors_origins: vec!["http://localhost:3000".into()],
        ..Default::default()
    });
    // A preflight carries no key; it is answered before the key check.
    let preflight = ureq::request("OPTIONS", &format!("{}/v1/chat/completions", open.base))
        .set("Origin", "http://localhost:3000")
        .set("Access-Control-Request-Method", "POST")
        .set(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .call()
        .unwrap();
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let models = ureq::get(&format!("{}/v1/models", open.base))
        .set("Origin", "http://localhost:3000")
        .set("Authorization", "Bearer secret")
        .call()
        .unwrap();
    assert_eq!(
        models.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let other = ureq::get(&format!("{}/v1/models", open.base))
        .set("Origin", "http://evil.example")
        .set("Authorization", "Bearer secret")
        .call()
        .unwrap();
    assert_eq!(other.header("access-control-allow-origin"), None);
}
