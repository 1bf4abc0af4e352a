//! wash-trade (自买自卖 / 互为对手方交易, day level): per (group,
//! instrument), trades whose buyer and seller are in one group make
//! `min_share_pct` or more of the instrument's volume so far in the
//! trading day, with at least `min_trades` such trades. One alert per key
//! per day, when first crossed (`self-trade` stays the per-trade rule).
//! With `near_miss_pct` set, a key whose count and share both reach that
//! share of their thresholds without crossing is one near-miss per key per
//! day (not written once the key has alerted that day).
//!
//! The share only rises at the group's own wash trades (every other trade
//! lowers it), so evaluating it there finds the first crossing exactly.
//! State: per instrument its day volume, per key its day counts; a day
//! change (Asia/Shanghai) resets both. Limit: `MAX_KEYS` keys per shard,
//! past it a new key is not tracked and is counted (`refused`).

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::detect::rule::{Emit, Kinds, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::episode::{Involved, day_of, key};
use crate::event::Event;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use toml::Spanned;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub min_share_pct: u32,
    pub min_trades: u32,
    /// Near-misses: the share of each threshold (1-99) that makes one; none: off.
    pub near_miss_pct: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params { min_share_pct: 10, min_trades: 3, near_miss_pct: None }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    min_share_pct: Option<Spanned<i64>>,
    min_trades: Option<Spanned<i64>>,
    near_miss_pct: Option<Spanned<i64>>,
}

