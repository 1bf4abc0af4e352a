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
use super::validate::{Lookahead, Offered, RawRecord, RejectReason, Validator, check_fields};
use super::{FEED_INTEGRITY, Feed, FeedCheckpoint, FeedError, FeedStats, RejectLog};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, Kind, Side};
use crate::ring::Idle;
use crate::ring::spsc::{self, Consumer, Producer};
use crate::symbols::Groups;
use crate::symbols::{pack, valid_account, valid_instrument};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// Not a record: a CSV line on the socket that is not a FEED.md record.
    /// Its text waits in the line ring (`line_channel`) when `line_kept`;
    /// the feed rejects it in its place, with its reason, into the rejects
    /// file, as a replay rejects a malformed line.
    pub malformed: bool,
    pub line_kept: bool,
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

/// Malformed CSV lines that may wait between the network edge and the
/// feed; a line that finds the ring full is rejected without its text
/// (counted, and said in the rejects file).
pub const LINE_SLOTS: usize = 64;

/// The edge's half of the ring of malformed lines.
pub type LineSender = Producer<Vec<u8>>;
/// The feed's half; one ring for the daemon's life, handed from each day's
/// feed to the next (a lock taken only for a malformed line).
pub type LineReceiver = Arc<Mutex<Consumer<Vec<u8>>>>;

/// The ring of malformed lines, each slot preallocated to a whole line.
pub fn line_channel() -> (LineSender, LineReceiver) {
    let (tx, rx) = spsc::channel(LINE_SLOTS, || Vec::with_capacity(crate::wire::MAX_LINE_BYTES));
    (tx, Arc::new(Mutex::new(rx)))
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
    /// Where the feed tells the edge how far it has settled the ring.
    position: Option<Arc<FeedPosition>>,
    counts: RejectCounts,
    /// A heartbeat's exchange clock not yet handed to the router.
    clock: Option<i64>,
    /// Event time of the first record taken (`i64::MIN`: none yet): which
    /// trading day this feed serves, saved with its position.
    first_ts_ns: i64,
    /// One record of look-ahead: a seq (or time) jump waits for the next
    /// record to tell a bad record from a real gap, as on a tape; at most
    /// `HOLD_RELEASE_NS` when nothing follows (see `validate`'s module doc).
    lookahead: Lookahead<WireRecord>,
    /// A run of repeated records not yet reported (one `feed-gap` alert per run).
    repeats: Option<RepeatRun>,
    /// The hold's clock (read only when a hold begins or the feed is idle).
    epoch: Instant,
    /// The text of malformed CSV lines (`WireRecord::malformed`), and the
    /// current one.
    lines: Option<LineReceiver>,
    line: Vec<u8>,
    /// Where the ring goes when the feed is dropped (`return_ring_to`).
    ring_back: Option<RingBack>,
}

/// How far the live feed has settled its ring, shared with the edge so
/// that a reconnecting sender is greeted with the seq the pipeline needs
/// (not the newest seq the edge saw: that may be a rejected wild seq).
#[derive(Debug, Default)]
pub struct FeedPosition {
    /// Ring slots the feed has taken since the daemon started (the edge
    /// counts the slots it published; equal: the ring is drained).
    pub slots_taken: AtomicU64,
    /// `LiveFeed::next_seq` as of `slots_taken`.
    pub next_seq: AtomicU64,
    /// A record is held for a look-ahead: `next_seq` may still move.
    pub holding: AtomicBool,
    /// Records rejected since the daemon started, by kind (`REJECT_KINDS`)
    /// and by reason (`REJECT_REASONS`); added once per pump.
    pub rejected_by_kind: [AtomicU64; 4],
    pub rejected_by_reason: [AtomicU64; 7],
    /// Distinct accounts the current day's feed has named.
    pub accounts: AtomicU64,
}

/// The kinds of rejected records, as /metrics labels them: a line too
/// broken to tell its kind is `unreadable`.
pub const REJECT_KINDS: [&str; 4] = ["new", "cancel", "trade", "unreadable"];

/// Reject reasons, grouped as /metrics labels them (the rejects file has
/// each record's full reason).
pub const REJECT_REASONS: [&str; 7] =
    ["malformed", "repeated-seq", "seq-out-of-line", "outside-day", "time-ahead", "lifecycle", "table-full"];

