//! instant-cancel (频繁瞬时撤单): per (group, instrument), orders cancelled
//! within `within_ms` of their entry (default 1 s): `min_cancels` or more
//! in the trading day (default 50) that are `min_share_pct` or more of the
//! group's orders there (default 50%). One alert per episode
//! (`cooldown_ms`, default 60 s); the key is evaluated at its own records.
//!
//! The order's entry time comes from the order book (`Reads::BOOK`): a
//! cancel the book could not apply (an unknown order) is not counted.
//! Limit: `MAX_KEYS` keys per shard; past it a new key's records are
//! counted (`RuleStats::keys_refused`, the summary's `refused` line) and
//! not tracked.
//!
//! Memory: the key table (`KeyTable`) starts at `INITIAL_KEYS` keys and
//! doubles as keys come (one sequential pass; the 10M-record day's 1.4M
//! keys on one shard: 4 doublings). A slot is 24 bytes (the key, its
//! 16-byte `Key`) and the table three eighths to three quarters full:
//! 32-64 bytes a key, three times that for the moment of a doubling (the
//! old table and the new); a new table is zeroed memory, so the pages the
//! rehash has not reached cost nothing yet. A key with an instant cancel
//! also has an evidence list (`Lists`, 112 bytes). At `MAX_KEYS` the table
//! is 6.4 GB a shard: the limit is there so a runaway key space fails
//! loudly (counted), not to bound a real day.
//!
//! Near-misses (`near_miss_pct`, off by default): a key whose instant
//! cancels reach that share of `min_cancels` and whose share of its orders
//! reaches that share of `min_share_pct`, without crossing. The counts are
//! the day's, so this is a day rule for near-misses: at most one per key
//! and day, and none once the key has crossed that day (a flag in the
//! key's episode, so the table's slot does not grow).

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::{MS, Problems};
use crate::detect::rule::{Emit, Kinds, Reads, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::cow::{CowMap, slice_slots};
use crate::detect::state::episode::{Episode, EpisodeCounts, Involved, Outcome, day_of, key};
use crate::detect::views::Change;
use crate::event::{Event, Kind};
use serde::Deserialize;
use toml::Spanned;

/// Off unless the rules file turns it on (`enabled = true`): its per-key
/// tables are hash maps, several lookups a record, which would cut a
/// default replay's speed several-fold (docs/PERFORMANCE.md). On by default
/// once they move to excessive-cancel's table design.
pub const ENABLED_BY_DEFAULT: bool = false;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub within_ns: i64,
    pub min_cancels: u32,
    pub min_share_pct: u32,
    pub cooldown_ns: i64,
    /// Near-misses: the share of each threshold (1-99) that makes one; none: off.
    pub near_miss_pct: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            within_ns: 1000 * MS,
            min_cancels: 50,
            min_share_pct: 50,
            cooldown_ns: 60_000 * MS,
            near_miss_pct: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    within_ms: Option<Spanned<i64>>,
    min_cancels: Option<Spanned<i64>>,
    min_share_pct: Option<Spanned<i64>>,
    cooldown_ms: Option<Spanned<i64>>,
    near_miss_pct: Option<Spanned<i64>>,
}

/// Keys a shard tracks at most (see the module doc); a new key past it is refused.
pub const MAX_KEYS: usize = 1 << 27;

/// Keys the key table holds before it first grows: small, so a small day
/// does not pay for a big one (the sample day with instant-cancel on:
/// 131 MB peak when the table was sized for a million keys at start-up).
/// A day with more keys pays a doubling now and then, each one sequential
/// pass over the old table and the new, counted in `grew`.
pub const INITIAL_KEYS: usize = 1 << 16;

/// One (group, instrument) key's day, the state every new order and cancel
/// of the key touches: 16 bytes (with the key, a 24-byte slot: over a
/// million of them on a real day, so most records miss the cache on it;
/// the smaller the slot and the fuller the table, the more stay cached).
/// The episode is in `episodes`, only for keys that have crossed; the
/// evidence list in `involved`, only for keys that cancelled instantly, at
/// the index in `flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    /// `day_of` the key's last record: any `i64` event time's day fits an `i32`.
    day: i32,
    orders: u32,
    instant: u32,
    /// `CROSSED` | `NEAR_TODAY` | the evidence list's index plus one `<< LIST_SHIFT`.
    flags: u32,
}

/// The key has an entry in `episodes` (it crossed at some record).
const CROSSED: u32 = 1;
/// The day's near-miss flag (`near_miss_pct`): the key had a near-miss or crossed today.
const NEAR_TODAY: u32 = 2;
/// The flags' bits from this one up: the key's evidence list in `Lists`, plus one (0: none).
const LIST_SHIFT: u32 = 2;

pub struct InstantCancel {
    params: Params,
    /// Open addressing: a key's slot follows from it, so it is prefetched
    /// records ahead; a checkpoint cuts it in O(1) and copies it in slices
    /// (copy-on-write, see `KeyTable`).
    keys: KeyTable,
    /// The episodes of the keys that have crossed (`CROSSED`); cut like `keys`.
    episodes: CowMap<Episode>,
    /// The accounts and orders of each key's instant cancels (the alert's
    /// evidence), for the keys that have some, found from the key's entry;
    /// cut like `keys`.
    involved: Lists,
    /// The snapshot in progress: each table's image once copied.
    copying: (Option<KeysImage>, Option<EpisodesImage>, Option<InvolvedImage>),
    pub counts: EpisodeCounts,
    /// Keys past which a new key is refused (`MAX_KEYS` but in tests).
    max_keys: usize,
    /// Records of new keys refused (`max_keys` reached).
    refused: u64,
}

type KeysImage = Vec<(u64, Key)>;
type EpisodesImage = Vec<(u64, Episode)>;
type InvolvedImage = Vec<(u64, Involved)>;

/// The rule's state as of a barrier: the keys, the episodes and the evidence lists.
#[derive(Default)]
pub struct Image {
    keys: KeysImage,
    episodes: EpisodesImage,
    involved: InvolvedImage,
}

