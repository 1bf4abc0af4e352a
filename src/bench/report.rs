//! The bench's outputs: a readable text report, the JSON report (what ran
//! where, and every figure with its unit in its key), an HdrHistogram
//! percentile-distribution file, and an SVG of latency and throughput over
//! run time drawn with `crate::chart`.

use super::{FindMaxStep, Missed, PatternScore, PhaseRate, Prepared, Trial, Unexpected};
use crate::chart::{self, Axis, Chart, Format, Item, Kind, Series, Shape, Span, palette};
use crate::metrics::fmt_ns;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Version of the JSON report's layout; bumped when keys change.
pub const JSON_LAYOUT: u64 = 3;

/// The build's git commit, when it was built from a checkout (build.rs).
pub const COMMIT: Option<&str> = option_env!("TAPEWATCH_COMMIT");

/// The machine a bench ran on.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { cpu_model, cores, kernel: kernel() }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {} cores, {}", self.cpu_model, self.cores, self.kernel)
    }
}

/// "Linux 6.1.0-18-amd64": the kernel's name and release from uname(2).
fn kernel() -> String {
    // SAFETY: utsname is plain bytes; uname fills it and NUL-terminates
    // each field on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown kernel".to_string();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.sysname), field(&u.release))
}

/// Everything one `bench` run measured.
pub struct Report<'a> {
    pub prepared: &'a Prepared,
    pub trial: &'a Trial,
    pub scale: f64,
    pub shards: usize,
    pub pinned: bool,
    pub idle_after_ns: u64,
    pub machine: Machine,
    /// The process's arguments, as given.
    pub command_line: Vec<String>,
    /// When the run started (ISO 8601 in the trading day's zone).
    pub started_at: String,
    pub missed: Vec<Missed>,
    pub unexpected: Vec<Unexpected>,
    pub phases: Vec<PhaseRate>,
    pub scores: BTreeMap<String, PatternScore>,
    pub overall: PatternScore,
    pub watermark_floor: Histogram<u64>,
    pub pipeline_part: Histogram<u64>,
    pub peak_rss: Option<u64>,
    pub unmet: Vec<String>,
    pub find_max: Option<(Option<f64>, Vec<FindMaxStep>, u64)>,
}

/// Percentiles in ns; null where there were no samples.
fn pct(h: &Histogram<u64>) -> Value {
    let q = |q: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(q)) };
    json!({
        "count": h.len(),
        "p50_ns": q(0.5),
        "p99_ns": q(0.99),
        "p999_ns": q(0.999),
        "max_ns": if h.is_empty() { Value::Null } else { json!(h.max()) },
    })
}

fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {} p99 {} p99.9 {} max {} (n={})",
        fmt_ns(h.value_at_quantile(0.5)),
        fmt_ns(h.value_at_quantile(0.99)),
        fmt_ns(h.value_at_quantile(0.999)),
        fmt_ns(h.max()),
        h.len()
    )
}

/// A rate for the text report: M/s, k/s, or records/s below 1k/s (a quiet
/// phase of a few records a second would otherwise print "0.0k/s").
fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{r:.1}/s")
    }
}

