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
//!
//! Checkpoint barriers are batches too (`BatchKind::Barrier`): the source
//! cuts one between two records, snapshots its own state and sends the
//! barrier down every shard ring and the late ring; a shard snapshots its
//! detector when the barrier reaches it and passes it on to the sink in its
//! alert ring; the sink aligns the barriers of all its inputs, then commits
//! its output offsets. Snapshots go to the checkpoint writer thread
//! (`checkpoint::writer`), which does all the I/O.

use crate::alert::Alert;
use crate::alert::sink::{Outputs, Sink, SinkOutput};
use crate::checkpoint::codec::Writer;
use crate::checkpoint::store::Store;
use crate::checkpoint::writer::{self, CheckpointWriter, ImageSlot, Msg};
use crate::checkpoint::{Manifest, RouterState, Settings, write_event};
use crate::config::Rules;
use crate::detect::{Detector, DetectorImage};
use crate::event::Event;
use crate::ingest::{Feed, FeedError, FeedStats};
use crate::metrics::{CheckpointSummary, Clock, Summary, latency_histogram, thread_cpu_ns, thread_preemptions};
use crate::ring::spsc::{self, Consumer, Producer};
use crate::ring::{Idle, pin_current};
use crate::symbols::Names;
use crate::time::{IdleAdvance, Pending, ReorderBuffer, Watermark};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
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
    /// Checkpoint barrier `Batch::checkpoint`: every record before it in the
    /// ring is part of the checkpoint, none after it. Carries no records.
    Barrier,
}

/// What a shard sends the sink: alerts, and the checkpoint barriers it has
/// passed (the sink aligns them across shards before committing).
#[derive(Clone, Copy, Debug)]
pub enum ToSink {
    Alert(Alert),
    Barrier(u64),
}

/// One ring slot. To a shard: records ready to apply, in `(ts_ns, seq)`
/// order, and the watermark they were released under. To the sink: late
/// records, in feed order.
#[derive(Default)]
pub struct Batch {
    pub kind: BatchKind,
    pub watermark_ns: i64,
    /// The checkpoint id of a `Barrier` batch.
    pub checkpoint: u64,
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
    /// Window entries a shard copies into a snapshot in progress per slice
    /// (`SNAPSHOT_SLICE`; tests make it tiny, so snapshots span many batches).
    pub snapshot_slice: usize,
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
            snapshot_slice: SNAPSHOT_SLICE,
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

/// Checkpointing for one run: where to, how often, and the checkpoint the
/// run resumes from (its feed and validator are already restored by the
/// caller; the rest of its state is restored here).
pub struct Checkpointing {
    pub store: Store,
    pub settings: Settings,
    pub resume: Option<Resumed>,
}

pub struct Resumed {
    pub manifest: Manifest,
    pub router: RouterState,
    /// The shard snapshots, one per shard of the run that took them.
    pub shards: Vec<Vec<u8>>,
}

/// Runs a feed through the pipeline to its end. `on_tick` is called on the
/// calling thread about every 200 ms while the pipeline runs (progress bar).
pub fn run<F: Feed + Send>(
    feed: F,
    names: Names,
    cfg: &PipelineConfig,
    on_tick: impl FnMut(&Progress),
) -> Result<Summary, String> {
    run_with(feed, names, cfg, None, on_tick)
}

/// `run`, taking checkpoints (and resuming from one) when `checkpointing` is set.
pub fn run_with<F: Feed + Send>(
    feed: F,
    names: Names,
    cfg: &PipelineConfig,
    checkpointing: Option<Checkpointing>,
    mut on_tick: impl FnMut(&Progress),
) -> Result<Summary, String> {
    assert!(cfg.shards >= 1 && cfg.ring_batches.is_power_of_two());
    let resumed = checkpointing.as_ref().and_then(|c| c.resume.as_ref());
    let mut detectors: Vec<Detector> =
        (0..cfg.shards).map(|_| Detector::new(&cfg.rules, cfg.window_capacity)).collect();
    if let Some(resumed) = resumed {
        let n = cfg.shards;
        for (index, detector) in detectors.iter_mut().enumerate() {
            // Window keys are (group << 32 | instrument); shard = instrument % n.
            detector
                .restore(&resumed.shards, |key| (key as u32) as usize % n == index)
                .map_err(|e| format!("checkpoint {}: bad shard snapshot: {e}", resumed.manifest.id))?;
        }
    }
    let sink = match resumed {
        Some(r) => Sink::resume(&cfg.alerts_path, &cfg.late_path, &r.manifest)?,
        None => Sink::create(&cfg.alerts_path, &cfg.late_path)?,
    };
    let fresh = if checkpointing.is_none() { vec![cfg.alerts_path.clone(), cfg.late_path.clone()] } else { vec![] };
    let outputs = Outputs::remove_on_failure(fresh);
    let applied_base = resumed.map_or(0, |r| r.manifest.applied);
    let resumed_from = resumed.map(|r| (r.manifest.id, r.manifest.last_seq));
    let resumed_router = resumed.map(|r| r.router.clone());
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
        let (tx, rx) = spsc::channel(4096, || ToSink::Alert(Alert::default()));
        alert_producers.push(tx);
        alert_consumers.push(rx);
    }
    let (late_tx, late_rx) = spsc::channel(cfg.ring_batches, Batch::with_capacity);
    let pinned = !cfg.cores.is_empty();

