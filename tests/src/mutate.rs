//! Seeded mutations of the files a model is made of, for the no-crash
//! harness (`tests/tests/mutants.rs`, and the binary's in the CLI's tests):
//! byte flips, extreme integers and truncation in binary files; value
//! swaps, extreme values and deletions in JSON; broken and runaway
//! constructs in templates. Every mutation is a pure function of its seed,
//! so a failing mutant is rerun by its number.

use std::path::{Path, PathBuf};

use airllm_core::BlockKind;
use airllm_formats::split::{Compression, StorageSettings};
use airllm_formats::GgufFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::{fixture, fixtures_dir, split_stored, split_to, FIXTURES};

/// How a file is mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A JSON document (config, index, manifest, tokenizer).
    Json,
    /// A safetensors file: its JSON header, or its bytes.
    Safetensors,
    /// Any other binary file (GGUF, a split's unit file, a SentencePiece
    /// model); `header` bytes at the start are where most damage goes.
    Binary {
        /// Length of the region that describes the rest.
        header: usize,
    },
    /// Text (a chat template, a tiktoken vocabulary).
    Text,
}

/// Integers that break arithmetic and allocation.
const EXTREME_INTEGERS: [u64; 12] = [
    0,
    1,
    2,
    3,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Template fragments that are unbalanced, failing or runaway.
const TEMPLATE_SNIPPETS: [&str; 16] = [
    "{%",
    "{{",
    "}}",
    "%}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if %}",
    "{{ messages[100].content }}",
    "{{ raise_exception('refused') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'a' * 1000000000000 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ messages | length }}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}",
    "{{ 1 / 0 }}",
    "{{ messages[0].content[::-1] }}",
];

/// A seeded source of mutations.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    /// The mutator for mutant `index` of run `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        Mutator {
            rng: StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// Mutates `bytes` as a file of `kind`; returns the new bytes and what
    /// was done.
    pub fn mutate(&mut self, kind: FileKind, bytes: &[u8]) -> (Vec<u8>, String) {
        match kind {
            FileKind::Json => self.json_file(bytes),
            FileKind::Safetensors if self.chance(0.6) => self.safetensors_header(bytes),
            FileKind::Safetensors => self.binary(bytes, 4096),
            FileKind::Binary { header } => self.binary(bytes, header),
            FileKind::Text => self.text(bytes),
        }
    }

    fn json_file(&mut self, bytes: &[u8]) -> (Vec<u8>, String) {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) if self.chance(0.85) => {
                let what = self.json(&mut value);
                (
                    serde_json::to_vec(&value).expect("JSON values serialize"),
                    what,
                )
            }
            _ => self.binary(bytes, bytes.len()),
        }
    }

    /// Mutates one node of `value` in place; returns what was done.
    pub fn json(&mut self, value: &mut Value) -> String {
        let mut paths = Vec::new();
        collect_paths(value, &mut Vec::new(), &mut paths);
        // Half the time stay near the top, where the settings are.
        let shallow: Vec<&Vec<Step>> = paths.iter().filter(|p| p.len() <= 2).collect();
        let path = match self.chance(0.5) && !shallow.is_empty() {
            true => shallow[self.below(shallow.len())].clone(),
            false => paths[self.below(paths.len())].clone(),
        };
        let donor = paths[self.below(paths.len())].clone();
        let donor_value = node(value, &donor).cloned().unwrap_or(Value::Null);
        let replacement = match self.below(6) {
            0 => return self.delete(value, &path),
            1 => donor_value,
            2 => self.scaled(node(value, &path)),
            3 => {
                let inner = node(value, &path).cloned().unwrap_or(Value::Null);
                json!([inner.clone(), inner])
            }
            _ => self.extreme_value(),
        };
        let what = format!("{} := {}", show(&path), brief(&replacement));
        if let Some(slot) = node_mut(value, &path) {
            *slot = replacement;
        }
        what
    }

    fn delete(&mut self, value: &mut Value, path: &[Step]) -> String {
        let Some((last, parent)) = path.split_last() else {
            *value = Value::Null;
            return "document := null".into();
        };
        match (node_mut(value, parent), last) {
            (Some(Value::Object(map)), Step::Key(key)) => {
                map.remove(key);
            }
            (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                items.remove(*i);
            }
            _ => {}
        }
        format!("delete {}", show(path))
    }

    fn scaled(&mut self, current: Option<&Value>) -> Value {
        let Some(n) = current.and_then(Value::as_i64) else {
            return self.extreme_value();
        };
        match self.below(5) {
            0 => json!(n.wrapping_add(1)),
            1 => json!(n.wrapping_sub(1)),
            2 => json!(n.wrapping_neg()),
            3 => json!(n.wrapping_mul(1000)),
            _ => json!(n / 2),
        }
    }

    fn extreme_value(&mut self) -> Value {
        match self.below(12) {
            0..=3 => json!(EXTREME_INTEGERS[self.below(EXTREME_INTEGERS.len())]),
            4 => json!(-1),
            5 => json!(i64::MIN),
            6 => json!([1e308, -1e308, 0.5, -0.0][self.below(4)]),
            7 => json!(["", "x", "\u{0}", "llama", "{{", "<0xZZ>"][self.below(6)]),
            8 => Value::Null,
            9 => json!(self.chance(0.5)),
            10 => json!([]),
            _ => json!({}),
        }
    }

    /// Mutates a safetensors file's JSON header and rewrites its length.
    fn safetensors_header(&mut self, bytes: &[u8]) -> (Vec<u8>, String) {
        let header = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .filter(|&n| n <= bytes.len() - 8);
        let Some(n) = header else {
            return self.binary(bytes, bytes.len());
        };
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes[8..8 + n]) else {
            return self.binary(bytes, bytes.len());
        };
        let what = self.json(&mut value);
        let text = serde_json::to_vec(&value).expect("JSON values serialize");
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(&bytes[8 + n..]);
        (out, format!("header: {what}"))
    }

    fn binary(&mut self, bytes: &[u8], header: usize) -> (Vec<u8>, String) {
        let mut out = bytes.to_vec();
        if out.is_empty() {
            return (out, "empty".into());
        }
        let region = header.clamp(1, out.len());
        let at = match self.chance(0.8) {
            true => self.below(region),
            false => self.below(out.len()),
        };
        match self.below(4) {
            0 => {
                let bit = self.below(8);
                out[at] ^= 1 << bit;
                (out, format!("flip bit {bit} of byte {at}"))
            }
            1 => {
                let value = EXTREME_INTEGERS[self.below(EXTREME_INTEGERS.len())];
                let width = [1, 2, 4, 8][self.below(4)];
                let end = (at + width).min(out.len());
                out[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                (out, format!("write {value:#x} ({width} bytes) at {at}"))
            }
            2 => {
                out.truncate(at);
                (out, format!("truncate to {at} bytes"))
            }
            _ => {
                let end = (at + 1 + self.below(64)).min(out.len());
                out[at..end].fill(if self.chance(0.5) { 0 } else { 0xff });
                (out, format!("fill bytes {at}..{end}"))
            }
        }
    }

    fn text(&mut self, bytes: &[u8]) -> (Vec<u8>, String) {
        let text = String::from_utf8_lossy(bytes).into_owned();
        if text.is_empty() || self.chance(0.15) {
            return self.binary(bytes, bytes.len());
        }
        let boundary = |m: &mut Self| {
            let mut at = m.below(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        let (a, b) = (boundary(self), boundary(self));
        let (start, end) = (a.min(b), a.max(b));
        let (out, what) = match self.below(3) {
            0 => (
                format!("{}{}", &text[..start], &text[end..]),
                format!("delete {start}..{end}"),
            ),
            1 => (
                format!("{}{}", &text[..end], &text[start..]),
                format!("repeat {start}..{end}"),
            ),
            _ => {
                // Mostly between tags, where a snippet is parsed and run.
                let tag_ends: Vec<usize> = text
                    .match_indices(['}', '%'])
                    .map(|(at, _)| at + 1)
                    .filter(|&at| text[..at].ends_with("}}") || text[..at].ends_with("%}"))
                    .chain([0, text.len()])
                    .collect();
                let start = match self.chance(0.7) {
                    true => tag_ends[self.below(tag_ends.len())],
                    false => start,
                };
                let snippet = TEMPLATE_SNIPPETS[self.below(TEMPLATE_SNIPPETS.len())];
                (
                    format!("{}{snippet}{}", &text[..start], &text[start..]),
                    format!("insert {snippet:?} at {start}"),
                )
            }
        };
        (out.into_bytes(), what)
    }
}

/// One step into a JSON document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every node's path (the root too), depth first.
fn collect_paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    let children: Vec<(Step, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (Step::Index(i), v))
            .collect(),
        _ => return,
    };
    for (step, child) in children {
        prefix.push(step);
        collect_paths(child, prefix, out);
        prefix.pop();
    }
}

