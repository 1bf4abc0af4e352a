//! The pattern spoofing and layering share, measured per (group,
//! instrument) over a sliding event-time window; the two rules differ in
//! their defaults and in how many price levels the cancelled orders span.
//!
//! Definitions (all per key (group G, instrument I), at a record with event
//! time `t`; the window is `(t - window, t]`):
//!
//! - An entry is *counted* when its record is inside the window and after
//!   the key's last alert (`(ts_ns, seq)` greater than the alerting
//!   record's), so each alert spends what it used.
//! - The *spoof orders* on side S are G's counted `N`s on S that were
//!   non-marketable on entry (a buy priced below the best ask just before it,
//!   or with no ask; a sell likewise), each with its entered quantity, the
//!   resting best-5 depth of S just before it, and whether it stood behind
//!   the touch once placed (its price worse than S's best after it).
//! - `spoof_qty`: their entered quantity. `peak_open_qty`: the most of
//!   them open at once (in record order, entries add their quantity, cancels
//!   and fills take theirs away). `depth5`: the best-5 depth of S just
//!   before the first of them. Large: `peak_open_qty * 100 >= size_pct *
//!   depth5`: pressure is what stands in the book together, so a market
//!   maker replacing one quote many times a second does not add up to a
//!   large order. An empty side (`depth5 = 0`) gives nothing to be large
//!   against, so it never makes a spoof.
//! - `cancelled_qty`: what `C` records have cancelled of them so far (a
//!   partial fill leaves the rest to be cancelled). Mostly cancelled:
//!   `cancelled_qty * 100 >= cancel_pct * spoof_qty`. Cancelled within the
//!   window of placement follows, as the orders are inside it.
//! - One-sided: `spoof_qty >= one_sided_k * opposite_new_qty`, where
//!   `opposite_new_qty` is all of G's counted `N` quantity on the other
//!   side (marketable or not).
//! - Executes on the other side: `opposite_exec_qty`, the quantity of
//!   counted trades in which one of G's orders on the other side took part
//!   (as buyer or seller, passive or aggressive), is at least
//!   `min_opposite_exec_qty`.
//! - Several orders: at least `min_orders` spoof orders were (partly)
//!   cancelled (a single large order cancelled while a small one on the
//!   other side fills is ordinary trading far more often than it is
//!   spoofing; the published cases placed three and more).
//! - Levels: the distinct prices of the spoof orders that were (partly)
//!   cancelled and stood behind the touch when placed. Spoofing wants at most
//!   `max_levels_behind` of them, layering at least `min_levels_behind`, so
//!   with the defaults a ladder is layering's and a pile at the touch is
//!   spoofing's, never both.
//!
//! The pattern is checked at the records that can complete it: a `C` of a
//! counted spoof order on S (checked for S), and a trade with one of G's
//! orders on side X (checked for S = the other side of X; a trade adds both
//! parties' entries before either is checked). The first record at which
//! every condition holds alerts.
//!
//! Only *hot* keys keep sums and a list of entries (`spoof_pattern/stream.rs`).
//! A check needs a counted cancel of a spoof order on S (`cancelled_qty >
//! 0`, as `cancel_pct >= 1`) and a counted execution on the other side
//! (`min_opposite_exec_qty >= 1`), so a key can complete the pattern only
//! while it has both entries in the window. A key turns hot at the record
//! that gives it this *hot pair*: a counted cancel on S while it has an
//! execution on the other side, or an execution on side X while it has a
//! cancel on the other side (each found on the key's hash chain); it stays
//! hot until its last entry expires. The rest are cold: their entries
//! (cancels included, with each `NEW`'s cancelled quantity kept in its
//! entry) are found on the chain when the key turns hot, and summed then;
//! a check on a cold key would fail, so there is none. (On the Shenzhen
//! peak day most keys place and cancel without trading: hot at the first
//! cancel, they paid for sums, lists and checks they could not use.) An
//! alert's `since` needs no cold keeping: the alerting record has an entry
//! of the key, so the key stays hot until every entry up to `since` has
//! expired.
//!
//! One `Pattern` serves spoofing and layering together (the shard keeps it
//! as the spoof-stream view, `detect::views::spoof`): the entries do not
//! depend on either rule's parameters, so they are pushed once and kept for
//! the longer window; each rule has its own window, sums and `since` per
//! key, and alerts exactly as it would on a stream of its own (the
//! property tests below check both against the definition). The stream's
//! expiry (the longer window) takes an entry out of that rule's sums; the
//! shorter window is expired lazily, per key: a key's entries leave the
//! shorter rule's sums when the key is next touched (a cancel of one of
//! its orders, a check, or its entry's expiry from the stream), which is
//! when the sums are read or an entry's numbers change, so no walk of the
//! ring follows the shorter window at every record.

mod stream;

use super::{BookRule, Evidence, Finding, OrderIds, RuleStats, key_of, opposite, side_index};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::detect::views::{BookView, Change, OrderRef};
use crate::event::{Event, Kind, Px, Side};
use crate::flat_map::FlatMap;
use rustc_hash::FxHashMap;
use stream::{COLD, NONE, Stream};

/// How a rule bounds the number of levels behind the touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Levels {
    AtMost(u32),
    AtLeast(u32),
}

impl Levels {
    fn holds(self, levels: u32) -> bool {
        match self {
            Levels::AtMost(n) => levels <= n,
            Levels::AtLeast(n) => levels >= n,
        }
    }
}

/// The validated thresholds of one pattern rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternParams {
    pub window_ns: i64,
    pub size_pct: u64,
    pub cancel_pct: u64,
    pub one_sided_k: u64,
    pub min_opposite_exec_qty: u64,
    pub levels: Levels,
    /// Spoof orders (partly) cancelled, at least.
    pub min_orders: u32,
    pub max_keys: usize,
    pub max_entries: usize,
}

/// The raw fields spoofing and layering share (each rule's own is its
/// bound on the cancelled levels behind the touch).
pub struct SharedRaw {
    pub window_ms: Option<toml::Spanned<i64>>,
    pub size_pct: Option<toml::Spanned<i64>>,
    pub cancel_pct: Option<toml::Spanned<i64>>,
    pub one_sided_k: Option<toml::Spanned<i64>>,
    pub min_opposite_exec_qty: Option<toml::Spanned<i64>>,
    pub min_orders: Option<toml::Spanned<i64>>,
    pub max_keys: Option<toml::Spanned<i64>>,
    pub max_entries: Option<toml::Spanned<i64>>,
}

impl PatternParams {
    /// Validates the shared fields against the rule's defaults `d`, every
    /// problem to `f` in field order; `levels` validates the rule's own.
    pub fn validate(
        raw: SharedRaw,
        d: &PatternParams,
        levels: impl FnOnce(&mut crate::config::Problems<'_>) -> Levels,
        f: &mut crate::config::Problems<'_>,
    ) -> PatternParams {
        use super::params::MS;
        PatternParams {
            window_ns: f.int(raw.window_ms, "window_ms", 1..=3_600_000, d.window_ns / MS) * MS,
            size_pct: f.int(raw.size_pct, "size_pct", 1..=100_000, d.size_pct as i64) as u64,
            cancel_pct: f.int(raw.cancel_pct, "cancel_pct", 1..=100, d.cancel_pct as i64) as u64,
            one_sided_k: f.int(raw.one_sided_k, "one_sided_k", 1..=1_000, d.one_sided_k as i64) as u64,
            min_opposite_exec_qty: f.int(
                raw.min_opposite_exec_qty,
                "min_opposite_exec_qty",
                1..=1_000_000_000_000,
                d.min_opposite_exec_qty as i64,
            ) as u64,
            levels: levels(f),
            min_orders: f.int(raw.min_orders, "min_orders", 1..=1_000, d.min_orders as i64) as u32,
            max_keys: f.int(raw.max_keys, "max_keys", 1..=1 << 24, d.max_keys as i64) as usize,
            max_entries: f.int(raw.max_entries, "max_entries", 1 << 10..=1 << 26, d.max_entries as i64) as usize,
        }
    }
}

/// The most distinct levels counted (parameters are capped below it).
pub const MAX_LEVELS: usize = 64;

/// What a spoofing or layering alert measured, next to its thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoofEvidence {
    /// The side of the spoof orders.
    pub side: Side,
    pub window_ns: i64,
    /// Event time of the first spoof order.
    pub first_order_ns: i64,
    pub spoof_qty: u64,
    pub spoof_orders: u32,
    pub peak_open_qty: u64,
    pub depth5_at_placement: u64,
    pub size_pct: u64,
    pub cancelled_qty: u64,
    pub cancel_pct: u64,
    pub opposite_new_qty: u64,
    pub one_sided_k: u64,
    pub opposite_exec_qty: u64,
    pub opposite_orders: u32,
    pub min_opposite_exec_qty: u64,
    pub levels_behind: u32,
    pub levels: Levels,
    pub min_orders: u32,
}

