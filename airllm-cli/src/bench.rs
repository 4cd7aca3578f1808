//! `airllm bench`: prefill and decode speed, read rate and memory, on a
//! model directory or a synthetic model of a named shape.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airllm_backends::{dispatch, BackendJob};
use airllm_core::memory::Rss;
use airllm_core::{
    ByteSize, ComputeBackend, DraftSettings, Engine, Error, GenerationConfig, Result, RunStats,
    SamplingConfig, TokenControl,
};
use airllm_formats::split::StorageSettings;
use airllm_formats::{Manifest, Message, ModelDir, SyntheticStore, MANIFEST_FILE};
use airllm_models::presets::{preset, PRESETS};
use burn::tensor::backend::Backend;
use serde_json::{json, Value};

use crate::cli::{BenchArgs, Switch};
use crate::storage_report::StorageSummary;
use crate::{model, prompts, split, text};

/// Runs the command.
pub fn run(args: BenchArgs) -> Result<()> {
    let path = match &args.synthetic {
        Some(name) => ensure_synthetic(name, &args)?,
        None => args
            .model
            .clone()
            .expect("clap requires MODEL without --synthetic"),
    };
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, BenchJob { args, path })
}

/// Writes the synthetic model into `--out` unless it already holds it.
fn ensure_synthetic(name: &str, args: &BenchArgs) -> Result<PathBuf> {
    let out = args
        .out
        .clone()
        .expect("clap requires --out with --synthetic");
    let mut shape = preset(name).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
        Error::Request(format!(
            "unknown preset `{name}`; choose one of {}",
            names.join(", ")
        ))
    })?;
    let overrides = [
        (&mut shape.layers, args.layers),
        (&mut shape.hidden, args.hidden),
        (&mut shape.intermediate, args.intermediate),
        (&mut shape.heads, args.heads),
        (&mut shape.kv_heads, args.kv_heads),
        (&mut shape.vocab, args.vocab),
    ];
    for (field, value) in overrides {
        if let Some(value) = value {
            *field = value;
        }
    }
    let config = shape.config(&args.family)?;
    let storage = StorageSettings::new(args.compress, args.embedding)
        .with_head(args.head)
        .with_zstd(args.zstd);
    if out.join(MANIFEST_FILE).is_file() {
        let existing = model::open_dir(&out)?;
        let manifest = Manifest::read(&out.join(MANIFEST_FILE))?;
        if existing.config != config || manifest.storage != Some(storage) {
            return Err(Error::Request(format!(
                "{} holds a different model or one stored otherwise (--compress, --embedding, --head, --zstd); choose another --out or delete it",
                out.display()
            )));
        }
        return Ok(out);
    }
    let layout = airllm_models::layout(&config)?;
    let store = SyntheticStore::new(&layout.units, 0x5eed);
    eprintln!(
        "writing synthetic {name} ({}) to {}",
        storage.compression,
        out.display()
    );
    let target = split::SplitTarget {
        out: &out,
        config: &config,
        storage,
        specs: &layout.units,
    };
    split::write_split(&store, target, Vec::new())?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .map_err(|e| Error::io(out.join("config.json"), e))?;
    Ok(out)
}

/// The text of `--prompt` or `--prompt-file`, if given.
fn text_prompt(args: &BenchArgs) -> Result<Option<String>> {
    match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => Ok(Some(text.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| Error::io(path, e)),
        (None, None) => Ok(None),
    }
}

/// `text` as the model's tokens (through its chat template with `chat`).
pub fn text_ids(dir: &ModelDir, text: &str, chat: bool) -> Result<Vec<u32>> {
    let tokenizer = dir.tokenizer()?.ok_or_else(|| {
        Error::Request(format!(
            "{} has no tokenizer, so --prompt cannot be read; use --prompt-len",
            dir.path.display()
        ))
    })?;
    let ids = match (chat, dir.chat_template()?) {
        (false, _) => text::encode(&tokenizer, text)?,
        (true, Some(template)) => {
            text::encode_chat(&tokenizer, &template, &[Message::new("user", text)])?
        }
        (true, None) => {
            return Err(Error::Request(format!(
                "{} has no chat template for --chat",
                dir.path.display()
            )))
        }
    };
    match ids.is_empty() {
        true => Err(Error::Request("the prompt is empty".into())),
        false => Ok(ids),
    }
}

struct BenchJob {
    args: BenchArgs,
    path: PathBuf,
}

/// Deterministic prompt ids in `0..vocab`.
pub fn random_prompts(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

impl BackendJob for BenchJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let dir = model::open_dir(&self.path)?;
        let mut engine = model::open_drafted_engine::<B>(&dir, backend, &args.engine, &args.draft)?;
        let vocab = engine.arch().dims().vocab;
        let prompts = match (text_prompt(&args)?, &args.prompt_ids) {
            (Some(text), _) => vec![text_ids(&dir, &text, args.chat)?; args.batch],
            (None, Some(ids)) => vec![prompts::parse_ids(ids)?; args.batch],
            (None, None) => random_prompts(args.batch, args.prompt_len, vocab),
        };
        let report = measure(
            &mut engine,
            Measurement {
                dir: &dir,
                prompts,
                new_tokens: args.max_new_tokens,
                prefill_chunk: args.engine.prefill_chunk,
                draft: args.draft.settings(),
                expert_cache: args.engine.expert_cache == Switch::On,
            },
        )?;
        match args.json {
            true => println!("{report}"),
            false => print_report(&report),
        }
        Ok(())
    }
}

