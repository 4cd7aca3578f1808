//! [`ComputeBackend`]: where to compute. Owns the burn device, the compute
//! dtype and the way host bytes become device tensors; the linear op goes
//! through it so a faster kernel can replace burn's matmul per device.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::{Error, HostTensor, Result, StorageKind, WeightLayout};

/// The dtype activations and weights are computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ComputeDType {
    /// 32-bit floats (the default).
    #[default]
    F32,
    /// 16-bit IEEE floats.
    F16,
    /// bfloat16.
    BF16,
}

impl ComputeDType {
    /// burn's dtype of the same name.
    pub fn burn_dtype(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::F16 => DType::F16,
            ComputeDType::BF16 => DType::BF16,
        }
    }

    /// Bytes a value takes.
    pub fn bytes(self) -> u64 {
        match self {
            ComputeDType::F32 => 4,
            ComputeDType::F16 | ComputeDType::BF16 => 2,
        }
    }
}

impl std::fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComputeDType::F32 => "f32",
            ComputeDType::F16 => "f16",
            ComputeDType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for ComputeDType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ComputeDType::F32),
            "f16" | "float16" => Ok(ComputeDType::F16),
            "bf16" | "bfloat16" => Ok(ComputeDType::BF16),
            _ => Err(format!("unknown dtype `{s}`; use f32, f16 or bf16")),
        }
    }
}

/// A tensor prepared on the reader thread, ready to upload, so the compute
/// thread only hands it to the device.
#[derive(Clone, Debug)]
pub enum StagedTensor {
    /// Decoded values with their shape.
    Decoded {
        /// Tensor name.
        name: String,
        /// The values.
        data: TensorData,
    },
    /// Kept in its stored encoding for a backend that computes on it directly.
    Host(HostTensor),
    /// A matrix's stored bytes as little-endian u32 words (the last one
    /// padded with zeros), for a device that expands them itself.
    Encoded {
        /// Tensor name.
        name: String,
        /// The encoding of the bytes.
        kind: StorageKind,
        /// `[out, in]`.
        shape: [usize; 2],
        /// The words, `u32` data.
        words: TensorData,
    },
}

impl StagedTensor {
    /// Decodes `tensor` to f32 data with the portable decoding
    /// ([`HostTensor::to_f32`]).
    pub fn decode(tensor: &HostTensor) -> Result<Self> {
        Ok(StagedTensor::decoded(tensor, tensor.to_f32()?))
    }

    /// Bytes this tensor puts on the device when uploaded (none for one
    /// that stays in host memory).
    pub fn upload_bytes(&self) -> u64 {
        match self {
            StagedTensor::Decoded { data, .. } | StagedTensor::Encoded { words: data, .. } => {
                data.bytes.len() as u64
            }
            StagedTensor::Host(_) => 0,
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        match self {
            StagedTensor::Decoded { name, .. } | StagedTensor::Encoded { name, .. } => name,
            StagedTensor::Host(host) => &host.name,
        }
    }

    /// Matrix `tensor` as stored, packed into little-endian u32 words.
    pub fn encoded(tensor: &HostTensor) -> Result<Self> {
        let [rows, columns] = tensor.shape[..] else {
            return Err(Error::Backend(format!(
                "tensor `{}` is not a matrix",
                tensor.name
            )));
        };
        let bytes = tensor.bytes.as_slice();
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|chunk| {
                let mut word = [0u8; 4];
                word[..chunk.len()].copy_from_slice(chunk);
                u32::from_le_bytes(word)
            })
            .collect();
        let count = words.len();
        Ok(StagedTensor::Encoded {
            name: tensor.name.clone(),
            kind: tensor.kind,
            shape: [rows, columns],
            words: TensorData::new(words, [count]),
        })
    }

    /// `values`, the f32 values of `tensor` as a backend decoded them (with
    /// its own vector code, say), under the tensor's name and shape.
    pub fn decoded(tensor: &HostTensor, values: Vec<f32>) -> Self {
        StagedTensor::Decoded {
            name: tensor.name.clone(),
            data: TensorData::new(values, tensor.shape.clone()),
        }
    }
}

