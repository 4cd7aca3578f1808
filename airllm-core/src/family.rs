//! What a model family tells the file formats, as plain data: the names
//! config.json gives it, the GGUF architectures that load as it with their
//! tensor names, how its own tokenizer code wraps a vocabulary file, and the
//! chat format it keeps in code. Each family's descriptor in `airllm-models`
//! fills one [`FamilyFiles`]; `airllm-formats` reads only these, so it names
//! no family itself.

use serde_json::Value;

/// A family as the file formats see it.
#[derive(Debug)]
pub struct FamilyFiles {
    /// `architectures[0]` values config.json may give.
    pub architectures: &'static [&'static str],
    /// `model_type` value (used when `architectures` is absent).
    pub model_type: &'static str,
    /// GGUF architectures (`general.architecture`) that load as this family.
    pub gguf: &'static [GgufArchitecture],
    /// How the family's tokenizer code wraps a vocabulary that is not a
    /// tokenizer.json.
    pub tokenizer: TokenizerHints,
    /// The chat format the family keeps in its Python code rather than in a
    /// template (a Jinja template in transformers' conventions).
    pub chat_template: Option<&'static str>,
}

impl FamilyFiles {
    /// A family config.json names by `architectures` or `model_type`, with
    /// no GGUF architecture, tokenizer hints or chat format of its own.
    pub const fn named(architectures: &'static [&'static str], model_type: &'static str) -> Self {
        FamilyFiles {
            architectures,
            model_type,
            gguf: &[],
            tokenizer: TokenizerHints::NONE,
            chat_template: None,
        }
    }

    /// Whether config.json names this family: by `architectures[0]`, or by
    /// `model_type` when it gives no architecture.
    pub fn is_named_by(&self, config: &Value) -> bool {
        match declared_architecture(config) {
            Some(name) => self.architectures.contains(&name),
            None => config.get("model_type").and_then(Value::as_str) == Some(self.model_type),
        }
    }
}

/// `architectures[0]` of config.json, if it gives one.
pub fn declared_architecture(config: &Value) -> Option<&str> {
    config.get("architectures")?.get(0)?.as_str()
}

/// The family config.json names among `families`.
pub fn family_of(
    config: &Value,
    families: &[&'static FamilyFiles],
) -> Option<&'static FamilyFiles> {
    families.iter().copied().find(|f| f.is_named_by(config))
}

/// One GGUF architecture a family loads from.
#[derive(Debug)]
pub struct GgufArchitecture {
    /// `general.architecture` in the file.
    pub name: &'static str,
    /// Whether this entry is for files with experts (`<arch>.expert_count`
    /// above 0): llama.cpp stores Mixtral as `llama` with experts.
    pub experts: bool,
    /// Keys the config implied by the file's metadata sets, saying how
    /// llama.cpp's converter changed the tensors from the Hugging Face
    /// checkpoint's, so that the family's builder reads them as stored:
    /// `rope_interleave` where it permuted the rows of q and k so that each
    /// head's rotary pairs are neighbours (dims 2i and 2i + 1), so that the
    /// rotary embedding pairs them that way and a streamed layer's q and k
    /// are never copied back into Hugging Face order.
    pub implied: &'static [(&'static str, bool)],
    /// The GGUF name of each tensor the family asks for by its Hugging Face
    /// name.
    pub names: GgufNames,
}

/// Hugging Face tensor names and the GGUF names llama.cpp's converter gives
/// them, without the `.weight` / `.bias` suffix.
#[derive(Debug)]
pub struct GgufNames {
    /// Outside the layers: (Hugging Face, GGUF), e.g.
    /// (`model.embed_tokens`, `token_embd`).
    pub global: &'static [(&'static str, &'static str)],
    /// Inside `model.layers.N.` and `blk.N.`: (Hugging Face, GGUF), e.g.
    /// (`self_attn.q_proj`, `attn_q`).
    pub layer: &'static [(&'static str, &'static str)],
    /// The router and experts of a mixture-of-experts layer.
    pub experts: Option<ExpertNames>,
}

/// Tensor names of a layer's router and experts, under `model.layers.N.`:
/// `{block}.{router}` and `{block}.experts.E.{gate | up | down}`. In GGUF
/// they are `ffn_gate_inp` and `ffn_{gate,up,down}.E` (older converters) or
/// slice E of the 3-D `ffn_{gate,up,down}_exps`.
#[derive(Clone, Copy, Debug)]
pub struct ExpertNames {
    /// The block holding router and experts (`block_sparse_moe`, `mlp`).
    pub block: &'static str,
    /// The router inside the block (`gate`).
    pub router: &'static str,
    /// Each expert's gate projection (`w1`, `gate_proj`).
    pub gate: &'static str,
    /// Each expert's up projection (`w3`, `up_proj`).
    pub up: &'static str,
    /// Each expert's down projection (`w2`, `down_proj`).
    pub down: &'static str,
}

impl ExpertNames {
    /// (Hugging Face, GGUF stem) of the three expert matrices.
    pub fn matrices(&self) -> [(&'static str, &'static str); 3] {
        [
            (self.gate, "ffn_gate"),
            (self.up, "ffn_up"),
            (self.down, "ffn_down"),
        ]
    }
}

/// How a family's tokenizer code wraps a vocabulary file (a SentencePiece or
/// tiktoken model) when the model ships no tokenizer.json.
#[derive(Debug)]
pub struct TokenizerHints {
    /// Special tokens numbered after a SentencePiece `tokenizer.model`'s
    /// pieces (ChatGLM); without them the BOS piece is put first, as
    /// `LlamaTokenizer` does.
    pub sentencepiece: Option<SpecialTokens>,
    /// The family's tiktoken vocabulary, if it ships one.
    pub tiktoken: Option<TiktokenHints>,
}

impl TokenizerHints {
    /// A family whose models ship a tokenizer.json.
    pub const NONE: TokenizerHints = TokenizerHints {
        sentencepiece: None,
        tiktoken: None,
    };
}

/// Special tokens a family adds after a vocabulary's own, and those of them
/// put before every encoded text.
#[derive(Debug)]
pub struct SpecialTokens {
    /// The tokens, numbered in this order after the vocabulary's.
    pub tokens: &'static [&'static str],
    /// How many `<|extra_N|>` tokens follow `tokens` (Qwen-1 reserves 205).
    pub extra: usize,
    /// Tokens (among `tokens`) put before every text.
    pub prefix: &'static [&'static str],
}

impl SpecialTokens {
    /// Every special token in numbering order.
    pub fn all(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self.tokens.iter().map(|t| t.to_string()).collect();
        tokens.extend((0..self.extra).map(|i| format!("<|extra_{i}|>")));
        tokens
    }
}

/// A family's tiktoken vocabulary: one `base64-token rank` per line.
#[derive(Debug)]
pub struct TiktokenHints {
    /// Its file name in the model directory (`qwen.tiktoken`, or
    /// `tokenizer.model`, told from SentencePiece by its contents).
    pub file: &'static str,
    /// The pre-tokenizer's regex name (`qwen2`, `llama3`).
    pub pre: &'static str,
    /// Special tokens numbered after the ranks.
    pub specials: SpecialTokens,
}
