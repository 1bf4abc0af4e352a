//! The L3 order books of one shard's instruments, rebuilt from the applied
//! records in `(ts_ns, seq)` order: every resting order by id (owner, side,
//! price, open qty, entry time), the price levels of each side, the last
//! trade. `Books::apply` turns a record into a `Change`; `InstrumentBook`
//! is the `BookView` the rules read.
//!
//! Layout, chosen for the per-record path (no allocation once warm, no
//! lock, no I/O):
//! - orders: one open-addressing table (`CowMap`) by order id for all the
//!   shard's instruments, a 48-byte value per order, runs of 16
//!   consecutive ids in consecutive slots (ids come in sequence: recent
//!   orders share cache lines), 64k slots at start-up; a record probes it
//!   once per order it names (`CowMap::slot`, then the entry is read,
//!   changed or removed in that slot); a checkpoint cuts it in O(1) and
//!   copies it in slices after the barrier (copy-on-write);
//! - levels: per side a vector sorted so that the best price is last. Most
//!   activity is at or near the touch, so inserts and removals move a few
//!   elements, and best-N depth is the last N. A level is 24 bytes.
//!
//! Policy for records the book cannot apply (`SkipCause`, each counted per
//! instrument): a `C` or `T` about an order the book does not hold (its `N`
//! was late or rejected, the tape starts mid-day, or the id now names an
//! order of another instrument) is `UnknownOrder`; an `N` whose id is open
//! is `DuplicateOrder`; a `C` or `T` for more than is open is
//! `OverExecution`; an `N` priced outside instruments.csv's limits is
//! `OutsideLimits`; an `N` past the order or level limit is `BookFull`.
//! A skipped record changes nothing, with one exception: a `T` naming one
//! order the book holds and one it does not still executes against the one
//! it holds (else that order would rest forever as a phantom: no `C` comes
//! for a filled order); it is counted and reported as `UnknownOrder`.

use super::{BookView, Change, OrderRef, SkipCause};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::detect::state::cow::{CowMap, SlotIdx, slice_slots};
use crate::event::{AccountId, Event, GroupId, InstrumentId, Kind, Px, Side};
use crate::instruments::{DEFAULT_TICK, Instruments};
use crate::symbols::{NameTable, pack};
use std::sync::Arc;

/// The causes in counter order.
pub const SKIP_CAUSES: [SkipCause; 5] = [
    SkipCause::UnknownOrder,
    SkipCause::DuplicateOrder,
    SkipCause::OverExecution,
    SkipCause::OutsideLimits,
    SkipCause::BookFull,
];

/// A cause's index in `SKIP_CAUSES` and in the counters.
#[inline]
pub fn cause_index(cause: SkipCause) -> usize {
    match cause {
        SkipCause::UnknownOrder => 0,
        SkipCause::DuplicateOrder => 1,
        SkipCause::OverExecution => 2,
        SkipCause::OutsideLimits => 3,
        SkipCause::BookFull => 4,
    }
}

/// How a cause reads in the summary.
pub fn cause_name(cause: SkipCause) -> &'static str {
    match cause {
        SkipCause::UnknownOrder => "unknown order",
        SkipCause::DuplicateOrder => "duplicate order",
        SkipCause::OverExecution => "over-execution",
        SkipCause::OutsideLimits => "outside limits",
        SkipCause::BookFull => "book full",
    }
}

/// Stated limits of a shard's books. Past them an `N` is skipped with
/// `BookFull` (counted); what rests is never evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookLimits {
    /// Resting orders on the shard, all its instruments together.
    pub orders: usize,
    /// Price levels on one side of one instrument.
    pub levels_per_side: usize,
}

impl Default for BookLimits {
    /// The order limit is the validator's open-order limit (no more can be
    /// open at once); 8192 levels per side covers a day's limit band of
    /// +-20% at one-cent ticks for prices up to ~200.
    fn default() -> BookLimits {
        BookLimits { orders: 1 << 24, levels_per_side: 8192 }
    }
}

