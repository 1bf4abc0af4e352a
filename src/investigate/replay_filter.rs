//! `replay`'s filters: which records the pipeline applies, and which of the
//! alerts it makes are written, so that a filtered replay's alerts are
//! exactly the full replay's alerts inside the selection.
//!
//! - `--instrument`: only those instruments' records reach the shards. Every
//!   rule keys its state by instrument (shards split by instrument), so this
//!   is exact for all of them. On a native tape with an index, blocks that
//!   hold none of them are not read at all.
//! - `--from`: alerts stamped before it are not written. The records applied
//!   start earlier, by the longest warm-up an enabled rule needs
//!   ([`warmup`]): a stateless rule (self-trade) none; every other rule the
//!   day so far: window rules keep episode state and day counts that a
//!   window-length warm-up would not rebuild (excessive-cancel's hot
//!   episode, quote-stuffing's and instant-cancel's day counts, ramping's
//!   cooldowns), and the book rules read the book, which is the day's.
//!   Blocks wholly before the warm-up are skipped.
//! - `--to`: alerts stamped after it are not written, and records after it
//!   are not applied: a rule's alert depends only on the records up to its
//!   triggering record. The exception is a rule with timers (marking
//!   judges a call auction after it closes, stamped at the call): with one
//!   enabled, records are applied to the end of the tape. Otherwise the
//!   feed stops once event time passes `--to` by the lateness (a record of
//!   the slice after that would be late anyway).
//! - `--account`/`--group`: alerts about other groups are not written. All
//!   records of the selected instruments are still applied: the book, the
//!   market's volume (ramping's share), trades with other groups (wash
//!   trades) are everybody's records, so applying only the group's would
//!   change the group's alerts. `--account A` selects A's group: the rules
//!   key their state by group.
//!
//! Event time stays exact too: lateness is judged against every record of
//! the tape, selected or not. Records left out still move the watermark,
//! through a time-only event (`TIME_ONLY`) the router observes and drops;
//! a skipped block moves it by its greatest event time, from the index.
//!
//! The late file of a filtered replay holds the selected records that were
//! late; `--state` (checkpoints) cannot be combined with filters.

use super::filter::{Filter, Matcher};
use crate::checkpoint::codec::Writer;
use crate::detect::registry::Rules;
use crate::event::Event;
use crate::ingest::{Feed, FeedCheckpoint, FeedError, FeedStats};
use crate::symbols::{Groups, NameTable};
use std::sync::Arc;

pub use crate::ingest::{TIME_ONLY, time_only};

/// How much history before `--from` a rule needs to be exact there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warmup {
    None,
    /// The day so far (from the start of the tape).
    Day,
}

