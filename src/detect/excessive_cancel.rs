//! excessive-cancel (频繁撤单): per (group, instrument), the counts of new
//! orders and cancels inside a sliding event-time window, and the hot/cold
//! episode state that makes one alert per episode.
//!
//! A shard applies records in `(ts_ns, seq)` order, so the window entries of
//! all its keys form one FIFO sorted by time. Each record pushes one entry
//! and expires the entries that fell out of `(t - window, t]`: O(1)
//! amortised per record, and memory proportional to the records inside the
//! window. A key whose window is empty (and that cannot matter any more) is
//! idle. Most keys hold only a record or two, so removing each one from the
//! hash table as it empties would cost a hash operation on almost every
//! record. Instead, idle keys are swept out in one sequential pass once they
//! are the majority. The key table stays within a constant factor of the
//! keys with recent activity.

use crate::alert::{Alert, Evidence, Rule};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::ExcessiveCancelParams;
use crate::event::{Event, Kind};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

#[derive(Clone, Copy)]
struct Entry {
    ts_ns: i64,
    slot: u32,
    cancel: bool,
}

#[derive(Clone, Copy, Default)]
struct KeyState {
    new_orders: u32,
    cancels: u32,
    hot: bool,
}

/// What checkpoints need to know of a key slot, apart from `KeyState` so
/// that the per-record state stays 12 bytes.
#[derive(Clone, Copy, Default)]
struct SlotInfo {
    /// The (group, instrument) key of this slot.
    key: u64,
    /// While hot: this key's index in `hot_keys` / `hot_slots`.
    hot_pos: u32,
}

pub struct ExcessiveCancel {
    params: ExcessiveCancelParams,
    slot_of: FxHashMap<u64, u32>,
    keys: Vec<KeyState>,
    /// Parallel to `keys`.
    slots: Vec<SlotInfo>,
    free: Vec<u32>,
    /// Keys in `slot_of` whose window is empty and that are not hot.
    idle: usize,
    window: VecDeque<Entry>,
    /// Entries ever popped from `window`: the absolute index of its front.
    popped: u64,
    /// The hot keys and their slots (parallel, unordered), kept on every
    /// hot/cold transition, so a barrier copies them without a scan.
    hot_keys: Vec<u64>,
    hot_slots: Vec<u32>,
    /// The snapshot in progress (see `begin_snapshot`): the absolute window
    /// positions `[snap_next, snap_end)` not yet copied into `snap`. Equal
    /// when no copy is pending.
    snap_next: u64,
    snap_end: u64,
    snap: Option<Image>,
    grew: u64,
}

/// Below this many keys the table is never swept: small tables are cheap.
const SWEEP_FLOOR: usize = 1 << 14;

impl KeyState {
    #[inline]
    fn is_idle(&self) -> bool {
        self.new_orders == 0 && self.cancels == 0 && !self.hot
    }
}

impl ExcessiveCancel {
    pub fn new(params: ExcessiveCancelParams, window_capacity: usize) -> ExcessiveCancel {
        let key_capacity = (window_capacity / 4).max(16);
        let mut slot_of = FxHashMap::default();
        slot_of.reserve(key_capacity);
        ExcessiveCancel {
            params,
            slot_of,
            keys: Vec::with_capacity(key_capacity),
            slots: Vec::with_capacity(key_capacity),
            free: Vec::with_capacity(key_capacity),
            idle: 0,
            window: VecDeque::with_capacity(window_capacity),
            popped: 0,
            hot_keys: Vec::with_capacity(key_capacity),
            hot_slots: Vec::with_capacity(key_capacity),
            snap_next: 0,
            snap_end: 0,
            snap: None,
            grew: 0,
        }
    }

    #[inline]
    pub fn apply(&mut self, event: &Event) -> Option<Alert> {
        let cancel = match event.kind {
            Kind::New => false,
            Kind::Cancel => true,
            Kind::Trade => return None,
        };
        let t = event.ts_ns;
        let horizon = t.saturating_sub(self.params.window_ns);
        self.expire(horizon);

        let key = (event.group as u64) << 32 | event.instrument as u64;
        let slot = self.slot(key);
        if self.window.len() == self.window.capacity() {
            self.grew += 1;
        }
        self.window.push_back(Entry { ts_ns: t, slot, cancel });
        let state = &mut self.keys[slot as usize];
        if cancel {
            state.cancels += 1;
        } else {
            state.new_orders += 1;
        }
        let (n, c) = (state.new_orders as u64, state.cancels as u64);
        let hot = c >= self.params.min_cancels as u64 && 100 * c >= self.params.ratio_pct as u64 * n;
        let was_hot = std::mem::replace(&mut state.hot, hot);
        if hot != was_hot {
            if hot {
                self.hot_add(slot);
            } else {
                self.hot_remove(slot);
            }
        }
        (hot && !was_hot).then(|| Alert {
            rule: Rule::ExcessiveCancel,
            seq: event.seq,
            ts_ns: t,
            group: event.group,
            account: event.account,
            instrument: event.instrument,
            evidence: Evidence::ExcessiveCancel {
                window_start_ns: horizon,
                window_end_ns: t,
                new_orders: n as u32,
                cancels: c as u32,
            },
            ..Alert::default()
        })
    }

