//! Typed reads of config.json values with errors that name the key.

use airllm_core::{Error, Result};
use serde_json::Value;

/// Largest size a config may give (dimensions, counts, context lengths):
/// far above any released model, and small enough that products of two
/// sizes cannot overflow.
pub const MAX_SIZE: u64 = 1 << 26;

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

    /// An optional non-negative integer, at most [`MAX_SIZE`].
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| match v.as_u64() {
                Some(n) if n <= MAX_SIZE => Ok(n as usize),
                Some(n) => Err(Error::config(
                    key,
                    format!("{n} is larger than any model's (at most {MAX_SIZE}); the config is corrupt"),
                )),
                None => Err(Error::config(
                    key,
                    format!("expected a whole number, found {v}"),
                )),
            })
            .transpose()
    }

    /// The first of `keys` present, as a required integer (families that
    /// renamed their keys between releases).
    pub fn usize_of(&self, keys: &[&str]) -> Result<usize> {
        for key in keys {
            if let Some(value) = self.opt_usize(key)? {
                return Ok(value);
            }
        }
        Err(Error::config(keys.join(" or "), "missing from config.json"))
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Error::config(key, format!("expected a string, found {v}")))
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

/// Each layer's sliding window: `sliding_window` for the layers that
/// transformers 5's `layer_types` marks `sliding_attention`, or, without
/// `layer_types`, for the layers `slides_by_default` picks. A null or
/// absent `sliding_window` means full attention everywhere.
pub fn layer_windows(
    c: &Config<'_>,
    layers: usize,
    slides_by_default: impl Fn(usize) -> bool,
) -> Result<Vec<Option<usize>>> {
    let Some(window) = c.opt_usize("sliding_window")? else {
        return Ok(vec![None; layers]);
    };
    if window == 0 {
        return Err(Error::config("sliding_window", "must be at least 1"));
    }
    let Some(types) = c.get("layer_types") else {
        return Ok((0..layers)
            .map(|i| slides_by_default(i).then_some(window))
            .collect());
    };
    let types = types
        .as_array()
        .filter(|t| t.len() == layers)
        .ok_or_else(|| {
            Error::config(
                "layer_types",
                format!("expected a list of {layers} layer types (num_hidden_layers)"),
            )
        })?;
    types
        .iter()
        .map(|kind| match kind.as_str() {
            Some("sliding_attention") => Ok(Some(window)),
            Some("full_attention") => Ok(None),
            _ => Err(Error::config(
                "layer_types",
                format!("`{kind}` is not supported; supported: sliding_attention, full_attention"),
            )),
        })
        .collect()
}
