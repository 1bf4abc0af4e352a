//! `tapewatch investigate`: a self-contained HTML report on one alert, or
//! on a group's (or an account's) trading in one instrument over a period.
//! The instrument's records of the day up to the period's end are read
//! (only its blocks, with the tape's index), judged late or not as the
//! engine does, applied through the engine's order book, and drawn.

use super::CmdError;
use crate::config::{MS, Rules};
use crate::detect::views::book::Reference;
use crate::event::{Event, Kind, Side};
use crate::investigate::filter::{Filter, clock, parse_time};
use crate::investigate::overlay::{self, Judged, Lateness};
use crate::investigate::report::{self, AlertInfo, Report, Row, group_digits};
use crate::investigate::walk::{BlockPlan, Source};
use crate::symbols::{valid_account, valid_instrument};
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct InvestigateArgs {
    /// The tape: a native tape (fast with its index) or a FEED.md CSV file.
    pub tape: PathBuf,
    /// The alert to report on: its `alert_id` as written in the alerts file
    /// (`rule:instrument:group:seq`, e.g. `spoofing:000001:G7:1234`), or `#N` (or `N`), its
    /// 1-based line in the alerts file.
    #[arg(long)]
    pub alert: Option<String>,
    /// The alerts file (`tapewatch replay --alerts`) that holds --alert.
    #[arg(long, default_value = "alerts.jsonl")]
    pub alerts: PathBuf,
    /// Without --alert: the group to report on (an accounts.csv group, or an account not in it).
    #[arg(long)]
    pub group: Option<String>,
    /// Without --alert: the account to report on (its own orders only).
    #[arg(long)]
    pub account: Option<String>,
    /// Without --alert: the instrument.
    #[arg(long)]
    pub instrument: Option<String>,
    /// The period's start: `HH:MM:SS[.fff]` (Asia/Shanghai, on the tape's day), nanoseconds since
    /// the epoch, or an ISO time. With --alert, default: the rule's window start (or the alert
    /// minus 60 s), less 10 s.
    #[arg(long)]
    pub from: Option<String>,
    /// The period's end (same forms). With --alert, default: the alert plus 30 s.
    #[arg(long)]
    pub to: Option<String>,
    /// The report (HTML), written whole or not at all.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub reference: super::ReferenceArgs,
    /// As for replay: records more than this behind the newest are late and not applied.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
    /// No summary line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Measurement: read the tape as if it had no index.
    #[arg(long, hide = true)]
    pub no_index: bool,
}

/// What the alerts file said about the alert.
struct Found {
    info: AlertInfo,
    group: String,
    instrument: String,
    related: Vec<(usize, String, String, String, i64)>,
}

