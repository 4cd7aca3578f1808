//! An OpenAI-compatible HTTP server over the airllm-rs engine (`airllm
//! serve`): `POST /v1/chat/completions` and `/v1/completions` (streamed as
//! Server-Sent Events or not), `GET /v1/models`, `/health` and `/metrics`.
//!
//! The HTTP side runs on tokio in a thread of its own; the engine stays on
//! the caller's thread, which loads the model and then answers the queued
//! requests ([`Jobs::serve`]) through a [`Model`]: requests join the
//! model's running batch between its passes while it has room, in arrival
//! order, and leave it as they finish or their clients go.
//!
//! ```no_run
//! # fn load() -> Box<dyn airllm_server::Model> { unimplemented!() }
//! let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
//! let (server, jobs) = airllm_server::start(listener, airllm_server::ServeOptions::default())?;
//! let mut model = load(); // while /health answers 503 "loading"
//! jobs.serve(&mut *model); // returns once the server has stopped
//! server.wait();
//! # Ok::<(), std::io::Error>(())
//! ```

mod error;
mod jobs;
pub mod openai;
mod routes;

use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub use axum::http::StatusCode;
pub use error::ApiError;
pub use jobs::{Event, Health, Jobs, Model, PassReport, Status};
pub use openai::{FinishReason, Prompt, Request, RequestLimits, TokenLogprob};

/// How the server is set up (each a flag of `airllm serve`).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The id `/v1/models` lists (any `model` a request names is accepted).
    pub model_name: String,
    /// The key every route but `/health` requires as `Authorization:
    /// Bearer KEY`; `None` asks for none.
    pub api_key: Option<String>,
    /// Requests waiting for the engine at most; past it, 429.
    pub max_queue: usize,
    /// Largest request body, in bytes; past it, 413.
    pub max_body: usize,
    /// Longest a request may take, waiting included; past it, 504.
    pub request_timeout: Duration,
    /// Limits on stop strings.
    pub limits: RequestLimits,
    /// Longest the server waits for requests in flight once asked to stop.
    pub shutdown_grace: Duration,
    /// Origins a browser may call from (CORS); empty: none (no CORS
    /// headers are sent).
    pub cors_origins: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_name: "model".into(),
            api_key: None,
            max_queue: 64,
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(600),
            limits: RequestLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            cors_origins: Vec::new(),
        }
    }
}

/// The running HTTP side.
pub struct Server {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Asks it to stop: it refuses new connections and waits up to the
    /// grace time for requests in flight.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until it has stopped (on [`Server::stop`], Ctrl-C or SIGTERM).
    pub fn wait(self) -> std::io::Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked")))
    }
}

/// Starts serving on `listener`; returns the server and the queue the
/// engine thread answers ([`Jobs::serve`], or [`Jobs::failed`] when the
/// model cannot be loaded). Until then `/health` says `loading` and
/// requests are answered 503.
pub fn start(listener: TcpListener, options: ServeOptions) -> std::io::Result<(Server, Jobs)> {
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let (sender, receiver) = mpsc::sync_channel(options.max_queue);
    let status = Arc::new(Status::default());
    let grace = options.shutdown_grace;
    let app = Arc::new(routes::App {
        options,
        jobs: sender,
        status: status.clone(),
        answers: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("airllm-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let router = routes::router(app);
                let (signalled, on_signal) = tokio::sync::watch::channel(false);
                let shutdown = async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate() => {}
                    }
                    let _ = signalled.send(true);
                };
                let serving = axum::serve(listener, router).with_graceful_shutdown(shutdown);
                let mut on_signal = on_signal;
                tokio::select! {
                    served = serving => served,
                    _ = async {
                        let _ = on_signal.wait_for(|s| *s).await;
                        tokio::time::sleep(grace).await;
                    } => {
                        tracing::warn!("requests still in flight after the shutdown grace time; stopping anyway");
                        Ok(())
                    }
                }
            })
        })?;
    let server = Server {
        address,
        stop: Some(stop),
        thread,
    };
    Ok((server, Jobs { receiver, status }))
}

/// Resolves on SIGTERM (never elsewhere than on Unix).
async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}
