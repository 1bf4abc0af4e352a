//! The daemon (`tapewatch serve`): the pipeline behind a live TCP feed,
//! with exactly-once checkpoints and a clean stop on a signal.
//!
//! Threads: the pipeline's own (source, shards, sink, checkpoint writer,
//! unchanged from replay), and `tw-net`, one tokio runtime on one thread
//! holding everything asynchronous: the feed listener (`edge`), signals.
//! They meet only at the live ingest ring (records) and `LiveControl`
//! (checkpoint requests, shutdown; read by the source once per pump).
//!
//! Stop (SIGTERM, SIGINT): the edge stops reading and puts what it read
//! into the ring; the source drains it, cuts a final checkpoint and, once
//! it is durable, stops the pipeline without ending the feed (end-of-feed
//! timers do not fire: the day is not over). A restart with the same state
//! resumes from that checkpoint and greets the sender with the next seq.
//! A kill -9 loses only what came after the last checkpoint, which the
//! sender sends again.
//!
//! Rules reload (SIGHUP, `POST /reload`): the main thread reads the rules
//! file (`check_rules`); valid new rules make the source cut a barrier
//! marked as handing over to them (`Manifest::reload_to`) and stop, as a
//! stop does but without draining the ring; the feed hands the ring back
//! (`RingBack`) and the next run resumes from that checkpoint with the new
//! rules, on the same ring and connection. The state of each rule whose
//! parameters did not change carries over; a changed or new rule starts
//! empty. A restart resumes from the reload's checkpoint too: it reads
//! the new rules file.
//!
//! Trading days: one pipeline run per day. When a record or heartbeat
//! crosses the day's end (`day_boundary`, exchange clock), the edge drops
//! the ring's sending half, so the day's pipeline drains and ends as a
//! replay of the day's tape ends (every timer fires, every alert is out).
//! Then the day is closed: a marker in the state directory, the day's
//! files renamed to dated names, the day's checkpoints removed, the marker
//! removed (a restart finishes a close the marker shows was cut short).
//! The next day's pipeline starts with fresh state, the reference data
//! read again, and the records that crossed the boundary.

pub mod config;
pub mod edge;
pub mod notify;
pub mod publish;

use crate::checkpoint::codec::Reader;
use crate::checkpoint::recover;
use crate::checkpoint::store::Store;
use crate::checkpoint::{Identity, RouterState, Settings};
use crate::cmd::CmdError;
use crate::config::MS;
use crate::ingest::RejectLog;
use crate::ingest::live::{LiveFeed, RingBack, wire_channel};
use crate::ingest::validate::{Limits, TimeRules, Validator};
use crate::metrics::Clock;
use crate::symbols::Names;
use crate::topology::{self, Checkpointing, LiveControl, LiveOptions, PipelineConfig, Resumed};
use config::ServeConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::signal::unix::Signal;

/// Slots of the ring between the edge and the source (512 records each):
/// about 65 ms of a 2M records/s feed, so a checkpoint's stall or a
/// scheduling hiccup does not push back on the sender at once.
const FEED_RING_SLOTS: usize = 256;

