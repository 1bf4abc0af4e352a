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

    /// The newest event time seen (or advanced to); `i64::MIN` before any.
    #[inline]
    pub fn max_ts(&self) -> i64 {
        self.max_ts_ns
    }
}

/// Live feeds only: event time that keeps moving while the feed is quiet.
///
/// A replay has no "now": its watermark moves only with records. A live
/// feed does, and without this a lone record on a quiet day would wait for
/// the next record (seconds, or the close) before the watermark released
/// it. After `after_ns` of wall-clock silence, event time is taken to run
/// on with the wall clock from the newest record, so a lone record is
/// released about `lateness + after` after it arrived.
///
/// The price: a record that turns up after a longer stall than that, and
/// older than the advanced watermark, is late (counted and kept aside, as
/// any late record). `after_ns` is the stall the feed may have without
/// losing records to it; it costs that much latency on a quiet feed only.
/// The wall clock is read by the caller once per pump of the feed, never
/// per record.
#[derive(Clone, Copy, Debug)]
pub struct IdleAdvance {
    after_ns: u64,
    /// When records last arrived (pipeline clock), and event time then.
    active_wall_ns: u64,
    active_max_ts_ns: i64,
}

impl IdleAdvance {
    pub fn new(after_ns: u64) -> IdleAdvance {
        IdleAdvance { after_ns, active_wall_ns: 0, active_max_ts_ns: i64::MIN }
    }

    /// Records arrived by `wall_ns`; event time was then `max_ts_ns`.
    #[inline]
    pub fn active(&mut self, wall_ns: u64, max_ts_ns: i64) {
        self.active_wall_ns = wall_ns;
        self.active_max_ts_ns = max_ts_ns;
    }

    /// Nothing arrived: once quiet for longer than `after_ns`, moves the
    /// watermark on by the quiet time past that. Returns whether it moved.
    pub fn advance(&self, wall_ns: u64, watermark: &mut Watermark) -> bool {
        let quiet_ns = wall_ns.saturating_sub(self.active_wall_ns);
        if self.active_max_ts_ns == i64::MIN || quiet_ns <= self.after_ns {
            return false;
        }
        // Saturating all the way: a wall clock far past the feed's time must
        // not wrap event time negative.
        let quiet_past = i64::try_from(quiet_ns - self.after_ns).unwrap_or(i64::MAX);
        let target = self.active_max_ts_ns.saturating_add(quiet_past);
        if target <= watermark.max_ts() {
            return false;
        }
        watermark.advance_to(target);
        true
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

    /// Per record on the source: the in-order case is kept small enough to
    /// inline into the router (out of line it cost ~50 instructions a
    /// record in calls and moves); the out-of-order one is out of line.
    #[inline(always)]
    pub fn push(&mut self, pending: Pending) {
        let in_order = self.run.back().is_none_or(|last| last.event.order_key() <= pending.event.order_key());
        if in_order && self.run.len() < self.run.capacity() {
            self.run.push_back(pending);
        } else {
            self.push_slow(pending, in_order);
        }
    }

    #[cold]
    #[inline(never)]
    fn push_slow(&mut self, pending: Pending, in_order: bool) {
        if in_order {
            self.grew += 1;
            self.run.push_back(pending);
        } else {
            if self.heap.len() == self.heap.capacity() {
                self.grew += 1;
            }
            self.heap.push(Reverse(pending));
        }
    }

    /// Hands every record below `watermark_ns` (every record, when it is
    /// `i64::MAX`: the end of a feed, where a record stamped `i64::MAX`
    /// must leave too) to `apply`, in `(ts_ns, seq)` order, as runs of contiguous records straight out of the buffer (no
    /// copy, one call per run rather than per record). Returns how many.
    #[inline]
    pub fn drain_before(&mut self, watermark_ns: i64, mut apply: impl FnMut(&[Pending])) -> u64 {
        let mut count = 0;
        let due = |ts_ns: i64| ts_ns < watermark_ns || watermark_ns == i64::MAX;
        loop {
            // The in-order run's prefix that may leave before the heap's
            // smallest record: both conditions hold for a prefix of a run
            // sorted by (ts_ns, seq), so a binary search finds its end.
            let heap_min = self.heap.peek().map(|Reverse(p)| p.event.order_key());
            let ready = self
                .run
                .partition_point(|p| due(p.event.ts_ns) && heap_min.is_none_or(|min| p.event.order_key() < min));
            if ready > 0 {
                let (front, back) = self.run.as_slices();
                let from_front = ready.min(front.len());
                apply(&front[..from_front]);
                if ready > from_front {
                    apply(&back[..ready - from_front]);
                }
                self.run.drain(..ready);
                count += ready as u64;
            }
            // Then the heap's smallest, if it is due and sorts first.
            match self.heap.peek() {
                Some(Reverse(p))
                    if due(p.event.ts_ns)
                        && self.run.front().is_none_or(|r| p.event.order_key() < r.event.order_key()) =>
                {
                    apply(std::slice::from_ref(p));
                }
                _ => return count,
            }
            self.heap.pop();
            count += 1;
        }
    }

    /// Every waiting record, in no particular order (checkpoints copy them;
    /// a restored buffer re-sorts them as they are pushed back).
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.run.iter().chain(self.heap.iter().map(|Reverse(p)| p))
    }

