//! Tensors stored as zstd frames (`airllm split --zstd`): what the manifest
//! records of a frame, and the decoding of a unit's frames into buffers
//! that are reused from read to read.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use airllm_compress::codec::Decoder;
use airllm_core::{HostBytes, HostTensor};

use crate::{FormatError, Result};

/// Codec name of a unit whose tensors are stored as they are.
pub const CODEC_NONE: &str = "none";
/// Codec name of a unit whose tensors are each one zstd frame.
pub const CODEC_ZSTD: &str = "zstd";
/// Every codec a manifest may name.
pub const CODECS: [&str; 2] = [CODEC_NONE, CODEC_ZSTD];

/// A tensor stored as one zstd frame: its byte range holds the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// Bytes the frame decodes to (the tensor in its storage kind).
    pub raw_bytes: u64,
    /// Whether the frame holds 16-bit values as byte planes (all high
    /// bytes, then all low bytes).
    pub planes: bool,
}

/// Where each tensor starts in a unit's decoded buffer: at an address
/// that is a multiple of a cache line, as aligned as a mapped tensor.
const ALIGN: usize = 64;

/// Buffers that decoded units live in. Each returns here when the last
/// view of its unit drops, and the next read takes it again: a streamed
/// pass allocates (and faults in) its buffers once, not once per layer.
#[derive(Default)]
pub struct DecodeBuffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    decoders: Mutex<Vec<Decoder>>,
}

/// Free buffers kept at most: one per unit a reader has in flight with the
/// default prefetch (the unit computing and the one read ahead).
const KEPT_FREE: usize = 2;

/// A decoded unit's bytes; gives its buffer back to the pool on drop.
struct PooledBytes {
    bytes: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for PooledBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut free = pool.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < KEPT_FREE {
                free.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

impl DecodeBuffers {
    /// A buffer of `len` bytes: the free one that fits it most tightly,
    /// else the largest free one grown, else a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let fitting = (0..free.len())
            .filter(|&i| free[i].capacity() >= len)
            .min_by_key(|&i| free[i].capacity());
        let largest = (0..free.len()).max_by_key(|&i| free[i].capacity());
        let mut buffer = fitting
            .or(largest)
            .map_or_else(Vec::new, |i| free.swap_remove(i));
        drop(free);
        buffer.resize(len, 0);
        buffer
    }

    fn decoder(&self) -> Result<Decoder, airllm_compress::codec::CodecError> {
        let kept = self
            .decoders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        kept.map_or_else(Decoder::new, Ok)
    }

    /// Decodes the tensors of one read: each `(tensor, frame)` whose frame
    /// is `Some` holds that frame as its bytes (read from `file`), and
    /// becomes its decoded bytes; the others are kept as they are.
    pub fn decode(
        &self,
        file: &Path,
        tensors: Vec<(HostTensor, Option<Frame>)>,
    ) -> Result<Vec<HostTensor>> {
        // Where each framed tensor starts in the buffer, and its end.
        let mut total = 0usize;
        let mut offsets = Vec::with_capacity(tensors.len());
        for (_, frame) in &tensors {
            offsets.push(frame.map(|f| {
                let start = total.next_multiple_of(ALIGN);
                total = start + f.raw_bytes as usize;
                start
            }));
        }
        let mut buffer = self.take(total + ALIGN);
        let pad = buffer.as_ptr().align_offset(ALIGN);
        let mut decoder = self.decoder().map_err(|e| FormatError::Truncated {
            path: file.to_path_buf(),
            detail: format!("no zstd decoder ({e})"),
        })?;
        for ((tensor, frame), start) in tensors.iter().zip(&offsets) {
            let (Some(frame), Some(start)) = (frame, start) else {
                continue;
            };
            let out = &mut buffer[pad + start..pad + start + frame.raw_bytes as usize];
            decoder
                .decode(tensor.bytes.as_slice(), frame.planes, out)
                .map_err(|e| FormatError::Truncated {
                    path: file.to_path_buf(),
                    detail: format!("tensor `{}`: {e}", tensor.name),
                })?;
        }
        self.decoders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(decoder);
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(PooledBytes {
            bytes: buffer,
            pool: Arc::downgrade(&self.free),
        });
        Ok(tensors
            .into_iter()
            .zip(offsets)
            .map(|((tensor, frame), start)| match (frame, start) {
                (Some(frame), Some(start)) => HostTensor {
                    bytes: HostBytes::new(
                        owner.clone(),
                        pad + start..pad + start + frame.raw_bytes as usize,
                    )
                    .expect("decoded tensors lie in their buffer"),
                    ..tensor
                },
                _ => tensor,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airllm_core::{DType, StorageKind};

    fn framed(name: &str, raw: &[u8], planes: bool) -> (HostTensor, Option<Frame>) {
        let frame = airllm_compress::codec::compress(raw, planes, 3);
        let tensor = HostTensor {
            name: name.into(),
            kind: StorageKind::Dense(DType::BF16),
            shape: vec![raw.len() / 2],
            bytes: HostBytes::from_vec(frame),
        };
        let frame = Frame {
            raw_bytes: raw.len() as u64,
            planes,
        };
        (tensor, Some(frame))
    }

    #[test]
    fn frames_decode_into_aligned_reused_buffers() {
        let buffers = DecodeBuffers::default();
        let a: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<u8> = (0..98u32).map(|i| (i % 3) as u8).collect();
        let first_address;
        {
            let tensors = vec![framed("a", &a, true), framed("b", &b, false)];
            let decoded = buffers.decode(Path::new("unit"), tensors).unwrap();
            assert_eq!(decoded[0].bytes.as_slice(), &a[..]);
            assert_eq!(decoded[1].bytes.as_slice(), &b[..]);
            for tensor in &decoded {
                assert_eq!(tensor.bytes.as_slice().as_ptr() as usize % ALIGN, 0);
            }
            first_address = decoded[0].bytes.as_slice().as_ptr();
        }
        let decoded = buffers
            .decode(Path::new("unit"), vec![framed("a", &a, true)])
            .unwrap();
        assert_eq!(decoded[0].bytes.as_slice().as_ptr(), first_address);
    }

    #[test]
    fn a_damaged_frame_names_the_file_and_tensor() {
        let buffers = DecodeBuffers::default();
        let (mut tensor, frame) = framed("w", &[1, 2, 3, 4], false);
        let mut bytes = tensor.bytes.as_slice().to_vec();
        bytes[0] ^= 0xFF;
        tensor.bytes = HostBytes::from_vec(bytes);
        let err = buffers
            .decode(
                Path::new("units/001-layer.safetensors"),
                vec![(tensor, frame)],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("001-layer.safetensors") && err.contains("`w`"),
            "{err}"
        );
    }
}
