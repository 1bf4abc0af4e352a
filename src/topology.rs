//! The pipeline's topology: builds the rings and threads of the stages
//! (`source`, `shard`, `sink`, and the checkpoint writer), runs them and
//! joins them into one summary. The data flow:
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

use crate::checkpoint::store::Store;
use crate::checkpoint::writer::{self, CheckpointWriter, ImageSlot, Msg};
use crate::checkpoint::{Manifest, RouterState, Settings};
use crate::config::Rules;
use crate::detect::Detector;
use crate::detect::views::ViewConfig;
use crate::detect::views::book::{BookLimits, Reference};
use crate::flow::{Batch, STOPPED, Stop, shard_to_sink};
use crate::ingest::Feed;
use crate::instruments::Instruments;
use crate::metrics::{BookSummary, CheckpointSummary, Clock, Summary, latency_histogram};
use crate::ring::pin_current;
use crate::ring::spsc;
use crate::shard::{SNAPSHOT_SLICE, ShardCkpt, run_shard};
use crate::sink::{Outputs, Sink, SinkOutput};
use crate::source::{Router, SourceCkpt, run_source};
use crate::symbols::Names;
use crate::time::IdleAdvance;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::Instant;

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
    /// Where near-misses go (`replay --near-misses`); none: counted only.
    pub near_miss_path: Option<PathBuf>,
    /// Live sources only (see `Feed::LIVE`); the defaults are replay's.
    pub live: LiveOptions,
    /// instruments.csv, for the order book (empty: none loaded).
    pub instruments: Arc<Instruments>,
    /// Keep the order book even when no enabled rule reads it (tests, measurement).
    pub keep_book: bool,
    /// A filtered replay writes only these alerts (`investigate::replay_filter`).
    pub alert_keep: Option<crate::investigate::replay_filter::AlertKeep>,
}

/// How the pipeline runs behind a live source (the bench's paced feeder, a
/// network feed).
#[derive(Clone, Debug, Default)]
pub struct LiveOptions {
    /// Move event time on with the wall clock after the feed has been quiet
    /// this long (`time::IdleAdvance`). `None`: only records move it.
    pub idle_after_ns: Option<u64>,
    /// The clock the source stamps its due times with, so they compare with
    /// the pipeline's stamps. `None`: a clock started with the pipeline.
    pub clock: Option<Clock>,
    /// The daemon's handle (`serve`): checkpoints on request and the
    /// shutdown sequence. `None`: the feed's end ends the run.
    pub control: Option<Arc<LiveControl>>,
}

/// What a daemon asks of a running live pipeline, and what it learns back.
/// Read by the source once per pump, never per record.
#[derive(Debug, Default)]
pub struct LiveControl {
    /// Cut a checkpoint at the next pump (`POST /checkpoint`, a day's end);
    /// cleared when it is cut.
    pub checkpoint_now: AtomicBool,
    /// Stop: once the input ring is drained, cut a final checkpoint, and
    /// when it is durable stop the pipeline without ending the feed.
    pub shutdown: AtomicBool,
    /// The newest durable checkpoint's id (0: none yet).
    pub completed: AtomicU64,
    /// Its bytes written and its duration (cut to durable manifest), stored
    /// before `completed`.
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_duration_ns: AtomicU64,
    /// The shutdown's final checkpoint is durable and the pipeline stopped
    /// on it: the run's "pipeline stopped" error is the clean end.
    pub stopped_clean: AtomicBool,
    /// What the sink measured so far this run, copied about once a second
    /// while it is idle (never per alert): the ingest-to-alert histogram,
    /// and the late records by kind (N, C, T), for the daemon's metrics.
    pub latency: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
    pub late_by_kind: [AtomicU64; 3],
    /// Records the shards applied, by kind: added once per batch.
    pub applied_by_kind: [AtomicU64; 3],
    /// Alert episodes opened and crossings suppressed, by rule (registry
    /// order): each shard adds what its rules counted since its last batch.
    pub episodes_by_rule: [AtomicU64; crate::detect::registry::RULE_COUNT],
    pub suppressed_by_rule: [AtomicU64; crate::detect::registry::RULE_COUNT],
    /// Reload the rules (`serve`, SIGHUP): at the next pump, without
    /// waiting for the input to drain, cut a checkpoint marked as handing
    /// over to the rules whose reference hash is `reload_to`
    /// (`Manifest::reload_to`), then stop as a shutdown does. The daemon
    /// starts the next run from that checkpoint with the new rules.
    pub reload: AtomicBool,
    pub reload_to: AtomicU64,
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
            instruments: Arc::default(),
            keep_book: false,
            alert_keep: None,
            alerts_path,
            late_path,
            near_miss_path: None,
            live: LiveOptions::default(),
        }
    }
}

