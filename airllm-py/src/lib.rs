//! `airllm_rs._native`: the engine behind the Python package `airllm_rs`.
//! A [`Model`] owns an engine thread (`worker`); its methods hand work to
//! that thread and wait for the answer with the GIL released, checking
//! for Ctrl-C as they wait. The Python-facing API (AirLLM's `AutoModel`,
//! the Hugging Face-style tokenizer, the Ray Data predictor) is written in
//! Python over this module, in `python/airllm_rs`.

mod errors;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airllm_cli::cli::{EngineArgs, SamplingArgs, SplitArgs, Switch};
use airllm_cli::{generation, model, split};
use airllm_core::{ByteSize, Error, Finish};
use airllm_formats::split::{Compression, StorageSettings};
use airllm_formats::{ChatTemplate, Manifest, ModelDir, MANIFEST_FILE};
use pyo3::prelude::*;
use tokenizers::Tokenizer;

use crate::errors::{bad_argument, to_py};
use crate::worker::{Answer, Event, GenerateRequest, ProfileRequest, Worker, WorkerSettings};

/// How often a waiting call checks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Waits for the next message on `inbox` with the GIL released, checking
/// for signals before each wait of at most [`SIGNAL_POLL`] (a stream of
/// messages never starves the check). Ctrl-C sets `cancel` (the engine
/// ends every sequence at its next token) and the wait goes on until a
/// message comes (a generation's end, a stream's next piece), then raises
/// `KeyboardInterrupt`; the engine is idle again within one pass. Without
/// `cancel`, Ctrl-C raises at once.
fn wait<T: Send>(
    py: Python<'_>,
    inbox: &Mutex<Receiver<T>>,
    cancel: Option<&AtomicBool>,
) -> PyResult<T> {
    let mut interrupt: Option<PyErr> = None;
    loop {
        if interrupt.is_none() {
            if let Err(signal) = py.check_signals() {
                let Some(cancel) = cancel else {
                    return Err(signal);
                };
                cancel.store(true, Ordering::Relaxed);
                interrupt = Some(signal);
            }
        }
        let received = py.detach(|| {
            inbox
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .recv_timeout(SIGNAL_POLL)
        });
        match received {
            Ok(message) => return interrupt.map_or(Ok(message), Err),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(interrupt.unwrap_or_else(|| {
                    to_py(Error::Backend("the engine thread has stopped".into()))
                }))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// A memory size: bytes, or text such as "4GB" or "512MiB".
#[derive(FromPyObject)]
enum MemorySize {
    Bytes(u64),
    Text(String),
}

impl MemorySize {
    /// The size, errors naming the keyword `name`.
    fn bytes(self, name: &str) -> PyResult<ByteSize> {
        match self {
            MemorySize::Bytes(bytes) => Ok(ByteSize(bytes)),
            MemorySize::Text(text) => text
                .parse()
                .map_err(|e: String| bad_argument(format!("{name}: {e}"))),
        }
    }
}

/// Length, sampling and stopping of one generation; the Python side
/// passes every key.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Settings {
    max_new_tokens: Option<usize>,
    greedy: bool,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: u64,
    eos_token_id: Option<Vec<u32>>,
    ignore_eos: bool,
    stop: Vec<String>,
}

impl Settings {
    /// Checks each value's range.
    fn check(&self) -> PyResult<()> {
        let outside = |name: &str, value: Option<f32>, ok: fn(f32) -> bool, range: &str| match value
        {
            Some(v) if !ok(v) => Err(bad_argument(format!("{name} is {v}; it must be {range}"))),
            _ => Ok(()),
        };
        outside(
            "temperature",
            self.temperature,
            |t| t >= 0.0 && t.is_finite(),
            "0 or more",
        )?;
        outside("top_p", self.top_p, |p| p > 0.0 && p <= 1.0, "in (0, 1]")?;
        outside(
            "repetition_penalty",
            self.repetition_penalty,
            |r| r > 0.0 && r.is_finite(),
            "above 0",
        )?;
        if self.max_new_tokens == Some(0) {
            return Err(bad_argument("max_new_tokens is 0; it must be at least 1"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(bad_argument("stop strings must not be empty"));
        }
        Ok(())
    }
}

/// A model opened on its device, with its tokenizer and chat template.
#[pyclass(module = "airllm_rs._native", frozen)]
struct Model {
    worker: Worker,
    dir: ModelDir,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<ChatTemplate>,
    prefill_chunk: usize,
}

impl Model {
    fn tokenizer(&self) -> PyResult<&Tokenizer> {
        self.tokenizer.as_deref().ok_or_else(|| {
            bad_argument(format!(
                "{} has no tokenizer; pass token ids instead of text",
                self.dir.path.display()
            ))
        })
    }

    /// Queues a generation of `prompts`; its events come to the receiver.
    fn start(
        &self,
        prompts: Vec<Vec<u32>>,
        settings: Settings,
        stream: bool,
    ) -> PyResult<(Mutex<Receiver<Event>>, Arc<AtomicBool>)> {
        settings.check()?;
        let sampling = SamplingArgs {
            max_new_tokens: settings.max_new_tokens,
            greedy: settings.greedy,
            temperature: settings.temperature,
            top_k: settings.top_k,
            top_p: settings.top_p,
            repetition_penalty: settings.repetition_penalty,
            seed: settings.seed,
            stop: settings.stop.clone(),
            draft: Default::default(),
        };
        let mut config =
            generation::config(&self.dir, &sampling, self.prefill_chunk).map_err(to_py)?;
        if let Some(eos) = settings.eos_token_id {
            config.eos = eos;
        }
        if settings.ignore_eos {
            config.eos.clear();
        }
        let (events, inbox) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        self.worker
            .generate(GenerateRequest {
                prompts,
                config,
                stops: settings.stop,
                stream,
                cancel: cancel.clone(),
                events,
            })
            .map_err(to_py)?;
        Ok((Mutex::new(inbox), cancel))
    }
}

fn finish_name(finish: Finish) -> &'static str {
    match finish {
        Finish::Eos => "eos",
        Finish::Length => "length",
        Finish::Stopped => "stop",
        Finish::Context => "context",
    }
}

#[pymethods]
impl Model {
    /// Opens `model` (a GGUF file, Hugging Face directory, split directory
    /// or hub id) on `device` and starts its engine thread.
    #[new]
    #[pyo3(signature = (
        model, *, device = "cpu", max_memory = None, max_host_memory = None, dtype = None,
        threads = None, prefetch = None, prefill_chunk = None, activations = None,
        verify = false, expert_cache = true, hf_token = None, profiling = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        device: &str,
        max_memory: Option<MemorySize>,
        max_host_memory: Option<MemorySize>,
        dtype: Option<&str>,
        threads: Option<usize>,
        prefetch: Option<usize>,
        prefill_chunk: Option<usize>,
        activations: Option<&str>,
        verify: bool,
        expert_cache: bool,
        hf_token: Option<String>,
        profiling: bool,
    ) -> PyResult<Self> {
        let mut engine = EngineArgs {
            device: device
                .parse()
                .map_err(|e: String| bad_argument(format!("device: {e}")))?,
            max_memory: max_memory.map(|m| m.bytes("max_memory")).transpose()?,
            max_host_memory: max_host_memory
                .map(|m| m.bytes("max_host_memory"))
                .transpose()?,
            threads,
            verify,
            expert_cache: match expert_cache {
                true => Switch::On,
                false => Switch::Off,
            },
            ..EngineArgs::default()
        };
        if let Some(dtype) = dtype {
            engine.dtype = dtype
                .parse()
                .map_err(|e: String| bad_argument(format!("dtype: {e}")))?;
        }
        if let Some(prefetch) = prefetch {
            engine.prefetch = prefetch;
        }
        if let Some(chunk) = prefill_chunk {
            engine.prefill_chunk = chunk.max(1);
        }
        if let Some(activations) = activations {
            engine.activations = activations
                .parse()
                .map_err(|e: String| bad_argument(format!("activations: {e}")))?;
        }
        let dir = py
            .detach(|| model::open_dir_with_token(&model, hf_token.as_deref()))
            .map_err(to_py)?;
        let tokenizer = dir.tokenizer().map_err(to_py)?.map(Arc::new);
        let template = dir.chat_template().map_err(to_py)?;
        let prefill_chunk = engine.prefill_chunk;
        let (worker, opened) = Worker::start(WorkerSettings {
            dir: dir.clone(),
            engine,
            tokenizer: tokenizer.clone(),
            profiling,
        })
        .map_err(to_py)?;
        wait(py, &Mutex::new(opened), None)?.map_err(to_py)?;
        Ok(Model {
            worker,
            dir,
            tokenizer,
            template,
            prefill_chunk,
        })
    }

    /// The model's local path (a hub id resolved to its snapshot).
    #[getter]
    fn path(&self) -> String {
        self.dir.path.display().to_string()
    }

    /// config.json (implied by the metadata for GGUF), as JSON text.
    #[getter]
    fn config_json(&self) -> String {
        self.dir.config.to_string()
    }

    /// generation_config.json as JSON text (`null` when absent).
    fn generation_config_json(&self) -> PyResult<String> {
        Ok(self
            .dir
            .generation_config()
            .map_err(to_py)?
            .unwrap_or_default()
            .to_string())
    }

    /// Whether the model has a tokenizer.
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// Whether the model has a chat template.
    #[getter]
    fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Token ids of each text.
    #[pyo3(signature = (texts, add_special_tokens = true))]
    fn encode(&self, texts: Vec<String>, add_special_tokens: bool) -> PyResult<Vec<Vec<u32>>> {
        let tokenizer = self.tokenizer()?;
        texts
            .iter()
            .map(|text| {
                tokenizer
                    .encode(text.as_str(), add_special_tokens)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| bad_argument(format!("tokenizing {text:?}: {e}")))
            })
            .collect()
    }

    /// The text of `ids`.
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.tokenizer()?
            .decode(&ids, skip_special_tokens)
            .map_err(|e| bad_argument(format!("decoding tokens: {e}")))
    }

    /// The id of `token`, if the vocabulary has it.
    fn token_to_id(&self, token: &str) -> PyResult<Option<u32>> {
        Ok(self.tokenizer()?.token_to_id(token))
    }

    /// The token of `id`, if there is one.
    fn id_to_token(&self, id: u32) -> PyResult<Option<String>> {
        Ok(self.tokenizer()?.id_to_token(id))
    }

    /// The tokenizer's vocabulary size, added tokens included.
    fn vocab_size(&self) -> PyResult<usize> {
        Ok(self.tokenizer()?.get_vocab_size(true))
    }

    /// The chat template rendered over `messages_json` (a JSON list of
    /// messages as transformers takes them).
    fn render_chat(&self, messages_json: &str, add_generation_prompt: bool) -> PyResult<String> {
        let template = self.template.as_ref().ok_or_else(|| {
            bad_argument(format!(
                "{} has no chat template (tokenizer_config.json, chat_template.jinja or GGUF metadata)",
                self.dir.path.display()
            ))
        })?;
        let messages: Vec<serde_json::Value> = serde_json::from_str(messages_json)
            .map_err(|e| bad_argument(format!("messages: {e}")))?;
        template
            .render(&messages, add_generation_prompt)
            .map_err(to_py)
    }

    /// Generates for every prompt in one batch: per prompt, (new token
    /// ids, their text or None, why it ended).
    #[allow(clippy::type_complexity)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<u32>>,
        settings: Settings,
    ) -> PyResult<Vec<(Vec<u32>, Option<String>, &'static str)>> {
        let (inbox, cancel) = self.start(prompts, settings, false)?;
        loop {
            if let Event::Done(answers) = wait(py, &inbox, Some(&cancel))? {
                let answers = answers.map_err(to_py)?;
                return Ok(answers
                    .into_iter()
                    .map(
                        |Answer {
                             tokens,
                             text,
                             finish,
                         }| (tokens, text, finish_name(finish)),
                    )
                    .collect());
            }
        }
    }

    /// Generates for one prompt, yielding its text as it is decoded.
    fn stream(&self, prompt: Vec<u32>, settings: Settings) -> PyResult<TextPieces> {
        self.tokenizer()?;
        let (events, cancel) = self.start(vec![prompt], settings, true)?;
        Ok(TextPieces {
            events,
            cancel,
            done: AtomicBool::new(false),
        })
    }

    /// Runs `airllm bench` on the open model: a batch of `batch` prompts
    /// (`prompt`, else random ids of `prompt_len` tokens) each generate
    /// `new_tokens` tokens, end tokens ignored; returns the report as JSON
    /// text.
    #[pyo3(signature = (batch, prompt_len, new_tokens, prompt = None))]
    fn profile(
        &self,
        py: Python<'_>,
        batch: usize,
        prompt_len: usize,
        new_tokens: usize,
        prompt: Option<Vec<u32>>,
    ) -> PyResult<String> {
        if batch == 0 || new_tokens == 0 || (prompt.is_none() && prompt_len == 0) {
            return Err(bad_argument(
                "profile needs a batch of at least 1, a prompt and at least 1 new token",
            ));
        }
        let (reply, inbox) = channel();
        self.worker
            .profile(ProfileRequest {
                batch,
                prompt,
                prompt_len,
                new_tokens,
                reply,
            })
            .map_err(to_py)?;
        let report = wait(py, &Mutex::new(inbox), None)?.map_err(to_py)?;
        Ok(report.to_string())
    }
}

