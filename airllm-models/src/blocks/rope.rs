//! Rotary position embeddings: inverse frequencies with the scaling variants
//! of `rope_scaling` (linear, dynamic NTK, llama3, YaRN), applied to the first
//! `dim` dims of each head either as two halves (`rotate_half`: Llama, Qwen,
//! Mistral) or as interleaved pairs (ChatGLM).

use std::sync::Mutex;

use airllm_core::{ComputeBackend, Error, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;

use crate::config::Config;

/// How inverse frequencies are scaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// NTK-aware base growth past the trained context.
    Dynamic {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.1's per-band frequency scaling.
    Llama3 {
        /// Scale factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Trained context length.
        original_max_positions: f64,
    },
    /// YaRN: per frequency band, interpolated (divided by `factor`) or
    /// extrapolated (kept) along a linear ramp between the bands that turn
    /// `beta_fast` and `beta_slow` times over the trained context; cos and
    /// sin scaled by `attention_factor`.
    Yarn {
        /// Scale factor.
        factor: f64,
        /// Trained context length.
        original_max_positions: f64,
        /// Rotations that mark the fully extrapolated band.
        beta_fast: f64,
        /// Rotations that mark the fully interpolated band.
        beta_slow: f64,
        /// Scale of cos and sin.
        attention_factor: f64,
        /// Whether the ramp's ends are rounded to whole dims.
        truncate: bool,
    },
}

/// Which dims of the rotated span form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dim `i` pairs with dim `i + dim/2` (`rotate_half`).
    Halves,
    /// Dim `2i` pairs with dim `2i + 1`.
    Interleaved,
}

/// Rotary embedding settings for one model.
#[derive(Debug)]
pub struct Rope {
    dim: usize,
    style: RopeStyle,
    theta: f64,
    scaling: RopeScaling,
    max_positions: usize,
    /// Longest sequence seen so far, for dynamic NTK (transformers' `max_seq_len_cached`).
    dynamic_len: Mutex<usize>,
}

/// cos and sin tables for one pass: `[batch, 1, seq, dim]` for
/// [`RopeStyle::Halves`] (each frequency twice), `[batch, 1, seq, dim / 2]`
/// for [`RopeStyle::Interleaved`].
pub struct RopeTables<B: Backend> {
    style: RopeStyle,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

fn number(params: &Value, key: &str) -> Result<f64> {
    params
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| Error::config(format!("rope_scaling.{key}"), "missing or not a number"))
}

