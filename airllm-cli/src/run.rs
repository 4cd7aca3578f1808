//! `airllm run`: generate for every prompt in one batch.

use std::io::Write;
use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{ComputeBackend, Error, Generated, Result, TokenControl};
use airllm_formats::{Message, ModelDir};
use burn::tensor::backend::Backend;
use tokenizers::Tokenizer;

use crate::cli::RunArgs;
use crate::prompts::{self, Prompt};
use crate::text::{self, TextStream};
use crate::{generation, model};

/// Runs the command.
pub fn run(args: RunArgs) -> Result<()> {
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, RunJob { args })
}

struct RunJob {
    args: RunArgs,
}

fn tokenize(
    args: &RunArgs,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Prompt],
    dir: &ModelDir,
) -> Result<Vec<Vec<u32>>> {
    let needs_text = || {
        tokenizer.ok_or_else(|| {
            Error::Request(format!(
                "{} has no tokenizer; give prompts as token ids with --prompt-ids",
                dir.path.display()
            ))
        })
    };
    let template = match args.chat {
        true => Some(
            dir.chat_template()?
                .ok_or_else(|| {
                    Error::Request(format!(
                        "{} has no chat template (tokenizer_config.json, chat_template.jinja or GGUF metadata); drop --chat",
                        dir.path.display()
                    ))
                })?
                .with_variables(args.chat_options.clone()),
        ),
        false => None,
    };
    prompts
        .iter()
        .map(|p| match (p, &template) {
            (Prompt::Ids(ids), None) => Ok(ids.clone()),
            (Prompt::Ids(_), Some(_)) => Err(Error::Request(
                "--chat applies the template to text prompts; token-id prompts are used as given, without --chat".into(),
            )),
            (Prompt::Text(text), None) => text::encode(needs_text()?, text),
            (Prompt::Text(text), Some(template)) => {
                let mut messages: Vec<Message> = args
                    .system
                    .iter()
                    .map(|s| Message::new("system", s.as_str()))
                    .collect();
                messages.push(Message::new("user", text.as_str()));
                text::encode_chat(needs_text()?, template, &messages)
            }
        })
        .collect()
}

impl BackendJob for RunJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let prompts = prompts::collect(&args)?;
        let dir = model::open_dir(&args.model)?;
        let tokenizer = dir.tokenizer()?;
        let ids = tokenize(&args, tokenizer.as_ref(), &prompts, &dir)?;
        let config = generation::config(&dir, &args.sampling, args.engine.prefill_chunk)?;
        let mut engine =
            model::open_drafted_engine::<B>(&dir, backend, &args.engine, &args.sampling.draft)?;

        let stops = &args.sampling.stop;
        let mut streams: Vec<Option<TextStream>> = ids
            .iter()
            .map(|_| tokenizer.as_ref().map(|_| TextStream::new(stops.clone())))
            .collect();
        let echo = !args.json && ids.len() == 1;
        let mut stdout = std::io::stdout().lock();
        let mut on_token = |index: usize, token: u32| -> TokenControl {
            let (Some(stream), Some(tokenizer)) = (streams[index].as_mut(), tokenizer.as_ref())
            else {
                return TokenControl::Continue;
            };
            match stream.push(tokenizer, token) {
                Ok((fresh, stop)) => {
                    if echo {
                        let _ = write!(stdout, "{fresh}");
                        let _ = stdout.flush();
                    }
                    if stop {
                        TokenControl::Stop
                    } else {
                        TokenControl::Continue
                    }
                }
                Err(_) => TokenControl::Continue,
            }
        };
        let answers = engine.generate(&ids, &config, &mut on_token)?;
        if echo {
            writeln!(stdout).map_err(|e| Error::io("stdout", e))?;
        }
        if !echo {
            print_answers(&mut stdout, &answers, tokenizer.as_ref(), stops, args.json)?;
        }
        Ok(())
    }
}

fn print_answers(
    out: &mut impl Write,
    answers: &[Generated],
    tokenizer: Option<&Tokenizer>,
    stops: &[String],
    json: bool,
) -> Result<()> {
    for (index, answer) in answers.iter().enumerate() {
        let mut text = match tokenizer {
            Some(t) => text::decode(t, &answer.tokens)?,
            None => String::new(),
        };
        if let Some(cut) = text::first_stop(&text, stops) {
            text.truncate(cut);
        }
        let line = if json {
            serde_json::json!({
                "index": index,
                "tokens": answer.tokens,
                "text": text,
                "finish": answer.finish,
            })
            .to_string()
        } else {
            format!("[{index}] {text}")
        };
        writeln!(out, "{line}").map_err(|e| Error::io("stdout", e))?;
    }
    Ok(())
}
