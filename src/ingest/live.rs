//! The live ingest path: fixed-size wire records arriving on an SPSC ring
//! (from a network receiver, or the bench's paced feeder), validated and
//! interned on the source thread like any tape, then handed on with the
//! time each record was due. This is the path a daemon's network source
//! takes; replays use the memory-mapped or CSV fast paths instead.
//!
//! A wire record carries its names as bytes, as an exchange's binary feed
//! does; interning happens here, on the source, so the sender needs no
//! shared state with the pipeline.

use super::csv::FeedLine;
use super::validate::{Lookahead, Offered, RawRecord, RejectReason, Validator, check_fields};
use super::{Feed, FeedError, FeedStats, RejectLog};
use crate::event::{Event, Kind, Side};
use crate::metrics::Clock;
use crate::ring::Idle;
use crate::ring::spsc::{self, Consumer, Producer};
use crate::symbols::{pack, valid_account, valid_instrument};

pub const ACCOUNT_BYTES: usize = 16;
pub const INSTRUMENT_BYTES: usize = 12;

/// One record as it crosses the wire, plus `due_ns`: when it was due to
/// arrive, on the pipeline clock. A real receiver would put its arrival
/// stamp there; the bench's feeder puts the scheduled send time, so that
/// a sender held up by back-pressure still charges the wait to latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireRecord {
    pub due_ns: u64,
    pub seq: u64,
    pub ts_ns: i64,
    pub order_id: u64,
    pub contra_order_id: u64,
    pub price: i64,
    pub qty: u64,
    pub kind: Kind,
    pub side: Side,
    pub account_len: u8,
    pub instrument_len: u8,
    pub contra_account_len: u8,
    pub account: [u8; ACCOUNT_BYTES],
    pub instrument: [u8; INSTRUMENT_BYTES],
    pub contra_account: [u8; ACCOUNT_BYTES],
}

const _: () = assert!(std::mem::size_of::<WireRecord>() <= 112);

impl WireRecord {
    // A length past its field comes from a broken sender: the name reads
    // as `\0`, which no name rule accepts, so the record is rejected (found
    // by the wire fuzz target: it panicked).
    pub fn account(&self) -> &[u8] {
        self.account.get(..self.account_len as usize).unwrap_or(b"\0")
    }
    pub fn instrument(&self) -> &[u8] {
        self.instrument.get(..self.instrument_len as usize).unwrap_or(b"\0")
    }
    pub fn contra_account(&self) -> &[u8] {
        self.contra_account.get(..self.contra_account_len as usize).unwrap_or(b"\0")
    }

    /// Copies a name into a fixed field; `None` when it does not fit.
    pub fn set_name(field: &mut [u8], len: &mut u8, name: &[u8]) -> Option<()> {
        let slot = field.get_mut(..name.len())?;
        slot.copy_from_slice(name);
        *len = name.len() as u8;
        Some(())
    }

    /// The record as a FEED.md line, for the rejects file (rare path).
    fn write_csv(&self, out: &mut Vec<u8>) {
        out.clear();
        FeedLine {
            seq: self.seq,
            ts_ns: self.ts_ns,
            kind: self.kind,
            order_id: self.order_id,
            account: self.account(),
            instrument: self.instrument(),
            side: self.side,
            price: self.price,
            qty: self.qty,
            contra: (self.kind == Kind::Trade).then(|| (self.contra_order_id, self.contra_account())),
        }
        .write(out);
    }
}

/// Records per ring slot: one cursor publish per this many records.
pub const WIRE_BATCH: usize = 512;
/// Slots the feed takes per pump before it lets the router look at the
/// clock: bounds how long a burst can hold back a partial batch.
const PUMP_SLOTS: usize = 8;

/// The sending half: slots are `Vec`s preallocated to `WIRE_BATCH`.
pub type WireSender = Producer<Vec<WireRecord>>;

/// A ring of `slots` batches (a power of two) between a sender and a `LiveFeed`.
pub fn wire_channel(slots: usize) -> (WireSender, Consumer<Vec<WireRecord>>) {
    spsc::channel(slots, || Vec::with_capacity(WIRE_BATCH))
}

/// How many wire records ahead the feed prefetches table slots.
const PREFETCH_AHEAD: usize = 12;

