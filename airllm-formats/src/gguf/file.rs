//! The GGUF container (versions 2 and 3): header, metadata and tensor infos,
//! parsed and bounds-checked once against the file's length.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use airllm_core::{BlockKind, DType, StorageKind};

use crate::{FormatError, Result};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// Data alignment when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Unsigned(u64),
    /// Any signed integer type.
    Signed(i64),
    /// `FLOAT32` or `FLOAT64`.
    Float(f64),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    String(String),
    /// `ARRAY` of any of these.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Unsigned(v) => Some(v),
            MetaValue::Signed(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Unsigned(v) => Some(v as f64),
            MetaValue::Signed(v) => Some(v as f64),
            MetaValue::Float(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its encoding.
    pub kind: StorageKind,
    /// Logical row-major shape (GGUF lists dimensions fastest first; this
    /// is that list reversed).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: Range<usize>,
}

/// A parsed GGUF file.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    by_name: HashMap<String, usize>,
}

/// GGML type ids and names, for the types this crate reads and the ones it
/// names in errors.
fn ggml_type(id: u32) -> (Option<StorageKind>, &'static str) {
    use StorageKind::{Block, Dense};
    match id {
        0 => (Some(Dense(DType::F32)), "F32"),
        1 => (Some(Dense(DType::F16)), "F16"),
        2 => (Some(Block(BlockKind::Q4_0)), "Q4_0"),
        3 => (Some(Block(BlockKind::Q4_1)), "Q4_1"),
        6 => (Some(Block(BlockKind::Q5_0)), "Q5_0"),
        7 => (Some(Block(BlockKind::Q5_1)), "Q5_1"),
        8 => (Some(Block(BlockKind::Q8_0)), "Q8_0"),
        12 => (Some(Block(BlockKind::Q4_K)), "Q4_K"),
        13 => (Some(Block(BlockKind::Q5_K)), "Q5_K"),
        14 => (Some(Block(BlockKind::Q6_K)), "Q6_K"),
        30 => (Some(Dense(DType::BF16)), "BF16"),
        9 => (None, "Q8_1"),
        10 => (None, "Q2_K"),
        11 => (None, "Q3_K"),
        15 => (None, "Q8_K"),
        16..=23 | 29 => (None, "an IQ quantization"),
        24..=28 => (None, "an integer or F64 type"),
        34 | 35 => (None, "a ternary quantization"),
        39 => (None, "MXFP4"),
        _ => (None, "an unknown type"),
    }
}

