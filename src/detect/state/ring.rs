//! `Ring`: a window FIFO of fixed-size entries, a power-of-two ring
//! addressed by absolute position. `head` counts the entries ever popped
//! and `tail` those ever pushed; the entry at position `p` (`head <= p <
//! tail`) is at `entries[p & mask]`, so a position names its entry for as
//! long as it is in the window, across wraps and growth (rules keep
//! positions in their keys and snapshot cursors). It doubles when full, so
//! it spans about the most entries the window held. Excessive-cancel's and
//! quote-stuffing's windows.

pub struct Ring<T: Copy + Default> {
    pub(crate) entries: Box<[T]>,
    mask: u64,
    pub head: u64,
    pub tail: u64,
}

impl<T: Copy + Default> Ring<T> {
    /// A ring of at least `capacity` entries (a power of two, at least 16).
    pub fn with_capacity(capacity: usize) -> Ring<T> {
        let n = capacity.max(16).next_power_of_two();
        Ring { entries: vec![T::default(); n].into_boxed_slice(), mask: n as u64 - 1, head: 0, tail: 0 }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.tail - self.head > self.mask
    }

    /// The entry at absolute position `pos` (`head <= pos < tail`).
    #[inline(always)]
    pub fn at(&self, pos: u64) -> &T {
        debug_assert!(self.head <= pos && pos < self.tail);
        // SAFETY: `entries` has `mask + 1` entries, so a masked position is in bounds.
        unsafe { self.entries.get_unchecked((pos & self.mask) as usize) }
    }

    #[inline(always)]
    pub fn at_mut(&mut self, pos: u64) -> &mut T {
        debug_assert!(self.head <= pos && pos < self.tail);
        // SAFETY: as `at`.
        unsafe { self.entries.get_unchecked_mut((pos & self.mask) as usize) }
    }

    #[inline(always)]
    pub fn front(&self) -> Option<&T> {
        (self.head != self.tail).then(|| self.at(self.head))
    }

    /// The `i`-th entry from the front.
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&T> {
        let pos = self.head + i as u64;
        (pos < self.tail).then(|| self.at(pos))
    }

    /// Drops the front entry (there is one).
    #[inline(always)]
    pub fn pop_front(&mut self) {
        debug_assert!(self.head < self.tail);
        self.head += 1;
    }

    #[inline(always)]
    pub fn push_back(&mut self, entry: T) {
        if self.is_full() {
            self.grow();
        }
        let tail = self.tail;
        self.tail += 1;
        *self.at_mut(tail) = entry;
    }

    /// Doubles the ring; positions stay what they were.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let mut bigger = Ring::with_capacity(self.entries.len() * 2);
        (bigger.head, bigger.tail) = (self.head, self.tail);
        for pos in self.head..self.tail {
            *bigger.at_mut(pos) = *self.at(pos);
        }
        *self = bigger;
    }

    /// The positions in the window, front first.
    pub fn positions(&self) -> std::ops::Range<u64> {
        self.head..self.tail
    }

    /// Every entry, front first, to change in place.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        for pos in self.positions() {
            f(self.at_mut(pos));
        }
    }
}
