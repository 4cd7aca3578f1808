//! `airllm`: run language models larger than memory, layer by layer.

use std::process::ExitCode;

use airllm_cli::{bench, chat, cli, eval, inspect, run, serve, split};

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let result = match cli.command {
        cli::Command::Split(args) => split::run(args),
        cli::Command::Run(args) => run::run(args),
        cli::Command::Chat(args) => chat::run(args),
        cli::Command::Inspect(args) => inspect::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Eval(args) => eval::run(args),
        cli::Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
