//! Typed reads of config.json values with errors that name the key.

use airllm_core::{Error, Result};
use serde_json::Value;

/// A view of a config.json object.
pub struct Config<'a>(pub &'a Value);

impl<'a> Config<'a> {
    /// The raw value of `key`, treating JSON null as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A required positive integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::config(key, "missing from config.json"))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    Error::config(key, format!("expected a whole number, found {v}"))
                })
            })
            .transpose()
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| Error::config(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    /// An optional boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Error::config(key, format!("expected true or false, found {v}")))
            })
            .transpose()
            .map(|b| b.unwrap_or(default))
    }
}