    /// Drops the entries at or before `horizon`, freeing keys that go empty.
    /// An entry that a snapshot in progress has not copied yet is copied
    /// now, before it goes.
    #[inline]
    fn expire(&mut self, horizon: i64) {
        while let Some(front) = self.window.front() {
            if front.ts_ns > horizon {
                break;
            }
            let entry = *front;
            if self.snap_next != self.snap_end && self.popped == self.snap_next {
                self.save_expiring(entry);
            }
            self.window.pop_front();
            self.popped += 1;
            let Entry { slot, cancel, .. } = entry;
            let state = &mut self.keys[slot as usize];
            if cancel {
                state.cancels -= 1;
            } else {
                state.new_orders -= 1;
            }
            if state.new_orders == 0 && state.cancels == 0 {
                // With an empty window the next record alone makes c <= 1;
                // when min_cancels >= 2 it cannot be hot, so whether the key
                // was hot no longer matters and the key can be forgotten.
                if self.params.min_cancels >= 2 && state.hot {
                    state.hot = false;
                    self.hot_remove(slot);
                }
                if !self.keys[slot as usize].hot {
                    self.idle += 1;
                }
            }
        }
    }

    /// The front entry, about to expire, is the next one the snapshot in
    /// progress must copy: copy it now (O(1)).
    #[cold]
    fn save_expiring(&mut self, entry: Entry) {
        let key = self.slots[entry.slot as usize].key;
        if let Some(image) = self.snap.as_mut() {
            image.window.push(ImageEntry { ts_ns: entry.ts_ns, key, cancel: entry.cancel });
        }
        self.snap_next += 1;
    }

    #[inline]
    fn hot_add(&mut self, slot: u32) {
        if self.hot_keys.len() == self.hot_keys.capacity() {
            self.grew += 1;
        }
        let info = &mut self.slots[slot as usize];
        info.hot_pos = self.hot_keys.len() as u32;
        self.hot_keys.push(info.key);
        self.hot_slots.push(slot);
    }

    #[inline]
    fn hot_remove(&mut self, slot: u32) {
        let pos = self.slots[slot as usize].hot_pos as usize;
        self.hot_keys.swap_remove(pos);
        self.hot_slots.swap_remove(pos);
        if let Some(&moved) = self.hot_slots.get(pos) {
            self.slots[moved as usize].hot_pos = pos as u32;
        }
    }

    #[inline]
    fn slot(&mut self, key: u64) -> u32 {
        if let Some(&slot) = self.slot_of.get(&key) {
            if self.keys[slot as usize].is_idle() {
                self.idle -= 1;
            }
            return slot;
        }
        if self.slot_of.len() >= SWEEP_FLOOR && self.idle > self.slot_of.len() / 2 {
            self.sweep();
        }
        self.new_slot(key)
    }

    fn new_slot(&mut self, key: u64) -> u32 {
        let info = SlotInfo { key, hot_pos: 0 };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.keys[slot as usize] = KeyState::default();
                self.slots[slot as usize] = info;
                slot
            }
            None => {
                if self.keys.len() == self.keys.capacity() {
                    self.grew += 1;
                }
                self.keys.push(KeyState::default());
                self.slots.push(info);
                (self.keys.len() - 1) as u32
            }
        };
        self.slot_of.insert(key, slot);
        slot
    }

    /// Drops every idle key in one pass over the table; amortised over the
    /// inserts that made them, O(1) per record.
    fn sweep(&mut self) {
        let (keys, free) = (&self.keys, &mut self.free);
        self.slot_of.retain(|_, slot| {
            let keep = !keys[*slot as usize].is_idle();
            if !keep {
                free.push(*slot);
            }
            keep
        });
        self.idle = 0;
    }

    /// (hot keys, window entries): what a checkpoint image must hold.
    pub fn footprint(&self) -> (usize, usize) {
        (self.hot_keys.len(), self.window.len())
    }

    pub fn stats(&self) -> super::DetectorStats {
        super::DetectorStats {
            window_entries: self.window.len(),
            active_keys: self.slot_of.len() - self.idle,
            grew: self.grew,
        }
    }
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
    }
}

/// Bytes of one window entry in a snapshot: `(ts_ns, key, cancel)`.
pub const ENTRY_BYTES: usize = 17;