pub fn run(args: InvestigateArgs) -> Result<(), CmdError> {
    let started = Instant::now();
    let mut problems = Vec::new();
    let time = |flag: &str, text: &Option<String>, problems: &mut Vec<String>| {
        text.as_deref().and_then(|t| parse_time(t).map_err(|e| problems.push(format!("{flag} {t}: {e}"))).ok())
    };
    let from = time("--from", &args.from, &mut problems);
    let to = time("--to", &args.to, &mut problems);
    match (&args.alert, &args.group, &args.account) {
        (Some(_), None, None) => {}
        (Some(_), _, _) => {
            problems.push("--alert reports on the alert's group: leave out --group and --account".into())
        }
        (None, Some(_), Some(_)) => problems.push("--group and --account: give one of them".into()),
        (None, None, None) => problems.push(
            "what to report on: --alert ID, or --group G (or --account A) with --instrument, --from and --to".into(),
        ),
        (None, _, _) => {
            if args.instrument.is_none() || args.from.is_none() || args.to.is_none() {
                problems.push("--group/--account needs --instrument, --from and --to".into());
            }
        }
    }
    if let Some(i) = &args.instrument
        && !valid_instrument(i.as_bytes())
    {
        problems.push(format!("--instrument {i}: not an instrument name (1-12 bytes of [A-Za-z0-9._-])"));
    }
    if let Some(a) = &args.account
        && !valid_account(a.as_bytes())
    {
        problems.push(format!("--account {a}: not an account name (1-16 bytes of [A-Za-z0-9_-])"));
    }
    super::check_lateness_ms(args.lateness_ms, &mut problems);
    let super::ReferenceData { groups, instruments, rules, .. } = args.reference.load(&args.tape, &mut problems);
    let mut plan = crate::outputs::Plan::default();
    plan.input("tape", &args.tape);
    if args.alert.is_some() {
        plan.input("alerts file", &args.alerts);
    }
    plan.output("--out", &args.out);
    problems.extend(plan.check());
    let found = match &args.alert {
        Some(id) if problems.is_empty() => match find_alert(&args.alerts, id, &rules) {
            Ok(found) => Some(found),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        _ => None,
    };
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }

    let groups = Arc::new(groups);
    let mut source = Source::open(&args.tape, groups.clone())?;
    if args.no_index {
        source = source.without_index();
    }
    let instrument =
        found.as_ref().map_or_else(|| args.instrument.clone().unwrap_or_default(), |f| f.instrument.clone());
    let party_filter = match (&found, &args.group, &args.account) {
        (Some(f), _, _) => Filter { groups: vec![f.group.clone()], ..Filter::default() },
        (None, Some(g), _) => Filter { groups: vec![g.clone()], ..Filter::default() },
        (None, None, Some(a)) => Filter { accounts: vec![a.clone()], ..Filter::default() },
        (None, None, None) => Filter::default(),
    };
    // Names and times against the tape: every problem at once.
    let mut check = party_filter.clone();
    check.instruments = vec![instrument.clone()];
    let (mut party, _) = crate::investigate::resolve(&source, check, groups.clone())?;
    let Some(first_ts) = source.first_ts()? else {
        return Err(CmdError::Usage(format!("{}: the tape has no record", args.tape.display())));
    };
    let (from_ns, to_ns) = match &found {
        Some(f) => {
            let start = f.info.window.map_or(f.info.ts_ns - 60_000 * MS, |w| w.0.min(f.info.ts_ns));
            (
                from.map_or(start - 10_000 * MS, |t| t.resolve(first_ts)),
                to.map_or(f.info.ts_ns + 30_000 * MS, |t| t.resolve(first_ts)),
            )
        }
        None => (from.map_or(i64::MIN, |t| t.resolve(first_ts)), to.map_or(i64::MAX, |t| t.resolve(first_ts))),
    };
    // A period reaching before the tape starts is drawn from its first record.
    let from_ns = from_ns.max(first_ts.min(to_ns));
    if from_ns > to_ns {
        return Err(CmdError::Usage(format!("--from {} is after --to {}", clock(from_ns), clock(to_ns))));
    }
    if let Some((_, min, max)) = crate::investigate::tape_span(&source)?
        && (from_ns > max || to_ns < min)
    {
        return Err(CmdError::Usage(format!(
            "the period {} to {} is outside the tape, whose records run from {} to {} (Asia/Shanghai)",
            clock(from_ns),
            clock(to_ns),
            clock(min),
            clock(max)
        )));
    }
    let moment = match &found {
        Some(f) => (f.info.ts_ns, f.info.seq),
        None => (to_ns, u64::MAX),
    };

    // The instrument's records of the day up to the period's end, judged
    // late against every record before them, as the source judges.
    let lateness_ns = args.lateness_ms as i64 * MS;
    let mut lateness = Lateness::new(lateness_ns);
    let mut records: Vec<Judged> = Vec::new();
    let mut instrument_id = source.instrument_id(&instrument);
    let mut names = None;
    let block_plan = BlockPlan {
        instruments: instrument_id.into_iter().collect(),
        from_ns: i64::MIN,
        to_ns: to_ns.saturating_add(lateness_ns),
    };
    // Records of other instruments (and skipped blocks) only move event
    // time on: their greatest time so far is all the watermark needs.
    let passed_max = std::cell::Cell::new(i64::MIN);
    let stats = source.walk(&block_plan, &mut |ts| passed_max.set(passed_max.get().max(ts)), |e, n| {
        lateness.advance(passed_max.get());
        let late = lateness.observe(e.ts_ns);
        if instrument_id.is_none() && n.instruments.get_string(e.instrument) == instrument {
            instrument_id = Some(e.instrument);
        }
        if Some(e.instrument) == instrument_id {
            records.push(Judged { event: *e, late });
        }
        if names.is_none() {
            names = Some(n.clone());
        }
        // Past the period by the lateness: nothing of it can still apply.
        if e.ts_ns.saturating_sub(lateness_ns) > to_ns { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })?;
    let (Some(instrument_id), Some(names)) = (instrument_id, names) else {
        return Err(CmdError::Usage(format!("--instrument {instrument}: no record of it on {}", args.tape.display())));
    };
    let mine_cache: Vec<bool> = (0..names.accounts.len() as u32).map(|a| party.account(a, &names.accounts)).collect();
    let mine = |a: u32| mine_cache.get(a as usize).copied().unwrap_or(false);
    let accounts: Vec<String> =
        (0..names.accounts.len() as u32).filter(|&a| mine(a)).map(|a| names.accounts.get_string(a)).collect();
    if accounts.is_empty() {
        let who = party_filter.groups.first().or(party_filter.accounts.first()).cloned().unwrap_or_default();
        return Err(CmdError::Usage(format!("{who}: no account of it on {}", args.tape.display())));
    }

    let applied = overlay::applied_order(&records);
    let reference = Reference { instruments: Arc::new(instruments), names: names.instruments.clone() };
    let rebuilt = overlay::rebuild(&applied, instrument_id, reference, (from_ns, to_ns), moment, 10);
    let all_spans = overlay::order_spans(&applied, mine);
    let spans: Vec<_> = all_spans
        .iter()
        .filter(|s| s.entry_ts <= to_ns && s.end_ts.is_none_or(|end| end >= from_ns))
        .copied()
        .collect();
    let span_accounts = spans.iter().map(|s| names.accounts.get_string(s.account)).collect();
    let mut own_at_moment = Vec::new();
    for o in rebuilt.resting.iter().filter(|o| mine(o.account) && o.open_qty > 0) {
        own_at_moment.push((o.side, o.price, o.open_qty));
    }

    // The timeline: the party's records of the instrument in the period.
    let by_id: std::collections::HashMap<u64, &overlay::OrderSpan> =
        all_spans.iter().map(|s| (s.order_id, s)).collect();
    let mut theirs: Vec<&Judged> = records
        .iter()
        .filter(|r| (from_ns..=to_ns).contains(&r.event.ts_ns))
        .filter(|r| mine(r.event.account) || (r.event.kind == Kind::Trade && mine(r.event.contra_account)))
        .collect();
    theirs.sort_by_key(|r| (r.event.ts_ns, r.event.seq));
    let rows_left_out = theirs.len().saturating_sub(report::MAX_ROWS);
    let rows: Vec<Row> =
        theirs.iter().take(report::MAX_ROWS).map(|r| row(&r.event, r.late, &names, &by_id, &mine)).collect();

    let party_name = match (&found, &args.group, &args.account) {
        (Some(f), _, _) => format!("group {}", f.group),
        (None, Some(g), _) => format!("group {g}"),
        (None, None, Some(a)) => format!("account {a}"),
        _ => String::new(),
    };
    let headline = headline(&party_name, &instrument, &spans, &theirs, (from_ns, to_ns), &mine);
    let headline = match &found {
        Some(f) => format!("{} alert at {}: {headline}", f.info.rule, clock(f.info.ts_ns)),
        None => headline,
    };
    let read_note = format!("{}; {:.2} s", stats.describe(), started.elapsed().as_secs_f64());
    let title = match &found {
        Some(f) => format!("{} on {}, {}", f.info.rule, instrument, party_name),
        None => format!("{party_name} on {instrument}"),
    };
    let (info, related) = match found {
        Some(f) => (Some(f.info), f.related),
        None => (None, Vec::new()),
    };
    let moment_label = match &info {
        Some(_) => "Just after the alert's record.".to_string(),
        None => "At the end of the period.".to_string(),
    };
    let page = report::render(&Report {
        title,
        headline,
        tape: args.tape.display().to_string(),
        instrument: instrument.clone(),
        party: format!("{party_name} ({} account{})", accounts.len(), if accounts.len() == 1 { "" } else { "s" }),
        accounts,
        period: (from_ns, to_ns),
        moment: (moment.0, moment_label),
        alert: info,
        related,
        rebuilt,
        spans,
        span_accounts,
        own_at_moment,
        rows,
        rows_left_out,
        read_note: read_note.clone(),
    });
    crate::investigate::write_atomically(&args.out, |out| {
        out.write_all(page.as_bytes())
            .map_err(|e| CmdError::Failed(format!("{}: cannot write: {e}", args.out.display())))
    })?;
    if !args.quiet {
        eprintln!(
            "tapewatch: investigate: wrote {} ({} KiB) in {:.2} s; {}",
            args.out.display(),
            page.len() / 1024,
            started.elapsed().as_secs_f64(),
            stats.describe()
        );
    }
    Ok(())
}

fn row(
    e: &Event,
    late: bool,
    names: &crate::symbols::Names,
    by_id: &std::collections::HashMap<u64, &overlay::OrderSpan>,
    mine: &impl Fn(u32) -> bool,
) -> Row {
    let account = match e.kind {
        Kind::Trade => format!(
            "buy {} / sell {}",
            names.accounts.get_string(e.account),
            names.accounts.get_string(e.contra_account)
        ),
        _ => names.accounts.get_string(e.account),
    };
    let outcome = if late {
        "late: not applied".to_string()
    } else {
        match e.kind {
            Kind::New => by_id.get(&e.order_id).map_or(String::new(), |s| {
                let life = |end: i64| format!("{:.3} s", (end - s.entry_ts) as f64 / 1e9);
                match (s.outcome, s.end_ts) {
                    (overlay::Outcome::Filled, Some(end)) => format!("filled after {}", life(end)),
                    (overlay::Outcome::Cancelled, Some(end)) if s.filled > 0 => {
                        format!("{} filled, rest cancelled after {}", s.filled, life(end))
                    }
                    (overlay::Outcome::Cancelled, Some(end)) => format!("cancelled after {}", life(end)),
                    _ => "open at the end".to_string(),
                }
            }),
            Kind::Cancel => by_id.get(&e.order_id).map_or("cancel".to_string(), |s| {
                format!("cancelled {:.3} s after entry", (e.ts_ns - s.entry_ts) as f64 / 1e9)
            }),
            Kind::Trade => {
                let (b, s) = (mine(e.account), mine(e.contra_account));
                match (b, s) {
                    (true, true) => "trade with itself (both sides in the group)".to_string(),
                    (true, false) => "bought".to_string(),
                    _ => "sold".to_string(),
                }
            }
        }
    };
    Row {
        seq: e.seq,
        ts_ns: e.ts_ns,
        kind: match e.kind {
            Kind::New => 'N',
            Kind::Cancel => 'C',
            Kind::Trade => 'T',
        },
        order_id: e.order_id,
        account,
        side: e.side,
        price: e.price,
        qty: e.qty,
        outcome,
        late,
        anchors_order: e.kind == Kind::New && !late && by_id.contains_key(&e.order_id),
    }
}

/// One sentence a compliance officer can read: what the party placed, what
/// it cancelled and how fast, what it traded.
fn headline(
    party: &str,
    instrument: &str,
    spans: &[overlay::OrderSpan],
    theirs: &[&Judged],
    (from, to): (i64, i64),
    mine: &impl Fn(u32) -> bool,
) -> String {
    let entered: Vec<&overlay::OrderSpan> = spans.iter().filter(|s| (from..=to).contains(&s.entry_ts)).collect();
    let qty = |side: Side| entered.iter().filter(|s| s.side == side).map(|s| s.qty).sum::<u64>();
    let main = if qty(Side::Sell) > qty(Side::Buy) { Side::Sell } else { Side::Buy };
    let word = |side: Side| if side == Side::Buy { "buy" } else { "sell" };
    let placed: Vec<&&overlay::OrderSpan> = entered.iter().filter(|s| s.side == main).collect();
    let other = if main == Side::Buy { Side::Sell } else { Side::Buy };
    let other_placed: Vec<&&overlay::OrderSpan> = entered.iter().filter(|s| s.side == other).collect();
    let (mut bought, mut sold, mut with_self) = (0u64, 0u64, 0u64);
    for r in theirs.iter().filter(|r| !r.late && r.event.kind == Kind::Trade) {
        let (b, s) = (mine(r.event.account), mine(r.event.contra_account));
        if b && s {
            with_self += r.event.qty;
        } else if b {
            bought += r.event.qty;
        } else if s {
            sold += r.event.qty;
        }
    }
    let mut s = format!(
        "{} placed {} {} order{}",
        capitalise(party),
        placed.len(),
        word(main),
        if placed.len() == 1 { "" } else { "s" }
    );
    if !placed.is_empty() {
        s += &format!(" totalling {}", group_digits(placed.iter().map(|s| s.qty).sum()));
    }
    if !other_placed.is_empty() {
        s += &format!(
            " and {} {} order{} totalling {}",
            other_placed.len(),
            word(other),
            if other_placed.len() == 1 { "" } else { "s" },
            group_digits(other_placed.iter().map(|s| s.qty).sum())
        );
    }
    s += &format!(" on {instrument} between {} and {}", clock(from), clock(to));
    let mut lives: Vec<i64> = placed
        .iter()
        .filter(|s| s.outcome == overlay::Outcome::Cancelled)
        .filter_map(|s| s.end_ts.map(|e| e - s.entry_ts))
        .collect();
    lives.sort_unstable();
    if !lives.is_empty() {
        s += &format!(
            ", cancelled {} of the {} orders within {:.2} s (median {:.2} s)",
            lives.len(),
            word(main),
            *lives.last().unwrap_or(&0) as f64 / 1e9,
            lives[lives.len() / 2] as f64 / 1e9
        );
    }
    let mut trades = Vec::new();
    if bought > 0 {
        trades.push(format!("buying {}", group_digits(bought)));
    }
    if sold > 0 {
        trades.push(format!("selling {}", group_digits(sold)));
    }
    if with_self > 0 {
        trades.push(format!("trading {} with itself", group_digits(with_self)));
    }
    if trades.is_empty() {
        s += ", and traded nothing.";
    } else {
        s += &format!(", while {}.", trades.join(" and "));
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// Finds `id` in the alerts file: by `alert_id`, or `#N`/`N` as a line.
fn find_alert(path: &Path, id: &str, rules: &Rules) -> Result<Found, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--alerts {}: cannot read: {e}", path.display()))?;
    let line_no = id.strip_prefix('#').unwrap_or(id).parse::<usize>().ok();
    let mut parsed: Vec<(usize, Value)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}: line {}: not an alert (JSON): {e}", path.display(), i + 1))?;
        parsed.push((i + 1, v));
    }
    let hit = parsed.iter().find(|(n, v)| match line_no {
        Some(want) => *n == want,
        None => v["alert_id"].as_str() == Some(id),
    });
    let Some((line, alert)) = hit else {
        let example = parsed.first().and_then(|(_, v)| v["alert_id"].as_str().map(str::to_string));
        return Err(format!(
            "--alert {id}: not in {} ({} alerts; give an alert_id{} or #LINE)",
            path.display(),
            parsed.len(),
            example.map_or(String::new(), |e| format!(" such as {e}"))
        ));
    };
    let field = |k: &str| {
        alert[k].as_str().map(str::to_string).ok_or_else(|| format!("{}: line {line}: no `{k}`", path.display()))
    };
    let rule = field("rule")?;
    let group = field("group")?;
    let instrument = field("instrument")?;
    let ts_ns = alert["ts_ns"].as_i64().ok_or_else(|| format!("{}: line {line}: no `ts_ns`", path.display()))?;
    let seq = alert["seq"].as_u64().unwrap_or(0);
    let mut evidence = Vec::new();
    flatten("", &alert["evidence"], &mut evidence);
    let num = |k: &str| alert["evidence"][k].as_i64();
    let window = match (num("window_start_ns"), num("window_end_ns")) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    let table = crate::detect::registry::RULES.iter().find(|r| r.name == rule).map(|r| r.table);
    let thresholds = table.map_or(Vec::new(), |t| thresholds(&rules.show(), t));
    let params_now = rules.versions().iter().find(|(n, _)| *n == rule).map(|(_, v)| format!("{v:08x}"));
    let related = parsed
        .iter()
        .filter(|(n, v)| *n != *line && v["group"].as_str() == Some(group.as_str()))
        .take(100)
        .map(|(n, v)| {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            (*n, s("alert_id"), s("rule"), s("instrument"), v["ts_ns"].as_i64().unwrap_or(0))
        })
        .collect();
    Ok(Found {
        info: AlertInfo {
            id: alert["alert_id"].as_str().unwrap_or(id).to_string(),
            line: *line,
            rule,
            ts_ns,
            seq,
            account: alert["account"].as_str().unwrap_or("").to_string(),
            params: alert["params"].as_str().unwrap_or("").to_string(),
            params_now,
            evidence,
            thresholds,
            window,
        },
        group,
        instrument,
        related,
    })
}

/// `key = value` lines of one table of `rules show`.
fn thresholds(shown: &str, table: &str) -> Vec<(String, String)> {
    let header = format!("[{table}]");
    shown
        .lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once(" = ").map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Array(items) if items.iter().all(|i| !i.is_object()) => out.push((
            prefix.to_string(),
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        )),
        Value::Null => {}
        // Epoch nanoseconds (not a duration such as `window_ns`) as a time of day.
        other if prefix.ends_with("_ns") && other.as_i64().is_some_and(|v| v > 100_000_000_000_000_000) => {
            out.push((prefix.to_string(), other.as_i64().map_or_else(|| other.to_string(), clock)))
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
