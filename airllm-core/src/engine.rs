//! The streaming engine: walks the units in order for each forward pass,
//! with a reader thread running `prefetch` units ahead, keeping resident the
//! units the residency plan allows, and recording where the time goes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, StreamId, Tensor, TensorData};

use crate::arch::{Experts, LayerContext};
use crate::backend::StagedTensor;
use crate::experts::{read_experts, ExpertCache, ExpertFetcher, LoadedExperts, ReaderRequest};
use crate::memory::Rss;
use crate::plan::{BatchShape, DeviceFormat, PlanInput};
use crate::{
    check_units, Architecture, ComputeBackend, DeviceUnit, DraftCounts, Error, KvCache, LayerStore,
    PassInfo, ResidencyPlan, Result, RowSpan, RunStats, UnitKind, UnitPlacement,
};

/// How the engine streams and budgets.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Units the reader thread may run ahead of compute (0: read, then compute).
    pub prefetch: usize,
    /// Device memory budget in bytes; `None` asks the backend for its default.
    pub max_memory: Option<u64>,
    /// Host-tier budget in bytes (staging, and units kept in host memory
    /// between passes); `None` asks the backend for its default.
    pub max_host_memory: Option<u64>,
    /// Check every unit's checksum once before first use.
    pub verify: bool,
    /// Keep recently routed experts of streamed mixture-of-experts layers
    /// in the memory the plan leaves over.
    pub expert_cache: bool,
    /// Wait for the device after each unit's upload and compute, so their
    /// times are to completion rather than to submission (benchmarks).
    pub sync_units: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            prefetch: 1,
            max_memory: None,
            max_host_memory: None,
            verify: false,
            expert_cache: true,
            sync_units: false,
        }
    }
}

/// Which positions of a pass get logits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: the head is skipped (prefill chunks before the last).
    Skip,
    /// The last position of each sequence (generation).
    Last,
    /// Every position (scoring, tests).
    All,
    /// Per row, its last this many positions (0 for none): a drafted
    /// row's checked positions.
    Tails(Vec<usize>),
}

/// A unit read and staged for upload.
struct StagedLoad {
    index: usize,
    tensors: Vec<StagedTensor>,
    bytes: u64,
    decompress: Duration,
    read: Duration,
}

/// A unit read, staged and uploaded (by the reader thread, for a streamed
/// unit), with what each step cost.
struct LoadedUnit<B: Backend> {
    index: usize,
    unit: DeviceUnit<B>,
    bytes: u64,
    decompress: Duration,
    read: Duration,
    upload: Duration,
    uploaded_bytes: u64,
}

/// Counts streamed units alive at once (read started, device copy not yet
/// dropped), and the resident set's peaks the reader thread sees.
#[derive(Default)]
struct InFlight {
    alive: AtomicUsize,
    peak: AtomicUsize,
    peak_rss_anon: AtomicU64,
    peak_rss_file: AtomicU64,
    /// Device bytes the reader's stream held after its last upload (read
    /// when units are timed to completion).
    reader_device_bytes: AtomicU64,
}

impl InFlight {
    fn enter(&self) {
        let now = self.alive.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }

    /// Samples the resident set (`/proc`): after each streamed read, when
    /// the most units are alive.
    fn sample_rss(&self) {
        let rss = Rss::resident();
        self.peak_rss_anon.fetch_max(rss.anon, Ordering::SeqCst);
        self.peak_rss_file.fetch_max(rss.file, Ordering::SeqCst);
    }
}

/// Where loading the resident units stands, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadProgress {
    /// Units loaded so far in this [`Engine::prepare`].
    pub units: usize,
    /// Units it loads in all.
    pub total_units: usize,
    /// Stored bytes read so far.
    pub bytes: u64,
    /// Stored bytes it reads in all.
    pub total_bytes: u64,
}

/// Receives [`LoadProgress`] after each resident unit is loaded.
pub type LoadObserver = Box<dyn FnMut(LoadProgress) + Send>;

