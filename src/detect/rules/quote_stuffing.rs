//! quote-stuffing (高频申报): per (account, instrument), orders plus cancels
//! `min_in_window` or more in any trailing window of `window_ms` (default
//! 300 in 1 s), or `min_in_day` or more in the trading day (default 20,000).
//! One alert per episode (`cooldown_ms`, default 60 s).
//!
//! The window entries of all keys form one time-ordered FIFO (the shard
//! applies records in time order); each record pushes one and expires those
//! that left `(t - window, t]`. An entry names its key's place in a dense
//! array (`slots`), so an expiry probes no table: a record costs one probe
//! (key to place), an expiry none. A key's crossing is evaluated at its own
//! records, and it falls below when an entry leaving the window takes its
//! count under the threshold (at the time the entry left). Limit: `MAX_KEYS` keys per shard, past it a new key is counted
//! (`refused`) and not tracked.
//!
//! Near-misses (`near_miss_pct`, off by default): a key whose window count
//! reaches that share of `min_in_window`, or whose day count reaches that
//! share of `min_in_day` (the rule crosses on either), without crossing.
//! They have episodes of their own, kept like the alerts' (same cooldown,
//! falling below when an entry leaves): one near-miss per near episode, at
//! its first record, unless that record crosses.

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::{MS, Problems};
use crate::detect::rule::{Emit, Kinds, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::episode::{Episode, EpisodeCounts, Outcome, day_of, key};
use crate::event::Event;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use std::collections::VecDeque;
use toml::Spanned;

/// Off unless the rules file turns it on (`enabled = true`): about 240
/// shard instructions a new order or cancel (a hash probe, a map insert
/// for each new key of the day, a `VecDeque` window), which would cut a
/// default replay's speed by about a third (the default rules execute
/// about 365 a record: docs/PERFORMANCE.md). On by default
/// once it costs about what excessive-cancel does.
pub const ENABLED_BY_DEFAULT: bool = false;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub window_ns: i64,
    pub min_in_window: u32,
    pub min_in_day: u64,
    pub cooldown_ns: i64,
    /// Near-misses: the share of each threshold (1-99) that makes one; none: off.
    pub near_miss_pct: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            window_ns: 1000 * MS,
            min_in_window: 300,
            min_in_day: 20_000,
            cooldown_ns: 60_000 * MS,
            near_miss_pct: None,
        }
    }
}

impl Params {
    /// The near-miss levels: the window count that reaches `pct`% of
    /// `min_in_window` (rounded up), and `pct`.
    fn near(&self) -> Option<(u32, u32)> {
        self.near_miss_pct.map(|pct| ((pct as u64 * self.min_in_window as u64).div_ceil(100) as u32, pct))
    }
}

/// Whether a day count reaches `pct`% of `min_in_day`.
#[inline]
fn near_day(p: &Params, pct: u32, in_day: u64) -> bool {
    in_day as u128 * 100 >= pct as u128 * p.min_in_day as u128
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    window_ms: Option<Spanned<i64>>,
    min_in_window: Option<Spanned<i64>>,
    min_in_day: Option<Spanned<i64>>,
    cooldown_ms: Option<Spanned<i64>>,
    near_miss_pct: Option<Spanned<i64>>,
}

pub const MAX_KEYS: usize = 1 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Key {
    in_window: u32,
    group: u32,
    day: i64,
    in_day: u64,
    episode: Episode,
    /// Near-miss episodes (`near_miss_pct`; checkpointed only then).
    near: Episode,
}

pub struct QuoteStuffing {
    params: Params,
    /// (ts_ns, the key's index in `slots`), oldest first.
    window: VecDeque<(i64, u32)>,
    /// Each key's index in `slots` (keys stay for the day's counts).
    keys: FxHashMap<u64, u32>,
    /// The keys and their state, in the order first seen.
    slots: Vec<(u64, Key)>,
    pub counts: EpisodeCounts,
    refused: u64,
    grew: u64,
    image: Option<Vec<u8>>,
}

