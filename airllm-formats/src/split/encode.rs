//! What a split writes for each tensor: the encoding its settings give it
//! (with the fallbacks for rows that are not whole blocks) and the
//! conversion into it.

use airllm_core::{BlockKind, DType, HostBytes, HostTensor, StorageKind, TensorInfo, UnitKind};

use super::settings::{float_target, Compression, EndStorage, StorageSettings};

/// Where a tensor sits, as far as its encoding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The token embedding table.
    Embedding,
    /// The output head's matrix.
    Head,
    /// A matrix that is multiplied (attention, MLP, experts, head).
    Matrix,
    /// A matrix kept in a float dtype whatever the compression (a MoE
    /// router, whose logits pick the experts).
    Router,
    /// A vector (norm scale, bias).
    Vector,
}

impl Role {
    /// The role of `tensor` in a unit of `unit` kind; `router` says the
    /// layout marked it as a router.
    pub fn of(unit: UnitKind, tensor: &TensorInfo, router: bool) -> Role {
        match (tensor.shape.len(), unit) {
            (2, UnitKind::Embedding) => Role::Embedding,
            (2, UnitKind::Head) => Role::Head,
            (2, _) if router => Role::Router,
            (2, _) => Role::Matrix,
            _ => Role::Vector,
        }
    }
}

/// A float dtype for a tensor of `kind`: its own, f32 for blocks.
fn own_float(kind: StorageKind) -> DType {
    match kind {
        StorageKind::Dense(dtype) => dtype,
        StorageKind::Block(_) => DType::F32,
    }
}

/// The encoding `settings` ask for a tensor of `role` stored as `tensor`,
/// before any fallback ([`target`] applies those).
pub fn wanted(settings: StorageSettings, role: Role, tensor: &TensorInfo) -> StorageKind {
    let float = float_target(settings.compression).unwrap_or(own_float(tensor.kind));
    match (role, settings.compression) {
        (_, Compression::F32) => StorageKind::Dense(DType::F32),
        (Role::Vector, Compression::Keep) => tensor.kind,
        (Role::Vector, _) => StorageKind::Dense(own_float(tensor.kind)),
        (Role::Router, Compression::Blocks(_)) => StorageKind::Dense(own_float(tensor.kind)),
        (Role::Embedding | Role::Head, _) => match end_storage(settings, role) {
            EndStorage::Q8_0 => StorageKind::Block(BlockKind::Q8_0),
            EndStorage::Dense => StorageKind::Dense(float),
            EndStorage::Same => matrix_kind(settings.compression, tensor),
        },
        (Role::Router | Role::Matrix, _) => matrix_kind(settings.compression, tensor),
    }
}

/// The settings of the end `role` is (the embedding or the head).
fn end_storage(settings: StorageSettings, role: Role) -> EndStorage {
    match role {
        Role::Head => settings.head,
        _ => settings.embedding,
    }
}

/// The encoding `compression` gives a multiplied matrix stored as `tensor`.
fn matrix_kind(compression: Compression, tensor: &TensorInfo) -> StorageKind {
    match compression {
        Compression::Keep => tensor.kind,
        Compression::F32 => StorageKind::Dense(DType::F32),
        Compression::Bf16 => StorageKind::Dense(DType::BF16),
        Compression::Blocks(kind) => StorageKind::Block(kind),
    }
}

/// The encoding a tensor is written in: [`wanted`], where each row is whole
/// blocks of it (the product and the embedding gather take whole blocks per
/// row); otherwise Q4_K and NF4 fall back to Q4_1, and then every kind to a
/// float dtype.
pub fn target(settings: StorageSettings, role: Role, tensor: &TensorInfo) -> StorageKind {
    let float = float_target(settings.compression).unwrap_or(own_float(tensor.kind));
    let columns = tensor.shape.last().copied().unwrap_or(0);
    let mut kind = wanted(settings, role, tensor);
    while let StorageKind::Block(block) = kind {
        if columns.is_multiple_of(block.block_len()) {
            break;
        }
        kind = match block {
            BlockKind::Q4_K | BlockKind::NF4 => StorageKind::Block(BlockKind::Q4_1),
            _ => StorageKind::Dense(float),
        };
    }
    kind
}

/// Why a tensor could not be written in its encoding.
#[derive(Debug)]
pub enum EncodeError {
    /// Its values could not be decoded.
    Decode(airllm_core::Error),
    /// A value is not finite where a scale must represent it.
    NonFinite(String),
    /// The quantizer refused the values.
    Quantize(airllm_compress::QuantizeError),
}

