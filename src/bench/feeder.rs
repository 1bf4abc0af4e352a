//! The paced feeder: plays pre-generated wire records into the live ingest
//! ring, each at its scheduled wall-clock time, as an exchange's network
//! feed would deliver them.
//!
//! Coordinated omission: a sender that waits for a slow consumer and then
//! stamps records when it finally sends them hides the stall. Here each
//! record carries its *scheduled* time (`due_ns`) as its ingest stamp, so
//! time spent blocked on a full ring, or running behind, is charged to the
//! records that were due meanwhile and shows up in every latency figure.
//!
//! The feeder reads the clock once per send (a batch of everything due),
//! not per record; it is the network here, not the pipeline.
//!
//! Feeder stalls: the feeder itself can fall behind the schedule (a late
//! wake, a preempted thread on a loaded machine), not held back by the
//! ring. A gap longer than the pipeline's idle period lets the live
//! source's idle watermark move event time on meanwhile, and records due
//! in the gap then arrive late. That is the bench's own fault, not the
//! pipeline's: each such stall is counted, and the seq ranges sent while
//! catching up are kept, so the bench can attribute late records to it.

use crate::ingest::live::{WIRE_BATCH, WireRecord, WireSender};
use crate::metrics::{Clock, latency_histogram};
use crate::ring::Idle;
use hdrhistogram::Histogram;
use std::time::Duration;

/// Where the records come from, in send order.
pub trait Schedule {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The k-th record with `due_ns` on the pipeline clock.
    fn record(&self, k: u64) -> WireRecord;
}

/// A pre-generated day played as generated: `due_ns` of each record is an
/// offset from `start_ns`.
pub struct Playback<'a> {
    pub records: &'a [WireRecord],
    pub start_ns: u64,
}

impl Schedule for Playback<'_> {
    fn len(&self) -> u64 {
        self.records.len() as u64
    }

    #[inline]
    fn record(&self, k: u64) -> WireRecord {
        let mut w = self.records[k as usize];
        w.due_ns += self.start_ns;
        w
    }
}

/// The same records at a steady rate, for as long as asked: re-timed
/// (`ts_ns` follows the new schedule), and cycled when more are needed than
/// there are, each cycle with fresh `seq` and order ids so the tape stays
/// well-formed (orders left open by a cycle stay open, as FEED.md allows).
pub struct Steady<'a> {
    pub records: &'a [WireRecord],
    pub rate_per_s: f64,
    pub total: u64,
    pub start_ns: u64,
    /// Order ids of a cycle are shifted by this (above the largest id).
    pub order_id_span: u64,
}

impl Schedule for Steady<'_> {
    fn len(&self) -> u64 {
        self.total
    }

    #[inline]
    fn record(&self, k: u64) -> WireRecord {
        let n = self.records.len() as u64;
        let (cycle, i) = (k / n, k % n);
        let mut w = self.records[i as usize];
        let offset_ns = (k as f64 * 1e9 / self.rate_per_s) as u64;
        w.seq += cycle * n;
        w.order_id += cycle * self.order_id_span;
        if w.contra_order_id != 0 {
            w.contra_order_id += cycle * self.order_id_span;
        }
        w.ts_ns = self.records[0].ts_ns + offset_ns as i64;
        w.due_ns = self.start_ns + offset_ns;
        w
    }
}

/// What the feeder saw.
pub struct FeederStats {
    pub offered: u64,
    /// Wall time spent waiting on a full ring: the pipeline's back-pressure.
    pub blocked_ns: u64,
    /// Per send, how far behind schedule its oldest record was.
    pub send_lag: Histogram<u64>,
    /// Ring occupancy (slots in use) seen at each send: mean and max.
    pub occupancy_sum: u64,
    pub occupancy_max: usize,
    pub ring_slots: usize,
    pub sends: u64,
    /// (wall ns, records sent so far), at most one sample per 100 us.
    pub timeline: Vec<(u64, u64)>,
    /// When the last record was sent.
    pub finished_ns: u64,
    /// Times the feeder itself fell behind (not waiting on the ring) by
    /// more than the stall bound while a record was due.
    pub stalls: u64,
    /// Inclusive seq ranges of the records sent behind schedule by more
    /// than the stall bound after a stall, in send order (at most
    /// `MAX_STALL_RANGES`; later stalls are counted, their records not
    /// kept, so nothing is attributed to them).
    pub stall_seqs: Vec<(u64, u64)>,
}

