//! excessive-cancel (频繁撤单): per (group, instrument), the counts of new
//! orders and cancels inside a sliding event-time window, and the hot/cold
//! episode state that makes one alert per episode.
//!
//! Episodes: a key is hot while its counts cross the thresholds (evaluated
//! at its own records; a key whose window empties is below from the moment
//! it emptied). A rising edge opens a new episode, and alerts, unless the
//! key fell below less than `cooldown_ms` ago (default 60 s): then the
//! crossing belongs to the episode that already alerted (a market maker
//! whose cancel ratio hovers around the threshold all day is one episode,
//! not one alert per flicker). `cooldown_ms = 0`: every rising edge alerts.
//! The episode state of the keys that ever alerted (when they last fell
//! below, how many episodes) lives in a side table touched only at rising
//! and falling edges, never per record.
//!
//! A shard applies records in `(ts_ns, seq)` order, so the window entries of
//! all its keys form one FIFO sorted by time. Each record pushes one entry
//! and expires the entries that fell out of `(t - window, t]`: O(1)
//! amortised per record, and memory proportional to the records inside the
//! window. The FIFO is a power-of-two ring ([`Ring`]) addressed by absolute
//! position (entries ever pushed and popped), which a snapshot in progress
//! names its entries by; it doubles when full, off the common path.
//!
//! Each key's counts live in its bucket of an open-addressing table
//! ([`KeyTable`]), and window entries name the bucket, so a record costs
//! one probe (usually one cache line) and an expiry none. Most keys hold
//! only a record or two: a key whose window empties (and that cannot matter
//! any more) is idle, and its bucket is simply taken by the next new key
//! that probes past it. When idle and live buckets fill half the table it
//! is rebuilt from the live keys, sized to them, so it stays within a
//! constant factor of the keys with recent activity. The table it grows
//! into is filled a little with each new key beforehand: growing during a
//! burst (szse-peak grows to a million buckets in its first half second)
//! then costs one pass over the keys, not a 16 MB allocation and its page
//! faults on the shard (which put 14 ms stalls into alert latency).
//!
//! Near-misses (`near_miss_pct`, off by default): a key whose cancels and
//! cancel ratio reach that share of `min_cancels` and `ratio_pct` without
//! crossing. They have episodes of their own, kept like the alerts' (a
//! `NEAR` bit in the bucket, edges in a side table, the same cooldown, a
//! key whose window empties below from then when no single record can make
//! it near): one near-miss per near episode, at its first record, unless
//! that record crosses. With near-misses off none of this runs.

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::{MS, Problems};
use crate::detect::rule::{Emit, Kinds, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::episode::EpisodeCounts;
use crate::detect::state::ring::Ring;
use crate::event::{Event, Kind};
use crate::flat_map::prefetch;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;
use toml::Spanned;

#[derive(Clone, Copy, Default)]
struct Entry {
    ts_ns: i64,
    /// The key's bucket in the `KeyTable`.
    slot: u32,
    cancel: bool,
}

impl Ring<Entry> {
    /// Sorts the entries by time (stable), in place of the same positions.
    fn sort_by_time(&mut self) {
        let mut sorted: Vec<Entry> = self.positions().map(|pos| *self.at(pos)).collect();
        sorted.sort_by_key(|e| e.ts_ns);
        for (pos, entry) in self.positions().zip(sorted) {
            *self.at_mut(pos) = entry;
        }
    }
}

/// The hot flag, kept in the top bit of `Bucket::cancels`.
const HOT: u32 = 1 << 31;
/// The near flag (near-misses on: the key reaches `near_miss_pct` of the
/// thresholds, crossing included), the next bit.
const NEAR: u32 = 1 << 30;
/// The count bits of `Bucket::cancels`.
const COUNT: u32 = !(HOT | NEAR);

/// One key and its counts inside the window: 16 bytes, four to a line.
#[derive(Clone, Copy)]
struct Bucket {
    key: u64,
    new_orders: u32,
    /// Cancels in the window, with `HOT` set while the key is hot.
    cancels: u32,
}

impl Bucket {
    const EMPTY: Bucket = Bucket { key: EMPTY_KEY, new_orders: 0, cancels: 0 };

    /// No entries in the window and not hot: the same as a key never seen.
    #[inline]
    fn is_idle(&self) -> bool {
        self.new_orders == 0 && self.cancels == 0
    }

    #[inline]
    fn hot(&self) -> bool {
        self.cancels & HOT != 0
    }
}

/// Marks an empty bucket. Keys are `group << 32 | instrument` and instrument
/// ids stay far below `u32::MAX` (the validator's limit), so no key is this.
const EMPTY_KEY: u64 = u64::MAX;

/// The smallest table, in buckets.
const MIN_BUCKETS: usize = 1 << 10;

/// Linear probing over a power-of-two array of buckets. A bucket's index is
/// stable until the next rebuild, which rewrites every reference to it (the
/// window entries, the hot list).
struct KeyTable {
    buckets: Box<[Bucket]>,
    mask: usize,
    shift: u32,
    /// Buckets holding a key, idle ones included.
    used: usize,
    /// Buckets whose key has window entries or is hot.
    live: usize,
    /// The empty table the next growth moves into (twice this one's size),
    /// filled a few buckets per new key, so that growing costs one pass
    /// over the keys and no page faults or fill on the shard's hot path.
    next: Vec<Bucket>,
    /// The old-to-new index map of the last rebuild.
    remap: Vec<u32>,
}

/// Buckets of the next table filled per new key: the next growth is at
/// least a quarter of this table's size in new keys away, and the next table
/// is twice its size, so 16 a key has it ready after an eighth.
const PREPARE_PER_KEY: usize = 16;

impl KeyTable {
    fn with_buckets(n: usize) -> KeyTable {
        let n = n.max(MIN_BUCKETS).next_power_of_two();
        KeyTable {
            buckets: vec![Bucket::EMPTY; n].into_boxed_slice(),
            mask: n - 1,
            shift: 64 - n.trailing_zeros(),
            used: 0,
            live: 0,
            next: Vec::new(),
            remap: Vec::new(),
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Asks the CPU to bring `key`'s home bucket into cache.
    #[inline]
    fn prefetch_key(&self, key: u64) {
        self.prefetch_slot(self.home(key) as u32);
    }

    #[inline]
    fn prefetch_slot(&self, slot: u32) {
        if let Some(bucket) = self.buckets.get(slot as usize) {
            prefetch(bucket);
        }
    }

    /// The bucket of `key`, taking one for it if it has none: the first idle
    /// bucket on its probe path, else the empty one that ends the path.
    /// `None` when the table must be rebuilt first (nothing was changed).
    #[inline(always)]
    fn find_or_take(&mut self, key: u64) -> Option<u32> {
        debug_assert_ne!(key, EMPTY_KEY);
        let mut i = self.home(key);
        let mut idle = usize::MAX;
        loop {
            let bucket = &self.buckets[i];
            if bucket.key == key {
                return Some(i as u32);
            }
            if bucket.key == EMPTY_KEY {
                break;
            }
            if idle == usize::MAX && bucket.is_idle() {
                idle = i;
            }
            i = (i + 1) & self.mask;
        }
        if idle == usize::MAX {
            // Half full (idle keys included): rebuild before taking more.
            if 2 * (self.used + 1) > self.buckets.len() {
                return None;
            }
            self.used += 1;
            idle = i;
        }
        self.prepare_next();
        self.buckets[idle] = Bucket { key, new_orders: 0, cancels: 0 };
        Some(idle as u32)
    }

    /// Bucket `i` has gone idle. If no probe path runs through it (the
    /// next bucket is empty), it is emptied, and so are the idle buckets
    /// just before it, which that frees in turn; otherwise it stays idle
    /// until a new key takes it over or a rebuild drops it.
    #[inline]
    fn release(&mut self, mut i: usize) {
        if self.buckets[(i + 1) & self.mask].key != EMPTY_KEY {
            return;
        }
        loop {
            self.buckets[i] = Bucket::EMPTY;
            self.used -= 1;
            i = i.wrapping_sub(1) & self.mask;
            let before = &self.buckets[i];
            if before.key == EMPTY_KEY || !before.is_idle() {
                return;
            }
        }
    }

    /// Fills a few more buckets of the next (twice as large) table.
    #[inline(always)]
    fn prepare_next(&mut self) {
        if self.next.len() < 2 * self.buckets.len() {
            self.fill_next();
        }
    }

    #[cold]
    #[inline(never)]
    fn fill_next(&mut self) {
        let want = 2 * self.buckets.len();
        if self.next.capacity() < want {
            // Reserving maps the memory; the pages are touched as filled.
            self.next = Vec::with_capacity(want);
        }
        let fill = PREPARE_PER_KEY.min(want - self.next.len());
        self.next.extend(std::iter::repeat_n(Bucket::EMPTY, fill));
    }

    /// Re-inserts the live keys into a table sized for them (four buckets
    /// each, so the next rebuild is at least that many new keys away) and
    /// returns the old-to-new index map for the caller to rewrite its
    /// references with. Counts as growth when the table gets bigger.
    fn rebuild(&mut self) -> (&[u32], bool) {
        let n = (4 * self.live).max(MIN_BUCKETS).next_power_of_two();
        let buckets = if self.next.len() == n {
            std::mem::take(&mut self.next).into_boxed_slice()
        } else {
            vec![Bucket::EMPTY; n].into_boxed_slice()
        };
        let grew = n > self.buckets.len();
        let old = std::mem::replace(&mut self.buckets, buckets);
        self.mask = n - 1;
        self.shift = 64 - n.trailing_zeros();
        self.used = 0;
        self.remap.clear();
        self.remap.resize(old.len(), u32::MAX);
        for (index, bucket) in old.iter().enumerate() {
            if bucket.key == EMPTY_KEY || bucket.is_idle() {
                continue;
            }
            let mut i = self.home(bucket.key);
            while self.buckets[i].key != EMPTY_KEY {
                i = (i + 1) & self.mask;
            }
            self.buckets[i] = *bucket;
            self.used += 1;
            self.remap[index] = i as u32;
        }
        debug_assert_eq!(self.used, self.live);
        (&self.remap, grew)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub window_ns: i64,
    pub min_cancels: u32,
    pub ratio_pct: u32,
    /// How long a key must stay below before a crossing opens a new episode.
    pub cooldown_ns: i64,
    /// Near-misses: the share of each threshold (1-99) that makes one; none: off.
    pub near_miss_pct: Option<u32>,
}

impl Default for Params {
    fn default() -> Self {
        Params { window_ns: 10_000 * MS, min_cancels: 20, ratio_pct: 90, cooldown_ns: 60_000 * MS, near_miss_pct: None }
    }
}

impl Params {
    /// The fewest cancels that are near (`pct`% of `min_cancels`, rounded up).
    fn near_cancels(&self, pct: u32) -> u64 {
        (pct as u64 * self.min_cancels as u64).div_ceil(100)
    }
}

/// The near-miss episodes of a key that has been near: as `Past`, and
/// whether it is near now (its bucket's `NEAR`, kept here for checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NearPast {
    below_since: i64,
    count: u32,
    near: bool,
}

/// The episode state of a key that has alerted: when it last fell below
/// (valid while it is not hot) and its episodes so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Past {
    below_since: i64,
    count: u32,
}

/// Keys whose episodes are remembered, per shard. Past it, a key that was
/// never hot before is refused (counted): each of its rising edges is an
/// episode of its own, as with `cooldown_ms = 0`, numbered 1.
pub const MAX_EPISODE_KEYS: usize = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    window_ms: Option<Spanned<i64>>,
    min_cancels: Option<Spanned<i64>>,
    ratio_pct: Option<Spanned<i64>>,
    cooldown_ms: Option<Spanned<i64>>,
    near_miss_pct: Option<Spanned<i64>>,
}

impl Rule for ExcessiveCancel {
    const ID: u16 = 1;
    const NAME: &'static str = "excessive-cancel";
    const TABLE: &'static str = "excessive_cancel";
    /// 2: the episodes of the keys that alerted follow the window entries.
    const VERSION: u16 = 2;
    const KINDS: Kinds = Kinds::NEW.or(Kinds::CANCEL);
    type Raw = Raw;
    type Params = Params;
    type Image = Image;

    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Params> {
        if raw.enabled == Some(false) {
            return None;
        }
        let d = Params::default();
        let window_ms = p.int(raw.window_ms, "window_ms", 1..=86_400_000, d.window_ns / MS);
        let min_cancels = p.int(raw.min_cancels, "min_cancels", 1..=1_000_000, d.min_cancels as i64);
        let ratio_pct = p.int(raw.ratio_pct, "ratio_pct", 0..=100_000, d.ratio_pct as i64);
        let cooldown_ms = p.int(raw.cooldown_ms, "cooldown_ms", 0..=86_400_000, d.cooldown_ns / MS);
        let near_miss_pct = p.near_miss_pct(raw.near_miss_pct);
        Some(Params {
            window_ns: window_ms * MS,
            min_cancels: min_cancels as u32,
            ratio_pct: ratio_pct as u32,
            cooldown_ns: cooldown_ms * MS,
            near_miss_pct,
        })
    }

    fn encode_params(params: &Params, w: &mut Writer<'_>) {
        w.i64(params.window_ns);
        w.u32(params.min_cancels);
        w.u32(params.ratio_pct);
        // Added after the first three: a cooldown of 0 (the old behaviour)
        // encodes as before, so its checkpoints' identity is unchanged.
        if params.cooldown_ns != 0 {
            w.i64(params.cooldown_ns);
        }
        // Only when set: the parameter version of a rule without it is
        // unchanged (a 0 cooldown first, so the layout stays unambiguous).
        if let Some(pct) = params.near_miss_pct {
            if params.cooldown_ns == 0 {
                w.i64(0);
            }
            w.u32(pct);
        }
    }

    fn show(p: &Params, out: &mut String) {
        out.push_str(&format!(
            "window_ms = {}\nmin_cancels = {}\nratio_pct = {}\ncooldown_ms = {}\n",
            p.window_ns / MS,
            p.min_cancels,
            p.ratio_pct,
            p.cooldown_ns / MS
        ));
        crate::config::show_near_miss_pct(p.near_miss_pct, out);
    }

    // Thresholds are evaluated at the key's own records; expiry uses only
    // the window and whether min_cancels >= 2, which every tier shares.
    const TIERS: bool = true;

    fn set_params(&mut self, params: &Params) {
        self.params = *params;
    }

    fn tier_check(base: &Params, tier: &Params) -> Option<&'static str> {
        if base.window_ns != tier.window_ns {
            Some("window_ms must be the base table's (the window is one FIFO for every instrument)")
        } else if (base.min_cancels >= 2) != (tier.min_cancels >= 2) {
            Some(
                "min_cancels must be at least 2 in every tier or in none (a key whose window empties goes idle only then)",
            )
        } else if base.near_miss_pct.is_some() != tier.near_miss_pct.is_some() {
            Some(
                "near_miss_pct: set it in the base table (a tier may change its value, not turn near-misses on or off)",
            )
        } else if let (Some(b), Some(t)) = (base.near_miss_pct, tier.near_miss_pct)
            && (base.near_cancels(b) >= 2) != (tier.near_cancels(t) >= 2)
        {
            Some(
                "near_miss_pct of min_cancels must be at least 2 cancels in every tier or in none (a near key whose window empties goes idle only then)",
            )
        } else {
            None
        }
    }

    fn new(params: &Params, sizing: &Sizing) -> Self {
        ExcessiveCancel::new(*params, sizing.window_capacity)
    }

    #[inline(always)]
    fn prefetch(&self, event: &Event) {
        ExcessiveCancel::prefetch(self, event);
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, _seen: &Seen<'_>, out: &mut impl Emit) {
        if let Some(alert) = self.apply(event) {
            out.alert(alert, &[]);
        }
    }

    fn write_evidence(evidence: &Evidence, _list: &[u64], json: &mut EvidenceJson<'_>) {
        let [start, end, new_orders, cancels, thresholds, window] = evidence.0;
        let (window_ms, episode) = (window & 0xffff_ffff, window >> 32);
        json.i64("window_start_ns", start as i64);
        json.i64("window_end_ns", end as i64);
        json.u64("new_orders", new_orders);
        json.u64("cancels", cancels);
        // The measured values next to the thresholds they crossed.
        json.pct("cancel_ratio_pct", cancels, new_orders);
        json.u64("min_cancels", thresholds & 0xffff_ffff);
        json.u64("min_ratio_pct", thresholds >> 32 & 0xff_ffff);
        json.u64("window_ms", window_ms);
        if thresholds >> 56 != 0 {
            json.u64("near_miss_pct", thresholds >> 56);
        } else {
            json.u64("episode", episode);
        }
    }

    fn stats(&self) -> RuleStats {
        ExcessiveCancel::stats(self)
    }

    fn episodes(&self) -> Option<EpisodeCounts> {
        Some(self.counts)
    }

    fn prepare_image(image: &mut Image, keys: usize, entries: usize) {
        image.prepare(keys, entries);
    }

    fn begin_snapshot(&mut self, image: Image) {
        ExcessiveCancel::begin_snapshot(self, image);
    }

    fn copy_slice(&mut self, max: usize) -> Option<Image> {
        if ExcessiveCancel::copy_slice(self, max) { self.take_snapshot() } else { None }
    }

    fn encode_image(image: &Image, w: &mut Writer<'_>) {
        image.encode(w);
    }

    fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        ExcessiveCancel::restore(self, r, keep)
    }

    fn restored(&mut self) {
        ExcessiveCancel::restored(self);
    }

    /// Active keys (the distinct keys among the hot keys and the window
    /// entries) and window entries.
    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        let mut r = Reader::new(section);
        let mut keys = rustc_hash::FxHashSet::default();
        for _ in 0..r.count(8)? {
            keys.insert(r.u64()?);
        }
        let entries = r.count(ENTRY_BYTES)?;
        for _ in 0..entries {
            r.i64()?;
            keys.insert(r.u64()?);
            r.u8()?;
        }
        let alerted = r.count(PAST_BYTES)?;
        r.take(alerted * PAST_BYTES)?;
        if !r.is_empty() {
            let near = r.count(NEAR_BYTES)?;
            r.take(near * NEAR_BYTES)?;
        }
        r.finish()?;
        Ok(vec![
            ("active keys", keys.len() as u64),
            ("window entries", entries as u64),
            ("keys that alerted", alerted as u64),
        ])
    }
}