impl Rule for QuoteStuffing {
    const ID: u16 = 0x11;
    const NAME: &'static str = "quote-stuffing";
    const TABLE: &'static str = "quote_stuffing";
    const VERSION: u16 = 1;
    const KINDS: Kinds = Kinds::NEW.or(Kinds::CANCEL);
    type Raw = Raw;
    type Params = Params;
    type Image = Vec<u8>;

    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Params> {
        let d = Params::default();
        let window_ms = p.int(raw.window_ms, "window_ms", 1..=3_600_000, d.window_ns / MS);
        let min_in_window = p.int(raw.min_in_window, "min_in_window", 1..=10_000_000, d.min_in_window as i64);
        let min_in_day = p.int(raw.min_in_day, "min_in_day", 1..=1_000_000_000, d.min_in_day as i64);
        let cooldown_ms = p.int(raw.cooldown_ms, "cooldown_ms", 0..=86_400_000, d.cooldown_ns / MS);
        let near_miss_pct = p.near_miss_pct(raw.near_miss_pct);
        raw.enabled.unwrap_or(ENABLED_BY_DEFAULT).then_some(Params {
            window_ns: window_ms * MS,
            min_in_window: min_in_window as u32,
            min_in_day: min_in_day as u64,
            cooldown_ns: cooldown_ms * MS,
            near_miss_pct,
        })
    }

    fn encode_params(p: &Params, w: &mut Writer<'_>) {
        w.i64(p.window_ns);
        w.u32(p.min_in_window);
        w.u64(p.min_in_day);
        w.i64(p.cooldown_ns);
        // Only when set: the parameter version of a rule without it is unchanged.
        if let Some(pct) = p.near_miss_pct {
            w.u32(pct);
        }
    }

    fn show(p: &Params, out: &mut String) {
        out.push_str(&format!(
            "window_ms = {}\nmin_in_window = {}\nmin_in_day = {}\ncooldown_ms = {}\n",
            p.window_ns / MS,
            p.min_in_window,
            p.min_in_day,
            p.cooldown_ns / MS
        ));
        crate::config::show_near_miss_pct(p.near_miss_pct, out);
    }

    fn new(params: &Params, sizing: &Sizing) -> QuoteStuffing {
        QuoteStuffing {
            params: *params,
            window: VecDeque::with_capacity(sizing.window_capacity.min(1 << 20)),
            keys: FxHashMap::default(),
            slots: Vec::new(),
            counts: EpisodeCounts::default(),
            refused: 0,
            grew: 0,
            image: None,
        }
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, _: &Seen<'_>, out: &mut impl Emit) {
        let t = event.ts_ns;
        let horizon = t - self.params.window_ns;
        while let Some(&(ts, at)) = self.window.front() {
            if ts > horizon {
                break;
            }
            self.window.pop_front();
            if let Some((_, s)) = self.slots.get_mut(at as usize) {
                s.in_window -= 1;
                // The key fell below at the time the entry left the window
                // (a time that does not depend on when this runs).
                if s.in_window + 1 == self.params.min_in_window && s.in_day < self.params.min_in_day {
                    s.episode.observe(ts + self.params.window_ns, false, self.params.cooldown_ns);
                }
                if let Some((near_window, pct)) = self.params.near()
                    && s.in_window + 1 == near_window
                    && !near_day(&self.params, pct, s.in_day)
                {
                    s.near.observe(ts + self.params.window_ns, false, self.params.cooldown_ns);
                }
            }
        }
        let k = key(event.account, event.instrument);
        let at = match self.keys.get(&k) {
            Some(&at) => at,
            None => match self.add_key(k) {
                Some(at) => at,
                None => return,
            },
        };
        self.grew += (self.window.len() == self.window.capacity()) as u64;
        self.window.push_back((t, at));
        let s = &mut self.slots[at as usize].1;
        let day = day_of(t);
        if s.day != day {
            s.day = day;
            s.in_day = 0;
        }
        s.in_window += 1;
        s.in_day += 1;
        s.group = event.group;
        let p = self.params;
        let crossing = s.in_window >= p.min_in_window || s.in_day >= p.min_in_day;
        let outcome = s.episode.observe(t, crossing, p.cooldown_ns);
        self.counts.count(outcome);
        // The last word is the episode, or for a near-miss the share.
        let evidence = |s: &Key, last: u64| {
            Evidence([
                s.in_window as u64,
                (p.window_ns / MS) as u64,
                p.min_in_window as u64,
                s.in_day,
                p.min_in_day,
                last,
            ])
        };
        if let Outcome::New(n) = outcome {
            let evidence = evidence(s, n as u64);
            // The key is one account; the order that crossed is the one named
            // (the key is kept small: it is probed on every order and cancel).
            out.alert(Alert::about(Self::ID, event, evidence), &[event.account as u64, event.order_id]);
        }
        if let Some((near_window, pct)) = p.near() {
            let near = s.in_window >= near_window || near_day(&p, pct, s.in_day);
            if s.near.near_miss(t, near, crossing, p.cooldown_ns) {
                // Rare: goes out the way alerts do (no allocation). The
                // episode word says the share instead (a near-miss has none).
                let evidence = evidence(s, (pct as u64) << 32);
                let alert = Alert { near_miss: true, ..Alert::about(Self::ID, event, evidence) };
                out.alert(alert, &[event.account as u64, event.order_id]);
            }
        }
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        let [in_window, window_ms, min_in_window, in_day, min_in_day, episode] = evidence.0;
        json.u64("orders_and_cancels_in_window", in_window);
        json.u64("window_ms", window_ms);
        json.u64("min_in_window", min_in_window);
        json.u64("orders_and_cancels_in_day", in_day);
        json.u64("min_in_day", min_in_day);
        if episode >> 32 != 0 {
            json.u64("near_miss_pct", episode >> 32);
        } else {
            json.u64("episode", episode);
        }
        // The list: the key's account, then the order that crossed.
        json.accounts("accounts", list.get(..1).unwrap_or(&[]));
        json.u64_list("crossing_order_id", list.get(1..2).unwrap_or(&[]));
    }

