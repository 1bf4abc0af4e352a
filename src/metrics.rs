//! The wall clock used for latency stamps, and the run summary. Clocks are
//! read per batch and per alert, never per record.

use crate::detect::registry::{Counts, RULES};
use crate::ingest::FeedStats;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Monotonic nanoseconds since the pipeline started, shared by all threads.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// CPU time of the calling thread, in ns: unlike the wall clock, it does not
/// count time the thread was descheduled. A system call: per barrier only.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Times the calling thread was switched out involuntarily (preempted), so
/// far; 0 where the OS does not say.
pub fn thread_preemptions() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero rusage is valid, and `usage` is writable for the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } == 0 {
            return usage.ru_nivcsw as u64;
        }
    }
    0
}

/// Latencies up to an hour, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub feed: FeedStats,
    /// Import-time findings carried by a native tape.
    pub rejected_at_import: u64,
    pub late: u64,
    pub applied: u64,
    /// Alerts per rule, in registry order.
    pub alerts: Counts,
    /// Near-misses per rule (`near_miss_pct`), this run's.
    pub near_misses: Counts,
    /// Evidence list items dropped (lists longer than `alert::MAX_LIST`).
    pub evidence_dropped: u64,
    pub elapsed: Duration,
    pub ingest_to_alert: Histogram<u64>,
    pub ingest_to_applied: Histogram<u64>,
    pub shards: usize,
    pub pinned: bool,
    /// Times a full ring made the source wait (back-pressure, not loss).
    pub backpressure_waits: u64,
    /// Times a start-up-sized table had to grow.
    pub grew: u64,
    pub max_reorder_len: usize,
    /// Set when the run took checkpoints (`--state`).
    pub checkpoints: Option<CheckpointSummary>,
    /// Set when the order book was kept (a rule reads it, or `--keep-book`).
    pub book: Option<BookSummary>,
    /// Episodes opened and crossings suppressed per rule (registry order),
    /// counted over the records this run applied (a resumed run's from the
    /// checkpoint on).
    pub episodes: crate::detect::registry::EpisodeTotals,
    /// Records refused per rule (registry order): their key was new and
    /// the rule's key table was at its limit, so the rule did not see them.
    pub keys_refused: crate::detect::registry::Counts,
}

/// The summary's `refused` line: the rules that refused records (a new
/// key past a key table's limit), each with its count; empty when none did.
fn refused_line(keys_refused: &Counts) -> String {
    let per_rule: Vec<String> =
        RULES.iter().zip(keys_refused).filter(|(_, n)| **n > 0).map(|(rule, n)| format!("{} {n}", rule.name)).collect();
    if per_rule.is_empty() {
        return String::new();
    }
    format!("refused     {} (records of new keys past a key table's limit)\n", per_rule.join(", "))
}

/// The order books of all shards at the end of the run.
#[derive(Clone, Debug, Default)]
pub struct BookSummary {
    pub stats: crate::detect::views::book::BookStats,
    /// Whether an instruments.csv was loaded.
    pub reference_loaded: bool,
    /// Instruments that trade but instruments.csv does not list, by name.
    pub missing: Vec<String>,
}

impl BookSummary {
    pub fn new(reference_loaded: bool) -> BookSummary {
        BookSummary { reference_loaded, ..BookSummary::default() }
    }

