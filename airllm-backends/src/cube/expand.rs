//! CubeCL kernels that expand a matrix from its stored encoding (f16, bf16,
//! GGML blocks, NF4), uploaded as little-endian u32 words, into floats on
//! the device: the same values as `airllm_core::dequant::dequantize` (each
//! value computed in the same order of operations), one thread per value.
//!
//! WGSL stores only 32-bit words (and f16 with `SHADER_F16`), and most
//! block kinds are not word-aligned (Q8_0 blocks are 34 bytes), so every
//! kernel reads bytes out of words.

use airllm_core::storage::NF4_VALUES;
use airllm_core::{BlockKind, ComputeDType, DType, Error, Result, StorageKind};
use cubecl::prelude::*;

/// The encodings the kernels expand (a matrix of another kind is widened
/// on the host).
#[derive(CubeType, Clone, Copy, Hash, PartialEq, Eq, Debug)]
pub enum Encoding {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// GGML Q8_0.
    Q8_0,
    /// GGML Q4_0.
    Q4_0,
    /// GGML Q4_1.
    Q4_1,
    /// GGML Q5_0.
    Q5_0,
    /// GGML Q5_1.
    Q5_1,
    /// GGML Q4_K.
    Q4K,
    /// GGML Q5_K.
    Q5K,
    /// GGML Q6_K.
    Q6K,
}

impl Encoding {
    /// The kernel for `kind`, where one exists (NF4 has its own kernel,
    /// `expand_nf4_kernel`, which reads its table of values).
    pub fn of(kind: StorageKind) -> Option<Self> {
        Some(match kind {
            StorageKind::Dense(DType::F16) => Encoding::F16,
            StorageKind::Dense(DType::BF16) => Encoding::BF16,
            StorageKind::Dense(DType::F32) => return None,
            StorageKind::Block(block) => match block {
                BlockKind::Q8_0 => Encoding::Q8_0,
                BlockKind::Q4_0 => Encoding::Q4_0,
                BlockKind::Q4_1 => Encoding::Q4_1,
                BlockKind::Q5_0 => Encoding::Q5_0,
                BlockKind::Q5_1 => Encoding::Q5_1,
                BlockKind::Q4_K => Encoding::Q4K,
                BlockKind::Q5_K => Encoding::Q5K,
                BlockKind::Q6_K => Encoding::Q6K,
                BlockKind::NF4 => return None,
            },
        })
    }
}

/// Whether a matrix of `kind` is expanded on the device.
pub fn expands_on_device(kind: StorageKind) -> bool {
    Encoding::of(kind).is_some() || kind == StorageKind::Block(BlockKind::NF4)
}

/// Byte `at` of the words.
#[cube]
fn byte_at(words: &Array<u32>, at: usize) -> u32 {
    (words[at / 4] >> (((at % 4) * 8) as u32)) & 0xFF
}

/// The byte at `at` as a signed value.
#[cube]
fn signed_byte_at(words: &Array<u32>, at: usize) -> i32 {
    let byte = byte_at(words, at);
    let mut value = i32::cast_from(byte);
    if byte >= 128 {
        value -= 256;
    }
    value
}

/// The little-endian u16 at `at`.
#[cube]
fn u16_at(words: &Array<u32>, at: usize) -> u32 {
    byte_at(words, at) | (byte_at(words, at + 1) << 8)
}

