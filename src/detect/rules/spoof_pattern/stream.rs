//! The spoof pattern's bounded state: one time-ordered ring of window
//! entries for every (group, instrument) key, and a table of the *hot*
//! keys only, those that can complete the pattern now (a counted cancel of
//! a non-marketable order and an execution on the other side in the window:
//! the caller decides), each holding the rules' sums and a list of its
//! entries.
//!
//! Most keys never get there: on a synthetic day 0.6 keys a record are new
//! to the window and live for one record's entries. Their entries are
//! pushed (a ring slot and a hash-chain link: a bucket per hash of the key
//! holds the newest entry, each entry the bucket's previous one, as the
//! LZ77 match finders do) and expire by moving the ring's head, with no key
//! table insert, release or sums. When a key turns hot its live entries
//! are found by walking its bucket's chain back to the ring's head
//! (`promote`), linked into its list and summed; from then on it is kept as
//! before until its last entry expires.
//!
//! The hot-key table is `key_slots.rs` (shared with `window.rs`). A ring
//! slot's links (the key's next entry, the bucket's previous one) are
//! 32-bit distances and its header has a byte for the caller, so a slot is
//! 40 bytes and the caller's data.
//!
//! Limits and policies (as `window.rs`): a full hot-key table refuses a
//! promotion (counted in `keys_refused`; the key stays cold and cannot
//! alert until a later promotion succeeds); a full ring expires its oldest
//! entry early (counted in `entries_evicted` by the caller). Both tables
//! start small and grow by doubling up to their limit (counted), never
//! shrink, so once warm nothing allocates.

use crate::detect::rules::key_slots::KeySlots;
pub use crate::detect::rules::key_slots::{KeyEntry, NONE};

/// A cold entry (its key has no slot).
pub const COLD: u32 = u32::MAX;

/// One entry: 40 bytes of header and the caller's data. Links are
/// distances, not absolute indexes: the ring holds at most `MAX_RING`
/// entries, so a live link fits in 32 bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot<T> {
    pub ts_ns: i64,
    pub seq: u64,
    /// The (group, instrument) key.
    pub key: u64,
    /// The key's slot in the hot table, or `COLD`.
    pub hot: u32,
    /// Hot keys: how many entries later the key's next entry is (0: none).
    next: u32,
    /// How many entries earlier the previous entry of the same hash bucket
    /// (any key) is; 0: none, or too far back to be live.
    prev: u32,
    /// The caller's byte (kept where the header would have padding).
    pub tag: u8,
    pub data: T,
}

impl<T> Slot<T> {
    /// The absolute index of its hot key's next entry, given its own
    /// (`NONE`: it is the key's newest, or cold).
    #[inline(always)]
    pub fn next_after(&self, abs: u64) -> u64 {
        on(abs, self.next)
    }
}

/// The most entries the ring holds (links are 32-bit distances).
pub const MAX_RING: usize = 1 << 31;

pub struct Stream<T, S> {
    ring: Vec<Slot<T>>,
    /// Per ring slot, its entry's `ts_ns` and (a bit each) whether it is
    /// hot: what expiry reads at the ring's head, so a cold entry leaves
    /// without its 80-byte slot being read back (the ring of a busy window
    /// is far larger than the cache; these are a tenth of it, read in
    /// order).
    times: Vec<i64>,
    hot_bits: Vec<u64>,
    mask: u64,
    /// Absolute indexes: entries `head..tail` are live.
    head: u64,
    tail: u64,
    ring_limit: usize,
    /// Per hash bucket the newest entry pushed to it (possibly expired).
    chain: Vec<u64>,
    chain_shift: u32,
    keys: KeySlots<S>,
    pub keys_refused: u64,
    pub entries_evicted: u64,
    pub grew: u64,
}

const INITIAL: usize = 1 << 10;
/// Chain buckets per ring slot (the ring is at least as long as the
/// window): few buckets hold a live entry of another key.
const BUCKETS_PER_SLOT: usize = 2;

/// The first absolute index: the indexes below it (`BEFORE`, what an
/// empty chain bucket holds) are never live, so a chain walk stops at the
/// ring's head without asking for "none" apart.
pub const FIRST: u64 = 1 << 32;
/// An index before every entry.
const BEFORE: u64 = 0;