/// Where an instrument's reference data comes from: the loaded
/// instruments.csv, looked up by name once per instrument (the shard sees
/// interned ids; the name table is the source's, append-only).
#[derive(Clone)]
pub struct Reference {
    pub instruments: Arc<Instruments>,
    pub names: Arc<NameTable>,
}

/// A resting order, keyed by its id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resting {
    instrument: InstrumentId,
    account: AccountId,
    group: GroupId,
    side: Side,
    price: Px,
    entry_ts_ns: i64,
    entered_qty: u64,
    open_qty: u64,
}

const _: () = assert!(std::mem::size_of::<Resting>() == 48);

impl Resting {
    fn order_ref(&self, order_id: u64) -> OrderRef {
        OrderRef {
            order_id,
            account: self.account,
            group: self.group,
            side: self.side,
            price: self.price,
            entry_ts_ns: self.entry_ts_ns,
            entered_qty: self.entered_qty,
            open_qty: self.open_qty,
        }
    }
}

/// One price level: what rests there, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Level {
    pub price: Px,
    pub qty: u64,
    pub orders: u32,
}

/// Levels from the best that `Ladder::find` scans before it bisects.
const NEAR_TOUCH: usize = 8;

/// `Ladder::find` for one side (`BUY`: ascending prices, else descending),
/// monomorphized so that the scan does not ask the side per level.
#[inline(always)]
fn find_level<const BUY: bool>(levels: &[Level], price: Px) -> Result<usize, usize> {
    let near = levels.len().saturating_sub(NEAR_TOUCH);
    let mut i = levels.len();
    while i > near {
        i -= 1;
        let p = levels[i].price;
        if p == price {
            return Ok(i);
        }
        // Not better than `price`: it goes just above this level.
        if if BUY { p < price } else { p > price } {
            return Err(i + 1);
        }
    }
    let deep = &levels[..near];
    if BUY { deep.binary_search_by(|l| l.price.cmp(&price)) } else { deep.binary_search_by(|l| price.cmp(&l.price)) }
}

/// One side's levels, sorted so that the best is last (bids ascending,
/// asks descending).
#[derive(Clone, Debug, Default)]
struct Ladder {
    levels: Vec<Level>,
}

impl Ladder {
    /// Where `price` is (Ok) or would go (Err), for `side`'s ordering.
    /// Most records are at or near the touch: the best few levels are
    /// scanned from the best down, the rest binary-searched.
    #[inline(always)]
    fn find(&self, side: Side, price: Px) -> Result<usize, usize> {
        match side {
            Side::Buy => find_level::<true>(&self.levels, price),
            Side::Sell => find_level::<false>(&self.levels, price),
        }
    }

    #[inline]
    fn best(&self) -> Option<Px> {
        self.levels.last().map(|l| l.price)
    }

    #[inline]
    fn depth(&self, levels: usize) -> u64 {
        let from = self.levels.len().saturating_sub(levels);
        self.levels[from..].iter().map(|l| l.qty).sum()
    }

    /// Whether an order at `price` needs a new level.
    #[inline]
    fn needs_level(&self, side: Side, price: Px) -> bool {
        self.find(side, price).is_err()
    }

    /// Adds a resting order; returns whether the vector had to grow.
    #[inline(always)]
    fn add(&mut self, side: Side, price: Px, qty: u64) -> bool {
        match self.find(side, price) {
            Ok(i) => {
                let level = &mut self.levels[i];
                level.qty += qty;
                level.orders += 1;
                false
            }
            Err(i) => {
                let grows = self.levels.len() == self.levels.capacity();
                let level = Level { price, qty, orders: 1 };
                if self.levels.len() - i <= NEAR_TOUCH {
                    // Near the touch: moved into place by swaps (a
                    // `memmove` call costs more than a few 24-byte moves).
                    self.levels.push(level);
                    let mut j = self.levels.len() - 1;
                    while j > i {
                        self.levels.swap(j, j - 1);
                        j -= 1;
                    }
                } else {
                    self.levels.insert(i, level);
                }
                grows
            }
        }
    }

