//! `CowTable`: a table indexed by a small dense id (an instrument), changed
//! at random positions, whose snapshot is cut in O(1) at a barrier and
//! copied in slices afterwards. A write to a slot the copy has not reached
//! yet copies the slot's old value first (copy-on-write), so the image is
//! the table as of the barrier. Each slot carries the epoch of the
//! snapshot that last copied it, so nothing is reset per snapshot.
//!
//! Limit: ids up to `MAX_IDS`; a larger id is refused (`set` returns false)
//! and counted by the caller. Growth past the start-up size allocates on
//! the hot path and is counted in `grew`.

/// Ids a table holds at most (instrument ids are dense from 0).
pub const MAX_IDS: usize = 1 << 24;

pub struct CowTable<T: Copy> {
    values: Vec<T>,
    /// The snapshot epoch that copied each slot.
    copied: Vec<u32>,
    empty: T,
    epoch: u32,
    /// A snapshot is being copied: slots `cursor..snap_len` not yet.
    active: bool,
    cursor: usize,
    snap_len: usize,
    image: Vec<(u32, T)>,
    pub grew: u64,
}

impl<T: Copy + PartialEq> CowTable<T> {
    pub fn new(capacity: usize, empty: T) -> CowTable<T> {
        CowTable {
            values: vec![empty; capacity],
            copied: vec![0; capacity],
            empty,
            epoch: 0,
            active: false,
            cursor: 0,
            snap_len: 0,
            image: Vec::new(),
            grew: 0,
        }
    }

    #[inline(always)]
    pub fn get(&self, id: u32) -> T {
        self.values.get(id as usize).copied().unwrap_or(self.empty)
    }

    /// Sets slot `id`; false (nothing changed) if `id` is past `MAX_IDS`.
    #[inline(always)]
    pub fn set(&mut self, id: u32, value: T) -> bool {
        let i = id as usize;
        if i >= self.values.len() {
            if i >= MAX_IDS {
                return false;
            }
            self.grow(i);
        }
        if self.active && i >= self.cursor && i < self.snap_len && self.copied[i] != self.epoch {
            self.copy_on_write(i);
        }
        self.values[i] = value;
        true
    }

    #[cold]
    fn copy_on_write(&mut self, i: usize) {
        self.copied[i] = self.epoch;
        if self.values[i] != self.empty {
            self.image.push((i as u32, self.values[i]));
        }
    }

    #[cold]
    fn grow(&mut self, i: usize) {
        let len = (i + 1).next_power_of_two().max(64);
        self.values.resize(len, self.empty);
        self.copied.resize(len, 0);
        self.grew += 1;
    }

    /// Cuts a snapshot: O(1) (the image's room is reserved now, so a
    /// copy-on-write never allocates).
    pub fn begin_snapshot(&mut self, mut image: Vec<(u32, T)>) {
        assert!(!self.active, "a snapshot is already in progress");
        image.clear();
        image.reserve(self.values.len());
        self.image = image;
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Wrapped: no slot may look copied by this epoch.
            self.copied.fill(u32::MAX);
            self.epoch = 1;
        }
        self.active = true;
        self.cursor = 0;
        self.snap_len = self.values.len();
    }

    /// Copies up to `max` more slots; the image (set slots, `(id, value)`,
    /// in no particular order) once complete.
    pub fn copy_slice(&mut self, max: usize) -> Option<Vec<(u32, T)>> {
        if !self.active {
            return None;
        }
        let to = self.snap_len.min(self.cursor.saturating_add(max));
        for i in self.cursor..to {
            if self.copied[i] != self.epoch {
                self.copied[i] = self.epoch;
                if self.values[i] != self.empty {
                    self.image.push((i as u32, self.values[i]));
                }
            }
        }
        self.cursor = to;
        if self.cursor < self.snap_len {
            return None;
        }
        self.active = false;
        Some(std::mem::take(&mut self.image))
    }

    /// Set slots now (for restore checks and tests).
    pub fn iter(&self) -> impl Iterator<Item = (u32, T)> + '_ {
        self.values.iter().enumerate().filter(|(_, v)| **v != self.empty).map(|(i, v)| (i as u32, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever is written while a snapshot is copied in slices, the
        /// image is the table at the barrier.
        #[test]
        fn the_image_is_the_table_at_the_barrier(
            before in proptest::collection::vec((0u32..100, 1i64..50), 0..200),
            after in proptest::collection::vec((0u32..140, 0i64..50), 0..200),
            slice in 1usize..20,
            every in 1usize..10,
        ) {
            let mut table = CowTable::new(8, 0i64);
            for &(id, v) in &before {
                table.set(id, v);
            }
            let mut expected: Vec<(u32, i64)> = table.iter().collect();
            table.begin_snapshot(Vec::new());
            let mut image = None;
            for chunk in after.chunks(every) {
                for &(id, v) in chunk {
                    table.set(id, v);
                }
                if image.is_none() {
                    image = table.copy_slice(slice);
                }
            }
            let mut image = image.or_else(|| table.copy_slice(usize::MAX)).unwrap();
            image.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(image, expected);
        }
    }
}
