//! The cpu backend: burn's flex device with the host's own operations
//! behind `ComputeBackend` (see the module above for what each one does).

use airllm_core::backend::{DeviceTensor, RowKeys, StagedTensor};
use airllm_core::{ComputeBackend, Error, HostTensor, Result, WeightLayout};
use burn::backend::flex::{Flex, FlexDevice, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use super::{attention, elementwise, kernel, norm, rope};
use crate::Activations;

/// Matrices stay in their stored encoding (see [`CpuBackend::stage`]).
pub const CPU_WEIGHT_LAYOUT: WeightLayout = WeightLayout::MatricesAsStored;

/// burn's flex device with the matrix-product kernel of [`kernel`].
pub struct CpuBackend {
    device: FlexDevice,
    activations: Activations,
}

impl CpuBackend {
    /// The CPU device, quantizing activations for block-quantized weights
    /// as `activations` says.
    pub fn new(activations: Activations) -> Self {
        CpuBackend {
            device: FlexDevice,
            activations,
        }
    }

    /// `x: [batch, heads, seq, dim]` rotated on the host by `rotate`, with
    /// tables `[batch, 1, seq, dim / dims_per_entry]`.
    fn rotate(
        &self,
        x: Tensor<Flex, 4>,
        cos: &Tensor<Flex, 4>,
        sin: &Tensor<Flex, 4>,
        dims_per_entry: usize,
        rotate: rope::RotateRows,
    ) -> Result<Tensor<Flex, 4>> {
        let dims = x.dims();
        let [batch, heads, seq, dim] = dims;
        let table = [batch, 1, seq, dim / dims_per_entry];
        if cos.dims() != table || sin.dims() != table || dim % 2 == 1 {
            return Err(Error::Backend(format!(
                "rotary tables {:?} do not fit queries or keys {dims:?}",
                cos.dims()
            )));
        }
        let mut values = host_values(x, "queries or keys")?;
        let cos = HostView::of(cos, "the rotary cos table")?;
        let sin = HostView::of(sin, "the rotary sin table")?;
        rotate(&mut values, [heads, seq, dim], cos.values(), sin.values());
        Ok(Tensor::from_data(
            TensorData::new(values, dims),
            &self.device,
        ))
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new(Activations::default())
    }
}

impl ComputeBackend<Flex> for CpuBackend {
    fn device(&self) -> &FlexDevice {
        &self.device
    }

    fn name(&self) -> String {
        "cpu".into()
    }

    fn default_budget(&self) -> u64 {
        airllm_core::memory::default_host_budget()
    }

    fn computes_in_host_memory(&self) -> bool {
        true
    }

    fn weight_layout(&self) -> WeightLayout {
        CPU_WEIGHT_LAYOUT
    }

    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        match (tensor.shape.len(), tensor.kind) {
            (2, _) => Ok(StagedTensor::Host(tensor.clone())),
            _ => crate::stage_widened(tensor),
        }
    }

    fn attention(
        &self,
        q: Tensor<Flex, 4>,
        keys: Tensor<Flex, 4>,
        values: Tensor<Flex, 4>,
        bias: &Tensor<Flex, 4>,
        scale: f64,
    ) -> Result<Tensor<Flex, 4>> {
        let [batch, heads, seq, head_dim] = q.dims();
        let (key_view, value_view, kv_room) = kv_views(&keys, &values)?;
        let shape = attention_shape(q.dims(), &keys, kv_room, bias);
        let out = attention::attention(
            HostView::of(&q, "queries")?.values(),
            key_view.values(),
            value_view.values(),
            HostView::of(bias, "the attention bias")?.values(),
            shape,
            scale as f32,
        )?;
        // Laid out `[batch, seq, heads, head_dim]` and seen as `[batch,
        // heads, seq, head_dim]`: the blocks' swap back to positions first
        // is then contiguous, and the output projection reads it in place.
        Ok(Tensor::from_data(
            TensorData::new(out, [batch, seq, heads, head_dim]),
            &self.device,
        )
        .swap_dims(1, 2))
    }

    fn row_attention(
        &self,
        q: Tensor<Flex, 4>,
        rows: Vec<RowKeys<'_, Flex>>,
        scale: f64,
    ) -> Result<Tensor<Flex, 3>> {
        let [_, heads, tokens, head_dim] = q.dims();
        // The projections wrote the queries as `[tokens, heads, head_dim]`.
        let packed = HostView::of(&q.swap_dims(1, 2), "queries")?;
        let packed = packed.values();
        let mut inputs = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = row.queries.len();
            let mut queries = vec![0.0f32; heads * seq * head_dim];
            for (i, position) in row.queries.clone().enumerate() {
                for head in 0..heads {
                    let from = (position * heads + head) * head_dim;
                    let to = (head * seq + i) * head_dim;
                    queries[to..to + head_dim].copy_from_slice(&packed[from..from + head_dim]);
                }
            }
            let (keys, values, kv_room) = kv_views(&row.keys, &row.values)?;
            let bias = HostView::of(row.bias, "the attention bias")?;
            let shape = attention_shape([1, heads, seq, head_dim], &row.keys, kv_room, row.bias);
            inputs.push((queries, keys, values, bias, shape));
        }
        let problems: Vec<attention::Problem> = inputs
            .iter()
            .map(|(q, keys, values, bias, shape)| attention::Problem {
                q,
                keys: keys.values(),
                values: values.values(),
                bias: bias.values(),
                shape: *shape,
            })
            .collect();
        // Each output is `[1, seq, heads, head_dim]`: in row order they
        // are the packed `[1, tokens, heads · head_dim]`.
        let out = attention::attention_many(&problems, scale as f32)?.concat();
        Ok(Tensor::from_data(
            TensorData::new(out, [1, tokens, heads * head_dim]),
            &self.device,
        ))
    }

    fn rms_norm(
        &self,
        x: Tensor<Flex, 3>,
        weight: &Tensor<Flex, 1>,
        eps: f64,
    ) -> Result<Tensor<Flex, 3>> {
        let dims = x.dims();
        if weight.dims()[0] != dims[2] {
            return Err(Error::Backend(format!(
                "an RMSNorm scale of {} values for rows of {}",
                weight.dims()[0],
                dims[2]
            )));
        }
        let mut values = host_values(x, "activations")?;
        let weight = HostView::of(weight, "the norm scale")?;
        norm::rms_norm(&mut values, weight.values(), eps as f32);
        Ok(Tensor::from_data(
            TensorData::new(values, dims),
            &self.device,
        ))
    }

    fn gated_silu(&self, gate: Tensor<Flex, 3>, up: Tensor<Flex, 3>) -> Result<Tensor<Flex, 3>> {
        let dims = gate.dims();
        if up.dims() != dims {
            return Err(Error::Backend(format!(
                "an MLP gate of shape {dims:?} and an up projection of shape {:?}",
                up.dims()
            )));
        }
        let mut values = host_values(gate, "the MLP gate")?;
        let up = HostView::of(&up, "the MLP up projection")?;
        elementwise::gated_silu(&mut values, up.values());
        Ok(Tensor::from_data(
            TensorData::new(values, dims),
            &self.device,
        ))
    }

    fn rotate_halves(
        &self,
        x: Tensor<Flex, 4>,
        cos: &Tensor<Flex, 4>,
        sin: &Tensor<Flex, 4>,
    ) -> Result<Tensor<Flex, 4>> {
        self.rotate(x, cos, sin, 1, rope::rotate_halves)
    }

    fn rotate_pairs(
        &self,
        x: Tensor<Flex, 4>,
        cos: &Tensor<Flex, 4>,
        sin: &Tensor<Flex, 4>,
    ) -> Result<Tensor<Flex, 4>> {
        self.rotate(x, cos, sin, 2, rope::rotate_pairs)
    }

    /// In place where the buffer is f32, contiguous and held only here (the
    /// KV cache's own buffer between steps); burn's `slice_assign` copies the
    /// whole buffer on every write.
    fn write_positions(
        &self,
        buffer: Tensor<Flex, 4>,
        at: usize,
        new: Tensor<Flex, 4>,
    ) -> Result<Tensor<Flex, 4>> {
        let [batch, heads, room, dim] = buffer.dims();
        let [new_batch, new_heads, added, new_dim] = new.dims();
        if [new_batch, new_heads, new_dim] != [batch, heads, dim] || at + added > room {
            return Err(Error::Backend(format!(
                "positions {at}..{} of shape {:?} do not fit a buffer {:?}",
                at + added,
                new.dims(),
                buffer.dims()
            )));
        }
        if added == 0 {
            return Ok(buffer);
        }
        let mut flex = buffer.into_primitive().tensor();
        let whole = flex.dtype() == DType::F32
            && flex.is_contiguous()
            && flex.layout().start_offset() == 0
            && flex.bytes().len() == batch * heads * room * dim * 4;
        if !(whole && flex.is_unique()) {
            let buffer = Tensor::from_primitive(TensorPrimitive::Float(flex));
            return Ok(buffer.slice_assign([0..batch, 0..heads, at..at + added, 0..dim], new));
        }
        let new = HostView::of(&new, "the positions written")?;
        let storage = flex.storage_mut::<f32>();
        for (block, rows) in new.values().chunks_exact(added * dim).enumerate() {
            let start = (block * room + at) * dim;
            storage[start..start + rows.len()].copy_from_slice(rows);
        }
        Ok(Tensor::from_primitive(TensorPrimitive::Float(flex)))
    }

    fn linear(&self, x: Tensor<Flex, 3>, w: &DeviceTensor<Flex>) -> Result<Tensor<Flex, 3>> {
        let DeviceTensor::Host(w) = w else {
            return Err(Error::Backend(
                "the cpu backend keeps matrices on the host".into(),
            ));
        };
        let [batch, seq, _] = x.dims();
        let (outputs, _) = kernel::matrix_shape(w)?;
        let input = HostView::of(&x, "activations")?;
        let product = kernel::linear(input.values(), batch * seq, w, self.activations)?;
        Ok(Tensor::from_data(
            TensorData::new(product, [batch, seq, outputs]),
            &self.device,
        ))
    }
}