/// YaRN's settings as transformers reads them: `original_max_position_embeddings`
/// defaults to `max_position_embeddings`, `factor` to their ratio; the
/// attention factor, unless given, grows with `ln(factor)` (or the ratio of
/// two such terms when `mscale` and `mscale_all_dim` are both given).
fn yarn(params: &Value, max_positions: usize) -> Result<RopeScaling> {
    let optional = |key: &str| params.get(key).and_then(Value::as_f64);
    let original = optional("original_max_position_embeddings").unwrap_or(max_positions as f64);
    let factor = optional("factor").unwrap_or(max_positions as f64 / original);
    if !(factor.is_finite() && factor > 0.0 && original >= 1.0) {
        return Err(Error::config(
            "rope_scaling.factor",
            format!(
                "YaRN needs a positive factor and trained context; found {factor} and {original}"
            ),
        ));
    }
    let mscale = |scale: f64, m: f64| match scale <= 1.0 {
        true => 1.0,
        false => 0.1 * m * scale.ln() + 1.0,
    };
    let attention_factor = match (
        optional("attention_factor"),
        optional("mscale").filter(|m| *m != 0.0),
        optional("mscale_all_dim").filter(|m| *m != 0.0),
    ) {
        (Some(given), _, _) => given,
        (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
        _ => mscale(factor, 1.0),
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_positions: original,
        beta_fast: optional("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
        beta_slow: optional("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
        attention_factor,
        truncate: params
            .get("truncate")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    })
}

impl Rope {
    /// Reads `rope_theta` / `rope_scaling`, or transformers 5's
    /// `rope_parameters`, for rotary width `dim`.
    pub fn from_config(config: &Config<'_>, dim: usize) -> Result<Rope> {
        let parameters = config.get("rope_parameters");
        let theta = match config.opt_f64("rope_theta")? {
            Some(theta) => theta,
            None => parameters
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        let max_positions = config.opt_usize("max_position_embeddings")?.unwrap_or(2048);
        let scaling_params = config.get("rope_scaling").or(parameters);
        let scaling = match scaling_params {
            None => RopeScaling::None,
            Some(params) => {
                let kind = params
                    .get("rope_type")
                    .or_else(|| params.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: number(params, "factor")?,
                    },
                    "dynamic" => RopeScaling::Dynamic {
                        factor: number(params, "factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: number(params, "factor")?,
                        low_freq_factor: number(params, "low_freq_factor")?,
                        high_freq_factor: number(params, "high_freq_factor")?,
                        original_max_positions: number(params, "original_max_position_embeddings")?,
                    },
                    "yarn" => yarn(params, max_positions)?,
                    other => {
                        return Err(Error::config(
                            "rope_scaling.rope_type",
                            format!("`{other}` is not supported; supported: default, linear, dynamic, llama3, yarn"),
                        ))
                    }
                }
            }
        };
        // `rope_interleave` (as transformers' DeepSeek-V3 config names it):
        // the stored q and k rows pair dims 2i and 2i + 1, as llama.cpp's
        // converter leaves them.
        let style = match config.get("rope_interleave").and_then(Value::as_bool) {
            Some(true) => RopeStyle::Interleaved,
            _ => RopeStyle::Halves,
        };
        Ok(Rope {
            scaling,
            style,
            ..Rope::new(dim, theta, max_positions)
        })
    }

    /// Unscaled rotate-half RoPE over `dim` dims with base `theta`, for
    /// contexts up to `max_positions`.
    pub fn new(dim: usize, theta: f64, max_positions: usize) -> Rope {
        Rope {
            dim,
            style: RopeStyle::Halves,
            theta,
            scaling: RopeScaling::None,
            max_positions,
            dynamic_len: Mutex::new(max_positions),
        }
    }

    /// How many leading dims of each head it rotates.
    pub fn rotated_dims(&self) -> usize {
        self.dim
    }

    /// The same settings with `style` pairing.
    pub fn with_style(self, style: RopeStyle) -> Rope {
        Rope { style, ..self }
    }

    /// Longest context the scaling admits (dynamic NTK extends it by `factor`).
    pub fn context_limit(&self) -> usize {
        match self.scaling {
            RopeScaling::Dynamic { factor } => (self.max_positions as f64 * factor) as usize,
            _ => self.max_positions,
        }
    }

    fn default_inv_freq(&self, theta: f64) -> Vec<f64> {
        (0..self.dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / self.dim as f64))
            .collect()
    }

    /// Inverse frequencies for a pass whose longest sequence is `seq_len`.
    fn inv_freq(&self, seq_len: usize) -> Vec<f64> {
        match self.scaling {
            RopeScaling::None => self.default_inv_freq(self.theta),
            RopeScaling::Linear { factor } => self
                .default_inv_freq(self.theta)
                .into_iter()
                .map(|f| f / factor)
                .collect(),
            RopeScaling::Dynamic { factor } => {
                let original = self.max_positions;
                let mut cached = self.dynamic_len.lock().expect("rope lock");
                if seq_len > *cached {
                    *cached = seq_len;
                }
                if seq_len < original && *cached > original {
                    *cached = original;
                }
                if *cached <= original {
                    return self.default_inv_freq(self.theta);
                }
                let d = self.dim as f64;
                let grown = factor * *cached as f64 / original as f64 - (factor - 1.0);
                self.default_inv_freq(self.theta * grown.powf(d / (d - 2.0)))
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions: old,
            } => self
                .default_inv_freq(self.theta)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > old / low_freq_factor {
                        f / factor
                    } else if wavelen < old / high_freq_factor {
                        f
                    } else {
                        let s = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - s) * f / factor + s * f
                    }
                })
                .collect(),
            RopeScaling::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let dim = self.dim as f64;
                let correction = |rotations: f64| {
                    dim * (original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                self.default_inv_freq(self.theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolated = 1.0 - ramp;
                        f / factor * (1.0 - extrapolated) + f * extrapolated
                    })
                    .collect()
            }
        }
    }

    /// How much cos and sin are scaled (YaRN's attention factor; else 1).
    fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// cos/sin tables for the positions of one pass (`[batch][seq]`).
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        device: &B::Device,
    ) -> RopeTables<B> {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let longest = positions.iter().flatten().max().map_or(0, |p| p + 1);
        let inv_freq = self.inv_freq(longest);
        let repeats = match self.style {
            RopeStyle::Halves => 2,
            RopeStyle::Interleaved => 1,
        };
        let width = inv_freq.len() * repeats;
        let mut cos = Vec::with_capacity(batch * seq * width);
        let mut sin = Vec::with_capacity(batch * seq * width);
        let scale = self.attention_factor();
        for &position in positions.iter().flatten() {
            for _ in 0..repeats {
                for f in &inv_freq {
                    let angle = (position as f64 * f) as f32;
                    cos.push(angle.cos() * scale);
                    sin.push(angle.sin() * scale);
                }
            }
        }
        let shape = [batch, 1, seq, width];
        RopeTables {
            style: self.style,
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }
}

