//! `tapewatch bench`: plays a scenario against the live pipeline and
//! measures it.
//!
//! - `prepare`: the scenario's day is generated and turned into wire
//!   records before the clock starts, so the feeder measures the pipeline,
//!   not the generator (nor the CSV parser: the live path gets binary
//!   records, as from a network feed).
//! - `play`: a paced feeder thread (`feeder`) offers each record at its
//!   scheduled time to the live ingest ring (`ingest::live`), the pipeline
//!   runs as it would behind a network source, and latency counts from each
//!   record's scheduled time (coordinated omission corrected).
//! - `score`: alerts against the scenario's truth.
//! - `find_max`: the highest steady rate that keeps p99 under a bound.
//!
//! `report` renders the text, JSON, percentile-distribution and SVG forms.

pub mod feeder;
pub mod report;

use crate::config::Rules;
use crate::event::{Kind, Side, parse_px};
use crate::generator::generate_tape;
use crate::ingest::RejectLog;
use crate::ingest::live::{LiveFeed, WireRecord, wire_channel};
use crate::ingest::validate::{Limits, Validator};
use crate::metrics::{Clock, Summary, latency_histogram};
use crate::scenario::Scenario;
use crate::symbols::Groups;
use crate::topology::{self, LiveOptions, PipelineConfig};
use feeder::{FeederStats, Playback, Schedule, Steady};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Slots of the feeder's ring (x 512 records): what a receive buffer holds
/// before back-pressure reaches the sender.
pub const FEED_RING_SLOTS: usize = 64;
/// The feeder starts this long after the pipeline, so threads are up.
const LEAD_NS: u64 = 20_000_000;

/// A scenario's day, ready to play.
pub struct Prepared {
    pub scenario: Scenario,
    /// In feed order; `due_ns` is the offset from the first record's
    /// arrival: the newest event time so far, as an in-order engine stamps
    /// it (a late record arrives when the records around it do).
    pub records: Vec<WireRecord>,
    /// What was planted: one row per actor.
    pub truth: Vec<TruthRow>,
    pub groups: Arc<Groups>,
    /// The day's instruments.csv (previous close, limits, tick), for the
    /// book as in a replay (marking-open reads the previous close).
    pub instruments: Arc<crate::instruments::Instruments>,
    pub first_ts_ns: i64,
    pub max_order_id: u64,
    pub prepare_secs: f64,
}

/// Generates the scenario's day in memory and converts it to wire records.
pub fn prepare(scenario: &Scenario, scratch_dir: &Path) -> Result<Prepared, String> {
    let started = std::time::Instant::now();
    let cfg = scenario.gen_config();
    let day = generate_tape(&cfg).map_err(|e| format!("generating the scenario's day: {e}"))?;
    let records = wire_records(&day.tape)?;
    drop(day.tape);
    // Groups come from an accounts.csv file, as for a replay.
    let accounts_path = scratch_dir.join("accounts.csv");
    let mut text = String::from("account,group\n");
    for (account, group) in &day.group_rows {
        text.push_str(&format!("{account},{group}\n"));
    }
    std::fs::write(&accounts_path, text).map_err(|e| format!("{}: {e}", accounts_path.display()))?;
    let groups = Arc::new(Groups::load(&accounts_path)?);
    let instruments_path = scratch_dir.join("instruments.csv");
    std::fs::write(&instruments_path, &day.instruments_csv)
        .map_err(|e| format!("{}: {e}", instruments_path.display()))?;
    let instruments = Arc::new(crate::instruments::Instruments::load(&instruments_path)?);
    let group_of: std::collections::HashMap<&str, &str> =
        day.group_rows.iter().map(|(a, g)| (a.as_str(), g.as_str())).collect();
    let truth = day
        .planted
        .iter()
        .map(|p| TruthRow {
            group: group_of.get(p.account.as_str()).map_or_else(|| p.account.clone(), |g| g.to_string()),
            account: p.account.clone(),
            pattern: p.pattern.to_string(),
            instrument: p.instrument.clone(),
        })
        .collect();
    let first_ts_ns = records.first().map_or(0, |w| w.ts_ns);
    let max_order_id = records.iter().map(|w| w.order_id.max(w.contra_order_id)).max().unwrap_or(0);
    Ok(Prepared {
        scenario: scenario.clone(),
        records,
        truth,
        groups,
        instruments,
        first_ts_ns,
        max_order_id,
        prepare_secs: started.elapsed().as_secs_f64(),
    })
}

