//! `airllm serve`: the model behind OpenAI's HTTP API. The server runs on
//! its own thread; this one loads the model and answers the queued
//! requests together, in the scheduler's shared passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{
    ComputeBackend, Engine, Error, Finish, GenerationConfig, Logprobs, Result, Scheduler,
    SchedulerLimits, TokenControl,
};
use airllm_formats::{ChatTemplate, Message, ModelDir};
use airllm_server::{
    ApiError, Event, FinishReason, Model, PassReport, Prompt, Request, ServeOptions, StatusCode,
    TokenLogprob,
};
use burn::tensor::backend::Backend;
use tokenizers::Tokenizer;

use crate::cli::ServeArgs;
use crate::generation;
use crate::model;
use crate::text::{self, TextStream};

/// Runs the command.
pub fn run(args: ServeArgs) -> Result<()> {
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, ServeJob { args })
}

struct ServeJob {
    args: ServeArgs,
}

/// The id `/v1/models` lists by default: the model's file or folder name
/// without its extension.
fn default_name(args: &ServeArgs) -> String {
    args.model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
}

impl BackendJob for ServeJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let address = format!("{}:{}", args.host, args.port);
        let listener = std::net::TcpListener::bind(&address).map_err(|e| Error::io(&address, e))?;
        let options = ServeOptions {
            model_name: args
                .model_name
                .clone()
                .unwrap_or_else(|| default_name(&args)),
            api_key: args.api_key.clone(),
            max_queue: args.max_queue,
            max_body: args.max_body.0 as usize,
            request_timeout: Duration::from_secs(args.request_timeout),
            cors_origins: args.cors_origins.clone(),
            ..Default::default()
        };
        let (mut server, jobs) =
            airllm_server::start(listener, options).map_err(|e| Error::io(&address, e))?;
        eprintln!(
            "listening on http://{} (loading the model)",
            server.address()
        );
        match EngineModel::<B>::load(&args, backend) {
            Ok(mut model) => {
                eprintln!("ready");
                jobs.serve(&mut model);
            }
            Err(e) => {
                jobs.failed(e.to_string());
                server.stop();
                let _ = server.wait();
                return Err(e);
            }
        }
        server.wait().map_err(|e| Error::io(&address, e))
    }
}

/// The engine with what it needs to answer requests, and the scheduler
/// that runs them together.
struct EngineModel<B: Backend> {
    engine: Engine<B>,
    scheduler: Scheduler<B>,
    /// Each running request's text so far (for stop strings and streaming).
    streams: HashMap<u64, TextStream>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    defaults: GenerationConfig,
    ctx: usize,
}

impl<B: Backend> EngineModel<B> {
    fn load(args: &ServeArgs, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self> {
        let dir: ModelDir = model::open_dir(&args.model)?;
        let tokenizer = dir.tokenizer()?.ok_or_else(|| {
            Error::Request(format!(
                "{} has no tokenizer; the server needs one",
                dir.path.display()
            ))
        })?;
        let template = dir
            .chat_template()?
            .map(|t| t.with_variables(args.chat_options.clone()));
        let defaults = GenerationConfig {
            draft: args.draft.settings(),
            ..generation::config(&dir, &Default::default(), args.engine.prefill_chunk)?
        };
        let mut engine = model::open_drafted_engine::<B>(&dir, backend, &args.engine, &args.draft)?;
        let ctx = args.ctx.min(engine.arch().dims().max_positions);
        let limits = SchedulerLimits {
            max_batch: args.max_batch.max(1),
            prefill_chunk: args.engine.prefill_chunk.clamp(1, ctx),
        };
        // Loads the resident units now (while /health says loading), and
        // refuses a budget that cannot hold --max-batch requests of --ctx.
        engine.prepare(limits.max_batch, limits.prefill_chunk, ctx)?;
        engine.reset_stats();
        Ok(EngineModel {
            scheduler: Scheduler::new(limits, engine.arch().dims()),
            engine,
            streams: HashMap::new(),
            tokenizer,
            template,
            defaults,
            ctx,
        })
    }

    fn tokens(&self, prompt: &Prompt) -> std::result::Result<Vec<u32>, ApiError> {
        let engine_error = |e: Error| ApiError::bad_field("messages", e.to_string());
        match prompt {
            Prompt::Text(text) => text::encode(&self.tokenizer, text).map_err(engine_error),
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    ApiError::bad_field(
                        "messages",
                        "the model has no chat template; use /v1/completions",
                    )
                })?;
                let messages: Vec<Message> = messages
                    .iter()
                    .map(|m| Message::new(&m.role, m.content.as_str()))
                    .collect();
                text::encode_chat(&self.tokenizer, template, &messages).map_err(engine_error)
            }
        }
    }

    /// The new tokens `request` may take: its max_tokens, or what is left
    /// of the context; a 400 when the prompt and max_tokens exceed it.
    fn limit(&self, request: &Request, prompt: usize) -> std::result::Result<usize, ApiError> {
        let too_long = |param: &str, wanted: usize| {
            ApiError::bad_field(
                param,
                format!(
                    "the prompt ({prompt} tokens) plus max_tokens come to {wanted} positions, past this server's context of {} (--ctx)",
                    self.ctx
                ),
            )
        };
        if prompt >= self.ctx {
            return Err(too_long("messages", prompt));
        }
        match request.max_tokens {
            Some(wanted) if prompt.saturating_add(wanted) > self.ctx => {
                Err(too_long("max_tokens", prompt.saturating_add(wanted)))
            }
            Some(wanted) => Ok(wanted),
            None => Ok(self.ctx - prompt),
        }
    }
}

