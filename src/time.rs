//! Event time: the feed-wide watermark and each shard's reorder buffer. This
//! is the only place where event time advances.
//!
//! The watermark for a record is (max `ts_ns` of the accepted records before
//! it in feed order) - lateness. A record below it is late and never applied.
//! Every other record waits in its shard's reorder buffer until the
//! watermark passes it, and leaves in `(ts_ns, seq)` order: no record that
//! could still arrive sorts before one that has left.

use crate::event::Event;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The source's view of event time.
#[derive(Clone, Copy, Debug)]
pub struct Watermark {
    max_ts_ns: i64,
    lateness_ns: i64,
}

impl Watermark {
    pub fn new(lateness_ns: i64) -> Watermark {
        assert!(lateness_ns >= 0);
        Watermark { max_ts_ns: i64::MIN, lateness_ns }
    }

    /// The watermark now: records with `ts_ns` below it are late.
    #[inline]
    pub fn current(&self) -> i64 {
        self.max_ts_ns.saturating_sub(self.lateness_ns)
    }

    /// Judges a record against the records before it, then lets it move
    /// the watermark. Returns true if the record is late.
    #[inline]
    pub fn observe(&mut self, ts_ns: i64) -> bool {
        let late = ts_ns < self.current();
        self.max_ts_ns = self.max_ts_ns.max(ts_ns);
        late
    }

    /// The newest `ts_ns` seen (checkpoints save it).
    pub fn max_ts_ns(&self) -> i64 {
        self.max_ts_ns
    }

    /// Moves event time on without a record (live feeds gone quiet).
    pub fn advance_to(&mut self, ts_ns: i64) {
        self.max_ts_ns = self.max_ts_ns.max(ts_ns);
    }
}

/// A record waiting for the watermark, with the wall-clock stamp of the
/// batch that brought it (for latency).
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub event: Event,
    pub ingest_ns: u64,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.event.order_key() == other.event.order_key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.event.order_key().cmp(&other.event.order_key())
    }
}

/// Most records arrive in event-time order, so they queue in a sorted run
/// (O(1)); only the ones that arrive out of order pay for the heap.
pub struct ReorderBuffer {
    run: VecDeque<Pending>,
    heap: BinaryHeap<Reverse<Pending>>,
    /// Times the buffers had to grow past their start-up capacity.
    pub grew: u64,
}

impl ReorderBuffer {
    pub fn with_capacity(capacity: usize) -> ReorderBuffer {
        ReorderBuffer { run: VecDeque::with_capacity(capacity), heap: BinaryHeap::with_capacity(capacity), grew: 0 }
    }

    #[inline]
    pub fn push(&mut self, pending: Pending) {
        let in_order = self.run.back().is_none_or(|last| last.event.order_key() <= pending.event.order_key());
        if in_order {
            if self.run.len() == self.run.capacity() {
                self.grew += 1;
            }
            self.run.push_back(pending);
        } else {
            if self.heap.len() == self.heap.capacity() {
                self.grew += 1;
            }
            self.heap.push(Reverse(pending));
        }
    }

    /// Hands every record below `watermark_ns` to `apply`, in `(ts_ns, seq)`
    /// order, in place (no copy out of the buffer). Returns how many.
    #[inline]
    pub fn drain_before(&mut self, watermark_ns: i64, mut apply: impl FnMut(&Pending)) -> u64 {
        let mut count = 0;
        loop {
            let from_run = match (self.run.front(), self.heap.peek()) {
                (Some(a), Some(Reverse(b))) => a.event.order_key() <= b.event.order_key(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return count,
            };
            if from_run {
                match self.run.front() {
                    Some(p) if p.event.ts_ns < watermark_ns => apply(p),
                    _ => return count,
                }
                self.run.pop_front();
            } else {
                match self.heap.peek() {
                    Some(Reverse(p)) if p.event.ts_ns < watermark_ns => apply(p),
                    _ => return count,
                }
                self.heap.pop();
            }
            count += 1;
        }
    }

    /// Every waiting record, in no particular order (checkpoints copy them;
    /// a restored buffer re-sorts them as they are pushed back).
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.run.iter().chain(self.heap.iter().map(|Reverse(p)| p))
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_judges_against_earlier_records() {
        let mut wm = Watermark::new(50);
        assert!(!wm.observe(1000));
        assert!(!wm.observe(950), "exactly at the watermark is not late");
        assert!(wm.observe(949));
        assert!(!wm.observe(2000));
        assert_eq!(wm.current(), 1950);
    }

    fn pending(ts_ns: i64, seq: u64) -> Pending {
        Pending { event: Event { ts_ns, seq, ..Event::default() }, ingest_ns: 0 }
    }

    proptest! {
        /// Whatever the arrival order, records that are not late leave
        /// sorted by (ts, seq), each once, and only when the watermark
        /// has passed them.
        #[test]
        fn releases_in_event_time_order(times in proptest::collection::vec(0i64..1000, 0..300), lateness in 0i64..300) {
            let mut buffer = ReorderBuffer::with_capacity(4);
            let mut wm = Watermark::new(lateness);
            let mut out = Vec::new();
            let mut expected = Vec::new();
            for (seq, &ts) in times.iter().enumerate() {
                if !wm.observe(ts) {
                    buffer.push(pending(ts, seq as u64));
                    expected.push((ts, seq as u64));
                }
                if seq % 5 == 4 {
                    let watermark = wm.current();
                    buffer.drain_before(watermark, |p| {
                        assert!(p.event.ts_ns < watermark);
                        out.push(p.event.order_key());
                    });
                }
            }
            let drained = buffer.drain_before(i64::MAX, |p| out.push(p.event.order_key()));
            prop_assert!(buffer.is_empty() && drained as usize <= times.len());
            expected.sort();
            prop_assert_eq!(out, expected);
        }
    }
}
