//! Shared per-instrument views that rules read: computed once per record,
//! before the rules run, on the shard that owns the instrument.
//!
//! This module owns the contract between the order book (`book.rs`, the
//! view) and the book rules (`detect/rules/`): what one record did to its
//! instrument's book (`Change`) and what a rule may ask of the book
//! (`BookView`). Rules see the record, its `Change` and the book *after* the
//! record was applied; whatever they need of the book as it stood before
//! (the opposite best, the depth a new order was placed against) travels in
//! the `Change`.

pub mod book;

use crate::event::{AccountId, GroupId, Px, Side};

/// An order as the book holds it, as of just after the record was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderRef {
    pub order_id: u64,
    pub account: AccountId,
    pub group: GroupId,
    pub side: Side,
    pub price: Px,
    /// Event time of the order's `N`.
    pub entry_ts_ns: i64,
    /// Quantity of the order's `N`.
    pub entered_qty: u64,
    /// What is still open after this record (0 once filled or cancelled).
    pub open_qty: u64,
}

/// Why the book left a record unapplied. Each cause has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipCause {
    /// A `C` or `T` about an order the book does not hold (its `N` was late,
    /// rejected, or the tape starts mid-day).
    UnknownOrder,
    /// An `N` whose order id is already open.
    DuplicateOrder,
    /// A `T` or `C` for more than is open.
    OverExecution,
    /// An `N` priced outside the day's limits from instruments.csv.
    OutsideLimits,
    /// The book is at its stated limit (orders or levels).
    BookFull,
}

/// What one record did to its instrument's book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// An `N` entered the book. `opposite_best` is the best price on the
    /// other side just before it (a buy priced below it, or with no ask at
    /// all, is non-marketable); `depth5_before` is the resting quantity in
    /// the best five levels of the order's own side just before it.
    Entered { order: OrderRef, opposite_best: Option<Px>, depth5_before: u64 },
    /// A `C` removed `qty` (what was open) of `order`.
    Cancelled { order: OrderRef, qty: u64 },
    /// A `T` executed `qty` at `price` between `buy` and `sell`;
    /// `aggressor` is the record's `side` column.
    Traded { buy: OrderRef, sell: OrderRef, aggressor: Side, price: Px, qty: u64 },
    /// The book did not apply the record.
    Skipped(SkipCause),
}

/// What a rule may ask of one instrument's book.
pub trait BookView {
    /// The best price on `side`, if any order rests there.
    fn best(&self, side: Side) -> Option<Px>;
    /// Resting quantity in the best `levels` price levels of `side`.
    fn depth(&self, side: Side, levels: usize) -> u64;
    /// The price of the last trade applied, if any.
    fn last_trade(&self) -> Option<Px>;
    /// The instrument's tick (instruments.csv; one 1/10,000 unit without it).
    fn tick(&self) -> Px;
}

pub mod last_trade;

use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::detect::registry::write_section;
use crate::detect::rule::{Reads, Seen};
use crate::event::Event;
use last_trade::LastTrade;

/// A shard's views: one of each that an enabled rule reads, over the
/// shard's instruments. Updated with each record before the rules run.
/// (The order book goes here as a field like `last_trade`, with its
/// `Reads` bit, its part of `Seen`, and its snapshot section.)
pub struct Views {
    last_trade: Option<LastTrade>,
}

/// The views' state as of a barrier.
#[derive(Default)]
pub struct ViewImages {
    last_trade: Option<last_trade::Image>,
}

/// Instruments a view table is sized for at start-up (it grows past that, counted).
const INSTRUMENTS: usize = 1024;

impl Views {
    pub fn new(reads: Reads) -> Views {
        Views { last_trade: reads.has(Reads::LAST_TRADE).then(|| LastTrade::new(INSTRUMENTS)) }
    }

    /// Applies `event` to every view kept; what the rules may see of it.
    #[inline(always)]
    pub fn update(&mut self, event: &Event) -> Seen<'_> {
        let last_trade = match self.last_trade.as_mut() {
            Some(view) => view.update(event),
            None => None,
        };
        Seen { last_trade, ..Seen::default() }
    }

    pub fn grew(&self) -> u64 {
        self.last_trade.as_ref().map_or(0, |v| v.grew())
    }

    pub fn begin_snapshot(&mut self, images: &mut ViewImages) {
        if let Some(view) = self.last_trade.as_mut() {
            view.begin_snapshot(images.last_trade.take().unwrap_or_default());
        }
    }

    /// One slice of each view's snapshot not yet complete; true once all are.
    pub fn copy_slice(&mut self, max: usize, images: &mut ViewImages) -> bool {
        let mut done = true;
        if let Some(view) = self.last_trade.as_mut()
            && images.last_trade.is_none()
        {
            images.last_trade = view.copy_slice(max);
            done &= images.last_trade.is_some();
        }
        done
    }

    /// Restores one section if it is a view's; `Ok(false)` if it is not.
    pub fn restore(
        &mut self,
        (id, version, body): (u16, u16, &[u8]),
        keep: &dyn Fn(u64) -> bool,
    ) -> Result<bool, DecodeError> {
        if id != LastTrade::ID {
            return Ok(false);
        }
        let Some(view) = self.last_trade.as_mut() else {
            return Err(DecodeError("a last-trade view section, which no enabled rule reads".into()));
        };
        if version != LastTrade::VERSION {
            return Err(DecodeError(format!("last-trade section version {version}, this build reads 1")));
        }
        let mut r = Reader::new(body);
        view.restore(&mut r, keep)?;
        r.finish()?;
        Ok(true)
    }

    /// Section ids of the views kept (a restore must find each).
    pub fn ids(&self) -> Vec<u16> {
        self.last_trade.as_ref().map(|_| LastTrade::ID).into_iter().collect()
    }
}

impl ViewImages {
    /// One section per view image; returns how many.
    pub fn encode(&self, w: &mut Writer<'_>) -> u32 {
        let mut n = 0;
        if let Some(image) = self.last_trade.as_ref() {
            write_section(w, LastTrade::ID, LastTrade::VERSION, |w| LastTrade::encode(image, w));
            n += 1;
        }
        n
    }
}