/// Parses a generated FEED.md tape into wire records with their due offsets.
/// Not on the measured path: this runs before the clock starts.
pub fn wire_records(tape: &[u8]) -> Result<Vec<WireRecord>, String> {
    let mut lines = tape.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    lines.next(); // header
    let mut out = Vec::new();
    let mut newest_ts_ns = i64::MIN;
    let mut first_ts_ns = None;
    for (index, line) in lines.enumerate() {
        let bad = |what: &str| format!("generated tape, record {}: bad {what}", index + 1);
        let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
        if fields.len() != 11 {
            return Err(bad("column count"));
        }
        let num = |f: &[u8], what: &str| -> Result<u64, String> {
            std::str::from_utf8(f).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad(what))
        };
        let mut w = WireRecord {
            seq: num(fields[0], "seq")?,
            ts_ns: std::str::from_utf8(fields[1]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("ts_ns"))?,
            kind: match fields[2] {
                b"N" => Kind::New,
                b"C" => Kind::Cancel,
                b"T" => Kind::Trade,
                _ => return Err(bad("kind")),
            },
            order_id: num(fields[3], "order_id")?,
            side: if fields[6] == b"B" { Side::Buy } else { Side::Sell },
            price: parse_px(fields[7]).ok_or_else(|| bad("price"))?,
            qty: num(fields[8], "qty")?,
            ..WireRecord::default()
        };
        WireRecord::set_name(&mut w.account, &mut w.account_len, fields[4]).ok_or_else(|| bad("account"))?;
        WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, fields[5]).ok_or_else(|| bad("instrument"))?;
        if w.kind == Kind::Trade {
            w.contra_order_id = num(fields[9], "contra_order_id")?;
            WireRecord::set_name(&mut w.contra_account, &mut w.contra_account_len, fields[10])
                .ok_or_else(|| bad("contra_account"))?;
        }
        newest_ts_ns = newest_ts_ns.max(w.ts_ns);
        let first = *first_ts_ns.get_or_insert(newest_ts_ns);
        w.due_ns = (newest_ts_ns - first) as u64;
        out.push(w);
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct PlayOptions {
    pub shards: usize,
    pub cores: Vec<usize>,
    pub out_dir: PathBuf,
    /// Overrides the scenario's `pipeline.idle_after`.
    pub idle_after_ns: Option<u64>,
    pub rules: Rules,
}

/// One row of the truth file, with the account's group from accounts.csv
/// (the account itself when it is in none).
#[derive(Clone, Debug, PartialEq)]
pub struct TruthRow {
    pub account: String,
    pub group: String,
    /// The rule's JSON name.
    pub pattern: String,
    pub instrument: String,
}

/// One alert as the sink wrote it.
#[derive(Clone, Debug)]
pub struct AlertSeen {
    pub rule: String,
    /// The alert's group (an account in no group is its own group).
    pub group: String,
    pub account: String,
    pub instrument: String,
    pub seq: u64,
    pub ingest_to_alert_ns: u64,
    pub ingest_to_applied_ns: u64,
    /// Detection time, ns from the feeder's start.
    pub at_ns: u64,
}

/// One run of the pipeline behind the feeder.
pub struct Trial {
    pub summary: Summary,
    pub feeder: FeederStats,
    pub alerts: Vec<AlertSeen>,
    /// Pipeline clock of the first record's due time.
    pub start_ns: u64,
    /// Sampled every ~200 ms: (ns from start, event-time lag of the watermark behind the schedule).
    pub watermark_lag: Vec<(u64, u64)>,
    pub wall_secs: f64,
    /// Late records (of `summary.late`) that the feeder sent catching up
    /// after one of its own stalls (`FeederStats::stalls`): the bench's
    /// fault, not the pipeline's, so not held against `max_late`.
    pub late_after_feeder_stall: u64,
}

impl Trial {
    /// Offered records that are neither applied, late nor rejected: lost.
    pub fn dropped(&self) -> u64 {
        let accounted = self.summary.applied + self.summary.late + self.summary.feed.rejected;
        self.feeder.offered.saturating_sub(accounted)
    }

    /// Late records the pipeline is answerable for: all of them but those
    /// sent after a feeder stall.
    pub fn late_held_against(&self) -> u64 {
        self.summary.late.saturating_sub(self.late_after_feeder_stall)
    }
}

/// How many of the late file's records (seq in its first column) the
/// feeder sent catching up after one of its own stalls.
fn late_after_stall(late_path: &Path, feeder: &FeederStats) -> Result<u64, String> {
    if feeder.stall_seqs.is_empty() {
        return Ok(0);
    }
    let text = std::fs::read_to_string(late_path).map_err(|e| format!("{}: {e}", late_path.display()))?;
    let seqs = text.lines().skip(1).filter_map(|line| line.split(',').next()?.parse::<u64>().ok());
    Ok(seqs.filter(|&seq| feeder.sent_after_stall(seq)).count() as u64)
}

