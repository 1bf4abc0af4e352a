//! The bounded table of (group, instrument) keys that the window rules
//! (`window.rs`) and the spoof stream (`spoof_pattern/stream.rs`) keep:
//! each key's slot holds the head and tail of its list of window entries,
//! their count, and the rule's state.
//!
//! The key -> slot map is the open-addressing `FlatMap` (a key's address
//! follows from the key, so the shard prefetches it records ahead; no
//! tombstones, so keys that come and go do not slow it down). Slots are
//! reused through a free list. Both start small and grow by doubling up to
//! the stated limit, never shrink, so once warm nothing allocates; every
//! growth is added to the caller's `grew` counter, and a key refused at the
//! limit is the caller's to count (each owner states its own policy).

use crate::flat_map::FlatMap;

/// No entry / no slot (in a key's list and in the rings' links).
pub const NONE: u64 = u64::MAX;

/// A key's place in the table: its list of entries and the rule's state.
#[derive(Clone, Copy, Debug)]
pub struct KeyEntry<S> {
    pub key: u64,
    /// Absolute indexes of the key's oldest and newest entries, or `NONE`.
    pub head: u64,
    pub tail: u64,
    pub entries: u32,
    pub state: S,
}

impl<S: Default> KeyEntry<S> {
    fn empty(key: u64) -> KeyEntry<S> {
        KeyEntry { key, head: NONE, tail: NONE, entries: 0, state: S::default() }
    }
}

pub struct KeySlots<S> {
    map: FlatMap<u64, u32>,
    keys: Vec<KeyEntry<S>>,
    free: Vec<u32>,
    limit: usize,
}

const INITIAL: usize = 1 << 10;

impl<S: Copy + Default> KeySlots<S> {
    /// At most `limit` keys (at least 1).
    pub fn new(limit: usize) -> KeySlots<S> {
        let limit = limit.max(1);
        let cap = INITIAL.min(limit);
        KeySlots {
            map: FlatMap::with_capacity(cap),
            keys: Vec::with_capacity(cap),
            free: Vec::with_capacity(cap),
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a new key would be refused.
    #[inline]
    pub fn full(&self) -> bool {
        self.map.len() >= self.limit
    }

    /// The slot of `key`, if it has one.
    #[inline]
    pub fn find(&self, key: u64) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// The slot of `key`, taking one with an empty list and default state
    /// if it has none; `None` when the table is at its limit.
    #[inline]
    pub fn find_or_insert(&mut self, key: u64, grew: &mut u64) -> Option<u32> {
        if self.full() {
            return self.find(key);
        }
        let before = self.map.grew;
        let (value, inserted) = self.map.get_or_insert_default(key);
        if !inserted {
            return Some(*value);
        }
        let slot = take_slot(&mut self.keys, &mut self.free, key, grew);
        *value = slot;
        *grew += self.map.grew - before;
        Some(slot)
    }

    /// A slot for `key`, which has none, with an empty list and default
    /// state; `None` when the table is at its limit.
    pub fn insert(&mut self, key: u64, grew: &mut u64) -> Option<u32> {
        debug_assert!(self.find(key).is_none(), "insert of a key with a slot");
        if self.full() {
            return None;
        }
        let slot = take_slot(&mut self.keys, &mut self.free, key, grew);
        let before = self.map.grew;
        self.map.insert(key, slot);
        *grew += self.map.grew - before;
        Some(slot)
    }

    /// Gives a key's slot back; it must have no entries.
    pub fn release(&mut self, slot: u32, grew: &mut u64) {
        let entry = &self.keys[slot as usize];
        assert_eq!(entry.entries, 0, "a key released with window entries");
        self.map.remove(entry.key);
        if self.free.len() == self.free.capacity() {
            *grew += 1;
        }
        self.free.push(slot);
    }

    #[inline(always)]
    pub fn key(&self, slot: u32) -> &KeyEntry<S> {
        &self.keys[slot as usize]
    }

    #[inline(always)]
    pub fn key_mut(&mut self, slot: u32) -> &mut KeyEntry<S> {
        &mut self.keys[slot as usize]
    }

    /// Every key's slot and entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &KeyEntry<S>)> + '_ {
        self.map.iter().map(|(_, slot)| (slot, &self.keys[slot as usize]))
    }
}

/// A free slot (or a new one) set to `key` with an empty list.
#[inline]
fn take_slot<S: Copy + Default>(keys: &mut Vec<KeyEntry<S>>, free: &mut Vec<u32>, key: u64, grew: &mut u64) -> u32 {
    match free.pop() {
        Some(slot) => {
            keys[slot as usize] = KeyEntry::empty(key);
            slot
        }
        None => {
            if keys.len() == keys.capacity() {
                *grew += 1;
            }
            keys.push(KeyEntry::empty(key));
            (keys.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_refused_at_the_limit_and_reused() {
        let mut grew = 0;
        let mut t: KeySlots<u8> = KeySlots::new(2);
        let a = t.find_or_insert(10, &mut grew).unwrap();
        assert_eq!(t.find_or_insert(10, &mut grew), Some(a));
        let b = t.insert(11, &mut grew).unwrap();
        assert_ne!(a, b);
        assert!(t.full());
        assert_eq!(t.find_or_insert(12, &mut grew), None);
        assert_eq!(t.insert(12, &mut grew), None);
        assert_eq!(t.find_or_insert(11, &mut grew), Some(b));
        t.key_mut(b).state = 7;
        t.release(b, &mut grew);
        assert_eq!(t.find(11), None);
        // The freed slot comes back empty, with default state.
        let c = t.find_or_insert(12, &mut grew).unwrap();
        assert_eq!(c, b);
        assert_eq!((t.key(c).key, t.key(c).state, t.key(c).head, t.key(c).entries), (12, 0, NONE, 0));
        let mut keys: Vec<u64> = t.iter().map(|(_, k)| k.key).collect();
        keys.sort();
        assert_eq!(keys, [10, 12]);
        assert_eq!(grew, 0);
    }

    #[test]
    #[should_panic(expected = "released with window entries")]
    fn a_key_with_entries_is_not_released() {
        let mut grew = 0;
        let mut t: KeySlots<u8> = KeySlots::new(4);
        let a = t.find_or_insert(1, &mut grew).unwrap();
        t.key_mut(a).entries = 1;
        t.release(a, &mut grew);
    }

    #[test]
    fn growth_is_counted() {
        let mut grew = 0;
        let mut t: KeySlots<u8> = KeySlots::new(1 << 12);
        for key in 0..3000 {
            t.find_or_insert(key, &mut grew).unwrap();
        }
        assert!(grew >= 2, "grew {grew}");
        assert_eq!(t.len(), 3000);
    }
}
