//! The replay pipeline, wired end to end:
//!
//! ```text
//! source thread ──batches──▶ shard 0..N threads ──alerts──▶ sink thread
//!  decode, seq + lifecycle     window state, rules           names, JSON Lines,
//!  checks, watermark, late,                                   late file
//!  reorder per shard, route ──────── late records ─────────▶
//! ```
//!
//! The source releases each shard's records in `(ts_ns, seq)` order once
//! the watermark passes them, so a shard only applies rules. Reordering is
//! cheap next to rule state, and doing it on the source balances two cores:
//! the source would otherwise idle while the shard is the bottleneck.
//!
//! Rings are bounded SPSC rings of preallocated batches; a full ring makes
//! the writer wait (back-pressure), nothing is ever dropped. Watermarks
//! travel inside the batches; an `End` batch closes a shard.

use crate::alert::Alert;
use crate::alert::sink::{Sink, SinkOutput};
use crate::config::Rules;
use crate::detect::Detector;
use crate::event::Event;
use crate::ingest::{Feed, FeedError, FeedStats};
use crate::metrics::{Clock, Summary};
use crate::ring::spsc::{self, Consumer, Producer};
use crate::ring::{Idle, pin_current};
use crate::symbols::Names;
use crate::time::{IdleAdvance, Pending, ReorderBuffer, Watermark};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Records per batch: large enough to amortise a cursor publish and a clock
/// read, small enough that a batch crosses the ring in microseconds.
pub const BATCH_EVENTS: usize = 512;
/// The source flushes partial batches (and watermarks) to every shard at
/// least this often, in records, so a quiet shard still sees time move.
pub const FLUSH_EVERY: u64 = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchKind {
    #[default]
    Data,
    /// No more records: the shard flushes its reorder buffer and stops.
    End,
}

/// One ring slot. To a shard: records ready to apply, in `(ts_ns, seq)`
/// order, and the watermark they were released under. To the sink: late
/// records, in feed order.
#[derive(Default)]
pub struct Batch {
    pub kind: BatchKind,
    pub watermark_ns: i64,
    pub events: Vec<Pending>,
}

impl Batch {
    fn with_capacity() -> Batch {
        Batch { events: Vec::with_capacity(BATCH_EVENTS), ..Batch::default() }
    }
}

/// Raised by any thread that fails, so the others stop waiting on it.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub shards: usize,
    /// Cores to pin to: the source on the first, shard i on the (i+1)th.
    /// Empty: run unpinned.
    pub cores: Vec<usize>,
    pub lateness_ns: i64,
    pub rules: Rules,
    /// Batches per shard ring (a power of two).
    pub ring_batches: usize,
    /// Start-up capacity of each shard's reorder buffer and window, in records.
    pub reorder_capacity: usize,
    pub window_capacity: usize,
    pub alerts_path: PathBuf,
    pub late_path: PathBuf,
    /// Live sources only (see `Feed::LIVE`); the defaults are replay's.
    pub live: LiveOptions,
}

/// How the pipeline runs behind a live source (the bench's paced feeder, a
/// network feed).
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveOptions {
    /// Move event time on with the wall clock after the feed has been quiet
    /// this long (`time::IdleAdvance`). `None`: only records move it.
    pub idle_after_ns: Option<u64>,
    /// The clock the source stamps its due times with, so they compare with
    /// the pipeline's stamps. `None`: a clock started with the pipeline.
    pub clock: Option<Clock>,
}

impl PipelineConfig {
    pub fn new(shards: usize, alerts_path: PathBuf, late_path: PathBuf) -> PipelineConfig {
        PipelineConfig {
            shards,
            cores: Vec::new(),
            lateness_ns: 50 * crate::config::MS,
            rules: Rules::default(),
            ring_batches: 64,
            reorder_capacity: 1 << 16,
            window_capacity: 1 << 16,
            alerts_path,
            late_path,
            live: LiveOptions::default(),
        }
    }
}

