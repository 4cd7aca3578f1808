//! Matrices cross to the device under test as stored and come out of its
//! expansion as the host's dequantization makes them: every kind of
//! `blocks.gguf`, NF4, and a Q8_0 matrix whose bytes end inside a word,
//! within 1 ulp. (On the cpu the matrices stay in host memory and the
//! expansion is the host's own widening.)

use std::sync::Arc;

use airllm_backends::{BackendJob, DeviceChoice};
use airllm_core::{BlockKind, ComputeBackend, HostBytes, HostTensor, Result, StorageKind};
use airllm_formats::GgufFile;
use airllm_tests::*;
use burn::tensor::backend::Backend;
use rand::{Rng, SeedableRng};

/// Each tensor's bytes uploaded and its values as the device expands them.
struct Expand(Vec<HostTensor>);

impl BackendJob for Expand {
    type Output = Vec<(u64, Vec<f32>)>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        self.0
            .iter()
            .map(|tensor| {
                let staged = backend.stage(tensor)?;
                let uploaded = staged.upload_bytes();
                let on_device = backend.upload(staged)?;
                let values = backend
                    .expand(&on_device)?
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32 values");
                Ok((uploaded, values))
            })
            .collect()
    }
}

/// Every tensor of `blocks.gguf` (one per GGML type read, `[2, 256]`).
fn gguf_blocks() -> Vec<HostTensor> {
    let path = fixtures_dir().join("gguf").join("blocks.gguf");
    let file = GgufFile::open(&path).unwrap();
    let bytes = std::fs::read(&file.path).unwrap();
    file.tensors
        .iter()
        .map(|t| HostTensor {
            name: t.name.clone(),
            kind: t.kind,
            shape: t.shape.clone(),
            bytes: HostBytes::from_vec(bytes[t.range.clone()].to_vec()),
        })
        .collect()
}

/// A `[rows, columns]` matrix of `kind` with random blocks whose leading
/// `scale_bytes` are the scale `scale` writes.
fn random_blocks(
    name: &str,
    kind: BlockKind,
    shape: [usize; 2],
    scale: impl Fn(&mut rand::rngs::StdRng) -> Vec<u8>,
) -> HostTensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let blocks = shape[0] * shape[1] / kind.block_len();
    let mut bytes = Vec::with_capacity(blocks * kind.block_bytes());
    for _ in 0..blocks {
        let scale = scale(&mut rng);
        bytes.extend_from_slice(&scale);
        bytes.extend((scale.len()..kind.block_bytes()).map(|_| rng.random::<u8>()));
    }
    HostTensor {
        name: name.into(),
        kind: StorageKind::Block(kind),
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    }
}

/// The distance between `value` and the next f32 away from zero.
fn ulp(value: f32) -> f32 {
    let magnitude = value.abs();
    f32::from_bits(magnitude.to_bits() + 1) - magnitude
}

#[test]
fn the_device_expands_every_encoding_as_the_host_does() {
    let mut tensors = gguf_blocks();
    tensors.push(random_blocks("nf4", BlockKind::NF4, [2, 128], |rng| {
        rng.random_range(0.01f32..4.0).to_le_bytes().to_vec()
    }));
    tensors.push(random_blocks("q8_0 odd", BlockKind::Q8_0, [1, 96], |rng| {
        half::f16::from_f32(rng.random_range(-0.1f32..0.1))
            .to_le_bytes()
            .to_vec()
    }));
    let expanded = on_test_device(Expand(tensors.clone())).unwrap();
    let device = test_device();
    for (tensor, (uploaded, values)) in tensors.iter().zip(&expanded) {
        let expected = tensor.to_f32().unwrap();
        assert_eq!(values.len(), expected.len(), "{}", tensor.name);
        assert!(expected.iter().any(|v| *v != 0.0), "{}", tensor.name);
        for (i, (ours, reference)) in values.iter().zip(&expected).enumerate() {
            assert!(
                (ours - reference).abs() <= ulp(*reference),
                "{} on {device}, value {i}: {ours} against {reference}",
                tensor.name
            );
        }
        let stored = tensor.bytes.len() as u64;
        let expected_upload = match (device, tensor.kind) {
            // The cpu computes on the mapped file: nothing is uploaded.
            (DeviceChoice::Cpu, _) => 0,
            // f32 crosses as f32; everything else as stored, in whole words.
            _ => stored.div_ceil(4) * 4,
        };
        assert_eq!(
            *uploaded, expected_upload,
            "{} ({:?}) on {device}: bytes uploaded",
            tensor.name, tensor.kind
        );
    }
}