    /// Takes `qty` off the level at `price`, and one order when `closed`.
    #[inline(always)]
    fn remove(&mut self, side: Side, price: Px, qty: u64, closed: bool) {
        let Ok(i) = self.find(side, price) else {
            // Every resting order is on its level: a miss is a bug here.
            unreachable!("order at {price} has no level");
        };
        let level = &mut self.levels[i];
        level.qty -= qty;
        level.orders -= closed as u32;
        if level.orders == 0 {
            debug_assert_eq!(level.qty, 0);
            let last = self.levels.len() - 1;
            if last - i <= NEAR_TOUCH {
                // Near the touch, as in `add`.
                for j in i..last {
                    self.levels.swap(j, j + 1);
                }
                self.levels.pop();
            } else {
                self.levels.remove(i);
            }
        }
    }
}

/// One instrument's book: the `BookView` rules read.
///
/// Laid out for the per-record path: 64-byte aligned, what every record
/// reads or writes (the two ladders, the resting count, the tick) in the
/// first cache line, what an `N` or a `T` adds (the limits, the last
/// trade) in the second, the skip counts and the cold reference data
/// after.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct InstrumentBook {
    bids: Ladder,
    asks: Ladder,
    resting: u64,
    tick: Px,
    /// (limit_down, limit_up) from instruments.csv.
    limits: Option<(Px, Px)>,
    last_trade: Option<Px>,
    /// Records skipped, by `cause_index`.
    skipped: [u64; 5],
    /// The previous close from instruments.csv.
    prev_close: Option<Px>,
    /// instruments.csv was loaded and does not list this instrument.
    missing_reference: bool,
}

const _: () = assert!(std::mem::offset_of!(InstrumentBook, tick) + 8 <= 64, "the hot fields share a line");

/// Levels reserved per side when an instrument is first seen.
const LEVELS_RESERVED: usize = 64;

impl InstrumentBook {
    fn new(reference: &Reference, instrument: InstrumentId) -> InstrumentBook {
        let info = if (instrument as usize) < reference.names.len() {
            let (bytes, len) = reference.names.get(instrument);
            reference.instruments.get(pack(&bytes[..len]))
        } else {
            None
        };
        InstrumentBook {
            bids: Ladder { levels: Vec::with_capacity(LEVELS_RESERVED) },
            asks: Ladder { levels: Vec::with_capacity(LEVELS_RESERVED) },
            last_trade: None,
            tick: info.map_or(DEFAULT_TICK, |i| i.tick),
            limits: info.map(|i| (i.limit_down, i.limit_up)),
            missing_reference: info.is_none() && reference.instruments.loaded(),
            prev_close: info.map(|i| i.prev_close),
            skipped: [0; 5],
            resting: 0,
        }
    }

