//! marking-close (尾市拉抬/打压) and marking-open (开盘集合竞价拉抬/打压):
//! per (group, instrument) and trading day, the call auction's uncrossing
//! price deviates `min_deviation_bp` or more (default 300 = 3%) from the
//! reference, and the group's trades on the moving side (buys when the
//! price was lifted) are `min_share_pct` or more (default 30%) of the
//! call's matched volume. The reference is the last continuous-session
//! trade before the call (close) or the previous close from
//! instruments.csv (open, through the book view).
//!
//! The schedule is configuration: `call_start`/`call_end` (Asia/Shanghai,
//! defaults the Shenzhen close 14:57-15:00 and open 09:15-09:25). The
//! uncrossing trades are those stamped from `call_end` to `call_end +
//! settle_ms`; the call is judged once event time passes that (a later
//! record of the shard, a watermark, or the end of input), and each alert
//! carries the time of its group's last call trade, so alerts do not
//! depend on when the judging runs. One alert per key and day.
//!
//! Near-misses (`near_miss_pct`, off by default): when the call is judged, a
//! group that does not cross but whose moving-side share reaches that share
//! of `min_share_pct` while the price deviates by that share of
//! `min_deviation_bp` (in either direction: the moving side is that
//! direction's) is one near-miss, with the alert's evidence: one per key and
//! day, like the alerts (the call is judged once).

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::{MS, Problems};
use crate::detect::rule::{Emit, Kinds, Reads, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::episode::{Involved, day_of, format_time_of_day, parse_time_of_day, time_of_day};
use crate::event::{AccountId, Event, GroupId, InstrumentId, Px};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use std::marker::PhantomData;
use toml::Spanned;

/// Which call a `Marking` rule watches.
pub trait Call: Send + 'static {
    const ID: u16;
    const NAME: &'static str;
    const TABLE: &'static str;
    const START: &'static str;
    const END: &'static str;
    /// The reference is the previous close (else the last continuous trade).
    const PREV_CLOSE: bool;
}

pub struct Close;
pub struct Open;

impl Call for Close {
    const ID: u16 = 0x14;
    const NAME: &'static str = "marking-close";
    const TABLE: &'static str = "marking_close";
    const START: &'static str = "14:57:00";
    const END: &'static str = "15:00:00";
    const PREV_CLOSE: bool = false;
}

impl Call for Open {
    const ID: u16 = 0x15;
    const NAME: &'static str = "marking-open";
    const TABLE: &'static str = "marking_open";
    const START: &'static str = "09:15:00";
    const END: &'static str = "09:25:00";
    const PREV_CLOSE: bool = true;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Nanoseconds after local midnight.
    pub call_start: i64,
    pub call_end: i64,
    pub settle_ns: i64,
    pub min_deviation_bp: i64,
    pub min_share_pct: u32,
    /// Near-misses: the share of each threshold (1-99) that makes one; none: off.
    pub near_miss_pct: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    call_start: Option<Spanned<String>>,
    call_end: Option<Spanned<String>>,
    settle_ms: Option<Spanned<i64>>,
    min_deviation_bp: Option<Spanned<i64>>,
    min_share_pct: Option<Spanned<i64>>,
    near_miss_pct: Option<Spanned<i64>>,
}