pub struct ExcessiveCancel {
    params: Params,
    table: KeyTable,
    /// The window's entries, oldest first (`window.head`: entries ever
    /// popped, the absolute position of its front).
    window: Ring<Entry>,
    /// The hot keys and their buckets (parallel, unordered), kept on every
    /// hot/cold transition, so a barrier copies them without a scan.
    hot_keys: Vec<u64>,
    hot_slots: Vec<u32>,
    /// Each hot bucket's index in `hot_keys` / `hot_slots`.
    hot_pos: FxHashMap<u32, u32>,
    /// The episodes of the keys that alerted (rising and falling edges only).
    past: FxHashMap<u64, Past>,
    /// Near-misses on: the near episodes of the keys that have been near
    /// (near edges only; empty when off).
    near_past: FxHashMap<u64, NearPast>,
    /// Keys refused by `past` (`MAX_EPISODE_KEYS`).
    refused: u64,
    pub counts: EpisodeCounts,
    /// The snapshot in progress (see `begin_snapshot`): the absolute window
    /// positions `[snap_next, snap_end)` not yet copied into `snap`. Equal
    /// when no copy is pending.
    snap_next: u64,
    snap_end: u64,
    snap: Option<Image>,
    grew: u64,
}

impl ExcessiveCancel {
    pub fn new(params: Params, window_capacity: usize) -> ExcessiveCancel {
        let key_capacity = (window_capacity / 4).max(16);
        ExcessiveCancel {
            params,
            table: KeyTable::with_buckets(4 * key_capacity),
            window: Ring::with_capacity(window_capacity),
            hot_keys: Vec::with_capacity(key_capacity),
            hot_slots: Vec::with_capacity(key_capacity),
            hot_pos: FxHashMap::with_capacity_and_hasher(key_capacity, Default::default()),
            past: FxHashMap::with_capacity_and_hasher(key_capacity.min(1 << 12), Default::default()),
            near_past: FxHashMap::with_capacity_and_hasher(
                if params.near_miss_pct.is_some() { key_capacity.min(1 << 12) } else { 0 },
                Default::default(),
            ),
            refused: 0,
            counts: EpisodeCounts::default(),
            snap_next: 0,
            snap_end: 0,
            snap: None,
            grew: 0,
        }
    }