pub fn run(mut cfg: ServeConfig) -> Result<(), CmdError> {
    let started = Instant::now();
    // Bind first: a port in use fails the start with nothing touched.
    let listener = std::net::TcpListener::bind(cfg.feed_listen)
        .map_err(|e| CmdError::Failed(format!("feed_listen {}: cannot listen: {e}", cfg.feed_listen)))?;
    listener.set_nonblocking(true).map_err(|e| CmdError::Failed(format!("feed listener: {e}")))?;
    let feed_addr = listener.local_addr().map_err(|e| CmdError::Failed(format!("feed listener: {e}")))?;
    if !feed_addr.ip().is_loopback() {
        tracing::warn!(%feed_addr, "the feed port listens beyond loopback: anyone who reaches it can send records");
    }
    let http_listener = std::net::TcpListener::bind(cfg.http_listen)
        .map_err(|e| CmdError::Failed(format!("http_listen {}: cannot listen: {e}", cfg.http_listen)))?;
    http_listener.set_nonblocking(true).map_err(|e| CmdError::Failed(format!("http listener: {e}")))?;
    let http_addr = http_listener.local_addr().map_err(|e| CmdError::Failed(format!("http listener: {e}")))?;
    if !http_addr.ip().is_loopback() {
        tracing::warn!(%http_addr, "the HTTP port listens beyond loopback");
    }
    let token = match &cfg.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CmdError::Failed(format!("{}: cannot read the token: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let (hub, hub_control) = crate::http::Hub::new(
        crate::http::BuildInfo::this_build(option_env!("TAPEWATCH_COMMIT").unwrap_or("unknown")),
        100_000,
    );
    std::fs::create_dir_all(&cfg.state)
        .map_err(|e| CmdError::Failed(format!("{}: cannot create the state directory: {e}", cfg.state.display())))?;
    finish_close(&cfg)?;

    let (tx, mut rx) = wire_channel(FEED_RING_SLOTS);
    let shared = Arc::new(edge::EdgeShared::new(tx, cfg.day_boundary_ns));
    let clock = Clock::new();
    let control = Arc::new(LiveControl::default());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reload_asked = Arc::new(AtomicU8::new(NO_RELOAD));
    let ring_back: RingBack = Arc::default();
    // The day's reference data, kept across a reload (read again each day).
    let mut day_reference: Option<Reference> = None;
    // The rules a reload is handing over to, once its barrier is asked for.
    let mut pending: Option<crate::config::Rules> = None;
    let mut reloads = 0u64;
    let mut reloaded = false;
    let mut net = None;
    let mut tailer = None;
    let mut hub_control = Some(hub_control);
    let mut checkpoints = crate::http::CheckpointStatus::default();
    let mut latency = publish::Latency::default();
    let mut first = true;
    let result = loop {
        let reference = match day_reference.take() {
            Some(r) => r,
            None => match Reference::load(&cfg) {
                Ok(r) => r,
                Err(e) => break Err(e),
            },
        };
        let (feed, names, checkpointing, pcfg) = match open_day(&cfg, &reference, rx, clock, &control) {
            Ok(day) => day,
            Err(e) => break Err(e),
        };
        let mut feed = feed.with_lines(shared.malformed_lines.clone());
        feed.return_ring_to(ring_back.clone());
        // The greeting's NEXT_SEQ from now on: this run's position (the
        // checkpoint's, then what the feed settles).
        feed.share_position(shared.position.clone());
        hub.set_rules(rules_status(&cfg.rules, reloads));
        if std::mem::take(&mut reloaded) {
            // The edge is ahead of the reload's checkpoint: the records
            // after it are in the ring, and the connection goes on.
            tracing::info!(
                checkpoint = control.completed.load(Ordering::Acquire),
                params = %params_hash(&cfg.rules),
                reloads,
                "rules reloaded: the new rules apply from the reload's checkpoint on"
            );
        }
        if feed.first_ts_ns() != i64::MIN {
            shared.set_day(feed.first_ts_ns());
        }
        if first {
            first = false;
            // The network thread: the edge and the signals.
            let options = edge::EdgeOptions { handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms) };
            let (net_shared, net_control, net_done) = (shared.clone(), control.clone(), done.clone());
            let (Ok(listener), Ok(http_listener)) = (listener.try_clone(), http_listener.try_clone()) else {
                break Err(CmdError::Failed("cannot hand the listeners to the network thread".into()));
            };
            let (handlers, handlers_installed) = std::sync::mpsc::sync_channel(1);
            let parts = Net {
                handlers,
                listener,
                http_listener,
                hub: hub.clone(),
                hub_control: hub_control.take(),
                token: token.clone(),
                sse_max: Duration::from_secs(cfg.sse_max_secs),
                clock,
                shared: net_shared,
                control: net_control,
                options,
                done: net_done,
                reload_asked: reload_asked.clone(),
            };
            let spawned = std::thread::Builder::new().name("tw-net".into()).spawn(move || net_thread(parts));
            let (tail_hub, tail_done, alerts, boundary) =
                (hub.clone(), done.clone(), cfg.alerts.clone(), cfg.day_boundary_ns);
            tailer = std::thread::Builder::new()
                .name("tw-alerts".into())
                .spawn(move || publish::tail_alerts(alerts, tail_hub, boundary, tail_done))
                .ok();
            match spawned {
                Ok(handle) => net = Some(handle),
                Err(e) => break Err(CmdError::Failed(format!("cannot start the network thread: {e}"))),
            }
            // A failed install is logged by the thread and leaves the
            // default actions; ready is said either way.
            let _ = handlers_installed.recv_timeout(Duration::from_secs(10));
            tracing::info!(
                feed = %feed_addr,
                http = %http_addr,
                state = %cfg.state.display(),
                alerts = %cfg.alerts.display(),
                shards = cfg.shards,
                next_seq = shared.position.next_seq(),
                startup_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            notify::ready();
        }
        hub.set_ready(true);
        let mut ticks = 0u64;
        let result = topology::run_with(feed, names, &pcfg, Some(checkpointing), |progress| {
            // Called every 200 ms: a sample a second.
            ticks += 1;
            if ticks.is_multiple_of(5) {
                publish::sample(&hub, &shared, progress, &control, &mut checkpoints, &mut latency);
            }
            // A reload asked for: the new rules file is checked here (off
            // the pipeline threads), and a valid one is handed to the
            // source, which cuts the reload's barrier at its next pump.
            if pending.is_none() {
                let by = reload_asked.swap(NO_RELOAD, Ordering::AcqRel);
                if by != NO_RELOAD
                    && let Some(rules) =
                        check_rules(&cfg, &reference, if by == BY_HTTP { "POST /reload" } else { "SIGHUP" })
                {
                    control.reload_to.store(reference.hash(&rules), Ordering::Release);
                    control.reload.store(true, Ordering::Release);
                    pending = Some(rules);
                }
            }
        });
        latency.end_run(&control);
        // A reload stopped the run: the next starts at once, and the feed
        // is taken all along (into the ring), so the daemon stays ready.
        let reloading = result.is_err()
            && control.stopped_clean.load(Ordering::Acquire)
            && control.reload.load(Ordering::Acquire)
            && !control.shutdown.load(Ordering::Acquire);
        if !reloading {
            hub.set_ready(false);
        }
        match result {
            Ok(summary) if shared.day_over.load(Ordering::Acquire) => {
                let end_ns = shared.day_end_ns.load(Ordering::Acquire);
                tracing::info!(
                    day = %edge::day_name(end_ns),
                    records = summary.feed.records_read,
                    alerts = summary.alerts_total(),
                    late = summary.late,
                    rejected = summary.feed.rejected,
                    gaps = summary.feed.gaps,
                    ingest_to_alert_p50_us = summary.ingest_to_alert.value_at_quantile(0.5) / 1000,
                    ingest_to_alert_p99_us = summary.ingest_to_alert.value_at_quantile(0.99) / 1000,
                    ingest_to_applied_p99_us = summary.ingest_to_applied.value_at_quantile(0.99) / 1000,
                    records_per_s = summary.events_per_sec() as u64,
                    "day ended"
                );
                if let Some(h) = latency.base.as_ref().filter(|h| !h.is_empty()) {
                    hub.publish_latency(h);
                }
                if let Err(e) = close_day(&cfg, end_ns) {
                    break Err(e);
                }
                if let Some(rules) = pending.take() {
                    // The day ended before the reload's barrier was cut (or
                    // with it): the next day starts afresh with the new rules.
                    control.reload.store(false, Ordering::Release);
                    cfg.rules = rules;
                    reloads += 1;
                    tracing::info!(params = %params_hash(&cfg.rules), "rules reloaded: the next day starts with them");
                }
                let (tx, next_rx) = wire_channel(FEED_RING_SLOTS);
                rx = next_rx;
                control.completed.store(0, Ordering::Release);
                shared.position.next_seq.store(0, Ordering::Release);
                shared.new_day(tx);
            }
            Ok(summary) => {
                // The edge keeps the ring open but at a day's end: the feed
                // ended otherwise only if the edge failed.
                tracing::error!(records = summary.feed.records_read, "the feed ended unexpectedly");
                break Err(CmdError::Failed("the network edge stopped".into()));
            }
            Err(_) if reloading => {
                // The reload's checkpoint is durable: the next run resumes
                // from it with the new rules, on the same ring (the records
                // after the barrier are still in it) and the same day.
                let Some(rules) = pending.take() else {
                    break Err(CmdError::Failed("a reload stopped the pipeline without new rules".into()));
                };
                let Some(next_rx) = ring_back.lock().ok().and_then(|mut slot| slot.take()) else {
                    break Err(CmdError::Failed("the feed ring was not handed back after the reload".into()));
                };
                rx = next_rx;
                for line in view_changes(&cfg.rules, &rules) {
                    tracing::info!(checkpoint = control.completed.load(Ordering::Acquire), "reload: {line}");
                }
                cfg.rules = rules;
                reloads += 1;
                reloaded = true;
                day_reference = Some(reference);
                control.reload.store(false, Ordering::Release);
                control.stopped_clean.store(false, Ordering::Release);
            }
            Err(_) if control.stopped_clean.load(Ordering::Acquire) => {
                tracing::info!(
                    checkpoint = control.completed.load(Ordering::Acquire),
                    "stopped after a final checkpoint"
                );
                break Ok(());
            }
            Err(e) => break Err(CmdError::Failed(e)),
        }
    };
    // Whatever ended the pipeline, the network thread ends too.
    control.shutdown.store(true, Ordering::Release);
    done.store(true, Ordering::Release);
    if let Some(net) = net {
        let _ = net.join();
    }
    if let Some(tailer) = tailer {
        let _ = tailer.join();
    }
    result
}

type Day = (LiveFeed, Names, Checkpointing, PipelineConfig);

/// A day's reference data: read at the day's start, kept across a reload
/// (a reload changes the rules only), part of the checkpoint identity.
struct Reference {
    groups: Arc<crate::symbols::Groups>,
    instruments: Arc<crate::instruments::Instruments>,
    accounts_text: Vec<u8>,
}

impl Reference {
    fn load(cfg: &ServeConfig) -> Result<Reference, CmdError> {
        let load = |what: &str, e: String| CmdError::Failed(format!("{what}: {e}"));
        let groups = match &cfg.accounts {
            Some(path) => crate::symbols::Groups::load(path).map_err(|e| load("accounts", e))?,
            None => Default::default(),
        };
        let instruments = match &cfg.instruments_path {
            Some(path) => crate::instruments::Instruments::load(path).map_err(|e| load("instruments", e))?,
            None => Default::default(),
        };
        let accounts_text = match &cfg.accounts {
            Some(path) => {
                std::fs::read(path).map_err(|e| CmdError::Failed(format!("{}: cannot read: {e}", path.display())))?
            }
            None => Vec::new(),
        };
        Ok(Reference { groups: Arc::new(groups), instruments: Arc::new(instruments), accounts_text })
    }

    /// `Identity::rules_hash` of `rules` with this reference data.
    fn hash(&self, rules: &crate::config::Rules) -> u64 {
        let instruments_hash = self.instruments.hash().to_le_bytes();
        let instruments_bytes: &[u8] = if self.instruments.loaded() { &instruments_hash } else { &[] };
        Identity::reference_hash(rules, &self.accounts_text, instruments_bytes)
    }
}

/// Sets up one day's pipeline: reads the reference data (again, each day),
/// opens the state and resumes from its newest checkpoint, if any.
fn open_day(
    cfg: &ServeConfig,
    reference: &Reference,
    rx: crate::ring::spsc::Consumer<Vec<crate::ingest::live::WireRecord>>,
    clock: Clock,
    control: &Arc<LiveControl>,
) -> Result<Day, CmdError> {
    let lateness_ns = cfg.lateness_ms as i64 * MS;
    // The rules and the reference data shape the state; the feed has no
    // tape to hash (`Identity::for_live`).
    let identity = Identity::for_live(lateness_ns, reference.hash(&cfg.rules));

    let store = Store::open(&cfg.state).map_err(CmdError::Failed)?;
    let loaded = recover::newest(&store, &identity, &mut |line| tracing::warn!("{line}")).map_err(CmdError::Failed)?;
    if let Some(l) = &loaded {
        let m = &l.manifest;
        let outputs = [
            ("alerts", cfg.alerts.as_path(), m.alerts_bytes),
            ("late", cfg.late.as_path(), m.late_bytes),
            ("rejects", cfg.rejects.as_path(), m.rejects_bytes),
        ];
        let problems = crate::outputs::check_resumable(&outputs);
        if !problems.is_empty() {
            return Err(CmdError::Failed(problems.join("\n")));
        }
    }
    // The daemon's days are cut by `day_boundary`, not by the validator's
    // calendar day (a boundary other than midnight spans two).
    let limits = Limits {
        time: TimeRules { max_future_ns: cfg.max_future_ms as i64 * MS, one_day: false },
        ..Limits::default()
    };
    let groups = reference.groups.clone();
    let bad = |id: u64, e: crate::checkpoint::codec::DecodeError| {
        CmdError::Failed(format!("checkpoint {id} in {}: bad source snapshot: {e}", cfg.state.display()))
    };
    let (feed, resume) = match loaded {
        None => {
            let rejects = RejectLog::create(&cfg.rejects).map_err(|e| CmdError::Failed(e.to_string()))?;
            (LiveFeed::new(rx, Validator::new(limits, groups.clone()), rejects), None)
        }
        Some(l) => {
            let id = l.manifest.id;
            let rejects = RejectLog::resume(&cfg.rejects, l.manifest.rejects_bytes)
                .map_err(|e| CmdError::Failed(e.to_string()))?;
            let mut r = Reader::new(&l.source);
            let feed = LiveFeed::resume(rx, limits, groups.clone(), &mut r, (&l.accounts, &l.instruments), rejects)
                .map_err(|e| bad(id, e))?;
            let router = RouterState::decode(&mut r).and_then(|s| r.finish().map(|()| s)).map_err(|e| bad(id, e))?;
            // A reload's checkpoint resumed under the rules it hands over
            // to (in this process, or by a restart after it): the state of
            // each rule with the same parameters carries over, the rest
            // starts empty.
            let carry = (l.manifest.identity.rules_hash != identity.rules_hash).then(|| {
                let (carry, lines) = l.manifest.carry(&cfg.rules.versions_by_id());
                tracing::info!(
                    checkpoint = id,
                    next_seq = feed.next_seq(),
                    alerts = l.manifest.alerts.iter().map(|(_, n)| n).sum::<u64>(),
                    params = %params_hash(&cfg.rules),
                    "the rules of checkpoint {id} are reloaded: {}",
                    cfg.rules_path.as_deref().map_or("(defaults)".into(), |p| p.display().to_string())
                );
                for line in lines {
                    tracing::info!(checkpoint = id, "reload: {line}");
                }
                carry
            });
            tracing::info!(
                checkpoint = id,
                next_seq = feed.next_seq(),
                records = l.manifest.records_read,
                "resuming from checkpoint {id} in {}",
                cfg.state.display()
            );
            (feed, Some(Resumed { manifest: l.manifest, router, shards: l.shards, carry }))
        }
    };
    let names = crate::cmd::validator_names(feed.validator(), groups);
    let mut pcfg = PipelineConfig::new(cfg.shards, cfg.alerts.clone(), cfg.late.clone());
    pcfg.cores = cfg.cores.clone();
    pcfg.rules = cfg.rules.clone();
    pcfg.lateness_ns = lateness_ns;
    pcfg.instruments = reference.instruments.clone();
    pcfg.live = LiveOptions {
        idle_after_ns: (cfg.idle_after_ms > 0).then(|| cfg.idle_after_ms * 1_000_000),
        clock: Some(clock),
        control: Some(control.clone()),
    };
    let checkpointing = Checkpointing {
        store,
        settings: Settings {
            dir: cfg.state.clone(),
            every_records: cfg.checkpoint_every_records,
            interval_ns: cfg.checkpoint_interval_ms * 1_000_000,
            keep: cfg.checkpoint_keep,
            abort_after: None,
            exact: false,
            identity,
            rules: cfg.rules.versions_by_id(),
            tape: None,
        },
        resume,
    };
    Ok((feed, names, checkpointing, pcfg))
}

/// The marker of a day being closed: the day's end (exchange ns).
const CLOSING: &str = "DAY_CLOSING";

/// Closes a finished day: marker first (synced), then the files renamed
/// to dated names and the day's checkpoints removed, then the marker.
fn close_day(cfg: &ServeConfig, end_ns: i64) -> Result<(), CmdError> {
    let marker = cfg.state.join(CLOSING);
    let fail = |what: &str, e: std::io::Error| CmdError::Failed(format!("{}: cannot {what}: {e}", marker.display()));
    let mut file = std::fs::File::create(&marker).map_err(|e| fail("create", e))?;
    std::io::Write::write_all(&mut file, format!("{end_ns}\n").as_bytes()).map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("sync", e))?;
    finish_close(cfg)
}

