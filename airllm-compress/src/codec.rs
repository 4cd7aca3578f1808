//! Lossless compression of a tensor's stored bytes: one zstd frame per
//! tensor (a streamed MoE pass reads only its routed experts, so a unit is
//! never one frame), 16-bit values split into byte planes first (in runs
//! of [`PLANE_RUN`] values: the run's high bytes, sign and exponent, then
//! its low bytes), which zstd finds far more alike than the interleaved
//! pairs. Runs, rather than two planes of the whole tensor, let a frame
//! decode through a small staging buffer instead of a second copy of the
//! tensor.

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

/// The zstd level `--zstd` takes without a value: on weights the fastest
/// level is also the smallest (uniform bf16 weights as byte planes: 0.682x
/// at level 1, 0.707x at 3, 0.694x at 9, which decodes at half the rate).
pub const DEFAULT_LEVEL: i32 = 1;

/// The levels [`compress`] takes (zstd's negative fast levels are left
/// out: at 1, decoding already outruns a disk).
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

/// The most bytes a frame of `len` bytes can take (zstd's bound, for
/// incompressible data).
pub fn bound(len: usize) -> usize {
    zstd::zstd_safe::compress_bound(len)
}

/// `bytes` as one zstd frame at `level`, split into byte planes first
/// where `planes` (16-bit values; `bytes` then holds an even count). The
/// frame records its decoded size and a checksum of its content, so a
/// damaged frame is refused when it is read, not only by `--verify`.
pub fn compress(bytes: &[u8], planes: bool, level: i32) -> Vec<u8> {
    let frame = |data: &[u8]| {
        let mut compressor = zstd::bulk::Compressor::new(level)
            .and_then(|mut c| {
                c.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))?;
                Ok(c)
            })
            .expect("zstd takes every level of LEVELS");
        compressor
            .compress(data)
            .expect("in-memory zstd compression does not fail")
    };
    match planes {
        true => frame(&to_planes(bytes)),
        false => frame(bytes),
    }
}

/// Each of `tensors` (bytes, and whether to split them into byte planes)
/// as one frame at `level`, compressed on every core of the current rayon
/// pool.
pub fn compress_each(tensors: &[(&[u8], bool)], level: i32) -> Vec<Vec<u8>> {
    use rayon::prelude::*;
    tensors
        .par_iter()
        .map(|(bytes, planes)| compress(bytes, *planes, level))
        .collect()
}

/// Values per run of byte planes: a run's high plane and its low plane
/// each fill whole zstd blocks (128 KiB), so each block holds one kind of
/// byte, and a longer run gains nothing (0.707x of uniform bf16 weights at
/// level 3, as two planes of the whole tensor).
pub const PLANE_RUN: usize = 512 << 10;

/// Decodes frames, keeping its zstd context and staging buffer between
/// frames (one per reading thread).
pub struct Decoder {
    context: zstd::zstd_safe::DCtx<'static>,
    staging: Vec<u8>,
}

/// zstd's name for an error code, as a frame error.
fn frame_error(code: usize) -> CodecError {
    CodecError::Frame(zstd::zstd_safe::get_error_name(code).to_string())
}

impl Decoder {
    /// A decoder with a fresh zstd context.
    pub fn new() -> Result<Self, CodecError> {
        let context = zstd::zstd_safe::DCtx::try_create()
            .ok_or_else(|| CodecError::Frame("no memory for a zstd context".into()))?;
        Ok(Decoder {
            context,
            staging: Vec::new(),
        })
    }