    #[inline]
    fn ladder(&self, side: Side) -> &Ladder {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    #[inline]
    fn ladder_mut(&mut self, side: Side) -> &mut Ladder {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// The levels of `side`, best first.
    pub fn levels(&self, side: Side) -> impl Iterator<Item = &Level> {
        self.ladder(side).levels.iter().rev()
    }

    /// Price levels on `side`.
    pub fn level_count(&self, side: Side) -> usize {
        self.ladder(side).levels.len()
    }

    /// Orders resting on both sides.
    pub fn resting(&self) -> u64 {
        self.resting
    }

    /// Records skipped, by cause (indexed as `SKIP_CAUSES`).
    pub fn skipped(&self) -> [u64; 5] {
        self.skipped
    }

    /// (limit_down, limit_up), when instruments.csv lists the instrument.
    pub fn limits(&self) -> Option<(Px, Px)> {
        self.limits
    }

    /// The previous close, when instruments.csv lists the instrument.
    pub fn prev_close(&self) -> Option<Px> {
        self.prev_close
    }

    pub fn missing_reference(&self) -> bool {
        self.missing_reference
    }
}

impl BookView for InstrumentBook {
    #[inline]
    fn best(&self, side: Side) -> Option<Px> {
        self.ladder(side).best()
    }

    #[inline]
    fn depth(&self, side: Side, levels: usize) -> u64 {
        self.ladder(side).depth(levels)
    }

    #[inline]
    fn last_trade(&self) -> Option<Px> {
        self.last_trade
    }

    #[inline]
    fn tick(&self) -> Px {
        self.tick
    }
}

/// A shard's books, summed for the run summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookStats {
    pub instruments: usize,
    pub orders: usize,
    /// The most orders resting at once (summed over shards: an upper bound).
    pub peak_orders: usize,
    pub levels: usize,
    pub skipped: [u64; 5],
    /// Instruments that trade but instruments.csv (loaded) does not list.
    pub missing_reference: Vec<InstrumentId>,
    /// Times a table or a ladder grew past its start-up size.
    pub grew: u64,
    /// A digest of the books' content (every resting order and each
    /// instrument's last trade and skip counts), independent of how the
    /// instruments are spread over shards: runs that must end with the
    /// same books (any shard count, CSV or native, after a resume) compare it.
    pub digest: u64,
}

impl BookStats {
    pub fn add(&mut self, other: &BookStats) {
        self.instruments += other.instruments;
        self.orders += other.orders;
        self.peak_orders += other.peak_orders;
        self.levels += other.levels;
        for (a, b) in self.skipped.iter_mut().zip(other.skipped) {
            *a += b;
        }
        self.missing_reference.extend_from_slice(&other.missing_reference);
        self.missing_reference.sort_unstable();
        self.grew += other.grew;
        self.digest = self.digest.wrapping_add(other.digest);
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }
}

/// Order ids come in sequence: runs of `1 << ORDER_RUN_BITS` consecutive
/// ids share a block of consecutive slots (`CowMap`'s `RUN_BITS`), so the
/// orders of the last few thousand ids, which most cancels and trades
/// name, sit on few cache lines.
const ORDER_RUN_BITS: u32 = 4;

/// Resting orders the order table holds before it first grows: 64k slots
/// of 56 bytes (3.6 MB). A busy shard of the 10M-record sample day peaks
/// at about 20k resting orders, so it never grows there; a larger table
/// would only spread the same orders over more cache lines.
const INITIAL_ORDERS: usize = 1 << 15;

/// The order table: resting orders by id.
type Orders = CowMap<Resting, ORDER_RUN_BITS>;

/// The books of one shard's instruments.
pub struct Books {
    orders: Orders,
    /// By instrument id; `None` for instruments this shard has not seen.
    books: Vec<Option<Box<InstrumentBook>>>,
    reference: Reference,
    limits: BookLimits,
    /// Ladder growths past `LEVELS_RESERVED`, and book-table growths.
    grew: u64,
    /// The most orders resting at once.
    peak_orders: usize,
    /// What the last record did (`apply_and_view` lends it to the rules).
    change: Change,
}

impl Books {
    pub fn new(limits: BookLimits, reference: Reference) -> Books {
        Books {
            // Sized for a busy shard, not the limit (as the validator's table).
            orders: CowMap::with_capacity(limits.orders.min(INITIAL_ORDERS)),
            books: Vec::new(),
            reference,
            limits,
            grew: 0,
            peak_orders: 0,
            change: Change::Skipped(SkipCause::UnknownOrder),
        }
    }

    /// The book of `instrument`, if this shard has applied a record of it.
    #[inline]
    pub fn book(&self, instrument: InstrumentId) -> Option<&InstrumentBook> {
        self.books.get(instrument as usize).and_then(|b| b.as_deref())
    }

    /// The book of `instrument`, created on its first record (a few hundred
    /// bytes per instrument, once: warm-up, not per record).
    #[inline]
    fn book_mut(&mut self, instrument: InstrumentId) -> &mut InstrumentBook {
        let index = instrument as usize;
        if index >= self.books.len() || self.books[index].is_none() {
            self.create_book(instrument);
        }
        match self.books[index].as_deref_mut() {
            Some(book) => book,
            None => unreachable!("the book was just created"),
        }
    }

