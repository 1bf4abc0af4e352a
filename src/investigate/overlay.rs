//! One instrument's day, rebuilt for a report: which of its records the
//! engine applies (lateness judged as the source does), the order book
//! through them (the engine's own `Books`, in `(ts_ns, seq)` order, as
//! `tapewatch book` does), the best bid and ask and the trades over a
//! period, the book at one moment, and the orders of a group drawn from
//! entry to cancel or fill.

use crate::detect::views::OrderRef;
use crate::detect::views::book::{BookLimits, Books, Level, Reference};
use crate::event::{Event, Kind, Px, Side};
use crate::time::Watermark;
use std::collections::HashMap;

/// A record of the instrument and whether the engine applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    pub event: Event,
    pub late: bool,
}

/// Judges lateness over a feed: `observe` every record of the tape in feed
/// order (or a skipped block's greatest time), `keep` those of the instrument.
pub struct Lateness {
    watermark: Watermark,
}

impl Lateness {
    pub fn new(lateness_ns: i64) -> Lateness {
        Lateness { watermark: Watermark::new(lateness_ns) }
    }

    /// Judges a record against those before it; true if late.
    pub fn observe(&mut self, ts_ns: i64) -> bool {
        self.watermark.observe(ts_ns)
    }

    /// Time moved on without a record (a skipped block).
    pub fn advance(&mut self, ts_ns: i64) {
        self.watermark.advance_to(ts_ns);
    }
}

/// The applied records in the order the shard applies them.
pub fn applied_order(records: &[Judged]) -> Vec<Event> {
    let mut applied: Vec<Event> = records.iter().filter(|r| !r.late).map(|r| r.event).collect();
    applied.sort_by_key(|e| (e.ts_ns, e.seq));
    applied
}

/// What happened to an order by the end of what was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still resting (some may have filled).
    Open,
    Filled,
    /// Cancelled, possibly after part of it filled.
    Cancelled,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Filled => "filled",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One order from entry to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderSpan {
    pub order_id: u64,
    pub account: u32,
    pub side: Side,
    pub price: Px,
    pub qty: u64,
    pub entry_ts: i64,
    pub entry_seq: u64,
    /// When it was filled or cancelled (`None`: open at the end).
    pub end_ts: Option<i64>,
    pub filled: u64,
    pub cancelled: u64,
    pub outcome: Outcome,
}

/// The orders whose `N` is among `applied` (in applied order) and whose
/// account `mine` accepts, folded through their fills and cancels.
pub fn order_spans(applied: &[Event], mine: impl Fn(u32) -> bool) -> Vec<OrderSpan> {
    let mut spans: Vec<OrderSpan> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    for e in applied {
        match e.kind {
            Kind::New if mine(e.account) => {
                by_id.insert(e.order_id, spans.len());
                spans.push(OrderSpan {
                    order_id: e.order_id,
                    account: e.account,
                    side: e.side,
                    price: e.price,
                    qty: e.qty,
                    entry_ts: e.ts_ns,
                    entry_seq: e.seq,
                    end_ts: None,
                    filled: 0,
                    cancelled: 0,
                    outcome: Outcome::Open,
                });
            }
            Kind::New => {}
            Kind::Cancel => {
                if let Some(&i) = by_id.get(&e.order_id) {
                    let s = &mut spans[i];
                    s.cancelled += e.qty;
                    s.end_ts = Some(e.ts_ns);
                    s.outcome = Outcome::Cancelled;
                }
            }
            Kind::Trade => {
                for id in [e.order_id, e.contra_order_id] {
                    if let Some(&i) = by_id.get(&id) {
                        let s = &mut spans[i];
                        s.filled += e.qty;
                        if s.filled >= s.qty && s.outcome == Outcome::Open {
                            s.end_ts = Some(e.ts_ns);
                            s.outcome = Outcome::Filled;
                        }
                    }
                }
            }
        }
    }
    spans
}

/// The book and prices of one instrument over a period.
#[derive(Clone, Debug, Default)]
pub struct Rebuilt {
    /// Best bid and ask after each applied record in the period (held
    /// until the next point); `None` when that side is empty.
    pub best: Vec<(i64, Option<Px>, Option<Px>)>,
    /// Trades in the period: time, price, qty, aggressor side.
    pub trades: Vec<(i64, Px, u64, Side)>,
    /// The book just after the moment's record: levels best first.
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    /// The orders resting then.
    pub resting: Vec<OrderRef>,
    /// Records the book applied and skipped (`SkipCause` order).
    pub skipped: [u64; 5],
}