/// What one benchmark run generates.
pub struct Measurement<'a> {
    /// The model the engine runs.
    pub dir: &'a ModelDir,
    /// The batch's prompts, all of one length.
    pub prompts: Vec<Vec<u32>>,
    /// New tokens per prompt (end-of-sequence tokens are ignored).
    pub new_tokens: usize,
    /// Prompt tokens per sequence in one prefill pass.
    pub prefill_chunk: usize,
    /// Speculative decoding, if any.
    pub draft: Option<DraftSettings>,
    /// Whether the expert cache is on (its size is reported).
    pub expert_cache: bool,
}

/// Prepares `engine` for the batch, generates, and reports speed, reads
/// and memory as `airllm bench --json` prints them.
pub fn measure<B: Backend>(engine: &mut Engine<B>, run: Measurement<'_>) -> Result<Value> {
    let Measurement {
        dir,
        prompts: ids,
        new_tokens,
        prefill_chunk,
        draft,
        expert_cache,
    } = run;
    let batch = ids.len();
    let prompt_len = ids.first().map_or(0, Vec::len);
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        sampling: SamplingConfig::default(),
        eos: Vec::new(),
        prefill_chunk,
        logprobs: None,
        draft,
    };
    let chunk = config.prefill_chunk.clamp(1, prompt_len.max(1));
    engine.set_sync_units(true);
    let load_started = Instant::now();
    engine.prepare(batch, chunk, prompt_len + new_tokens)?;
    let load_s = load_started.elapsed().as_secs_f64();
    engine.reset_stats();

    let started = Instant::now();
    let mut first_token = None;
    let mut generated = 0usize;
    let mut on_token = |_: usize, _: u32| {
        first_token.get_or_insert_with(Instant::now);
        generated += 1;
        TokenControl::Continue
    };
    engine.generate(&ids, &config, &mut on_token)?;
    let finished = Instant::now();
    let first_token = first_token.unwrap_or(finished);
    let prefill_s = (first_token - started).as_secs_f64();
    let decode_s = (finished - first_token).as_secs_f64();
    let decode_tokens = generated.saturating_sub(batch);
    let wall_s = (finished - started).as_secs_f64();

    let stats = engine.stats();
    let plan = engine.plan().expect("prepared").clone();
    let bytes_read = stats.bytes_read();
    let uploaded_bytes = stats.uploaded_bytes();
    let rss = Rss::now();
    let expert_cache_bytes = match expert_cache {
        true => plan.expert_cache_bytes,
        false => 0,
    };
    Ok(json!({
        "model": dir.path,
        "device": engine.backend().name(),
        "batch": batch,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "load_s": load_s,
        "prefill_tokens_per_s": (batch * prompt_len) as f64 / prefill_s,
        "decode_tokens_per_s": decode_tokens as f64 / decode_s,
        "s_per_token": decode_s / (decode_tokens as f64 / batch as f64).max(1.0),
        "peak_rss_bytes": rss.peak,
        "peak_rss_anon_bytes": stats.peak_rss_anon,
        "peak_rss_file_bytes": stats.peak_rss_file,
        "predicted_peak_bytes": plan.predicted_peak(),
        "budget_bytes": plan.budget,
        "bytes_read": bytes_read,
        "read_gb_per_s": gb_per_s(bytes_read, stats.read_time()),
        "effective_gb_per_s": bytes_read as f64 / wall_s / 1e9,
        "read_wait_s": stats.read_wait.as_secs_f64(),
        "uploaded_bytes": uploaded_bytes,
        "upload_gb_per_s": gb_per_s(uploaded_bytes, stats.upload_time()),
        "unit_timing": "completion",
        "peak_device_bytes": stats.peak_device_bytes,
        "bytes_read_per_token": bytes_read as f64 / generated.max(1) as f64,
        "expert_wait_s": stats.expert_wait.as_secs_f64(),
        "expert_cache_hit_rate": stats.expert_cache_hit_rate(),
        "expert_cache_bytes": expert_cache_bytes,
        "units_streamed": plan.streamed(),
        "units_on_host": plan.on_host(),
        "host_bytes": plan.host_bytes,
        "kv_layers_on_host": plan.kv_on_host.iter().filter(|on_host| **on_host).count(),
        "host_kv_bytes": plan.host_kv_bytes,
        "peak_streamed_units": stats.peak_streamed_units,
        "passes": stats.passes,
        "tokens_per_pass": generated as f64 / stats.passes.max(1) as f64,
        "draft_tokens_proposed": stats.drafts.proposed,
        "draft_tokens_accepted": stats.drafts.accepted,
        "acceptance_rate": (stats.drafts.proposed > 0)
            .then(|| stats.drafts.accepted as f64 / stats.drafts.proposed as f64),
        "draft_s": stats.draft_time.as_secs_f64(),
        "draft_time_share": stats.draft_time.as_secs_f64() / wall_s,
        "units": unit_rows(stats),
        "storage": StorageSummary::of(dir, engine)?.json(),
    }))
}

