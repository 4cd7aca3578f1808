//! The residency plan: from a memory budget, decide which units stay on the
//! device across passes and which are streamed from the store every pass.

use crate::{
    ByteSize, ComputeDType, Error, ModelDims, Result, UnitInfo, UnitKind, UnitSpec, WeightLayout,
};

/// Where a unit lives between passes: on the device, in host memory, or
/// on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitPlacement {
    /// Loaded once and kept on the device.
    Resident,
    /// A mixture-of-experts layer whose shared tensors (attention, norms,
    /// router) are kept on the device, its routed experts read on request
    /// every pass.
    SharedResident,
    /// Kept in host memory in its upload encoding (the host tier) and
    /// uploaded on every pass that needs it.
    Host,
    /// Read from the store on every pass that needs it.
    Streamed,
}

/// What the plan is computed from.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Each unit's role and device bytes, in forward order (the embedding
    /// table counts nothing: it stays on the host).
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
    /// Activation bytes of the largest pass, with the room to expand one
    /// matrix where the layout expands them before use
    /// ([`WeightLayout::expansion_bytes`]).
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
    /// The device's memory budget.
    pub budget: u64,
    /// The host tier's budget: staging for the stream window, then units
    /// kept in host memory (0: no host tier).
    pub host_budget: u64,
}

/// The outcome: a placement per unit and the memory it predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidencyPlan {
    /// Placement of each unit, in forward order.
    pub placements: Vec<UnitPlacement>,
    /// Device bytes of the resident units.
    pub resident_bytes: u64,
    /// Device bytes of the buffers for units being uploaded: the largest
    /// run of prefetch + 1 consecutive units that are uploaded every pass,
    /// and the compressed frames and scratch of the one being decoded.
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
    /// The device budget planned against.
    pub budget: u64,
    /// Host bytes of the units kept in the host tier.
    pub host_bytes: u64,
    /// The host tier's budget planned against.
    pub host_budget: u64,
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

/// How a device holds what the plan counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFormat {
    /// How the weights are held.
    pub layout: WeightLayout,
    /// The dtype of the KV cache and activations.
    pub dtype: ComputeDType,
}

impl PlanInput {
    /// The input for a store's units and a model's sizes, for `batch`
    /// sequences of up to `context` tokens processed `chunk` tokens per pass.
    /// Units are counted at their size on the device as `format` holds them.
    pub fn for_model(
        units: &[UnitInfo],
        specs: &[UnitSpec],
        dims: &ModelDims,
        shape: BatchShape,
        prefetch: usize,
        budget: u64,
        format: DeviceFormat,
    ) -> Self {
        let DeviceFormat { layout, dtype } = format;
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
            kv_bytes: dims.kv_bytes_per_token(dtype) * (shape.batch * shape.context) as u64,
            activation_bytes: dims.activation_bytes(
                shape.batch * shape.chunk,
                shape.context,
                dtype,
            ) + layout.expansion_bytes(units, dtype),
            decode_bytes: units.iter().map(|u| u.decode_bytes).max().unwrap_or(0),
            prefetch,
            draft_bytes: 0,
            budget,
            host_budget: 0,
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

/// Which units stay on the device: the leading `layers` of the decoder
/// layers, and the head or not.
#[derive(Clone, Copy)]
struct DeviceSet {
    layers: usize,
    head: bool,
}

impl PlanInput {
    /// Indices of the decoder layers, in order.
    fn layer_indices(&self) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&i| is_layer(self.units[i].0))
            .collect()
    }

    /// Index of the head unit, where the model has one.
    fn head_index(&self) -> Option<usize> {
        self.units.iter().position(|u| u.0 == UnitKind::Head)
    }

    /// Bytes of the units that are always resident: all but the layers
    /// and the head (the embedding's vectors; its table stays on the host).
    fn fixed_unit_bytes(&self) -> u64 {
        self.units
            .iter()
            .filter(|u| !is_layer(u.0) && u.0 != UnitKind::Head)
            .map(|u| u.1)
            .sum()
    }

