//! The engine's own thread. It opens the model on the chosen device (inside
//! the device's compute pool, as `airllm run` does) and runs the commands
//! the Python side sends, one at a time, until the model is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use airllm_backends::{dispatch, BackendJob};
use airllm_cli::bench::{self, Measurement};
use airllm_cli::cli::{EngineArgs, Switch};
use airllm_cli::model;
use airllm_cli::text::{self, TextStream};
use airllm_core::{ComputeBackend, Engine, Error, Finish, GenerationConfig, Result, TokenControl};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;
use serde_json::Value;
use tokenizers::Tokenizer;

/// One prompt's answer.
pub struct Answer {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Their text (special tokens skipped, cut at a stop string); `None`
    /// for a model without a tokenizer.
    pub text: Option<String>,
    /// Why it ended.
    pub finish: Finish,
}

/// What a generation sends back.
pub enum Event {
    /// New text (only when streaming, which takes one prompt).
    Text(String),
    /// The answers, in prompt order, or what failed.
    Done(Result<Vec<Answer>>),
}

/// A batch to generate.
pub struct GenerateRequest {
    /// Token ids of each prompt.
    pub prompts: Vec<Vec<u32>>,
    /// Length, sampling and end tokens.
    pub config: GenerationConfig,
    /// Strings that end a sequence.
    pub stops: Vec<String>,
    /// Whether to send each prompt's text as it is decoded.
    pub stream: bool,
    /// Set to end every sequence at its next token.
    pub cancel: Arc<AtomicBool>,
    /// Where the text and the answers go.
    pub events: Sender<Event>,
}

/// A benchmark run on the open model.
pub struct ProfileRequest {
    /// Prompts in the batch.
    pub batch: usize,
    /// The prompt each runs; `None`: `airllm bench`'s random prompt of
    /// `prompt_len` tokens.
    pub prompt: Option<Vec<u32>>,
    /// Prompt tokens when no prompt is given.
    pub prompt_len: usize,
    /// New tokens per prompt, end tokens ignored.
    pub new_tokens: usize,
    /// Where the report (`airllm bench --json`'s) goes.
    pub reply: Sender<Result<Value>>,
}

enum Command {
    Generate(GenerateRequest),
    Profile(ProfileRequest),
}

/// The handle of the engine thread; dropping it ends the thread once its
/// current command is done.
pub struct Worker {
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// How the engine thread opens the model.
pub struct WorkerSettings {
    /// The model.
    pub dir: ModelDir,
    /// Device, budget and the other engine settings.
    pub engine: EngineArgs,
    /// Its tokenizer, for answers' text and stop strings.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Print the per-layer profile after each generation.
    pub profiling: bool,
}

impl Worker {
    /// Starts the engine thread; the receiver says when the model is open
    /// (or why it could not be).
    pub fn start(settings: WorkerSettings) -> Result<(Worker, Receiver<Result<()>>)> {
        let (commands, inbox) = channel();
        let (ready, opened) = channel();
        let (device, options) = (settings.engine.device, settings.engine.device_options());
        let thread = std::thread::Builder::new()
            .name("airllm-engine".into())
            .spawn(move || {
                let failed = ready.clone();
                let job = EngineJob {
                    settings,
                    inbox,
                    ready,
                };
                if let Err(e) = dispatch(device, options, job) {
                    let _ = failed.send(Err(e));
                }
            })
            .map_err(|e| Error::Backend(format!("starting the engine thread: {e}")))?;
        let worker = Worker {
            commands: Some(commands),
            thread: Some(thread),
        };
        Ok((worker, opened))
    }

    /// Queues a generation; its events arrive on `request.events`.
    pub fn generate(&self, request: GenerateRequest) -> Result<()> {
        self.send(Command::Generate(request))
    }

    /// Queues a benchmark run; its report arrives on `request.reply`.
    pub fn profile(&self, request: ProfileRequest) -> Result<()> {
        self.send(Command::Profile(request))
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands
            .as_ref()
            .and_then(|c| c.send(command).ok())
            .ok_or_else(|| Error::Backend("the engine thread has stopped".into()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct EngineJob {
    settings: WorkerSettings,
    inbox: Receiver<Command>,
    ready: Sender<Result<()>>,
}

impl BackendJob for EngineJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let EngineJob {
            settings,
            inbox,
            ready,
        } = self;
        let mut engine = model::open_engine::<B>(&settings.dir, backend, &settings.engine)?;
        let _ = ready.send(Ok(()));
        for command in inbox {
            match command {
                Command::Generate(request) => {
                    let answers = generate(&mut engine, &request, &settings);
                    let _ = request.events.send(Event::Done(answers));
                }
                Command::Profile(request) => {
                    let prompts = match request.prompt {
                        Some(prompt) => vec![prompt; request.batch],
                        None => bench::random_prompts(
                            request.batch,
                            request.prompt_len,
                            engine.arch().dims().vocab,
                        ),
                    };
                    let report = bench::measure(
                        &mut engine,
                        Measurement {
                            dir: &settings.dir,
                            prompts,
                            new_tokens: request.new_tokens,
                            prefill_chunk: settings.engine.prefill_chunk,
                            draft: None,
                            expert_cache: settings.engine.expert_cache == Switch::On,
                        },
                    );
                    let _ = request.reply.send(report);
                }
            }
        }
        Ok(())
    }
}

/// Runs one generation: text follows each sequence only where it is
/// streamed or stop strings must be found.
fn generate<B: Backend>(
    engine: &mut Engine<B>,
    request: &GenerateRequest,
    settings: &WorkerSettings,
) -> Result<Vec<Answer>> {
    let tokenizer = settings.tokenizer.as_deref();
    let follow_text = tokenizer.is_some() && (request.stream || !request.stops.is_empty());
    let mut streams: Vec<TextStream> = request
        .prompts
        .iter()
        .map(|_| TextStream::new(request.stops.clone()))
        .collect();
    engine.set_sync_units(settings.profiling);
    if settings.profiling {
        engine.reset_stats();
    }
    let mut on_token = |index: usize, token: u32| {
        if request.cancel.load(Ordering::Relaxed) {
            return TokenControl::Stop;
        }
        let (true, Some(tokenizer)) = (follow_text, tokenizer) else {
            return TokenControl::Continue;
        };
        match streams[index].push(tokenizer, token) {
            Ok((fresh, stop)) => {
                if request.stream && !fresh.is_empty() {
                    let _ = request.events.send(Event::Text(fresh));
                }
                match stop {
                    true => TokenControl::Stop,
                    false => TokenControl::Continue,
                }
            }
            Err(_) => TokenControl::Continue,
        }
    };
    let generated = engine.generate(&request.prompts, &request.config, &mut on_token)?;
    if settings.profiling {
        bench::print_unit_table(&bench::unit_rows(engine.stats()));
    }
    generated
        .into_iter()
        .zip(streams.iter_mut())
        .map(|(answer, stream)| {
            let text = match tokenizer {
                Some(tokenizer) => {
                    if request.stream {
                        let rest = stream.finish(tokenizer)?;
                        if !rest.is_empty() {
                            let _ = request.events.send(Event::Text(rest));
                        }
                    }
                    let mut text = text::decode(tokenizer, &answer.tokens)?;
                    if let Some(cut) = text::first_stop(&text, &request.stops) {
                        text.truncate(cut);
                    }
                    Some(text)
                }
                None => None,
            };
            Ok(Answer {
                tokens: answer.tokens,
                text,
                finish: answer.finish,
            })
        })
        .collect()
}