    /// Brings the bucket a record will need into cache ahead of `apply`,
    /// and the bucket of a window entry that is about to expire (about one
    /// expires per record, and its key was last touched a window ago).
    #[inline]
    pub fn prefetch(&self, event: &Event) {
        self.table.prefetch_key(key_of(event));
        if let Some(entry) = self.window.get(PREFETCH_EXPIRING) {
            self.table.prefetch_slot(entry.slot);
        }
    }

    #[inline]
    pub fn apply(&mut self, event: &Event) -> Option<Alert> {
        // One predictable branch a record: with near-misses off the near
        // flag's masks and the expiry's second look are compiled out.
        if self.params.near_miss_pct.is_none() { self.apply_as::<false>(event) } else { self.apply_as::<true>(event) }
    }

    /// `apply`, compiled once with near-misses on (`NEAR_ON`) and once off.
    #[inline(always)]
    fn apply_as<const NEAR_ON: bool>(&mut self, event: &Event) -> Option<Alert> {
        let cancel = match event.kind {
            Kind::New => false,
            Kind::Cancel => true,
            Kind::Trade => return None,
        };
        let t = event.ts_ns;
        let horizon = t.saturating_sub(self.params.window_ns);
        self.expire::<NEAR_ON>(horizon);

        let key = key_of(event);
        let slot = self.slot(key);
        if self.window.is_full() {
            self.grew += 1;
        }
        self.window.push_back(Entry { ts_ns: t, slot, cancel });
        let bucket = &mut self.table.buckets[slot as usize];
        self.table.live += bucket.is_idle() as usize;
        if cancel {
            bucket.cancels += 1;
        } else {
            bucket.new_orders += 1;
        }
        let count = if NEAR_ON { COUNT } else { !HOT };
        let (n, c) = (bucket.new_orders as u64, (bucket.cancels & count) as u64);
        let hot = c >= self.params.min_cancels as u64 && 100 * c >= self.params.ratio_pct as u64 * n;
        let was_hot = bucket.hot();
        // Near-misses on: the near edges, before the hot ones (a near-miss
        // never crosses, so at most one of the two alerts). Only its pct
        // travels to the returns: the alert is built in the return slot,
        // not moved into it.
        let near_miss = match self.params.near_miss_pct {
            Some(pct) if NEAR_ON => self.near_edge(slot, event, pct, (n, c), hot),
            _ => None,
        };
        if hot == was_hot {
            self.counts.suppressed += hot as u64;
            if !NEAR_ON {
                return None;
            }
            return near_miss.map(|pct| self.alert(event, horizon, (n, c), 0, pct));
        }
        self.table.buckets[slot as usize].cancels ^= HOT;
        if !hot {
            self.hot_remove(slot);
            self.fell_below(key, t);
            return near_miss.map(|pct| self.alert(event, horizon, (n, c), 0, pct));
        }
        self.hot_add(slot);
        let episode = self.rose(key, t)?;
        Some(self.alert(event, horizon, (n, c), episode, 0))
    }