/// Progress that the control plane may read while the pipeline runs.
#[derive(Default)]
pub struct Progress {
    pub records_read: AtomicU64,
    /// The feed's rejected records, seq gaps and the records missing in them.
    pub rejected: AtomicU64,
    pub gaps: AtomicU64,
    pub missing_records: AtomicU64,
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
    /// `None`: the checkpoint was cut under this run's rules; every section
    /// is restored. `Some(ids)`: it was cut for a reload to this run's
    /// rules: only the sections of these rules (same parameter version
    /// before and after) are restored, the views this run keeps too; every
    /// other section is dropped and its rule starts empty.
    pub carry: Option<Vec<crate::alert::RuleId>>,
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
    let views = ViewConfig {
        keep_book: cfg.keep_book,
        book_limits: BookLimits::default(),
        reference: Some(Reference { instruments: cfg.instruments.clone(), names: names.instruments.clone() }),
    };
    let mut detectors: Vec<Detector> =
        (0..cfg.shards).map(|_| Detector::with_views(&cfg.rules, cfg.window_capacity, &views)).collect();
    if let Some(resumed) = resumed {
        let n = cfg.shards;
        for (index, detector) in detectors.iter_mut().enumerate() {
            // Window keys are (group << 32 | instrument); shard = instrument % n.
            let keep = |key: u64| (key as u32) as usize % n == index;
            match &resumed.carry {
                None => detector.restore(&resumed.shards, keep),
                Some(carry) => detector.restore_carrying(&resumed.shards, keep, carry),
            }
            .map_err(|e| format!("checkpoint {}: bad shard snapshot: {e}", resumed.manifest.id))?;
        }
    }
    let sink = match resumed {
        Some(r) => Sink::resume(&cfg.alerts_path, &cfg.late_path, &r.manifest)?.near_misses(
            cfg.near_miss_path.as_deref(),
            true,
            r.manifest.near_bytes,
        )?,
        None => Sink::create(&cfg.alerts_path, &cfg.late_path)?.keeping(cfg.alert_keep.clone()).near_misses(
            cfg.near_miss_path.as_deref(),
            false,
            None,
        )?,
    }
    .publishing(cfg.live.control.clone());
    let fresh = if checkpointing.is_none() {
        [Some(&cfg.alerts_path), Some(&cfg.late_path), cfg.near_miss_path.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    } else {
        vec![]
    };
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
        let (tx, rx) = shard_to_sink();
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
        for (index, (slot, detector)) in shard_ckpts.iter_mut().zip(&detectors).enumerate() {
            let image = Arc::new(ImageSlot::default());
            image.put_initial(detector.image_with_capacity(cfg.window_capacity / 2, cfg.window_capacity));
            images.push(image.clone());
            *slot = Some(ShardCkpt {
                index,
                tx: tx.clone(),
                image,
                pending: None,
                slice: cfg.snapshot_slice.max(1),
                stall: latency_histogram(),
                stall_cpu: latency_histogram(),
                cut_cpu: latency_histogram(),
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
            reload_to: 0,
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
            let live = cfg.live.control.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tw-shard-{index}"))
                .spawn_scoped(scope, move || {
                    if let Some(core) = core {
                        pin_current(core);
                    }
                    run_shard(rx, alerts, detector, clock, &stop, ckpt, live)
                })
                .expect("spawn shard thread");
            shard_handles.push(handle);
        }
        let source_handle = {
            let core = cfg.cores.first().copied();
            let (stop, progress) = (stop.clone(), &progress);
            let (lateness_ns, reorder_capacity) = (cfg.lateness_ns, cfg.reorder_capacity);
            let idle_after_ns = cfg.live.idle_after_ns;
            let control = cfg.live.control.clone();
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
                    router.control = control;
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
        near_misses: sink.near_misses,
        evidence_dropped: 0,
        elapsed,
        ingest_to_alert: sink.ingest_to_alert,
        ingest_to_applied: sink.ingest_to_applied,
        shards: cfg.shards,
        pinned,
        backpressure_waits: source.backpressure_waits,
        grew: source.grew,
        max_reorder_len: source.max_reorder_len,
        checkpoints: None,
        book: None,
        episodes: [None; crate::detect::registry::RULE_COUNT],
        keys_refused: [0; crate::detect::registry::RULE_COUNT],
    };
    let source_stall_max = source.stall.as_ref().map_or(0, |(h, _)| h.max());
    let mut shard_stall_max = 0;
    let mut stall = source.stall;
    let (mut shard_stall, mut shard_stall_cpu) = (latency_histogram(), latency_histogram());
    let mut shard_cut_cpu = latency_histogram();
    let (mut shard_stall_preempted, mut shard_stall_max_unpreempted_ns) = (0, 0);
    for shard in shard_results {
        let shard = shard?;
        summary.applied += shard.applied;
        summary.grew += shard.grew;
        summary.evidence_dropped += shard.list_dropped;
        crate::detect::registry::add_episodes(&mut summary.episodes, &shard.episodes);
        for (total, n) in summary.keys_refused.iter_mut().zip(shard.keys_refused) {
            *total += n;
        }
        if let Some(book) = shard.book.as_ref() {
            summary.book.get_or_insert_with(|| BookSummary::new(cfg.instruments.loaded())).stats.add(book);
        }
        shard_stall_max = shard_stall_max.max(shard.stall.as_ref().map_or(0, |(h, _, _)| h.max()));
        shard_stall_preempted += shard.preempted.0;
        shard_stall_max_unpreempted_ns = shard_stall_max_unpreempted_ns.max(shard.preempted.1);
        if let (Some((wall, cpu)), Some((shard_wall, shard_cpu, shard_cut))) = (stall.as_mut(), shard.stall.as_ref()) {
            wall.add(shard_wall).map_err(|e| format!("stall histogram: {e}"))?;
            cpu.add(shard_cpu).map_err(|e| format!("stall histogram: {e}"))?;
            shard_stall.add(shard_wall).map_err(|e| format!("stall histogram: {e}"))?;
            shard_stall_cpu.add(shard_cpu).map_err(|e| format!("stall histogram: {e}"))?;
            shard_cut_cpu.add(shard_cut).map_err(|e| format!("stall histogram: {e}"))?;
        }
    }
    if let Some(book) = summary.book.as_mut() {
        book.missing = book.stats.missing_reference.iter().map(|&id| names.instruments.get_string(id)).collect();
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
            shard_cut_cpu,
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

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
