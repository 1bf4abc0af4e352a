//! Tests only: a plain order book (maps and sorted levels) that turns
//! events into `Change`s and answers `BookView`, so the rules can be tested
//! before and apart from the real book; and a tape builder that writes
//! consistent records from order-level actions.

use crate::detect::views::{BookView, Change, OrderRef, SkipCause};
use crate::event::{Event, GROUP_SELF, Kind, Px, Side};
use std::collections::{BTreeMap, HashMap};

pub struct NaiveBook {
    orders: HashMap<u64, OrderRef>,
    levels: [BTreeMap<Px, u64>; 2],
    last_trade: Option<Px>,
    tick: Px,
}

fn ix(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

impl NaiveBook {
    pub fn new(tick: Px) -> NaiveBook {
        NaiveBook { orders: HashMap::new(), levels: [BTreeMap::new(), BTreeMap::new()], last_trade: None, tick }
    }

    fn take(&mut self, order_id: u64, qty: u64) -> Option<OrderRef> {
        let order = self.orders.get_mut(&order_id)?;
        order.open_qty -= qty;
        let after = *order;
        let level = self.levels[ix(after.side)].get_mut(&after.price).expect("level of an open order");
        *level -= qty;
        if *level == 0 {
            self.levels[ix(after.side)].remove(&after.price);
        }
        if after.open_qty == 0 {
            self.orders.remove(&order_id);
        }
        Some(after)
    }

    pub fn apply(&mut self, e: &Event) -> Change {
        match e.kind {
            Kind::New => {
                if self.orders.contains_key(&e.order_id) {
                    return Change::Skipped(SkipCause::DuplicateOrder);
                }
                let order = OrderRef {
                    order_id: e.order_id,
                    account: e.account,
                    group: e.group,
                    side: e.side,
                    price: e.price,
                    entry_ts_ns: e.ts_ns,
                    entered_qty: e.qty,
                    open_qty: e.qty,
                };
                let opposite_best = self.best(super::opposite(e.side));
                let depth5_before = self.depth(e.side, 5);
                self.orders.insert(e.order_id, order);
                *self.levels[ix(e.side)].entry(e.price).or_default() += e.qty;
                Change::Entered { order, opposite_best, depth5_before }
            }
            Kind::Cancel => match self.orders.get(&e.order_id) {
                None => Change::Skipped(SkipCause::UnknownOrder),
                Some(o) if o.open_qty < e.qty => Change::Skipped(SkipCause::OverExecution),
                Some(_) => Change::Cancelled { order: self.take(e.order_id, e.qty).unwrap(), qty: e.qty },
            },
            Kind::Trade => {
                let (Some(b), Some(s)) = (self.orders.get(&e.order_id), self.orders.get(&e.contra_order_id)) else {
                    return Change::Skipped(SkipCause::UnknownOrder);
                };
                if b.open_qty < e.qty || s.open_qty < e.qty || b.side != Side::Buy || s.side != Side::Sell {
                    return Change::Skipped(SkipCause::OverExecution);
                }
                let buy = self.take(e.order_id, e.qty).unwrap();
                let sell = self.take(e.contra_order_id, e.qty).unwrap();
                self.last_trade = Some(e.price);
                Change::Traded { buy, sell, aggressor: e.side, price: e.price, qty: e.qty }
            }
        }
    }

    pub fn open(&self, order_id: u64) -> Option<&OrderRef> {
        self.orders.get(&order_id)
    }

    pub fn open_orders(&self) -> Vec<OrderRef> {
        let mut v: Vec<OrderRef> = self.orders.values().copied().collect();
        v.sort_by_key(|o| o.order_id);
        v
    }
}

impl BookView for NaiveBook {
    fn best(&self, side: Side) -> Option<Px> {
        match side {
            Side::Buy => self.levels[0].keys().next_back().copied(),
            Side::Sell => self.levels[1].keys().next().copied(),
        }
    }

    fn depth(&self, side: Side, levels: usize) -> u64 {
        match side {
            Side::Buy => self.levels[0].values().rev().take(levels).sum(),
            Side::Sell => self.levels[1].values().take(levels).sum(),
        }
    }

    fn last_trade(&self) -> Option<Px> {
        self.last_trade
    }

    fn tick(&self) -> Px {
        self.tick
    }
}

/// One applied record, as a rule saw it.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    pub e: Event,
    pub change: Change,
    /// For an `Entered`: the order's price is not its side's best after it.
    pub behind: bool,
}

