//! The bounded state of the window rules: a table of keys ((group,
//! instrument)) each holding its rule's counts (`key_slots.rs`), and one
//! time-ordered ring of window entries per rule, threaded into a list per
//! key.
//!
//! A shard applies records in `(ts_ns, seq)` order, so a rule's entries are
//! pushed in time order and expire from the front: O(1) per entry. Each
//! entry names its key's slot and the next entry of the same key, so a rule
//! can walk one key's entries (only when a pattern is close to complete,
//! never per record). Both tables start at a small capacity, grow by
//! doubling up to their stated limit (each growth counted), and never
//! shrink, so once warm nothing allocates.
//!
//! Limits and policies: a full key table refuses new keys (the record is
//! not tracked for that rule; counted in `keys_refused`); a full ring
//! expires its oldest entry early (counted in `entries_evicted`), so the
//! rule sees a shorter window under overload rather than none.

use super::key_slots::KeySlots;
pub use super::key_slots::{KeyEntry, NONE};

#[derive(Clone, Copy, Debug, Default)]
pub struct Slot<T> {
    pub ts_ns: i64,
    pub seq: u64,
    /// The key's slot in `Keys`.
    pub key: u32,
    /// The absolute index of the key's next entry, or `NONE`.
    pub next: u64,
    pub data: T,
}

pub struct Window<T, S> {
    ring: Vec<Slot<T>>,
    mask: u64,
    /// Absolute indexes: entries `head..tail` are live.
    head: u64,
    tail: u64,
    ring_limit: usize,
    keys: KeySlots<S>,
    pub keys_refused: u64,
    pub entries_evicted: u64,
    pub grew: u64,
}

const INITIAL: usize = 1 << 10;

impl<T: Copy + Default, S: Copy + Default> Window<T, S> {
    /// Limits are rounded up to powers of two (the ring's) and at least 1.
    pub fn new(key_limit: usize, ring_limit: usize) -> Window<T, S> {
        let ring_limit = ring_limit.max(1).next_power_of_two();
        let ring_cap = INITIAL.min(ring_limit);
        Window {
            ring: vec![Slot::default(); ring_cap],
            mask: ring_cap as u64 - 1,
            head: 0,
            tail: 0,
            ring_limit,
            keys: KeySlots::new(key_limit),
            keys_refused: 0,
            entries_evicted: 0,
            grew: 0,
        }
    }

    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The slot of `key`, if it has state.
    #[inline]
    pub fn find(&self, key: u64) -> Option<u32> {
        self.keys.find(key)
    }

    /// The slot of `key`, taking one with default state if it has none;
    /// `None` (counted) when the table is at its limit.
    #[inline]
    pub fn find_or_insert(&mut self, key: u64) -> Option<u32> {
        let slot = self.keys.find_or_insert(key, &mut self.grew);
        self.keys_refused += slot.is_none() as u64;
        slot
    }

    /// Gives a key's slot back; it must have no entries.
    pub fn release(&mut self, slot: u32) {
        self.keys.release(slot, &mut self.grew);
    }

    #[inline]
    pub fn key(&self, slot: u32) -> &KeyEntry<S> {
        self.keys.key(slot)
    }

    #[inline]
    pub fn key_mut(&mut self, slot: u32) -> &mut KeyEntry<S> {
        self.keys.key_mut(slot)
    }

    #[inline]
    pub fn entry(&self, abs: u64) -> &Slot<T> {
        debug_assert!(abs >= self.head && abs < self.tail);
        &self.ring[(abs & self.mask) as usize]
    }

    /// The oldest entry, if any.
    #[inline]
    pub fn front(&self) -> Option<&Slot<T>> {
        (self.head < self.tail).then(|| &self.ring[(self.head & self.mask) as usize])
    }