impl Rule for InstantCancel {
    const ID: u16 = 0x12;
    const NAME: &'static str = "instant-cancel";
    const TABLE: &'static str = "instant_cancel";
    /// 2: the evidence lists after the keys, in a table of their own.
    const VERSION: u16 = 2;
    const KINDS: Kinds = Kinds::NEW.or(Kinds::CANCEL);
    const READS: Reads = Reads::BOOK;
    type Raw = Raw;
    type Params = Params;
    type Image = Image;

    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Params> {
        let d = Params::default();
        let within_ms = p.int(raw.within_ms, "within_ms", 1..=3_600_000, d.within_ns / MS);
        let min_cancels = p.int(raw.min_cancels, "min_cancels", 1..=10_000_000, d.min_cancels as i64);
        let min_share_pct = p.int(raw.min_share_pct, "min_share_pct", 0..=100, d.min_share_pct as i64);
        let cooldown_ms = p.int(raw.cooldown_ms, "cooldown_ms", 0..=86_400_000, d.cooldown_ns / MS);
        let near_miss_pct = p.near_miss_pct(raw.near_miss_pct);
        raw.enabled.unwrap_or(ENABLED_BY_DEFAULT).then_some(Params {
            within_ns: within_ms * MS,
            min_cancels: min_cancels as u32,
            min_share_pct: min_share_pct as u32,
            cooldown_ns: cooldown_ms * MS,
            near_miss_pct,
        })
    }

    fn encode_params(p: &Params, w: &mut Writer<'_>) {
        w.i64(p.within_ns);
        w.u32(p.min_cancels);
        w.u32(p.min_share_pct);
        w.i64(p.cooldown_ns);
        // Only when set: the parameter version of a rule without it is unchanged.
        if let Some(pct) = p.near_miss_pct {
            w.u32(pct);
        }
    }

    fn show(p: &Params, out: &mut String) {
        out.push_str(&format!(
            "within_ms = {}\nmin_cancels = {}\nmin_share_pct = {}\ncooldown_ms = {}\n",
            p.within_ns / MS,
            p.min_cancels,
            p.min_share_pct,
            p.cooldown_ns / MS
        ));
        crate::config::show_near_miss_pct(p.near_miss_pct, out);
    }

    fn new(params: &Params, _sizing: &Sizing) -> InstantCancel {
        InstantCancel::with_limits(params, INITIAL_KEYS, MAX_KEYS)
    }

    #[inline(always)]
    fn prefetch(&self, event: &Event) {
        // The key's evidence list, which an instant cancel writes, is
        // found from its entry: not known this far ahead.
        self.keys.prefetch(key(event.group, event.instrument));
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
        let instant = match (event.kind, seen.book.map(|b| *b.change)) {
            (Kind::New, _) => false,
            (_, Some(Change::Cancelled { order, .. })) => event.ts_ns - order.entry_ts_ns <= self.params.within_ns,
            // A cancel the book did not apply: its entry time is unknown.
            _ => false,
        };
        let k = key(event.group, event.instrument);
        let Some(at) = self.keys.upsert(k, self.max_keys) else {
            self.refused += 1;
            return;
        };
        let mut s = self.keys.load(at);
        // Lossless: `day_of` an `i64` of nanoseconds is within +-106,752.
        let day = day_of(event.ts_ns) as i32;
        if s.day != day {
            s.day = day;
            s.orders = 0;
            s.instant = 0;
            s.flags &= !NEAR_TODAY;
        }
        if event.kind == Kind::New {
            s.orders += 1;
        } else if instant {
            s.instant += 1;
        }
        let p = self.params;
        let crossing = crosses(&p, s.instant, s.orders);
        // A key that never crossed has the default episode, which a record
        // that does not cross leaves as it is (`Below`): no lookup.
        let outcome = if crossing || s.flags & CROSSED != 0 {
            s.flags |= CROSSED;
            self.episodes.get_or_insert_default(k).observe(event.ts_ns, crossing, p.cooldown_ns)
        } else {
            Outcome::Below
        };
        let instant_count = s.instant;
        let orders = s.orders;
        // Day near-misses: the first record of the day that is near and does not cross.
        let mut near_miss = None;
        if let Some(pct) = p.near_miss_pct
            && s.flags & NEAR_TODAY == 0
            && (crossing || near(&p, pct, instant_count, orders))
        {
            s.flags |= NEAR_TODAY;
            near_miss = (!crossing).then_some(pct);
        }
        self.counts.count(outcome);
        if instant {
            let list = match s.list() {
                Some(list) => list,
                None => {
                    let list = self.involved.push(k);
                    s.set_list(list);
                    list
                }
            };
            let involved = self.involved.get_mut(list);
            involved.account(event.account);
            involved.order(event.order_id);
        }
        let list = s.list();
        self.keys.store(at, s);
        if let Outcome::New(n) = outcome {
            let evidence = Evidence([
                instant_count as u64,
                orders as u64,
                p.min_cancels as u64,
                p.min_share_pct as u64,
                (p.within_ns / MS) as u64,
                n as u64,
            ]);
            // A new episode needs an instant cancel (`min_cancels` >= 1), so the key has its list.
            let (list, len) = list.map(|l| self.involved.get(l).list()).unwrap_or_default();
            out.alert(Alert::about(Self::ID, event, evidence), &list[..len]);
        }
        if let Some(pct) = near_miss {
            // Rare: goes out the way alerts do (no allocation). The share
            // rides with `min_share_pct`; a near-miss has no episode (0).
            let evidence = Evidence([
                instant_count as u64,
                orders as u64,
                p.min_cancels as u64,
                p.min_share_pct as u64 | (pct as u64) << 32,
                (p.within_ns / MS) as u64,
                0,
            ]);
            // Near needs an instant cancel (`pct` and `min_cancels` >= 1): the key has its list.
            let (list, len) = list.map(|l| self.involved.get(l).list()).unwrap_or_default();
            out.alert(Alert { near_miss: true, ..Alert::about(Self::ID, event, evidence) }, &list[..len]);
        }
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        let [instant, orders, min_cancels, min_share_pct, within_ms, episode] = evidence.0;
        json.u64("instant_cancels", instant);
        json.u64("orders", orders);
        json.pct("share_pct", instant, orders);
        json.u64("min_cancels", min_cancels);
        json.u64("min_share_pct", min_share_pct & 0xffff_ffff);
        json.u64("within_ms", within_ms);
        if min_share_pct >> 32 != 0 {
            json.u64("near_miss_pct", min_share_pct >> 32);
        } else {
            json.u64("episode", episode);
        }
        Involved::write(list, json);
    }

    fn episodes(&self) -> Option<EpisodeCounts> {
        Some(self.counts)
    }