/// Writes records from order-level actions: accounts map to groups
/// (`GROUP_SELF | account` for an account with no group), the orders' sides
/// and prices are remembered, and every record goes through a `NaiveBook`.
pub struct Tape {
    pub book: NaiveBook,
    pub applied: Vec<Applied>,
    groups: HashMap<u32, u32>,
    seq: u64,
    pub instrument: u32,
}

pub const TICK: Px = 100; // 0.01
pub const SEC: i64 = 1_000_000_000;
pub const MS: i64 = 1_000_000;

impl Tape {
    pub fn new() -> Tape {
        Tape { book: NaiveBook::new(TICK), applied: Vec::new(), groups: HashMap::new(), seq: 0, instrument: 7 }
    }

    /// Puts `account` in `group` (accounts default to a group of their own).
    pub fn relate(&mut self, account: u32, group: u32) {
        self.groups.insert(account, group);
    }

    pub fn group(&self, account: u32) -> u32 {
        self.groups.get(&account).copied().unwrap_or(GROUP_SELF | account)
    }

    fn push(&mut self, mut e: Event) -> Change {
        self.seq += 1;
        e.seq = self.seq;
        e.instrument = self.instrument;
        let change = self.book.apply(&e);
        let behind = match change {
            Change::Entered { order, .. } => self.book.best(order.side) != Some(order.price),
            _ => false,
        };
        self.applied.push(Applied { e, change, behind });
        change
    }

    pub fn new_order(&mut self, ts_ns: i64, order_id: u64, account: u32, side: Side, price: Px, qty: u64) {
        let group = self.group(account);
        self.push(Event { ts_ns, kind: Kind::New, order_id, account, group, side, price, qty, ..Event::default() });
    }

    /// Cancels what is open of `order_id`.
    pub fn cancel(&mut self, ts_ns: i64, order_id: u64) {
        let o = *self.book.open(order_id).expect("cancel of an open order");
        let e = Event {
            ts_ns,
            kind: Kind::Cancel,
            order_id,
            account: o.account,
            group: o.group,
            side: o.side,
            price: o.price,
            qty: o.open_qty,
            ..Event::default()
        };
        self.push(e);
    }

    /// A trade of `qty` between two open orders at the passive one's price.
    pub fn trade(&mut self, ts_ns: i64, buy_id: u64, sell_id: u64, aggressor: Side, qty: u64) {
        let b = *self.book.open(buy_id).expect("open buy");
        let s = *self.book.open(sell_id).expect("open sell");
        let price = if aggressor == Side::Buy { s.price } else { b.price };
        let e = Event {
            ts_ns,
            kind: Kind::Trade,
            order_id: buy_id,
            account: b.account,
            group: b.group,
            contra_order_id: sell_id,
            contra_account: s.account,
            contra_group: s.group,
            side: aggressor,
            price,
            qty,
            ..Event::default()
        };
        self.push(e);
    }

    /// An aggressive order that takes the best opposite orders until `qty`
    /// is done or its limit is reached; the rest is cancelled (IOC).
    pub fn sweep(&mut self, ts_ns: i64, order_id: u64, account: u32, side: Side, limit: Px, qty: u64) {
        self.new_order(ts_ns, order_id, account, side, limit, qty);
        let mut left = qty;
        while left > 0 {
            let other = super::opposite(side);
            let Some(best) = self.book.best(other) else { break };
            let crosses = match side {
                Side::Buy => best <= limit,
                Side::Sell => best >= limit,
            };
            if !crosses {
                break;
            }
            let passive = self
                .book
                .open_orders()
                .into_iter()
                .filter(|o| o.side == other && o.price == best && o.order_id != order_id)
                .min_by_key(|o| (o.entry_ts_ns, o.order_id))
                .expect("an order at the best level");
            let q = left.min(passive.open_qty);
            let (b, s) = if side == Side::Buy { (order_id, passive.order_id) } else { (passive.order_id, order_id) };
            self.trade(ts_ns, b, s, side, q);
            left -= q;
        }
        if left > 0 {
            self.cancel(ts_ns, order_id);
        }
    }
}