/// Checkpoint hooks. Layout: the hot keys (u64 each, any order), then the
/// window entries `(ts_ns, key, cancel)` oldest first. A key is in the
/// snapshot exactly when it has window entries or is hot: an idle key is
/// the same as a key never seen.
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
        self.snap_next = self.popped;
        self.snap_end = self.popped + self.window.len() as u64;
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
        debug_assert!(self.snap_next >= self.popped);
        let from = (self.snap_next - self.popped) as usize;
        let to = from + max.min((self.snap_end - self.snap_next) as usize);
        let slots = &self.slots;
        image.window.extend(self.window.range(from..to).map(|e| ImageEntry {
            ts_ns: e.ts_ns,
            key: slots[e.slot as usize].key,
            cancel: e.cancel,
        }));
        self.snap_next += (to - from) as u64;
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
        // Slots from earlier snapshots are below `base`: a key found there
        // was in two snapshots.
        let base = self.keys.len() as u32;
        let hot = r.count(8)?;
        for _ in 0..hot {
            let key = r.u64()?;
            if !keep(key) {
                continue;
            }
            let slot = self.restore_slot(key, base)?;
            if self.keys[slot as usize].hot {
                return Err(DecodeError(format!("hot key {key:#x} twice in a snapshot")));
            }
            self.keys[slot as usize].hot = true;
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
            let slot = self.restore_slot(key, base)?;
            let state = &mut self.keys[slot as usize];
            let cancel = cancel != 0;
            if cancel {
                state.cancels += 1;
            } else {
                state.new_orders += 1;
            }
            self.window.push_back(Entry { ts_ns, slot, cancel });
        }
        Ok(())
    }

    fn restore_slot(&mut self, key: u64, base: u32) -> Result<u32, DecodeError> {
        match self.slot_of.get(&key) {
            Some(&slot) if slot < base => Err(DecodeError(format!("key {key:#x} in two snapshots"))),
            Some(&slot) => Ok(slot),
            None => Ok(self.new_slot(key)),
        }
    }

    /// After the last `restore`: entries merged from several snapshots are
    /// put back into one time-ordered FIFO (a stable sort: each snapshot's
    /// own order is kept; expiry only compares times, so the order among
    /// equal times of different snapshots does not matter).
    pub fn restored(&mut self) {
        self.window.make_contiguous().sort_by_key(|e| e.ts_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn rec(seq: u64, ts_ns: i64, kind: Kind, group: u32) -> Event {
        Event { seq, ts_ns, kind, group, account: group, instrument: 1, ..Event::default() }
    }

    fn run(params: ExcessiveCancelParams, records: &[Event]) -> Vec<(u64, u32, u32)> {
        let mut rule = ExcessiveCancel::new(params, 4);
        records
            .iter()
            .filter_map(|e| rule.apply(e))
            .map(|a| match a.evidence {
                Evidence::ExcessiveCancel { new_orders, cancels, .. } => (a.seq, new_orders, cancels),
                Evidence::SelfTrade { .. } => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn one_alert_per_episode() {
        let params = ExcessiveCancelParams { window_ns: 10 * SEC, min_cancels: 3, ratio_pct: 90 };
        let mut records = Vec::new();
        for i in 0..3 {
            records.push(rec(records.len() as u64, i * SEC, Kind::New, 7));
        }
        for i in 0..5 {
            records.push(rec(records.len() as u64, (3 + i) * SEC, Kind::Cancel, 7));
        }
        // n = 3, c = 3 at seq 5: hot, one alert; later cancels stay in the episode.
        assert_eq!(run(params, &records), vec![(5, 3, 3)]);
    }

    #[test]
    fn window_is_half_open_and_episodes_restart() {
        let params = ExcessiveCancelParams { window_ns: 10 * SEC, min_cancels: 2, ratio_pct: 100 };
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
        assert_eq!(run(params, &records), vec![(2, 0, 2), (8, 0, 2)]);
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
        let params = ExcessiveCancelParams { window_ns: 10 * SEC, min_cancels: 1, ratio_pct: 50 };
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
        let params = ExcessiveCancelParams { window_ns: 10 * SEC, min_cancels: 2, ratio_pct: 50 };
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
    fn keys_are_separate_and_freed_when_idle() {
        let params = ExcessiveCancelParams { window_ns: SEC, min_cancels: 2, ratio_pct: 90 };
        let mut rule = ExcessiveCancel::new(params, 4);
        for group in 0..100u32 {
            rule.apply(&rec(group as u64, group as i64 * SEC, Kind::Cancel, group));
        }
        // Only the last key's entry is still inside the one-second window.
        assert_eq!(rule.stats().active_keys, 1);
        assert_eq!(rule.stats().window_entries, 1);
        // Past the sweep floor, idle keys are dropped and their slots reused.
        let total = 3 * SWEEP_FLOOR as u32;
        for group in 100..total {
            rule.apply(&rec(group as u64, group as i64 * SEC, Kind::Cancel, group));
        }
        assert_eq!(rule.stats().active_keys, 1);
        assert!(rule.slot_of.len() <= 2 * SWEEP_FLOOR, "idle keys are swept: {}", rule.slot_of.len());
        assert!(rule.keys.len() <= 2 * SWEEP_FLOOR + 1, "slots are reused, not grown: {}", rule.keys.len());
    }
}
