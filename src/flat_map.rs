//! An open-addressing hash map for the source thread's hot tables (the
//! interners, the open orders): one flat array of `(key, value)` slots,
//! linear probing, backward-shift deletion, so a lookup is usually a single
//! cache line, and a slot's address is known from the key alone. That lets
//! the source prefetch the slots of records a few lines ahead, which hides
//! the cache misses that dominate a large table. [`prefetch`] is the one
//! cache hint the project uses (here, in the shard's key table and loop).

/// Asks the CPU to bring `value`'s cache line in; only a hint, with no
/// effect on results.
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect, and the pointer is valid.
    unsafe {
        std::arch::x86_64::_mm_prefetch(value as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A key with a reserved value that marks an empty slot. A real key equal to
/// it is still stored (on the side), so every key is usable.
pub trait FlatKey: Copy + Eq {
    const EMPTY: Self;
    fn hash(self) -> u64;
}

impl FlatKey for u64 {
    const EMPTY: u64 = u64::MAX;
    #[inline]
    fn hash(self) -> u64 {
        self.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl FlatKey for u128 {
    const EMPTY: u128 = 0;
    #[inline]
    fn hash(self) -> u64 {
        ((self as u64) ^ ((self >> 64) as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

pub struct FlatMap<K, V> {
    slots: Box<[(K, V)]>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    /// Bits to shift a hash right by to get a slot index (the high bits mix best).
    shift: u32,
    len: usize,
    /// The value of the key equal to `K::EMPTY`, if present.
    empty_key: Option<V>,
    /// Times the table doubled after start-up.
    pub grew: u64,
}

impl<K: FlatKey, V: Copy + Default> FlatMap<K, V> {
    /// A map that holds `capacity` keys before it first grows.
    pub fn with_capacity(capacity: usize) -> FlatMap<K, V> {
        let slots = (capacity.max(8) * 2).next_power_of_two();
        FlatMap {
            slots: vec![(K::EMPTY, V::default()); slots].into_boxed_slice(),
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros(),
            len: 0,
            empty_key: None,
            grew: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len + self.empty_key.is_some() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `additional` more keys without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let grew = self.grew;
        while (self.len + additional) * 2 > self.slots.len() {
            self.grow();
        }
        // Sized on purpose, not outgrown: not counted as growth.
        self.grew = grew;
    }

    #[inline]
    fn home(&self, key: K) -> usize {
        (key.hash() >> self.shift) as usize
    }

    /// Slot index holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: K) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            let slot_key = self.slots[i].0;
            if slot_key == key {
                return (i, true);
            }
            if slot_key == K::EMPTY {
                return (i, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Asks the CPU to bring `key`'s slot into cache; no effect on results.
    #[inline]
    pub fn prefetch(&self, key: K) {
        prefetch(&self.slots[self.home(key)]);
    }

    #[inline]
    pub fn get(&self, key: K) -> Option<&V> {
        if key == K::EMPTY {
            return self.empty_key.as_ref();
        }
        match self.find(key) {
            (i, true) => Some(&self.slots[i].1),
            _ => None,
        }
    }

    #[inline]
    pub fn get_mut(&mut self, key: K) -> Option<&mut V> {
        if key == K::EMPTY {
            return self.empty_key.as_mut();
        }
        match self.find(key) {
            (i, true) => Some(&mut self.slots[i].1),
            _ => None,
        }
    }

    /// Where `key` is: a handle for `at`, `at_mut` and `remove_at`, valid
    /// until the map next changes. One probe where `get` then `remove`
    /// would take two.
    #[inline]
    pub fn index_of(&self, key: K) -> Option<usize> {
        if key == K::EMPTY {
            // The key kept on the side has the handle one past the slots.
            return self.empty_key.map(|_| self.slots.len());
        }
        match self.find(key) {
            (i, true) => Some(i),
            _ => None,
        }
    }

    /// The value at a handle from `index_of`.
    #[inline]
    pub fn at(&self, i: usize) -> &V {
        match self.slots.get(i) {
            Some((_, value)) => value,
            None => self.empty_key.as_ref().expect("a handle from index_of"),
        }
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize) -> &mut V {
        match self.slots.get_mut(i) {
            Some((_, value)) => value,
            None => self.empty_key.as_mut().expect("a handle from index_of"),
        }
    }

    /// Removes the entry at a handle from `index_of`.
    #[inline]
    pub fn remove_at(&mut self, i: usize) -> V {
        if i >= self.slots.len() {
            return self.empty_key.take().expect("a handle from index_of");
        }
        self.remove_slot(i)
    }

    /// Inserts `key` unless it is present; returns whether it was inserted
    /// (one probe where `contains_key` then `insert` would take two).
    #[inline]
    pub fn insert_new(&mut self, key: K, value: V) -> bool {
        if key == K::EMPTY {
            if self.empty_key.is_some() {
                return false;
            }
            self.empty_key = Some(value);
            return true;
        }
        let (i, found) = self.find(key);
        if found {
            return false;
        }
        self.slots[i] = (key, value);
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            self.grow();
        }
        true
    }

    pub fn contains_key(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) {
        if key == K::EMPTY {
            self.empty_key = Some(value);
            return;
        }
        let (i, found) = self.find(key);
        self.slots[i] = (key, value);
        if !found {
            self.len += 1;
            // At most half full keeps probe runs short.
            if self.len * 2 > self.slots.len() {
                self.grow();
            }
        }
    }

    /// The value of `key`, inserting `V::default()` if it has none; true
    /// when it was inserted. One probe (a lookup then an insert is two).
    #[inline]
    pub fn get_or_insert_default(&mut self, key: K) -> (&mut V, bool) {
        if key == K::EMPTY {
            let inserted = self.empty_key.is_none();
            return (self.empty_key.get_or_insert_with(V::default), inserted);
        }
        let (mut i, mut found) = self.find(key);
        if !found && (self.len + 1) * 2 > self.slots.len() {
            // Grown before the insert, so the slot found stays where it is.
            self.grow();
            (i, found) = self.find(key);
        }
        if !found {
            self.slots[i] = (key, V::default());
            self.len += 1;
        }
        (&mut self.slots[i].1, !found)
    }

    #[inline]
    pub fn remove(&mut self, key: K) -> Option<V> {
        if key == K::EMPTY {
            return self.empty_key.take();
        }
        let (hole, found) = self.find(key);
        if !found {
            return None;
        }
        Some(self.remove_slot(hole))
    }

    fn remove_slot(&mut self, mut hole: usize) -> V {
        let value = self.slots[hole].1;
        // Backward shift: pull later entries of the probe run into the hole
        // when their home is not between the hole and where they sit, so no
        // tombstones are left behind.
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let slot_key = self.slots[j].0;
            if slot_key == K::EMPTY {
                break;
            }
            let home = self.home(slot_key);
            let distance_home = j.wrapping_sub(home) & self.mask;
            let distance_hole = j.wrapping_sub(hole) & self.mask;
            if distance_home >= distance_hole {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole].0 = K::EMPTY;
        self.len -= 1;
        value
    }

    fn grow(&mut self) {
        self.grew += 1;
        let old = std::mem::take(&mut self.slots);
        let slots = old.len() * 2;
        self.slots = vec![(K::EMPTY, V::default()); slots].into_boxed_slice();
        self.mask = slots - 1;
        self.shift = 64 - slots.trailing_zeros();
        for &(key, value) in old.iter() {
            if key != K::EMPTY {
                let (i, _) = self.find(key);
                self.slots[i] = (key, value);
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        let empty = self.empty_key.map(|value| (K::EMPTY, value));
        self.slots.iter().copied().filter(|(key, _)| *key != K::EMPTY).chain(empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The map agrees with std's HashMap under any mix of operations,
        /// including growth, removal runs and the reserved key.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u8..6, 0u64..64, any::<u32>()), 0..2000)) {
            let mut flat: FlatMap<u64, u32> = FlatMap::with_capacity(4);
            let mut model = HashMap::new();
            for (op, key, value) in ops {
                // Small keys collide in probe runs; map one of them to the reserved key.
                let key = if key == 63 { u64::MAX } else { key * 0x1_0000_0001 };
                match op {
                    0 => { flat.insert(key, value); model.insert(key, value); }
                    1 => prop_assert_eq!(flat.remove(key), model.remove(&key)),
                    2 => {
                        let inserted = !model.contains_key(&key);
                        prop_assert_eq!(flat.insert_new(key, value), inserted);
                        model.entry(key).or_insert(value);
                    }
                    3 => match flat.index_of(key) {
                        Some(i) => prop_assert_eq!(Some(flat.remove_at(i)), model.remove(&key)),
                        None => prop_assert!(!model.contains_key(&key)),
                    },
                    4 => if let Some(i) = flat.index_of(key) {
                        *flat.at_mut(i) = value;
                        prop_assert_eq!(*flat.at(i), value);
                        model.insert(key, value);
                    },
                    _ => prop_assert_eq!(flat.get(key).copied(), model.get(&key).copied()),
                }
                prop_assert_eq!(flat.len(), model.len());
            }
            let mut all: Vec<_> = flat.iter().collect();
            all.sort();
            let mut expected: Vec<_> = model.into_iter().collect();
            expected.sort();
            prop_assert_eq!(all, expected);
        }
    }

    #[test]
    fn get_or_insert_default_inserts_once_and_grows_like_insert() {
        let mut map: FlatMap<u64, u32> = FlatMap::with_capacity(8);
        for key in (0..100u64).chain([u64::MAX]) {
            let (value, inserted) = map.get_or_insert_default(key);
            assert!(inserted && *value == 0);
            *value = (key % 1000) as u32 + 1;
            assert_eq!(map.get_or_insert_default(key), (&mut ((key % 1000) as u32 + 1), false));
        }
        assert_eq!(map.len(), 101);
        assert!(map.grew > 0);
        assert!((0..100u64).chain([u64::MAX]).all(|k| map.get(k) == Some(&((k % 1000) as u32 + 1))));
    }

    #[test]
    fn u128_keys_and_growth() {
        let mut flat: FlatMap<u128, u32> = FlatMap::with_capacity(8);
        for i in 1..10_000u128 {
            flat.insert(i << 64 | i, i as u32);
        }
        assert!(flat.grew > 0);
        for i in 1..10_000u128 {
            assert_eq!(flat.get(i << 64 | i), Some(&(i as u32)));
        }
        assert_eq!(flat.get(5), None);
    }
}