/// Finishes a close the marker names (a crash may have cut it short): the
/// renames and removals are each done once, whichever were done before.
fn finish_close(cfg: &ServeConfig) -> Result<(), CmdError> {
    let marker = cfg.state.join(CLOSING);
    let Ok(text) = std::fs::read_to_string(&marker) else { return Ok(()) };
    let Ok(end_ns) = text.trim().parse::<i64>() else {
        return Err(CmdError::Failed(format!("{}: not a day's end: `{}`", marker.display(), text.trim())));
    };
    let day = edge::day_name(end_ns);
    for path in [&cfg.alerts, &cfg.late, &cfg.rejects] {
        if !path.exists() {
            continue;
        }
        let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let dated = crate::cmd::beside(path, &format!(".{day}{ext}"));
        std::fs::rename(path, &dated)
            .map_err(|e| CmdError::Failed(format!("cannot rename {} to {}: {e}", path.display(), dated.display())))?;
        tracing::info!(file = %dated.display(), "closed the day's file");
    }
    let entries = std::fs::read_dir(&cfg.state)
        .map_err(|e| CmdError::Failed(format!("{}: cannot list: {e}", cfg.state.display())))?;
    for entry in entries.flatten() {
        if entry.file_name() == CLOSING {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| CmdError::Failed(format!("{}: cannot remove: {e}", path.display())))?;
    }
    std::fs::remove_file(&marker).map_err(|e| CmdError::Failed(format!("{}: cannot remove: {e}", marker.display())))?;
    tracing::info!(day = %day, "day closed: its checkpoints removed; the next day starts fresh");
    Ok(())
}

