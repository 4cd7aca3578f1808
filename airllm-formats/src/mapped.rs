//! Whole-file maps of weight files, leases that read spans of them in and
//! give the memory back when they end, and the grouping of a unit's tensors
//! into as few leases as their placement allows.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airllm_core::store::element_count;
use airllm_core::{HostBytes, HostTensor, StorageKind};

use crate::frames::Frame;
use crate::{FormatError, Result};

/// The step between the bytes touched to read a span in by hand (the
/// smallest page size).
const PAGE: usize = 4096;

/// The size of a huge page (a PMD entry) on the CPUs this runs on.
const HUGE_PAGE: usize = 2 << 20;

/// Largest gap between two tensors of a unit that is read in with them
/// (one lease) rather than left out (two leases).
const MAX_MAPPED_GAP: usize = 1 << 20;

/// Where one tensor's bytes lie.
#[derive(Clone, Debug)]
pub struct TensorPlacement<'a> {
    /// The file holding it.
    pub path: &'a Path,
    /// Name given to the host tensor.
    pub name: &'a str,
    /// Its encoding.
    pub kind: StorageKind,
    /// Its logical shape.
    pub shape: &'a [usize],
    /// Absolute byte range in the file.
    pub range: Range<usize>,
    /// The zstd frame the range holds, if the tensor is stored as one (its
    /// host tensor then holds the frame, for [`crate::frames`] to decode).
    pub frame: Option<Frame>,
}

/// Maps the tensors of `wanted` and returns them in the same order. Runs of
/// neighbouring tensors share one lease on their file's map; the bytes
/// between distant ones (a tied head's embedding far from the final norm)
/// are never read in.
pub fn map_tensors(files: &FileMaps, wanted: &[TensorPlacement<'_>]) -> Result<Vec<HostTensor>> {
    if let Some(bad) = wanted.iter().find(|t| t.range.start > t.range.end) {
        return Err(FormatError::Truncated {
            path: bad.path.to_path_buf(),
            detail: format!(
                "tensor `{}` has the reversed byte range {:?}",
                bad.name, bad.range
            ),
        });
    }
    let mut ordered: Vec<&TensorPlacement<'_>> = wanted.iter().collect();
    ordered.sort_by_key(|t| (t.path, t.range.start));
    let mut spans: Vec<(&Path, Range<usize>)> = Vec::new();
    for tensor in ordered {
        match spans.last_mut() {
            Some((path, span))
                if *path == tensor.path
                    && tensor.range.start <= span.end.saturating_add(MAX_MAPPED_GAP) =>
            {
                span.end = span.end.max(tensor.range.end);
            }
            _ => spans.push((tensor.path, tensor.range.clone())),
        }
    }
    let leases = spans
        .into_iter()
        .map(|(path, span)| {
            let lease = SpanLease::new(files.get(path)?, span.clone())?;
            Ok((path, span, Arc::new(lease)))
        })
        .collect::<Result<Vec<_>>>()?;
    wanted
        .iter()
        .map(|t| {
            let within =
                |span: &Range<usize>| span.start <= t.range.start && t.range.end <= span.end;
            let (_, _, lease) = leases
                .iter()
                .find(|(path, span, _)| *path == t.path && within(span))
                .ok_or_else(|| FormatError::Truncated {
                    path: t.path.to_path_buf(),
                    detail: format!(
                        "tensor `{}` spans bytes {:?}, outside the mapped data",
                        t.name, t.range
                    ),
                })?;
            view(lease, t)
        })
        .collect()
}

/// The weight files a store reads, each mapped whole once (address space
/// only: pages are read in by the leases on spans of it).
///
/// One map per file, rather than one per read, saves the map and unmap
/// calls, counts each resident page once, and keeps the file's read-ahead
/// state across reads, so that pages read in from disk come in huge folios.
pub struct FileMaps {
    open: Mutex<HashMap<PathBuf, Arc<FileMap>>>,
    /// Whether the maps ask the kernel for no readahead (see [`FileMap::new`]).
    no_readahead: bool,
}

impl FileMaps {
    /// The maps of a store whose units hold `weight_bytes` in all. Whether
    /// its files stay in the page cache between passes depends on that
    /// total, not on each file's size: a model split one file per layer
    /// is read from disk every pass when the layers together do not fit,
    /// however small each file is.
    pub fn new(weight_bytes: u64) -> Self {
        FileMaps {
            open: Mutex::default(),
            no_readahead: huge_faults_read_ahead() && stays_cached(weight_bytes),
        }
    }

    /// The map of the file at `path`, made on first use.
    fn get(&self, path: &Path) -> Result<Arc<FileMap>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = open.get(path) {
            return Ok(map.clone());
        }
        let map = Arc::new(FileMap::new(path, self.no_readahead)?);
        open.insert(path.to_path_buf(), map.clone());
        Ok(map)
    }
}