/// Runs forward passes of one model over a store, an architecture and a backend.
pub struct Engine<B: Backend> {
    store: Arc<dyn LayerStore>,
    arch: Arc<dyn Architecture<B>>,
    backend: Arc<dyn ComputeBackend<B>>,
    options: EngineOptions,
    resident: Vec<Option<DeviceUnit<B>>>,
    /// Units of the host tier, staged once and uploaded every pass.
    kept: Arc<Vec<Option<Vec<StagedTensor>>>>,
    /// The plan the resident units were loaded under.
    plan: Option<ResidencyPlan>,
    stats: RunStats,
    on_load: Option<LoadObserver>,
    experts: ExpertCache<B>,
    /// Per unit, what a streamed read takes: `None` for the whole unit; for
    /// a mixture-of-experts layer its shared tensors (experts come on request).
    streamed_reads: Arc<Vec<Option<Vec<String>>>>,
    /// Per unit, the device bytes of each routed expert (empty when dense).
    expert_bytes: Vec<Vec<u64>>,
    /// The model that drafts for this one, held resident.
    draft: Option<Box<Engine<B>>>,
    /// The stream the reader thread uploads on, the same every pass:
    /// cubecl runtimes keep a stream, with memory pools of its own, per
    /// host thread, so a fresh reader thread per pass would otherwise leave
    /// one more stream's pools holding device memory after each pass.
    reader_stream: StreamId,
}

impl<B: Backend> Engine<B> {
    /// Checks the store against the architecture (and checksums with
    /// `verify`), then returns an engine with nothing loaded yet.
    pub fn new(
        store: Arc<dyn LayerStore>,
        arch: Arc<dyn Architecture<B>>,
        backend: Arc<dyn ComputeBackend<B>>,
        options: EngineOptions,
    ) -> Result<Self> {
        check_units(store.units(), arch.units())?;
        if options.max_host_memory.is_some() && backend.computes_in_host_memory() {
            return Err(Error::Request(format!(
                "device `{}` computes in host memory, so it has no host tier apart from its budget: leave out --max-host-memory and bound it with --max-memory",
                backend.name()
            )));
        }
        if options.verify {
            for index in 0..store.units().len() {
                store.verify_unit(index)?;
            }
        }
        let count = store.units().len();
        let stats = RunStats::new(store.units().iter().map(|u| u.name.clone()));
        let streamed_reads = arch
            .units()
            .iter()
            .map(|spec| {
                (!spec.experts.is_empty()).then(|| {
                    spec.shared_tensors()
                        .into_iter()
                        .map(String::from)
                        .collect()
                })
            })
            .collect();
        let layout = backend.weight_layout();
        let expert_bytes = store
            .units()
            .iter()
            .zip(arch.units())
            .map(|(info, spec)| {
                spec.experts
                    .iter()
                    .map(|names| info.device_bytes_of(names, layout))
                    .collect()
            })
            .collect();
        Ok(Engine {
            store,
            arch,
            backend,
            options,
            resident: (0..count).map(|_| None).collect(),
            kept: Arc::new((0..count).map(|_| None).collect()),
            plan: None,
            stats,
            on_load: None,
            experts: ExpertCache::new(0),
            streamed_reads: Arc::new(streamed_reads),
            expert_bytes,
            draft: None,
            reader_stream: fresh_stream(),
        })
    }

    /// Makes `draft` the model that drafts for this one
    /// ([`DraftKind::Model`](crate::DraftKind::Model)): every unit of it is
    /// held resident, planned before this model's layers, so the budget
    /// must hold the whole draft and this model's minimum working set.
    /// The two must share a tokenizer (the caller checks: an engine sees
    /// only token ids).
    pub fn set_draft(&mut self, draft: Engine<B>) -> Result<()> {
        if draft.draft.is_some() {
            return Err(Error::Request(
                "a draft model cannot have a draft model of its own".into(),
            ));
        }
        self.draft = Some(Box::new(draft));
        self.plan = None;
        Ok(())
    }

    /// The model that drafts for this one, to run its passes.
    pub(crate) fn draft_mut(&mut self) -> Option<&mut Engine<B>> {
        self.draft.as_deref_mut()
    }