impl<B: Backend> Model for EngineModel<B> {
    fn room(&self) -> usize {
        self.scheduler.room()
    }

    fn submit(&mut self, id: u64, request: &Request) -> std::result::Result<usize, ApiError> {
        let ids = self.tokens(&request.prompt)?;
        let limit = self.limit(request, ids.len())?;
        let prompt_tokens = ids.len();
        let config = GenerationConfig {
            max_new_tokens: limit,
            sampling: request.sampling.clone(),
            eos: match request.ignore_eos {
                true => Vec::new(),
                false => self.defaults.eos.clone(),
            },
            logprobs: request.logprobs,
            ..self.defaults.clone()
        };
        self.scheduler
            .submit(id, ids, &config)
            .map_err(|e| ApiError::bad_field("messages", e.to_string()))?;
        self.streams
            .insert(id, TextStream::new(request.stop.clone()));
        Ok(prompt_tokens)
    }

    fn cancel(&mut self, id: u64) {
        self.scheduler.cancel(id);
        self.streams.remove(&id);
    }

    fn running(&self) -> usize {
        self.scheduler.running()
    }

    fn step(&mut self, emit: &mut dyn FnMut(u64, Event)) {
        let (tokenizer, streams) = (&self.tokenizer, &mut self.streams);
        let stepped = self.scheduler.step(&mut self.engine, &mut |id, sampled| {
            let Some(stream) = streams.get_mut(&id) else {
                return TokenControl::Continue;
            };
            let logprobs: Vec<TokenLogprob> = sampled
                .logprobs
                .iter()
                .map(|p| token_logprob(tokenizer, sampled.token, p))
                .collect();
            match stream.push(tokenizer, sampled.token) {
                Ok((text, stop)) => {
                    if !text.is_empty() || !logprobs.is_empty() {
                        emit(id, Event::Text { text, logprobs });
                    }
                    match stop {
                        true => TokenControl::Stop,
                        false => TokenControl::Continue,
                    }
                }
                Err(_) => TokenControl::Continue,
            }
        });
        match stepped {
            Ok(ended) => {
                for (id, answer) in ended {
                    self.streams.remove(&id);
                    let finish = match answer.finish {
                        Finish::Length => FinishReason::Length,
                        _ => FinishReason::Stop,
                    };
                    let completion_tokens = answer.tokens.len();
                    emit(
                        id,
                        Event::Done {
                            finish,
                            completion_tokens,
                        },
                    );
                }
            }
            Err(failed) => {
                for id in failed.failed {
                    self.streams.remove(&id);
                    let error = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the engine failed: {}", failed.error),
                    );
                    emit(id, Event::Failed(error));
                }
            }
        }
    }

    fn take_passes(&mut self) -> PassReport {
        let stats = self.engine.stats();
        let busy = stats
            .units
            .iter()
            .map(|u| u.upload + u.compute)
            .sum::<Duration>();
        let report = PassReport {
            passes: stats.passes,
            bytes_read: stats.bytes_read(),
            seconds: (busy + stats.read_wait + stats.expert_wait).as_secs_f64(),
        };
        self.engine.reset_stats();
        report
    }

    fn planned_bytes(&self) -> u64 {
        self.engine.plan().map_or(0, |plan| plan.predicted_peak())
    }
}

/// `token`'s log-probabilities with the tokens as text (each alone).
fn token_logprob(tokenizer: &Tokenizer, token: u32, logprobs: &Logprobs) -> TokenLogprob {
    let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    TokenLogprob {
        token: text(token),
        logprob: logprobs.logprob,
        top: logprobs.top.iter().map(|&(id, l)| (text(id), l)).collect(),
    }
}