/// IEEE half bits to f32, exactly.
#[cube]
fn half_to_f32(bits: u32) -> f32 {
    let sign = (bits & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1F;
    let mantissa = bits & 0x3FF;
    let mut magnitude = ((exponent + 112) << 23) | (mantissa << 13);
    if exponent == 0 {
        // Zero and subnormals: mantissa · 2⁻²⁴.
        magnitude = u32::reinterpret(f32::cast_from(mantissa) * 5.960_464_5e-8);
    }
    if exponent == 31 {
        magnitude = 0x7F80_0000 | (mantissa << 13);
    }
    f32::reinterpret(sign | magnitude)
}

/// The f16 at byte `at`.
#[cube]
fn half_at(words: &Array<u32>, at: usize) -> f32 {
    half_to_f32(u16_at(words, at))
}

/// Value `j` (of 32) of a Q4 block's 16 nibble bytes at `at`: low nibbles
/// first, then high ones.
#[cube]
fn nibble_of_32(words: &Array<u32>, at: usize, j: usize) -> u32 {
    let byte = byte_at(words, at + j % 16);
    let mut nibble = byte & 0x0F;
    if j >= 16 {
        nibble = byte >> 4;
    }
    nibble
}

/// Bit `j` of the 32 high bits at `at` of a Q5 block, as 0 or 16.
#[cube]
fn fifth_bit(words: &Array<u32>, at: usize, j: usize) -> u32 {
    ((byte_at(words, at + j / 8) >> ((j % 8) as u32)) & 1) << 4
}

/// Scale (`want_min` false) or min of sub-block `j` (of 8) from the 12
/// packed 6-bit pairs at `at` of a Q4_K / Q5_K super-block.
#[cube]
fn scale_min_k4(words: &Array<u32>, at: usize, j: usize, want_min: bool) -> f32 {
    let mut value = byte_at(words, at + j) & 63;
    if want_min {
        value = byte_at(words, at + j + 4) & 63;
    }
    if j >= 4 {
        if want_min {
            value = (byte_at(words, at + j + 4) >> 4) | ((byte_at(words, at + j) >> 6) << 4);
        } else {
            value = (byte_at(words, at + j + 4) & 0x0F) | ((byte_at(words, at + j - 4) >> 6) << 4);
        }
    }
    f32::cast_from(value)
}

/// Value `j` (of 256) of the Q4_K (`fifth` false) or Q5_K super-block at
/// `at`: `d · scale · q − dmin · min` of its sub-block.
#[cube]
fn k_quant_value(words: &Array<u32>, at: usize, j: usize, #[comptime] fifth: bool) -> f32 {
    let d = half_at(words, at);
    let dmin = half_at(words, at + 2);
    let chunk = j / 64;
    let high = (j % 64) / 32;
    let l = j % 32;
    let sub_block = 2 * chunk + high;
    let d1 = d * scale_min_k4(words, at + 4, sub_block, false);
    let m1 = dmin * scale_min_k4(words, at + 4, sub_block, true);
    // Q4_K's values follow the scales; Q5_K's follow 32 bytes of high bits.
    let mut q = byte_at(words, at + 16 + 32 * chunk + l);
    let mut h = 0.0f32;
    if comptime![fifth] {
        q = byte_at(words, at + 48 + 32 * chunk + l);
        if (byte_at(words, at + 16 + l) >> (sub_block as u32)) & 1 == 1 {
            h = 16.0;
        }
    }
    if high == 1 {
        q >>= 4;
    } else {
        q &= 0x0F;
    }
    if comptime![fifth] {
        d1 * (f32::cast_from(q) + h) - m1
    } else {
        d1 * f32::cast_from(q) - m1
    }
}

/// Value `j` (of 256) of the Q6_K super-block at `at`.
#[cube]
fn q6_k_value(words: &Array<u32>, at: usize, j: usize) -> f32 {
    let d = half_at(words, at + 208);
    let half = j / 128;
    let k = (j % 128) / 32;
    let l = j % 32;
    let low = byte_at(words, at + 64 * half + 32 * (k % 2) + l);
    let high = byte_at(words, at + 128 + 32 * half + l);
    let q = ((low >> ((4 * (k / 2)) as u32)) & 0x0F) | (((high >> ((2 * k) as u32)) & 3) << 4);
    let scale = d * f32::cast_from(signed_byte_at(words, at + 192 + 8 * half + 2 * k + l / 16));
    scale * f32::cast_from(i32::cast_from(q) - 32)
}

/// Value `i` of a matrix stored in `encoding`.
#[cube]
fn value_at(words: &Array<u32>, i: usize, #[comptime] encoding: Encoding) -> f32 {
    match encoding {
        Encoding::F16 => half_at(words, 2 * i),
        Encoding::BF16 => f32::reinterpret(u16_at(words, 2 * i) << 16),
        Encoding::Q8_0 => {
            let at = (i / 32) * 34;
            f32::cast_from(signed_byte_at(words, at + 2 + i % 32)) * half_at(words, at)
        }
        Encoding::Q4_0 => {
            let at = (i / 32) * 18;
            let q = i32::cast_from(nibble_of_32(words, at + 2, i % 32)) - 8;
            f32::cast_from(q) * half_at(words, at)
        }
        Encoding::Q4_1 => {
            let at = (i / 32) * 20;
            let q = nibble_of_32(words, at + 4, i % 32);
            f32::cast_from(q) * half_at(words, at) + half_at(words, at + 2)
        }
        Encoding::Q5_0 => {
            let at = (i / 32) * 22;
            let j = i % 32;
            let q = nibble_of_32(words, at + 6, j) | fifth_bit(words, at + 2, j);
            f32::cast_from(i32::cast_from(q) - 16) * half_at(words, at)
        }
        Encoding::Q5_1 => {
            let at = (i / 32) * 24;
            let j = i % 32;
            let q = nibble_of_32(words, at + 8, j) | fifth_bit(words, at + 4, j);
            f32::cast_from(q) * half_at(words, at) + half_at(words, at + 2)
        }
        Encoding::Q4K => k_quant_value(words, (i / 256) * 144, i % 256, false),
        Encoding::Q5K => k_quant_value(words, (i / 256) * 176, i % 256, true),
        Encoding::Q6K => q6_k_value(words, (i / 256) * 210, i % 256),
    }
}

/// Expands every value of `out` from `words`.
#[cube(launch)]
fn expand_kernel<F: Float>(words: &Array<u32>, out: &mut Array<F>, #[comptime] encoding: Encoding) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = F::cast_from(value_at(words, i, encoding));
    }
}