impl PatternParams {
    /// The canonical bytes (part of the checkpoint identity).
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.i64(self.window_ns);
        for v in [self.size_pct, self.cancel_pct, self.one_sided_k, self.min_opposite_exec_qty] {
            w.u64(v);
        }
        match self.levels {
            Levels::AtMost(n) => w.u64(n as u64),
            Levels::AtLeast(n) => w.u64(n as u64 | 1 << 32),
        }
        w.u64(self.min_orders as u64);
        w.u64(self.max_keys as u64);
        w.u64(self.max_entries as u64);
    }
}

impl SpoofEvidence {
    /// `peak_open_qty` against the depth, in percent (`None` when the side
    /// was empty, which any quantity exceeds).
    pub fn measured_size_pct(&self) -> Option<u64> {
        (self.depth5_at_placement > 0).then(|| self.peak_open_qty * 100 / self.depth5_at_placement)
    }

    pub fn measured_cancel_pct(&self) -> u64 {
        self.cancelled_qty * 100 / self.spoof_qty.max(1)
    }

    /// `spoof_qty / opposite_new_qty` in hundredths (`None` with no new
    /// quantity on the other side).
    pub fn measured_one_sided_x100(&self) -> Option<u64> {
        (self.opposite_new_qty > 0).then(|| self.spoof_qty * 100 / self.opposite_new_qty)
    }
}

const NEW: u8 = 0;
const EXEC: u8 = 1;
/// A cancel of a counted spoof order (kept only for the walk's peak).
const CANCEL: u8 = 2;

/// An entry's kind and flags, one byte kept in its ring slot's header
/// (`Slot::tag`): the kind in the low two bits, then the side (set: sell),
/// non-marketable on entry and behind the touch once placed (`NEW`), and
/// spoof fill (`EXEC`: a fill of a non-marketable order of the same key
/// whose `NEW` entry is `of_new`; whether it is a counted spoof order is
/// each rule's question, asked when it walks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flags(u8);

const KIND: u8 = 0b11;
const SELL: u8 = 1 << 2;
const NON_MARKETABLE: u8 = 1 << 3;
const BEHIND: u8 = 1 << 4;
const SPOOF_FILL: u8 = 1 << 5;

impl Flags {
    #[inline(always)]
    fn new(kind: u8, side: Side, non_marketable: bool, behind: bool, spoof_fill: bool) -> Flags {
        Flags(
            kind | if side == Side::Sell { SELL } else { 0 }
                | if non_marketable { NON_MARKETABLE } else { 0 }
                | if behind { BEHIND } else { 0 }
                | if spoof_fill { SPOOF_FILL } else { 0 },
        )
    }

    #[inline(always)]
    fn of(slot: &stream::Slot<Entry>) -> Flags {
        Flags(slot.tag)
    }

    #[inline(always)]
    fn kind(self) -> u8 {
        self.0 & KIND
    }

    #[inline(always)]
    fn side(self) -> Side {
        if self.0 & SELL != 0 { Side::Sell } else { Side::Buy }
    }

    #[inline(always)]
    fn non_marketable(self) -> bool {
        self.0 & NON_MARKETABLE != 0
    }

    #[inline(always)]
    fn behind(self) -> bool {
        self.0 & BEHIND != 0
    }

    #[inline(always)]
    fn spoof_fill(self) -> bool {
        self.0 & SPOOF_FILL != 0
    }
}

/// An entry's numbers (40 bytes; with the slot's header 80 a ring slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    order_id: u64,
    price: Px,
    /// `NEW`: the entered quantity; `EXEC`: the executed quantity;
    /// `CANCEL`: the cancelled quantity.
    qty: u64,
    /// `NEW`: cancelled so far (while the order counted for some rule).
    cancelled: u64,
    /// `NEW`: the resting best-5 depth of its side just before it.
    /// `CANCEL` and spoof-fill `EXEC`: the absolute index of the order's
    /// `NEW` entry (once that has left a rule's window, so has this one's
    /// quantity for that rule); `NONE` otherwise.
    depth5_or_new: u64,
}

// SAFETY: integers (`Px` is an `i64`).
unsafe impl stream::ZeroDefault for Entry {}

/// A ring slot: 40 bytes of header (`stream.rs`) and the entry's 40.
const _: () = assert!(std::mem::size_of::<stream::Slot<Entry>>() == 80);

impl Entry {
    /// `NEW`: the best-5 depth of its side before it.
    #[inline(always)]
    fn depth5(&self) -> u64 {
        self.depth5_or_new
    }

    /// `CANCEL`, `EXEC`: the index of the order's `NEW` entry, or `NONE`.
    #[inline(always)]
    fn of_new(&self) -> u64 {
        self.depth5_or_new
    }
}

/// One rule's sums for one key.
#[derive(Clone, Copy, Debug)]
struct Sums {
    /// `(ts_ns, seq)` of the rule's last alert: entries up to it are spent.
    since: (i64, u64),
    /// Sums over the rule's counted entries, per side.
    spoof_qty: [u64; 2],
    cancelled: [u64; 2],
    new_qty: [u64; 2],
    exec_qty: [u64; 2],
    /// The lazy rule only (`Pattern::lazy`): the key's oldest entry still
    /// in these sums (`NONE`: none); the entries before it have been taken
    /// out. Unused (`NONE`) for the other rules.
    head: u64,
}

impl Default for Sums {
    fn default() -> Sums {
        Sums {
            since: (i64::MIN, 0),
            spoof_qty: [0; 2],
            cancelled: [0; 2],
            new_qty: [0; 2],
            exec_qty: [0; 2],
            head: NONE,
        }
    }
}

impl Sums {
    #[inline]
    fn counts(&self, ts_ns: i64, seq: u64) -> bool {
        (ts_ns, seq) > self.since
    }

    /// Adds (`add`) or takes away a counted entry.
    #[inline]
    fn apply(&mut self, f: Flags, d: &Entry, add: bool) {
        let s = side_index(f.side());
        let (field, qty) = match f.kind() {
            NEW => {
                if f.non_marketable() {
                    if add {
                        self.spoof_qty[s] += d.qty;
                        self.cancelled[s] += d.cancelled;
                    } else {
                        self.spoof_qty[s] -= d.qty;
                        self.cancelled[s] -= d.cancelled;
                    }
                }
                (&mut self.new_qty[s], d.qty)
            }
            EXEC => (&mut self.exec_qty[s], d.qty),
            _ => return,
        };
        if add {
            *field += qty;
        } else {
            *field -= qty;
        }
    }
}

/// The most rules one stream serves (spoofing and layering).
pub const MAX_RULES: usize = 2;

/// A key's state: each rule's sums, in the stream's rule order.
type KeyState = [Sums; MAX_RULES];

/// One rule the stream serves: its thresholds and where its window starts.
#[derive(Clone, Copy, Debug)]
struct RuleSlot {
    rule: BookRule,
    params: PatternParams,
    /// Absolute index of the oldest entry inside this rule's window (the
    /// stream keeps the longest window). For the lazy rule (a shorter
    /// window, `Pattern::lazy`) only a floor: no entry before it counts
    /// (a restore that did not carry the rule sets it at the cut); its
    /// window is a time cutoff, applied per key when the key is touched.
    head: u64,
}

