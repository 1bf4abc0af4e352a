//! `CowTable`: a table indexed by a small dense id (an instrument), changed
//! at random positions, whose snapshot is cut in O(1) at a barrier and
//! copied in slices afterwards. A write to a slot the copy has not reached
//! yet copies the slot's old value first (copy-on-write), so the image is
//! the table as of the barrier. Each slot carries the epoch of the
//! snapshot that last copied it, so nothing is reset per snapshot.
//!
//! `CowMap`: the same for an open-addressing table keyed by `u64` (the
//! order book's resting orders by id): linear probing and backward-shift
//! deletion as `flat_map::FlatMap`, plus the copy-on-write of each slot
//! a write (insert, update, or the shift of a removal) is about to change.
//! Entries move between slots on removal, so the copy follows slots, not
//! keys: every slot's content as of the barrier is copied exactly once,
//! by the slices or by the write that changes it first, which makes the
//! image the table's entries at the barrier. Growing rehashes every slot,
//! so a snapshot in progress is finished first (growth is rare: counted).
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

/// The fewest slots a `CowMap` snapshot slice scans (about 0.1 ms of a
/// shard's CPU for the book's 56-byte slots, most of them empty).
pub const MIN_SLICE_SLOTS: usize = 1 << 14;

/// Slots of a `CowMap` to scan for a slice of `max` entries (the shard's
/// slice counts entries; an empty slot costs a compare): 8 per entry, at
/// least `MIN_SLICE_SLOTS`, so a big, mostly empty table does not take
/// thousands of batches to copy.
#[inline]
pub fn slice_slots(max: usize) -> usize {
    max.saturating_mul(8).max(MIN_SLICE_SLOTS)
}

/// An open-addressing `u64 -> V` table whose snapshot is cut in O(1) and
/// copied in slices (see the module doc).
///
/// `RUN_BITS`: log2 of the run of consecutive keys that share a block of
/// consecutive slots (0, the default: every key hashed on its own). For
/// keys handed out in sequence (order ids): runs of `1 << RUN_BITS`
/// consecutive keys go to consecutive slots of one block, the block placed
/// by the hash of the key's other bits. Keys used close together in time
/// then share cache lines (a 56-byte slot per order: the orders entered in
/// the last few thousand ids, most of what a cancel or trade names, fit in
/// a core's L2 instead of one line each spread over the whole table), and
/// the sequential inserts walk memory forward. Keys of any other shape
/// still spread: the block is hashed, so a stride of `1 << RUN_BITS` or
/// more lands in random blocks as with `RUN_BITS = 0`. A constant, so that
/// `home` (every probe, every slot a removal's shift looks at) does no
/// arithmetic on it at run time.
///
/// Two ways in: by key (`get`, `get_mut`, `insert`, `remove`, ...), one
/// probe each; or find a key's slot once (`slot`) and then read, change or
/// remove the entry there (`at`, `at_mut`, `remove_at`) or fill the vacant
/// slot (`insert_new`), for a caller that decides between those after
/// looking at the entry.
pub struct CowMap<V: Copy + Default, const RUN_BITS: u32 = 0> {
    slots: Box<[(u64, V)]>,
    /// The snapshot epoch that copied each slot.
    copied: Box<[u32]>,
    mask: usize,
    /// `home`'s shift of the hashed block number.
    shift: u32,
    len: usize,
    /// The value of key `EMPTY` (a real key too), kept aside.
    empty_key: Option<V>,
    epoch: u32,
    active: bool,
    cursor: usize,
    image: Vec<(u64, V)>,
    /// The copy was finished early (the table grew): `copy_slice` hands
    /// the image over next.
    finished: bool,
    /// Times the table doubled after start-up.
    pub grew: u64,
}

const EMPTY: u64 = u64::MAX;

/// The slot of a key the map holds (`CowMap::slot`). Valid until the map
/// next changes (an insert or a removal may move entries, a growth moves
/// all): use it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotIdx(usize);

/// Where a key the map does not hold would go (`CowMap::slot`), for
/// `insert_new`. Valid until the map next changes, as `SlotIdx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VacantIdx(usize);