    fn stats(&self) -> RuleStats {
        RuleStats {
            active_keys: self.keys.len(),
            grew: self.keys.grew + self.episodes.grew + self.involved.grew,
            keys_refused: self.refused,
            ..RuleStats::default()
        }
    }

    fn begin_snapshot(&mut self, image: Image) {
        self.keys.begin_snapshot(image.keys);
        self.episodes.begin_snapshot(image.episodes);
        self.involved.begin_snapshot(image.involved);
        self.copying = (None, None, None);
    }

    fn copy_slice(&mut self, max: usize) -> Option<Image> {
        if self.copying.0.is_none() {
            self.copying.0 = self.keys.copy_slice(slice_slots(max));
        }
        if self.copying.1.is_none() {
            self.copying.1 = self.episodes.copy_slice(slice_slots(max));
        }
        if self.copying.2.is_none() {
            self.copying.2 = self.involved.copy_slice(slice_slots(max));
        }
        match std::mem::take(&mut self.copying) {
            (Some(keys), Some(episodes), Some(involved)) => Some(Image { keys, episodes, involved }),
            partial => {
                self.copying = partial;
                None
            }
        }
    }

    fn encode_image(image: &Image, w: &mut Writer<'_>) {
        // The section as when the episode was in the key's slot (version 2):
        // each key with its episode, the near-miss flag in it.
        let episodes: rustc_hash::FxHashMap<u64, Episode> = image.episodes.iter().copied().collect();
        w.u64(image.keys.len() as u64);
        for (k, s) in &image.keys {
            w.u64(*k);
            w.i64(s.day as i64);
            w.u32(s.orders);
            w.u32(s.instant);
            let mut episode = episodes.get(k).copied().unwrap_or_default();
            episode.near_today = s.flags & NEAR_TODAY != 0;
            episode.encode(w);
        }
        w.u64(image.involved.len() as u64);
        for (k, involved) in &image.involved {
            w.u64(*k);
            involved.encode(w);
        }
    }

    fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        for _ in 0..r.count(24)? {
            let k = r.u64()?;
            let day = r.i64()?;
            let day = i32::try_from(day)
                .map_err(|_| DecodeError(format!("instant-cancel: key {k:#x}: day {day} out of range")))?;
            let (orders, instant) = (r.u32()?, r.u32()?);
            let mut episode = Episode::decode(r)?;
            let mut flags = 0;
            if std::mem::take(&mut episode.near_today) {
                flags |= NEAR_TODAY;
            }
            // What is left of a key that never crossed is the default episode.
            let crossed = episode != Episode::default();
            if crossed {
                flags |= CROSSED;
            }
            if keep(k) {
                let at = self.keys.upsert(k, usize::MAX).expect("no limit");
                self.keys.store(at, Key { day, orders, instant, flags });
                if crossed {
                    self.episodes.insert(k, episode);
                }
            }
        }
        for _ in 0..r.count(8)? {
            let k = r.u64()?;
            let involved = Involved::decode(r)?;
            if keep(k) {
                // A key has a list once it cancelled instantly: its entry came first.
                let at = match self.keys.get(k) {
                    Some(s) if s.list().is_none() => self.keys.upsert(k, usize::MAX).expect("no limit"),
                    _ => return Err(DecodeError(format!("instant-cancel: evidence of key {k:#x}: no entry, or two"))),
                };
                let mut s = self.keys.load(at);
                let list = self.involved.push(k);
                *self.involved.get_mut(list) = involved;
                s.set_list(list);
                self.keys.store(at, s);
            }
        }
        Ok(())
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(vec![("keys", Reader::new(section).u64()?)])
    }
}

impl InstantCancel {
    /// A rule whose key table holds `initial_keys` before it first grows
    /// and refuses new keys past `max_keys` (`new`: `INITIAL_KEYS`, `MAX_KEYS`).
    fn with_limits(params: &Params, initial_keys: usize, max_keys: usize) -> InstantCancel {
        InstantCancel {
            params: *params,
            keys: KeyTable::with_capacity(initial_keys),
            // Keys that crossed: hundreds (the 10M-record day: 245 episodes).
            episodes: CowMap::with_capacity(1024),
            // A key with an instant cancel: fewer than the keys (the
            // 10M-record day: about 0.3M); 104 bytes each, so the room
            // starts smaller still and grows as a `Vec` does.
            involved: Lists::with_capacity(initial_keys / 8),
            copying: (None, None, None),
            counts: EpisodeCounts::default(),
            max_keys,
            refused: 0,
        }
    }
}

const _: () = assert!((MAX_KEYS as u64) < (u32::MAX >> LIST_SHIFT) as u64, "a list index fits a key's flags");

/// The key table: open addressing with linear probing over 24-byte slots
/// (the key's complement, then its `Key` packed in two words), grown by
/// doubling when three quarters full, so a key costs 32 to 64 bytes
/// (`CowMap` grows at half full: 48 to 96). An empty slot is all zero
/// bits, so a new table is memory the allocator hands over zeroed, never
/// written before its entries (the rehash after a doubling writes the new
/// table once, in about slot order). Key `u64::MAX`, whose complement
/// marks an empty slot, is kept aside.
///
/// A snapshot is cut in O(1) and copied in slices, copy-on-write as
/// `CowMap` (entries never move but when the table grows, which finishes
/// the copy first); which slots the copy has taken is a bitmap, clear
/// whenever no snapshot is in progress, so nothing per slot is written
/// between snapshots and no epoch rides in the slot.
struct KeyTable {
    slots: Box<[[u64; 3]]>,
    mask: usize,
    /// `home`'s shift of the hashed key.
    shift: u32,
    len: usize,
    aside: Option<Key>,
    /// A bit per slot: copied since the barrier (slots from `cursor` on;
    /// the slices clear the words they pass).
    copied: Box<[u64]>,
    active: bool,
    /// The copy was finished early (the table grew): `copy_slice` hands
    /// the image over next.
    finished: bool,
    /// Slots before it are copied (a multiple of 64 but at the end).
    cursor: usize,
    image: KeysImage,
    /// Times the table doubled after start-up.
    grew: u64,
}

/// The index `KeyTable::upsert` gives key `u64::MAX`, kept aside.
const ASIDE: usize = usize::MAX;

