//! Checks every format shares, applied in feed order: the field rules
//! (`check_fields`), sequence numbers and event time (`Sequencer`), the
//! order lifecycle of FEED.md, and interning. The validator owns the
//! open-order table and the interners.
//!
//! # How a feed is read: sequence and event time
//!
//! A bad record must never switch detection off for the rest of a tape, so
//! what a rejected record says is never believed:
//!
//! - A rejected record never moves the expected seq or the feed's event
//!   time. A line too broken to parse holds its place in the sequence only
//!   when its first field is exactly the expected seq.
//! - A seq below the expected one is a repeat: rejected.
//! - A seq above the expected one is a jump, held (one record, no
//!   allocation) until the next well-formed record tells what it was. If
//!   that record goes on from the old sequence (`expected <= seq <= jump`),
//!   the jumped record alone was bad: rejected as "seq out of line", and the
//!   sequence goes on as if it had not been there. Otherwise the gap is
//!   real: counted, and the held record is checked and accepted.
//! - A record whose event time is more than `--max-future-ms` (default 10 s)
//!   ahead of the newest accepted event time is held the same way: if the
//!   next record is back more than that bound before it, the feed's time did
//!   not move and it alone was bad (rejected "ts_ns ahead of the feed"); if
//!   the next one is near it or after it, time really jumped (a lunch break,
//!   a quiet instrument) and it is accepted.
//! - A record outside the tape's trading day (the Asia/Shanghai calendar
//!   day of the first accepted record) is rejected.
//! - Lines rejected without a believed seq (malformed, or out of line) may
//!   stand for the seqs they displaced: a next record ahead of the expected
//!   seq by at most their count is in line, not a gap.
//! - A hold is settled by the next well-formed record, after at most
//!   `HOLD_LIMIT` lines, or at the end of the tape (then it is accepted).
//!
//! The same rules run on CSV and native tapes, with the same outcome.
//!
//! A live feed cannot count on a next record: a quiet feed may send none
//! for minutes. `Lookahead` holds a jump the same way, and when no
//! record has come for `idle_release` after the hold began, nothing
//! contradicted the jump in time: the held record is taken as a real gap
//! (or time jump), checked and accepted. Records of the old sequence that
//! come after that are repeats. A checkpoint or the end of the feed
//! settles a hold the same way (`Lookahead::flush`). The daemon's network
//! feed (`ingest/live.rs`) uses it, released after 2 ms, by a heartbeat,
//! or before a checkpoint (docs/WIRE.md).

use super::{FeedStats, GAP_RANGES_KEPT, decode_stats, encode_stats};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{AccountId, Event, InstrumentId, Kind, Side};
use crate::flat_map::FlatMap;
use crate::symbols::{Groups, Interner, Packed, pack, valid_account, valid_instrument};
use std::fmt;
use std::sync::Arc;

/// A record as decoded from text, before interning and lifecycle checks.
/// Names are packed (`symbols::pack`) by the decoder, already checked
/// against FEED.md's name rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawRecord {
    pub seq: u64,
    pub ts_ns: i64,
    pub kind: Kind,
    pub order_id: u64,
    pub account: Packed,
    pub instrument: Packed,
    pub side: Side,
    pub price: i64,
    pub qty: u64,
    pub contra_order_id: u64,
    /// Zero on N and C records.
    pub contra_account: Packed,
}

