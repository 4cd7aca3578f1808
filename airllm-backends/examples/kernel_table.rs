//! Times the cpu kernel; prints JSON lines.
//!
//! `cargo run --release -p airllm-backends --example kernel_table -- table`:
//! `x · wᵀ` for w `[8192, 2048]` (f32 and bf16) and x `[m, 2048]`, m = 1, 4,
//! 16, 64, 512, in ms (f32 activations; `reduced_ms`: the default reduced
//! precision, AMX where the CPU has it), beside burn flex's f32 matmul on the same shapes
//! (numpy's figures come from `kernel_table_numpy.py`).
//!
//! `... -- crossover`: every path at 1 to 16 (and 24 to 512) rows on SmolLM2's MLP down projection
//! `[576, 1536]` in f32, bf16, Q8_0, Q4_1, Q4_K and NF4, to place the row counts
//! where one path overtakes another. Names after `crossover` (`Q4_1`,
//! `BF16`, ...) keep only those encodings.
//!
//! `... -- widen`: the host widening that feeds wgpu and cuda
//! (`BurnBackend::stage`, on the reader thread) of a `[8192, 2048]` matrix in
//! bf16, f16 and every block kind, in ms and GB/s of f32 written.
//!
//! Threads: a rayon pool of `RAYON_NUM_THREADS` (default: every CPU); the
//! calls of both modes are made from inside it, as the engine makes them.
use std::sync::Arc;
use std::time::Instant;

use airllm_backends::cpu::kernel::{linear, linear_on, KernelPath};
use airllm_backends::{Activations, BurnBackend};
use airllm_core::{BlockKind, ComputeBackend, DType, HostBytes, HostTensor, StorageKind};
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::{Tensor, TensorData};

/// Milliseconds per call of `f`: the best of five rounds, each at least 0.2 s.
fn time_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let (start, mut calls) = (Instant::now(), 0u32);
        while calls == 0 || start.elapsed().as_secs_f64() < 0.2 {
            f();
            calls += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e3 / f64::from(calls));
    }
    best
}

fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| {
            ((i.wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 - 1000.0) / 10_000.0
        })
        .collect()
}

/// A `[outputs, columns]` matrix of `kind` (block kinds: arbitrary quants,
/// scales of 0.01, NF4 maximums of 0.05).
fn matrix(kind: StorageKind, outputs: usize, columns: usize) -> HostTensor {
    let v = values(outputs * columns, 3);
    let bytes: Vec<u8> = match kind {
        StorageKind::Dense(DType::F32) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        StorageKind::Dense(DType::BF16) => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        StorageKind::Dense(DType::F16) => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        StorageKind::Block(block) => {
            let count = outputs * columns / block.block_len() * block.block_bytes();
            let mut bytes: Vec<u8> = (0..count).map(|i| (i * 7919 % 251) as u8).collect();
            let (offsets, width) = block.float_factors();
            let scale = match width {
                4 => 0.05f32.to_le_bytes().to_vec(),
                _ => half::f16::from_f32(0.01).to_le_bytes().to_vec(),
            };
            for chunk in bytes.chunks_exact_mut(block.block_bytes()) {
                for &a in offsets {
                    chunk[a..a + width].copy_from_slice(&scale);
                }
            }
            bytes
        }
    };
    HostTensor {
        name: "w".into(),
        kind,
        shape: vec![outputs, columns],
        bytes: in_huge_pages(&bytes),
    }
}

/// `bytes` in an anonymous map advised for transparent huge pages, as the
/// engine holds weights (a weight file that stays cached is mapped in 2 MiB
/// folios) and as numpy allocates arrays of 4 MiB and more, so that the
/// table compares kernels rather than page sizes: numpy's own f32 product at
/// one row took 1.42 ms in huge pages against 1.76–2.25 with them turned
/// off (`numpy._core.multiarray._set_madvise_hugepage(False)`).
fn in_huge_pages(bytes: &[u8]) -> HostBytes {
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).expect("anonymous map");
    // A hint; without transparent huge pages the map keeps 4 KiB pages.
    let _ = map.advise(memmap2::Advice::HugePage);
    map.copy_from_slice(bytes);
    let map = map.make_read_only().expect("read-only map");
    HostBytes::new(Arc::new(map), 0..bytes.len()).expect("whole map")
}