    #[cold]
    fn create_book(&mut self, instrument: InstrumentId) {
        let index = instrument as usize;
        if index >= self.books.len() {
            self.books.resize_with(index + 1, || None);
        }
        self.books[index] = Some(Box::new(InstrumentBook::new(&self.reference, instrument)));
    }

    /// Brings the order slots `apply` will touch for `event` into cache.
    #[inline]
    pub fn prefetch(&self, event: &Event) {
        self.orders.prefetch(event.order_id);
        if event.kind == Kind::Trade {
            self.orders.prefetch(event.contra_order_id);
        }
    }

    /// Applies one record to its instrument's book; records of an
    /// instrument come in `(ts_ns, seq)` order.
    #[inline]
    pub fn apply(&mut self, event: &Event) -> Change {
        *self.apply_and_view(event).0
    }

    /// `apply`, and the record's instrument's book just after it (every
    /// record, skipped or not, leaves its instrument with a book). The
    /// instrument's book is looked up once; the `Change` is built in place
    /// (it is 144 bytes: the rules borrow it rather than copy it).
    #[inline]
    pub fn apply_and_view(&mut self, e: &Event) -> (&Change, &InstrumentBook) {
        self.book_mut(e.instrument);
        let Books { orders, books, limits, grew, peak_orders, change, .. } = self;
        let Some(book) = books[e.instrument as usize].as_deref_mut() else { unreachable!("book_mut created it") };
        let mut table = Table { orders, grew, peak_orders };
        // Each writes the `Change` in place (no 144-byte temporary to copy).
        match e.kind {
            Kind::New => table.enter(book, limits, e, change),
            Kind::Cancel => table.cancel(book, e, change),
            Kind::Trade => table.trade(book, e, change),
        }
        if let Change::Skipped(cause) = *change {
            book.skipped[cause_index(cause)] += 1;
        }
        (change, book)
    }

    /// Growth counted so far (tables and ladders), for the summary.
    pub fn stats_grew(&self) -> u64 {
        self.grew
    }

    /// The resting orders of `instrument`, in no particular order (cold:
    /// walks the whole order table; for `tapewatch book` and tests).
    pub fn orders_of(&self, instrument: InstrumentId) -> Vec<OrderRef> {
        self.orders
            .iter()
            .filter(|(_, o)| o.instrument == instrument)
            .map(|(order_id, o)| o.order_ref(order_id))
            .collect()
    }

    pub fn stats(&self) -> BookStats {
        let mut stats = BookStats {
            orders: self.orders.len(),
            peak_orders: self.peak_orders,
            grew: self.grew,
            ..BookStats::default()
        };
        for (instrument, book) in self.books.iter().enumerate() {
            let Some(book) = book else { continue };
            stats.instruments += 1;
            stats.levels += book.bids.levels.len() + book.asks.levels.len();
            for (a, b) in stats.skipped.iter_mut().zip(book.skipped) {
                *a += b;
            }
            if book.missing_reference {
                stats.missing_reference.push(instrument as InstrumentId);
            }
            let mut words = [instrument as u64, book.last_trade.unwrap_or(Px::MIN) as u64, 0, 0, 0, 0, 0, 0, 0];
            words[2..7].copy_from_slice(&book.skipped);
            stats.digest = stats.digest.wrapping_add(digest(&words));
        }
        for (order_id, o) in self.orders.iter() {
            let words = [
                order_id,
                o.instrument as u64,
                o.account as u64 | (o.group as u64) << 32,
                o.side as u64,
                o.price as u64,
                o.entry_ts_ns as u64,
                o.entered_qty,
                o.open_qty,
                u64::MAX,
            ];
            stats.digest = stats.digest.wrapping_add(digest(&words));
        }
        stats
    }

