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
pub mod spoof;

use crate::event::{AccountId, GroupId, Px, Side};

/// Whether the rules that read the order book (spoofing, layering,
/// momentum-ignition, marking-open, instant-cancel) are on when the rules
/// file does not say. Off for now: keeping the book costs about 220 ns a
/// record on the 2-core VM (a 10M-record replay drops from about 13 to 3.4
/// M records/s, docs/PERFORMANCE.md), and a default replay must stay fast.
/// `enabled = true` in a rule's table turns it on.
pub const BOOK_RULES_ON_BY_DEFAULT: bool = false;

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
use book::{BookImage, BookLimits, BookStats, Books, InstrumentBook, Reference};
use last_trade::LastTrade;
use spoof::SpoofStream;

/// What a rule that reads the book (`Reads::BOOK`) sees of a record:
/// what it did to its instrument's book, and that book just after it.
#[derive(Clone, Copy, Debug)]
pub struct BookSeen<'a> {
    pub change: &'a Change,
    pub book: &'a InstrumentBook,
}

/// A shard's views: one of each that an enabled rule reads, over the
/// shard's instruments. Updated with each record before the rules run.
pub struct Views {
    last_trade: Option<LastTrade>,
    book: Option<Books>,
    /// The window stream spoofing and layering share (`Reads::SPOOF`).
    spoof: Option<SpoofStream>,
}

/// The views' state as of a barrier.
#[derive(Default)]
pub struct ViewImages {
    last_trade: Option<last_trade::Image>,
    book: Option<BookImage>,
    spoof: Option<Vec<u8>>,
}

/// How the views are set up beyond what the enabled rules read.
#[derive(Clone, Default)]
pub struct ViewConfig {
    /// Keep the book even when no enabled rule reads it (replay's hidden
    /// `--keep-book`: tests and measurement of the book on its own).
    pub keep_book: bool,
    pub book_limits: BookLimits,
    /// instruments.csv and the instrument names (none: no reference data).
    pub reference: Option<Reference>,
}

/// The book's snapshot section.
const BOOK_ID: u16 = 0x8002;
const BOOK_VERSION: u16 = 1;

/// A view's snapshot section name (`checkpoint show`), or `None` for a rule's id.
pub fn section_name(id: u16) -> Option<&'static str> {
    match id {
        last_trade::LastTrade::ID => Some("view last-trade"),
        BOOK_ID => Some("view book"),
        spoof::SpoofStream::ID => Some("view spoof-stream"),
        _ => None,
    }
}

/// Instruments a view table is sized for at start-up (it grows past that, counted).
const INSTRUMENTS: usize = 1024;

impl Views {
    /// The views `rules` read (the spoof stream with the parameters of
    /// spoofing and layering, whichever are on).
    pub fn for_rules(rules: &crate::config::Rules, config: &ViewConfig) -> Views {
        use crate::detect::rules::BookRule;
        let mut views = Views::new(rules.reads(), config);
        let spoof: Vec<_> =
            [rules.spoofing.map(|p| (BookRule::Spoofing, p.0)), rules.layering.map(|p| (BookRule::Layering, p.0))]
                .into_iter()
                .flatten()
                .collect();
        if rules.reads().has(Reads::SPOOF) && !spoof.is_empty() {
            assert!(views.book.is_some(), "the spoof stream reads the book");
            views.spoof = Some(SpoofStream::new(&spoof));
        }
        views
    }

    /// The views `reads` names, without the spoof stream (it needs its
    /// rules' parameters: `for_rules`).
    pub fn new(reads: Reads, config: &ViewConfig) -> Views {
        let book = (reads.has(Reads::BOOK) || config.keep_book).then(|| {
            let reference = config.reference.clone().unwrap_or_else(|| Reference {
                instruments: Default::default(),
                names: std::sync::Arc::new(crate::symbols::NameTable::with_capacity(0)),
            });
            Books::new(config.book_limits, reference)
        });
        Views { last_trade: reads.has(Reads::LAST_TRADE).then(|| LastTrade::new(INSTRUMENTS)), book, spoof: None }
    }

    /// Brings what `update` will need for `event` into cache.
    #[inline(always)]
    pub fn prefetch(&self, event: &Event) {
        if let Some(book) = self.book.as_ref() {
            book.prefetch(event);
        }
        if let Some(spoof) = self.spoof.as_ref() {
            spoof.prefetch(event);
        }
    }

