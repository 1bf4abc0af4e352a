//! The `Hub`: what the daemon knows about itself, shared with the HTTP
//! edge. The daemon writes it at most once per batch, per second or per
//! alert (never per record); the HTTP handlers read it. Everything is an
//! atomic or a mutex held for a copy, so a slow reader never stalls a writer
//! for longer than that copy.
//!
//! Limits (every table input can grow): the alert log keeps the newest
//! `alert_capacity` alerts; the per-day tallies of alerts by group and by
//! instrument keep `TALLY_LIMIT` names each (more are counted under
//! `tally_overflow`); rule names outside the registry (`feed-gap`) are kept
//! up to `EXTRA_RULE_LIMIT`; the rate history keeps `HISTORY_LEN` samples.

use crate::detect::registry::{Counts, RULE_COUNT, RULES};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc};

/// Record kinds, in the order of every by-kind array here.
pub const KINDS: [&str; 3] = ["new", "cancel", "trade"];
/// The kinds of rejected records: `KINDS`, and lines whose kind could not be read.
pub const REJECTED_KINDS: [&str; 4] = ["new", "cancel", "trade", "unreadable"];
/// Names kept per day in each of the by-group and by-instrument tallies.
pub const TALLY_LIMIT: usize = 10_000;
/// Rule names outside the registry (the daemon's own, such as `feed-gap`).
pub const EXTRA_RULE_LIMIT: usize = 16;
/// Samples of the counters kept for the dashboard's charts (one per
/// `publish_counts`, about one a second: ten minutes).
pub const HISTORY_LEN: usize = 600;
/// Alerts a slow SSE client may fall behind the live broadcast before it
/// is served from the log instead.
const BROADCAST_CAPACITY: usize = 1024;
/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The build a daemon runs, for `tapewatch_build_info` and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: String,
}

impl BuildInfo {
    /// This crate's version; `commit` as the build or the daemon knows it.
    pub fn this_build(commit: impl Into<String>) -> BuildInfo {
        BuildInfo { version: env!("CARGO_PKG_VERSION"), commit: commit.into() }
    }
}

/// What `POST /checkpoint` and `POST /reload` ask of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Take a checkpoint now.
    Checkpoint,
    /// Reload the rules file (as SIGHUP does).
    Reload,
}

/// One committed alert. `id` is the daemon's stable alert number (it
/// survives restarts and increases); `json` is the alert line as written to
/// the alerts file, without its newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAlert {
    pub id: u64,
    pub json: Arc<str>,
}

/// The feed connection, as the daemon's feed listener sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedStatus {
    pub connected: bool,
    /// The connected sender's address.
    pub peer: Option<String>,
    /// `csv` or `binary` once the connection said which.
    pub format: Option<String>,
    /// The next `seq` the daemon needs (what the handshake tells a sender).
    pub next_seq: u64,
    /// Connections accepted, and refused (a second feed while one is open).
    pub connections: u64,
    pub refused: u64,
    /// Frames or lines that could not be read (the connection's outcome).
    pub bad_frames: u64,
    /// Seq gaps, the records missing in them, and repeated seqs.
    pub gaps: u64,
    pub missing_records: u64,
    pub repeats: u64,
}

/// Occupancy of one ring of the pipeline, in slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingOccupancy {
    pub name: String,
    pub used: u64,
    pub capacity: u64,
}

/// The pipeline's counters, cumulative since the daemon started (a
/// restart starts them again, as Prometheus counters may).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounts {
    /// Records read, by kind (`KINDS` order); a record whose kind could not
    /// be read is in `rejected` only.
    pub records_in: [u64; 3],
    /// Records the shards applied, and late records set aside, by kind.
    pub applied: [u64; 3],
    pub late: [u64; 3],
    /// Rejected records by reason (a short label such as `malformed` or
    /// `lifecycle`), each reason once.
    pub rejected: Vec<(String, u64)>,
    /// Rejected records by kind (`REJECTED_KINDS` order: `KINDS`, then
    /// lines too broken to tell their kind).
    pub rejected_by_kind: [u64; 4],
    /// Records lost inside the daemon (a full live ring with a drop policy).
    pub dropped: u64,
    pub rings: Vec<RingOccupancy>,
    /// Distinct accounts seen in the current trading day.
    pub active_accounts: u64,
    /// The current trading day by the exchange clock (`YYYY-MM-DD`), empty
    /// before the first record.
    pub trading_day: String,
    /// Alert episodes opened, and crossings suppressed by a cooldown, by
    /// rule in registry order (`EpisodeCounts`).
    pub episodes: Counts,
    pub suppressed: Counts,
}

impl PipelineCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

/// The checkpoints the daemon took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStatus {
    /// When the last one became durable (unix ms); `None` before the first.
    pub last_unix_ms: Option<u64>,
    pub last_id: u64,
    /// From the barrier to the manifest being durable, and the bytes
    /// written, of the last one.
    pub last_duration_ns: u64,
    pub last_bytes: u64,
    /// Taken and failed since the daemon started.
    pub taken: u64,
    pub failures: u64,
}