    /// Decodes `frame` (from [`compress`] with the same `planes`) into
    /// `out`, which it must fill exactly: the frame must hold `out.len()`
    /// bytes.
    pub fn decode(&mut self, frame: &[u8], planes: bool, out: &mut [u8]) -> Result<(), CodecError> {
        let expected = out.len();
        let declared = zstd::zstd_safe::get_frame_content_size(frame)
            .map_err(|_| CodecError::Frame("no frame header".into()))?;
        match declared {
            Some(found) if found != expected as u64 => {
                return Err(CodecError::Length {
                    expected,
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
        self.context
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(frame_error)?;
        if !planes {
            let found = self.context.decompress(out, frame).map_err(frame_error)?;
            return match found == expected {
                true => Ok(()),
                false => Err(CodecError::Length { expected, found }),
            };
        }
        if self.staging.len() < expected.min(2 * PLANE_RUN) {
            self.staging.resize(expected.min(2 * PLANE_RUN), 0);
        }
        let mut input = zstd::zstd_safe::InBuffer::around(frame);
        let mut remaining = 0;
        for pairs in out.chunks_mut(2 * PLANE_RUN) {
            let run = &mut self.staging[..pairs.len()];
            let mut output = zstd::zstd_safe::OutBuffer::around(run);
            while output.pos() < pairs.len() {
                let before = (input.pos(), output.pos());
                remaining = self
                    .context
                    .decompress_stream(&mut output, &mut input)
                    .map_err(frame_error)?;
                if (input.pos(), output.pos()) == before {
                    return Err(CodecError::Frame("the frame ends early".into()));
                }
            }
            from_planes(run, pairs);
        }
        // The frame's end, where zstd checks the content checksum.
        while remaining != 0 {
            let before = input.pos();
            let mut none = [0u8; 0];
            let mut output = zstd::zstd_safe::OutBuffer::around(&mut none[..]);
            remaining = self
                .context
                .decompress_stream(&mut output, &mut input)
                .map_err(frame_error)?;
            if remaining != 0 && input.pos() == before {
                return Err(CodecError::Frame("the frame ends early".into()));
            }
        }
        Ok(())
    }
}

/// Pairs of bytes as byte planes, run by run of [`PLANE_RUN`] pairs: the
/// run's second (high) bytes, then its first (low) bytes.
fn to_planes(bytes: &[u8]) -> Vec<u8> {
    let mut planes = Vec::with_capacity(bytes.len());
    for run in bytes.chunks(2 * PLANE_RUN) {
        planes.extend(run.chunks_exact(2).map(|p| p[1]));
        planes.extend(run.chunks_exact(2).map(|p| p[0]));
    }
    planes
}

/// The inverse of [`to_planes`] for one run, into `out` (as long).
fn from_planes(run: &[u8], out: &mut [u8]) {
    let (high, low) = run.split_at(run.len() / 2);
    for ((pair, l), h) in out.chunks_exact_mut(2).zip(low).zip(high) {
        pair[0] = *l;
        pair[1] = *h;
    }
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
        // Two whole runs of planes and a part of one.
        let bytes = bf16_like(2 * PLANE_RUN + 1234);
        let mut decoder = Decoder::new().unwrap();
        for planes in [false, true] {
            let frame = compress(&bytes, planes, DEFAULT_LEVEL);
            assert!(frame.len() < bytes.len());
            let mut out = vec![0; bytes.len()];
            decoder.decode(&frame, planes, &mut out).unwrap();
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
        let mut decoder = Decoder::new().unwrap();
        let mut out = vec![0; bytes.len() - 1];
        let err = decoder.decode(&frame, false, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::Length { .. }), "{err}");
        let mut out = vec![0; bytes.len() + 1];
        let err = decoder.decode(&frame, false, &mut out).unwrap_err();
        assert_eq!(
            err,
            CodecError::Length {
                expected: 2001,
                found: 2000
            }
        );
        let mut damaged = frame.clone();
        damaged[..4].copy_from_slice(&[0, 0, 0, 0]);
        let mut out = vec![0; bytes.len()];
        let err = decoder.decode(&damaged, false, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::Frame(_)), "{err}");
        for planes in [false, true] {
            let frame = compress(&bytes, planes, DEFAULT_LEVEL);
            let mut truncated = frame.clone();
            truncated.truncate(frame.len() / 2);
            let err = decoder.decode(&truncated, planes, &mut out).unwrap_err();
            assert!(matches!(err, CodecError::Frame(_)), "{err}");
            let mut flipped = frame.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x01;
            let err = decoder.decode(&flipped, planes, &mut out).unwrap_err();
            assert!(matches!(err, CodecError::Frame(_)), "{err}");
            decoder.decode(&frame, planes, &mut out).unwrap();
            assert_eq!(out, bytes);
        }
    }
}
