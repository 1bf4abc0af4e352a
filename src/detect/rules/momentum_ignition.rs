//! momentum-ignition (`[momentum_ignition]`, 拉抬打压后反向交易): per
//! (group, instrument), the group's aggressive orders move the price by at
//! least `min_move_ticks` within a short window, and within a following
//! window the group trades the other side at or near the moved price.
//!
//! Definitions (per key (group G, instrument I); `dir` is +1 for buys, -1
//! for sells; prices compare in ticks: the instrument's from `BookView`, at
//! least `min_tick`):
//!
//! - A *run* on side S at a trade record at time `t`: the trades of I in
//!   `(t - window, t]` whose aggressor (the record's `side`) is S and whose
//!   S-side order is G's, after the key's last alert (`(ts_ns, seq)`
//!   greater than the alerting record's).
//! - Its *start price* is I's last trade price just before the run's first
//!   trade (that trade's own price when I had none); its *moved price* is the
//!   price of the trade at `t`. The run *ignites* at `t` when it holds at
//!   least `min_trades` trades, its first trade is earlier than `t` (the
//!   fills of one sweep share one instant: one order across a thin book is
//!   no run), and `dir * (moved - start)` is at least `min_move_ticks` ticks. Each igniting trade re-arms the side with its
//!   own time and moved price.
//! - The ignition *completes* at a later trade of I at time `t2` with
//!   `t2 - t <= follow` in which one of G's orders on the other side of S
//!   takes part (as buyer or seller, passive or aggressive) at a price `p2`
//!   with `dir * (p2 - moved) >= -near_ticks * tick`. That trade alerts,
//!   and spends the key: its runs and ignitions start again after it.
//!
//! At a trade, completion is checked first (for each of the two parties),
//! then the aggressor's run is extended (unless its key just alerted).
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `window_ms` | 2000 | the run's window |
//! | `min_move_ticks` | 5 | the move the run must make, in ticks |
//! | `follow_ms` | 30000 | how long after igniting the other side may trade |
//! | `near_ticks` | 1 | how far back towards the start price that trade may be (the spread) |
//! | `min_trades` | 2 | aggressive trades in the run, at least (one trade across a wide spread is no run) |
//! | `min_tick` | 100 | the smallest tick, in 1/10,000 (0.01, the A-share tick): the book's tick from instruments.csv when larger; without instruments.csv the book's tick is 0.0001, and five of those are noise |
//! | `max_keys` | 262144 | keys with state (limit: new keys refused, counted) |
//! | `max_entries` | 2097152 | run entries and pending ignitions (limit: the oldest go early, counted) |
//! | `max_instruments` | 1048576 | instruments whose last trade is remembered (limit: new ones refused, counted) |

use super::params::MS;
use super::window::{NONE, Window};
use super::{BookRule, Evidence, Finding, IgnitionEvidence, OrderIds, RuleStats, key_of, opposite, side_index};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::detect::views::{BookView, Change};
use crate::event::{Event, InstrumentId, Px, Side};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use std::collections::VecDeque;
use toml::Spanned;

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    pub enabled: Option<bool>,
    pub window_ms: Option<Spanned<i64>>,
    pub min_move_ticks: Option<Spanned<i64>>,
    pub follow_ms: Option<Spanned<i64>>,
    pub near_ticks: Option<Spanned<i64>>,
    pub min_tick: Option<Spanned<i64>>,
    pub min_trades: Option<Spanned<i64>>,
    pub max_keys: Option<Spanned<i64>>,
    pub max_entries: Option<Spanned<i64>>,
    pub max_instruments: Option<Spanned<i64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub window_ns: i64,
    pub min_move_ticks: i64,
    pub follow_ns: i64,
    pub near_ticks: i64,
    /// The smallest tick prices are measured in, in 1/10,000 (the book's
    /// tick when instruments.csv gives a larger one).
    pub min_tick: Px,
    /// Aggressive trades in the run, at least.
    pub min_trades: u32,
    pub max_keys: usize,
    pub max_entries: usize,
    pub max_instruments: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            window_ns: 2_000 * MS,
            min_move_ticks: 5,
            follow_ns: 30_000 * MS,
            near_ticks: 1,
            min_tick: 100,
            min_trades: 2,
            max_keys: 1 << 18,
            max_entries: 1 << 21,
            max_instruments: 1 << 20,
        }
    }
}

impl Params {
    /// The canonical bytes (part of the checkpoint identity).
    pub fn encode(&self, w: &mut Writer<'_>) {
        for v in [self.window_ns, self.min_move_ticks, self.follow_ns, self.near_ticks, self.min_tick] {
            w.i64(v);
        }
        for v in [self.min_trades as usize, self.max_keys, self.max_entries, self.max_instruments] {
            w.u64(v as u64);
        }
    }