/// The index that stands for key `EMPTY`, kept aside in `empty_key`.
const ASIDE: usize = usize::MAX;

/// `n` empty slots.
fn empty_slots<V: Copy + Default>(n: usize) -> Box<[(u64, V)]> {
    vec![(EMPTY, V::default()); n].into_boxed_slice()
}

impl<V: Copy + Default, const RUN_BITS: u32> CowMap<V, RUN_BITS> {
    /// A map that holds `capacity` keys before it first grows (at half
    /// load: `2 * capacity` slots, rounded up to a power of two, and at
    /// least two blocks of `1 << RUN_BITS`, so the block hash has a bit to
    /// choose).
    pub fn with_capacity(capacity: usize) -> CowMap<V, RUN_BITS> {
        const { assert!(RUN_BITS < 32, "runs of up to 2^31 keys") };
        let slots = (capacity.max(8) * 2).max(2 << RUN_BITS).next_power_of_two();
        CowMap {
            slots: empty_slots(slots),
            copied: vec![0; slots].into_boxed_slice(),
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros() + RUN_BITS,
            len: 0,
            empty_key: None,
            epoch: 0,
            active: false,
            cursor: 0,
            image: Vec::new(),
            finished: false,
            grew: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len + self.empty_key.is_some() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        let block = ((key >> RUN_BITS).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        block << RUN_BITS | (key as usize & ((1usize << RUN_BITS) - 1))
    }

    #[inline(always)]
    fn find(&self, key: u64) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            let slot_key = self.slots[i].0;
            if slot_key == key {
                return (i, true);
            }
            if slot_key == EMPTY {
                return (i, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Asks the CPU to bring `key`'s slot into cache; no effect on results.
    /// A slot of more than a few words may straddle two lines: the start of
    /// the next slot (the byte after this one's end, and where a probe or a
    /// removal's shift looks next) comes too.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let i = self.home(key);
        crate::flat_map::prefetch(&self.slots[i]);
        if std::mem::size_of::<(u64, V)>() > 16 {
            crate::flat_map::prefetch(&self.slots[(i + 1) & self.mask]);
        }
    }

    #[inline]
    pub fn get(&self, key: u64) -> Option<&V> {
        if key == EMPTY {
            return self.empty_key.as_ref();
        }
        match self.find(key) {
            (i, true) => Some(&self.slots[i].1),
            _ => None,
        }
    }

    #[inline]
    pub fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Finds `key` once: its slot (`Ok`) or where it would go (`Err`).
    /// The index is valid until the map next changes.
    #[inline]
    pub fn slot(&self, key: u64) -> Result<SlotIdx, VacantIdx> {
        if key == EMPTY {
            return if self.empty_key.is_some() { Ok(SlotIdx(ASIDE)) } else { Err(VacantIdx(ASIDE)) };
        }
        match self.find(key) {
            (i, true) => Ok(SlotIdx(i)),
            (i, false) => Err(VacantIdx(i)),
        }
    }

    /// The value in slot `idx` (from `slot`, the map unchanged since).
    #[inline]
    pub fn at(&self, idx: SlotIdx) -> &V {
        if idx.0 == ASIDE {
            return self.empty_key.as_ref().expect("a SlotIdx of a key the map holds");
        }
        debug_assert_ne!(self.slots[idx.0].0, EMPTY, "a SlotIdx of a key the map holds");
        &self.slots[idx.0].1
    }

    /// The value in slot `idx`, to change in place (the slot is copied
    /// first when a snapshot needs it).
    #[inline]
    pub fn at_mut(&mut self, idx: SlotIdx) -> &mut V {
        if idx.0 == ASIDE {
            return self.empty_key.as_mut().expect("a SlotIdx of a key the map holds");
        }
        debug_assert_ne!(self.slots[idx.0].0, EMPTY, "a SlotIdx of a key the map holds");
        self.before_write(idx.0);
        &mut self.slots[idx.0].1
    }

    /// Inserts `key`, which `slot` just found vacant at `idx` (the map
    /// unchanged since); the table grows first when it is half full.
    #[inline]
    pub fn insert_new(&mut self, idx: VacantIdx, key: u64, value: V) {
        if idx.0 == ASIDE {
            debug_assert!(key == EMPTY && self.empty_key.is_none());
            self.empty_key = Some(value);
            return;
        }
        debug_assert_eq!(self.find(key), (idx.0, false), "a VacantIdx of the key");
        let mut i = idx.0;
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            i = self.find(key).0;
        }
        self.before_write(i);
        self.slots[i] = (key, value);
        self.len += 1;
    }

    /// Removes the entry in slot `idx` (from `slot`, the map unchanged
    /// since) and returns its value.
    #[inline]
    pub fn remove_at(&mut self, idx: SlotIdx) -> V {
        if idx.0 == ASIDE {
            return self.empty_key.take().expect("a SlotIdx of a key the map holds");
        }
        debug_assert_ne!(self.slots[idx.0].0, EMPTY, "a SlotIdx of a key the map holds");
        self.remove_slot(idx.0)
    }

    /// Slot `i` is about to change: if the copy in progress has not taken
    /// it yet, it takes it now.
    #[inline(always)]
    fn before_write(&mut self, i: usize) {
        if self.active && i >= self.cursor && self.copied[i] != self.epoch {
            self.copy_on_write(i);
        }
    }

    #[cold]
    fn copy_on_write(&mut self, i: usize) {
        self.copied[i] = self.epoch;
        if self.slots[i].0 != EMPTY {
            self.image.push(self.slots[i]);
        }
    }

    /// The value of `key`, to change in place (its slot is copied first
    /// when a snapshot needs it).
    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        if key == EMPTY {
            return self.empty_key.as_mut();
        }
        match self.find(key) {
            (i, true) => {
                self.before_write(i);
                Some(&mut self.slots[i].1)
            }
            _ => None,
        }
    }

    /// The value of `key`, inserting `V::default()` if it has none (one
    /// probe; the slot is copied first when a snapshot needs it).
    #[inline]
    pub fn get_or_insert_default(&mut self, key: u64) -> &mut V {
        if key == EMPTY {
            return self.empty_key.get_or_insert_with(V::default);
        }
        let (mut i, mut found) = self.find(key);
        if !found && (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            (i, found) = self.find(key);
        }
        self.before_write(i);
        if !found {
            self.slots[i] = (key, V::default());
            self.len += 1;
        }
        &mut self.slots[i].1
    }

    /// Inserts or replaces.
    #[inline]
    pub fn insert(&mut self, key: u64, value: V) {
        if key == EMPTY {
            self.empty_key = Some(value);
            return;
        }
        let (mut i, mut found) = self.find(key);
        if !found && (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            (i, found) = self.find(key);
        }
        self.before_write(i);
        self.slots[i] = (key, value);
        self.len += !found as usize;
    }

    #[inline]
    pub fn remove(&mut self, key: u64) -> Option<V> {
        if key == EMPTY {
            return self.empty_key.take();
        }
        match self.find(key) {
            (i, true) => Some(self.remove_slot(i)),
            _ => None,
        }
    }

    /// Empties slot `hole` (it holds an entry), shifting back the entries
    /// after it that may move; returns the entry's value.
    #[inline(always)]
    fn remove_slot(&mut self, mut hole: usize) -> V {
        let value = self.slots[hole].1;
        // Backward shift (see `flat_map::FlatMap::remove`); every slot
        // written is copied first.
        self.before_write(hole);
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let slot_key = self.slots[j].0;
            if slot_key == EMPTY {
                break;
            }
            let home = self.home(slot_key);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
                self.before_write(hole);
            }
        }
        self.slots[hole].0 = EMPTY;
        self.len -= 1;
        value
    }

    #[cold]
    fn grow(&mut self) {
        if self.active {
            // Rehashing moves every entry: finish the copy first.
            self.copy_slots(usize::MAX);
            self.active = false;
            self.finished = true;
        }
        self.grew += 1;
        let old = std::mem::take(&mut self.slots);
        let slots = old.len() * 2;
        self.slots = empty_slots(slots);
        self.copied = vec![0; slots].into_boxed_slice();
        self.mask = slots - 1;
        self.shift = 64 - slots.trailing_zeros() + RUN_BITS;
        // One sequential pass: doubling the table gives each block one more
        // low bit (block `b` goes to `2b` or `2b + 1`), so the entries
        // walked in slot order from the start of a cluster (an empty slot:
        // nothing before it wrapped around the end) land in the new table
        // in about slot order too. Both tables stream through the cache
        // once, instead of a random write per entry.
        let start = old.iter().position(|slot| slot.0 == EMPTY).unwrap_or(0);
        let old_mask = old.len() - 1;
        for j in 0..old.len() {
            let (key, value) = old[(start + j) & old_mask];
            if key != EMPTY {
                let (i, _) = self.find(key);
                self.slots[i] = (key, value);
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        let empty = self.empty_key.map(|value| (EMPTY, value));
        self.slots.iter().copied().filter(|(key, _)| *key != EMPTY).chain(empty)
    }

    /// Whether a snapshot is in progress (its image not yet handed over).
    pub fn snapshot_active(&self) -> bool {
        self.active || self.finished
    }

    /// Cuts a snapshot into `image` (cleared; room reserved now, so a
    /// copy-on-write never allocates): O(1) but for that reservation.
    pub fn begin_snapshot(&mut self, mut image: Vec<(u64, V)>) {
        assert!(!self.snapshot_active(), "a snapshot is already in progress");
        image.clear();
        image.reserve(self.len() + 1);
        image.extend(self.empty_key.map(|value| (EMPTY, value)));
        self.image = image;
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Wrapped: no slot may look copied by this epoch.
            self.copied.fill(u32::MAX);
            self.epoch = 1;
        }
        self.active = true;
        self.cursor = 0;
    }

    /// Copies up to `max` more slots; the image (the entries at the
    /// barrier, in no particular order) once complete.
    pub fn copy_slice(&mut self, max: usize) -> Option<Vec<(u64, V)>> {
        if self.finished {
            self.finished = false;
            return Some(std::mem::take(&mut self.image));
        }
        if !self.active || !self.copy_slots(max) {
            return None;
        }
        self.active = false;
        Some(std::mem::take(&mut self.image))
    }

    /// Copies up to `max` more slots not copied yet; true once all are.
    fn copy_slots(&mut self, max: usize) -> bool {
        let to = self.slots.len().min(self.cursor.saturating_add(max));
        for i in self.cursor..to {
            if self.copied[i] != self.epoch {
                self.copied[i] = self.epoch;
                if self.slots[i].0 != EMPTY {
                    self.image.push(self.slots[i]);
                }
            }
        }
        self.cursor = to;
        self.cursor == self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `RUN_BITS`: consecutive keys of a run sit in consecutive slots
    /// (recent order ids share cache lines), and runs spread over the
    /// table, before and after it grows.
    #[test]
    fn runs_of_consecutive_keys_share_a_block() {
        let mut map: CowMap<u32, 4> = CowMap::with_capacity(1 << 10);
        for _ in 0..2 {
            let mut blocks = std::collections::HashSet::new();
            for key in (1u64 << 20..(1 << 20) + 4096).step_by(16) {
                let home = map.home(key);
                assert_eq!(home % 16, 0, "a run starts a block");
                for k in 1..16 {
                    assert_eq!(map.home(key + k), home + k as usize);
                }
                blocks.insert(home / 16);
            }
            // 256 runs in 128 (then 256) blocks: most blocks used.
            assert!(blocks.len() * 4 > map.slots.len() / 16, "{} blocks of {}", blocks.len(), map.slots.len() / 16);
            for key in 0..(map.slots.len() as u64) {
                map.insert(key, 1);
            }
        }
        assert!(map.grew > 0);
        // Without runs, consecutive keys are hashed apart.
        let map: CowMap<u32> = CowMap::with_capacity(1 << 10);
        assert!((0..16u64).filter(|&k| map.home(k + 1) == map.home(k) + 1).count() < 4);
    }

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

    /// The map against a `HashMap` model under `before`, a snapshot cut,
    /// then `after` applied while the snapshot is copied in slices of
    /// `slice` slots every `every` operations: the image is the model at
    /// the barrier, and the map is the model throughout. Operations: 0
    /// insert, 1 remove, 2 add to (default 0), 3 add to if held, and the
    /// same through the slot API: 4 insert (`at_mut` or `insert_new`), 5
    /// `remove_at`, 6 add to (`at_mut` or `insert_new`), 7 read (`at`).
    fn check_map<const R: u32>(
        before: &[(u8, u64, u32)],
        after: &[(u8, u64, u32)],
        slice: usize,
        every: usize,
    ) -> Result<(), TestCaseError> {
        use std::collections::HashMap;
        let mut map: CowMap<u32, R> = CowMap::with_capacity(4);
        let mut model: HashMap<u64, u32> = HashMap::new();
        // Key 119 stands for `u64::MAX`, the key kept aside.
        let id = |k: u64| if k == 119 { u64::MAX } else { k };
        let apply = |map: &mut CowMap<u32, R>, model: &mut HashMap<u64, u32>, (op, k, v): (u8, u64, u32)| {
            let k = id(k);
            match op {
                0 => {
                    map.insert(k, v);
                    model.insert(k, v);
                }
                1 => prop_assert_eq!(map.remove(k), model.remove(&k)),
                2 => {
                    *map.get_or_insert_default(k) += v;
                    *model.entry(k).or_default() += v;
                }
                3 => {
                    if let Some(x) = map.get_mut(k) {
                        *x += v;
                    }
                    if let Some(x) = model.get_mut(&k) {
                        *x += v;
                    }
                }
                4 => {
                    match map.slot(k) {
                        Ok(i) => *map.at_mut(i) = v,
                        Err(i) => map.insert_new(i, k, v),
                    }
                    model.insert(k, v);
                }
                5 => {
                    let removed = map.slot(k).ok().map(|i| map.remove_at(i));
                    prop_assert_eq!(removed, model.remove(&k));
                }
                6 => {
                    match map.slot(k) {
                        Ok(i) => *map.at_mut(i) += v,
                        Err(i) => map.insert_new(i, k, v),
                    }
                    *model.entry(k).or_default() += v;
                }
                _ => {
                    let held = map.slot(k).ok().map(|i| *map.at(i));
                    prop_assert_eq!(held, model.get(&k).copied());
                    prop_assert_eq!(held.as_ref(), map.get(k));
                }
            }
            prop_assert_eq!(map.len(), model.len());
            Ok(())
        };
        for &op in before {
            apply(&mut map, &mut model, op)?;
        }
        let mut expected: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        map.begin_snapshot(Vec::new());
        let mut image = None;
        for chunk in after.chunks(every) {
            for &op in chunk {
                apply(&mut map, &mut model, op)?;
            }
            if image.is_none() {
                image = map.copy_slice(slice);
            }
        }
        let mut image = image.or_else(|| map.copy_slice(usize::MAX)).unwrap();
        image.sort_unstable();
        expected.sort_unstable();
        prop_assert_eq!(image, expected);
        let mut now: Vec<(u64, u32)> = map.iter().collect();
        let mut want: Vec<(u64, u32)> = model.into_iter().collect();
        now.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(now, want);
        Ok(())
    }

    proptest! {
        /// Whatever is inserted, changed and removed while a snapshot is
        /// copied in slices (entries moving between slots, the table
        /// growing), by key or through the slot API, the image is the map
        /// at the barrier; and the map behaves as a hash map throughout.
        #[test]
        fn the_map_image_is_the_map_at_the_barrier(
            before in proptest::collection::vec((0u8..8, 0u64..80, 1u32..50), 0..300),
            after in proptest::collection::vec((0u8..8, 0u64..120, 1u32..50), 0..300),
            slice in 1usize..40,
            every in 1usize..10,
            runs in 0u32..4,
        ) {
            match runs {
                0 => check_map::<0>(&before, &after, slice, every)?,
                1 => check_map::<1>(&before, &after, slice, every)?,
                2 => check_map::<2>(&before, &after, slice, every)?,
                _ => check_map::<3>(&before, &after, slice, every)?,
            }
        }
    }
}