/// The pattern's state for one or more rules (spoofing and layering, each
/// with its own parameters): one stream of entries, one key table and one
/// order map, kept for the longest window; per rule and key only the sums
/// and `since`, and per rule the index where its window starts. So a
/// record costs one push, one key lookup and one expiry, whichever rules
/// are on; each rule's alerts are those it would raise on its own.
///
/// Limits: the stream holds the largest `max_keys` and `max_entries` of
/// its rules (an overloaded stream refuses keys and evicts entries for all
/// of them at once; counted).
pub struct Pattern {
    /// The rules served: `rules[..n_rules]` (the others copy the first and
    /// are never read).
    rules: [RuleSlot; MAX_RULES],
    n_rules: usize,
    /// The rule whose window is shorter than the stream's (at most one of
    /// two), or `MAX_RULES`. Its sums are expired lazily: a key's entries
    /// leave them when the key is next touched (`expire_key`: a cancel of
    /// its order, a check, the entry's expiry from the stream), not by a
    /// walk of the ring at every record; whether an entry is inside its
    /// window is a time compare (`lazy_cutoff`).
    lazy: usize,
    /// The longest window of the rules.
    window_ns: i64,
    /// At the record being applied: entries at or before these times are
    /// outside the stream's window and the lazy rule's.
    cutoff: i64,
    lazy_cutoff: i64,
    /// Every entry; sums and lists for the hot keys only (`stream.rs`).
    window: Stream<Entry, KeyState>,
    /// Order id -> absolute index of its `NEW` entry, for the live `NEW`s
    /// of hot keys (a cold key's are found on its chain). An
    /// open-addressing table: its slot follows from the id, so the shard
    /// prefetches it records ahead.
    orders: FlatMap<u64, u64>,
    /// Restored entries waiting for `restored` (from every old shard).
    pending: Vec<Restored>,
    /// Restored hot keys: each rule's `since` (`None`: the rule was not in
    /// the snapshot with these parameters, so it starts empty).
    pending_since: FxHashMap<u64, [Option<(i64, u64)>; MAX_RULES]>,
    /// Whether a snapshot was read and waits for `restored`; per rule,
    /// whether the snapshot carried it (else it starts empty at the cut).
    restoring: bool,
    carried: [bool; MAX_RULES],
}

/// An entry read back from a snapshot: (ts, seq, key, flags, entry,
/// whether it refers to a live `NEW`).
type Restored = (i64, u64, u64, Flags, Entry, bool);

/// How far ahead of a window's start `prefetch` looks for the hot entries
/// about to expire: about as many entries expire as records are applied,
/// and the shard prefetches 8 records ahead.
const EXPIRY_AHEAD: u64 = 8;

/// Bytes of one key (before its rules' `since`s), of one `since` and of
/// one entry in a snapshot.
const KEY_BYTES: usize = 8;
const SINCE_BYTES: usize = 16;
const ENTRY_BYTES: usize = 8 * 8 + 3;

impl Pattern {
    /// The pattern for one rule.
    pub fn new(rule: BookRule, params: PatternParams) -> Pattern {
        Pattern::shared(&[(rule, params)])
    }

    /// One stream for `rules` (at least one, at most `MAX_RULES`, distinct).
    pub fn shared(rules: &[(BookRule, PatternParams)]) -> Pattern {
        assert!(!rules.is_empty() && rules.len() <= MAX_RULES, "a spoof stream serves 1..={MAX_RULES} rules");
        let first = RuleSlot { rule: rules[0].0, params: rules[0].1, head: stream::FIRST };
        let mut slots = [first; MAX_RULES];
        for (i, &(rule, params)) in rules.iter().enumerate() {
            assert!(rules[..i].iter().all(|r| r.0 != rule), "{} twice in one stream", rule.name());
            slots[i] = RuleSlot { rule, params, head: stream::FIRST };
        }
        let max_keys = rules.iter().map(|r| r.1.max_keys).max().unwrap_or(1);
        let max_entries = rules.iter().map(|r| r.1.max_entries).max().unwrap_or(1);
        let window_ns = rules.iter().map(|r| r.1.window_ns).max().unwrap_or(0);
        let lazy = rules.iter().position(|r| r.1.window_ns < window_ns).unwrap_or(MAX_RULES);
        debug_assert!(rules.iter().filter(|r| r.1.window_ns < window_ns).count() <= 1);
        Pattern {
            rules: slots,
            n_rules: rules.len(),
            lazy,
            window_ns,
            cutoff: i64::MIN,
            lazy_cutoff: i64::MIN,
            window: Stream::new(max_keys, max_entries),
            orders: FlatMap::with_capacity(1024.min(max_entries)),
            pending: Vec::new(),
            pending_since: FxHashMap::default(),
            restoring: false,
            carried: [false; MAX_RULES],
        }
    }

    #[inline(always)]
    fn slot(&self, r: usize) -> &RuleSlot {
        debug_assert!(r < self.n_rules);
        &self.rules[r]
    }

    #[inline(always)]
    fn slot_mut(&mut self, r: usize) -> &mut RuleSlot {
        debug_assert!(r < self.n_rules);
        &mut self.rules[r]
    }

    /// The whole state, for a checkpoint. Layout: the rules `(rule,
    /// canonical parameters)`; the hot keys `(key, then each rule's since
    /// ts, since seq)`; then every entry oldest first `(ts, seq, key,
    /// order_id, price, qty, cancelled, depth5, kind, side, flags)`; flags:
    /// non-marketable, behind, spoof fill, refers to a live `NEW`.
    pub fn encode(&self, w: &mut Writer<'_>) {
        let n = self.n_rules;
        w.out.reserve(64 + self.window.key_count() * (KEY_BYTES + n * SINCE_BYTES) + self.window.len() * ENTRY_BYTES);
        w.u64(n as u64);
        for r in 0..n {
            let slot = self.slot(r);
            w.u8(slot.rule as u8);
            let mut params = Vec::new();
            slot.params.encode(&mut Writer::new(&mut params));
            w.bytes(&params);
        }
        w.u64(self.window.key_count() as u64);
        for (_, key) in self.window.keys() {
            w.u64(key.key);
            for sums in &key.state[..n] {
                w.i64(sums.since.0);
                w.u64(sums.since.1);
            }
        }
        w.u64(self.window.len() as u64);
        for slot in self.window.entries() {
            let (d, f) = (slot.data, Flags::of(slot));
            w.i64(slot.ts_ns);
            w.u64(slot.seq);
            w.u64(slot.key);
            w.u64(d.order_id);
            w.i64(d.price);
            w.u64(d.qty);
            w.u64(d.cancelled);
            let new = f.kind() == NEW;
            w.u64(if new { d.depth5() } else { 0 });
            w.u8(f.kind());
            w.u8(f.side() as u8);
            let live = !new && self.window.is_live(d.of_new());
            w.u8(f.non_marketable() as u8 | (f.behind() as u8) << 1 | (f.spoof_fill() as u8) << 2 | (live as u8) << 3);
        }
    }

    /// A name for messages: the rules served.
    fn name(&self) -> String {
        (0..self.n_rules).map(|r| self.slot(r).rule.name()).collect::<Vec<_>>().join("+")
    }

    /// Reads one old shard's snapshot, keeping the keys `keep` accepts;
    /// `restored` builds the state once every snapshot was read. A rule of
    /// this stream that the snapshot does not hold with the same
    /// parameters starts empty (its window starts at the cut): what a
    /// rules reload wants of a rule it does not carry over. A key the
    /// snapshot lists is hot; the others' entries restore cold (a
    /// version-1 section listed every key with entries: all restore hot,
    /// which is as exact, only slower).
    pub fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        let n_old = r.count(1)?;
        if n_old > MAX_RULES {
            return Err(DecodeError(format!("{}: {n_old} rules in one stream", self.name())));
        }
        // Which old rule's `since` each of ours takes.
        let mut from: [Option<usize>; MAX_RULES] = [None; MAX_RULES];
        for j in 0..n_old {
            let rule = r.u8()?;
            let params = r.bytes()?;
            for (i, from) in from.iter_mut().enumerate().take(self.n_rules) {
                let slot = self.slot(i);
                let mut ours = Vec::new();
                slot.params.encode(&mut Writer::new(&mut ours));
                if slot.rule as u8 == rule && ours == params {
                    *from = Some(j);
                }
            }
        }
        for (i, carried) in self.carried.iter_mut().enumerate() {
            *carried = from[i].is_some();
        }
        self.restoring = true;
        for _ in 0..r.count(KEY_BYTES + n_old * SINCE_BYTES)? {
            let key = r.u64()?;
            let mut old = [(i64::MIN, 0u64); MAX_RULES];
            for since in old.iter_mut().take(n_old) {
                *since = (r.i64()?, r.u64()?);
            }
            let mut since = [None; MAX_RULES];
            for (i, since) in since.iter_mut().enumerate() {
                *since = from[i].map(|j| old[j]);
            }
            if keep(key) && self.pending_since.insert(key, since).is_some() {
                return Err(DecodeError(format!("{}: key {key:#x} in two snapshots", self.name())));
            }
        }
        for _ in 0..r.count(ENTRY_BYTES)? {
            let (ts, seq, key) = (r.i64()?, r.u64()?, r.u64()?);
            let mut d = Entry {
                order_id: r.u64()?,
                price: r.i64()?,
                qty: r.u64()?,
                cancelled: r.u64()?,
                depth5_or_new: r.u64()?,
            };
            let kind = r.u8()?;
            let side = match r.u8()? {
                b'B' => Side::Buy,
                b'S' => Side::Sell,
                other => return Err(DecodeError(format!("{}: bad side {other}", self.name()))),
            };
            let flags = r.u8()?;
            if kind > CANCEL || flags > 15 {
                return Err(DecodeError(format!("{}: bad entry kind {kind} or flags {flags}", self.name())));
            }
            if kind != NEW {
                d.depth5_or_new = NONE;
            }
            let f = Flags::new(kind, side, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
            if keep(key) {
                self.pending.push((ts, seq, key, f, d, flags & 8 != 0));
            }
        }
        Ok(())
    }

