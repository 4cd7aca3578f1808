//! Engine errors as Python exceptions: the classes live in
//! `airllm_rs.errors` (so that `RequestError` can also be a `ValueError`),
//! one per kind of failure, each carrying the engine's message.

use airllm_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception class of `airllm_rs.errors` for `error`.
fn class_name(error: &Error) -> &'static str {
    match error {
        Error::Budget { .. } | Error::HostBudget { .. } => "MemoryBudgetError",
        Error::Request(_) => "RequestError",
        // A setting written as a flag is the caller's; a config key is the model's.
        Error::Config { setting, .. } if setting.starts_with('-') => "RequestError",
        Error::Backend(_) => "BackendError",
        _ => "ModelError",
    }
}

/// `error` as the `airllm_rs.errors` exception of its kind.
pub fn to_py(error: impl Into<Error>) -> PyErr {
    let error = error.into();
    raise(class_name(&error), error.to_string())
}

/// A bad argument (`airllm_rs.errors.RequestError`).
pub fn bad_argument(message: impl Into<String>) -> PyErr {
    raise("RequestError", message.into())
}

fn raise(class: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("airllm_rs.errors")
            .and_then(|module| module.getattr(class))
            .ok()
            .and_then(|class| class.cast_into::<PyType>().ok());
        match class {
            Some(class) => PyErr::from_type(class, message),
            None => PyRuntimeError::new_err(message),
        }
    })
}
