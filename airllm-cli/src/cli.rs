//! Command-line arguments.

use std::path::{Path, PathBuf};

use airllm_backends::{Activations, DeviceChoice, DeviceOptions};
use airllm_core::{ByteSize, ComputeDType};
use airllm_formats::split::{parse_zstd_level, Compression, EndStorage};
use clap::{Args, Parser, Subcommand};

/// Run language models larger than memory, one layer at a time.
#[derive(Parser)]
#[command(name = "airllm", version, about)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Write a model in the split layout: one file per layer, with a manifest.
    Split(SplitArgs),
    /// Generate text for one or more prompts.
    Run(RunArgs),
    /// Chat with a model interactively, with its chat template and history.
    Chat(ChatArgs),
    /// Show a model's family, units and residency plan.
    Inspect(InspectArgs),
    /// Measure prefill and decode speed, read rate and memory.
    Bench(BenchArgs),
    /// Serve the model over HTTP with OpenAI's API (chat and text
    /// completions, streamed or not).
    Serve(ServeArgs),
    /// Score a text: perplexity, and beside a reference model (the one a
    /// compressed split was made from) the perplexity ratio, mean KL
    /// divergence and top-1 agreement.
    Eval(EvalArgs),
}

/// `airllm split`.
#[derive(Args)]
pub struct SplitArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory (to
    /// store it another way), or a Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// Output directory (rerun the same command to resume).
    pub out: PathBuf,
    /// How the matrices are stored: keep (as the source stores them), f32,
    /// bf16, or quantized to blocks the kernels compute on in place: q8_0
    /// (8.5 bits a weight), q4_0, q4_1, q4_k, nf4 (4.5 to 5). Norms,
    /// biases and MoE routers stay in floats; rows that are not whole blocks
    /// fall back (q4_k and nf4 to q4_1, then to floats).
    #[arg(long, default_value = "keep")]
    pub compress: Compression,
    /// How the token embedding is stored: q8_0, same (as the matrices) or
    /// dense (floats). Default: same under keep, f32 and bf16, q8_0 under
    /// the block kinds.
    #[arg(long)]
    pub embedding: Option<EndStorage>,
    /// How the output head is stored: q8_0, same (as the matrices) or dense.
    /// Default: as --embedding's default (q8_0 under the block kinds: a
    /// 4-bit head costs a small model a tenth of its perplexity).
    #[arg(long)]
    pub head: Option<EndStorage>,
    /// Compress each tensor losslessly with zstd at LEVEL (1 to 22; 1 when
    /// no level is given), decoded as each layer is read. Saves disk, and
    /// time only where reading is slower than decoding (cold reads from a
    /// slow disk); see docs/compression.md.
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, require_equals = true,
          default_missing_value = "1", value_parser = parse_zstd_level)]
    pub zstd: Option<i32>,
}

/// Where and how to compute.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Compute device: cpu, ndarray, wgpu[:N], cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Compute dtype of activations, weights and the KV cache: f32, f16
    /// (wgpu with SHADER_F16, cuda) or bf16 (cuda). RMSNorm and attention's
    /// softmax accumulate in f32 and logits are f32 in every dtype. The cpu
    /// computes in f32 (its precision is --activations).
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDType,
    /// Compute threads, shared by the matrix kernels and every other op
    /// (default: the physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Precision of the cpu's matrix products: reduced rounds activations
    /// where that is faster within llama.cpp's error bound (16-bit integers
    /// against GGUF blocks when decoding, pairs of bf16 parts on AMX for
    /// batches and prompts); f32 keeps them in floats.
    #[arg(long, default_value = "reduced")]
    pub activations: Activations,
    /// Device memory budget (e.g. 64MiB, 2GiB); default: 80% of available
    /// RAM where the device computes in host memory (cpu, ndarray, wgpu on
    /// a CPU or integrated adapter), a CUDA device's free memory less 10%
    /// (at least 512 MiB), 4 GiB on a discrete wgpu adapter (wgpu cannot
    /// tell its size).
    #[arg(long)]
    pub max_memory: Option<ByteSize>,
    /// Host memory for the host tier of a wgpu or cuda device: staging for
    /// uploads, the KV cache of layers the device budget cannot hold
    /// (uploaded with the layer), and units kept in host memory between
    /// passes (uploaded every pass, not read from disk); default: 80% of
    /// available RAM for a device with memory of its own, none for one
    /// computing in host memory. The cpu takes --max-memory alone.
    #[arg(long)]
    pub max_host_memory: Option<ByteSize>,
    /// Layers read ahead of compute.
    #[arg(long, default_value_t = 1)]
    pub prefetch: usize,
    /// Prompt tokens per sequence in one prefill pass.
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Check every unit's checksum before use.
    #[arg(long)]
    pub verify: bool,
    /// Cache recently routed experts of streamed mixture-of-experts layers
    /// in the memory the plan leaves over.
    #[arg(long, value_enum, default_value = "on")]
    pub expert_cache: Switch,
}

impl Default for EngineArgs {
    /// The settings `airllm run` uses when no flag is given.
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            engine: EngineArgs,
        }
        Defaults::parse_from(["airllm"]).engine
    }
}