impl Report<'_> {
    fn lag_stats(&self) -> (u64, u64) {
        let mut lags: Vec<u64> = self.trial.watermark_lag.iter().map(|&(_, l)| l).collect();
        lags.sort_unstable();
        let median = lags.get(lags.len() / 2).copied().unwrap_or(0);
        (median, lags.last().copied().unwrap_or(0))
    }

    pub fn text(&self) -> String {
        let t = self.trial;
        let s = &t.summary;
        let sc = &self.prepared.scenario;
        let mut out = String::new();
        let _ = writeln!(out, "scenario    {} (scale {}), {}", sc.name, self.scale, sc.description);
        let _ = writeln!(
            out,
            "build       tapewatch {} commit {}, started {}",
            env!("CARGO_PKG_VERSION"),
            COMMIT.unwrap_or("unknown (not built from a git checkout)"),
            self.started_at
        );
        let _ = writeln!(
            out,
            "setup       {} shard{}, {}, lateness {}, idle watermark after {}; {}",
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            if self.pinned { "pinned" } else { "unpinned" },
            fmt_ns(sc.lateness_ns as u64),
            fmt_ns(self.idle_after_ns),
            self.machine
        );
        let _ = writeln!(
            out,
            "records     {} offered, {} applied, {} late ({} after feeder stalls), {} rejected, {} dropped",
            t.feeder.offered,
            s.applied,
            s.late,
            t.late_after_feeder_stall,
            s.feed.rejected,
            t.dropped()
        );
        let _ = writeln!(out, "latency     ingest->alert    {}", line(&s.ingest_to_alert));
        let _ = writeln!(out, "            ingest->applied  {}", line(&s.ingest_to_applied));
        let _ = writeln!(out, "  split     watermark wait   {}", line(&self.watermark_floor));
        let _ = writeln!(out, "            pipeline         {}", line(&self.pipeline_part));
        let _ = writeln!(out, "            (from each record's scheduled time: coordinated omission corrected)");
        for p in &self.phases {
            let _ = writeln!(
                out,
                "phase       {:<16} offered {:>10}  achieved {:>10}  {} records in {:.3} s (scheduled {:.3} s)",
                p.name,
                rate(p.offered_rps),
                rate(p.achieved_rps),
                p.records,
                p.took_secs,
                p.scheduled_secs
            );
        }
        let f = &t.feeder;
        let _ = writeln!(
            out,
            "pressure    feeder blocked {} on a full ring, stalled {} times on its own, send lag {}; ring occupancy mean {:.1} max {} of {} slots; source waits {}",
            fmt_ns(f.blocked_ns),
            f.stalls,
            line(&f.send_lag),
            f.mean_occupancy(),
            f.occupancy_max,
            f.ring_slots,
            s.backpressure_waits
        );
        let (lag_median, lag_max) = self.lag_stats();
        let _ = writeln!(
            out,
            "watermark   lag behind the schedule: median {} max {} ({} samples); max reorder buffer {}",
            fmt_ns(lag_median),
            fmt_ns(lag_max),
            t.watermark_lag.len(),
            s.max_reorder_len
        );
        let rss = self.peak_rss.map_or("unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
        let pregenerated = self.prepared.records.len() * std::mem::size_of::<crate::ingest::live::WireRecord>();
        let _ = writeln!(
            out,
            "memory      peak RSS while playing {rss} (includes {:.1} MiB of pre-generated records)",
            pregenerated as f64 / (1 << 20) as f64
        );
        for (pattern, sc) in &self.scores {
            let _ = writeln!(
                out,
                "detection   {pattern:<17} expected {} found {} missed {} unexpected {}  precision {:.3} recall {:.3}",
                sc.expected,
                sc.found,
                sc.missed,
                sc.unexpected,
                sc.precision(),
                sc.recall()
            );
        }
        let _ = writeln!(
            out,
            "detection   overall           precision {:.3} recall {:.3}",
            self.overall.precision(),
            self.overall.recall()
        );
        // The keys behind the counts, a few of each (all in the JSON).
        const SHOWN: usize = 10;
        for m in self.missed.iter().take(SHOWN) {
            let _ = writeln!(
                out,
                "missed      {:<17} group {} on {} (planted {})",
                m.rule,
                m.group,
                m.instrument,
                m.accounts.join(" ")
            );
        }
        for u in self.unexpected.iter().take(SHOWN) {
            let _ = writeln!(
                out,
                "unexpected  {:<17} group {} on {}: {} alert{}, first at seq {}",
                u.rule,
                u.group,
                u.instrument,
                u.alerts,
                if u.alerts == 1 { "" } else { "s" },
                u.first_seq
            );
        }
        let more = self.missed.len().saturating_sub(SHOWN) + self.unexpected.len().saturating_sub(SHOWN);
        if more > 0 {
            let _ = writeln!(
                out,
                "            ... {more} more keys in the JSON report (detection.missed, detection.unexpected)"
            );
        }
        if let Some((max, steps, bound)) = &self.find_max {
            for step in steps {
                let _ = writeln!(
                    out,
                    "find-max    {:>10}: p99 {} over {} alerts, {} lost -> {}",
                    rate(step.rate_per_s),
                    fmt_ns(step.p99_ns),
                    step.alerts,
                    step.lost,
                    if step.passed { "pass" } else { "fail" }
                );
            }
            let _ = writeln!(
                out,
                "find-max    max sustained {} with p99 < {}",
                max.map_or("none".to_string(), rate),
                fmt_ns(*bound)
            );
        }
        if self.unmet.is_empty() {
            let _ = writeln!(out, "expect      met");
        } else {
            for u in &self.unmet {
                let _ = writeln!(out, "expect      NOT MET: {u}");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let t = self.trial;
        let s = &t.summary;
        let sc = &self.prepared.scenario;
        let (lag_median, lag_max) = self.lag_stats();
        let patterns: serde_json::Map<String, Value> = self
            .scores
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!({"expected": v.expected, "found": v.found, "missed": v.missed, "unexpected": v.unexpected,
                           "precision": v.precision(), "recall": v.recall()}),
                )
            })
            .collect();
        let mut throughput = json!({
            "phases": self.phases.iter().map(|p| json!({
                "name": p.name, "records": p.records, "offered_per_s": p.offered_rps,
                "achieved_per_s": p.achieved_rps, "scheduled_s": p.scheduled_secs, "took_s": p.took_secs,
            })).collect::<Vec<_>>(),
        });
        if let Some((max, steps, bound)) = &self.find_max {
            throughput["max_sustained_per_s"] = json!(max);
            throughput["find_max"] = json!({
                "p99_bound_ns": bound,
                "steps": steps.iter().map(|s| json!({"rate_per_s": s.rate_per_s, "p99_ns": s.p99_ns, "alerts": s.alerts, "lost": s.lost, "passed": s.passed})).collect::<Vec<_>>(),
            });
        }
        json!({
            "layout": JSON_LAYOUT,
            "version": env!("CARGO_PKG_VERSION"),
            "commit": COMMIT,
            "started_at": self.started_at,
            "wall_s": t.wall_secs,
            "command_line": self.command_line,
            "machine": {"cpu_model": self.machine.cpu_model, "cores": self.machine.cores, "kernel": self.machine.kernel},
            "scenario": {"name": sc.name, "description": sc.description, "seed": sc.seed, "scale": self.scale},
            "setup": {
                "shards": self.shards,
                "pinned": self.pinned,
                "lateness_ns": sc.lateness_ns,
                "idle_after_ns": self.idle_after_ns,
            },
            "latency": {
                "ingest_to_alert": pct(&s.ingest_to_alert),
                "ingest_to_applied": pct(&s.ingest_to_applied),
                "watermark_wait": pct(&self.watermark_floor),
                "pipeline": pct(&self.pipeline_part),
                "feeder_send_lag": pct(&t.feeder.send_lag),
                "coordinated_omission_corrected": true,
            },
            "records": {
                "offered": t.feeder.offered,
                "applied": s.applied,
                "late": s.late,
                "late_after_feeder_stall": t.late_after_feeder_stall,
                "rejected": s.feed.rejected,
                "dropped": t.dropped(),
            },
            "throughput": throughput,
            "backpressure": {
                "feeder_blocked_ns": t.feeder.blocked_ns,
                "feeder_stalls": t.feeder.stalls,
                "ring_slots": t.feeder.ring_slots,
                "ring_occupancy_mean_slots": t.feeder.mean_occupancy(),
                "ring_occupancy_max_slots": t.feeder.occupancy_max,
                "source_waits": s.backpressure_waits,
            },
            "watermark_lag": {"median_ns": lag_median, "max_ns": lag_max, "samples": t.watermark_lag.len()},
            "memory": {"peak_rss_bytes": self.peak_rss},
            "detection": {
                "precision": self.overall.precision(),
                "recall": self.overall.recall(),
                "patterns": patterns,
                "missed": self.missed.iter().map(|m| json!({
                    "rule": m.rule, "group": m.group, "instrument": m.instrument, "accounts": m.accounts,
                })).collect::<Vec<_>>(),
                "unexpected": self.unexpected.iter().map(|u| json!({
                    "rule": u.rule, "group": u.group, "instrument": u.instrument, "alerts": u.alerts, "first_seq": u.first_seq,
                })).collect::<Vec<_>>(),
            },
            "expectations_met": self.unmet.is_empty(),
            "unmet": self.unmet,
        })
    }
}