/// Why a record was rejected. Every variant names what was wrong so the
/// rejects file reads on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    EmptyLine,
    LineTooLong(usize),
    ColumnCount(usize),
    BadField(&'static str),
    /// `contra_order_id`/`contra_account` filled on an N or C record.
    ContraOnOrder(&'static str),
    /// `contra_order_id`/`contra_account` empty on a T record.
    MissingContra(&'static str),
    RepeatedSeq {
        seq: u64,
        expected: u64,
    },
    /// A seq ahead of the expected one, after which the records went on
    /// from the expected one: a single bad seq, not a gap.
    SeqOutOfLine {
        seq: u64,
        expected: u64,
    },
    /// Event time outside the tape's trading day (`start`: the day's first nanosecond).
    OutsideDay {
        ts_ns: i64,
        start: i64,
    },
    /// Event time too far ahead of the feed, and the records after it are not.
    TimeAhead {
        ts_ns: i64,
        ahead_ms: i64,
        bound_ms: i64,
    },
    DuplicateOrder(u64),
    UnknownOrder(u64),
    SelfMatch(u64),
    Mismatch {
        order_id: u64,
        field: &'static str,
    },
    CancelQty {
        order_id: u64,
        qty: u64,
        open: u64,
    },
    Overfill {
        order_id: u64,
        qty: u64,
        open: u64,
    },
    TableFull(&'static str),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::EmptyLine => write!(f, "empty line"),
            RejectReason::LineTooLong(n) => write!(f, "line longer than {n} bytes"),
            RejectReason::ColumnCount(n) => write!(f, "wrong column count: {n} (expected 11)"),
            RejectReason::BadField(field) => write!(f, "bad {field}"),
            RejectReason::ContraOnOrder(field) => write!(f, "{field} must be empty on an N or C record"),
            RejectReason::MissingContra(field) => write!(f, "{field} missing on a T record"),
            RejectReason::RepeatedSeq { seq, expected } => {
                write!(f, "repeated or backward seq {seq} (expected {expected})")
            }
            RejectReason::SeqOutOfLine { seq, expected } => {
                write!(f, "seq {seq} out of line (expected {expected}, and the records after it go on from there)")
            }
            RejectReason::OutsideDay { ts_ns, start } => {
                write!(f, "ts_ns {ts_ns} outside the tape's trading day (Asia/Shanghai, from ts_ns {start}, 24 h)")
            }
            RejectReason::TimeAhead { ts_ns, ahead_ms, bound_ms } => write!(
                f,
                "ts_ns {ts_ns} is {ahead_ms} ms ahead of the feed (more than {bound_ms} ms), and the records after it are not"
            ),
            RejectReason::DuplicateOrder(id) => write!(f, "order {id} announced twice"),
            RejectReason::UnknownOrder(id) => write!(f, "order {id} unknown, or already fully executed or cancelled"),
            RejectReason::SelfMatch(id) => write!(f, "trade of order {id} against itself"),
            RejectReason::Mismatch { order_id, field } => write!(f, "{field} differs from order {order_id}'s"),
            RejectReason::CancelQty { order_id, qty, open } => {
                write!(f, "cancel qty {qty} of order {order_id} is not its open qty {open}")
            }
            RejectReason::Overfill { order_id, qty, open } => {
                write!(f, "trade qty {qty} exceeds order {order_id}'s open qty {open}")
            }
            RejectReason::TableFull(table) => write!(f, "{table} table full"),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct OpenOrder {
    open_qty: u64,
    account: AccountId,
    instrument: InstrumentId,
    side: Side,
}

/// The open orders of one feed and FEED.md's lifecycle rules over them, in
/// feed order. Shared by the validator (CSV and wire records, after
/// interning) and the native feed (ids from the tape), so a record is judged
/// the same whatever carried it. Bounded: past `limit` open orders a new
/// order is rejected ("open-order table full").
pub struct Lifecycle {
    open: FlatMap<u64, OpenOrder>,
    limit: usize,
    /// Set once a filtered replay left blocks unread: an order it never
    /// saw enter may be named later, and the record is taken as the tape
    /// (checked by import) says instead of rejected.
    partial: bool,
}

impl Lifecycle {
    pub fn new(limit: usize) -> Lifecycle {
        // Sized for a busy book, not the limit: a table much larger than
        // the open orders spreads every lookup over cold cache lines.
        Lifecycle { open: FlatMap::with_capacity(limit.min(1 << 16)), limit, partial: false }
    }

    /// Checks `e` against the open orders and, if it is sound, applies it.
    /// One probe per order named (`FlatMap::index_of`), as this runs for
    /// every record of every feed.
    #[inline(always)]
    pub fn apply(&mut self, e: &Event) -> Result<(), RejectReason> {
        match e.kind {
            Kind::New => {
                if self.open.len() >= self.limit {
                    return Err(self.full_or_duplicate(e.order_id));
                }
                let order = OpenOrder { open_qty: e.qty, account: e.account, instrument: e.instrument, side: e.side };
                if !self.open.insert_new(e.order_id, order) {
                    return Err(RejectReason::DuplicateOrder(e.order_id));
                }
            }
            Kind::Cancel => {
                let Some(at) = self.open.index_of(e.order_id) else {
                    return self.unknown(e, e.order_id);
                };
                let order = *self.open.at(at);
                check_owner(&order, e.order_id, e.account, e.instrument, e.side)?;
                if e.qty != order.open_qty {
                    let (order_id, qty, open) = (e.order_id, e.qty, order.open_qty);
                    return Err(RejectReason::CancelQty { order_id, qty, open });
                }
                self.open.remove_at(at);
            }
            Kind::Trade => {
                if e.order_id == e.contra_order_id {
                    return Err(RejectReason::SelfMatch(e.order_id));
                }
                let Some(buy_at) = self.open.index_of(e.order_id) else {
                    return self.unknown(e, e.order_id);
                };
                let Some(sell_at) = self.open.index_of(e.contra_order_id) else {
                    return self.unknown(e, e.contra_order_id);
                };
                let (buy, sell) = (*self.open.at(buy_at), *self.open.at(sell_at));
                check_owner(&buy, e.order_id, e.account, e.instrument, Side::Buy)?;
                check_owner(&sell, e.contra_order_id, e.contra_account, e.instrument, Side::Sell)?;
                for (order_id, order) in [(e.order_id, &buy), (e.contra_order_id, &sell)] {
                    if e.qty > order.open_qty {
                        return Err(RejectReason::Overfill { order_id, qty: e.qty, open: order.open_qty });
                    }
                }
                self.open.at_mut(buy_at).open_qty -= e.qty;
                self.open.at_mut(sell_at).open_qty -= e.qty;
                // A removal moves other slots: the second one is found again.
                if buy.open_qty == e.qty {
                    self.open.remove_at(buy_at);
                }
                if sell.open_qty == e.qty {
                    self.open.remove(e.contra_order_id);
                }
            }
        }
        Ok(())
    }

    /// Marks the open orders as incomplete (see `partial`).
    pub fn set_partial(&mut self) {
        self.partial = true;
    }

    /// A cancel or trade naming an order not open. Where blocks were left
    /// unread the record is taken as it is, and a trade still fills the
    /// side that is known.
    #[cold]
    fn unknown(&mut self, e: &Event, order_id: u64) -> Result<(), RejectReason> {
        if !self.partial {
            return Err(RejectReason::UnknownOrder(order_id));
        }
        let named: &[u64] = if e.kind == Kind::Trade { &[e.order_id, e.contra_order_id] } else { &[e.order_id] };
        for &id in named {
            if let Some(at) = self.open.index_of(id) {
                let order = self.open.at_mut(at);
                order.open_qty = order.open_qty.saturating_sub(e.qty);
                if e.kind == Kind::Cancel || order.open_qty == 0 {
                    self.open.remove_at(at);
                }
            }
        }
        Ok(())
    }

    /// A new order with the table at its limit: a duplicate is still named as such.
    #[cold]
    fn full_or_duplicate(&self, order_id: u64) -> RejectReason {
        if self.open.contains_key(order_id) {
            RejectReason::DuplicateOrder(order_id)
        } else {
            RejectReason::TableFull("open-order")
        }
    }

    /// Brings an order's slot into cache (a record a few ahead).
    #[inline]
    pub fn prefetch(&self, order_id: u64) {
        self.open.prefetch(order_id);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Times the table grew after start-up.
    pub fn grew(&self) -> u64 {
        self.open.grew
    }

    pub fn snapshot(&self, w: &mut Writer<'_>) {
        w.u64(self.open.len() as u64);
        for (order_id, order) in self.open.iter() {
            w.u64(order_id);
            w.u64(order.open_qty);
            w.u32(order.account);
            w.u32(order.instrument);
            w.u8(order.side as u8);
        }
    }

    /// The open orders as of a checkpoint; every id must be below the
    /// name counts, and there may be no more orders than the limit.
    pub fn restore(&mut self, r: &mut Reader<'_>, accounts: usize, instruments: usize) -> Result<(), DecodeError> {
        let orders = r.count(25)?;
        if orders > self.limit {
            return Err(DecodeError(format!("{orders} open orders, more than the limit of {}", self.limit)));
        }
        self.open.reserve(orders);
        for _ in 0..orders {
            let order_id = r.u64()?;
            let open_qty = r.u64()?;
            let (account, instrument) = (r.u32()?, r.u32()?);
            let side = match r.u8()? {
                b'B' => Side::Buy,
                b'S' => Side::Sell,
                other => return Err(DecodeError(format!("bad side byte {other}"))),
            };
            if account as usize >= accounts || instrument as usize >= instruments {
                return Err(DecodeError(format!("open order {order_id} refers to an unknown name")));
            }
            self.open.insert(order_id, OpenOrder { open_qty, account, instrument, side });
        }
        Ok(())
    }
}

/// Stated limits of the validator's tables.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub accounts: usize,
    pub instruments: usize,
    pub open_orders: usize,
    pub time: TimeRules,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { accounts: 1 << 20, instruments: 1 << 16, open_orders: 1 << 24, time: TimeRules::default() }
    }
}

/// Event-time plausibility: the rules that keep one bad timestamp from
/// moving the watermark (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRules {
    /// A record more than this far ahead of the newest accepted event time
    /// is held for a look-ahead (0: no bound).
    pub max_future_ns: i64,
    /// Whether records outside the trading day (the Asia/Shanghai calendar
    /// day of the first accepted record) are rejected.
    pub one_day: bool,
}

impl Default for TimeRules {
    fn default() -> TimeRules {
        TimeRules { max_future_ns: 10 * 1_000_000_000, one_day: true }
    }
}

/// FEED.md's schedule is in Asia/Shanghai time: UTC+8, no daylight saving.
const SHANGHAI_OFFSET_NS: i128 = 8 * 3600 * 1_000_000_000;
const DAY_NS: i128 = 24 * 3600 * 1_000_000_000;

/// The Asia/Shanghai calendar day holding `ts_ns`, as `[start, end)` in
/// Unix nanoseconds, clamped to the i64 range (no overflow at the extremes).
pub fn trading_day(ts_ns: i64) -> (i64, i64) {
    let local = ts_ns as i128 + SHANGHAI_OFFSET_NS;
    let start = local.div_euclid(DAY_NS) * DAY_NS - SHANGHAI_OFFSET_NS;
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    (clamp(start), clamp(start + DAY_NS))
}

/// At most this many lines may pass (malformed or repeated) before a held
/// record is settled: after them it is taken as it stands.
pub const HOLD_LIMIT: u32 = 16;

/// How a record stands against the sequence and event time before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// In line: check its lifecycle and accept it.
    InLine,
    /// A jump (seq ahead of the expected one, or event time too far
    /// ahead): the record waits for the next one to tell a gap from a
    /// typo. The caller keeps it aside and calls `resolve` on the next.
    Hold,
    Reject(RejectReason),
}

/// What the record after a held one says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A real gap or time jump: check the held record's lifecycle and accept it.
    Confirm,
    /// The records go on from before it: it alone was bad.
    Reject(RejectReason),
    /// This record tells nothing (malformed, or a repeat): keep holding.
    Wait,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    seq: u64,
    ts_ns: i64,
    seq_jump: bool,
    time_jump: bool,
    waited: u32,
    /// Broken lines after it that stood in the seqs right after it.
    placed_after: u64,
}

