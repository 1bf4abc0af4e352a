//! The shard stage: applies the records of its instruments, in `(ts_ns,
//! seq)` order, to its detector, sends the alerts to the sink, and cuts its
//! part of each checkpoint at the barrier (then copies it in slices).

use crate::alert::{Alert, ListRef, MAX_LIST};
use crate::checkpoint::writer::{ImageSlot, Msg};
use crate::detect::Detector;
use crate::detect::rule::Emit;
use crate::flow::{Batch, BatchKind, ShardTx, Stop, ToSink};
use crate::metrics::{Clock, thread_cpu_ns, thread_preemptions};
use crate::ring::Idle;
use crate::ring::spsc::{Consumer, Producer};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

/// A shard's side of checkpointing.
pub(crate) struct ShardCkpt {
    pub(crate) index: usize,
    pub(crate) tx: Sender<Msg>,
    pub(crate) image: Arc<ImageSlot>,
    /// The snapshot being copied: (checkpoint id, records applied at its
    /// barrier).
    pub(crate) pending: Option<(u64, u64)>,
    /// Entries per slice of the copy.
    pub(crate) slice: usize,
    /// Hot-path time caused by checkpoints: each barrier's cut and each
    /// slice of the copy.
    pub(crate) stall: Histogram<u64>,
    pub(crate) stall_cpu: Histogram<u64>,
    /// The barrier's cut alone (no slices), in thread CPU time.
    pub(crate) cut_cpu: Histogram<u64>,
    /// Stalls during which the thread was preempted, and the longest of the others.
    pub(crate) preempted: u64,
    pub(crate) max_unpreempted_ns: u64,
}

/// Window entries a shard copies into a snapshot in progress after each
/// batch (or while its ring is empty): about 0.1 ms of copying, so a
/// checkpoint never holds the hot path up for long.
pub const SNAPSHOT_SLICE: usize = 4096;

/// When a stall began: wall, thread CPU, preemptions so far.
type StallStart = (u64, u64, u64);

impl ShardCkpt {
    fn stall_start(clock: &Clock) -> StallStart {
        (clock.now_ns(), thread_cpu_ns(), thread_preemptions())
    }

    fn stall_end(&mut self, clock: &Clock, (wall_ns, cpu_ns, preemptions): StallStart) {
        let wall = clock.now_ns().saturating_sub(wall_ns).max(1);
        self.stall.saturating_record(wall);
        self.stall_cpu.saturating_record(thread_cpu_ns().saturating_sub(cpu_ns).max(1));
        if thread_preemptions() != preemptions {
            self.preempted += 1;
        } else {
            self.max_unpreempted_ns = self.max_unpreempted_ns.max(wall);
        }
    }

    /// Copies the next slice (at most `max` entries) of the snapshot in
    /// progress, timed as a stall; sends the image to the writer once it is
    /// complete. False if the writer is gone.
    fn copy_slice(&mut self, detector: &mut Detector, clock: &Clock, max: usize) -> bool {
        let Some((id, applied)) = self.pending else { return true };
        let started = ShardCkpt::stall_start(clock);
        let mut delivered = true;
        if let Some(image) = detector.copy_slice(max) {
            self.pending = None;
            delivered = self.tx.send(Msg::Shard { id, shard: self.index, applied, image }).is_ok();
        }
        self.stall_end(clock, started);
        delivered
    }
}

/// How many records ahead of the one it applies a shard prefetches the
/// window state for.
const PREFETCH_AHEAD: usize = 8;

// The record loop prefetches a record's start and its event's padding, the
// record's last bytes (kind and side just before).
const _: () = assert!(
    std::mem::offset_of!(crate::time::Pending, event) + std::mem::offset_of!(crate::event::Event, _pad) + 2
        == std::mem::size_of::<crate::time::Pending>()
);

pub(crate) struct ShardStats {
    pub(crate) applied: u64,
    pub(crate) grew: u64,
    /// Stalls (wall, thread CPU), and the barriers' cuts alone (thread CPU).
    pub(crate) stall: Option<(Histogram<u64>, Histogram<u64>, Histogram<u64>)>,
    /// Stalls preempted, and the longest wall time of the others.
    pub(crate) preempted: (u64, u64),
    /// Evidence list items dropped (lists longer than `MAX_LIST`).
    pub(crate) list_dropped: u64,
    /// The order book's counters, when the book is kept.
    pub(crate) book: Option<crate::detect::views::book::BookStats>,
    pub(crate) episodes: crate::detect::registry::EpisodeTotals,
    /// Records refused per rule (a new key past a key table's limit).
    pub(crate) keys_refused: crate::detect::registry::Counts,
}