/// Keys (group, instrument) a shard tracks; past it new keys are refused and counted.
pub const MAX_KEYS: usize = 1 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Day {
    day: i64,
    volume: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Key {
    day: i64,
    trades: u32,
    alerted: bool,
    /// A near-miss was written today (checkpointed as bit 1 of `alerted`'s byte).
    near: bool,
    qty: u64,
    involved: Involved,
}

pub struct WashTrade {
    params: Params,
    volume: FxHashMap<u32, Day>,
    keys: FxHashMap<u64, Key>,
    refused: u64,
    grew: u64,
    image: Option<Vec<u8>>,
}

impl Rule for WashTrade {
    const ID: u16 = 0x10;
    const NAME: &'static str = "wash-trade";
    const TABLE: &'static str = "wash_trade";
    const VERSION: u16 = 1;
    const KINDS: Kinds = Kinds::TRADE;
    type Raw = Raw;
    type Params = Params;
    type Image = Vec<u8>;

    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Params> {
        let d = Params::default();
        let min_share_pct = p.int(raw.min_share_pct, "min_share_pct", 1..=100, d.min_share_pct as i64) as u32;
        let min_trades = p.int(raw.min_trades, "min_trades", 1..=1_000_000, d.min_trades as i64) as u32;
        let near_miss_pct = p.near_miss_pct(raw.near_miss_pct);
        raw.enabled.unwrap_or(true).then_some(Params { min_share_pct, min_trades, near_miss_pct })
    }

    fn encode_params(p: &Params, w: &mut Writer<'_>) {
        w.u32(p.min_share_pct);
        w.u32(p.min_trades);
        // Only when set: the parameter version of a rule without it is unchanged.
        if let Some(pct) = p.near_miss_pct {
            w.u32(pct);
        }
    }

    fn show(p: &Params, out: &mut String) {
        out.push_str(&format!("min_share_pct = {}\nmin_trades = {}\n", p.min_share_pct, p.min_trades));
        crate::config::show_near_miss_pct(p.near_miss_pct, out);
    }

    fn new(params: &Params, _: &Sizing) -> WashTrade {
        WashTrade {
            params: *params,
            volume: FxHashMap::default(),
            keys: FxHashMap::default(),
            refused: 0,
            grew: 0,
            image: None,
        }
    }

    // Thresholds are read at the trade's own record only.
    const TIERS: bool = true;

    fn set_params(&mut self, params: &Params) {
        self.params = *params;
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, _: &Seen<'_>, out: &mut impl Emit) {
        let day = day_of(event.ts_ns);
        let cap = self.volume.capacity();
        let inst = self.volume.entry(event.instrument).or_default();
        if inst.day != day {
            *inst = Day { day, volume: 0 };
        }
        inst.volume += event.qty;
        let volume = inst.volume;
        self.grew += (self.volume.capacity() != cap) as u64;
        if event.group != event.contra_group {
            return;
        }
        let k = key(event.group, event.instrument);
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&k) {
            self.refused += 1;
            return;
        }
        self.grew += (self.keys.len() == self.keys.capacity() && !self.keys.contains_key(&k)) as u64;
        let state = self.keys.entry(k).or_default();
        if state.day != day {
            *state = Key { day, ..Key::default() };
        }
        state.trades += 1;
        state.qty += event.qty;
        state.involved.account(event.account);
        state.involved.account(event.contra_account);
        state.involved.order(event.order_id);
        state.involved.order(event.contra_order_id);
        let p = self.params;
        if !state.alerted && crosses(&p, state.trades, state.qty, volume) {
            state.alerted = true;
            let evidence =
                Evidence([state.trades as u64, state.qty, volume, p.min_trades as u64, p.min_share_pct as u64, 0]);
            let (list, n) = state.involved.list();
            out.alert(Alert::about(Self::ID, event, evidence), &list[..n]);
        } else if let Some(pct) = p.near_miss_pct
            && !state.alerted
            && !state.near
            && near(&p, pct, state.trades, state.qty, volume)
        {
            // Rare: goes out the way alerts do (no allocation).
            state.near = true;
            let evidence = Evidence([
                state.trades as u64,
                state.qty,
                volume,
                p.min_trades as u64,
                p.min_share_pct as u64,
                pct as u64,
            ]);
            let (list, n) = state.involved.list();
            out.alert(Alert { near_miss: true, ..Alert::about(Self::ID, event, evidence) }, &list[..n]);
        }
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        let [trades, qty, volume, min_trades, min_share_pct, near_miss_pct] = evidence.0;
        json.u64("wash_trades", trades);
        json.u64("min_trades", min_trades);
        json.u64("wash_qty", qty);
        json.u64("day_volume", volume);
        json.pct("share_pct", qty, volume);
        json.u64("min_share_pct", min_share_pct);
        if near_miss_pct > 0 {
            json.u64("near_miss_pct", near_miss_pct);
        }
        json.u64("episode", 1);
        Involved::write(list, json);
    }

    fn stats(&self) -> RuleStats {
        RuleStats { active_keys: self.keys.len(), grew: self.grew, keys_refused: self.refused, ..RuleStats::default() }
    }

    // The whole state is copied at the barrier: O(keys with a wash trade
    // today + instruments), both small next to the window rules'.
    fn begin_snapshot(&mut self, mut image: Vec<u8>) {
        image.clear();
        let mut w = Writer::new(&mut image);
        w.u64(self.volume.len() as u64);
        for (inst, d) in &self.volume {
            w.u32(*inst);
            w.i64(d.day);
            w.u64(d.volume);
        }
        w.u64(self.keys.len() as u64);
        for (k, s) in &self.keys {
            w.u64(*k);
            w.i64(s.day);
            w.u32(s.trades);
            w.u8(s.alerted as u8 | (s.near as u8) << 1);
            w.u64(s.qty);
            s.involved.encode(&mut w);
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
        for _ in 0..r.count(20)? {
            let (inst, day, volume) = (r.u32()?, r.i64()?, r.u64()?);
            if keep(inst as u64) {
                self.volume.insert(inst, Day { day, volume });
            }
        }
        for _ in 0..r.count(33)? {
            let k = r.u64()?;
            let (day, trades, flags) = (r.i64()?, r.u32()?, r.u8()?);
            let s = Key {
                day,
                trades,
                alerted: flags & 1 != 0,
                near: flags & 2 != 0,
                qty: r.u64()?,
                involved: Involved::decode(r)?,
            };
            if keep(k) {
                self.keys.insert(k, s);
            }
        }
        Ok(())
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(vec![("instruments", Reader::new(section).u64()?)])
    }
}

#[inline]
fn crosses(p: &Params, trades: u32, qty: u64, volume: u64) -> bool {
    trades >= p.min_trades && qty as u128 * 100 >= p.min_share_pct as u128 * volume as u128
}

/// Whether both measures reach `pct`% of their thresholds (the caller has
/// checked that the key does not cross).
fn near(p: &Params, pct: u32, trades: u32, qty: u64, volume: u64) -> bool {
    trades as u64 * 100 >= pct as u64 * p.min_trades as u64
        && qty as u128 * 100 * 100 >= pct as u128 * p.min_share_pct as u128 * volume as u128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::testkit::*;
    use crate::event::Side::{Buy, Sell};
    use proptest::prelude::*;

    fn fired(events: &[Event]) -> Vec<(u64, u32, u64, u64)> {
        run::<WashTrade>(&Params::default(), events)
            .iter()
            .map(|(a, _)| (a.seq, a.group, a.evidence.0[0], a.evidence.0[1]))
            .collect()
    }

    #[test]
    fn two_accounts_of_one_group_trading_with_each_other() {
        // Group 7 (accounts 1 and 2) trades 10k with itself three times in a
        // market that trades 100k otherwise: ~23%.
        let mut e = Vec::new();
        let mut seq = 0;
        let mut push = |e: &mut Vec<Event>, ts, buy, sell, qty| {
            seq += 1;
            e.push(trade(seq, ts, 5, buy, sell, Buy, px(1000), qty));
        };
        for i in 0..10 {
            push(&mut e, at(9, 31, i), (100 + i as u64, 10, 10), (200 + i as u64, 11, 11), 10_000);
        }
        push(&mut e, at(10, 0, 0), (1, 1, 7), (2, 2, 7), 10_000);
        push(&mut e, at(10, 5, 0), (3, 2, 7), (4, 1, 7), 10_000);
        push(&mut e, at(10, 9, 0), (5, 1, 7), (6, 2, 7), 10_000);
        push(&mut e, at(10, 30, 0), (7, 1, 7), (8, 2, 7), 10_000);
        assert_eq!(fired(&e), vec![(13, 7, 3, 30_000)], "once, at the third");
        let alerts = run::<WashTrade>(&Params::default(), &e);
        let list = &alerts[0].1;
        assert_eq!(&list[..3], &[2, 1, 2], "both accounts");
        assert_eq!(list[3], 6, "six order ids");
        // The next day counts afresh.
        let mut next = e.clone();
        for (i, ev) in e.iter().enumerate() {
            next.push(Event { seq: 100 + i as u64, ts_ns: ev.ts_ns + 86_400 * SEC, ..*ev });
        }
        assert_eq!(fired(&next).len(), 2);
    }

    #[test]
    fn benign_shapes_stay_silent() {
        // Two wash trades only; and three small ones in a big market (< 10%).
        let mut e = vec![
            trade(1, at(10, 0, 0), 5, (1, 1, 7), (2, 2, 7), Buy, px(1000), 10_000),
            trade(2, at(10, 1, 0), 5, (3, 2, 7), (4, 1, 7), Sell, px(1000), 10_000),
        ];
        assert!(fired(&e).is_empty());
        e.clear();
        e.push(trade(1, at(9, 40, 0), 5, (9, 10, 10), (8, 11, 11), Buy, px(1000), 1_000_000));
        for i in 0..5 {
            e.push(trade(2 + i, at(10, i as i64, 0), 5, (1, 1, 7), (2, 2, 7), Buy, px(1000), 10_000));
        }
        assert!(fired(&e).is_empty(), "5% of the day's volume");
        // Different groups never count (accounts 1 and 3 in groups 7 and 8).
        let e: Vec<Event> =
            (0..5).map(|i| trade(i, at(10, i as i64, 0), 5, (1, 1, 7), (2, 3, 8), Buy, px(1000), 10_000)).collect();
        assert!(fired(&e).is_empty());
    }

    #[test]
    fn a_key_at_85_pct_of_the_share_is_one_near_miss_per_day_not_an_alert() {
        // 3 wash trades of 100 after 3,230 of other volume: 8.5% of 10%.
        let mut e = vec![trade(1, at(9, 31, 0), 5, (100, 10, 10), (200, 11, 11), Buy, px(1000), 3_230)];
        for i in 0..3 {
            e.push(trade(2 + i, at(10, i as i64, 0), 5, (1 + i, 1, 7), (50 + i, 2, 7), Buy, px(1000), 100));
        }
        // Others' volume, then a fourth: 400 of 6,730, still no alert and no second near-miss.
        e.push(trade(5, at(10, 5, 0), 5, (120, 10, 10), (220, 11, 11), Buy, px(1000), 3_000));
        e.push(trade(6, at(10, 6, 0), 5, (4, 1, 7), (54, 2, 7), Buy, px(1000), 100));
        let near = Params { near_miss_pct: Some(80), ..Params::default() };
        let got = run::<WashTrade>(&near, &e);
        assert_eq!(got.len(), 1, "{got:?}");
        let (alert, list) = &got[0];
        assert!(alert.near_miss);
        assert_eq!(alert.seq, 4, "at the third wash trade (the second is 2 of 3 trades: under 80%)");
        assert_eq!(alert.evidence.0, [3, 300, 3_530, 3, 10, 80]);
        assert_eq!(&list[..3], &[2, 1, 2]);
        assert!(run::<WashTrade>(&Params::default(), &e).is_empty(), "off by default");
        assert!(run::<WashTrade>(&Params { near_miss_pct: Some(90), ..near }, &e).is_empty(), "8.5% < 90% of 10%");
    }

    fn brute_force(p: &Params, events: &[Event]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut alerted = std::collections::HashSet::new();
        for (i, e) in events.iter().enumerate() {
            if e.group != e.contra_group {
                continue;
            }
            let day = day_of(e.ts_ns);
            let so_far = events[..=i].iter().filter(|x| x.instrument == e.instrument && day_of(x.ts_ns) == day);
            let volume: u64 = so_far.clone().map(|x| x.qty).sum();
            let wash: Vec<&Event> = so_far.filter(|x| x.group == x.contra_group && x.group == e.group).collect();
            let qty: u64 = wash.iter().map(|x| x.qty).sum();
            if crosses(p, wash.len() as u32, qty, volume) && alerted.insert((e.group, e.instrument, day)) {
                out.push(e.seq);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(
            recs in prop::collection::vec((0u32..3, 0u32..3, 0u32..2, 1u64..50, 0i64..40), 1..120),
            min_trades in 1u32..4, min_share_pct in 1u32..60, cut in 0usize..120, near_pct in 1u32..100,
        ) {
            let p = Params { min_share_pct, min_trades, near_miss_pct: None };
            let mut ts = at(9, 30, 0);
            let events: Vec<Event> = recs.iter().enumerate().map(|(i, &(bg, sg, inst, qty, dt))| {
                ts += dt * 3600 * SEC / 10;
                trade(i as u64 + 1, ts, inst, (i as u64, bg, bg), (1000 + i as u64, 10 + sg, sg), Buy, px(1000), qty)
            }).collect();
            let got: Vec<u64> = run::<WashTrade>(&p, &events).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&got, &brute_force(&p, &events));
            let restored: Vec<u64> = run_restored::<WashTrade>(&p, &events, cut.min(events.len())).iter().map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&restored, &got);
            // Near-misses on: the same alerts, and at most one near-miss per
            // key and day, never for a key that alerted before it that day.
            let with = Params { near_miss_pct: Some(near_pct), ..p };
            let all = run::<WashTrade>(&with, &events);
            let alerts: Vec<u64> = all.iter().filter(|(a, _)| !a.near_miss).map(|(a, _)| a.seq).collect();
            prop_assert_eq!(&alerts, &got);
            let mut seen = std::collections::HashSet::new();
            for (a, _) in all.iter().filter(|(a, _)| a.near_miss) {
                prop_assert!(seen.insert((a.group, a.instrument, day_of(a.ts_ns))));
                prop_assert!(!all.iter().any(|(b, _)| !b.near_miss && b.seq < a.seq
                    && (b.group, b.instrument, day_of(b.ts_ns)) == (a.group, a.instrument, day_of(a.ts_ns))));
            }
            let restored = run_restored::<WashTrade>(&with, &events, cut.min(events.len()));
            prop_assert_eq!(restored.iter().map(|(a, _)| (a.seq, a.near_miss)).collect::<Vec<_>>(),
                all.iter().map(|(a, _)| (a.seq, a.near_miss)).collect::<Vec<_>>());
        }
    }
}