fn node<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn node_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(i),
    })
}

fn show(path: &[Step]) -> String {
    let steps: Vec<String> = path
        .iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => i.to_string(),
        })
        .collect();
    format!("/{}", steps.join("/"))
}

fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// A chat template with the constructs released templates use.
const TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(system='') %}\
{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}{% endfor %}\
{% if ns.system %}<|system|>{{ ns.system }}\n{% endif %}\
{% for m in messages[::-1] if m.role != 'system' %}{% if loop.first %}<|last|>{% endif %}{% endfor %}\
{% for m in messages if m.role != 'system' %}<|{{ m.role }}|>{{ m.content | trim }}{{ eos_token }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// A model the harness mutates: a directory (or one GGUF file) in the
/// harness's scratch space, and which of its files to mutate as what.
pub struct Base {
    path: PathBuf,
    files: Vec<(PathBuf, FileKind)>,
}

/// How a file of a model directory is mutated, by its name.
fn kind_of(path: &Path) -> FileKind {
    let name = path.file_name().unwrap().to_string_lossy();
    match () {
        _ if name.ends_with(".json") => FileKind::Json,
        _ if name.ends_with(".safetensors") => FileKind::Safetensors,
        _ if name.ends_with(".jinja") || name.ends_with(".tiktoken") => FileKind::Text,
        _ => FileKind::Binary {
            header: std::fs::metadata(path)
                .map(|m| m.len() as usize)
                .unwrap_or(0),
        },
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(
                files_under(&path)
                    .into_iter()
                    .map(|p| Path::new(path.file_name().unwrap()).join(p)),
            );
        } else {
            out.push(PathBuf::from(path.file_name().unwrap()));
        }
    }
    out.sort();
    out
}

