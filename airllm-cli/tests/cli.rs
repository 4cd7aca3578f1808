//! The `airllm` binary's machine-readable contract and its error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn airllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airllm"))
        .args(args)
        .output()
        .expect("airllm runs")
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout holds only JSON"))
        .collect()
}

fn reference(name: &str) -> Value {
    let text = std::fs::read(fixture(name).join("reference.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn run_json_batch_matches_reference_from_hf_and_split() {
    let model = fixture("llama-gqa");
    let reference = reference("llama-gqa");
    let prompts = reference["prompts"].as_array().unwrap();
    let prompt_args: Vec<String> = prompts
        .iter()
        .map(|p| {
            ids(&p["ids"])
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("split");
    let status = airllm(&["split", model.to_str().unwrap(), split.to_str().unwrap()]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for dir in [model.clone(), split] {
        let mut args = vec![
            "run",
            dir.to_str().unwrap(),
            "--max-new-tokens",
            "24",
            "--greedy",
            "--json",
            "--max-memory",
            "1200KiB",
        ];
        for prompt in &prompt_args {
            args.extend(["--prompt-ids", prompt.as_str()]);
        }
        let answers = json_lines(&airllm(&args));
        assert_eq!(answers.len(), prompts.len());
        for (answer, record) in answers.iter().zip(prompts) {
            assert_eq!(
                ids(&answer["tokens"]),
                ids(&record["greedy"]),
                "{}",
                dir.display()
            );
            assert!(answer["text"].is_string());
        }
    }
}

#[test]
fn run_greedy_matches_the_reference_of_every_fixture_directory() {
    let directories = airllm_tests::FIXTURES
        .into_iter()
        .filter(|name| !name.ends_with(".gguf"));
    for name in directories {
        let model = fixture(name);
        let reference = reference(name);
        for prompt in reference["prompts"].as_array().unwrap() {
            let ids: Vec<String> = ids(&prompt["ids"]).iter().map(u64::to_string).collect();
            let output = airllm(&[
                "run",
                model.to_str().unwrap(),
                "--prompt-ids",
                &ids.join(","),
                "--greedy",
                "--max-new-tokens",
                "24",
                "--json",
            ]);
            let answer = &json_lines(&output)[0];
            assert_eq!(answer["tokens"], prompt["greedy"], "{name}");
        }
    }
}

#[test]
fn budget_below_minimum_names_it() {
    let output = airllm(&[
        "run",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--max-memory",
        "150KiB",
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("minimum working set") && err.contains("--prefetch"),
        "{err}"
    );
}

#[test]
fn bench_synthetic_mixtral_reads_routed_experts_and_caches_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixtral");
    #[rustfmt::skip]
    let args = [
        "bench", "--synthetic", "mixtral-8x7b", "--out", out.to_str().unwrap(),
        "--layers", "2", "--hidden", "64", "--intermediate", "128", "--heads", "4",
        "--kv-heads", "2", "--vocab", "256", "--prompt-len", "1", "--new-tokens", "6",
        // Each layer (about 418 KiB, 8 experts of 48 KiB) streams (one
        // resident takes 576 KiB); what is left above the minimum working
        // set caches experts.
        "--max-memory", "560KiB", "--json",
    ];
    let report = &json_lines(&airllm(&args))[0];
    assert_eq!(report["units_streamed"], 2, "{report}");
    assert!(report["expert_cache_hit_rate"].is_number(), "{report}");
    // Two layers of 8 experts read whole would be over 800 KiB per token.
    let per_token = report["bytes_read_per_token"].as_f64().unwrap();
    assert!(per_token > 0.0 && per_token < 400e3, "{report}");
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "MixtralForCausalLM");
}

#[test]
fn wgpu_without_an_adapter_is_a_named_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .args([
            "run",
            fixture("llama-gqa").to_str().unwrap(),
            "--prompt-ids",
            "1",
            "--device",
            "wgpu",
        ])
        // The Vulkan loader then finds no driver at all.
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("airllm runs");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("device `wgpu:0` could not start") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
}

#[test]
fn unknown_device_is_rejected() {
    let output = airllm(&[
        "run",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt-ids",
        "1",
        "--device",
        "tpu",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown device `tpu`"));
}

#[test]
fn missing_model_is_named() {
    let output = airllm(&["run", "/no/such/model", "--prompt-ids", "1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/model"));
}

#[test]
fn inspect_reports_the_plan() {
    let output = airllm(&[
        "inspect",
        fixture("llama-gqa").to_str().unwrap(),
        "--max-memory",
        // Everything takes 962 KiB, the head beside streamed layers 817.
        "800KiB",
        "--context",
        "64",
        "--json",
    ]);
    let report = &json_lines(&output)[0];
    assert_eq!(report["family"], "llama");
    let placements: Vec<_> = report["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["placement"].as_str().unwrap())
        .collect();
    // The embedding table stays on the host; every layer and the head stream.
    assert_eq!(
        placements,
        ["resident", "streamed", "streamed", "streamed", "streamed"]
    );
    assert_eq!(report["units"][0]["device_bytes"], 0, "{report}");
    assert_eq!(report["units_streamed"], 4);
    assert_eq!(report["units_from_disk"], 4);
    assert!(report["predicted_peak_bytes"].as_u64().unwrap() <= 800 << 10);
}

#[test]
fn a_host_tier_on_the_cpu_is_refused() {
    let output = airllm(&[
        "inspect",
        fixture("llama-gqa").to_str().unwrap(),
        "--max-host-memory",
        "1MiB",
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("--max-host-memory") && err.contains("--max-memory"),
        "{err}"
    );
}

/// `split --compress` writes what `inspect` reports: each encoding beside
/// bf16, and every matrix that fell back (the fixture's rows are 64 and
/// 128 wide: no whole blocks of 256, so q4_k falls back to q4_1).
#[test]
fn compressed_split_lists_its_kinds_and_fallbacks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q4_k");
    let model = fixture("llama-gqa");
    let split = airllm(&[
        "split",
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        "--compress",
        "q4_k",
    ]);
    assert!(
        split.status.success(),
        "{}",
        String::from_utf8_lossy(&split.stderr)
    );
    let report = &json_lines(&airllm(&["inspect", out.to_str().unwrap(), "--json"]))[0];
    let storage = &report["storage"];
    assert_eq!(storage["settings"]["compression"], "Q4_K");
    let kinds: Vec<&str> = storage["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"Q4_1") && kinds.contains(&"Q8_0"),
        "{kinds:?}"
    );
    let fallbacks = storage["fallbacks"].as_array().unwrap();
    // Three layers of seven matrices (the head is q8_0).
    assert_eq!(fallbacks.len(), 21, "{fallbacks:?}");
    assert!(fallbacks
        .iter()
        .all(|f| f["stored"] == "Q4_1" && f["wanted"] == "Q4_K"));
    let q8 = storage["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "Q8_0")
        .unwrap();
    assert!((q8["vs_bf16"].as_f64().unwrap() - 34.0 / 64.0).abs() < 1e-9);
    let again = airllm(&[
        "split",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
        "--compress",
        "q8_0",
    ]);
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("another directory"), "{message}");
}

#[test]
fn bench_synthetic_reports_the_contract_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synthetic");
    let args = [
        "bench",
        "--synthetic",
        "smollm2-135m",
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "2",
        "--hidden",
        "64",
        "--intermediate",
        "128",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--vocab",
        "256",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        // Below the 198 KiB that holds everything (bf16 matrices stay bf16
        // on the cpu; the embedding table stays in its file), above the 138
        // KiB of the head beside streamed layers: both layers stream.
        "--max-memory",
        "180KiB",
        "--prefetch",
        "0",
        "--json",
    ];
    // The second run reuses the model the first one wrote.
    for _ in 0..2 {
        let report = &json_lines(&airllm(&args))[0];
        for key in [
            "decode_tokens_per_s",
            "prefill_tokens_per_s",
            "peak_rss_bytes",
            "bytes_read",
            "read_gb_per_s",
            "units_streamed",
            "bytes_read_per_token",
            "expert_wait_s",
        ] {
            assert!(report[key].is_number(), "{key} missing from {report}");
        }
        assert_eq!(report["units_streamed"], 2);
        let kinds = report["storage"]["kinds"].as_array().unwrap();
        assert!(kinds.iter().any(|k| k["kind"] == "BF16"), "{kinds:?}");
    }
}

#[test]
fn smollm2_gguf_end_to_end_says_paris() {
    let record: Value =
        serde_json::from_slice(&std::fs::read(fixture("../gguf/smollm2.json")).unwrap()).unwrap();
    let model = airllm_tests::smollm2();
    let output = airllm(&[
        "run",
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "32",
        "--greedy",
        "--json",
    ]);
    let answers = json_lines(&output);
    assert_eq!(ids(&answers[0]["tokens"]), ids(&record["greedy"]));
    let text = answers[0]["text"].as_str().unwrap();
    assert!(text.starts_with(" Paris."), "{text:?}");

    let chat = airllm(&[
        "run",
        model.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "12",
        "--greedy",
        "--json",
    ]);
    let answer = &json_lines(&chat)[0];
    let text = answer["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}

/// `eval` scores a text: a model against itself agrees at every position
/// (ratio 1, KL 0), a 4-bit split of it does not; a reference that
/// tokenizes the text otherwise is refused, naming both.
#[test]
fn eval_scores_a_split_against_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/eval/python-reference.txt");
    let q4 = tmp.path().join("q4_0");
    let (model, text, q4s) = (
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        q4.to_str().unwrap(),
    );
    assert!(airllm(&["split", model, q4s, "--compress", "q4_0"])
        .status
        .success());
    let eval = |subject: &str, reference: &str| {
        let args = [
            "eval",
            subject,
            "--text",
            text,
            "--reference",
            reference,
            "--window",
            "128",
            "--json",
        ];
        json_lines(&airllm(&args)).remove(0)
    };
    let itself = eval(model, model);
    let tokens = itself["tokens"].as_u64().unwrap();
    assert!(tokens > 4000, "{itself}");
    assert_eq!(itself["perplexity_ratio"], 1.0);
    assert_eq!(itself["mean_kl"], 0.0);
    assert_eq!(itself["top1_agreement"], 1.0);
    assert_eq!(itself["perplexity"], itself["reference_perplexity"]);
    let quantized = eval(q4s, model);
    assert_eq!(quantized["tokens"], tokens);
    assert_eq!(quantized["reference_perplexity"], itself["perplexity"]);
    let kl = quantized["mean_kl"].as_f64().unwrap();
    let agreement = quantized["top1_agreement"].as_f64().unwrap();
    assert!(kl > 0.0 && agreement < 1.0, "{quantized}");
    let ratio = quantized["perplexity_ratio"].as_f64().unwrap();
    assert!(
        ratio.is_finite() && ratio > 0.5 && ratio < 2.0,
        "{quantized}"
    );

    let unigram = tmp.path().join("unigram");
    std::fs::create_dir(&unigram).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(PathBuf::from(model).join(file), unigram.join(file)).unwrap();
    }
    let vocabulary = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tokenizers/unigram/tokenizer.model");
    std::fs::copy(vocabulary, unigram.join("tokenizer.model")).unwrap();
    let refused = airllm(&[
        "eval",
        model,
        "--text",
        text,
        "--reference",
        unigram.to_str().unwrap(),
    ]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && message.contains("tokenize the text differently")
            && message.contains("unigram"),
        "{message}"
    );
}

/// A `--zstd` split answers as its source does, says what it saves on
/// disk, and `bench` reports the time spent decompressing each unit.
#[test]
fn zstd_split_answers_as_its_source_and_reports_decompression() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("zstd");
    let (model, outs) = (fixture("llama-gqa"), out.to_str().unwrap());
    let split = airllm(&[
        "split",
        model.to_str().unwrap(),
        outs,
        "--compress",
        "bf16",
        "--zstd",
    ]);
    assert!(
        split.status.success(),
        "{}",
        String::from_utf8_lossy(&split.stderr)
    );
    let storage = &json_lines(&airllm(&["inspect", outs, "--json"]))[0]["storage"];
    assert_eq!(storage["settings"]["zstd"], 1);
    let (file, encoded) = (
        storage["file_bytes"].as_u64().unwrap(),
        storage["encoded_bytes"].as_u64().unwrap(),
    );
    assert!(file < encoded, "{storage}");
    let tensors = storage["tensors"].as_array().unwrap();
    assert!(
        tensors
            .iter()
            .any(|t| t["kind"] == "BF16" && t["vs_bf16"] == 1.0),
        "{tensors:?}"
    );

    let prompt = &reference("llama-gqa")["prompts"][0];
    let prompt_ids = ids(&prompt["ids"])
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let answer = |dir: &str| {
        let args = [
            "run",
            dir,
            "--prompt-ids",
            &prompt_ids,
            "--max-new-tokens",
            "6",
            "--max-memory",
            "450KiB",
            "--json",
        ];
        json_lines(&airllm(&args)).remove(0)["tokens"].clone()
    };
    let plain = tmp.path().join("plain");
    let plains = plain.to_str().unwrap();
    assert!(airllm(&[
        "split",
        model.to_str().unwrap(),
        plains,
        "--compress",
        "bf16"
    ])
    .status
    .success());
    assert_eq!(answer(outs), answer(plains));

    let bench = &json_lines(&airllm(&[
        "bench",
        outs,
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        // Above the 319 KiB minimum, below what holds every unit.
        "--max-memory",
        "340KiB",
        "--json",
    ]))[0];
    assert!(bench["units_streamed"].as_u64().unwrap() > 0, "{bench}");
    let streamed: Vec<&Value> = bench["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["reads"].as_u64() > Some(0))
        .collect();
    assert!(
        !streamed.is_empty()
            && streamed
                .iter()
                .all(|u| u["decompress_ms"].as_f64() > Some(0.0)),
        "{bench}"
    );
}

/// `bench --prompt` reads real text, and with `--draft prompt-lookup` it
/// reports what drafting did: SmolLM2 continues a text that repeats
/// itself as the lookup proposes, so it takes fewer passes than tokens.
#[test]
fn bench_a_text_prompt_with_prompt_lookup_reports_the_drafts() {
    let model = airllm_tests::smollm2();
    let text = "one two three four one two three four one two three four one two";
    #[rustfmt::skip]
    let args = [
        "bench", model.to_str().unwrap(), "--prompt", text, "--new-tokens", "24",
        "--draft", "prompt-lookup", "--activations", "f32", "--json",
    ];
    let report = &json_lines(&airllm(&args))[0];
    assert!(report["prompt_tokens"].as_u64().unwrap() >= 10, "{report}");
    let proposed = report["draft_tokens_proposed"].as_u64().unwrap();
    let accepted = report["draft_tokens_accepted"].as_u64().unwrap();
    assert!(proposed > 0 && accepted <= proposed, "{report}");
    let rate = report["acceptance_rate"].as_f64().unwrap();
    assert!(
        (rate - accepted as f64 / proposed as f64).abs() < 1e-9,
        "{report}"
    );
    let per_pass = report["tokens_per_pass"].as_f64().unwrap();
    assert!(accepted > 0 && per_pass > 1.0, "{report}");
}

fn gguf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(name)
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let output = airllm(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A draft model: `inspect --draft` shows its place in the plan, `bench
/// --draft` what it proposed and its share of the time.
#[test]
fn a_draft_model_is_planned_first_and_its_drafts_reported() {
    let (model, draft) = (fixture("llama-gqa"), gguf_fixture("llama-mixed.gguf"));
    let (model, draft) = (model.to_str().unwrap(), draft.to_str().unwrap());
    let plain = &json_lines(&airllm(&["inspect", model, "--json"]))[0];
    let drafted = &json_lines(&airllm(&["inspect", model, "--draft", draft, "--json"]))[0];
    let draft_bytes = drafted["draft"]["resident_bytes"].as_u64().unwrap();
    assert!(draft_bytes > 0, "{drafted}");
    assert_eq!(
        drafted["predicted_peak_bytes"].as_u64().unwrap(),
        plain["predicted_peak_bytes"].as_u64().unwrap() + draft_bytes
    );
    #[rustfmt::skip]
    let args = [
        "bench", model, "--draft", draft, "--prompt-len", "8", "--new-tokens", "16",
        "--activations", "f32", "--json",
    ];
    let report = &json_lines(&airllm(&args))[0];
    let proposed = report["draft_tokens_proposed"].as_u64().unwrap();
    let accepted = report["draft_tokens_accepted"].as_u64().unwrap();
    assert!(proposed > 0 && accepted <= proposed, "{report}");
    let share = report["draft_time_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{report}");
}

/// A draft with another tokenizer, a draft the budget cannot hold beside
/// the model, and --draft-tokens out of range are named errors.
#[test]
fn bad_drafts_are_named_errors() {
    let model = fixture("llama-gqa");
    let model = model.to_str().unwrap();
    let smollm2 = airllm_tests::smollm2();
    let other = smollm2.to_str().unwrap();
    fails_with(
        &["run", model, "--draft", other, "--prompt", "hi"],
        &[
            "--draft",
            "cannot draft for",
            "its vocabulary has 49152 tokens, the model's 320",
        ],
    );
    let draft = gguf_fixture("llama-mixed.gguf");
    let draft = draft.to_str().unwrap();
    fails_with(
        &["inspect", model, "--draft", draft, "--max-memory", "64KiB"],
        &[
            "below the minimum working set",
            "draft model (all resident)",
        ],
    );
    for tokens in ["0", "17"] {
        fails_with(
            &[
                "run",
                model,
                "--draft",
                "prompt-lookup",
                "--draft-tokens",
                tokens,
                "--prompt",
                "hi",
            ],
            &["--draft-tokens", "takes 1 to 16"],
        );
    }
}
