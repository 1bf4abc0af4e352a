//! A bounded single-producer/single-consumer ring of preallocated slots.
//!
//! Slots are allocated once at start-up and reused: the producer fills a slot
//! in place (`claim` then `publish`), the consumer reads it in place (`peek`
//! then `release`). Cursors are cache-padded and each side caches the other's
//! cursor, so the shared cache lines are touched once per slot, and a slot is
//! meant to hold a whole batch of records.

use crossbeam_utils::CachePadded;
use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Shared<T> {
    slots: Box<[UnsafeCell<T>]>,
    mask: usize,
    /// Next slot the consumer will read; written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer will fill; written only by the producer.
    tail: CachePadded<AtomicUsize>,
    producer_gone: AtomicBool,
    consumer_gone: AtomicBool,
}

// SAFETY: a slot is accessed by the producer only while it lies in
// [tail, head + capacity) and by the consumer only while it lies in
// [head, tail); the Release store of a cursor hands the slot over and the
// Acquire load on the other side makes its contents visible. So no slot is
// ever accessed from two threads at once, and T only needs to be Send.
unsafe impl<T: Send> Sync for Shared<T> {}
unsafe impl<T: Send> Send for Shared<T> {}

pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    tail: usize,
    cached_head: usize,
}

pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
    cached_tail: usize,
}

/// Creates a ring of `capacity` slots (a power of two), each made by `init`.
pub fn channel<T: Send>(capacity: usize, mut init: impl FnMut() -> T) -> (Producer<T>, Consumer<T>) {
    assert!(capacity.is_power_of_two(), "ring capacity must be a power of two, got {capacity}");
    let slots: Box<[UnsafeCell<T>]> = (0..capacity).map(|_| UnsafeCell::new(init())).collect();
    let shared = Arc::new(Shared {
        slots,
        mask: capacity - 1,
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        producer_gone: AtomicBool::new(false),
        consumer_gone: AtomicBool::new(false),
    });
    (Producer { shared: shared.clone(), tail: 0, cached_head: 0 }, Consumer { shared, head: 0, cached_tail: 0 })
}

impl<T> Producer<T> {
    /// The next free slot to fill in place, or `None` when the ring is full.
    /// Calling it again before `publish` returns the same slot.
    #[inline]
    pub fn claim(&mut self) -> Option<&mut T> {
        let capacity = self.shared.mask + 1;
        if self.tail - self.cached_head == capacity {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail - self.cached_head == capacity {
                return None;
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: tail - head < capacity, so the consumer does not own this
        // slot (see the Sync impl), and &mut self prevents a second claim.
        Some(unsafe { &mut *slot.get() })
    }

    /// Hands the claimed slot to the consumer. Must follow a successful `claim`.
    #[inline]
    pub fn publish(&mut self) {
        assert!(self.tail - self.cached_head < self.shared.mask + 1, "publish without a claimed slot");
        self.tail += 1;
        self.shared.tail.store(self.tail, Ordering::Release);
    }

    /// Slots published and not yet released by the consumer.
    pub fn occupancy(&self) -> usize {
        self.tail - self.shared.head.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    /// True once the consumer has been dropped (e.g. its thread died):
    /// a producer waiting on a full ring must stop then.
    pub fn consumer_gone(&self) -> bool {
        self.shared.consumer_gone.load(Ordering::Acquire)
    }
}

impl<T> Consumer<T> {
    /// The oldest published slot, or `None` when the ring is empty.
    #[inline]
    pub fn peek(&mut self) -> Option<&T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: head < tail, so the producer published this slot and will
        // not touch it again until `release` moves head past it.
        Some(unsafe { &*slot.get() })
    }

    /// Returns the slot from the last successful `peek` to the producer.
    #[inline]
    pub fn release(&mut self) {
        assert!(self.head < self.cached_tail, "release without a peeked slot");
        self.head += 1;
        self.shared.head.store(self.head, Ordering::Release);
    }

    /// True once the producer is dropped and every published slot was read.
    pub fn is_finished(&mut self) -> bool {
        self.shared.producer_gone.load(Ordering::Acquire) && self.head == self.shared.tail.load(Ordering::Acquire)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.producer_gone.store(true, Ordering::Release);
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.consumer_gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_and_empty() {
        let (mut tx, mut rx) = channel(2, || 0u32);
        assert!(rx.peek().is_none());
        *tx.claim().unwrap() = 1;
        tx.publish();
        *tx.claim().unwrap() = 2;
        tx.publish();
        assert!(tx.claim().is_none(), "a full ring refuses a claim");
        assert_eq!(tx.occupancy(), 2);
        assert_eq!(*rx.peek().unwrap(), 1);
        rx.release();
        assert!(tx.claim().is_some());
        assert_eq!(*rx.peek().unwrap(), 2);
        rx.release();
        assert!(rx.peek().is_none());
        assert!(!rx.is_finished());
        drop(tx);
        assert!(rx.is_finished());
    }

    fn deliver_all(capacity: usize, batches: Vec<Vec<u64>>) {
        let (mut tx, mut rx) = channel(capacity, Vec::<u64>::new);
        let expected: Vec<u64> = batches.iter().flatten().copied().collect();
        let producer = std::thread::spawn(move || {
            for batch in batches {
                loop {
                    if let Some(slot) = tx.claim() {
                        slot.clear();
                        slot.extend_from_slice(&batch);
                        tx.publish();
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        loop {
            if let Some(slot) = rx.peek() {
                got.extend_from_slice(slot);
                rx.release();
            } else if rx.is_finished() {
                break;
            } else {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(got, expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The ring delivers every record once, in order, across threads.
        #[test]
        fn delivers_every_record_once_in_order(
            log2_capacity in 0u32..5,
            batches in proptest::collection::vec(proptest::collection::vec(any::<u64>(), 0..20), 0..200),
        ) {
            deliver_all(1 << log2_capacity, batches);
        }
    }
}
