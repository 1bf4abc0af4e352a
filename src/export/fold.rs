//! The fold of the accepted records into orders and per (group,
//! instrument) metrics, on its own thread beside the records table.
//!
//! The fold is random access into two big tables (5M orders, 1.4M metric
//! rows on a 10M-record day): most of its time was cache misses. So the
//! indices are arrays where the keys allow (order ids dense from the
//! first one, a group x instrument grid), a metric row is one cache line,
//! and records come in batches so each one's index slots and rows are
//! prefetched a few records ahead.

use crate::flat_map::prefetch;
use rustc_hash::FxHashMap;

/// One accepted record, complete (the validator admitted it), its names
/// resolved to ids.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub seq: u64,
    pub ts_ns: i64,
    pub order_id: u64,
    pub contra_order_id: Option<u64>,
    pub price: i64,
    pub qty: u64,
    pub account: u32,
    pub group: u32,
    /// A trade's seller's group (the seller is `contra`, the buyer `account`).
    pub seller_group: Option<u32>,
    pub instrument: u32,
    pub kind: u8,
    pub side: u8,
    pub late: bool,
}

/// One order as the accepted records left it.
pub struct Order {
    pub order_id: u64,
    pub entry_seq: u64,
    pub entry_ts_ns: i64,
    /// `i64::MIN` while open.
    pub closed_ts_ns: i64,
    pub last_ts_ns: i64,
    pub price: i64,
    pub qty: u64,
    pub filled: u64,
    pub cancelled: u64,
    pub trades: u32,
    pub account: u32,
    pub instrument: u32,
    pub side: u8,
}

/// Per (group, instrument) counts over the accepted records: one cache
/// line. Counts of records are u32: `Fold` refuses a day of more than
/// `ACCEPTED_MAX` accepted records, so none can overflow.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(align(64))]
pub struct Metric {
    pub records: u32,
    pub late: u32,
    pub orders: u32,
    pub cancels: u32,
    pub trades: u32,
    pub self_trades: u32,
    pub order_qty: u64,
    pub cancelled_qty: u64,
    pub bought_qty: u64,
    pub sold_qty: u64,
    pub traded_notional: f64,
}

const _: () = assert!(std::mem::size_of::<Metric>() == 64);

/// The most accepted records a day may have (a metric row counts in u32).
pub const ACCEPTED_MAX: u64 = u32::MAX as u64;

const NONE: u32 = u32::MAX;

/// Order id -> index in the orders: ids within `limit` above the first id
/// seen (a day's ids are usually 1, 2, 3, ...) in an array, others in a map.
pub struct OrderIndex {
    base: Option<u64>,
    dense: Vec<u32>,
    limit: u64,
    sparse: FxHashMap<u64, u32>,
}

impl OrderIndex {
    /// An index whose array holds ids up to `limit` above the first one
    /// (4 bytes each, allocated as ids reach them).
    pub fn new(limit: usize) -> OrderIndex {
        OrderIndex { base: None, dense: Vec::new(), limit: limit as u64, sparse: FxHashMap::default() }
    }

    #[inline]
    fn slot(&self, id: u64) -> Option<usize> {
        let offset = id.checked_sub(self.base?)?;
        (offset < self.limit).then_some(offset as usize)
    }

    pub fn insert(&mut self, id: u64, index: u32) {
        assert!(index != NONE, "more orders than an index holds");
        self.base.get_or_insert(id);
        match self.slot(id) {
            Some(s) => {
                if s >= self.dense.len() {
                    let len = (s + 1).next_power_of_two().min(self.limit as usize);
                    self.dense.resize(len, NONE);
                }
                self.dense[s] = index;
            }
            None => {
                self.sparse.insert(id, index);
            }
        }
    }

    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        match self.slot(id) {
            Some(s) => self.dense.get(s).copied().filter(|&i| i != NONE),
            None if self.sparse.is_empty() => None,
            None => self.sparse.get(&id).copied(),
        }
    }

    #[inline]
    fn prefetch(&self, id: u64) {
        if let Some(slot) = self.slot(id).and_then(|s| self.dense.get(s)) {
            prefetch(slot);
        }
    }
}

/// The most cells the (group, instrument) grid may have (4 bytes each)
/// before the index becomes a map.
const GRID_CELLS_MAX: usize = 1 << 25;

/// (group, instrument) -> metric row: a group-major grid of row numbers
/// (ids are dense from 0) while it has at most `cells_max` cells, then a
/// map.
pub struct PairIndex {
    /// Columns (instruments) per group: a power of two.
    cols: usize,
    grid: Vec<u32>,
    cells_max: usize,
    map: Option<FxHashMap<(u32, u32), u32>>,
}

impl PairIndex {
    pub fn new(cells_max: usize) -> PairIndex {
        PairIndex { cols: 1, grid: Vec::new(), cells_max, map: None }
    }

