//! Run telemetry: per-unit read / upload / compute time and bytes, and
//! per-run token counts, so `bench` can say where the time goes.

use std::time::Duration;

use crate::memory::Rss;
use crate::schedule::DraftCounts;

/// Accumulated figures for one unit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UnitStats {
    /// Unit name.
    pub name: String,
    /// Times the unit was read from the store.
    pub reads: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Time reading and decoding on the reader thread.
    pub read: Duration,
    /// Of `read`, the time decompressing (zstd) unit files.
    pub decompress: Duration,
    /// Time uploading to the device (a streamed unit's on the reader
    /// thread, beside the compute of the units before it).
    pub upload: Duration,
    /// Bytes uploaded to the device, as they crossed (widened or as stored).
    pub uploaded_bytes: u64,
    /// Time the compute thread waited for this unit from the reader.
    pub wait: Duration,
    /// Time computing.
    pub compute: Duration,
}

/// Figures for a whole run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunStats {
    /// Per unit, in forward order.
    pub units: Vec<UnitStats>,
    /// Forward passes run.
    pub passes: u64,
    /// Time the compute thread waited for the reader.
    pub read_wait: Duration,
    /// Time the compute thread waited for routed experts (reading and uploading).
    pub expert_wait: Duration,
    /// Routed experts found in the expert cache.
    pub expert_hits: u64,
    /// Routed experts read from the store.
    pub expert_misses: u64,
    /// Most streamed units alive at once.
    pub peak_streamed_units: usize,
    /// Most device bytes the runtime held (reserved by the compute and
    /// reader threads' memory pools together) after any unit, sampled only
    /// when units are timed to completion
    /// ([`EngineOptions::sync_units`](crate::EngineOptions::sync_units))
    /// on a backend that can tell; 0 otherwise.
    pub peak_device_bytes: u64,
    /// Highest anonymous RSS seen between units.
    pub peak_rss_anon: u64,
    /// Highest file-backed RSS seen between units.
    pub peak_rss_file: u64,
    /// Tokens drafted and accepted (speculative decoding).
    pub drafts: DraftCounts,
    /// Time drafting (a draft model's passes, or looking up proposals).
    pub draft_time: Duration,
}

impl RunStats {
    /// Empty statistics for units with these names.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        RunStats {
            units: names
                .into_iter()
                .map(|name| UnitStats {
                    name,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Total bytes read from the store.
    pub fn bytes_read(&self) -> u64 {
        self.units.iter().map(|u| u.bytes_read).sum()
    }

    /// Total bytes uploaded to the device.
    pub fn uploaded_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.uploaded_bytes).sum()
    }

    /// Total upload time.
    pub fn upload_time(&self) -> Duration {
        self.units.iter().map(|u| u.upload).sum()
    }

    /// Total read time on the reader thread.
    pub fn read_time(&self) -> Duration {
        self.units.iter().map(|u| u.read).sum()
    }

    /// Share of routed-expert requests the expert cache served (`None`
    /// before any expert was routed on request).
    pub fn expert_cache_hit_rate(&self) -> Option<f64> {
        let asked = self.expert_hits + self.expert_misses;
        (asked > 0).then(|| self.expert_hits as f64 / asked as f64)
    }

    pub(crate) fn sample_rss(&mut self) {
        let rss = Rss::now();
        self.peak_rss_anon = self.peak_rss_anon.max(rss.anon);
        self.peak_rss_file = self.peak_rss_file.max(rss.file);
    }
}