    fn episodes(&self) -> Option<EpisodeCounts> {
        Some(self.counts)
    }

    fn stats(&self) -> RuleStats {
        RuleStats { window_entries: self.window.len(), active_keys: self.slots.len(), hot_keys: 0, grew: self.grew }
    }

    // Copied whole at the barrier: O(entries in the 1 s window + keys).
    fn begin_snapshot(&mut self, mut image: Vec<u8>) {
        image.clear();
        let mut w = Writer::new(&mut image);
        w.u64(self.window.len() as u64);
        for &(ts, at) in &self.window {
            w.i64(ts);
            w.u64(self.slots[at as usize].0);
        }
        w.u64(self.slots.len() as u64);
        for (k, s) in &self.slots {
            w.u64(*k);
            w.u32(s.in_window);
            w.u32(s.group);
            w.i64(s.day);
            w.u64(s.in_day);
            s.episode.encode(&mut w);
            if self.params.near_miss_pct.is_some() {
                s.near.encode(&mut w);
            }
        }
        self.image = Some(image);
    }

    fn copy_slice(&mut self, _: usize) -> Option<Vec<u8>> {
        Some(self.image.take().unwrap_or_default())
    }

    fn encode_image(image: &Vec<u8>, w: &mut Writer<'_>) {
        w.out.extend_from_slice(image);
    }

    fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        // The window names keys; their places are known once the keys are read.
        let mut window = Vec::new();
        for _ in 0..r.count(16)? {
            let (ts, k) = (r.i64()?, r.u64()?);
            if keep(k) {
                window.push((ts, k));
            }
        }
        let near = self.params.near_miss_pct.is_some();
        for _ in 0..r.count(40)? {
            let k = r.u64()?;
            let s = Key {
                in_window: r.u32()?,
                group: r.u32()?,
                day: r.i64()?,
                in_day: r.u64()?,
                episode: Episode::decode(r)?,
                near: if near { Episode::decode(r)? } else { Episode::default() },
            };
            if !keep(k) {
                continue;
            }
            // A key in two snapshots keeps the last, as a map insert would.
            match self.keys.get(&k) {
                Some(&at) => self.slots[at as usize].1 = s,
                None => {
                    self.keys.insert(k, self.slots.len() as u32);
                    self.slots.push((k, s));
                }
            }
        }
        for (ts, k) in window {
            let Some(&at) = self.keys.get(&k) else {
                return Err(DecodeError(format!("a quote-stuffing window entry of key {k:#x}, which has no state")));
            };
            self.window.push_back((ts, at));
        }
        Ok(())
    }

    /// Old shards' FIFOs were appended one after the other: one time order again.
    fn restored(&mut self) {
        self.window.make_contiguous().sort_by_key(|&(ts, _)| ts);
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(vec![("window entries", Reader::new(section).u64()?)])
    }
}