impl FeederStats {
    pub fn mean_occupancy(&self) -> f64 {
        self.occupancy_sum as f64 / self.sends.max(1) as f64
    }

    /// Whether record `seq` was sent catching up after a feeder stall.
    pub fn sent_after_stall(&self, seq: u64) -> bool {
        // Ranges are in send order and seq rises in send order: sorted.
        let i = self.stall_seqs.partition_point(|&(_, last)| last < seq);
        self.stall_seqs.get(i).is_some_and(|&(first, _)| first <= seq)
    }
}

/// Stall ranges kept at most (allocated before the feeder starts).
pub const MAX_STALL_RANGES: usize = 1 << 14;

const TIMELINE_STEP_NS: u64 = 100_000;
/// Beyond this the feeder sleeps until the next record is due; closer, it
/// yields. The kernel's timer slack (about 50 us) makes it wake a little
/// late and then send everything due at once, as a NIC's interrupt
/// coalescing would: the delay is charged to those records' latency, and
/// the feeder leaves the cores to the pipeline instead of spinning.
const SLEEP_ABOVE_NS: u64 = 20_000;

/// The feeder's time: the pipeline clock and real waits, or in tests a
/// virtual clock, so that pacing is checked exactly whatever the load.
pub trait Pace {
    /// Now, on the pipeline clock.
    fn now_ns(&self) -> u64;
    /// Waits for `due_ns` (later than `now_ns`); may return early or late:
    /// the feeder reads the clock again.
    fn wait(&self, now_ns: u64, due_ns: u64);
}

impl Pace for Clock {
    #[inline]
    fn now_ns(&self) -> u64 {
        Clock::now_ns(self)
    }