/// Progress that the control plane may read while the pipeline runs.
#[derive(Default)]
pub struct Progress {
    pub records_read: AtomicU64,
    /// The source's watermark after its latest pump (for watermark lag).
    pub watermark_ns: AtomicI64,
}

/// Runs a feed through the pipeline to its end. `on_tick` is called on the
/// calling thread about every 200 ms while the pipeline runs (progress bar).
pub fn run<F: Feed + Send>(
    feed: F,
    names: Names,
    cfg: &PipelineConfig,
    mut on_tick: impl FnMut(&Progress),
) -> Result<Summary, String> {
    assert!(cfg.shards >= 1 && cfg.ring_batches.is_power_of_two());
    let sink = Sink::create(&cfg.alerts_path, &cfg.late_path)?;
    let clock = cfg.live.clock.unwrap_or_default();
    let stop = Stop::default();
    let progress = Progress::default();
    let started = Instant::now();

    let mut shard_producers = Vec::new();
    let mut shard_consumers = Vec::new();
    let mut alert_producers = Vec::new();
    let mut alert_consumers = Vec::new();
    for _ in 0..cfg.shards {
        let (tx, rx) = spsc::channel(cfg.ring_batches, Batch::with_capacity);
        shard_producers.push(tx);
        shard_consumers.push(rx);
        let (tx, rx) = spsc::channel(4096, Alert::default);
        alert_producers.push(tx);
        alert_consumers.push(rx);
    }
    let (late_tx, late_rx) = spsc::channel(cfg.ring_batches, Batch::with_capacity);
    let pinned = !cfg.cores.is_empty();

    let (feed_result, shard_results, sink_result) = std::thread::scope(|scope| {
        let sink_handle = {
            let (names, stop) = (names.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tw-sink".into())
                .spawn_scoped(scope, move || sink.run(alert_consumers, late_rx, names, clock, &stop))
                .expect("spawn sink thread")
        };
        let mut shard_handles = Vec::new();
        for (index, (rx, alerts)) in shard_consumers.into_iter().zip(alert_producers).enumerate() {
            let core = cfg.cores.get(index + 1).copied();
            let stop = stop.clone();
            let detector = Detector::new(&cfg.rules, cfg.window_capacity);
            let handle = std::thread::Builder::new()
                .name(format!("tw-shard-{index}"))
                .spawn_scoped(scope, move || {
                    if let Some(core) = core {
                        pin_current(core);
                    }
                    run_shard(rx, alerts, detector, clock, &stop)
                })
                .expect("spawn shard thread");
            shard_handles.push(handle);
        }
        let source_handle = {
            let core = cfg.cores.first().copied();
            let (stop, progress) = (stop.clone(), &progress);
            let (lateness_ns, reorder_capacity) = (cfg.lateness_ns, cfg.reorder_capacity);
            let idle_after_ns = cfg.live.idle_after_ns;
            std::thread::Builder::new()
                .name("tw-source".into())
                .spawn_scoped(scope, move || {
                    if let Some(core) = core {
                        pin_current(core);
                    }
                    let mut router =
                        Router::new(shard_producers, late_tx, lateness_ns, reorder_capacity, clock, stop.clone());
                    router.idle = idle_after_ns.map(IdleAdvance::new);
                    run_source(feed, router, progress, &stop)
                })
                .expect("spawn source thread")
        };
        let mut ticks = 0u64;
        while !source_handle.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            ticks += 1;
            if ticks.is_multiple_of(10) {
                on_tick(&progress);
            }
        }
        on_tick(&progress);
        let feed_result = join(source_handle);
        let shard_results: Vec<_> = shard_handles.into_iter().map(join).collect();
        let sink_result = join(sink_handle);
        (feed_result, shard_results, sink_result)
    });

    let elapsed = started.elapsed();
    // A thread that fails raises Stop and the others give up with a
    // "stopped" error: report the cause, not the echo.
    let (feed_stats, source) = match feed_result {
        Ok(ok) => ok,
        Err(e) if !stop_echo(&e.message) => return Err(e.to_string()),
        Err(_) => {
            sink_result?;
            for shard in shard_results {
                shard?;
            }
            return Err("pipeline stopped".to_string());
        }
    };
    let sink: SinkOutput = sink_result?;
    let mut summary = Summary {
        feed: feed_stats,
        rejected_at_import: 0,
        late: sink.late,
        applied: 0,
        alerts: sink.alerts,
        elapsed,
        ingest_to_alert: sink.ingest_to_alert,
        ingest_to_applied: sink.ingest_to_applied,
        shards: cfg.shards,
        pinned,
        backpressure_waits: source.backpressure_waits,
        grew: source.grew,
        max_reorder_len: source.max_reorder_len,
    };
    for shard in shard_results {
        let shard = shard?;
        summary.applied += shard.applied;
        summary.grew += shard.grew;
    }
    // Every accepted record is either applied or late: the pipeline lost nothing.
    assert_eq!(summary.applied + summary.late, summary.feed.accepted, "records lost in the pipeline");
    Ok(summary)
}

