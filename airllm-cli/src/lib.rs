//! The `airllm` command's implementation, one module per subcommand, and
//! the pieces they share (opening a model, generation settings, text),
//! which the Python package (`airllm-py`) drives too.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod eval;
pub mod generation;
pub mod inspect;
pub mod model;
pub mod prompts;
pub mod run;
pub mod serve;
pub mod split;
pub mod storage_report;
pub mod text;