    fn wait(&self, now_ns: u64, due_ns: u64) {
        let ahead = due_ns - now_ns;
        if ahead > SLEEP_ABOVE_NS {
            std::thread::sleep(Duration::from_nanos(ahead));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Sends every record of `schedule` at its due time. Stops early only when
/// the consumer is gone (the pipeline failed). `stall_ns`: a feeder gap
/// longer than this, while a record was due, counts as a feeder stall
/// (the bench passes the pipeline's idle period: a shorter gap cannot
/// make a record late).
pub fn run<S: Schedule, P: Pace>(schedule: &S, clock: P, mut tx: WireSender, stall_ns: u64) -> FeederStats {
    let n = schedule.len();
    let mut stats = FeederStats {
        offered: 0,
        blocked_ns: 0,
        send_lag: latency_histogram(),
        occupancy_sum: 0,
        occupancy_max: 0,
        ring_slots: tx.capacity(),
        sends: 0,
        // Sized for the whole schedule, so the feeder never reallocates
        // while it paces.
        timeline: Vec::with_capacity(match n {
            0 => 1,
            _ => ((schedule.record(n - 1).due_ns.saturating_sub(schedule.record(0).due_ns)) / TIMELINE_STEP_NS + 16)
                .min(1 << 24) as usize,
        }),
        finished_ns: 0,
        stalls: 0,
        stall_seqs: Vec::with_capacity(MAX_STALL_RANGES),
    };
    let mut k = 0u64;
    let mut next = if n > 0 { Some(schedule.record(0)) } else { None };
    let mut last_sample_ns = 0u64;
    // The feeder's previous clock reading: from then to now it was asleep,
    // filling a batch, or not running at all.
    let mut seen_ns = 0u64;
    // Whether the sends since the last stall are still behind by more
    // than `stall_ns`: their records are kept in the stall's range.
    let mut catching_up = false;
    while let Some(first) = next {
        let mut now = clock.now_ns();
        // The feeder's own lateness: how long it did not run while a record
        // was due. A wait on the ring is the pipeline's back-pressure,
        // charged as blocked time instead (`seen_ns` moves past it).
        let gap_ns = now.saturating_sub(seen_ns.max(first.due_ns));
        seen_ns = now;
        if first.due_ns > now {
            clock.wait(now, first.due_ns);
            continue;
        }
        if gap_ns > stall_ns {
            stats.stalls += 1;
            if !catching_up && stats.stall_seqs.len() < MAX_STALL_RANGES {
                stats.stall_seqs.push((first.seq, first.seq));
                catching_up = true;
            }
        } else if now - first.due_ns <= stall_ns {
            catching_up = false;
        }
        if tx.claim().is_none() {
            let mut idle = Idle::default();
            while tx.claim().is_none() {
                if tx.consumer_gone() {
                    return stats;
                }
                idle.wait();
            }
            let resumed = clock.now_ns();
            stats.blocked_ns += resumed - now;
            now = resumed;
            seen_ns = now;
        }
        let occupancy = tx.occupancy();
        let slot = tx.claim().expect("claimed above");
        slot.clear();
        let mut pending = next;
        while let Some(w) = pending {
            if w.due_ns > now || slot.len() == WIRE_BATCH {
                break;
            }
            slot.push(w);
            k += 1;
            pending = if k < n { Some(schedule.record(k)) } else { None };
        }
        if catching_up && let Some(range) = stats.stall_seqs.last_mut() {
            range.1 = slot.last().map_or(range.1, |w| w.seq);
        }
        tx.publish();
        next = pending;
        stats.sends += 1;
        stats.occupancy_sum += occupancy as u64;
        stats.occupancy_max = stats.occupancy_max.max(occupancy);
        stats.send_lag.saturating_record((now - first.due_ns).max(1));
        stats.offered = k;
        if now - last_sample_ns >= TIMELINE_STEP_NS || next.is_none() {
            stats.timeline.push((now, k));
            last_sample_ns = now;
        }
    }
    stats.finished_ns = clock.now_ns();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::live::wire_channel;

    fn records(count: u64, gap_ns: u64) -> Vec<WireRecord> {
        (0..count).map(|i| WireRecord { seq: i + 1, due_ns: i * gap_ns, ..WireRecord::default() }).collect()
    }

    /// A virtual clock: waiting moves it to the due time plus `late_ns`
    /// (a sleep that oversleeps), and nothing else moves it.
    struct Virtual {
        now_ns: std::cell::Cell<u64>,
        late_ns: u64,
    }

    impl Pace for &Virtual {
        fn now_ns(&self) -> u64 {
            self.now_ns.get()
        }

        fn wait(&self, now_ns: u64, due_ns: u64) {
            assert!(due_ns > now_ns && now_ns == self.now_ns.get(), "waits only for a record still ahead");
            self.now_ns.set(due_ns + self.late_ns);
        }
    }

    /// Plays `count` records `gap_ns` apart on a virtual clock that wakes
    /// `late_ns` late; returns each send's records with the send time, and
    /// the stats. The ring holds every send, so the consumer reads after.
    fn play(count: u64, gap_ns: u64, late_ns: u64) -> (Vec<(u64, Vec<WireRecord>)>, FeederStats) {
        let recs = records(count, gap_ns);
        let clock = Virtual { now_ns: std::cell::Cell::new(0), late_ns };
        let (tx, mut rx) = wire_channel(256);
        let stats = run(&Playback { records: &recs, start_ns: 1_000_000 }, &clock, tx, u64::MAX);
        let mut batches = Vec::new();
        while let Some(batch) = rx.peek() {
            batches.push(batch.to_vec());
            rx.release();
        }
        assert!(rx.is_finished(), "the feeder hung up once done");
        // Every send is on the timeline (sends here are at least 100 us apart).
        assert_eq!(stats.timeline.len(), batches.len());
        let sends = stats.timeline.iter().map(|&(at_ns, _)| at_ns).zip(batches).collect();
        (sends, stats)
    }

    /// Every record went out once, in order, and each send carried exactly
    /// the records that fell due since the send before: none early, none
    /// held back.
    fn assert_sent_when_due(sends: &[(u64, Vec<WireRecord>)], count: u64) {
        let seqs: Vec<u64> = sends.iter().flat_map(|(_, batch)| batch.iter().map(|w| w.seq)).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<_>>());
        let mut previous_ns = 0;
        for (at_ns, batch) in sends {
            for w in batch {
                assert!(w.due_ns <= *at_ns, "record {} due at {} ns went out early, at {at_ns}", w.seq, w.due_ns);
                assert!(w.due_ns > previous_ns, "record {} due at {} ns was held back to {at_ns}", w.seq, w.due_ns);
            }
            previous_ns = *at_ns;
        }
    }

    /// On time, records 2 ms apart go out one by one, each when it is due.
    #[test]
    fn records_go_out_when_due_and_not_before() {
        let (sends, stats) = play(20, 2_000_000, 0);
        assert_sent_when_due(&sends, 20);
        assert!(sends.iter().all(|(at_ns, batch)| batch.len() == 1 && batch[0].due_ns == *at_ns), "bunched or late");
        assert_eq!((stats.offered, stats.sends, stats.send_lag.max()), (20, 20, 1));
    }

    /// A feeder that wakes late sends everything due by then at once, and
    /// still nothing early; the oversleep shows as send lag.
    #[test]
    fn a_late_wake_bunches_what_is_due_but_sends_nothing_early() {
        // Records 1 ms apart, every wake 2.5 ms late: each send carries the
        // record it waited for and the two that fell due meanwhile.
        let (sends, stats) = play(30, 1_000_000, 2_500_000);
        assert_sent_when_due(&sends, 30);
        assert!(
            sends.iter().all(|(_, batch)| batch.len() == 3),
            "{:?}",
            sends.iter().map(|s| s.1.len()).collect::<Vec<_>>()
        );
        assert_eq!(stats.offered, 30);
        let lag = stats.send_lag.max();
        assert!((2_490_000..=2_510_000).contains(&lag), "send lag max {lag} ns, the oversleep is 2.5 ms");
    }

    /// A virtual clock that oversleeps once: the wait for the record due
    /// at `stall_at_ns` wakes `stall_ns` late; every other wait is exact.
    struct StallsOnce {
        now_ns: std::cell::Cell<u64>,
        stall_at_ns: u64,
        stall_ns: u64,
    }

    impl Pace for &StallsOnce {
        fn now_ns(&self) -> u64 {
            self.now_ns.get()
        }

        fn wait(&self, _now_ns: u64, due_ns: u64) {
            let late_ns = if due_ns == self.stall_at_ns { self.stall_ns } else { 0 };
            self.now_ns.set(due_ns + late_ns);
        }
    }

    /// A feeder that falls 30 ms behind on its own (a late wake, as when a
    /// loaded machine preempts it) counts one stall and keeps the seq range
    /// it sent catching up, so late records can be laid at its door; one
    /// within the bound, or on time, counts none.
    #[test]
    fn a_feeder_stall_is_counted_and_its_records_kept() {
        const MS: u64 = 1_000_000;
        let recs = records(100, MS);
        let start_ns = 1_000 * MS;
        let play = |stall_ns: u64, bound_ns: u64| {
            // Record index 40 (seq 41) is due at start + 40 ms.
            let clock = StallsOnce { now_ns: std::cell::Cell::new(0), stall_at_ns: start_ns + 40 * MS, stall_ns };
            let (tx, mut rx) = wire_channel(256);
            let stats = run(&Playback { records: &recs, start_ns }, &clock, tx, bound_ns);
            let mut sent = 0;
            while let Some(batch) = rx.peek() {
                sent += batch.len();
                rx.release();
            }
            assert_eq!((sent, stats.offered), (100, 100));
            stats
        };
        let stats = play(30 * MS, 10 * MS);
        assert_eq!(stats.stalls, 1);
        // Seq 41 was due at 40 ms and sent at 70 ms, with everything due by
        // then (seq 41-71): all of it more than 10 ms behind.
        assert_eq!(stats.stall_seqs, [(41, 71)]);
        let after: Vec<u64> = (1..=100).filter(|&seq| stats.sent_after_stall(seq)).collect();
        assert_eq!(after, (41..=71).collect::<Vec<_>>());
        // The same oversleep within the bound is no stall.
        let stats = play(30 * MS, 30 * MS);
        assert_eq!((stats.stalls, stats.stall_seqs.len()), (0, 0));
        let stats = play(0, 10 * MS);
        assert_eq!((stats.stalls, stats.stall_seqs.len()), (0, 0));
        assert!(!stats.sent_after_stall(41));
    }

    /// Plays `recs` (due from 1 ms from now) on the real clock into a ring
    /// of `slots`, handing every batch to `consume` on this thread, until
    /// the feeder hangs up; returns the feeder's stats. The consumer's end
    /// of the ring lives inside the scope: a `consume` that panics drops it
    /// while unwinding, so a feeder blocked on the full ring sees the
    /// consumer gone and stops, and the test fails with the panic's
    /// message instead of waiting for the feeder forever.
    fn play_live(
        recs: &[WireRecord],
        slots: usize,
        clock: Clock,
        mut consume: impl FnMut(&[WireRecord]),
    ) -> FeederStats {
        let start_ns = clock.now_ns() + 1_000_000;
        let (tx, rx) = wire_channel(slots);
        std::thread::scope(|s| {
            let mut rx = rx;
            let feeder = s.spawn(move || run(&Playback { records: recs, start_ns }, clock, tx, u64::MAX));
            loop {
                if let Some(batch) = rx.peek() {
                    consume(batch);
                    rx.release();
                } else if rx.is_finished() {
                    break;
                } else {
                    std::thread::yield_now();
                }
            }
            feeder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A consumer that stalls for 50 ms: the records due meanwhile carry
    /// their scheduled times, so the stall shows up as send lag and as
    /// latency from `due_ns`, instead of vanishing.
    #[test]
    fn a_stalled_consumer_shows_in_the_percentiles() {
        const STALL_NS: u64 = 50_000_000;
        let recs = records(400, 250_000); // 4k/s for 100 ms
        let clock = Clock::new();
        let mut latency = latency_histogram();
        let mut stalled = false;
        // With 2 slots the feeder blocks on the ring while the consumer stalls.
        let stats = play_live(&recs, 2, clock, |batch| {
            if !stalled && batch.iter().any(|w| w.seq >= 100) {
                stalled = true;
                std::thread::sleep(Duration::from_nanos(STALL_NS));
            }
            let now = clock.now_ns();
            for w in batch {
                latency.record(now - w.due_ns).unwrap();
            }
        });
        assert_eq!(stats.offered, 400);
        // With 2 slots the feeder blocked for most of the stall.
        assert!(stats.blocked_ns >= STALL_NS / 2, "blocked only {} ns", stats.blocked_ns);
        assert!(stats.send_lag.max() >= STALL_NS / 2, "send lag max {} ns", stats.send_lag.max());
        // Records due during the stall waited for it: the tail shows it.
        // (A sender that stamped on send would report ~0 here.)
        assert!(latency.value_at_quantile(0.99) >= STALL_NS / 2, "p99 {} ns", latency.value_at_quantile(0.99));
        assert!(latency.len() == 400);
    }

    /// A consumer that panics while the feeder is blocked on the full ring
    /// fails its test with the panic's message; it used to hang it (the
    /// feeder waited for a ring the dead consumer still held). A watchdog
    /// turns a hang back into a failure here.
    #[test]
    fn a_consumer_that_panics_fails_the_test_instead_of_hanging_it() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let recs = records(400, 250_000); // 4k/s for 100 ms
            let played = std::panic::catch_unwind(|| {
                play_live(&recs, 2, Clock::new(), |batch| {
                    // Let the feeder fill the ring and block on it first.
                    std::thread::sleep(Duration::from_millis(20));
                    panic!("the consumer broke at record {}", batch[0].seq);
                })
            });
            let message = match played {
                Ok(_) => "no panic".to_string(),
                Err(panic) => panic.downcast_ref::<String>().cloned().unwrap_or_default(),
            };
            let _ = done_tx.send(message);
        });
        let message =
            done_rx.recv_timeout(Duration::from_secs(30)).expect("the feeder hung on the dead consumer's ring");
        assert!(message.contains("the consumer broke at record"), "{message}");
    }

    #[test]
    fn steady_cycles_with_fresh_seq_and_order_ids() {
        let mut base = records(3, 0);
        base[1].order_id = 5;
        base[2].contra_order_id = 4;
        let steady = Steady { records: &base, rate_per_s: 1e6, total: 7, start_ns: 10, order_id_span: 100 };
        let got: Vec<(u64, u64, u64, u64)> =
            (0..7).map(|k| steady.record(k)).map(|w| (w.seq, w.order_id, w.contra_order_id, w.due_ns)).collect();
        assert_eq!(
            got,
            vec![
                (1, 0, 0, 10),
                (2, 5, 0, 1_010),
                (3, 0, 4, 2_010),
                (4, 100, 0, 3_010),
                (5, 105, 0, 4_010),
                (6, 100, 104, 5_010),
                (7, 200, 0, 6_010)
            ]
        );
    }
}