    // Checkpointing: one channel into the writer thread, and per shard (and
    // the source) a channel that hands snapshot buffers back for reuse.
    let mut to_writer: Option<Sender<Msg>> = None;
    let mut writer_parts = None;
    let mut shard_ckpts: Vec<Option<ShardCkpt>> = (0..cfg.shards).map(|_| None).collect();
    let mut source_ckpt = None;
    if let Some(c) = checkpointing {
        let (tx, rx) = mpsc::channel();
        let progress = Arc::new(writer::Progress::default());
        let first_id = c.resume.as_ref().map_or(1, |r| r.manifest.id + 1);
        progress.completed.store(first_id - 1, Ordering::Release);
        let mut images = Vec::new();
        // One image per shard and one buffer for the source, allocated now
        // and passed back and forth with the writer. One each is enough: the
        // writer hands it back before the checkpoint completes, and the next
        // barrier is only cut after that. The writer grows each image ahead
        // of the state, off the shard.
        for (index, slot) in shard_ckpts.iter_mut().enumerate() {
            let image = Arc::new(ImageSlot::default());
            image.put_initial(DetectorImage::with_capacity(cfg.window_capacity / 2, cfg.window_capacity));
            images.push(image.clone());
            *slot = Some(ShardCkpt {
                index,
                tx: tx.clone(),
                image,
                pending: None,
                slice: cfg.snapshot_slice.max(1),
                stall: latency_histogram(),
                stall_cpu: latency_histogram(),
                preempted: 0,
                max_unpreempted_ns: 0,
            });
        }
        let (source_back, back_rx) = mpsc::channel();
        // Touched now, so the first barrier does not page-fault it in.
        let mut buffer = vec![1u8; 1 << 20];
        buffer.clear();
        let _ = source_back.send(buffer);
        source_ckpt = Some(SourceCkpt {
            tx: tx.clone(),
            back: back_rx,
            progress: progress.clone(),
            names: names.clone(),
            next_id: first_id,
            every_records: c.settings.every_records,
            interval_ns: c.settings.interval_ns,
            since: 0,
            last_cut_ns: 0,
            time_due: false,
            due: false,
            last_seq: c.resume.as_ref().map_or(0, |r| r.manifest.last_seq),
            wait_for_previous: c.settings.exact,
            stall: latency_histogram(),
            stall_cpu: latency_histogram(),
        });
        let (saved_accounts, saved_instruments) =
            c.resume.as_ref().map_or((0, 0), |r| (r.manifest.accounts, r.manifest.instruments));
        let writer = CheckpointWriter {
            store: c.store,
            settings: c.settings,
            names: names.clone(),
            shards: cfg.shards,
            saved_accounts,
            saved_instruments,
            applied_base,
            progress,
            images,
            source_back,
            encoded: Vec::new(),
            prefix: None,
        };
        writer_parts = Some((writer, rx));
        to_writer = Some(tx);
    }