/// The ingest-to-alert latency as last published: Prometheus buckets and
/// the quantiles the dashboard shows.
#[derive(Clone, Debug, Default, PartialEq)]
struct LatencySnapshot {
    /// Cumulative counts at or below each of `LATENCY_BUCKETS_S`.
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

/// One sample of the counters, for the dashboard's charts.
#[derive(Clone, Debug)]
struct Sample {
    unix_ms: u64,
    records_in: [u64; 3],
    alerts: Counts,
    alerts_extra: u64,
}

/// Counts per name, reset when the trading day changes, at most
/// `TALLY_LIMIT` names.
#[derive(Debug, Default)]
struct Tally {
    counts: HashMap<Arc<str>, u64>,
    overflow: u64,
}

impl Tally {
    fn add(&mut self, name: &str) -> bool {
        if let Some(n) = self.counts.get_mut(name) {
            *n += 1;
            return true;
        }
        if self.counts.len() >= TALLY_LIMIT {
            self.overflow += 1;
            return false;
        }
        self.counts.insert(Arc::from(name), 1);
        true
    }

    /// The `n` names with the most alerts (ties by name), in one pass with
    /// no allocation beyond the result: it runs under the alerts lock.
    fn top(&self, n: usize) -> Vec<(Arc<str>, u64)> {
        let mut best: Vec<(&Arc<str>, u64)> = Vec::with_capacity(n + 1);
        let before = |a: &(&Arc<str>, u64), b: &(&Arc<str>, u64)| a.1 > b.1 || (a.1 == b.1 && a.0 < b.0);
        for (name, &count) in &self.counts {
            let entry = (name, count);
            if best.len() == n && !best.last().is_some_and(|last| before(&entry, last)) {
                continue;
            }
            let at = best.partition_point(|e| before(e, &entry));
            best.insert(at, entry);
            best.truncate(n);
        }
        best.into_iter().map(|(name, count)| (name.clone(), count)).collect()
    }
}

/// The rule name of the daemon's feed-integrity alerts (gaps, repeats).
pub const FEED_GAP_RULE: &str = "feed-gap";

/// The alert log and what is counted from the alerts.
#[derive(Debug)]
struct Alerts {
    log: VecDeque<Arc<StoredAlert>>,
    capacity: usize,
    last_id: Option<u64>,
    /// The highest id that fell off the log: a reader behind it lost alerts.
    evicted_max_id: Option<u64>,
    total: u64,
    by_rule: Counts,
    extra_rules: Vec<(String, u64)>,
    /// Alerts whose rule name is neither registered nor kept in `extra_rules`.
    unknown_rule: u64,
    /// Alerts published with an id not above the last (ignored).
    out_of_order: u64,
    /// Alerts whose JSON lacked a field counted here (counted, still kept).
    malformed: u64,
    /// The day the tallies are for (the alerts' exchange date).
    day: String,
    by_group: Tally,
    by_instrument: Tally,
}

/// What the hub counts about the HTTP edge itself.
#[derive(Debug, Default)]
pub(crate) struct EdgeCounters {
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub sse_clients: AtomicU64,
    pub sse_refused: AtomicU64,
    pub sse_lost: AtomicU64,
    pub sse_lagged: AtomicU64,
    pub connections_refused: AtomicU64,
}

/// Shared between the daemon (writers: at most once per batch, per second or
/// per alert, never per record) and the HTTP server (readers). All fields
/// are atomics or short-held mutexes.
pub struct Hub {
    build: BuildInfo,
    started_unix_ms: u64,
    ready: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
    feed: Mutex<FeedStatus>,
    counts: Mutex<PipelineCounts>,
    history: Mutex<VecDeque<Sample>>,
    latency: Mutex<LatencySnapshot>,
    checkpoint: Mutex<CheckpointStatus>,
    alerts: Mutex<Alerts>,
    live: broadcast::Sender<Arc<StoredAlert>>,
    pub(crate) edge: EdgeCounters,
    rules: Mutex<RulesStatus>,
}

/// The rules in effect (set by the daemon at each run's start: the first,
/// and after each reload).
#[derive(Clone, Debug, Default)]
pub struct RulesStatus {
    /// xxh3 of the enabled rules' canonical encoding, 16 hex digits.
    pub params: String,
    /// Each enabled rule's parameter version (8 hex digits, as its alerts'
    /// `params` carry it).
    pub rules: Vec<(&'static str, String)>,
    /// Reloads that took effect since the daemon started.
    pub reloads: u64,
}

/// A poisoned lock only means a writer panicked mid-copy of plain data:
/// the value is still the last one written, so keep serving it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// A hub keeping the newest `alert_capacity` alerts (at least 1), and
    /// the receiver of the control requests the HTTP edge makes.
    pub fn new(build: BuildInfo, alert_capacity: usize) -> (Arc<Hub>, mpsc::UnboundedReceiver<Control>) {
        let (control, requests) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        let capacity = alert_capacity.max(1);
        let hub = Hub {
            build,
            started_unix_ms: now_unix_ms(),
            ready: AtomicBool::new(false),
            control,
            feed: Mutex::new(FeedStatus::default()),
            counts: Mutex::new(PipelineCounts::default()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
            latency: Mutex::new(LatencySnapshot::default()),
            checkpoint: Mutex::new(CheckpointStatus::default()),
            alerts: Mutex::new(Alerts {
                log: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                last_id: None,
                evicted_max_id: None,
                total: 0,
                by_rule: [0; RULE_COUNT],
                // The daemon's own rule (a live feed's gaps and repeats,
                // `ingest::live::Integrity`), shown at 0 before any.
                extra_rules: vec![(FEED_GAP_RULE.to_string(), 0)],
                unknown_rule: 0,
                out_of_order: 0,
                malformed: 0,
                day: String::new(),
                by_group: Tally::default(),
                by_instrument: Tally::default(),
            }),
            live,
            edge: EdgeCounters::default(),
            rules: Mutex::new(RulesStatus::default()),
        };
        (Arc::new(hub), requests)
    }

    pub fn build(&self) -> &BuildInfo {
        &self.build
    }

    /// Ready: recovered and accepting the feed (`GET /ready` answers 200).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_rules(&self, rules: RulesStatus) {
        *lock(&self.rules) = rules;
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_feed(&self, status: FeedStatus) {
        *lock(&self.feed) = status;
    }

    /// The pipeline's counters (about once a second); each call is also a
    /// sample of the dashboard's rate charts.
    pub fn publish_counts(&self, c: &PipelineCounts) {
        self.publish_counts_at(now_unix_ms(), c);
    }

    /// `publish_counts` with the sample's time given (a daemon replaying
    /// its history, or a test).
    pub fn publish_counts_at(&self, unix_ms: u64, c: &PipelineCounts) {
        *lock(&self.counts) = c.clone();
        let (alerts, alerts_extra) = {
            let a = lock(&self.alerts);
            (a.by_rule, a.extra_rules.iter().map(|(_, n)| n).sum::<u64>() + a.unknown_rule)
        };
        let mut history = lock(&self.history);
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(Sample { unix_ms, records_in: c.records_in, alerts, alerts_extra });
    }

    /// The ingest-to-alert latency histogram (ns), cumulative since the
    /// daemon started; the daemon calls it about once a second.
    pub fn publish_latency(&self, h: &hdrhistogram::Histogram<u64>) {
        let mut snap = LatencySnapshot { count: h.len(), ..LatencySnapshot::default() };
        let mut sum_ns = 0f64;
        for v in h.iter_recorded() {
            let value_ns = v.value_iterated_to();
            let n = v.count_at_value();
            sum_ns += value_ns as f64 * n as f64;
            let value_s = value_ns as f64 / 1e9;
            for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(snap.buckets.iter_mut()) {
                if value_s <= *bound {
                    *bucket += n;
                }
            }
        }
        snap.sum_s = sum_ns / 1e9;
        if !h.is_empty() {
            snap.p50_ns = h.value_at_quantile(0.5);
            snap.p99_ns = h.value_at_quantile(0.99);
            snap.p999_ns = h.value_at_quantile(0.999);
            snap.max_ns = h.max();
        }
        *lock(&self.latency) = snap;
    }

    pub fn publish_checkpoint(&self, c: &CheckpointStatus) {
        *lock(&self.checkpoint) = c.clone();
    }

    /// Each committed alert once, in id order (an id not above the last is
    /// counted and ignored). Counts it by rule, and for its day by group and
    /// instrument, then hands it to the live SSE clients.
    pub fn publish_alert(&self, alert: StoredAlert) {
        // Parsed before taking the lock, so readers never wait on it.
        let fields = AlertFields::parse(&alert.json);
        let alert = Arc::new(alert);
        {
            let mut a = lock(&self.alerts);
            if a.last_id.is_some_and(|last| alert.id <= last) {
                a.out_of_order += 1;
                return;
            }
            a.last_id = Some(alert.id);
            a.total += 1;
            a.count(fields);
            if a.log.len() == a.capacity
                && let Some(old) = a.log.pop_front()
            {
                a.evicted_max_id = Some(old.id);
            }
            a.log.push_back(alert.clone());
            // Sent under the lock so the order on the broadcast is the
            // log's order; no receiver blocks a send.
            let _ = self.live.send(alert);
        }
    }

    /// What a reader that has seen every alert up to `id` gets next, read
    /// under one lock: the range that fell off the log, `(id, lost]`, if
    /// any, then up to `limit` alerts after it, oldest first (the log keeps
    /// the newest `alert_capacity`). One read, because the log may evict
    /// between two: a reader told nothing was lost must get the next alert.
    pub fn page_after(&self, id: u64, limit: usize) -> (Option<u64>, Vec<Arc<StoredAlert>>) {
        let a = lock(&self.alerts);
        let lost = a.evicted_max_id.filter(|&evicted| evicted > id);
        let from = lost.unwrap_or(id);
        let start = a.log.partition_point(|s| s.id <= from);
        (lost, a.log.range(start..).take(limit).cloned().collect())
    }

    /// The id of the newest alert, if any.
    pub fn last_alert_id(&self) -> Option<u64> {
        lock(&self.alerts).last_id
    }

    /// Alerts published from now on, in id order. A receiver that falls
    /// `BROADCAST_CAPACITY` behind gets `Lagged` and reads the log instead.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredAlert>> {
        // Under the alerts lock, so a reader that subscribes and then reads
        // the log sees every alert in one or the other.
        let _a = lock(&self.alerts);
        self.live.subscribe()
    }