/// Runs the pipeline behind a paced feeder playing `schedule`.
fn play_schedule<S: Schedule + Sync>(
    prepared: &Prepared,
    opts: &PlayOptions,
    clock: Clock,
    start_ns: u64,
    schedule: &S,
) -> Result<Trial, String> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| format!("{}: {e}", opts.out_dir.display()))?;
    let alerts_path = opts.out_dir.join("alerts.jsonl");
    let late_path = opts.out_dir.join("late.csv");
    let mut cfg = PipelineConfig::new(opts.shards, alerts_path.clone(), late_path.clone());
    cfg.cores = opts.cores.clone();
    cfg.rules = opts.rules.clone();
    cfg.instruments = prepared.instruments.clone();
    cfg.lateness_ns = prepared.scenario.lateness_ns;
    let idle_after_ns = opts.idle_after_ns.unwrap_or(prepared.scenario.idle_after_ns as u64);
    cfg.live = LiveOptions { idle_after_ns: Some(idle_after_ns), clock: Some(clock), control: None };
    let (tx, rx) = wire_channel(FEED_RING_SLOTS);
    let validator = Validator::new(Limits::default(), prepared.groups.clone());
    let names = crate::cmd::validator_names(&validator, prepared.groups.clone());
    let rejects = RejectLog::create(&opts.out_dir.join("rejects.tsv")).map_err(|e| e.to_string())?;
    let feed = LiveFeed::new(rx, validator, rejects);
    let first_ts_ns = prepared.first_ts_ns;
    let mut watermark_lag = Vec::new();
    let (summary, feeder_stats) = std::thread::scope(|scope| {
        let feeder = std::thread::Builder::new()
            .name("tw-feeder".into())
            // A feeder gap longer than the idle period can make records late.
            .spawn_scoped(scope, move || feeder::run(schedule, clock, tx, idle_after_ns))
            .expect("spawn feeder thread");
        let summary = topology::run(feed, names, &cfg, |progress| {
            let now = clock.now_ns();
            let watermark_ns = progress.watermark_ns.load(Ordering::Relaxed);
            if now > start_ns && watermark_ns > first_ts_ns {
                // Event time the schedule has reached, minus the watermark.
                let scheduled_ts = first_ts_ns + (now - start_ns) as i64;
                watermark_lag.push((now - start_ns, scheduled_ts.saturating_sub(watermark_ns).max(0) as u64));
            }
        });
        let stats = feeder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (summary, stats)
    });
    let summary = summary?;
    let alerts = read_alerts(&alerts_path, start_ns, clock)?;
    let late_after_feeder_stall = late_after_stall(&late_path, &feeder_stats)?;
    Ok(Trial {
        summary,
        feeder: feeder_stats,
        alerts,
        start_ns,
        watermark_lag,
        wall_secs: started.elapsed().as_secs_f64(),
        late_after_feeder_stall,
    })
}

/// Plays the scenario's day as scheduled.
pub fn play(prepared: &Prepared, opts: &PlayOptions) -> Result<Trial, String> {
    let clock = Clock::new();
    let start_ns = clock.now_ns() + LEAD_NS;
    let schedule = Playback { records: &prepared.records, start_ns };
    play_schedule(prepared, opts, clock, start_ns, &schedule)
}

/// Plays the scenario's records at a steady rate for `secs` seconds.
pub fn play_steady(prepared: &Prepared, opts: &PlayOptions, rate_per_s: f64, secs: f64) -> Result<Trial, String> {
    let clock = Clock::new();
    let start_ns = clock.now_ns() + LEAD_NS;
    let schedule = Steady {
        records: &prepared.records,
        rate_per_s,
        total: (rate_per_s * secs).ceil().max(1.0) as u64,
        start_ns,
        order_id_span: prepared.max_order_id + 1,
    };
    play_schedule(prepared, opts, clock, start_ns, &schedule)
}

fn read_alerts(path: &Path, start_ns: u64, clock: Clock) -> Result<Vec<AlertSeen>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // detected_unix_ns back to the pipeline clock: both clocks run at the
    // same rate, so one offset, taken now, maps them.
    let unix_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let offset = unix_now - clock.now_ns() as i64;
    let mut alerts = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let timing = &v["timing"];
        let detected = timing["detected_unix_ns"].as_i64().unwrap_or(0) - offset;
        alerts.push(AlertSeen {
            rule: s("rule"),
            group: s("group"),
            account: s("account"),
            instrument: s("instrument"),
            seq: v["seq"].as_u64().unwrap_or(0),
            ingest_to_alert_ns: timing["ingest_to_alert_ns"].as_u64().unwrap_or(0),
            ingest_to_applied_ns: timing["ingest_to_applied_ns"].as_u64().unwrap_or(0),
            at_ns: (detected.max(0) as u64).saturating_sub(start_ns),
        });
    }
    Ok(alerts)
}

/// Per-pattern detection score.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatternScore {
    pub expected: u64,
    pub found: u64,
    pub missed: u64,
    /// Distinct alerted (account, instrument) keys that were not planted.
    pub unexpected: u64,
}

impl PatternScore {
    pub fn recall(&self) -> f64 {
        if self.expected == 0 { 1.0 } else { self.found as f64 / self.expected as f64 }
    }
    pub fn precision(&self) -> f64 {
        let alerted = self.found + self.unexpected;
        if alerted == 0 { 1.0 } else { self.found as f64 / alerted as f64 }
    }
}

/// Patterns always reported, planted or not.
pub const BASE_PATTERNS: [&str; 2] = ["excessive-cancel", "self-trade"];

