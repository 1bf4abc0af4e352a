//! Scenario files (`scenarios/*.toml`): a market day described in one
//! readable file (the market, the rate profile, the abuse to plant, what
//! must be found), in two layers like the rules file: raw serde structs as
//! written (unknown fields rejected, values kept with their spans), then a
//! validated `Scenario`. Value problems are all collected and reported
//! together, each with its line and field; a TOML syntax error or an unknown
//! field stops the parse at that line (serde's `deny_unknown_fields`).
//!
//! A scenario drives both `tapewatch gen --scenario` (the tape, through
//! `generator::Shape`) and `tapewatch bench` (the same records, paced).
//! `scenarios/README.md` documents every field.

use crate::config::{MS, line_of, toml_error};
use crate::generator::{ActorPlan, BookFlow, GenConfig, PlantPattern, Shape};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

/// The first record's event time: 2026-11-02 09:30 Asia/Shanghai, the
/// FEED.md example's morning open.
pub const DAY_START_NS: i64 = 1_793_583_000_000_000_000;
const SEC: i64 = 1_000_000_000;
const US: i64 = 1_000;

/// Records a profile offers over its day.
fn offered_records(segments: &[Segment]) -> f64 {
    segments.iter().map(|s| s.mean_rate() * s.duration_ns as f64 / SEC as f64).sum()
}

/// The stated size limits, checked on a scenario file and again after `--scale`.
fn size_problems(span_ns: i64, records: f64) -> Vec<String> {
    let mut problems = Vec::new();
    if span_ns > MAX_SPAN_NS {
        problems.push(format!("phases: the day lasts {} s, at most {} s", span_ns / SEC, MAX_SPAN_NS / SEC));
    }
    if records > MAX_RECORDS {
        problems.push(format!("phases: {records:.0} records, at most {MAX_RECORDS:.0}"));
    }
    problems
}

/// Stated limits: beyond them a scenario is a typo, not a market.
const MAX_RATE: f64 = 50_000_000.0;
const MAX_SPAN_NS: i64 = 3_600 * SEC;
const MAX_RECORDS: f64 = 200_000_000.0;
/// The excessive-cancel rule's window that a planted burst must fit in.
const RULE_WINDOW_NS: i64 = 10 * SEC;
/// The patterns `[[abuse]]` can plant: the rules' JSON names.
const PATTERNS: &str = "excessive-cancel, self-trade, spoofing, layering, momentum-ignition, ramping, marking-close, marking-open, wash-trade, quote-stuffing or instant-cancel";
/// The patterns `[expect]` takes a table for (the rules' JSON names).
const EXPECTED: [&str; 11] = [
    "excessive-cancel",
    "self-trade",
    "spoofing",
    "layering",
    "momentum-ignition",
    "ramping",
    "marking-close",
    "marking-open",
    "wash-trade",
    "quote-stuffing",
    "instant-cancel",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Spanned<String>>,
    description: Option<String>,
    seed: Option<Spanned<i64>>,
    rules: Option<String>,
    #[serde(default)]
    market: RawMarket,
    #[serde(default)]
    flow: RawFlow,
    #[serde(default)]
    pipeline: RawPipeline,
    phases: Option<Spanned<Vec<Spanned<RawPhase>>>>,
    #[serde(default)]
    abuse: Vec<Spanned<RawAbuse>>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMarket {
    instruments: Option<Spanned<i64>>,
    price_levels: Option<Spanned<i64>>,
    tick: Option<Spanned<f64>>,
    accounts: Option<Spanned<i64>>,
    account_skew: Option<Spanned<f64>>,
    instrument_skew: Option<Spanned<f64>>,
    grouped_share: Option<Spanned<f64>>,
    hot: Option<Spanned<RawHot>>,
    market_makers: Option<Spanned<i64>>,
    maker_instruments: Option<Spanned<i64>>,
    maker_refresh: Option<Spanned<[String; 2]>>,
    maker_size: Option<Spanned<[i64; 2]>>,
    institutions: Option<Spanned<i64>>,
    institution_size: Option<Spanned<[i64; 2]>>,
    institution_hold: Option<Spanned<[String; 2]>>,
    institution_pause: Option<Spanned<[String; 2]>>,
    start: Option<Spanned<String>>,
    closing_call: Option<Spanned<[String; 2]>>,
    opening_call: Option<Spanned<[String; 2]>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHot {
    share: Option<Spanned<f64>>,
    accounts: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    new: Option<Spanned<f64>>,
    cancel: Option<Spanned<f64>>,
    trade: Option<Spanned<f64>>,
    lot: Option<Spanned<i64>>,
    resting_size_doublings: Option<Spanned<i64>>,
    marketable_size_doublings: Option<Spanned<i64>>,
    min_cancel_delay: Option<Spanned<String>>,
    late_share: Option<Spanned<f64>>,
    late_by: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    lateness: Option<Spanned<String>>,
    idle_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: Option<String>,
    rate: Option<Spanned<f64>>,
    from: Option<Spanned<f64>>,
    to: Option<Spanned<f64>>,
    #[serde(rename = "for")]
    duration: Option<Spanned<String>>,
    repeat: Option<Spanned<i64>>,
    every: Option<Spanned<String>>,
    base: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbuse {
    pattern: Option<Spanned<String>>,
    actors: Option<Spanned<i64>>,
    orders: Option<Spanned<[i64; 2]>>,
    gap: Option<Spanned<[String; 2]>>,
    cancel_after: Option<Spanned<[String; 2]>>,
    trades: Option<Spanned<[i64; 2]>>,
    paired: Option<bool>,
    at: Option<Spanned<[String; 2]>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(rename = "excessive-cancel")]
    excessive_cancel: Option<RawExpectation>,
    #[serde(rename = "self-trade")]
    self_trade: Option<RawExpectation>,
    spoofing: Option<RawExpectation>,
    layering: Option<RawExpectation>,
    #[serde(rename = "momentum-ignition")]
    momentum_ignition: Option<RawExpectation>,
    ramping: Option<RawExpectation>,
    #[serde(rename = "marking-close")]
    marking_close: Option<RawExpectation>,
    #[serde(rename = "marking-open")]
    marking_open: Option<RawExpectation>,
    #[serde(rename = "wash-trade")]
    wash_trade: Option<RawExpectation>,
    #[serde(rename = "quote-stuffing")]
    quote_stuffing: Option<RawExpectation>,
    #[serde(rename = "instant-cancel")]
    instant_cancel: Option<RawExpectation>,
    max_late: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    min_recall: Option<Spanned<f64>>,
    max_unexpected: Option<Spanned<i64>>,
}

/// A validated scenario. Times are nanoseconds; rates records per second.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub instruments: u32,
    pub accounts: u32,
    pub price_levels: u32,
    pub tick_px: i64,
    pub account_skew: f64,
    pub instrument_skew: f64,
    pub grouped_share: f64,
    pub hot: Option<(f64, u32)>,
    /// Market makers and institutions (none unless `[market]` asks).
    pub book_flow: BookFlow,
    pub cancel_share: f64,
    pub trade_share: f64,
    pub lot: u64,
    pub resting_doublings: u64,
    pub marketable_doublings: u64,
    pub min_cancel_delay_ns: i64,
    pub late_share: f64,
    pub late_by_ns: i64,
    pub lateness_ns: i64,
    pub idle_after_ns: i64,
    /// The rate profile, phases expanded (repeats unrolled).
    pub segments: Vec<Segment>,
    pub abuse: Vec<Abuse>,
    pub expect: Expect,
    /// Event time of the first record (epoch ns): `[market] start`, by
    /// default 09:30 of 2026-11-02 (`DAY_START_NS`).
    pub start_ns: i64,
    /// The closing call auction, epoch ns `[start, end)` (`[market]
    /// closing_call`); the continuous day must end before it.
    pub closing_call: Option<(i64, i64)>,
    /// The opening call auction, epoch ns `[start, end)` (`[market]
    /// opening_call`); the continuous day starts at or after its end.
    pub opening_call: Option<(i64, i64)>,
    /// The rules file `bench` runs with (`rules`, relative to the scenario
    /// file); the default rules without one.
    pub rules: Option<String>,
}

/// One stretch of the rate profile: `rate_from` to `rate_to` (equal when
/// steady) over `[start_ns, start_ns + duration_ns)` from the day's start.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub rate_from: f64,
    pub rate_to: f64,
}