/// `tensor` re-encoded as `target` (the same bytes when it already is).
pub fn encode(tensor: HostTensor, target: StorageKind) -> Result<HostTensor, EncodeError> {
    if tensor.kind == target {
        if let StorageKind::Block(_) = target {
            if let Some(block) = target.first_non_finite(tensor.bytes.as_slice()) {
                return Err(EncodeError::NonFinite(format!(
                    "block {block} has a scale that is not finite"
                )));
            }
        }
        return Ok(tensor);
    }
    let values = tensor.to_f32().map_err(EncodeError::Decode)?;
    let bytes: Vec<u8> = match target {
        StorageKind::Dense(DType::F32) => bytemuck::cast_slice(&values).to_vec(),
        StorageKind::Dense(DType::BF16) => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        StorageKind::Dense(DType::F16) => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        StorageKind::Block(kind) => {
            airllm_compress::quantize(kind, &values).map_err(EncodeError::Quantize)?
        }
    };
    Ok(HostTensor {
        kind: target,
        bytes: HostBytes::from_vec(bytes),
        ..tensor
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: StorageKind, shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: "w".into(),
            kind,
            shape: shape.to_vec(),
        }
    }

    const BF16: StorageKind = StorageKind::Dense(DType::BF16);
    const F32: StorageKind = StorageKind::Dense(DType::F32);

    fn blocks(kind: BlockKind) -> StorageKind {
        StorageKind::Block(kind)
    }

    #[test]
    fn each_role_takes_its_encoding() {
        let q4k = StorageSettings::new(Compression::Blocks(BlockKind::Q4_K), None);
        let matrix = info(BF16, &[64, 512]);
        assert_eq!(target(q4k, Role::Matrix, &matrix), blocks(BlockKind::Q4_K));
        assert_eq!(
            target(q4k, Role::Embedding, &matrix),
            blocks(BlockKind::Q8_0)
        );
        assert_eq!(target(q4k, Role::Router, &matrix), BF16);
        assert_eq!(target(q4k, Role::Head, &matrix), blocks(BlockKind::Q8_0));
        let same_head = q4k.with_head(Some(EndStorage::Same));
        assert_eq!(
            target(same_head, Role::Head, &matrix),
            blocks(BlockKind::Q4_K)
        );
        let dense_head = q4k.with_head(Some(EndStorage::Dense));
        assert_eq!(target(dense_head, Role::Head, &matrix), BF16);
        assert_eq!(target(q4k, Role::Vector, &info(BF16, &[512])), BF16);
        let keep = StorageSettings::default();
        let gguf = info(blocks(BlockKind::Q4_1), &[64, 512]);
        assert_eq!(target(keep, Role::Matrix, &gguf), gguf.kind);
        assert_eq!(target(keep, Role::Embedding, &gguf), gguf.kind);
        let f32 = StorageSettings::new(Compression::F32, None);
        assert_eq!(target(f32, Role::Matrix, &gguf), F32);
        assert_eq!(target(f32, Role::Vector, &info(BF16, &[512])), F32);
        let bf16 = StorageSettings::new(Compression::Bf16, Some(EndStorage::Dense));
        assert_eq!(target(bf16, Role::Matrix, &gguf), BF16);
        assert_eq!(target(bf16, Role::Embedding, &gguf), BF16);
        assert_eq!(target(bf16, Role::Vector, &info(F32, &[512])), F32);
    }

    /// SmolLM2's rows are 576 wide: 18 blocks of 32 and 9 of 64, not
    /// whole blocks of 256; rows of 96 are not whole blocks of 64.
    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        let odd = info(BF16, &[64, 100]);
        for (kind, width) in [(BlockKind::Q4_K, 576), (BlockKind::NF4, 96)] {
            let settings = StorageSettings::new(Compression::Blocks(kind), None);
            let matrix = info(BF16, &[1536, width]);
            assert_eq!(
                target(settings, Role::Matrix, &matrix),
                blocks(BlockKind::Q4_1)
            );
            assert_eq!(target(settings, Role::Matrix, &odd), BF16);
        }
        let nf4 = StorageSettings::new(Compression::Blocks(BlockKind::NF4), None);
        assert_eq!(
            target(nf4, Role::Matrix, &info(BF16, &[64, 640])),
            blocks(BlockKind::NF4)
        );
        let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
        assert_eq!(target(q8, Role::Embedding, &odd), BF16);
    }

    #[test]
    fn encoding_converts_and_names_bad_values() {
        let values: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let tensor = HostTensor {
            name: "w".into(),
            kind: F32,
            shape: vec![1, 64],
            bytes: HostBytes::from_vec(bytemuck::cast_slice(&values).to_vec()),
        };
        let q8 = encode(tensor.clone(), blocks(BlockKind::Q8_0)).unwrap();
        assert_eq!(q8.bytes.len(), 68);
        let back = encode(q8, F32).unwrap().to_f32().unwrap();
        assert!(back.iter().zip(&values).all(|(b, v)| (b - v).abs() < 0.005));
        let mut bad = values.clone();
        bad[3] = f32::INFINITY;
        let bad = HostTensor {
            bytes: HostBytes::from_vec(bytemuck::cast_slice(&bad).to_vec()),
            ..tensor
        };
        assert!(matches!(
            encode(bad, blocks(BlockKind::NF4)),
            Err(EncodeError::Quantize(
                airllm_compress::QuantizeError::NonFinite { index: 3, .. }
            ))
        ));
    }
}