/// The sequence and event-time checks of one feed, in feed order. Owns the
/// expected seq, the newest accepted event time and the trading day, and
/// at most one record held for a look-ahead. Fixed size, no allocation.
#[derive(Clone, Debug)]
pub struct Sequencer {
    expected_seq: Option<u64>,
    /// Newest `ts_ns` of the accepted records; `i64::MIN` before any.
    recent_ts_ns: i64,
    day: Option<(i64, i64)>,
    rules: TimeRules,
    held: Option<Held>,
    /// False for a native tape, whose gaps import counted (its header
    /// says how many): a gap there is judged as on a CSV tape, not counted.
    count_gaps: bool,
    /// The fast path (`in_line`): a record with seq `fast_seq` and event
    /// time in `fast_lo..=fast_hi` (inside the day, not too far ahead) is in
    /// line; empty until a record is accepted, and while anything is unusual.
    fast_seq: u64,
    fast_lo: i64,
    fast_hi: i64,
    /// What `commit_in_line` needs to move `fast_hi`, worked out once: the
    /// future bound (`i64::MAX` for none; added to a negative time it ends
    /// a little short of `i64::MAX`, which only sends such a record to
    /// `judge`) and the day's last nanosecond.
    future_bound_ns: i64,
    fast_cap: i64,
    /// Broken lines that stood in the seqs right after a held record that
    /// was then confirmed: its commit moves the expected seq past them.
    placed_after_held: u64,
    /// Lines rejected since the last committed record whose seq was not
    /// believed: they may stand for the seqs they displaced, so the next
    /// record being that many ahead is no gap.
    unplaced: u64,
    /// The newest gap `commit` counted, `(first missing seq, seq after the
    /// gap, its ts_ns)`, until a live feed takes it to raise a `feed-gap`
    /// alert (`take_gap`). Replays never take it.
    last_gap: Option<(u64, u64, i64)>,
}