/// How long a held jump waits for a next record on a quiet feed, by default
/// (`LiveFeed::with_idle_release`). While it waits, a quiet feed's event
/// time runs on after `idle_after` (`time::IdleAdvance`), so a released
/// record (its event time at or after the feed's) is on time only while
/// `idle_release < lateness + idle_after`: 50 ms against the defaults'
/// 50 + 10 ms. Longer tells more typos from gaps on a slow feed; but once
/// released, a jump is taken as real and the old sequence's records are
/// repeats.
pub const IDLE_RELEASE_NS: u64 = 50_000_000;

pub struct LiveFeed {
    rx: Consumer<Vec<WireRecord>>,
    validator: Validator,
    rejects: RejectLog,
    drained: bool,
    idle: Idle,
    scratch: Vec<u8>,
    /// A seq or time jump held for one record of look-ahead (`validate`).
    lookahead: Lookahead<WireRecord>,
    /// Read only when a hold begins and while one waits on a quiet feed.
    clock: Clock,
}

impl LiveFeed {
    pub fn new(rx: Consumer<Vec<WireRecord>>, validator: Validator, rejects: RejectLog) -> LiveFeed {
        LiveFeed {
            rx,
            validator,
            rejects,
            drained: false,
            idle: Idle::default(),
            scratch: Vec::with_capacity(256),
            lookahead: Lookahead::new(IDLE_RELEASE_NS),
            clock: Clock::new(),
        }
    }

    /// How long a held jump waits for the next record before it is taken
    /// as a real gap.
    pub fn with_idle_release(mut self, idle_release_ns: u64) -> LiveFeed {
        self.lookahead = Lookahead::new(idle_release_ns);
        self
    }
}

/// Checks one wire record's fields and names, as the CSV decoder checks
/// a line's: a bad one goes to the look-ahead as malformed (its seq read).
#[inline]
fn offered(w: &WireRecord) -> Offered {
    // Names on the wire are checked as the CSV decoder checks them; an
    // empty contra account (N and C records) packs to 0.
    let names = if !valid_account(w.account()) {
        Err(RejectReason::BadField("account"))
    } else if !valid_instrument(w.instrument()) {
        Err(RejectReason::BadField("instrument"))
    } else if !(w.contra_account().is_empty() || valid_account(w.contra_account())) {
        Err(RejectReason::BadField("contra_account"))
    } else {
        Ok(())
    };
    check_fields(w.seq, w.kind, w.price, w.qty, w.contra_order_id)
        .and(names)
        .map_err(|reason| (Some(w.seq), reason))?;
    let packed = |name: &[u8]| if name.is_empty() { 0 } else { pack(name) };
    Ok(RawRecord {
        seq: w.seq,
        ts_ns: w.ts_ns,
        kind: w.kind,
        order_id: w.order_id,
        account: packed(w.account()),
        instrument: packed(w.instrument()),
        side: w.side,
        price: w.price,
        qty: w.qty,
        contra_order_id: w.contra_order_id,
        contra_account: packed(w.contra_account()),
    })
}

/// What became of one wire record, counted in `counts` (accepted,
/// rejected): an accepted one is emitted with its due
/// time, a rejected one written to the rejects file (the wire
/// has no line numbers: a record's place is its seq). The first write
/// error is kept in `failed`.
fn settle(
    counts: &mut (u64, u64),
    rejects: &mut RejectLog,
    scratch: &mut Vec<u8>,
    failed: &mut Option<FeedError>,
    emit: &mut impl FnMut(&Event, u64),
    w: WireRecord,
    outcome: Result<Event, RejectReason>,
) {
    match outcome {
        Ok(event) => {
            counts.0 += 1;
            emit(&event, w.due_ns);
        }
        Err(reason) => {
            counts.1 += 1;
            w.write_csv(scratch);
            if let Err(e) = rejects.write(w.seq, &reason, scratch)
                && failed.is_none()
            {
                *failed = Some(e);
            }
        }
    }
}

