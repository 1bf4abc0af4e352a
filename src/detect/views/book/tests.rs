//! The book against its definition: table tests per lifecycle case, and a
//! naive reference book (BTreeMaps) that random valid order streams must
//! match level by level, before and after a snapshot round trip.

use super::*;
use crate::instruments::Instruments;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const X: InstrumentId = 0;
const Y: InstrumentId = 1;

fn reference(csv: Option<&str>) -> Reference {
    let instruments = match csv {
        Some(body) => Instruments::parse(&format!("instrument,prev_close,limit_up,limit_down,tick\n{body}")).unwrap(),
        None => Instruments::default(),
    };
    Reference { instruments: Arc::new(instruments), names: Arc::new(NameTable::from_names(&[b"X", b"Y"])) }
}

fn books() -> Books {
    Books::new(BookLimits::default(), reference(None))
}

fn new(ts_ns: i64, id: u64, account: u32, side: Side, price: Px, qty: u64) -> Event {
    Event { ts_ns, kind: Kind::New, order_id: id, account, group: account, side, price, qty, ..Event::default() }
}

fn cancel(ts_ns: i64, id: u64, account: u32, side: Side, price: Px, qty: u64) -> Event {
    Event { kind: Kind::Cancel, ..new(ts_ns, id, account, side, price, qty) }
}

fn trade(ts_ns: i64, buy: u64, sell: u64, aggressor: Side, price: Px, qty: u64) -> Event {
    Event {
        ts_ns,
        kind: Kind::Trade,
        order_id: buy,
        contra_order_id: sell,
        side: aggressor,
        price,
        qty,
        ..Event::default()
    }
}

fn levels(books: &Books, side: Side) -> Vec<(Px, u64, u32)> {
    books.book(X).map_or(Vec::new(), |b| b.levels(side).map(|l| (l.price, l.qty, l.orders)).collect())
}

#[test]
fn entries_build_levels_and_report_the_book_before() {
    let mut b = books();
    assert!(matches!(
        b.apply(&new(1, 1, 7, Side::Buy, 100, 10)),
        Change::Entered { opposite_best: None, depth5_before: 0, .. }
    ));
    b.apply(&new(2, 2, 8, Side::Buy, 100, 5));
    b.apply(&new(3, 3, 8, Side::Buy, 99, 4));
    b.apply(&new(4, 4, 9, Side::Sell, 102, 6));
    let change = b.apply(&new(5, 5, 9, Side::Buy, 101, 1));
    let Change::Entered { order, opposite_best, depth5_before } = change else { panic!("{change:?}") };
    assert_eq!((opposite_best, depth5_before), (Some(102), 19));
    assert_eq!((order.order_id, order.account, order.entry_ts_ns, order.open_qty), (5, 9, 5, 1));
    assert_eq!(levels(&b, Side::Buy), vec![(101, 1, 1), (100, 15, 2), (99, 4, 1)]);
    assert_eq!(levels(&b, Side::Sell), vec![(102, 6, 1)]);
    let book = b.book(X).unwrap();
    assert_eq!((book.best(Side::Buy), book.best(Side::Sell)), (Some(101), Some(102)));
    assert_eq!((book.depth(Side::Buy, 2), book.depth(Side::Buy, 5), book.depth(Side::Sell, 0)), (16, 20, 0));
    assert_eq!((book.tick(), book.last_trade(), book.resting()), (DEFAULT_TICK, None, 5));
}

#[test]
fn partial_fills_then_a_cancel_of_the_rest() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Sell, 100, 10));
    b.apply(&new(2, 2, 8, Side::Buy, 100, 4));
    let change = b.apply(&trade(2, 2, 1, Side::Buy, 100, 4));
    let Change::Traded { buy, sell, aggressor, price, qty } = change else { panic!("{change:?}") };
    assert_eq!((buy.open_qty, sell.open_qty, aggressor, price, qty), (0, 6, Side::Buy, 100, 4));
    assert_eq!(levels(&b, Side::Buy), vec![]);
    assert_eq!(levels(&b, Side::Sell), vec![(100, 6, 1)]);
    assert_eq!(b.book(X).unwrap().last_trade(), Some(100));
    let change = b.apply(&cancel(3, 1, 7, Side::Sell, 100, 6));
    assert!(matches!(change, Change::Cancelled { order: OrderRef { order_id: 1, open_qty: 0, .. }, qty: 6 }));
    assert_eq!(levels(&b, Side::Sell), vec![]);
    assert_eq!(b.stats().orders, 0);
}