fn stop_echo(message: &str) -> bool {
    message == STOPPED
}

const STOPPED: &str = "pipeline stopped";

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[derive(Default)]
struct SourceStats {
    backpressure_waits: u64,
    grew: u64,
    max_reorder_len: usize,
}

fn run_source<F: Feed>(
    mut feed: F,
    mut router: Router,
    progress: &Progress,
    stop: &Stop,
) -> Result<(FeedStats, SourceStats), FeedError> {
    let result = loop {
        // Live: the clock is read before the input is looked at, so a
        // source stalled between finding it empty and acting on that never
        // counts the stall as quiet time (which would make late the records
        // that queued up meanwhile).
        let pump_started_ns = if F::LIVE { router.clock.now_ns() } else { 0 };
        let pumped = if F::LIVE {
            feed.pump_live(&mut |event, due_ns| router.route_stamped(event, due_ns))
        } else {
            feed.pump(&mut |event| router.route(event))
        };
        let more = match pumped {
            Ok(more) => more,
            Err(e) => break Err(e),
        };
        if F::LIVE {
            router.live_tick(feed.drained(), pump_started_ns);
        }
        progress.records_read.store(feed.stats().records_read, Ordering::Relaxed);
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
        backpressure_waits: router.backpressure_waits,
        grew: router.reorder.iter().map(|r| r.grew).sum(),
        max_reorder_len: router.max_reorder_len,
    };
    result.map(|()| (feed.stats(), stats))
}

/// Wall-clock stamps are taken once per this many routed records.
const STAMP_EVERY: u32 = 256;

/// The source's half of the rings: judges lateness, holds each shard's
/// records until the watermark passes them, and fills batches in place.
struct Router {
    shards: Vec<Producer<Batch>>,
    /// Whether shard i has a claimed, partly filled slot.
    open: Vec<bool>,
    reorder: Vec<ReorderBuffer>,
    late: Producer<Batch>,
    late_open: bool,
    watermark: Watermark,
    clock: Clock,
    stop: Stop,
    stamp_ns: u64,
    until_stamp: u32,
    since_flush: u64,
    backpressure_waits: u64,
    max_reorder_len: usize,
    /// Live sources only: event time from the wall clock while quiet.
    idle: Option<IdleAdvance>,
}

impl Router {
    fn new(
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
            late,
            late_open: false,
            watermark: Watermark::new(lateness_ns),
            clock,
            stop,
            stamp_ns: 0,
            until_stamp: 0,
            since_flush: 0,
            backpressure_waits: 0,
            max_reorder_len: 0,
            idle: None,
        }
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
        self.route(event);
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