/// Types this crate reads, for error messages.
const READABLE_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, detail: String) -> FormatError {
        FormatError::BadGguf {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = (self.at as u64).checked_add(n);
        match end {
            Some(end) if end <= self.bytes.len() as u64 => {
                let slice = &self.bytes[self.at..end as usize];
                self.at = end as usize;
                Ok(slice)
            }
            _ => Err(self.bad(format!(
                "{} ({n} bytes at offset {}) runs past the end of the {}-byte file",
                what(),
                self.at,
                self.bytes.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.bad(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, type_id: u32, what: &dyn Fn() -> String) -> Result<MetaValue> {
        use MetaValue::*;
        Ok(match type_id {
            0 => Unsigned(self.array::<1>(what)?[0] as u64),
            1 => Signed(self.array::<1>(what)?[0] as i8 as i64),
            2 => Unsigned(u16::from_le_bytes(self.array(what)?) as u64),
            3 => Signed(i16::from_le_bytes(self.array(what)?) as i64),
            4 => Unsigned(self.u32(what)? as u64),
            5 => Signed(i32::from_le_bytes(self.array(what)?) as i64),
            6 => Float(f32::from_le_bytes(self.array(what)?) as f64),
            7 => Bool(self.array::<1>(what)?[0] != 0),
            8 => String(self.string(what)?),
            9 => {
                let item_type = self.u32(what)?;
                let count = self.u64(what)?;
                // Every item takes at least one byte: a count beyond the
                // remaining bytes is corrupt, not an allocation to attempt.
                if count > (self.bytes.len() - self.at) as u64 {
                    return Err(self.bad(format!(
                        "{} claims {count} items, more than the file holds",
                        what()
                    )));
                }
                let items = (0..count)
                    .map(|_| self.value(item_type, what))
                    .collect::<Result<Vec<_>>>()?;
                Array(items)
            }
            10 => Unsigned(self.u64(what)?),
            11 => Signed(i64::from_le_bytes(self.array(what)?)),
            12 => Float(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.bad(format!("{} has unknown value type {other}", what())));
            }
        })
    }
}

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == MAGIC)
}

/// A tensor's entry in the header: name, shape (outermost first), GGML
/// type id and offset from the start of the data.
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
    type_id: u32,
    offset: u64,
}

impl Cursor<'_> {
    /// The magic number, the version, and the tensor and metadata counts.
    fn header(&mut self) -> Result<(u32, u64, u64)> {
        let magic = self.array::<4>(&|| "the magic number".into())?;
        if &magic != MAGIC {
            return Err(self.bad(format!("it starts with {magic:?}, not \"GGUF\"")));
        }
        let version = self.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            let detail = if version.swap_bytes() <= 3 {
                "it is a big-endian GGUF; only little-endian files are read".to_string()
            } else {
                format!("it is GGUF version {version}; versions 2 and 3 are read (convert it again with a current llama.cpp)")
            };
            return Err(FormatError::UnsupportedGguf {
                path: self.path.to_path_buf(),
                detail,
            });
        }
        let tensor_count = self.u64(&|| "the tensor count".into())?;
        let kv_count = self.u64(&|| "the metadata count".into())?;
        Ok((version, tensor_count, kv_count))
    }

    /// `count` metadata entries.
    fn metadata(&mut self, count: u64) -> Result<BTreeMap<String, MetaValue>> {
        let mut metadata = BTreeMap::new();
        for index in 0..count {
            let key = self.string(&|| format!("metadata key {index}"))?;
            let what = || format!("metadata value `{key}`");
            let type_id = self.u32(&what)?;
            let value = self.value(type_id, &what)?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// Up to `count` tensor entries (no more than the file has bytes).
    fn tensor_entries(&mut self, count: u64) -> Result<Vec<TensorEntry>> {
        let mut entries = Vec::new();
        for index in 0..count.min(self.bytes.len() as u64) {
            let name = self.string(&|| format!("the name of tensor {index}"))?;
            let what = || format!("the info of tensor `{name}`");
            let dims = self.u32(&what)?;
            let mut shape = (0..dims)
                .map(|_| self.u64(&what).map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            shape.reverse();
            let type_id = self.u32(&what)?;
            let offset = self.u64(&what)?;
            entries.push(TensorEntry {
                name,
                shape,
                type_id,
                offset,
            });
        }
        Ok(entries)
    }

    /// The data alignment the metadata gives (32 by default).
    fn alignment(&self, metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
        match metadata.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(value) => value
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    self.bad(format!(
                        "general.alignment is {value:?}, not a power of two"
                    ))
                }),
        }
    }

    /// `entry` placed in the file: its encoding and byte range, checked to
    /// hold its shape and to lie inside the file, aligned.
    fn place(&self, entry: TensorEntry, data_start: u64, alignment: u64) -> Result<GgufTensor> {
        let TensorEntry {
            name,
            shape,
            type_id,
            offset,
        } = entry;
        let file_len = self.bytes.len() as u64;
        let (kind, type_name) = ggml_type(type_id);
        let kind = kind.ok_or_else(|| FormatError::UnsupportedGguf {
            path: self.path.to_path_buf(),
            detail: format!(
                "tensor `{name}` has GGML type {type_id} ({type_name}), which airllm does not read; supported: {READABLE_TYPES}"
            ),
        })?;
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= file_len as usize * 8);
        let row = shape.last().copied().unwrap_or(1);
        let bytes = elements
            .filter(|_| row % kind.granule() == 0)
            .and_then(|n| kind.encoded_bytes(n))
            .ok_or_else(|| {
                self.bad(format!(
                    "tensor `{name}` of shape {shape:?} cannot be stored as {type_name}"
                ))
            })? as u64;
        let start = data_start.saturating_add(offset);
        let end = start.saturating_add(bytes);
        if offset % alignment != 0 || end > file_len {
            return Err(self.bad(format!(
                "tensor `{name}`'s data (bytes {start}..{end}) runs past the end of the {file_len}-byte file or is misaligned"
            )));
        }
        Ok(GgufTensor {
            name,
            kind,
            shape,
            range: start as usize..end as usize,
        })
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor infos of `path` and checks
    /// that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: read-only map of a file this process does not write.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        let mut cursor = Cursor {
            bytes: &map,
            at: 0,
            path,
        };
        let (version, tensor_count, kv_count) = cursor.header()?;
        let metadata = cursor.metadata(kv_count)?;
        let entries = cursor.tensor_entries(tensor_count)?;
        let alignment = cursor.alignment(&metadata)?;
        let data_start = (cursor.at as u64).div_ceil(alignment) * alignment;
        let tensors = entries
            .into_iter()
            .map(|entry| cursor.place(entry, data_start, alignment))
            .collect::<Result<Vec<_>>>()?;
        if tensors.len() as u64 != tensor_count {
            return Err(cursor.bad(format!(
                "it claims {tensor_count} tensors, more than the file can hold"
            )));
        }
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.position(name).map(|i| &self.tensors[i])
    }

    /// The index of the tensor called `name` in [`GgufFile::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A metadata string under `key`.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
            .ok_or_else(|| FormatError::BadGguf {
                path: self.path.clone(),
                detail: "it has no general.architecture".into(),
            })
    }
}