#[test]
fn a_fill_of_the_rest_closes_the_order() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Sell, 100, 10));
    b.apply(&new(1, 9, 7, Side::Sell, 100, 3));
    b.apply(&new(2, 2, 8, Side::Buy, 101, 20));
    b.apply(&trade(2, 2, 1, Side::Buy, 100, 10));
    assert_eq!(levels(&b, Side::Sell), vec![(100, 3, 1)]);
    assert_eq!(levels(&b, Side::Buy), vec![(101, 10, 1)]);
    // The filled order is gone: a cancel of it is unknown, not a panic.
    assert_eq!(b.apply(&cancel(3, 1, 7, Side::Sell, 100, 1)), Change::Skipped(SkipCause::UnknownOrder));
    assert_eq!(b.book(X).unwrap().skipped()[cause_index(SkipCause::UnknownOrder)], 1);
}

#[test]
fn a_cancel_removes_what_is_open_and_never_more() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Buy, 100, 10));
    // More than is open: over-execution, the order stays.
    assert_eq!(b.apply(&cancel(2, 1, 7, Side::Buy, 100, 11)), Change::Skipped(SkipCause::OverExecution));
    assert_eq!(levels(&b, Side::Buy), vec![(100, 10, 1)]);
    // Less than is open (a trade reordered between): it removes what is open.
    assert!(matches!(b.apply(&cancel(3, 1, 7, Side::Buy, 100, 4)), Change::Cancelled { qty: 10, .. }));
    assert_eq!(levels(&b, Side::Buy), vec![]);
}

#[test]
fn unknown_orders_and_duplicates_are_counted_and_skipped() {
    let mut b = books();
    assert_eq!(b.apply(&cancel(1, 5, 7, Side::Buy, 100, 1)), Change::Skipped(SkipCause::UnknownOrder));
    assert_eq!(b.apply(&trade(1, 5, 6, Side::Buy, 100, 1)), Change::Skipped(SkipCause::UnknownOrder));
    b.apply(&new(2, 1, 7, Side::Buy, 100, 10));
    assert_eq!(b.apply(&new(3, 1, 7, Side::Buy, 100, 10)), Change::Skipped(SkipCause::DuplicateOrder));
    // The id is held, but for another instrument or side: not this order.
    assert_eq!(
        b.apply(&Event { instrument: Y, ..cancel(4, 1, 7, Side::Buy, 100, 10) }),
        Change::Skipped(SkipCause::UnknownOrder)
    );
    assert_eq!(b.apply(&cancel(4, 1, 7, Side::Sell, 100, 10)), Change::Skipped(SkipCause::UnknownOrder));
    assert_eq!(levels(&b, Side::Buy), vec![(100, 10, 1)]);
    let stats = b.stats();
    assert_eq!(stats.skipped, [4, 1, 0, 0, 0]);
    assert_eq!((stats.instruments, stats.orders, stats.levels), (2, 1, 1));
}

#[test]
fn a_trade_with_one_unknown_side_executes_the_known_one() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Buy, 100, 10));
    // The sell order's N came before the tape began.
    assert_eq!(b.apply(&trade(2, 1, 99, Side::Buy, 100, 4)), Change::Skipped(SkipCause::UnknownOrder));
    assert_eq!(levels(&b, Side::Buy), vec![(100, 6, 1)]);
    assert_eq!(b.book(X).unwrap().last_trade(), Some(100));
    // Filled by it: no phantom stays behind.
    b.apply(&trade(3, 1, 98, Side::Sell, 100, 6));
    assert_eq!(levels(&b, Side::Buy), vec![]);
    assert_eq!(b.stats().skipped[0], 2);
}

#[test]
fn over_execution_by_a_trade_changes_nothing() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Buy, 100, 10));
    b.apply(&new(1, 2, 8, Side::Sell, 100, 3));
    assert_eq!(b.apply(&trade(2, 1, 2, Side::Buy, 100, 4)), Change::Skipped(SkipCause::OverExecution));
    assert_eq!(levels(&b, Side::Buy), vec![(100, 10, 1)]);
    assert_eq!(levels(&b, Side::Sell), vec![(100, 3, 1)]);
    assert_eq!(b.book(X).unwrap().last_trade(), None);
}

