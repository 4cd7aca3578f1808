//! The KV cache: per layer, keys and values `[batch, kv_heads, tokens, head_dim]`
//! on the compute device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// One layer's cached keys and values.
pub struct KvSlot<B: Backend> {
    entries: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> Default for KvSlot<B> {
    fn default() -> Self {
        KvSlot { entries: None }
    }
}

impl<B: Backend> KvSlot<B> {
    /// Appends this pass's keys and values; returns the whole cached keys and
    /// values to attend over.
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.entries.take() {
            Some((pk, pv)) => (
                Tensor::cat(vec![pk, keys], 2),
                Tensor::cat(vec![pv, values], 2),
            ),
            None => (keys, values),
        };
        self.entries = Some((k.clone(), v.clone()));
        (k, v)
    }

    fn retain_rows(&mut self, rows: &Tensor<B, 1, Int>) {
        if let Some((k, v)) = self.entries.take() {
            self.entries = Some((k.select(0, rows.clone()), v.select(0, rows.clone())));
        }
    }
}

/// The cache of every layer for one batch of sequences.
pub struct KvCache<B: Backend> {
    slots: Vec<KvSlot<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        KvCache {
            slots: (0..layers).map(|_| KvSlot::default()).collect(),
        }
    }

    /// Layer `index`'s slot.
    pub fn slot(&mut self, index: usize) -> &mut KvSlot<B> {
        &mut self.slots[index]
    }

    /// Keeps only the batch rows listed in `rows` (sequences still running).
    pub fn retain_rows(&mut self, rows: &[usize], device: &B::Device) {
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [rows.len()]), device);
        for slot in &mut self.slots {
            slot.retain_rows(&index);
        }
    }
}