    /// (orders, instruments) held, for sizing snapshot images.
    #[inline]
    pub fn footprint(&self) -> (usize, usize) {
        (self.orders.len(), self.books.len())
    }

    /// Copies the whole state into a reused image at once: O(resting
    /// orders) (tests; a checkpoint uses `begin_snapshot` and `copy_slice`).
    pub fn copy_into(&self, image: &mut BookImage) {
        self.copy_instruments(image);
        image.orders.clear();
        image.orders.extend(self.orders.iter());
    }

    fn copy_instruments(&self, image: &mut BookImage) {
        image.instruments.clear();
        for (instrument, book) in self.books.iter().enumerate() {
            if let Some(book) = book {
                image.instruments.push((instrument as InstrumentId, book.last_trade, book.skipped));
            }
        }
    }

    /// Cuts a snapshot at a barrier into a reused image: each instrument's
    /// few words now (O(instruments)), the resting orders in O(1): they are
    /// copied by `copy_slice` after the batches that follow, a record that
    /// changes an order not yet copied copying it first.
    pub fn begin_snapshot(&mut self, image: &mut BookImage) {
        self.copy_instruments(image);
        self.orders.begin_snapshot(std::mem::take(&mut image.orders));
    }

    /// Copies up to `max` more order slots of the snapshot in progress;
    /// true once it is complete (or none is in progress).
    pub fn copy_slice(&mut self, max: usize, image: &mut BookImage) -> bool {
        // The table is sized for a busy shard, mostly empty slots.
        match self.orders.copy_slice(slice_slots(max)) {
            Some(orders) => {
                image.orders = orders;
                true
            }
            None => !self.orders.snapshot_active(),
        }
    }

    /// Loads the instruments of `snapshot` that `keep` selects (this
    /// shard's, under any shard count) on top of what is held.
    pub fn restore(&mut self, r: &mut Reader<'_>, keep: &impl Fn(InstrumentId) -> bool) -> Result<(), DecodeError> {
        let instruments = r.count(4 + 9 + 40)?;
        for _ in 0..instruments {
            let instrument = r.u32()?;
            let has_trade = r.u8()?;
            let last_trade = r.i64()?;
            let mut skipped = [0u64; 5];
            for s in skipped.iter_mut() {
                *s = r.u64()?;
            }
            if has_trade > 1 || instrument as usize >= MAX_INSTRUMENT_ID {
                return Err(DecodeError(format!("book snapshot: bad instrument entry {instrument}")));
            }
            if keep(instrument) {
                let book = self.book_mut(instrument);
                book.last_trade = (has_trade == 1).then_some(last_trade);
                book.skipped = skipped;
            }
        }
        let orders = r.count(8 + 4 * 3 + 1 + 8 * 4)?;
        if orders > self.limits.orders {
            return Err(DecodeError(format!("book snapshot: {orders} orders, over the limit {}", self.limits.orders)));
        }
        for _ in 0..orders {
            let order_id = r.u64()?;
            let instrument = r.u32()?;
            let account = r.u32()?;
            let group = r.u32()?;
            let side = match r.u8()? {
                b'B' => Side::Buy,
                b'S' => Side::Sell,
                other => return Err(DecodeError(format!("book snapshot: bad side byte {other}"))),
            };
            let (price, entry_ts_ns) = (r.i64()?, r.i64()?);
            let (entered_qty, open_qty) = (r.u64()?, r.u64()?);
            if open_qty == 0 || open_qty > entered_qty || instrument as usize >= MAX_INSTRUMENT_ID {
                return Err(DecodeError(format!("book snapshot: bad order {order_id}")));
            }
            if !keep(instrument) {
                continue;
            }
            if self.orders.contains_key(order_id) {
                return Err(DecodeError(format!("book snapshot: order {order_id} twice")));
            }
            let resting = Resting { instrument, account, group, side, price, entry_ts_ns, entered_qty, open_qty };
            self.orders.insert(order_id, resting);
            let book = self.book_mut(instrument);
            book.ladder_mut(side).add(side, price, open_qty);
            book.resting += 1;
        }
        self.peak_orders = self.peak_orders.max(self.orders.len());
        Ok(())
    }
}

/// The order table and its counters, borrowed apart from the books so
/// that a record's instrument book is looked up once.
struct Table<'a> {
    orders: &'a mut Orders,
    grew: &'a mut u64,
    peak_orders: &'a mut usize,
}

