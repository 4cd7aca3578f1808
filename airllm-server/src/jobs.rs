//! Requests handed from the HTTP side to the engine thread, which runs
//! them in arrival order, and what it tells each request's handler back.
//! The queue is bounded (a full one is the 429 the handler answers); a job
//! whose client has gone is dropped unrun, and a running one stops at its
//! next token.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::openai::{FinishReason, Request};

/// What the engine thread tells a request's handler.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt was accepted: its length in tokens.
    Started {
        /// Tokens of the prompt.
        prompt_tokens: usize,
    },
    /// New text of the answer.
    Text(String),
    /// The answer ended.
    Done {
        /// Why.
        finish: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The request failed (a prompt too long, an engine error).
    Failed(ApiError),
}

/// What the engine's forward passes cost since the last report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Forward passes run.
    pub passes: u64,
    /// Bytes read from the weight store.
    pub bytes_read: u64,
    /// Seconds the passes took.
    pub seconds: f64,
}

/// A model the engine thread answers requests with.
pub trait Model {
    /// Answers `request`, telling `emit` what happens in order: `Started`,
    /// `Text`s, then `Done`, or `Failed` at any point. `emit` returns
    /// `false` once the client has gone; generation should then stop.
    fn answer(&mut self, request: &Request, emit: &mut dyn FnMut(Event) -> bool);

    /// The passes run since the last call (for `/metrics`).
    fn take_passes(&mut self) -> PassReport {
        PassReport::default()
    }
}

/// One request on its way to the engine thread.
pub(crate) struct Job {
    pub request: Request,
    pub events: UnboundedSender<Event>,
}

/// What the server knows of the engine thread, and its counters.
#[derive(Default)]
pub struct Status {
    ready: AtomicBool,
    failed: Mutex<Option<String>>,
    pub(crate) queued: AtomicUsize,
    pub(crate) running: AtomicUsize,
    pub(crate) requests: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) completion_tokens: AtomicU64,
    pub(crate) passes: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) pass_microseconds: AtomicU64,
}

/// The engine thread's state, as `/health` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The model is still loading.
    Loading,
    /// Requests are answered.
    Ready,
    /// Loading failed, with the reason.
    Failed(String),
}

impl Status {
    /// The engine thread's state.
    pub fn health(&self) -> Health {
        if let Some(reason) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Health::Failed(reason);
        }
        match self.ready.load(Ordering::Acquire) {
            true => Health::Ready,
            false => Health::Loading,
        }
    }
}

/// The engine thread's end of the queue.
pub struct Jobs {
    pub(crate) receiver: mpsc::Receiver<Job>,
    pub(crate) status: Arc<Status>,
}

impl Jobs {
    /// Answers requests with `model` until the server stops.
    pub fn serve(self, model: &mut dyn Model) {
        self.status.ready.store(true, Ordering::Release);
        while let Ok(job) = self.receiver.recv() {
            self.status.queued.fetch_sub(1, Ordering::AcqRel);
            if job.events.is_closed() {
                continue;
            }
            self.status.running.fetch_add(1, Ordering::AcqRel);
            let status = &self.status;
            let events = &job.events;
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.answer(&job.request, &mut |event| {
                    match &event {
                        Event::Started { prompt_tokens } => {
                            status
                                .prompt_tokens
                                .fetch_add(*prompt_tokens as u64, Ordering::Relaxed);
                        }
                        Event::Text(_) => {}
                        Event::Done {
                            completion_tokens, ..
                        } => {
                            status
                                .completion_tokens
                                .fetch_add(*completion_tokens as u64, Ordering::Relaxed);
                        }
                        Event::Failed(_) => {}
                    }
                    events.send(event).is_ok()
                })
            }));
            if answered.is_err() {
                let error = ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine failed on this request (a bug: please report it with the request)",
                );
                let _ = job.events.send(Event::Failed(error));
            }
            let passes = model.take_passes();
            self.status
                .passes
                .fetch_add(passes.passes, Ordering::Relaxed);
            self.status
                .bytes_read
                .fetch_add(passes.bytes_read, Ordering::Relaxed);
            let micros = (passes.seconds * 1e6) as u64;
            self.status
                .pass_microseconds
                .fetch_add(micros, Ordering::Relaxed);
            self.status.running.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Reports that the model could not be loaded: `/health` says why and
    /// every request is answered 503.
    pub fn failed(self, reason: String) {
        *self.status.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}