/// The text of one streamed generation, piece by piece.
#[pyclass(module = "airllm_rs._native", frozen)]
struct TextPieces {
    events: Mutex<Receiver<Event>>,
    cancel: Arc<AtomicBool>,
    done: AtomicBool,
}

#[pymethods]
impl TextPieces {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        while !self.done.load(Ordering::Relaxed) {
            match wait(py, &self.events, Some(&self.cancel)) {
                Ok(Event::Text(text)) => return Ok(Some(text)),
                Ok(Event::Done(answers)) => {
                    self.done.store(true, Ordering::Relaxed);
                    answers.map_err(to_py)?;
                }
                Err(e) => {
                    self.done.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Ends the generation at its next token.
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for TextPieces {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Splits `model` into `out` (default: beside the model, named after the
/// compression) with `compression` (a name `airllm split --compress`
/// takes), unless `out` already holds that split; a split interrupted
/// earlier resumes. Returns (the split's path, the model's local path).
#[pyfunction]
#[pyo3(signature = (model, compression, out = None, hf_token = None))]
fn split_model(
    py: Python<'_>,
    model: PathBuf,
    compression: &str,
    out: Option<PathBuf>,
    hf_token: Option<String>,
) -> PyResult<(String, String)> {
    let compress: Compression = compression
        .parse()
        .map_err(|e: String| bad_argument(format!("compression: {e}")))?;
    let source = py
        .detach(|| model::open_dir_with_token(&model, hf_token.as_deref()))
        .map_err(to_py)?;
    let out = out.unwrap_or_else(|| default_split_path(&source.path, compression));
    let answer =
        |out: &std::path::Path| (out.display().to_string(), source.path.display().to_string());
    let manifest = out.join(MANIFEST_FILE);
    if manifest.is_file() {
        let stored = Manifest::read(&manifest).map_err(to_py)?.storage;
        if stored != Some(StorageSettings::new(compress, None)) {
            return Err(bad_argument(format!(
                "{} holds a split stored otherwise than {compression}; choose another layer_shards_saving_path or delete it",
                out.display()
            )));
        }
        return Ok(answer(&out));
    }
    let args = SplitArgs {
        model: source.path.clone(),
        out: out.clone(),
        compress,
        embedding: None,
        head: None,
        zstd: None,
    };
    py.detach(|| split::run(args)).map_err(to_py)?;
    Ok(answer(&out))
}

/// Where a split of the model at `path` goes by default: inside a model
/// directory (as AirLLM does), beside a GGUF file.
fn default_split_path(path: &std::path::Path, compression: &str) -> PathBuf {
    let name = format!("airllm-split-{compression}");
    match path.is_dir() {
        true => path.join(name),
        false => path.with_file_name(format!(
            "{}.{name}",
            path.file_stem().unwrap_or_default().to_string_lossy()
        )),
    }
}

/// The extension module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Model>()?;
    module.add_class::<TextPieces>()?;
    module.add_function(wrap_pyfunction!(split_model, module)?)?;
    Ok(())
}