impl Sequencer {
    pub fn new(rules: TimeRules) -> Sequencer {
        Sequencer {
            expected_seq: None,
            recent_ts_ns: i64::MIN,
            day: None,
            rules,
            held: None,
            count_gaps: true,
            fast_seq: 0,
            fast_lo: 1,
            fast_hi: 0,
            future_bound_ns: if rules.max_future_ns > 0 { rules.max_future_ns } else { i64::MAX },
            fast_cap: i64::MAX,
            placed_after_held: 0,
            unplaced: 0,
            last_gap: None,
        }
    }

    /// A native tape's: the same rules, but gaps are not counted again
    /// (import counted them).
    pub fn native(rules: TimeRules) -> Sequencer {
        Sequencer { count_gaps: false, ..Sequencer::new(rules) }
    }

    /// The per-record fast path: true when the record is next in seq and in
    /// line in time, so that `judge` would say `InLine`; the caller then
    /// checks its lifecycle and calls `commit_in_line`. Three compares and
    /// no branch on the data; anything else takes `judge`.
    #[inline(always)]
    pub fn in_line(&self, seq: u64, ts_ns: i64) -> bool {
        (seq == self.fast_seq) & (ts_ns >= self.fast_lo) & (ts_ns <= self.fast_hi)
    }

    /// `commit` of a record `in_line` passed (no gap, nothing held or unplaced).
    #[inline(always)]
    pub fn commit_in_line(&mut self, seq: u64, ts_ns: i64, accepted: bool) {
        debug_assert!(self.held.is_none() && self.unplaced == 0 && self.placed_after_held == 0);
        self.expected_seq = Some(seq + 1);
        self.fast_seq = seq + 1;
        if accepted {
            // As `refresh_fast` would, with the day unchanged (it was fixed
            // before any record could take this path).
            self.recent_ts_ns = self.recent_ts_ns.max(ts_ns);
            self.fast_hi = self.recent_ts_ns.saturating_add(self.future_bound_ns).min(self.fast_cap);
        }
    }

    fn refresh_fast(&mut self) {
        let usable = self.held.is_none() && self.unplaced == 0 && self.placed_after_held == 0;
        let (Some(expected), true) = (self.expected_seq, usable) else {
            (self.fast_lo, self.fast_hi) = (1, 0);
            return;
        };
        if self.recent_ts_ns == i64::MIN || (self.rules.one_day && self.day.is_none()) {
            (self.fast_lo, self.fast_hi) = (1, 0);
            return;
        }
        let (start, end) = self.day.unwrap_or((i64::MIN, i64::MAX));
        self.fast_cap = end.saturating_sub(1);
        self.fast_seq = expected;
        (self.fast_lo, self.fast_hi) =
            (start, self.recent_ts_ns.saturating_add(self.future_bound_ns).min(self.fast_cap));
    }