#[test]
fn orders_outside_the_days_limits_are_skipped() {
    let mut b = Books::new(BookLimits::default(), reference(Some("X,10,11,9,0.01\n")));
    assert!(matches!(b.apply(&new(1, 1, 7, Side::Buy, 90_000, 1)), Change::Entered { .. }));
    assert!(matches!(b.apply(&new(1, 2, 7, Side::Sell, 110_000, 1)), Change::Entered { .. }));
    assert_eq!(b.apply(&new(1, 3, 7, Side::Buy, 89_999, 1)), Change::Skipped(SkipCause::OutsideLimits));
    assert_eq!(b.apply(&new(1, 4, 7, Side::Sell, 110_001, 1)), Change::Skipped(SkipCause::OutsideLimits));
    assert_eq!(b.book(X).unwrap().tick(), 100);
    // Y is not in the file: kept with the default tick, no limits, named.
    assert!(matches!(b.apply(&Event { instrument: Y, ..new(1, 5, 7, Side::Buy, 1, 1) }), Change::Entered { .. }));
    assert_eq!(b.book(Y).unwrap().tick(), DEFAULT_TICK);
    let stats = b.stats();
    assert_eq!(stats.skipped[cause_index(SkipCause::OutsideLimits)], 2);
    assert_eq!(stats.missing_reference, vec![Y]);
}

#[test]
fn a_full_book_refuses_new_orders_and_levels() {
    let mut b = Books::new(BookLimits { orders: 3, levels_per_side: 2 }, reference(None));
    b.apply(&new(1, 1, 7, Side::Buy, 100, 1));
    b.apply(&new(1, 2, 7, Side::Buy, 101, 1));
    // A third level on the bid side: full. An existing level still takes orders.
    assert_eq!(b.apply(&new(1, 3, 7, Side::Buy, 102, 1)), Change::Skipped(SkipCause::BookFull));
    assert!(matches!(b.apply(&new(1, 4, 7, Side::Buy, 101, 1)), Change::Entered { .. }));
    // Three orders rest: the order limit.
    assert_eq!(b.apply(&new(1, 5, 7, Side::Sell, 105, 1)), Change::Skipped(SkipCause::BookFull));
    b.apply(&cancel(2, 1, 7, Side::Buy, 100, 1));
    assert!(matches!(b.apply(&new(3, 5, 7, Side::Sell, 105, 1)), Change::Entered { .. }));
    assert_eq!(b.stats().skipped[cause_index(SkipCause::BookFull)], 2);
}

/// The naive book: per (instrument, side), price -> (qty, orders).
#[derive(Default)]
struct Naive {
    orders: HashMap<u64, (InstrumentId, Side, Px, u64)>,
    levels: BTreeMap<(InstrumentId, u8, Px), (u64, u32)>,
}

impl Naive {
    fn add(&mut self, instrument: InstrumentId, side: Side, price: Px, qty: u64, new_order: bool) {
        let level = self.levels.entry((instrument, side as u8, price)).or_default();
        level.0 += qty;
        level.1 += new_order as u32;
    }

    fn take(&mut self, order_id: u64, qty: u64) {
        let (instrument, side, price, open) = self.orders[&order_id];
        let key = (instrument, side as u8, price);
        let level = self.levels.get_mut(&key).unwrap();
        level.0 -= qty;
        if open == qty {
            level.1 -= 1;
            self.orders.remove(&order_id);
        } else {
            self.orders.get_mut(&order_id).unwrap().3 -= qty;
        }
        if level.1 == 0 {
            self.levels.remove(&key);
        }
    }

    /// Levels best first.
    fn side(&self, instrument: InstrumentId, side: Side) -> Vec<(Px, u64, u32)> {
        let mut out: Vec<_> = self
            .levels
            .range((instrument, side as u8, Px::MIN)..=(instrument, side as u8, Px::MAX))
            .map(|(&(_, _, px), &(qty, n))| (px, qty, n))
            .collect();
        if side == Side::Buy {
            out.reverse();
        }
        out
    }
}

