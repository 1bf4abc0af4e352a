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

pub struct ExcessiveCancel {
    params: ExcessiveCancelParams,
    slot_of: FxHashMap<u64, u32>,
    keys: Vec<KeyState>,
    free: Vec<u32>,
    /// Keys in `slot_of` whose window is empty and that are not hot.
    idle: usize,
    window: VecDeque<Entry>,
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
            free: Vec::with_capacity(key_capacity),
            idle: 0,
            window: VecDeque::with_capacity(window_capacity),
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
    #[inline]
    fn expire(&mut self, horizon: i64) {
        while let Some(front) = self.window.front() {
            if front.ts_ns > horizon {
                break;
            }
            let Entry { slot, cancel, .. } = *front;
            self.window.pop_front();
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
                if self.params.min_cancels >= 2 {
                    state.hot = false;
                }
                if !state.hot {
                    self.idle += 1;
                }
            }
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
        let state = KeyState::default();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.keys[slot as usize] = state;
                slot
            }
            None => {
                if self.keys.len() == self.keys.capacity() {
                    self.grew += 1;
                }
                self.keys.push(state);
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

    /// (key slots, window entries): what a checkpoint image must hold.
    pub fn footprint(&self) -> (usize, usize) {
        (self.keys.len(), self.window.len())
    }

    pub fn stats(&self) -> super::DetectorStats {
        super::DetectorStats {
            window_entries: self.window.len(),
            active_keys: self.slot_of.len() - self.idle,
            grew: self.grew,
        }
    }
}

/// The window state as of a barrier, copied in bulk (see `copy_into`).
#[derive(Default)]
pub struct Image {
    /// Every (key, slot) of the hash table, idle keys included (filtered
    /// when encoding, off the shard).
    pairs: Vec<(u64, u32)>,
    keys: Vec<KeyState>,
    window: Vec<Entry>,
}

impl Image {
    /// Grows each part to twice what it holds now (or `keys`/`entries`),
    /// touching the memory, so the next copy neither allocates nor takes
    /// page faults on the shard. Called when the image is made and by the
    /// checkpoint writer after encoding it.
    pub fn prepare(&mut self, keys: usize, entries: usize) {
        fn grow<T: Copy>(v: &mut Vec<T>, want: usize, fill: T) {
            if v.capacity() < want {
                v.clear();
                v.resize(want, fill);
            }
            v.clear();
        }
        let pair_want = keys.max(2 * self.pairs.len());
        let key_want = keys.max(2 * self.keys.len());
        let entry_want = entries.max(2 * self.window.len());
        grow(&mut self.pairs, pair_want, (0, 0));
        grow(&mut self.keys, key_want, KeyState::default());
        grow(&mut self.window, entry_want, Entry { ts_ns: 0, slot: 0, cancel: false });
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        let live = self.pairs.iter().filter(|(_, slot)| !self.keys[*slot as usize].is_idle()).count();
        w.out.reserve(16 + live * KEY_BYTES + self.window.len() * ENTRY_BYTES);
        w.u64(live as u64);
        for &(key, slot) in &self.pairs {
            let state = self.keys[slot as usize];
            if state.is_idle() {
                continue;
            }
            let mut record = [0u8; KEY_BYTES];
            record[0..4].copy_from_slice(&slot.to_le_bytes());
            record[4..12].copy_from_slice(&key.to_le_bytes());
            record[12..16].copy_from_slice(&state.new_orders.to_le_bytes());
            record[16..20].copy_from_slice(&state.cancels.to_le_bytes());
            record[20] = state.hot as u8;
            w.out.extend_from_slice(&record);
        }
        w.u64(self.window.len() as u64);
        for entry in &self.window {
            let mut record = [0u8; ENTRY_BYTES];
            record[0..8].copy_from_slice(&entry.ts_ns.to_le_bytes());
            record[8..12].copy_from_slice(&entry.slot.to_le_bytes());
            record[12] = entry.cancel as u8;
            w.out.extend_from_slice(&record);
        }
    }
}

const KEY_BYTES: usize = 21;
const ENTRY_BYTES: usize = 13;

/// Checkpoint hooks. Only keys with something in their window (or hot)
/// are written: an idle key is the same as a key never seen. Layout:
/// the keys `(slot, key, new_orders, cancels, hot)`, then the window
/// entries `(ts_ns, slot, cancel)` oldest first.
impl ExcessiveCancel {
    /// Copies the window state into `image` at a barrier: the hash table's
    /// (key, slot) pairs, then two bulk copies (key slots, window), into the
    /// image's own reused and pre-touched allocations. This is the shard's
    /// whole stall; encoding happens on the checkpoint writer thread.
    pub fn copy_into(&self, image: &mut Image) {
        image.pairs.clear();
        image.pairs.extend(self.slot_of.iter().map(|(&key, &slot)| (key, slot)));
        image.keys.clear();
        image.keys.extend_from_slice(&self.keys);
        image.window.clear();
        let (front, back) = self.window.as_slices();
        image.window.extend_from_slice(front);
        image.window.extend_from_slice(back);
    }

    /// Adds the keys of one snapshot for which `keep(key)` holds (a shard
    /// keeps its own instruments, so state moves when the shard count
    /// changes). Call `restored` after the last snapshot.
    pub fn restore(&mut self, r: &mut Reader<'_>, keep: impl Fn(u64) -> bool) -> Result<(), DecodeError> {
        let keys = r.count(KEY_BYTES)?;
        let mut slots: FxHashMap<u32, u32> = FxHashMap::default();
        for _ in 0..keys {
            let (old_slot, key) = (r.u32()?, r.u64()?);
            let state = KeyState { new_orders: r.u32()?, cancels: r.u32()?, hot: r.u8()? != 0 };
            if state.is_idle() {
                return Err(DecodeError(format!("idle key {key:#x} in a snapshot")));
            }
            if !keep(key) {
                continue;
            }
            if self.slot_of.contains_key(&key) {
                return Err(DecodeError(format!("key {key:#x} in two snapshots")));
            }
            let slot = self.keys.len() as u32;
            self.keys.push(state);
            self.slot_of.insert(key, slot);
            slots.insert(old_slot, slot);
        }
        let entries = r.count(ENTRY_BYTES)?;
        let mut seen = vec![(0u32, 0u32); self.keys.len()];
        for _ in 0..entries {
            let (ts_ns, old_slot, cancel) = (r.i64()?, r.u32()?, r.u8()? != 0);
            let Some(&slot) = slots.get(&old_slot) else { continue };
            let counts = &mut seen[slot as usize];
            if cancel {
                counts.1 += 1
            } else {
                counts.0 += 1
            }
            self.window.push_back(Entry { ts_ns, slot, cancel });
        }
        for &slot in slots.values() {
            let state = self.keys[slot as usize];
            if seen[slot as usize] != (state.new_orders, state.cancels) {
                return Err(DecodeError(format!("key slot {slot}: counts do not match its window entries")));
            }
        }
        Ok(())
    }

    /// After the last `restore`: entries merged from several snapshots are
    /// put back into one time-ordered FIFO (expiry only compares times, so
    /// the order among equal times does not matter).
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