    /// Whether a whole block, by its index summary, would be judged in
    /// line record by record (seq `first_seq` next and its records
    /// consecutive, checked by the caller; every time in the day, none too
    /// far ahead), so that a filtered replay may leave it unread.
    pub fn block_in_line(&self, first_seq: u64, first_ts: i64, min_ts: i64, max_ts: i64, max_jump: i64) -> bool {
        let usable = self.held.is_none() && self.unplaced == 0 && self.placed_after_held == 0;
        if !usable || self.expected_seq != Some(first_seq) || self.recent_ts_ns == i64::MIN {
            return false;
        }
        let in_day = match self.day {
            Some((start, end)) => min_ts >= start && max_ts < end,
            None => !self.rules.one_day,
        };
        let bound = self.rules.max_future_ns;
        in_day && (bound <= 0 || (first_ts <= self.recent_ts_ns.saturating_add(bound) && max_jump <= bound))
    }

    /// Moves past a run of records `block_in_line` approved, left unread
    /// or read without a check each (`NativeFeed`'s fast runs), as
    /// committing each in line would: the sequence after the last, the
    /// event time to the newest.
    pub fn skip_past(&mut self, last_seq: u64, max_ts: i64) {
        // `check_fields` refuses u64::MAX; an index that lies saturates.
        self.expected_seq = Some(last_seq.saturating_add(1));
        self.recent_ts_ns = self.recent_ts_ns.max(max_ts);
        self.refresh_fast();
    }

    pub fn rules(&self) -> TimeRules {
        self.rules
    }

    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// The seq the feed needs next (`None` before any record), held record
    /// aside: a rejected record never moves it.
    pub fn expected_seq(&self) -> Option<u64> {
        self.expected_seq
    }

    fn time_ahead(&self, ts_ns: i64) -> bool {
        self.rules.max_future_ns > 0
            && self.recent_ts_ns != i64::MIN
            && ts_ns > self.recent_ts_ns.saturating_add(self.rules.max_future_ns)
    }

    /// Judges a well-formed record (nothing may be held). A record that is
    /// held or rejected here moves nothing; `commit` moves the sequence.
    pub fn judge(&mut self, seq: u64, ts_ns: i64) -> Judged {
        // While a record is held, only a repeat reaches here (`resolve` waits on it).
        debug_assert!(
            self.held.is_none() || self.expected_seq.is_some_and(|e| seq < e),
            "judge while a record is held"
        );
        if let Some(expected) = self.expected_seq
            && seq < expected
        {
            return Judged::Reject(RejectReason::RepeatedSeq { seq, expected });
        }
        if let Some((start, end)) = self.day
            && !(start..end).contains(&ts_ns)
        {
            self.malformed(Some(seq));
            return Judged::Reject(RejectReason::OutsideDay { ts_ns, start });
        }
        let seq_jump = self.expected_seq.is_some_and(|expected| seq > expected.saturating_add(self.unplaced));
        let time_jump = self.time_ahead(ts_ns);
        if seq_jump || time_jump {
            self.held = Some(Held { seq, ts_ns, seq_jump, time_jump, waited: 0, placed_after: 0 });
            self.refresh_fast();
            return Judged::Hold;
        }
        Judged::InLine
    }

    /// Settles the held record by the next line: `next` is its (seq, ts)
    /// when it is well-formed, `None` when it is not. On `Confirm` or
    /// `Reject` the hold is released (the caller then judges `next` itself).
    pub fn resolve(&mut self, next: Option<(u64, i64)>) -> Resolved {
        let Some(mut held) = self.held else { return Resolved::Confirm };
        let expected = self.expected_seq.unwrap_or(0);
        let verdict = match next {
            // The next record back at or below the jump (a repeat of its seq
            // included) goes on from the old sequence: the jump alone was bad.
            Some((seq, _)) if held.seq_jump && (expected..=held.seq).contains(&seq) => {
                Resolved::Reject(RejectReason::SeqOutOfLine { seq: held.seq, expected })
            }
            Some((seq, _)) if seq < expected => Resolved::Wait,
            // The next record back well before the held one: the feed's time
            // did not move, the held record alone was ahead.
            Some((_, ts_ns)) if held.time_jump && ts_ns < held.ts_ns.saturating_sub(self.rules.max_future_ns) => {
                let ahead_ns = held.ts_ns.saturating_sub(self.recent_ts_ns);
                Resolved::Reject(RejectReason::TimeAhead {
                    ts_ns: held.ts_ns,
                    ahead_ms: ahead_ns / 1_000_000,
                    bound_ms: self.rules.max_future_ns / 1_000_000,
                })
            }
            Some(_) => Resolved::Confirm,
            None => Resolved::Wait,
        };
        match verdict {
            Resolved::Wait => {
                held.waited += 1;
                if held.waited >= HOLD_LIMIT {
                    self.held = None;
                    self.placed_after_held = held.placed_after;
                    return Resolved::Confirm;
                }
                self.held = Some(held);
            }
            Resolved::Reject(_) => {
                self.held = None;
                self.unplaced += 1 + held.placed_after;
            }
            Resolved::Confirm => {
                self.held = None;
                self.placed_after_held = held.placed_after;
            }
        }
        self.refresh_fast();
        verdict
    }