/// A random valid order-level stream over two instruments: new orders,
/// cancels of what is open, and trades of part or all of two open orders.
fn stream(ops: &[(u8, u8, u8, u16, u16)]) -> Vec<Event> {
    let mut open: Vec<(u64, InstrumentId, Side, Px, u64)> = Vec::new();
    let mut events = Vec::new();
    let mut next_id = 1;
    for (ts, &(op, pick, instrument, price, qty)) in ops.iter().enumerate() {
        let ts = ts as i64;
        let instrument = (instrument % 2) as InstrumentId;
        match op % 4 {
            0 | 1 => {
                let side = if pick % 2 == 0 { Side::Buy } else { Side::Sell };
                let price = 1_000 + (price % 40) as Px;
                let qty = 1 + (qty % 500) as u64;
                events.push(Event { instrument, ..new(ts, next_id, pick as u32, side, price, qty) });
                open.push((next_id, instrument, side, price, qty));
                next_id += 1;
            }
            2 if !open.is_empty() => {
                let (id, instrument, side, price, qty) = open.swap_remove(pick as usize % open.len());
                events.push(Event { instrument, ..cancel(ts, id, 0, side, price, qty) });
            }
            _ => {
                let buys: Vec<usize> = (0..open.len()).filter(|&i| open[i].2 == Side::Buy).collect();
                let Some(&b) = buys.get(pick as usize % buys.len().max(1)) else { continue };
                let Some(s) = (0..open.len()).find(|&i| open[i].2 == Side::Sell && open[i].1 == open[b].1) else {
                    continue;
                };
                let qty = 1 + (qty as u64) % open[b].4.min(open[s].4);
                let (buy_id, sell_id, inst) = (open[b].0, open[s].0, open[b].1);
                let aggressor = if price % 2 == 0 { Side::Buy } else { Side::Sell };
                events.push(Event { instrument: inst, ..trade(ts, buy_id, sell_id, aggressor, open[s].3, qty) });
                open[b].4 -= qty;
                open[s].4 -= qty;
                open.retain(|o| o.4 > 0);
            }
        }
    }
    events
}

fn check(books: &Books, naive: &Naive) -> Result<(), TestCaseError> {
    for instrument in [X, Y] {
        for side in [Side::Buy, Side::Sell] {
            let got: Vec<_> = books
                .book(instrument)
                .map_or(Vec::new(), |b| b.levels(side).map(|l| (l.price, l.qty, l.orders)).collect());
            let want = naive.side(instrument, side);
            prop_assert_eq!(&got, &want);
            if let Some(book) = books.book(instrument) {
                prop_assert_eq!(book.best(side), want.first().map(|l| l.0));
                prop_assert_eq!(book.depth(side, 5), want.iter().take(5).map(|l| l.1).sum::<u64>());
            }
        }
    }
    prop_assert_eq!(books.stats().orders, naive.orders.len());
    Ok(())
}

fn snapshot(books: &Books) -> Vec<u8> {
    let mut image = BookImage::default();
    books.copy_into(&mut image);
    let mut buf = Vec::new();
    image.encode(&mut Writer::new(&mut buf));
    buf
}

proptest! {
    /// Level by level, after every record, the book equals the naive one;
    /// a snapshot restored into two shards holds the same books.
    #[test]
    fn equals_a_naive_reference_book(ops in proptest::collection::vec(any::<(u8, u8, u8, u16, u16)>(), 1..400)) {
        let events = stream(&ops);
        let mut books = Books::new(BookLimits { orders: 1 << 10, levels_per_side: 64 }, reference(None));
        let mut naive = Naive::default();
        for e in &events {
            let change = books.apply(e);
            prop_assert!(!matches!(change, Change::Skipped(_)), "{:?} -> {:?}", e, change);
            match e.kind {
                Kind::New => {
                    naive.orders.insert(e.order_id, (e.instrument, e.side, e.price, e.qty));
                    naive.add(e.instrument, e.side, e.price, e.qty, true);
                }
                Kind::Cancel => naive.take(e.order_id, e.qty),
                Kind::Trade => {
                    naive.take(e.order_id, e.qty);
                    naive.take(e.contra_order_id, e.qty);
                }
            }
            check(&books, &naive)?;
        }
        let buf = snapshot(&books);
        let mut halves: Vec<Books> = (0..2).map(|_| books_like(&books)).collect();
        for (index, half) in halves.iter_mut().enumerate() {
            let mut r = Reader::new(&buf);
            half.restore(&mut r, &|i| i as usize % 2 == index).unwrap();
            r.finish().unwrap();
        }
        for instrument in [X, Y] {
            let (a, b) = (books.book(instrument), halves[instrument as usize % 2].book(instrument));
            prop_assert_eq!(a.is_some(), b.is_some());
            if let (Some(a), Some(b)) = (a, b) {
                for side in [Side::Buy, Side::Sell] {
                    prop_assert_eq!(a.levels(side).collect::<Vec<_>>(), b.levels(side).collect::<Vec<_>>());
                }
                prop_assert_eq!(a.last_trade(), b.last_trade());
            }
        }
        let mut together = halves[0].stats();
        together.add(&halves[1].stats());
        prop_assert_eq!(together.orders, books.stats().orders);
        prop_assert_eq!(together.digest, books.stats().digest);
    }
}

