//! The book-based manipulation rules: spoofing, layering and momentum
//! ignition. Each reads a record together with what the order book made of
//! it (`views::Change`) and the instrument's book after it (`BookView`), and
//! hands fixed-size `Finding`s to its caller.
//!
//! This module owns what the three share: the `Finding` record and its
//! evidence, the bounded key table and time-ordered window ring their state
//! lives in (`window.rs`), and the parsing of their parameter tables.

pub mod layering;
pub mod momentum_ignition;
pub mod spoofing;

mod params;
mod spoof_pattern;
mod window;

#[cfg(test)]
mod test_book;
#[cfg(test)]
mod tests;

pub use spoof_pattern::SpoofEvidence;

use crate::event::{AccountId, GroupId, InstrumentId, Px, Side};

/// Which book rule a finding is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BookRule {
    Spoofing,
    Layering,
    MomentumIgnition,
}

impl BookRule {
    /// The name alerts carry (JSON `rule`).
    pub fn name(self) -> &'static str {
        match self {
            BookRule::Spoofing => "spoofing",
            BookRule::Layering => "layering",
            BookRule::MomentumIgnition => "momentum-ignition",
        }
    }
}

/// Up to `OrderIds::CAP` contributing order ids, in the order the rule
/// lists them, and how many there were in all (`total` >= `len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderIds {
    pub ids: [u64; OrderIds::CAP],
    pub len: u8,
    pub total: u32,
}

impl OrderIds {
    pub const CAP: usize = 8;

    /// The ids kept.
    pub fn as_slice(&self) -> &[u64] {
        &self.ids[..self.len as usize]
    }

    /// Counts one more contributing order, keeping its id while there is
    /// room. `distinct` says whether the caller has not offered this id
    /// before (callers know exactly, so `total` counts distinct orders).
    fn add(&mut self, id: u64, distinct: bool) {
        if !distinct {
            return;
        }
        if (self.len as usize) < Self::CAP {
            self.ids[self.len as usize] = id;
            self.len += 1;
        }
        self.total += 1;
    }
}

/// What a momentum-ignition alert measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IgnitionEvidence {
    /// The side the group's aggressive orders took (the price moved up for
    /// `Buy`, down for `Sell`); the completing trade is on the other side.
    pub side: Side,
    /// The last trade price before the group's first aggressive trade of the
    /// run, and the price of its last one.
    pub start_px: Px,
    pub moved_px: Px,
    pub move_ticks: i64,
    pub min_move_ticks: i64,
    /// The run of aggressive trades: first and last event time, how many,
    /// and their quantity.
    pub run_start_ns: i64,
    pub run_end_ns: i64,
    pub aggressive_trades: u32,
    pub aggressive_qty: u64,
    pub window_ns: i64,
    /// The completing opposite-side trade: its price, its distance from the
    /// moved price in ticks (towards the start price is negative), the
    /// allowed distance, and how long after the run's last trade it came.
    pub exit_px: Px,
    pub exit_qty: u64,
    pub exit_vs_moved_ticks: i64,
    pub near_ticks: i64,
    pub exit_after_ns: i64,
    pub follow_ns: i64,
}

/// The measured values of a finding next to their thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Spoof(SpoofEvidence),
    Ignition(IgnitionEvidence),
}

/// One alert of a book rule: fixed-size, ids only (names are the sink's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: BookRule,
    /// The record that completed the pattern.
    pub seq: u64,
    pub ts_ns: i64,
    pub group: GroupId,
    /// The account of the completing record's order of this group.
    pub account: AccountId,
    pub instrument: InstrumentId,
    pub evidence: Evidence,
    /// Spoofing and layering: the cancelled spoof-side orders, then the
    /// executed opposite-side orders. Momentum ignition: the aggressive
    /// orders of the run, then the completing opposite-side order.
    pub order_ids: OrderIds,
}

/// What a rule's tables hold and what their limits cost, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Keys with state now, and window entries now.
    pub keys: usize,
    pub entries: usize,
    /// Records about a new key not tracked because the key table was full.
    pub keys_refused: u64,
    /// Window entries expired before their time because the ring was full.
    pub entries_evicted: u64,
    /// Times a table grew (allocation, expected only while warming up).
    pub grew: u64,
}

/// A key of the rules' state: (group, instrument), as the other rules key.
#[inline]
pub fn key_of(group: GroupId, instrument: InstrumentId) -> u64 {
    (group as u64) << 32 | instrument as u64
}

/// The other side.
#[inline]
pub fn opposite(side: Side) -> Side {
    match side {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
    }
}

#[inline]
fn side_index(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}
