//! Requests handed from the HTTP side to the engine thread, which runs
//! them together in shared forward passes (continuous batching), and what
//! it tells each request's handler back. The queue is bounded (a full one
//! is the 429 the handler answers); requests leave it in arrival order as
//! the model has room; a request whose client has gone is dropped before
//! the next pass.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::openai::{FinishReason, Request, TokenLogprob};

/// What the engine thread tells a request's handler.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt was accepted: its length in tokens.
    Started {
        /// Tokens of the prompt.
        prompt_tokens: usize,
    },
    /// New text of the answer, with the log-probabilities of the tokens
    /// that made it when the request asks (a token may bring no text yet).
    Text {
        /// The text.
        text: String,
        /// Its tokens' log-probabilities (empty unless asked).
        logprobs: Vec<TokenLogprob>,
    },
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

/// A model the engine thread answers requests with, in shared passes:
/// requests join between passes while it has room, and each pass advances
/// every request it holds.
pub trait Model {
    /// Requests it can take now.
    fn room(&self) -> usize;

    /// Checks `request` and takes it as sequence `id` (unique among those
    /// it holds): the prompt's length in tokens, or the error to answer
    /// (a 400 for a prompt too long).
    fn submit(&mut self, id: u64, request: &Request) -> Result<usize, ApiError>;

    /// Drops sequence `id` (its client has gone); its room is free at once.
    fn cancel(&mut self, id: u64);

    /// Sequences it holds.
    fn running(&self) -> usize;

    /// Runs one pass over the sequences it holds, telling `emit(id, event)`
    /// what happens to each: `Text`s, then `Done` or `Failed` (after which
    /// the sequence is gone).
    fn step(&mut self, emit: &mut dyn FnMut(u64, Event));

    /// The passes run since the last call (for `/metrics`).
    fn take_passes(&mut self) -> PassReport {
        PassReport::default()
    }

    /// The memory its plan predicts at most, in bytes (for `/metrics`;
    /// 0 when it has no plan).
    fn planned_bytes(&self) -> u64 {
        0
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
    pub(crate) planned_bytes: AtomicU64,
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
    /// Answers requests with `model` until the server stops: requests join
    /// the running batch between passes while the model has room (the rest
    /// wait in the queue), and one whose client has gone is dropped before
    /// the next pass.
    pub fn serve(self, model: &mut dyn Model) {
        let status = &self.status;
        status
            .planned_bytes
            .store(model.planned_bytes(), Ordering::Relaxed);
        status.ready.store(true, Ordering::Release);
        let mut live: HashMap<u64, UnboundedSender<Event>> = HashMap::new();
        let mut next_id = 0u64;
        let mut open = true;
        while open || !live.is_empty() {
            while open && model.room() > 0 {
                // Idle, the thread sleeps until a request comes.
                let job = match live.is_empty() {
                    true => self.receiver.recv().map_err(|_| TryRecvError::Disconnected),
                    false => self.receiver.try_recv(),
                };
                let job = match job {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                };
                status.queued.fetch_sub(1, Ordering::AcqRel);
                if job.events.is_closed() {
                    continue;
                }
                let id = next_id;
                next_id += 1;
                match model.submit(id, &job.request) {
                    Ok(prompt_tokens) => {
                        status
                            .prompt_tokens
                            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                        let _ = job.events.send(Event::Started { prompt_tokens });
                        live.insert(id, job.events);
                    }
                    Err(error) => {
                        let _ = job.events.send(Event::Failed(error));
                    }
                }
            }
            live.retain(|&id, events| {
                let gone = events.is_closed();
                if gone {
                    model.cancel(id);
                }
                !gone
            });
            if !live.is_empty() {
                self.pass(model, &mut live);
            }
            status.running.store(model.running(), Ordering::Relaxed);
        }
    }

    /// Runs one pass of `model`, handing each event to its request.
    fn pass(&self, model: &mut dyn Model, live: &mut HashMap<u64, UnboundedSender<Event>>) {
        let status = &self.status;
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.step(&mut |id, event| {
                let ended = matches!(event, Event::Done { .. } | Event::Failed(_));
                if let Event::Done {
                    completion_tokens, ..
                } = &event
                {
                    status
                        .completion_tokens
                        .fetch_add(*completion_tokens as u64, Ordering::Relaxed);
                }
                if let Some(events) = live.get(&id) {
                    let _ = events.send(event);
                }
                if ended {
                    live.remove(&id);
                }
            })
        }));
        if stepped.is_err() {
            for (id, events) in live.drain() {
                model.cancel(id);
                let error = ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine failed on this request (a bug: please report it with the request)",
                );
                let _ = events.send(Event::Failed(error));
            }
        }
        let passes = model.take_passes();
        status.passes.fetch_add(passes.passes, Ordering::Relaxed);
        status
            .bytes_read
            .fetch_add(passes.bytes_read, Ordering::Relaxed);
        let micros = (passes.seconds * 1e6) as u64;
        status
            .pass_microseconds
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Reports that the model could not be loaded: `/health` says why and
    /// every request is answered 503.
    pub fn failed(self, reason: String) {
        *self.status.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}