/// What the network thread runs.
struct Net {
    listener: std::net::TcpListener,
    http_listener: std::net::TcpListener,
    hub: Arc<crate::http::Hub>,
    hub_control: Option<tokio::sync::mpsc::UnboundedReceiver<crate::http::Control>>,
    token: Option<String>,
    /// How long one SSE stream lasts (`sse_max_secs`).
    sse_max: Duration,
    clock: Clock,
    shared: Arc<edge::EdgeShared>,
    control: Arc<LiveControl>,
    options: edge::EdgeOptions,
    done: Arc<std::sync::atomic::AtomicBool>,
    /// Who asked for a reload not yet looked at (`NO_RELOAD`: nobody).
    reload_asked: Arc<AtomicU8>,
    /// Told once the signal handlers are in place: the daemon says it is
    /// ready only then, or a SIGHUP right after "ready" would kill it.
    handlers: std::sync::mpsc::SyncSender<()>,
}

/// `reload_asked`: nobody, SIGHUP, `POST /reload`.
const NO_RELOAD: u8 = 0;
const BY_SIGHUP: u8 = 1;
const BY_HTTP: u8 = 2;

/// The parameter hash of a rule set: xxh3 of its canonical encoding.
fn params_hash(rules: &crate::config::Rules) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&rules.canonical()))
}