impl QuoteStuffing {
    /// A key seen for the first time: its place in `slots`, or `None` when
    /// `MAX_KEYS` are tracked already (counted in `refused`).
    #[cold]
    #[inline(never)]
    fn add_key(&mut self, k: u64) -> Option<u32> {
        if self.slots.len() >= MAX_KEYS {
            self.refused += 1;
            return None;
        }
        let at = self.slots.len() as u32;
        self.grew +=
            (self.keys.len() == self.keys.capacity()) as u64 + (self.slots.len() == self.slots.capacity()) as u64;
        self.keys.insert(k, at);
        self.slots.push((k, Key::default()));
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::testkit::*;
    use crate::event::Side::Buy;
    use proptest::prelude::*;

    /// A burst: `n` orders each cancelled 2 ms later, `gap` apart, from `start`.
    fn burst(events: &mut Vec<Event>, start: i64, n: u64, gap: i64, account: u32, inst: u32) {
        for i in 0..n {
            let id = events.len() as u64 + 1;
            let ts = start + i as i64 * gap;
            events.push(new_order(0, ts, id, account, 100 + account, inst, Buy, px(990), 100));
            events.push(cancel(0, ts + 2 * MS, id, account, 100 + account, inst, Buy, px(990), 100));
        }
    }

    fn sorted(mut events: Vec<Event>) -> Vec<Event> {
        events.sort_by_key(|e| (e.ts_ns, e.order_id, e.kind as u8));
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        events
    }

    #[test]
    fn bursts_of_stuffing_are_one_alert_each_and_a_market_maker_is_silent() {
        let mut e = Vec::new();
        // Three bursts of 170 orders + 170 cancels within 0.85 s, minutes apart.
        for m in [0, 5, 12] {
            burst(&mut e, at(10, m, 0), 170, 5 * MS, 1, 3);
        }
        // A market maker cancels and replaces a bid and an ask every 100 ms for ten minutes.
        burst(&mut e, at(9, 30, 0), 6000, 50 * MS, 2, 3);
        let e = sorted(e);
        let alerts = run::<QuoteStuffing>(&Params::default(), &e);
        let accounts: Vec<(u32, u64)> = alerts.iter().map(|(a, _)| (a.account, a.evidence.0[5])).collect();
        assert_eq!(accounts, vec![(1, 1), (1, 2), (1, 3)], "one episode per burst, none for the maker");
        assert!(alerts[0].0.evidence.0[0] >= 300);
        // The day total: 10,000 is crossed by the maker's 12,000.
        let p = Params { min_in_day: 10_000, ..Params::default() };
        let alerts = run::<QuoteStuffing>(&p, &e);
        assert!(alerts.iter().any(|(a, _)| a.account == 2 && a.evidence.0[3] == 10_000), "day total");
        // A burst just under the threshold is silent.
        let mut e = Vec::new();
        burst(&mut e, at(10, 0, 0), 149, 6 * MS, 1, 3);
        assert!(run::<QuoteStuffing>(&Params::default(), &sorted(e)).is_empty());
    }

    #[test]
    fn bursts_at_80_pct_are_one_near_miss_per_near_episode() {
        // Bursts A (10:00:00) and B (10:00:30) of 240 records in 0.6 s: 80%
        // of 300. C (10:05:00): 340 in 0.51 s, which passes 240, then 300.
        let mut e = Vec::new();
        burst(&mut e, at(10, 0, 0), 120, 5 * MS, 1, 3);
        burst(&mut e, at(10, 0, 30), 120, 5 * MS, 1, 3);
        let ab = sorted(e.clone());
        burst(&mut e, at(10, 5, 0), 170, 3 * MS, 1, 3);
        let abc = sorted(e);
        let near = Params { near_miss_pct: Some(80), ..Params::default() };
        let got = run::<QuoteStuffing>(&near, &ab);
        assert_eq!(got.len(), 1, "B is inside A's 60 s cooldown: one near episode: {got:?}");
        let (n, list) = &got[0];
        assert!(n.near_miss);
        assert_eq!((n.account, n.seq, n.evidence.0[0], n.evidence.0[5]), (1, 240, 240, 80 << 32));
        assert_eq!((list.len(), list[0]), (2, 1), "the account and the order, as an alert's");
        let count = |p: &Params| run::<QuoteStuffing>(p, &ab).iter().filter(|(a, _)| a.near_miss).count();
        assert_eq!(count(&Params { cooldown_ns: 10_000 * MS, ..near }), 2, "a 10 s cooldown: two near episodes");
        assert_eq!(count(&Params { near_miss_pct: Some(81), ..near }), 0, "240 < 81% of 300");
        assert!(run::<QuoteStuffing>(&Params::default(), &ab).is_empty(), "off by default");
        // C: a near-miss at its 240th record, then its alert; the alerts are those without near-misses.
        let got = run::<QuoteStuffing>(&near, &abc);
        let kinds: Vec<(bool, u64)> = got.iter().map(|(a, _)| (a.near_miss, a.evidence.0[0])).collect();
        assert_eq!(kinds, vec![(true, 240), (true, 240), (false, 300)]);
        let alerts: Vec<Alert> = got.iter().filter(|(a, _)| !a.near_miss).map(|(a, _)| *a).collect();
        let plain: Vec<Alert> = run::<QuoteStuffing>(&Params::default(), &abc).iter().map(|(a, _)| *a).collect();
        assert_eq!(alerts, plain, "the alerts do not change");
    }

    /// Evaluation points per key: its records (counts up to and with the
    /// record) and the moments an entry leaves its window (counts of what
    /// is strictly before, as a later record's arrival expires them first).
    /// With `near` (a share of the thresholds), the near-misses instead.
    fn brute_force(p: &Params, events: &[Event], near: Option<u32>) -> Vec<u64> {
        let reaches = |in_window: usize, in_day: usize| match near {
            None => in_window as u32 >= p.min_in_window || in_day as u64 >= p.min_in_day,
            Some(pct) => {
                in_window as u64 * 100 >= (pct * p.min_in_window) as u64
                    || in_day as u64 * 100 >= pct as u64 * p.min_in_day
            }
        };
        let mut out = Vec::new();
        let mut episodes: FxHashMap<u64, Episode> = FxHashMap::default();
        let mut points: Vec<(i64, u8, usize)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            points.push((e.ts_ns, 1, i));
            if events.iter().any(|x| x.ts_ns >= e.ts_ns + p.window_ns) {
                points.push((e.ts_ns + p.window_ns, 0, i));
            }
        }
        points.sort();
        for (t, kind, i) in points {
            let e = &events[i];
            let same = |x: &&Event| x.account == e.account && x.instrument == e.instrument;
            let episode = episodes.entry(key(e.account, e.instrument)).or_default();
            if kind == 1 {
                let in_window = events[..=i].iter().filter(same).filter(|x| x.ts_ns > t - p.window_ns).count();
                let in_day = events[..=i].iter().filter(same).filter(|x| day_of(x.ts_ns) == day_of(t)).count();
                let crossing = in_window as u32 >= p.min_in_window || in_day as u64 >= p.min_in_day;
                let new = match near {
                    None => matches!(episode.observe(t, crossing, p.cooldown_ns), Outcome::New(_)),
                    Some(_) => {
                        matches!(episode.observe(t, reaches(in_window, in_day), p.cooldown_ns), Outcome::New(_))
                            && !crossing
                    }
                };
                if new {
                    out.push(e.seq);
                }
            } else {
                let before: Vec<&Event> = events.iter().filter(same).filter(|x| x.ts_ns < t).collect();
                let in_window = before.iter().filter(|x| x.ts_ns > t - p.window_ns).count();
                let last_day = before.last().map_or(0, |x| day_of(x.ts_ns));
                let in_day = before.iter().filter(|x| day_of(x.ts_ns) == last_day).count();
                if !reaches(in_window, in_day) {
                    episode.observe(t, false, p.cooldown_ns);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(
            recs in prop::collection::vec((0u32..3, 0u32..2, 0i64..400), 1..200),
            min_in_window in 1u32..12, min_in_day in 1u64..40, cooldown_ms in 0i64..3000, cut in 0usize..200,
            near_pct in 1u32..100,
        ) {
            let p = Params { window_ns: 1000 * MS, min_in_window, min_in_day, cooldown_ns: cooldown_ms * MS, near_miss_pct: None };
            let mut ts = at(14, 50, 0);
            let events: Vec<Event> = recs.iter().enumerate().map(|(i, &(account, inst, dt))| {
                ts += dt * MS * if dt > 390 { 1000 } else { 1 };
                new_order(i as u64 + 1, ts, i as u64, account, account, inst, Buy, px(1000), 100)
            }).collect();
            let got: Vec<u64> = run::<QuoteStuffing>(&p, &events).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&got, &brute_force(&p, &events, None));
            let restored: Vec<u64> = run_restored::<QuoteStuffing>(&p, &events, cut.min(events.len())).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&restored, &got);
            // Near-misses on: the same alerts, the near-misses of the definition, and the same after a restore.
            let with = Params { near_miss_pct: Some(near_pct), ..p };
            let split = |all: &[(Alert, Vec<u64>)], near: bool| -> Vec<u64> {
                all.iter().filter(|(a, _)| a.near_miss == near).map(|(a, _)| a.seq).collect()
            };
            let all = run::<QuoteStuffing>(&with, &events);
            prop_assert_eq!(&split(&all, false), &got);
            prop_assert_eq!(&split(&all, true), &brute_force(&p, &events, Some(near_pct)));
            let restored = run_restored::<QuoteStuffing>(&with, &events, cut.min(events.len()));
            prop_assert_eq!(split(&restored, true), split(&all, true));
        }
    }
}