    /// Whether restored snapshots wait for `restored`.
    pub fn restore_pending(&self) -> bool {
        self.restoring
    }

    /// Builds the state from the snapshots read: entries in time order
    /// (a stable sort keeps each snapshot's own order), pushed cold; then
    /// the hot keys promoted with their `since` and their sums recomputed
    /// from the counted entries. Every carried rule's window starts at the
    /// oldest entry (the next record's expiry takes each back to its own
    /// length); a rule the snapshot did not carry starts at the cut.
    pub fn restored(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|x| (x.0, x.1));
        // The newest `NEW` of each (key, order id) pushed so far: what a
        // cancel or a spoof fill refers to.
        let mut news: FxHashMap<(u64, u64), u64> = FxHashMap::default();
        for (ts, seq, key, f, mut d, live) in pending.drain(..) {
            self.make_room();
            if f.kind() != NEW && live {
                d.depth5_or_new =
                    news.get(&(key, d.order_id)).copied().filter(|&a| self.window.is_live(a)).unwrap_or(NONE);
            }
            let (abs, _) = self.window.push(key, ts, seq, f.0, d);
            if f.kind() == NEW {
                news.insert((key, d.order_id), abs);
            }
        }
        let (head, tail) = (self.window.head(), self.window.tail());
        for r in 0..self.n_rules {
            self.slot_mut(r).head = if self.carried[r] { head } else { tail };
        }
        let mut keys: Vec<_> = self.pending_since.drain().collect();
        keys.sort_unstable_by_key(|k| k.0);
        for (key, since) in keys {
            // A key whose entries were all evicted on the way has nothing to keep.
            if self.window.walk_back(key).next().is_none() {
                continue;
            }
            let Some(slot) = self.window.promote(key) else { continue };
            let state = &mut self.window.key_mut(slot).state;
            for (sums, since) in state.iter_mut().zip(since) {
                sums.since = since.unwrap_or((i64::MIN, 0));
            }
            self.sum_promoted(slot);
        }
        self.pending = pending;
        self.restoring = false;
    }

    /// After `promote`: each rule's sums over the key's counted entries
    /// from its window's start (the lazy rule's from its floor: the caller
    /// expires the key then, `expire_key`), and its live `NEW`s in the
    /// order map (where no newer `NEW` of the same id is).
    fn sum_promoted(&mut self, slot: u32) {
        let n = self.n_rules;
        let mut heads = [0u64; MAX_RULES];
        for (r, head) in heads.iter_mut().enumerate().take(n) {
            *head = self.slot(r).head;
        }
        let mut state = self.window.key(slot).state;
        for (abs, entry) in self.window.walk(slot) {
            let f = Flags::of(entry);
            for (sums, &head) in state.iter_mut().zip(&heads).take(n) {
                if abs >= head {
                    if sums.head == NONE {
                        sums.head = abs;
                    }
                    if sums.counts(entry.ts_ns, entry.seq) {
                        sums.apply(f, &entry.data, true);
                    }
                }
            }
            if f.kind() == NEW {
                match self.orders.get(entry.data.order_id) {
                    Some(&newer) if newer > abs => {}
                    _ => self.orders.insert(entry.data.order_id, abs),
                }
            }
        }
        for (r, sums) in state.iter_mut().enumerate() {
            if r != self.lazy {
                sums.head = NONE;
            }
        }
        self.window.key_mut(slot).state = state;
    }

    /// The lazy rule's expiry for one hot key: its entries that left the
    /// rule's window (at the record being applied) out of the rule's sums.
    /// Exact whenever it runs: the sums only matter when read (`check`),
    /// and an entry's numbers change only at a cancel of its order, after
    /// this has run for its key.
    #[inline]
    fn expire_key(&mut self, slot: u32) {
        let r = self.lazy;
        if r >= self.n_rules {
            return;
        }
        let cutoff = self.lazy_cutoff;
        let mut abs = self.window.key(slot).state[r].head;
        while abs != NONE {
            let (entry, key) = self.window.entry_and_key_mut(abs);
            if entry.ts_ns > cutoff {
                break;
            }
            let sums = &mut key.state[r];
            if sums.counts(entry.ts_ns, entry.seq) {
                sums.apply(Flags::of(entry), &entry.data, false);
            }
            abs = entry.next_after(abs);
        }
        self.window.key_mut(slot).state[r].head = abs;
    }

    /// The first rule's thresholds.
    pub fn params(&self) -> &PatternParams {
        &self.slot(0).params
    }

    pub fn stats(&self) -> RuleStats {
        RuleStats {
            keys: self.window.key_count(),
            entries: self.window.len(),
            keys_refused: self.window.keys_refused,
            entries_evicted: self.window.entries_evicted,
            grew: self.window.grew + self.orders.grew,
        }
    }

    /// Brings what `on_record` will touch for `e` into cache (called a few
    /// records ahead): the ring slot each party's key bucket names (`hot`
    /// and a cold key's chain walk read it), the `NEW` entry a hot key's
    /// cancel or fill finds in the order map, and, for the entries about
    /// to expire (as many ahead of the stream's head as records ahead),
    /// the hot key slot and order slot that expiry touches. (A first
    /// stage a further few records ahead, for the bucket and the order
    /// slot read here, cost more instructions than its misses saved.) The
    /// order map is asked only when the bucket's newest entry is hot (its
    /// bit, not its slot): a cold key's cancel or fill does not read the
    /// map, and on a day of cold keys most would miss for nothing.
    #[inline]
    pub fn prefetch(&self, e: &Event) {
        let hot = self.window.prefetch_newest(key_of(e.group, e.instrument));
        if e.kind != Kind::New
            && hot
            && let Some(&abs) = self.orders.get(e.order_id)
        {
            self.window.prefetch_entry(abs);
        }
        if e.kind == Kind::Trade
            && self.window.prefetch_newest(key_of(e.contra_group, e.instrument))
            && let Some(&abs) = self.orders.get(e.contra_order_id)
        {
            self.window.prefetch_entry(abs);
        }
        if let Some(slot) = self.window.prefetch_hot_key_of(self.window.head() + EXPIRY_AHEAD)
            && Flags::of(slot).kind() == NEW
        {
            self.orders.prefetch(slot.data.order_id);
        }
    }

    /// Drops the entries that left the stream's window (the longest) at
    /// `now_ns`; a rule whose window is the stream's has no walk of its
    /// own: the stream's expiry takes its hot entries out of its sums
    /// (`pop_hot`), and a cold entry costs a compare and a step. The lazy
    /// rule's window moves by its cutoff alone (`expire_key`).
    #[inline]
    fn expire(&mut self, now_ns: i64) {
        self.cutoff = now_ns.saturating_sub(self.window_ns);
        if self.lazy < self.n_rules {
            self.lazy_cutoff = now_ns.saturating_sub(self.rules[self.lazy].params.window_ns);
        }
        let cutoff = self.cutoff;
        let mut popped = false;
        while let Some(ts_ns) = self.window.front_ts() {
            if ts_ns > cutoff {
                break;
            }
            if !self.window.is_hot(self.window.head()) {
                self.window.skip_cold_front();
            } else {
                self.pop_hot();
            }
            popped = true;
        }
        if popped {
            self.follow_head();
        }
    }

    /// Takes the hot entry at `abs` out of rule `r`'s sums (if it counted).
    #[inline]
    fn take_out(&mut self, r: usize, abs: u64) {
        let (entry, key) = self.window.entry_and_key_mut(abs);
        let sums = &mut key.state[r];
        if sums.counts(entry.ts_ns, entry.seq) {
            sums.apply(Flags::of(entry), &entry.data, false);
        }
    }

    /// No rule's window starts before the stream's oldest entry.
    #[inline]
    fn follow_head(&mut self) {
        let head = self.window.head();
        for r in 0..self.n_rules {
            let slot = self.slot_mut(r);
            slot.head = slot.head.max(head);
        }
    }

    /// Drops the oldest entry (under overload: early).
    fn pop_oldest(&mut self) {
        if self.window.front_ts().is_none() {
            return;
        }
        if !self.window.is_hot(self.window.head()) {
            self.window.skip_cold_front();
        } else {
            self.pop_hot();
        }
        self.follow_head();
    }

    /// Drops the oldest entry, which is hot: out of the sums of each rule
    /// whose window still holds it (the lazy rule's if its key's sums still
    /// do), out of its key's list and the order map; the key is released
    /// with its last entry.
    #[inline(never)]
    fn pop_hot(&mut self) {
        let abs = self.window.head();
        for r in 0..self.n_rules {
            if r != self.lazy && self.slot(r).head <= abs {
                self.take_out(r, abs);
                self.slot_mut(r).head = abs + 1;
            }
        }
        if self.lazy < self.n_rules {
            let r = self.lazy;
            let (entry, key) = self.window.entry_and_key_mut(abs);
            let sums = &mut key.state[r];
            if sums.head == abs {
                if sums.counts(entry.ts_ns, entry.seq) {
                    sums.apply(Flags::of(entry), &entry.data, false);
                }
                sums.head = entry.next_after(abs);
            }
        }
        let Some((abs, slot)) = self.window.pop_front() else { return };
        debug_assert!(slot.hot != COLD);
        // One probe: the id is put back in the rare case it names a newer
        // entry (a reused order id took the map over).
        if Flags::of(&slot).kind() == NEW
            && let Some(newer) = self.orders.remove(slot.data.order_id)
            && newer != abs
        {
            self.orders.insert(slot.data.order_id, newer);
        }
        if self.window.key(slot.hot).entries == 0 {
            self.window.release(slot.hot);
        }
    }

    /// Room for one more entry: under overload the oldest goes early.
    #[inline]
    fn make_room(&mut self) {
        if self.window.must_evict() {
            self.window.entries_evicted += 1;
            self.pop_oldest();
        }
    }

    /// Pushes an entry of `order`'s key; if the key is hot every rule
    /// counts it (it is the newest). Its index and the key's hot slot.
    #[inline(always)]
    fn push(&mut self, e: &Event, order: &OrderRef, f: Flags, data: Entry) -> (u64, Option<u32>) {
        self.make_room();
        let key = key_of(order.group, e.instrument);
        self.push_as(key, self.window.hot(key), e, f, data)
    }

    /// `push` after `make_room` and `hot(key)` (nothing popped or promoted since).
    #[inline(always)]
    fn push_as(&mut self, key: u64, hot: Option<u32>, e: &Event, f: Flags, data: Entry) -> (u64, Option<u32>) {
        let (abs, hot) = self.window.push_as(key, hot, e.ts_ns, e.seq, f.0, data);
        if let Some(slot) = hot {
            self.add_to_sums(slot, abs, f, &data);
        }
        (abs, hot)
    }

    /// A hot key's new entry (at `abs`) counts for every rule (it is the
    /// newest).
    #[inline(never)]
    fn add_to_sums(&mut self, slot: u32, abs: u64, f: Flags, data: &Entry) {
        let (n, lazy) = (self.n_rules, self.lazy);
        let state = &mut self.window.key_mut(slot).state;
        for sums in &mut state[..n] {
            sums.apply(f, data, true);
        }
        if lazy < n && state[lazy].head == NONE {
            state[lazy].head = abs;
        }
    }

    /// One walk of the cold `key`'s chain: the live `NEW` entry of
    /// `order_id` (entered at `entry_ts_ns`): the newest `NEW` of that id,
    /// as the order map would give (the book holds one open order per id,
    /// so no other key entered it since); and whether the key has a live
    /// entry of kind `kind` on `side`, the other half of what would make
    /// it hot (the module doc's hot pair). With `need_new` the walk stops
    /// once the `NEW` is known missing (the caller has nothing to do
    /// without it).
    #[inline]
    fn cold_scan(
        &self,
        key: u64,
        order_id: u64,
        entry_ts_ns: i64,
        kind: u8,
        side: Side,
        need_new: bool,
    ) -> (Option<u64>, bool) {
        // Expired already: no `NEW` to find.
        let mut seeking = self.window.front_ts().is_some_and(|oldest| oldest <= entry_ts_ns);
        if need_new && !seeking {
            return (None, false);
        }
        let (mut new, mut found) = (None, false);
        for (abs, entry) in self.window.walk_back(key) {
            let f = Flags::of(entry);
            if seeking {
                if entry.ts_ns < entry_ts_ns {
                    if need_new {
                        return (None, found);
                    }
                    seeking = false;
                } else if f.kind() == NEW && entry.data.order_id == order_id {
                    new = Some(abs);
                    seeking = false;
                }
            }
            found |= f.kind() == kind && f.side() == side;
            if found && !seeking {
                break;
            }
        }
        (new, found)
    }

    /// Whether the `NEW` entry at `abs` is a counted spoof order of rule `r`:
    /// inside its window and after its last alert on the key.
    #[inline]
    fn counted_for(&self, r: usize, abs: u64) -> bool {
        if abs < self.slot(r).head || !self.window.is_live(abs) {
            return false;
        }
        let entry = self.window.entry(abs);
        if r == self.lazy && entry.ts_ns <= self.lazy_cutoff {
            return false;
        }
        Flags::of(entry).non_marketable()
            && (entry.hot == COLD || self.window.key(entry.hot).state[r].counts(entry.ts_ns, entry.seq))
    }

    #[inline]
    pub fn on_record(&mut self, e: &Event, change: &Change, book: &impl BookView, emit: &mut impl FnMut(Finding)) {
        self.expire(e.ts_ns);
        match *change {
            Change::Entered { order, opposite_best, depth5_before } => {
                let non_marketable = match (order.side, opposite_best) {
                    (_, None) => true,
                    (Side::Buy, Some(ask)) => order.price < ask,
                    (Side::Sell, Some(bid)) => order.price > bid,
                };
                let data = Entry {
                    order_id: order.order_id,
                    price: order.price,
                    qty: order.entered_qty,
                    cancelled: 0,
                    depth5_or_new: depth5_before,
                };
                let behind = book.best(order.side) != Some(order.price);
                let f = Flags::new(NEW, order.side, non_marketable, behind, false);
                // A reused order id (the book refuses a duplicate open one)
                // takes the map over: the older entry keeps its counts but
                // no longer takes cancels.
                let (abs, hot) = self.push(e, &order, f, data);
                if hot.is_some() {
                    self.orders.insert(order.order_id, abs);
                }
            }
            Change::Cancelled { order, qty } => {
                // The order's `NEW` entry (its time is the order's entry
                // time) has left the window: nothing of it counts.
                if order.entry_ts_ns <= self.cutoff {
                    return;
                }
                let key = key_of(order.group, e.instrument);
                let hot = self.window.hot(key);
                let mut executed = true;
                let abs = match hot {
                    Some(_) => {
                        let Some(&abs) = self.orders.get(order.order_id) else { return };
                        debug_assert!(self.window.is_live(abs), "the order map outlived its entry");
                        if self.window.entry(abs).key != key {
                            return;
                        }
                        abs
                    }
                    // A cold key turns hot at this cancel only if it executed
                    // on the other side in the window (the hot pair).
                    None => {
                        match self.cold_scan(key, order.order_id, order.entry_ts_ns, EXEC, opposite(order.side), true) {
                            (Some(abs), pair) => {
                                executed = pair;
                                abs
                            }
                            (None, _) => return,
                        }
                    }
                };
                // The rules for which it is a counted spoof order.
                let mut counted = [false; MAX_RULES];
                for (r, counted) in counted.iter_mut().enumerate().take(self.n_rules) {
                    *counted = self.counted_for(r, abs);
                }
                if !counted.contains(&true) {
                    return;
                }
                // Room for the cancel's entry first (under overload the
                // oldest goes now: never this order's, which is counted).
                self.make_room();
                if !self.window.is_live(abs) {
                    return;
                }
                // A counted cancel with an execution on the other side makes
                // the key hot: it can complete the pattern now. Without one
                // no rule's check can hold (`min_opposite_exec_qty >= 1`):
                // the cancel is kept in the cold entries, summed if the key
                // turns hot (so is it when the key table refuses it).
                let promoted = match hot {
                    Some(slot) => Some(slot),
                    None if executed => self.promote(key),
                    None => None,
                };
                let Some(slot) = promoted else {
                    self.window.entry_mut(abs).data.cancelled += qty;
                    let data = Entry { order_id: order.order_id, qty, depth5_or_new: abs, ..Entry::default() };
                    let f = Flags::new(CANCEL, order.side, false, false, false);
                    self.push_as(key, None, e, f, data);
                    return;
                };
                // The lazy rule's sums drop what left its window before
                // the entry's numbers change.
                self.expire_key(slot);
                self.window.entry_mut(abs).data.cancelled += qty;
                let state = &mut self.window.key_mut(slot).state;
                for (sums, _) in state.iter_mut().zip(counted).filter(|(_, c)| *c) {
                    sums.cancelled[side_index(order.side)] += qty;
                }
                let data = Entry { order_id: order.order_id, qty, depth5_or_new: abs, ..Entry::default() };
                let f = Flags::new(CANCEL, order.side, false, false, false);
                let (_, pushed) = self.push_as(key, Some(slot), e, f, data);
                debug_assert_eq!(pushed, Some(slot));
                for (r, _) in counted.iter().enumerate().filter(|(_, c)| **c) {
                    self.check(r, slot, order.side, e, order.account, emit);
                }
            }
            Change::Traded { buy, sell, price, qty, .. } => {
                let mut checks = [None, None];
                for (i, (order, side)) in [(buy, Side::Buy), (sell, Side::Sell)].into_iter().enumerate() {
                    self.make_room();
                    let key = key_of(order.group, e.instrument);
                    let mut hot = self.window.hot(key);
                    let new = match hot {
                        Some(_) => self.orders.get(order.order_id).copied(),
                        None => {
                            // A cold key with a cancel on the other side
                            // turns hot at this execution (the hot pair).
                            let (new, pair) =
                                self.cold_scan(key, order.order_id, order.entry_ts_ns, CANCEL, opposite(side), false);
                            if pair {
                                hot = self.promote(key);
                            }
                            new
                        }
                    };
                    let of_new = self.spoof_new(new, key).unwrap_or(NONE);
                    let data = Entry { order_id: order.order_id, price, qty, cancelled: 0, depth5_or_new: of_new };
                    let f = Flags::new(EXEC, side, false, false, of_new != NONE);
                    // A cold key has no counted cancel on the other side: the
                    // pattern cannot complete for it.
                    if let (_, Some(slot)) = self.push_as(key, hot, e, f, data) {
                        checks[i] = Some((slot, opposite(side), order.account));
                    }
                }
                for r in 0..self.n_rules {
                    for &(slot, spoof_side, account) in checks.iter().flatten() {
                        self.check(r, slot, spoof_side, e, account, emit);
                    }
                }
            }
            Change::Skipped(_) => {}
        }
    }

    /// The live `NEW` entry `new` of an order (from the order map or the
    /// chain) if it is non-marketable and of the same key (whether it
    /// counts is each rule's question).
    #[inline]
    fn spoof_new(&self, new: Option<u64>, key: u64) -> Option<u64> {
        let abs = new?;
        let entry = self.window.entry(abs);
        (entry.key == key && Flags::of(entry).non_marketable()).then_some(abs)
    }

    /// Makes the cold `key` hot (its hot pair is complete), with its sums over its
    /// entries; `None` when the key table refuses it (counted).
    #[inline(never)]
    fn promote(&mut self, key: u64) -> Option<u32> {
        let slot = self.window.promote(key)?;
        self.sum_promoted(slot);
        Some(slot)
    }

    /// Checks rule `r`'s pattern for the key in `slot` with spoof orders
    /// on `side`, cheapest conditions first: the key's entries are walked
    /// only when the sums already hold.
    fn check(&mut self, r: usize, slot: u32, side: Side, e: &Event, account: u32, emit: &mut impl FnMut(Finding)) {
        if r == self.lazy {
            self.expire_key(slot);
        }
        let (s, o) = (side_index(side), side_index(opposite(side)));
        {
            // The sums in place: most checks end here.
            let (state, p) = (&self.window.key(slot).state[r], &self.slot(r).params);
            let spoof_qty = state.spoof_qty[s];
            if spoof_qty == 0
                || (state.cancelled[s] as u128) * 100 < p.cancel_pct as u128 * spoof_qty as u128
                || state.exec_qty[o] < p.min_opposite_exec_qty
                || (spoof_qty as u128) < p.one_sided_k as u128 * state.new_qty[o] as u128
            {
                return;
            }
        }
        let RuleSlot { rule, params: p, head } = *self.slot(r);
        let key = self.window.key(slot);
        let state = key.state[r];
        let spoof_qty = state.spoof_qty[s];
        // The lazy rule's window starts at the key's oldest entry in its sums.
        let head = if r == self.lazy { state.head } else { head };
        let mut depth5 = None;
        let mut levels = [0 as Px; MAX_LEVELS];
        let mut n_levels = 0usize;
        let mut first_order_ns = e.ts_ns;
        let (mut open, mut peak, mut cancelled_orders) = (0u64, 0u64, 0u32);
        let from = if r == self.lazy { head } else { key.head };
        for (abs, entry) in self.window.walk_from(from) {
            let (d, f) = (entry.data, Flags::of(entry));
            if abs < head || f.side() != side || !state.counts(entry.ts_ns, entry.seq) {
                continue;
            }
            match f.kind() {
                NEW if f.non_marketable() => {
                    open += d.qty;
                    peak = peak.max(open);
                }
                CANCEL | EXEC if (f.kind() == CANCEL || f.spoof_fill()) && self.counted_for(r, d.of_new()) => {
                    open -= d.qty
                }
                _ => continue,
            }
            if f.kind() != NEW {
                continue;
            }
            if depth5.is_none() {
                depth5 = Some(d.depth5());
                first_order_ns = entry.ts_ns;
            }
            cancelled_orders += (d.cancelled > 0) as u32;
            if d.cancelled > 0 && f.behind() && n_levels < MAX_LEVELS && !levels[..n_levels].contains(&d.price) {
                levels[n_levels] = d.price;
                n_levels += 1;
            }
        }
        let depth5 = depth5.unwrap_or(0);
        // An empty side gives nothing to be large against (the opening
        // minutes, a thin book): pressure needs resting depth to outweigh.
        if depth5 == 0
            || (peak as u128) * 100 < p.size_pct as u128 * depth5 as u128
            || !p.levels.holds(n_levels as u32)
            || cancelled_orders < p.min_orders
        {
            return;
        }
        let ids = self.order_ids(slot, side, &state, head);
        let evidence = SpoofEvidence {
            side,
            window_ns: p.window_ns,
            first_order_ns,
            spoof_qty,
            spoof_orders: ids.1,
            peak_open_qty: peak,
            depth5_at_placement: depth5,
            size_pct: p.size_pct,
            cancelled_qty: state.cancelled[s],
            cancel_pct: p.cancel_pct,
            opposite_new_qty: state.new_qty[o],
            one_sided_k: p.one_sided_k,
            opposite_exec_qty: state.exec_qty[o],
            opposite_orders: ids.2,
            min_opposite_exec_qty: p.min_opposite_exec_qty,
            levels_behind: n_levels as u32,
            levels: p.levels,
            min_orders: p.min_orders,
        };
        emit(Finding {
            rule,
            seq: e.seq,
            ts_ns: e.ts_ns,
            group: (key.key >> 32) as u32,
            account,
            instrument: e.instrument,
            evidence: Evidence::Spoof(evidence),
            order_ids: ids.0,
        });
        self.window.key_mut(slot).state[r] = Sums { since: (e.ts_ns, e.seq), head: state.head, ..Sums::default() };
    }

    /// The cancelled spoof orders, then the distinct opposite orders that
    /// executed; with the two counts. Alert time only (quadratic in the
    /// key's executions).
    fn order_ids(&self, slot: u32, side: Side, state: &Sums, head: u64) -> (OrderIds, u32, u32) {
        let mut ids = OrderIds::default();
        let mut spoof = 0;
        for (abs, entry) in self.window.walk(slot) {
            let (d, f) = (entry.data, Flags::of(entry));
            if abs >= head
                && f.kind() == NEW
                && f.side() == side
                && f.non_marketable()
                && d.cancelled > 0
                && state.counts(entry.ts_ns, entry.seq)
            {
                ids.add(d.order_id, true);
                spoof += 1;
            }
        }
        let other = opposite(side);
        let counted_exec = |abs: u64, entry: &stream::Slot<Entry>| {
            let f = Flags::of(entry);
            abs >= head && f.kind() == EXEC && f.side() == other && state.counts(entry.ts_ns, entry.seq)
        };
        let mut opposite_orders = 0;
        for (abs, entry) in self.window.walk(slot) {
            if !counted_exec(abs, entry) {
                continue;
            }
            let seen = self
                .window
                .walk(slot)
                .take_while(|(a, _)| *a < abs)
                .any(|(a, earlier)| counted_exec(a, earlier) && earlier.data.order_id == entry.data.order_id);
            if !seen {
                opposite_orders += 1;
                ids.add(entry.data.order_id, true);
            }
        }
        debug_assert!(self.window.key(slot).head != NONE);
        (ids, spoof, opposite_orders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::test_book::{Applied, MS, NaiveBook, Step, TICK, random_tape};
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use std::collections::HashMap;

    fn engine(recs: &[Applied], rule: BookRule, params: PatternParams) -> (Vec<Finding>, Pattern) {
        let mut pattern = Pattern::new(rule, params);
        let mut book = NaiveBook::new(TICK);
        let mut out = Vec::new();
        for r in recs {
            let change = book.apply(&r.e);
            assert_eq!(change, r.change);
            pattern.on_record(&r.e, &change, &book, &mut |f| out.push(f));
        }
        (out, pattern)
    }

    /// The definition in the module doc, recomputed from every applied
    /// record at each record that could complete the pattern.
    fn reference(recs: &[Applied], rule: BookRule, p: PatternParams) -> Vec<Finding> {
        let mut since: HashMap<u64, (i64, u64)> = HashMap::new();
        let mut out = Vec::new();
        let key = |o: &OrderRef, r: &Applied| key_of(o.group, r.e.instrument);
        let entered = |j: usize| match recs[j].change {
            Change::Entered { order, opposite_best, depth5_before } => {
                let nm = match (order.side, opposite_best) {
                    (_, None) => true,
                    (Side::Buy, Some(ask)) => order.price < ask,
                    (Side::Sell, Some(bid)) => order.price > bid,
                };
                Some((order, nm, depth5_before))
            }
            _ => None,
        };
        for (i, r) in recs.iter().enumerate() {
            let t = r.e.ts_ns;
            let counted = |j: usize, k: u64, since: &HashMap<u64, (i64, u64)>| {
                let s = since.get(&k).copied().unwrap_or((i64::MIN, 0));
                recs[j].e.ts_ns > t - p.window_ns && (recs[j].e.ts_ns, recs[j].e.seq) > s
            };
            let mut candidates = Vec::new();
            match r.change {
                Change::Cancelled { order, .. } => {
                    let k = key(&order, r);
                    let n = (0..i).rev().find(|&j| entered(j).is_some_and(|(o, _, _)| o.order_id == order.order_id));
                    if let Some(j) = n
                        && counted(j, k, &since)
                        && entered(j).unwrap().1
                    {
                        candidates.push((k, order.side, order.account));
                    }
                }
                Change::Traded { buy, sell, .. } => {
                    candidates.push((key(&buy, r), Side::Sell, buy.account));
                    candidates.push((key(&sell, r), Side::Buy, sell.account));
                }
                _ => {}
            }
            for (k, s, account) in candidates {
                let o = opposite(s);
                let cancelled_of = |j: usize, id: u64| -> u64 {
                    (j + 1..=i)
                        .map(|m| match recs[m].change {
                            Change::Cancelled { order, qty } if order.order_id == id => qty,
                            _ => 0,
                        })
                        .sum()
                };
                let spoof: Vec<(usize, OrderRef, u64, u64)> = (0..=i)
                    .filter(|&j| counted(j, k, &since))
                    .filter_map(|j| {
                        let (order, nm, depth5) = entered(j)?;
                        (nm && order.side == s && key(&order, &recs[j]) == k)
                            .then(|| (j, order, depth5, cancelled_of(j, order.order_id)))
                    })
                    .collect();
                let spoof_qty: u64 = spoof.iter().map(|x| x.1.entered_qty).sum();
                let cancelled: u64 = spoof.iter().map(|x| x.3).sum();
                let new_opposite: u64 = (0..=i)
                    .filter(|&j| counted(j, k, &since))
                    .filter_map(|j| entered(j).filter(|(ord, _, _)| ord.side == o && key(ord, &recs[j]) == k))
                    .map(|x| x.0.entered_qty)
                    .sum();
                let execs: Vec<(u64, u64)> = (0..=i)
                    .filter(|&j| counted(j, k, &since))
                    .filter_map(|j| match recs[j].change {
                        Change::Traded { buy, sell, qty, .. } => {
                            let ord = if o == Side::Buy { buy } else { sell };
                            (key(&ord, &recs[j]) == k).then_some((ord.order_id, qty))
                        }
                        _ => None,
                    })
                    .collect();
                let exec_qty: u64 = execs.iter().map(|x| x.1).sum();
                let depth5 = spoof.first().map_or(0, |x| x.2);
                let spoof_ids: Vec<u64> = spoof.iter().map(|x| x.1.order_id).collect();
                let (mut open, mut peak) = (0i64, 0i64);
                let from = spoof.first().map_or(i + 1, |x| x.0);
                for (m, rec) in recs.iter().enumerate().take(i + 1).skip(from) {
                    match rec.change {
                        Change::Entered { order, .. }
                            if spoof_ids.contains(&order.order_id) && spoof.iter().any(|x| x.0 == m) =>
                        {
                            open += order.entered_qty as i64;
                            peak = peak.max(open);
                        }
                        Change::Cancelled { order, qty } if spoof_ids.contains(&order.order_id) => open -= qty as i64,
                        Change::Traded { buy, sell, qty, .. } => {
                            let ord = if s == Side::Buy { buy } else { sell };
                            if spoof_ids.contains(&ord.order_id) {
                                open -= qty as i64;
                            }
                        }
                        _ => {}
                    }
                }
                let peak = peak as u64;
                let mut levels: Vec<Px> =
                    spoof.iter().filter(|x| x.3 > 0 && recs[x.0].behind).map(|x| x.1.price).collect();
                levels.sort();
                levels.dedup();
                let holds = spoof_qty > 0
                    && depth5 > 0
                    && peak * 100 >= p.size_pct * depth5
                    && cancelled * 100 >= p.cancel_pct * spoof_qty
                    && spoof_qty >= p.one_sided_k * new_opposite
                    && exec_qty >= p.min_opposite_exec_qty
                    && p.levels.holds(levels.len() as u32)
                    && spoof.iter().filter(|x| x.3 > 0).count() as u32 >= p.min_orders;
                if !holds {
                    continue;
                }
                let mut ids = OrderIds::default();
                let cancelled_orders: Vec<u64> = spoof.iter().filter(|x| x.3 > 0).map(|x| x.1.order_id).collect();
                let mut exec_orders: Vec<u64> = Vec::new();
                for &(id, _) in &execs {
                    if !exec_orders.contains(&id) {
                        exec_orders.push(id);
                    }
                }
                for &id in cancelled_orders.iter().chain(&exec_orders) {
                    ids.add(id, true);
                }
                out.push(Finding {
                    rule,
                    seq: r.e.seq,
                    ts_ns: t,
                    group: (k >> 32) as u32,
                    account,
                    instrument: r.e.instrument,
                    evidence: Evidence::Spoof(SpoofEvidence {
                        side: s,
                        window_ns: p.window_ns,
                        first_order_ns: recs[spoof[0].0].e.ts_ns,
                        spoof_qty,
                        spoof_orders: cancelled_orders.len() as u32,
                        peak_open_qty: peak,
                        depth5_at_placement: depth5,
                        size_pct: p.size_pct,
                        cancelled_qty: cancelled,
                        cancel_pct: p.cancel_pct,
                        opposite_new_qty: new_opposite,
                        one_sided_k: p.one_sided_k,
                        opposite_exec_qty: exec_qty,
                        opposite_orders: exec_orders.len() as u32,
                        min_opposite_exec_qty: p.min_opposite_exec_qty,
                        levels_behind: levels.len() as u32,
                        levels: p.levels,
                        min_orders: p.min_orders,
                    }),
                    order_ids: ids,
                });
                since.insert(k, (t, r.e.seq));
            }
        }
        out
    }

    fn params() -> impl Strategy<Value = PatternParams> {
        (
            prop::sample::select(vec![500, 1_000, 5_000]),
            prop::sample::select(vec![1u64, 20, 50, 100]),
            prop::sample::select(vec![30u64, 80, 100]),
            1u64..5,
            prop::sample::select(vec![1u64, 300]),
            prop_oneof![(0u32..3).prop_map(Levels::AtMost), (1u32..4).prop_map(Levels::AtLeast)],
            1u32..3,
        )
            .prop_map(
                |(window_ms, size_pct, cancel_pct, one_sided_k, min_opposite_exec_qty, levels, min_orders)| {
                    PatternParams {
                        window_ns: window_ms * MS,
                        size_pct,
                        cancel_pct,
                        one_sided_k,
                        min_opposite_exec_qty,
                        levels,
                        min_orders,
                        max_keys: 1 << 10,
                        max_entries: 1 << 12,
                    }
                },
            )
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u8>()), 1..250)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn engine_equals_reference(steps in steps(), params in params()) {
            let tape = random_tape(&steps);
            let (got, pattern) = engine(&tape.applied, BookRule::Spoofing, params);
            let want = reference(&tape.applied, BookRule::Spoofing, params);
            prop_assert_eq!(&got, &want);
            // Every key with state has entries, and the sums add up.
            prop_assert_eq!(pattern.window.key_count(), pattern.window.keys_map_len_with_entries());
        }
    }

    /// The state as comparable text: keys sorted with their sums, entries
    /// in time order with their key and whether they point at a live `NEW`.
    fn canonical(p: &Pattern) -> String {
        let mut keys: Vec<String> =
            p.window.keys().map(|(_, k)| format!("{:x} {:?} {}", k.key, k.state, k.entries)).collect();
        keys.sort();
        // Entries of one record under different keys may come back in
        // either order (from different old shards): nothing depends on it.
        let mut sorted: Vec<_> = p.window.entries().collect();
        sorted.sort_by_key(|e| (e.ts_ns, e.seq, e.key));
        let entries: Vec<String> = sorted
            .into_iter()
            .map(|e| {
                let (mut d, f) = (e.data, Flags::of(e));
                let live =
                    (f.kind() != NEW && p.window.is_live(d.of_new())).then(|| p.window.entry(d.of_new()).data.order_id);
                if f.kind() != NEW {
                    d.depth5_or_new = 0;
                }
                format!("{} {} {:x} {} {:?} {:?} {:?}", e.ts_ns, e.seq, e.key, e.hot != COLD, f, d, live)
            })
            .collect();
        format!("{keys:#?}\n{entries:#?}\n{}", p.orders.len())
    }

    /// Runs `recs[..cut]`, checkpoints (as two old shards' snapshots, the
    /// keys split by parity), restores into a new engine and runs the rest.
    fn resumed(recs: &[Applied], rule: BookRule, params: PatternParams, cut: usize) -> Vec<Finding> {
        let (mut out, before) = engine(&recs[..cut], rule, params);
        let mut snapshot = Vec::new();
        before.encode(&mut Writer::new(&mut snapshot));
        let mut after = Pattern::new(rule, params);
        for parity in [0, 1] {
            let mut r = Reader::new(&snapshot);
            after.restore(&mut r, &|key| key.count_ones() % 2 == parity).unwrap();
            r.finish().unwrap();
        }
        after.restored();
        assert_eq!(canonical(&after), canonical(&before), "restored state differs");
        let mut book = NaiveBook::new(TICK);
        for (i, r) in recs.iter().enumerate() {
            let change = book.apply(&r.e);
            if i >= cut {
                after.on_record(&r.e, &change, &book, &mut |f| out.push(f));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        #[test]
        fn resume_equals_uninterrupted(steps in steps(), params in params(), cut in any::<prop::sample::Index>()) {
            let tape = random_tape(&steps);
            let cut = cut.index(tape.applied.len() + 1);
            let (want, _) = engine(&tape.applied, BookRule::Layering, params);
            prop_assert_eq!(resumed(&tape.applied, BookRule::Layering, params, cut), want);
        }
    }

    /// Spoofing and layering on one shared stream, each with its own parameters.
    fn pair(sp: PatternParams, ly: PatternParams) -> Pattern {
        Pattern::shared(&[(BookRule::Spoofing, sp), (BookRule::Layering, ly)])
    }

    /// Runs `recs` through `pattern` from `from` on (the book from the start).
    fn run_from(recs: &[Applied], pattern: &mut Pattern, from: usize, out: &mut Vec<Finding>) {
        let mut book = NaiveBook::new(TICK);
        for (i, r) in recs.iter().enumerate() {
            let change = book.apply(&r.e);
            if i >= from {
                pattern.on_record(&r.e, &change, &book, &mut |f| out.push(f));
            }
        }
    }

    fn of_rule(findings: &[Finding], rule: BookRule) -> Vec<Finding> {
        findings.iter().filter(|f| f.rule == rule).copied().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// One stream for both rules (different windows, thresholds and
        /// level bounds) alerts as each rule on its own, straight through
        /// and across a snapshot restored from two old shards; a rule the
        /// snapshot lacks (a reload turned it on) starts empty at the cut.
        #[test]
        fn a_shared_stream_alerts_as_each_rule_alone(
            steps in steps(),
            sp in params(),
            ly in params(),
            cut in any::<prop::sample::Index>(),
        ) {
            let tape = random_tape(&steps);
            let recs = &tape.applied;
            let mut whole = pair(sp, ly);
            let mut got = Vec::new();
            run_from(recs, &mut whole, 0, &mut got);
            prop_assert_eq!(of_rule(&got, BookRule::Spoofing), reference(recs, BookRule::Spoofing, sp));
            prop_assert_eq!(of_rule(&got, BookRule::Layering), reference(recs, BookRule::Layering, ly));
            prop_assert_eq!(whole.window.key_count(), whole.window.keys_map_len_with_entries());

            let cut = cut.index(recs.len() + 1);
            let restore = |before: &Pattern, after: &mut Pattern| {
                let mut snapshot = Vec::new();
                before.encode(&mut Writer::new(&mut snapshot));
                for parity in [0, 1] {
                    let mut r = Reader::new(&snapshot);
                    after.restore(&mut r, &|key| key.count_ones() % 2 == parity).unwrap();
                    r.finish().unwrap();
                }
                after.restored();
            };
            let mut before = pair(sp, ly);
            let mut resumed = Vec::new();
            run_from(&recs[..cut], &mut before, 0, &mut resumed);
            let mut after = pair(sp, ly);
            restore(&before, &mut after);
            run_from(recs, &mut after, cut, &mut resumed);
            prop_assert_eq!(of_rule(&resumed, BookRule::Spoofing), of_rule(&got, BookRule::Spoofing));
            prop_assert_eq!(of_rule(&resumed, BookRule::Layering), of_rule(&got, BookRule::Layering));

            // Spoofing alone before the cut; both after: layering starts empty.
            let mut alone = Pattern::new(BookRule::Spoofing, sp);
            let mut reloaded = Vec::new();
            run_from(&recs[..cut], &mut alone, 0, &mut reloaded);
            let mut after = pair(sp, ly);
            restore(&alone, &mut after);
            run_from(recs, &mut after, cut, &mut reloaded);
            prop_assert_eq!(of_rule(&reloaded, BookRule::Spoofing), of_rule(&got, BookRule::Spoofing));
            let mut fresh = Pattern::new(BookRule::Layering, ly);
            let mut want = Vec::new();
            run_from(recs, &mut fresh, cut, &mut want);
            prop_assert_eq!(of_rule(&reloaded, BookRule::Layering), want);
        }
    }

    #[test]
    fn a_damaged_snapshot_is_an_error() {
        let tape = random_tape(&[(8, 0, 0, 0, 0), (6, 0, 0, 0, 1), (4, 0, 0, 0, 1)]);
        let params = crate::detect::rules::spoofing::Params::default().0;
        let (_, pattern) = engine(&tape.applied, BookRule::Spoofing, params);
        let mut snapshot = Vec::new();
        pattern.encode(&mut Writer::new(&mut snapshot));
        assert!(snapshot.len() > 100);
        for cut in [1, 30, snapshot.len() - 1] {
            let mut fresh = Pattern::new(BookRule::Spoofing, params);
            let mut r = Reader::new(&snapshot[..cut]);
            assert!(fresh.restore(&mut r, &|_| true).is_err(), "cut at {cut}");
        }
        let mut twice = Pattern::new(BookRule::Spoofing, params);
        twice.restore(&mut Reader::new(&snapshot), &|_| true).unwrap();
        assert!(twice.restore(&mut Reader::new(&snapshot), &|_| true).is_err());
    }

    /// The property test is only as good as the streams that trigger: a
    /// fixed batch of them must produce alerts of every kind of level test.
    #[test]
    fn random_streams_trigger() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fired, mut total) = (0, 0);
        for _ in 0..200 {
            let steps = steps().new_tree(&mut runner).unwrap().current();
            let params = params().new_tree(&mut runner).unwrap().current();
            let tape = random_tape(&steps);
            let n = reference(&tape.applied, BookRule::Layering, params).len();
            fired += (n > 0) as usize;
            total += n;
        }
        assert!(fired >= 8 && total >= 12, "only {fired} streams fired ({total} findings)");
    }
}