/// Sends what the rules emit to the sink: the list into the evidence arena
/// first, then the alert, each waiting while its ring is full.
struct ToSinkOut<'a> {
    tx: &'a mut ShardTx,
    stop: &'a Stop,
    clock: &'a Clock,
    /// The ingest stamp of the record being applied.
    ingest_ns: u64,
    delivered: bool,
    list_dropped: u64,
}

impl ToSinkOut<'_> {
    fn send(&mut self, item: ToSink) -> bool {
        let ToSinkOut { tx, stop, .. } = self;
        self.delivered &= put(&mut tx.alerts, item, stop);
        self.delivered
    }
}

/// Puts one item into a ring, waiting while it is full; false if the
/// consumer is gone or the pipeline stops.
#[inline]
fn put<T>(ring: &mut Producer<T>, item: T, stop: &Stop) -> bool {
    let mut idle = Idle::default();
    loop {
        if let Some(slot) = ring.claim() {
            *slot = item;
            ring.publish();
            return true;
        }
        if stop.raised() || ring.consumer_gone() {
            return false;
        }
        idle.wait();
    }
}

impl Emit for ToSinkOut<'_> {
    #[inline]
    fn alert(&mut self, alert: Alert, list: &[u64]) {
        let take = list.len().min(MAX_LIST);
        let dropped = list.len() - take;
        self.list_dropped += dropped as u64;
        for &item in &list[..take] {
            self.delivered &= put(&mut self.tx.arena, item, self.stop);
        }
        let list = ListRef { len: take as u16, dropped: dropped.min(u16::MAX as usize) as u16 };
        let alert = Alert { ingest_ns: self.ingest_ns, applied_ns: self.clock.now_ns(), list, ..alert };
        self.send(ToSink::Alert(alert));
    }
}