    /// Subscribes and reads the log from `id` in one step: every alert
    /// after `id` is in the returned backlog or will come on the receiver
    /// (possibly both; a reader skips ids it has sent).
    pub fn subscribe_from(
        &self,
        id: u64,
        limit: usize,
    ) -> (broadcast::Receiver<Arc<StoredAlert>>, Vec<Arc<StoredAlert>>, Option<u64>) {
        let a = lock(&self.alerts);
        let rx = self.live.subscribe();
        let start = a.log.partition_point(|s| s.id <= id);
        let backlog = a.log.range(start..).take(limit).cloned().collect();
        let lost = a.evicted_max_id.filter(|&evicted| evicted > id);
        (rx, backlog, lost)
    }

    /// Hands a control request to the daemon; `Err` says why it cannot.
    pub fn request(&self, c: Control) -> Result<(), String> {
        self.control.send(c).map_err(|_| "the daemon is not taking control requests (shutting down)".to_string())
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn metrics_text(&self) -> String {
        let counts = lock(&self.counts).clone();
        let feed = lock(&self.feed).clone();
        let latency = lock(&self.latency).clone();
        let checkpoint = lock(&self.checkpoint).clone();
        let now_ms = now_unix_ms();
        let mut m = Exposition::default();

        m.family("tapewatch_build_info", "gauge", "The running build (always 1).");
        m.sample("tapewatch_build_info", &[("version", self.build.version), ("commit", &self.build.commit)], 1.0);
        let rules = lock(&self.rules).clone();
        m.family("tapewatch_rules_info", "gauge", "The rules in effect: the hash of their parameters (always 1).");
        m.sample("tapewatch_rules_info", &[("params", &rules.params)], 1.0);
        m.family(
            "tapewatch_rule_params_info",
            "gauge",
            "Each enabled rule's parameter version, as its alerts' `params` carry it (always 1).",
        );
        for (rule, version) in &rules.rules {
            m.sample("tapewatch_rule_params_info", &[("rule", rule), ("params", version)], 1.0);
        }
        m.family("tapewatch_rules_reloads_total", "counter", "Rules reloads that took effect since the start.");
        m.sample("tapewatch_rules_reloads_total", &[], rules.reloads as f64);
        m.family("tapewatch_start_time_seconds", "gauge", "When the daemon started (unix seconds).");
        m.sample("tapewatch_start_time_seconds", &[], self.started_unix_ms as f64 / 1e3);
        m.family("tapewatch_ready", "gauge", "1 once recovered and accepting the feed.");
        m.sample("tapewatch_ready", &[], if self.is_ready() { 1.0 } else { 0.0 });

        for (name, help, values) in [
            ("tapewatch_records_in_total", "Records read from the feed, by kind.", &counts.records_in),
            ("tapewatch_records_applied_total", "Records applied by the shards, by kind.", &counts.applied),
            ("tapewatch_records_late_total", "Records behind the watermark, set aside, by kind.", &counts.late),
        ] {
            m.family(name, "counter", help);
            for (kind, v) in KINDS.iter().zip(values) {
                m.sample(name, &[("kind", kind)], *v as f64);
            }
        }
        m.family(
            "tapewatch_records_rejected_total",
            "counter",
            "Records rejected and written to the rejects file, by reason.",
        );
        for (reason, v) in &counts.rejected {
            m.sample("tapewatch_records_rejected_total", &[("reason", reason)], *v as f64);
        }
        m.family(
            "tapewatch_records_rejected_by_kind_total",
            "counter",
            "Records rejected and written to the rejects file, by kind (unreadable: a line too broken to tell).",
        );
        for (kind, v) in REJECTED_KINDS.iter().zip(counts.rejected_by_kind) {
            m.sample("tapewatch_records_rejected_by_kind_total", &[("kind", kind)], v as f64);
        }
        m.family("tapewatch_records_dropped_total", "counter", "Records lost inside the daemon.");
        m.sample("tapewatch_records_dropped_total", &[], counts.dropped as f64);
        m.family("tapewatch_ring_used_slots", "gauge", "Slots in use, by ring.");
        for r in &counts.rings {
            m.sample("tapewatch_ring_used_slots", &[("ring", &r.name)], r.used as f64);
        }
        m.family("tapewatch_ring_capacity_slots", "gauge", "Slots, by ring.");
        for r in &counts.rings {
            m.sample("tapewatch_ring_capacity_slots", &[("ring", &r.name)], r.capacity as f64);
        }
        m.family("tapewatch_active_accounts", "gauge", "Distinct accounts seen in the current trading day.");
        m.sample("tapewatch_active_accounts", &[], counts.active_accounts as f64);

        {
            let a = lock(&self.alerts);
            m.family("tapewatch_alerts_total", "counter", "Alerts committed, by rule.");
            for (rule, n) in RULES.iter().zip(a.by_rule) {
                m.sample("tapewatch_alerts_total", &[("rule", rule.name)], n as f64);
            }
            for (rule, n) in &a.extra_rules {
                m.sample("tapewatch_alerts_total", &[("rule", rule)], *n as f64);
            }
            if a.unknown_rule > 0 {
                m.sample("tapewatch_alerts_total", &[("rule", "other")], a.unknown_rule as f64);
            }
            m.family("tapewatch_alert_last_id", "gauge", "The id of the newest alert (0: none yet).");
            m.sample("tapewatch_alert_last_id", &[], a.last_id.unwrap_or(0) as f64);
            m.family("tapewatch_alert_log_alerts", "gauge", "Alerts kept for /alerts and the SSE stream.");
            m.sample("tapewatch_alert_log_alerts", &[], a.log.len() as f64);
            m.family(
                "tapewatch_hub_ignored_alerts_total",
                "counter",
                "Alerts the hub did not count, by cause (an id not above the last, JSON without the counted fields, a name table full).",
            );
            m.sample("tapewatch_hub_ignored_alerts_total", &[("cause", "out-of-order")], a.out_of_order as f64);
            m.sample("tapewatch_hub_ignored_alerts_total", &[("cause", "malformed")], a.malformed as f64);
            m.sample(
                "tapewatch_hub_ignored_alerts_total",
                &[("cause", "tally-full")],
                (a.by_group.overflow + a.by_instrument.overflow) as f64,
            );
        }
        m.family("tapewatch_episodes_total", "counter", "Alert episodes opened, by rule.");
        for (rule, n) in RULES.iter().zip(counts.episodes) {
            m.sample("tapewatch_episodes_total", &[("rule", rule.name)], n as f64);
        }
        m.family("tapewatch_alerts_suppressed_total", "counter", "Threshold crossings inside a cooldown, by rule.");
        for (rule, n) in RULES.iter().zip(counts.suppressed) {
            m.sample("tapewatch_alerts_suppressed_total", &[("rule", rule.name)], n as f64);
        }

        m.family(
            "tapewatch_ingest_to_alert_seconds",
            "histogram",
            "From a record's ingest to its alert being written.",
        );
        for (bound, n) in LATENCY_BUCKETS_S.iter().zip(latency.buckets) {
            m.sample("tapewatch_ingest_to_alert_seconds_bucket", &[("le", &fmt_f64(*bound))], n as f64);
        }
        m.sample("tapewatch_ingest_to_alert_seconds_bucket", &[("le", "+Inf")], latency.count as f64);
        m.sample("tapewatch_ingest_to_alert_seconds_sum", &[], latency.sum_s);
        m.sample("tapewatch_ingest_to_alert_seconds_count", &[], latency.count as f64);

        m.family("tapewatch_checkpoints_total", "counter", "Checkpoints made durable.");
        m.sample("tapewatch_checkpoints_total", &[], checkpoint.taken as f64);
        m.family("tapewatch_checkpoint_failures_total", "counter", "Checkpoints that failed.");
        m.sample("tapewatch_checkpoint_failures_total", &[], checkpoint.failures as f64);
        if let Some(last) = checkpoint.last_unix_ms {
            m.family("tapewatch_checkpoint_last_time_seconds", "gauge", "When the last checkpoint became durable.");
            m.sample("tapewatch_checkpoint_last_time_seconds", &[], last as f64 / 1e3);
            m.family("tapewatch_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint.");
            m.sample("tapewatch_checkpoint_age_seconds", &[], now_ms.saturating_sub(last) as f64 / 1e3);
        }
        m.family("tapewatch_checkpoint_duration_seconds", "gauge", "How long the last checkpoint took.");
        m.sample("tapewatch_checkpoint_duration_seconds", &[], checkpoint.last_duration_ns as f64 / 1e9);
        m.family("tapewatch_checkpoint_size_bytes", "gauge", "Bytes the last checkpoint wrote.");
        m.sample("tapewatch_checkpoint_size_bytes", &[], checkpoint.last_bytes as f64);

        m.family("tapewatch_feed_connected", "gauge", "1 while a feed sender is connected.");
        m.sample("tapewatch_feed_connected", &[], if feed.connected { 1.0 } else { 0.0 });
        if let Some(peer) = feed.connected.then_some(feed.peer.as_deref()).flatten() {
            m.family("tapewatch_feed_info", "gauge", "The connected feed sender (always 1).");
            m.sample("tapewatch_feed_info", &[("peer", peer), ("format", feed.format.as_deref().unwrap_or(""))], 1.0);
        }
        m.family("tapewatch_feed_next_seq", "gauge", "The next seq the daemon needs.");
        m.sample("tapewatch_feed_next_seq", &[], feed.next_seq as f64);
        for (name, help, v) in [
            ("tapewatch_feed_connections_total", "Feed connections accepted.", feed.connections),
            ("tapewatch_feed_refused_total", "Feed connections refused (one feed at a time).", feed.refused),
            ("tapewatch_feed_bad_frames_total", "Feed frames or lines that could not be read.", feed.bad_frames),
            ("tapewatch_feed_gaps_total", "Places where the feed's seq jumped forward.", feed.gaps),
            ("tapewatch_feed_missing_records_total", "Records missing in feed gaps.", feed.missing_records),
            ("tapewatch_feed_repeats_total", "Records whose seq was repeated or went backward.", feed.repeats),
        ] {
            m.family(name, "counter", help);
            m.sample(name, &[], v as f64);
        }

        let e = &self.edge;
        for (name, help, v) in [
            ("tapewatch_http_requests_total", "HTTP requests answered.", &e.requests),
            ("tapewatch_http_bad_requests_total", "HTTP requests refused as malformed or unknown.", &e.bad_requests),
            ("tapewatch_http_unauthorized_total", "Control requests with a missing or wrong token.", &e.unauthorized),
            (
                "tapewatch_http_connections_refused_total",
                "HTTP connections closed at once (too many open).",
                &e.connections_refused,
            ),
            ("tapewatch_sse_refused_total", "SSE clients refused (too many connected).", &e.sse_refused),
            ("tapewatch_sse_lost_total", "SSE clients told they fell off the alert log.", &e.sse_lost),
            (
                "tapewatch_sse_lagged_total",
                "Times an SSE client fell behind the live alerts and was served from the log.",
                &e.sse_lagged,
            ),
        ] {
            m.family(name, "counter", help);
            m.sample(name, &[], v.load(Ordering::Relaxed) as f64);
        }
        m.family("tapewatch_sse_clients", "gauge", "SSE clients connected.");
        m.sample("tapewatch_sse_clients", &[], e.sse_clients.load(Ordering::Relaxed) as f64);
        m.out
    }

    /// What the dashboard polls: the current figures, the newest alerts and
    /// the counter history for its charts.
    pub fn status_json(&self) -> Value {
        let counts = lock(&self.counts).clone();
        let feed = lock(&self.feed).clone();
        let latency = lock(&self.latency).clone();
        let checkpoint = lock(&self.checkpoint).clone();
        let in_effect = lock(&self.rules).clone();
        let now_ms = now_unix_ms();
        let history: Vec<Value> = lock(&self.history)
            .iter()
            .map(|s| json!({"t": s.unix_ms, "in": s.records_in, "alerts": s.alerts, "alerts_other": s.alerts_extra}))
            .collect();
        // Copied under the lock; parsed and formatted after it.
        let (total, last_id, day, by_rule, extra_rules, top_groups, top_instruments, recent) = {
            let a = lock(&self.alerts);
            (
                a.total,
                a.last_id,
                a.day.clone(),
                a.by_rule,
                a.extra_rules.clone(),
                a.by_group.top(10),
                a.by_instrument.top(10),
                a.log.iter().rev().take(20).cloned().collect::<Vec<_>>(),
            )
        };
        let mut rules: Vec<Value> = RULES
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({"rule": r.name, "alerts": by_rule[i], "episodes": counts.episodes[i], "suppressed": counts.suppressed[i]})
            })
            .collect();
        for (name, n) in &extra_rules {
            rules.push(json!({"rule": name, "alerts": n, "episodes": 0, "suppressed": 0}));
        }
        let top = |t: Vec<(Arc<str>, u64)>| -> Vec<Value> {
            t.into_iter().map(|(name, n)| json!({"name": &*name, "alerts": n})).collect()
        };
        let recent: Vec<Value> = recent
            .iter()
            .map(|s| {
                let mut v = serde_json::from_str::<Value>(&s.json).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), json!(s.id));
                }
                v
            })
            .collect();
        json!({
            "version": self.build.version,
            "commit": self.build.commit,
            "now_unix_ms": now_ms,
            "started_unix_ms": self.started_unix_ms,
            "ready": self.is_ready(),
            "trading_day": counts.trading_day,
            "rules": {
                "params": in_effect.params,
                "reloads": in_effect.reloads,
                "rules": in_effect.rules.iter().map(|(r, v)| json!({"rule": r, "params": v})).collect::<Vec<_>>(),
            },
            "records": {
                "kinds": KINDS,
                "in": counts.records_in,
                "applied": counts.applied,
                "late": counts.late,
                "rejected": counts.rejected_total(),
                "rejected_by_reason": counts.rejected.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
                "rejected_by_kind": REJECTED_KINDS.iter().zip(counts.rejected_by_kind).map(|(k, n)| json!({"kind": k, "count": n})).collect::<Vec<_>>(),
                "dropped": counts.dropped,
            },
            "rings": counts.rings.iter().map(|r| json!({"name": r.name, "used": r.used, "capacity": r.capacity})).collect::<Vec<_>>(),
            "active_accounts": counts.active_accounts,
            "alerts": {
                "total": total,
                "last_id": last_id,
                "day": day,
                "rules": rules,
                "top_groups": top(top_groups),
                "top_instruments": top(top_instruments),
                "recent": recent,
            },
            "latency": {
                "count": latency.count,
                "p50_ns": latency.p50_ns,
                "p99_ns": latency.p99_ns,
                "p999_ns": latency.p999_ns,
                "max_ns": latency.max_ns,
            },
            "feed": {
                "connected": feed.connected,
                "peer": feed.peer,
                "format": feed.format,
                "next_seq": feed.next_seq,
                "connections": feed.connections,
                "refused": feed.refused,
                "bad_frames": feed.bad_frames,
                "gaps": feed.gaps,
                "missing_records": feed.missing_records,
                "repeats": feed.repeats,
            },
            "checkpoint": {
                "last_unix_ms": checkpoint.last_unix_ms,
                "age_ms": checkpoint.last_unix_ms.map(|t| now_ms.saturating_sub(t)),
                "last_id": checkpoint.last_id,
                "last_duration_ns": checkpoint.last_duration_ns,
                "last_bytes": checkpoint.last_bytes,
                "taken": checkpoint.taken,
                "failures": checkpoint.failures,
            },
            "sse_clients": self.edge.sse_clients.load(Ordering::Relaxed),
            "history": history,
        })
    }
}