    fn render(&self, s: &mut String) {
        use crate::detect::views::book::{SKIP_CAUSES, cause_name};
        let b = &self.stats;
        *s += &format!(
            "book        {} instruments, {} orders resting (peak {}), {} levels; skipped {} ({}); digest {:016x}\n",
            b.instruments,
            b.orders,
            b.peak_orders,
            b.levels,
            b.skipped_total(),
            SKIP_CAUSES
                .iter()
                .zip(b.skipped)
                .map(|(c, n)| format!("{} {n}", cause_name(*c)))
                .collect::<Vec<_>>()
                .join(", "),
            b.digest
        );
        if !self.reference_loaded {
            *s += "book        no instruments.csv: no price limits, one-unit ticks\n";
        } else if !self.missing.is_empty() {
            let shown: Vec<&str> = self.missing.iter().take(10).map(|n| n.as_str()).collect();
            *s += &format!(
                "book        {} instruments trade but are not in instruments.csv: {}{}\n",
                self.missing.len(),
                shown.join(", "),
                if self.missing.len() > 10 { ", ..." } else { "" }
            );
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckpointSummary {
    /// Checkpoints made durable by this run.
    pub taken: u64,
    /// Snapshot bytes written by this run (source snapshots and shard files).
    pub bytes: u64,
    /// From cutting the barrier to the manifest being durable.
    pub duration: Histogram<u64>,
    /// Time the source and the shards spent on barriers (the hot-path cost).
    pub stall: Histogram<u64>,
    /// The same, in CPU time of the stalled thread (leaves out preemption
    /// by other processes on a shared machine).
    pub stall_cpu: Histogram<u64>,
    pub source_stall_max_ns: u64,
    pub shard_stall_max_ns: u64,
    /// The shards' part of `stall` and `stall_cpu`: each barrier's cut and
    /// each slice of the sliced window copy.
    pub shard_stall: Histogram<u64>,
    pub shard_stall_cpu: Histogram<u64>,
    /// The barriers' cuts alone (without the slices that follow), in the
    /// shards' thread CPU time: what a barrier holds a shard up for.
    pub shard_cut_cpu: Histogram<u64>,
    /// Shard stalls during which the thread was preempted (their wall time
    /// is mostly another thread's), and the longest wall time of the others.
    pub shard_stall_preempted: u64,
    pub shard_stall_max_unpreempted_ns: u64,
    /// The checkpoint this run resumed from, and the seq it followed.
    pub resumed_from: Option<(u64, u64)>,
}

impl Summary {
    pub fn alerts_total(&self) -> u64 {
        self.alerts.iter().sum()
    }

    pub fn events_per_sec(&self) -> f64 {
        self.feed.records_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let feed = &self.feed;
        let secs = self.elapsed.as_secs_f64();
        s += &format!(
            "events      {} read, {} applied, {} rejected, {} late\n",
            feed.records_read, self.applied, feed.rejected, self.late
        );
        if self.rejected_at_import > 0 {
            s += &format!("import      {} records were rejected when the tape was imported\n", self.rejected_at_import);
        }
        if feed.gaps > 0 {
            s += &format!("gaps        {} gaps, {} records missing", feed.gaps, feed.missing_records);
            for (first, last, line) in feed.gap_ranges.iter().take(5) {
                s += &format!("; seq {first}..={last} before line {line}");
            }
            if feed.gap_ranges.len() > 5 {
                s += "; ...";
            }
            s += "\n";
        }
        let per_rule: Vec<String> =
            RULES.iter().zip(self.alerts).map(|(rule, n)| format!("{} {n}", rule.name)).collect();
        s += &format!("alerts      {} ({})\n", self.alerts_total(), per_rule.join(", "));
        let episodes: Vec<String> = RULES
            .iter()
            .zip(&self.episodes)
            .filter_map(|(rule, e)| e.map(|e| format!("{} {} ({} suppressed)", rule.name, e.episodes, e.suppressed)))
            .collect();
        if !episodes.is_empty() {
            s += &format!("episodes    {}\n", episodes.join(", "));
        }
        if self.near_misses.iter().any(|&n| n > 0) {
            let per_rule: Vec<String> = RULES
                .iter()
                .zip(self.near_misses)
                .filter(|(_, n)| *n > 0)
                .map(|(rule, n)| format!("{} {n}", rule.name))
                .collect();
            s += &format!("near-misses {}\n", per_rule.join(", "));
        }
        s += &refused_line(&self.keys_refused);
        if self.evidence_dropped > 0 {
            s += &format!(
                "evidence    {} list items dropped (over {} per alert)\n",
                self.evidence_dropped,
                crate::alert::MAX_LIST
            );
        }
        s += &format!(
            "throughput  {:.3} s, {:.2} M events/s ({} shard{}, {})\n",
            secs,
            self.events_per_sec() / 1e6,
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            if self.pinned { "pinned" } else { "unpinned" }
        );
        for (name, h) in [("ingest->alert", &self.ingest_to_alert), ("ingest->applied", &self.ingest_to_applied)] {
            if h.is_empty() {
                continue;
            }
            s += &format!(
                "latency     {name}: p50 {} p99 {} p99.9 {} max {} (n={})\n",
                fmt_ns(h.value_at_quantile(0.5)),
                fmt_ns(h.value_at_quantile(0.99)),
                fmt_ns(h.value_at_quantile(0.999)),
                fmt_ns(h.max()),
                h.len()
            );
        }
        s += &format!(
            "pipeline    back-pressure waits {}, table growths {}, max reorder buffer {}\n",
            self.backpressure_waits, self.grew, self.max_reorder_len
        );
        if let Some(book) = &self.book {
            book.render(&mut s);
        }
        if let Some(c) = &self.checkpoints {
            if let Some((id, seq)) = c.resumed_from {
                s += &format!("resumed     from checkpoint {id} (after seq {seq})\n");
            }
            let quantile = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
            s += &format!(
                "checkpoints {} taken, {} bytes, duration p50 {} max {}; stall p50 {} p99 {} max {} (n={}; max source {} shard {})\n",
                c.taken,
                c.bytes,
                fmt_ns(quantile(&c.duration, 0.5)),
                fmt_ns(c.duration.max()),
                fmt_ns(quantile(&c.stall, 0.5)),
                fmt_ns(quantile(&c.stall, 0.99)),
                fmt_ns(c.stall.max()),
                c.stall.len(),
                fmt_ns(c.source_stall_max_ns),
                fmt_ns(c.shard_stall_max_ns)
            );
            s += &format!(
                "checkpoints stall in thread CPU time: p50 {} p99 {} max {}\n",
                fmt_ns(quantile(&c.stall_cpu, 0.5)),
                fmt_ns(quantile(&c.stall_cpu, 0.99)),
                fmt_ns(c.stall_cpu.max())
            );
            s += &format!(
                "checkpoints shard stalls (cuts and slices): p50 {} p99 {} max {} (n={}; {} preempted, max of the others {}); thread CPU p50 {} p99 {} max {}\n",
                fmt_ns(quantile(&c.shard_stall, 0.5)),
                fmt_ns(quantile(&c.shard_stall, 0.99)),
                fmt_ns(c.shard_stall.max()),
                c.shard_stall.len(),
                c.shard_stall_preempted,
                fmt_ns(c.shard_stall_max_unpreempted_ns),
                fmt_ns(quantile(&c.shard_stall_cpu, 0.5)),
                fmt_ns(quantile(&c.shard_stall_cpu, 0.99)),
                fmt_ns(c.shard_stall_cpu.max())
            );
            s += &format!(
                "checkpoints shard cuts at the barrier, thread CPU: p50 {} max {} (n={})\n",
                fmt_ns(quantile(&c.shard_cut_cpu, 0.5)),
                fmt_ns(c.shard_cut_cpu.max()),
                c.shard_cut_cpu.len()
            );
        }
        s
    }
}

pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::registry::{RULE_COUNT, by_name, index_of};

    #[test]
    fn the_refused_line_names_the_rules_that_refused_and_is_absent_when_none_did() {
        let mut refused = [0; RULE_COUNT];
        assert_eq!(refused_line(&refused), "", "zero prints nothing");
        let at = |name: &str| index_of(by_name(name).unwrap()).unwrap();
        let (instant, ramping) = (at("instant-cancel"), at("ramping"));
        refused[instant] = 573_633;
        refused[ramping] = 2;
        let line = refused_line(&refused);
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("refused     "), "{line}");
        assert!(line.contains("instant-cancel 573633") && line.contains("ramping 2"), "{line}");
        assert!(!line.contains("wash-trade"), "a rule that refused nothing is not named: {line}");
    }
}