/// The shape of attention for queries of dims `q` (`[batch, heads, seq,
/// head_dim]`) over `keys` whose blocks start `kv_room` positions apart,
/// with `bias`.
fn attention_shape(
    q: [usize; 4],
    keys: &Tensor<Flex, 4>,
    kv_room: usize,
    bias: &Tensor<Flex, 4>,
) -> attention::AttentionShape {
    let [batch, heads, seq, head_dim] = q;
    let [_, kv_heads, total, _] = keys.dims();
    attention::AttentionShape {
        batch,
        heads,
        kv_heads,
        seq,
        total,
        kv_room,
        head_dim,
        bias_heads: bias.dims()[1],
    }
}

/// Host views of a row's keys and values and the positions between the
/// starts of their (sequence, head) blocks: where they lie in the KV
/// cache's buffers, else copies.
fn kv_views(
    keys: &Tensor<Flex, 4>,
    values: &Tensor<Flex, 4>,
) -> Result<(HostView, HostView, usize)> {
    match (
        HostView::of_blocks(keys, "keys")?,
        HostView::of_blocks(values, "values")?,
    ) {
        ((keys, key_room), (values, value_room)) if key_room == value_room => {
            Ok((keys, values, key_room))
        }
        _ => Ok((
            HostView::copied(keys, "keys")?,
            HostView::copied(values, "values")?,
            keys.dims()[2],
        )),
    }
}

