//! The HTTP routes: OpenAI's completions, chat completions and models,
//! `/health` and `/metrics`, the API key check and OpenAI-shaped errors
//! for everything else.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::jobs::{Event, Health, Job, Status};
use crate::openai::{self, AnswerId, Usage};
use crate::ServeOptions;

/// What every handler shares.
pub(crate) struct App {
    pub options: ServeOptions,
    pub jobs: mpsc::SyncSender<Job>,
    pub status: Arc<Status>,
    pub answers: AtomicU64,
}

/// The router over `app`.
pub(crate) fn router(app: Arc<App>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), check_key))
        .layer(axum::extract::DefaultBodyLimit::max(app.options.max_body));
    // Outermost, so that browsers' preflight requests (which carry no key)
    // are answered before the key is checked.
    let router = match cors(&app.options.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(app)
}

/// CORS for `origins` (`*` for any), or none when the list is empty.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = match origins.iter().any(|o| o == "*") {
        true => AllowOrigin::any(),
        false => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| header::HeaderValue::from_str(o).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    )
}

async fn check_key(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    let Some(key) = &app.options.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_key(given, key) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "the API key is wrong").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: send `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

/// Whether `given` is `key`, in time that does not depend on where they
/// differ (a timing attack learns nothing but the length).
fn same_key(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.status.health() {
        Health::Ready => Json(json!({"status": "ok"})).into_response(),
        Health::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        Health::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    let status = &app.status;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed) as f64;
    let memory = airllm_core::memory::Rss::now();
    let lines = [
        (
            "airllm_requests_total",
            "counter",
            "Completion requests received.",
            load(&status.requests),
        ),
        (
            "airllm_queue_length",
            "gauge",
            "Requests waiting for the engine.",
            status.queued.load(Ordering::Relaxed) as f64,
        ),
        (
            "airllm_running_sequences",
            "gauge",
            "Requests in the engine's running batch.",
            status.running.load(Ordering::Relaxed) as f64,
        ),
        (
            "airllm_prompt_tokens_total",
            "counter",
            "Prompt tokens read.",
            load(&status.prompt_tokens),
        ),
        (
            "airllm_completion_tokens_total",
            "counter",
            "Tokens generated.",
            load(&status.completion_tokens),
        ),
        (
            "airllm_passes_total",
            "counter",
            "Forward passes run.",
            load(&status.passes),
        ),
        (
            "airllm_pass_seconds_total",
            "counter",
            "Seconds the forward passes took.",
            load(&status.pass_microseconds) / 1e6,
        ),
        (
            "airllm_read_bytes_total",
            "counter",
            "Bytes the passes read from the weight store.",
            load(&status.bytes_read),
        ),
        (
            "airllm_memory_anon_bytes",
            "gauge",
            "Anonymous resident memory of the process.",
            memory.anon as f64,
        ),
        (
            "airllm_memory_file_bytes",
            "gauge",
            "File-backed resident memory (mapped weights).",
            memory.file as f64,
        ),
        (
            "airllm_memory_planned_bytes",
            "gauge",
            "The most memory the residency plan predicts (weights, KV cache of --max-batch requests of --ctx, activations).",
            status.planned_bytes.load(Ordering::Relaxed) as f64,
        ),
    ];
    lines
        .iter()
        .map(|(name, kind, help, value)| {
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.options.model_name,
            "object": "model",
            "created": now(),
            "owned_by": "airllm-rs",
        }]
    }))
}

async fn not_found(request: HttpRequest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; this server serves /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(app, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(app, body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Checks, queues and answers one request.
async fn answer(
    app: Arc<App>,
    body: Result<Bytes, BytesRejection>,
    chat: bool,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than {} bytes (--max-body)",
                app.options.max_body
            ),
        ),
        status => ApiError::new(status, e.body_text()),
    })?;
    match app.status.health() {
        Health::Ready => {}
        Health::Loading => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading; retry when /health says ok",
            ))
        }
        Health::Failed(reason) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the model failed to load: {reason}"),
            ))
        }
    }
    let number = app.answers.fetch_add(1, Ordering::Relaxed);
    let seed = now() ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let request = openai::parse(&body, chat, &app.options.limits, seed)?;
    app.status.requests.fetch_add(1, Ordering::Relaxed);
    let (events, mut receiver) = unbounded_channel();
    let stream = request.stream;
    let include_usage = request.include_usage;
    let with_logprobs = request.logprobs.is_some();
    app.status.queued.fetch_add(1, Ordering::AcqRel);
    if let Err(e) = app.jobs.try_send(Job { request, events }) {
        app.status.queued.fetch_sub(1, Ordering::AcqRel);
        return Err(match e {
            mpsc::TrySendError::Full(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} requests are waiting already (--max-queue); retry shortly",
                    app.options.max_queue
                ),
            ),
            mpsc::TrySendError::Disconnected(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ),
        });
    }
    let id = AnswerId {
        id: format!("{}-{number}", if chat { "chatcmpl" } else { "cmpl" }),
        created: now(),
        model: app.options.model_name.clone(),
        chat,
    };
    let deadline = started + app.options.request_timeout;
    let prompt_tokens = match next_event(&mut receiver, deadline).await? {
        Event::Started { prompt_tokens } => prompt_tokens,
        other => return Err(unexpected(other)),
    };
    let timing = Timing {
        started,
        waited: started.elapsed().as_secs_f64(),
        deadline,
    };
    if stream {
        let chunks = stream_chunks(
            receiver,
            id,
            prompt_tokens,
            include_usage,
            with_logprobs,
            timing,
        );
        return Ok(Sse::new(chunks).into_response());
    }
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        match next_event(&mut receiver, deadline).await? {
            Event::Text {
                text: more,
                logprobs: tokens,
            } => {
                text.push_str(&more);
                logprobs.extend(tokens);
            }
            Event::Done {
                finish,
                completion_tokens,
            } => {
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                };
                timing.log(&id, usage);
                let logprobs = with_logprobs.then_some(logprobs.as_slice());
                return Ok(Json(id.complete(&text, logprobs, finish, usage)).into_response());
            }
            other => return Err(unexpected(other)),
        }
    }
}

/// When a request arrived, how long it waited for the engine, and when it
/// must be answered by.
#[derive(Clone, Copy)]
struct Timing {
    started: Instant,
    waited: f64,
    deadline: Instant,
}

impl Timing {
    /// The request's log line (`-v`): id, tokens in and out, seconds queued
    /// and in all.
    fn log(&self, id: &AnswerId, usage: Usage) {
        tracing::info!(
            id = %id.id,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            queued_s = self.waited,
            total_s = self.started.elapsed().as_secs_f64(),
            "answered"
        );
    }
}

/// The engine thread's next word on a request, or the error that ends it.
async fn next_event(
    receiver: &mut UnboundedReceiver<Event>,
    deadline: Instant,
) -> Result<Event, ApiError> {
    let timeout = ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "the request took longer than --request-timeout",
    );
    match tokio::time::timeout_at(deadline.into(), receiver.recv()).await {
        Err(_) => Err(timeout),
        Ok(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine stopped before answering",
        )),
        Ok(Some(Event::Failed(error))) => Err(error),
        Ok(Some(event)) => Ok(event),
    }
}

fn unexpected(event: Event) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the engine sent {event:?} out of order"),
    )
}

/// Where a stream stands between chunks.
struct StreamState {
    receiver: UnboundedReceiver<Event>,
    /// No chunk sent yet (the first carries the assistant's role).
    first: bool,
    /// The last chunk is sent.
    done: bool,
    /// Bytes of answer text sent so far (text completions' `text_offset`).
    offset: usize,
}

/// A streamed answer as Server-Sent Events: chunks of text, the last one
/// with its finish reason, the usage if asked, then `[DONE]`. An error
/// midway ends the stream with an error object.
fn stream_chunks(
    receiver: UnboundedReceiver<Event>,
    id: AnswerId,
    prompt_tokens: usize,
    include_usage: bool,
    with_logprobs: bool,
    timing: Timing,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |value: serde_json::Value| SseEvent::default().data(value.to_string());
    let next = move |state: StreamState| {
        let id = id.clone();
        async move {
            let StreamState {
                mut receiver,
                first,
                done,
                offset,
            } = state;
            if done {
                return None;
            }
            let (events, done, written) = match next_event(&mut receiver, timing.deadline).await {
                Ok(Event::Text { text, logprobs }) => {
                    let logprobs = with_logprobs.then_some(logprobs.as_slice());
                    let chunk = id.chunk(&text, logprobs, offset, first, None);
                    (vec![data(chunk)], false, text.len())
                }
                Ok(Event::Done {
                    finish,
                    completion_tokens,
                }) => {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens,
                    };
                    timing.log(&id, usage);
                    let logprobs = with_logprobs.then_some(&[][..]);
                    let chunk = id.chunk("", logprobs, offset, first, Some(finish));
                    let mut last = vec![data(chunk)];
                    if include_usage {
                        last.push(data(id.usage_chunk(usage)));
                    }
                    last.push(SseEvent::default().data("[DONE]"));
                    (last, true, 0)
                }
                Ok(other) => (vec![data(unexpected(other).body())], true, 0),
                Err(error) => (vec![data(error.body())], true, 0),
            };
            let state = StreamState {
                receiver,
                first: false,
                done,
                offset: offset + written,
            };
            Some((events, state))
        }
    };
    let start = StreamState {
        receiver,
        first: true,
        done: false,
        offset: 0,
    };
    stream::unfold(start, next).flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}