    /// The feed ended with a record held: nothing contradicts it.
    pub fn resolve_at_end(&mut self) {
        if let Some(held) = self.held.take() {
            self.placed_after_held = held.placed_after;
        }
        self.refresh_fast();
    }

    /// A record in line (or confirmed) whose lifecycle was checked: its seq
    /// takes its place (a jump is counted as a gap), and if it was accepted
    /// its event time moves the feed's recent time and fixes the day.
    pub fn commit(&mut self, seq: u64, ts_ns: i64, accepted: bool, line_no: u64, stats: &mut FeedStats) {
        if let Some(expected) = self.expected_seq
            && seq > expected.saturating_add(self.unplaced)
            && self.count_gaps
        {
            stats.gaps += 1;
            stats.missing_records += seq - expected;
            self.last_gap = Some((expected, seq, ts_ns));
            if stats.gap_ranges.len() < GAP_RANGES_KEPT {
                stats.gap_ranges.push((expected, seq - 1, line_no));
            }
        }
        // `check_fields` refuses u64::MAX, so this cannot wrap.
        self.expected_seq = Some(seq.saturating_add(1).saturating_add(self.placed_after_held));
        self.unplaced = 0;
        self.placed_after_held = 0;
        if accepted {
            self.recent_ts_ns = self.recent_ts_ns.max(ts_ns);
            if self.rules.one_day && self.day.is_none() {
                self.day = Some(trading_day(ts_ns));
            }
        }
        self.refresh_fast();
    }

    /// The gap the last `commit` counted, once (live feeds: a `feed-gap` alert).
    #[inline]
    pub fn take_gap(&mut self) -> Option<(u64, u64, i64)> {
        self.last_gap.take()
    }

    /// A line too broken to judge whose seq could be read: it holds its
    /// place only when that seq is exactly the expected one (a mistyped or
    /// shifted first field must not move the sequence).
    pub fn malformed(&mut self, seq: Option<u64>) {
        if let Some(held) = self.held.as_mut() {
            if seq == held.seq.checked_add(1 + held.placed_after) {
                held.placed_after += 1;
            }
            return;
        }
        match (seq, self.expected_seq) {
            (Some(seq), Some(expected)) if seq == expected => self.expected_seq = Some(expected.saturating_add(1)),
            _ => self.unplaced += 1,
        }
        self.refresh_fast();
    }

    /// Only between records, never while one is held (checkpoints are cut
    /// right after an emitted record).
    pub fn snapshot(&self, w: &mut Writer<'_>) {
        debug_assert!(self.held.is_none(), "a checkpoint while a record is held");
        w.u8(self.expected_seq.is_some() as u8);
        w.u64(self.expected_seq.unwrap_or(0));
        w.i64(self.recent_ts_ns);
        w.u8(self.day.is_some() as u8);
        let (start, end) = self.day.unwrap_or((0, 0));
        w.i64(start);
        w.i64(end);
        w.u64(self.unplaced);
    }

    pub fn restore_native(rules: TimeRules, r: &mut Reader<'_>) -> Result<Sequencer, DecodeError> {
        Ok(Sequencer { count_gaps: false, ..Sequencer::restore(rules, r)? })
    }

    pub fn restore(rules: TimeRules, r: &mut Reader<'_>) -> Result<Sequencer, DecodeError> {
        let mut s = Sequencer::new(rules);
        let has_seq = r.u8()? != 0;
        let seq = r.u64()?;
        s.expected_seq = has_seq.then_some(seq);
        s.recent_ts_ns = r.i64()?;
        let has_day = r.u8()? != 0;
        let day = (r.i64()?, r.i64()?);
        s.day = (has_day && rules.one_day).then_some(day);
        s.unplaced = r.u64()?;
        s.refresh_fast();
        Ok(s)
    }
}

/// A well-formed record as the decoder read it, or why it could not be
/// (with its seq, when its first field could be read).
pub type Offered = Result<RawRecord, (Option<u64>, RejectReason)>;

/// The look-ahead of a feed that cannot always wait for the next record (a
/// live feed): at most one record held, with the caller's `tag` (what it
/// needs to emit or reject the record later: the wire record, a line) and
/// its place (line or seq, for the gap report). Fixed size, no allocation;
/// every outcome goes to `settled`, in feed order.
#[derive(Clone, Debug)]
pub struct Lookahead<T: Copy> {
    held: Option<(RawRecord, T, u64)>,
    /// When the hold began (the caller's clock, nanoseconds).
    since_ns: u64,
    idle_release_ns: u64,
}

impl<T: Copy> Lookahead<T> {
    /// `idle_release_ns`: how long a held record waits for a next one
    /// before it is taken as a real jump (see the module doc).
    pub fn new(idle_release_ns: u64) -> Lookahead<T> {
        Lookahead { held: None, since_ns: 0, idle_release_ns }
    }

    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// When `on_idle` will release the held record, if one is held.
    pub fn deadline_ns(&self) -> Option<u64> {
        self.held.map(|_| self.since_ns.saturating_add(self.idle_release_ns))
    }