/// A weight ready for compute.
#[derive(Clone, Debug)]
pub enum DeviceTensor<B: Backend> {
    /// A 1-D weight on the device (norm scales, biases).
    Vector(Tensor<B, 1>),
    /// A 2-D weight `[out, in]` on the device (projections, embeddings).
    Matrix(Tensor<B, 2>),
    /// A 2-D weight `[out, in]` left in host memory in its stored encoding
    /// (memory-mapped), for a backend whose linear op reads it directly.
    Host(HostTensor),
    /// A 2-D weight on the device in its stored encoding, expanded by the
    /// backend ([`ComputeBackend::expand`]) when used.
    Encoded(EncodedMatrix<B>),
}

/// A matrix on the device as its file stores it: the bytes as u32 words.
#[derive(Clone, Debug)]
pub struct EncodedMatrix<B: Backend> {
    /// Tensor name, for messages.
    pub name: String,
    /// The encoding of the bytes.
    pub kind: StorageKind,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// The stored bytes as little-endian u32 words (`DType::U32`).
    pub words: Tensor<B, 1, Int>,
}

impl<B: Backend> EncodedMatrix<B> {
    /// Uploads staged words as `u32` data on `device`.
    pub fn upload(
        name: String,
        kind: StorageKind,
        shape: [usize; 2],
        words: TensorData,
        device: &Device<B>,
    ) -> Self {
        EncodedMatrix {
            name,
            kind,
            shape,
            words: Tensor::from_data(words, (device, DType::U32)),
        }
    }
}

/// Matrix `w` as a device tensor: a device matrix as it is, a host one
/// widened on the host and uploaded to `device`; an encoded one is an error
/// (only the backend that uploaded it can expand it).
pub fn widened_matrix<B: Backend>(w: &DeviceTensor<B>, device: &Device<B>) -> Result<Tensor<B, 2>> {
    match w {
        DeviceTensor::Matrix(m) => Ok(m.clone()),
        DeviceTensor::Host(h) => Ok(Tensor::from_data(
            TensorData::new(h.to_f32()?, h.shape.clone()),
            device,
        )),
        DeviceTensor::Encoded(e) => Err(Error::Backend(format!(
            "no kernel of this device expands `{}` ({:?}) from its stored encoding",
            e.name, e.kind
        ))),
        DeviceTensor::Vector(_) => Err(Error::Backend("expected a matrix, not a vector".into())),
    }
}

/// `x · wᵀ` with burn's matmul, for activations `x: [batch, seq, in]` and a
/// device weight `w: [out, in]`.
fn matmul_linear<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, inner] = x.dims();
    let out = w.dims()[0];
    x.reshape([batch * seq, inner])
        .matmul(w.clone().transpose())
        .reshape([batch, seq, out])
}

/// [`ComputeBackend::rotate_halves`] in burn ops.
fn rotate_halves<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// [`ComputeBackend::rotate_pairs`] in burn ops.
fn rotate_pairs<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, heads, seq, dim] = x.dims();
    let pairs: Tensor<B, 5> = x.reshape([batch, heads, seq, dim / 2, 2]);
    let a = pairs.clone().narrow(4, 0, 1);
    let b = pairs.narrow(4, 1, 1);
    let cos: Tensor<B, 5> = cos.clone().unsqueeze_dim(4);
    let sin: Tensor<B, 5> = sin.clone().unsqueeze_dim(4);
    let first = a.clone() * cos.clone() - b.clone() * sin.clone();
    let second = b * cos + a * sin;
    Tensor::cat(vec![first, second], 4).reshape([batch, heads, seq, dim])
}

/// [`ComputeBackend::rms_norm`] in burn ops, accumulated in f32 and
/// scaled in the compute dtype, as transformers does in half precision.
fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean_square = x.clone().powi_scalar(2).mean_dim(2);
    let normed = x * mean_square.add_scalar(eps).sqrt().recip();
    normed.cast(dtype) * weight.clone().unsqueeze::<3>()
}

