//! Every supported family's descriptor: the names config.json gives it,
//! its GGUF architectures and tensor names, its tokenizer and chat hints,
//! its builder and its synthetic config. The builders, and the tensor names
//! they use, are in each family's own file.

use airllm_core::family::{
    FamilyFiles, GgufArchitecture, GgufNames, SpecialTokens, TiktokenHints, TokenizerHints,
};
use serde_json::json;

use crate::llama_shaped::{gguf, PERMUTED_QK};
use crate::presets::CONTEXT;
use crate::registry::{Family, Synthetic};

/// Every family this build supports.
pub static SUPPORTED: &[&Family] = &[
    &LLAMA, &QWEN2, &QWEN3, &QWEN3_MOE, &QWEN, &MISTRAL, &MIXTRAL, &CHATGLM, &BAICHUAN, &INTERNLM,
    &INTERNLM2,
];

/// Llama's descriptor.
pub static LLAMA: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("llama", PERMUTED_QK, None)],
        ..FamilyFiles::named(&["LlamaForCausalLM"], "llama")
    },
    build: crate::llama::from_config,
    synthetic: Synthetic::Dense(|shape| shape.llama_config("LlamaForCausalLM", json!({}))),
};

/// Qwen2's descriptor.
pub static QWEN2: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("qwen2", &[], None)],
        ..FamilyFiles::named(&["Qwen2ForCausalLM"], "qwen2")
    },
    build: crate::qwen2::from_config,
    synthetic: Synthetic::Dense(|shape| {
        shape.llama_config("Qwen2ForCausalLM", json!({"use_sliding_window": false}))
    }),
};

/// Qwen3's descriptor.
pub static QWEN3: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("qwen3", &[], None)],
        ..FamilyFiles::named(&["Qwen3ForCausalLM"], "qwen3")
    },
    build: crate::qwen3::from_config,
    synthetic: Synthetic::Dense(|shape| {
        shape.llama_config("Qwen3ForCausalLM", json!({"use_sliding_window": false}))
    }),
};

/// Qwen3-MoE's descriptor.
pub static QWEN3_MOE: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("qwen3moe", &[], Some(crate::qwen3::EXPERTS))],
        ..FamilyFiles::named(&["Qwen3MoeForCausalLM"], "qwen3_moe")
    },
    build: crate::qwen3::moe_from_config,
    synthetic: Synthetic::Experts(|shape| {
        let extra = json!({"num_experts": shape.experts, "num_experts_per_tok": shape.experts_per_token,
            "moe_intermediate_size": shape.intermediate, "norm_topk_prob": true});
        shape.llama_config("Qwen3MoeForCausalLM", extra)
    }),
};

/// Qwen-1's descriptor: a tiktoken `qwen.tiktoken` with `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>` and 205 `<|extra_N|>` after the ranks, and
/// ChatML as its `make_context` builds it, with Qwen's default system
/// message.
pub static QWEN: Family = Family {
    files: FamilyFiles {
        architectures: &["QWenLMHeadModel"],
        model_type: "qwen",
        gguf: &[],
        tokenizer: TokenizerHints {
            sentencepiece: None,
            tiktoken: Some(TiktokenHints {
                file: "qwen.tiktoken",
                pre: "qwen2",
                specials: SpecialTokens {
                    tokens: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                    extra: 205,
                    prefix: &[],
                },
            }),
        },
        chat_template: Some("{% set ns = namespace(system='You are a helpful assistant.') %}{% for m in messages if m.role == 'system' %}{% set ns.system = m.content %}{% endfor %}<|im_start|>system{{ '\\n' }}{{ ns.system }}<|im_end|>{% for m in messages if m.role != 'system' %}{{ '\\n' }}<|im_start|>{{ m.role }}{{ '\\n' }}{{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}{{ '\\n' }}<|im_start|>assistant{{ '\\n' }}{% endif %}"),
    },
    build: crate::qwen::from_config,
    synthetic: Synthetic::No,
};

/// Mistral's descriptor.
pub static MISTRAL: Family = Family {
    files: FamilyFiles::named(&["MistralForCausalLM"], "mistral"),
    build: crate::mistral::from_config,
    synthetic: Synthetic::Dense(|shape| {
        shape.llama_config("MistralForCausalLM", json!({"sliding_window": CONTEXT}))
    }),
};