    /// Buffers for the largest run of prefetch + 1 consecutive units of
    /// `streamed` (indices in forward order), and for decoding one.
    fn stream_window_bytes(&self, streamed: &[usize]) -> u64 {
        let sizes: Vec<u64> = streamed
            .iter()
            .map(|&i| self.stream_unit_bytes[i])
            .collect();
        let run = (self.prefetch + 1).min(sizes.len()).max(1);
        let largest = sizes
            .windows(run)
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap_or(0);
        largest + self.decode_bytes
    }

    /// The units `choice` leaves to stream, in forward order.
    fn streamed_under(&self, choice: DeviceSet) -> Vec<usize> {
        let mut streamed: Vec<usize> = self.layer_indices().split_off(choice.layers);
        streamed.extend(self.head_index().filter(|_| !choice.head));
        streamed
    }

    /// Device bytes of the stream window under `choice`.
    fn window_under(&self, choice: DeviceSet) -> u64 {
        self.stream_window_bytes(&self.streamed_under(choice))
    }

    /// Device bytes of the units `choice` keeps resident.
    fn resident_under(&self, choice: DeviceSet) -> u64 {
        let layers: u64 = self.layer_indices()[..choice.layers]
            .iter()
            .map(|&i| self.units[i].1)
            .sum();
        let head = match (choice.head, self.head_index()) {
            (true, Some(i)) => self.units[i].1,
            _ => 0,
        };
        self.fixed_unit_bytes() + layers + head
    }

    /// Device bytes of everything `choice` needs: the draft, resident
    /// units, stream window, KV cache and activations.
    fn device_bytes_under(&self, choice: DeviceSet) -> u64 {
        self.draft_bytes
            + self.resident_under(choice)
            + self.window_under(choice)
            + self.kv_bytes
            + self.activation_bytes
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
    /// The smallest budget `input` can run in: a draft model, the
    /// embedding's vectors, the stream window with every layer and the head
    /// streamed, KV cache and activations.
    pub fn minimum_budget(input: &PlanInput) -> u64 {
        input.device_bytes_under(DeviceSet {
            layers: 0,
            head: false,
        })
    }

    /// The smallest budget that keeps the head on the device (below it,
    /// the head streams like a layer).
    pub fn head_resident_budget(input: &PlanInput) -> u64 {
        input.device_bytes_under(DeviceSet {
            layers: 0,
            head: true,
        })
    }

    /// Plans residency: everything resident when it fits; otherwise the
    /// head stays if it fits beside the layers streaming, then layers in
    /// order while they fit, and the rest stream through a window of
    /// prefetch + 1 units. Of the streamed mixture-of-experts layers, the
    /// shared tensors stay while they fit (read every pass, they are worth
    /// more than any cached expert); what is left holds the cache of routed
    /// experts. Streamed dense units then go to the host tier, in order,
    /// while it holds them beside the staging of the stream window.
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
                host_bytes: 0,
                host_budget: input.host_budget,
            });
        }
        let minimum = Self::minimum_budget(input);
        if minimum > input.budget {
            return Err(Error::Budget {
                budget: ByteSize(input.budget),
                minimum: ByteSize(minimum),
                detail: budget_detail(input),
            });
        }
        let fits = |choice: DeviceSet| input.device_bytes_under(choice) <= input.budget;
        let mut choice = DeviceSet {
            layers: 0,
            head: input.head_index().is_some(),
        };
        choice.head &= fits(choice);
        let layers = input.layer_indices();
        while choice.layers < layers.len()
            && fits(DeviceSet {
                layers: choice.layers + 1,
                ..choice
            })
        {
            choice.layers += 1;
        }
        let streamed = input.streamed_under(choice);
        let mut room = input.budget - input.device_bytes_under(choice);
        let mut resident_bytes = input.resident_under(choice);
        let mut placements = vec![UnitPlacement::Resident; input.units.len()];
        let mut streamed_experts = false;
        for &index in &streamed {
            placements[index] = match input.shared_bytes[index] {
                Some(shared) if shared <= room => {
                    room -= shared;
                    resident_bytes += shared;
                    UnitPlacement::SharedResident
                }
                _ => UnitPlacement::Streamed,
            };
            streamed_experts |= input.stream_unit_bytes[index] < input.units[index].1;
        }
        let stream_buffer_bytes = input.stream_window_bytes(&streamed);
        let mut host_room = input.host_budget.saturating_sub(stream_buffer_bytes);
        let mut host_bytes = 0;
        for &index in &streamed {
            let bytes = input.units[index].1;
            if input.shared_bytes[index].is_none() && bytes <= host_room {
                host_room -= bytes;
                host_bytes += bytes;
                placements[index] = UnitPlacement::Host;
            }
        }
        Ok(ResidencyPlan {
            placements,
            resident_bytes,
            stream_buffer_bytes,
            kv_bytes: input.kv_bytes,
            activation_bytes: input.activation_bytes,
            expert_cache_bytes: if streamed_experts { room } else { 0 },
            draft_bytes: input.draft_bytes,
            budget: input.budget,
            host_bytes,
            host_budget: input.host_budget,
        })
    }

    /// Number of units uploaded on every pass that needs them: read from
    /// storage (whole, or their routed experts) or kept in the host tier.
    pub fn streamed(&self) -> usize {
        self.placements
            .iter()
            .filter(|p| **p != UnitPlacement::Resident)
            .count()
    }

    /// Number of units kept in the host tier.
    pub fn on_host(&self) -> usize {
        self.placements
            .iter()
            .filter(|p| **p == UnitPlacement::Host)
            .count()
    }

    /// Peak device memory the plan predicts.
    pub fn predicted_peak(&self) -> u64 {
        self.draft_bytes
            + self.resident_bytes
            + self.stream_buffer_bytes
            + self.kv_bytes
            + self.activation_bytes
            + self.expert_cache_bytes
    }
}