    let (feed_result, shard_results, sink_result, writer_result) = std::thread::scope(|scope| {
        let writer_handle = writer_parts.map(|(writer, rx)| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tw-checkpoint".into())
                .spawn_scoped(scope, move || {
                    let result = writer.run(rx, clock);
                    if result.is_err() {
                        stop.raise();
                    }
                    result
                })
                .expect("spawn checkpoint thread")
        });
        let sink_handle = {
            let (names, stop) = (names.clone(), stop.clone());
            let to_writer = to_writer.take();
            std::thread::Builder::new()
                .name("tw-sink".into())
                .spawn_scoped(scope, move || sink.run(alert_consumers, late_rx, names, clock, &stop, to_writer))
                .expect("spawn sink thread")
        };
        let mut shard_handles = Vec::new();
        let shard_parts = shard_consumers.into_iter().zip(alert_producers).zip(detectors).zip(shard_ckpts);
        for (index, (((rx, alerts), detector), ckpt)) in shard_parts.enumerate() {
            let core = cfg.cores.get(index + 1).copied();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tw-shard-{index}"))
                .spawn_scoped(scope, move || {
                    if let Some(core) = core {
                        pin_current(core);
                    }
                    run_shard(rx, alerts, detector, clock, &stop, ckpt)
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
                    if let Some(state) = resumed_router {
                        router.restore(state);
                    }
                    router.ckpt = source_ckpt;
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
        let writer_result = writer_handle.map(join);
        (feed_result, shard_results, sink_result, writer_result)
    });

    let elapsed = started.elapsed();
    // A thread that fails raises Stop and the others give up with a
    // "stopped" error: report the cause, not the echo.
    let (feed_stats, source) = match feed_result {
        Ok(ok) => ok,
        Err(e) if !stop_echo(&e.message) => return Err(e.to_string()),
        Err(_) => {
            if let Some(writer) = writer_result {
                writer?;
            }
            sink_result?;
            for shard in shard_results {
                shard?;
            }
            return Err("pipeline stopped".to_string());
        }
    };
    let writer = writer_result.transpose()?;
    let sink: SinkOutput = sink_result?;
    let mut summary = Summary {
        feed: feed_stats,
        rejected_at_import: 0,
        late: sink.late,
        applied: applied_base,
        alerts: sink.alerts,
        elapsed,
        ingest_to_alert: sink.ingest_to_alert,
        ingest_to_applied: sink.ingest_to_applied,
        shards: cfg.shards,
        pinned,
        backpressure_waits: source.backpressure_waits,
        grew: source.grew,
        max_reorder_len: source.max_reorder_len,
        checkpoints: None,
    };
    let source_stall_max = source.stall.as_ref().map_or(0, |(h, _)| h.max());
    let mut shard_stall_max = 0;
    let mut stall = source.stall;
    let (mut shard_stall, mut shard_stall_cpu) = (latency_histogram(), latency_histogram());
    let (mut shard_stall_preempted, mut shard_stall_max_unpreempted_ns) = (0, 0);
    for shard in shard_results {
        let shard = shard?;
        summary.applied += shard.applied;
        summary.grew += shard.grew;
        shard_stall_max = shard_stall_max.max(shard.stall.as_ref().map_or(0, |(h, _)| h.max()));
        shard_stall_preempted += shard.preempted.0;
        shard_stall_max_unpreempted_ns = shard_stall_max_unpreempted_ns.max(shard.preempted.1);
        if let (Some((wall, cpu)), Some((shard_wall, shard_cpu))) = (stall.as_mut(), shard.stall.as_ref()) {
            wall.add(shard_wall).map_err(|e| format!("stall histogram: {e}"))?;
            cpu.add(shard_cpu).map_err(|e| format!("stall histogram: {e}"))?;
            shard_stall.add(shard_wall).map_err(|e| format!("stall histogram: {e}"))?;
            shard_stall_cpu.add(shard_cpu).map_err(|e| format!("stall histogram: {e}"))?;
        }
    }
    if let (Some(writer), Some((stall, stall_cpu))) = (writer, stall) {
        summary.checkpoints = Some(CheckpointSummary {
            taken: writer.taken,
            bytes: writer.bytes,
            duration: writer.duration,
            stall,
            stall_cpu,
            source_stall_max_ns: source_stall_max,
            shard_stall_max_ns: shard_stall_max,
            shard_stall,
            shard_stall_cpu,
            shard_stall_preempted,
            shard_stall_max_unpreempted_ns,
            resumed_from,
        });
    }
    // Every accepted record is either applied or late: the pipeline lost nothing.
    assert_eq!(summary.applied + summary.late, summary.feed.accepted, "records lost in the pipeline");
    outputs.keep();
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
    stall: Option<(Histogram<u64>, Histogram<u64>)>,
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
struct Router {
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
    backpressure_waits: u64,
    max_reorder_len: usize,
    /// Live sources only: event time from the wall clock while quiet.
    idle: Option<IdleAdvance>,
    ckpt: Option<SourceCkpt>,
}

/// The source's side of checkpointing: when the next barrier is due, and
/// the buffer its snapshot is written into.
struct SourceCkpt {
    tx: Sender<Msg>,
    back: Receiver<Vec<u8>>,
    progress: Arc<writer::Progress>,
    names: Names,
    next_id: u64,
    every_records: u64,
    interval_ns: u64,
    /// Records routed since the last barrier.
    since: u64,
    last_cut_ns: u64,
    time_due: bool,
    /// A barrier is due: the feed stops after this record.
    due: bool,
    last_seq: u64,
    /// Wait for the previous checkpoint rather than skip the barrier (test
    /// runs only: it stalls the source on the writer).
    wait_for_previous: bool,
    stall: Histogram<u64>,
    stall_cpu: Histogram<u64>,
}

/// A shard's side of checkpointing.
struct ShardCkpt {
    index: usize,
    tx: Sender<Msg>,
    image: Arc<ImageSlot>,
    /// The snapshot being copied: (checkpoint id, records applied at its
    /// barrier).
    pending: Option<(u64, u64)>,
    /// Entries per slice of the copy.
    slice: usize,
    /// Hot-path time caused by checkpoints: each barrier's cut and each
    /// slice of the copy.
    stall: Histogram<u64>,
    stall_cpu: Histogram<u64>,
    /// Stalls during which the thread was preempted, and the longest of the others.
    preempted: u64,
    max_unpreempted_ns: u64,
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
            shard_of: ShardOf::new(n),
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
            ckpt: None,
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
    fn restore(&mut self, mut state: RouterState) {
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
            let Some(slot) = claim(ring, &mut open, &self.stop, &mut self.backpressure_waits) else {
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
            push(&mut self.late, &mut self.late_open, &self.stop, &mut self.backpressure_waits, &pending, watermark_ns);
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

    /// Moves the shard's records below `watermark_ns` into its batches.
    #[inline]
    fn release(&mut self, shard: usize, watermark_ns: i64) {
        let Router { shards, open, reorder, stop, backpressure_waits, max_reorder_len, .. } = self;
        let (ring, open) = (&mut shards[shard], &mut open[shard]);
        *max_reorder_len = (*max_reorder_len).max(reorder[shard].len());
        reorder[shard].drain_before(watermark_ns, |run| {
            push_run(ring, open, stop, backpressure_waits, run, watermark_ns);
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

/// Appends records to the ring's open batches, publishing each batch as it fills.
#[inline]
fn push_run(
    ring: &mut Producer<Batch>,
    open: &mut bool,
    stop: &Stop,
    waits: &mut u64,
    mut run: &[Pending],
    watermark_ns: i64,
) {
    while !run.is_empty() {
        let Some(slot) = claim(ring, open, stop, waits) else { return };
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

/// How many records ahead of the one it applies a shard prefetches the
/// window state for.
const PREFETCH_AHEAD: usize = 8;

struct ShardStats {
    applied: u64,
    grew: u64,
    stall: Option<(Histogram<u64>, Histogram<u64>)>,
    /// Stalls preempted, and the longest wall time of the others.
    preempted: (u64, u64),
}

fn run_shard(
    mut rx: Consumer<Batch>,
    mut alerts: Producer<ToSink>,
    mut detector: Detector,
    clock: Clock,
    stop: &Stop,
    mut ckpt: Option<ShardCkpt>,
) -> Result<ShardStats, String> {
    let mut applied = 0u64;
    let mut idle = Idle::default();
    let mut send = |item: ToSink| -> bool {
        let mut idle = Idle::default();
        loop {
            if let Some(slot) = alerts.claim() {
                *slot = item;
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
        let mut delivered = true;
        if batch.kind == BatchKind::Barrier
            && let Some(ck) = ckpt.as_mut()
        {
            // The source cuts a barrier only once the previous checkpoint is
            // durable, which needs this shard's image: none can be pending.
            // Should one be, it is finished first (exact, only slower).
            debug_assert!(ck.pending.is_none(), "a barrier arrived while a snapshot was being copied");
            delivered &= ck.copy_slice(&mut detector, &clock, usize::MAX);
            // The stall: cut the snapshot (the hot keys; the window entries
            // are copied in slices after the batches that follow), and pass
            // the barrier on. The writer encodes the image and does the I/O.
            let started = ShardCkpt::stall_start(&clock);
            detector.begin_snapshot(ck.image.take());
            ck.pending = Some((batch.checkpoint, applied));
            delivered &= send(ToSink::Barrier(batch.checkpoint));
            ck.stall_end(&clock, started);
        }
        for (i, pending) in batch.events.iter().enumerate() {
            // Records come from the source's core: fetch their lines well
            // ahead, then the window state of the records a little ahead.
            if let Some(far) = batch.events.get(i + 2 * PREFETCH_AHEAD) {
                crate::flat_map::prefetch(far);
            }
            if let Some(ahead) = batch.events.get(i + PREFETCH_AHEAD) {
                detector.prefetch(&ahead.event);
            }
            detector.apply(&pending.event, &mut |alert| {
                let ingest_ns = pending.ingest_ns;
                delivered &= send(ToSink::Alert(Alert { ingest_ns, applied_ns: clock.now_ns(), ..alert }))
            });
        }
        applied += batch.events.len() as u64;
        if let Some(ck) = ckpt.as_ref() {
            // Two relaxed stores per batch: the writer sizes the image by them.
            let (keys, entries) = detector.footprint();
            ck.image.keys.store(keys, Ordering::Relaxed);
            ck.image.entries.store(entries, Ordering::Relaxed);
        }
        let end = batch.kind == BatchKind::End;
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
    Ok(ShardStats { applied, grew: detector.stats().grew, stall: ckpt.map(|c| (c.stall, c.stall_cpu)), preempted })
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
