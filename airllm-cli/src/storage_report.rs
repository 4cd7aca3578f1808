//! What `inspect` says of a model's storage: each tensor's encoding and
//! bytes beside bf16, their sums per encoding, the bytes on disk (fewer
//! than the encodings' under zstd), and, for a compressed split, every
//! matrix that fell back from the kind asked for (rows that are not whole
//! blocks).

use airllm_core::{BlockKind, Engine, Result, StorageKind, UnitInfo, UnitSpec};
use airllm_formats::split::{wanted, Role, StorageSettings};
use airllm_formats::{Manifest, ModelDir, ModelKind, MANIFEST_FILE};
use burn::tensor::backend::Backend;
use serde_json::{json, Value};

/// One encoding's share of the model.
struct KindRow {
    kind: StorageKind,
    tensors: usize,
    bytes: u64,
    bf16_bytes: u64,
}

/// One tensor's storage.
struct TensorRow {
    unit: String,
    tensor: String,
    kind: StorageKind,
    shape: Vec<usize>,
    bytes: u64,
    /// The block kind its split asked for, where it fell back from it.
    fell_back_from: Option<BlockKind>,
}

impl TensorRow {
    fn bf16_bytes(&self) -> u64 {
        2 * self.shape.iter().product::<usize>() as u64
    }

    fn vs_bf16(&self) -> f64 {
        self.bytes as f64 / self.bf16_bytes().max(1) as f64
    }
}

/// The storage of a model's units.
pub struct StorageSummary {
    settings: Option<StorageSettings>,
    tensors: Vec<TensorRow>,
    /// Bytes of the units' files (their tensors' encodings, or less when
    /// compressed with zstd).
    file_bytes: u64,
}

impl StorageSummary {
    /// The storage of the model `engine` runs from `dir` (a split's settings
    /// from its manifest).
    pub fn of<B: Backend>(dir: &ModelDir, engine: &Engine<B>) -> Result<Self> {
        let settings = match dir.kind {
            ModelKind::Split => Manifest::read(&dir.path.join(MANIFEST_FILE))?.storage,
            _ => None,
        };
        Ok(StorageSummary::new(
            engine.store().units(),
            engine.arch().units(),
            settings,
        ))
    }

    /// Sums `units` by encoding; with a split's `settings`, lists the
    /// fallbacks (the routers `specs` mark are kept in floats by design).
    pub fn new(units: &[UnitInfo], specs: &[UnitSpec], settings: Option<StorageSettings>) -> Self {
        let mut tensors = Vec::new();
        for (unit, spec) in units.iter().zip(specs) {
            for t in &unit.tensors {
                let elements: usize = t.shape.iter().product();
                let bytes = t.kind.encoded_bytes(elements).unwrap_or(0) as u64;
                let role = Role::of(unit.kind, t, spec.routers.contains(&t.name));
                let fell_back_from = match settings.map(|s| wanted(s, role, t)) {
                    Some(StorageKind::Block(wanted)) if t.kind != StorageKind::Block(wanted) => {
                        Some(wanted)
                    }
                    _ => None,
                };
                tensors.push(TensorRow {
                    unit: unit.name.clone(),
                    tensor: t.name.clone(),
                    kind: t.kind,
                    shape: t.shape.clone(),
                    bytes,
                    fell_back_from,
                });
            }
        }
        StorageSummary {
            settings,
            tensors,
            file_bytes: units.iter().map(|u| u.bytes).sum(),
        }
    }

    fn fallbacks(&self) -> impl Iterator<Item = &TensorRow> {
        self.tensors.iter().filter(|t| t.fell_back_from.is_some())
    }

    fn encoded_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// The tensors summed per encoding, in the order each first appears.
    fn kinds(&self) -> Vec<KindRow> {
        let mut kinds: Vec<KindRow> = Vec::new();
        for t in &self.tensors {
            let at = match kinds.iter().position(|r| r.kind == t.kind) {
                Some(at) => at,
                None => {
                    kinds.push(KindRow {
                        kind: t.kind,
                        tensors: 0,
                        bytes: 0,
                        bf16_bytes: 0,
                    });
                    kinds.len() - 1
                }
            };
            kinds[at].tensors += 1;
            kinds[at].bytes += t.bytes;
            kinds[at].bf16_bytes += t.bf16_bytes();
        }
        kinds
    }

