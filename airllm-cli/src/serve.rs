//! `airllm serve`: the model behind OpenAI's HTTP API. The server runs on
//! its own thread; this one loads the model and answers the queued
//! requests, one at a time.

use std::sync::Arc;
use std::time::Duration;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{ComputeBackend, Engine, Error, Finish, GenerationConfig, Result, TokenControl};
use airllm_formats::{ChatTemplate, Message, ModelDir};
use airllm_server::{
    ApiError, Event, FinishReason, Model, PassReport, Prompt, Request, ServeOptions, StatusCode,
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

/// The engine with what it needs to answer requests.
struct EngineModel<B: Backend> {
    engine: Engine<B>,
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
        let defaults = generation::config(&dir, &Default::default(), args.engine.prefill_chunk)?;
        let mut engine = model::open_engine::<B>(&dir, backend, &args.engine)?;
        let ctx = args.ctx.min(engine.arch().dims().max_positions);
        // Loads the resident units now (while /health says loading), and
        // refuses a budget that cannot hold a request of --ctx positions.
        engine.prepare(1, args.engine.prefill_chunk.clamp(1, ctx), ctx)?;
        engine.reset_stats();
        Ok(EngineModel {
            engine,
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

    fn answer(&mut self, request: &Request, emit: &mut dyn FnMut(Event) -> bool) {
        let checked = self
            .tokens(&request.prompt)
            .and_then(|ids| self.limit(request, ids.len()).map(|limit| (ids, limit)));
        let (ids, limit) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                emit(Event::Failed(error));
                return;
            }
        };
        if !emit(Event::Started {
            prompt_tokens: ids.len(),
        }) {
            return;
        }
        let config = GenerationConfig {
            max_new_tokens: limit,
            sampling: request.sampling.clone(),
            ..self.defaults.clone()
        };
        let mut stream = TextStream::new(&self.tokenizer, &request.stop);
        let mut generated = 0;
        let mut on_token = |_: usize, token: u32| {
            generated += 1;
            match stream.push(token) {
                Ok((fresh, stop)) => {
                    let delivered = fresh.is_empty() || emit(Event::Text(fresh));
                    match delivered && !stop {
                        true => TokenControl::Continue,
                        false => TokenControl::Stop,
                    }
                }
                Err(_) => TokenControl::Continue,
            }
        };
        let outcome = self.engine.generate(&[ids], &config, &mut on_token);
        let event = match outcome {
            Ok(answers) => Event::Done {
                finish: match answers[0].finish {
                    Finish::Length => FinishReason::Length,
                    _ => FinishReason::Stop,
                },
                completion_tokens: generated,
            },
            Err(e) => Event::Failed(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the engine failed: {e}"),
            )),
        };
        emit(event);
    }
}