/// [`ComputeBackend::attention`] in burn ops: the query heads of each KV
/// head are stacked as rows of one matrix product with its keys.
fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    bias: &Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = q.dims();
    let [_, kv_heads, total, _] = keys.dims();
    let group = heads / kv_heads;
    let q_dtype = q.dtype();
    let q = q.reshape([batch, kv_heads, group * seq, head_dim]);
    let scores = q.matmul(keys.swap_dims(2, 3)).mul_scalar(scale);
    let scores = scores.reshape([batch, heads, seq, total]) + bias.clone();
    // The softmax in f32, its probabilities back in the compute dtype.
    let probs = softmax(scores.cast(DType::F32), 3).cast(q_dtype).reshape([
        batch,
        kv_heads,
        group * seq,
        total,
    ]);
    probs.matmul(values).reshape([batch, heads, seq, head_dim])
}

/// Rows `ids` of a device matrix, `[ids, columns]`.
fn select_rows<B: Backend>(table: &Tensor<B, 2>, ids: &[u32]) -> Tensor<B, 2> {
    let device = table.device();
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let count = ids.len();
    table.clone().select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [count]), &device),
    )
}

/// Rows `ids` of a host matrix, decoded to f32: `[ids, columns]`.
fn decode_rows(table: &HostTensor, ids: &[u32]) -> Result<(Vec<f32>, usize)> {
    let [rows, columns] = table.shape[..] else {
        return Err(Error::Backend(format!(
            "tensor `{}` is not a matrix",
            table.name
        )));
    };
    let mut out = vec![0.0; ids.len() * columns];
    for (row, &id) in out.chunks_mut(columns).zip(ids) {
        if id as usize >= rows {
            return Err(Error::Request(format!(
                "token id {id} is outside `{}` ({rows} rows)",
                table.name
            )));
        }
        table.decode_range(id as usize * columns, row)?;
    }
    Ok((out, columns))
}

/// One row's part of [`ComputeBackend::row_attention`].
pub struct RowKeys<'a, B: Backend> {
    /// Where the row's queries sit among the pass's tokens.
    pub queries: std::ops::Range<usize>,
    /// The row's cached and new keys, `[1, kv_heads, total, head_dim]`.
    pub keys: Tensor<B, 4>,
    /// Its values, shaped as the keys.
    pub values: Tensor<B, 4>,
    /// Its additive bias, `[1, 1 or heads, new, total]`.
    pub bias: &'a Tensor<B, 4>,
}

/// Where to compute: a burn device and the operations whose implementation
/// depends on it.
pub trait ComputeBackend<B: Backend>: Send + Sync {
    /// The burn device.
    fn device(&self) -> &Device<B>;

    /// A short name such as `cpu` or `wgpu:0`, for messages and reports.
    fn name(&self) -> String;

    /// Memory the device can give to the model when no budget is set.
    fn default_budget(&self) -> u64;

    /// Host memory for the host tier (staging, and units kept in host
    /// memory in their upload encoding between passes) when no host budget
    /// is set. By default none: the tier is used only when asked for.
    fn default_host_budget(&self) -> u64 {
        0
    }

    /// Whether the device computes in host memory itself (the cpu), so
    /// that a host tier apart from its budget means nothing.
    fn computes_in_host_memory(&self) -> bool {
        false
    }

    /// The dtype activations, weights and the KV cache are computed in
    /// (f32 by default).
    fn dtype(&self) -> ComputeDType {
        ComputeDType::F32
    }

    /// How uploaded weights are held (by default widened to f32).
    fn weight_layout(&self) -> WeightLayout {
        WeightLayout::Widened
    }