    /// An alert (`near_miss_pct` 0) or a near-miss of `event`'s key with
    /// counts `(n, c)` in `(horizon, t]`.
    #[inline]
    fn alert(&self, event: &Event, horizon: i64, (n, c): (u64, u64), episode: u32, near_miss_pct: u32) -> Alert {
        let p = &self.params;
        Alert {
            rule: Self::ID,
            seq: event.seq,
            ts_ns: event.ts_ns,
            group: event.group,
            account: event.account,
            instrument: event.instrument,
            // (window_start_ns, window_end_ns]: the counts' window.
            evidence: Evidence([
                horizon as u64,
                event.ts_ns as u64,
                n,
                c,
                p.min_cancels as u64 | (p.ratio_pct as u64) << 32 | (near_miss_pct as u64) << 56,
                (p.window_ns / MS) as u64 | (episode as u64) << 32,
            ]),
            near_miss: near_miss_pct > 0,
            ..Alert::default()
        }
    }

    /// Near-misses on: the key in `slot` has counts `(n, c)` after `event`;
    /// a rising near edge outside the cooldown of its last near episode
    /// that does not cross is a near-miss (`Some(pct)`).
    #[inline]
    fn near_edge(&mut self, slot: u32, event: &Event, pct: u32, (n, c): (u64, u64), hot: bool) -> Option<u32> {
        let p = &self.params;
        let near =
            hot || (c >= p.near_cancels(pct) && 100 * 100 * c as u128 >= pct as u128 * p.ratio_pct as u128 * n as u128);
        let bucket = &mut self.table.buckets[slot as usize];
        if near == (bucket.cancels & NEAR != 0) {
            return None;
        }
        bucket.cancels ^= NEAR;
        let (key, t) = (key_of(event), event.ts_ns);
        if !near {
            self.near_fell_below(key, t);
            return None;
        }
        let (len, capacity) = (self.near_past.len(), self.near_past.capacity());
        let past = match self.near_past.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            // Past the limit each rising edge is an episode (as for alerts).
            std::collections::hash_map::Entry::Vacant(_) if len >= MAX_EPISODE_KEYS => {
                self.refused += 1;
                return (!hot).then_some(pct);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.grew += (len == capacity) as u64;
                e.insert(NearPast::default())
            }
        };
        past.near = true;
        if past.count > 0 && t - past.below_since < self.params.cooldown_ns {
            return None;
        }
        past.count += 1;
        (!hot).then_some(pct)
    }

    /// A falling near edge of `key` at `t`.
    #[inline]
    fn near_fell_below(&mut self, key: u64, t: i64) {
        if let Some(past) = self.near_past.get_mut(&key) {
            past.below_since = t;
            past.near = false;
        }
    }

    /// A rising edge of `key` at `t`: the new episode's number, or `None`
    /// when it is inside the cooldown of the key's last episode.
    #[inline]
    fn rose(&mut self, key: u64, t: i64) -> Option<u32> {
        let cooldown_ns = self.params.cooldown_ns;
        let (len, capacity) = (self.past.len(), self.past.capacity());
        let past = match self.past.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if len >= MAX_EPISODE_KEYS => {
                self.refused += 1;
                self.counts.episodes += 1;
                return Some(1);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.grew += (len == capacity) as u64;
                e.insert(Past::default())
            }
        };
        if past.count > 0 && t - past.below_since < cooldown_ns {
            self.counts.suppressed += 1;
            return None;
        }
        past.count += 1;
        self.counts.episodes += 1;
        Some(past.count)
    }

    /// A falling edge of `key` at `t` (a key that rose has its `Past`,
    /// unless it was refused).
    #[inline]
    fn fell_below(&mut self, key: u64, t: i64) {
        if let Some(past) = self.past.get_mut(&key) {
            past.below_since = t;
        }
    }

    /// Drops the entries at or before `horizon`. An entry that a snapshot in
    /// progress has not copied yet is copied now, before it goes.
    #[inline(always)]
    fn expire<const NEAR_ON: bool>(&mut self, horizon: i64) {
        while let Some(front) = self.window.front() {
            if front.ts_ns > horizon {
                break;
            }
            let entry = *front;
            // Usually false at the first test: the front passes a finished
            // snapshot's `snap_next` once.
            if self.window.head == self.snap_next && self.snap_next != self.snap_end {
                self.save_expiring(entry);
            }
            self.window.pop_front();
            let Entry { slot, cancel, .. } = entry;
            let bucket = &mut self.table.buckets[slot as usize];
            if cancel {
                bucket.cancels -= 1;
            } else {
                bucket.new_orders -= 1;
            }
            if bucket.new_orders != 0 {
                continue;
            }
            // The window holds only cancels of the key, or none.
            if bucket.cancels != 0 {
                // With an empty window the next record alone makes c <= 1;
                // when min_cancels >= 2 it cannot be hot, so whether the key
                // was hot no longer matters and the key can go idle.
                let flags = if NEAR_ON { bucket.cancels & !NEAR } else { bucket.cancels };
                if flags == HOT && self.params.min_cancels >= 2 {
                    self.hot_emptied(slot, entry.ts_ns + self.params.window_ns);
                }
                // Near-misses on, the same for the near flag (when no single
                // record can make the key near); the hot flag went first.
                if NEAR_ON && self.table.buckets[slot as usize].cancels == NEAR {
                    self.near_emptied(slot, entry.ts_ns + self.params.window_ns);
                }
                if !self.table.buckets[slot as usize].is_idle() {
                    continue;
                }
            }
            self.table.live -= 1;
            self.table.release(slot as usize);
        }
    }

    /// A hot key's window emptied at `t` (and min_cancels >= 2): it goes
    /// below from then (a time that does not depend on which record expired
    /// it), and idle unless near.
    #[cold]
    #[inline(never)]
    fn hot_emptied(&mut self, slot: u32, t: i64) {
        let bucket = &mut self.table.buckets[slot as usize];
        bucket.cancels &= NEAR;
        let key = bucket.key;
        self.hot_remove(slot);
        self.fell_below(key, t);
    }

    /// A near key's window emptied at `t`: it goes below (and idle, unless
    /// hot) when one record cannot make it near.
    #[cold]
    fn near_emptied(&mut self, slot: u32, t: i64) {
        let Some(pct) = self.params.near_miss_pct else { return };
        if self.params.near_cancels(pct) < 2 {
            return;
        }
        let bucket = &mut self.table.buckets[slot as usize];
        bucket.cancels &= !NEAR;
        let key = bucket.key;
        self.near_fell_below(key, t);
    }

    /// The front entry, about to expire, is the next one the snapshot in
    /// progress must copy: copy it now (O(1)).
    #[cold]
    fn save_expiring(&mut self, entry: Entry) {
        let key = self.table.buckets[entry.slot as usize].key;
        if let Some(image) = self.snap.as_mut() {
            image.window.push(ImageEntry { ts_ns: entry.ts_ns, key, cancel: entry.cancel });
        }
        self.snap_next += 1;
    }

    #[inline]
    fn hot_add(&mut self, slot: u32) {
        if self.hot_keys.len() == self.hot_keys.capacity() || self.hot_pos.len() == self.hot_pos.capacity() {
            self.grew += 1;
        }
        self.hot_pos.insert(slot, self.hot_keys.len() as u32);
        self.hot_keys.push(self.table.buckets[slot as usize].key);
        self.hot_slots.push(slot);
    }

    #[inline]
    fn hot_remove(&mut self, slot: u32) {
        let pos = self.hot_pos.remove(&slot).expect("a hot key has a position") as usize;
        self.hot_keys.swap_remove(pos);
        self.hot_slots.swap_remove(pos);
        if let Some(&moved) = self.hot_slots.get(pos) {
            self.hot_pos.insert(moved, pos as u32);
        }
    }

    /// The bucket of `key`, taken for it if new (idle keys are reused in
    /// place). A key never moves while it has entries in the window, except
    /// in a rebuild, which rewrites the entries too.
    #[inline(always)]
    fn slot(&mut self, key: u64) -> u32 {
        match self.table.find_or_take(key) {
            Some(slot) => slot,
            None => {
                self.rebuild();
                self.table.find_or_take(key).expect("a rebuilt table is at most a quarter full")
            }
        }
    }

    #[cold]
    fn rebuild(&mut self) {
        let (remap, grew) = self.table.rebuild();
        self.window.for_each_mut(|entry| entry.slot = remap[entry.slot as usize]);
        for slot in self.hot_slots.iter_mut() {
            *slot = remap[*slot as usize];
        }
        self.hot_pos.clear();
        self.hot_pos.extend(self.hot_slots.iter().enumerate().map(|(pos, &slot)| (slot, pos as u32)));
        self.grew += grew as u64;
    }

    /// (hot keys, window entries): what a checkpoint image must hold.
    pub fn footprint(&self) -> (usize, usize) {
        (self.hot_keys.len(), self.window.len())
    }

    pub fn stats(&self) -> RuleStats {
        RuleStats {
            window_entries: self.window.len(),
            active_keys: self.table.live,
            hot_keys: self.hot_keys.len() + self.past.len(),
            grew: self.grew,
            keys_refused: self.refused,
        }
    }

    /// Keys refused by the episode table (`MAX_EPISODE_KEYS`).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