/// Groups trading in one instrument's call that are tracked; past it they are counted (`refused`).
pub const MAX_GROUPS_PER_CALL: usize = 4096;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GroupCall {
    group: GroupId,
    /// Bought, sold in the call.
    qty: [u64; 2],
    last_seq: u64,
    last_ts: i64,
    last_account: AccountId,
    involved: Involved,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Instrument {
    day: i64,
    /// The reference price (last continuous trade before the call, or the previous close).
    reference: Option<Px>,
    call_volume: u64,
    call_price: Px,
    judged: bool,
    groups: Vec<GroupCall>,
}

pub struct Marking<C: Call> {
    params: Params,
    instruments: FxHashMap<InstrumentId, Instrument>,
    /// Instruments with call trades not yet judged.
    pending: Vec<InstrumentId>,
    refused: u64,
    image: Option<Vec<u8>>,
    _call: PhantomData<C>,
}

impl<C: Call> Marking<C> {
    fn deadline(&self, day: i64) -> i64 {
        crate::detect::state::episode::at(day, self.params.call_end + self.params.settle_ns)
    }

    /// Judges every pending call whose uncrossing window ended before `now`.
    fn judge_due(&mut self, now: i64, out: &mut impl Emit) {
        let mut i = 0;
        while i < self.pending.len() {
            let id = self.pending[i];
            let due = self.instruments.get(&id).is_none_or(|s| self.deadline(s.day) < now);
            if due {
                self.pending.swap_remove(i);
                self.judge(id, out);
            } else {
                i += 1;
            }
        }
    }

    fn judge(&mut self, id: InstrumentId, out: &mut impl Emit) {
        let p = self.params;
        let Some(s) = self.instruments.get_mut(&id) else { return };
        if s.judged {
            return;
        }
        s.judged = true;
        let Some(reference) = s.reference else { return };
        let side = moving_side(&p, reference, s.call_price, 100);
        // With near-misses on, the side the price moved by that share of the deviation.
        let near_side = p.near_miss_pct.and_then(|pct| moving_side(&p, reference, s.call_price, pct));
        if side.is_none() && near_side.is_none() {
            return;
        }
        for g in &s.groups {
            let share = |side: usize, pct: u32| {
                g.qty[side] as u128 * 100 * 100 >= pct as u128 * p.min_share_pct as u128 * s.call_volume as u128
            };
            let (side, near_miss_pct) = match (side, near_side, p.near_miss_pct) {
                (Some(side), _, _) if share(side, 100) => (side, 0),
                (_, Some(side), Some(pct)) if share(side, pct) => (side, pct),
                _ => continue,
            };
            let alert = Alert {
                rule: C::ID,
                seq: g.last_seq,
                ts_ns: g.last_ts,
                group: g.group,
                account: g.last_account,
                instrument: id,
                evidence: Evidence([
                    reference as u64,
                    s.call_price as u64,
                    g.qty[side],
                    s.call_volume,
                    p.min_deviation_bp as u64 | (p.min_share_pct as u64) << 32 | (near_miss_pct as u64) << 48,
                    side as u64 | ((p.call_start / MS) as u64) << 8 | ((p.call_end / MS) as u64) << 36,
                ]),
                near_miss: near_miss_pct > 0,
                ..Alert::default()
            };
            let (list, len) = g.involved.list();
            out.alert(alert, &list[..len]);
        }
    }
}

/// 0 (buy) when the price was lifted by `pct`% of the deviation, 1 (sell)
/// when pressed, else none.
fn moving_side(p: &Params, reference: Px, price: Px, pct: u32) -> Option<usize> {
    let need = p.min_deviation_bp as i128 * reference as i128 * pct as i128;
    if (price - reference) as i128 * 10_000 * 100 >= need {
        Some(0)
    } else if (reference - price) as i128 * 10_000 * 100 >= need {
        Some(1)
    } else {
        None
    }
}

impl<C: Call> Rule for Marking<C> {
    const ID: u16 = C::ID;
    const NAME: &'static str = C::NAME;
    const TABLE: &'static str = C::TABLE;
    const VERSION: u16 = 1;
    const KINDS: Kinds = Kinds::TRADE;
    const READS: Reads = if C::PREV_CLOSE { Reads::BOOK } else { Reads::NONE };
    type Raw = Raw;
    type Params = Params;
    type Image = Vec<u8>;

    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Params> {
        let mut time = |v: Option<Spanned<String>>, name: &str, default: &str| match v {
            None => parse_time_of_day(default).unwrap_or(0),
            Some(v) => parse_time_of_day(v.get_ref()).unwrap_or_else(|| {
                p.at(
                    v.span().start,
                    format!("{name} = {:?} is not a time of day HH:MM[:SS] (Asia/Shanghai)", v.get_ref()),
                );
                0
            }),
        };
        let call_start = time(raw.call_start.clone(), "call_start", C::START);
        let call_end = time(raw.call_end.clone(), "call_end", C::END);
        if call_start >= call_end
            && let Some(v) = raw.call_end.as_ref().or(raw.call_start.as_ref())
        {
            p.at(v.span().start, "call_start must be before call_end".into());
        }
        let settle_ms = p.int(raw.settle_ms, "settle_ms", 0..=600_000, 1000);
        let min_deviation_bp = p.int(raw.min_deviation_bp, "min_deviation_bp", 1..=100_000, 300);
        let min_share_pct = p.int(raw.min_share_pct, "min_share_pct", 1..=100, 30) as u32;
        let near_miss_pct = p.near_miss_pct(raw.near_miss_pct);
        raw.enabled.unwrap_or(!C::PREV_CLOSE || crate::detect::views::BOOK_RULES_ON_BY_DEFAULT).then_some(Params {
            call_start,
            call_end,
            settle_ns: settle_ms * MS,
            min_deviation_bp,
            min_share_pct,
            near_miss_pct,
        })
    }

    fn encode_params(p: &Params, w: &mut Writer<'_>) {
        w.i64(p.call_start);
        w.i64(p.call_end);
        w.i64(p.settle_ns);
        w.i64(p.min_deviation_bp);
        w.u32(p.min_share_pct);
        // Only when set: the parameter version of a rule without it is unchanged.
        if let Some(pct) = p.near_miss_pct {
            w.u32(pct);
        }
    }

    fn show(p: &Params, out: &mut String) {
        out.push_str(&format!(
            "call_start = \"{}\"\ncall_end = \"{}\"\nsettle_ms = {}\nmin_deviation_bp = {}\nmin_share_pct = {}\n",
            format_time_of_day(p.call_start),
            format_time_of_day(p.call_end),
            p.settle_ns / MS,
            p.min_deviation_bp,
            p.min_share_pct
        ));
        crate::config::show_near_miss_pct(p.near_miss_pct, out);
    }

    fn new(params: &Params, _: &Sizing) -> Self {
        Marking {
            params: *params,
            instruments: FxHashMap::default(),
            pending: Vec::new(),
            refused: 0,
            image: None,
            _call: PhantomData,
        }
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
        if !self.pending.is_empty() {
            self.judge_due(event.ts_ns, out);
        }
        let p = self.params;
        let day = day_of(event.ts_ns);
        let tod = time_of_day(event.ts_ns);
        let s = self.instruments.entry(event.instrument).or_default();
        if s.day != day {
            *s = Instrument { day, groups: std::mem::take(&mut s.groups), ..Instrument::default() };
            s.groups.clear();
        }
        if C::PREV_CLOSE {
            if let Some(b) = seen.book {
                s.reference = b.book.prev_close();
            }
        } else if tod < p.call_start {
            s.reference = Some(event.price);
        }
        if tod < p.call_end || tod > p.call_end + p.settle_ns || s.judged {
            return;
        }
        if s.call_volume == 0 {
            self.pending.push(event.instrument);
        }
        s.call_volume += event.qty;
        s.call_price = event.price;
        for (side, group, account, order) in [
            (0, event.group, event.account, event.order_id),
            (1, event.contra_group, event.contra_account, event.contra_order_id),
        ] {
            let at = match s.groups.iter().position(|g| g.group == group) {
                Some(at) => at,
                None if s.groups.len() < MAX_GROUPS_PER_CALL => {
                    s.groups.push(GroupCall { group, ..GroupCall::default() });
                    s.groups.len() - 1
                }
                None => {
                    self.refused += 1;
                    continue;
                }
            };
            let g = &mut s.groups[at];
            g.qty[side] += event.qty;
            g.last_seq = event.seq;
            g.last_ts = event.ts_ns;
            g.last_account = account;
            g.involved.account(account);
            g.involved.order(order);
        }
    }

    fn on_watermark(&mut self, watermark_ns: i64, out: &mut impl Emit) {
        if !self.pending.is_empty() {
            self.judge_due(watermark_ns, out);
        }
    }

    fn on_end(&mut self, out: &mut impl Emit) {
        self.judge_due(i64::MAX, out);
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        let [reference, price, group, volume, thresholds, packed] = evidence.0;
        let (reference, price) = (reference as i64, price as i64);
        let side = packed & 0xff;
        json.text(
            "call",
            &format!(
                "{}-{}",
                format_time_of_day((packed >> 8 & 0xfff_ffff) as i64 * MS),
                format_time_of_day((packed >> 36) as i64 * MS)
            ),
        );
        json.px(if C::PREV_CLOSE { "prev_close" } else { "last_continuous_price" }, reference);
        json.px(if C::PREV_CLOSE { "open_price" } else { "close_price" }, price);
        json.bp_as_pct("deviation_pct", if reference == 0 { 0 } else { (price - reference) * 10_000 / reference });
        json.bp_as_pct("min_deviation_pct", (thresholds & 0xffff_ffff) as i64);
        let near_miss_pct = thresholds >> 48;
        json.text("group_side", if side == 0 { "buy" } else { "sell" });
        json.u64("group_call_volume", group);
        json.u64("call_volume", volume);
        json.pct("group_share_pct", group, volume);
        json.u64("min_share_pct", thresholds >> 32 & 0xffff);
        if near_miss_pct > 0 {
            json.u64("near_miss_pct", near_miss_pct);
        } else {
            json.u64("episode", 1);
        }
        Involved::write(list, json);
    }

    fn stats(&self) -> RuleStats {
        RuleStats { active_keys: self.instruments.len(), keys_refused: self.refused, ..RuleStats::default() }
    }

    fn begin_snapshot(&mut self, mut image: Vec<u8>) {
        image.clear();
        let mut w = Writer::new(&mut image);
        w.u64(self.instruments.len() as u64);
        for (id, s) in &self.instruments {
            w.u32(*id);
            w.i64(s.day);
            w.u8(s.reference.is_some() as u8);
            w.i64(s.reference.unwrap_or(0));
            w.u64(s.call_volume);
            w.i64(s.call_price);
            w.u8(s.judged as u8);
            w.u64(s.groups.len() as u64);
            for g in &s.groups {
                w.u32(g.group);
                w.u64(g.qty[0]);
                w.u64(g.qty[1]);
                w.u64(g.last_seq);
                w.i64(g.last_ts);
                w.u32(g.last_account);
                g.involved.encode(&mut w);
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
        for _ in 0..r.count(46)? {
            let id = r.u32()?;
            let day = r.i64()?;
            let has = r.u8()? != 0;
            let px = r.i64()?;
            let mut s = Instrument {
                day,
                reference: has.then_some(px),
                call_volume: r.u64()?,
                call_price: r.i64()?,
                judged: r.u8()? != 0,
                groups: Vec::new(),
            };
            for _ in 0..r.count(40)? {
                s.groups.push(GroupCall {
                    group: r.u32()?,
                    qty: [r.u64()?, r.u64()?],
                    last_seq: r.u64()?,
                    last_ts: r.i64()?,
                    last_account: r.u32()?,
                    involved: Involved::decode(r)?,
                });
            }
            if keep(id as u64) {
                if s.call_volume > 0 && !s.judged {
                    self.pending.push(id);
                }
                self.instruments.insert(id, s);
            }
        }
        Ok(())
    }

    /// Pending calls in instrument order, whatever the old shards' order.
    fn restored(&mut self) {
        self.pending.sort_unstable();
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(vec![("instruments", Reader::new(section).u64()?)])
    }
}

pub type MarkingClose = Marking<Close>;
pub type MarkingOpen = Marking<Open>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::testkit::*;
    use crate::detect::views::ViewConfig;
    use crate::detect::views::book::Reference;
    use crate::event::Side::{Buy, Sell};
    use proptest::prelude::*;

    fn params<C: Call>() -> Params {
        let raw = Raw { enabled: Some(true), ..Raw::default() };
        Marking::<C>::validate(raw, &mut Problems::new("", C::TABLE, &mut Vec::new())).unwrap()
    }

    fn sorted(mut events: Vec<Event>) -> Vec<Event> {
        events.sort_by_key(|e| e.ts_ns);
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        events
    }

    /// A day on instrument 2: continuous trades at 10.00 until 14:56:50,
    /// then the closing call's uncross at 15:00:00 at `close`, where group
    /// 7 buys `marker` and the crowd the rest of `volume`.
    fn close_day(close: i64, marker: u64, volume: u64) -> Vec<Event> {
        let mut e = Vec::new();
        for i in 0..20 {
            e.push(trade(
                0,
                at(14, 40, 0) + i * 50 * SEC,
                2,
                (i as u64, 10, 10),
                (100 + i as u64, 11, 11),
                Buy,
                px(1000),
                500,
            ));
        }
        let t = at(15, 0, 0);
        e.push(trade(0, t, 2, (1, 1, 7), (201, 20, 20), Buy, close, marker / 2));
        e.push(trade(0, t, 2, (2, 2, 7), (202, 21, 21), Buy, close, marker - marker / 2));
        // The crowd's buys, spread over four traders.
        for k in 0..4u64 {
            let q = (volume - marker) / 4 + if k == 0 { (volume - marker) % 4 } else { 0 };
            e.push(trade(0, t, 2, (3 + k, 30 + k as u32, 30 + k as u32), (203 + k, 22, 22), Sell, close, q));
        }
        // The next morning's first trade (judged by then in any case).
        e.push(trade(0, at(9, 30, 0) + 86_400 * SEC, 2, (4, 10, 10), (204, 11, 11), Buy, close, 100));
        sorted(e)
    }

    #[test]
    fn large_buys_in_the_closing_call_lift_the_close_five_percent() {
        let alerts = run::<MarkingClose>(&params::<Close>(), &close_day(px(1050), 60_000, 100_000));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let (a, list) = &alerts[0];
        assert_eq!((a.group, a.ts_ns, a.evidence.0[2], a.evidence.0[3]), (7, at(15, 0, 0), 60_000, 100_000));
        assert_eq!(a.seq, 22, "the group's last call trade");
        assert_eq!(&list[..3], &[2, 1, 2], "both accounts");
        // A 2% close, or a 20% share, is silent; a 5% fall where group 7 bought is silent too.
        assert!(run::<MarkingClose>(&params::<Close>(), &close_day(px(1020), 60_000, 100_000)).is_empty());
        assert!(run::<MarkingClose>(&params::<Close>(), &close_day(px(1050), 20_000, 100_000)).is_empty());
        let fall = run::<MarkingClose>(&params::<Close>(), &close_day(px(950), 60_000, 100_000));
        assert!(fall.iter().all(|(a, _)| a.group != 7), "the buyer of a fall: {fall:?}");
        assert!(fall.iter().any(|(a, _)| a.group == 22), "the seller of 40% of it");
        // The schedule is configuration: a call that ends at 14:59 sees no uncross at 15:00.
        let mut p = params::<Close>();
        p.call_end = parse_time_of_day("14:59").unwrap();
        assert!(run::<MarkingClose>(&p, &close_day(px(1050), 60_000, 100_000)).is_empty());
    }

    #[test]
    fn a_group_near_the_share_or_a_close_near_the_deviation_is_one_near_miss() {
        let near = Params { near_miss_pct: Some(80), ..params::<Close>() };
        // 27% of the call (90% of 30%) with a 5% close: a near-miss of group 7 only.
        let e = close_day(px(1050), 27_000, 100_000);
        let got = run::<MarkingClose>(&near, &e);
        assert_eq!(got.len(), 1, "{got:?}");
        let (a, list) = &got[0];
        assert!(a.near_miss);
        assert_eq!((a.group, a.seq, a.evidence.0[2], a.evidence.0[3]), (7, 22, 27_000, 100_000));
        assert_eq!(a.evidence.0[4] >> 48, 80, "the share in the evidence");
        assert_eq!(&list[..3], &[2, 1, 2], "both accounts");
        assert!(run::<MarkingClose>(&params::<Close>(), &e).is_empty(), "off by default");
        assert!(run::<MarkingClose>(&Params { near_miss_pct: Some(95), ..near }, &e).is_empty(), "27% < 95% of 30%");
        // A 2.5% close (83% of 3%) with 60% of the call: a near-miss; at 90%, none.
        let e = close_day(px(1025), 60_000, 100_000);
        let got = run::<MarkingClose>(&near, &e);
        assert_eq!(got.iter().map(|(a, _)| (a.group, a.near_miss)).collect::<Vec<_>>(), vec![(7, true)]);
        assert!(run::<MarkingClose>(&Params { near_miss_pct: Some(90), ..near }, &e).is_empty());
        // A crossing group alerts and is no near-miss; the alerts are the same with near-misses on.
        let e = close_day(px(1050), 60_000, 100_000);
        let got = run::<MarkingClose>(&near, &e);
        assert_eq!(got.iter().map(|(a, _)| (a.group, a.near_miss)).collect::<Vec<_>>(), vec![(7, false)]);
        assert_eq!(got, run::<MarkingClose>(&params::<Close>(), &e));
    }

    #[test]
    fn the_opening_call_against_the_previous_close() {
        let instruments = crate::instruments::Instruments::parse(
            "instrument,prev_close,limit_up,limit_down,tick\nS000,10.0000,11.0000,9.0000,0.0100\n",
        )
        .unwrap();
        let config = ViewConfig {
            reference: Some(Reference {
                instruments: std::sync::Arc::new(instruments),
                names: std::sync::Arc::new(crate::symbols::NameTable::from_names(&[b"S000"])),
            }),
            ..ViewConfig::default()
        };
        let open = |price: i64| {
            let t = at(9, 25, 0);
            sorted(vec![
                trade(0, t, 0, (1, 1, 7), (2, 20, 20), Buy, price, 40_000),
                trade(0, t, 0, (3, 30, 30), (4, 21, 21), Buy, price, 20_000),
                trade(0, t, 0, (7, 31, 31), (8, 22, 22), Buy, price, 20_000),
                trade(0, t, 0, (9, 32, 32), (10, 23, 23), Buy, price, 20_000),
                trade(0, at(9, 30, 5), 0, (5, 30, 30), (6, 21, 21), Buy, price, 100),
            ])
        };
        let alerts = run_with::<MarkingOpen>(&params::<Open>(), &open(px(1040)), config.clone());
        assert_eq!(alerts.iter().map(|(a, _)| a.group).collect::<Vec<_>>(), vec![7], "4% over 10.00, 40% of the call");
        assert!(run_with::<MarkingOpen>(&params::<Open>(), &open(px(1010)), config).is_empty());
        // Without instruments.csv there is no previous close: nothing to judge.
        assert!(run::<MarkingOpen>(&params::<Open>(), &open(px(1040))).is_empty());
    }

    #[test]
    fn bad_schedules_are_reported_with_their_lines() {
        let problems =
            crate::config::Rules::parse("[marking_close]\ncall_start = \"15:01\"\ncall_end = \"25:00\"\n").unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with("line 3: marking_close.call_end = \"25:00\" is not a time")),
            "{problems:?}"
        );
    }

    /// Alerts (`pct` 100) or near-misses (`pct` < 100: reaching that share
    /// of both thresholds, not crossing) as (seq, group).
    fn brute_force(p: &Params, events: &[Event], pct: u32) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut days: Vec<(u32, i64)> = events.iter().map(|e| (e.instrument, day_of(e.ts_ns))).collect();
        days.sort();
        days.dedup();
        for (inst, day) in days {
            let mine: Vec<&Event> = events.iter().filter(|e| e.instrument == inst && day_of(e.ts_ns) == day).collect();
            let reference = mine.iter().rfind(|e| time_of_day(e.ts_ns) < p.call_start).map(|e| e.price);
            let call: Vec<&&Event> = mine
                .iter()
                .filter(|e| (p.call_end..=p.call_end + p.settle_ns).contains(&time_of_day(e.ts_ns)))
                .collect();
            let (Some(reference), Some(last)) = (reference, call.last()) else { continue };
            let close = last.price;
            let Some(side) = moving_side(p, reference, close, pct) else { continue };
            let volume: u64 = call.iter().map(|e| e.qty).sum();
            let mut groups: Vec<u32> = Vec::new();
            for e in &call {
                for g in [e.group, e.contra_group] {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
            for g in groups {
                let qty: u64 = call
                    .iter()
                    .filter(|e| if side == 0 { e.group == g } else { e.contra_group == g })
                    .map(|e| e.qty)
                    .sum();
                let last = call.iter().rfind(|e| e.group == g || e.contra_group == g).unwrap();
                let crosses = |qty: u64| {
                    moving_side(p, reference, close, 100) == Some(side) && qty * 100 >= p.min_share_pct as u64 * volume
                };
                if qty * 100 * 100 >= (pct * p.min_share_pct) as u64 * volume && (pct == 100 || !crosses(qty)) {
                    out.push((last.seq, g));
                }
            }
        }
        out.sort();
        out
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(
            recs in prop::collection::vec((0u32..3, 0u32..3, 0u32..2, -80i64..80, 1u64..50, 0u8..3), 1..80),
            min_deviation_bp in 1i64..600, min_share_pct in 1u32..80, cut in 0usize..80, near_pct in 1u32..100,
        ) {
            let p = Params { min_deviation_bp, min_share_pct, ..params::<Close>() };
            let events = sorted(recs.iter().enumerate().map(|(i, &(bg, sg, inst, dp, qty, when))| {
                let ts = match when {
                    0 => at(14, 50, 0) + i as i64 * SEC,
                    1 => at(15, 0, 0) + (i as i64 % 3) * 400 * MS,
                    _ => at(14, 50, 0) + i as i64 * SEC + 86_400 * SEC,
                };
                trade(0, ts, inst, (i as u64, bg, bg), (1000 + i as u64, 10 + sg, 10 + sg), Buy, px(1000) + dp * 100, qty)
            }).collect());
            let key_of = |alerts: Vec<(Alert, Vec<u64>)>| {
                let mut v: Vec<(u64, u32)> = alerts.iter().map(|(a, _)| (a.seq, a.group)).collect();
                v.sort();
                v
            };
            let got = key_of(run::<MarkingClose>(&p, &events));
            prop_assert_eq!(&got, &brute_force(&p, &events, 100));
            prop_assert_eq!(&key_of(run_restored::<MarkingClose>(&p, &events, cut.min(events.len()))), &got);
            // Near-misses on: the same alerts, and the near-misses of the definition.
            let with = Params { near_miss_pct: Some(near_pct), ..p };
            let all = run::<MarkingClose>(&with, &events);
            let split = |all: &[(Alert, Vec<u64>)], near: bool| {
                key_of(all.iter().filter(|(a, _)| a.near_miss == near).cloned().collect())
            };
            prop_assert_eq!(&split(&all, false), &got);
            prop_assert_eq!(&split(&all, true), &brute_force(&with, &events, near_pct));
            let restored = run_restored::<MarkingClose>(&with, &events, cut.min(events.len()));
            prop_assert_eq!(split(&restored, true), split(&all, true));
        }
    }
}