/// Mixtral's descriptor; llama.cpp stores Mixtral as `llama` with experts.
pub static MIXTRAL: Family = Family {
    files: FamilyFiles {
        gguf: &[gguf("llama", PERMUTED_QK, Some(crate::mixtral::EXPERTS))],
        ..FamilyFiles::named(&["MixtralForCausalLM"], "mixtral")
    },
    build: crate::mixtral::from_config,
    synthetic: Synthetic::Experts(|shape| {
        let extra = json!({"num_local_experts": shape.experts,
            "num_experts_per_tok": shape.experts_per_token});
        shape.llama_config("MixtralForCausalLM", extra)
    }),
};

/// ChatGLM's descriptor. Its SentencePiece tokenizer (ChatGLM2/3) numbers
/// its specials after the pieces and puts `[gMASK] sop` before every text;
/// GLM-4 ships a tiktoken `tokenizer.model`. The chat format is ChatGLM3's
/// `build_chat_input`: per message the role token, a newline and the
/// content, then `<|assistant|>`; the spaces stand for the dummy prefix
/// that SentencePiece puts before each separately encoded part.
pub static CHATGLM: Family = Family {
    files: FamilyFiles {
        architectures: &["ChatGLMModel", "ChatGLMForConditionalGeneration"],
        model_type: "chatglm",
        gguf: &[],
        tokenizer: TokenizerHints {
            sentencepiece: Some(SpecialTokens {
                tokens: &["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>",
                    "<|assistant|>", "<|observation|>"],
                extra: 0,
                prefix: &["[gMASK]", "sop"],
            }),
            tiktoken: Some(TiktokenHints {
                file: "tokenizer.model",
                pre: "llama3",
                specials: SpecialTokens {
                    tokens: &["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                        "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                        "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                        "<|end_of_video|>"],
                    extra: 0,
                    prefix: &["[gMASK]", "<sop>"],
                },
            }),
        },
        chat_template: Some("[gMASK]sop{% for m in messages %}<|{{ m.role }}|> {{ '\\n' }} {{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
    },
    build: crate::chatglm::from_config,
    synthetic: Synthetic::Dense(crate::chatglm::synthetic_config),
};

/// Baichuan's descriptor (its SentencePiece tokenizer puts BOS first, as
/// `LlamaTokenizer` does).
pub static BAICHUAN: Family = Family {
    files: FamilyFiles::named(&["BaichuanForCausalLM", "BaiChuanForCausalLM"], "baichuan"),
    build: crate::baichuan::from_config,
    synthetic: Synthetic::Dense(|shape| {
        let extra = json!({"position_embedding": "rope", "model_max_length": CONTEXT});
        shape.llama_config("BaichuanForCausalLM", extra)
    }),
};

/// InternLM's descriptor (its SentencePiece tokenizer puts BOS first, as
/// `LlamaTokenizer` does).
pub static INTERNLM: Family = Family {
    files: FamilyFiles::named(&["InternLMForCausalLM"], "internlm"),
    build: crate::internlm::from_config,
    synthetic: Synthetic::Dense(|shape| {
        shape.llama_config("InternLMForCausalLM", json!({"bias": true}))
    }),
};

/// InternLM2's descriptor.
pub static INTERNLM2: Family = Family {
    files: FamilyFiles {
        gguf: &[GgufArchitecture {
            name: "internlm2",
            experts: false,
            implied: &[PERMUTED_QK[0], ("split_qkv", true)],
            names: GgufNames {
                global: &[
                    ("model.tok_embeddings", "token_embd"),
                    ("model.norm", "output_norm"),
                    ("output", "output"),
                ],
                layer: &[
                    ("attention_norm", "attn_norm"),
                    ("attention.wq", "attn_q"),
                    ("attention.wk", "attn_k"),
                    ("attention.wv", "attn_v"),
                    ("attention.wo", "attn_output"),
                    ("ffn_norm", "ffn_norm"),
                    ("feed_forward.w1", "ffn_gate"),
                    ("feed_forward.w3", "ffn_up"),
                    ("feed_forward.w2", "ffn_down"),
                ],
                experts: None,
            },
        }],
        ..FamilyFiles::named(&["InternLM2ForCausalLM"], "internlm2")
    },
    build: crate::internlm2::from_config,
    synthetic: Synthetic::Dense(|shape| {
        shape.llama_config("InternLM2ForCausalLM", json!({"bias": false}))
    }),
};
