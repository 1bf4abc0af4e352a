//! The bench's outputs: a readable text report, the JSON report, an
//! HdrHistogram percentile-distribution file, and a hand-written SVG of
//! latency and throughput over time (no plotting crate: a few hundred
//! bytes of markup per series do).

use super::{FindMaxStep, PatternScore, PhaseRate, Prepared, Trial};
use crate::metrics::fmt_ns;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything one `bench` run measured.
pub struct Report<'a> {
    pub prepared: &'a Prepared,
    pub trial: &'a Trial,
    pub scale: f64,
    pub shards: usize,
    pub pinned: bool,
    pub idle_after_ns: u64,
    pub machine: String,
    pub phases: Vec<PhaseRate>,
    pub scores: BTreeMap<String, PatternScore>,
    pub overall: PatternScore,
    pub watermark_floor: Histogram<u64>,
    pub pipeline_part: Histogram<u64>,
    pub peak_rss: Option<u64>,
    pub unmet: Vec<String>,
    pub find_max: Option<(Option<f64>, Vec<FindMaxStep>, u64)>,
}

fn pct(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
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

fn rate(r: f64) -> String {
    if r >= 1e6 { format!("{:.2}M/s", r / 1e6) } else { format!("{:.1}k/s", r / 1e3) }
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
            "records     {} offered, {} applied, {} late, {} rejected, {} dropped",
            t.feeder.offered,
            s.applied,
            s.late,
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
            "pressure    feeder blocked {} on a full ring, send lag {}; ring occupancy mean {:.1} max {} of {} slots; source waits {}",
            fmt_ns(f.blocked_ns),
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
            "per_phase": self.phases.iter().map(|p| json!({
                "name": p.name, "records": p.records, "offered_rps": p.offered_rps,
                "achieved_rps": p.achieved_rps, "scheduled_secs": p.scheduled_secs, "took_secs": p.took_secs,
            })).collect::<Vec<_>>(),
        });
        if let Some((max, steps, bound)) = &self.find_max {
            throughput["max_sustained_rps"] = json!(max);
            throughput["find_max"] = json!({
                "p99_bound_ns": bound,
                "steps": steps.iter().map(|s| json!({"rate_rps": s.rate_per_s, "p99_ns": s.p99_ns, "alerts": s.alerts, "lost": s.lost, "passed": s.passed})).collect::<Vec<_>>(),
            });
        }
        json!({
            "scenario": sc.name,
            "scale": self.scale,
            "machine": self.machine,
            "shards": self.shards,
            "pinned": self.pinned,
            "lateness_ns": sc.lateness_ns,
            "idle_after_ns": self.idle_after_ns,
            "latency_ns": {
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
                "rejected": s.feed.rejected,
                "dropped": t.dropped(),
            },
            "throughput": throughput,
            "backpressure": {
                "feeder_blocked_ns": t.feeder.blocked_ns,
                "ring_slots": t.feeder.ring_slots,
                "ring_occupancy_mean": t.feeder.mean_occupancy(),
                "ring_occupancy_max": t.feeder.occupancy_max,
                "source_waits": s.backpressure_waits,
            },
            "watermark_lag_ns": {"median": lag_median, "max": lag_max, "samples": t.watermark_lag.len()},
            "memory": {"peak_rss_bytes": self.peak_rss},
            "detection": {
                "precision": self.overall.precision(),
                "recall": self.overall.recall(),
                "patterns": patterns,
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

/// An SVG with two panels over run time: alert latency (each alert, and
/// the feeder's send lag per 100 ms window as p50/p99/max lines), and
/// offered versus achieved throughput.
pub fn svg(report: &Report<'_>) -> String {
    const W: f64 = 900.0;
    const PANEL: f64 = 220.0;
    const LEFT: f64 = 70.0;
    let t = report.trial;
    let prepared = report.prepared;
    let end_ns = t.feeder.timeline.last().map_or(1, |&(at, _)| at.saturating_sub(t.start_ns)).max(1) as f64;
    let x = |ns: f64| LEFT + (ns / end_ns).clamp(0.0, 1.0) * (W - LEFT - 20.0);

    // Throughput per 100 ms window: achieved from the feeder's timeline,
    // offered from the schedule.
    let window = (end_ns / 100.0).max(100e6 / 100.0).max(1e6);
    let windows = (end_ns / window).ceil() as usize + 1;
    let mut achieved = vec![0f64; windows];
    let mut previous = (t.start_ns, 0u64);
    for &(at, sent) in &t.feeder.timeline {
        let w = ((at.saturating_sub(t.start_ns)) as f64 / window) as usize;
        if w < windows {
            achieved[w] += (sent - previous.1) as f64;
        }
        previous = (at, sent);
    }
    let mut offered = vec![0f64; windows];
    for r in &prepared.records {
        let w = (r.due_ns as f64 / window) as usize;
        if w < windows {
            offered[w] += 1.0;
        }
    }
    let to_rate = |count: f64| count * 1e9 / window;
    let max_rate = offered.iter().chain(&achieved).cloned().fold(1.0, f64::max) * 1e9 / window;

    let max_latency = t.alerts.iter().map(|a| a.ingest_to_alert_ns).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut svg = String::new();
    let height = 2.0 * PANEL + 120.0;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14">tapewatch bench: {} (scale {}), {}</text>"#,
        prepared.scenario.name, report.scale, report.machine
    );
    // Panel 1: latency.
    let top1 = 40.0;
    let y1 = |ns: f64| top1 + PANEL - (ns / max_latency).clamp(0.0, 1.0) * PANEL;
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top1}" width="{}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        W - LEFT - 20.0
    );
    let _ = writeln!(svg, r#"<text x="5" y="{}">{}</text>"#, top1 + 10.0, fmt_ns(max_latency as u64));
    let _ = writeln!(svg, r#"<text x="5" y="{}">0</text>"#, top1 + PANEL);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}">ingest-to-alert latency of each alert (dots); p50 and p99 (lines)</text>"#,
        LEFT + 5.0,
        top1 + 15.0
    );
    for a in &t.alerts {
        let color = if a.rule == "self-trade" { "#1f77b4" } else { "#d62728" };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
            x(a.at_ns as f64),
            y1(a.ingest_to_alert_ns as f64)
        );
    }
    let h = &t.summary.ingest_to_alert;
    if !h.is_empty() {
        for (q, dash) in [(0.5, "4,2"), (0.99, "1,0")] {
            let y = y1(h.value_at_quantile(q) as f64);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="{dash}"/>"##,
                W - 20.0
            );
            let _ = writeln!(svg, r#"<text x="{}" y="{:.1}">p{}</text>"#, W - 50.0, y - 3.0, q * 100.0);
        }
    }
    // Panel 2: throughput.
    let top2 = top1 + PANEL + 40.0;
    let y2 = |r: f64| top2 + PANEL - (r / max_rate).clamp(0.0, 1.0) * PANEL;
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top2}" width="{}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        W - LEFT - 20.0
    );
    let _ = writeln!(svg, r#"<text x="5" y="{}">{:.0}/s</text>"#, top2 + 10.0, max_rate);
    let _ = writeln!(svg, r#"<text x="5" y="{}">0</text>"#, top2 + PANEL);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}">records/s per {} window: offered (grey), achieved (green)</text>"#,
        LEFT + 5.0,
        top2 + 15.0,
        fmt_ns(window as u64)
    );
    for (series, color, width) in [(&offered, "#aaa", 4), (&achieved, "#2ca02c", 1)] {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("{:.1},{:.1}", x((i as f64 + 0.5) * window), y2(to_rate(c))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
            points.join(" ")
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}">run time: 0 to {}</text>"#,
        top2 + PANEL + 20.0,
        fmt_ns(end_ns as u64)
    );
    svg.push_str("</svg>\n");
    svg
}