impl Feed for LiveFeed {
    const LIVE: bool = true;

    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_live(&mut |event, _| emit(event))
    }

    fn pump_live(&mut self, emit: &mut impl FnMut(&Event, u64)) -> Result<bool, FeedError> {
        let mut slots = 0;
        let mut failed = None;
        let LiveFeed { rx, validator, rejects, scratch, lookahead, clock, .. } = self;
        while slots < PUMP_SLOTS {
            // Read in place: one cursor publish per slot, no copy.
            let Some(batch) = rx.peek() else { break };
            for (index, w) in batch.iter().enumerate() {
                // The account and open-order tables outgrow the cache: start
                // the misses of a record a few ahead (as the CSV feed does).
                if let Some(ahead) = batch.get(index + PREFETCH_AHEAD)
                    && !ahead.account().is_empty()
                {
                    let contra = (ahead.kind == Kind::Trade && !ahead.contra_account().is_empty())
                        .then(|| (pack(ahead.contra_account()), ahead.contra_order_id));
                    validator.prefetch_keys(pack(ahead.account()), ahead.order_id, contra);
                }
                let mut counts = (0, 0);
                let now = || clock.now_ns();
                lookahead.offer(validator, offered(w), *w, w.seq, now, &mut |w, outcome| {
                    settle(&mut counts, rejects, scratch, &mut failed, emit, w, outcome)
                });
                validator.stats.records_read += 1;
                validator.stats.accepted += counts.0;
                validator.stats.rejected += counts.1;
            }
            rx.release();
            slots += 1;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if slots > 0 {
            self.idle.reset();
            self.drained = self.rx.peek().is_none();
            return Ok(true);
        }
        self.drained = true;
        let finished = self.rx.is_finished();
        if self.lookahead.is_holding() {
            // A quiet feed: a held jump waits at most `idle_release`, and
            // none at all once the sender is gone.
            let LiveFeed { validator, rejects, scratch, lookahead, clock, .. } = self;
            let mut counts = (0, 0);
            let mut settled = |w, outcome| settle(&mut counts, rejects, scratch, &mut failed, emit, w, outcome);
            if finished {
                lookahead.flush(validator, &mut settled);
            } else {
                lookahead.on_idle(validator, clock.now_ns(), &mut settled);
            }
            validator.stats.accepted += counts.0;
            validator.stats.rejected += counts.1;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if finished {
            self.rejects.finish()?;
            return Ok(false);
        }
        // Nothing arrived: back off (spin, yield, then short naps) so an
        // idle source leaves the cores to the feeder and the shards.
        self.idle.wait();
        Ok(true)
    }

    fn drained(&self) -> bool {
        self.drained
    }

    fn stats(&self) -> FeedStats {
        self.validator.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::validate::Limits;
    use crate::symbols::Groups;
    use std::sync::Arc;

    fn wire(seq: u64, kind: Kind, order_id: u64, account: &str, due_ns: u64) -> WireRecord {
        let mut w = WireRecord {
            due_ns,
            seq,
            ts_ns: 1_000 + seq as i64,
            kind,
            order_id,
            price: 10_000,
            qty: 100,
            ..WireRecord::default()
        };
        WireRecord::set_name(&mut w.account, &mut w.account_len, account.as_bytes()).unwrap();
        WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, b"000001").unwrap();
        w
    }

    #[test]
    fn validates_interns_and_passes_due_times() {
        let (mut tx, rx) = wire_channel(4);
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.push(wire(1, Kind::New, 7, "A1", 100));
        slot.push(wire(2, Kind::Cancel, 8, "A1", 200)); // unknown order: rejected
        slot.push(wire(3, Kind::Cancel, 7, "A1", 300));
        slot.push(wire(4, Kind::New, 9, "A 1", 400)); // not a FEED.md account name: rejected
        tx.publish();
        let mut feed =
            LiveFeed::new(rx, Validator::new(Limits::default(), Arc::new(Groups::default())), RejectLog::discard());
        let mut got = Vec::new();
        assert!(feed.pump_live(&mut |e, due| got.push((e.seq, e.kind, due))).unwrap());
        assert!(feed.drained());
        assert_eq!(got, vec![(1, Kind::New, 100), (3, Kind::Cancel, 300)]);
        assert_eq!((feed.stats().accepted, feed.stats().rejected), (2, 2));
        drop(tx);
        assert!(!feed.pump_live(&mut |_, _| panic!("nothing left")).unwrap(), "sender gone: the feed ends");
    }

    fn live(rx: Consumer<Vec<WireRecord>>, idle_release_ns: u64) -> LiveFeed {
        let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
        LiveFeed::new(rx, validator, RejectLog::discard()).with_idle_release(idle_release_ns)
    }

    fn send(tx: &mut WireSender, records: &[WireRecord]) {
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.extend_from_slice(records);
        tx.publish();
    }

    /// A seq jump on a live feed is held for the next record, as on a tape:
    /// a next record that goes on from the old sequence makes the jump a
    /// single bad record; one that goes on from the jump makes it a gap.
    #[test]
    fn a_live_jump_waits_for_the_next_record() {
        let (mut tx, rx) = wire_channel(4);
        let mut feed = live(rx, u64::MAX);
        let mut got = Vec::new();
        // 1000 is a mistyped 3: the records after it go on from 3.
        send(
            &mut tx,
            &[wire(1, Kind::New, 1, "A1", 10), wire(2, Kind::New, 2, "A1", 20), wire(1000, Kind::New, 3, "A1", 30)],
        );
        feed.pump_live(&mut |e, due| got.push((e.seq, due))).unwrap();
        assert_eq!(got, vec![(1, 10), (2, 20)], "the jump is held");
        // Quiet: with no deadline passed, the hold stays.
        feed.pump_live(&mut |e, due| got.push((e.seq, due))).unwrap();
        assert_eq!(got.len(), 2);
        send(&mut tx, &[wire(3, Kind::New, 4, "A1", 40), wire(10, Kind::New, 5, "A1", 50)]);
        feed.pump_live(&mut |e, due| got.push((e.seq, due))).unwrap();
        assert_eq!(got, vec![(1, 10), (2, 20), (3, 40)], "1000 rejected alone; 10 held in turn");
        let stats = feed.stats();
        assert_eq!((stats.records_read, stats.accepted, stats.rejected, stats.gaps), (5, 3, 1, 0));
        // 11 follows 10: the jump to 10 was a real gap of 4..=9.
        send(&mut tx, &[wire(11, Kind::New, 6, "A1", 60)]);
        feed.pump_live(&mut |e, due| got.push((e.seq, due))).unwrap();
        assert_eq!(got[3..], [(10, 50), (11, 60)], "a held record keeps its own due time");
        let stats = feed.stats();
        assert_eq!((stats.accepted, stats.rejected, stats.gaps, stats.missing_records), (5, 1, 1, 6));
    }

    /// A quiet feed: a held jump is released as a gap once `idle_release`
    /// passed with no next record (0 here: at the first quiet pump), and at
    /// once when the sender is gone; records of the old sequence after the
    /// release are repeats.
    #[test]
    fn a_quiet_feed_releases_a_held_jump() {
        let (mut tx, rx) = wire_channel(4);
        let mut feed = live(rx, 0);
        let mut got = Vec::new();
        send(&mut tx, &[wire(1, Kind::New, 1, "A1", 10), wire(5, Kind::New, 2, "A1", 20)]);
        feed.pump_live(&mut |e, _| got.push(e.seq)).unwrap();
        assert_eq!(got, vec![1]);
        assert!(feed.pump_live(&mut |e, _| got.push(e.seq)).unwrap(), "quiet, not ended");
        assert_eq!(got, vec![1, 5], "released as a gap");
        assert_eq!((feed.stats().gaps, feed.stats().missing_records), (1, 3));
        send(&mut tx, &[wire(2, Kind::New, 3, "A1", 30), wire(20, Kind::New, 4, "A1", 40)]);
        feed.pump_live(&mut |e, _| got.push(e.seq)).unwrap();
        assert_eq!((got.len(), feed.stats().rejected), (2, 1), "2 is a repeat now; 20 held");
        drop(tx);
        assert!(!feed.pump_live(&mut |e, _| got.push(e.seq)).unwrap(), "the sender is gone");
        assert_eq!(got, vec![1, 5, 20], "the end settles the hold");
        assert_eq!(feed.stats().records_read, feed.stats().accepted + feed.stats().rejected);
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let mut w = WireRecord::default();
        assert!(WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, b"0123456789abc").is_none());
        assert!(WireRecord::set_name(&mut w.account, &mut w.account_len, b"0123456789abcdef").is_some());
        assert_eq!(w.account(), b"0123456789abcdef");
    }
}
