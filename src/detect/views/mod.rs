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
