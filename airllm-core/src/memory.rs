//! Byte sizes as users write them (`64MiB`, `2GiB`, `150KiB`, `1.5G`) and
//! readings of the process's and machine's memory.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::sync::OnceLock;

/// A number of bytes, parsed from and printed with binary units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 64MiB, 2GiB or 150KiB"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB or TiB"
                ))
            }
        };
        Ok(ByteSize((value * scale as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// Resident memory of this process, from `/proc/self/status` or `statm` (Linux).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// Anonymous pages (heap, tensors).
    pub anon: u64,
    /// File-backed pages (touched memory maps).
    pub file: u64,
    /// Peak total RSS of the process so far (VmHWM).
    pub peak: u64,
}

impl Rss {
    /// Reads the current figures; zeros where the platform does not tell.
    pub fn now() -> Rss {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Rss {
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            peak: field("VmHWM:"),
        }
    }

    /// The anonymous and file-backed figures alone (`peak` is 0), from
    /// `/proc/self/statm`, kept open and read again at offset 0, cheap
    /// enough to sample after every streamed read (several times cheaper
    /// than opening it each time, or than [`Rss::now`]).
    pub fn resident() -> Rss {
        static STATM: OnceLock<Option<File>> = OnceLock::new();
        let mut buffer = [0u8; 256];
        let read = STATM
            .get_or_init(|| File::open("/proc/self/statm").ok())
            .as_ref()
            .and_then(|file| file.read_at(&mut buffer, 0).ok())
            .unwrap_or(0);
        let statm = std::str::from_utf8(&buffer[..read]).unwrap_or_default();
        let mut pages = statm
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (resident, shared) = (pages.next().unwrap_or(0), pages.next().unwrap_or(0));
        // SAFETY: sysconf only reads a system setting.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        Rss {
            anon: resident.saturating_sub(shared) * page,
            file: shared * page,
            peak: 0,
        }
    }
}

/// Memory the OS reports as available to new allocations (`MemAvailable`).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Share of available RAM a host-memory budget takes by default.
pub const HOST_BUDGET_SHARE: f64 = 0.8;

/// The default budget for a device that computes from host memory: 80% of
/// what the OS reports available (4 GiB assumed where it does not tell).
pub fn default_host_budget() -> u64 {
    (available_memory().unwrap_or(4 << 30) as f64 * HOST_BUDGET_SHARE) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_and_status_agree_on_resident_memory() {
        let (quick, full) = (Rss::resident(), Rss::now());
        assert!(quick.file > 0 && quick.anon > 0, "{quick:?}");
        let close = |a: u64, b: u64| a.abs_diff(b) <= 4 << 20;
        assert!(close(quick.anon, full.anon), "{quick:?} against {full:?}");
        assert!(close(quick.file, full.file), "{quick:?} against {full:?}");
    }

    #[test]
    fn parses_binary_units() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("150KiB".parse::<ByteSize>().unwrap().0, 150 << 10);
        assert_eq!("1.5G".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("1000".parse::<ByteSize>().unwrap().0, 1000);
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }
}