/// What the hub counts an alert by, read from its JSON line.
struct AlertFields {
    rule: String,
    /// The exchange date of the alert (`time` is local RFC 3339).
    day: Option<String>,
    group: Option<String>,
    instrument: Option<String>,
}

impl AlertFields {
    /// `None` for a line that is not a JSON object with a `rule`.
    fn parse(json: &str) -> Option<AlertFields> {
        let v = serde_json::from_str::<Value>(json).ok()?;
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        Some(AlertFields {
            rule: text("rule")?,
            day: v.get("time").and_then(Value::as_str).and_then(|t| t.get(..10)).map(str::to_string),
            group: text("group"),
            instrument: text("instrument"),
        })
    }
}

impl Alerts {
    /// Counts an alert by rule, and for its day by group and instrument.
    fn count(&mut self, fields: Option<AlertFields>) {
        let Some(f) = fields else {
            self.malformed += 1;
            return;
        };
        if let Some(i) = RULES.iter().position(|r| r.name == f.rule) {
            self.by_rule[i] += 1;
        } else if let Some(entry) = self.extra_rules.iter_mut().find(|(name, _)| *name == f.rule) {
            entry.1 += 1;
        } else if self.extra_rules.len() < EXTRA_RULE_LIMIT {
            self.extra_rules.push((f.rule, 1));
        } else {
            self.unknown_rule += 1;
        }
        // The tallies are the day's, and start again with the next day.
        if let Some(day) = f.day
            && day != self.day
        {
            self.day = day;
            self.by_group = Tally::default();
            self.by_instrument = Tally::default();
        }
        if let Some(group) = f.group {
            self.by_group.add(&group);
        }
        if let Some(instrument) = f.instrument {
            self.by_instrument.add(&instrument);
        }
    }
}