    /// The earliest event time waiting, if any.
    pub fn min_ts(&self) -> Option<i64> {
        let run = self.run.front().map(|p| p.event.ts_ns);
        let heap = self.heap.peek().map(|Reverse(p)| p.event.ts_ns);
        match (run, heap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The civil date `(year, month, day)` of a day counted from 1970-01-01
/// (Howard Hinnant's algorithm): one copy for every date the project writes.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

    #[test]
    fn idle_time_moves_the_watermark_only_after_the_quiet_period() {
        let mut wm = Watermark::new(1_000);
        let mut idle = IdleAdvance::new(5_000);
        assert!(!idle.advance(1_000_000, &mut wm), "no record yet: nothing to advance from");
        assert!(!wm.observe(100_000));
        idle.active(50_000, wm.max_ts());
        assert!(!idle.advance(55_000, &mut wm), "quiet for exactly `after`: not yet");
        assert_eq!(wm.current(), 99_000);
        assert!(idle.advance(58_000, &mut wm));
        assert_eq!(wm.max_ts(), 103_000, "3 us past the quiet period");
        assert!(!idle.advance(57_000, &mut wm), "never backwards");
        // A record that was stalled longer than the quiet period is late.
        assert!(wm.observe(101_000));
    }

    /// Regression: a record stamped `i64::MAX` stayed in the buffer at the
    /// end of a feed ("records lost in the pipeline", exit 101).
    #[test]
    fn the_final_drain_releases_records_at_the_extremes() {
        let mut buffer = ReorderBuffer::with_capacity(4);
        let mut wm = Watermark::new(50);
        for (seq, ts) in [(1, i64::MAX), (2, 0), (3, i64::MIN), (4, i64::MAX - 1), (5, i64::MAX)] {
            if !wm.observe(ts) {
                buffer.push(pending(ts, seq));
            }
        }
        let mut out = Vec::new();
        buffer.drain_before(wm.current(), |run| out.extend(run.iter().map(|p| p.event.seq)));
        buffer.drain_before(i64::MAX, |run| out.extend(run.iter().map(|p| p.event.seq)));
        assert!(buffer.is_empty());
        assert_eq!(out, vec![4, 1, 5], "late ones aside, all leave in (ts, seq) order");
    }

    /// Idle advance at the extremes: event time saturates, never wraps.
    #[test]
    fn idle_advance_saturates() {
        let mut wm = Watermark::new(0);
        let mut idle = IdleAdvance::new(0);
        assert!(!wm.observe(i64::MAX - 5));
        idle.active(0, wm.max_ts());
        assert!(idle.advance(u64::MAX, &mut wm));
        assert_eq!(wm.max_ts(), i64::MAX);
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
                    buffer.drain_before(watermark, |run| {
                        for p in run {
                            assert!(p.event.ts_ns < watermark);
                            out.push(p.event.order_key());
                        }
                    });
                }
            }
            let drained = buffer.drain_before(i64::MAX, |run| out.extend(run.iter().map(|p| p.event.order_key())));
            prop_assert!(buffer.is_empty() && drained as usize <= times.len());
            expected.sort();
            prop_assert_eq!(out, expected);
        }
    }
}