impl Key {
    #[inline(always)]
    fn pack(&self) -> [u64; 2] {
        [self.day as u32 as u64 | (self.orders as u64) << 32, self.instant as u64 | (self.flags as u64) << 32]
    }

    #[inline(always)]
    fn unpack(w: [u64; 2]) -> Key {
        Key { day: w[0] as u32 as i32, orders: (w[0] >> 32) as u32, instant: w[1] as u32, flags: (w[1] >> 32) as u32 }
    }

    /// The index of the key's evidence list in `Lists`, if it has one.
    #[inline(always)]
    fn list(&self) -> Option<usize> {
        (self.flags >> LIST_SHIFT).checked_sub(1).map(|l| l as usize)
    }

    #[inline(always)]
    fn set_list(&mut self, list: usize) {
        self.flags = self.flags & ((1 << LIST_SHIFT) - 1) | (list as u32 + 1) << LIST_SHIFT;
    }
}

impl KeyTable {
    /// A table that holds `keys` before it first grows.
    fn with_capacity(keys: usize) -> KeyTable {
        let slots = (keys.saturating_mul(4) / 3 + 1).next_power_of_two().max(64);
        KeyTable {
            slots: vec![[0u64; 3]; slots].into_boxed_slice(),
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros(),
            len: 0,
            aside: None,
            copied: vec![0u64; slots / 64].into_boxed_slice(),
            active: false,
            finished: false,
            cursor: 0,
            image: Vec::new(),
            grew: 0,
        }
    }