impl<B: Backend> RopeTables<B> {
    /// Rotates the first `dim` dims of `x: [batch, heads, seq, head_dim]` on
    /// `backend`; the rest pass through.
    pub fn apply(&self, backend: &dyn ComputeBackend<B>, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let head_dim = x.dims()[3];
        let dim = self.rotated_dims();
        let (rot, pass) = if dim == head_dim {
            (x, None)
        } else {
            (
                x.clone().narrow(3, 0, dim),
                Some(x.narrow(3, dim, head_dim - dim)),
            )
        };
        let out = match self.style {
            RopeStyle::Halves => backend.rotate_halves(rot, &self.cos, &self.sin)?,
            RopeStyle::Interleaved => backend.rotate_pairs(rot, &self.cos, &self.sin)?,
        };
        Ok(match pass {
            Some(pass) => Tensor::cat(vec![out, pass], 3),
            None => out,
        })
    }

    fn rotated_dims(&self) -> usize {
        match self.style {
            RopeStyle::Halves => self.cos.dims()[3],
            RopeStyle::Interleaved => 2 * self.cos.dims()[3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_rope_parameters_and_rejects_unknown_types() {
        let config = json!({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "linear", "factor": 2.0}});
        let rope = Rope::from_config(&Config(&config), 8).unwrap();
        assert_eq!(rope.theta, 500000.0);
        assert_eq!(rope.scaling, RopeScaling::Linear { factor: 2.0 });
        let config = json!({"rope_scaling": {"type": "longrope", "factor": 2.0}});
        let err = Rope::from_config(&Config(&config), 8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("longrope") && err.contains("rope_scaling"),
            "{err}"
        );
    }

    #[test]
    fn rope_interleave_pairs_neighbouring_dims() {
        let style = |config: Value| Rope::from_config(&Config(&config), 8).unwrap().style;
        assert_eq!(
            style(json!({"rope_interleave": true})),
            RopeStyle::Interleaved
        );
        assert_eq!(style(json!({"rope_interleave": false})), RopeStyle::Halves);
        assert_eq!(style(json!({})), RopeStyle::Halves);
    }

    #[test]
    fn yarn_defaults_follow_transformers() {
        let config = json!({"max_position_embeddings": 128,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}});
        let rope = Rope::from_config(&Config(&config), 16).unwrap();
        let RopeScaling::Yarn {
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } = rope.scaling
        else {
            panic!("not YaRN: {:?}", rope.scaling);
        };
        assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
    }

    #[test]
    fn llama3_scales_low_frequencies_only() {
        let config = json!({"rope_theta": 10000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
        let rope = Rope::from_config(&Config(&config), 16).unwrap();
        let plain = rope.default_inv_freq(10000.0);
        let scaled = rope.inv_freq(1);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12);
    }
}