/// Share of the memory available when a store opens up to which its
/// weight files are expected to stay in the page cache between passes.
const CACHED_SHARE: f64 = 0.5;

/// Whether `bytes` of weight files are expected to stay in the page cache
/// between passes ([`CACHED_SHARE`] of the available memory).
fn stays_cached(bytes: u64) -> bool {
    airllm_core::memory::available_memory()
        .is_some_and(|available| bytes as f64 <= available as f64 * CACHED_SHARE)
}

/// Whether a fault in a huge-page map reads its whole 2 MiB folio even
/// when the map asks for no readahead (Linux 5.18 and later). Before that,
/// `MADV_RANDOM` left every fault reading a single 4 KiB page.
fn huge_faults_read_ahead() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (5, 18)
}

/// A read-only map of a whole weight file, and how many live leases cover
/// each of its huge pages.
struct FileMap {
    map: memmap2::Mmap,
    path: PathBuf,
    leases: Mutex<Vec<u32>>,
}

impl FileMap {
    /// Maps the file at `path`, asking for no readahead where
    /// `no_readahead` (the store's files stay cached, on Linux 5.18 and
    /// later).
    fn new(path: &Path, no_readahead: bool) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: a read-only map of a file this process does not write; the
        // split writer only renames finished files into place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        // Pages read in from disk come in huge folios where the kernel can
        // (a hint; refused without transparent huge pages). A kernel that
        // places the map on a huge-page boundary (ext4 and xfs do) then maps
        // each cached folio by one entry instead of 512, about ten times
        // cheaper (docs/kernel.md).
        if map.advise(memmap2::Advice::HugePage).is_ok() && no_readahead {
            // No readahead past what a fault reads, which with huge pages is
            // the 2 MiB folio around it. The kernel's asynchronous readahead
            // (set off by reading a span in order) brings the bytes after it
            // in in folios of at most the device's readahead size (128 KiB),
            // mapped 4 KiB at a time ever after: in SmolLM2's GGUF, the nine
            // layers after the embedding. Every layer in huge folios, a
            // streamed pass maps and unmaps about twice as fast. The price
            // is the first read from disk, one huge page at a time with no
            // read ahead (about three times slower), paid once for files
            // that stay cached; a larger model, read from disk every pass,
            // keeps the kernel's readahead (docs/kernel.md has the figures).
            let _ = map.advise(memmap2::Advice::Random);
        }
        let huge_pages = map.len().div_ceil(HUGE_PAGE);
        Ok(FileMap {
            map,
            path: path.to_path_buf(),
            leases: Mutex::new(vec![0; huge_pages]),
        })
    }

    /// The huge pages that bytes `span` touch.
    fn huge_pages(span: &Range<usize>) -> Range<usize> {
        span.start / HUGE_PAGE..span.end.div_ceil(HUGE_PAGE)
    }
}

/// The bytes of one span of a mapped file, read in when the lease is taken
/// (by the thread taking it: the reader thread, not the compute threads on
/// first touch). When the last lease on a huge page ends, that page is
/// unmapped (it stays in the page cache), so a streamed unit's memory is
/// given back after its compute.
struct SpanLease {
    file: Arc<FileMap>,
    span: Range<usize>,
}

impl SpanLease {
    fn new(file: Arc<FileMap>, span: Range<usize>) -> Result<Self> {
        let len = file.map.len();
        if span.end > len {
            return Err(FormatError::Truncated {
                path: file.path.clone(),
                detail: format!("bytes {span:?} lie past the end of the {len}-byte file"),
            });
        }
        {
            let mut leases = file.leases.lock().unwrap_or_else(|e| e.into_inner());
            for count in &mut leases[FileMap::huge_pages(&span)] {
                *count += 1;
            }
        }
        // Taken before reading in, so that an ending lease on a shared huge
        // page cannot unmap it under this one.
        let lease = SpanLease { file, span };
        lease.read_in()?;
        Ok(lease)
    }

    /// Maps the span's pages (reading them from disk when not cached).
    fn read_in(&self) -> Result<()> {
        let map = &self.file.map;
        match map.advise_range(
            memmap2::Advice::PopulateRead,
            self.span.start,
            self.span.len(),
        ) {
            Ok(()) => Ok(()),
            // Kernels before 5.14 lack the advice: touch a byte a page.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                let touched = map[self.span.clone()]
                    .iter()
                    .step_by(PAGE)
                    .fold(0u8, |acc, byte| acc ^ byte);
                std::hint::black_box(touched);
                Ok(())
            }
            Err(e) => Err(FormatError::io(&self.file.path, e)),
        }
    }
}

impl AsRef<[u8]> for SpanLease {
    fn as_ref(&self) -> &[u8] {
        &self.file.map[self.span.clone()]
    }
}

