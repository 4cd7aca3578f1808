//! Lossless compression of a tensor's stored bytes: one zstd frame per
//! tensor (a streamed MoE pass reads only its routed experts, so a unit is
//! never one frame), 16-bit values split into byte planes first (all the
//! high bytes, sign and exponent, then all the low bytes), which zstd finds
//! far more alike than the interleaved pairs.

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// zstd refused the frame (a damaged file).
    #[error("the zstd frame is damaged ({0})")]
    Frame(String),
    /// The frame decoded to another length than the manifest records.
    #[error("the zstd frame holds {found} bytes, the manifest records {expected}")]
    Length {
        /// Bytes the manifest records.
        expected: usize,
        /// Bytes the frame held.
        found: usize,
    },
}

/// The zstd level `--zstd` takes without a value.
pub const DEFAULT_LEVEL: i32 = 3;

/// `bytes` as one zstd frame at `level`, split into byte planes first
/// where `planes` (16-bit values; `bytes` then holds an even count).
pub fn compress(bytes: &[u8], planes: bool, level: i32) -> Vec<u8> {
    let frame = |data: &[u8]| {
        zstd::bulk::compress(data, level).expect("in-memory zstd compression does not fail")
    };
    match planes {
        true => frame(&to_planes(bytes)),
        false => frame(bytes),
    }
}

/// Decodes `frame` (from [`compress`] with the same `planes`) into `out`,
/// which is cleared first and keeps its room between calls; the frame must
/// hold exactly `raw_len` bytes.
pub fn decompress(
    frame: &[u8],
    raw_len: usize,
    planes: bool,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| CodecError::Frame("no frame header".into()))?;
    match declared {
        Some(found) if found as usize != raw_len => {
            return Err(CodecError::Length {
                expected: raw_len,
                found: found as usize,
            })
        }
        Some(_) => {}
        None => {
            return Err(CodecError::Frame(
                "the frame does not record its size".into(),
            ))
        }
    }
    let target = if planes { &mut *scratch } else { &mut *out };
    target.clear();
    target.reserve(raw_len);
    let mut decoder =
        zstd::bulk::Decompressor::new().map_err(|e| CodecError::Frame(e.to_string()))?;
    let found = decoder
        .decompress_to_buffer(frame, target)
        .map_err(|e| CodecError::Frame(e.to_string()))?;
    if found != raw_len {
        return Err(CodecError::Length {
            expected: raw_len,
            found,
        });
    }
    if planes {
        out.clear();
        out.extend(from_planes(scratch));
    }
    Ok(())
}

/// Pairs of bytes as two planes: every pair's second (high) byte, then
/// every first (low) byte.
fn to_planes(bytes: &[u8]) -> Vec<u8> {
    let pairs = bytes.chunks_exact(2);
    let high = pairs.clone().map(|p| p[1]);
    let low = pairs.map(|p| p[0]);
    high.chain(low).collect()
}

/// The inverse of [`to_planes`].
fn from_planes(planes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let (high, low) = planes.split_at(planes.len() / 2);
    low.iter().zip(high).flat_map(|(l, h)| [*l, *h])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights uniform in ±1/√2048 as bf16, from a linear congruential
    /// generator (random enough that only the exponents repeat).
    fn bf16_like(count: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..count)
            .flat_map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                half::bf16::from_f32((unit * 2.0 - 1.0) / 2048f32.sqrt()).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn frames_decode_to_the_bytes_byte_for_byte() {
        let bytes = bf16_like(10_000);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for planes in [false, true] {
            let frame = compress(&bytes, planes, DEFAULT_LEVEL);
            assert!(frame.len() < bytes.len());
            decompress(&frame, bytes.len(), planes, &mut out, &mut scratch).unwrap();
            assert_eq!(out, bytes, "planes: {planes}");
        }
        let planar = compress(&bytes, true, DEFAULT_LEVEL).len();
        let interleaved = compress(&bytes, false, DEFAULT_LEVEL).len();
        assert!(planar < interleaved, "{planar} vs {interleaved}");
    }

    #[test]
    fn damaged_frames_and_wrong_lengths_are_named() {
        let bytes = bf16_like(1000);
        let frame = compress(&bytes, false, DEFAULT_LEVEL);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let err = decompress(&frame, bytes.len() - 1, false, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(err, CodecError::Length { .. }), "{err}");
        let err = decompress(&frame, bytes.len() + 1, false, &mut out, &mut scratch).unwrap_err();
        assert_eq!(
            err,
            CodecError::Length {
                expected: 2001,
                found: 2000
            }
        );
        let mut damaged = frame.clone();
        damaged[..4].copy_from_slice(&[0, 0, 0, 0]);
        let err = decompress(&damaged, bytes.len(), false, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(err, CodecError::Frame(_)), "{err}");
    }
}