impl EngineArgs {
    /// The device options these arguments give.
    pub fn device_options(&self) -> DeviceOptions {
        DeviceOptions {
            dtype: self.dtype,
            threads: self.threads,
            activations: self.activations,
        }
    }
}

/// An on/off setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Sampling and stopping.
#[derive(Args, Clone, Default)]
pub struct SamplingArgs {
    /// Most new tokens per prompt (also `--new-tokens`).
    #[arg(long, alias = "new-tokens")]
    pub max_new_tokens: Option<usize>,
    /// Greedy decoding (overrides sampling settings).
    #[arg(long)]
    pub greedy: bool,
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty for repeated tokens (1: none).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop a sequence when its text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Speculative decoding.
    #[command(flatten)]
    pub draft: DraftArgs,
}

/// Speculative decoding: proposals checked by one pass of the model.
#[derive(Args, Clone, Default)]
pub struct DraftArgs {
    /// Propose tokens with `prompt-lookup` (n-grams of the prompt and the
    /// text so far; no model), or with a draft model sharing the model's
    /// tokenizer (a GGUF file, Hugging Face directory, split directory or
    /// hub id; held resident, planned before the model's layers). Greedy
    /// answers stay the same; sampled ones keep their distribution.
    #[arg(long, value_parser = parse_draft)]
    pub draft: Option<DraftChoice>,
    /// Most tokens proposed per pass (1 to 16).
    #[arg(long, default_value_t = 4, value_parser = parse_draft_tokens)]
    pub draft_tokens: usize,
}

impl DraftArgs {
    /// The engine's settings.
    pub fn settings(&self) -> Option<airllm_core::DraftSettings> {
        self.draft
            .as_ref()
            .map(|choice| airllm_core::DraftSettings {
                kind: match choice {
                    DraftChoice::PromptLookup => airllm_core::DraftKind::PromptLookup,
                    DraftChoice::Model(_) => airllm_core::DraftKind::Model,
                },
                tokens: self.draft_tokens,
            })
    }

    /// The draft model `--draft` names, if it names one.
    pub fn model(&self) -> Option<&Path> {
        match &self.draft {
            Some(DraftChoice::Model(path)) => Some(path),
            _ => None,
        }
    }
}

/// The drafters `--draft` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraftChoice {
    /// N-grams of the prompt and the text so far.
    PromptLookup,
    /// A draft model.
    Model(PathBuf),
}

fn parse_draft(text: &str) -> std::result::Result<DraftChoice, String> {
    match text {
        "" => Err("give `prompt-lookup` or a draft model".into()),
        "prompt-lookup" => Ok(DraftChoice::PromptLookup),
        model => Ok(DraftChoice::Model(PathBuf::from(model))),
    }
}

/// Most tokens `--draft-tokens` takes: a pass checks them all, and past
/// this many the chance that all are kept is too small to pay.
const MAX_DRAFT_TOKENS: usize = 16;

fn parse_draft_tokens(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_DRAFT_TOKENS).contains(&n) => Ok(n),
        _ => Err(format!(
            "takes 1 to {MAX_DRAFT_TOKENS} tokens proposed per pass (without drafting, leave out --draft)"
        )),
    }
}

/// `airllm serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory, or a
    /// Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// Address to listen on (only this machine by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id `/v1/models` lists (default: the model's file or folder
    /// name without its extension); requests may name any model.
    #[arg(long)]
    pub model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "AIRLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Most positions a request may take: its prompt plus max_tokens (a
    /// request without max_tokens generates up to it).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Most requests generated together, in shared passes; later ones wait
    /// in the queue. The memory budget must hold the KV cache of this many
    /// requests of --ctx positions.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Most requests waiting for the engine; past it, 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body.
    #[arg(long, default_value = "1MiB")]
    pub max_body: ByteSize,
    /// Longest a request may take, in seconds, waiting included; past it,
    /// 504 (and its generation stops).
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// A variable for the chat template, `KEY=VALUE` (a JSON value, else a
    /// string), such as `enable_thinking=false`; repeatable.
    #[arg(long = "chat-option", value_parser = parse_chat_option)]
    pub chat_options: Vec<(String, serde_json::Value)>,
    /// An origin browsers may call from (CORS), such as
    /// `http://localhost:3000`, or `*` for any; repeatable. Without it no
    /// CORS headers are sent.
    #[arg(long = "cors-origin", value_parser = parse_origin)]
    pub cors_origins: Vec<String>,
    /// Speculative decoding for every request.
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Where and how to compute.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// An origin as browsers send it (`scheme://host[:port]`), or `*`.
fn parse_origin(text: &str) -> std::result::Result<String, String> {
    let valid = text == "*"
        || text.split_once("://").is_some_and(|(scheme, host)| {
            !scheme.is_empty() && !host.is_empty() && !host.contains('/') && text.is_ascii()
        });
    match valid {
        true => Ok(text.to_string()),
        false => Err(format!(
            "`{text}` is not an origin; give scheme://host[:port], such as http://localhost:3000, or *"
        )),
    }
}

