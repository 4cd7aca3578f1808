//! The quantizers against the references in
//! `tests/fixtures/quantize/reference.safetensors`
//! (`tests/fixtures/generate_quantized.py`): q8_0, q4_0 and q4_1 byte for
//! byte as the `gguf` package writes them, nf4 byte for byte as bitsandbytes
//! writes it (and decoded as it decodes it), q4_k within its error bound.

use airllm_compress::quantize;
use airllm_core::dequant::dequantize;
use airllm_core::BlockKind;
use safetensors::SafeTensors;

const ROW: usize = 256;

fn reference() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quantize/reference.safetensors"
    );
    std::fs::read(path).expect("tests/fixtures/quantize/reference.safetensors")
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn kinds_with_a_reference_quantizer_match_it_byte_for_byte() {
    let file = reference();
    let tensors = SafeTensors::deserialize(&file).unwrap();
    let input = floats(tensors.tensor("input").unwrap().data());
    for (name, kind) in [
        ("q8_0", BlockKind::Q8_0),
        ("q4_0", BlockKind::Q4_0),
        ("q4_1", BlockKind::Q4_1),
        ("nf4", BlockKind::NF4),
    ] {
        let want = tensors.tensor(name).unwrap();
        let row_bytes = ROW / kind.block_len() * kind.block_bytes();
        for (r, (values, want)) in input
            .chunks_exact(ROW)
            .zip(want.data().chunks_exact(row_bytes))
            .enumerate()
        {
            let got = quantize(kind, values).unwrap();
            assert_eq!(got, want, "{name} row {r}");
        }
    }
}

#[test]
fn nf4_decodes_as_bitsandbytes_decodes() {
    let file = reference();
    let tensors = SafeTensors::deserialize(&file).unwrap();
    let blocks = tensors.tensor("nf4").unwrap().data();
    let want = floats(tensors.tensor("nf4_decoded").unwrap().data());
    let mut got = vec![0.0; want.len()];
    dequantize(BlockKind::NF4, blocks, &mut got);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
}

/// Q4_K, which the `gguf` package cannot write: each value within one step
/// of its sub-block (`(max − min) / 15`) plus what the 6-bit rounding of
/// the stored scale and minimum may add (the scale off by up to `d / 2`
/// over 15 steps, the minimum by `dmin / 2`), and each row's relative RMS
/// error within what 4-bit blocks of Gaussian weights give (about 0.1); a
/// row whose scales underflow f16 decodes as zeros.
#[test]
fn q4_k_stays_within_its_error_bound() {
    let file = reference();
    let tensors = SafeTensors::deserialize(&file).unwrap();
    let input = floats(tensors.tensor("input").unwrap().data());
    let f16_at = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (r, values) in input.chunks_exact(ROW).enumerate() {
        let blocks = quantize(BlockKind::Q4_K, values).unwrap();
        let (d, dmin) = (f16_at(&blocks, 0), f16_at(&blocks, 2));
        let mut decoded = vec![0.0; ROW];
        dequantize(BlockKind::Q4_K, &blocks, &mut decoded);
        if d == 0.0 && dmin == 0.0 {
            // Scales below f16's smallest value (the `tiny` row): zeros, as
            // llama.cpp writes them.
            assert!(decoded.iter().all(|y| *y == 0.0), "row {r}");
            continue;
        }
        for (j, (x, y)) in values
            .chunks_exact(32)
            .zip(decoded.chunks_exact(32))
            .enumerate()
        {
            let max = x.iter().fold(0.0f32, |m, v| m.max(*v));
            let min = x.iter().fold(0.0f32, |m, v| m.min(*v));
            let bound = (max - min) / 15.0 + 7.5 * d + dmin / 2.0;
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert!(
                    (x - y).abs() <= bound * 1.01 + 1e-12,
                    "row {r} sub-block {j} value {i}: {x} vs {y} (bound {bound})"
                );
            }
        }
        let error: f32 = values
            .iter()
            .zip(&decoded)
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        let norm: f32 = values.iter().map(|x| x * x).sum();
        if norm > 0.0 {
            let relative = (error / norm).sqrt();
            assert!(relative <= 0.12, "row {r}: relative RMS {relative}");
        }
    }
}
