//! Default memory budgets: what a device gives the model when `--max-memory`
//! and `--max-host-memory` are not set, from the kind of memory it computes in.

use airllm_core::ByteSize;

/// The device budget of a wgpu adapter with memory of its own: wgpu cannot
/// say how much it has, so this much is assumed (the "4 GB GPU" the project
/// is built for); `--max-memory` gives it more.
pub const DEDICATED_UNKNOWN_BUDGET: u64 = 4 << 30;

/// Kept free of a device's free memory for the runtime's own allocations
/// (kernels, the memory pools' rounding): this share of it, or at least
/// [`MIN_MARGIN`].
pub const MARGIN_SHARE: f64 = 0.10;

/// The least of a device's free memory the budget leaves free.
pub const MIN_MARGIN: u64 = 512 << 20;

/// The memory a device computes in, which decides its default budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceMemory {
    /// Host memory: the cpu backends, and wgpu on a `Cpu` adapter (Mesa's
    /// lavapipe) or an integrated GPU.
    Host,
    /// Memory of its own, `free` bytes of it where the runtime can tell
    /// (CUDA), unknown where it cannot (wgpu on a discrete adapter).
    Dedicated {
        /// Free bytes on the device, if known.
        free: Option<u64>,
    },
}

/// A device's default budgets, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// What the device holds: resident units, stream buffers, KV cache,
    /// activations.
    pub device: u64,
    /// The host tier: staging and units kept in host memory between passes.
    pub host_tier: u64,
}

impl Budgets {
    /// The defaults for a device with `memory`, on a host that gives
    /// `host` bytes. A device computing in host memory takes the host's
    /// budget and has no host tier apart from it; one with memory of its
    /// own takes its free memory less a margin (or
    /// [`DEDICATED_UNKNOWN_BUDGET`] when that is unknown), and the host's
    /// budget for the host tier.
    pub fn for_device(memory: DeviceMemory, host: u64) -> Budgets {
        match memory {
            DeviceMemory::Host => Budgets {
                device: host,
                host_tier: 0,
            },
            DeviceMemory::Dedicated { free } => Budgets {
                device: match free {
                    Some(free) => free.saturating_sub(margin(free)),
                    None => DEDICATED_UNKNOWN_BUDGET,
                },
                host_tier: host,
            },
        }
    }

    /// One line for logs: both budgets and where they come from.
    pub fn describe(&self, memory: DeviceMemory) -> String {
        let source = match memory {
            DeviceMemory::Host => "computes in host memory".to_string(),
            DeviceMemory::Dedicated { free: Some(free) } => {
                format!("{} free on the device", ByteSize(free))
            }
            DeviceMemory::Dedicated { free: None } => {
                "device memory unknown; --max-memory sets it".to_string()
            }
        };
        format!(
            "device budget {}, host tier {} ({source})",
            ByteSize(self.device),
            ByteSize(self.host_tier)
        )
    }
}

/// What the budget leaves free of `free` device bytes.
fn margin(free: u64) -> u64 {
    ((free as f64 * MARGIN_SHARE) as u64).max(MIN_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn host_memory_devices_take_the_host_budget_and_no_host_tier() {
        let budgets = Budgets::for_device(DeviceMemory::Host, 19 * GIB);
        assert_eq!(
            budgets,
            Budgets {
                device: 19 * GIB,
                host_tier: 0
            }
        );
    }

    #[test]
    fn known_free_memory_keeps_a_margin() {
        let large = Budgets::for_device(
            DeviceMemory::Dedicated {
                free: Some(80 * GIB),
            },
            100,
        );
        assert_eq!(large.device, 72 * GIB, "10% of 80 GiB kept free");
        assert_eq!(large.host_tier, 100);
        let small = Budgets::for_device(
            DeviceMemory::Dedicated {
                free: Some(4 * GIB),
            },
            100,
        );
        assert_eq!(
            small.device,
            4 * GIB - MIN_MARGIN,
            "at least 512 MiB kept free"
        );
        let tiny = Budgets::for_device(DeviceMemory::Dedicated { free: Some(100) }, 100);
        assert_eq!(tiny.device, 0, "less free than the margin leaves nothing");
    }

    #[test]
    fn unknown_device_memory_takes_the_documented_default() {
        let budgets = Budgets::for_device(DeviceMemory::Dedicated { free: None }, 7 * GIB);
        assert_eq!(
            budgets,
            Budgets {
                device: DEDICATED_UNKNOWN_BUDGET,
                host_tier: 7 * GIB
            }
        );
        assert!(budgets
            .describe(DeviceMemory::Dedicated { free: None })
            .contains("--max-memory"));
    }
}