/// Applies the instrument's records in order through the engine's book;
/// samples the period `[from, to]` and keeps the book as of `moment`
/// (`(ts_ns, seq)`: the records up to and including it).
pub fn rebuild(
    applied: &[Event],
    instrument: u32,
    reference: Reference,
    period: (i64, i64),
    moment: (i64, u64),
    levels: usize,
) -> Rebuilt {
    let mut books = Books::new(BookLimits::default(), reference);
    let mut out = Rebuilt::default();
    let mut snapshot_taken = false;
    let take = |books: &Books, out: &mut Rebuilt| {
        if let Some(book) = books.book(instrument) {
            out.bids = book.levels(Side::Buy).take(levels).copied().collect();
            out.asks = book.levels(Side::Sell).take(levels).copied().collect();
        }
        out.resting = books.orders_of(instrument);
    };
    let mut last_best = None;
    for e in applied {
        if !snapshot_taken && (e.ts_ns, e.seq) > moment {
            take(&books, &mut out);
            snapshot_taken = true;
        }
        books.apply(e);
        if e.ts_ns > period.1 && snapshot_taken {
            break;
        }
        if (period.0..=period.1).contains(&e.ts_ns) {
            let book = books.book(instrument);
            let best = (
                book.and_then(|b| b.levels(Side::Buy).next().map(|l| l.price)),
                book.and_then(|b| b.levels(Side::Sell).next().map(|l| l.price)),
            );
            if last_best != Some(best) {
                out.best.push((e.ts_ns, best.0, best.1));
                last_best = Some(best);
            }
            if e.kind == Kind::Trade {
                out.trades.push((e.ts_ns, e.price, e.qty, e.side));
            }
        }
    }
    if !snapshot_taken {
        take(&books, &mut out);
    }
    out.skipped = books.book(instrument).map_or([0; 5], |b| b.skipped());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::NameTable;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A random but consistent day of one instrument: orders entered by
    /// four accounts around 10.00, some cancelled, crossing ones traded.
    fn day(seed: u64, n: usize) -> Vec<Event> {
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = Vec::new();
        // Open orders: id -> (side, price, open qty, account).
        let mut open: BTreeMap<u64, (Side, Px, u64, u32)> = BTreeMap::new();
        let (mut seq, mut ts, mut id) = (0u64, 1_000_000_000i64, 0u64);
        let mut push = |out: &mut Vec<Event>, e: Event| {
            seq += 1;
            out.push(Event { seq, ..e });
        };
        while out.len() < n {
            ts += (next() % 5_000_000) as i64;
            let roll = next() % 10;
            if roll < 6 || open.is_empty() {
                id += 1;
                let side = if next() % 2 == 0 { Side::Buy } else { Side::Sell };
                let price = 100_000 + (next() % 9) as i64 * 100 - 400;
                let qty = 100 * (1 + next() % 5);
                let account = (next() % 4) as u32;
                push(
                    &mut out,
                    Event { ts_ns: ts, kind: Kind::New, order_id: id, account, side, price, qty, ..Event::default() },
                );
                open.insert(id, (side, price, qty, account));
            } else if roll < 8 {
                let k = *open.keys().nth((next() % open.len() as u64) as usize).unwrap();
                let (side, price, qty, account) = open.remove(&k).unwrap();
                push(
                    &mut out,
                    Event { ts_ns: ts, kind: Kind::Cancel, order_id: k, account, side, price, qty, ..Event::default() },
                );
            } else {
                // A trade between one open buy and one open sell.
                let buy = open.iter().find(|(_, o)| o.0 == Side::Buy).map(|(k, o)| (*k, *o));
                let sell = open.iter().find(|(_, o)| o.0 == Side::Sell).map(|(k, o)| (*k, *o));
                let (Some((b, bo)), Some((s, so))) = (buy, sell) else { continue };
                let qty = bo.2.min(so.2).min(100 * (1 + next() % 3));
                let e = Event {
                    ts_ns: ts,
                    kind: Kind::Trade,
                    order_id: b,
                    account: bo.3,
                    contra_order_id: s,
                    contra_account: so.3,
                    side: if next() % 2 == 0 { Side::Buy } else { Side::Sell },
                    price: so.1,
                    qty,
                    ..Event::default()
                };
                push(&mut out, e);
                for (k, o) in [(b, bo), (s, so)] {
                    if o.2 == qty {
                        open.remove(&k);
                    } else {
                        open.insert(k, (o.0, o.1, o.2 - qty, o.3));
                    }
                }
            }
        }
        out
    }

    fn reference() -> Reference {
        Reference { instruments: Arc::default(), names: Arc::new(NameTable::from_names(&[b"X"])) }
    }

    /// The book at a moment equals a brute-force fold of the records up to
    /// it: per order, entered minus filled minus cancelled, summed by price.
    #[test]
    fn the_book_at_the_moment_matches_a_brute_force_fold() {
        for seed in 1..6u64 {
            let recs = day(seed * 7919, 3_000);
            for cut in [1usize, 10, 500, 1_777, 2_999] {
                let moment = (recs[cut].ts_ns, recs[cut].seq);
                let rebuilt = rebuild(&recs, 0, reference(), (0, i64::MAX), moment, 1_000);
                let mut remaining: HashMap<u64, (Side, Px, i64)> = HashMap::new();
                for e in recs.iter().filter(|e| (e.ts_ns, e.seq) <= moment) {
                    match e.kind {
                        Kind::New => {
                            remaining.insert(e.order_id, (e.side, e.price, e.qty as i64));
                        }
                        Kind::Cancel => remaining.get_mut(&e.order_id).unwrap().2 -= e.qty as i64,
                        Kind::Trade => {
                            remaining.get_mut(&e.order_id).unwrap().2 -= e.qty as i64;
                            remaining.get_mut(&e.contra_order_id).unwrap().2 -= e.qty as i64;
                        }
                    }
                }
                let levels = |side: Side| -> Vec<(Px, u64, u32)> {
                    let mut by_price: BTreeMap<Px, (u64, u32)> = BTreeMap::new();
                    for (s, px, q) in remaining.values() {
                        if *s == side && *q > 0 {
                            let l = by_price.entry(*px).or_default();
                            l.0 += *q as u64;
                            l.1 += 1;
                        }
                    }
                    let mut v: Vec<_> = by_price.into_iter().map(|(p, (q, n))| (p, q, n)).collect();
                    if side == Side::Buy {
                        v.reverse();
                    }
                    v
                };
                let got = |ls: &[Level]| ls.iter().map(|l| (l.price, l.qty, l.orders)).collect::<Vec<_>>();
                assert_eq!(got(&rebuilt.bids), levels(Side::Buy), "seed {seed} cut {cut}");
                assert_eq!(got(&rebuilt.asks), levels(Side::Sell), "seed {seed} cut {cut}");
                let open: u64 = remaining.values().filter(|v| v.2 > 0).count() as u64;
                assert_eq!(rebuilt.resting.len() as u64, open);
            }
        }
    }

    /// Each drawn order's entry, end and outcome equal what its own
    /// records say, found by searching the records for each order.
    #[test]
    fn the_order_overlay_matches_each_orders_records() {
        for seed in 1..6u64 {
            let recs = day(seed * 104_729, 2_000);
            let mine = |a: u32| a == 1 || a == 3;
            let spans = order_spans(&recs, mine);
            let ours: Vec<&Event> = recs.iter().filter(|e| e.kind == Kind::New && mine(e.account)).collect();
            assert_eq!(spans.len(), ours.len());
            for (span, n) in spans.iter().zip(ours) {
                let about: Vec<&Event> = recs
                    .iter()
                    .filter(|e| e.order_id == n.order_id || (e.kind == Kind::Trade && e.contra_order_id == n.order_id))
                    .collect();
                let filled: u64 = about.iter().filter(|e| e.kind == Kind::Trade).map(|e| e.qty).sum();
                let cancel = about.iter().find(|e| e.kind == Kind::Cancel);
                let last = about.last().unwrap();
                let (outcome, end) = match cancel {
                    Some(c) => (Outcome::Cancelled, Some(c.ts_ns)),
                    None if filled == n.qty => (Outcome::Filled, Some(last.ts_ns)),
                    None => (Outcome::Open, None),
                };
                assert_eq!(
                    (span.order_id, span.entry_ts, span.side, span.price, span.qty, span.filled),
                    (n.order_id, n.ts_ns, n.side, n.price, n.qty, filled)
                );
                assert_eq!((span.outcome, span.end_ts), (outcome, end), "order {}", n.order_id);
                assert_eq!(span.cancelled, cancel.map_or(0, |c| c.qty));
            }
            assert!(spans.iter().any(|s| s.outcome == Outcome::Filled));
            assert!(spans.iter().any(|s| s.outcome == Outcome::Cancelled));
        }
    }
}