/// Alerts against the truth, per pattern (the rule's JSON name), keyed by
/// (group, instrument): an actor is found when at least one alert of its
/// pattern names its group on its instrument, whichever of the group's
/// accounts the alert names (a spoofer's small order may come from a
/// related account). Every pattern planted or alerted on is scored, and
/// `BASE_PATTERNS` always.
pub fn score(truth: &[TruthRow], alerts: &[AlertSeen]) -> BTreeMap<String, PatternScore> {
    let mut names: BTreeSet<&str> = BASE_PATTERNS.into_iter().collect();
    names.extend(truth.iter().map(|t| t.pattern.as_str()));
    names.extend(alerts.iter().map(|a| a.rule.as_str()));
    let group = |a: &AlertSeen| if a.group.is_empty() { a.account.clone() } else { a.group.clone() };
    let mut out = BTreeMap::new();
    for pattern in names {
        let planted: BTreeSet<(String, &str)> =
            truth.iter().filter(|t| t.pattern == pattern).map(|t| (t.group.clone(), t.instrument.as_str())).collect();
        let alerted: BTreeSet<(String, &str)> =
            alerts.iter().filter(|a| a.rule == pattern).map(|a| (group(a), a.instrument.as_str())).collect();
        let found = planted.intersection(&alerted).count() as u64;
        out.insert(
            pattern.to_string(),
            PatternScore {
                expected: planted.len() as u64,
                found,
                missed: planted.len() as u64 - found,
                unexpected: alerted.difference(&planted).count() as u64,
            },
        );
    }
    out
}

/// A planted (group, instrument) key of one pattern that no alert of that
/// pattern named.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missed {
    pub rule: String,
    pub group: String,
    pub instrument: String,
    /// The planted accounts of the group on that instrument.
    pub accounts: Vec<String>,
}

/// An alerted (rule, group, instrument) key that was not planted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unexpected {
    pub rule: String,
    pub group: String,
    pub instrument: String,
    pub alerts: u64,
    pub first_seq: u64,
}

/// The keys behind `score`'s `missed` and `unexpected` counts, sorted by
/// rule, group and instrument.
pub fn misses(truth: &[TruthRow], alerts: &[AlertSeen]) -> (Vec<Missed>, Vec<Unexpected>) {
    let group = |a: &AlertSeen| if a.group.is_empty() { a.account.clone() } else { a.group.clone() };
    let alerted: BTreeSet<(&str, String, &str)> =
        alerts.iter().map(|a| (a.rule.as_str(), group(a), a.instrument.as_str())).collect();
    let mut missed: BTreeMap<(&str, &str, &str), Vec<String>> = BTreeMap::new();
    for t in truth {
        if !alerted.contains(&(t.pattern.as_str(), t.group.clone(), t.instrument.as_str())) {
            missed.entry((&t.pattern, &t.group, &t.instrument)).or_default().push(t.account.clone());
        }
    }
    let planted: BTreeSet<(&str, &str, &str)> =
        truth.iter().map(|t| (t.pattern.as_str(), t.group.as_str(), t.instrument.as_str())).collect();
    let mut unexpected: BTreeMap<(&str, String, &str), (u64, u64)> = BTreeMap::new();
    for a in alerts {
        let g = group(a);
        if !planted.contains(&(a.rule.as_str(), g.as_str(), a.instrument.as_str())) {
            let e = unexpected.entry((&a.rule, g, &a.instrument)).or_insert((0, u64::MAX));
            e.0 += 1;
            e.1 = e.1.min(a.seq);
        }
    }
    (
        missed
            .into_iter()
            .map(|((rule, group, instrument), mut accounts)| {
                accounts.sort();
                accounts.dedup();
                Missed { rule: rule.into(), group: group.into(), instrument: instrument.into(), accounts }
            })
            .collect(),
        unexpected
            .into_iter()
            .map(|((rule, group, instrument), (alerts, first_seq))| Unexpected {
                rule: rule.into(),
                group,
                instrument: instrument.into(),
                alerts,
                first_seq,
            })
            .collect(),
    )
}

/// Overall (micro-averaged) precision and recall.
pub fn overall(scores: &BTreeMap<String, PatternScore>) -> PatternScore {
    let mut total = PatternScore::default();
    for s in scores.values() {
        total.expected += s.expected;
        total.found += s.found;
        total.missed += s.missed;
        total.unexpected += s.unexpected;
    }
    total
}

/// The unmet expectations of the scenario, if any.
pub fn check_expectations(scenario: &Scenario, trial: &Trial, scores: &BTreeMap<String, PatternScore>) -> Vec<String> {
    let mut unmet = unmet_detection(scenario, scores);
    // Records made late by the bench's own feeder stalling are reported
    // (`late_after_feeder_stall`), not held against the scenario.
    if let Some(max_late) = scenario.expect.max_late
        && trial.late_held_against() > max_late
    {
        let stalled = match trial.late_after_feeder_stall {
            0 => String::new(),
            n => format!(" (and {n} after feeder stalls, not counted)"),
        };
        unmet.push(format!("{} late records, at most {max_late}{stalled}", trial.late_held_against()));
    }
    if trial.dropped() > 0 {
        unmet.push(format!("{} records dropped", trial.dropped()));
    }
    unmet
}