    /// Bytes the model takes with every unit resident, for `batch`
    /// sequences of up to `context` tokens read `chunk` tokens per pass:
    /// its weights, KV cache and activations.
    pub fn resident_bytes(&self, batch: usize, chunk: usize, context: usize) -> u64 {
        self.plan_input(batch, chunk, context).all_resident_bytes()
    }

    /// Reports progress while [`Engine::prepare`] loads resident units (a
    /// large model takes a while to load once).
    pub fn on_load(&mut self, observer: LoadObserver) {
        self.on_load = Some(observer);
    }

    /// The model's architecture.
    pub fn arch(&self) -> &dyn Architecture<B> {
        &*self.arch
    }

    /// The compute backend.
    pub fn backend(&self) -> &dyn ComputeBackend<B> {
        &*self.backend
    }

    /// The weight store.
    pub fn store(&self) -> &dyn LayerStore {
        &*self.store
    }

    /// The device memory budget in force.
    pub fn budget(&self) -> u64 {
        self.options
            .max_memory
            .unwrap_or_else(|| self.backend.default_budget())
    }

    /// The host tier's budget in force.
    pub fn host_budget(&self) -> u64 {
        self.options
            .max_host_memory
            .unwrap_or_else(|| self.backend.default_host_budget())
    }

    /// Times each unit's upload and compute to completion (waiting for the
    /// device after each) or to submission ([`EngineOptions::sync_units`]).
    pub fn set_sync_units(&mut self, sync: bool) {
        self.options.sync_units = sync;
    }

    /// Telemetry since creation or the last [`Engine::reset_stats`].
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// Adds drafting's counts to the telemetry (the scheduler reports them).
    pub(crate) fn record_drafts(&mut self, counts: DraftCounts) {
        self.stats.drafts.add(counts);
    }

    /// Adds time spent drafting to the telemetry.
    pub(crate) fn record_draft_time(&mut self, time: Duration) {
        self.stats.draft_time += time;
    }

    /// Clears telemetry (e.g. between prefill and decode in a benchmark).
    pub fn reset_stats(&mut self) {
        self.stats = RunStats::new(self.store.units().iter().map(|u| u.name.clone()));
    }

    /// The plan in force, once [`Engine::prepare`] has run.
    pub fn plan(&self) -> Option<&ResidencyPlan> {
        self.plan.as_ref()
    }

    /// Plans residency for `batch` sequences of up to `context` tokens,
    /// processed `chunk` tokens per pass, without loading anything.
    /// With a draft model, the draft is planned first, all of it resident.
    pub fn plan_for(&self, batch: usize, chunk: usize, context: usize) -> Result<ResidencyPlan> {
        let mut input = self.plan_input(batch, chunk, context);
        if let Some(draft) = &self.draft {
            input.draft_bytes = draft.resident_bytes(batch, chunk, context);
        }
        ResidencyPlan::new(&input)
    }

    fn plan_input(&self, batch: usize, chunk: usize, context: usize) -> PlanInput {
        let input = PlanInput::for_model(
            self.store.units(),
            self.arch.units(),
            self.arch.dims(),
            BatchShape {
                batch,
                chunk,
                context,
            },
            self.options.prefetch,
            self.budget(),
            DeviceFormat {
                layout: self.backend.weight_layout(),
                dtype: self.backend.dtype(),
            },
        );
        PlanInput {
            host_budget: self.host_budget(),
            ..input
        }
    }

