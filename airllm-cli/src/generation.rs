//! Generation settings: defaults from generation_config.json, overridden by flags.

use airllm_core::{GenerationConfig, Result, SamplingConfig};
use airllm_formats::ModelDir;
use serde_json::Value;

use crate::cli::SamplingArgs;

/// New tokens when neither flags nor generation_config.json say.
const DEFAULT_MAX_NEW_TOKENS: usize = 128;

fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Builds the generation settings for `dir`.
pub fn config(
    dir: &ModelDir,
    args: &SamplingArgs,
    prefill_chunk: usize,
) -> Result<GenerationConfig> {
    let defaults = dir.generation_config()?.unwrap_or(Value::Null);
    let number = |key: &str| defaults.get(key).and_then(Value::as_f64);
    let sampling_default = defaults
        .get("do_sample")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut eos = ids(defaults.get("eos_token_id"));
    if eos.is_empty() {
        eos = ids(dir.config.get("eos_token_id"));
    }
    let temperature = if args.greedy {
        0.0
    } else {
        args.temperature.unwrap_or(if sampling_default {
            number("temperature").unwrap_or(1.0) as f32
        } else {
            0.0
        })
    };
    Ok(GenerationConfig {
        max_new_tokens: args
            .max_new_tokens
            .or(defaults
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .map(|n| n as usize))
            .unwrap_or(DEFAULT_MAX_NEW_TOKENS),
        sampling: SamplingConfig {
            temperature,
            top_k: args
                .top_k
                .or(number("top_k").map(|k| k as usize))
                .unwrap_or(0),
            top_p: args
                .top_p
                .or(number("top_p").map(|p| p as f32))
                .unwrap_or(1.0),
            repetition_penalty: args
                .repetition_penalty
                .or(number("repetition_penalty").map(|p| p as f32))
                .unwrap_or(1.0),
            seed: args.seed,
            ..SamplingConfig::default()
        },
        eos,
        prefill_chunk,
        logprobs: None,
        draft: args.draft.settings(),
    })
}