proptest! {
    /// A checkpoint's cut is O(1) for the orders: they are copied in
    /// slices while later records change, add and remove orders (moving
    /// others between slots), and the image is still the book at the barrier.
    #[test]
    fn a_sliced_snapshot_is_the_book_at_the_barrier(
        ops in proptest::collection::vec(any::<(u8, u8, u8, u16, u16)>(), 1..400),
        cut in 0usize..400,
        slice in 1usize..64,
    ) {
        let events = stream(&ops);
        let cut = cut.min(events.len());
        let mut books = Books::new(BookLimits { orders: 1 << 10, levels_per_side: 64 }, reference(None));
        for e in &events[..cut] {
            books.apply(e);
        }
        let mut want = BookImage::default();
        books.copy_into(&mut want);
        let mut image = BookImage::default();
        books.begin_snapshot(&mut image);
        let mut done = false;
        for e in &events[cut..] {
            books.apply(e);
            if !done {
                done = books.copy_slice(slice, &mut image);
            }
        }
        prop_assert!(done || books.copy_slice(usize::MAX, &mut image));
        prop_assert!(books.copy_slice(slice, &mut image), "complete stays complete");
        want.orders.sort_unstable_by_key(|o| o.0);
        image.orders.sort_unstable_by_key(|o| o.0);
        prop_assert_eq!(&image.instruments, &want.instruments);
        prop_assert_eq!(&image.orders, &want.orders);
    }
}

fn books_like(books: &Books) -> Books {
    Books::new(books.limits, books.reference.clone())
}

#[test]
fn a_damaged_snapshot_is_an_error_not_a_panic() {
    let mut b = books();
    b.apply(&new(1, 1, 7, Side::Buy, 100, 10));
    b.apply(&new(2, 2, 8, Side::Sell, 101, 5));
    b.apply(&trade(3, 1, 2, Side::Buy, 101, 5));
    let buf = snapshot(&b);
    for cut in 0..buf.len() {
        let mut fresh = books();
        let mut r = Reader::new(&buf[..cut]);
        assert!(fresh.restore(&mut r, &|_| true).and_then(|()| r.finish()).is_err(), "cut at {cut}");
    }
    let mut restored = books();
    restored.restore(&mut Reader::new(&buf), &|_| true).unwrap();
    assert_eq!(restored.stats(), BookStats { peak_orders: 1, ..b.stats() });
    // The digest sees the content: one more order changes it.
    restored.apply(&new(4, 3, 9, Side::Sell, 102, 1));
    assert_ne!(restored.stats().digest, b.stats().digest);
    let mut twice = books();
    twice.restore(&mut Reader::new(&buf), &|_| true).unwrap();
    assert!(twice.restore(&mut Reader::new(&buf), &|_| true).is_err(), "an order restored twice");
}

#[test]
fn no_allocation_per_record_once_warm() {
    // Growth is counted: a warm book that stays within its reserved sizes
    // reports none.
    let mut b = books();
    for i in 0..10_000u64 {
        b.apply(&new(i as i64, i + 1, 7, Side::Buy, 100 + (i % 50) as Px, 10));
        if i >= 100 {
            b.apply(&cancel(i as i64, i - 99, 7, Side::Buy, 100 + ((i - 100) % 50) as Px, 10));
        }
    }
    assert_eq!(b.stats().grew, 0);
}