/// Expands NF4 blocks (`absmax: f32, indices: [u8; 32]`, value `2j` in
/// the high nibble of byte `j`) with bitsandbytes' `table`.
#[cube(launch)]
fn expand_nf4_kernel<F: Float>(words: &Array<u32>, table: &Array<f32>, out: &mut Array<F>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let at = (i / 64) * 36;
        let j = i % 64;
        let absmax = f32::reinterpret(
            byte_at(words, at)
                | (byte_at(words, at + 1) << 8)
                | (byte_at(words, at + 2) << 16)
                | (byte_at(words, at + 3) << 24),
        );
        // Even values in the high nibble, odd ones in the low.
        let shift = ((1 - j % 2) * 4) as u32;
        let index = (byte_at(words, at + 4 + j / 2) >> shift) & 0x0F;
        out[i] = F::cast_from(table[index as usize] * absmax);
    }
}

/// Launches the kernel that expands `elements` values of `kind` from
/// `words` into `out` (values in `dtype`) on `client`.
pub fn launch<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: ComputeDType,
    kind: StorageKind,
    elements: usize,
    words: ArrayArg<R>,
    out: ArrayArg<R>,
) -> Result<()> {
    match dtype {
        ComputeDType::F32 => launch_in::<f32, R>(client, kind, elements, words, out),
        ComputeDType::F16 => launch_in::<half::f16, R>(client, kind, elements, words, out),
        ComputeDType::BF16 => launch_in::<half::bf16, R>(client, kind, elements, words, out),
    }
}

/// [`launch`] with values of type `F`.
fn launch_in<F: Float, R: Runtime>(
    client: &ComputeClient<R>,
    kind: StorageKind,
    elements: usize,
    words: ArrayArg<R>,
    out: ArrayArg<R>,
) -> Result<()> {
    let cube_dim = CubeDim::new(client, elements);
    let cube_count = cubecl::calculate_cube_count_elemwise(client, elements, cube_dim);
    match (Encoding::of(kind), kind) {
        (Some(encoding), _) => {
            expand_kernel::launch::<F, R>(client, cube_count, cube_dim, words, out, encoding)
        }
        (None, StorageKind::Block(BlockKind::NF4)) => {
            let table = client.create_from_slice(f32::as_bytes(&NF4_VALUES));
            let table = unsafe { ArrayArg::from_raw_parts(table, NF4_VALUES.len()) };
            expand_nf4_kernel::launch::<F, R>(client, cube_count, cube_dim, words, table, out)
        }
        (None, kind) => {
            return Err(Error::Backend(format!(
                "no device kernel expands {kind:?} matrices"
            )))
        }
    };
    Ok(())
}