/// One step of a random stream, read against the book as it stands.
pub type Step = (u8, u8, u8, u16, u8);

/// A book-consistent random stream: new orders of six accounts in two
/// groups and two of their own, priced within a few ticks of 10.00 in
/// sizes from 100 to 5,000; cancels of open orders (whatever is open);
/// trades between open orders (whole or part, either side aggressing);
/// time steps from 0 to 3 s; and planted ladders (see below).
pub fn random_tape(steps: &[Step]) -> Tape {
    let mut tape = Tape::new();
    for account in 0..4 {
        tape.relate(account, account / 2 + 1);
    }
    let mut ts = 1_000 * SEC;
    let mut next_id = 1;
    for &(action, a, b, c, dt) in steps {
        ts += [0, 1, 100 * MS, 100 * MS, 500 * MS, SEC, 3 * SEC][dt as usize % 7];
        let open = tape.book.open_orders();
        match action % 10 {
            7..=9 => {
                // A planted ladder: a small order on one side, then three
                // large ones on the other, one to three ticks apart, that
                // later steps may trade or cancel.
                let account = a as u32 % 6;
                let side = if b & 1 == 0 { Side::Buy } else { Side::Sell };
                let step = 1 + (c as i64 >> 4) % 2;
                let (small, first, dir) = if side == Side::Buy { (1, 0, -1) } else { (0, 1, 1) };
                tape.new_order(ts, next_id, account, super::opposite(side), 100_000 + small * TICK, 100);
                next_id += 1;
                for i in 0..3i64 {
                    let price = 100_000 + (first + dir * i * step) * TICK;
                    tape.new_order(ts, next_id, account, side, price, 2_000);
                    next_id += 1;
                }
            }
            0..=2 => {
                let side = if b & 1 == 0 { Side::Buy } else { Side::Sell };
                // Mostly on the own side of 10.00/10.01, sometimes across.
                let ticks = c as i64 % 6 - 1;
                let price = 100_000 + if side == Side::Buy { 1 - ticks } else { ticks } * TICK;
                let qty = [100, 500, 2_000, 5_000][(c as usize >> 4) % 4];
                tape.new_order(ts, next_id, a as u32 % 6, side, price, qty);
                next_id += 1;
            }
            // Cancels and trades mostly take recent orders (ids ascend), so
            // planted ladders are often cancelled or traded while fresh.
            // A burst: an account cancels its three newest open orders.
            4 => {
                let account = a as u32 % 6;
                let mine: Vec<u64> = open.iter().filter(|o| o.account == account).map(|o| o.order_id).collect();
                for &id in mine.iter().rev().take(3) {
                    tape.cancel(ts, id);
                }
            }
            3 if !open.is_empty() => {
                let recent = &open[open.len().saturating_sub(8)..];
                tape.cancel(ts, recent[a as usize % recent.len()].order_id)
            }
            5 | 6 => {
                let buys: Vec<_> = open.iter().filter(|o| o.side == Side::Buy).collect();
                let sells: Vec<_> = open.iter().filter(|o| o.side == Side::Sell).collect();
                if buys.is_empty() || sells.is_empty() {
                    continue;
                }
                let (buy, sell) = (
                    buys[buys.len() - 1 - a as usize % buys.len().min(3)],
                    sells[sells.len() - 1 - b as usize % sells.len().min(3)],
                );
                let most = buy.open_qty.min(sell.open_qty);
                let qty = if c & 1 == 0 { most } else { (most / 2).max(1) };
                let aggressor = if c & 2 == 0 { Side::Buy } else { Side::Sell };
                tape.trade(ts, buy.order_id, sell.order_id, aggressor, qty);
            }
            _ => {}
        }
    }
    tape
}
