//! Routed experts of streamed mixture-of-experts layers: the compute thread
//! asks the reader thread for the experts a pass routes to, and keeps the
//! recently routed ones in a cache sized by what the residency plan leaves.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

use crate::arch::ExpertLoader;
use crate::engine::{read_staged, StagedUnit};
use crate::{ComputeBackend, DeviceUnit, Error, LayerStore, Result, RunStats, UnitSpec};

/// What the compute thread asks of the reader thread.
pub(crate) enum ReaderRequest {
    /// One more unit may be read ahead; `released` is the streamed unit
    /// that made room, for the reader to drop (unmapping its pages off the
    /// compute thread), if any.
    Permit { released: Option<Box<dyn Send>> },
    /// Read these experts of unit `index` now (tensor names per expert).
    Experts {
        index: usize,
        experts: Vec<Vec<String>>,
    },
}

/// Experts read and staged by the reader thread, in the order asked.
pub(crate) struct LoadedExperts {
    /// Per expert: its staged tensors and what reading them cost.
    experts: Vec<StagedUnit>,
    /// Time spent reading.
    read: Duration,
}

/// Reads and stages the tensors of each expert in `experts` from unit `index`.
pub(crate) fn read_experts<B: Backend>(
    store: &dyn LayerStore,
    backend: &dyn ComputeBackend<B>,
    index: usize,
    experts: &[Vec<String>],
) -> Result<LoadedExperts> {
    let started = Instant::now();
    let experts = experts
        .iter()
        .map(|names| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            read_staged(store, backend, index, Some(&names))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LoadedExperts {
        experts,
        read: started.elapsed(),
    })
}

struct CachedExpert<B: Backend> {
    unit: Arc<DeviceUnit<B>>,
    bytes: u64,
    last_used: u64,
}

/// Routed experts kept on the device within a byte capacity. Layers stream
/// in a cycle, so plain least-recently-used eviction would evict every
/// expert before its layer comes round again; instead each expert's
/// request count decides: a newly read expert is admitted only over
/// experts requested less often (least recently used first among equals).
pub(crate) struct ExpertCache<B: Backend> {
    capacity: u64,
    used: u64,
    clock: u64,
    entries: HashMap<(usize, usize), CachedExpert<B>>,
    requests: HashMap<(usize, usize), u64>,
}

impl<B: Backend> ExpertCache<B> {
    /// An empty cache of `capacity` bytes (0: no caching).
    pub(crate) fn new(capacity: u64) -> Self {
        ExpertCache {
            capacity,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    /// Sets the capacity, evicting what no longer fits.
    pub(crate) fn resize(&mut self, capacity: u64) {
        self.capacity = capacity;
        while self.used > capacity {
            let Some(victim) = self.victim() else { break };
            self.remove(victim);
        }
    }

    /// Looks `key` up, counting the request.
    fn get(&mut self, key: (usize, usize)) -> Option<Arc<DeviceUnit<B>>> {
        self.clock += 1;
        *self.requests.entry(key).or_default() += 1;
        let entry = self.entries.get_mut(&key)?;
        entry.last_used = self.clock;
        Some(entry.unit.clone())
    }

    fn count(&self, key: &(usize, usize)) -> u64 {
        self.requests.get(key).copied().unwrap_or(0)
    }

    /// The entry to evict first: fewest requests, then least recently used.
    fn victim(&self) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .min_by_key(|(key, e)| (self.count(key), e.last_used))
            .map(|(key, _)| *key)
    }

    fn remove(&mut self, key: (usize, usize)) {
        if let Some(evicted) = self.entries.remove(&key) {
            self.used -= evicted.bytes;
        }
    }

    /// Offers a newly read expert to the cache.
    fn insert(&mut self, key: (usize, usize), unit: Arc<DeviceUnit<B>>, bytes: u64) {
        if bytes > self.capacity {
            return;
        }
        let mut victims = Vec::new();
        let mut freed = self.capacity - self.used;
        let mut candidates: Vec<_> = self
            .entries
            .iter()
            .map(|(k, e)| (self.count(k), e.last_used, *k, e.bytes))
            .collect();
        candidates.sort();
        for (count, _, victim, victim_bytes) in candidates {
            if freed >= bytes {
                break;
            }
            if count >= self.count(&key) {
                return;
            }
            victims.push(victim);
            freed += victim_bytes;
        }
        for victim in victims {
            self.remove(victim);
        }
        self.used += bytes;
        self.entries.insert(
            key,
            CachedExpert {
                unit,
                bytes,
                last_used: self.clock,
            },
        );
    }
}

/// The [`ExpertLoader`] of one streamed layer in one pass: the cache first,
/// then the reader thread.
pub(crate) struct ExpertFetcher<'a, B: Backend> {
    pub(crate) index: usize,
    pub(crate) spec: &'a UnitSpec,
    /// Device bytes of each of the unit's experts.
    pub(crate) expert_bytes: &'a [u64],
    pub(crate) requests: &'a Sender<ReaderRequest>,
    pub(crate) replies: &'a Receiver<Result<LoadedExperts>>,
    pub(crate) cache: &'a mut ExpertCache<B>,
    pub(crate) stats: &'a mut RunStats,
    pub(crate) backend: &'a dyn ComputeBackend<B>,
}

impl<B: Backend> ExpertLoader<B> for ExpertFetcher<'_, B> {
    fn load(&mut self, experts: &[usize]) -> Result<Vec<Arc<DeviceUnit<B>>>> {
        let started = Instant::now();
        let mut units: Vec<Option<Arc<DeviceUnit<B>>>> = Vec::with_capacity(experts.len());
        let mut missing = Vec::new();
        for &expert in experts {
            if expert >= self.spec.experts.len() {
                return Err(Error::Backend(format!(
                    "expert {expert} asked of unit `{}`, which has {}",
                    self.spec.name,
                    self.spec.experts.len()
                )));
            }
            let cached = self.cache.get((self.index, expert));
            match cached {
                Some(_) => self.stats.expert_hits += 1,
                None => {
                    self.stats.expert_misses += 1;
                    missing.push((units.len(), expert));
                }
            }
            units.push(cached);
        }
        if !missing.is_empty() {
            let request = ReaderRequest::Experts {
                index: self.index,
                experts: missing
                    .iter()
                    .map(|&(_, expert)| self.spec.experts[expert].clone())
                    .collect(),
            };
            let stopped = || Error::Backend("the reader thread stopped during a pass".into());
            self.requests.send(request).map_err(|_| stopped())?;
            let loaded = self.replies.recv().map_err(|_| stopped())??;
            let unit_stats = &mut self.stats.units[self.index];
            unit_stats.read += loaded.read;
            for ((slot, expert), staged) in missing.into_iter().zip(loaded.experts) {
                unit_stats.bytes_read += staged.stored_bytes;
                unit_stats.decompress += staged.decompress;
                let name = format!("{}.expert.{expert}", self.spec.name);
                let unit = Arc::new(DeviceUnit::upload(&name, staged.tensors, self.backend)?);
                self.cache.insert(
                    (self.index, expert),
                    unit.clone(),
                    self.expert_bytes[expert],
                );
                units[slot] = Some(unit);
            }
        }
        self.stats.expert_wait += started.elapsed();
        Ok(units
            .into_iter()
            .map(|u| u.expect("every expert was cached or read"))
            .collect())
    }
}