/// The unmet detection expectations of the scenario (recall and
/// unexpected keys per pattern), whoever ran the day: `bench`, or a test
/// replaying the scenario's tape.
pub fn unmet_detection(scenario: &Scenario, scores: &BTreeMap<String, PatternScore>) -> Vec<String> {
    let mut unmet = Vec::new();
    for (pattern, s) in scores {
        // A scenario judges the patterns it plants or names in `[expect]`;
        // another rule's alerts on its background are reported, not judged
        // (the latency scenarios plant no book abuse, and their random-walk
        // background is not a market the book rules are tuned for).
        if s.expected == 0 && !scenario.expect.names(pattern) {
            continue;
        }
        let expectation = scenario.expect.of(pattern);
        if s.recall() < expectation.min_recall {
            unmet.push(format!(
                "{pattern}: recall {:.3} below {} ({} of {} planted found)",
                s.recall(),
                expectation.min_recall,
                s.found,
                s.expected
            ));
        }
        if s.unexpected > expectation.max_unexpected {
            unmet.push(format!(
                "{pattern}: {} unexpected alert keys, at most {}",
                s.unexpected, expectation.max_unexpected
            ));
        }
    }
    unmet
}

/// For each alert, the part of its latency that the watermark imposed:
/// from the trigger's due time until a record (or idle time) moved the
/// watermark past it, by the schedule. The rest is the pipeline's own.
pub fn watermark_floor(prepared: &Prepared, alert: &AlertSeen, idle_after_ns: u64) -> Option<u64> {
    let index = alert.seq.checked_sub(1)? as usize;
    let r = prepared.records.get(index).filter(|r| r.seq == alert.seq)?;
    let lateness = prepared.scenario.lateness_ns;
    // Released once the newest event time exceeds ts + lateness; the due
    // offsets are exactly that newest event time, minus the first ts.
    let needed = (r.ts_ns + lateness - prepared.first_ts_ns).max(0) as u64;
    let j = prepared.records.partition_point(|w| w.due_ns <= needed);
    let by_record = prepared.records.get(j).map_or(u64::MAX, |w| w.due_ns);
    let by_idle = needed.saturating_add(idle_after_ns);
    Some(by_record.min(by_idle).saturating_sub(r.due_ns))
}

/// The split of alert latency: (watermark floor, pipeline) histograms.
pub fn latency_split(prepared: &Prepared, trial: &Trial, idle_after_ns: u64) -> (Histogram<u64>, Histogram<u64>) {
    let mut floor = latency_histogram();
    let mut rest = latency_histogram();
    for alert in &trial.alerts {
        if let Some(f) = watermark_floor(prepared, alert, idle_after_ns) {
            let f = f.min(alert.ingest_to_alert_ns);
            floor.saturating_record(f.max(1));
            rest.saturating_record((alert.ingest_to_alert_ns - f).max(1));
        }
    }
    (floor, rest)
}

impl Prepared {
    /// Where the phases start on the schedule: the schedule counts from
    /// the first record's event time, the phases from the day's start
    /// (`[market] start`). They differ by the opening call when there is
    /// one (open-day's call starts 15 minutes before its continuous phase).
    pub fn phases_from_ns(&self) -> u64 {
        (self.scenario.start_ns - self.first_ts_ns).max(0) as u64
    }
}

/// Achieved rate of each phase: its records over the time from its
/// scheduled start until its last record was actually sent (never less than
/// the phase's own length). A feeder held back by the pipeline stretches
/// that time. Records scheduled before the first phase (an opening call's)
/// are a row of their own, named "opening call", offered at their mean
/// scheduled rate.
pub fn per_phase(prepared: &Prepared, trial: &Trial) -> Vec<PhaseRate> {
    phase_rates(prepared, &trial.feeder.timeline, trial.start_ns)
}

/// `per_phase` from the feeder's timeline ((wall ns, records sent so far))
/// and the wall time of the first record's due time.
fn phase_rates(prepared: &Prepared, timeline: &[(u64, u64)], run_start_ns: u64) -> Vec<PhaseRate> {
    let recs = &prepared.records;
    let from_ns = prepared.phases_from_ns();
    let rate = |name: &str, start_ns: u64, duration_ns: u64, offered_rps: Option<f64>| {
        let end_ns = start_ns + duration_ns;
        let lo = recs.partition_point(|w| w.due_ns < start_ns);
        let hi = recs.partition_point(|w| w.due_ns < end_ns);
        let records = (hi - lo) as u64;
        let sent_ns = timeline
            .iter()
            .find(|&&(_, sent)| sent >= hi as u64)
            .map_or(duration_ns, |&(t, _)| t.saturating_sub(run_start_ns + start_ns));
        let took_ns = sent_ns.max(duration_ns).max(1);
        PhaseRate {
            name: name.to_string(),
            records,
            offered_rps: offered_rps.unwrap_or(records as f64 * 1e9 / duration_ns.max(1) as f64),
            achieved_rps: records as f64 * 1e9 / took_ns as f64,
            scheduled_secs: duration_ns as f64 / 1e9,
            took_secs: took_ns as f64 / 1e9,
        }
    };
    let call =
        (from_ns > 0 && prepared.scenario.opening_call.is_some()).then(|| rate("opening call", 0, from_ns, None));
    call.into_iter()
        .chain(prepared.scenario.segments.iter().map(|seg| {
            let start_ns = from_ns + seg.start_ns.max(0) as u64;
            rate(&seg.name, start_ns, seg.duration_ns.max(0) as u64, Some(seg.mean_rate()))
        }))
        .collect()
}