impl Table<'_> {
    #[inline(always)]
    fn enter(&mut self, book: &mut InstrumentBook, limits: &BookLimits, e: &Event, out: &mut Change) {
        let outside = book.limits.is_some_and(|(down, up)| !(down..=up).contains(&e.price));
        let orders_full = self.orders.len() >= limits.orders;
        let own = book.ladder(e.side);
        let full = orders_full || (own.levels.len() >= limits.levels_per_side && own.needs_level(e.side, e.price));
        // One probe for the duplicate check and the insert.
        let vacant = match self.orders.slot(e.order_id) {
            Err(vacant) if !outside && !full => vacant,
            // Rare: the causes in their order, a duplicate first.
            slot => {
                *out = Change::Skipped(if slot.is_ok() {
                    SkipCause::DuplicateOrder
                } else if outside {
                    SkipCause::OutsideLimits
                } else {
                    SkipCause::BookFull
                });
                return;
            }
        };
        let depth5_before = own.depth(5);
        let opposite_best = book.ladder(opposite(e.side)).best();
        let before = self.orders.grew;
        let resting = Resting {
            instrument: e.instrument,
            account: e.account,
            group: e.group,
            side: e.side,
            price: e.price,
            entry_ts_ns: e.ts_ns,
            entered_qty: e.qty,
            open_qty: e.qty,
        };
        self.orders.insert_new(vacant, e.order_id, resting);
        *self.grew += self.orders.grew - before;
        let grew = book.ladder_mut(e.side).add(e.side, e.price, e.qty);
        book.resting += 1;
        *self.grew += grew as u64;
        *self.peak_orders = (*self.peak_orders).max(self.orders.len());
        *out = Change::Entered { order: resting.order_ref(e.order_id), opposite_best, depth5_before };
    }

    /// The resting order `order_id` and its slot, if it is `instrument`'s
    /// and on `side`.
    #[inline(always)]
    fn held(&self, order_id: u64, instrument: InstrumentId, side: Side) -> Option<(SlotIdx, Resting)> {
        let idx = self.orders.slot(order_id).ok()?;
        let order = *self.orders.at(idx);
        (order.instrument == instrument && order.side == side).then_some((idx, order))
    }

    #[inline(always)]
    fn cancel(&mut self, book: &mut InstrumentBook, e: &Event, out: &mut Change) {
        // One probe: the order is looked at in its slot, then removed from
        // there.
        let Ok(idx) = self.orders.slot(e.order_id) else {
            *out = Change::Skipped(SkipCause::UnknownOrder);
            return;
        };
        let mut order = *self.orders.at(idx);
        if order.instrument != e.instrument || order.side != e.side {
            *out = Change::Skipped(SkipCause::UnknownOrder);
            return;
        }
        if e.qty > order.open_qty {
            *out = Change::Skipped(SkipCause::OverExecution);
            return;
        }
        self.orders.remove_at(idx);
        // A `C` removes what is open, whatever its qty says (FEED.md: the
        // two agree in feed order; a reordered `T` may come between).
        let qty = order.open_qty;
        book.ladder_mut(order.side).remove(order.side, order.price, qty, true);
        book.resting -= 1;
        order.open_qty = 0;
        *out = Change::Cancelled { order: order.order_ref(e.order_id), qty };
    }

    #[inline(always)]
    fn trade(&mut self, book: &mut InstrumentBook, e: &Event, out: &mut Change) {
        // One probe per order: each is looked at and then changed or
        // removed in its slot.
        let buy = self.held(e.order_id, e.instrument, Side::Buy);
        let mut sell = self.held(e.contra_order_id, e.instrument, Side::Sell);
        if buy.is_some_and(|(_, o)| e.qty > o.open_qty) || sell.is_some_and(|(_, o)| e.qty > o.open_qty) {
            *out = Change::Skipped(SkipCause::OverExecution);
            return;
        }
        let buy = buy.map(|(idx, o)| {
            let (order, closed) = self.execute(book, idx, e.order_id, o, e.qty);
            // A removal may shift the entries after it back by a slot: the
            // sell order's slot is found again (rare; its line is in cache).
            if closed && let Some((idx, _)) = sell.as_mut() {
                match self.orders.slot(e.contra_order_id) {
                    Ok(now) => *idx = now,
                    Err(_) => unreachable!("the sell order is held"),
                }
            }
            order
        });
        let sell = sell.map(|(idx, o)| self.execute(book, idx, e.contra_order_id, o, e.qty).0);
        if buy.is_none() && sell.is_none() {
            *out = Change::Skipped(SkipCause::UnknownOrder);
            return;
        }
        book.last_trade = Some(e.price);
        *out = match (buy, sell) {
            (Some(buy), Some(sell)) => Change::Traded { buy, sell, aggressor: e.side, price: e.price, qty: e.qty },
            // One side executed (see the module doc): counted as unknown.
            _ => Change::Skipped(SkipCause::UnknownOrder),
        };
    }

    /// Executes `qty` of a held order (of `book`'s instrument, in slot
    /// `idx`); returns it as it stands after, and whether it closed (was
    /// removed from the table).
    #[inline(always)]
    fn execute(
        &mut self,
        book: &mut InstrumentBook,
        idx: SlotIdx,
        order_id: u64,
        mut order: Resting,
        qty: u64,
    ) -> (OrderRef, bool) {
        order.open_qty -= qty;
        let closed = order.open_qty == 0;
        if closed {
            self.orders.remove_at(idx);
        } else {
            self.orders.at_mut(idx).open_qty = order.open_qty;
        }
        book.ladder_mut(order.side).remove(order.side, order.price, qty, closed);
        book.resting -= closed as u64;
        (order.order_ref(order_id), closed)
    }
}