/// The chain bucket of `key` among `1 << (64 - chain_shift)`.
#[inline(always)]
fn bucket_of(key: u64, chain_shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> chain_shift) as usize
}

/// A ring entry's data whose all-zero bytes are a valid value (its
/// `Default`), so a ring is allocated zeroed (fresh pages from the kernel
/// for a large one) instead of written slot by slot; the slots outside
/// `head..tail` are never read for their contents.
///
/// # Safety
///
/// Every field must be an integer (or another `ZeroDefault`): the
/// all-zero bytes must be a valid value of the type.
pub unsafe trait ZeroDefault: Copy + Default {}

// SAFETY: integers.
unsafe impl ZeroDefault for u8 {}
// SAFETY: integers.
unsafe impl ZeroDefault for u64 {}

/// `cap` slots, all zero bytes.
fn zeroed_ring<T: ZeroDefault>(cap: usize) -> Vec<Slot<T>> {
    assert!(cap > 0);
    let layout = std::alloc::Layout::array::<Slot<T>>(cap).expect("a spoof ring's size overflows");
    // SAFETY: the layout is not zero-sized (`cap > 0`, a slot has 40 bytes
    // of header); a slot is integers and a `T: ZeroDefault`, so zero bytes
    // are a valid slot; the pointer comes from the global allocator with
    // `Layout::array::<Slot<T>>(cap)`, the layout `Vec` uses for `cap`.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Slot<T>;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, cap, cap)
    }
}

/// The absolute index `distance` entries before `abs` (`BEFORE` for 0).
#[inline(always)]
fn back(abs: u64, distance: u32) -> u64 {
    if distance == 0 { BEFORE } else { abs - distance as u64 }
}

/// The absolute index `distance` entries after `abs` (`NONE` for 0).
#[inline(always)]
fn on(abs: u64, distance: u32) -> u64 {
    if distance == 0 { NONE } else { abs + distance as u64 }
}

/// The link from `abs` back to `older` (0 when it is too far back to be
/// live, as `BEFORE` is).
#[inline(always)]
fn distance_back(abs: u64, older: u64) -> u32 {
    let distance = abs - older;
    if distance > u32::MAX as u64 { 0 } else { distance as u32 }
}

impl<T: ZeroDefault, S: Copy + Default> Stream<T, S> {
    /// Limits are rounded up to powers of two (the ring's) and at least 1;
    /// the ring's is at most `MAX_RING`.
    pub fn new(key_limit: usize, ring_limit: usize) -> Stream<T, S> {
        let ring_limit = ring_limit.max(1).next_power_of_two();
        assert!(ring_limit <= MAX_RING, "a spoof stream ring over {MAX_RING} entries");
        let ring_cap = INITIAL.min(ring_limit);
        let buckets = ring_cap * BUCKETS_PER_SLOT;
        Stream {
            ring: zeroed_ring(ring_cap),
            times: vec![0; ring_cap],
            hot_bits: vec![0; ring_cap.div_ceil(64)],
            mask: ring_cap as u64 - 1,
            head: FIRST,
            tail: FIRST,
            ring_limit,
            chain: vec![BEFORE; buckets],
            chain_shift: 64 - buckets.trailing_zeros(),
            keys: KeySlots::new(key_limit),
            keys_refused: 0,
            entries_evicted: 0,
            grew: 0,
        }
    }

    /// The absolute index of the oldest live entry (`tail()` when empty).
    #[inline]
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The absolute index the next entry pushed will take.
    #[inline]
    pub fn tail(&self) -> u64 {
        self.tail
    }

    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Hot keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    #[inline(always)]
    fn bucket(&self, key: u64) -> usize {
        bucket_of(key, self.chain_shift)
    }

    /// The newest entry pushed to `key`'s bucket (possibly expired), or `BEFORE`.
    #[inline(always)]
    fn newest(&self, key: u64) -> u64 {
        let bucket = self.bucket(key);
        debug_assert!(bucket < self.chain.len());
        // SAFETY: `chain.len()` is `1 << (64 - chain_shift)` (set together
        // in `new` and `grow`), and `bucket` is a 64-bit value shifted
        // right by `chain_shift`, so it is below that.
        unsafe { *self.chain.get_unchecked(bucket) }
    }