    /// The validated parameters (`None` when `enabled = false`); every
    /// problem goes to `f`, with its line.
    pub fn validate(raw: RawParams, f: &mut Problems<'_>) -> Option<Params> {
        if !raw.enabled.unwrap_or(crate::detect::views::BOOK_RULES_ON_BY_DEFAULT) {
            return None;
        }
        let d = Params::default();
        Some(Params {
            window_ns: f.int(raw.window_ms, "window_ms", 1..=3_600_000, d.window_ns / MS) * MS,
            min_move_ticks: f.int(raw.min_move_ticks, "min_move_ticks", 1..=1_000_000, d.min_move_ticks),
            follow_ns: f.int(raw.follow_ms, "follow_ms", 1..=3_600_000, d.follow_ns / MS) * MS,
            near_ticks: f.int(raw.near_ticks, "near_ticks", 0..=1_000_000, d.near_ticks),
            min_tick: f.int(raw.min_tick, "min_tick", 1..=10_000_000, d.min_tick),
            min_trades: f.int(raw.min_trades, "min_trades", 1..=1_000_000, d.min_trades as i64) as u32,
            max_keys: f.int(raw.max_keys, "max_keys", 1..=1 << 24, d.max_keys as i64) as usize,
            max_entries: f.int(raw.max_entries, "max_entries", 1 << 10..=1 << 26, d.max_entries as i64) as usize,
            max_instruments: f.int(raw.max_instruments, "max_instruments", 1..=1 << 24, d.max_instruments as i64)
                as usize,
        })
    }
}

/// One aggressive trade of a run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    order_id: u64,
    /// The instrument's last trade price just before it.
    start_px: Px,
    qty: u64,
    side: Side,
}

/// A side that ignited and waits for the other side's trade.
#[derive(Clone, Copy, Debug, Default)]
struct Arm {
    active: bool,
    ts_ns: i64,
    start_px: Px,
    moved_px: Px,
    tick: Px,
    run_start_ns: i64,
    trades: u32,
    qty: u64,
    ids: OrderIds,
}

/// A key's state. Small on purpose: the window writes a default one for
/// each new key and most keys live for one trade; a side's pending
/// ignition (an `Arm`, 128 bytes, rare) lives apart in `MomentumIgnition::arms`.
#[derive(Clone, Copy, Debug)]
struct KeyState {
    since: (i64, u64),
    /// Per side: the counted run entries, and the oldest one's index.
    trades: [u32; 2],
    first: [u64; 2],
    /// Per side: its pending ignition's index in the arm pool, `NO_ARM` for none.
    arms: [u32; 2],
}

/// No pending ignition on a side.
const NO_ARM: u32 = u32::MAX;

impl Default for KeyState {
    fn default() -> KeyState {
        KeyState { since: (i64::MIN, 0), trades: [0; 2], first: [NONE; 2], arms: [NO_ARM; 2] }
    }
}

impl KeyState {
    #[inline]
    fn counts(&self, ts_ns: i64, seq: u64) -> bool {
        (ts_ns, seq) > self.since
    }

    fn idle(&self) -> bool {
        self.arms == [NO_ARM; 2]
    }
}

#[inline]
fn dir(side: Side) -> i64 {
    match side {
        Side::Buy => 1,
        Side::Sell => -1,
    }
}

pub struct MomentumIgnition {
    params: Params,
    window: Window<Run, KeyState>,
    /// When each ignition lapses, in time order: (deadline, key, side).
    deadlines: VecDeque<(i64, u64, Side)>,
    /// The last trade price by instrument id (dense: ids are interned from
    /// 0), `NO_PX` for none; `priced` of them are set.
    last_px: Vec<Px>,
    priced: usize,
    instruments_refused: u64,
    grew: u64,
    /// The snapshot cut at a barrier, until the registry takes it.
    pub(super) snapshot: Option<Vec<u8>>,
    /// The pending ignitions (always `active`), by the index a key's side
    /// holds; `free_arms` lists the unused ones.
    arms: Vec<Arm>,
    free_arms: Vec<u32>,
    /// Pending ignitions by instrument id: a trade of an instrument with
    /// none cannot complete one, so it looks no key up for that.
    armed: Vec<u32>,
    /// Restored keys (`since` and the arms per side) and entries waiting for `restored`.
    pending_keys: FxHashMap<u64, ((i64, u64), [Arm; 2])>,
    pending_entries: Vec<(i64, u64, u64, Run)>,
}

/// The fewest bytes of a key (arms without ids) and of an entry in a snapshot.
const MIN_KEY_BYTES: usize = 8 * 3 + 2 * (1 + 8 * 7 + 4 + 1);
const ENTRY_BYTES: usize = 8 * 6 + 1;

