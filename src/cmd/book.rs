//! `tapewatch book`: one instrument's order book as it stood at an event
//! time. The tape goes through the same decoders and validator as replay,
//! the same watermark judges lateness over every record, and the
//! instrument's records are applied in `(ts_ns, seq)` order through the
//! same reorder buffer and `Books` a shard uses, on this one thread.

use super::{CmdError, is_native_tape};
use crate::config::MS;
use crate::detect::views::BookView;
use crate::detect::views::book::{BookLimits, Books, InstrumentBook, Level, Reference, SKIP_CAUSES, cause_name};
use crate::event::{Event, InstrumentId, Px, Side};
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::Tape;
use crate::ingest::native_feed::NativeFeed;
use crate::ingest::validate::{Limits, Validator};
use crate::ingest::{Feed, RejectLog};
use crate::instruments::{Instruments, px_string};
use crate::symbols::{NameTable, Names, valid_instrument};
use crate::time::{Pending, ReorderBuffer, Watermark};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct BookArgs {
    /// The tape: a FEED.md CSV file or a native tape; `-`: a CSV tape on stdin.
    pub tape: PathBuf,
    /// The instrument, as named on the tape.
    #[arg(long)]
    pub instrument: String,
    /// Event time: `HH:MM:SS[.fff]` in Asia/Shanghai on the tape's trading day (that of its
    /// first record), or nanoseconds since the Unix epoch. The book includes records at this time.
    #[arg(long)]
    pub at: String,
    /// Print one JSON object: instrument, ts_ns, bids and asks as lists of {price, qty, orders}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reference: super::ReferenceFiles,
    /// Price levels to print per side, best first.
    #[arg(long, default_value_t = 10)]
    pub levels: usize,
    /// As for replay: records more than this behind the newest are late and not applied.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
}

/// An event time as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Nanoseconds since the epoch.
    Raw(i64),
    /// Nanoseconds since midnight, Asia/Shanghai, on the tape's day.
    Clock(i64),
}

const SECOND_NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * SECOND_NS;
/// Asia/Shanghai is UTC+8 all year (no daylight saving since 1991).
const SHANGHAI_OFFSET_NS: i64 = 8 * 3_600 * SECOND_NS;