    /// As JSON: the settings, each encoding, each fallback, each tensor.
    pub fn json(&self) -> Value {
        let kinds: Vec<Value> = self
            .kinds()
            .iter()
            .map(|r| {
                json!({
                    "kind": r.kind.to_string(),
                    "tensors": r.tensors,
                    "bytes": r.bytes,
                    "vs_bf16": r.bytes as f64 / r.bf16_bytes.max(1) as f64,
                })
            })
            .collect();
        let fallbacks: Vec<Value> = self
            .fallbacks()
            .map(|f| {
                json!({
                    "unit": f.unit,
                    "tensor": f.tensor,
                    "wanted": f.fell_back_from.map(|k| format!("{k:?}")),
                    "stored": f.kind.to_string(),
                })
            })
            .collect();
        let tensors: Vec<Value> = self
            .tensors
            .iter()
            .map(|t| {
                json!({
                    "unit": t.unit,
                    "tensor": t.tensor,
                    "kind": t.kind.to_string(),
                    "shape": t.shape,
                    "bytes": t.bytes,
                    "vs_bf16": t.vs_bf16(),
                    "fell_back_from": t.fell_back_from.map(|k| format!("{k:?}")),
                })
            })
            .collect();
        json!({
            "settings": self.settings,
            "kinds": kinds,
            "encoded_bytes": self.encoded_bytes(),
            "file_bytes": self.file_bytes,
            "fallbacks": fallbacks,
            "tensors": tensors,
        })
    }

    /// As lines of text; `each_tensor` adds a line per tensor.
    pub fn lines(&self, each_tensor: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(s) = self.settings {
            let zstd = s.zstd.map(|l| format!(" --zstd={l}")).unwrap_or_default();
            lines.push(format!(
                "stored with --compress {} --embedding {}{zstd}",
                s.compression,
                format!("{:?}", s.embedding).to_lowercase()
            ));
        }
        if self.file_bytes < self.encoded_bytes() {
            lines.push(format!(
                "  zstd: {} on disk for {} of tensors ({:.3}x)",
                airllm_core::ByteSize(self.file_bytes),
                airllm_core::ByteSize(self.encoded_bytes()),
                self.file_bytes as f64 / self.encoded_bytes().max(1) as f64
            ));
        }
        for r in &self.kinds() {
            lines.push(format!(
                "  {:<6} {:>4} tensors {:>12}  {:.3}x bf16",
                r.kind.to_string(),
                r.tensors,
                airllm_core::ByteSize(r.bytes).to_string(),
                r.bytes as f64 / r.bf16_bytes.max(1) as f64
            ));
        }
        let fallbacks: Vec<&TensorRow> = self.fallbacks().collect();
        if !fallbacks.is_empty() && !each_tensor {
            lines.push(format!(
                "{} matrices fell back (rows that are not whole blocks):",
                fallbacks.len()
            ));
            for f in fallbacks {
                lines.push(format!(
                    "  {} {}: {} instead of {:?}",
                    f.unit,
                    f.tensor,
                    f.kind,
                    f.fell_back_from.expect("a fallback")
                ));
            }
        }
        if each_tensor {
            lines.push(format!(
                "  {:<10} {:<40} {:<6} {:>14} {:>12} {:>8}",
                "unit", "tensor", "kind", "shape", "bytes", "vs bf16"
            ));
            for t in &self.tensors {
                let fallback = t
                    .fell_back_from
                    .map(|k| format!("  (fell back from {k:?})"))
                    .unwrap_or_default();
                lines.push(format!(
                    "  {:<10} {:<40} {:<6} {:>14} {:>12} {:>7.3}x{fallback}",
                    t.unit,
                    t.tensor,
                    t.kind.to_string(),
                    format!("{:?}", t.shape),
                    airllm_core::ByteSize(t.bytes).to_string(),
                    t.vs_bf16()
                ));
            }
        }
        lines
    }
}
