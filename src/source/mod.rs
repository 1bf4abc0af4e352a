//! The source stage: pumps the feed, judges lateness against the
//! watermark, holds each shard's records in a reorder buffer until the
//! watermark passes them, routes them by instrument into batches, and cuts
//! checkpoint barriers between two records.

use crate::checkpoint::codec::Writer;
use crate::checkpoint::writer::{self, Msg};
use crate::checkpoint::{RouterState, write_event};
use crate::event::Event;
use crate::flow::{BATCH_EVENTS, Batch, BatchKind, STOPPED, Stop};
use crate::ingest::{Feed, FeedError, FeedStats};
use crate::metrics::{Clock, thread_cpu_ns};
use crate::ring::Idle;
use crate::ring::spsc::Producer;
use crate::symbols::Names;
use crate::time::{IdleAdvance, Pending, ReorderBuffer, Watermark};
use crate::topology::{LiveControl, Progress};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

/// The source flushes partial batches (and watermarks) to every shard at
/// least this often, in records, so a quiet shard still sees time move.
pub const FLUSH_EVERY: u64 = 16 * 1024;

#[derive(Default)]
pub(crate) struct SourceStats {
    pub(crate) backpressure_waits: u64,
    pub(crate) grew: u64,
    pub(crate) max_reorder_len: usize,
    pub(crate) stall: Option<(Histogram<u64>, Histogram<u64>)>,
}

pub(crate) fn run_source<F: Feed>(
    mut feed: F,
    mut router: Router,
    progress: &Progress,
    stop: &Stop,
) -> Result<(FeedStats, SourceStats), FeedError> {
    router.backpressure.patient = !F::LIVE;
    let result = loop {
        // Live: the clock is read before the input is looked at, so a
        // source stalled between finding it empty and acting on that never
        // counts the stall as quiet time (which would make late the records
        // that queued up meanwhile).
        let pump_started_ns = if F::LIVE { router.clock.now_ns() } else { 0 };
        // Past a final barrier (a stop's, a reload's) nothing more is taken
        // in or released: what comes after it belongs to the next run, and
        // an alert written now would not be committed (yet could be read).
        let holding = F::LIVE && router.final_id.is_some();
        let pumped = if holding {
            std::thread::sleep(std::time::Duration::from_micros(500));
            Ok(true)
        } else if F::LIVE {
            feed.pump_live(&mut |event, due_ns| router.route_stamped(event, due_ns))
        } else {
            feed.pump_until(&mut |event| router.route(event))
        };
        let more = match pumped {
            Ok(more) => more,
            Err(e) => break Err(e),
        };
        if router.ckpt.as_ref().is_some_and(|c| c.due)
            && let Err(e) = router.cut_barrier(&mut feed)
        {
            break Err(e);
        }
        if F::LIVE && !holding {
            if let Some(ts_ns) = feed.take_clock() {
                router.heartbeat(ts_ns, pump_started_ns);
            }
            router.live_tick(feed.drained(), pump_started_ns);
        }
        if F::LIVE {
            match router.live_control(&mut feed, pump_started_ns) {
                Ok(false) => {}
                Ok(true) => break Err(FeedError { path: PathBuf::new(), message: STOPPED.into() }),
                Err(e) => break Err(e),
            }
        }
        let stats = feed.stats();
        progress.records_read.store(stats.records_read, Ordering::Relaxed);
        progress.rejected.store(stats.rejected, Ordering::Relaxed);
        progress.gaps.store(stats.gaps, Ordering::Relaxed);
        progress.missing_records.store(stats.missing_records, Ordering::Relaxed);
        progress.watermark_ns.store(router.watermark.current(), Ordering::Relaxed);
        if stop.raised() {
            break Err(FeedError { path: PathBuf::new(), message: STOPPED.into() });
        }
        if !more {
            break Ok(());
        }
    };
    if result.is_err() {
        stop.raise();
    }
    router.finish();
    let stats = SourceStats {
        backpressure_waits: router.backpressure.waits,
        grew: router.reorder.iter().map(|r| r.grew).sum(),
        max_reorder_len: router.max_reorder_len,
        stall: router.ckpt.take().map(|c| (c.stall, c.stall_cpu)),
    };
    result.map(|()| (feed.stats(), stats))
}