    #[inline]
    fn cell(&self, group: u32, instrument: u32) -> Option<usize> {
        ((instrument as usize) < self.cols).then(|| group as usize * self.cols + instrument as usize)
    }

    /// The row of (group, instrument), `next` if it is new.
    #[inline]
    pub fn get_or_insert(&mut self, group: u32, instrument: u32, next: u32) -> u32 {
        if self.map.is_none() {
            let cell = match self.cell(group, instrument) {
                Some(c) if c < self.grid.len() => Some(c),
                _ => self.grow(group, instrument),
            };
            if let Some(cell) = cell {
                let row = &mut self.grid[cell];
                if *row == NONE {
                    *row = next;
                }
                return *row;
            }
        }
        *self.map.as_mut().expect("a grid or a map").entry((group, instrument)).or_insert(next)
    }

    /// Makes room for (group, instrument) in the grid and returns its cell,
    /// or turns the grid into a map (and returns None) when it would grow
    /// beyond `cells_max`.
    #[cold]
    fn grow(&mut self, group: u32, instrument: u32) -> Option<usize> {
        let cols = self.cols.max((instrument as usize + 1).next_power_of_two());
        let groups = (self.grid.len() / self.cols).max(group as usize + 1);
        if groups.saturating_mul(cols) > self.cells_max {
            let mut map = FxHashMap::default();
            for (cell, &row) in self.grid.iter().enumerate().filter(|(_, r)| **r != NONE) {
                map.insert(((cell / self.cols) as u32, (cell % self.cols) as u32), row);
            }
            self.grid = Vec::new();
            self.map = Some(map);
            return None;
        }
        if cols != self.cols {
            let mut grid = vec![NONE; groups * cols];
            for (g, row) in self.grid.chunks(self.cols).enumerate() {
                grid[g * cols..g * cols + self.cols].copy_from_slice(row);
            }
            self.grid = grid;
            self.cols = cols;
        } else {
            self.grid.resize(groups * cols, NONE);
        }
        Some(group as usize * cols + instrument as usize)
    }

    #[inline]
    fn prefetch(&self, group: u32, instrument: u32) {
        if let Some(cell) = self.cell(group, instrument).and_then(|c| self.grid.get(c)) {
            prefetch(cell);
        }
    }

    /// The row of (group, instrument) if it has one (grid only: for prefetching).
    #[inline]
    fn peek(&self, group: u32, instrument: u32) -> Option<u32> {
        self.cell(group, instrument).and_then(|c| self.grid.get(c)).copied().filter(|&r| r != NONE)
    }
}

/// The fold's state, and what it hands back.
pub struct Fold {
    pub orders: Vec<Order>,
    index: OrderIndex,
    pairs: PairIndex,
    /// (group, instrument) of each metric row.
    pub metric_keys: Vec<(u32, u32)>,
    pub metrics: Vec<Metric>,
    /// Accepted records about an order not seen (a bug if not 0).
    pub unmatched: u64,
    accepted: u64,
}

/// How far ahead a batch's index slots (twice this) and rows are prefetched.
const AHEAD: usize = 8;

impl Fold {
    /// A fold sized for about `records` records (half of them orders).
    pub fn new(records: usize) -> Fold {
        Fold {
            orders: Vec::with_capacity(records / 2),
            index: OrderIndex::new(records.max(1 << 16).saturating_mul(2)),
            pairs: PairIndex::new(GRID_CELLS_MAX),
            metric_keys: Vec::with_capacity(records / 8),
            metrics: Vec::with_capacity(records / 8),
            unmatched: 0,
            accepted: 0,
        }
    }

    /// A batch of accepted records, in tape order.
    pub fn batch(&mut self, batch: &[Accepted]) -> Result<(), String> {
        self.accepted += batch.len() as u64;
        if self.accepted > ACCEPTED_MAX {
            return Err(format!("more than {ACCEPTED_MAX} accepted records: beyond export's limit for one day"));
        }
        for i in 0..batch.len() {
            if let Some(a) = batch.get(i + 2 * AHEAD) {
                self.prefetch_slots(a);
            }
            if let Some(a) = batch.get(i + AHEAD) {
                self.prefetch_rows(a);
            }
            self.record(&batch[i]);
        }
        Ok(())
    }

    fn prefetch_slots(&self, a: &Accepted) {
        self.pairs.prefetch(a.group, a.instrument);
        if a.kind != b'N' {
            self.index.prefetch(a.order_id);
        }
        if let Some(g) = a.seller_group {
            self.pairs.prefetch(g, a.instrument);
        }
        if let Some(id) = a.contra_order_id {
            self.index.prefetch(id);
        }
    }