    /// The ring slot of the absolute index `abs` (live or not).
    #[inline(always)]
    fn at(&self, abs: u64) -> &Slot<T> {
        let i = (abs & self.mask) as usize;
        debug_assert!(i < self.ring.len());
        // SAFETY: `ring.len()` is `mask + 1` (set together in `new` and
        // `grow`), and `i` is masked by `mask`.
        unsafe { self.ring.get_unchecked(i) }
    }

    #[inline(always)]
    fn at_mut(&mut self, abs: u64) -> &mut Slot<T> {
        let i = (abs & self.mask) as usize;
        debug_assert!(i < self.ring.len());
        // SAFETY: as in `at`.
        unsafe { self.ring.get_unchecked_mut(i) }
    }

    /// The ring position of `abs` (live or not).
    #[inline(always)]
    fn index(&self, abs: u64) -> usize {
        (abs & self.mask) as usize
    }

    /// Sets (`hot`) or clears the hot bit of the ring slot `i`.
    #[inline(always)]
    fn set_hot_bit(&mut self, i: usize, hot: bool) {
        debug_assert!(i / 64 < self.hot_bits.len());
        // SAFETY: `hot_bits` has a bit for each of the `mask + 1` slots
        // (set together in `new` and `grow`), and `i` is a slot's index.
        let word = unsafe { self.hot_bits.get_unchecked_mut(i / 64) };
        *word = *word & !(1 << (i % 64)) | (hot as u64) << (i % 64);
    }

    /// Whether the live entry at `abs` is hot, from the bits (no read of
    /// its slot).
    #[inline(always)]
    pub fn is_hot(&self, abs: u64) -> bool {
        debug_assert!(abs >= self.head && abs < self.tail);
        let i = self.index(abs);
        debug_assert!(i / 64 < self.hot_bits.len());
        // SAFETY: as in `set_hot_bit`.
        let hot = unsafe { *self.hot_bits.get_unchecked(i / 64) } >> (i % 64) & 1 != 0;
        debug_assert_eq!(hot, self.at(abs).hot != COLD);
        hot
    }

    /// The oldest entry's `ts_ns`, if any (no read of its slot).
    #[inline(always)]
    pub fn front_ts(&self) -> Option<i64> {
        (self.head < self.tail).then(|| {
            let i = self.index(self.head);
            debug_assert!(i < self.times.len());
            // SAFETY: `times.len()` is `mask + 1` (set together in `new`
            // and `grow`), and `i` is masked by `mask`.
            unsafe { *self.times.get_unchecked(i) }
        })
    }

    /// Brings the ring slot that `key`'s bucket names into cache (what
    /// `hot` and a chain walk read first), when it is live (reading the
    /// bucket); whether that entry is hot (likely, not surely, `key`'s
    /// state). No effect on results.
    #[inline]
    pub fn prefetch_newest(&self, key: u64) -> bool {
        let newest = self.newest(key);
        if newest >= self.head && newest < self.tail {
            self.prefetch_entry(newest);
            return self.is_hot(newest);
        }
        false
    }

    /// Brings the ring slot of `abs` (live or not) into cache.
    #[inline(always)]
    pub fn prefetch_entry(&self, abs: u64) {
        // An 80-byte slot may straddle two lines.
        let slot = self.at(abs) as *const Slot<T>;
        crate::flat_map::prefetch(self.at(abs));
        // SAFETY: only an address for a hint: the slot's last byte, inside it.
        crate::flat_map::prefetch(unsafe { &*(slot as *const u8).add(std::mem::size_of::<Slot<T>>() - 1) });
    }

    /// If the live entry at `abs` is hot, brings its key's slot into cache
    /// (what its expiry takes out of the sums) and returns the entry; no
    /// effect on results.
    #[inline]
    pub fn prefetch_hot_key_of(&self, abs: u64) -> Option<&Slot<T>> {
        if abs >= self.tail || abs < self.head || !self.is_hot(abs) {
            return None;
        }
        let slot = self.at(abs);
        let key = self.keys.key(slot.hot) as *const KeyEntry<S> as *const u8;
        for offset in (0..std::mem::size_of::<KeyEntry<S>>()).step_by(64) {
            // SAFETY: only an address for a hint, inside the key's slot.
            crate::flat_map::prefetch(unsafe { &*key.add(offset) });
        }
        Some(slot)
    }

