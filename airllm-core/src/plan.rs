//! The residency plan: from a memory budget, decide which units stay on the
//! device across passes and which are streamed from the store every pass.

use crate::{ByteSize, Error, ModelDims, Result, UnitInfo, UnitKind, UnitSpec, WeightLayout};

/// Where a unit lives between passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitPlacement {
    /// Loaded once and kept on the device.
    Resident,
    /// Read from the store on every pass that needs it.
    Streamed,
    /// A mixture-of-experts layer whose shared tensors (attention, norms,
    /// router) are kept on the device, its routed experts read on request
    /// every pass.
    SharedResident,
}

/// What the plan is computed from.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Each unit's role and device bytes, in forward order.
    pub units: Vec<(UnitKind, u64)>,
    /// Device bytes one pass brings in when the unit streams: the whole
    /// unit, or for a mixture-of-experts layer its shared tensors plus as
    /// many experts as the pass can route to.
    pub stream_unit_bytes: Vec<u64>,
    /// Device bytes of each mixture-of-experts layer's shared tensors
    /// (`None` for the other units).
    pub shared_bytes: Vec<Option<u64>>,
    /// KV-cache bytes for the whole batch at its longest.
    pub kv_bytes: u64,
    /// Activation bytes of the largest pass.
    pub activation_bytes: u64,
    /// Host bytes held while one unit is decoded, besides the unit (the
    /// largest of [`UnitInfo::decode_bytes`]; the reader decodes one at a
    /// time).
    pub decode_bytes: u64,
    /// Units the reader may run ahead of the compute thread.
    pub prefetch: usize,
    /// Bytes of a draft model held wholly resident beside this one
    /// (planned first; 0 without one).
    pub draft_bytes: u64,
    /// The memory budget.
    pub budget: u64,
}

/// The outcome: a placement per unit and the memory it predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidencyPlan {
    /// Placement of each unit, in forward order.
    pub placements: Vec<UnitPlacement>,
    /// Bytes of the resident units.
    pub resident_bytes: u64,
    /// Bytes of the buffers for units being read: prefetch + 1 streamed
    /// units of the largest size, and the compressed frames and scratch of
    /// the one being decoded.
    pub stream_buffer_bytes: u64,
    /// KV-cache bytes.
    pub kv_bytes: u64,
    /// Activation bytes.
    pub activation_bytes: u64,
    /// Bytes left for the cache of recently routed experts (0 when no
    /// mixture-of-experts layer streams).
    pub expert_cache_bytes: u64,
    /// Bytes of the draft model, all of it resident.
    pub draft_bytes: u64,
    /// The budget planned against.
    pub budget: u64,
}

/// Device bytes one pass brings in for unit `info` of spec `spec` when it
/// streams, for a pass over `rows` tokens routed to `per_token` experts each.
fn streamed_bytes(
    info: &UnitInfo,
    spec: &UnitSpec,
    rows: usize,
    per_token: usize,
    layout: WeightLayout,
) -> u64 {
    if spec.experts.is_empty() {
        return info.device_bytes(layout);
    }
    let shared = info.device_bytes_of(&spec.shared_tensors(), layout);
    let largest_expert = spec
        .experts
        .iter()
        .map(|names| info.device_bytes_of(names, layout))
        .max()
        .unwrap_or(0);
    let routed = (rows * per_token).min(spec.experts.len());
    shared + routed as u64 * largest_expert
}

impl PlanInput {
    /// The input for a store's units and a model's sizes, for `batch`
    /// sequences of up to `context` tokens processed `chunk` tokens per pass.
    /// Units are counted at their size on the device under `layout`.
    pub fn for_model(
        units: &[UnitInfo],
        specs: &[UnitSpec],
        dims: &ModelDims,
        shape: BatchShape,
        prefetch: usize,
        budget: u64,
        layout: WeightLayout,
    ) -> Self {
        let rows = shape.batch * shape.chunk;
        PlanInput {
            units: units
                .iter()
                .map(|u| (u.kind, u.device_bytes(layout)))
                .collect(),
            stream_unit_bytes: units
                .iter()
                .zip(specs)
                .map(|(info, spec)| {
                    streamed_bytes(info, spec, rows, dims.experts_per_token, layout)
                })
                .collect(),
            shared_bytes: units
                .iter()
                .zip(specs)
                .map(|(info, spec)| {
                    (!spec.experts.is_empty())
                        .then(|| info.device_bytes_of(&spec.shared_tensors(), layout))
                })
                .collect(),
            kv_bytes: dims.kv_bytes_per_token() * (shape.batch * shape.context) as u64,
            activation_bytes: dims.activation_bytes(shape.batch * shape.chunk, shape.context),
            decode_bytes: units.iter().map(|u| u.decode_bytes).max().unwrap_or(0),
            prefetch,
            draft_bytes: 0,
            budget,
        }
    }