/// Which window entry (from the front) `prefetch` fetches the bucket of.
const PREFETCH_EXPIRING: usize = 8;

#[inline]
fn key_of(event: &Event) -> u64 {
    (event.group as u64) << 32 | event.instrument as u64
}

#[derive(Clone, Copy)]
struct ImageEntry {
    ts_ns: i64,
    key: u64,
    cancel: bool,
}

/// The window state as of a barrier, copied a slice at a time (see
/// `begin_snapshot`): the hot keys, and every window entry with its key,
/// oldest first. The per-key counts follow from the entries.
#[derive(Default)]
pub struct Image {
    hot: Vec<u64>,
    window: Vec<ImageEntry>,
    /// The episodes of the keys that alerted, copied whole at the barrier.
    past: Vec<(u64, Past)>,
    /// Near-misses on (`near_on`): the near episodes, copied whole at the
    /// barrier (written after `past` only then, so a rule without them
    /// reads as before). Grown by `prepare` like `past`, on or off, so the
    /// first snapshot with near-misses on does not allocate on the shard.
    near: Vec<(u64, NearPast)>,
    near_on: bool,
}

impl Image {
    /// Grows each part to twice what it holds now (or `keys` hot keys /
    /// `entries`), touching the memory, so the next copy neither allocates
    /// nor takes page faults on the shard. Called when the image is made and
    /// by the checkpoint writer after encoding it.
    pub fn prepare(&mut self, keys: usize, entries: usize) {
        fn grow<T: Copy>(v: &mut Vec<T>, want: usize, fill: T) {
            if v.capacity() < want {
                v.clear();
                v.resize(want, fill);
            }
            v.clear();
        }
        let hot_want = keys.max(2 * self.hot.len());
        let entry_want = entries.max(2 * self.window.len());
        grow(&mut self.hot, hot_want, 0);
        grow(&mut self.window, entry_want, ImageEntry { ts_ns: 0, key: 0, cancel: false });
        let past_want = keys.max(2 * self.past.len());
        grow(&mut self.past, past_want, (0, Past::default()));
        let near_want = keys.max(2 * self.near.len());
        grow(&mut self.near, near_want, (0, NearPast::default()));
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.out.reserve(16 + self.hot.len() * 8 + self.window.len() * ENTRY_BYTES);
        w.u64(self.hot.len() as u64);
        for &key in &self.hot {
            w.u64(key);
        }
        w.u64(self.window.len() as u64);
        for entry in &self.window {
            let mut record = [0u8; ENTRY_BYTES];
            record[0..8].copy_from_slice(&entry.ts_ns.to_le_bytes());
            record[8..16].copy_from_slice(&entry.key.to_le_bytes());
            record[16] = entry.cancel as u8;
            w.out.extend_from_slice(&record);
        }
        w.u64(self.past.len() as u64);
        for (key, past) in &self.past {
            w.u64(*key);
            w.i64(past.below_since);
            w.u32(past.count);
        }
        if self.near_on {
            w.u64(self.near.len() as u64);
            for (key, past) in &self.near {
                w.u64(*key);
                w.i64(past.below_since);
                w.u32(past.count);
                w.u8(past.near as u8);
            }
        }
    }
}

/// Bytes of one window entry in a snapshot: `(ts_ns, key, cancel)`.
pub const ENTRY_BYTES: usize = 17;
/// Bytes of one key's episodes: `(key, below_since, count)`.
const PAST_BYTES: usize = 20;
/// Bytes of one key's near episodes: `(key, below_since, count, near)`.
const NEAR_BYTES: usize = 21;

/// Checkpoint hooks. Layout: the hot keys (u64 each, any order), then the
/// window entries `(ts_ns, key, cancel)` oldest first, then the episodes
/// of the keys that alerted `(key, below_since, count)`, sorted by key,
/// then, near-misses on only, the near episodes `(key, below_since, count,
/// near)` sorted by key (a near key's bucket is restored with `NEAR`). A
/// key is in the window part exactly when it has window entries or is hot:
/// an idle key without episodes is the same as a key never seen.
///
/// A snapshot is cut at a barrier in O(hot keys) (`begin_snapshot`) and
/// copied between batches a slice at a time (`copy_slice`). It stays the
/// state as of the barrier: the entries in the window then are immutable
/// until they expire, an expiring entry not yet copied is copied first
/// (`expire`), and a slot is not reused while it has entries in the window,
/// so the key read when an entry is copied is its key at the barrier.
impl ExcessiveCancel {
    /// Cuts a snapshot at a barrier: copies the hot keys (a memcpy) and
    /// notes which window positions are to be copied. `image` is reused
    /// (the writer grows it ahead of the state).
    pub fn begin_snapshot(&mut self, mut image: Image) {
        assert!(self.snap.is_none(), "a snapshot is already in progress");
        image.hot.clear();
        image.window.clear();
        image.hot.extend_from_slice(&self.hot_keys);
        // O(keys that alerted): with a cooldown, a few per key a session.
        image.past.clear();
        image.past.extend(self.past.iter().map(|(&k, &p)| (k, p)));
        image.past.sort_unstable_by_key(|&(k, _)| k);
        // Near-misses on: O(keys that have been near), like `past`.
        image.near.clear();
        image.near_on = self.params.near_miss_pct.is_some();
        if image.near_on {
            image.near.extend(self.near_past.iter().map(|(&k, &p)| (k, p)));
            image.near.sort_unstable_by_key(|&(k, _)| k);
        }
        self.snap_next = self.window.head;
        self.snap_end = self.window.tail;
        self.snap = Some(image);
    }

    /// Copies up to `max` more entries of the snapshot in progress; true
    /// when it is complete (or none is in progress).
    pub fn copy_slice(&mut self, max: usize) -> bool {
        if self.snap_next == self.snap_end {
            return true;
        }
        let Some(image) = self.snap.as_mut() else { return true };
        // Entries before `snap_next` that were still in the window have been
        // copied; expiry copies the entry at `snap_next` before popping it,
        // so `snap_next` never falls behind the front.
        debug_assert!(self.snap_next >= self.window.head);
        let to = self.snap_end.min(self.snap_next.saturating_add(max as u64));
        let buckets = &self.table.buckets;
        let window = &self.window;
        image.window.extend((self.snap_next..to).map(|pos| {
            let e = window.at(pos);
            ImageEntry { ts_ns: e.ts_ns, key: buckets[e.slot as usize].key, cancel: e.cancel }
        }));
        self.snap_next = to;
        self.snap_next == self.snap_end
    }

    /// The snapshot, once `copy_slice` has said it is complete.
    pub fn take_snapshot(&mut self) -> Option<Image> {
        if self.snap_next != self.snap_end {
            return None;
        }
        self.snap.take()
    }