    /// Removes the oldest entry (the oldest of its key too) and returns it
    /// with its absolute index.
    #[inline]
    pub fn pop_front(&mut self) -> Option<(u64, Slot<T>)> {
        if self.head == self.tail {
            return None;
        }
        let abs = self.head;
        let slot = self.ring[(abs & self.mask) as usize];
        self.head += 1;
        let key = self.keys.key_mut(slot.key);
        debug_assert_eq!(key.head, abs);
        key.head = slot.next;
        if key.head == NONE {
            key.tail = NONE;
        }
        key.entries -= 1;
        Some((abs, slot))
    }

    /// Whether the ring is at its limit: the caller must pop (and account
    /// for) the oldest entry before pushing.
    #[inline]
    pub fn must_evict(&self) -> bool {
        self.len() >= self.ring_limit
    }

    /// Appends an entry of the key in `slot`; returns its absolute index.
    /// Entries must be pushed in `(ts_ns, seq)` order.
    #[inline]
    pub fn push(&mut self, slot: u32, ts_ns: i64, seq: u64, data: T) -> u64 {
        assert!(!self.must_evict(), "push into a full window ring");
        if self.len() == self.ring.len() {
            self.grow();
        }
        let abs = self.tail;
        self.ring[(abs & self.mask) as usize] = Slot { ts_ns, seq, key: slot, next: NONE, data };
        self.tail += 1;
        let key = self.keys.key_mut(slot);
        let prev = key.tail;
        key.tail = abs;
        key.entries += 1;
        if prev == NONE {
            key.head = abs;
        } else {
            self.ring[(prev & self.mask) as usize].next = abs;
        }
        abs
    }

    #[cold]
    fn grow(&mut self) {
        let cap = self.ring.len() * 2;
        let mut ring = vec![Slot::default(); cap];
        let mask = cap as u64 - 1;
        for abs in self.head..self.tail {
            ring[(abs & mask) as usize] = self.ring[(abs & self.mask) as usize];
        }
        self.ring = ring;
        self.mask = mask;
        self.grew += 1;
    }

    /// The absolute indexes of `slot`'s entries, oldest first.
    #[cfg(test)]
    pub fn walk(&self, slot: u32) -> impl Iterator<Item = (u64, &Slot<T>)> + '_ {
        let mut abs = self.keys.key(slot).head;
        std::iter::from_fn(move || {
            if abs == NONE {
                return None;
            }
            let at = abs;
            let entry = self.entry(at);
            abs = entry.next;
            Some((at, entry))
        })
    }

    /// Every key's slot and entry (for snapshots and tests), in no
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

    #[test]
    fn lists_follow_pushes_and_expiry_across_growth() {
        let mut w: Window<u64, u32> = Window::new(4, 1 << 12);
        let a = w.find_or_insert(1).unwrap();
        let b = w.find_or_insert(2).unwrap();
        for i in 0..3000u64 {
            w.push(if i % 3 == 0 { a } else { b }, i as i64, i, i);
        }
        assert!(w.grew >= 2);
        let a_entries: Vec<u64> = w.walk(a).map(|(_, s)| s.data).collect();
        assert_eq!(a_entries, (0..3000).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        for _ in 0..1500 {
            w.pop_front().unwrap();
        }
        let b_entries: Vec<u64> = w.walk(b).map(|(_, s)| s.data).collect();
        assert_eq!(b_entries, (1500..3000).filter(|i| i % 3 != 0).collect::<Vec<_>>());
        assert_eq!(w.key(a).entries as usize + w.key(b).entries as usize, w.len());
    }

    #[test]
    fn limits_refuse_keys_and_ask_for_eviction() {
        let mut w: Window<u8, u8> = Window::new(2, 4);
        let a = w.find_or_insert(10).unwrap();
        assert!(w.find_or_insert(11).is_some());
        assert_eq!(w.find_or_insert(12), None);
        assert_eq!(w.keys_refused, 1);
        for i in 0..4 {
            w.push(a, i, i as u64, 0);
        }
        assert!(w.must_evict());
        w.pop_front();
        assert!(!w.must_evict());
        let b = w.find(11).unwrap();
        w.release(b);
        assert!(w.find_or_insert(12).is_some());
    }
}