fn table() {
    let (n, k) = (8192, 2048);
    let device = FlexDevice;
    // burn's matmul gets w already transposed and contiguous, `[k, n]`.
    let transposed =
        Tensor::<Flex, 2>::from_data(TensorData::new(values(n * k, 3), [n, k]), &device)
            .transpose()
            .into_data();
    let wt = Tensor::<Flex, 2>::from_data(transposed.convert::<f32>(), &device);
    for (label, kind) in [
        ("f32", StorageKind::Dense(DType::F32)),
        ("bf16", StorageKind::Dense(DType::BF16)),
    ] {
        let w = matrix(kind, n, k);
        for m in [1, 4, 16, 64, 512] {
            let x = values(m * k, 5);
            let ours = time_ms(|| {
                std::hint::black_box(linear(&x, m, &w, Activations::F32).unwrap());
            });
            let reduced = time_ms(|| {
                std::hint::black_box(linear(&x, m, &w, Activations::Reduced).unwrap());
            });
            let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let flex = time_ms(|| {
                std::hint::black_box(xt.clone().matmul(wt.clone()).into_data());
            });
            println!(
                "{{\"weights\":\"{label}\",\"m\":{m},\"k\":{k},\"n\":{n},\"kernel_ms\":{ours:.3},\"reduced_ms\":{reduced:.3},\"flex_f32_matmul_ms\":{flex:.3}}}"
            );
        }
    }
}

fn crossover() {
    let (n, k) = (576, 1536);
    let kinds = [
        StorageKind::Dense(DType::F32),
        StorageKind::Dense(DType::BF16),
        StorageKind::Block(BlockKind::Q8_0),
        StorageKind::Block(BlockKind::Q4_1),
        StorageKind::Block(BlockKind::Q4_K),
        StorageKind::Block(BlockKind::NF4),
    ];
    let only: Vec<String> = std::env::args().skip(2).collect();
    for kind in kinds {
        if !only.is_empty() && !only.contains(&kind.to_string()) {
            continue;
        }
        let w = matrix(kind, n, k);
        for m in (1..=16).chain([24, 32, 48, 64, 128, 256, 512]) {
            let x = values(m * k, 5);
            let mut row = format!("{{\"weights\":\"{kind}\",\"m\":{m}");
            for path in [
                KernelPath::Quantized,
                KernelPath::FloatRows,
                KernelPath::Panel,
                KernelPath::Tiles,
                KernelPath::Amx,
            ] {
                if path == KernelPath::Quantized && matches!(kind, StorageKind::Dense(_)) {
                    continue;
                }
                let ms = time_ms(|| {
                    std::hint::black_box(linear_on(path, &x, m, &w).unwrap());
                });
                row += &format!(",\"{path:?}_us\":{:.1}", ms * 1e3);
            }
            println!("{row}}}");
        }
    }
}

fn widen() {
    let (n, k) = (8192, 2048);
    let backend = BurnBackend::<Flex>::new(FlexDevice, "flex".into());
    let kinds = [DType::BF16, DType::F16]
        .map(StorageKind::Dense)
        .into_iter()
        .chain(BlockKind::ALL.map(StorageKind::Block));
    for kind in kinds {
        let w = matrix(kind, n, k);
        let ms = time_ms(|| {
            std::hint::black_box(backend.stage(&w).unwrap());
        });
        let gb_per_s = (n * k * 4) as f64 / ms / 1e6;
        println!("{{\"weights\":\"{kind}\",\"stage_ms\":{ms:.2},\"f32_gb_per_s\":{gb_per_s:.2}}}");
    }
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    match std::env::args().nth(1).as_deref() {
        Some("crossover") => pool.install(crossover),
        Some("widen") => widen(),
        Some("table") | None => pool.install(table),
        Some(other) => eprintln!("unknown mode `{other}`; use table, crossover or widen"),
    }
}
