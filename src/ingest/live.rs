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
use super::validate::Limits;
use super::validate::{RawRecord, RejectReason, Validator, check_fields};
use super::{Feed, FeedCheckpoint, FeedError, FeedStats, RejectLog};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, Kind, Side};
use crate::ring::Idle;
use crate::ring::spsc::{self, Consumer, Producer};
use crate::symbols::Groups;
use crate::symbols::{pack, valid_account, valid_instrument};
use std::sync::Arc;

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
    /// Not a record: the sender's exchange clock (`ts_ns`), which lets
    /// event time move on without records. A sender puts a heartbeat
    /// first in a slot of its own (see `LiveFeed::pump_live`).
    pub heartbeat: bool,
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

pub struct LiveFeed {
    rx: Consumer<Vec<WireRecord>>,
    validator: Validator,
    rejects: RejectLog,
    drained: bool,
    idle: Idle,
    scratch: Vec<u8>,
    /// The seq after the newest record taken from the ring (accepted or
    /// rejected; 0 before any): a live feed's position, which a checkpoint
    /// saves and a resumed daemon asks its sender for.
    next_seq: u64,
    /// A heartbeat's exchange clock not yet handed to the router.
    clock: Option<i64>,
    /// Event time of the first record taken (`i64::MIN`: none yet): which
    /// trading day this feed serves, saved with its position.
    first_ts_ns: i64,
    /// Where the ring goes when the feed is dropped (`return_ring_to`).
    ring_back: Option<RingBack>,
}

/// A slot the ring's receiving half is put back into when its `LiveFeed`
/// is dropped: the daemon's ring outlives one pipeline run (a rules reload
/// starts the next run on the same ring, the records after the reload's
/// barrier still in it).
pub type RingBack = Arc<std::sync::Mutex<Option<Consumer<Vec<WireRecord>>>>>;

impl Drop for LiveFeed {
    fn drop(&mut self) {
        if let Some(back) = self.ring_back.take() {
            let (_, empty) = spsc::channel(1, Vec::new);
            let rx = std::mem::replace(&mut self.rx, empty);
            if let Ok(mut slot) = back.lock() {
                *slot = Some(rx);
            }
        }
    }
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
            next_seq: 0,
            clock: None,
            first_ts_ns: i64::MIN,
            ring_back: None,
        }
    }

    /// When dropped, the feed puts its ring into `back` instead of dropping
    /// it (the sender then does not see the receiver gone). The feed takes
    /// whole ring slots per pump, so the ring holds exactly the records the
    /// feed has not taken.
    pub fn return_ring_to(&mut self, back: RingBack) {
        self.ring_back = Some(back);
    }

    /// A feed resuming from a checkpoint: `r` reads what `checkpoint`
    /// wrote (the position, then the validator).
    pub fn resume(
        rx: Consumer<Vec<WireRecord>>,
        limits: Limits,
        groups: Arc<Groups>,
        r: &mut Reader<'_>,
        names: (&[Vec<u8>], &[Vec<u8>]),
        rejects: RejectLog,
    ) -> Result<LiveFeed, DecodeError> {
        let next_seq = r.u64()?;
        let first_ts_ns = r.i64()?;
        let validator = Validator::restore(limits, groups, r, names.0, names.1)?;
        let mut feed = LiveFeed::new(rx, validator, rejects);
        feed.next_seq = next_seq;
        feed.first_ts_ns = first_ts_ns;
        Ok(feed)
    }

    /// The seq the feed needs next (0: none seen yet).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Event time of the first record taken (`i64::MIN`: none yet).
    pub fn first_ts_ns(&self) -> i64 {
        self.first_ts_ns
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }
}

/// Validates and interns one wire record; a bad one is counted and written
/// to the rejects file. (A free function so the ring slot it reads from
/// can stay borrowed.)
#[inline]
fn accept(
    validator: &mut Validator,
    rejects: &mut RejectLog,
    scratch: &mut Vec<u8>,
    w: &WireRecord,
) -> Result<Option<Event>, FeedError> {
    validator.stats.records_read += 1;
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
    let packed = |name: &[u8]| if name.is_empty() { 0 } else { pack(name) };
    let raw = RawRecord {
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
    };
    // The wire has no line numbers: a record's place is its seq.
    let outcome = check_fields(w.seq, w.kind, w.price, w.qty, w.contra_order_id)
        .and(names)
        .and_then(|()| validator.check_seq_now(w.seq, w.ts_ns))
        .and_then(|()| validator.admit(&raw, w.seq));
    match outcome {
        Ok(event) => {
            validator.stats.accepted += 1;
            Ok(Some(event))
        }
        Err(reason) => {
            validator.stats.rejected += 1;
            w.write_csv(scratch);
            rejects.write(w.seq, &reason, scratch)?;
            Ok(None)
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
        let LiveFeed { rx, validator, rejects, scratch, next_seq, clock, first_ts_ns, .. } = self;
        while slots < PUMP_SLOTS {
            // Read in place: one cursor publish per slot, no copy.
            let Some(batch) = rx.peek() else { break };
            // A heartbeat comes alone in its slot and ends the pump, so the
            // router moves event time on exactly between the records before
            // and after it.
            if let Some(beat) = batch.first().filter(|w| w.heartbeat) {
                if slots > 0 {
                    break;
                }
                *clock = Some(beat.ts_ns);
                rx.release();
                slots += 1;
                break;
            }
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
                *next_seq = (*next_seq).max(w.seq.saturating_add(1));
                if *first_ts_ns == i64::MIN {
                    *first_ts_ns = w.ts_ns;
                }
                if let Some(event) = accept(validator, rejects, scratch, w)? {
                    emit(&event, w.due_ns);
                }
            }
            rx.release();
            slots += 1;
        }
        if slots > 0 {
            self.idle.reset();
            self.drained = self.rx.peek().is_none();
            return Ok(true);
        }
        self.drained = true;
        if self.rx.is_finished() {
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

    fn take_clock(&mut self) -> Option<i64> {
        self.clock.take()
    }

    /// The position is the next seq, not a byte offset: a live sender is
    /// asked for it on connect.
    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        w.u64(self.next_seq);
        w.i64(self.first_ts_ns);
        self.validator.snapshot(w);
        Ok(FeedCheckpoint { offset: self.next_seq, line_no: 0, rejects: self.rejects.committed()? })
    }

    fn stats(&self) -> FeedStats {
        self.validator.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let mut w = WireRecord::default();
        assert!(WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, b"0123456789abc").is_none());
        assert!(WireRecord::set_name(&mut w.account, &mut w.account_len, b"0123456789abcdef").is_some());
        assert_eq!(w.account(), b"0123456789abcdef");
    }
}