/// Instrument ids are below the validator's instrument limit; a larger one
/// in a snapshot is damage, not a reason to allocate.
const MAX_INSTRUMENT_ID: usize = 1 << 24;

/// A copy of a shard's books at a barrier, encoded off the shard.
#[derive(Clone, Debug, Default)]
pub struct BookImage {
    instruments: Vec<(InstrumentId, Option<Px>, [u64; 5])>,
    orders: Vec<(u64, Resting)>,
}

impl BookImage {
    /// Room for `orders` resting orders and `instruments` books.
    pub fn prepare(&mut self, orders: usize, instruments: usize) {
        self.orders.reserve(orders.saturating_sub(self.orders.len()));
        self.instruments.reserve(instruments.saturating_sub(self.instruments.len()));
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u64(self.instruments.len() as u64);
        for &(instrument, last_trade, skipped) in &self.instruments {
            w.u32(instrument);
            w.u8(last_trade.is_some() as u8);
            w.i64(last_trade.unwrap_or(0));
            for s in skipped {
                w.u64(s);
            }
        }
        w.u64(self.orders.len() as u64);
        for (order_id, o) in &self.orders {
            w.u64(*order_id);
            w.u32(o.instrument);
            w.u32(o.account);
            w.u32(o.group);
            w.u8(o.side as u8);
            w.i64(o.price);
            w.i64(o.entry_ts_ns);
            w.u64(o.entered_qty);
            w.u64(o.open_qty);
        }
    }
}

/// One item's part of `BookStats::digest` (items are summed, so their order
/// does not matter).
fn digest(words: &[u64; 9]) -> u64 {
    let mut bytes = [0u8; 72];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

#[inline]
fn opposite(side: Side) -> Side {
    match side {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
    }
}

#[cfg(test)]
mod tests;