/// What the minimum working set of `input` is made of, for the budget error.
fn budget_detail(input: &PlanInput) -> String {
    let streamed = input.streamed_under(DeviceSet {
        layers: 0,
        head: false,
    });
    let fixed = input.fixed_unit_bytes();
    format!(
        "{}{}stream window of {} consecutive units {}{}, KV cache {}, activations {}",
        match input.draft_bytes {
            0 => String::new(),
            bytes => format!("draft model (all resident) {}, ", ByteSize(bytes)),
        },
        match fixed {
            0 => String::new(),
            bytes => format!("embedding {}, ", ByteSize(bytes)),
        },
        (input.prefetch + 1).min(streamed.len()),
        ByteSize(input.stream_window_bytes(&streamed)),
        match input.decode_bytes {
            0 => String::new(),
            bytes => format!(" (of which {} to decode one)", ByteSize(bytes)),
        },
        ByteSize(input.kv_bytes),
        ByteSize(input.activation_bytes)
    )
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
            host_budget: 0,
        }
    }

    use UnitPlacement::*;

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
        // The head beside two streamed layers: 100 embedding + 100 head +
        // 2×50 window + 20 = 320; 50 more keeps one layer.
        assert_eq!(ResidencyPlan::head_resident_budget(&input(0, 1)), 320);
        let plan = ResidencyPlan::new(&input(370, 1)).unwrap();
        assert_eq!(
            plan.placements,
            [Resident, Resident, Streamed, Streamed, Streamed, Resident]
        );
        assert_eq!(plan.predicted_peak(), 370);
    }

    #[test]
    fn the_head_streams_when_it_does_not_fit_beside_the_layers() {
        // Everything streamed: 100 embedding + the largest two neighbours
        // (layer 3 and the head, 150) + 20 = 270; the head needs 320.
        assert_eq!(ResidencyPlan::minimum_budget(&input(0, 1)), 270);
        let plan = ResidencyPlan::new(&input(300, 1)).unwrap();
        assert_eq!(plan.placements[1..], [Streamed; 5]);
        assert_eq!(plan.stream_buffer_bytes, 150);
        assert_eq!(plan.predicted_peak(), 270);
        // With no prefetch the window is one unit: the head's 100.
        let plan = ResidencyPlan::new(&input(220, 0)).unwrap();
        assert_eq!(plan.streamed(), 5);
        assert_eq!(plan.predicted_peak(), 220);
    }

    #[test]
    fn the_stream_window_is_the_largest_run_of_neighbours() {
        // Layers of 10, 80, 10, 80: two neighbours never hold two 80s.
        let mut uneven = input(0, 1);
        for (i, bytes) in [10, 80, 10, 80].into_iter().enumerate() {
            uneven.units[i + 1].1 = bytes;
            uneven.stream_unit_bytes[i + 1] = bytes;
        }
        assert_eq!(uneven.stream_window_bytes(&[1, 2, 3, 4]), 90);
        uneven.prefetch = 2;
        assert_eq!(uneven.stream_window_bytes(&[1, 2, 3, 4]), 170);
        assert_eq!(uneven.stream_window_bytes(&[4, 5]), 180);
        uneven.prefetch = 1;
        // Head resident (100) beside the layers' window of 90.
        uneven.budget = 100 + 100 + 90 + 20;
        let plan = ResidencyPlan::new(&uneven).unwrap();
        assert_eq!(plan.placements[5], Resident);
        assert_eq!(plan.stream_buffer_bytes, 90);
    }

    #[test]
    fn streamed_units_go_to_the_host_tier_beside_its_staging() {
        // All stream (window 150); 250 of host memory stages the window and
        // keeps two layers of 50.
        let tiered = PlanInput {
            host_budget: 250,
            ..input(300, 1)
        };
        let plan = ResidencyPlan::new(&tiered).unwrap();
        assert_eq!(
            plan.placements,
            [Resident, Host, Host, Streamed, Streamed, Streamed]
        );
        assert_eq!(
            (plan.host_bytes, plan.on_host(), plan.streamed()),
            (100, 2, 5)
        );
        // The device's figures do not change with the host tier.
        assert_eq!(plan.predicted_peak(), 270);
        // Less host memory than the window stages keeps nothing.
        let plan = ResidencyPlan::new(&PlanInput {
            host_budget: 140,
            ..tiered
        })
        .unwrap();
        assert_eq!(plan.on_host(), 0);
    }

    #[test]
    fn shared_parts_of_streamed_expert_layers_stay_before_the_cache() {
        // Layers of 50 bytes: 10 shared, 40 in experts, 20 streamed per pass.
        let mut moe = input(0, 1);
        moe.stream_unit_bytes = vec![100, 20, 20, 20, 20, 100];
        moe.shared_bytes = vec![None, Some(10), Some(10), Some(10), Some(10), None];
        // The head beside the layers: 200 + 2×20 window + 20 = 260; 25 more
        // keeps two layers' shared parts and leaves 5 for the expert cache.
        moe.budget = 285;
        // Expert layers stay out of the host tier (their experts are read on
        // request).
        moe.host_budget = 1000;
        let plan = ResidencyPlan::new(&moe).unwrap();
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
        let err = ResidencyPlan::new(&input(260, 1)).unwrap_err().to_string();
        assert!(
            err.contains("270 B") && err.contains("stream window of 2 consecutive units 150 B"),
            "{err}"
        );
        let plan = ResidencyPlan::new(&input(260, 0)).unwrap();
        assert_eq!(plan.streamed(), 5);
    }

    #[test]
    fn a_draft_model_is_placed_first_and_counted_in_the_minimum() {
        let drafted = |budget| PlanInput {
            draft_bytes: 60,
            ..input(budget, 1)
        };
        // 420 held everything; with the draft's 60 the head and no layer
        // fit: 60 + 320 = 380, 40 left.
        let plan = ResidencyPlan::new(&drafted(420)).unwrap();
        assert_eq!(plan.streamed(), 4);
        assert_eq!(plan.draft_bytes, 60);
        assert_eq!(plan.predicted_peak(), 380);
        assert_eq!(ResidencyPlan::new(&drafted(480)).unwrap().streamed(), 0);
        let err = ResidencyPlan::new(&drafted(320)).unwrap_err().to_string();
        assert!(
            err.contains("330 B") && err.contains("draft model (all resident) 60 B"),
            "{err}"
        );
    }
}
