//! Pre-faulted memory maps of byte spans of weight files, and the grouping
//! of a unit's tensors into as few maps as their placement allows.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_core::store::element_count;
use airllm_core::{HostBytes, HostTensor, StorageKind};

use crate::{FormatError, Result};

/// Largest gap between two tensors of a unit that is mapped rather than
/// split into two maps.
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
}

/// Maps the tensors of `wanted` and returns them in the same order. Runs of
/// neighbouring tensors share one map; the bytes between distant ones (a
/// tied head's embedding far from the final norm) are never mapped.
pub fn map_tensors(wanted: &[TensorPlacement<'_>]) -> Result<Vec<HostTensor>> {
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
    let maps = spans
        .into_iter()
        .map(|(path, span)| Ok((path, span.clone(), MappedSpan::new(path, span)?)))
        .collect::<Result<Vec<_>>>()?;
    wanted
        .iter()
        .map(|t| {
            let within =
                |span: &Range<usize>| span.start <= t.range.start && t.range.end <= span.end;
            let (_, _, map) = maps
                .iter()
                .find(|(path, span, _)| *path == t.path && within(span))
                .ok_or_else(|| FormatError::Truncated {
                    path: t.path.to_path_buf(),
                    detail: format!(
                        "tensor `{}` spans bytes {:?}, outside the mapped data",
                        t.name, t.range
                    ),
                })?;
            map.view(t.name, t.kind, t.shape, t.range.clone())
        })
        .collect()
}

/// A read-only, pre-faulted map of a byte span of a file: the pages are read
/// in by the thread that maps it (the reader thread), not on first touch by
/// the compute thread, and are released when the last view is dropped.
struct MappedSpan {
    map: Arc<memmap2::Mmap>,
    start: usize,
    path: PathBuf,
}

impl MappedSpan {
    /// Maps `span` of the file at `path`, reading its pages in.
    fn new(path: &Path, span: Range<usize>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if span.end as u64 > len {
            return Err(FormatError::Truncated {
                path: path.to_path_buf(),
                detail: format!("bytes {span:?} lie past the end of the {len}-byte file"),
            });
        }
        let options = || {
            let mut options = memmap2::MmapOptions::new();
            options.offset(span.start as u64).len(span.len());
            options
        };
        // SAFETY (both maps): read-only maps of a file this process does
        // not write; the split writer only renames finished files into place.
        let map = unsafe { options().map(&file) }.map_err(|e| FormatError::io(path, e))?;
        // Pages read in from disk for this map come in huge folios where
        // the kernel can (a hint; refused without transparent huge pages):
        // each later read of the cached file then fills fewer page-table
        // entries (streamed reads of SmolLM2's layers, evicted first: 0.13–
        // 0.14 ms against 0.17).
        let _ = map.advise(memmap2::Advice::HugePage);
        let map = match map.advise(memmap2::Advice::PopulateRead) {
            Ok(()) => map,
            // Kernels before 5.14 lack the advice: map again, pre-faulted.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                unsafe { options().populate().map(&file) }.map_err(|e| FormatError::io(path, e))?
            }
            Err(e) => return Err(FormatError::io(path, e)),
        };
        Ok(MappedSpan {
            map: Arc::new(map),
            start: span.start,
            path: path.to_path_buf(),
        })
    }

    /// A host tensor viewing file bytes `range` (which must lie in the span).
    fn view(
        &self,
        name: &str,
        kind: StorageKind,
        shape: &[usize],
        range: Range<usize>,
    ) -> Result<HostTensor> {
        let expected = element_count(shape).and_then(|n| kind.encoded_bytes(n));
        if expected != Some(range.len()) {
            let needs = match expected {
                Some(bytes) => format!("needs {bytes} bytes"),
                None => "is too large or not a whole number of blocks".into(),
            };
            return Err(FormatError::Truncated {
                path: self.path.clone(),
                detail: format!(
                    "tensor `{name}` ({kind}, shape {shape:?}) {needs}, its range {range:?} holds {}",
                    range.len()
                ),
            });
        }
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = self.map.clone();
        let local = range.start.wrapping_sub(self.start)..range.end.wrapping_sub(self.start);
        let bytes = HostBytes::new(owner, local).ok_or_else(|| FormatError::Truncated {
            path: self.path.clone(),
            detail: format!("tensor `{name}` spans bytes {range:?}, outside the mapped data"),
        })?;
        Ok(HostTensor {
            name: name.to_string(),
            kind,
            shape: shape.to_vec(),
            bytes,
        })
    }
}