    /// Plans for the given batch shape and loads (or evicts) resident units
    /// to match. Cheap when the placements do not change.
    /// A draft model is prepared too, with every unit resident.
    pub fn prepare(&mut self, batch: usize, chunk: usize, context: usize) -> Result<()> {
        let plan = self.plan_for(batch, chunk, context)?;
        if let Some(draft) = self.draft.as_mut() {
            draft.options.max_memory = Some(plan.draft_bytes);
            draft.prepare(batch, chunk, context)?;
        }
        let mut to_load = Vec::new();
        let kept = Arc::make_mut(&mut self.kept);
        for (index, placement) in plan.placements.iter().enumerate() {
            let loaded_as = self.plan.as_ref().map(|old| old.placements[index]);
            let loaded = self.resident[index].is_some() || kept[index].is_some();
            match placement {
                UnitPlacement::Streamed => {
                    self.resident[index] = None;
                    kept[index] = None;
                }
                _ if loaded && loaded_as == Some(*placement) => {}
                _ => {
                    // Dropped first, so a failed load leaves nothing half-kept.
                    self.resident[index] = None;
                    kept[index] = None;
                    to_load.push(index);
                }
            }
        }
        // What was allocated before the engine asked for exact buffers
        // goes back now.
        self.backend.allocate_exactly();
        self.backend.release_unused();
        let units = self.store.units();
        let mut progress = LoadProgress {
            units: 0,
            total_units: to_load.len(),
            bytes: 0,
            total_bytes: to_load.iter().map(|&i| units[i].bytes).sum(),
        };
        for index in to_load {
            let shared = match plan.placements[index] {
                UnitPlacement::SharedResident => shared_names(&self.streamed_reads, index),
                _ => None,
            };
            let staged = load_unit(&*self.store, &*self.backend, index, shared.as_deref())?;
            progress.units += 1;
            progress.bytes += staged.bytes;
            match plan.placements[index] {
                UnitPlacement::Host => Arc::make_mut(&mut self.kept)[index] = Some(staged.tensors),
                _ => {
                    let loaded = upload_staged(&*self.store, &*self.backend, staged, false)?;
                    self.record_load(&loaded);
                    self.resident[index] = Some(loaded.unit);
                }
            }
            if let Some(observer) = self.on_load.as_mut() {
                observer(progress);
            }
        }
        self.experts.resize(match self.options.expert_cache {
            true => plan.expert_cache_bytes,
            false => 0,
        });
        tracing::debug!(
            streamed = plan.streamed(),
            resident_bytes = plan.resident_bytes,
            "residency plan"
        );
        self.plan = Some(plan);
        Ok(())
    }

    /// Raises the peak of device memory to what the compute thread's stream
    /// and the reader's hold now, where the backend can tell.
    fn sample_device_memory(&mut self, in_flight: &InFlight) {
        if let Some(own) = self.backend.memory_in_use() {
            let reader = in_flight.reader_device_bytes.load(Ordering::SeqCst);
            let stats = &mut self.stats;
            stats.peak_device_bytes = stats.peak_device_bytes.max(own + reader);
        }
    }

    /// Adds what loading a unit cost to its telemetry.
    fn record_load(&mut self, loaded: &LoadedUnit<B>) {
        let stats = &mut self.stats.units[loaded.index];
        stats.reads += 1;
        stats.bytes_read += loaded.bytes;
        stats.read += loaded.read;
        stats.decompress += loaded.decompress;
        stats.upload += loaded.upload;
        stats.uploaded_bytes += loaded.uploaded_bytes;
    }

