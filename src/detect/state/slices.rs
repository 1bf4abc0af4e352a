//! `Slices`: the bookkeeping of a snapshot of an array (a rule's per-key
//! table) copied in fixed slices of `1 << shift` items after an O(1) cut.
//! The array's first `len` items at the barrier are the snapshot; each
//! slice is copied once, either by the background copy (`next_uncopied`, in order)
//! or, out of order, by the first write after the barrier to an item of a
//! slice not yet copied (copy-first: the caller asks `uncopied` before it
//! changes an item). Items appended after the barrier are not part of it.
//! A bit per slice, cleared at the cut (`len >> shift` bits, a few words).
//!
//! `SlicedImage`: where the slices go: appended in the order they were
//! copied, with their slice index; `in_order` gives them back by index
//! (on the checkpoint writer thread, which encodes them).
//!
//! Limit: the caller does not move items while a snapshot is in progress
//! (a table that grows finishes the snapshot first).

use std::ops::Range;

#[derive(Default)]
pub struct Slices {
    shift: u32,
    /// Items at the barrier.
    len: usize,
    /// One bit per slice: copied.
    copied: Vec<u64>,
    /// Slices below it were looked at by `next`.
    cursor: usize,
    /// Slices not yet copied.
    left: usize,
}

impl Slices {
    pub fn new(shift: u32) -> Slices {
        Slices { shift, ..Slices::default() }
    }

    /// The cut: the first `len` items are the snapshot, none copied yet.
    /// O(len >> shift / 64) (the bits; the array itself is not touched).
    pub fn begin(&mut self, len: usize) {
        self.len = len;
        let slices = len.div_ceil(1 << self.shift);
        self.copied.clear();
        self.copied.resize(slices.div_ceil(64), 0);
        self.cursor = 0;
        self.left = slices;
    }

    /// The slice of item `i`, if it is part of the snapshot and not copied
    /// yet: the caller copies it (`mark` first) before changing the item.
    #[inline(always)]
    pub fn uncopied(&self, i: usize) -> Option<usize> {
        let s = i >> self.shift;
        (i < self.len && self.copied[s / 64] >> (s % 64) & 1 == 0).then_some(s)
    }

    /// Marks slice `s` copied; its items' range.
    pub fn mark(&mut self, s: usize) -> Range<usize> {
        debug_assert!(self.copied[s / 64] >> (s % 64) & 1 == 0, "a slice copied twice");
        self.copied[s / 64] |= 1 << (s % 64);
        self.left -= 1;
        self.range(s)
    }

    /// The next slice not yet copied (in order), if any: the caller marks and copies it.
    pub fn next_uncopied(&mut self) -> Option<usize> {
        let slices = self.len.div_ceil(1 << self.shift);
        while self.cursor < slices {
            let s = self.cursor;
            self.cursor += 1;
            if self.copied[s / 64] >> (s % 64) & 1 == 0 {
                return Some(s);
            }
        }
        None
    }

    pub fn range(&self, s: usize) -> Range<usize> {
        (s << self.shift)..((s + 1) << self.shift).min(self.len)
    }

    /// Whether every slice was copied.
    pub fn done(&self) -> bool {
        self.left == 0
    }

    /// Items at the barrier.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn shift(&self) -> u32 {
        self.shift
    }
}

/// Slices of one array, in the order they were copied (reused: `clear`
/// keeps the capacity).
pub struct SlicedImage<T> {
    items: Vec<T>,
    /// (slice index, offset in `items`) in the order copied.
    slices: Vec<(u32, u32)>,
}

impl<T> Default for SlicedImage<T> {
    fn default() -> SlicedImage<T> {
        SlicedImage { items: Vec::new(), slices: Vec::new() }
    }
}

impl<T: Copy> SlicedImage<T> {
    pub fn clear(&mut self) {
        self.items.clear();
        self.slices.clear();
    }

    /// Appends slice `s`: `items` are its items, in order.
    pub fn push(&mut self, s: usize, items: &[T]) {
        self.slices.push((s as u32, self.items.len() as u32));
        self.items.extend_from_slice(items);
    }

    /// Appends slice `s` item by item (`f` maps each item of `range`).
    pub fn push_with(&mut self, s: usize, range: Range<usize>, f: impl FnMut(usize) -> T) {
        self.slices.push((s as u32, self.items.len() as u32));
        self.items.extend(range.map(f));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each slice's offset in the items, by slice index (`usize::MAX`:
    /// not copied), for `get`.
    pub fn offsets(&self) -> Vec<usize> {
        let mut offsets = vec![usize::MAX; self.slices.iter().map(|&(s, _)| s as usize + 1).max().unwrap_or(0)];
        for &(s, at) in &self.slices {
            offsets[s as usize] = at as usize;
        }
        offsets
    }

    /// Item `i` of the array (slices of `1 << shift`), given `offsets`.
    pub fn get(&self, offsets: &[usize], shift: u32, i: usize) -> &T {
        &self.items[offsets[i >> shift] + (i & ((1 << shift) - 1))]
    }

    /// The items by their index in the array of `len` items at the barrier
    /// (slices of `1 << shift`): slice by slice in index order. Every
    /// slice must have been pushed.
    pub fn in_order(&self, shift: u32, len: usize) -> impl Iterator<Item = &T> {
        let mut order = self.slices.clone();
        order.sort_unstable_by_key(|&(s, _)| s);
        assert!(
            order.len() == len.div_ceil(1 << shift) && order.iter().enumerate().all(|(i, &(s, _))| s as usize == i),
            "a slice of the snapshot missing or copied twice"
        );
        order.into_iter().flat_map(move |(s, at)| {
            let n = (((s as usize + 1) << shift).min(len)) - ((s as usize) << shift);
            self.items[at as usize..at as usize + n].iter()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_copied_out_of_order_come_back_in_order_once_each() {
        let array: Vec<u32> = (0..1000).collect();
        let mut s = Slices::new(4);
        let mut image = SlicedImage::default();
        s.begin(array.len() - 10);
        // Writes first: items 500 and 37 (twice), then the background copy.
        for i in [500, 37, 40, 995] {
            if let Some(slice) = s.uncopied(i) {
                let r = s.mark(slice);
                image.push(slice, &array[r]);
            }
        }
        assert_eq!(s.uncopied(995), None, "past the barrier's length");
        while let Some(slice) = s.next_uncopied() {
            let r = s.mark(slice);
            image.push(slice, &array[r]);
        }
        assert!(s.done());
        let got: Vec<u32> = image.in_order(4, 990).copied().collect();
        assert_eq!(got, (0..990).collect::<Vec<u32>>());
        // Reused: an empty snapshot.
        s.begin(0);
        image.clear();
        assert!(s.done() && s.next_uncopied().is_none());
        assert_eq!(image.in_order(4, 0).count(), 0);
    }
}