/// Wall-clock stamps are taken once per this many routed records.
const STAMP_EVERY: u32 = 256;
/// Records the watermark has passed are moved to the batches once per this
/// many routed records, in runs, rather than one at a time. Holding them a
/// little longer changes nothing downstream: a record that could still
/// sort before one of them would be late.
const RELEASE_EVERY: u64 = 128;

/// `instrument % shards` (the routing rule, which checkpoints depend on)
/// by a multiply instead of a division on every record (Lemire's fastmod).
#[derive(Clone, Copy)]
struct ShardOf {
    n: u64,
    magic: u64,
}

impl ShardOf {
    fn new(n: usize) -> ShardOf {
        assert!((1..=u32::MAX as usize).contains(&n));
        ShardOf { n: n as u64, magic: (u64::MAX / n as u64).wrapping_add(1) }
    }

    #[inline]
    fn of(&self, instrument: u32) -> usize {
        let low = self.magic.wrapping_mul(instrument as u64);
        ((low as u128 * self.n as u128) >> 64) as usize
    }
}

/// The source's half of the rings: judges lateness, holds each shard's
/// records until the watermark passes them, and fills batches in place.
pub(crate) struct Router {
    shards: Vec<Producer<Batch>>,
    /// Whether shard i has a claimed, partly filled slot.
    open: Vec<bool>,
    reorder: Vec<ReorderBuffer>,
    shard_of: ShardOf,
    late: Producer<Batch>,
    late_open: bool,
    watermark: Watermark,
    clock: Clock,
    stop: Stop,
    stamp_ns: u64,
    until_stamp: u32,
    since_flush: u64,
    backpressure: Backpressure,
    max_reorder_len: usize,
    /// Per shard: the watermark its last drain completed (see `release`).
    released: Vec<i64>,
    /// Live sources only: event time from the wall clock while quiet.
    pub(crate) idle: Option<IdleAdvance>,
    pub(crate) ckpt: Option<SourceCkpt>,
    /// Live sources run by the daemon: checkpoint requests and shutdown.
    pub(crate) control: Option<Arc<LiveControl>>,
    /// The final checkpoint (a shutdown's or a reload's), once cut.
    final_id: Option<u64>,
}

/// The source's side of checkpointing: when the next barrier is due, and
/// the buffer its snapshot is written into.
pub(crate) struct SourceCkpt {
    pub(crate) tx: Sender<Msg>,
    pub(crate) back: Receiver<Vec<u8>>,
    pub(crate) progress: Arc<writer::Progress>,
    pub(crate) names: Names,
    pub(crate) next_id: u64,
    pub(crate) every_records: u64,
    pub(crate) interval_ns: u64,
    /// Records routed since the last barrier.
    pub(crate) since: u64,
    pub(crate) last_cut_ns: u64,
    pub(crate) time_due: bool,
    /// A barrier is due: the feed stops after this record.
    pub(crate) due: bool,
    pub(crate) last_seq: u64,
    /// The next barrier is a reload's: `Manifest::reload_to`.
    pub(crate) reload_to: u64,
    /// Wait for the previous checkpoint rather than skip the barrier (test
    /// runs only: it stalls the source on the writer).
    pub(crate) wait_for_previous: bool,
    pub(crate) stall: Histogram<u64>,
    pub(crate) stall_cpu: Histogram<u64>,
}

impl Router {
    pub(crate) fn new(
        shards: Vec<Producer<Batch>>,
        late: Producer<Batch>,
        lateness_ns: i64,
        reorder_capacity: usize,
        clock: Clock,
        stop: Stop,
    ) -> Router {
        let n = shards.len();
        Router {
            shards,
            open: vec![false; n],
            reorder: (0..n).map(|_| ReorderBuffer::with_capacity(reorder_capacity)).collect(),
            shard_of: ShardOf::new(n),
            late,
            late_open: false,
            watermark: Watermark::new(lateness_ns),
            clock,
            stop,
            stamp_ns: 0,
            until_stamp: 0,
            since_flush: 0,
            backpressure: Backpressure::default(),
            max_reorder_len: 0,
            released: vec![i64::MIN; n],
            ckpt: None,
            idle: None,
            control: None,
            final_id: None,
        }
    }

    /// A heartbeat: the exchange clock says event time is at least
    /// `ts_ns`, records or not. It counts as activity for the idle advance.
    #[cold]
    fn heartbeat(&mut self, ts_ns: i64, now_ns: u64) {
        self.watermark.advance_to(ts_ns);
        if let Some(idle) = self.idle.as_mut() {
            idle.active(now_ns, self.watermark.max_ts());
        }
        self.flush();
    }

