//! `airllm chat`: an interactive conversation. Each turn renders the whole
//! history with the model's chat template and streams the answer.

use std::io::{BufRead, Write};
use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{ComputeBackend, Error, Result, TokenControl};
use airllm_formats::Message;
use burn::tensor::backend::Backend;

use crate::cli::ChatArgs;
use crate::text::{self, TextStream};
use crate::{generation, model};

/// Runs the command.
pub fn run(args: ChatArgs) -> Result<()> {
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, ChatJob { args })
}

struct ChatJob {
    args: ChatArgs,
}

impl BackendJob for ChatJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let dir = model::open_dir(&args.model)?;
        let missing = |what: &str| {
            Error::Request(format!(
                "{} has no {what}; `airllm chat` needs one",
                dir.path.display()
            ))
        };
        let tokenizer = dir.tokenizer()?.ok_or_else(|| missing("tokenizer"))?;
        let template = dir
            .chat_template()?
            .ok_or_else(|| missing("chat template"))?
            .with_variables(args.chat_options.clone());
        let config = generation::config(&dir, &args.sampling, args.engine.prefill_chunk)?;
        let mut engine =
            model::open_drafted_engine::<B>(&dir, backend, &args.engine, &args.sampling.draft)?;
        let opening: Vec<Message> = args
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .collect();
        let mut history = opening.clone();
        eprintln!("Type a message and press Enter; /reset forgets the conversation, an empty line or Ctrl-D ends it.");
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            eprint!("> ");
            let Some(line) = lines
                .next()
                .transpose()
                .map_err(|e| Error::io("stdin", e))?
            else {
                break;
            };
            let line = line.trim();
            match line {
                "" => break,
                "/reset" => {
                    history = opening.clone();
                    continue;
                }
                _ => history.push(Message::new("user", line)),
            }
            let ids = text::encode_chat(&tokenizer, &template, &history)?;
            let mut stream = TextStream::new(args.sampling.stop.clone());
            let mut stdout = std::io::stdout().lock();
            let answers = engine.generate(&[ids], &config, &mut |_, token| {
                match stream.push(&tokenizer, token) {
                    Ok((fresh, stop)) => {
                        let _ = write!(stdout, "{fresh}");
                        let _ = stdout.flush();
                        if stop {
                            return TokenControl::Stop;
                        }
                    }
                    Err(_) => return TokenControl::Continue,
                }
                TokenControl::Continue
            })?;
            writeln!(stdout).map_err(|e| Error::io("stdout", e))?;
            let mut reply = text::decode(&tokenizer, &answers[0].tokens)?;
            if let Some(cut) = text::first_stop(&reply, &args.sampling.stop) {
                reply.truncate(cut);
            }
            history.push(Message::new("assistant", reply.trim()));
        }
        Ok(())
    }
}