    /// The hot slot of `key`, if it is hot. The newest entry of its bucket
    /// answers without the table when it is the key's (or expired: then
    /// the key has no live entry and no slot).
    #[inline(always)]
    pub fn hot(&self, key: u64) -> Option<u32> {
        let newest = self.newest(key);
        if newest < self.head {
            return None;
        }
        let slot = self.at(newest);
        if slot.key == key {
            return (slot.hot != COLD).then_some(slot.hot);
        }
        self.keys.find(key)
    }

    /// The live entries of `key`, newest first (its bucket's chain).
    #[inline]
    pub fn walk_back(&self, key: u64) -> impl Iterator<Item = (u64, &Slot<T>)> + '_ {
        let mut abs = self.newest(key);
        std::iter::from_fn(move || {
            loop {
                if abs < self.head {
                    return None;
                }
                let at = abs;
                let slot = self.at(at);
                abs = back(at, slot.prev);
                if slot.key == key {
                    return Some((at, slot));
                }
            }
        })
    }

    /// Makes the cold `key` hot: a slot with default state, its live
    /// entries linked into the slot's list, oldest first. `None` (counted)
    /// when the table is at its limit.
    pub fn promote(&mut self, key: u64) -> Option<u32> {
        debug_assert!(self.hot(key).is_none(), "promote of a hot key");
        let Some(slot) = self.keys.insert(key, &mut self.grew) else {
            self.keys_refused += 1;
            return None;
        };
        let (mut abs, mut next, mut tail, mut entries) = (self.newest(key), NONE, NONE, 0u32);
        while abs >= self.head {
            let entry = self.at_mut(abs);
            let (mine, prev) = (entry.key == key, entry.prev);
            if mine {
                entry.hot = slot;
                entry.next = if next == NONE { 0 } else { (next - abs) as u32 };
                self.set_hot_bit(self.index(abs), true);
                next = abs;
                if tail == NONE {
                    tail = abs;
                }
                entries += 1;
            }
            abs = back(abs, prev);
        }
        let k = self.keys.key_mut(slot);
        (k.head, k.tail, k.entries) = (next, tail, entries);
        Some(slot)
    }

    /// Gives a hot key's slot back; it must have no entries.
    pub fn release(&mut self, slot: u32) {
        self.keys.release(slot, &mut self.grew);
    }

    #[inline(always)]
    pub fn key(&self, slot: u32) -> &KeyEntry<S> {
        self.keys.key(slot)
    }

    #[inline(always)]
    pub fn key_mut(&mut self, slot: u32) -> &mut KeyEntry<S> {
        self.keys.key_mut(slot)
    }

    /// The entry at `abs` and its hot key's slot (the entry must be hot).
    #[inline(always)]
    pub fn entry_and_key_mut(&mut self, abs: u64) -> (&Slot<T>, &mut KeyEntry<S>) {
        debug_assert!(abs >= self.head && abs < self.tail);
        let i = (abs & self.mask) as usize;
        // SAFETY: as in `at` (the ring and the keys are borrowed apart).
        let entry = unsafe { self.ring.get_unchecked(i) };
        (entry, self.keys.key_mut(entry.hot))
    }

    #[inline(always)]
    pub fn entry(&self, abs: u64) -> &Slot<T> {
        debug_assert!(abs >= self.head && abs < self.tail);
        self.at(abs)
    }

    #[inline]
    pub fn entry_mut(&mut self, abs: u64) -> &mut Slot<T> {
        debug_assert!(abs >= self.head && abs < self.tail);
        self.at_mut(abs)
    }

    /// Whether `abs` names a live entry.
    #[inline]
    pub fn is_live(&self, abs: u64) -> bool {
        abs >= self.head && abs < self.tail
    }

    /// Removes the oldest entry (the oldest of its key too) and returns it
    /// with its absolute index.
    #[inline]
    pub fn pop_front(&mut self) -> Option<(u64, Slot<T>)> {
        if self.head == self.tail {
            return None;
        }
        let abs = self.head;
        let slot = *self.at(abs);
        self.head += 1;
        if slot.hot != COLD {
            let key = self.keys.key_mut(slot.hot);
            debug_assert_eq!(key.head, abs);
            key.head = on(abs, slot.next);
            if key.head == NONE {
                key.tail = NONE;
            }
            key.entries -= 1;
        }
        Some((abs, slot))
    }

    /// Drops the oldest entry, which must be cold (nothing to unlink).
    #[inline(always)]
    pub fn skip_cold_front(&mut self) {
        debug_assert!(self.head < self.tail && !self.is_hot(self.head));
        self.head += 1;
    }

    /// Whether the ring is at its limit: the caller must pop (and account
    /// for) the oldest entry before pushing.
    #[inline]
    pub fn must_evict(&self) -> bool {
        self.len() >= self.ring_limit
    }

    /// Appends an entry of `key` (to its list if it is hot); returns its
    /// absolute index and the key's hot slot. Entries must be pushed in
    /// `(ts_ns, seq)` order.
    #[inline(always)]
    pub fn push(&mut self, key: u64, ts_ns: i64, seq: u64, tag: u8, data: T) -> (u64, Option<u32>) {
        self.push_as(key, self.hot(key), ts_ns, seq, tag, data)
    }

    /// `push` for a caller that has just asked `hot(key)` (nothing popped
    /// or promoted since).
    #[inline(always)]
    pub fn push_as(
        &mut self,
        key: u64,
        hot: Option<u32>,
        ts_ns: i64,
        seq: u64,
        tag: u8,
        data: T,
    ) -> (u64, Option<u32>) {
        debug_assert_eq!(hot, self.hot(key), "push_as with a stale hot slot");
        // A full ring grows; one at its limit refuses (in `grow`).
        if self.len() == self.ring.len() {
            self.grow();
        }
        let bucket = self.bucket(key);
        let abs = self.tail;
        debug_assert!(bucket < self.chain.len());
        // SAFETY: as in `newest`.
        let newest = unsafe { self.chain.get_unchecked_mut(bucket) };
        let prev = distance_back(abs, std::mem::replace(newest, abs));
        let hot_slot = hot.unwrap_or(COLD);
        *self.at_mut(abs) = Slot { ts_ns, seq, key, hot: hot_slot, next: 0, prev, tag, data };
        let i = self.index(abs);
        debug_assert!(i < self.times.len());
        // SAFETY: as in `front_ts`.
        unsafe { *self.times.get_unchecked_mut(i) = ts_ns };
        self.set_hot_bit(i, hot.is_some());
        self.tail += 1;
        if let Some(slot) = hot {
            let key = self.keys.key_mut(slot);
            let prev = key.tail;
            key.tail = abs;
            key.entries += 1;
            if prev == NONE {
                key.head = abs;
            } else {
                self.at_mut(prev).next = (abs - prev) as u32;
            }
        }
        (abs, hot)
    }

    /// Doubles the ring, and the chain buckets with it: one pass over the
    /// live entries, oldest first, copies each and links it into its new
    /// bucket. The new ring is allocated zeroed (`ZeroDefault`): on the
    /// Shenzhen peak day the window holds a whole burst (a ring of about a
    /// million slots), and a pass of default writes over it cost as many
    /// cache misses as the copy.
    #[cold]
    fn grow(&mut self) {
        assert!(!self.must_evict(), "push into a full window ring");
        let cap = self.ring.len() * 2;
        let mut ring = zeroed_ring::<T>(cap);
        let mask = cap as u64 - 1;
        let buckets = cap * BUCKETS_PER_SLOT;
        let mut chain = vec![BEFORE; buckets];
        let chain_shift = 64 - buckets.trailing_zeros();
        let mut times = vec![0; cap];
        let mut hot_bits = vec![0u64; cap.div_ceil(64)];
        for abs in self.head..self.tail {
            let mut slot = self.ring[(abs & self.mask) as usize];
            let bucket = bucket_of(slot.key, chain_shift);
            slot.prev = distance_back(abs, std::mem::replace(&mut chain[bucket], abs));
            let i = (abs & mask) as usize;
            times[i] = slot.ts_ns;
            hot_bits[i / 64] |= ((slot.hot != COLD) as u64) << (i % 64);
            ring[i] = slot;
        }
        self.ring = ring;
        self.times = times;
        self.hot_bits = hot_bits;
        self.mask = mask;
        self.chain = chain;
        self.chain_shift = chain_shift;
        self.grew += 1;
    }

    /// The absolute indexes of a hot key's entries, oldest first.
    pub fn walk(&self, slot: u32) -> impl Iterator<Item = (u64, &Slot<T>)> + '_ {
        self.walk_from(self.keys.key(slot).head)
    }

    /// A hot key's entries from its entry at `abs` on (`NONE`: none),
    /// oldest first.
    pub fn walk_from(&self, mut abs: u64) -> impl Iterator<Item = (u64, &Slot<T>)> + '_ {
        std::iter::from_fn(move || {
            if abs == NONE {
                return None;
            }
            let at = abs;
            let entry = self.entry(at);
            abs = on(at, entry.next);
            Some((at, entry))
        })
    }

    /// Hot keys whose entry count is not zero (tests: a key without
    /// entries must have been released).
    #[cfg(test)]
    pub fn keys_map_len_with_entries(&self) -> usize {
        self.keys().filter(|(_, k)| k.entries > 0).count()
    }

    /// Every hot key's slot and entry (for snapshots and tests), in no
    /// particular order.
    pub fn keys(&self) -> impl Iterator<Item = (u32, &KeyEntry<S>)> + '_ {
        self.keys.iter()
    }

    /// Every live entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Slot<T>> + '_ {
        (self.head..self.tail).map(|abs| &self.ring[(abs & self.mask) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hot key's list and a cold key's chain hold exactly its live
    /// entries, across ring growth (which rebuilds the chains) and expiry;
    /// a promotion links what was pushed while the key was cold.
    #[test]
    fn chains_and_lists_follow_pushes_promotion_and_expiry() {
        let mut w: Stream<u64, u32> = Stream::new(4, 1 << 14);
        let (a, b) = (1u64, 2u64);
        for i in 0..3000u64 {
            w.push(if i % 3 == 0 { a } else { b }, i as i64, i, 0, i);
        }
        assert!(w.grew >= 2);
        assert_eq!(w.hot(a), None);
        let back: Vec<u64> = w.walk_back(a).map(|(_, s)| s.data).collect();
        assert_eq!(back, (0..3000).rev().filter(|i| i % 3 == 0).collect::<Vec<_>>());
        let slot = w.promote(a).unwrap();
        assert_eq!(w.hot(a), Some(slot));
        assert_eq!(w.hot(b), None);
        for i in 3000..3300u64 {
            w.push(if i % 3 == 0 { a } else { b }, i as i64, i, 0, i);
        }
        let listed: Vec<u64> = w.walk(slot).map(|(_, s)| s.data).collect();
        assert_eq!(listed, (0..3300).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        for _ in 0..1500 {
            w.pop_front().unwrap();
        }
        let listed: Vec<u64> = w.walk(slot).map(|(_, s)| s.data).collect();
        assert_eq!(listed, (1500..3300).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        assert_eq!(w.key(slot).entries as usize, listed.len());
        let back: Vec<u64> = w.walk_back(b).map(|(_, s)| s.data).collect();
        assert_eq!(back, (1500..3300).rev().filter(|i| i % 3 != 0).collect::<Vec<_>>());
        // Once its entries expire the key is released and reads cold.
        while w.key(slot).entries > 0 {
            w.pop_front().unwrap();
        }
        w.release(slot);
        assert_eq!(w.hot(a), None);
        assert_eq!(w.key_count(), 0);
    }

    /// The side arrays expiry reads (`front_ts`, `is_hot`) agree with the
    /// slots across pushes, promotions, ring growth and expiry, and a
    /// zeroed ring's slots read as defaults.
    #[test]
    fn times_and_hot_bits_follow_the_slots() {
        let check = |w: &Stream<u64, u32>| {
            for abs in w.head()..w.tail() {
                assert_eq!(w.is_hot(abs), w.entry(abs).hot != COLD, "entry {abs}");
            }
            assert_eq!(w.front_ts(), (w.len() > 0).then(|| w.entry(w.head()).ts_ns));
        };
        let mut w: Stream<u64, u32> = Stream::new(8, 1 << 14);
        assert!(w.ring.iter().all(|s| s.ts_ns == 0 && s.key == 0 && s.data == 0));
        assert_eq!(w.front_ts(), None);
        for i in 0..700u64 {
            w.push(i % 5, 1000 + i as i64, i, 0, i);
        }
        let slot = w.promote(3).unwrap();
        check(&w);
        for i in 700..3000u64 {
            w.push(i % 5, 1000 + i as i64, i, 0, i);
            if i % 97 == 0 {
                w.pop_front();
            }
        }
        assert!(w.grew >= 2);
        check(&w);
        assert!(w.walk(slot).all(|(abs, _)| w.is_hot(abs)));
        while w.len() > 0 {
            w.pop_front();
            check(&w);
        }
    }

    /// Many keys in few buckets: the walk skips the other keys' entries,
    /// and `hot` falls back to the table when a bucket's newest is another's.
    #[test]
    fn colliding_keys_keep_apart() {
        // 40 keys in 128 buckets: several share one.
        let mut w: Stream<u64, u32> = Stream::new(64, 64);
        for i in 0..64u64 {
            w.push(i % 40, i as i64, i, 0, i);
        }
        let hot: Vec<u32> = (0..40).step_by(7).map(|k| w.promote(k).unwrap()).collect();
        for k in 0..40u64 {
            let back: Vec<u64> = w.walk_back(k).map(|(_, s)| s.data).collect();
            assert_eq!(back, (0..64).rev().filter(|i| i % 40 == k).collect::<Vec<_>>());
            let want = (k % 7 == 0).then(|| hot[(k / 7) as usize]);
            assert_eq!(w.hot(k), want, "key {k}");
        }
    }

    /// Links are distances: 0 and one too far back to be live (more
    /// than 32 bits, or back to an empty bucket) both read as "none".
    #[test]
    fn links_too_far_back_read_as_none() {
        assert_eq!(distance_back(FIRST + 5, FIRST + 2), 3);
        assert_eq!(back(FIRST + 5, 3), FIRST + 2);
        assert_eq!(distance_back(FIRST + 5, BEFORE), 0);
        assert_eq!(distance_back(FIRST + (1 << 33), FIRST), 0);
        assert_eq!(distance_back(FIRST + u32::MAX as u64, FIRST), u32::MAX);
        assert_eq!(back(FIRST + 5, 0), BEFORE);
        assert_eq!((on(FIRST, 0), on(FIRST, 7)), (NONE, FIRST + 7));
        // An empty stream's buckets hold `BEFORE`, which is never live.
        let w: Stream<u8, u8> = Stream::new(4, 4);
        assert_eq!((w.head(), w.walk_back(9).count(), w.hot(9)), (FIRST, 0, None));
    }

    /// The prefetch hooks read only live entries: `prefetch_hot_key_of`
    /// names the hot entries and nothing outside `head..tail`, and neither
    /// hook changes what the stream answers (also on an empty stream and
    /// past a bucket's expired newest entry).
    #[test]
    fn prefetch_hooks_name_live_hot_entries_only() {
        let mut w: Stream<u64, u32> = Stream::new(8, 64);
        w.prefetch_newest(3);
        assert!(w.prefetch_hot_key_of(w.head()).is_none());
        for i in 0..6u64 {
            w.push(i % 3, i as i64, i, 0, i);
        }
        let slot = w.promote(1).unwrap();
        let hot: Vec<u64> = (FIRST..FIRST + 8).filter(|&abs| w.prefetch_hot_key_of(abs).is_some()).collect();
        assert_eq!(hot, [FIRST + 1, FIRST + 4]);
        assert_eq!(w.prefetch_hot_key_of(FIRST + 4).map(|s| s.data), Some(4));
        w.pop_front().unwrap();
        w.pop_front().unwrap();
        assert!(w.prefetch_hot_key_of(FIRST + 1).is_none(), "an expired hot entry");
        for key in 0..4 {
            w.prefetch_newest(key);
        }
        w.prefetch_entry(FIRST);
        assert_eq!((w.hot(0), w.hot(1), w.hot(2)), (None, Some(slot), None));
        assert_eq!(w.walk(slot).map(|(_, s)| s.data).collect::<Vec<_>>(), [4]);
        // Key 0's bucket names an expired entry once its entries are gone.
        while w.len() > 0 {
            w.pop_front().unwrap();
        }
        w.prefetch_newest(0);
        assert!(w.prefetch_hot_key_of(w.head()).is_none());
        assert_eq!(w.hot(0), None);
    }

    #[test]
    fn limits_refuse_promotions_and_ask_for_eviction() {
        let mut w: Stream<u8, u8> = Stream::new(1, 4);
        for i in 0..4 {
            w.push(10 + i as u64 % 2, i, i as u64, 0, 0);
        }
        assert!(w.promote(10).is_some());
        assert_eq!(w.promote(11), None);
        assert_eq!(w.keys_refused, 1);
        assert!(w.must_evict());
        w.pop_front();
        assert!(!w.must_evict());
    }
}