    /// One forward pass: `tokens[r]` are row `r`'s new tokens (rows of any
    /// lengths, at least one each), computed over `kv[r]`, that row's cache,
    /// which the pass extends. Returns logits on the host, one vector per
    /// position `logits` asks for, row after row in row order; when it asks
    /// for none the head is not run (nor read).
    pub fn forward(
        &mut self,
        tokens: &[Vec<u32>],
        kv: &mut [&mut KvCache<B>],
        logits: Logits,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        if tokens.is_empty() || tokens.len() != kv.len() || tokens.iter().any(Vec::is_empty) {
            return Err(Error::Request(format!(
                "a pass takes one or more rows, each at least one token and its cache: {} rows of tokens, {} caches",
                tokens.len(),
                kv.len()
            )));
        }
        let pass = PassInfo {
            rows: tokens
                .iter()
                .zip(kv.iter())
                .map(|(t, cache)| RowSpan {
                    cached: cache.positions(),
                    new: t.len(),
                })
                .collect(),
        };
        let max_positions = self.arch.dims().max_positions;
        if let Some(row) = pass.rows.iter().find(|r| r.cached + r.new > max_positions) {
            return Err(Error::Request(format!(
                "a pass would take a sequence to {} positions, past the model's context of {max_positions}",
                row.cached + row.new
            )));
        }
        let tails: Vec<usize> = match logits {
            Logits::Skip => vec![0; tokens.len()],
            Logits::Last => vec![1; tokens.len()],
            Logits::All => tokens.iter().map(Vec::len).collect(),
            Logits::Tails(tails) => tails,
        };
        if tails.len() != tokens.len() || tails.iter().zip(tokens).any(|(t, r)| *t > r.len()) {
            return Err(Error::Request(format!(
                "logits asked for {tails:?} positions of rows of {:?} tokens",
                tokens.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let tails = tails.iter().any(|&t| t > 0).then_some(tails);
        let output = self.forward_pass(tokens, &pass, kv, tails.as_deref())?;
        for (cache, row) in kv.iter_mut().zip(&pass.rows) {
            cache.commit(row.new);
        }
        output.map(host_rows).transpose()
    }

    /// [`Engine::forward`] with the logits asked as each row's last
    /// `tails[r]` positions (`None`: no head).
    fn forward_pass(
        &mut self,
        tokens: &[Vec<u32>],
        pass: &PassInfo,
        kv: &mut [&mut KvCache<B>],
        tails: Option<&[usize]>,
    ) -> Result<Option<Tensor<B, 3>>> {
        let placements = match &self.plan {
            Some(plan) => plan.placements.clone(),
            None => {
                return Err(Error::Request(
                    "Engine::prepare must run before forward".into(),
                ))
            }
        };
        let wanted =
            |index: usize| tails.is_some() || self.store.units()[index].kind != UnitKind::Head;
        let streamed: Vec<usize> = (0..placements.len())
            .filter(|&i| {
                wanted(i) && matches!(placements[i], UnitPlacement::Streamed | UnitPlacement::Host)
            })
            .collect();
        let prefetch = self.options.prefetch;
        let in_flight = Arc::new(InFlight::default());
        let (unit_tx, unit_rx) = sync_channel::<Result<LoadedUnit<B>>>(prefetch + 1);
        let (expert_tx, expert_rx) = sync_channel::<Result<LoadedExperts>>(1);
        let (request_tx, request_rx) = channel::<ReaderRequest>();
        for _ in 0..=prefetch {
            request_tx
                .send(ReaderRequest::Permit { released: None })
                .expect("the reader's request channel is open");
        }
        let reader = Reader {
            store: self.store.clone(),
            backend: self.backend.clone(),
            shared: self.streamed_reads.clone(),
            kept: self.kept.clone(),
            in_flight: in_flight.clone(),
            sync_units: self.options.sync_units,
        };
        let stream = self.reader_stream;
        self.backend.allocate_exactly();
        let result = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("airllm-reader".into())
                .spawn_scoped(scope, move || {
                    lower_reader_priority();
                    stream.executes(|| {
                        let backend = reader.backend.clone();
                        backend.allocate_exactly();
                        reader.run(streamed, request_rx, unit_tx, expert_tx);
                        backend.release_unused();
                    })
                })
                .map_err(|e| Error::Backend(format!("starting the layer reader thread: {e}")))?;
            let channels = PassChannels {
                units: unit_rx,
                requests: request_tx,
                experts: expert_rx,
            };
            self.run_units(tokens, pass, kv, tails, channels, &in_flight)
        });
        self.stats.passes += 1;
        self.stats.sample_rss();
        let stats = &mut self.stats;
        stats.peak_streamed_units = stats
            .peak_streamed_units
            .max(in_flight.peak.load(Ordering::SeqCst));
        stats.peak_rss_anon = stats
            .peak_rss_anon
            .max(in_flight.peak_rss_anon.load(Ordering::SeqCst));
        stats.peak_rss_file = stats
            .peak_rss_file
            .max(in_flight.peak_rss_file.load(Ordering::SeqCst));
        result
    }

    fn run_units(
        &mut self,
        tokens: &[Vec<u32>],
        pass: &PassInfo,
        kv: &mut [&mut KvCache<B>],
        tails: Option<&[usize]>,
        channels: PassChannels<B>,
        in_flight: &InFlight,
    ) -> Result<Option<Tensor<B, 3>>> {
        let device = self.backend.device().clone();
        let arch = Arc::clone(&self.arch);
        let layers = arch.begin_pass(pass, &device);
        let mut hidden: Option<Tensor<B, 3>> = None;
        let mut output = None;
        let kv_on_host = self
            .plan
            .as_ref()
            .map(|plan| plan.kv_on_host.clone())
            .unwrap_or_default();
        for index in 0..self.resident.len() {
            let kind = self.store.units()[index].kind;
            if kind == UnitKind::Head && tails.is_none() {
                continue;
            }
            let mut streamed = None;
            if self.resident[index].is_none() {
                let waited = Instant::now();
                let loaded = channels.units.recv().map_err(|_| {
                    Error::Backend("the reader thread stopped before the pass ended".into())
                })??;
                let wait = waited.elapsed();
                self.stats.read_wait += wait;
                self.stats.units[index].wait += wait;
                debug_assert_eq!(loaded.index, index);
                self.record_load(&loaded);
                streamed = Some(loaded.unit);
            }
            let unit = streamed
                .as_ref()
                .or(self.resident[index].as_ref())
                .expect("a unit is either resident or streamed");
            let started = Instant::now();
            match kind {
                UnitKind::Embedding => {
                    let packed: Vec<u32> = tokens.iter().flatten().copied().collect();
                    hidden = Some(arch.embed(unit, &packed, &*self.backend)?);
                }
                UnitKind::Layer(layer) => {
                    let input = hidden.take().ok_or_else(missing_embedding)?;
                    let spec = &arch.units()[index];
                    let mut fetcher;
                    let shared_resident = self
                        .plan
                        .as_ref()
                        .is_some_and(|p| p.placements[index] == UnitPlacement::SharedResident);
                    let on_request = streamed.is_some() || shared_resident;
                    let experts = match on_request && !spec.experts.is_empty() {
                        true => {
                            fetcher = ExpertFetcher {
                                index,
                                spec,
                                expert_bytes: &self.expert_bytes[index],
                                requests: &channels.requests,
                                replies: &channels.experts,
                                cache: &mut self.experts,
                                stats: &mut self.stats,
                                backend: &*self.backend,
                            };
                            Experts::OnRequest(&mut fetcher)
                        }
                        false => Experts::InUnit,
                    };
                    let ctx = LayerContext {
                        pass,
                        kv: kv.iter_mut().map(|cache| cache.slot(layer)).collect(),
                        backend: &*self.backend,
                        experts,
                    };
                    hidden = Some(layers.layer(layer, unit, input, ctx)?);
                    if kv_on_host[layer] {
                        for cache in kv.iter_mut() {
                            cache.slot(layer).to_host()?;
                        }
                    }
                }
                UnitKind::Head => {
                    let input = hidden.take().ok_or_else(missing_embedding)?;
                    let tails = tails.expect("the head runs only when logits are asked");
                    let input = tails_of_rows(input, pass, tails, &device);
                    output = Some(arch.head(unit, input, &*self.backend)?);
                }
            }
            if streamed.is_some() || self.options.sync_units {
                // A streamed unit's memory goes back to the reader, whose
                // next upload may reuse it: the kernels reading it must be
                // done first (on a GPU they are queued, not yet run).
                self.backend.sync()?;
            }
            self.stats.units[index].compute += started.elapsed();
            if self.options.sync_units {
                self.sample_device_memory(in_flight);
            }
            // The next unit's tensors may be of other sizes.
            self.backend.release_unused();
            if let Some(unit) = streamed.take() {
                // The reader drops the unit (or, where it has finished and
                // gone, the refused request does).
                let released = Some(Box::new(unit) as Box<dyn Send>);
                let _ = channels.requests.send(ReaderRequest::Permit { released });
            }
        }
        Ok(output)
    }
}

/// The hidden states of each row's last `tails[r]` new tokens, row after
/// row, `[1, positions, hidden]`.
fn tails_of_rows<B: Backend>(
    hidden: Tensor<B, 3>,
    pass: &PassInfo,
    tails: &[usize],
    device: &B::Device,
) -> Tensor<B, 3> {
    let positions: Vec<i64> = pass
        .offsets()
        .zip(tails)
        .flat_map(|((offset, row), &tail)| {
            (offset + row.new - tail..offset + row.new).map(|p| p as i64)
        })
        .collect();
    if positions.len() == pass.tokens() {
        return hidden;
    }
    let count = positions.len();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [count]), device);
    hidden.select(1, index)
}

