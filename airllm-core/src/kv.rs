//! The KV cache of one sequence: per layer, keys and values `[1, kv_heads,
//! positions, head_dim]` on the compute device, in buffers with room for the
//! sequence's whole length, so a decode step writes its one position in place
//! instead of copying the cache into a longer tensor. Each sequence owns its
//! cache, so sequences of a pass have their own lengths, and one that leaves
//! frees its room.
//!
//! A layer whose cache the residency plan keeps in host memory has it
//! uploaded when the layer first appends in a pass and brought back with
//! [`KvSlot::to_host`] after it, only the positions the pass wrote crossing
//! back.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::{ComputeBackend, Error, Result};

/// Positions added at once when a slot outgrows its room.
const GROWTH: usize = 64;

/// One layer's cached keys and values.
pub struct KvSlot<B: Backend> {
    /// On the device, while a pass uses them (or between passes where the
    /// cache stays on the device).
    entries: Option<Entries<B>>,
    /// In host memory between passes: the positions written before the
    /// device's entries were uploaded from it.
    host: Option<HostEntries>,
    /// Positions the buffers hold when first written.
    room: usize,
}

/// Keys and values in host memory `[batch, kv_heads, stored, head_dim]`, in
/// the compute dtype, the first `len` positions valid.
struct HostEntries {
    keys: TensorData,
    values: TensorData,
    len: usize,
}

impl HostEntries {
    /// The first `keep` positions of `old` (none without it) followed by
    /// `keys` and `values`.
    fn joined(old: Option<HostEntries>, keep: usize, keys: TensorData, values: TensorData) -> Self {
        let added = keys.shape[2];
        let (keys, values) = match old {
            Some(old) if keep > 0 => (
                join_positions(&old.keys, keep, &keys),
                join_positions(&old.values, keep, &values),
            ),
            _ => (keys, values),
        };
        HostEntries {
            keys,
            values,
            len: keep + added,
        }
    }

    /// These entries on the device, in buffers of at least `room` positions.
    fn upload<B: Backend>(
        &self,
        backend: &dyn ComputeBackend<B>,
        room: usize,
    ) -> Result<Entries<B>> {
        let device = backend.device();
        let upload = |data: &TensorData| {
            Tensor::<B, 4>::from_data(data.clone(), device).narrow(2, 0, self.len)
        };
        let (keys, values) = (upload(&self.keys), upload(&self.values));
        Entries::empty(&keys, &values, room.max(self.len)).write(backend, keys, values)
    }
}

/// `[batch, heads, keep + added, dim]` data: the first `keep` positions of
/// `old` `[batch, heads, stored, dim]`, then `new` `[batch, heads, added,
/// dim]`, both of one dtype.
fn join_positions(old: &TensorData, keep: usize, new: &TensorData) -> TensorData {
    let [batch, heads, stored, dim] = old.shape[..] else {
        unreachable!("cached keys and values have rank 4")
    };
    let added = new.shape[2];
    let position = dim * new.dtype.size();
    let (old_bytes, new_bytes) = (old.as_bytes(), new.as_bytes());
    let mut joined = Vec::with_capacity(batch * heads * (keep + added) * position);
    for row in 0..batch * heads {
        let old_row = row * stored * position;
        joined.extend_from_slice(&old_bytes[old_row..old_row + keep * position]);
        let new_row = row * added * position;
        joined.extend_from_slice(&new_bytes[new_row..new_row + added * position]);
    }
    TensorData::from_bytes_vec(joined, [batch, heads, keep + added, dim], new.dtype)
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
            host: None,
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
        let on_device = match (self.entries.take(), &self.host) {
            (None, Some(host)) if host.len > 0 => {
                Some(host.upload(backend, self.room.max(host.len + added))?)
            }
            (entries, _) => entries,
        };
        let entries = match on_device {
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

    /// Moves the cache to host memory until the next pass that appends
    /// (which uploads it): the positions written since it was uploaded are
    /// read back, and its device buffers dropped.
    pub fn to_host(&mut self) -> Result<()> {
        let Some(entries) = self.entries.take() else {
            return Ok(());
        };
        let kept = self.host.as_ref().map_or(0, |h| h.len).min(entries.len);
        if kept == entries.len {
            if let Some(host) = self.host.as_mut() {
                host.len = kept;
            }
            return Ok(());
        }
        let read = |t: Tensor<B, 4>| {
            t.narrow(2, kept, entries.len - kept)
                .try_into_data()
                .map_err(|e| {
                    Error::Backend(format!("reading the KV cache back to host memory: {e:?}"))
                })
        };
        let (keys, values) = (read(entries.keys.clone())?, read(entries.values.clone())?);
        self.host = Some(HostEntries::joined(self.host.take(), kept, keys, values));
        Ok(())
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
            if let Some(host) = slot.host.as_mut() {
                host.len = host.len.min(positions);
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

    #[test]
    fn a_cache_kept_in_host_memory_between_passes_reads_as_one_on_the_device() {
        let (mut on_device, mut on_host) = (KvCache::<Flex>::new(1, 2), KvCache::<Flex>::new(1, 2));
        let mut total = 0;
        // Appends within and past the room, with positions forgotten and
        // written over in between.
        for (added, forget) in [(2, 0), (1, 0), (3, 2), (1, 0), (2, 1)] {
            on_device.truncate(total - forget);
            on_host.truncate(total - forget);
            total -= forget;
            let new = positions(total, added) * (1.0 + forget as f32);
            let expected = on_device
                .slot(0)
                .append(&BurnOps, new.clone(), new.clone() * 2.0)
                .unwrap();
            let got = on_host
                .slot(0)
                .append(&BurnOps, new.clone(), new * 2.0)
                .unwrap();
            on_host.slot(0).to_host().unwrap();
            assert!(on_host.slots[0].entries.is_none());
            total += added;
            assert_eq!(values(got.0), values(expected.0));
            assert_eq!(values(got.1), values(expected.1));
        }
        assert_eq!(on_host.slots[0].host.as_ref().map(|h| h.len), Some(total));
    }
}
