//! One safetensors file: its header parsed and bounds-checked once, its bytes
//! memory-mapped per read so a unit's pages leave the RSS when it is dropped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airllm_core::{DType, HostTensor, StorageKind};
use safetensors::{Dtype, SafeTensors};

use crate::{FormatError, Result};

/// Where one tensor sits in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// Storage kind (`None`: a dtype airllm does not read).
    pub kind: Option<StorageKind>,
    /// The dtype as safetensors names it.
    pub dtype_name: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: Range<usize>,
}

/// The parsed header of a safetensors file.
#[derive(Clone, Debug)]
pub struct SafetensorsFile {
    /// The file.
    pub path: PathBuf,
    /// File length in bytes.
    pub len: u64,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorEntry>,
}

/// Memory-maps a whole file read-only, without reading it in.
fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: read-only map of a file this process does not write; the
    // split writer only renames finished files into place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(Arc::new(map))
}

fn storage_kind(dtype: Dtype) -> Option<StorageKind> {
    match dtype {
        Dtype::F32 => Some(StorageKind::Dense(DType::F32)),
        Dtype::F16 => Some(StorageKind::Dense(DType::F16)),
        Dtype::BF16 => Some(StorageKind::Dense(DType::BF16)),
        _ => None,
    }
}

/// The safetensors dtype of a dense storage kind.
pub fn safetensors_dtype(kind: StorageKind) -> Option<Dtype> {
    match kind {
        StorageKind::Dense(DType::F32) => Some(Dtype::F32),
        StorageKind::Dense(DType::F16) => Some(Dtype::F16),
        StorageKind::Dense(DType::BF16) => Some(Dtype::BF16),
        StorageKind::Block(_) => None,
    }
}

impl SafetensorsFile {
    /// Parses and validates the header (a truncated file fails here).
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let bad = |detail: String| FormatError::BadSafetensors {
            path: path.to_path_buf(),
            detail,
        };
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| bad(format!("{e:?}")))?;
        let data_start = 8 + header_len;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let entry = TensorEntry {
                    kind: storage_kind(info.dtype),
                    dtype_name: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    range: data_start + start..data_start + end,
                };
                (name, entry)
            })
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            len: map.len() as u64,
            tensors,
        })
    }

    /// The entry of `name`, checked to be readable.
    pub fn entry(&self, name: &str) -> Result<Option<(&TensorEntry, StorageKind)>> {
        let Some(entry) = self.tensors.get(name) else {
            return Ok(None);
        };
        let kind = entry.kind.ok_or_else(|| FormatError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: entry.dtype_name.clone(),
        })?;
        Ok(Some((entry, kind)))
    }
}

/// Adapts bytes to safetensors' writer: a dense tensor under its dtype
/// and shape, or any bytes (blocks, a zstd frame) as a 1-D U8 tensor (their
/// kind and logical shape are the manifest's).
pub struct TensorWriteView<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl<'a> TensorWriteView<'a> {
    /// A view of `tensor` for writing, in its own encoding.
    pub fn new(tensor: &'a HostTensor) -> Self {
        match safetensors_dtype(tensor.kind) {
            Some(dtype) => TensorWriteView {
                dtype,
                shape: tensor.shape.clone(),
                data: tensor.bytes.as_slice(),
            },
            None => TensorWriteView::bytes(tensor.bytes.as_slice()),
        }
    }

    /// A view of `data` as a U8 tensor of its length.
    pub fn bytes(data: &'a [u8]) -> Self {
        TensorWriteView {
            dtype: Dtype::U8,
            shape: vec![data.len()],
            data,
        }
    }
}

impl safetensors::View for TensorWriteView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}