    /// Adds the keys of one snapshot for which `keep(key)` holds (a shard
    /// keeps its own instruments, so state moves when the shard count
    /// changes). The counts are rebuilt from the entries. Call `restored`
    /// after the last snapshot.
    pub fn restore(&mut self, r: &mut Reader<'_>, keep: impl Fn(u64) -> bool) -> Result<(), DecodeError> {
        // Keys from earlier snapshots: a key found among them was in two.
        let earlier: FxHashSet<u64> = self.table.buckets.iter().map(|b| b.key).filter(|&k| k != EMPTY_KEY).collect();
        let hot = r.count(8)?;
        for _ in 0..hot {
            let key = r.u64()?;
            if !keep(key) {
                continue;
            }
            let slot = self.restore_slot(key, &earlier)?;
            let bucket = &mut self.table.buckets[slot as usize];
            if bucket.hot() {
                return Err(DecodeError(format!("hot key {key:#x} twice in a snapshot")));
            }
            self.table.live += bucket.is_idle() as usize;
            bucket.cancels |= HOT;
            self.hot_add(slot);
        }
        let entries = r.count(ENTRY_BYTES)?;
        let mut last_ts = i64::MIN;
        for _ in 0..entries {
            let (ts_ns, key, cancel) = (r.i64()?, r.u64()?, r.u8()?);
            if cancel > 1 || ts_ns < last_ts {
                return Err(DecodeError(format!("window entry ({ts_ns}, {key:#x}, {cancel}) out of order or bad")));
            }
            last_ts = ts_ns;
            if !keep(key) {
                continue;
            }
            let slot = self.restore_slot(key, &earlier)?;
            let bucket = &mut self.table.buckets[slot as usize];
            self.table.live += bucket.is_idle() as usize;
            let cancel = cancel != 0;
            if cancel {
                bucket.cancels += 1;
            } else {
                bucket.new_orders += 1;
            }
            self.window.push_back(Entry { ts_ns, slot, cancel });
        }
        for _ in 0..r.count(PAST_BYTES)? {
            let (key, below_since, count) = (r.u64()?, r.i64()?, r.u32()?);
            if !keep(key) {
                continue;
            }
            if self.past.insert(key, Past { below_since, count }).is_some() {
                return Err(DecodeError(format!("the episodes of key {key:#x} twice in the snapshots")));
            }
        }
        if r.is_empty() {
            return Ok(());
        }
        for _ in 0..r.count(NEAR_BYTES)? {
            let (key, below_since, count, near) = (r.u64()?, r.i64()?, r.u32()?, r.u8()?);
            if near > 1 {
                return Err(DecodeError(format!("near episodes of key {key:#x}: bad flag {near}")));
            }
            if !keep(key) {
                continue;
            }
            let near = near != 0;
            if self.near_past.insert(key, NearPast { below_since, count, near }).is_some() {
                return Err(DecodeError(format!("the near episodes of key {key:#x} twice in the snapshots")));
            }
            if near {
                let slot = self.restore_slot(key, &earlier)?;
                let bucket = &mut self.table.buckets[slot as usize];
                self.table.live += bucket.is_idle() as usize;
                bucket.cancels |= NEAR;
            }
        }
        Ok(())
    }

    fn restore_slot(&mut self, key: u64, earlier: &FxHashSet<u64>) -> Result<u32, DecodeError> {
        if key == EMPTY_KEY {
            return Err(DecodeError(format!("key {key:#x} is not a valid key")));
        }
        if earlier.contains(&key) {
            return Err(DecodeError(format!("key {key:#x} in two snapshots")));
        }
        Ok(self.slot(key))
    }