/// Copies directory `from` to `to` (one level of subdirectories).
fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        std::fs::create_dir_all(to.join(&file).parent().unwrap()).unwrap();
        std::fs::copy(from.join(&file), to.join(&file)).unwrap();
    }
}

/// A directory base: its files other than the fixture's own records.
fn dir_base(path: PathBuf) -> Base {
    let files = files_under(&path)
        .into_iter()
        .filter(|f| f != Path::new("reference.json"))
        .map(|f| {
            let kind = kind_of(&path.join(&f));
            (f, kind)
        })
        .collect();
    Base { path, files }
}

/// The models to mutate, made in `scratch`: every fixture, splits of three,
/// models with SentencePiece and tiktoken vocabularies, and a model with a
/// chat template in each place one is found.
pub fn bases(scratch: &Path) -> Vec<Base> {
    let mut bases = Vec::new();
    for name in FIXTURES {
        let path = scratch.join(name);
        if name.ends_with(".gguf") {
            std::fs::copy(fixture(name), &path).unwrap();
            let file = GgufFile::open(&path).unwrap();
            let header = file.tensors.iter().map(|t| t.range.start).min().unwrap();
            bases.push(Base {
                files: vec![(PathBuf::new(), FileKind::Binary { header })],
                path,
            });
        } else {
            copy_dir(&fixture(name), &path);
            bases.push(dir_base(path));
        }
    }
    for name in ["llama-gqa", "mixtral-moe", "llama-mixed.gguf"] {
        let out = scratch.join(format!("{name}.split"));
        bases.push(dir_base(split_to(&fixture(name), &out)));
    }
    // Compressed splits: blocks written by the quantizers, and a GGUF's
    // blocks copied as they are.
    for (name, compression) in [
        ("llama-gqa", Compression::Blocks(BlockKind::NF4)),
        ("mixtral-moe", Compression::Blocks(BlockKind::Q4_K)),
        ("llama-mixed.gguf", Compression::Blocks(BlockKind::Q8_0)),
    ] {
        let out = scratch.join(format!("{name}.{compression}.split"));
        let storage = StorageSettings::new(compression, None);
        bases.push(dir_base(split_stored(&fixture(name), &out, storage)));
    }
    // zstd splits: frames of dense tensors (byte planes) and of blocks.
    for (name, compression) in [
        ("mixtral-moe", Compression::Keep),
        ("llama-gqa", Compression::Blocks(BlockKind::Q8_0)),
    ] {
        let out = scratch.join(format!("{name}.{compression}.zstd.split"));
        let storage = StorageSettings::new(compression, None).with_zstd(Some(3));
        bases.push(dir_base(split_stored(&fixture(name), &out, storage)));
    }
    // Models with a vocabulary file in place of tokenizer.json.
    for (model, vocabulary) in [
        ("chatglm3", "chatglm3/tokenizer.model"),
        ("baichuan2-rope", "baichuan/tokenizer.model"),
        ("llama-gqa", "unigram/tokenizer.model"),
        ("qwen-v1", "qwen-v1/qwen.tiktoken"),
        ("chatglm3", "glm4/tokenizer.model"),
    ] {
        let source = fixtures_dir().join("tokenizers").join(vocabulary);
        let file = PathBuf::from(source.file_name().unwrap());
        let path = scratch.join(format!("{model}+{}", vocabulary.replace('/', "-")));
        copy_dir(&fixture(model), &path);
        let _ = std::fs::remove_file(path.join("tokenizer.json"));
        std::fs::copy(&source, path.join(&file)).unwrap();
        let kind = kind_of(&path.join(&file));
        bases.push(Base {
            files: vec![(file, kind)],
            path,
        });
    }
    let config = serde_json::json!({
        "chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}
    });
    for (file, contents) in [
        ("tokenizer_config.json", config.to_string()),
        ("chat_template.jinja", TEMPLATE.to_string()),
    ] {
        let path = scratch.join(format!("chat-{file}"));
        copy_dir(&fixture("llama-gqa"), &path);
        std::fs::write(path.join(file), contents).unwrap();
        bases.push(Base {
            files: vec![(PathBuf::from(file), kind_of(&path.join(file)))],
            path,
        });
    }
    bases
}

/// Writes mutant `index` of base `base` to `out`; returns its path and
/// what was mutated.
pub fn write_mutant(base: &Base, seed: u64, index: u64, out: &Path) -> (PathBuf, String) {
    let mut mutator = Mutator::new(seed, index);
    let (file, kind) = &base.files[mutator.below(base.files.len())];
    let source = match base.path.is_file() {
        true => base.path.clone(),
        false => base.path.join(file),
    };
    let (bytes, what) = mutator.mutate(*kind, &std::fs::read(&source).unwrap());
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let what = format!(
        "{} {}: {what}",
        base.path.file_name().unwrap().to_string_lossy(),
        file.display()
    );
    if base.path.is_file() {
        let path = out.join(base.path.file_name().unwrap());
        std::fs::write(&path, bytes).unwrap();
        return (path, what);
    }
    for other in files_under(&base.path) {
        let target = out.join(&other);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if &other == file {
            std::fs::write(&target, &bytes).unwrap();
        } else {
            std::fs::hard_link(base.path.join(&other), &target).unwrap();
        }
    }
    (out.to_path_buf(), what)
}
