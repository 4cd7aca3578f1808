//! The residency plan: from a memory budget, decide which units stay on the
//! device across passes and which are streamed from the store every pass,
//! and which layers' KV cache stays on the device and which waits in host
//! memory between passes.

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
    /// KV-cache bytes for the whole batch at its longest, every layer's
    /// alike.
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
    /// KV-cache bytes on the device between passes.
    pub kv_bytes: u64,
    /// Per decoder layer, whether its KV cache waits in host memory
    /// between passes (uploaded with the layer, its room counted in the
    /// stream window) rather than staying on the device.
    pub kv_on_host: Vec<bool>,
    /// Host bytes of the KV cache kept there.
    pub host_kv_bytes: u64,
    /// Activation bytes.
    pub activation_bytes: u64,
    /// Bytes left for the cache of recently routed experts (0 when no
    /// mixture-of-experts layer streams).
    pub expert_cache_bytes: u64,
    /// Bytes of the draft model, all of it resident.
    pub draft_bytes: u64,
    /// The device budget planned against.
    pub budget: u64,
    /// Host bytes of the units kept in the host tier (besides its KV cache).
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
/// layers, and the head or not; and how many of the last layers keep
/// their KV cache in host memory (`kv_on_host`).
#[derive(Clone, Copy)]
struct DeviceSet {
    layers: usize,
    head: bool,
    kv_on_host: usize,
}

impl DeviceSet {
    /// Everything streamed, `kv_on_host` layers' KV cache in host memory.
    fn all_streamed(kv_on_host: usize) -> Self {
        DeviceSet {
            layers: 0,
            head: false,
            kv_on_host,
        }
    }
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

    /// KV-cache bytes of one decoder layer.
    fn kv_layer_bytes(&self) -> u64 {
        self.kv_bytes / self.layer_indices().len().max(1) as u64
    }

    /// Whether unit `index` is one of the last `kv_on_host` layers, whose
    /// KV cache waits in host memory.
    fn keeps_kv_on_host(&self, index: usize, kv_on_host: usize) -> bool {
        let layers = self.layer_indices();
        layers[layers.len() - kv_on_host.min(layers.len())..].contains(&index)
    }

    /// Buffers for the largest run of prefetch + 1 consecutive units of
    /// `streamed` (indices in forward order), each with room for its KV
    /// cache where that waits in host memory (the last `kv_on_host`
    /// layers), and for decoding one.
    fn stream_window_bytes(&self, streamed: &[usize], kv_on_host: usize) -> u64 {
        let sizes: Vec<u64> = streamed
            .iter()
            .map(|&i| {
                let kv = match self.keeps_kv_on_host(i, kv_on_host) {
                    true => self.kv_layer_bytes(),
                    false => 0,
                };
                self.stream_unit_bytes[i] + kv
            })
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
        self.stream_window_bytes(&self.streamed_under(choice), choice.kv_on_host)
    }

    /// KV-cache bytes on the device between passes under `choice`.
    fn device_kv_under(&self, choice: DeviceSet) -> u64 {
        self.kv_bytes - self.host_kv_under(choice)
    }

    /// KV-cache bytes in host memory under `choice`.
    fn host_kv_under(&self, choice: DeviceSet) -> u64 {
        let layers = self.layer_indices().len();
        match choice.kv_on_host.min(layers) {
            0 => 0,
            spilled if spilled == layers => self.kv_bytes,
            spilled => spilled as u64 * self.kv_layer_bytes(),
        }
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
            + self.device_kv_under(choice)
            + self.activation_bytes
    }

