//! The KV cache of one sequence: per layer, keys and values `[1, kv_heads,
//! positions, head_dim]` on the compute device, in buffers with room for the
//! sequence's whole length, so a decode step writes its one position in place
//! instead of copying the cache into a longer tensor. Each sequence owns its
//! cache, so sequences of a pass have their own lengths, and one that leaves
//! frees its room.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::{ComputeBackend, Result};

/// Positions added at once when a slot outgrows its room.
const GROWTH: usize = 64;

/// One layer's cached keys and values.
pub struct KvSlot<B: Backend> {
    entries: Option<Entries<B>>,
    /// Positions the buffers hold when first written.
    room: usize,
}

/// Key and value buffers `[batch, kv_heads, room, head_dim]`, the first
/// `len` positions written.
struct Entries<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> Entries<B> {
    /// Empty buffers of `room` positions shaped and typed like `keys` and `values`.
    fn empty(keys: &Tensor<B, 4>, values: &Tensor<B, 4>, room: usize) -> Self {
        let zeros = |t: &Tensor<B, 4>| t.clone().narrow(2, 0, 1).zeros_like().repeat_dim(2, room);
        Entries {
            keys: zeros(keys),
            values: zeros(values),
            len: 0,
        }
    }

    fn room(&self) -> usize {
        self.keys.dims()[2]
    }

    /// These entries in buffers of `room` positions.
    fn moved(self, backend: &dyn ComputeBackend<B>, room: usize) -> Result<Self> {
        let len = self.len;
        let empty = Entries::empty(&self.keys, &self.values, room);
        let (keys, values) = (self.keys.narrow(2, 0, len), self.values.narrow(2, 0, len));
        empty.write(backend, keys, values)
    }

    /// Writes `keys` and `values` after the positions written so far (which
    /// must leave room for them).
    fn write(
        self,
        backend: &dyn ComputeBackend<B>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> Result<Self> {
        let added = keys.dims()[2];
        Ok(Entries {
            keys: backend.write_positions(self.keys, self.len, keys)?,
            values: backend.write_positions(self.values, self.len, values)?,
            len: self.len + added,
        })
    }

    /// Views of the positions written.
    fn written(&self) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            self.keys.clone().narrow(2, 0, self.len),
            self.values.clone().narrow(2, 0, self.len),
        )
    }
}

impl<B: Backend> KvSlot<B> {
    fn with_room(room: usize) -> Self {
        KvSlot {
            entries: None,
            room,
        }
    }

    /// Appends this pass's keys and values (written by `backend`); returns
    /// the whole cached keys and values to attend over (views of the slot's
    /// buffers).
    pub fn append(
        &mut self,
        backend: &dyn ComputeBackend<B>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let added = keys.dims()[2];
        let entries = match self.entries.take() {
            Some(entries) if entries.len + added <= entries.room() => entries,
            Some(entries) => {
                let room = entries.len + added + GROWTH;
                entries.moved(backend, room)?
            }
            None => Entries::empty(&keys, &values, self.room.max(added)),
        };
        let entries = entries.write(backend, keys, values)?;
        let written = entries.written();
        self.entries = Some(entries);
        Ok(written)
    }
}

/// The cache of every layer for one sequence.
pub struct KvCache<B: Backend> {
    slots: Vec<KvSlot<B>>,
    positions: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers whose buffers make room for
    /// `positions` tokens when first written (the sequence's prompt and
    /// answer, as the residency plan budgets them); they grow if more come.
    pub fn new(layers: usize, positions: usize) -> Self {
        KvCache {
            slots: (0..layers).map(|_| KvSlot::with_room(positions)).collect(),
            positions: 0,
        }
    }

    /// Layer `index`'s slot.
    pub fn slot(&mut self, index: usize) -> &mut KvSlot<B> {
        &mut self.slots[index]
    }

    /// Positions cached (every layer's slot holds them once a pass has
    /// completed).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Records that a pass has written `added` more positions to every
    /// layer's slot.
    pub fn commit(&mut self, added: usize) {
        self.positions += added;
    }

    /// Forgets every position from `positions` on (drafted tokens the
    /// model rejected); the next pass writes over them.
    pub fn truncate(&mut self, positions: usize) {
        for slot in &mut self.slots {
            if let Some(entries) = slot.entries.as_mut() {
                entries.len = entries.len.min(positions);
            }
        }
        self.positions = self.positions.min(positions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::flex::{Flex, FlexDevice};
    use burn::tensor::TensorData;

    /// burn's ops for every backend op.
    struct BurnOps;

    impl ComputeBackend<Flex> for BurnOps {
        fn device(&self) -> &FlexDevice {
            &FlexDevice
        }

        fn name(&self) -> String {
            "burn".into()
        }

        fn default_budget(&self) -> u64 {
            0
        }
    }

    /// `[2, 1, count, 2]` values naming (sequence, position, dim) of the
    /// positions `start..start + count`.
    fn positions(start: usize, count: usize) -> Tensor<Flex, 4> {
        let values: Vec<f32> = (0..2)
            .flat_map(|b| {
                (start..start + count)
                    .flat_map(move |p| (0..2).map(move |d| (100 * b + 10 * p + d) as f32))
            })
            .collect();
        Tensor::from_data(TensorData::new(values, [2, 1, count, 2]), &FlexDevice)
    }

    fn values(t: Tensor<Flex, 4>) -> Vec<f32> {
        t.into_data().into_vec().unwrap()
    }

    #[test]
    fn appends_within_and_past_the_room_keep_every_position_in_order() {
        let mut kv = KvCache::<Flex>::new(1, 3);
        let mut total = 0;
        for added in [2, 1, 2, 1] {
            let new = positions(total, added);
            let (keys, vals) = kv.slot(0).append(&BurnOps, new.clone(), new * 2.0).unwrap();
            total += added;
            assert_eq!(keys.dims(), [2, 1, total, 2]);
            assert_eq!(values(keys.clone()), values(positions(0, total)));
            assert_eq!(values(vals), values(positions(0, total) * 2.0));
        }
        // Rejected positions are forgotten and written over.
        kv.truncate(total - 2);
        let again = positions(total - 2, 1) * 3.0;
        let (keys, _) = kv
            .slot(0)
            .append(&BurnOps, again.clone(), again.clone())
            .unwrap();
        let kept = positions(0, total - 2);
        assert_eq!(values(keys), values(Tensor::cat(vec![kept, again], 2)));
    }
}