/// Each unit's reads and per-read (per-pass for compute) times since the
/// engine's statistics were last reset.
pub fn unit_rows(stats: &RunStats) -> Vec<Value> {
    let passes = stats.passes.max(1) as f64;
    stats
        .units
        .iter()
        .map(|u| {
            let reads = u.reads.max(1) as f64;
            json!({
                "name": u.name,
                "reads": u.reads,
                "bytes_read": u.bytes_read,
                "read_ms": u.read.as_secs_f64() * 1e3 / reads,
                "decompress_ms": u.decompress.as_secs_f64() * 1e3 / reads,
                "upload_ms": u.upload.as_secs_f64() * 1e3 / reads,
                "uploaded_bytes": u.uploaded_bytes,
                "upload_gb_per_s": gb_per_s(u.uploaded_bytes, u.upload),
                "wait_ms": u.wait.as_secs_f64() * 1e3 / passes,
                "compute_ms": u.compute.as_secs_f64() * 1e3 / passes,
            })
        })
        .collect()
}

/// `bytes` over `time` in GB/s (0 for no time).
fn gb_per_s(bytes: u64, time: Duration) -> f64 {
    match time.as_secs_f64() {
        0.0 => 0.0,
        seconds => bytes as f64 / seconds / 1e9,
    }
}

/// Prints `report` (from [`measure`]) for people.
pub fn print_report(report: &Value) {
    let f = |key: &str| report[key].as_f64().unwrap_or(0.0);
    let n = |key: &str| report[key].as_u64().unwrap_or(0);
    println!(
        "{} on {} (batch {}, {} prompt + {} new tokens)",
        report["model"].as_str().unwrap_or_default(),
        report["device"].as_str().unwrap_or_default(),
        n("batch"),
        n("prompt_tokens"),
        n("new_tokens")
    );
    println!("prefill  {:>10.2} tokens/s", f("prefill_tokens_per_s"));
    println!(
        "decode   {:>10.2} tokens/s ({:.4} s/token)",
        f("decode_tokens_per_s"),
        f("s_per_token")
    );
    println!(
        "streamed {} units; read {} at {:.2} GB/s (reader), {:.2} GB/s effective; compute waited {:.3} s for reads",
        n("units_streamed"),
        ByteSize(n("bytes_read")),
        f("read_gb_per_s"),
        f("effective_gb_per_s"),
        f("read_wait_s")
    );
    println!(
        "uploaded {} at {:.2} GB/s (times to completion); device memory peaked at {}",
        ByteSize(n("uploaded_bytes")),
        f("upload_gb_per_s"),
        match n("peak_device_bytes") {
            0 => "(not reported by this device)".to_string(),
            bytes => ByteSize(bytes).to_string(),
        }
    );
    println!(
        "read {} per generated token",
        ByteSize(f("bytes_read_per_token") as u64)
    );
    if n("draft_tokens_proposed") > 0 {
        println!(
            "drafts: {} proposed, {} accepted ({:.1}%); {:.2} tokens per pass; drafting took {:.1}% of the time",
            n("draft_tokens_proposed"),
            n("draft_tokens_accepted"),
            f("acceptance_rate") * 100.0,
            f("tokens_per_pass"),
            f("draft_time_share") * 100.0
        );
    }
    if let Some(rate) = report["expert_cache_hit_rate"].as_f64() {
        println!(
            "experts: waited {:.3} s; cache of {} served {:.1}% of requests",
            f("expert_wait_s"),
            ByteSize(n("expert_cache_bytes")),
            rate * 100.0
        );
    }
    println!(
        "peak RSS {} (anon {}, file {}); plan predicted {}",
        ByteSize(n("peak_rss_bytes")),
        ByteSize(n("peak_rss_anon_bytes")),
        ByteSize(n("peak_rss_file_bytes")),
        ByteSize(n("predicted_peak_bytes"))
    );
    print_unit_table(report["units"].as_array().map_or(&[], Vec::as_slice));
}

/// Prints the rows of [`unit_rows`] as a table.
pub fn print_unit_table(rows: &[Value]) {
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "unit", "reads", "read ms", "upload ms", "wait ms", "compute ms"
    );
    let ms = |u: &Value, key: &str| u[key].as_f64().unwrap_or(0.0);
    for u in rows {
        println!(
            "{:<12} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            u["name"].as_str().unwrap_or_default(),
            u["reads"],
            ms(u, "read_ms"),
            ms(u, "upload_ms"),
            ms(u, "wait_ms"),
            ms(u, "compute_ms")
        );
    }
}