    /// Live sources under a daemon, once per pump: checkpoints by time (a
    /// live pump never reaches `route`'s clock read) or on request, and
    /// the shutdown sequence: once the input is drained, a final
    /// checkpoint; once it is durable, true: stop without ending the feed,
    /// so no end-of-feed timer fires and a resumed run goes on as if never
    /// stopped. A reload is the same without waiting for the drain, its
    /// checkpoint marked `reload_to`.
    fn live_control<F: Feed>(&mut self, feed: &mut F, now_ns: u64) -> Result<bool, FeedError> {
        let Some(control) = self.control.clone() else { return Ok(false) };
        let shutdown = control.shutdown.load(Ordering::Acquire);
        let Some(ck) = self.ckpt.as_mut() else { return Ok(shutdown && feed.drained()) };
        let completed = ck.progress.completed.load(Ordering::Acquire);
        control.checkpoint_bytes.store(ck.progress.last_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        control.checkpoint_duration_ns.store(ck.progress.last_duration_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        control.completed.store(completed, Ordering::Release);
        let idle = completed + 1 == ck.next_id;
        if let Some(id) = self.final_id {
            if completed >= id {
                control.stopped_clean.store(true, Ordering::Release);
                return Ok(true);
            }
            return Ok(false);
        }
        // A reload does not wait for the input to drain: what is in the
        // ring stays there for the next run.
        let reload = control.reload.load(Ordering::Acquire);
        let want = if shutdown {
            feed.drained()
        } else if reload {
            true
        } else {
            let by_time = ck.interval_ns > 0 && ck.since > 0 && now_ns.saturating_sub(ck.last_cut_ns) >= ck.interval_ns;
            by_time || control.checkpoint_now.load(Ordering::Acquire)
        };
        if want && idle {
            let id = ck.next_id;
            control.checkpoint_now.store(false, Ordering::Release);
            if reload && let Some(ck) = self.ckpt.as_mut() {
                // A stop's final checkpoint hands over too when a reload is
                // pending: a restart reads the new rules file.
                ck.reload_to = control.reload_to.load(Ordering::Acquire);
            }
            self.cut_barrier(feed)?;
            if shutdown || reload {
                self.final_id = Some(id);
            }
        }
        Ok(false)
    }

    /// Routes a record from a live source, whose due time stands in for the
    /// router's clock stamp: latency then counts from when the record was
    /// due, not from when it got here (coordinated omission), and no clock
    /// is read for it.
    #[inline]
    fn route_stamped(&mut self, event: &Event, due_ns: u64) {
        self.stamp_ns = due_ns;
        // `route` re-stamps only when this reaches 0.
        self.until_stamp = STAMP_EVERY;
        // A live feed stops only between its pumps, so a due barrier waits
        // for the end of this one.
        let _ = self.route(event);
    }

    /// Live sources only, after each pump, with the clock read before it
    /// (one read per pump). When records came and the input ran dry, nobody
    /// should wait for a batch to fill: publish what there is. When nothing
    /// came, let idle time move the watermark and publish what that releases.
    fn live_tick(&mut self, drained: bool, now_ns: u64) {
        if self.since_flush > 0 {
            if let Some(idle) = self.idle.as_mut() {
                idle.active(now_ns, self.watermark.max_ts());
            }
            if drained {
                self.flush();
            }
            return;
        }
        let Some(idle) = self.idle else { return };
        if idle.advance(now_ns, &mut self.watermark) {
            let watermark_ns = self.watermark.current();
            if self.reorder.iter().any(|r| r.min_ts().is_some_and(|ts| ts < watermark_ns)) {
                self.flush();
            }
        }
    }

    /// Event time and the waiting records of a checkpoint, re-routed by
    /// instrument for this run's shard count.
    pub(crate) fn restore(&mut self, mut state: RouterState) {
        self.watermark.advance_to(state.max_ts_ns);
        state.pending.sort_by_key(|e| e.order_key());
        for event in state.pending {
            self.reorder[self.shard_of.of(event.instrument)].push(Pending { event, ingest_ns: 0 });
        }
    }

    /// Cuts a checkpoint barrier after the last routed record: publishes
    /// what is ready, snapshots the feed and the router into a reused
    /// buffer, sends a barrier down every ring and the snapshot to the
    /// checkpoint writer. This is the source's whole stall; the I/O is the
    /// writer's.
    #[cold]
    fn cut_barrier<F: Feed>(&mut self, feed: &mut F) -> Result<(), FeedError> {
        if F::LIVE {
            // What a live feed holds back goes out before the barrier.
            feed.settle(&mut |event, due_ns| self.route_stamped(event, due_ns))?;
        }
        // Publishing what is ready may wait for ring space: that is
        // back-pressure, which the run has anyway, not the barrier's cost.
        self.flush();
        let Some(ck) = self.ckpt.as_mut() else { return Ok(()) };
        if ck.wait_for_previous {
            // Test runs (`--checkpoint-exact`): barriers at exact record
            // counts, whatever the disk's speed.
            let mut idle = Idle::default();
            while ck.progress.completed.load(Ordering::Acquire) + 1 != ck.next_id {
                if self.stop.raised() {
                    return Err(FeedError { path: PathBuf::new(), message: STOPPED.into() });
                }
                idle.wait();
            }
        }
        let started_ns = self.clock.now_ns();
        let started_cpu_ns = thread_cpu_ns();
        let mut buffer = ck.back.try_recv().unwrap_or_default();
        buffer.clear();
        let mut w = Writer::new(&mut buffer);
        let position = feed.checkpoint(&mut w)?;
        w.i64(self.watermark.max_ts_ns());
        w.u64(self.reorder.iter().map(|r| r.len() as u64).sum());
        for reorder in &self.reorder {
            for pending in reorder.iter() {
                write_event(&mut w, &pending.event);
            }
        }
        let id = ck.next_id;
        let mut stall_ns = self.clock.now_ns().saturating_sub(started_ns);
        let mut stall_cpu_ns = thread_cpu_ns().saturating_sub(started_cpu_ns);
        let watermark_ns = self.watermark.current();
        let rings = self.shards.iter_mut().map(|r| (r, false)).chain(std::iter::once((&mut self.late, false)));
        for (ring, mut open) in rings {
            let Some(slot) = claim(ring, &mut open, &self.stop, &mut self.backpressure) else {
                return Err(FeedError { path: PathBuf::new(), message: STOPPED.into() });
            };
            slot.kind = BatchKind::Barrier;
            slot.checkpoint = id;
            slot.watermark_ns = watermark_ns;
            ring.publish();
        }
        let stats = feed.stats();
        let message = Msg::Source {
            id,
            cut_ns: started_ns,
            last_seq: ck.last_seq,
            records_read: stats.records_read,
            offset: position.offset,
            line_no: position.line_no,
            rejects: position.rejects,
            accounts: ck.names.accounts.len() as u64,
            instruments: ck.names.instruments.len() as u64,
            snapshot: buffer,
            reload_to: std::mem::take(&mut ck.reload_to),
        };
        let (sent_ns, sent_cpu_ns) = (self.clock.now_ns(), thread_cpu_ns());
        if ck.tx.send(message).is_err() {
            return Err(FeedError { path: PathBuf::new(), message: STOPPED.into() });
        }
        let now_ns = self.clock.now_ns();
        stall_ns += now_ns.saturating_sub(sent_ns);
        stall_cpu_ns += thread_cpu_ns().saturating_sub(sent_cpu_ns);
        ck.stall.saturating_record(stall_ns.max(1));
        ck.stall_cpu.saturating_record(stall_cpu_ns.max(1));
        ck.next_id += 1;
        ck.since = 0;
        ck.last_cut_ns = now_ns;
        ck.time_due = false;
        ck.due = false;
        Ok(())
    }

    /// Routes one record; returns false when a checkpoint barrier is due
    /// right after it (the feed then stops so the source can cut it).
    #[inline(always)]
    fn route(&mut self, event: &Event) -> bool {
        if event.instrument >= crate::ingest::FEED_INTEGRITY {
            self.not_a_record(event);
            return true;
        }
        if self.until_stamp == 0 {
            self.stamp_ns = self.clock.now_ns();
            self.until_stamp = STAMP_EVERY;
            if let Some(ck) = self.ckpt.as_mut() {
                ck.time_due |= ck.interval_ns > 0 && self.stamp_ns.saturating_sub(ck.last_cut_ns) >= ck.interval_ns;
            }
        }
        self.until_stamp -= 1;
        let pending = Pending { event: *event, ingest_ns: self.stamp_ns };
        if self.watermark.observe(event.ts_ns) {
            let watermark_ns = self.watermark.current();
            push(&mut self.late, &mut self.late_open, &self.stop, &mut self.backpressure, &pending, watermark_ns);
        } else {
            self.reorder[self.shard_of.of(event.instrument)].push(pending);
        }
        self.since_flush += 1;
        if self.since_flush == FLUSH_EVERY {
            self.flush();
        } else if self.since_flush.is_multiple_of(RELEASE_EVERY) {
            let watermark_ns = self.watermark.current();
            for shard in 0..self.shards.len() {
                self.release(shard, watermark_ns);
            }
        }
        match self.ckpt.as_mut() {
            None => true,
            Some(ck) => {
                ck.since += 1;
                ck.last_seq = event.seq;
                let want = ck.time_due || (ck.every_records > 0 && ck.since >= ck.every_records);
                // One checkpoint in flight at a time: the next barrier waits
                // until the writer has made the previous one durable.
                ck.due =
                    want && (ck.wait_for_previous || ck.progress.completed.load(Ordering::Acquire) + 1 == ck.next_id);
                !ck.due
            }
        }
    }

    /// Events that stand for no record: a filtered replay's time-only
    /// stand-in for records it left out moves the watermark; a live feed's
    /// integrity finding (a gap, repeats) goes to the sink with the late
    /// records, in feed order, so the barrier after it commits it.
    #[cold]
    fn not_a_record(&mut self, event: &Event) {
        if event.instrument == crate::ingest::TIME_ONLY {
            self.watermark.advance_to(event.ts_ns);
            return;
        }
        let pending = Pending { event: *event, ingest_ns: self.stamp_ns };
        let watermark_ns = self.watermark.current();
        push(&mut self.late, &mut self.late_open, &self.stop, &mut self.backpressure, &pending, watermark_ns);
        // Out at once (a run of repeats routes no record that would flush
        // it), and a checkpoint by time commits it soon.
        if self.late_open {
            self.late.publish();
            self.late_open = false;
        }
        if let Some(ck) = self.ckpt.as_mut() {
            ck.since += 1;
        }
    }

    /// Moves the shard's records below `watermark_ns` into its batches.
    /// A batch that fills up while this drains is published under the
    /// watermark the shard's previous drain completed, not `watermark_ns`:
    /// records below `watermark_ns` may still follow it. So a batch's
    /// watermark always means that every record of the shard below it is
    /// in that batch or an earlier one (the rules' `on_watermark` relies on it).
    #[inline]
    fn release(&mut self, shard: usize, watermark_ns: i64) {
        let Router { shards, open, reorder, stop, backpressure, max_reorder_len, released, .. } = self;
        let (ring, open) = (&mut shards[shard], &mut open[shard]);
        *max_reorder_len = (*max_reorder_len).max(reorder[shard].len());
        let complete_ns = released[shard];
        reorder[shard].drain_before(watermark_ns, |run| {
            push_run(ring, open, stop, backpressure, run, complete_ns);
        });
        released[shard] = released[shard].max(watermark_ns);
    }

    /// Publishes what every shard can apply now (and the watermark, to
    /// shards with room in their ring), and the late records.
    fn flush(&mut self) {
        self.since_flush = 0;
        let watermark_ns = self.watermark.current();
        for shard in 0..self.shards.len() {
            self.release(shard, watermark_ns);
            if self.open[shard] || self.shards[shard].claim().is_some() {
                let slot = self.shards[shard].claim().expect("claimed above");
                if !self.open[shard] {
                    slot.kind = BatchKind::Data;
                    slot.events.clear();
                }
                slot.watermark_ns = watermark_ns;
                self.shards[shard].publish();
                self.open[shard] = false;
            }
        }
        if self.late_open {
            self.late.publish();
            self.late_open = false;
        }
    }

    /// Releases everything, then sends `End` to every shard; dropping the
    /// producers then tells the sink that the late ring is done.
    fn finish(&mut self) {
        if self.stop.raised() {
            // A stopped run commits nothing more: releasing what it holds
            // would only write alerts past its last barrier.
            return;
        }
        for shard in 0..self.shards.len() {
            self.release(shard, i64::MAX);
        }
        self.flush();
        for shard in 0..self.shards.len() {
            let mut idle = Idle::default();
            loop {
                if self.stop.raised() || self.shards[shard].consumer_gone() {
                    break;
                }
                if let Some(slot) = self.shards[shard].claim() {
                    slot.kind = BatchKind::End;
                    slot.events.clear();
                    slot.watermark_ns = i64::MAX;
                    self.shards[shard].publish();
                    break;
                }
                idle.wait();
            }
        }
    }
}

/// Appends a record to the ring's open batch, publishing the batch when full.
#[inline]
fn push(
    ring: &mut Producer<Batch>,
    open: &mut bool,
    stop: &Stop,
    backpressure: &mut Backpressure,
    pending: &Pending,
    watermark_ns: i64,
) {
    let Some(slot) = claim(ring, open, stop, backpressure) else { return };
    slot.events.push(*pending);
    if slot.events.len() == BATCH_EVENTS {
        slot.watermark_ns = watermark_ns;
        ring.publish();
        *open = false;
    }
}

/// Appends records to the ring's open batches, publishing each batch as it fills.
#[inline]
fn push_run(
    ring: &mut Producer<Batch>,
    open: &mut bool,
    stop: &Stop,
    backpressure: &mut Backpressure,
    mut run: &[Pending],
    watermark_ns: i64,
) {
    while !run.is_empty() {
        let Some(slot) = claim(ring, open, stop, backpressure) else { return };
        let take = (BATCH_EVENTS - slot.events.len()).min(run.len());
        slot.events.extend_from_slice(&run[..take]);
        run = &run[take..];
        if slot.events.len() == BATCH_EVENTS {
            slot.watermark_ns = watermark_ns;
            ring.publish();
            *open = false;
        }
    }
}

/// How the source waits for ring space, and how often it did.
#[derive(Default)]
pub(crate) struct Backpressure {
    pub(crate) waits: u64,
    /// A tape's source (not a live feed's): it may wait in long naps.
    pub(crate) patient: bool,
}

/// The longest nap of a source waiting for a full ring to drain: well under
/// a quarter ring's work (16 batches of 512 records: 0.8 ms at 100 ns a
/// record), so the shard never runs dry while the source sleeps.
const BACKPRESSURE_MAX_NAP: std::time::Duration = std::time::Duration::from_micros(200);

/// The open slot of a ring, claiming and resetting a fresh one if needed;
/// waits while the ring is full. `None` only when the pipeline is stopping.
#[inline]
fn claim<'a>(
    ring: &'a mut Producer<Batch>,
    open: &mut bool,
    stop: &Stop,
    backpressure: &mut Backpressure,
) -> Option<&'a mut Batch> {
    if !*open {
        if ring.claim().is_none() {
            // Full: the shard is behind, and a ring's worth of its work is
            // queued. A tape's source waits for a quarter to drain, in naps
            // that grow, so it wakes a few times per quarter instead of
            // once a batch (a shard sharing its core gets the time). A live
            // source takes the first free slot: its records are timed.
            let (mut idle, refill) = if backpressure.patient {
                (Idle::with_max_nap(BACKPRESSURE_MAX_NAP), ring.capacity() - ring.capacity().div_ceil(4))
            } else {
                (Idle::default(), ring.capacity() - 1)
            };
            while ring.occupancy() > refill {
                if stop.raised() || ring.consumer_gone() {
                    return None;
                }
                backpressure.waits += 1;
                idle.wait();
            }
        }
        let slot = ring.claim()?;
        slot.kind = BatchKind::Data;
        slot.events.clear();
        *open = true;
        return Some(slot);
    }
    ring.claim()
}

#[cfg(test)]
mod tests {
    use super::ShardOf;
    use proptest::prelude::*;

    #[test]
    fn shard_of_is_the_remainder_at_the_edges() {
        for n in [1usize, 2, 3, 4, 7, 16, 255, 256] {
            let shard_of = ShardOf::new(n);
            for instrument in [0u32, 1, 2, n as u32 - 1, n as u32, 1 << 31, u32::MAX - 1, u32::MAX] {
                assert_eq!(shard_of.of(instrument), instrument as usize % n, "{instrument} % {n}");
            }
        }
    }

    proptest! {
        /// Checkpoints re-route pending records by `instrument % shards`:
        /// the multiply must agree with it everywhere.
        #[test]
        fn shard_of_is_the_remainder(n in 1usize..=256, instrument in any::<u32>()) {
            prop_assert_eq!(ShardOf::new(n).of(instrument), instrument as usize % n);
        }
    }
}