/// `REJECT_REASONS`' index of `repeated-seq`: `tapewatch_feed_repeats_total`.
pub const REPEATED_SEQ: usize = 1;

fn reason_index(reason: &RejectReason) -> usize {
    match reason {
        RejectReason::EmptyLine
        | RejectReason::LineTooLong(_)
        | RejectReason::ColumnCount(_)
        | RejectReason::BadField(_)
        | RejectReason::ContraOnOrder(_)
        | RejectReason::MissingContra(_) => 0,
        RejectReason::RepeatedSeq { .. } => REPEATED_SEQ,
        RejectReason::SeqOutOfLine { .. } => 2,
        RejectReason::OutsideDay { .. } => 3,
        RejectReason::TimeAhead { .. } => 4,
        RejectReason::DuplicateOrder(_)
        | RejectReason::UnknownOrder(_)
        | RejectReason::SelfMatch(_)
        | RejectReason::Mismatch { .. }
        | RejectReason::CancelQty { .. }
        | RejectReason::Overfill { .. } => 5,
        RejectReason::TableFull(_) => 6,
    }
}

/// Rejected records counted by the feed and not yet added to its
/// `FeedPosition` (once per pump).
#[derive(Debug, Default)]
struct RejectCounts {
    by_kind: [u64; 4],
    by_reason: [u64; 7],
}

impl FeedPosition {
    /// Whether the feed has settled every record of the first `published`
    /// slots (taken them and holds none back).
    pub fn settled(&self, published: u64) -> bool {
        self.slots_taken.load(Ordering::Acquire) >= published && !self.holding.load(Ordering::Relaxed)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }
}

/// How long a record whose seq jumps waits for the next record before it
/// is taken as a real gap. A live feed's next record is microseconds away
/// while it runs; when it is quiet, this bounds the delay of that one
/// record (and of event time) to a fraction of the 10 ms latency budget.
pub const HOLD_RELEASE_NS: u64 = 2_000_000;

/// A feed-integrity finding of a live feed, raised as a `feed-gap` alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The records `first..=last` never came: `received` (at `ts_ns`) came
    /// where `first` was expected.
    Gap { first: u64, last: u64, received: u64, ts_ns: i64 },
    /// `count` records with seqs in `first..=last` came again while `expected`
    /// was due: rejected (kept in the rejects file), not applied again.
    Repeat { expected: u64, first: u64, last: u64, count: u64, ts_ns: i64 },
}

impl Integrity {
    /// The finding as an event the router passes to the sink
    /// (`instrument` = `FEED_INTEGRITY`).
    pub fn to_event(self) -> Event {
        match self {
            Integrity::Gap { first, last, received, ts_ns } => Event {
                seq: received,
                ts_ns,
                order_id: first,
                contra_order_id: last,
                qty: last - first + 1,
                instrument: FEED_INTEGRITY,
                kind: Kind::New,
                ..Event::default()
            },
            Integrity::Repeat { expected, first, last, count, ts_ns } => Event {
                seq: first,
                ts_ns,
                order_id: expected,
                contra_order_id: last,
                qty: count,
                instrument: FEED_INTEGRITY,
                kind: Kind::Cancel,
                ..Event::default()
            },
        }
    }

    /// The finding an event carries, if it is one.
    pub fn of_event(e: &Event) -> Option<Integrity> {
        if e.instrument != FEED_INTEGRITY {
            return None;
        }
        Some(match e.kind {
            Kind::Cancel => Integrity::Repeat {
                expected: e.order_id,
                first: e.seq,
                last: e.contra_order_id,
                count: e.qty,
                ts_ns: e.ts_ns,
            },
            _ => Integrity::Gap { first: e.order_id, last: e.contra_order_id, received: e.seq, ts_ns: e.ts_ns },
        })
    }

