//! Test helpers for rules: records by hand, a rule run over them with the
//! views it reads, and a run cut by a checkpoint and restored.

use crate::alert::Alert;
use crate::checkpoint::codec::{Reader, Writer};
use crate::detect::rule::{Emit, Rule, Sizing};
use crate::detect::views::{ViewConfig, Views};
use crate::event::{Event, Kind, Side};

pub const SEC: i64 = 1_000_000_000;
pub use crate::config::MS;
/// 2026-11-02 00:00:00 Asia/Shanghai.
pub const DAY0: i64 = 1_793_548_800 * SEC;

/// Event time of `h:m:s` on the test day (Asia/Shanghai).
pub fn at(h: i64, m: i64, s: i64) -> i64 {
    DAY0 + ((h * 60 + m) * 60 + s) * SEC
}

pub fn px(yuan_cents: i64) -> i64 {
    yuan_cents * 100
}

#[allow(clippy::too_many_arguments)]
pub fn new_order(
    seq: u64,
    ts: i64,
    order: u64,
    account: u32,
    group: u32,
    inst: u32,
    side: Side,
    price: i64,
    qty: u64,
) -> Event {
    Event {
        seq,
        ts_ns: ts,
        order_id: order,
        price,
        qty,
        account,
        group,
        instrument: inst,
        kind: Kind::New,
        side,
        ..Event::default()
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cancel(
    seq: u64,
    ts: i64,
    order: u64,
    account: u32,
    group: u32,
    inst: u32,
    side: Side,
    price: i64,
    qty: u64,
) -> Event {
    Event { kind: Kind::Cancel, ..new_order(seq, ts, order, account, group, inst, side, price, qty) }
}

/// A trade: buyer (order, account, group), seller likewise, aggressor `side`.
#[allow(clippy::too_many_arguments)]
pub fn trade(
    seq: u64,
    ts: i64,
    inst: u32,
    buy: (u64, u32, u32),
    sell: (u64, u32, u32),
    side: Side,
    price: i64,
    qty: u64,
) -> Event {
    Event {
        seq,
        ts_ns: ts,
        order_id: buy.0,
        account: buy.1,
        group: buy.2,
        contra_order_id: sell.0,
        contra_account: sell.1,
        contra_group: sell.2,
        instrument: inst,
        kind: Kind::Trade,
        side,
        price,
        qty,
        ..Event::default()
    }
}

#[derive(Default)]
pub struct Collect {
    pub alerts: Vec<(Alert, Vec<u64>)>,
}

impl Emit for Collect {
    fn alert(&mut self, alert: Alert, list: &[u64]) {
        self.alerts.push((alert, list.to_vec()));
    }
}

fn sizing() -> Sizing {
    Sizing { window_capacity: 1024 }
}

/// The rule's alerts over `events` (in order), with the views it reads.
pub fn run<R: Rule>(params: &R::Params, events: &[Event]) -> Vec<(Alert, Vec<u64>)> {
    run_with::<R>(params, events, ViewConfig::default())
}

pub fn run_with<R: Rule>(params: &R::Params, events: &[Event], config: ViewConfig) -> Vec<(Alert, Vec<u64>)> {
    let mut views = Views::new(R::READS, &config);
    let mut rule = R::new(params, &sizing());
    let mut out = Collect::default();
    for e in events {
        let seen = views.update(e);
        rule.on_record(e, &seen, &mut out);
    }
    rule.on_end(&mut out);
    out.alerts
}

/// Like `run`, but the rule is checkpointed after `cut` records (and a
/// watermark at the next record's time), encoded, and restored into a new
/// rule that sees the rest: the alerts must be those of `run`.
pub fn run_restored<R: Rule>(params: &R::Params, events: &[Event], cut: usize) -> Vec<(Alert, Vec<u64>)> {
    let config = ViewConfig::default();
    let mut views = Views::new(R::READS, &config);
    let mut rule = R::new(params, &sizing());
    let mut out = Collect::default();
    for e in &events[..cut] {
        let seen = views.update(e);
        rule.on_record(e, &seen, &mut out);
    }
    rule.begin_snapshot(R::Image::default());
    let image = loop {
        if let Some(image) = rule.copy_slice(16) {
            break image;
        }
    };
    let mut bytes = Vec::new();
    R::encode_image(&image, &mut Writer::new(&mut bytes));
    let mut fresh = R::new(params, &sizing());
    let mut r = Reader::new(&bytes);
    fresh.restore(&mut r, &|_| true).unwrap();
    r.finish().unwrap();
    fresh.restored();
    for e in &events[cut..] {
        let seen = views.update(e);
        fresh.on_record(e, &seen, &mut out);
    }
    fresh.on_end(&mut out);
    out.alerts
}

/// Two snapshots of `rule` cut at the record `cut` (the second into the
/// first's image), copied in slices of `max` entries while `feed` applies
/// `every` records between slices: each image's bytes (`encode`) must equal
/// the live state's at its barrier (`whole`), and records must have changed
/// the state during the first copy. Returns the first record not fed.
pub fn sliced_snapshots<R: Rule>(
    rule: &mut R,
    events: &[Event],
    cut: usize,
    (every, max): (usize, usize),
    feed: &mut impl FnMut(&mut R, &[Event]),
    whole: impl Fn(&R) -> Vec<u8>,
    encode: impl Fn(&R::Image) -> Vec<u8>,
) -> usize {
    let mut reused = R::Image::default();
    let mut next = cut;
    for round in 0..2 {
        let barrier = whole(rule);
        rule.begin_snapshot(std::mem::take(&mut reused));
        let mut image = None;
        let mut during = 0;
        while image.is_none() && next < events.len() {
            let to = (next + every).min(events.len());
            feed(rule, &events[next..to]);
            (during, next) = (during + to - next, to);
            image = rule.copy_slice(max);
        }
        let image = image.or_else(|| rule.copy_slice(usize::MAX)).unwrap();
        assert_eq!(encode(&image), barrier, "cut at {cut}, round {round}, slices ({every}, {max})");
        assert!(during > 0 || round == 1, "records changed the state during the copy");
        reused = image;
    }
    next
}
