//! What `inspect` says of a model's storage: each encoding's tensors and
//! bytes beside bf16, and, for a compressed split, every matrix that fell
//! back from the kind asked for (rows that are not whole blocks).

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

/// A matrix stored otherwise than its split's settings asked.
struct Fallback {
    unit: String,
    tensor: String,
    wanted: BlockKind,
    stored: StorageKind,
}

/// The storage of a model's units.
pub struct StorageSummary {
    settings: Option<StorageSettings>,
    kinds: Vec<KindRow>,
    fallbacks: Vec<Fallback>,
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
        let mut kinds: Vec<KindRow> = Vec::new();
        let mut fallbacks = Vec::new();
        for (unit, spec) in units.iter().zip(specs) {
            for t in &unit.tensors {
                let elements: usize = t.shape.iter().product();
                let row = match kinds.iter_mut().find(|r| r.kind == t.kind) {
                    Some(row) => row,
                    None => {
                        kinds.push(KindRow {
                            kind: t.kind,
                            tensors: 0,
                            bytes: 0,
                            bf16_bytes: 0,
                        });
                        kinds.last_mut().expect("just pushed")
                    }
                };
                row.tensors += 1;
                row.bytes += t.kind.encoded_bytes(elements).unwrap_or(0) as u64;
                row.bf16_bytes += 2 * elements as u64;
                let role = Role::of(unit.kind, t, spec.routers.contains(&t.name));
                if let Some(StorageKind::Block(wanted)) = settings.map(|s| wanted(s, role, t)) {
                    if t.kind != StorageKind::Block(wanted) {
                        fallbacks.push(Fallback {
                            unit: unit.name.clone(),
                            tensor: t.name.clone(),
                            wanted,
                            stored: t.kind,
                        });
                    }
                }
            }
        }
        StorageSummary {
            settings,
            kinds,
            fallbacks,
        }
    }

    /// As JSON: the settings, each encoding, each fallback.
    pub fn json(&self) -> Value {
        let kinds: Vec<Value> = self
            .kinds
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
            .fallbacks
            .iter()
            .map(|f| {
                json!({
                    "unit": f.unit,
                    "tensor": f.tensor,
                    "wanted": format!("{:?}", f.wanted),
                    "stored": f.stored.to_string(),
                })
            })
            .collect();
        json!({
            "settings": self.settings,
            "kinds": kinds,
            "fallbacks": fallbacks,
        })
    }

    /// As lines of text.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(s) = self.settings {
            lines.push(format!(
                "stored with --compress {} --embedding {}",
                s.compression,
                format!("{:?}", s.embedding).to_lowercase()
            ));
        }
        for r in &self.kinds {
            lines.push(format!(
                "  {:<6} {:>4} tensors {:>12}  {:.3}x bf16",
                r.kind.to_string(),
                r.tensors,
                airllm_core::ByteSize(r.bytes).to_string(),
                r.bytes as f64 / r.bf16_bytes.max(1) as f64
            ));
        }
        if !self.fallbacks.is_empty() {
            lines.push(format!(
                "{} matrices fell back (rows that are not whole blocks):",
                self.fallbacks.len()
            ));
            for f in &self.fallbacks {
                lines.push(format!(
                    "  {} {}: {} instead of {:?}",
                    f.unit, f.tensor, f.stored, f.wanted
                ));
            }
        }
        lines
    }
}