/// The warm-up of each enabled rule (by registry name), and the longest.
/// A rule missing from this list is taken to need the day: the safe side.
pub fn warmup(rules: &Rules) -> (Warmup, Vec<(&'static str, Warmup)>) {
    let per_rule: Vec<(&'static str, Warmup)> = crate::detect::registry::RULES
        .iter()
        .filter(|r| rules.enabled(r.id))
        .map(|r| (r.name, if r.name == "self-trade" { Warmup::None } else { Warmup::Day }))
        .collect();
    let longest = if per_rule.iter().any(|(_, w)| *w == Warmup::Day) { Warmup::Day } else { Warmup::None };
    (longest, per_rule)
}

/// Rules that fire on timers (alerts stamped before the record that fires them).
pub fn has_timers(rules: &Rules) -> bool {
    crate::detect::registry::RULES.iter().any(|r| rules.enabled(r.id) && r.name.starts_with("marking"))
}

/// What the sink writes: alerts stamped in `[from, to]` whose group is one
/// of `groups` (by name; empty: any).
#[derive(Clone, Debug)]
pub struct AlertKeep {
    pub from_ns: i64,
    pub to_ns: i64,
    pub groups: Vec<String>,
}

impl AlertKeep {
    /// Whether to write an alert about `group` (its name written by the
    /// sink into `scratch`) stamped at `ts_ns`. Alerts are few: a name
    /// comparison per alert costs nothing next to its JSON.
    pub fn keeps(&self, ts_ns: i64, group_name: &[u8]) -> bool {
        (self.from_ns..=self.to_ns).contains(&ts_ns)
            && (self.groups.is_empty() || self.groups.iter().any(|g| g.as_bytes() == group_name))
    }
}

/// The records a filtered replay applies, resolved for one run.
#[derive(Clone, Debug)]
pub struct Applied {
    /// Apply records stamped in `[from, to]`.
    pub from_ns: i64,
    pub to_ns: i64,
    /// Stop reading once event time passes this (`i64::MAX`: read to the end).
    pub stop_after_ns: i64,
}

/// Plans a filtered replay: what is applied, what is written.
pub fn plan(filter: &Filter, rules: &Rules, groups: &Groups, first_ts: i64, lateness_ns: i64) -> (Applied, AlertKeep) {
    let (from, to) = filter.range(first_ts);
    let (longest, _) = warmup(rules);
    let apply_from = match longest {
        Warmup::None => from,
        Warmup::Day => i64::MIN,
    };
    let timers = has_timers(rules);
    let apply_to = if timers { i64::MAX } else { to };
    let stop_after_ns = if timers || to == i64::MAX { i64::MAX } else { to.saturating_add(lateness_ns) };
    let keep = AlertKeep {
        from_ns: from,
        to_ns: to,
        groups: if filter.by_party() { filter.group_names(groups) } else { Vec::new() },
    };
    (Applied { from_ns: apply_from, to_ns: apply_to, stop_after_ns }, keep)
}

/// A feed that passes on only the records a filtered replay applies, with
/// time-only events for the rest (see the module doc). Its `accepted`
/// counts the records passed on, so the pipeline's books still balance
/// (applied + late == accepted); `left_out` counts the others.
pub struct Selected<F: Feed> {
    inner: F,
    matcher: Matcher,
    applied: Applied,
    instruments: Arc<NameTable>,
    /// The greatest event time of the records left out since the last
    /// time-only event.
    pending_ts: i64,
    passed: u64,
    left_out: u64,
    /// Time-only events from the feed: one per block it skipped.
    skipped_blocks: u64,
    counts: Arc<FilterCounts>,
    done: bool,
}

impl<F: Feed> Selected<F> {
    /// Party flags are the sink's business (`AlertKeep`): the matcher here
    /// selects by instrument only.
    pub fn new(inner: F, filter: &Filter, applied: Applied, instruments: Arc<NameTable>, groups: Arc<Groups>) -> Self {
        let by_instrument = Filter { instruments: filter.instruments.clone(), ..Filter::default() };
        let mut matcher = Matcher::new(by_instrument, groups);
        matcher.start(0);
        Selected {
            inner,
            matcher,
            applied,
            instruments,
            pending_ts: i64::MIN,
            passed: 0,
            left_out: 0,
            skipped_blocks: 0,
            counts: Arc::default(),
            done: false,
        }
    }

    pub fn inner(&self) -> &F {
        &self.inner
    }
}

impl<F: Feed> Feed for Selected<F> {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_until(&mut |event| {
            emit(event);
            true
        })
    }

    fn pump_until(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        if self.done {
            return Ok(false);
        }
        let Selected {
            inner, matcher, applied, instruments, pending_ts, passed, left_out, skipped_blocks, done, ..
        } = self;
        let more = inner.pump_until(&mut |event| {
            if event.ts_ns > applied.stop_after_ns {
                *done = true;
                return false;
            }
            let wanted = event.instrument != TIME_ONLY
                && (applied.from_ns..=applied.to_ns).contains(&event.ts_ns)
                && matcher.instrument(event.instrument, instruments);
            if !wanted {
                *left_out += (event.instrument != TIME_ONLY) as u64;
                *skipped_blocks += (event.instrument == TIME_ONLY) as u64;
                *pending_ts = (*pending_ts).max(event.ts_ns);
                return true;
            }
            if *pending_ts > event.ts_ns {
                emit(&time_only(*pending_ts));
            }
            *pending_ts = i64::MIN;
            *passed += 1;
            emit(event)
        })?;
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.left_out.store(self.left_out, Relaxed);
        self.counts.skipped_blocks.store(self.skipped_blocks, Relaxed);
        Ok(more && !self.done)
    }

    fn stats(&self) -> FeedStats {
        let mut stats = self.inner.stats();
        stats.accepted = self.passed;
        stats
    }

    fn checkpoint(&mut self, _w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        Err(FeedError { path: Default::default(), message: "a filtered replay cannot be checkpointed".into() })
    }
}

/// What a filtered run counts as it goes, read after it (updated once a pump).
#[derive(Default, Debug)]
pub struct FilterCounts {
    pub left_out: std::sync::atomic::AtomicU64,
    pub skipped_blocks: std::sync::atomic::AtomicU64,
}

/// A filtered replay, planned before the pipeline starts.
pub struct ReplayPlan {
    filter: Filter,
    applied: Applied,
    pub keep: AlertKeep,
    /// A native tape's wanted instrument ids (for the index).
    ids: Vec<u32>,
    warmup: String,
    counts: Arc<FilterCounts>,
}

/// Resolves replay's filters against the tape: names not on a native tape
/// and times outside it are bad input (exit 2).
pub fn plan_replay(
    tape: &std::path::Path,
    native: bool,
    filter: &Filter,
    cfg: &crate::topology::PipelineConfig,
    groups: &Groups,
) -> Result<ReplayPlan, crate::cmd::CmdError> {
    use super::walk::Source;
    use crate::cmd::CmdError;
    let (first_ts, ids) = if native {
        let source = Source::open(tape, Arc::new(Groups::default()))?;
        let mut problems = Vec::new();
        let ids: Vec<u32> = filter
            .instruments
            .iter()
            .filter_map(|name| {
                let id = source.instrument_id(name);
                if id.is_none() {
                    problems.push(format!("--instrument {name}: no record of it on {}", tape.display()));
                }
                id
            })
            .collect();
        if let (Some((_, min, max)), Some(first)) = (super::tape_span(&source)?, source.first_ts()?) {
            let (from, to) = filter.range(first);
            if from > max || to < min {
                problems.push(format!(
                    "--from/--to: outside the tape, whose records run from {} to {} (Asia/Shanghai)",
                    super::filter::clock(min),
                    super::filter::clock(max)
                ));
            }
        }
        if !problems.is_empty() {
            return Err(CmdError::Usage(problems.join("\n")));
        }
        (source.first_ts()?, ids)
    } else {
        (Source::Csv { path: tape.to_path_buf(), groups: Arc::new(Groups::default()) }.first_ts()?, Vec::new())
    };
    let clock_time = matches!(filter.from, Some(crate::cmd::book::At::Clock(_)))
        || matches!(filter.to, Some(crate::cmd::book::At::Clock(_)));
    let first_ts = match first_ts {
        Some(ts) => ts,
        None if clock_time => {
            return Err(CmdError::Usage(format!(
                "{}: no first record to place HH:MM:SS times on (give --from/--to as ISO times or nanoseconds)",
                tape.display()
            )));
        }
        None => 0,
    };
    let (applied, keep) = plan(filter, &cfg.rules, groups, first_ts, cfg.lateness_ns);
    let (longest, per_rule) = warmup(&cfg.rules);
    let warmup = match longest {
        Warmup::None => "none (only stateless rules enabled)".to_string(),
        Warmup::Day => {
            let day: Vec<&str> = per_rule.iter().filter(|(_, w)| *w == Warmup::Day).map(|(n, _)| *n).collect();
            format!("the day so far (needed by {})", day.join(", "))
        }
    };
    Ok(ReplayPlan { filter: filter.clone(), applied, keep, ids, warmup, counts: Arc::default() })
}

impl ReplayPlan {
    /// The native feed's blocks to leave unread.
    pub fn block_skip(&self) -> crate::ingest::native_feed::BlockSkip {
        crate::ingest::native_feed::BlockSkip {
            instruments: self.ids.clone(),
            from_ns: self.applied.from_ns,
            to_ns: self.applied.to_ns,
        }
    }

    pub fn wrap<F: Feed>(&self, feed: F, names: &crate::symbols::Names) -> Selected<F> {
        let mut selected =
            Selected::new(feed, &self.filter, self.applied.clone(), names.instruments.clone(), names.groups.clone());
        selected.counts = self.counts.clone();
        selected
    }

    /// The plan in a line (the summary's `filter`).
    pub fn describe(&self) -> String {
        use super::filter::clock;
        let when = |ns: i64, none: &str| if ns == i64::MIN || ns == i64::MAX { none.to_string() } else { clock(ns) };
        let mut s = format!("alerts stamped {}..{}", when(self.keep.from_ns, "start"), when(self.keep.to_ns, "end"));
        if !self.filter.instruments.is_empty() {
            s += &format!(" on {}", self.filter.instruments.join(", "));
        }
        if !self.keep.groups.is_empty() {
            s += &format!(" about group {}", self.keep.groups.join(", "));
        }
        s += &format!("; warm-up before --from: {}", self.warmup);
        s
    }

    /// The plan and what the run left out.
    pub fn describe_run(&self, indexed: bool) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let left_out = self.counts.left_out.load(Relaxed);
        let skipped = self.counts.skipped_blocks.load(Relaxed);
        let index = if indexed {
            format!("{skipped} blocks skipped by the tape's index")
        } else {
            "no index on this tape: every block read".to_string()
        };
        format!("{}; {left_out} records outside the selection not applied, {index}", self.describe())
    }
}