    /// One record from the feed, in feed order. A held record it settles is
    /// reported first, then this record (unless it is held in turn). `now`
    /// is read only when a hold begins.
    pub fn offer(
        &mut self,
        v: &mut Validator,
        record: Offered,
        tag: T,
        place: u64,
        now_ns: impl FnOnce() -> u64,
        settled: &mut impl FnMut(T, Result<Event, RejectReason>),
    ) {
        if let Some((raw, held_tag, held_place)) = self.held {
            let next = record.as_ref().ok().map(|r| (r.seq, r.ts_ns));
            let outcome = match v.seq.resolve(next) {
                Resolved::Wait => None,
                Resolved::Confirm => Some(v.admit(&raw, held_place)),
                Resolved::Reject(reason) => Some(Err(reason)),
            };
            if let Some(outcome) = outcome {
                self.held = None;
                settled(held_tag, outcome);
            }
        }
        let outcome = match record {
            Ok(raw) => match v.seq.judge(raw.seq, raw.ts_ns) {
                Judged::InLine => v.admit(&raw, place),
                Judged::Hold => {
                    self.held = Some((raw, tag, place));
                    self.since_ns = now_ns();
                    return;
                }
                Judged::Reject(reason) => Err(reason),
            },
            Err((seq, reason)) => {
                v.seq.malformed(seq);
                Err(reason)
            }
        };
        settled(tag, outcome);
    }

    /// The feed is quiet: a record held for `idle_release_ns` or longer is
    /// taken as a real jump. Returns whether one was released.
    pub fn on_idle(
        &mut self,
        v: &mut Validator,
        now_ns: u64,
        settled: &mut impl FnMut(T, Result<Event, RejectReason>),
    ) -> bool {
        if self.deadline_ns().is_some_and(|deadline| now_ns >= deadline) {
            self.flush(v, settled);
            return true;
        }
        false
    }

    /// Settles a held record now (before a checkpoint, at the end of the
    /// feed): nothing contradicted it, so it is checked and accepted.
    pub fn flush(&mut self, v: &mut Validator, settled: &mut impl FnMut(T, Result<Event, RejectReason>)) {
        if let Some((raw, tag, place)) = self.held.take() {
            v.seq.resolve_at_end();
            settled(tag, v.admit(&raw, place));
        }
    }
}

/// The field rules of FEED.md that do not depend on other records, shared by
/// every decoder (CSV, native, wire), so a record reads the same whatever
/// carried it. Names are checked where they are text.
#[inline]
pub fn check_fields(seq: u64, kind: Kind, price: i64, qty: u64, contra_order_id: u64) -> Result<(), RejectReason> {
    // The next expected seq is seq + 1: u64::MAX has none.
    if seq == u64::MAX {
        return Err(RejectReason::BadField("seq"));
    }
    if price <= 0 {
        return Err(RejectReason::BadField("price"));
    }
    if qty == 0 {
        return Err(RejectReason::BadField("qty"));
    }
    if kind != Kind::Trade && contra_order_id != 0 {
        return Err(RejectReason::ContraOnOrder("contra_order_id"));
    }
    Ok(())
}

pub struct Validator {
    pub accounts: Interner,
    pub instruments: Interner,
    groups: Arc<Groups>,
    /// The group of each interned account, so groups are resolved once per account, not per record.
    account_groups: Vec<u32>,
    lifecycle: Lifecycle,
    pub seq: Sequencer,
    pub stats: FeedStats,
}

impl Validator {
    pub fn new(limits: Limits, groups: Arc<Groups>) -> Validator {
        Validator {
            accounts: Interner::new(limits.accounts),
            instruments: Interner::new(limits.instruments),
            groups,
            account_groups: Vec::with_capacity(limits.accounts.min(1 << 20)),
            lifecycle: Lifecycle::new(limits.open_orders),
            seq: Sequencer::new(limits.time),
            stats: FeedStats::default(),
        }
    }

    /// Live feeds, which cannot wait for the next record: a repeat or a
    /// record outside the day is rejected, a jump taken at once (a gap).
    pub fn check_seq_now(&mut self, seq: u64, ts_ns: i64) -> Result<(), RejectReason> {
        match self.seq.judge(seq, ts_ns) {
            Judged::InLine => Ok(()),
            Judged::Hold => {
                self.seq.resolve_at_end();
                Ok(())
            }
            Judged::Reject(reason) => Err(reason),
        }
    }

    /// The lifecycle check of a record that `Sequencer::judge` found in
    /// line (or `resolve` confirmed), then its seq takes its place.
    pub fn admit(&mut self, raw: &RawRecord, line_no: u64) -> Result<Event, RejectReason> {
        let outcome = self.accept(raw);
        self.seq.commit(raw.seq, raw.ts_ns, outcome.is_ok(), line_no, &mut self.stats);
        outcome
    }