#[derive(Clone, Debug)]
pub struct PhaseRate {
    pub name: String,
    pub records: u64,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub scheduled_secs: f64,
    pub took_secs: f64,
}

/// One step of the `--find-max` search.
#[derive(Clone, Debug)]
pub struct FindMaxStep {
    pub rate_per_s: f64,
    pub p99_ns: u64,
    pub alerts: u64,
    pub lost: u64,
    pub passed: bool,
}

/// Highest steady rate with p99 ingest-to-alert under `bound_ns` and no
/// record lost (dropped, late or rejected): doubling from 250k/s until a
/// rate fails, then bisecting `refine` times.
pub fn find_max(
    prepared: &Prepared,
    opts: &PlayOptions,
    bound_ns: u64,
    secs: f64,
    refine: u32,
    mut on_step: impl FnMut(&FindMaxStep),
) -> Result<(Option<f64>, Vec<FindMaxStep>), String> {
    let mut steps = Vec::new();
    let mut trial_at = |rate: f64| -> Result<bool, String> {
        let trial = play_steady(prepared, opts, rate, secs)?;
        let h = &trial.summary.ingest_to_alert;
        let lost = trial.dropped() + trial.summary.late + trial.summary.feed.rejected;
        // No alert, no latency figure: that cannot pass.
        let passed = !h.is_empty() && h.value_at_quantile(0.99) < bound_ns && lost == 0;
        let step = FindMaxStep { rate_per_s: rate, p99_ns: h.value_at_quantile(0.99), alerts: h.len(), lost, passed };
        on_step(&step);
        steps.push(step);
        Ok(passed)
    };
    let (mut good, mut bad) = (None::<f64>, None::<f64>);
    let mut rate = 250_000.0;
    while bad.is_none() && rate <= 64e6 {
        if trial_at(rate)? {
            good = Some(rate);
            rate *= 2.0;
        } else {
            bad = Some(rate);
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (good, bad) {
        for _ in 0..refine {
            let mid = ((lo + hi) / 2.0 / 10_000.0).round() * 10_000.0;
            if mid <= lo || mid >= hi {
                break;
            }
            if trial_at(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        good = Some(lo);
    }
    Ok((good, steps))
}

/// Peak and current resident memory of this process, in bytes (Linux).
pub fn memory() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return (None, None) };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario's records as `prepare` would hand them over, without truth or reference data.
    fn prepared_of(scenario: Scenario, records: Vec<WireRecord>, first_ts_ns: i64) -> Prepared {
        Prepared {
            scenario,
            records,
            truth: Vec::new(),
            groups: Arc::new(Groups::default()),
            instruments: Arc::default(),
            first_ts_ns,
            max_order_id: 0,
            prepare_secs: 0.0,
        }
    }

    /// open-day (a tenth of its length) played through the live pipeline
    /// as a fast in-order feed (as scheduled, its opening call and the
    /// quiet before 09:30 would take 15 minutes): bench loads the day's
    /// instruments.csv, so marking-open, which measures the open against
    /// its previous close, is scored: every planted marker found, nothing
    /// else alerted.
    #[test]
    fn open_day_scores_marking_open_against_the_days_instruments() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let scenario = Scenario::load(&root.join("open-day.toml")).unwrap().scaled(0.1);
        let dir = tempfile::tempdir().unwrap();
        let mut prepared = prepare(&scenario, dir.path()).unwrap();
        assert!(prepared.instruments.loaded(), "the day's instruments.csv");
        for (k, w) in prepared.records.iter_mut().enumerate() {
            w.due_ns = k as u64 * 20_000;
        }
        let opts = PlayOptions {
            shards: 1,
            cores: Vec::new(),
            out_dir: dir.path().join("out"),
            idle_after_ns: None,
            rules: crate::config::Rules::load(&root.join("open-day.rules.toml")).unwrap(),
        };
        let mut trial = play(&prepared, &opts).unwrap();
        assert_eq!(trial.dropped(), 0);
        let scores = score(&prepared.truth, &trial.alerts);
        let s = &scores["marking-open"];
        assert_eq!((s.expected, s.found, s.unexpected), (3, 3, 0), "{s:?}");
        // The scenario's own [expect] holds: recall, unexpected keys, and
        // no late record (max_late = 0) but those a feeder stall made.
        assert_eq!(check_expectations(&scenario, &trial, &scores), Vec::<String>::new(), "open-day's [expect]");
        // Late records after a feeder stall are not held against max_late;
        // any others are, and the message names both.
        (trial.summary.late, trial.late_after_feeder_stall) = (3, 3);
        assert_eq!(check_expectations(&scenario, &trial, &scores), Vec::<String>::new());
        trial.summary.late = 5;
        assert_eq!(
            check_expectations(&scenario, &trial, &scores),
            ["2 late records, at most 0 (and 3 after feeder stalls, not counted)"]
        );
        trial.late_after_feeder_stall = 0;
        assert_eq!(check_expectations(&scenario, &trial, &scores), ["5 late records, at most 0"]);
    }

    /// The late file's records are laid at a feeder stall's door when the
    /// feeder sent them catching up after it, and only then.
    #[test]
    fn late_records_after_a_feeder_stall_are_found_in_the_late_file() {
        let dir = tempfile::tempdir().unwrap();
        let late = dir.path().join("late.csv");
        std::fs::write(&late, "seq,ts_ns,kind\n3,1,N\n41,2,N\n55,3,C\n71,4,N\n72,5,N\n").unwrap();
        let (tx, _rx) = wire_channel(2);
        let mut stats = feeder::run(&Playback { records: &[], start_ns: 0 }, Clock::new(), tx, 0);
        assert_eq!(late_after_stall(&late, &stats), Ok(0), "no stall, the file is not even read");
        stats.stall_seqs = vec![(10, 20), (41, 71)];
        assert_eq!(late_after_stall(&late, &stats), Ok(3), "41, 55 and 71; not 3 nor 72");
    }

    /// The phases count from the day's start (`[market] start`), the
    /// schedule from the first record, an opening call's: each phase gets
    /// its own records, and the call a row of its own. (The continuous
    /// phase used to be measured over the call's first second: 1 record,
    /// printed as "0.0k/s".)
    #[test]
    fn phases_after_an_opening_call_are_measured_over_their_own_records() {
        let scenario = Scenario::parse(
            "phases = [ { name = \"morning\", rate = 1000, for = \"1s\" } ]\n[market]\nopening_call = [\"09:15:00\", \"09:25:00\"]\nstart = \"09:30:00\"\n",
        )
        .unwrap();
        let (call_ns, start_ns) = (scenario.opening_call.unwrap().0, scenario.start_ns);
        let s = 1_000_000_000i64;
        // 100 records in the call, 1 s apart; 1000 in the phase, 1 ms apart.
        let ts = (0..100).map(|k| call_ns + k * s).chain((0..1000).map(|k| start_ns + k * s / 1000));
        let records: Vec<WireRecord> = ts
            .enumerate()
            .map(|(i, ts_ns)| WireRecord {
                seq: i as u64 + 1,
                ts_ns,
                due_ns: (ts_ns - call_ns) as u64,
                ..WireRecord::default()
            })
            .collect();
        // Sent on time: the timeline has every send.
        let run_start_ns = 7 * s as u64;
        let timeline: Vec<(u64, u64)> =
            records.iter().enumerate().map(|(i, w)| (run_start_ns + w.due_ns, i as u64 + 1)).collect();
        let prepared = prepared_of(scenario, records, call_ns);
        assert_eq!(prepared.phases_from_ns(), 15 * 60 * s as u64);
        let rows = phase_rates(&prepared, &timeline, run_start_ns);
        let got: Vec<(&str, u64, f64, f64)> =
            rows.iter().map(|p| (p.name.as_str(), p.records, p.scheduled_secs, p.took_secs)).collect();
        assert_eq!(got, [("opening call", 100, 900.0, 900.0), ("morning", 1000, 1.0, 1.0)]);
        let morning = &rows[1];
        assert_eq!((morning.offered_rps, morning.achieved_rps), (1000.0, 1000.0));
        assert!((rows[0].offered_rps - 100.0 / 900.0).abs() < 1e-9, "{}", rows[0].offered_rps);
    }

    fn alert(rule: &str, account: &str, instrument: &str, seq: u64, latency_ns: u64) -> AlertSeen {
        AlertSeen {
            rule: rule.into(),
            group: account.into(),
            account: account.into(),
            instrument: instrument.into(),
            seq,
            ingest_to_alert_ns: latency_ns,
            ingest_to_applied_ns: latency_ns,
            at_ns: 0,
        }
    }

    fn row(account: &str, group: &str, pattern: &str, instrument: &str) -> TruthRow {
        TruthRow {
            account: account.into(),
            group: group.into(),
            pattern: pattern.into(),
            instrument: instrument.into(),
        }
    }

    /// Any rule name is scored; a group's alert finds an actor whichever
    /// of its accounts it names, and a group alerted twice counts once.
    #[test]
    fn scoring_is_by_rule_name_and_group() {
        let truth = vec![
            row("A1", "G7", "spoofing", "000001"),
            row("A2", "A2", "layering", "000002"),
            row("A3", "A3", "momentum-ignition", "000003"),
        ];
        let partner = AlertSeen { group: "G7".into(), ..alert("spoofing", "A9", "000001", 3, 1) };
        let again = AlertSeen { group: "G7".into(), ..alert("spoofing", "A1", "000001", 4, 1) };
        let alerts = [partner, again, alert("layering", "A5", "000002", 5, 1), alert("new-rule", "A6", "000004", 6, 1)];
        let scores = score(&truth, &alerts);
        let keys: Vec<&str> = scores.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["excessive-cancel", "layering", "momentum-ignition", "new-rule", "self-trade", "spoofing"],
            "planted, alerted and base patterns"
        );
        let s = |p: &str| {
            let s = &scores[p];
            (s.expected, s.found, s.missed, s.unexpected)
        };
        assert_eq!(s("spoofing"), (1, 1, 0, 0));
        assert_eq!(s("layering"), (1, 0, 1, 1));
        assert_eq!(s("momentum-ignition"), (1, 0, 1, 0));
        assert_eq!(s("new-rule"), (0, 0, 0, 1));
        assert_eq!(scores["new-rule"].precision(), 0.0);
        assert_eq!(scores["momentum-ignition"].recall(), 0.0);
    }

    #[test]
    fn scoring_counts_found_missed_and_unexpected_keys() {
        let truth: Vec<TruthRow> = [
            ("A1", "excessive-cancel", "000001"),
            ("A2", "excessive-cancel", "000002"),
            ("A3", "self-trade", "000003"),
        ]
        .iter()
        .map(|(a, p, i)| row(a, a, p, i))
        .collect();
        let alerts = [
            alert("excessive-cancel", "A1", "000001", 5, 1),
            // A second alert for a found key counts once.
            alert("excessive-cancel", "A1", "000001", 9, 1),
            // The right account on another instrument is not a find.
            alert("excessive-cancel", "A2", "000009", 7, 1),
            alert("self-trade", "A3", "000003", 8, 1),
            alert("self-trade", "A9", "000003", 8, 1),
        ];
        let scores = score(&truth, &alerts);
        let ec = &scores["excessive-cancel"];
        assert_eq!((ec.expected, ec.found, ec.missed, ec.unexpected), (2, 1, 1, 1));
        assert_eq!((ec.recall(), ec.precision()), (0.5, 0.5));
        let st = &scores["self-trade"];
        assert_eq!((st.expected, st.found, st.missed, st.unexpected), (1, 1, 0, 1));
        let all = overall(&scores);
        assert_eq!((all.expected, all.found, all.unexpected), (3, 2, 2));
        // The keys behind the counts.
        let (missed, unexpected) = misses(&truth, &alerts);
        assert_eq!(
            missed,
            [Missed {
                rule: "excessive-cancel".into(),
                group: "A2".into(),
                instrument: "000002".into(),
                accounts: vec!["A2".into()]
            }]
        );
        let keys: Vec<(&str, &str, &str, u64, u64)> = unexpected
            .iter()
            .map(|u| (u.rule.as_str(), u.group.as_str(), u.instrument.as_str(), u.alerts, u.first_seq))
            .collect();
        assert_eq!(keys, [("excessive-cancel", "A2", "000009", 1, 7), ("self-trade", "A9", "000003", 1, 8)]);
        assert_eq!(missed.len() as u64, all.missed);
        assert_eq!(unexpected.len() as u64, all.unexpected);
        let none = score(&[], &[]);
        assert_eq!((none["self-trade"].recall(), none["self-trade"].precision()), (1.0, 1.0));
    }

    /// The watermark floor of an in-order record is the wait for the first
    /// record more than the bound newer, or the idle period when the feed
    /// goes quiet first.
    #[test]
    fn watermark_floor_follows_the_schedule() {
        let scenario =
            Scenario::parse("phases = [ { rate = 10, for = \"1s\" } ]\n[pipeline]\nlateness = \"1ms\"\n").unwrap();
        let ms = 1_000_000i64;
        // Records at 0, 0.5, 2, 100 ms (in order: due = ts - first ts).
        let records: Vec<WireRecord> = [0, ms / 2, 2 * ms, 100 * ms]
            .iter()
            .enumerate()
            .map(|(i, &t)| WireRecord {
                seq: i as u64 + 1,
                ts_ns: 1_000 + t,
                due_ns: t as u64,
                ..WireRecord::default()
            })
            .collect();
        let prepared = prepared_of(scenario, records, 1_000);
        let floor = |seq| watermark_floor(&prepared, &alert("self-trade", "A", "I", seq, 0), 10 * ms as u64);
        assert_eq!(floor(1), Some(2 * ms as u64), "released by the record at 2 ms");
        assert_eq!(floor(2), Some(3 * ms as u64 / 2), "0.5 ms: released by the record at 2 ms too");
        assert_eq!(floor(3), Some(11 * ms as u64), "2 ms: quiet until 100 ms, so the idle period (1 + 10 ms)");
        assert_eq!(floor(4), Some(11 * ms as u64), "the last record: idle");
        assert_eq!(floor(9), None, "not a record of this day");
    }
}