    /// Bytes with every unit resident: weights, KV cache, activations and
    /// the scratch of decoding one unit.
    pub fn all_resident_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.1).sum::<u64>()
            + self.kv_bytes
            + self.activation_bytes
            + self.decode_bytes
    }
}

fn is_layer(kind: UnitKind) -> bool {
    matches!(kind, UnitKind::Layer(_))
}

impl PlanInput {
    /// Bytes of the units that never stream: embedding and head.
    fn end_bytes(&self) -> u64 {
        self.units
            .iter()
            .filter(|u| !is_layer(u.0))
            .map(|u| u.1)
            .sum()
    }

    /// Buffers for prefetch + 1 streamed layers of the largest size, and
    /// for decoding one.
    fn stream_buffer_bytes(&self) -> u64 {
        let largest = self
            .units
            .iter()
            .zip(&self.stream_unit_bytes)
            .filter(|(u, _)| is_layer(u.0))
            .map(|(_, streamed)| *streamed)
            .max();
        (self.prefetch as u64 + 1) * largest.unwrap_or(0) + self.decode_bytes
    }
}

/// The batch a plan is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence per pass (prefill chunk).
    pub chunk: usize,
    /// Longest sequence, prompt plus new tokens.
    pub context: usize,
}

impl ResidencyPlan {
    /// The smallest budget `input` can run in: a draft model, embedding,
    /// head, prefetch + 1 of the largest layers, KV cache and activations.
    pub fn minimum_budget(input: &PlanInput) -> u64 {
        input.draft_bytes
            + input.end_bytes()
            + input.stream_buffer_bytes()
            + input.kv_bytes
            + input.activation_bytes
    }

    /// Plans residency: everything resident when it fits; otherwise the
    /// embedding and head stay, then layers in order while they fit, and the
    /// rest stream through prefetch + 1 buffers. Of the streamed
    /// mixture-of-experts layers, the shared tensors stay while they fit
    /// (read every pass, they are worth more than any cached expert); what
    /// is left holds the cache of routed experts.
    pub fn new(input: &PlanInput) -> Result<Self> {
        if input.draft_bytes + input.all_resident_bytes() <= input.budget {
            return Ok(ResidencyPlan {
                placements: vec![UnitPlacement::Resident; input.units.len()],
                resident_bytes: input.units.iter().map(|u| u.1).sum(),
                stream_buffer_bytes: input.decode_bytes,
                kv_bytes: input.kv_bytes,
                activation_bytes: input.activation_bytes,
                expert_cache_bytes: 0,
                draft_bytes: input.draft_bytes,
                budget: input.budget,
            });
        }
        let minimum = Self::minimum_budget(input);
        let ends = input.end_bytes();
        let buffers = input.stream_buffer_bytes();
        if minimum > input.budget {
            return Err(Error::Budget {
                budget: ByteSize(input.budget),
                minimum: ByteSize(minimum),
                detail: format!(
                    "{}embedding + head {}, {} streamed layer buffers {}{}, KV cache {}, activations {}",
                    match input.draft_bytes {
                        0 => String::new(),
                        bytes => format!("draft model (all resident) {}, ", ByteSize(bytes)),
                    },
                    ByteSize(ends),
                    input.prefetch + 1,
                    ByteSize(buffers),
                    match input.decode_bytes {
                        0 => String::new(),
                        bytes => format!(" (of which {} to decode one)", ByteSize(bytes)),
                    },
                    ByteSize(input.kv_bytes),
                    ByteSize(input.activation_bytes)
                ),
            });
        }
        let mut room = input.budget - minimum;
        let mut resident_bytes = ends;
        let mut streamed_experts = false;
        let mut streaming = false;
        let mut placements: Vec<UnitPlacement> = input
            .units
            .iter()
            .zip(&input.stream_unit_bytes)
            .map(|(&(kind, bytes), &streamed)| {
                if !is_layer(kind) {
                    UnitPlacement::Resident
                } else if !streaming && bytes <= room {
                    room -= bytes;
                    resident_bytes += bytes;
                    UnitPlacement::Resident
                } else {
                    streaming = true;
                    streamed_experts |= streamed < bytes;
                    UnitPlacement::Streamed
                }
            })
            .collect();
        for (placement, shared) in placements.iter_mut().zip(&input.shared_bytes) {
            match shared {
                Some(shared) if *placement == UnitPlacement::Streamed && *shared <= room => {
                    room -= shared;
                    resident_bytes += shared;
                    *placement = UnitPlacement::SharedResident;
                }
                _ => {}
            }
        }
        Ok(ResidencyPlan {
            placements,
            resident_bytes,
            stream_buffer_bytes: buffers,
            kv_bytes: input.kv_bytes,
            activation_bytes: input.activation_bytes,
            expert_cache_bytes: if streamed_experts { room } else { 0 },
            draft_bytes: input.draft_bytes,
            budget: input.budget,
        })
    }