    /// The `feed-gap` alert's JSON line (docs/WIRE.md), newline included.
    pub fn write_json(&self, out: &mut Vec<u8>, detected_unix_ns: i64) {
        let mut num = itoa::Buffer::new();
        let mut field = |out: &mut Vec<u8>, key: &str, v: u64| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(num.format(v).as_bytes());
        };
        let (kind, seq, ts_ns, first, last) = match *self {
            Integrity::Gap { first, last, received, ts_ns } => ("gap", received, ts_ns, first, last),
            Integrity::Repeat { first, last, ts_ns, .. } => ("repeat", first, ts_ns, first, last),
        };
        out.extend_from_slice(b"{\"alert_id\":\"feed-gap:");
        out.extend_from_slice(kind.as_bytes());
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(first).as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(last).as_bytes());
        out.extend_from_slice(b"\",\"rule\":\"feed-gap\",\"kind\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        field(out, "seq", seq);
        out.extend_from_slice(b",\"ts_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts_ns).as_bytes());
        out.extend_from_slice(b",\"time\":\"");
        crate::alert::write_iso_time(out, ts_ns);
        out.extend_from_slice(b"\",\"evidence\":{");
        match *self {
            Integrity::Gap { first, last, received, .. } => {
                out.extend_from_slice(b"\"expected_seq\":");
                out.extend_from_slice(itoa::Buffer::new().format(first).as_bytes());
                field(out, "received_seq", received);
                field(out, "missing", last - first + 1);
                field(out, "first_missing", first);
                field(out, "last_missing", last);
            }
            Integrity::Repeat { expected, first, last, count, .. } => {
                out.extend_from_slice(b"\"expected_seq\":");
                out.extend_from_slice(itoa::Buffer::new().format(expected).as_bytes());
                field(out, "received_seq", first);
                field(out, "repeated", count);
                field(out, "first_repeated", first);
                field(out, "last_repeated", last);
            }
        }
        out.extend_from_slice(b"},\"timing\":{\"detected_unix_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(detected_unix_ns).as_bytes());
        out.extend_from_slice(b"}}\n");
    }
}

/// Consecutive repeated records, reported as one finding when the run ends
/// (a record that is not a repeat, the end of a pump, a checkpoint).
#[derive(Clone, Copy, Debug)]
struct RepeatRun {
    expected: u64,
    first: u64,
    last: u64,
    count: u64,
    ts_ns: i64,
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
            position: None,
            counts: RejectCounts::default(),
            clock: None,
            first_ts_ns: i64::MIN,
            lookahead: Lookahead::new(HOLD_RELEASE_NS),
            repeats: None,
            epoch: Instant::now(),
            lines: None,
            line: Vec::with_capacity(crate::wire::MAX_LINE_BYTES),
            ring_back: None,
        }
    }

    /// Where the edge puts the text of malformed CSV lines.
    pub fn with_lines(mut self, lines: LineReceiver) -> LiveFeed {
        self.lines = Some(lines);
        self
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
        // The position saved beside the validator (what older checkpoints
        // saved there may count a rejected wild seq: the sequencer's is used).
        let _saved_next_seq = r.u64()?;
        let first_ts_ns = r.i64()?;
        let validator = Validator::restore(limits, groups, r, names.0, names.1)?;
        let mut feed = LiveFeed::new(rx, validator, rejects);
        feed.first_ts_ns = first_ts_ns;
        Ok(feed)
    }

    /// The seq the feed needs next (0: none yet): the seq after the newest
    /// record the sequencer took in line or as a real jump. A rejected
    /// record (a wild seq the next record contradicted, a repeat) never
    /// moves it, so a sender resuming from it skips nothing.
    pub fn next_seq(&self) -> u64 {
        self.validator.seq.expected_seq().unwrap_or(0)
    }

    /// Shares the feed's position with the edge (the greeting's NEXT_SEQ),
    /// published at the end of every pump.
    pub fn share_position(&mut self, position: Arc<FeedPosition>) {
        position.next_seq.store(self.next_seq(), Ordering::Release);
        self.position = Some(position);
    }

    fn publish_position(&mut self, slots: u64) {
        if let Some(p) = &self.position {
            let counts = std::mem::take(&mut self.counts);
            for (counter, n) in p.rejected_by_kind.iter().zip(counts.by_kind).filter(|(_, n)| *n > 0) {
                counter.fetch_add(n, Ordering::Relaxed);
            }
            for (counter, n) in p.rejected_by_reason.iter().zip(counts.by_reason).filter(|(_, n)| *n > 0) {
                counter.fetch_add(n, Ordering::Relaxed);
            }
            p.accounts.store(self.validator.accounts.table().len() as u64, Ordering::Relaxed);
            p.next_seq.store(self.next_seq(), Ordering::Relaxed);
            p.holding.store(self.lookahead.is_holding(), Ordering::Relaxed);
            p.slots_taken.fetch_add(slots, Ordering::Release);
        }
    }

    /// Event time of the first record taken (`i64::MIN`: none yet).
    pub fn first_ts_ns(&self) -> i64 {
        self.first_ts_ns
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }
}

