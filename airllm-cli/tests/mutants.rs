//! The binary against mutated models, as a user meets it: every
//! `airllm run MODEL --prompt-ids 1,2,3 --max-new-tokens 2 --json` ends with
//! exit status 0, or 1 and an `error:` line; never a panic (101), an abort
//! (134), a signal, or more than 10 s. The library-level harness
//! (`tests/tests/mutants.rs`) runs many more mutants of the same kinds.
//!
//! `AIRLLM_CLI_MUTANTS` sets how many (default 300).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airllm_tests::mutate::{bases, write_mutant};

/// Longest one run may take.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Seed of the mutants (distinct from the library harness's default).
const SEED: u64 = 11;

/// Runs the binary on `model`; returns its exit code (`None`: killed by a
/// signal or past the time limit) and its stderr.
fn run(model: &std::path::Path, stderr_file: &std::path::Path) -> (Option<i32>, String) {
    let stderr = std::fs::File::create(stderr_file).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .arg("run")
        .arg(model)
        .args(["--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("airllm starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let text = std::fs::read_to_string(stderr_file).unwrap_or_default();
    (status.and_then(|s| s.code()), text)
}

#[test]
fn every_mutant_ends_in_an_answer_or_a_named_error() {
    if std::env::var("AIRLLM_TEST_DEVICE").is_ok_and(|d| d != "cpu") {
        eprintln!("the binary's mutation run is in the cpu pass only");
        return;
    }
    let count: u64 = std::env::var("AIRLLM_CLI_MUTANTS")
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(300);
    let scratch = tempfile::tempdir().unwrap();
    let bases = bases(scratch.path());
    let stderr_file = scratch.path().join("stderr.txt");
    let mut failures = Vec::new();
    let (mut answered, mut named) = (0, 0);
    for index in 0..count {
        let base = &bases[index as usize % bases.len()];
        let (model, what) = write_mutant(base, SEED, index, &scratch.path().join("mutant"));
        match run(&model, &stderr_file) {
            (Some(0), _) => answered += 1,
            (Some(1), stderr) if stderr.lines().any(|l| l.starts_with("error:")) => named += 1,
            (code, stderr) => failures.push(format!(
                "mutant {index} ({what}): exit {code:?}\n{}",
                stderr.lines().take(5).collect::<Vec<_>>().join("\n")
            )),
        }
    }
    eprintln!(
        "binary mutants: {answered} answered, {named} named errors, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
