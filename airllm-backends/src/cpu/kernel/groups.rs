//! The block kinds seen as groups of 32 integer weights, the form the
//! integer dot products take them in: weight `i` of a group is
//! `scales[i / 16] · quants[i] + min`. Portable code; `avx2.rs` unpacks the
//! same groups with vector instructions.
//!
//! NF4's values are not an affine map of their indices: its groups hold
//! [`NF4_CODES`], the table rounded to 1/127 of the block's absolute maximum
//! (as llama.cpp's IQ4_NL stores its own table), so its integer dots are
//! within half a step of that maximum of the decoded weights.

use airllm_core::dequant::scale_min_k4;
use airllm_core::BlockKind;

use super::activations::{QuantizedRow, GROUP};

/// One group of 32 weights as signed bytes and the factors that give their values.
pub struct Group {
    /// The integer weights.
    pub quants: [i8; GROUP],
    /// The scale of the first and the second 16 weights (equal except in Q6_K).
    pub scales: [f32; 2],
    /// Added to every weight (zero for kinds without a minimum).
    pub min: f32,
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Quants from 16 bytes of nibbles: low nibbles first, then high nibbles
/// (each plus `offset`), with a fifth bit per value from `high_bits` (bit `i`
/// for value `i`) where given.
fn nibbles(bytes: &[u8], high_bits: Option<u32>, offset: i8) -> [i8; GROUP] {
    let mut quants = [0i8; GROUP];
    for (j, byte) in bytes[..16].iter().enumerate() {
        let (low, high) = (byte & 0x0F, byte >> 4);
        let fifth = |i: usize| high_bits.map_or(0, |bits| ((bits >> i) & 1) as u8) << 4;
        quants[j] = (low | fifth(j)) as i8 + offset;
        quants[j + 16] = (high | fifth(j + 16)) as i8 + offset;
    }
    quants
}

/// [`airllm_core::storage::NF4_VALUES`] times 127, rounded: NF4's integer
/// codes, with a scale of the block's absolute maximum / 127.
pub const NF4_CODES: [i8; 16] = [
    -127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127,
];

fn uniform(quants: [i8; GROUP], scale: f32, min: f32) -> Group {
    Group {
        quants,
        scales: [scale; 2],
        min,
    }
}

/// Group `g` of a block of `kind` (`block` is one whole block).
pub fn group(kind: BlockKind, block: &[u8], g: usize) -> Group {
    match kind {
        BlockKind::Q8_0 => {
            let quants = std::array::from_fn(|i| block[2 + i] as i8);
            uniform(quants, f16_at(block, 0), 0.0)
        }
        BlockKind::Q4_0 => uniform(nibbles(&block[2..], None, -8), f16_at(block, 0), 0.0),
        BlockKind::Q4_1 => uniform(
            nibbles(&block[4..], None, 0),
            f16_at(block, 0),
            f16_at(block, 2),
        ),
        BlockKind::Q5_0 => {
            let bits = u32::from_le_bytes(block[2..6].try_into().expect("4 bytes"));
            uniform(nibbles(&block[6..], Some(bits), -16), f16_at(block, 0), 0.0)
        }
        BlockKind::Q5_1 => {
            let bits = u32::from_le_bytes(block[4..8].try_into().expect("4 bytes"));
            uniform(
                nibbles(&block[8..], Some(bits), 0),
                f16_at(block, 0),
                f16_at(block, 2),
            )
        }
        BlockKind::Q4_K | BlockKind::Q5_K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let (scale, min) = scale_min_k4(g, &block[4..16]);
            let (qs, fifth_bit) = match kind {
                BlockKind::Q4_K => (&block[16 + 32 * (g / 2)..], None),
                _ => (&block[48 + 32 * (g / 2)..], Some(&block[16..48])),
            };
            let quants = std::array::from_fn(|l| {
                let nibble = (qs[l] >> (4 * (g % 2))) & 0x0F;
                let high = fifth_bit.map_or(0, |qh| ((qh[l] >> g) & 1) << 4);
                (nibble | high) as i8
            });
            uniform(quants, d * scale, -dmin * min)
        }
        BlockKind::NF4 => {
            let absmax = f32::from_le_bytes(block[..4].try_into().expect("4 bytes"));
            let bytes = &block[4 + 16 * g..4 + 16 * g + 16];
            let quants = std::array::from_fn(|i| {
                let byte = bytes[i / 2];
                let index = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                NF4_CODES[index as usize]
            });
            uniform(quants, absmax / 127.0, 0.0)
        }
        BlockKind::Q6_K => {
            // Two halves of 128; quarter k of a half takes the low or high
            // nibbles of ql[0..32] or ql[32..64] and bits 2k, 2k+1 of qh.
            let (half, k) = (g / 4, g % 4);
            let ql = &block[64 * half + 32 * (k % 2)..];
            let qh = &block[128 + 32 * half..];
            let sc = &block[192 + 8 * half..];
            let d = f16_at(block, 208);
            let quants = std::array::from_fn(|l| {
                let low = (ql[l] >> (4 * (k / 2))) & 0x0F;
                let high = (qh[l] >> (2 * k)) & 3;
                (low | (high << 4)) as i8 - 32
            });
            Group {
                quants,
                scales: [d * sc[2 * k] as i8 as f32, d * sc[2 * k + 1] as i8 as f32],
                min: 0.0,
            }
        }
    }
}

/// `Σ w·x` over weight row `row` (whole blocks of `kind`) and one quantized
/// activation row, group by group in integers.
pub fn row_dot(kind: BlockKind, row: &[u8], x: QuantizedRow<'_>) -> f32 {
    let groups_per_block = kind.block_len() / GROUP;
    let mut total = 0.0f32;
    for (b, block) in row.chunks_exact(kind.block_bytes()).enumerate() {
        for g in 0..groups_per_block {
            let at = b * groups_per_block + g;
            let w = group(kind, block, g);
            let xq = &x.quants[at * GROUP..(at + 1) * GROUP];
            let halves: [i32; 2] = std::array::from_fn(|h| {
                (16 * h..16 * h + 16)
                    .map(|i| i32::from(w.quants[i]) * i32::from(xq[i]))
                    .sum()
            });
            total += x.scales[at]
                * (w.scales[0] * halves[0] as f32 + w.scales[1] * halves[1] as f32)
                + w.min * x.sums[at];
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's groups give the values GGML's reference decoder gives
    /// (NF4's within half a step of its codes).
    #[test]
    fn groups_decode_as_the_reference_decoder() {
        for kind in BlockKind::ALL {
            let block = super::super::tests::random_blocks(kind, 1, 3);
            let mut want = vec![0.0f32; kind.block_len()];
            airllm_core::dequant::dequantize(kind, &block, &mut want);
            let step = match kind {
                BlockKind::NF4 => f32::from_le_bytes(block[..4].try_into().unwrap()) / 127.0,
                _ => 0.0,
            };
            for g in 0..kind.block_len() / GROUP {
                let w = group(kind, &block, g);
                for i in 0..GROUP {
                    let got = w.scales[i / 16] * w.quants[i] as f32 + w.min;
                    let want = want[g * GROUP + i];
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0) + step / 2.0,
                        "{kind:?} group {g} value {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn nf4_codes_are_the_table_times_127_rounded() {
        for (code, value) in NF4_CODES.iter().zip(airllm_core::storage::NF4_VALUES) {
            assert_eq!(*code as f32, (value * 127.0).round());
        }
    }
}