/// A wire record's field and name checks (as the CSV decoder's): the raw
/// record to judge in feed order, or why it is rejected outright.
#[inline]
fn offered(w: &WireRecord) -> Offered {
    // An empty contra account (N and C records) packs to 0.
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
    check_fields(w.seq, w.kind, w.price, w.qty, w.contra_order_id)
        .and(names)
        .map(|()| RawRecord {
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
        .map_err(|reason| (Some(w.seq), reason))
}

/// Where settled records go while the look-ahead holds the validator
/// borrowed: accepted ones to `emit`, rejected ones to the rejects file,
/// repeats into the open run. Counts reach the validator's stats after.
struct Settler<'a, E> {
    rejects: &'a mut RejectLog,
    scratch: &'a mut Vec<u8>,
    /// The malformed line being rejected (`WireRecord::malformed`).
    line: &'a mut Vec<u8>,
    repeats: &'a mut Option<RepeatRun>,
    counts: &'a mut RejectCounts,
    emit: &'a mut E,
    accepted: u64,
    rejected: u64,
    error: Option<FeedError>,
}

impl<E: FnMut(&Event, u64)> Settler<'_, E> {
    #[inline]
    fn settled(&mut self, w: WireRecord, outcome: Result<Event, RejectReason>) {
        match outcome {
            Ok(event) => {
                self.end_repeats(w.due_ns);
                self.accepted += 1;
                (self.emit)(&event, w.due_ns);
            }
            Err(reason) => self.rejected(&w, reason),
        }
    }

    #[cold]
    fn rejected(&mut self, w: &WireRecord, reason: RejectReason) {
        self.rejected += 1;
        self.counts.by_kind[if w.malformed {
            3
        } else {
            match w.kind {
                Kind::New => 0,
                Kind::Cancel => 1,
                Kind::Trade => 2,
            }
        }] += 1;
        self.counts.by_reason[reason_index(&reason)] += 1;
        match (&reason, self.repeats.as_mut()) {
            (RejectReason::RepeatedSeq { seq, .. }, Some(run)) => {
                run.first = run.first.min(*seq);
                run.last = run.last.max(*seq);
                run.count += 1;
            }
            (RejectReason::RepeatedSeq { seq, expected }, None) => {
                *self.repeats =
                    Some(RepeatRun { expected: *expected, first: *seq, last: *seq, count: 1, ts_ns: w.ts_ns });
            }
            _ => self.end_repeats(w.due_ns),
        }
        if self.error.is_none() {
            let written = if w.malformed {
                // The line as received; its place is its seq, 0 when it has none.
                self.rejects.write(w.seq, &reason, self.line.as_slice())
            } else {
                w.write_csv(self.scratch);
                self.rejects.write(w.seq, &reason, self.scratch)
            };
            if let Err(e) = written {
                self.error = Some(e);
            }
        }
    }

    /// Reports the open run of repeats, if any.
    fn end_repeats(&mut self, due_ns: u64) {
        if let Some(run) = self.repeats.take() {
            let RepeatRun { expected, first, last, count, ts_ns } = run;
            (self.emit)(&Integrity::Repeat { expected, first, last, count, ts_ns }.to_event(), due_ns);
        }
    }

    /// Adds the counts to the validator's and reports the gap the settled
    /// records made, if any; the first write error, if any.
    #[inline]
    fn finish(&mut self, validator: &mut Validator, due_ns: u64) -> Result<(), FeedError> {
        validator.stats.accepted += std::mem::take(&mut self.accepted);
        validator.stats.rejected += std::mem::take(&mut self.rejected);
        if let Some((first, received, ts_ns)) = validator.seq.take_gap() {
            let gap = Integrity::Gap { first, last: received - 1, received, ts_ns };
            (self.emit)(&gap.to_event(), due_ns);
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A malformed CSV line's text (from the line ring, into `line`), and how
/// it is offered: with its seq when its first field reads as one (so it
/// holds its place, as on a tape), and the reason the CSV decoder gives.
#[cold]
fn malformed_line(w: &mut WireRecord, lines: Option<&LineReceiver>, line: &mut Vec<u8>) -> Offered {
    line.clear();
    let popped = w.line_kept
        && lines.and_then(|l| l.lock().ok()).is_some_and(|mut rx| match rx.peek() {
            Some(text) => {
                line.extend_from_slice(text);
                rx.release();
                true
            }
            None => false,
        });
    if !popped {
        line.extend_from_slice(b"(the line's text was not kept: too many malformed lines at once)");
        w.seq = 0;
        return Err((None, RejectReason::BadField("line")));
    }
    let seq = line.split(|&b| b == b',').next().and_then(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
    w.seq = seq.unwrap_or(0);
    let reason = match super::csv::parse_line(line) {
        Err(reason) => reason,
        // The edge found it malformed; the decoder agrees, or this says so.
        Ok(_) => RejectReason::BadField("line"),
    };
    Err((seq, reason))
}

fn elapsed_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

impl LiveFeed {
    /// Takes up to `PUMP_SLOTS` ring slots (`slots` counts them).
    fn pump_ring(&mut self, emit: &mut impl FnMut(&Event, u64), slots: &mut usize) -> Result<bool, FeedError> {
        let LiveFeed {
            rx,
            validator,
            rejects,
            scratch,
            clock,
            first_ts_ns,
            lookahead,
            repeats,
            counts,
            epoch,
            lines,
            line,
            ..
        } = self;
        let epoch = *epoch;
        let mut settler =
            Settler { rejects, scratch, line, repeats, counts, emit, accepted: 0, rejected: 0, error: None };
        let mut last_due_ns = 0;
        while *slots < PUMP_SLOTS {
            // Read in place: one cursor publish per slot, no copy.
            let Some(batch) = rx.peek() else { break };
            // A heartbeat comes alone in its slot and ends the pump, so the
            // router moves event time on exactly between the records before
            // and after it.
            if let Some(beat) = batch.first().filter(|w| w.heartbeat) {
                if *slots > 0 {
                    break;
                }
                // The sender's clock moved on and no record came meanwhile:
                // a held record is settled before event time moves past it.
                let due_ns = beat.due_ns;
                lookahead.flush(validator, &mut |w, outcome| settler.settled(w, outcome));
                settler.end_repeats(due_ns);
                settler.finish(validator, due_ns)?;
                *clock = Some(beat.ts_ns);
                rx.release();
                *slots += 1;
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
                validator.stats.records_read += 1;
                last_due_ns = w.due_ns;
                if w.malformed {
                    let mut w = *w;
                    let offer = malformed_line(&mut w, lines.as_ref(), settler.line);
                    lookahead.offer(validator, offer, w, w.seq, || elapsed_ns(epoch), &mut |w, outcome| {
                        settler.settled(w, outcome)
                    });
                    settler.finish(validator, w.due_ns)?;
                    continue;
                }
                if *first_ts_ns == i64::MIN {
                    *first_ts_ns = w.ts_ns;
                }
                // The wire has no line numbers: a record's place is its seq.
                lookahead.offer(validator, offered(w), *w, w.seq, || elapsed_ns(epoch), &mut |w, outcome| {
                    settler.settled(w, outcome)
                });
                settler.finish(validator, w.due_ns)?;
            }
            rx.release();
            *slots += 1;
        }
        if *slots > 0 {
            // A run of repeats is reported at the latest at the pump's end.
            settler.end_repeats(last_due_ns);
            self.idle.reset();
            self.drained = self.rx.peek().is_none();
            return Ok(true);
        }
        if self.rx.is_finished() {
            // The sender is gone for good: nothing will contradict a held record.
            lookahead.flush(validator, &mut |w, outcome| settler.settled(w, outcome));
            settler.end_repeats(last_due_ns);
            settler.finish(validator, last_due_ns)?;
            self.drained = true;
            self.rejects.finish()?;
            return Ok(false);
        }
        // Nothing arrived: a held record waits no longer than `HOLD_RELEASE_NS`.
        if lookahead.on_idle(validator, elapsed_ns(epoch), &mut |w, outcome| settler.settled(w, outcome)) {
            settler.finish(validator, last_due_ns)?;
            self.idle.reset();
            self.drained = true;
            return Ok(true);
        }
        self.drained = true;
        // Nothing arrived: back off (spin, yield, then short naps) so an
        // idle source leaves the cores to the feeder and the shards.
        self.idle.wait();
        Ok(true)
    }
}

impl Feed for LiveFeed {
    const LIVE: bool = true;

    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_live(&mut |event, _| emit(event))
    }

    fn pump_live(&mut self, emit: &mut impl FnMut(&Event, u64)) -> Result<bool, FeedError> {
        let mut slots = 0;
        let pumped = self.pump_ring(emit, &mut slots);
        self.publish_position(slots as u64);
        pumped
    }

    fn drained(&self) -> bool {
        self.drained
    }

    /// Before a checkpoint: a held record is taken as what it looks like (a
    /// gap, a time jump), and an open run of repeats is reported.
    fn settle(&mut self, emit: &mut impl FnMut(&Event, u64)) -> Result<(), FeedError> {
        let LiveFeed { validator, rejects, scratch, lookahead, repeats, counts, line, .. } = self;
        let mut settler =
            Settler { rejects, scratch, line, repeats, counts, emit, accepted: 0, rejected: 0, error: None };
        lookahead.flush(validator, &mut |w, outcome| settler.settled(w, outcome));
        settler.end_repeats(0);
        let settled = settler.finish(validator, 0);
        self.publish_position(0);
        settled
    }

    fn take_clock(&mut self) -> Option<i64> {
        self.clock.take()
    }

    /// The position is the next seq, not a byte offset: a live sender is
    /// asked for it on connect.
    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        let next_seq = self.next_seq();
        w.u64(next_seq);
        w.i64(self.first_ts_ns);
        self.validator.snapshot(w);
        Ok(FeedCheckpoint { offset: next_seq, line_no: 0, rejects: self.rejects.committed()? })
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

    /// Pumps `records` (one slot) through a fresh feed; what was emitted.
    fn pump_all(records: &[WireRecord]) -> (Vec<Event>, FeedStats) {
        let (mut tx, rx) = wire_channel(4);
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.extend_from_slice(records);
        tx.publish();
        drop(tx);
        let mut feed =
            LiveFeed::new(rx, Validator::new(Limits::default(), Arc::new(Groups::default())), RejectLog::discard());
        let mut got = Vec::new();
        while feed.pump_live(&mut |e, _| got.push(*e)).unwrap() {}
        (got, feed.stats())
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().filter(|e| e.instrument != FEED_INTEGRITY).map(|e| e.seq).collect()
    }

    fn findings(events: &[Event]) -> Vec<Integrity> {
        events.iter().filter_map(Integrity::of_event).collect()
    }

    #[test]
    fn a_gap_is_one_finding_naming_the_missing_range() {
        let records: Vec<_> = [1, 2, 3, 7, 8].iter().map(|&s| wire(s, Kind::New, s, "A1", s * 10)).collect();
        let (got, stats) = pump_all(&records);
        assert_eq!(seqs(&got), vec![1, 2, 3, 7, 8]);
        assert_eq!(findings(&got), vec![Integrity::Gap { first: 4, last: 6, received: 7, ts_ns: 1_007 }]);
        assert_eq!((stats.gaps, stats.missing_records), (1, 3));
    }

    #[test]
    fn one_bad_seq_then_the_old_sequence_is_no_gap() {
        // The look-ahead: seq 900 is a typo, 4 goes on from 3.
        let records: Vec<_> = [1, 2, 3, 900, 4, 5].iter().map(|&s| wire(s, Kind::New, s, "A1", 0)).collect();
        let (got, stats) = pump_all(&records);
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
        assert_eq!(findings(&got), vec![]);
        assert_eq!((stats.gaps, stats.rejected), (0, 1));
    }

    #[test]
    fn a_rejected_wild_seq_does_not_move_the_position() {
        // 900 is contradicted by 4 and rejected: the feed needs 6, and says
        // so to the edge once it has taken the slot and holds nothing.
        let (mut tx, rx) = wire_channel(4);
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.extend([1, 2, 3, 900, 4, 5].iter().map(|&s| wire(s, Kind::New, s, "A1", 0)));
        tx.publish();
        let mut feed =
            LiveFeed::new(rx, Validator::new(Limits::default(), Arc::new(Groups::default())), RejectLog::discard());
        let position = Arc::new(FeedPosition::default());
        feed.share_position(position.clone());
        assert!(position.settled(0) && !position.settled(1));
        feed.pump_live(&mut |_, _| {}).unwrap();
        assert_eq!(feed.next_seq(), 6);
        assert!(position.settled(1));
        assert_eq!(position.next_seq(), 6);
        // A jump nothing contradicts is held: not settled until released.
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.push(wire(20, Kind::New, 20, "A1", 0));
        tx.publish();
        feed.pump_live(&mut |_, _| {}).unwrap();
        assert!(!position.settled(2), "the jump is held");
        let started = Instant::now();
        while !position.settled(2) {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "never released");
            feed.pump_live(&mut |_, _| {}).unwrap();
        }
        assert_eq!(position.next_seq(), 21, "a released jump is a real gap: the feed goes on after it");
    }

    #[test]
    fn a_jump_at_the_end_of_the_feed_is_a_gap() {
        // Nothing follows the jump: it is settled when the sender goes.
        let records: Vec<_> = [1, 2, 10].iter().map(|&s| wire(s, Kind::New, s, "A1", 0)).collect();
        let (got, _) = pump_all(&records);
        assert_eq!(seqs(&got), vec![1, 2, 10]);
        assert_eq!(findings(&got), vec![Integrity::Gap { first: 3, last: 9, received: 10, ts_ns: 1_010 }]);
    }

    #[test]
    fn a_resend_is_one_repeat_finding_and_not_applied_again() {
        let seqs_sent = [1, 2, 3, 4, 5, 2, 3, 4, 6];
        let records: Vec<_> = seqs_sent.iter().map(|&s| wire(s, Kind::New, s, "A1", 0)).collect();
        let (got, stats) = pump_all(&records);
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(findings(&got), vec![Integrity::Repeat { expected: 6, first: 2, last: 4, count: 3, ts_ns: 1_002 }]);
        assert_eq!(stats.rejected, 3);
    }

    #[test]
    fn a_held_jump_is_released_when_the_feed_stays_quiet() {
        let (mut tx, rx) = wire_channel(4);
        let slot = tx.claim().unwrap();
        slot.clear();
        slot.extend([1, 2, 9].iter().map(|&s| wire(s, Kind::New, s, "A1", 0)));
        tx.publish();
        let mut feed =
            LiveFeed::new(rx, Validator::new(Limits::default(), Arc::new(Groups::default())), RejectLog::discard());
        let mut got = Vec::new();
        feed.pump_live(&mut |e, _| got.push(*e)).unwrap();
        assert_eq!(seqs(&got), vec![1, 2], "9 waits for the next record");
        let started = Instant::now();
        while seqs(&got).len() < 3 {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "never released");
            feed.pump_live(&mut |e, _| got.push(*e)).unwrap();
        }
        assert!(started.elapsed().as_nanos() as u64 >= HOLD_RELEASE_NS / 2);
        assert_eq!(findings(&got).len(), 1);
        drop(tx);
    }

    #[test]
    fn findings_round_trip_through_an_event_and_write_json() {
        let gap = Integrity::Gap { first: 5001, last: 5200, received: 5201, ts_ns: 1_793_583_000_000_000_000 };
        assert_eq!(Integrity::of_event(&gap.to_event()), Some(gap));
        let repeat = Integrity::Repeat { expected: 90, first: 10, last: 12, count: 3, ts_ns: 7 };
        assert_eq!(Integrity::of_event(&repeat.to_event()), Some(repeat));
        let mut out = Vec::new();
        gap.write_json(&mut out, 42);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rule"], "feed-gap");
        assert_eq!(v["kind"], "gap");
        assert_eq!(v["evidence"]["expected_seq"], 5001);
        assert_eq!(v["evidence"]["received_seq"], 5201);
        assert_eq!(v["evidence"]["missing"], 200);
        assert_eq!(v["evidence"]["last_missing"], 5200);
        assert_eq!(v["timing"]["detected_unix_ns"], 42);
        out.clear();
        repeat.write_json(&mut out, 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v["kind"].as_str(), v["evidence"]["repeated"].as_u64()), (Some("repeat"), Some(3)));
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let mut w = WireRecord::default();
        assert!(WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, b"0123456789abc").is_none());
        assert!(WireRecord::set_name(&mut w.account, &mut w.account_len, b"0123456789abcdef").is_some());
        assert_eq!(w.account(), b"0123456789abcdef");
    }
}