/// Logits `[1, positions, vocab]` as one host vector per position.
fn host_rows<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<Vec<f32>>> {
    let vocab = logits.dims()[2];
    let values: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))?;
    Ok(values.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
}

fn missing_embedding() -> Error {
    Error::Backend("a pass must start with the embedding unit".into())
}

/// The compute thread's ends of one pass's channels to the reader thread.
struct PassChannels<B: Backend> {
    /// Streamed units, in forward order, uploaded.
    units: Receiver<Result<LoadedUnit<B>>>,
    /// Permits and expert requests.
    requests: Sender<ReaderRequest>,
    /// Answers to expert requests.
    experts: Receiver<Result<LoadedExperts>>,
}

/// The reader thread of one pass.
struct Reader<B: Backend> {
    store: Arc<dyn LayerStore>,
    backend: Arc<dyn ComputeBackend<B>>,
    /// Per unit, the tensors a streamed read takes when it is a
    /// mixture-of-experts layer (its experts come on request).
    shared: Arc<Vec<Option<Vec<String>>>>,
    /// The host tier's units, staged already.
    kept: Arc<Vec<Option<Vec<StagedTensor>>>>,
    in_flight: Arc<InFlight>,
    /// Upload to completion ([`EngineOptions::sync_units`]).
    sync_units: bool,
}