    /// Number of units that read from storage on every pass: whole, or
    /// (with their shared tensors resident) their routed experts.
    pub fn streamed(&self) -> usize {
        self.placements
            .iter()
            .filter(|p| **p != UnitPlacement::Resident)
            .count()
    }

    /// Peak memory the plan predicts.
    pub fn predicted_peak(&self) -> u64 {
        self.draft_bytes
            + self.resident_bytes
            + self.stream_buffer_bytes
            + self.kv_bytes
            + self.activation_bytes
            + self.expert_cache_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(budget: u64, prefetch: usize) -> PlanInput {
        PlanInput {
            units: vec![
                (UnitKind::Embedding, 100),
                (UnitKind::Layer(0), 50),
                (UnitKind::Layer(1), 50),
                (UnitKind::Layer(2), 50),
                (UnitKind::Layer(3), 50),
                (UnitKind::Head, 100),
            ],
            stream_unit_bytes: vec![100, 50, 50, 50, 50, 100],
            shared_bytes: vec![None; 6],
            kv_bytes: 10,
            activation_bytes: 10,
            decode_bytes: 0,
            prefetch,
            draft_bytes: 0,
            budget,
        }
    }

    #[test]
    fn everything_resident_when_it_fits() {
        let plan = ResidencyPlan::new(&input(420, 1)).unwrap();
        assert_eq!(plan.streamed(), 0);
        assert_eq!(plan.predicted_peak(), 420);
    }

    #[test]
    fn decoding_a_compressed_unit_is_planned_once() {
        let mut compressed = input(420, 1);
        let minimum = ResidencyPlan::minimum_budget(&compressed);
        compressed.decode_bytes = 30;
        assert_eq!(ResidencyPlan::minimum_budget(&compressed), minimum + 30);
        // 420 holds every unit read in place, not with 30 more to decode.
        assert_eq!(ResidencyPlan::new(&input(420, 1)).unwrap().streamed(), 0);
        let plan = ResidencyPlan::new(&compressed).unwrap();
        assert!(plan.streamed() > 0);
        assert!(plan.stream_buffer_bytes >= 30 && plan.predicted_peak() <= 420);
    }

    #[test]
    fn streams_the_remainder() {
        // minimum = 200 ends + 2×50 buffers + 20 = 320; 50 more keeps one layer.
        let plan = ResidencyPlan::new(&input(370, 1)).unwrap();
        assert_eq!(plan.placements[1], UnitPlacement::Resident);
        assert_eq!(plan.streamed(), 3);
        assert_eq!(plan.predicted_peak(), 370);
    }

    #[test]
    fn shared_parts_of_streamed_expert_layers_stay_before_the_cache() {
        // Layers of 50 bytes: 10 shared, 40 in experts, 20 streamed per pass.
        let mut moe = input(0, 1);
        moe.stream_unit_bytes = vec![100, 20, 20, 20, 20, 100];
        moe.shared_bytes = vec![None, Some(10), Some(10), Some(10), Some(10), None];
        // minimum = 200 ends + 2×20 buffers + 20 = 260; 25 more keeps two
        // layers' shared parts and leaves 5 for the expert cache.
        moe.budget = 285;
        let plan = ResidencyPlan::new(&moe).unwrap();
        use UnitPlacement::*;
        assert_eq!(
            plan.placements,
            [
                Resident,
                SharedResident,
                SharedResident,
                Streamed,
                Streamed,
                Resident
            ]
        );
        assert_eq!(plan.expert_cache_bytes, 5);
        assert_eq!(plan.predicted_peak(), 285);
    }

    #[test]
    fn below_minimum_names_it_and_prefetch_zero_lowers_it() {
        let err = ResidencyPlan::new(&input(300, 1)).unwrap_err().to_string();
        assert!(err.contains("320 B"), "{err}");
        let plan = ResidencyPlan::new(&input(300, 0)).unwrap();
        assert_eq!(plan.streamed(), 4);
    }

    #[test]
    fn a_draft_model_is_placed_first_and_counted_in_the_minimum() {
        let drafted = |budget| PlanInput {
            draft_bytes: 60,
            ..input(budget, 1)
        };
        // 420 held everything; with the draft's 60 every layer but none of
        // the 50 spare bytes fits: minimum 320 + 60 = 380, 40 left.
        let plan = ResidencyPlan::new(&drafted(420)).unwrap();
        assert_eq!(plan.streamed(), 4);
        assert_eq!(plan.draft_bytes, 60);
        assert_eq!(plan.predicted_peak(), 380);
        assert_eq!(ResidencyPlan::new(&drafted(480)).unwrap().streamed(), 0);
        let err = ResidencyPlan::new(&drafted(370)).unwrap_err().to_string();
        assert!(
            err.contains("380 B") && err.contains("draft model (all resident) 60 B"),
            "{err}"
        );
    }
}