/// The values of a tensor in row-major order, read where they lie when the
/// tensor is contiguous f32 (the KV cache's keys and values are shared with
/// their slot, so `into_data` copied the whole cache twice per layer: once
/// out of the shared buffer, once to realign it), copied otherwise.
enum HostView {
    /// `values` of a flex tensor's storage.
    InPlace(FlexTensor, std::ops::Range<usize>),
    /// A copy.
    Copied(Vec<f32>),
}

impl HostView {
    /// The values of `tensor` (`what` names it in errors).
    fn of<const D: usize>(tensor: &Tensor<Flex, D>, what: &str) -> Result<Self> {
        let flex = tensor.clone().into_primitive().tensor();
        if flex.dtype() == DType::F32 && flex.is_contiguous() {
            let start = flex.layout().start_offset();
            let range = start..start + tensor.shape().num_elements();
            if range.end <= flex.storage::<f32>().len() {
                return Ok(HostView::InPlace(flex, range));
            }
        }
        Self::copied(tensor, what)
    }

    /// A copy of the values of `tensor`.
    fn copied<const D: usize>(tensor: &Tensor<Flex, D>, what: &str) -> Result<Self> {
        Ok(HostView::Copied(host_values(tensor.clone(), what)?))
    }

    /// The values of `tensor: [batch, heads, positions, dim]` and the
    /// positions from the start of one (sequence, head) block to the next:
    /// read where they lie when each block is contiguous and the blocks lie
    /// evenly apart (views of the KV cache's buffers, which have room for
    /// more positions), copied (and `positions` apart) otherwise.
    fn of_blocks(tensor: &Tensor<Flex, 4>, what: &str) -> Result<(Self, usize)> {
        let [batch, heads, positions, dim] = tensor.dims();
        let flex = tensor.clone().into_primitive().tensor();
        let strides: Vec<usize> = flex
            .layout()
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).unwrap_or(usize::MAX))
            .collect();
        let room = strides[1] / dim.max(1);
        let even = strides[3] == 1
            && strides[2] == dim
            && strides[1] == room * dim
            && room >= positions
            && (batch == 1 || strides[0] == heads * strides[1]);
        let blocks = batch * heads;
        if flex.dtype() == DType::F32 && even && blocks > 0 {
            let start = flex.layout().start_offset();
            let range = start..start + ((blocks - 1) * room + positions) * dim;
            if range.end <= flex.storage::<f32>().len() {
                return Ok((HostView::InPlace(flex, range), room));
            }
        }
        Ok((Self::copied(tensor, what)?, positions))
    }

    /// The values.
    fn values(&self) -> &[f32] {
        match self {
            HostView::InPlace(flex, range) => &flex.storage::<f32>()[range.clone()],
            HostView::Copied(values) => values,
        }
    }
}