impl<B: Backend> Reader<B> {
    /// Reads and uploads the `streamed` units ahead as permits allow,
    /// serving expert requests first; ends when the compute side hangs up.
    fn run(
        self,
        streamed: Vec<usize>,
        requests: Receiver<ReaderRequest>,
        units: SyncSender<Result<LoadedUnit<B>>>,
        experts: SyncSender<Result<LoadedExperts>>,
    ) {
        let mut permits = 0usize;
        let mut pending = streamed.into_iter().peekable();
        loop {
            let request = if permits > 0 && pending.peek().is_some() {
                match requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match requests.recv() {
                    Ok(request) => Some(request),
                    Err(_) => return,
                }
            };
            match request {
                Some(ReaderRequest::Permit { released }) => {
                    if let Some(unit) = released {
                        drop(unit);
                        self.backend.release_unused();
                        self.in_flight.leave();
                    }
                    permits += 1;
                }
                Some(ReaderRequest::Experts {
                    index,
                    experts: names,
                }) => {
                    let loaded = read_experts(&*self.store, &*self.backend, index, &names);
                    if experts.send(loaded).is_err() {
                        return;
                    }
                }
                None => {
                    let index = pending.next().expect("a unit is pending");
                    permits -= 1;
                    self.in_flight.enter();
                    let loaded = self.load(index);
                    self.in_flight.sample_rss();
                    if self.sync_units {
                        let bytes = self.backend.memory_in_use().unwrap_or(0);
                        self.in_flight
                            .reader_device_bytes
                            .store(bytes, Ordering::SeqCst);
                    }
                    if units.send(loaded).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl<B: Backend> Reader<B> {
    /// Unit `index` on the device: the host tier's staging copied, or read
    /// from the store and staged; then uploaded from this thread, while
    /// the compute thread runs the units before it.
    fn load(&self, index: usize) -> Result<LoadedUnit<B>> {
        let staged = match &self.kept[index] {
            Some(tensors) => {
                let started = Instant::now();
                StagedLoad {
                    index,
                    tensors: tensors.clone(),
                    bytes: 0,
                    decompress: Duration::ZERO,
                    read: started.elapsed(),
                }
            }
            None => {
                let only = shared_names(&self.shared, index);
                load_unit(&*self.store, &*self.backend, index, only.as_deref())?
            }
        };
        upload_staged(&*self.store, &*self.backend, staged, self.sync_units)
    }
}

/// A stream id no thread has used yet (cubecl hands them out per thread,
/// on a thread's first use).
fn fresh_stream() -> StreamId {
    std::thread::spawn(StreamId::current)
        .join()
        .unwrap_or_else(|_| StreamId::current())
}

/// The reader thread's nice value (Linux; 0 is the compute threads').
///
/// A cached layer is read in in tens of microseconds, and the compute
/// threads keep every core busy (an idle helper spins before it yields). At
/// equal priority the woken reader preempted a compute thread for every
/// layer; at nice 10 it waits for a helper to yield its core or for a time
/// slice to end; at nice 19 it fell behind (docs/kernel.md has the
/// figures).
const READER_NICE: i32 = 10;

/// Gives the calling thread [`READER_NICE`]; a hint, left as it is where
/// the system refuses.
fn lower_reader_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: on Linux, `setpriority` on a thread id changes that thread
    // alone; the call has no memory effects.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, thread, READER_NICE);
    }
}

/// The shared tensors of unit `index` when it is a mixture-of-experts layer.
fn shared_names(reads: &[Option<Vec<String>>], index: usize) -> Option<Vec<&str>> {
    reads[index]
        .as_ref()
        .map(|names| names.iter().map(String::as_str).collect())
}

/// Reads and decodes one unit, or only the tensors named in `only` (on the
/// reader thread, or once for residents).
fn load_unit<B: Backend>(
    store: &dyn LayerStore,
    backend: &dyn ComputeBackend<B>,
    index: usize,
    only: Option<&[&str]>,
) -> Result<StagedLoad> {
    let started = Instant::now();
    let staged = read_staged(store, backend, index, only)?;
    Ok(StagedLoad {
        index,
        tensors: staged.tensors,
        bytes: staged.stored_bytes,
        decompress: staged.decompress,
        read: started.elapsed(),
    })
}

/// Uploads a staged unit through `backend` on the calling thread, waiting
/// for the device to finish the copies when `sync`.
fn upload_staged<B: Backend>(
    store: &dyn LayerStore,
    backend: &dyn ComputeBackend<B>,
    staged: StagedLoad,
    sync: bool,
) -> Result<LoadedUnit<B>> {
    let started = Instant::now();
    let uploaded_bytes = staged.tensors.iter().map(StagedTensor::upload_bytes).sum();
    let name = &store.units()[staged.index].name;
    let unit = DeviceUnit::upload(name, staged.tensors, backend)?;
    if sync {
        backend.sync()?;
    }
    Ok(LoadedUnit {
        index: staged.index,
        unit,
        bytes: staged.bytes,
        decompress: staged.decompress,
        read: staged.read,
        upload: started.elapsed(),
        uploaded_bytes,
    })
}

/// A unit's tensors staged for upload, with what reading them cost.
pub(crate) struct StagedUnit {
    /// The staged tensors.
    pub tensors: Vec<StagedTensor>,
    /// Bytes read from storage (compressed ones counted as stored).
    pub stored_bytes: u64,
    /// Time the store spent decompressing.
    pub decompress: Duration,
}

/// Reads unit `index` (or its tensors named in `only`) and stages each
/// tensor for upload; what stays on the host ([`UnitKind::stays_on_host`])
/// is staged as stored.
pub(crate) fn read_staged<B: Backend>(
    store: &dyn LayerStore,
    backend: &dyn ComputeBackend<B>,
    index: usize,
    only: Option<&[&str]>,
) -> Result<StagedUnit> {
    let host = store.read_unit(index, only)?;
    let kind = store.units()[index].kind;
    let tensors = host
        .tensors
        .iter()
        .map(|t| match kind.stays_on_host(t.shape.len()) {
            true => Ok(StagedTensor::Host(t.clone())),
            false => backend.stage(t),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StagedUnit {
        tensors,
        stored_bytes: host.stored_bytes,
        decompress: host.decompress,
    })
}