    /// Applies `event` to every view kept; what the rules may see of it.
    #[inline(always)]
    pub fn update(&mut self, event: &Event) -> Seen<'_> {
        let last_trade = match self.last_trade.as_mut() {
            Some(view) => view.update(event),
            None => None,
        };
        let book = match self.book.as_mut() {
            Some(books) => {
                let (change, book) = books.apply_and_view(event);
                if let Some(spoof) = self.spoof.as_mut() {
                    spoof.update(event, change, book);
                }
                Some(BookSeen { change, book })
            }
            None => None,
        };
        let spoof = self.spoof.as_ref().map(SpoofStream::seen);
        Seen { last_trade, book, spoof, ..Seen::default() }
    }

    pub fn grew(&self) -> u64 {
        self.last_trade.as_ref().map_or(0, |v| v.grew())
            + self.book.as_ref().map_or(0, |b| b.stats_grew())
            + self.spoof.as_ref().map_or(0, |s| s.grew())
    }

    /// (keys, window entries) of the spoof stream, if it is kept.
    pub fn spoof_footprint(&self) -> Option<(usize, usize)> {
        self.spoof.as_ref().map(|s| s.footprint())
    }

    /// Records of new keys the spoof stream refused (its key table full); 0 if not kept.
    pub fn spoof_keys_refused(&self) -> u64 {
        self.spoof.as_ref().map_or(0, |s| s.keys_refused())
    }

    /// The books' counters, if the book is kept.
    pub fn book_stats(&self) -> Option<BookStats> {
        self.book.as_ref().map(|b| b.stats())
    }

    /// (resting orders, instruments) of the book, for sizing images.
    pub fn book_footprint(&self) -> (usize, usize) {
        self.book.as_ref().map_or((0, 0), |b| b.footprint())
    }

    pub fn begin_snapshot(&mut self, images: &mut ViewImages) {
        if let Some(view) = self.last_trade.as_mut() {
            view.begin_snapshot(images.last_trade.take().unwrap_or_default());
        }
        // The book: its instruments' words now, the resting orders in
        // slices after the barrier (copy-on-write, `Books::begin_snapshot`).
        match self.book.as_mut() {
            Some(books) => books.begin_snapshot(images.book.get_or_insert_with(Default::default)),
            None => images.book = None,
        }
        // The spoof stream: encoded whole at the barrier.
        match self.spoof.as_mut() {
            Some(spoof) => spoof.begin_snapshot(images.spoof.take().unwrap_or_default()),
            None => images.spoof = None,
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
        if let Some(books) = self.book.as_mut()
            && let Some(image) = images.book.as_mut()
        {
            done &= books.copy_slice(max, image);
        }
        if let Some(spoof) = self.spoof.as_mut()
            && let Some(image) = spoof.take_snapshot()
        {
            images.spoof = Some(image);
        }
        done
    }

    /// Restores one section if it is a view's; `Ok(false)` if it is not.
    pub fn restore(
        &mut self,
        (id, version, body): (u16, u16, &[u8]),
        keep: &dyn Fn(u64) -> bool,
    ) -> Result<bool, DecodeError> {
        if id == BOOK_ID {
            let Some(books) = self.book.as_mut() else {
                return Err(DecodeError("an order-book section, which no enabled rule reads".into()));
            };
            if version != BOOK_VERSION {
                return Err(DecodeError(format!("order-book section version {version}, this build reads 1")));
            }
            let mut r = Reader::new(body);
            books.restore(&mut r, &|instrument| keep(instrument as u64))?;
            r.finish()?;
            return Ok(true);
        }
        if id == SpoofStream::ID {
            let Some(spoof) = self.spoof.as_mut() else {
                return Err(DecodeError("a spoof-stream section, and neither spoofing nor layering is on".into()));
            };
            // Version 1 listed every key with entries, version 2 every key
            // with a counted cancel (all restore hot: as exact).
            if !(1..=SpoofStream::VERSION).contains(&version) {
                return Err(DecodeError(format!(
                    "spoof-stream section version {version}, this build reads 1 to {}",
                    SpoofStream::VERSION
                )));
            }
            let mut r = Reader::new(body);
            spoof.restore(&mut r, keep)?;
            r.finish()?;
            return Ok(true);
        }
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
        let last_trade = self.last_trade.as_ref().map(|_| LastTrade::ID);
        last_trade
            .into_iter()
            .chain(self.book.as_ref().map(|_| BOOK_ID))
            .chain(self.spoof.as_ref().map(|_| SpoofStream::ID))
            .collect()
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
        if let Some(image) = self.book.as_ref() {
            write_section(w, BOOK_ID, BOOK_VERSION, |w| image.encode(w));
            n += 1;
        }
        if let Some(image) = self.spoof.as_ref() {
            write_section(w, SpoofStream::ID, SpoofStream::VERSION, |w| w.out.extend_from_slice(image));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_section_has_a_name_and_no_rule_shares_its_id() {
        for id in [last_trade::LastTrade::ID, BOOK_ID, spoof::SpoofStream::ID] {
            assert!(section_name(id).is_some(), "view section {id:#x} has no name");
            assert!(crate::detect::registry::index_of(id).is_none(), "view section {id:#x} is also a rule id");
        }
        assert_eq!(section_name(0x7fff), None);
    }
}