    /// `admit` for a record `Sequencer::in_line` passed.
    #[inline]
    pub fn admit_in_line(&mut self, raw: &RawRecord) -> Result<Event, RejectReason> {
        let outcome = self.accept(raw);
        self.seq.commit_in_line(raw.seq, raw.ts_ns, outcome.is_ok());
        outcome
    }

    /// Interns and checks the order lifecycle; on success the event is
    /// accepted and the open-order table updated.
    pub fn accept(&mut self, raw: &RawRecord) -> Result<Event, RejectReason> {
        let account = self.intern_account(raw.account)?;
        let instrument = self.instruments.intern_packed(raw.instrument).ok_or(RejectReason::TableFull("instrument"))?;
        let mut event = Event {
            seq: raw.seq,
            ts_ns: raw.ts_ns,
            order_id: raw.order_id,
            contra_order_id: 0,
            price: raw.price,
            qty: raw.qty,
            account,
            contra_account: 0,
            group: self.account_groups[account as usize],
            contra_group: 0,
            instrument,
            kind: raw.kind,
            side: raw.side,
            _pad: [0; 2],
        };
        if raw.kind == Kind::Trade {
            let contra_account = self.intern_account(raw.contra_account)?;
            event.contra_account = contra_account;
            event.contra_group = self.account_groups[contra_account as usize];
            event.contra_order_id = raw.contra_order_id;
        }
        self.lifecycle.apply(&event)?;
        Ok(event)
    }

    /// Brings the table slots that `accept` will touch for `raw` into cache.
    /// The CSV feed calls it a few records ahead: the open-order and account
    /// tables outgrow the cache, and their misses would otherwise dominate.
    #[inline]
    pub fn prefetch(&self, raw: &RawRecord) {
        let contra = (raw.kind == Kind::Trade).then_some((raw.contra_account, raw.contra_order_id));
        self.prefetch_keys(raw.account, raw.order_id, contra);
    }

    /// As `prefetch`, from the keys alone: the account, the order, and a
    /// trade's contra account and order.
    #[inline]
    pub fn prefetch_keys(&self, account: Packed, order_id: u64, contra: Option<(Packed, u64)>) {
        self.accounts.prefetch(account);
        self.lifecycle.prefetch(order_id);
        if let Some((contra_account, contra_order_id)) = contra {
            self.accounts.prefetch(contra_account);
            self.lifecycle.prefetch(contra_order_id);
        }
    }

    fn intern_account(&mut self, name: Packed) -> Result<AccountId, RejectReason> {
        let id = self.accounts.intern_packed(name).ok_or(RejectReason::TableFull("account"))?;
        if id as usize == self.account_groups.len() {
            self.account_groups.push(self.groups.group_of(name, id));
        }
        Ok(id)
    }

    pub fn open_orders(&self) -> usize {
        self.lifecycle.len()
    }

    /// Checkpoint: the expected seq, the counters and the open orders. The
    /// interned names are not copied here: they are append-only and the
    /// checkpoint writer reads them from the shared name tables; only their
    /// counts are written.
    pub fn snapshot(&self, w: &mut Writer<'_>) {
        self.seq.snapshot(w);
        encode_stats(w, &self.stats);
        w.u64(self.accounts.table().len() as u64);
        w.u64(self.instruments.table().len() as u64);
        self.lifecycle.snapshot(w);
    }

    /// A validator as of a checkpoint; `accounts` and `instruments` are the
    /// stored names, in id order (at least as many as the snapshot counts).
    pub fn restore(
        limits: Limits,
        groups: Arc<Groups>,
        r: &mut Reader<'_>,
        accounts: &[Vec<u8>],
        instruments: &[Vec<u8>],
    ) -> Result<Validator, DecodeError> {
        let mut v = Validator::new(limits, groups);
        v.seq = Sequencer::restore(limits.time, r)?;
        v.stats = decode_stats(r)?;
        let (account_count, instrument_count) = (r.u64()? as usize, r.u64()? as usize);
        if account_count > accounts.len() || instrument_count > instruments.len() {
            return Err(DecodeError("fewer stored names than the snapshot counts".into()));
        }
        for (id, name) in accounts[..account_count].iter().enumerate() {
            if !valid_account(name) || v.intern_account(pack(name)).ok() != Some(id as u32) {
                return Err(DecodeError(format!("stored account {id} is bad or repeated")));
            }
        }
        for (id, name) in instruments[..instrument_count].iter().enumerate() {
            if !valid_instrument(name) || v.instruments.intern(name) != Some(id as u32) {
                return Err(DecodeError(format!("stored instrument {id} is bad or repeated")));
            }
        }
        v.lifecycle.restore(r, account_count, instrument_count)?;
        Ok(v)
    }
}

fn check_owner(
    order: &OpenOrder,
    order_id: u64,
    account: AccountId,
    instrument: InstrumentId,
    side: Side,
) -> Result<(), RejectReason> {
    let field = if order.account != account {
        "account"
    } else if order.instrument != instrument {
        "instrument"
    } else if order.side != side {
        "side"
    } else {
        return Ok(());
    };
    Err(RejectReason::Mismatch { order_id, field })
}