    /// After the last `restore`: entries merged from several snapshots are
    /// put back into one time-ordered FIFO (a stable sort: each snapshot's
    /// own order is kept; expiry only compares times, so the order among
    /// equal times of different snapshots does not matter).
    pub fn restored(&mut self) {
        self.window.sort_by_time();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn rec(seq: u64, ts_ns: i64, kind: Kind, group: u32) -> Event {
        Event { seq, ts_ns, kind, group, account: group, instrument: 1, ..Event::default() }
    }

    #[test]
    fn the_ring_keeps_positions_across_wraps_and_growth() {
        let entry = |ts_ns: i64| Entry { ts_ns, slot: ts_ns as u32, cancel: ts_ns % 3 == 0 };
        let mut ring = Ring::with_capacity(3);
        assert_eq!(ring.entries.len(), 16);
        let mut model = std::collections::VecDeque::new();
        // Pushes two for each pop, so the front wraps before each doubling.
        for t in 0..200 {
            ring.push_back(entry(t));
            model.push_back(entry(t));
            if t % 2 == 0 {
                ring.pop_front();
                model.pop_front();
            }
            assert_eq!(ring.len(), model.len());
            assert_eq!(ring.head + ring.len() as u64, ring.tail);
            for (i, e) in model.iter().enumerate() {
                assert_eq!(ring.get(i).map(|r| (r.ts_ns, r.slot, r.cancel)), Some((e.ts_ns, e.slot, e.cancel)));
                assert_eq!(ring.at(ring.head + i as u64).ts_ns, e.ts_ns);
            }
            assert!(ring.get(model.len()).is_none());
            assert_eq!(ring.front().map(|e| e.ts_ns), model.front().map(|e| e.ts_ns));
        }
        assert_eq!((ring.head, ring.tail, ring.entries.len()), (100, 200, 128));
        // Sorting keeps the positions and orders equal times as they were.
        ring.for_each_mut(|e| e.ts_ns = -(e.ts_ns / 4));
        ring.sort_by_time();
        let times: Vec<(i64, u32)> = (ring.head..ring.tail).map(|p| (ring.at(p).ts_ns, ring.at(p).slot)).collect();
        let mut want: Vec<(i64, u32)> = model.iter().map(|e| (-(e.ts_ns / 4), e.slot)).collect();
        want.sort_by_key(|&(t, _)| t);
        assert_eq!(times, want);
    }

    /// (seq, new orders, cancels, episode) of each alert.
    fn run(params: Params, records: &[Event]) -> Vec<(u64, u32, u32, u32)> {
        let mut rule = ExcessiveCancel::new(params, 4);
        records
            .iter()
            .filter_map(|e| rule.apply(e))
            .map(|a| match a.evidence {
                Evidence([_, _, new_orders, cancels, _, window]) => {
                    (a.seq, new_orders as u32, cancels as u32, (window >> 32) as u32)
                }
            })
            .collect()
    }

    #[test]
    fn one_alert_per_episode() {
        let params = Params { window_ns: 10 * SEC, min_cancels: 3, ratio_pct: 90, cooldown_ns: 0, near_miss_pct: None };
        let mut records = Vec::new();
        for i in 0..3 {
            records.push(rec(records.len() as u64, i * SEC, Kind::New, 7));
        }
        for i in 0..5 {
            records.push(rec(records.len() as u64, (3 + i) * SEC, Kind::Cancel, 7));
        }
        // n = 3, c = 3 at seq 5: hot, one alert; later cancels stay in the episode.
        assert_eq!(run(params, &records), vec![(5, 3, 3, 1)]);
    }

    #[test]
    fn window_is_half_open_and_episodes_restart() {
        let params =
            Params { window_ns: 10 * SEC, min_cancels: 2, ratio_pct: 100, cooldown_ns: 0, near_miss_pct: None };
        let records = [
            rec(1, 0, Kind::Cancel, 1),
            rec(2, SEC, Kind::Cancel, 1),  // c = 2, n = 0: hot -> alert
            rec(3, 2 * SEC, Kind::New, 1), // 100*2 >= 100*1: still hot
            rec(4, 3 * SEC, Kind::New, 1), // 200 < 200? no: 200 >= 200 hot
            rec(5, 4 * SEC, Kind::New, 1), // 200 < 300: cold
            // At t = 10 s the cancel at t = 0 is outside (t - 10 s, t]: c = 1, n = 3.
            rec(6, 10 * SEC, Kind::Cancel, 1), // c = 2 (t=1,t=10), n = 3: cold
            rec(7, 30 * SEC, Kind::Cancel, 1), // everything before expired: c = 1
            rec(8, 30 * SEC, Kind::Cancel, 1), // c = 2, n = 0: hot again -> alert
        ];
        assert_eq!(run(params, &records), vec![(2, 0, 2, 1), (8, 0, 2, 2)]);
        // With a cooldown: the key is below from t = 4 s (seq 5) until seq 8, 26 s later.
        let cooling = |cooldown_s: i64| run(Params { cooldown_ns: cooldown_s * SEC, ..params }, &records);
        assert_eq!(cooling(26), vec![(2, 0, 2, 1), (8, 0, 2, 2)], "below for 26 s >= 26 s");
        assert_eq!(cooling(27), vec![(2, 0, 2, 1)], "below for 26 s < 27 s: the same episode");
        // A hot key whose window empties is below from then: hot from seq 2
        // (t = 1 s) to its window's end at t = 11 s; hot again at t = 30 s.
        let flicker = [
            rec(1, 0, Kind::Cancel, 1),
            rec(2, SEC, Kind::Cancel, 1),
            rec(3, 30 * SEC, Kind::Cancel, 1),
            rec(4, 30 * SEC, Kind::Cancel, 1),
        ];
        let hot_to_empty = |cooldown_s: i64| run(Params { cooldown_ns: cooldown_s * SEC, ..params }, &flicker);
        assert_eq!(hot_to_empty(19), vec![(2, 0, 2, 1), (4, 0, 2, 2)], "below since 11 s");
        assert_eq!(hot_to_empty(20), vec![(2, 0, 2, 1)]);
    }

    #[test]
    fn a_key_at_80_pct_is_one_near_miss_per_near_episode() {
        // min_cancels 5, ratio 100%: near at 4 cancels and 80%. Key 7: 4
        // cancels (near: a near-miss at seq 3), an order (4 of 5 = 80%: still
        // near), then everything expires; 30 s later 5 cancels: a near-miss
        // at the 4th, the alert at the 5th.
        let params =
            Params { window_ns: 10 * SEC, min_cancels: 5, ratio_pct: 100, cooldown_ns: 0, near_miss_pct: None };
        let near = Params { near_miss_pct: Some(80), ..params };
        let mut records = Vec::new();
        for i in 0..4 {
            records.push(rec(records.len() as u64, i * SEC, Kind::Cancel, 7));
        }
        records.push(rec(records.len() as u64, 5 * SEC, Kind::New, 7));
        for i in 0..5 {
            records.push(rec(records.len() as u64, (30 + i) * SEC, Kind::Cancel, 7));
        }
        let near_misses = |p: Params| -> Vec<(u64, bool, u64)> {
            let mut rule = ExcessiveCancel::new(p, 4);
            records.iter().filter_map(|e| rule.apply(e)).map(|a| (a.seq, a.near_miss, a.evidence.0[4] >> 56)).collect()
        };
        assert_eq!(near_misses(near), vec![(3, true, 80), (8, true, 80), (9, false, 0)]);
        assert_eq!(run(params, &records), vec![(9, 0, 5, 1)], "off: the alert alone");
        assert_eq!(near_misses(Params { near_miss_pct: Some(81), ..near }), vec![(9, false, 0)], "4 < 81% of 5");
        // The key's window emptied at 15 s (its last entry, at 5 s, left):
        // below since then; near again at 33 s.
        let cooling = |s: i64| near_misses(Params { cooldown_ns: s * SEC, ..near });
        assert_eq!(cooling(18), vec![(3, true, 80), (8, true, 80), (9, false, 0)], "below from 15 s to 33 s");
        assert_eq!(cooling(19), vec![(3, true, 80), (9, false, 0)], "below for 18 s < 19 s");
    }

    /// Near-misses on, a snapshot's near list is grown by `prepare` with the
    /// other parts: cutting one does not allocate it on the shard.
    #[test]
    fn a_prepared_image_holds_the_near_episodes_without_growing() {
        let near =
            Params { window_ns: 10 * SEC, min_cancels: 5, ratio_pct: 100, cooldown_ns: 0, near_miss_pct: Some(80) };
        let mut rule = ExcessiveCancel::new(near, 4);
        // Ten keys, each near (4 cancels of 5).
        let mut seq = 0;
        for group in 0..10 {
            for _ in 0..4 {
                seq += 1;
                rule.apply(&rec(seq, seq as i64 * MS, Kind::Cancel, group));
            }
        }
        assert_eq!(rule.near_past.len(), 10);
        let mut image = Image::default();
        image.prepare(16, 64);
        let (at, capacity) = (image.near.as_ptr(), image.near.capacity());
        assert!(capacity >= 16, "prepare grows the near list");
        rule.begin_snapshot(image);
        assert!(rule.copy_slice(usize::MAX));
        let image = rule.take_snapshot().expect("complete");
        assert_eq!(image.near.len(), 10);
        assert_eq!((image.near.as_ptr(), image.near.capacity()), (at, capacity), "the near list did not move");
    }

    fn encoded(image: &Image) -> Vec<u8> {
        let mut buf = Vec::new();
        image.encode(&mut Writer::new(&mut buf));
        buf
    }

    fn whole_snapshot(rule: &mut ExcessiveCancel) -> Vec<u8> {
        rule.begin_snapshot(Image::default());
        assert!(rule.copy_slice(usize::MAX));
        encoded(&rule.take_snapshot().unwrap())
    }

    /// The regression a sliced snapshot must not have: entries that expire
    /// before the slice copier reaches them are still in the snapshot, and
    /// entries pushed after the barrier are not.
    #[test]
    fn a_sliced_snapshot_keeps_entries_that_expire_before_they_are_copied() {
        let params = Params { window_ns: 10 * SEC, min_cancels: 1, ratio_pct: 50, cooldown_ns: 0, near_miss_pct: None };
        let (mut sliced, mut whole) = (ExcessiveCancel::new(params, 4), ExcessiveCancel::new(params, 4));
        let mut records = Vec::new();
        for i in 0..40i64 {
            let kind = if i % 3 == 0 { Kind::New } else { Kind::Cancel };
            records.push(rec(i as u64, i * SEC / 4, kind, (i % 5) as u32));
        }
        for e in &records {
            sliced.apply(e);
            whole.apply(e);
        }
        let expected = whole_snapshot(&mut whole);
        assert!(sliced.window.len() > 10 && !sliced.hot_keys.is_empty(), "a window and hot keys to copy");
        sliced.begin_snapshot(Image::default());
        assert!(!sliced.copy_slice(3), "three entries copied, more to go");
        // Expires every entry of the barrier's window, most of them uncopied,
        // and frees (and reuses) their key slots.
        for i in 0..6u64 {
            sliced.apply(&rec(100 + i, 100 * SEC + i as i64, Kind::Cancel, 10 + i as u32));
        }
        assert_eq!(sliced.window.len(), 6);
        assert!(sliced.copy_slice(1), "nothing was left to copy");
        assert_eq!(encoded(&sliced.take_snapshot().unwrap()), expected);
    }

    /// The same with a partial expiry: some entries expire uncopied, the
    /// rest are copied by later slices, from the right place.
    #[test]
    fn a_sliced_snapshot_copies_from_the_right_place_after_a_partial_expiry() {
        let params = Params { window_ns: 10 * SEC, min_cancels: 2, ratio_pct: 50, cooldown_ns: 0, near_miss_pct: None };
        let (mut sliced, mut whole) = (ExcessiveCancel::new(params, 4), ExcessiveCancel::new(params, 4));
        for i in 0..80i64 {
            let kind = if i % 4 == 0 { Kind::New } else { Kind::Cancel };
            let e = rec(i as u64, i * SEC / 8, kind, (i % 7) as u32);
            sliced.apply(&e);
            whole.apply(&e);
        }
        let expected = whole_snapshot(&mut whole);
        sliced.begin_snapshot(Image::default());
        assert!(!sliced.copy_slice(2));
        // t = 15 s expires the entries at or before 5 s: 41 of 80.
        sliced.apply(&rec(200, 15 * SEC, Kind::Cancel, 3));
        assert!(!sliced.copy_slice(5));
        sliced.apply(&rec(201, 16 * SEC, Kind::New, 4));
        while !sliced.copy_slice(4) {}
        assert_eq!(encoded(&sliced.take_snapshot().unwrap()), expected);
    }

    #[test]
    fn keys_are_separate_and_idle_buckets_are_reused() {
        let params = Params { window_ns: SEC, min_cancels: 2, ratio_pct: 90, cooldown_ns: 0, near_miss_pct: None };
        let mut rule = ExcessiveCancel::new(params, 4);
        for group in 0..100u32 {
            rule.apply(&rec(group as u64, group as i64 * SEC, Kind::Cancel, group));
        }
        // Only the last key's entry is still inside the one-second window.
        assert_eq!(rule.stats().active_keys, 1);
        assert_eq!(rule.stats().window_entries, 1);
        // A stream of new keys, one live at a time, keeps the table at its
        // smallest: idle buckets are taken over, or dropped by rebuilds.
        let total = 50 * MIN_BUCKETS as u32;
        for group in 100..total {
            rule.apply(&rec(group as u64, group as i64 * SEC, Kind::Cancel, group));
        }
        assert_eq!(rule.stats().active_keys, 1);
        assert_eq!(rule.table.buckets.len(), MIN_BUCKETS, "the table stays sized to the live keys");
        assert!(2 * rule.table.used <= rule.table.buckets.len());
    }

    /// Many live keys at once force rebuilds that move buckets: the counts
    /// and the alerts must come out as from a plain per-key count.
    #[test]
    fn rebuilds_keep_every_count() {
        let params = Params { window_ns: 1_000, min_cancels: 3, ratio_pct: 100, cooldown_ns: 0, near_miss_pct: None };
        let mut rule = ExcessiveCancel::new(params, 4);
        let keys = 5 * MIN_BUCKETS as u32;
        let mut alerts = 0;
        for round in 0..4u32 {
            for group in 0..keys {
                let seq = (round * keys + group) as u64;
                if rule.apply(&rec(seq, round as i64, Kind::Cancel, group)).is_some() {
                    alerts += 1;
                    assert_eq!(round, 2, "the third cancel of a key makes it hot, once");
                }
            }
        }
        assert_eq!(alerts, keys);
        assert_eq!(rule.stats().active_keys, keys as usize);
        assert_eq!(rule.hot_keys.len(), keys as usize);
        for (&key, &slot) in rule.hot_keys.iter().zip(&rule.hot_slots) {
            let bucket = rule.table.buckets[slot as usize];
            assert_eq!((bucket.key, bucket.new_orders, bucket.cancels), (key, 0, 4 | HOT));
        }
        // Everything expires: hot keys with an empty window go idle.
        rule.apply(&rec(u64::MAX, 10_000, Kind::New, keys));
        assert_eq!(rule.stats().active_keys, 1);
        assert!(rule.hot_keys.is_empty());
    }

    /// The rule from its definition: counts over the records applied so
    /// far, evaluated at each of the key's records (`state::episode`), and
    /// a key whose window emptied is below from then (when `min_cancels`
    /// >= 2, no single record can make it cross).
    fn brute_force(params: Params, records: &[Event]) -> Vec<(u64, u32, u32, u32)> {
        brute_force_near(params, records, None)
    }

    /// With `near` (a share of the thresholds): the near-misses instead, as
    /// (seq, n, c, 0): near episodes of reaching that share of both
    /// thresholds (a key whose window emptied is below from then when one
    /// record cannot make it near), at a record that does not cross.
    fn brute_force_near(params: Params, records: &[Event], near: Option<u32>) -> Vec<(u64, u32, u32, u32)> {
        use crate::detect::state::episode::{Episode, Outcome};
        let min = match near {
            None => params.min_cancels as u64,
            Some(pct) => params.near_cancels(pct),
        };
        let mut applied: Vec<&Event> = Vec::new();
        let mut episodes: std::collections::HashMap<(u32, u32), (Episode, i64)> = Default::default();
        let mut alerts = Vec::new();
        for e in records {
            if e.kind == Kind::Trade {
                continue;
            }
            applied.push(e);
            let same =
                |x: &&Event| x.group == e.group && x.instrument == e.instrument && x.ts_ns > e.ts_ns - params.window_ns;
            let n = applied.iter().filter(|x| same(x) && x.kind == Kind::New).count() as u64;
            let c = applied.iter().filter(|x| same(x) && x.kind == Kind::Cancel).count() as u64;
            let now = c >= params.min_cancels as u64 && 100 * c >= params.ratio_pct as u64 * n;
            let (episode, last_ts) = episodes.entry((e.group, e.instrument)).or_insert((Episode::default(), i64::MIN));
            if *last_ts != i64::MIN && *last_ts <= e.ts_ns - params.window_ns && min >= 2 {
                episode.observe(*last_ts + params.window_ns, false, params.cooldown_ns);
            }
            *last_ts = e.ts_ns;
            match near {
                None => {
                    if let Outcome::New(number) = episode.observe(e.ts_ns, now, params.cooldown_ns) {
                        alerts.push((e.seq, n as u32, c as u32, number));
                    }
                }
                Some(pct) => {
                    let reaches = c >= min && 100 * 100 * c >= (pct * params.ratio_pct) as u64 * n;
                    if episode.near_miss(e.ts_ns, reaches, now, params.cooldown_ns) {
                        alerts.push((e.seq, n as u32, c as u32, 0));
                    }
                }
            }
        }
        alerts
    }

    proptest::proptest! {
        /// Thousands of keys, alive for a record or two or piling up: the
        /// table releases and reuses idle buckets, grows and rebuilds, and
        /// the alerts stay those of the definition.
        #[test]
        fn many_short_lived_keys_match_the_definition(
            steps in proptest::collection::vec((0i64..40, 0u8..3, 0u32..3000), 1..2500),
            min_cancels in 1u32..6,
            ratio_pct in 0u32..150,
            near_pct in 1u32..100,
            // Short: keys come and go; long: they pile up and the table grows.
            window_ns in proptest::prop_oneof![proptest::strategy::Just(200i64), proptest::strategy::Just(1_000_000)],
            cooldown_ns in proptest::prop_oneof![
                proptest::strategy::Just(0i64),
                proptest::strategy::Just(150),
                proptest::strategy::Just(2_000),
            ],
        ) {
            let params = Params { window_ns, min_cancels, ratio_pct, cooldown_ns, near_miss_pct: None };
            let mut ts = 0;
            let records: Vec<Event> = steps
                .iter()
                .enumerate()
                .map(|(seq, &(step, kind, key))| {
                    ts += step;
                    // Hot keys bunch up on a few groups so that episodes happen.
                    let group = if kind == 1 && key % 7 == 0 { key % 5 } else { key };
                    let mut e = rec(seq as u64, ts, [Kind::New, Kind::Cancel, Kind::Trade][kind as usize], group);
                    e.instrument = key % 3;
                    e
                })
                .collect();
            let alerts = run(params, &records);
            proptest::prop_assert_eq!(&alerts, &brute_force(params, &records));
            // Near-misses on: the same alerts, the near-misses of the
            // definition, and the same across a checkpoint (cut mid-run).
            let with = Params { near_miss_pct: Some(near_pct), ..params };
            let mut rule = ExcessiveCancel::new(with, 4);
            let all: Vec<Alert> = records.iter().filter_map(|e| rule.apply(e)).collect();
            let split = |all: &[Alert], near: bool| -> Vec<(u64, u32, u32, u32)> {
                all.iter()
                    .filter(|a| a.near_miss == near)
                    .map(|a| (a.seq, a.evidence.0[2] as u32, a.evidence.0[3] as u32, (a.evidence.0[5] >> 32) as u32))
                    .collect()
            };
            proptest::prop_assert_eq!(&split(&all, false), &alerts);
            proptest::prop_assert_eq!(split(&all, true), brute_force_near(params, &records, Some(near_pct)));
            let restored: Vec<Alert> = crate::detect::rules::testkit::run_restored::<ExcessiveCancel>(&with, &records, records.len() / 2)
                .into_iter()
                .map(|(a, _)| a)
                .collect();
            proptest::prop_assert_eq!(split(&restored, true), split(&all, true));
            proptest::prop_assert_eq!(split(&restored, false), alerts);
        }
    }
}