pub(crate) fn run_shard(
    mut rx: Consumer<Batch>,
    mut tx: ShardTx,
    mut detector: Detector,
    clock: Clock,
    stop: &Stop,
    mut ckpt: Option<ShardCkpt>,
    live: Option<std::sync::Arc<crate::topology::LiveControl>>,
) -> Result<ShardStats, String> {
    let mut applied = 0u64;
    let mut idle = Idle::default();
    let mut list_dropped = 0;
    // What this shard has added to the daemon's episode counters so far.
    let mut published: crate::detect::registry::EpisodeTotals = [None; crate::detect::registry::RULE_COUNT];
    loop {
        let Some(batch) = rx.peek() else {
            if let Some(ck) = ckpt.as_mut()
                && ck.pending.is_some()
            {
                // Nothing to apply: copy the snapshot rather than wait.
                if !ck.copy_slice(&mut detector, &clock, ck.slice) {
                    return Err("checkpoint writer stopped".to_string());
                }
                continue;
            }
            if rx.is_finished() || stop.raised() {
                break;
            }
            idle.wait();
            continue;
        };
        idle.reset();
        let mut out = ToSinkOut { tx: &mut tx, stop, clock: &clock, ingest_ns: 0, delivered: true, list_dropped: 0 };
        if batch.kind == BatchKind::Barrier
            && let Some(ck) = ckpt.as_mut()
        {
            // The source cuts a barrier only once the previous checkpoint is
            // durable, which needs this shard's image: none can be pending.
            // Should one be, it is finished first (exact, only slower).
            debug_assert!(ck.pending.is_none(), "a barrier arrived while a snapshot was being copied");
            out.delivered &= ck.copy_slice(&mut detector, &clock, usize::MAX);
            // What the watermark closes belongs before the barrier.
            detector.watermark(batch.watermark_ns, &mut out);
            // The stall: cut the snapshot (the hot keys; the window entries
            // are copied in slices after the batches that follow), and pass
            // the barrier on. The writer encodes the image and does the I/O.
            let started = ShardCkpt::stall_start(&clock);
            detector.begin_snapshot(ck.image.take());
            ck.pending = Some((batch.checkpoint, applied));
            out.send(ToSink::Barrier(batch.checkpoint));
            ck.cut_cpu.saturating_record(thread_cpu_ns().saturating_sub(started.1).max(1));
            ck.stall_end(&clock, started);
        }
        for (i, pending) in batch.events.iter().enumerate() {
            // Records come from the source's core: fetch their lines well
            // ahead, then the state the records a little ahead will touch.
            // (A two-stage prefetch of the spoof stream's tables cost more
            // instructions than its misses saved.)
            if let Some(farthest) = batch.events.get(i + 3 * PREFETCH_AHEAD) {
                // An 80-byte record spans two lines: both (its kind and
                // side, which the prefetch hooks read, are at its end:
                // asserted above).
                crate::flat_map::prefetch(farthest);
                crate::flat_map::prefetch(&farthest.event._pad);
            }
            if let Some(ahead) = batch.events.get(i + PREFETCH_AHEAD) {
                detector.prefetch(&ahead.event);
            }
            out.ingest_ns = pending.ingest_ns;
            detector.apply(&pending.event, &mut out);
        }
        applied += batch.events.len() as u64;
        if let Some(live) = &live {
            // A daemon's live metrics: once per batch, a pass over records
            // still in cache.
            let mut by_kind = [0u64; 3];
            for pending in &batch.events {
                by_kind[match pending.event.kind {
                    crate::event::Kind::New => 0,
                    crate::event::Kind::Cancel => 1,
                    crate::event::Kind::Trade => 2,
                }] += 1;
            }
            for (counter, n) in live.applied_by_kind.iter().zip(by_kind) {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        // Every record of this shard below the batch's watermark has now
        // been applied (the source's promise, see `source::Router::release`).
        out.ingest_ns = clock.now_ns();
        let end = batch.kind == BatchKind::End;
        if end {
            detector.end(&mut out);
        } else {
            detector.watermark(batch.watermark_ns, &mut out);
        }
        if let Some(live) = &live {
            // The run's counts start at 0 and only grow: publish the growth,
            // once per batch, timers' episodes included.
            let now = detector.episodes();
            for (i, (n, before)) in now.iter().zip(&published).enumerate() {
                if let Some(n) = n {
                    let before = before.unwrap_or_default();
                    live.episodes_by_rule[i].fetch_add(n.episodes.saturating_sub(before.episodes), Ordering::Relaxed);
                    live.suppressed_by_rule[i]
                        .fetch_add(n.suppressed.saturating_sub(before.suppressed), Ordering::Relaxed);
                }
            }
            published = now;
        }
        let mut delivered = out.delivered;
        list_dropped += out.list_dropped;
        if let Some(ck) = ckpt.as_ref() {
            // Two relaxed stores per batch: the writer sizes the image by them.
            let (keys, entries) = detector.footprint();
            ck.image.keys.store(keys, Ordering::Relaxed);
            ck.image.entries.store(entries, Ordering::Relaxed);
        }
        rx.release();
        if let Some(ck) = ckpt.as_mut() {
            // One slice of the snapshot in progress, if any, per batch.
            delivered &= ck.copy_slice(&mut detector, &clock, ck.slice);
        }
        if !delivered {
            return Err("alert sink stopped".to_string());
        }
        if end {
            break;
        }
    }
    if let Some(ck) = ckpt.as_mut()
        && !ck.copy_slice(&mut detector, &clock, usize::MAX)
    {
        return Err("checkpoint writer stopped".to_string());
    }
    let preempted = ckpt.as_ref().map_or((0, 0), |c| (c.preempted, c.max_unpreempted_ns));
    Ok(ShardStats {
        applied,
        grew: detector.stats().grew,
        stall: ckpt.map(|c| (c.stall, c.stall_cpu, c.cut_cpu)),
        preempted,
        list_dropped,
        book: detector.book_stats(),
        episodes: detector.episodes(),
        keys_refused: detector.keys_refused(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shard_to_sink;

    #[test]
    fn a_list_goes_into_the_arena_before_its_alert_and_a_long_one_is_cut_and_counted() {
        let (mut tx, mut rx) = shard_to_sink();
        let (stop, clock) = (Stop::default(), Clock::default());
        let mut out =
            ToSinkOut { tx: &mut tx, stop: &stop, clock: &clock, ingest_ns: 5, delivered: true, list_dropped: 0 };
        let long: Vec<u64> = (0..MAX_LIST as u64 + 36).collect();
        out.alert(Alert { seq: 1, ..Alert::default() }, &[7, 8]);
        out.alert(Alert { seq: 2, ..Alert::default() }, &long);
        out.alert(Alert { seq: 3, ..Alert::default() }, &[]);
        assert!(out.delivered);
        assert_eq!(out.list_dropped, 36);
        let mut got = Vec::new();
        while let Some(&ToSink::Alert(alert)) = rx.alerts.peek() {
            rx.alerts.release();
            let items: Vec<u64> = (0..alert.list.len)
                .map(|_| {
                    let item = *rx.arena.peek().expect("the list was published before its alert");
                    rx.arena.release();
                    item
                })
                .collect();
            got.push((alert.seq, alert.ingest_ns, items, alert.list.dropped));
        }
        assert_eq!(got, vec![(1, 5, vec![7, 8], 0), (2, 5, long[..MAX_LIST].to_vec(), 36), (3, 5, vec![], 0)]);
        assert!(rx.arena.peek().is_none());
    }
}
