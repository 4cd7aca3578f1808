//! What a GGUF architecture means in Hugging Face terms, as the families'
//! descriptors say: the `config.json` its metadata implies, and the GGUF
//! name of each tensor the adapter asks for by its Hugging Face name.

use airllm_core::family::{FamilyFiles, GgufArchitecture};
use serde_json::{json, Map, Value};

use super::file::{GgufFile, MetaValue};
use crate::{FormatError, Result};

/// The family a GGUF file loads as, and the entry of its descriptor that
/// says how.
#[derive(Clone, Copy, Debug)]
pub struct GgufFamily {
    /// The family's descriptor.
    pub family: &'static FamilyFiles,
    /// The GGUF architecture entry the file matched.
    pub gguf: &'static GgufArchitecture,
}

/// Where a tensor an adapter asks for lies in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Index into the file's tensors.
    pub tensor: usize,
    /// For a slice of a 3-D expert stack, which expert.
    pub expert: Option<usize>,
}

impl GgufFamily {
    /// The family of `file` among `families`, or an error naming the
    /// supported GGUF architectures.
    pub fn of(file: &GgufFile, families: &[&'static FamilyFiles]) -> Result<GgufFamily> {
        let name = file.architecture()?;
        let experts = file
            .get(&format!("{name}.expert_count"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0;
        let entries = || {
            families.iter().flat_map(|&family| {
                family
                    .gguf
                    .iter()
                    .map(move |gguf| GgufFamily { family, gguf })
            })
        };
        entries()
            .find(|e| e.gguf.name == name && e.gguf.experts == experts)
            .or_else(|| entries().find(|e| e.gguf.name == name))
            .ok_or_else(|| {
                // `llama` loads as Llama and, with experts, as Mixtral: named once.
                let mut supported: Vec<&str> = Vec::new();
                for entry in entries() {
                    if !supported.contains(&entry.gguf.name) {
                        supported.push(entry.gguf.name);
                    }
                }
                FormatError::UnsupportedGguf {
                    path: file.path.clone(),
                    detail: format!(
                        "GGUF architecture `{name}` is not supported; supported: {}",
                        supported.join(", ")
                    ),
                }
            })
    }

    /// Where in `file` the tensor the adapter calls `hf_name` lies.
    pub fn locate(&self, hf_name: &str, file: &GgufFile) -> Option<Located> {
        if let Some(tensor) = self.gguf_name(hf_name).and_then(|n| file.position(&n)) {
            return Some(Located {
                tensor,
                expert: None,
            });
        }
        let (stem, suffix) = hf_name.rsplit_once('.')?;
        let rest = stem.strip_prefix("model.layers.")?;
        let (layer, inner) = rest.split_once('.')?;
        let names = self.gguf.names.experts?;
        let (expert, matrix) = inner
            .strip_prefix(names.block)?
            .strip_prefix(".experts.")?
            .split_once('.')?;
        let (_, gguf) = names.matrices().into_iter().find(|(hf, _)| *hf == matrix)?;
        if let Some(tensor) = file.position(&format!("blk.{layer}.{gguf}.{expert}.{suffix}")) {
            return Some(Located {
                tensor,
                expert: None,
            });
        }
        let tensor = file.position(&format!("blk.{layer}.{gguf}_exps.{suffix}"))?;
        Some(Located {
            tensor,
            expert: Some(expert.parse().ok()?),
        })
    }

    /// The GGUF name of the tensor the adapter calls `hf_name` (outside the
    /// expert stacks).
    pub fn gguf_name(&self, hf_name: &str) -> Option<String> {
        let (stem, suffix) = hf_name.rsplit_once('.')?;
        if let Some(rest) = stem.strip_prefix("model.layers.") {
            let (layer, inner) = rest.split_once('.')?;
            let names = &self.gguf.names;
            let router = names.experts.and_then(|e| {
                let name = inner.strip_prefix(e.block)?.strip_prefix('.')?;
                (name == e.router).then_some("ffn_gate_inp")
            });
            let gguf = match router {
                Some(gguf) => gguf,
                None => names.layer.iter().find(|(hf, _)| *hf == inner)?.1,
            };
            return Some(format!("blk.{layer}.{gguf}.{suffix}"));
        }
        let (_, gguf) = self.gguf.names.global.iter().find(|(hf, _)| *hf == stem)?;
        Some(format!("{gguf}.{suffix}"))
    }

    /// The `config.json` the file's metadata implies.
    pub fn config(&self, file: &GgufFile) -> Result<Value> {
        let metadata = Metadata {
            file,
            arch: self.gguf.name,
        };
        let meta = |key: &str| metadata.get(key);
        let number = |key: &str| metadata.number(key);
        let required = |key: &str| metadata.required(key);
        let hidden = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let vocab = meta("vocab_size")
            .and_then(|v| v.as_u64())
            .or_else(|| {
                file.get("tokenizer.ggml.tokens")
                    .and_then(|t| t.as_array())
                    .map(|t| t.len() as u64)
            })
            .or_else(|| file.tensor("token_embd.weight").map(|t| t.shape[0] as u64));
        let mut config = Map::new();
        let experts = meta("expert_count").and_then(|v| v.as_u64()).unwrap_or(0);
        config.insert(
            "architectures".into(),
            json!([self.family.architectures[0]]),
        );
        config.insert("model_type".into(), json!(self.family.model_type));
        if experts > 0 {
            metadata.insert_experts(experts, &mut config)?;
        }
        for (key, value) in self.gguf.implied {
            config.insert(key.to_string(), json!(value));
        }
        if let Some(window) = meta("attention.sliding_window").and_then(|v| v.as_u64()) {
            config.insert("sliding_window".into(), json!(window));
        }
        config.insert("hidden_size".into(), json!(hidden));
        config.insert(
            "intermediate_size".into(),
            json!(required("feed_forward_length")?),
        );
        config.insert("num_hidden_layers".into(), json!(required("block_count")?));
        config.insert("num_attention_heads".into(), json!(heads));
        config.insert(
            "num_key_value_heads".into(),
            json!(meta("attention.head_count_kv")
                .and_then(|v| v.as_u64())
                .unwrap_or(heads)),
        );
        if let Some(head_dim) = meta("attention.key_length").and_then(|v| v.as_u64()) {
            config.insert("head_dim".into(), json!(head_dim));
        }
        config.insert(
            "rms_norm_eps".into(),
            json!(number("attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
        );
        config.insert(
            "rope_theta".into(),
            json!(number("rope.freq_base").unwrap_or(10000.0)),
        );
        if let Some(scaling) = metadata.rope_scaling() {
            config.insert("rope_scaling".into(), scaling);
        }
        if let Some(context) = meta("context_length").and_then(|v| v.as_u64()) {
            config.insert("max_position_embeddings".into(), json!(context));
        }
        if let Some(vocab) = vocab {
            config.insert("vocab_size".into(), json!(vocab));
        }
        config.insert(
            "tie_word_embeddings".into(),
            json!(file.tensor("output.weight").is_none()),
        );
        for (hf, gguf) in [
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
        ] {
            if let Some(id) = file
                .get(&format!("tokenizer.ggml.{gguf}"))
                .and_then(|v| v.as_u64())
            {
                config.insert(hf.into(), json!(id));
            }
        }
        Ok(Value::Object(config))
    }
}

/// A GGUF file's metadata under its architecture's prefix (`llama.`, ...).
struct Metadata<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Metadata<'_> {
    /// `<arch>.<key>`, if present.
    fn get(&self, key: &str) -> Option<&MetaValue> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    /// `<arch>.<key>` as a number, if present.
    fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }

    /// `<arch>.<key>` as a required integer.
    fn required(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| FormatError::BadGguf {
                path: self.file.path.clone(),
                detail: format!(
                    "metadata `{}.{key}` is missing or not an integer",
                    self.arch
                ),
            })
    }

    /// The mixture-of-experts keys of a file with `experts` per layer.
    fn insert_experts(&self, experts: u64, config: &mut Map<String, Value>) -> Result<()> {
        config.insert("num_local_experts".into(), json!(experts));
        config.insert(
            "num_experts_per_tok".into(),
            json!(self.required("expert_used_count")?),
        );
        if let Some(width) = self
            .get("expert_feed_forward_length")
            .and_then(|v| v.as_u64())
        {
            config.insert("moe_intermediate_size".into(), json!(width));
        }
        // llama.cpp renormalises Qwen3-MoE's top-k weights.
        config.insert("norm_topk_prob".into(), json!(true));
        Ok(())
    }

    /// `rope_scaling` as config.json spells it, unless the file has none.
    fn rope_scaling(&self) -> Option<Value> {
        let kind = self.get("rope.scaling.type").and_then(|v| v.as_str())?;
        if kind == "none" {
            return None;
        }
        let factor = self.number("rope.scaling.factor").unwrap_or(1.0);
        let mut scaling = json!({"rope_type": kind, "factor": factor});
        for (hf, gguf) in [
            (
                "original_max_position_embeddings",
                "rope.scaling.original_context_length",
            ),
            ("beta_fast", "rope.scaling.yarn_beta_fast"),
            ("beta_slow", "rope.scaling.yarn_beta_slow"),
        ] {
            if let Some(value) = self.number(gguf) {
                scaling[hf] = json!(value);
            }
        }
        Some(scaling)
    }
}

#[cfg(test)]
mod tests {
    use airllm_core::family::{ExpertNames, GgufNames, TokenizerHints};

    use super::*;

    /// A family shaped as the Llama-like descriptors are, with Qwen3-MoE's
    /// expert names.
    static FAMILY: FamilyFiles = FamilyFiles {
        architectures: &["TestForCausalLM"],
        model_type: "test",
        gguf: &[GgufArchitecture {
            name: "test",
            experts: true,
            implied: &[],
            names: GgufNames {
                global: &[("model.embed_tokens", "token_embd")],
                layer: &[
                    ("self_attn.o_proj", "attn_output"),
                    ("self_attn.k_norm", "attn_k_norm"),
                ],
                experts: Some(ExpertNames {
                    block: "mlp",
                    router: "gate",
                    gate: "gate_proj",
                    up: "up_proj",
                    down: "down_proj",
                }),
            },
        }],
        tokenizer: TokenizerHints::NONE,
        chat_template: None,
    };

    fn family() -> GgufFamily {
        GgufFamily {
            family: &FAMILY,
            gguf: &FAMILY.gguf[0],
        }
    }

    #[test]
    fn names_map_both_ways_of_a_layer() {
        let family = family();
        assert_eq!(
            family.gguf_name("model.layers.12.self_attn.o_proj.weight"),
            Some("blk.12.attn_output.weight".into())
        );
        assert_eq!(
            family.gguf_name("model.embed_tokens.weight"),
            Some("token_embd.weight".into())
        );
        assert_eq!(family.gguf_name("model.layers.0.unknown.weight"), None);
    }

    #[test]
    fn norms_and_the_router_map_to_their_stems() {
        let family = family();
        assert_eq!(
            family.gguf_name("model.layers.3.self_attn.k_norm.weight"),
            Some("blk.3.attn_k_norm.weight".into())
        );
        assert_eq!(
            family.gguf_name("model.layers.3.mlp.gate.weight"),
            Some("blk.3.ffn_gate_inp.weight".into())
        );
        assert_eq!(
            family.gguf_name("model.layers.3.mlp.gate_proj.weight"),
            None
        );
    }
}