/// The shared views (`detect::views`) a reload starts or drops: a view is
/// kept while an enabled rule reads it, and one the old rules did not
/// read has no state in the reload's checkpoint, so it starts empty and
/// the rules reading it see only what comes after the barrier.
fn view_changes(old: &crate::config::Rules, new: &crate::config::Rules) -> Vec<String> {
    use crate::detect::rule::Reads;
    let (before, after) = (old.reads(), new.reads());
    let mut lines = Vec::new();
    for (view, reads) in [("last-trade", Reads::LAST_TRADE), ("book", Reads::BOOK), ("spoof-stream", Reads::SPOOF)] {
        match (before.has(reads), after.has(reads)) {
            (false, true) => lines
                .push(format!("view {view}: read by the new rules and by none before: it starts empty at the barrier")),
            (true, false) => lines.push(format!("view {view}: read by none of the new rules: dropped")),
            _ => {}
        }
    }
    lines
}

fn rules_status(rules: &crate::config::Rules, reloads: u64) -> crate::http::hub::RulesStatus {
    crate::http::hub::RulesStatus {
        params: params_hash(rules),
        rules: rules.versions().into_iter().map(|(name, v)| (name, format!("{v:08x}"))).collect(),
        reloads,
    }
}

/// A reload request: the rules file is read and validated (its tiers
/// against the day's instruments.csv). An invalid one is refused with its
/// problems and the running rules stay; so do the same rules. New valid
/// rules are returned, to take effect at a barrier.
fn check_rules(cfg: &ServeConfig, reference: &Reference, by: &str) -> Option<crate::config::Rules> {
    let Some(path) = cfg.rules_path.as_deref() else {
        tracing::warn!("{by}: no rules file is configured (the defaults run); nothing to reload");
        return None;
    };
    let rules = match crate::config::Rules::load(path) {
        Ok(rules) => rules,
        Err(problems) => {
            tracing::error!("{by}: refused, the old rules stay: {}", problems.replace('\n', "; "));
            return None;
        }
    };
    let tiers = rules.check_tiers(&reference.instruments);
    if !tiers.is_empty() {
        tracing::error!("{by}: refused, the old rules stay: {}: {}", path.display(), tiers.join("; "));
        return None;
    }
    if rules == cfg.rules {
        tracing::info!(params = %params_hash(&rules), "{by}: {} holds the rules in effect; nothing to reload", path.display());
        return None;
    }
    tracing::info!(
        params = %params_hash(&rules),
        "{by}: {} is valid: the new rules take effect at a checkpoint barrier cut now",
        path.display()
    );
    Some(rules)
}