impl At {
    pub fn parse(text: &str) -> Result<At, String> {
        let bad = || format!("--at {text}: expected HH:MM:SS[.fff] (Asia/Shanghai) or nanoseconds since the epoch");
        if !text.contains(':') {
            return text.parse::<i64>().ok().filter(|&ns| ns >= 0).map(At::Raw).ok_or_else(bad);
        }
        let (clock, fraction) = match text.split_once('.') {
            Some((clock, fraction)) => (clock, fraction),
            None => (text, ""),
        };
        let parts: Vec<&str> = clock.split(':').collect();
        let field = |s: &str, max: i64| -> Option<i64> {
            (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
                .filter(|&v| v <= max)
        };
        let [h, m, s] = parts[..] else { return Err(bad()) };
        let (Some(h), Some(m), Some(s)) = (field(h, 23), field(m, 59), field(s, 59)) else { return Err(bad()) };
        if text.contains('.')
            && (fraction.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let mut frac_ns = 0i64;
        for i in 0..9 {
            frac_ns = frac_ns * 10 + fraction.as_bytes().get(i).map_or(0, |b| (b - b'0') as i64);
        }
        Ok(At::Clock(((h * 60 + m) * 60 + s) * SECOND_NS + frac_ns))
    }

    /// The epoch time, given the tape's first record.
    pub fn resolve(self, first_ts_ns: i64) -> i64 {
        match self {
            At::Raw(ns) => ns,
            At::Clock(since_midnight) => {
                let day = (first_ts_ns + SHANGHAI_OFFSET_NS).div_euclid(DAY_NS);
                day * DAY_NS - SHANGHAI_OFFSET_NS + since_midnight
            }
        }
    }
}

/// `HH:MM:SS.fffffffff` in Asia/Shanghai.
fn shanghai_clock(ts_ns: i64) -> String {
    let of_day = (ts_ns + SHANGHAI_OFFSET_NS).rem_euclid(DAY_NS);
    let secs = of_day / SECOND_NS;
    format!("{:02}:{:02}:{:02}.{:09}", secs / 3600, secs / 60 % 60, secs % 60, of_day % SECOND_NS)
}

/// One printed level: the book's, with the owners counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownLevel {
    pub price: Px,
    pub qty: u64,
    pub orders: u32,
    /// Distinct accounts with an order at this level.
    pub owners: usize,
}

/// The book of one instrument at one time, as printed.
#[derive(Clone, Debug)]
pub struct BookAt {
    pub instrument: String,
    pub ts_ns: i64,
    pub bids: Vec<ShownLevel>,
    pub asks: Vec<ShownLevel>,
    pub last_trade: Option<Px>,
    pub tick: Px,
    pub limits: Option<(Px, Px)>,
    pub missing_reference: bool,
    /// This instrument's records applied and skipped by the book, by cause.
    pub applied: u64,
    pub skipped: [u64; 5],
    /// Records of the whole tape judged late (never applied), up to the stop.
    pub late: u64,
}

pub fn run(args: BookArgs) -> Result<(), CmdError> {
    let book = book_at(&args)?;
    // Through the checked writer: a closed pipe (`| head`) ends quietly.
    if args.json { super::print(&format!("{}\n", to_json(&book))) } else { super::print(&render(&book)) }
}

/// Validates the options (every problem at once), then replays the tape
/// up to `--at`.
pub fn book_at(args: &BookArgs) -> Result<BookAt, CmdError> {
    let mut problems = Vec::new();
    let native = match is_native_tape(&args.tape) {
        Ok(native) => native,
        Err(e) => {
            problems.push(format!("{}: cannot read tape: {e}", args.tape.display()));
            false
        }
    };
    if !valid_instrument(args.instrument.as_bytes()) {
        problems
            .push(format!("--instrument {}: not an instrument name (1-12 bytes of [A-Za-z0-9._-])", args.instrument));
    }
    let at = At::parse(&args.at).unwrap_or_else(|e| {
        problems.push(e);
        At::Raw(0)
    });
    if !(1..=1000).contains(&args.levels) {
        problems.push(format!("--levels {}: must be between 1 and 1000", args.levels));
    }
    super::check_lateness_ms(args.lateness_ms, &mut problems);
    let reference = args.reference.load(&args.tape, &mut problems);
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let groups = Arc::new(reference.groups);
    let instruments = Arc::new(reference.instruments);
    let lateness_ns = args.lateness_ms as i64 * MS;
    let failed = |e: crate::ingest::FeedError| CmdError::Failed(e.to_string());
    if native {
        let tape = Tape::open_streaming(&args.tape).map_err(|e| CmdError::Failed(e.to_string()))?;
        let (feed, names) = NativeFeed::new(tape, groups);
        replay_to(feed, names, instruments, args, at, lateness_ns)
    } else {
        let file = super::open_tape(&args.tape)
            .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", args.tape.display())))?;
        let validator = Validator::new(Limits::default(), groups.clone());
        let names = super::validator_names(&validator, groups);
        let feed = CsvFeed::new(file, &args.tape, validator, RejectLog::discard()).map_err(failed)?;
        replay_to(feed, names, instruments, args, at, lateness_ns)
    }
}

/// How often (in records of the tape) the reorder buffer is drained.
const DRAIN_EVERY: u64 = 128;

fn replay_to<F: Feed>(
    mut feed: F,
    names: Names,
    instruments: Arc<Instruments>,
    args: &BookArgs,
    at: At,
    lateness_ns: i64,
) -> Result<BookAt, CmdError> {
    let reference = Reference { instruments, names: names.instruments.clone() };
    let mut books = Books::new(BookLimits::default(), reference);
    let mut watermark = Watermark::new(lateness_ns);
    let mut reorder = ReorderBuffer::with_capacity(1 << 12);
    let mut target: Option<InstrumentId> = None;
    // Instrument ids below this have been compared with the target's name.
    let mut checked: u32 = 0;
    let mut at_ns: Option<i64> = None;
    let mut first_ts: Option<i64> = None;
    let (mut late, mut applied, mut since_drain) = (0u64, 0u64, 0u64);
    let wanted = args.instrument.as_bytes();
    let find_target = |table: &NameTable, upto: u32, checked: &mut u32| -> Option<InstrumentId> {
        let mut found = None;
        while *checked < upto {
            let (bytes, len) = table.get(*checked);
            if &bytes[..len] == wanted {
                found = Some(*checked);
            }
            *checked += 1;
        }
        found
    };
    loop {
        let drain = |reorder: &mut ReorderBuffer, books: &mut Books, upto: i64| {
            reorder.drain_before(upto, |run| {
                for pending in run {
                    books.apply(&pending.event);
                }
            })
        };
        let more = feed
            .pump(&mut |event: &Event| {
                let first = *first_ts.get_or_insert(event.ts_ns);
                let at_ns = *at_ns.get_or_insert_with(|| at.resolve(first));
                if watermark.observe(event.ts_ns) {
                    late += 1;
                    return;
                }
                if target.is_none() && event.instrument >= checked {
                    target = find_target(&names.instruments, event.instrument + 1, &mut checked);
                }
                if Some(event.instrument) == target {
                    reorder.push(Pending { event: *event, ingest_ns: 0 });
                }
                since_drain += 1;
                if since_drain == DRAIN_EVERY {
                    since_drain = 0;
                    let upto = watermark.current().min(at_ns.saturating_add(1));
                    applied += drain(&mut reorder, &mut books, upto);
                }
            })
            .map_err(|e| CmdError::Failed(e.to_string()))?;
        let past = at_ns.is_some_and(|at_ns| watermark.current() > at_ns);
        if !more || (past && target.is_some()) {
            if let Some(at_ns) = at_ns {
                applied += drain(&mut reorder, &mut books, at_ns.saturating_add(1));
            }
            break;
        }
        // Past --at without the instrument: nothing at or before --at can
        // still be applied; reading on only tells whether it is on the tape.
    }
    let (Some(first_ts), Some(at_ns)) = (first_ts, at_ns) else {
        return Err(CmdError::Usage(format!("{}: the tape has no accepted record", args.tape.display())));
    };
    if at_ns < first_ts {
        return Err(CmdError::Usage(format!(
            "--at {}: {} ({at_ns} ns) is before the tape's first record at {} ({first_ts} ns)",
            args.at,
            shanghai_clock(at_ns),
            shanghai_clock(first_ts)
        )));
    }
    let Some(instrument) = target.or_else(|| find_target(&names.instruments, names.instruments.len() as u32, &mut 0))
    else {
        return Err(CmdError::Usage(format!(
            "--instrument {}: no accepted record of it on {}",
            args.instrument,
            args.tape.display()
        )));
    };
    Ok(shown(&books, instrument, args, at_ns, applied, late))
}

fn shown(books: &Books, instrument: InstrumentId, args: &BookArgs, at_ns: i64, applied: u64, late: u64) -> BookAt {
    // Distinct owners per level, from the resting orders (cold: once).
    let mut owners: HashMap<(u8, Px), HashSet<u32>> = HashMap::new();
    for order in books.orders_of(instrument) {
        owners.entry((order.side as u8, order.price)).or_default().insert(order.account);
    }
    let side = |book: &InstrumentBook, side: Side| -> Vec<ShownLevel> {
        book.levels(side)
            .take(args.levels)
            .map(|&Level { price, qty, orders }| ShownLevel {
                price,
                qty,
                orders,
                owners: owners.get(&(side as u8, price)).map_or(0, |o| o.len()),
            })
            .collect()
    };
    let book = books.book(instrument);
    BookAt {
        instrument: args.instrument.clone(),
        ts_ns: at_ns,
        bids: book.map_or(Vec::new(), |b| side(b, Side::Buy)),
        asks: book.map_or(Vec::new(), |b| side(b, Side::Sell)),
        last_trade: book.and_then(|b| b.last_trade()),
        tick: book.map_or(crate::instruments::DEFAULT_TICK, |b| b.tick()),
        limits: book.and_then(|b| b.limits()),
        missing_reference: book.is_some_and(|b| b.missing_reference()),
        applied,
        skipped: book.map_or([0; 5], |b| b.skipped()),
        late,
    }
}

/// The JSON: `instrument`, `ts_ns`, `bids` and `asks` best first,
/// each level `{price, qty, orders}` with the price a decimal string.
pub fn to_json(book: &BookAt) -> String {
    // Written by hand to keep the key order; names and prices
    // need no escaping (FEED.md name rules, digits and a dot).
    let levels = |levels: &[ShownLevel]| -> String {
        let items: Vec<String> = levels
            .iter()
            .map(|l| format!("{{\"price\":\"{}\",\"qty\":{},\"orders\":{}}}", px_string(l.price), l.qty, l.orders))
            .collect();
        format!("[{}]", items.join(","))
    };
    format!(
        "{{\"instrument\":\"{}\",\"ts_ns\":{},\"bids\":{},\"asks\":{}}}",
        book.instrument,
        book.ts_ns,
        levels(&book.bids),
        levels(&book.asks)
    )
}

/// The text form: asks from the worst printed level down to the best,
/// then bids from the best down, each with its order and owner counts.
pub fn render(book: &BookAt) -> String {
    let mut s =
        format!("book {} at {} Asia/Shanghai (ts_ns {})\n", book.instrument, shanghai_clock(book.ts_ns), book.ts_ns);
    let limits = match book.limits {
        Some((down, up)) => format!("limits {}..{}", px_string(down), px_string(up)),
        None if book.missing_reference => "not in instruments.csv".to_string(),
        None => "no instruments.csv".to_string(),
    };
    s += &format!(
        "last trade {}; tick {}; {limits}\n",
        book.last_trade.map_or("none".to_string(), px_string),
        px_string(book.tick)
    );
    s += &format!("{:<5} {:>5} {:>14} {:>12} {:>7} {:>7}\n", "side", "level", "price", "qty", "orders", "owners");
    let row = |s: &mut String, name: &str, index: usize, l: &ShownLevel| {
        *s += &format!(
            "{name:<5} {:>5} {:>14} {:>12} {:>7} {:>7}\n",
            index + 1,
            px_string(l.price),
            l.qty,
            l.orders,
            l.owners
        );
    };
    for (index, level) in book.asks.iter().enumerate().rev() {
        row(&mut s, "ask", index, level);
    }
    if book.asks.is_empty() && book.bids.is_empty() {
        s += "(empty book)\n";
    }
    for (index, level) in book.bids.iter().enumerate() {
        row(&mut s, "bid", index, level);
    }
    let skipped: Vec<String> = SKIP_CAUSES
        .iter()
        .zip(book.skipped)
        .filter(|(_, n)| *n > 0)
        .map(|(cause, n)| format!("{} {n}", cause_name(*cause)))
        .collect();
    s += &format!(
        "applied {} records of {}; skipped by the book: {}; late records on the tape: {}\n",
        book.applied,
        book.instrument,
        if skipped.is_empty() { "none".to_string() } else { skipped.join(", ") },
        book.late
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_resolve_on_the_tapes_day() {
        assert_eq!(At::parse("1793583000000000000"), Ok(At::Raw(1_793_583_000_000_000_000)));
        assert_eq!(At::parse("09:30:00"), Ok(At::Clock(34_200 * SECOND_NS)));
        assert_eq!(At::parse("09:30:00.25"), Ok(At::Clock(34_200 * SECOND_NS + 250_000_000)));
        assert_eq!(At::parse("13:00:00.000000001"), Ok(At::Clock(46_800 * SECOND_NS + 1)));
        for bad in ["9:30:00", "24:00:00", "09:60:00", "09:30", "09:30:00.", "09:30:00.1234567890", "x", "-5", ""] {
            assert!(At::parse(bad).is_err(), "{bad}");
        }
        // 1793583000000000000 is 2026-11-03 01:30:00 UTC = 09:30:00 in Shanghai.
        let first = 1_793_583_000_000_000_000;
        assert_eq!(shanghai_clock(first), "09:30:00.000000000");
        assert_eq!(At::Clock(34_200 * SECOND_NS).resolve(first), first);
        // A record just after Shanghai midnight (16:00 UTC the day before) is on the new day.
        let after_midnight = first - 9 * 3_600 * SECOND_NS - 29 * 60 * SECOND_NS;
        assert_eq!(shanghai_clock(after_midnight), "00:01:00.000000000");
        assert_eq!(At::Clock(34_200 * SECOND_NS).resolve(after_midnight), first);
    }
}