/// The text exposition being written: a family's HELP and TYPE once, then
/// its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_f64(value));
    }
}

/// A sample value as Prometheus reads it (integers without a fraction).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u64, rule: &str, group: &str, instrument: &str, day: &str) -> StoredAlert {
        let json = format!(
            r#"{{"rule":"{rule}","group":"{group}","account":"{group}","instrument":"{instrument}","time":"{day}T09:30:00.000000000+08:00","seq":{id}}}"#
        );
        StoredAlert { id, json: Arc::from(json) }
    }

    #[test]
    fn the_log_keeps_the_newest_alerts_in_id_order_and_says_what_fell_off() {
        let (hub, _rx) = Hub::new(BuildInfo::this_build("test"), 3);
        for id in 1..=5 {
            hub.publish_alert(alert(id, "self-trade", "G1", "000001", "2026-11-02"));
        }
        hub.publish_alert(alert(4, "self-trade", "G1", "000001", "2026-11-02"));
        let page = |id, limit| {
            let (lost, page) = hub.page_after(id, limit);
            (lost, page.iter().map(|a| a.id).collect::<Vec<_>>())
        };
        assert_eq!(page(0, 10), (Some(2), vec![3, 4, 5]), "1 and 2 fell off");
        assert_eq!(page(2, 10), (None, vec![3, 4, 5]));
        assert_eq!(page(3, 10), (None, vec![4, 5]));
        assert_eq!(page(3, 1), (None, vec![4]));
        assert_eq!(page(5, 10), (None, vec![]));
        let text = hub.metrics_text();
        assert!(text.contains("tapewatch_alerts_total{rule=\"self-trade\"} 5\n"), "{text}");
        assert!(text.contains("tapewatch_hub_ignored_alerts_total{cause=\"out-of-order\"} 1\n"), "{text}");
    }

    #[test]
    fn alerts_are_tallied_by_rule_and_by_the_days_groups_and_instruments() {
        let (hub, _rx) = Hub::new(BuildInfo::this_build("test"), 100);
        hub.publish_alert(alert(1, "self-trade", "G1", "000001", "2026-11-02"));
        hub.publish_alert(alert(2, "wash-trade", "G1", "000002", "2026-11-02"));
        hub.publish_alert(alert(3, "feed-gap", "G2", "000002", "2026-11-02"));
        hub.publish_alert(StoredAlert { id: 4, json: Arc::from("not json") });
        let s = hub.status_json();
        assert_eq!(s["alerts"]["total"], 4);
        assert_eq!(s["alerts"]["top_groups"][0], json!({"name": "G1", "alerts": 2}));
        assert_eq!(s["alerts"]["top_instruments"][0], json!({"name": "000002", "alerts": 2}));
        let rules = s["alerts"]["rules"].as_array().unwrap();
        assert!(rules.contains(&json!({"rule": "feed-gap", "alerts": 1, "episodes": 0, "suppressed": 0})));
        assert_eq!(s["alerts"]["recent"][0], Value::Null, "the unparseable alert is still listed");
        assert_eq!(s["alerts"]["recent"][1]["id"], 3);
        // The next day starts the tallies again; the counters by rule go on.
        hub.publish_alert(alert(5, "self-trade", "G3", "000003", "2026-11-03"));
        let s = hub.status_json();
        assert_eq!(s["alerts"]["day"], "2026-11-03");
        assert_eq!(s["alerts"]["top_groups"], json!([{"name": "G3", "alerts": 1}]));
        assert!(hub.metrics_text().contains("tapewatch_alerts_total{rule=\"self-trade\"} 2\n"));
        assert!(hub.metrics_text().contains("tapewatch_hub_ignored_alerts_total{cause=\"malformed\"} 1\n"));
    }

    #[test]
    fn a_subscriber_gets_each_alert_after_it_subscribed_once_in_order() {
        let (hub, _rx) = Hub::new(BuildInfo::this_build("test"), 10);
        hub.publish_alert(alert(1, "self-trade", "G1", "000001", "2026-11-02"));
        let (mut live, backlog, lost) = hub.subscribe_from(0, 100);
        assert_eq!(backlog.iter().map(|a| a.id).collect::<Vec<_>>(), [1]);
        assert_eq!(lost, None);
        hub.publish_alert(alert(2, "self-trade", "G1", "000001", "2026-11-02"));
        hub.publish_alert(alert(3, "self-trade", "G1", "000001", "2026-11-02"));
        assert_eq!(live.try_recv().unwrap().id, 2);
        assert_eq!(live.try_recv().unwrap().id, 3);
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn control_requests_reach_the_daemon_until_it_stops_listening() {
        let (hub, mut rx) = Hub::new(BuildInfo::this_build("test"), 10);
        hub.request(Control::Checkpoint).unwrap();
        hub.request(Control::Reload).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Control::Checkpoint);
        assert_eq!(rx.try_recv().unwrap(), Control::Reload);
        drop(rx);
        assert!(hub.request(Control::Reload).unwrap_err().contains("not taking"));
    }

    #[test]
    fn latency_buckets_are_cumulative_in_seconds() {
        let (hub, _rx) = Hub::new(BuildInfo::this_build("test"), 10);
        let mut h = crate::metrics::latency_histogram();
        h.record(50_000).unwrap(); // 50 us
        h.record(3_000_000).unwrap(); // 3 ms
        h.record(20_000_000_000).unwrap(); // 20 s: only +Inf
        hub.publish_latency(&h);
        let text = hub.metrics_text();
        for (le, n) in [("0.0001", 1), ("0.0025", 1), ("0.005", 2), ("10", 2), ("+Inf", 3)] {
            let line = format!("tapewatch_ingest_to_alert_seconds_bucket{{le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
        assert!(text.contains("tapewatch_ingest_to_alert_seconds_count 3\n"));
        let s = hub.status_json();
        assert!(s["latency"]["p50_ns"].as_u64().unwrap() >= 2_990_000);
    }

    #[test]
    fn the_top_names_are_the_most_alerted_ties_by_name_and_the_tally_is_bounded() {
        let mut t = Tally::default();
        for (name, n) in [("d", 1), ("b", 3), ("a", 3), ("c", 2), ("e", 5)] {
            for _ in 0..n {
                assert!(t.add(name));
            }
        }
        let top: Vec<(String, u64)> = t.top(3).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(top, [("e".to_string(), 5), ("a".to_string(), 3), ("b".to_string(), 3)]);
        assert_eq!(t.top(10).len(), 5);
        for i in t.counts.len()..TALLY_LIMIT {
            assert!(t.add(&format!("n{i}")));
        }
        assert!(!t.add("one-too-many"), "a full tally refuses new names");
        assert!(t.add("e"), "and still counts the ones it has");
        assert_eq!(t.overflow, 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let (hub, _rx) = Hub::new(BuildInfo { version: "1", commit: "a\"b\\c\nd".into() }, 10);
        assert!(hub.metrics_text().contains(r#"tapewatch_build_info{version="1",commit="a\"b\\c\nd"} 1"#));
    }
}