impl Segment {
    pub fn end_ns(&self) -> i64 {
        self.start_ns + self.duration_ns
    }

    /// Mean offered rate over the segment.
    pub fn mean_rate(&self) -> f64 {
        (self.rate_from + self.rate_to) / 2.0
    }
}

#[derive(Clone, Debug)]
pub struct Abuse {
    pub pattern: PlantPattern,
    pub actors: u32,
    /// Start window, offsets from the day's start (scaled with the day).
    pub from_ns: i64,
    pub to_ns: i64,
}

/// What a run must find, per pattern (keyed by the rule's JSON name), and
/// how many late records it may see.
#[derive(Clone, Debug, PartialEq)]
pub struct Expect {
    /// Every pattern the file names in `[expect]`; any other pattern gets
    /// `Expectation::default()`.
    pub patterns: BTreeMap<String, Expectation>,
    pub max_late: Option<u64>,
}

impl Expect {
    pub fn of(&self, pattern: &str) -> Expectation {
        self.patterns.get(pattern).copied().unwrap_or_default()
    }

    /// Whether the scenario states an expectation for `pattern`.
    pub fn names(&self, pattern: &str) -> bool {
        self.patterns.contains_key(pattern)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Expectation {
    /// Share of the planted actors that must be alerted on.
    pub min_recall: f64,
    /// Alerted (account, instrument) keys that were not planted, at most.
    pub max_unexpected: u64,
}

impl Default for Expectation {
    /// Deterministic patterns: everything planted is found, nothing else.
    fn default() -> Expectation {
        Expectation { min_recall: 1.0, max_unexpected: 0 }
    }
}

/// Parses a duration: a number and a unit, `ns`, `us`, `ms`, `s` or `m`
/// (`"30s"`, `"0.5ms"`, `"2m"`). Never negative.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.trim().is_empty() {
        return Err(format!("`{text}` is not a duration like \"30s\""));
    }
    let unit_ns = match unit {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "" => return Err(format!("`{text}` has no unit (ns, us, ms, s or m)")),
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ns, us, ms, s or m)")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("`{text}` is not a duration like \"30s\""))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{text}` is negative"));
    }
    let ns = value * unit_ns;
    if ns > 1e15 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(ns.round() as i64)
}

/// Collects problems as `line N: field: message`.
struct Problems<'a> {
    text: &'a str,
    list: Vec<String>,
}

impl Problems<'_> {
    fn at<T>(&mut self, value: &Spanned<T>, field: &str, message: impl std::fmt::Display) {
        self.list.push(format!("line {}: {field}: {message}", line_of(self.text, value.span().start)));
    }

    /// The value if set and inside `range`; otherwise a problem naming the
    /// line and field, and the default so checking can go on.
    fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
        &mut self,
        value: Option<Spanned<T>>,
        field: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> T {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.at(&v, field, format!("{} is out of range {}..={}", v.get_ref(), range.start(), range.end()));
                default
            }
        }
    }

    fn duration(&mut self, value: &Spanned<String>, field: &str) -> Option<i64> {
        match parse_duration(value.get_ref()) {
            Ok(ns) => Some(ns),
            Err(e) => {
                self.at(value, field, e);
                None
            }
        }
    }

    fn duration_or(&mut self, value: Option<Spanned<String>>, field: &str, default: i64) -> i64 {
        value.and_then(|v| self.duration(&v, field)).unwrap_or(default)
    }

    /// A `[lo, hi]` pair of durations with lo <= hi.
    fn duration_range(&mut self, value: Option<Spanned<[String; 2]>>, field: &str, default: (i64, i64)) -> (i64, i64) {
        let Some(value) = value else { return default };
        let [lo, hi] = value.get_ref();
        let (Ok(lo), Ok(hi)) = (parse_duration(lo), parse_duration(hi)) else {
            let bad = [lo, hi].into_iter().find_map(|d| parse_duration(d).err()).unwrap_or_default();
            self.at(&value, field, bad);
            return default;
        };
        if lo > hi {
            self.at(&value, field, "the first bound is above the second");
            return default;
        }
        (lo, hi)
    }

    fn int_range(
        &mut self,
        value: Option<Spanned<[i64; 2]>>,
        field: &str,
        limit: std::ops::RangeInclusive<i64>,
        default: (u32, u32),
    ) -> (u32, u32) {
        let Some(value) = value else { return default };
        let [lo, hi] = *value.get_ref();
        if !(limit.contains(&lo) && limit.contains(&hi) && lo <= hi) {
            self.at(
                &value,
                field,
                format!("[{lo}, {hi}] must be ascending within {}..={}", limit.start(), limit.end()),
            );
            return default;
        }
        (lo as u32, hi as u32)
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        crate::config::load_file(path, "scenario", Scenario::parse)
    }

    pub fn parse(text: &str) -> Result<Scenario, Vec<String>> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
        let mut p = Problems { text, list: Vec::new() };
        let name = raw.name.map(|n| n.into_inner()).unwrap_or_else(|| "scenario".to_string());
        let seed = p.ranged(raw.seed, "seed", 0..=i64::MAX, 1) as u64;

        let m = raw.market;
        let instruments = p.ranged(m.instruments, "market.instruments", 1..=100_000, 500) as u32;
        let accounts = p.ranged(m.accounts, "market.accounts", 100..=10_000_000, 20_000) as u32;
        let price_levels = p.ranged(m.price_levels, "market.price_levels", 1..=64, 12) as u32;
        let tick = p.ranged(m.tick, "market.tick", 0.0001..=10.0, 0.01);
        let tick_px = (tick * 10_000.0).round() as i64;
        let account_skew = p.ranged(m.account_skew, "market.account_skew", 0.01..=1e9, 4.0);
        let instrument_skew = p.ranged(m.instrument_skew, "market.instrument_skew", 0.01..=1e9, 2.0);
        let grouped_share = p.ranged(m.grouped_share, "market.grouped_share", 0.0..=0.5, 0.05);
        let hot = m.hot.map(|hot| {
            let span = hot.span();
            let hot = hot.into_inner();
            if hot.share.is_none() || hot.accounts.is_none() {
                p.at(&Spanned::new(span, ()), "market.hot", "needs both `share` and `accounts`");
            }
            let share = p.ranged(hot.share, "market.hot.share", 0.0..=0.9, 0.5);
            let hot_accounts = p.ranged(hot.accounts, "market.hot.accounts", 2..=1_000, 5) as u32;
            (share, hot_accounts)
        });
        let d = BookFlow::default();
        let lots = |p: &mut Problems, v, field: &str, default: (u64, u64)| {
            let (lo, hi) = p.int_range(v, field, 1..=100_000, (default.0 as u32, default.1 as u32));
            (u64::from(lo), u64::from(hi))
        };
        let positive = |p: &mut Problems, v: Option<Spanned<[String; 2]>>, field: &str, default: (i64, i64)| {
            let line = v.as_ref().map(|v| Spanned::new(v.span(), ()));
            let range = p.duration_range(v, field, default);
            if range.0 == 0 {
                if let Some(line) = line {
                    p.at(&line, field, "must be above 0");
                }
                return default;
            }
            range
        };
        let book_flow = BookFlow {
            market_makers: p.ranged(m.market_makers, "market.market_makers", 0..=10_000, 0) as u32,
            maker_instruments: p.ranged(m.maker_instruments, "market.maker_instruments", 1..=100, 2) as u32,
            maker_refresh_ns: positive(&mut p, m.maker_refresh, "market.maker_refresh", d.maker_refresh_ns),
            maker_lots: lots(&mut p, m.maker_size, "market.maker_size", d.maker_lots),
            institutions: p.ranged(m.institutions, "market.institutions", 0..=10_000, 0) as u32,
            institution_lots: lots(&mut p, m.institution_size, "market.institution_size", d.institution_lots),
            institution_hold_ns: positive(&mut p, m.institution_hold, "market.institution_hold", d.institution_hold_ns),
            institution_pause_ns: positive(
                &mut p,
                m.institution_pause,
                "market.institution_pause",
                d.institution_pause_ns,
            ),
        };

        // Times of day on the scenario's date (Asia/Shanghai).
        let day = crate::detect::state::episode::day_of(DAY_START_NS);
        let time_of_day = |p: &mut Problems, v: &Spanned<String>, field: &str| {
            let tod = crate::detect::state::episode::parse_time_of_day(v.get_ref());
            if tod.is_none() {
                p.at(v, field, format!("{:?} is not a time of day HH:MM[:SS] (Asia/Shanghai)", v.get_ref()));
            }
            tod.map(|tod| crate::detect::state::episode::at(day, tod))
        };
        let start_ns = m.start.as_ref().and_then(|v| time_of_day(&mut p, v, "market.start")).unwrap_or(DAY_START_NS);
        let call = |p: &mut Problems, v: &Option<Spanned<[String; 2]>>, field: &str| {
            let v = v.as_ref()?;
            let [from, to] = v.get_ref();
            let from = time_of_day(p, &Spanned::new(v.span(), from.clone()), field)?;
            let to = time_of_day(p, &Spanned::new(v.span(), to.clone()), field)?;
            if from >= to {
                p.at(v, field, "the call must start before it ends");
                return None;
            }
            Some((from, to))
        };
        let closing_call = call(&mut p, &m.closing_call, "market.closing_call");
        let opening_call = call(&mut p, &m.opening_call, "market.opening_call");
        let call_line = m.closing_call.as_ref().map(|v| Spanned::new(v.span(), ()));
        if let (Some((_, call_end)), Some(v)) = (opening_call, &m.opening_call)
            && start_ns < call_end
        {
            p.at(v, "market.opening_call", "the call must end by the day's start (market.start)");
        }

        let f = raw.flow;
        let flow_line = f.new.as_ref().or(f.cancel.as_ref()).or(f.trade.as_ref()).map(|s| s.span());
        let new_share = p.ranged(f.new, "flow.new", 0.1..=1.0, 0.5);
        let cancel_share = p.ranged(f.cancel, "flow.cancel", 0.001..=0.8, 0.3);
        let trade_share = p.ranged(f.trade, "flow.trade", 0.001..=0.8, 0.2);
        if (new_share + cancel_share + trade_share - 1.0).abs() > 0.01
            && let Some(span) = flow_line
        {
            p.at(
                &Spanned::new(span, ()),
                "flow",
                format!("new + cancel + trade = {} must be 1", new_share + cancel_share + trade_share),
            );
        }
        let lot = p.ranged(f.lot, "flow.lot", 1..=1_000_000, 100) as u64;
        let resting_doublings = p.ranged(f.resting_size_doublings, "flow.resting_size_doublings", 0..=20, 5) as u64;
        let marketable_doublings =
            p.ranged(f.marketable_size_doublings, "flow.marketable_size_doublings", 0..=20, 3) as u64;
        let min_cancel_delay_ns = p.duration_or(f.min_cancel_delay, "flow.min_cancel_delay", 0);
        let late_share = p.ranged(f.late_share, "flow.late_share", 0.0..=0.5, 0.0);
        let late_by_ns = match &f.late_by {
            Some(v) => match p.duration(v, "flow.late_by") {
                Some(ns) if ns < US && late_share > 0.0 => {
                    p.at(v, "flow.late_by", "at least 1us when late_share > 0");
                    US
                }
                Some(ns) => ns.max(US),
                None => US,
            },
            None => MS,
        };

        let lateness_ns = p.duration_or(raw.pipeline.lateness, "pipeline.lateness", MS);
        let idle_after_ns = p.duration_or(raw.pipeline.idle_after, "pipeline.idle_after", 10 * MS);

        let problems_before_phases = p.list.len();
        let segments = match raw.phases {
            None => {
                p.list.push("phases: missing: a scenario needs at least one phase, e.g. phases = [ { rate = 5000, for = \"30s\" } ]".to_string());
                Vec::new()
            }
            Some(phases) if phases.get_ref().is_empty() => {
                p.at(&phases, "phases", "needs at least one phase");
                Vec::new()
            }
            Some(phases) => expand_phases(&mut p, phases.into_inner()),
        };
        let span_ns = segments.last().map_or(0, Segment::end_ns);
        if let (Some((call_start, _)), Some(line)) = (closing_call, &call_line)
            && start_ns + span_ns > call_start
        {
            p.at(line, "market.closing_call", "the phases must end before the call starts (market.start + phases)");
        }
        let records = offered_records(&segments);
        p.list.extend(size_problems(span_ns, records));
        if !segments.is_empty() && records < 1.0 && p.list.len() == problems_before_phases {
            p.list.push("phases: the profile offers no records (every rate is 0)".to_string());
        }

        let mut abuse = Vec::new();
        for (index, entry) in raw.abuse.into_iter().enumerate() {
            let span = entry.span();
            let here = Spanned::new(span, ());
            let a = entry.into_inner();
            let field = |name: &str| format!("abuse[{index}].{name}");
            let actors = match &a.actors {
                None => {
                    p.at(&here, &field("actors"), "missing: a pattern needs at least one actor");
                    0
                }
                Some(v) if *v.get_ref() < 1 || *v.get_ref() > 10_000 => {
                    p.at(v, &field("actors"), format!("{} is out of range 1..=10000", v.get_ref()));
                    0
                }
                Some(v) => *v.get_ref() as u32,
            };
            let has_at = a.at.is_some();
            let window = p.duration_range(a.at, &field("at"), (0, span_ns.max(1)));
            let pattern = match a.pattern.as_ref().map(|s| s.get_ref().as_str()) {
                Some("excessive-cancel") => {
                    let orders = p.int_range(a.orders, &field("orders"), 1..=10_000, (25, 35));
                    let gap_ns = p.duration_range(a.gap, &field("gap"), (10 * MS, 50 * MS));
                    let cancel_ns = p.duration_range(a.cancel_after, &field("cancel_after"), (50 * MS, 500 * MS));
                    // The whole burst must fit the rule's window, or the
                    // planted actor would not be an excessive canceller.
                    let longest = i64::from(orders.1.saturating_sub(1)) * gap_ns.1 + cancel_ns.1;
                    if longest >= RULE_WINDOW_NS {
                        p.at(
                            &here,
                            &field("gap"),
                            format!("a burst may span {} ms, over the rule's 10 s window", longest / MS),
                        );
                    }
                    if orders.0 < 20 {
                        p.at(&here, &field("orders"), "fewer than the rule's 20 cancels cannot be detected");
                    }
                    if a.trades.is_some() || a.paired.is_some() {
                        p.at(&here, &field("trades"), "`trades` and `paired` belong to self-trade");
                    }
                    Some(PlantPattern::ExcessiveCancel { orders, gap_ns, cancel_ns })
                }
                Some("self-trade") => {
                    let trades = p.int_range(a.trades, &field("trades"), 1..=1_000, (1, 3));
                    let gap_ns = p.duration_range(a.gap, &field("gap"), (100 * MS, SEC));
                    if a.orders.is_some() || a.cancel_after.is_some() {
                        p.at(&here, &field("orders"), "`orders` and `cancel_after` belong to excessive-cancel");
                    }
                    Some(PlantPattern::SelfTrade { trades, gap_ns, paired: a.paired.unwrap_or(false) })
                }
                Some(name @ ("spoofing" | "layering" | "momentum-ignition")) => {
                    // Their timings follow the live book and the pattern's
                    // published shape, not the file.
                    if a.orders.is_some() || a.cancel_after.is_some() || a.trades.is_some() || a.gap.is_some() {
                        p.at(&here, &field("pattern"), format!("{name} takes only `actors`, `at` and `paired`"));
                    }
                    let paired = a.paired.unwrap_or(false);
                    Some(match name {
                        "spoofing" => PlantPattern::Spoofing { paired },
                        "layering" => PlantPattern::Layering { paired },
                        _ => PlantPattern::MomentumIgnition { paired },
                    })
                }
                Some(
                    name @ ("ramping" | "marking-close" | "marking-open" | "wash-trade" | "quote-stuffing"
                    | "instant-cancel"),
                ) => {
                    // Their shapes follow the published rule text and the
                    // live book, not the file (src/gen.rs, PlantPattern).
                    if a.orders.is_some() || a.cancel_after.is_some() || a.trades.is_some() || a.gap.is_some() {
                        p.at(&here, &field("pattern"), format!("{name} takes only `actors`, `at` and `paired`"));
                    }
                    let paired = a.paired.unwrap_or(false);
                    if a.paired.is_some() && matches!(name, "wash-trade" | "quote-stuffing") {
                        p.at(
                            &here,
                            &field("paired"),
                            format!("{name} takes no `paired` (wash trades always use two accounts, stuffing one)"),
                        );
                    }
                    for (marking, call, table, which) in [
                        ("marking-close", closing_call, "closing_call", "closing"),
                        ("marking-open", opening_call, "opening_call", "opening"),
                    ] {
                        if name != marking {
                            continue;
                        }
                        if call.is_none() {
                            p.at(&here, &field("pattern"), format!("{name} needs `[market] {table}`"));
                        }
                        if has_at {
                            p.at(&here, &field("at"), format!("{name} acts in the {which} call: it takes no `at`"));
                        }
                    }
                    Some(match name {
                        "ramping" => PlantPattern::Ramping { paired },
                        "marking-close" => PlantPattern::MarkingClose { paired },
                        "marking-open" => PlantPattern::MarkingOpen { paired },
                        "wash-trade" => PlantPattern::WashTrade,
                        "quote-stuffing" => PlantPattern::QuoteStuffing,
                        _ => PlantPattern::InstantCancel { paired },
                    })
                }
                Some(other) => {
                    let v = a.pattern.as_ref().expect("matched Some");
                    p.at(v, &field("pattern"), format!("unknown pattern `{other}` ({PATTERNS})"));
                    None
                }
                None => {
                    p.at(&here, &field("pattern"), format!("missing ({PATTERNS})"));
                    None
                }
            };
            if let Some(pattern) = pattern
                && actors > 0
            {
                abuse.push(Abuse { pattern, actors, from_ns: window.0, to_ns: window.1 });
            }
        }
        let planted_accounts: u64 =
            abuse.iter().map(|a| u64::from(a.actors) * u64::from(a.pattern.accounts())).sum::<u64>()
                + book_flow.accounts();
        if planted_accounts > u64::from(accounts / 2) {
            p.list.push(format!(
                "abuse: {planted_accounts} planted, maker and institution accounts, at most half of market.accounts ({accounts})"
            ));
        }

        let mut expectation = |raw: Option<RawExpectation>, pattern: &str| {
            let raw = raw.unwrap_or(RawExpectation { min_recall: None, max_unexpected: None });
            Expectation {
                min_recall: p.ranged(raw.min_recall, &format!("expect.{pattern}.min_recall"), 0.0..=1.0, 1.0),
                max_unexpected: p.ranged(
                    raw.max_unexpected,
                    &format!("expect.{pattern}.max_unexpected"),
                    0..=i64::MAX,
                    0,
                ) as u64,
            }
        };
        let e = raw.expect;
        let mut patterns = BTreeMap::new();
        let tables = [
            e.excessive_cancel,
            e.self_trade,
            e.spoofing,
            e.layering,
            e.momentum_ignition,
            e.ramping,
            e.marking_close,
            e.marking_open,
            e.wash_trade,
            e.quote_stuffing,
            e.instant_cancel,
        ];
        for (pattern, raw) in EXPECTED.into_iter().zip(tables) {
            if raw.is_some() {
                patterns.insert(pattern.to_string(), expectation(raw, pattern));
            }
        }
        let max_late = e.max_late.map(|v| p.ranged(Some(v), "expect.max_late", 0..=i64::MAX, 0) as u64);

        if !p.list.is_empty() {
            // In file order; problems without a line (whole-file ones) last.
            let line = |p: &String| -> usize {
                p.strip_prefix("line ")
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX)
            };
            p.list.sort_by_key(line);
            return Err(p.list);
        }
        Ok(Scenario {
            name,
            description: raw.description.unwrap_or_default(),
            seed,
            instruments,
            accounts,
            price_levels,
            tick_px,
            account_skew,
            instrument_skew,
            grouped_share,
            hot,
            book_flow,
            cancel_share,
            trade_share,
            lot,
            resting_doublings,
            marketable_doublings,
            min_cancel_delay_ns,
            late_share,
            late_by_ns,
            lateness_ns,
            idle_after_ns,
            segments,
            abuse,
            expect: Expect { patterns, max_late },
            start_ns,
            closing_call,
            opening_call,
            rules: raw.rules,
        })
    }

    /// The profile with every phase's length (and every abuse window)
    /// multiplied by `scale`; rates and the planted patterns' own timings
    /// stay as written, so a scaled day has the same bursts, only shorter.
    /// The scenario stretched in time by `scale`; refused when the scaled
    /// day breaks the same limits as a scenario file (every allocation the
    /// run makes is sized from them: `bench --scale 100` once aborted on a
    /// 6 GB allocation).
    pub fn scaled_within_limits(&self, scale: f64) -> Result<Scenario, String> {
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(format!("--scale {scale}: must be a positive number"));
        }
        let s = self.scaled(scale);
        let problems = size_problems(s.span_ns(), offered_records(&s.segments));
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(format!("--scale {scale}: the scaled scenario breaks a limit: {}", problems.join("; ")))
        }
    }

    pub fn scaled(&self, scale: f64) -> Scenario {
        assert!(scale > 0.0 && scale.is_finite());
        let mut s = self.clone();
        let at = |ns: i64| (ns as f64 * scale).round() as i64;
        for seg in &mut s.segments {
            let end_ns = at(seg.end_ns());
            seg.start_ns = at(seg.start_ns);
            seg.duration_ns = end_ns.max(seg.start_ns + 1) - seg.start_ns;
        }
        // Rounding must keep the segments back to back.
        for i in 1..s.segments.len() {
            let end = s.segments[i - 1].end_ns();
            let seg = &mut s.segments[i];
            let old_end = seg.end_ns();
            seg.start_ns = end;
            seg.duration_ns = (old_end - end).max(1);
        }
        for a in &mut s.abuse {
            a.from_ns = at(a.from_ns);
            a.to_ns = at(a.to_ns).max(a.from_ns);
        }
        s
    }

    pub fn span_ns(&self) -> i64 {
        self.segments.last().map_or(0, Segment::end_ns)
    }

    /// The generator's config for this scenario: the profile sampled into
    /// equal buckets (each bucket's rate is the profile's mean over it).
    pub fn gen_config(&self) -> GenConfig {
        let span_ns = self.span_ns().max(1);
        // About 100k buckets, between 10 us and 1 ms each.
        let bucket_ns = (span_ns / 100_000).clamp(10 * US, MS);
        let buckets = ((span_ns + bucket_ns - 1) / bucket_ns) as usize;
        let mut rates = vec![0.0; buckets];
        for seg in &self.segments {
            let first = (seg.start_ns / bucket_ns) as usize;
            let last = ((seg.end_ns() - 1) / bucket_ns) as usize;
            for (b, rate) in rates.iter_mut().enumerate().take(last + 1).skip(first) {
                let lo = (b as i64 * bucket_ns).max(seg.start_ns);
                let hi = ((b as i64 + 1) * bucket_ns).min(seg.end_ns());
                if hi <= lo {
                    continue;
                }
                // Mean of the (linear) rate over [lo, hi), weighted by the overlap.
                let mid = ((lo + hi) / 2 - seg.start_ns) as f64 / seg.duration_ns as f64;
                let r = seg.rate_from + (seg.rate_to - seg.rate_from) * mid;
                *rate += r * (hi - lo) as f64 / bucket_ns as f64;
            }
        }
        let mut shape = Shape::classic(self.start_ns, bucket_ns, rates);
        shape.closing_call = self.closing_call;
        shape.opening_call = self.opening_call;
        shape.account_skew = self.account_skew;
        shape.instrument_skew = self.instrument_skew;
        shape.grouped_divisor =
            if self.grouped_share > 0.0 { (1.0 / self.grouped_share).round().max(2.0) as u32 } else { u32::MAX };
        shape.hot = self.hot;
        shape.cancel_share = self.cancel_share;
        shape.trade_share = self.trade_share;
        shape.tick_px = self.tick_px;
        shape.price_levels = self.price_levels;
        shape.lot = self.lot;
        shape.resting_doublings = self.resting_doublings;
        shape.marketable_doublings = self.marketable_doublings;
        shape.min_cancel_age_ns = self.min_cancel_delay_ns;
        shape.delay_unit_ns = US;
        shape.max_delay_ns = self.late_by_ns;
        shape.actors = self
            .abuse
            .iter()
            .map(|a| ActorPlan { pattern: a.pattern, count: a.actors, from_ns: a.from_ns, to_ns: a.to_ns })
            .collect();
        let mut cfg = GenConfig::new(shape.records(), self.seed);
        cfg.book_flow = self.book_flow.clone();
        cfg.accounts = self.accounts;
        cfg.instruments = self.instruments;
        cfg.late_pct = self.late_share * 100.0;
        cfg.max_delay_ms = ((self.late_by_ns + MS - 1) / MS).max(1) as u32;
        cfg.shape = Some(shape);
        cfg
    }
}

/// Unrolls the phases into back-to-back segments.
fn expand_phases(p: &mut Problems<'_>, phases: Vec<Spanned<RawPhase>>) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut start_ns = 0i64;
    for (index, phase) in phases.into_iter().enumerate() {
        let here = Spanned::new(phase.span(), ());
        let phase = phase.into_inner();
        let field = |name: &str| format!("phases[{index}].{name}");
        let mut rate = |value: &Option<Spanned<f64>>, name: &str| -> Option<f64> {
            let v = value.as_ref()?;
            let r = *v.get_ref();
            if !(0.0..=MAX_RATE).contains(&r) {
                p.at(v, &field(name), format!("{r} is out of range 0..={MAX_RATE:.0} records/s"));
                return Some(0.0);
            }
            Some(r)
        };
        let steady = rate(&phase.rate, "rate");
        let from = rate(&phase.from, "from");
        let to = rate(&phase.to, "to");
        let base = rate(&phase.base, "base");
        let (rate_from, rate_to) = match (steady, from, to) {
            (Some(r), None, None) => (r, r),
            (None, Some(a), Some(b)) => (a, b),
            _ => {
                p.at(&here, &field("rate"), "give either `rate`, or `from` and `to` (a ramp)");
                (0.0, 0.0)
            }
        };
        let duration_ns = match &phase.duration {
            None => {
                p.at(&here, &field("for"), "missing: how long the phase lasts, e.g. for = \"30s\"");
                continue;
            }
            Some(d) => match p.duration(d, &field("for")) {
                Some(0) => {
                    p.at(d, &field("for"), "must be longer than 0");
                    continue;
                }
                Some(ns) => ns,
                None => continue,
            },
        };
        let name = phase.name.unwrap_or_else(|| format!("phase {}", index + 1));
        let repeat = p.ranged(phase.repeat, &field("repeat"), 1..=10_000, 1);
        let every_ns = phase.every.as_ref().and_then(|e| p.duration(e, &field("every")));
        if repeat > 1 || every_ns.is_some() {
            let Some(every_ns) = every_ns else {
                p.at(&here, &field("every"), "a repeated phase needs `every` (burst start to burst start)");
                continue;
            };
            if every_ns < duration_ns {
                p.at(&here, &field("every"), "is shorter than the burst itself (`for`)");
                continue;
            }
            let base = base.unwrap_or(0.0);
            for k in 0..repeat {
                let label = format!("{name} #{}", k + 1);
                segments.push(Segment { name: label, start_ns, duration_ns, rate_from, rate_to });
                start_ns += duration_ns;
                if every_ns > duration_ns {
                    let label = format!("{name} base #{}", k + 1);
                    segments.push(Segment {
                        name: label,
                        start_ns,
                        duration_ns: every_ns - duration_ns,
                        rate_from: base,
                        rate_to: base,
                    });
                    start_ns += every_ns - duration_ns;
                }
            }
        } else {
            if base.is_some() {
                p.at(&here, &field("base"), "only a repeated phase (with `every`) has a base rate");
            }
            segments.push(Segment { name, start_ns, duration_ns, rate_from, rate_to });
            start_ns += duration_ns;
        }
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: [(&str, &str); 8] = [
        ("steady-5k", include_str!("../scenarios/steady-5k.toml")),
        ("szse-peak", include_str!("../scenarios/szse-peak.toml")),
        ("burst-3m", include_str!("../scenarios/burst-3m.toml")),
        ("skew", include_str!("../scenarios/skew.toml")),
        ("late-heavy", include_str!("../scenarios/late-heavy.toml")),
        ("book-day", include_str!("../scenarios/book-day.toml")),
        ("window-day", include_str!("../scenarios/window-day.toml")),
        ("open-day", include_str!("../scenarios/open-day.toml")),
    ];

    /// A time of day on the generator's trading day, in ns.
    fn at(tod: &str) -> i64 {
        use crate::detect::state::episode;
        episode::at(episode::day_of(DAY_START_NS), episode::parse_time_of_day(tod).unwrap())
    }

    #[test]
    fn window_patterns_start_and_closing_call() {
        let s = Scenario::parse(include_str!("../scenarios/window-day.toml")).unwrap();
        assert_eq!(s.start_ns, at("14:45:00"));
        assert_eq!(s.closing_call, Some((at("14:57:00"), at("15:00:00"))));
        assert_eq!(s.rules.as_deref(), Some("window-day.rules.toml"));
        let cfg = s.gen_config();
        let shape = cfg.shape.as_ref().unwrap();
        assert_eq!((shape.start_ns, shape.closing_call), (s.start_ns, s.closing_call));
        let patterns: Vec<PlantPattern> = s.abuse.iter().map(|a| a.pattern).collect();
        assert!(matches!(
            patterns[..],
            [
                PlantPattern::Ramping { paired: true },
                PlantPattern::Ramping { paired: false },
                PlantPattern::MarkingClose { paired: true },
                PlantPattern::MarkingClose { paired: false },
                PlantPattern::WashTrade,
                PlantPattern::QuoteStuffing,
                PlantPattern::InstantCancel { paired: true },
                PlantPattern::InstantCancel { paired: false },
            ]
        ));

        // Phases past the call, a marker without a call or with `at`, a
        // stuffer with `paired`, a bad time: each reported with its line.
        let bad = "phases = [ { rate = 100, for = \"20m\" } ]\n\
                   [market]\n\
                   start = \"14:45:00\"\n\
                   closing_call = [\"14:57:00\", \"15:00:00\"]\n\
                   [[abuse]]\n\
                   pattern = \"marking-close\"\n\
                   actors = 1\n\
                   at = [\"1s\", \"2s\"]\n\
                   [[abuse]]\n\
                   pattern = \"quote-stuffing\"\n\
                   actors = 1\n\
                   paired = true\n";
        let problems = Scenario::parse(bad).unwrap_err().join("\n");
        assert!(
            problems.contains("line 4: market.closing_call: the phases must end before the call starts"),
            "{problems}"
        );
        assert!(problems.contains("abuse[0].at: marking-close acts in the closing call"), "{problems}");
        assert!(problems.contains("abuse[1].paired: quote-stuffing takes no `paired`"), "{problems}");
        let no_call = "phases = [ { rate = 100, for = \"1m\" } ]\n[market]\nstart = \"9:45\"\n[[abuse]]\npattern = \"marking-close\"\nactors = 1\n";
        let problems = Scenario::parse(no_call).unwrap_err().join("\n");
        assert!(problems.contains("line 3: market.start: \"9:45\" is not a time of day"), "{problems}");
        assert!(problems.contains("abuse[0].pattern: marking-close needs `[market] closing_call`"), "{problems}");
    }

    #[test]
    fn opening_call_and_marking_open() {
        let s = Scenario::parse(include_str!("../scenarios/open-day.toml")).unwrap();
        assert_eq!(s.start_ns, at("09:30:00"));
        assert_eq!((s.opening_call, s.closing_call), (Some((at("09:15:00"), at("09:25:00"))), None));
        let cfg = s.gen_config();
        let shape = cfg.shape.as_ref().unwrap();
        assert_eq!(shape.opening_call, s.opening_call);
        let patterns: Vec<PlantPattern> = s.abuse.iter().map(|a| a.pattern).collect();
        assert!(matches!(
            patterns[..],
            [PlantPattern::MarkingOpen { paired: true }, PlantPattern::MarkingOpen { paired: false }]
        ));

        // A call past the day's start, a marker with `at`, a marker without a call.
        let bad = "phases = [ { rate = 100, for = \"1m\" } ]\n\
                   [market]\n\
                   start = \"09:20:00\"\n\
                   opening_call = [\"09:15:00\", \"09:25:00\"]\n\
                   [[abuse]]\n\
                   pattern = \"marking-open\"\n\
                   actors = 1\n\
                   at = [\"1s\", \"2s\"]\n";
        let problems = Scenario::parse(bad).unwrap_err().join("\n");
        assert!(problems.contains("line 4: market.opening_call: the call must end by the day's start"), "{problems}");
        assert!(problems.contains("abuse[0].at: marking-open acts in the opening call"), "{problems}");
        let no_call = "phases = [ { rate = 100, for = \"1m\" } ]\n[[abuse]]\npattern = \"marking-open\"\nactors = 1\n";
        let problems = Scenario::parse(no_call).unwrap_err().join("\n");
        assert!(problems.contains("abuse[0].pattern: marking-open needs `[market] opening_call`"), "{problems}");
        let text = "[expect.marking-open]\nmin_recall = 0.5\n";
        let s = Scenario::parse(&format!(
            "{}\n{text}",
            include_str!("../scenarios/open-day.toml").replace("[expect]\nmax_late = 0\n", "")
        ))
        .unwrap();
        assert_eq!(s.expect.of("marking-open").min_recall, 0.5);
    }

    #[test]
    fn shipped_scenarios_parse_and_single_feeds_keep_a_tight_bound() {
        for (name, text) in SHIPPED {
            let s = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(s.name, name);
            assert!(!s.abuse.is_empty(), "{name} plants nothing");
            if name != "late-heavy" {
                // One sequenced feed: bound <= 1 ms and jitter within it.
                assert!(s.lateness_ns <= MS && s.late_by_ns <= s.lateness_ns, "{name}");
                assert_eq!(s.expect.max_late, Some(0), "{name}");
            }
        }
    }

    #[test]
    fn book_knobs_and_book_patterns() {
        let s = Scenario::parse(include_str!("../scenarios/book-day.toml")).unwrap();
        let f = &s.book_flow;
        assert_eq!((f.market_makers, f.maker_instruments, f.institutions), (6, 2, 10));
        assert_eq!(f.maker_refresh_ns, (150 * MS, 600 * MS));
        assert_eq!((f.maker_lots, f.institution_lots), ((50, 150), (100, 400)));
        assert_eq!(f.institution_hold_ns, (10 * SEC, 60 * SEC));
        let patterns: Vec<PlantPattern> = s.abuse.iter().map(|a| a.pattern).collect();
        assert!(matches!(
            patterns[..],
            [
                PlantPattern::Spoofing { paired: false },
                PlantPattern::Spoofing { paired: true },
                PlantPattern::Layering { paired: false },
                PlantPattern::MomentumIgnition { paired: false }
            ]
        ));
        assert_eq!(s.expect.of("excessive-cancel").max_unexpected, 12);
        assert_eq!(s.expect.of("spoofing"), Expectation::default());
        assert_eq!(s.gen_config().book_flow, s.book_flow);
        // Off unless asked: the shipped scenarios keep their bytes.
        let plain = Scenario::parse("phases = [ { rate = 5, for = \"1s\" } ]\n").unwrap();
        assert_eq!(plain.book_flow, BookFlow::default());
        assert_eq!(plain.book_flow.accounts(), 0);

        let text = "\
phases = [ { rate = 5, for = \"1s\" } ]
[market]
market_makers = -1
maker_refresh = [\"0ms\", \"1s\"]
[[abuse]]
pattern = \"layering\"
actors = 1
orders = [1, 2]
";
        let problems = Scenario::parse(text).unwrap_err();
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(has("line 3: market.market_makers: -1 is out of range"), "{problems:#?}");
        assert!(has("line 4: market.maker_refresh: must be above 0"), "{problems:#?}");
        assert!(has("line 5: abuse[0].pattern: layering takes only"), "{problems:#?}");
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn repeated_bursts_unroll_back_to_back() {
        let s = Scenario::parse(
            "phases = [ { rate = 5000, for = \"10s\" }, { name = \"b\", rate = 1200000, for = \"0.5s\", repeat = 2, every = \"10s\", base = 5000 }, { from = 0, to = 100, for = \"1s\" } ]\n",
        )
        .unwrap();
        let spans: Vec<(&str, i64, i64, f64)> =
            s.segments.iter().map(|g| (g.name.as_str(), g.start_ns / MS, g.duration_ns / MS, g.rate_to)).collect();
        assert_eq!(
            spans,
            vec![
                ("phase 1", 0, 10_000, 5000.0),
                ("b #1", 10_000, 500, 1.2e6),
                ("b base #1", 10_500, 9_500, 5000.0),
                ("b #2", 20_000, 500, 1.2e6),
                ("b base #2", 20_500, 9_500, 5000.0),
                ("phase 3", 30_000, 1_000, 100.0),
            ]
        );
        // 50k + 2 * (600k + 47.5k) + 50 (the ramp's mean 50/s for 1 s).
        let cfg = s.gen_config();
        assert_eq!(cfg.shape.as_ref().unwrap().records(), 1_345_050);
        let half = s.scaled(0.5);
        assert_eq!(half.span_ns(), s.span_ns() / 2);
        assert_eq!(half.gen_config().shape.unwrap().records(), 1_345_050 / 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30 * SEC));
        assert_eq!(parse_duration("0.5ms"), Ok(500 * US));
        assert_eq!(parse_duration("2m"), Ok(120 * SEC));
        assert_eq!(parse_duration("250us"), Ok(250 * US));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("30 seconds").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
    }

    /// A bad file names each problem's line and field, all of them at once.
    #[test]
    fn bad_values_are_all_reported_with_line_and_field() {
        let text = "\
name = \"bad\"
phases = [
  { rate = -5, for = \"10s\" },
  { rate = 100, for = \"ten seconds\" },
]
[market]
accounts = 5
[[abuse]]
pattern = \"excessive-cancel\"
at = [\"1s\", \"2s\"]
[[abuse]]
pattern = \"painting-the-tape\"
actors = 2
";
        let problems = Scenario::parse(text).unwrap_err();
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(has("line 3: phases[0].rate: -5 is out of range"), "{problems:#?}");
        assert!(has("line 4: phases[1].for: `ten seconds` is not a duration"), "{problems:#?}");
        assert!(has("line 7: market.accounts: 5 is out of range"), "{problems:#?}");
        assert!(has("line 8: abuse[0].actors: missing: a pattern needs at least one actor"), "{problems:#?}");
        assert!(has("line 12: abuse[1].pattern: unknown pattern `painting-the-tape`"), "{problems:#?}");
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn unknown_fields_and_missing_phases() {
        let unknown =
            Scenario::parse("phases = [ { rate = 5, for = \"1s\" } ]\n[flow]\ncancel_share = 0.3\n").unwrap_err();
        assert!(unknown[0].starts_with("line 3: unknown field `cancel_share`"), "{unknown:?}");
        let in_phase = Scenario::parse("phases = [\n { rate = 5, for = \"1s\", burst = 2 },\n]\n").unwrap_err();
        assert!(in_phase[0].starts_with("line 2: unknown field `burst`"), "{in_phase:?}");
        let none = Scenario::parse("seed = 3\n").unwrap_err();
        assert!(none[0].starts_with("phases: missing"), "{none:?}");
        let ramp = Scenario::parse("phases = [\n { from = 5, for = \"1s\" },\n]\n").unwrap_err();
        assert!(ramp[0].starts_with("line 2: phases[0].rate: give either"), "{ramp:?}");
        let burst = Scenario::parse(
            "phases = [ { rate = 5, for = \"1s\" } ]\n[[abuse]]\npattern = \"excessive-cancel\"\nactors = 1\ngap = [\"1s\", \"2s\"]\n",
        )
        .unwrap_err();
        assert!(burst[0].contains("abuse[0].gap: a burst may span"), "{burst:?}");
    }
}