    fn len(&self) -> usize {
        self.len + self.aside.is_some() as usize
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The slot holding `key` (true) or the empty slot ending its probe (false).
    #[inline(always)]
    fn find(&self, key: u64) -> (usize, bool) {
        let mark = !key;
        let mut i = self.home(key);
        loop {
            let w = self.slots[i][0];
            if w == mark {
                return (i, true);
            }
            if w == 0 {
                return (i, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Brings `key`'s home slot into cache, and the start of the next one
    /// (a 24-byte slot may straddle two lines, and a probe goes on there).
    #[inline(always)]
    fn prefetch(&self, key: u64) {
        let i = self.home(key);
        crate::flat_map::prefetch(&self.slots[i]);
        crate::flat_map::prefetch(&self.slots[(i + 1) & self.mask]);
    }

    #[inline]
    fn get(&self, key: u64) -> Option<Key> {
        if key == u64::MAX {
            return self.aside;
        }
        match self.find(key) {
            (i, true) => Some(self.load(i)),
            _ => None,
        }
    }

    /// The index of `key`'s entry (inserted as the default `Key` if new,
    /// unless the table holds `max_keys` already: `None`), to `load` and
    /// `store` before the table next changes; copied first if the snapshot
    /// in progress needs it.
    #[inline(always)]
    fn upsert(&mut self, key: u64, max_keys: usize) -> Option<usize> {
        if key == u64::MAX {
            if self.aside.is_none() {
                if self.len() >= max_keys {
                    return None;
                }
                self.aside = Some(Key::default());
            }
            return Some(ASIDE);
        }
        let (mut i, found) = self.find(key);
        if !found {
            if self.len() >= max_keys {
                return None;
            }
            if (self.len + 1) * 4 > self.slots.len() * 3 {
                self.grow();
                i = self.find(key).0;
            }
            // Empty at the barrier too (entries move only when the table
            // grows): the copy takes nothing, but must not take the new key.
            self.before_write(i);
            self.slots[i] = [!key, 0, 0];
            self.len += 1;
        } else {
            self.before_write(i);
        }
        Some(i)
    }

    #[inline(always)]
    fn load(&self, i: usize) -> Key {
        if i == ASIDE {
            return self.aside.unwrap_or_default();
        }
        let [_, a, b] = self.slots[i];
        Key::unpack([a, b])
    }

    /// Writes the entry at `i` (from `upsert`, the table unchanged since).
    #[inline(always)]
    fn store(&mut self, i: usize, key: Key) {
        if i == ASIDE {
            self.aside = Some(key);
            return;
        }
        let [a, b] = key.pack();
        self.slots[i][1] = a;
        self.slots[i][2] = b;
    }

    /// Slot `i` is about to change: if the copy has not taken it yet, it takes it now.
    #[inline(always)]
    fn before_write(&mut self, i: usize) {
        if self.active && i >= self.cursor && self.copied[i / 64] & 1 << (i % 64) == 0 {
            self.copy_on_write(i);
        }
    }

    #[cold]
    fn copy_on_write(&mut self, i: usize) {
        self.copied[i / 64] |= 1 << (i % 64);
        let [w, a, b] = self.slots[i];
        if w != 0 {
            self.image.push((!w, Key::unpack([a, b])));
        }
    }

    #[cold]
    fn grow(&mut self) {
        if self.active {
            // Rehashing moves every entry: finish the copy first.
            self.copy_slots(usize::MAX);
            self.active = false;
            self.finished = true;
        }
        self.grew += 1;
        let slots = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![[0u64; 3]; slots].into_boxed_slice());
        self.copied = vec![0u64; slots / 64].into_boxed_slice();
        self.mask = slots - 1;
        self.shift = 64 - slots.trailing_zeros();
        // One sequential pass, as `CowMap::grow`: slot `h` of the old table
        // is home to slots `2h` and `2h + 1` of the new, so entries walked
        // from the start of a cluster land in about slot order.
        let start = old.iter().position(|s| s[0] == 0).unwrap_or(0);
        let old_mask = old.len() - 1;
        for j in 0..old.len() {
            let s = old[(start + j) & old_mask];
            if s[0] != 0 {
                let (i, _) = self.find(!s[0]);
                self.slots[i] = s;
            }
        }
    }

    /// Cuts a snapshot into `image` (cleared; room reserved now, so a
    /// copy-on-write never allocates): O(1) but for that reservation.
    fn begin_snapshot(&mut self, mut image: KeysImage) {
        assert!(!self.active && !self.finished, "a snapshot is already in progress");
        image.clear();
        image.reserve(self.len() + 1);
        image.extend(self.aside.map(|key| (u64::MAX, key)));
        self.image = image;
        self.active = true;
        self.cursor = 0;
    }

    /// Copies some `max` more slots; the image (the entries at the barrier,
    /// in no particular order) once complete.
    fn copy_slice(&mut self, max: usize) -> Option<KeysImage> {
        if self.finished {
            self.finished = false;
            return Some(std::mem::take(&mut self.image));
        }
        if !self.active || !self.copy_slots(max) {
            return None;
        }
        self.active = false;
        Some(std::mem::take(&mut self.image))
    }

    /// Copies the slots from `cursor` up to about `max` more (whole words
    /// of the bitmap, which it clears); true once all are.
    fn copy_slots(&mut self, max: usize) -> bool {
        let to = (self.cursor + max.min(self.slots.len())).next_multiple_of(64).min(self.slots.len());
        for i in self.cursor..to {
            let [w, a, b] = self.slots[i];
            if w != 0 && self.copied[i / 64] & 1 << (i % 64) == 0 {
                self.image.push((!w, Key::unpack([a, b])));
            }
        }
        self.copied[self.cursor / 64..to / 64].fill(0);
        self.cursor = to;
        self.cursor == self.slots.len()
    }

    /// Every entry, in no particular order (tests).
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (u64, Key)> + '_ {
        let aside = self.aside.map(|key| (u64::MAX, key));
        self.slots.iter().filter(|s| s[0] != 0).map(|s| (!s[0], Key::unpack([s[1], s[2]]))).chain(aside)
    }
}

/// The evidence lists, one per key with an instant cancel, in the order
/// the keys first had one: an index in the key's entry (`Key::list`)
/// instead of a second hashed table, so a list costs its 104 bytes and the
/// record that writes it does not probe for it. A snapshot is cut in O(1)
/// and copied in slices, copy-on-write as `KeyTable` (the lists added
/// after the barrier are past it).
struct Lists {
    lists: Vec<Involved>,
    /// Each list's key (read by snapshots only).
    keys: Vec<u64>,
    /// A bit per list copied since the barrier (lists from `cursor` on),
    /// clear whenever no snapshot is in progress.
    copied: Vec<u64>,
    active: bool,
    cursor: usize,
    /// Lists at the barrier.
    snap_len: usize,
    image: InvolvedImage,
    /// Times the lists' room grew after start-up.
    grew: u64,
}

impl Lists {
    fn with_capacity(lists: usize) -> Lists {
        Lists {
            lists: Vec::with_capacity(lists),
            keys: Vec::with_capacity(lists),
            copied: Vec::new(),
            active: false,
            cursor: 0,
            snap_len: 0,
            image: Vec::new(),
            grew: 0,
        }
    }

    /// A new, empty list for `key`: its index.
    #[inline]
    fn push(&mut self, key: u64) -> usize {
        if self.lists.len() == self.lists.capacity() {
            self.grew += 1;
        }
        self.lists.push(Involved::default());
        self.keys.push(key);
        self.lists.len() - 1
    }

    #[inline(always)]
    fn get(&self, list: usize) -> &Involved {
        &self.lists[list]
    }

    /// List `list`, to change (copied first if the snapshot in progress needs it).
    #[inline(always)]
    fn get_mut(&mut self, list: usize) -> &mut Involved {
        if self.active && list >= self.cursor && list < self.snap_len && self.copied[list / 64] & 1 << (list % 64) == 0
        {
            self.copied[list / 64] |= 1 << (list % 64);
            self.image.push((self.keys[list], self.lists[list]));
        }
        &mut self.lists[list]
    }

    fn begin_snapshot(&mut self, mut image: InvolvedImage) {
        assert!(!self.active, "a snapshot is already in progress");
        image.clear();
        image.reserve(self.lists.len());
        self.image = image;
        self.snap_len = self.lists.len();
        if self.copied.len() < self.snap_len.div_ceil(64) {
            self.copied.resize(self.snap_len.div_ceil(64), 0);
        }
        self.active = true;
        self.cursor = 0;
    }

    fn copy_slice(&mut self, max: usize) -> Option<InvolvedImage> {
        if !self.active {
            return None;
        }
        let to = (self.cursor + max.min(self.snap_len)).next_multiple_of(64).min(self.snap_len);
        for i in self.cursor..to {
            if self.copied[i / 64] & 1 << (i % 64) == 0 {
                self.image.push((self.keys[i], self.lists[i]));
            }
        }
        self.copied[self.cursor / 64..to.div_ceil(64)].fill(0);
        self.cursor = to;
        if self.cursor < self.snap_len {
            return None;
        }
        self.active = false;
        Some(std::mem::take(&mut self.image))
    }
}

#[inline]
fn crosses(p: &Params, instant: u32, orders: u32) -> bool {
    instant >= p.min_cancels && instant as u64 * 100 >= p.min_share_pct as u64 * orders as u64
}

/// Whether both measures reach `pct`% of their thresholds.
#[inline]
fn near(p: &Params, pct: u32, instant: u32, orders: u32) -> bool {
    instant as u64 * 100 >= pct as u64 * p.min_cancels as u64
        && instant as u64 * 100 * 100 >= pct as u64 * p.min_share_pct as u64 * orders as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::testkit::*;
    use crate::detect::views::{ViewConfig, Views};
    use crate::event::Side::{Buy, Sell};
    use proptest::prelude::*;
    use rustc_hash::FxHashMap;

    fn sorted(mut events: Vec<Event>) -> Vec<Event> {
        events.sort_by_key(|e| (e.ts_ns, e.kind as u8 == b'C', e.order_id));
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        events
    }

    #[test]
    fn orders_pulled_within_a_second_most_of_the_time() {
        let mut e = Vec::new();
        // Group 5 (accounts 1, 2): 80 orders, 60 cancelled 200 ms after entry.
        for i in 0..80u64 {
            let ts = at(10, 0, 0) + i as i64 * 2 * SEC;
            let account = 1 + (i % 2) as u32;
            e.push(new_order(0, ts, 1000 + i, account, 5, 3, Buy, px(1000 - (i as i64 % 3)), 100));
            if i < 60 {
                e.push(cancel(0, ts + 200 * MS, 1000 + i, account, 5, 3, Buy, px(1000 - (i as i64 % 3)), 100));
            }
        }
        // An institution: 60 orders cancelled after 30 s each.
        for i in 0..60u64 {
            let ts = at(10, 0, 0) + i as i64 * 3 * SEC;
            e.push(new_order(0, ts, 5000 + i, 9, 9, 3, Sell, px(1010), 5000));
            e.push(cancel(0, ts + 30 * SEC, 5000 + i, 9, 9, 3, Sell, px(1010), 5000));
        }
        let alerts = run::<InstantCancel>(&Params::default(), &sorted(e));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let (a, list) = &alerts[0];
        assert_eq!((a.group, a.evidence.0[0], a.evidence.0[1]), (5, 50, 50), "crossed at the 50th of 50 orders");
        assert_eq!(&list[..3], &[2, 1, 2], "both accounts of the group");
        // 50% of orders with 50 instant cancels: not when the group also sent 120 orders it left alone.
        let mut e2: Vec<Event> = Vec::new();
        for i in 0..120u64 {
            e2.push(new_order(0, at(9, 31, 0) + i as i64 * MS, 9000 + i, 1, 5, 3, Buy, px(900), 100));
        }
        let mut all: Vec<Event> = e2;
        for i in 0..50u64 {
            let ts = at(10, 0, 0) + i as i64 * 2 * SEC;
            all.push(new_order(0, ts, 1000 + i, 1, 5, 3, Buy, px(1000), 100));
            all.push(cancel(0, ts + 200 * MS, 1000 + i, 1, 5, 3, Buy, px(1000), 100));
        }
        for e in all.iter_mut() {
            e.instrument = 3;
        }
        assert!(run::<InstantCancel>(&Params::default(), &sorted(all)).is_empty(), "50 of 170 = 29%");
    }

    #[test]
    fn a_group_at_80_pct_of_both_thresholds_is_one_near_miss_a_day() {
        // Group 5: 40 orders each cancelled 200 ms after entry, then 10 it
        // leaves: 40 instant cancels (80% of 50), 40 of 50 orders (80% of
        // 100%: with min_share_pct 100). The same the next day.
        let mut e = Vec::new();
        for day in 0..2i64 {
            for i in 0..50u64 {
                let ts = at(10, 0, 0) + day * 86_400 * SEC + i as i64 * 2 * SEC;
                let id = 1000 * (day as u64 + 1) + i;
                e.push(new_order(0, ts, id, 1 + (i % 2) as u32, 5, 3, Buy, px(1000), 100));
                if i < 40 {
                    e.push(cancel(0, ts + 200 * MS, id, 1 + (i % 2) as u32, 5, 3, Buy, px(1000), 100));
                }
            }
        }
        let e = sorted(e);
        let p = Params { min_share_pct: 100, ..Params::default() };
        let near = Params { near_miss_pct: Some(80), ..p };
        let got = run::<InstantCancel>(&near, &e);
        assert_eq!(got.len(), 2, "one a day: {got:?}");
        for (n, list) in &got {
            assert!(n.near_miss);
            assert_eq!((n.group, n.evidence.0[0], n.evidence.0[1]), (5, 40, 40), "the 40th cancel, of 40 orders");
            assert_eq!(n.evidence.0[3], 100 | 80 << 32, "the share rides with min_share_pct");
            assert_eq!(&list[..3], &[2, 1, 2], "both accounts");
        }
        assert!(run::<InstantCancel>(&p, &e).is_empty(), "off by default");
        assert!(run::<InstantCancel>(&Params { near_miss_pct: Some(81), ..near }, &e).is_empty(), "40 < 81% of 50");
        // At min_cancels 40 the key is near at 32 (a near-miss), then crosses at 40.
        let kinds = |p: &Params| run::<InstantCancel>(p, &e).iter().map(|(a, _)| a.near_miss).collect::<Vec<_>>();
        assert_eq!(kinds(&Params { min_cancels: 40, ..near }), vec![true, false, true, false]);
        // At min_cancels 1 it crosses at its first cancel; later it is near
        // (4 of 5, ..., 40 of 50) without crossing, but it crossed that day: no near-miss.
        assert_eq!(kinds(&Params { min_cancels: 1, ..near }), vec![false, false]);
    }

    #[test]
    fn a_key_hot_at_a_checkpoint_alerts_again_after_its_cooldown_once_restored() {
        // Group 5 on instrument 3: three orders each pulled after 100 ms
        // (crosses: 3 instant cancels of 3 orders), four it leaves (below at
        // the 7th: 3 of 7 < 50%), then, past the 1 s cooldown, two more
        // pulled (5 of 9 orders): a second episode. The key's episode is
        // apart from its counts (only keys that crossed have one): a restore
        // at any record, the key hot or not, must give the same two alerts.
        let mut e = Vec::new();
        let mut ts = at(10, 0, 0);
        for i in 0..9u64 {
            ts += 300 * MS;
            e.push(new_order(0, ts, 100 + i, 1, 5, 3, Buy, px(1000), 100));
            if !(3..7).contains(&i) {
                e.push(cancel(0, ts + 100 * MS, 100 + i, 1, 5, 3, Buy, px(1000), 100));
            }
            if i == 6 {
                ts += 2 * SEC;
            }
        }
        let e = sorted(e);
        let p = Params { min_cancels: 3, cooldown_ns: 1000 * MS, ..Params::default() };
        let seqs =
            |alerts: Vec<(Alert, Vec<u64>)>| alerts.iter().map(|(a, _)| (a.seq, a.evidence.0[5])).collect::<Vec<_>>();
        let straight = seqs(run::<InstantCancel>(&p, &e));
        assert_eq!(straight.len(), 2, "two episodes: {straight:?}");
        assert_eq!((straight[0].1, straight[1].1), (1, 2));
        for cut in 0..=e.len() {
            assert_eq!(seqs(run_restored::<InstantCancel>(&p, &e, cut)), straight, "restored at record {cut}");
        }
    }

    /// 1200 (group, instrument) keys, each with four orders; a third of
    /// the groups pull theirs within 100 ms (instant), the rest after 5 s.
    /// Every key has its first order before any key has its second: the
    /// keys arrive through the first quarter of the records.
    fn many_keys() -> Vec<Event> {
        let mut e = Vec::new();
        for n in 0..4u64 {
            for k in 0..1200u64 {
                let (group, inst) = ((k / 4) as u32, (k % 4) as u32);
                let ts = at(10, 0, 0) + (n * 1200 + k) as i64 * 10 * MS;
                let id = n * 10_000 + k + 1;
                let delay = if group % 3 == 0 { 100 * MS } else { 5 * SEC };
                e.push(new_order(0, ts, id, group + 1, group, inst, Buy, px(1000), 100));
                e.push(cancel(0, ts + delay, id, group + 1, group, inst, Buy, px(1000), 100));
            }
        }
        sorted(e)
    }

    /// Runs `rules` side by side over `events` (the views once), a snapshot
    /// cut after `cut` records and copied from record `copy_from` on, a
    /// slice a record; each rule's alerts, and its image (keys sorted) if cut.
    fn side_by_side(
        rules: &mut [InstantCancel],
        events: &[Event],
        cut: usize,
        copy_from: usize,
    ) -> Vec<(Vec<u64>, Option<Image>)> {
        let mut views = Views::new(InstantCancel::READS, &ViewConfig::default());
        let mut out: Vec<Collect> = rules.iter().map(|_| Collect::default()).collect();
        let mut images: Vec<Option<Image>> = rules.iter().map(|_| None).collect();
        for (i, e) in events.iter().enumerate() {
            let seen = views.update(e);
            for ((rule, out), image) in rules.iter_mut().zip(&mut out).zip(&mut images) {
                if i == cut {
                    rule.begin_snapshot(Image::default());
                }
                rule.on_record(e, &seen, out);
                if i >= copy_from && image.is_none() {
                    *image = rule.copy_slice(1);
                }
            }
        }
        rules
            .iter_mut()
            .zip(out)
            .zip(images)
            .map(|((rule, out), image)| {
                let image = image.or_else(|| rule.copy_slice(usize::MAX)).map(|mut image| {
                    image.keys.sort_unstable_by_key(|(k, _)| *k);
                    image.episodes.sort_unstable_by_key(|(k, _)| *k);
                    image.involved.sort_unstable_by_key(|(k, _)| *k);
                    image
                });
                (out.alerts.iter().map(|(a, _)| a.seq).collect(), image)
            })
            .collect()
    }

    #[test]
    fn the_key_table_grows_from_small_and_alerts_as_one_sized_for_the_day() {
        let events = many_keys();
        let p = Params { min_cancels: 3, ..Params::default() };
        // A snapshot cut while keys still arrive (about 400 of 1200 at the
        // barrier) and copied 1000 records later: the small table doubles
        // with the copy in progress, which it finishes first.
        let cut = events.len() / 16;
        let mut rules =
            [InstantCancel::with_limits(&p, 16, MAX_KEYS), InstantCancel::with_limits(&p, 1 << 12, MAX_KEYS)];
        let grew_at_cut = {
            let mut probe = [InstantCancel::with_limits(&p, 16, MAX_KEYS)];
            side_by_side(&mut probe, &events[..cut], usize::MAX, usize::MAX);
            probe[0].keys.grew
        };
        let got = side_by_side(&mut rules, &events, cut, cut + 1000);
        let (small, big) = (&rules[0], &rules[1]);
        assert_eq!(small.keys.grew, 5, "16 keys (64 slots, the fewest) to 1200 (2048 slots, three quarters full)");
        assert!(grew_at_cut < 5, "a doubling during the snapshot (grew {grew_at_cut} before it)");
        assert_eq!(big.keys.grew, 0);
        assert_eq!((small.keys.len(), big.keys.len()), (1200, 1200));
        assert_eq!(got[0].0.len(), 400, "each key of every third group crosses once");
        assert_eq!(got[0].0, got[1].0, "the same alerts");
        let (a, b) = (got[0].1.as_ref().unwrap(), got[1].1.as_ref().unwrap());
        assert!(!a.keys.is_empty() && a.keys.len() < 1200, "the image is the keys at the barrier: {}", a.keys.len());
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.episodes, b.episodes);
        assert_eq!(a.involved, b.involved);
        assert_eq!((small.stats().keys_refused, big.stats().keys_refused), (0, 0));
    }

    #[test]
    fn keys_past_the_limit_are_refused_and_counted() {
        let events = many_keys();
        let p = Params { min_cancels: 3, ..Params::default() };
        let mut rules =
            [InstantCancel::with_limits(&p, 16, 1000), InstantCancel::new(&p, &Sizing { window_capacity: 1024 })];
        let got = side_by_side(&mut rules, &events, usize::MAX, usize::MAX);
        let (capped, free) = (rules[0].stats(), rules[1].stats());
        assert_eq!(capped.active_keys, 1000);
        // The last 200 keys' records (4 orders and 4 cancels each) are not tracked.
        assert_eq!(capped.keys_refused, 200 * 8);
        assert_eq!((free.active_keys, free.keys_refused), (1200, 0));
        // Refused keys cannot alert: those of groups 250..300 (every third crossing) lose theirs.
        let lost = (250..300).filter(|g| g % 3 == 0).count() * 4;
        assert_eq!(got[0].0.len() + lost, got[1].0.len());
    }

    /// The alerts (`near` none) or the near-misses (the first record of a
    /// key's day that reaches that share of both thresholds, unless it or
    /// an earlier record of that day crossed).
    fn brute_force(p: &Params, events: &[Event], near_pct: Option<u32>) -> Vec<u64> {
        let mut out = Vec::new();
        let mut days = std::collections::HashSet::new();
        let mut episodes: FxHashMap<u64, Episode> = FxHashMap::default();
        for (i, e) in events.iter().enumerate() {
            let day = day_of(e.ts_ns);
            let mine: Vec<&Event> = events[..=i]
                .iter()
                .filter(|x| x.group == e.group && x.instrument == e.instrument && day_of(x.ts_ns) == day)
                .collect();
            let orders = mine.iter().filter(|x| x.kind == Kind::New).count() as u32;
            let instant = mine
                .iter()
                .filter(|c| {
                    c.kind == Kind::Cancel
                        && events.iter().any(|n| {
                            n.kind == Kind::New
                                && n.order_id == c.order_id
                                && n.instrument == c.instrument
                                && c.ts_ns - n.ts_ns <= p.within_ns
                        })
                })
                .count() as u32;
            if let Some(pct) = near_pct {
                let crossing = crosses(p, instant, orders);
                // A crossing uses up the day too.
                let first_of_day =
                    (crossing || near(p, pct, instant, orders)) && days.insert((e.group, e.instrument, day));
                if first_of_day && !crossing {
                    out.push(e.seq);
                }
                continue;
            }
            let outcome = episodes.entry(key(e.group, e.instrument)).or_default().observe(
                e.ts_ns,
                crosses(p, instant, orders),
                p.cooldown_ns,
            );
            if let Outcome::New(_) = outcome {
                out.push(e.seq);
            }
        }
        out
    }

    /// The key table and the lists against a `HashMap` model under
    /// `before`, a snapshot cut, then `after` applied while the snapshot is
    /// copied in slices of `slice` slots every `every` operations: the
    /// images are the model at the barrier (the table growing or not), and
    /// the table is the model throughout. An operation adds `v` to a key's
    /// orders (inserting it unless the table holds `max` keys) and, if `v`
    /// is odd, records order `v` in the key's list (making one if it has
    /// none). Key 119 stands for `u64::MAX`, the key kept aside.
    fn check_tables(
        before: &[(u64, u32)],
        after: &[(u64, u32)],
        slice: usize,
        every: usize,
        max: usize,
    ) -> Result<(), TestCaseError> {
        let mut keys = KeyTable::with_capacity(4);
        let mut lists = Lists::with_capacity(2);
        let mut model: FxHashMap<u64, (u32, Option<Involved>)> = FxHashMap::default();
        let id = |k: u64| if k == 119 { u64::MAX } else { k };
        let apply = |keys: &mut KeyTable,
                     lists: &mut Lists,
                     model: &mut FxHashMap<u64, (u32, Option<Involved>)>,
                     (k, v): (u64, u32)| {
            let k = id(k);
            let Some(at) = keys.upsert(k, max) else {
                prop_assert!(!model.contains_key(&k) && model.len() >= max);
                return Ok(());
            };
            let m = model.entry(k).or_default();
            let mut s = keys.load(at);
            s.orders += v;
            m.0 += v;
            if v % 2 == 1 {
                let list = s.list().unwrap_or_else(|| {
                    let list = lists.push(k);
                    s.set_list(list);
                    list
                });
                lists.get_mut(list).order(v as u64);
                m.1.get_or_insert_default().order(v as u64);
            }
            keys.store(at, s);
            prop_assert_eq!(keys.len(), model.len());
            Ok(())
        };
        for &op in before {
            apply(&mut keys, &mut lists, &mut model, op)?;
        }
        let sorted = |mut v: Vec<(u64, u32, Option<Involved>)>| {
            v.sort_unstable_by_key(|e| e.0);
            v
        };
        let expected = sorted(model.iter().map(|(k, (orders, list))| (*k, *orders, *list)).collect());
        keys.begin_snapshot(Vec::new());
        lists.begin_snapshot(Vec::new());
        let (mut key_image, mut list_image) = (None, None);
        for chunk in after.chunks(every) {
            for &op in chunk {
                apply(&mut keys, &mut lists, &mut model, op)?;
            }
            if key_image.is_none() {
                key_image = keys.copy_slice(slice);
            }
            if list_image.is_none() {
                list_image = lists.copy_slice(slice);
            }
        }
        let key_image = key_image.or_else(|| keys.copy_slice(usize::MAX)).unwrap();
        let list_image: FxHashMap<u64, Involved> =
            list_image.or_else(|| lists.copy_slice(usize::MAX)).unwrap().into_iter().collect();
        let image = sorted(key_image.iter().map(|(k, s)| (*k, s.orders, list_image.get(k).copied())).collect());
        prop_assert_eq!(image, expected);
        let lists_at_barrier = key_image.iter().filter(|(_, s)| s.list().is_some()).count();
        prop_assert_eq!(list_image.len(), lists_at_barrier);
        let now = sorted(keys.iter().map(|(k, s)| (k, s.orders, s.list().map(|l| *lists.get(l)))).collect());
        prop_assert_eq!(now, sorted(model.into_iter().map(|(k, (orders, list))| (k, orders, list)).collect()));
        // Outside a snapshot, no slot or list is marked copied.
        prop_assert!(keys.copied.iter().chain(&lists.copied).all(|w| *w == 0));
        Ok(())
    }

    proptest! {
        /// Whatever is inserted and changed while a snapshot is copied in
        /// slices (the key table growing or not, lists added), the images
        /// are the tables at the barrier.
        #[test]
        fn the_tables_image_is_the_tables_at_the_barrier(
            before in prop::collection::vec((0u64..120, 1u32..50), 0..200),
            after in prop::collection::vec((0u64..120, 1u32..50), 0..200),
            slice in 1usize..200,
            every in 1usize..10,
            max in prop::sample::select(vec![usize::MAX, 20, 70]),
        ) {
            check_tables(&before, &after, slice, every, max)?;
        }

        #[test]
        fn agrees_with_the_definition(
            recs in prop::collection::vec((0u32..3, 0u32..2, 0i64..1500, prop::bool::ANY, 0u8..40), 1..120),
            min_cancels in 1u32..8, min_share_pct in 0u32..100, cooldown_ms in 0i64..5000, near_pct in 1u32..100,
            cut in 0usize..240,
        ) {
            let p = Params { within_ns: 1000 * MS, min_cancels, min_share_pct, cooldown_ns: cooldown_ms * MS, near_miss_pct: None };
            let mut e = Vec::new();
            let mut ts = at(10, 0, 0);
            for (i, &(group, inst, delay, cancelled, next_day)) in recs.iter().enumerate() {
                // Now and then the next trading day.
                ts += 300 * MS + if next_day == 0 { 86_400 * SEC } else { 0 };
                let id = i as u64 + 1;
                e.push(new_order(0, ts, id, group, group, inst, Buy, px(1000), 100));
                if cancelled {
                    e.push(cancel(0, ts + delay * MS, id, group, group, inst, Buy, px(1000), 100));
                }
            }
            let events = sorted(e);
            let got: Vec<u64> = run::<InstantCancel>(&p, &events).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&got, &brute_force(&p, &events, None));
            let restored: Vec<u64> = run_restored::<InstantCancel>(&p, &events, events.len() / 2).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&restored, &got);
            // Near-misses on: the same alerts, the near-misses of the definition, and the same after a restore.
            let with = Params { near_miss_pct: Some(near_pct), ..p };
            let split = |all: &[(Alert, Vec<u64>)], near: bool| -> Vec<u64> {
                all.iter().filter(|(a, _)| a.near_miss == near).map(|(a, _)| a.seq).collect()
            };
            let all = run::<InstantCancel>(&with, &events);
            prop_assert_eq!(&split(&all, false), &got);
            prop_assert_eq!(&split(&all, true), &brute_force(&p, &events, Some(near_pct)));
            let restored = run_restored::<InstantCancel>(&with, &events, cut.min(events.len()));
            prop_assert_eq!(split(&restored, true), split(&all, true));
        }
    }
}