/// Pending ignitions the arm pool has room for at start-up (it grows past
/// that, counted; at most two per key).
const ARMS_RESERVED: usize = 256;

/// No last price yet (a price is positive).
const NO_PX: Px = Px::MIN;

/// Instrument ids are below the validator's instrument limit; a larger one
/// in a snapshot is damage, not a reason to allocate.
const MAX_INSTRUMENT_ID: InstrumentId = 1 << 24;

fn side_byte(side: Side) -> u8 {
    side as u8
}

fn read_side(r: &mut Reader<'_>) -> Result<Side, DecodeError> {
    match r.u8()? {
        b'B' => Ok(Side::Buy),
        b'S' => Ok(Side::Sell),
        other => Err(DecodeError(format!("momentum-ignition: bad side {other}"))),
    }
}

impl MomentumIgnition {
    pub fn new(params: Params) -> MomentumIgnition {
        let last_px = Vec::with_capacity(1024.min(params.max_instruments));
        MomentumIgnition {
            params,
            window: Window::new(params.max_keys, params.max_entries),
            deadlines: VecDeque::with_capacity(1024.min(params.max_entries)),
            last_px,
            priced: 0,
            instruments_refused: 0,
            grew: 0,
            snapshot: None,
            arms: Vec::with_capacity(ARMS_RESERVED),
            free_arms: Vec::with_capacity(ARMS_RESERVED),
            armed: Vec::new(),
            pending_keys: FxHashMap::default(),
            pending_entries: Vec::new(),
        }
    }