impl Drop for SpanLease {
    fn drop(&mut self) {
        let file = &self.file;
        let mut leases = file.leases.lock().unwrap_or_else(|e| e.into_inner());
        for page in FileMap::huge_pages(&self.span) {
            leases[page] -= 1;
            if leases[page] == 0 {
                let start = page * HUGE_PAGE;
                let len = HUGE_PAGE.min(file.map.len() - start);
                // SAFETY: the map is a read-only shared map of a file, and
                // no lease covers this page: dropping its entries only makes
                // a later read fault the same bytes in again from the page
                // cache. Under the lock, so no lease is taken meanwhile. A
                // failure leaves the page mapped, which is harmless.
                let _ = unsafe {
                    file.map
                        .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                };
            }
        }
    }
}

/// A host tensor viewing file bytes `range` of the file `lease` holds
/// (which must lie in the lease's span).
fn view(lease: &Arc<SpanLease>, placement: &TensorPlacement<'_>) -> Result<HostTensor> {
    let TensorPlacement {
        name,
        kind,
        shape,
        range,
        frame,
        ..
    } = placement.clone();
    let expected = element_count(shape).and_then(|n| kind.encoded_bytes(n));
    let holds = match frame {
        Some(frame) => format!("its zstd frame decodes to {}", frame.raw_bytes),
        None => format!("its range {range:?} holds {}", range.len()),
    };
    let found = frame.map_or(range.len() as u64, |f| f.raw_bytes);
    if expected.map(|e| e as u64) != Some(found) {
        let needs = match expected {
            Some(bytes) => format!("needs {bytes} bytes"),
            None => "is too large or not a whole number of blocks".into(),
        };
        return Err(FormatError::Truncated {
            path: lease.file.path.clone(),
            detail: format!("tensor `{name}` ({kind}, shape {shape:?}) {needs}, {holds}"),
        });
    }
    let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = lease.clone();
    let local =
        range.start.wrapping_sub(lease.span.start)..range.end.wrapping_sub(lease.span.start);
    let bytes = HostBytes::new(owner, local).ok_or_else(|| FormatError::Truncated {
        path: lease.file.path.clone(),
        detail: format!("tensor `{name}` spans bytes {range:?}, outside the mapped data"),
    })?;
    Ok(HostTensor {
        name: name.to_string(),
        kind,
        shape: shape.to_vec(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airllm_core::DType;

    /// A file of `len` bytes whose byte `i` is `i % 251`.
    fn patterned_file(len: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn placement<'a>(
        path: &'a Path,
        name: &'a str,
        shape: &'a [usize],
        start: usize,
    ) -> TensorPlacement<'a> {
        TensorPlacement {
            path,
            name,
            kind: StorageKind::Dense(DType::F32),
            shape,
            range: start..start + shape[0] * 4,
            frame: None,
        }
    }

    fn counts(maps: &FileMaps, path: &Path) -> Vec<u32> {
        maps.get(path).unwrap().leases.lock().unwrap().clone()
    }

    #[test]
    fn leases_count_their_huge_pages_and_keep_their_bytes_when_a_neighbour_ends() {
        let file = patterned_file(3 * HUGE_PAGE + 1000);
        let maps = FileMaps::new(file.as_file().metadata().unwrap().len());
        // The first lease covers huge pages 0–2, the second pages 1 and 2;
        // the first is taken again after it ends.
        let (long, short) = ([HUGE_PAGE / 2], [HUGE_PAGE / 8]);
        let first = placement(file.path(), "first", &long, 100);
        let second = placement(file.path(), "second", &short, 2 * HUGE_PAGE - 8);
        let first_lease = map_tensors(&maps, std::slice::from_ref(&first)).unwrap();
        let later = map_tensors(&maps, std::slice::from_ref(&second)).unwrap();
        assert_eq!(counts(&maps, file.path()), vec![1, 2, 2, 0]);
        drop(first_lease);
        assert_eq!(counts(&maps, file.path()), vec![0, 1, 1, 0]);
        let again = map_tensors(&maps, &[first]).unwrap();
        assert_eq!(counts(&maps, file.path()), vec![1, 2, 2, 0]);
        drop(again);
        assert_eq!(counts(&maps, file.path()), vec![0, 1, 1, 0]);
        let bytes = later[0].bytes.as_slice();
        let expected: Vec<u8> = (second.range.clone()).map(|i| (i % 251) as u8).collect();
        assert!(
            bytes == expected.as_slice(),
            "the second lease's bytes changed"
        );
        drop(later);
        assert_eq!(counts(&maps, file.path()), vec![0, 0, 0, 0]);
    }

    #[test]
    fn a_span_past_the_end_names_the_file() {
        let file = patterned_file(4096);
        let shape = [2048];
        let err = map_tensors(
            &FileMaps::new(4096),
            &[placement(file.path(), "w", &shape, 0)],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(err.contains("past the end"), "{err}");
    }
}