    fn prefetch_rows(&self, a: &Accepted) {
        if let Some(row) = self.pairs.peek(a.group, a.instrument) {
            prefetch(&self.metrics[row as usize]);
        }
        if a.kind != b'N'
            && let Some(i) = self.index.get(a.order_id)
        {
            prefetch(&self.orders[i as usize]);
        }
        if let Some(row) = a.seller_group.and_then(|g| self.pairs.peek(g, a.instrument)) {
            prefetch(&self.metrics[row as usize]);
        }
        if let Some(i) = a.contra_order_id.and_then(|id| self.index.get(id)) {
            prefetch(&self.orders[i as usize]);
        }
    }

    #[inline]
    fn metric(&mut self, group: u32, instrument: u32) -> &mut Metric {
        let next = self.metrics.len() as u32;
        let row = self.pairs.get_or_insert(group, instrument, next);
        if row == next {
            self.metric_keys.push((group, instrument));
            self.metrics.push(Metric::default());
        }
        &mut self.metrics[row as usize]
    }

    fn record(&mut self, a: &Accepted) {
        let (group, qty, ts) = (a.group, a.qty, a.ts_ns);
        let m = self.metric(group, a.instrument);
        m.records += 1;
        m.late += a.late as u32;
        match a.kind {
            b'N' => {
                m.orders += 1;
                m.order_qty += qty;
                self.index.insert(a.order_id, self.orders.len() as u32);
                self.orders.push(Order {
                    order_id: a.order_id,
                    entry_seq: a.seq,
                    entry_ts_ns: ts,
                    closed_ts_ns: i64::MIN,
                    last_ts_ns: ts,
                    price: a.price,
                    qty,
                    filled: 0,
                    cancelled: 0,
                    trades: 0,
                    account: a.account,
                    instrument: a.instrument,
                    side: a.side,
                });
            }
            b'C' => {
                m.cancels += 1;
                m.cancelled_qty += qty;
                match self.index.get(a.order_id) {
                    Some(i) => {
                        let o = &mut self.orders[i as usize];
                        o.cancelled += qty;
                        o.last_ts_ns = ts;
                        o.closed_ts_ns = ts;
                    }
                    None => self.unmatched += 1,
                }
            }
            _ => {
                let notional = a.price as f64 / crate::event::PX_SCALE as f64 * qty as f64;
                m.trades += 1;
                m.bought_qty += qty;
                m.traded_notional += notional;
                if a.seller_group == Some(group) {
                    m.self_trades += 1;
                    m.sold_qty += qty;
                } else if let Some(sg) = a.seller_group {
                    let s = self.metric(sg, a.instrument);
                    s.records += 1;
                    s.late += a.late as u32;
                    s.trades += 1;
                    s.sold_qty += qty;
                    s.traded_notional += notional;
                }
                for id in [Some(a.order_id), a.contra_order_id] {
                    match id.and_then(|id| self.index.get(id)) {
                        Some(i) => {
                            let o = &mut self.orders[i as usize];
                            o.filled += qty;
                            o.trades += 1;
                            o.last_ts_ns = o.last_ts_ns.max(ts);
                            if o.filled + o.cancelled >= o.qty {
                                o.closed_ts_ns = ts;
                            }
                        }
                        None => self.unmatched += 1,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Dense ids, ids below the first, and ids beyond the array's limit
    /// all map as a plain map would.
    #[test]
    fn order_index_equals_a_map() {
        let mut index = OrderIndex::new(1000);
        let mut model = HashMap::new();
        let ids = (5_000u64..6_500).chain([1, 4_999, 5_999, 1 << 40, u64::MAX, 5_000 + 999, 5_000 + 1000]);
        for (n, id) in ids.enumerate() {
            index.insert(id, n as u32);
            model.insert(id, n as u32);
        }
        assert!(!index.sparse.is_empty() && index.dense.len() == 1000);
        for id in (0..7_000).chain([1 << 40, u64::MAX, u64::MAX - 1]) {
            assert_eq!(index.get(id), model.get(&id).copied(), "id {id}");
        }
    }

    /// Rows by (group, instrument) as a map would give them, through the
    /// grid growing in both directions and turning into a map.
    #[test]
    fn pair_index_equals_a_map() {
        for cells_max in [1 << 20, 64] {
            let mut index = PairIndex::new(cells_max);
            let mut model: HashMap<(u32, u32), u32> = HashMap::new();
            let keys: Vec<(u32, u32)> = (0..2_000u32).map(|n| (n * 7 % 37, n * 13 % 101)).collect();
            for (g, i) in keys {
                let next = model.len() as u32;
                let want = *model.entry((g, i)).or_insert(next);
                assert_eq!(index.get_or_insert(g, i, next), want, "({g}, {i}), cells_max {cells_max}");
            }
            assert_eq!(index.map.is_some(), cells_max == 64);
            for (&(g, i), &row) in &model {
                let next = model.len() as u32;
                assert_eq!(index.get_or_insert(g, i, next), row);
            }
        }
    }
}