/// The values of `tensor` in row-major order (`what` names it in errors).
fn host_values<const D: usize>(tensor: Tensor<Flex, D>, what: &str) -> Result<Vec<f32>> {
    if let Some(values) = gather_rows(&tensor.clone().into_primitive().tensor()) {
        return Ok(values);
    }
    tensor
        .into_data()
        .into_vec()
        .map_err(|e| Error::Backend(format!("reading {what}: {e:?}")))
}

/// The values of a strided f32 view whose last dimension is contiguous
/// (heads split from positions, a narrowed fused projection), copied a row
/// at a time; burn walks a view it cannot fold into two dimensions value by
/// value. `None` for other tensors, which burn copies.
fn gather_rows(flex: &FlexTensor) -> Option<Vec<f32>> {
    if flex.dtype() != DType::F32 || flex.is_contiguous() {
        return None;
    }
    let layout = flex.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    let (&row, outer) = shape.split_last()?;
    if strides.last() != Some(&1) || row == 0 {
        return None;
    }
    let steps: Vec<usize> = strides[..outer.len()]
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect::<Option<_>>()?;
    let storage = flex.storage::<f32>();
    let last = layout.start_offset()
        + outer
            .iter()
            .zip(&steps)
            .map(|(n, s)| n.saturating_sub(1) * s)
            .sum::<usize>();
    if last + row > storage.len() {
        return None;
    }
    let mut values = Vec::with_capacity(layout.num_elements());
    let mut index = vec![0usize; outer.len()];
    let mut at = layout.start_offset();
    for _ in 0..outer.iter().product::<usize>() {
        values.extend_from_slice(&storage[at..at + row]);
        // The next index, last dimension fastest.
        for d in (0..outer.len()).rev() {
            index[d] += 1;
            at += steps[d];
            if index[d] < outer[d] {
                break;
            }
            at -= outer[d] * steps[d];
            index[d] = 0;
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(shape: [usize; 4], from: f32) -> Tensor<Flex, 4> {
        let count = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..count).map(|i| from + i as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &FlexDevice)
    }

    fn values(t: Tensor<Flex, 4>) -> Vec<f32> {
        t.into_data().into_vec().unwrap()
    }

    #[test]
    fn positions_are_written_in_place_as_burn_writes_them() {
        let backend = CpuBackend::default();
        let new = counting([2, 3, 2, 4], 1000.0);
        let want = counting([2, 3, 5, 4], 0.0).slice_assign([0..2, 0..3, 1..3, 0..4], new.clone());
        let buffer = counting([2, 3, 5, 4], 0.0);
        let address = buffer.clone().into_primitive().tensor().bytes().as_ptr();
        let got = backend.write_positions(buffer, 1, new.clone()).unwrap();
        assert_eq!(
            got.clone().into_primitive().tensor().bytes().as_ptr(),
            address
        );
        assert_eq!(values(got), values(want.clone()));
        // A buffer still shared elsewhere is copied, not changed under its other holder.
        let shared = counting([2, 3, 5, 4], 0.0);
        let got = backend
            .write_positions(shared.clone(), 1, new.clone())
            .unwrap();
        assert_eq!(values(got), values(want));
        assert_eq!(values(shared), values(counting([2, 3, 5, 4], 0.0)));
        assert!(backend
            .write_positions(counting([2, 3, 5, 4], 0.0), 4, new)
            .is_err());
    }

    #[test]
    fn strided_views_are_gathered_as_burn_copies_them() {
        let heads_split = counting([2, 5, 3, 4], 0.0).swap_dims(1, 2);
        let narrowed = counting([2, 3, 4, 6], 0.0).narrow(3, 2, 3).narrow(1, 1, 2);
        let columns_strided = counting([1, 1, 3, 4], 0.0).swap_dims(2, 3);
        for view in [heads_split, narrowed] {
            let flex = view.clone().into_primitive().tensor();
            assert_eq!(gather_rows(&flex), Some(values(view)));
        }
        let flex = columns_strided.into_primitive().tensor();
        assert_eq!(gather_rows(&flex), None);
    }
}