/// The tokio runtime: runs the edge and the HTTP server until a stop
/// signal (or the pipeline's end), then tells the source to take its final
/// checkpoint, and lives on until the pipeline has stopped.
fn net_thread(net: Net) {
    let Net {
        listener,
        http_listener,
        hub,
        hub_control,
        token,
        sse_max,
        clock,
        shared,
        control,
        options,
        done,
        reload_asked,
        handlers,
    } = net;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the network runtime: {e}");
            control.shutdown.store(true, Ordering::Release);
            return;
        }
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let installed =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
        let _ = handlers.send(());
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("feed listener: {e}");
                control.shutdown.store(true, Ordering::Release);
                return;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let edge = tokio::spawn(edge::run(listener, clock, shared, options, stop_rx.clone()));
        match tokio::net::TcpListener::from_std(http_listener) {
            Ok(http_listener) => {
                let opts =
                    crate::http::HttpOptions { token, max_stream: sse_max, ..crate::http::HttpOptions::default() };
                let (hub, stop_rx) = (hub.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    if let Err(e) = crate::http::serve_http(http_listener, hub, opts, stop_rx).await {
                        tracing::error!("http: {e}");
                    }
                });
            }
            Err(e) => tracing::error!("http listener: {e}"),
        }
        if let Some(mut requests) = hub_control {
            let (control, reload_asked) = (control.clone(), reload_asked.clone());
            tokio::spawn(async move {
                while let Some(request) = requests.recv().await {
                    match request {
                        crate::http::Control::Checkpoint => {
                            tracing::info!("POST /checkpoint: a checkpoint at the next pump");
                            control.checkpoint_now.store(true, Ordering::Release);
                        }
                        crate::http::Control::Reload => {
                            tracing::info!("POST /reload: the rules file is read at the next tick");
                            reload_asked.store(BY_HTTP, Ordering::Release);
                        }
                    }
                }
            });
        }
        signals(installed, &control, &reload_asked).await;
        notify::stopping();
        let _ = stop_tx.send(true);
        let _ = edge.await;
        tracing::info!("feed closed; final checkpoint");
        control.shutdown.store(true, Ordering::Release);
        while !done.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

/// Waits for SIGTERM or SIGINT (or the pipeline stopping on its own).
/// SIGHUP asks for a reload: the daemon's main thread reads the rules
/// file within 200 ms (`check_rules`) and, if it is valid and new, the
/// source cuts the reload's barrier.
async fn signals(
    installed: (std::io::Result<Signal>, std::io::Result<Signal>, std::io::Result<Signal>),
    control: &LiveControl,
    reload_asked: &AtomicU8,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = installed else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: the rules file is read at the next tick");
                reload_asked.store(BY_SIGHUP, Ordering::Release);
            }
            _ = tick.tick() => {
                if control.shutdown.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }
}
