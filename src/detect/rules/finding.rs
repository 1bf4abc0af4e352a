//! What the three book rules (spoofing, layering, momentum ignition)
//! share: the `Finding` record, its evidence and its packing into an
//! alert's inline words and list.

use super::spoof_pattern::{self, SpoofEvidence};
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
    pub(crate) fn add(&mut self, id: u64, distinct: bool) {
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
pub fn side_index(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

/// Inline evidence words an alert carries (the framework's alert layout).
pub const WORDS: usize = 6;

/// The items of a finding's list, the part of its evidence that does not
/// fit the inline words: packed counts, the thresholds, then the order ids.
pub const LIST_HEAD: usize = 10;
pub const LIST_MAX: usize = LIST_HEAD + OrderIds::CAP;

/// A finding as fixed-size data for an alert: `WORDS` inline words and a
/// list of `len` items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packed {
    pub words: [u64; WORDS],
    pub list: [u64; LIST_MAX],
    pub len: usize,
}

impl Packed {
    pub fn list(&self) -> &[u64] {
        &self.list[..self.len]
    }
}

fn side_bit(side: Side) -> u64 {
    (side == Side::Sell) as u64
}

fn bit_side(bit: u64) -> Side {
    if bit & 1 == 0 { Side::Buy } else { Side::Sell }
}

impl Finding {
    /// Layout. Spoofing and layering: words `[spoof_qty, peak_open_qty,
    /// depth5_at_placement, cancelled_qty, opposite_new_qty,
    /// opposite_exec_qty]`; list `[side | levels_behind << 8 | min_orders <<
    /// 32, spoof_orders |
    /// opposite_orders << 32, first_order_ns, window_ns, size_pct,
    /// cancel_pct, one_sided_k, min_opposite_exec_qty, levels (n, | 1 << 32
    /// for at least), ids total, ids...]`. Momentum ignition: words
    /// `[start_px, moved_px, exit_px, run_start_ns, run_end_ns, exit_qty]`;
    /// list `[side | trades << 8, aggressive_qty, move_ticks,
    /// min_move_ticks, window_ns, exit_vs_moved_ticks, near_ticks,
    /// exit_after_ns, follow_ns, ids total, ids...]`.
    pub fn pack(&self) -> Packed {
        let mut p = Packed { words: [0; WORDS], list: [0; LIST_MAX], len: LIST_HEAD };
        match self.evidence {
            Evidence::Spoof(e) => {
                p.words = [
                    e.spoof_qty,
                    e.peak_open_qty,
                    e.depth5_at_placement,
                    e.cancelled_qty,
                    e.opposite_new_qty,
                    e.opposite_exec_qty,
                ];
                let levels = match e.levels {
                    spoof_pattern::Levels::AtMost(n) => n as u64,
                    spoof_pattern::Levels::AtLeast(n) => n as u64 | 1 << 32,
                };
                p.list[..LIST_HEAD - 1].copy_from_slice(&[
                    side_bit(e.side) | (e.levels_behind as u64) << 8 | (e.min_orders as u64) << 32,
                    e.spoof_orders as u64 | (e.opposite_orders as u64) << 32,
                    e.first_order_ns as u64,
                    e.window_ns as u64,
                    e.size_pct,
                    e.cancel_pct,
                    e.one_sided_k,
                    e.min_opposite_exec_qty,
                    levels,
                ]);
            }
            Evidence::Ignition(e) => {
                p.words = [
                    e.start_px as u64,
                    e.moved_px as u64,
                    e.exit_px as u64,
                    e.run_start_ns as u64,
                    e.run_end_ns as u64,
                    e.exit_qty,
                ];
                p.list[..LIST_HEAD - 1].copy_from_slice(&[
                    side_bit(e.side) | (e.aggressive_trades as u64) << 8,
                    e.aggressive_qty,
                    e.move_ticks as u64,
                    e.min_move_ticks as u64,
                    e.window_ns as u64,
                    e.exit_vs_moved_ticks as u64,
                    e.near_ticks as u64,
                    e.exit_after_ns as u64,
                    e.follow_ns as u64,
                ]);
            }
        }
        p.list[LIST_HEAD - 1] = self.order_ids.total as u64;
        let ids = self.order_ids.as_slice();
        p.list[LIST_HEAD..LIST_HEAD + ids.len()].copy_from_slice(ids);
        p.len = LIST_HEAD + ids.len();
        p
    }

    /// The evidence and order ids back from `pack`'s layout (`None` for a
    /// list too short to be one; a list cut by the evidence arena keeps
    /// what came).
    pub fn unpack(rule: BookRule, words: &[u64; WORDS], list: &[u64]) -> Option<(Evidence, OrderIds)> {
        if list.len() < LIST_HEAD {
            return None;
        }
        let l = list;
        let evidence = match rule {
            BookRule::Spoofing | BookRule::Layering => Evidence::Spoof(SpoofEvidence {
                side: bit_side(l[0]),
                levels_behind: (l[0] >> 8) as u32 & 0xff_ffff,
                min_orders: (l[0] >> 32) as u32,
                spoof_orders: l[1] as u32,
                opposite_orders: (l[1] >> 32) as u32,
                first_order_ns: l[2] as i64,
                window_ns: l[3] as i64,
                size_pct: l[4],
                cancel_pct: l[5],
                one_sided_k: l[6],
                min_opposite_exec_qty: l[7],
                levels: if l[8] >> 32 != 0 {
                    spoof_pattern::Levels::AtLeast(l[8] as u32)
                } else {
                    spoof_pattern::Levels::AtMost(l[8] as u32)
                },
                spoof_qty: words[0],
                peak_open_qty: words[1],
                depth5_at_placement: words[2],
                cancelled_qty: words[3],
                opposite_new_qty: words[4],
                opposite_exec_qty: words[5],
            }),
            BookRule::MomentumIgnition => Evidence::Ignition(IgnitionEvidence {
                side: bit_side(l[0]),
                aggressive_trades: (l[0] >> 8) as u32,
                aggressive_qty: l[1],
                move_ticks: l[2] as i64,
                min_move_ticks: l[3] as i64,
                window_ns: l[4] as i64,
                exit_vs_moved_ticks: l[5] as i64,
                near_ticks: l[6] as i64,
                exit_after_ns: l[7] as i64,
                follow_ns: l[8] as i64,
                start_px: words[0] as i64,
                moved_px: words[1] as i64,
                exit_px: words[2] as i64,
                run_start_ns: words[3] as i64,
                run_end_ns: words[4] as i64,
                exit_qty: words[5],
            }),
        };
        let mut ids = OrderIds::default();
        for &id in l[LIST_HEAD..].iter().take(OrderIds::CAP) {
            ids.add(id, true);
        }
        ids.total = l[LIST_HEAD - 1] as u32;
        Some((evidence, ids))
    }
}