    /// How many of the last layers must keep their KV cache in host memory
    /// for the minimum working set to fit the device budget: none while it
    /// fits with the whole cache on the device; one more layer at a time
    /// past that where there is a host tier. Errors name both budgets.
    fn layers_with_kv_on_host(&self) -> Result<usize> {
        let minimum = |kv_on_host| self.device_bytes_under(DeviceSet::all_streamed(kv_on_host));
        if minimum(0) <= self.budget {
            return Ok(0);
        }
        let layers = self.layer_indices().len();
        let spillable = match self.host_budget {
            0 => 0,
            _ => layers,
        };
        let Some(spilled) = (1..=spillable).find(|&n| minimum(n) <= self.budget) else {
            return Err(Error::Budget {
                budget: ByteSize(self.budget),
                minimum: ByteSize(minimum(spillable)),
                detail: budget_detail(self, spillable),
            });
        };
        let choice = DeviceSet::all_streamed(spilled);
        let (host_kv, staging) = (self.host_kv_under(choice), self.window_under(choice));
        if host_kv + staging > self.host_budget {
            return Err(Error::HostBudget {
                budget: ByteSize(self.host_budget),
                needed: ByteSize(host_kv + staging),
                detail: format!(
                    "the KV cache of {spilled} of {layers} layers {} that the device budget of {} leaves out, and staging for the stream window {}",
                    ByteSize(host_kv),
                    ByteSize(self.budget),
                    ByteSize(staging)
                ),
            });
        }
        Ok(spilled)
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
    /// With the whole KV cache on the device.
    pub fn minimum_budget(input: &PlanInput) -> u64 {
        input.device_bytes_under(DeviceSet::all_streamed(0))
    }

    /// The smallest budget `input` can run in with a host tier: the
    /// minimum with every layer's KV cache in host memory between passes.
    pub fn minimum_budget_with_kv_on_host(input: &PlanInput) -> u64 {
        input.device_bytes_under(DeviceSet::all_streamed(input.layer_indices().len()))
    }

    /// The smallest budget that keeps the head on the device (below it,
    /// the head streams like a layer).
    pub fn head_resident_budget(input: &PlanInput) -> u64 {
        input.device_bytes_under(DeviceSet {
            head: true,
            ..DeviceSet::all_streamed(0)
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
    ///
    /// Where even that minimum does not fit with the whole KV cache on the
    /// device, the last layers keep theirs in host memory, as few as make
    /// it fit: those layers stream, and their cache is uploaded with them
    /// (the stream window has room for it). The host tier holds that cache
    /// before any unit; an error says which budget to raise.
    pub fn new(input: &PlanInput) -> Result<Self> {
        if input.draft_bytes + input.all_resident_bytes() <= input.budget {
            return Ok(ResidencyPlan {
                placements: vec![UnitPlacement::Resident; input.units.len()],
                resident_bytes: input.units.iter().map(|u| u.1).sum(),
                stream_buffer_bytes: input.decode_bytes,
                kv_bytes: input.kv_bytes,
                kv_on_host: vec![false; input.layer_indices().len()],
                host_kv_bytes: 0,
                activation_bytes: input.activation_bytes,
                expert_cache_bytes: 0,
                draft_bytes: input.draft_bytes,
                budget: input.budget,
                host_bytes: 0,
                host_budget: input.host_budget,
            });
        }
        let kv_on_host = input.layers_with_kv_on_host()?;
        let fits = |choice: DeviceSet| input.device_bytes_under(choice) <= input.budget;
        let mut choice = DeviceSet {
            head: input.head_index().is_some(),
            ..DeviceSet::all_streamed(kv_on_host)
        };
        choice.head &= fits(choice);
        let layers = input.layer_indices();
        while choice.layers < layers.len() - kv_on_host
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
        let stream_buffer_bytes = input.window_under(choice);
        let host_kv_bytes = input.host_kv_under(choice);
        let mut host_room = input
            .host_budget
            .saturating_sub(stream_buffer_bytes + host_kv_bytes);
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
            kv_bytes: input.device_kv_under(choice),
            kv_on_host: (0..layers.len())
                .map(|layer| layer >= layers.len() - kv_on_host)
                .collect(),
            host_kv_bytes,
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

/// What the minimum working set of `input` is made of, with the last
/// `kv_on_host` layers' KV cache in host memory, for the budget error.
fn budget_detail(input: &PlanInput, kv_on_host: usize) -> String {
    let choice = DeviceSet::all_streamed(kv_on_host);
    let streamed = input.streamed_under(choice);
    let fixed = input.fixed_unit_bytes();
    format!(
        "{}{}stream window of {} consecutive units {}{}, KV cache {}{}, activations {}",
        match input.draft_bytes {
            0 => String::new(),
            bytes => format!("draft model (all resident) {}, ", ByteSize(bytes)),
        },
        match fixed {
            0 => String::new(),
            bytes => format!("embedding {}, ", ByteSize(bytes)),
        },
        (input.prefetch + 1).min(streamed.len()),
        ByteSize(input.window_under(choice)),
        match input.decode_bytes {
            0 => String::new(),
            bytes => format!(" (of which {} to decode one)", ByteSize(bytes)),
        },
        ByteSize(input.device_kv_under(choice)),
        match input.host_kv_under(choice) {
            0 => String::new(),
            bytes => format!(
                " on the device and {} in host memory (the last {kv_on_host} layers', each uploaded with its layer)",
                ByteSize(bytes)
            ),
        },
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
        assert_eq!(uneven.stream_window_bytes(&[1, 2, 3, 4], 0), 90);
        uneven.prefetch = 2;
        assert_eq!(uneven.stream_window_bytes(&[1, 2, 3, 4], 0), 170);
        assert_eq!(uneven.stream_window_bytes(&[4, 5], 0), 180);
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
    fn the_last_layers_keep_their_kv_cache_on_the_host_when_the_device_cannot() {
        // A KV cache of 10 per layer: with all of it on the device the
        // minimum is 100 embedding + 150 window + 40 + 10 = 300.
        let spilling = |budget, host_budget| PlanInput {
            kv_bytes: 40,
            host_budget,
            ..input(budget, 1)
        };
        assert_eq!(ResidencyPlan::minimum_budget(&spilling(0, 0)), 300);
        // 280: each layer spilled moves 10 off the device, but brings 10
        // into the window where it is one of the largest run (layer 3 and
        // the head): three layers' caches go to the host.
        let plan = ResidencyPlan::new(&spilling(280, 1000)).unwrap();
        assert_eq!(plan.kv_on_host, [false, true, true, true]);
        assert_eq!((plan.kv_bytes, plan.host_kv_bytes), (10, 30));
        assert_eq!(plan.stream_buffer_bytes, 160);
        assert_eq!(plan.predicted_peak(), 280);
        // Those layers stream; the host tier holds their cache first, then
        // every streamed unit beside the window's staging.
        assert_eq!(plan.placements[1..], [Host; 5]);
        assert_eq!(plan.host_bytes, 300);
        // The cache fits nowhere else: the host budget must hold it with
        // the window's staging.
        let err = ResidencyPlan::new(&spilling(280, 180)).unwrap_err();
        assert!(matches!(err, Error::HostBudget { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("190 B") && err.contains("KV cache of 3 of 4 layers 30 B"),
            "{err}"
        );
        // Without a host tier nothing spills: the device must hold it all.
        let err = ResidencyPlan::new(&spilling(280, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("minimum working set of 300 B"), "{err}");
        // With every layer's cache on the host the minimum is 270.
        assert_eq!(
            ResidencyPlan::minimum_budget_with_kv_on_host(&spilling(0, 0)),
            270
        );
        let err = ResidencyPlan::new(&spilling(260, 1000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("minimum working set of 270 B")
                && err.contains("KV cache 0 B on the device and 40 B in host memory"),
            "{err}"
        );
        // A cache that fits the device stays there.
        let plan = ResidencyPlan::new(&spilling(300, 1000)).unwrap();
        assert_eq!((plan.kv_bytes, plan.host_kv_bytes), (40, 0));
        assert!(plan.kv_on_host.iter().all(|on_host| !on_host));
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