    /// Prepares a host tensor for upload; runs on the reader thread. By
    /// default every tensor is decoded to f32 here, by the portable decoding
    /// (a backend with vector decoding overrides it).
    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        StagedTensor::decode(tensor)
    }

    /// Hands staged data to the device; runs on the reader thread for
    /// streamed units (on the compute thread for resident ones). By default
    /// the data goes through the backend's staging (pinned memory where
    /// the device has it) and becomes a burn tensor.
    fn upload(&self, staged: StagedTensor) -> Result<DeviceTensor<B>> {
        let device = self.device();
        match staged {
            StagedTensor::Host(tensor) => Ok(DeviceTensor::Host(tensor)),
            StagedTensor::Decoded { name, mut data } => match data.shape.len() {
                2 => {
                    B::staging(std::iter::once(&mut data), device);
                    Ok(DeviceTensor::Matrix(Tensor::from_data(data, device)))
                }
                1 => Ok(DeviceTensor::Vector(Tensor::from_data(data, device))),
                rank => Err(Error::Backend(format!(
                    "tensor `{name}` has rank {rank}; only 1-D and 2-D weights are supported"
                ))),
            },
            StagedTensor::Encoded {
                name,
                kind,
                shape,
                mut words,
            } => {
                B::staging(std::iter::once(&mut words), device);
                Ok(DeviceTensor::Encoded(EncodedMatrix::upload(
                    name, kind, shape, words, device,
                )))
            }
        }
    }

    /// Matrix `w` as a device tensor in the compute dtype. By default
    /// [`widened_matrix`]; a backend that uploads encoded matrices expands
    /// them here.
    fn expand(&self, w: &DeviceTensor<B>) -> Result<Tensor<B, 2>> {
        widened_matrix(w, self.device())
    }

    /// Device bytes the runtime holds for work queued from the calling
    /// thread (reserved by its memory pools, in use or not), where the
    /// runtime can tell; `None` by default.
    fn memory_in_use(&self) -> Option<u64> {
        None
    }

    /// Makes the device memory the calling thread allocates from now on
    /// exact-sized (where the runtime pools memory in pages, a tensor gets
    /// a buffer of its own size, reused by the next tensor of that size
    /// until [`ComputeBackend::release_unused`]), so what the thread holds
    /// is what the residency plan counts. The engine asks it of its compute
    /// and reader threads; a no-op by default.
    fn allocate_exactly(&self) {}

    /// Gives back the device memory the calling thread's pools hold and no
    /// tensor uses (the engine asks after each unit's compute, and the
    /// reader after dropping each streamed unit, so buffers of one unit's
    /// sizes do not stay reserved beside the next's); a no-op by default.
    fn release_unused(&self) {}

    /// Waits until the work this thread queued on the device is done (a
    /// no-op where compute is synchronous, as on the cpu).
    fn sync(&self) -> Result<()> {
        B::sync(self.device())
            .map_err(|e| Error::Backend(format!("device `{}` failed: {e}", self.name())))
    }

    /// `x · wᵀ` for activations `x: [batch, seq, in]` and a weight `w: [out, in]`.
    /// The default multiplies with burn's matmul what [`ComputeBackend::expand`]
    /// makes of `w`.
    fn linear(&self, x: Tensor<B, 3>, w: &DeviceTensor<B>) -> Result<Tensor<B, 3>> {
        match w {
            DeviceTensor::Vector(_) => Err(Error::Backend("a linear op needs a matrix".into())),
            matrix => Ok(matmul_linear(x, &self.expand(matrix)?)),
        }
    }

    /// `softmax(q · kᵀ · scale + bias) · v` for queries `q: [batch, heads,
    /// seq, head_dim]` over `keys` and `values: [batch, kv_heads, total,
    /// head_dim]` (query head `h` reads KV head `h / (heads / kv_heads)`)
    /// with the additive `bias: [batch, 1 or heads, seq, total]`; returns
    /// `[batch, heads, seq, head_dim]`. The default is burn's matmul and
    /// softmax over the whole `[seq, total]` scores of the pass.
    fn attention(
        &self,
        q: Tensor<B, 4>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        bias: &Tensor<B, 4>,
        scale: f64,
    ) -> Result<Tensor<B, 4>> {
        Ok(grouped_attention(q, keys, values, bias, scale))
    }

    /// Attention of the rows of a pass, each over its own keys: `q: [1,
    /// heads, tokens, head_dim]` holds every row's queries packed, row
    /// after row (`rows[r].queries` says where); each row's keys, values and
    /// bias are as [`ComputeBackend::attention`] takes them. Returns `[1,
    /// tokens, heads · head_dim]`, each position's heads side by side. The
    /// default runs [`ComputeBackend::attention`] row by row.
    fn row_attention(
        &self,
        q: Tensor<B, 4>,
        rows: Vec<RowKeys<'_, B>>,
        scale: f64,
    ) -> Result<Tensor<B, 3>> {
        let [_, heads, tokens, head_dim] = q.dims();
        let mut outputs = Vec::with_capacity(rows.len());
        for row in rows {
            let queries = q.clone().narrow(2, row.queries.start, row.queries.len());
            let out = self.attention(queries, row.keys, row.values, row.bias, scale)?;
            outputs.push(out.swap_dims(1, 2));
        }
        let out = match outputs.len() {
            1 => outputs.pop().expect("one row"),
            _ => Tensor::cat(outputs, 1),
        };
        Ok(out.reshape([1, tokens, heads * head_dim]))
    }

    /// RMSNorm over the last dimension, `weight · x / sqrt(mean(x²) + eps)`,
    /// for `x: [batch, seq, width]`. The default is burn's ops.
    fn rms_norm(&self, x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Result<Tensor<B, 3>> {
        Ok(rms_norm(x, weight, eps))
    }

    /// The gated MLP's activation, `silu(gate) · up`, for `gate` and `up`
    /// of one shape. The default is burn's ops.
    fn gated_silu(&self, gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        Ok(burn::tensor::activation::silu(gate) * up)
    }

    /// Rotary positions in the "halves" layout: `x · cos + rotate(x) · sin`
    /// for `x: [batch, heads, seq, dim]` and tables `[batch, 1, seq, dim]`,
    /// where `rotate(x)` is `(-x₂, x₁)` of the two halves of each row. The
    /// default is burn's ops.
    fn rotate_halves(
        &self,
        x: Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        Ok(rotate_halves(x, cos, sin))
    }

    /// Rotary positions in the interleaved layout: each pair `(a, b)` of
    /// dims `2i, 2i + 1` becomes `(a cos − b sin, b cos + a sin)`, for `x:
    /// [batch, heads, seq, dim]` and tables `[batch, 1, seq, dim / 2]`. The
    /// default is burn's ops.
    fn rotate_pairs(
        &self,
        x: Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        Ok(rotate_pairs(x, cos, sin))
    }

    /// `buffer: [batch, heads, room, dim]` with positions `at..` replaced by
    /// `new: [batch, heads, added, dim]` (the KV cache's write). The default
    /// is burn's `slice_assign`.
    fn write_positions(
        &self,
        buffer: Tensor<B, 4>,
        at: usize,
        new: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        let [batch, heads, added, dim] = new.dims();
        Ok(buffer.slice_assign([0..batch, 0..heads, at..at + added, 0..dim], new))
    }

    /// Rows `ids` of an embedding table `[vocab, hidden]`: `[ids, hidden]`.
    fn embedding(&self, table: &DeviceTensor<B>, ids: &[u32]) -> Result<Tensor<B, 2>> {
        match table {
            DeviceTensor::Matrix(m) => Ok(select_rows(m, ids)),
            DeviceTensor::Encoded(_) => Ok(select_rows(&self.expand(table)?, ids)),
            DeviceTensor::Host(h) => {
                let (rows, columns) = decode_rows(h, ids)?;
                Ok(Tensor::from_data(
                    TensorData::new(rows, [ids.len(), columns]),
                    self.device(),
                ))
            }
            DeviceTensor::Vector(_) => Err(Error::Backend("an embedding needs a matrix".into())),
        }
    }
}