/// `airllm eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory, or a
    /// Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// The text to score (UTF-8; tests/fixtures/eval/python-reference.txt
    /// is one).
    #[arg(long)]
    pub text: PathBuf,
    /// A model to compare with (same tokenizer), such as the model split
    /// with `--compress f32`. The two share --max-memory, half each.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Tokens per scored window (each window starts without context; capped
    /// at the model's context).
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Print JSON: tokens, perplexity, reference_perplexity,
    /// perplexity_ratio, mean_kl, top1_agreement.
    #[arg(long)]
    pub json: bool,
    /// Where and how to compute.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `airllm run`.
#[derive(Args)]
pub struct RunArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory, or a
    /// Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// A text prompt (repeatable: all prompts run as one batch).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A prompt as comma-separated token ids (repeatable).
    #[arg(long)]
    pub prompt_ids: Vec<String>,
    /// JSONL file of prompts (`-` for stdin): {"prompt": ...} or {"prompt_ids": [...]} per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Print one JSON object per prompt on stdout, and nothing else.
    #[arg(long)]
    pub json: bool,
    /// Apply the model's chat template: each text prompt becomes a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message placed before each prompt (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// A variable for the chat template, `KEY=VALUE` (a JSON value, else a
    /// string), such as `enable_thinking=false`; repeatable (with --chat).
    #[arg(long = "chat-option", value_parser = parse_chat_option, requires = "chat")]
    pub chat_options: Vec<(String, serde_json::Value)>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `airllm chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory, or a
    /// Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// System message that opens the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// A variable for the chat template, `KEY=VALUE` (a JSON value, else a
    /// string), such as `enable_thinking=false`; repeatable.
    #[arg(long = "chat-option", value_parser = parse_chat_option)]
    pub chat_options: Vec<(String, serde_json::Value)>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Parses `KEY=VALUE` of `--chat-option`: the value as JSON (`false`, `3`,
/// `["a"]`), or else as a string.
fn parse_chat_option(option: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = option
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("`{option}` is not KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_string(), value))
}

/// `airllm inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Model: a GGUF file, a Hugging Face directory, a split directory, or a
    /// Hugging Face hub id (org/name).
    pub model: PathBuf,
    /// Batch size to plan for.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Context length to plan for (default: the model's).
    #[arg(long)]
    pub context: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List every tensor: its encoding, shape, bytes beside bf16, and the
    /// kind it fell back from (JSON always lists them).
    #[arg(long)]
    pub tensors: bool,
    /// A draft model to plan beside the model (held resident first).
    #[command(flatten)]
    pub draft: DraftArgs,
    /// The engine to plan for: its device (which sets what weights cost
    /// there: the cpu keeps matrices in their file encoding, other devices
    /// widen them to f32) and that device's budget unless --max-memory.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `airllm bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Model directory (omit with --synthetic).
    #[arg(required_unless_present = "synthetic")]
    pub model: Option<PathBuf>,
    /// Benchmark a synthetic model of a named shape: smollm2-135m, llama-13b,
    /// llama-70b, mixtral-8x7b, qwen3-30b-a3b.
    #[arg(long, requires = "out")]
    pub synthetic: Option<String>,
    /// Family whose config keys and tensor names the synthetic model uses:
    /// llama, qwen2, qwen3, mistral, chatglm, baichuan (a preset with
    /// experts is always its own family: mixtral, qwen3_moe).
    #[arg(long, default_value = "llama", requires = "synthetic")]
    pub family: String,
    /// Where the synthetic model is written (reused if already there).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How the synthetic model's matrices are stored, as `split --compress`.
    #[arg(long, default_value = "keep", requires = "synthetic")]
    pub compress: Compression,
    /// How its embedding is stored, as `split --embedding`.
    #[arg(long, requires = "synthetic")]
    pub embedding: Option<EndStorage>,
    /// How its head is stored, as `split --head`.
    #[arg(long, requires = "synthetic")]
    pub head: Option<EndStorage>,
    /// Compress its tensors with zstd, as `split --zstd`.
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, require_equals = true,
          default_missing_value = "1", value_parser = parse_zstd_level, requires = "synthetic")]
    pub zstd: Option<i32>,
    /// Override the preset's layer count.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override hidden size.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Override MLP size.
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Override query heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Override KV heads.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Override vocabulary size.
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Prompt tokens per sequence (random ids; see --prompt and
    /// --prompt-ids).
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// The prompt of every sequence as comma-separated token ids (for a
    /// model without a tokenizer, such as a synthetic one).
    #[arg(long, conflicts_with_all = ["prompt", "prompt_file", "chat"])]
    pub prompt_ids: Option<String>,
    /// A text prompt for every sequence instead of random ids (raw text
    /// unless --chat), for measuring drafting on real text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// The text prompt read from a file (UTF-8).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Apply the model's chat template to --prompt / --prompt-file.
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate per sequence (also `--new-tokens`; end-of-sequence
    /// tokens do not stop it).
    #[arg(long, alias = "new-tokens", default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Speculative decoding.
    #[command(flatten)]
    pub draft: DraftArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}
