//! Speed of the zstd codec on one tensor of bf16 weights uniform in
//! ±1/√5120 (a `llama-13b` synthetic MLP matrix, 5120 × 13824): compress
//! and decode rates per core, with and without byte planes, and the size
//! beside the input.
//!
//! `cargo run --release -p airllm-compress --example codec_speed [LEVEL]`

use std::time::Instant;

use airllm_compress::codec::{compress, Decoder, DEFAULT_LEVEL};

fn main() {
    let level = std::env::args()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(DEFAULT_LEVEL);
    let bytes = uniform_bf16(5120 * 13824, 5120);
    let mb = bytes.len() as f64 / 1e6;
    println!("{mb:.0} MB of bf16 at zstd level {level}, one thread");
    let mut decoder = Decoder::new().expect("zstd context");
    let mut out = vec![0u8; bytes.len()];
    for planes in [false, true] {
        let started = Instant::now();
        let frame = compress(&bytes, planes, level);
        let compress_s = started.elapsed().as_secs_f64();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            decoder.decode(&frame, planes, &mut out).expect("decodes");
            best = best.min(started.elapsed().as_secs_f64());
        }
        assert!(out == bytes);
        println!(
            "planes {planes:<5}  size {:.4}x  compress {:>6.0} MB/s  decode {:>6.0} MB/s",
            frame.len() as f64 / bytes.len() as f64,
            mb / compress_s,
            mb / best
        );
    }
}

/// `count` bf16 values uniform in ±1/√`fan_in` from a linear congruential
/// generator.
fn uniform_bf16(count: usize, fan_in: usize) -> Vec<u8> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .flat_map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            half::bf16::from_f32((unit * 2.0 - 1.0) * bound).to_le_bytes()
        })
        .collect()
}