/// The HdrHistogram percentile distribution (the layout of Java's
/// `outputPercentileDistribution`, values in milliseconds), readable by the
/// usual HdrHistogram plotters.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    if h.is_empty() {
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { String::new() };
        let _ = writeln!(out, "{:>12.3} {:>14.12} {:>10} {inverse}", v.value_iterated_to() as f64 / 1e6, q, total);
    }
    let _ = writeln!(out, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1e6, h.stdev() / 1e6);
    let _ = writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / 1e6, h.len());
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), h.distinct_values());
    out
}

/// Alerts drawn per rule at most; beyond it every k-th (and the slowest)
/// are, so a day with a million alerts still gives a file a browser opens.
const MAX_POINTS_PER_RULE: usize = 4000;

/// The bench as a person reads it: two panels over run time sharing one
/// x axis, the scenario's phases shaded (bursts in orange) in both.
/// Latency: each alert's ingest-to-alert latency on a log axis, one
/// colour and shape per rule, with the run's p50 and p99 as labelled
/// lines. Throughput: offered (the schedule) against achieved (the
/// feeder's sends) per window, on a log axis when bursts dwarf the base.
pub fn svg(report: &Report<'_>) -> String {
    let t = report.trial;
    let prepared = report.prepared;
    let scenario = &prepared.scenario;
    let last_due = prepared.records.last().map_or(0, |r| r.due_ns);
    let last_sent = t.feeder.timeline.last().map_or(0, |&(at, _)| at.saturating_sub(t.start_ns));
    let last_alert = t.alerts.iter().map(|a| a.at_ns).max().unwrap_or(0);
    // A little room on the right so the last alert's marker shows whole.
    let end_ns = last_due.max(last_sent).max(last_alert).max(1_000_000) as f64 * 1.02;
    let run_time =
        || Axis::linear("run time (from the first record's scheduled time)").format(Format::Nanos).range(0.0, end_ns);

    // Phases: bursts are the segments at several times the quietest rate.
    let base_rate = scenario.segments.iter().map(|s| s.mean_rate()).filter(|&r| r > 0.0).fold(f64::INFINITY, f64::min);
    let is_burst = |rate: f64| base_rate.is_finite() && rate >= 4.0 * base_rate;
    // The base stretches between repeated bursts ("burst base #2") are
    // the background the bursts stand out from: neither shaded nor named.
    // The phases count from the day's start, the run time from the first
    // record (an opening call's, when there is one).
    let from_ns = prepared.phases_from_ns() as f64;
    let mut phase_spans: Vec<Span> = Vec::new();
    for seg in scenario.segments.iter().filter(|s| !s.name.contains(" base #")) {
        let (a, b) = (from_ns + seg.start_ns as f64, from_ns + seg.end_ns() as f64);
        if is_burst(seg.mean_rate()) {
            phase_spans.push(Span::new(a, b, palette::ORANGE).label(&seg.name).legend("burst phase"));
        } else {
            // Neighbouring phases alternate so their boundary shows.
            let shaded = phase_spans.iter().filter(|s| s.legend.is_none()).count();
            let color = if shaded % 2 == 0 { "#7f7f7f" } else { "#4a6fa5" };
            phase_spans.push(Span::new(a, b, color).label(&seg.name));
        }
    }

    // Latency panel.
    let mut by_rule: BTreeMap<&str, Vec<&super::AlertSeen>> = BTreeMap::new();
    for a in &t.alerts {
        by_rule.entry(a.rule.as_str()).or_default().push(a);
    }
    const COLORS: [&str; 8] = [
        palette::BLUE,
        palette::RED,
        palette::GREEN,
        palette::PURPLE,
        palette::BROWN,
        palette::PINK,
        palette::CYAN,
        palette::OLIVE,
    ];
    const SHAPES: [Shape; 5] = [Shape::Circle, Shape::Diamond, Shape::Square, Shape::TriangleUp, Shape::TriangleDown];
    let h = &t.summary.ingest_to_alert;
    let mut latency = Chart::new("Ingest-to-alert latency of each alert")
        .id("bench-latency")
        .size(1000.0, 320.0)
        .x(run_time())
        .y(Axis::log("latency (log scale)").format(Format::Nanos));
    if !h.is_empty() {
        latency = latency.subtitle(format!(
            "{} alerts; p50 {}, p99 {}, max {} (from each record's scheduled time: coordinated omission corrected)",
            h.len(),
            fmt_ns(h.value_at_quantile(0.5)),
            fmt_ns(h.value_at_quantile(0.99)),
            fmt_ns(h.max())
        ));
    }
    for (i, (rule, alerts)) in by_rule.iter().enumerate() {
        let stride = alerts.len().div_ceil(MAX_POINTS_PER_RULE).max(1);
        let slowest = alerts.iter().enumerate().max_by_key(|(_, a)| a.ingest_to_alert_ns).map_or(0, |(k, _)| k);
        let items = alerts.iter().enumerate().filter(|&(k, _)| k % stride == 0 || k == slowest).map(|(_, a)| {
            Item::at(a.at_ns as f64, a.ingest_to_alert_ns.max(1) as f64).tip(format!(
                "{} seq {}: group {} on {}, {}",
                a.rule,
                a.seq,
                if a.group.is_empty() { &a.account } else { &a.group },
                a.instrument,
                fmt_ns(a.ingest_to_alert_ns)
            ))
        });
        let name = if stride > 1 {
            format!("{rule} ({} alerts, every {stride}th and the slowest drawn)", alerts.len())
        } else {
            format!("{rule} ({} alert{})", alerts.len(), if alerts.len() == 1 { "" } else { "s" })
        };
        latency = latency
            .series(Series::new(Kind::Points, &name, COLORS[i % COLORS.len()], items).shape(SHAPES[i % SHAPES.len()]));
    }
    if !h.is_empty() {
        let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
        latency = latency
            .rule(p50 as f64, format!("p50 {}", chart::axis::nanos(p50 as f64)), "#333333", Some("6,4"))
            .rule(p99 as f64, format!("p99 {}", chart::axis::nanos(p99 as f64)), palette::RED, Some("2,3"));
    }

    // Throughput panel: per window, offered from the schedule, achieved
    // from the feeder's timeline.
    let window = (end_ns / 120.0).max(1e6);
    let windows = (end_ns / window).ceil() as usize + 1;
    let mut achieved = vec![0f64; windows];
    let mut previous = 0u64;
    for &(at, sent) in &t.feeder.timeline {
        let w = (at.saturating_sub(t.start_ns) as f64 / window) as usize;
        if w < windows {
            achieved[w] += sent.saturating_sub(previous) as f64;
        }
        previous = sent;
    }
    let mut offered = vec![0f64; windows];
    for r in &prepared.records {
        let w = (r.due_ns as f64 / window) as usize;
        if w < windows {
            offered[w] += 1.0;
        }
    }
    let per_s = 1e9 / window;
    let max_rate = offered.iter().chain(&achieved).fold(0.0, |m: f64, &c| m.max(c * per_s));
    let min_rate = offered.iter().filter(|&&c| c > 0.0).fold(f64::INFINITY, |m: f64, &c| m.min(c * per_s));
    let log_rates = min_rate.is_finite() && max_rate > 50.0 * min_rate;
    let rate_axis = if log_rates {
        Axis::log("records/s (log scale)").format(Format::number("/s"))
    } else {
        Axis::linear("records/s").format(Format::number("/s")).include_zero()
    };
    let at = |i: usize| i as f64 * window;
    let mut throughput = Chart::new("Throughput: offered by the schedule and achieved by the pipeline")
        .id("bench-throughput")
        .subtitle(format!("records per second in windows of {}", fmt_ns(window as u64)))
        .size(1000.0, 240.0)
        .x(run_time())
        .y(rate_axis)
        .series(
            Series::step("offered (schedule)", "#9e9e9e", offered.iter().enumerate().map(|(i, &c)| (at(i), c * per_s)))
                .width(5.0),
        )
        .series(
            Series::step(
                "achieved (sent)",
                palette::GREEN,
                achieved.iter().enumerate().map(|(i, &c)| (at(i), c * per_s)),
            )
            .width(1.8),
        );
    for span in &phase_spans {
        latency = latency.span(span.clone());
        // The phase names are written once, above the latency panel.
        throughput = throughput.span(Span { label: None, ..span.clone() });
    }
    chart::stack(
        &format!("tapewatch bench: {} (scale {})", scenario.name, report.scale),
        Some(&format!(
            "{}; {} shard{}, {}; tapewatch {} commit {}",
            report.machine,
            report.shards,
            if report.shards == 1 { "" } else { "s" },
            if report.pinned { "pinned" } else { "unpinned" },
            env!("CARGO_PKG_VERSION"),
            COMMIT.unwrap_or("unknown")
        )),
        &[latency, throughput],
    )
}

#[cfg(test)]
mod tests {
    use super::rate;

    /// A quiet phase's rate reads as records a second, not "0.0k/s".
    #[test]
    fn rates_read_in_their_own_unit() {
        assert_eq!(rate(0.111), "0.1/s");
        assert_eq!(rate(40.0), "40.0/s");
        assert_eq!(rate(999.9), "999.9/s");
        assert_eq!(rate(1_000.0), "1.0k/s");
        assert_eq!(rate(52_340.0), "52.3k/s");
        assert_eq!(rate(1_200_000.0), "1.20M/s");
    }
}