    #[inline]
    fn route(&mut self, event: &Event) {
        if self.until_stamp == 0 {
            self.stamp_ns = self.clock.now_ns();
            self.until_stamp = STAMP_EVERY;
        }
        self.until_stamp -= 1;
        let pending = Pending { event: *event, ingest_ns: self.stamp_ns };
        if self.watermark.observe(event.ts_ns) {
            let watermark_ns = self.watermark.current();
            push(&mut self.late, &mut self.late_open, &self.stop, &mut self.backpressure_waits, &pending, watermark_ns);
        } else {
            let shard = event.instrument as usize % self.shards.len();
            self.reorder[shard].push(pending);
            self.release(shard, self.watermark.current());
        }
        self.since_flush += 1;
        if self.since_flush == FLUSH_EVERY {
            self.flush();
        }
    }

    /// Moves the shard's records below `watermark_ns` into its batches.
    #[inline]
    fn release(&mut self, shard: usize, watermark_ns: i64) {
        let Router { shards, open, reorder, stop, backpressure_waits, max_reorder_len, .. } = self;
        let (ring, open) = (&mut shards[shard], &mut open[shard]);
        *max_reorder_len = (*max_reorder_len).max(reorder[shard].len());
        reorder[shard].drain_before(watermark_ns, |pending| {
            push(ring, open, stop, backpressure_waits, pending, watermark_ns);
        });
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
    waits: &mut u64,
    pending: &Pending,
    watermark_ns: i64,
) {
    let Some(slot) = claim(ring, open, stop, waits) else { return };
    slot.events.push(*pending);
    if slot.events.len() == BATCH_EVENTS {
        slot.watermark_ns = watermark_ns;
        ring.publish();
        *open = false;
    }
}

/// The open slot of a ring, claiming and resetting a fresh one if needed;
/// waits while the ring is full. `None` only when the pipeline is stopping.
#[inline]
fn claim<'a>(ring: &'a mut Producer<Batch>, open: &mut bool, stop: &Stop, waits: &mut u64) -> Option<&'a mut Batch> {
    if !*open {
        let mut idle = Idle::default();
        while ring.claim().is_none() {
            if stop.raised() || ring.consumer_gone() {
                return None;
            }
            *waits += 1;
            idle.wait();
        }
        let slot = ring.claim()?;
        slot.kind = BatchKind::Data;
        slot.events.clear();
        *open = true;
        return Some(slot);
    }
    ring.claim()
}

struct ShardStats {
    applied: u64,
    grew: u64,
}

fn run_shard(
    mut rx: Consumer<Batch>,
    mut alerts: Producer<Alert>,
    mut detector: Detector,
    clock: Clock,
    stop: &Stop,
) -> Result<ShardStats, String> {
    let mut applied = 0u64;
    let mut idle = Idle::default();
    let mut emit = |alert: Alert, ingest_ns: u64| -> bool {
        let mut idle = Idle::default();
        loop {
            if let Some(slot) = alerts.claim() {
                *slot = Alert { ingest_ns, applied_ns: clock.now_ns(), ..alert };
                alerts.publish();
                return true;
            }
            if stop.raised() || alerts.consumer_gone() {
                return false;
            }
            idle.wait();
        }
    };
    loop {
        let Some(batch) = rx.peek() else {
            if rx.is_finished() || stop.raised() {
                break;
            }
            idle.wait();
            continue;
        };
        idle.reset();
        let mut delivered = true;
        for pending in &batch.events {
            detector.apply(&pending.event, &mut |alert| delivered &= emit(alert, pending.ingest_ns));
        }
        applied += batch.events.len() as u64;
        let end = batch.kind == BatchKind::End;
        rx.release();
        if !delivered {
            return Err("alert sink stopped".to_string());
        }
        if end {
            break;
        }
    }
    Ok(ShardStats { applied, grew: detector.stats().grew })
}