    /// The whole state, for a checkpoint. Layout: the instruments' last
    /// trade prices `(instrument, px)`; the keys `(key, since ts, since seq,
    /// arm per side)`, an arm being `(active, ts, start, moved, tick, run
    /// start, qty, trades, ids)`; then the run entries oldest first `(ts,
    /// seq, key, order_id, start_px, qty, side)`. Pending ignitions' lapse
    /// times follow from the arms.
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u64(self.priced as u64);
        for (instrument, px) in self.last_prices() {
            w.u64(instrument as u64);
            w.i64(px);
        }
        w.u64(self.window.key_count() as u64);
        for (_, key) in self.window.keys() {
            w.u64(key.key);
            w.i64(key.state.since.0);
            w.u64(key.state.since.1);
            for &index in &key.state.arms {
                let arm = self.arm(index);
                w.u8(arm.active as u8);
                for v in [arm.ts_ns, arm.start_px, arm.moved_px, arm.tick, arm.run_start_ns] {
                    w.i64(v);
                }
                w.u64(arm.qty);
                w.u64(arm.ids.total as u64);
                w.u32(arm.trades);
                w.u8(arm.ids.len);
                for &id in arm.ids.as_slice() {
                    w.u64(id);
                }
            }
        }
        w.u64(self.window.len() as u64);
        for slot in self.window.entries() {
            w.i64(slot.ts_ns);
            w.u64(slot.seq);
            w.u64(self.window.key(slot.key).key);
            w.u64(slot.data.order_id);
            w.i64(slot.data.start_px);
            w.u64(slot.data.qty);
            w.u8(side_byte(slot.data.side));
        }
    }

    /// Reads one old shard's snapshot, keeping the keys (and instruments,
    /// as the key `instrument`) that `keep` accepts; `restored` builds the
    /// state once every snapshot was read.
    pub fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        for _ in 0..r.count(16)? {
            let (instrument, px) = (r.u64()?, r.i64()?);
            let id = InstrumentId::try_from(instrument)
                .map_err(|_| DecodeError(format!("momentum-ignition: instrument {instrument} out of range")))?;
            if px == NO_PX || id >= MAX_INSTRUMENT_ID {
                return Err(DecodeError(format!("momentum-ignition: bad last price of instrument {instrument}")));
            }
            if keep(instrument) && self.set_last_px(id, px) != NO_PX {
                return Err(DecodeError(format!("momentum-ignition: instrument {instrument} in two snapshots")));
            }
        }
        for _ in 0..r.count(MIN_KEY_BYTES)? {
            let key = r.u64()?;
            let since = (r.i64()?, r.u64()?);
            let mut arms = [Arm::default(); 2];
            for arm in &mut arms {
                arm.active = match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(DecodeError(format!("momentum-ignition: bad arm flag {other}"))),
                };
                [arm.ts_ns, arm.start_px, arm.moved_px, arm.tick, arm.run_start_ns] =
                    [r.i64()?, r.i64()?, r.i64()?, r.i64()?, r.i64()?];
                arm.qty = r.u64()?;
                let total = r.u64()?;
                arm.trades = r.u32()?;
                let len = r.u8()? as usize;
                if len > OrderIds::CAP || (len as u64) > total || total > u32::MAX as u64 || arm.tick <= 0 && arm.active
                {
                    return Err(DecodeError(format!("momentum-ignition: bad arm of key {key:#x}")));
                }
                for _ in 0..len {
                    arm.ids.add(r.u64()?, true);
                }
                arm.ids.total = total as u32;
            }
            if keep(key) && self.pending_keys.insert(key, (since, arms)).is_some() {
                return Err(DecodeError(format!("momentum-ignition: key {key:#x} in two snapshots")));
            }
        }
        for _ in 0..r.count(ENTRY_BYTES)? {
            let (ts, seq, key) = (r.i64()?, r.u64()?, r.u64()?);
            let run = Run { order_id: r.u64()?, start_px: r.i64()?, qty: r.u64()?, side: read_side(r)? };
            if keep(key) {
                self.pending_entries.push((ts, seq, key, run));
            }
        }
        Ok(())
    }

    /// Builds the state from the snapshots read: keys with their arms (and
    /// their lapse times, in time order), then the run entries in time
    /// order, the per-side counts recomputed from the counted ones.
    pub fn restored(&mut self) {
        let mut keys = std::mem::take(&mut self.pending_keys);
        for (&key, &(since, arms)) in &keys {
            let Some(slot) = self.window.find_or_insert(key) else { continue };
            self.window.key_mut(slot).state = KeyState { since, ..KeyState::default() };
            for (side, arm) in [Side::Buy, Side::Sell].into_iter().zip(arms) {
                if arm.active {
                    self.set_arm(slot, side_index(side), arm);
                    self.deadlines.push_back((arm.ts_ns.saturating_add(self.params.follow_ns), key, side));
                }
            }
        }
        self.deadlines.make_contiguous().sort_by_key(|d| d.0);
        keys.clear();
        self.pending_keys = keys;
        let mut entries = std::mem::take(&mut self.pending_entries);
        entries.sort_by_key(|e| (e.0, e.1));
        for (ts, seq, key, run) in entries.drain(..) {
            let Some(slot) = self.window.find_or_insert(key) else { continue };
            if self.window.must_evict() {
                self.window.entries_evicted += 1;
                self.pop_oldest();
            }
            let abs = self.window.push(slot, ts, seq, run);
            let state = &mut self.window.key_mut(slot).state;
            if state.counts(ts, seq) {
                let s = side_index(run.side);
                state.trades[s] += 1;
                if state.first[s] == NONE {
                    state.first[s] = abs;
                }
            }
        }
        self.pending_entries = entries;
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn stats(&self) -> RuleStats {
        RuleStats {
            keys: self.window.key_count(),
            entries: self.window.len() + self.deadlines.len(),
            keys_refused: self.window.keys_refused + self.instruments_refused,
            entries_evicted: self.window.entries_evicted,
            grew: self.window.grew + self.grew,
        }
    }

    fn expire(&mut self, now_ns: i64) {
        let cutoff = now_ns.saturating_sub(self.params.window_ns);
        while let Some(front) = self.window.front() {
            if front.ts_ns > cutoff {
                break;
            }
            self.pop_oldest();
        }
        while let Some(&(deadline, _, _)) = self.deadlines.front() {
            if deadline >= now_ns {
                break;
            }
            self.pop_deadline();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((abs, slot)) = self.window.pop_front() else { return };
        let s = side_index(slot.data.side);
        let key = self.window.key(slot.key);
        let (state, entries) = (&key.state, key.entries);
        if state.counts(slot.ts_ns, slot.seq) {
            let (trades, first) = (state.trades[s] - 1, state.first[s]);
            let mut next_first = first;
            if first == abs {
                // The next counted entry of the same side, if any.
                next_first = NONE;
                if trades > 0 {
                    let side = slot.data.side;
                    let mut at = slot.next;
                    while at != NONE {
                        let next = self.window.entry(at);
                        if next.data.side == side {
                            next_first = at;
                            break;
                        }
                        at = next.next;
                    }
                }
            }
            let state = &mut self.window.key_mut(slot.key).state;
            state.trades[s] = trades;
            state.first[s] = next_first;
        }
        if entries == 0 && self.window.key(slot.key).state.idle() {
            self.window.release(slot.key);
        }
    }

    /// Sets an instrument's last price; returns the one it replaced
    /// (`NO_PX` for none). A new id past the vector grows it (counted).
    fn set_last_px(&mut self, instrument: InstrumentId, px: Px) -> Px {
        let index = instrument as usize;
        if index >= self.last_px.len() {
            if index >= self.last_px.capacity() {
                self.grew += 1;
            }
            self.last_px.resize(index + 1, NO_PX);
        }
        let old = std::mem::replace(&mut self.last_px[index], px);
        self.priced += (old == NO_PX) as usize;
        old
    }

    /// The instruments with a last price, in id order.
    fn last_prices(&self) -> impl Iterator<Item = (InstrumentId, Px)> + '_ {
        self.last_px.iter().enumerate().filter(|(_, px)| **px != NO_PX).map(|(i, px)| (i as InstrumentId, *px))
    }

    fn pop_deadline(&mut self) {
        let Some((deadline, key, side)) = self.deadlines.pop_front() else { return };
        let Some(slot) = self.window.find(key) else { return };
        let s = side_index(side);
        let index = self.window.key(slot).state.arms[s];
        if index != NO_ARM && self.arms[index as usize].ts_ns.saturating_add(self.params.follow_ns) == deadline {
            self.clear_arm(slot, s);
            let entry = self.window.key(slot);
            if entry.entries == 0 && entry.state.idle() {
                self.window.release(slot);
            }
        }
    }

    /// A side's pending ignition (`Arm::default()`, not active, for none).
    fn arm(&self, index: u32) -> Arm {
        if index == NO_ARM { Arm::default() } else { self.arms[index as usize] }
    }

    /// Arms side `s` of the key in `slot` (re-arms it when it is armed).
    #[cold]
    fn set_arm(&mut self, slot: u32, s: usize, arm: Arm) {
        let entry = self.window.key(slot);
        let (index, instrument) = (entry.state.arms[s], entry.key as u32 as usize);
        if index != NO_ARM {
            self.arms[index as usize] = arm;
            return;
        }
        let index = match self.free_arms.pop() {
            Some(index) => {
                self.arms[index as usize] = arm;
                index
            }
            None => {
                if self.arms.len() == self.arms.capacity() {
                    self.grew += 1;
                }
                self.arms.push(arm);
                (self.arms.len() - 1) as u32
            }
        };
        self.window.key_mut(slot).state.arms[s] = index;
        if instrument >= self.armed.len() {
            if instrument >= self.armed.capacity() {
                self.grew += 1;
            }
            self.armed.resize(instrument + 1, 0);
        }
        self.armed[instrument] += 1;
    }

    /// Ends side `s`'s pending ignition of the key in `slot`, if any.
    fn clear_arm(&mut self, slot: u32, s: usize) {
        let entry = self.window.key(slot);
        let (index, instrument) = (entry.state.arms[s], entry.key as u32 as usize);
        if index == NO_ARM {
            return;
        }
        if self.free_arms.len() == self.free_arms.capacity() {
            self.grew += 1;
        }
        self.free_arms.push(index);
        self.window.key_mut(slot).state.arms[s] = NO_ARM;
        self.armed[instrument] -= 1;
    }

    #[inline]
    pub fn on_record(&mut self, e: &Event, change: &Change, book: &impl BookView, emit: &mut impl FnMut(Finding)) {
        self.expire(e.ts_ns);
        let &Change::Traded { ref buy, ref sell, aggressor, price, qty } = change else { return };
        let tick = book.tick().max(self.params.min_tick);
        let start_px = match self.last_px.get_mut(e.instrument as usize) {
            Some(last) if *last != NO_PX => std::mem::replace(last, price),
            _ => {
                if self.priced < self.params.max_instruments {
                    self.set_last_px(e.instrument, price);
                } else {
                    self.instruments_refused += 1;
                }
                price
            }
        };
        let mut spent = [false; 2];
        // Only an instrument with a pending ignition has keys to look up.
        let armed = self.armed.get(e.instrument as usize).is_some_and(|&n| n > 0);
        for (i, (order, side)) in [(buy, Side::Buy), (sell, Side::Sell)].into_iter().enumerate() {
            if !armed {
                break;
            }
            let key = key_of(order.group, e.instrument);
            let Some(slot) = self.window.find(key) else { continue };
            let ignited = opposite(side);
            let index = self.window.key(slot).state.arms[side_index(ignited)];
            if index == NO_ARM {
                continue;
            }
            let arm = &self.arms[index as usize];
            if dir(ignited) * (price - arm.moved_px) < -self.params.near_ticks * arm.tick {
                continue;
            }
            let mut ids = arm.ids;
            // On the other side from the run's orders, so a new one.
            ids.add(order.order_id, true);
            emit(Finding {
                rule: BookRule::MomentumIgnition,
                seq: e.seq,
                ts_ns: e.ts_ns,
                group: order.group,
                account: order.account,
                instrument: e.instrument,
                evidence: Evidence::Ignition(IgnitionEvidence {
                    side: ignited,
                    start_px: arm.start_px,
                    moved_px: arm.moved_px,
                    move_ticks: dir(ignited) * (arm.moved_px - arm.start_px) / arm.tick,
                    min_move_ticks: self.params.min_move_ticks,
                    run_start_ns: arm.run_start_ns,
                    run_end_ns: arm.ts_ns,
                    aggressive_trades: arm.trades,
                    aggressive_qty: arm.qty,
                    window_ns: self.params.window_ns,
                    exit_px: price,
                    exit_qty: qty,
                    exit_vs_moved_ticks: dir(ignited) * (price - arm.moved_px) / arm.tick,
                    near_ticks: self.params.near_ticks,
                    exit_after_ns: e.ts_ns - arm.ts_ns,
                    follow_ns: self.params.follow_ns,
                }),
                order_ids: ids,
            });
            self.clear_arm(slot, 0);
            self.clear_arm(slot, 1);
            let entry = self.window.key_mut(slot);
            entry.state = KeyState { since: (e.ts_ns, e.seq), ..KeyState::default() };
            if entry.entries == 0 {
                self.window.release(slot);
            }
            spent[i] = true;
            if buy.group == sell.group {
                spent = [true; 2];
            }
        }
        let (order, a) = match aggressor {
            Side::Buy => (buy, 0),
            Side::Sell => (sell, 1),
        };
        if spent[a] {
            return;
        }
        if self.window.must_evict() {
            self.window.entries_evicted += 1;
            self.pop_oldest();
        }
        let Some(slot) = self.window.find_or_insert(key_of(order.group, e.instrument)) else { return };
        let run = Run { order_id: order.order_id, start_px, qty, side: aggressor };
        let abs = self.window.push(slot, e.ts_ns, e.seq, run);
        let state = &mut self.window.key_mut(slot).state;
        state.trades[a] += 1;
        if state.first[a] == NONE {
            state.first[a] = abs;
        }
        let first_abs = state.first[a];
        let first = *self.window.entry(first_abs);
        // A run spans time: the fills of one sweep, stamped at one instant,
        // are one order across a thin book, not a series of aggressive orders.
        if dir(aggressor) * (price - first.data.start_px) < self.params.min_move_ticks * tick
            || self.window.key(slot).state.trades[a] < self.params.min_trades
            || first.ts_ns == e.ts_ns
        {
            return;
        }
        let mut arm = Arm {
            active: true,
            ts_ns: e.ts_ns,
            start_px: first.data.start_px,
            moved_px: price,
            tick,
            run_start_ns: first.ts_ns,
            ..Arm::default()
        };
        let mut at = first_abs;
        while at != NONE {
            let entry = self.window.entry(at);
            if entry.data.side == aggressor {
                arm.trades += 1;
                arm.qty += entry.data.qty;
                // Fills of one order: count the order once (ignitions are
                // rare, so the quadratic check costs little overall).
                let mut seen = false;
                let mut earlier = first_abs;
                while earlier != at {
                    let prev = self.window.entry(earlier);
                    seen |= prev.data.side == aggressor && prev.data.order_id == entry.data.order_id;
                    earlier = prev.next;
                }
                arm.ids.add(entry.data.order_id, !seen);
            }
            at = entry.next;
        }
        self.set_arm(slot, a, arm);
        if self.deadlines.len() >= self.params.max_entries {
            self.window.entries_evicted += 1;
            self.pop_deadline();
        }
        if self.deadlines.len() == self.deadlines.capacity() {
            self.grew += 1;
        }
        self.deadlines.push_back((
            e.ts_ns.saturating_add(self.params.follow_ns),
            key_of(order.group, e.instrument),
            aggressor,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::{Reader, Writer};
    use crate::detect::rules::test_book::{Applied, MS, NaiveBook, SEC, Step, TICK, random_tape};
    use crate::detect::views::OrderRef;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use std::collections::HashMap;

    fn engine(recs: &[Applied], params: Params) -> Vec<Finding> {
        let mut rule = MomentumIgnition::new(params);
        let mut book = NaiveBook::new(TICK);
        let mut out = Vec::new();
        for r in recs {
            let change = book.apply(&r.e);
            rule.on_record(&r.e, &change, &book, &mut |f| out.push(f));
        }
        out
    }

    /// The definition in the module doc, recomputed from every applied
    /// record at each trade.
    fn reference(recs: &[Applied], p: Params) -> Vec<Finding> {
        let mut since: HashMap<u64, (i64, u64)> = HashMap::new();
        let mut out = Vec::new();
        let trade = |j: usize| match recs[j].change {
            Change::Traded { buy, sell, aggressor, price, qty } => Some((buy, sell, aggressor, price, qty)),
            _ => None,
        };
        let key = |o: &OrderRef, j: usize| key_of(o.group, recs[j].e.instrument);
        let aggressive = |j: usize| {
            trade(j).map(|(buy, sell, aggressor, ..)| (if aggressor == Side::Buy { buy } else { sell }, aggressor))
        };
        // The run at trade j of key k on side s, if j is one of its trades.
        let run = |j: usize, k: u64, s: Side, since: (i64, u64)| -> Vec<usize> {
            let t = recs[j].e.ts_ns;
            (0..=j)
                .filter(|&m| {
                    recs[m].e.ts_ns > t - p.window_ns
                        && (recs[m].e.ts_ns, recs[m].e.seq) > since
                        && aggressive(m).is_some_and(|(o, side)| side == s && key(&o, m) == k)
                })
                .collect()
        };
        let ignites = |j: usize, k: u64, s: Side, since: (i64, u64)| -> Option<Arm> {
            let trades = run(j, k, s, since);
            if trades.last() != Some(&j) {
                return None;
            }
            let first = trades[0];
            let price = trade(j)?.3;
            let start_px = (0..first).rev().find_map(|m| trade(m).map(|x| x.3)).unwrap_or(trade(first)?.3);
            if dir(s) * (price - start_px) < p.min_move_ticks * TICK
                || (trades.len() as u32) < p.min_trades
                || recs[first].e.ts_ns == recs[j].e.ts_ns
            {
                return None;
            }
            let mut arm = Arm {
                active: true,
                ts_ns: recs[j].e.ts_ns,
                start_px,
                moved_px: price,
                tick: TICK,
                run_start_ns: recs[first].e.ts_ns,
                ..Arm::default()
            };
            let mut seen = Vec::new();
            for &m in &trades {
                let (o, _) = aggressive(m)?;
                arm.trades += 1;
                arm.qty += trade(m)?.4;
                arm.ids.add(o.order_id, !seen.contains(&o.order_id));
                seen.push(o.order_id);
            }
            Some(arm)
        };
        for (i, r) in recs.iter().enumerate() {
            let Some((buy, sell, _, price, qty)) = trade(i) else { continue };
            let t = r.e.ts_ns;
            for (order, x) in [(buy, Side::Buy), (sell, Side::Sell)] {
                let k = key(&order, i);
                let s = opposite(x);
                let since_k = since.get(&k).copied().unwrap_or((i64::MIN, 0));
                let Some(arm) = (0..i).rev().find_map(|j| ignites(j, k, s, since_k)) else { continue };
                if t - arm.ts_ns > p.follow_ns || dir(s) * (price - arm.moved_px) < -p.near_ticks * TICK {
                    continue;
                }
                let mut ids = arm.ids;
                ids.add(order.order_id, true);
                out.push(Finding {
                    rule: BookRule::MomentumIgnition,
                    seq: r.e.seq,
                    ts_ns: t,
                    group: order.group,
                    account: order.account,
                    instrument: r.e.instrument,
                    evidence: Evidence::Ignition(IgnitionEvidence {
                        side: s,
                        start_px: arm.start_px,
                        moved_px: arm.moved_px,
                        move_ticks: dir(s) * (arm.moved_px - arm.start_px) / TICK,
                        min_move_ticks: p.min_move_ticks,
                        run_start_ns: arm.run_start_ns,
                        run_end_ns: arm.ts_ns,
                        aggressive_trades: arm.trades,
                        aggressive_qty: arm.qty,
                        window_ns: p.window_ns,
                        exit_px: price,
                        exit_qty: qty,
                        exit_vs_moved_ticks: dir(s) * (price - arm.moved_px) / TICK,
                        near_ticks: p.near_ticks,
                        exit_after_ns: t - arm.ts_ns,
                        follow_ns: p.follow_ns,
                    }),
                    order_ids: ids,
                });
                since.insert(k, (t, r.e.seq));
            }
        }
        out
    }

    fn params() -> impl Strategy<Value = Params> {
        (
            prop::sample::select(vec![500i64, 2_000, 5_000]),
            1i64..5,
            prop::sample::select(vec![1_000i64, 5_000, 30_000]),
            0i64..3,
            1u32..3,
        )
            .prop_map(|(window_ms, min_move_ticks, follow_ms, near_ticks, min_trades)| Params {
                window_ns: window_ms * MS,
                min_move_ticks,
                follow_ns: follow_ms * MS,
                near_ticks,
                min_tick: 1,
                min_trades,
                max_keys: 1 << 10,
                max_entries: 1 << 12,
                max_instruments: 4,
            })
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u8>()), 1..250)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn engine_equals_reference(steps in steps(), params in params()) {
            let tape = random_tape(&steps);
            prop_assert_eq!(engine(&tape.applied, params), reference(&tape.applied, params));
        }
    }

    /// The state as comparable text (see the spoof pattern's).
    fn canonical(rule: &MomentumIgnition) -> String {
        let mut keys: Vec<String> = rule
            .window
            .keys()
            .map(|(_, k)| {
                format!(
                    "{:x} {:?} {:?} {}",
                    k.key,
                    k.state.since,
                    k.state.arms.map(|index| rule.arm(index)),
                    k.state.trades[0] * 1000 + k.state.trades[1]
                )
            })
            .collect();
        keys.sort();
        let mut sorted: Vec<_> = rule.window.entries().collect();
        sorted.sort_by_key(|e| (e.ts_ns, e.seq, rule.window.key(e.key).key));
        let entries: Vec<String> = sorted
            .iter()
            .map(|e| format!("{} {} {:x} {:?}", e.ts_ns, e.seq, rule.window.key(e.key).key, e.data))
            .collect();
        let firsts: Vec<String> = rule
            .window
            .keys()
            .flat_map(|(_, k)| k.state.first.map(|f| (f != NONE).then(|| rule.window.entry(f).seq)))
            .map(|f| format!("{f:?}"))
            .collect();
        let last: Vec<_> = rule.last_prices().collect();
        // The pending ignitions counted by instrument (kept as they come and
        // go; a restore counts them afresh).
        let armed: Vec<_> = rule.armed.iter().enumerate().filter(|(_, n)| **n > 0).collect();
        let mut deadlines: Vec<_> = rule
            .deadlines
            .iter()
            .filter(|(d, key, side)| {
                rule.window.find(*key).is_some_and(|slot| {
                    let arm = rule.arm(rule.window.key(slot).state.arms[side_index(*side)]);
                    arm.active && arm.ts_ns + rule.params.follow_ns == *d
                })
            })
            .collect();
        deadlines.sort_by_key(|(d, key, side)| (*d, *key, *side as u8));
        // A side re-armed at the same time has its lapse queued twice; the
        // restored queue holds it once, which lapses it all the same.
        deadlines.dedup();
        format!("{keys:#?}\n{entries:#?}\n{}\n{last:?}\n{armed:?}\n{deadlines:?}", firsts.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        #[test]
        fn resume_equals_uninterrupted(steps in steps(), params in params(), cut in any::<prop::sample::Index>()) {
            let recs = random_tape(&steps).applied;
            let cut = cut.index(recs.len() + 1);
            let mut before = MomentumIgnition::new(params);
            let mut book = NaiveBook::new(TICK);
            let mut got = Vec::new();
            for r in &recs[..cut] {
                let change = book.apply(&r.e);
                before.on_record(&r.e, &change, &book, &mut |f| got.push(f));
            }
            let mut snapshot = Vec::new();
            before.encode(&mut Writer::new(&mut snapshot));
            let mut after = MomentumIgnition::new(params);
            for parity in [0, 1] {
                let mut r = Reader::new(&snapshot);
                after.restore(&mut r, &|key| key.count_ones() % 2 == parity).unwrap();
                r.finish().unwrap();
            }
            after.restored();
            prop_assert_eq!(canonical(&after), canonical(&before));
            for r in &recs[cut..] {
                let change = book.apply(&r.e);
                after.on_record(&r.e, &change, &book, &mut |f| got.push(f));
            }
            prop_assert_eq!(got, engine(&recs, params));
        }
    }

    #[test]
    fn random_streams_trigger() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fired, mut total) = (0, 0);
        for _ in 0..200 {
            let steps = steps().new_tree(&mut runner).unwrap().current();
            let params = params().new_tree(&mut runner).unwrap().current();
            let n = reference(&random_tape(&steps).applied, params).len();
            fired += (n > 0) as usize;
            total += n;
        }
        assert!(fired >= 15 && total >= 20, "only {fired} streams fired ({total} findings)");
    }

    #[test]
    fn params_defaults_ranges_and_every_problem() {
        #[derive(Deserialize)]
        struct Doc {
            momentum_ignition: Option<RawParams>,
        }
        let parse = |text: &str| {
            let doc: Doc = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
            let mut problems = Vec::new();
            let params = Params::validate(
                doc.momentum_ignition.unwrap_or_default(),
                &mut Problems::new(text, "momentum_ignition", &mut problems),
            );
            if problems.is_empty() { Ok(params) } else { Err(problems) }
        };
        assert_eq!(parse("").unwrap(), None, "off by default (the book's cost)");
        assert_eq!(parse("[momentum_ignition]\nenabled = true\n").unwrap(), Some(Params::default()));
        assert_eq!(parse("[momentum_ignition]\nenabled = false\n").unwrap(), None);
        let p = parse("[momentum_ignition]\nenabled = true\nwindow_ms = 500\nnear_ticks = 0\n").unwrap().unwrap();
        assert_eq!((p.window_ns, p.near_ticks, p.follow_ns), (500 * MS, 0, 30 * SEC));
        let problems = parse("[momentum_ignition]\nenabled = true\nmin_move_ticks = 0\nfollow_ms = -1\n").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("line 3: momentum_ignition.min_move_ticks = 0 is out of range"));
        assert!(problems[1].starts_with("line 4: momentum_ignition.follow_ms = -1"));
        assert!(parse("[momentum_ignition]\nmove = 3\n").is_err());
    }
}
