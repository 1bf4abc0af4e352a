//! Replay of a native tape: walks the memory-mapped records in feed order,
//! verifying each checksum block just before its first record is used
//! (`Tape::open_streaming`). Import validated sequence and lifecycle, but a
//! checksum proves only that the tape is as written, not that what was
//! written is sound (anyone can reseal a tape). So every record goes
//! through the record rules a CSV record does, with the same outcome:
//! FEED.md's field rules (counted per block by the verification pass,
//! checked per record only in a block that has a bad one) and the
//! `Sequencer` (seq and event time, jumps held for a look-ahead); a record
//! that fails is rejected alone, into the rejects file, and counted. Gaps
//! were counted at import (the header says how many) and are not counted
//! again. The feed also resolves account groups (they come from
//! accounts.csv at replay time) and turns stored records into events.
//!
//! # Blocks wholly in line
//!
//! The verification pass also folds each block's seqs (first, last, and
//! whether each is the one before plus one) and event times (first,
//! extremes, largest step past the newest before it), as the block index
//! does. When the lifecycle is not re-checked, a block that starts at its
//! first record with nothing held or unplaced, every field rule passed,
//! seqs consecutive from the expected one, every time inside the trading
//! day, its first within the future bound of the feed's event time and no
//! step past the newest before it larger than that bound, would pass
//! `Sequencer::in_line` record by record, each record moving the sequence
//! by one and the event time to the newest so far. Such a block is read
//! with no per-record check (a *fast run*), and the sequencer is moved past
//! what was read at once where the run ends or the pump returns
//! (`settle_fast`). Any other block takes the per-record path, so a forged
//! or damaged tape gets exactly what judging each record would give.
//!
//! # The order lifecycle: checked at import, re-checked on request
//!
//! The lifecycle (`Lifecycle`: an order announced once, cancelled or
//! traded only while open, for no more than is open, by its owner) is a
//! rule across records, and the open-order table it needs was most of the
//! cost of a native replay. Import runs it over every record and writes
//! only those that pass, and says so in the header (`lifecycle_checked`,
//! covered by the checksums). A tape with that mark is replayed without
//! re-running it; one without (written by anything but import), or any
//! tape with `--verify-lifecycle`, is checked record by record as a CSV
//! tape is, with the same rejects.
//!
//! This trusts whoever sealed the tape for the lifecycle alone: a forger
//! can set the mark as easily as reseal the checksums. What such a tape
//! can then do is bounded: its records still pass the field, seq and time
//! rules (nothing that panics or poisons time reaches the pipeline), and
//! the order books count and skip what the lifecycle would have rejected
//! (an unknown order, a duplicate, an over-execution: the summary's `book
//! ... skipped` line), so the book state stays sound. Rules that count
//! records without the book (excessive-cancel counts cancels, self-trade
//! trades) see such records as they are, as they did before any native
//! re-check existed; `--verify-lifecycle` is the way to hold a tape of
//! unknown origin to the full rules.

use super::csv::FeedLine;
use super::native::{BlockCheck, Tape, TapeRecord};
use super::validate::{Judged, Lifecycle, Limits, RejectReason, Resolved, Sequencer, TimeRules, check_fields};
use super::{Feed, FeedCheckpoint, FeedError, FeedStats, RejectLog, decode_stats, encode_stats};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, GroupId, Kind, Side};
use crate::symbols::{Groups, NameTable, Names};
use std::sync::Arc;

/// Records handed to the pipeline per `pump`, between progress updates.
const PUMP_RECORDS: usize = 64 * 1024;
/// How many records ahead the feed prefetches open-order slots (as the CSV
/// feed does: the table outgrows the cache).
const PREFETCH_AHEAD: usize = 12;

pub struct NativeFeed {
    tape: Tape,
    next: usize,
    /// Records below this index are in verified blocks.
    verified_end: usize,
    groups_by_account: Vec<GroupId>,
    stats: FeedStats,
    /// Whether the verified block being read holds records that break a
    /// field rule (then each of its records is checked).
    check_fields: bool,
    sequencer: Sequencer,
    lifecycle: Lifecycle,
    /// Whether the order lifecycle is checked here (see the module doc):
    /// the tape lacks import's mark, or `verify_lifecycle` asked for it.
    recheck_lifecycle: bool,
    /// A record held for a look-ahead (see `validate`), by index.
    held: Option<usize>,
    rejects: RejectLog,
    scratch: Vec<u8>,
    /// A filtered replay's blocks to leave unread, by the tape's index.
    skip: Option<BlockSkip>,
    skipped_blocks: u64,
    /// The fast run (see the module doc): records `fast_from..fast_end`
    /// are in line as a block, and those below the read position have not
    /// yet moved the sequencer; `fast_max_ts` is the newest time of the
    /// whole run (`fast_from` is its first record until the run is settled
    /// part way).
    fast_from: usize,
    fast_end: usize,
    fast_max_ts: i64,
    /// Whether blocks wholly in line take the fast run (tests turn it off
    /// to compare with the per-record path).
    fast_runs: bool,
    fast_blocks: u64,
}

/// The open-order table of a feed that checks the lifecycle, or an empty
/// one that is never consulted.
fn lifecycle_for(recheck: bool) -> Lifecycle {
    Lifecycle::new(if recheck { Limits::default().open_orders } else { 0 })
}

/// Which blocks a filtered replay does not need (`investigate::replay_filter`):
/// those whose records are all of other instruments or all outside the
/// time range, by the tape's index.
#[derive(Clone, Debug)]
pub struct BlockSkip {
    /// Wanted instrument ids (empty: any).
    pub instruments: Vec<u32>,
    pub from_ns: i64,
    pub to_ns: i64,
}

impl NativeFeed {
    /// Builds the feed and the name tables that the sink resolves alerts with.
    pub fn new(tape: Tape, groups: Arc<Groups>) -> (NativeFeed, Names) {
        let accounts_list = tape.accounts();
        let instruments_list = tape.instruments();
        let accounts = NameTable::from_names(&accounts_list);
        let instruments = NameTable::from_names(&instruments_list);
        let groups_by_account = tape.groups_by_account(&groups);
        let tape_stats = tape.stats();
        let recheck_lifecycle = !tape_stats.lifecycle_checked;
        let stats =
            FeedStats { gaps: tape_stats.gaps, missing_records: tape_stats.missing_records, ..FeedStats::default() };
        let names = Names { accounts: Arc::new(accounts), instruments: Arc::new(instruments), groups };
        let feed = NativeFeed {
            tape,
            next: 0,
            verified_end: 0,
            groups_by_account,
            stats,
            check_fields: false,
            sequencer: Sequencer::native(TimeRules::default()),
            lifecycle: lifecycle_for(recheck_lifecycle),
            recheck_lifecycle,
            held: None,
            rejects: RejectLog::discard(),
            scratch: Vec::with_capacity(256),
            skip: None,
            skipped_blocks: 0,
            fast_from: 0,
            fast_end: 0,
            fast_max_ts: i64::MIN,
            fast_runs: true,
            fast_blocks: 0,
        };
        (feed, names)
    }

    /// Sets the event-time rules and the rejects file (before the first pump).
    pub fn with_checks(mut self, time: TimeRules, rejects: RejectLog) -> NativeFeed {
        self.sequencer = Sequencer::native(time);
        self.rejects = rejects;
        self
    }

    /// Checks the order lifecycle record by record even where import's
    /// mark says it was checked (`--verify-lifecycle`; before the first pump).
    pub fn verify_lifecycle(mut self, always: bool) -> NativeFeed {
        if always && !self.recheck_lifecycle {
            self.recheck_lifecycle = true;
            self.lifecycle = lifecycle_for(true);
        }
        self
    }

    /// Whether this feed checks the order lifecycle (else import did).
    pub fn rechecks_lifecycle(&self) -> bool {
        self.recheck_lifecycle
    }

    /// Leaves unread the blocks `skip` does not need, where the tape has an
    /// index and a block is sound and in line by it (see `skippable`).
    pub fn with_block_skip(mut self, skip: BlockSkip) -> NativeFeed {
        self.skip = Some(skip);
        self
    }

    /// Blocks left unread (`with_block_skip`).
    pub fn skipped_blocks(&self) -> u64 {
        self.skipped_blocks
    }

    /// Blocks read as a fast run (see the module doc).
    pub fn fast_blocks(&self) -> u64 {
        self.fast_blocks
    }

    /// Judges every record one by one, as if no block were wholly in line
    /// (tests: the fast run must give exactly what this gives).
    #[doc(hidden)]
    pub fn without_fast_runs(mut self) -> NativeFeed {
        self.fast_runs = false;
        self
    }

    /// Whether the tape has a block index (format version 2).
    pub fn indexed(&self) -> bool {
        self.tape.index().is_some()
    }

    /// The index's summary of the block starting at record `i`, when the
    /// block can be left unread: no wanted record in it, no record the
    /// feed would reject or hold (the index carries what verifying it
    /// would report of fields and times; it has no seqs, so those are read
    /// and must run on one by one from the expected one), and none held
    /// before it. Skipping it then changes nothing but the time the feed
    /// has seen, which the caller moves on.
    fn skippable(&self, i: usize) -> Option<super::tape_index::BlockCheck> {
        let skip = self.skip.as_ref()?;
        let index = self.tape.index()?;
        let per = self.tape.block_records();
        if !i.is_multiple_of(per) || self.held.is_some() {
            return None;
        }
        let block = i / per;
        let c = index.block(block).check;
        let unwanted = c.max_ts < skip.from_ns || c.min_ts > skip.to_ns || !index.has_any(block, &skip.instruments);
        let end = (i + per).min(self.tape.len());
        // First and last seq alone prove nothing (1, 2, 2, 4 spans 3 too):
        // a block whose seqs do not all run on takes the exact path.
        let sound = unwanted
            && c.bad_fields == 0
            && self.sequencer.block_in_line(self.tape.record(i).seq, c.first_ts, c.min_ts, c.max_ts, c.max_jump)
            && self.tape.seqs_consecutive(i..end);
        sound.then_some(c)
    }

    /// Resumes at a checkpoint: the record index to read next and the
    /// counters so far, as `Feed::checkpoint` wrote them.
    pub fn resume(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let next = r.u64()?;
        if next > self.tape.len() as u64 {
            return Err(DecodeError(format!("position {next} is past the tape's {} records", self.tape.len())));
        }
        self.next = next as usize;
        // Nothing is verified yet: the block holding `next` is, whole, when
        // the first pump reaches it (and, resumed inside it, is read record
        // by record: a fast run starts only at a block's first record).
        self.verified_end = 0;
        (self.fast_from, self.fast_end) = (self.next, self.next);
        self.stats = decode_stats(r)?;
        self.sequencer = Sequencer::restore_native(self.sequencer.rules(), r)?;
        let tracked = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(DecodeError(format!("bad lifecycle byte {other}"))),
        };
        self.lifecycle = Lifecycle::new(Limits::default().open_orders);
        let (accounts, instruments) = (self.tape.accounts().len(), self.tape.instruments().len());
        self.lifecycle.restore(r, accounts, instruments)?;
        if !self.recheck_lifecycle {
            self.lifecycle = lifecycle_for(false);
        } else if !tracked {
            // The run that cut the checkpoint trusted import's check and
            // kept no open orders: those entered before it are unknown
            // here, and records naming them are taken as the tape says.
            self.lifecycle.set_partial();
        }
        Ok(())
    }

    pub fn rejected_at_import(&self) -> u64 {
        self.tape.stats().rejected
    }

    pub fn len(&self) -> usize {
        self.tape.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tape.is_empty()
    }

    /// Counts the records up to `i` as read and moves on to it.
    fn count(&mut self, i: usize) {
        self.stats.records_read += (i - self.next) as u64;
        // Every record read is accepted, rejected, or the one held.
        self.stats.accepted = self.stats.records_read - self.stats.rejected - self.held.is_some() as u64;
        self.next = i;
    }

    /// Rejects record `i` (cold: a tape from import has none).
    #[cold]
    fn reject(&mut self, i: usize, r: &TapeRecord, reason: &RejectReason) -> Result<(), FeedError> {
        self.stats.rejected += 1;
        self.scratch.clear();
        let kind = r.kind();
        FeedLine {
            seq: r.seq,
            ts_ns: r.ts_ns,
            kind,
            order_id: r.order_id,
            account: self.tape.account(r.account),
            instrument: self.tape.instrument(r.instrument),
            side: if r.side == b'B' { Side::Buy } else { Side::Sell },
            price: r.price,
            qty: r.qty,
            contra: (kind == Kind::Trade).then(|| (r.contra_order_id, self.tape.account(r.contra_account))),
        }
        .write(&mut self.scratch);
        // A native tape has no lines: the rejects file names the record (1-based).
        self.rejects.write(i as u64 + 1, reason, &self.scratch)
    }

    /// Checks a record that is in line in seq and time against the open
    /// orders; its seq then takes its place, and if it was accepted, its
    /// event time moves the feed's. Returns the event if accepted.
    #[inline]
    fn admit(&mut self, i: usize, r: &TapeRecord) -> Result<Option<Event>, FeedError> {
        let event = self.event(r);
        let outcome = if self.recheck_lifecycle { self.lifecycle.apply(&event) } else { Ok(()) };
        // A native tape has no lines: the gap report's place is the record (1-based).
        self.sequencer.commit(r.seq, r.ts_ns, outcome.is_ok(), i as u64 + 1, &mut self.stats);
        match outcome {
            Ok(()) => Ok(Some(event)),
            Err(reason) => self.reject(i, r, &reason).map(|()| None),
        }
    }

    #[inline]
    fn event(&self, r: &TapeRecord) -> Event {
        r.to_event(&self.groups_by_account)
    }
}

impl Feed for NativeFeed {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_until(&mut |event| {
            emit(event);
            true
        })
    }

    fn pump_until(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        self.pump_with(emit)
    }

    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        // Barriers follow an emitted record, which settles any hold first.
        assert!(self.held.is_none(), "a checkpoint with a record held for look-ahead");
        w.u64(self.next as u64);
        encode_stats(w, &self.stats);
        self.sequencer.snapshot(w);
        // Whether the open orders were kept (empty when import's check was trusted).
        w.u8(self.recheck_lifecycle as u8);
        self.lifecycle.snapshot(w);
        Ok(FeedCheckpoint { offset: self.next as u64, line_no: 0, rejects: self.rejects.committed()? })
    }

    fn stats(&self) -> FeedStats {
        self.stats.clone()
    }
}

impl NativeFeed {
    /// `Feed::pump_until`. Every event leaves through one call of `emit`,
    /// so that the compiler inlines the router's closure into this loop
    /// (with a call site per case it did not, and each record then cost a
    /// call and an event written out to memory). For the same reason the
    /// lifecycle check is a branch, not a second copy of the loop.
    #[inline(always)]
    fn pump_with(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        let lifecycle = self.recheck_lifecycle;
        let len = self.tape.len();
        let end = (self.next + PUMP_RECORDS).min(len);
        let mut i = self.next;
        let mut fast_end = self.fast_end.min(end);
        loop {
            let event = if i < fast_end {
                // A block wholly in line: nothing to judge per record.
                let event = self.event(&self.tape.record(i));
                i += 1;
                event
            } else if i < end && i < self.verified_end {
                // Prefetching past the verified block reads unverified
                // bytes only as a cache hint: no result depends on them.
                if lifecycle && i + PREFETCH_AHEAD < len {
                    let ahead = self.tape.record(i + PREFETCH_AHEAD);
                    self.lifecycle.prefetch(ahead.order_id);
                    if ahead.kind == b'T' {
                        self.lifecycle.prefetch(ahead.contra_order_id);
                    }
                }
                let record = self.tape.record(i);
                if !self.check_fields && self.sequencer.in_line(record.seq, record.ts_ns) {
                    // The common case: a sound record next in line (nothing held).
                    i += 1;
                    let event = self.event(&record);
                    let outcome = if lifecycle { self.lifecycle.apply(&event) } else { Ok(()) };
                    self.sequencer.commit_in_line(record.seq, record.ts_ns, outcome.is_ok());
                    match outcome {
                        Ok(()) => event,
                        Err(reason) => {
                            self.reject(i - 1, &record, &reason)?;
                            continue;
                        }
                    }
                } else {
                    let (next, event) = self.step(i, &record)?;
                    i = next;
                    match event {
                        Some(event) => event,
                        None => continue,
                    }
                }
            } else if i < end {
                let entered = self.enter_block(i);
                fast_end = self.fast_end.min(end);
                match entered? {
                    // A block left unread: a time-only event stands for it.
                    Some((next, event)) => {
                        i = next;
                        event
                    }
                    None => continue,
                }
            } else if i == len && self.held.is_some() {
                match self.settle_at_end()? {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                break;
            };
            if !emit(&event) {
                break;
            }
        }
        self.settle_fast(i);
        self.tape.release_before(i);
        self.count(i);
        if self.next == len && self.held.is_none() {
            self.rejects.finish()?;
        }
        Ok(self.next < len || self.held.is_some())
    }

    /// The first record of a block not yet verified: leaves the block
    /// unread where a filtered replay may (see `skippable`; returns where
    /// to go on and the time-only event that stands for the block), or
    /// verifies it.
    #[inline(never)]
    fn enter_block(&mut self, i: usize) -> Result<Option<(usize, Event)>, FeedError> {
        self.settle_fast(i);
        if let Some(check) = self.skippable(i) {
            // Not verified, and of its records only the seqs were read.
            let last = (i + self.tape.block_records()).min(self.tape.len());
            self.sequencer.skip_past(self.tape.record(last - 1).seq, check.max_ts);
            // Orders entered in it are not known to the lifecycle check.
            self.lifecycle.set_partial();
            self.skipped_blocks += 1;
            // Time-only: no barrier can be due (filtered runs take none).
            return Ok(Some((last, super::time_only(check.max_ts))));
        }
        let block = i / self.tape.block_records();
        let check = match self.tape.verify_block(block) {
            Ok(check) => check,
            Err(e) => {
                self.count(i);
                return Err(FeedError { path: e.path().to_path_buf(), message: e.detail() });
            }
        };
        self.check_fields = check.bad_fields > 0;
        self.verified_end = ((block + 1) * self.tape.block_records()).min(self.tape.len());
        debug_assert!(self.verified_end > i, "the record at {i} is in a verified block");
        if self.in_line_whole(i, &check) {
            (self.fast_from, self.fast_end, self.fast_max_ts) = (i, self.verified_end, check.max_ts);
            self.fast_blocks += 1;
        }
        Ok(None)
    }

    /// Whether the block just verified, starting at record `i`, would pass
    /// `Sequencer::in_line` record by record (see the module doc): then
    /// each record would move the sequence by one and, all accepted, the
    /// event time to the newest so far, which `settle_fast` does at once.
    fn in_line_whole(&self, i: usize, check: &BlockCheck) -> bool {
        self.fast_runs
            && !self.recheck_lifecycle
            && i.is_multiple_of(self.tape.block_records())
            && self.held.is_none()
            && check.bad_fields == 0
            && check.consecutive
            && self.sequencer.block_in_line(check.first_seq, check.first_ts, check.min_ts, check.max_ts, check.max_jump)
    }

    /// Moves the sequencer past the records of the fast run read before
    /// `i`, as committing each in line would have: the expected seq after
    /// the last, the event time to the newest. The newest is the run's
    /// when it was read to its end, else found again (a pump that stopped
    /// part way: a barrier, the pump's end).
    #[inline(never)]
    fn settle_fast(&mut self, i: usize) {
        let read_to = i.min(self.fast_end);
        if read_to <= self.fast_from {
            return;
        }
        let max_ts = if read_to == self.fast_end {
            self.fast_max_ts
        } else {
            (self.fast_from..read_to).map(|j| self.tape.record(j).ts_ns).max().unwrap_or(i64::MIN)
        };
        self.sequencer.skip_past(self.tape.record(read_to - 1).seq, max_ts);
        self.fast_from = read_to;
    }

    /// Record `i`, when it is not simply next in line: a field rule
    /// broken, a record held for a look-ahead, or a jump. Returns the
    /// index to read next and the event to hand on, if any. When the
    /// record settles a held one that is accepted, that one is the event
    /// and record `i` is read again (nothing is held then).
    #[inline(never)]
    fn step(&mut self, i: usize, record: &TapeRecord) -> Result<(usize, Option<Event>), FeedError> {
        let fields = if self.check_fields {
            check_fields(record.seq, record.kind(), record.price, record.qty, record.contra_order_id)
        } else {
            Ok(())
        };
        if let Some(h) = self.held {
            let next = fields.is_ok().then_some((record.seq, record.ts_ns));
            let settled = match self.sequencer.resolve(next) {
                Resolved::Wait => None,
                Resolved::Confirm => Some(Ok(())),
                Resolved::Reject(reason) => Some(Err(reason)),
            };
            if let Some(outcome) = settled {
                self.held = None;
                let held = self.tape.record(h);
                match outcome {
                    Ok(()) => {
                        if let Some(event) = self.admit(h, &held)? {
                            return Ok((i, Some(event)));
                        }
                    }
                    Err(reason) => self.reject(h, &held, &reason)?,
                }
            }
        }
        if let Err(reason) = fields {
            // A seq of a record that breaks a field rule holds its
            // place only when it is the expected one (as on CSV).
            self.sequencer.malformed(Some(record.seq));
            self.reject(i, record, &reason)?;
            return Ok((i + 1, None));
        }
        match self.sequencer.judge(record.seq, record.ts_ns) {
            Judged::InLine => Ok((i + 1, self.admit(i, record)?)),
            Judged::Hold => {
                self.held = Some(i);
                Ok((i + 1, None))
            }
            Judged::Reject(reason) => {
                self.reject(i, record, &reason)?;
                Ok((i + 1, None))
            }
        }
    }

    /// The tape ended with a record held: nothing came after it to
    /// contradict it (a barrier due after it is cut once the feed returns).
    #[cold]
    fn settle_at_end(&mut self) -> Result<Option<Event>, FeedError> {
        let Some(h) = self.held.take() else { return Ok(None) };
        self.sequencer.resolve_at_end();
        let held = self.tape.record(h);
        self.admit(h, &held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::native::{TapeStats, TapeWriter};
    use crate::symbols::Groups;

    const RECORDS: u64 = 10_000;

    fn feed(path: &std::path::Path) -> NativeFeed {
        let tape = Tape::open_streaming(path).expect("open");
        NativeFeed::new(tape, Arc::new(Groups::default())).0
    }

    /// Every seq a feed hands on from where it stands to the end.
    fn rest(feed: &mut NativeFeed) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..1000 {
            if !feed.pump(&mut |e| seqs.push(e.seq)).expect("pump") {
                return seqs;
            }
        }
        panic!("the feed made no progress after {} records", seqs.len());
    }

    /// A day of `n` orders, each entered then cancelled 10 records later,
    /// and one cancel of an order never entered after the 100th record.
    fn lifecycle_day(path: &std::path::Path, lifecycle_checked: bool) {
        let mut records = Vec::new();
        let order = |seq: u64, kind: u8, order_id: u64| TapeRecord {
            seq,
            ts_ns: seq as i64,
            kind,
            side: b'B',
            order_id,
            price: 1,
            qty: 1,
            ..TapeRecord::default()
        };
        for id in 1..=200u64 {
            records.push((b'N', id));
            if id > 10 {
                records.push((b'C', id - 10));
            }
            if id == 100 {
                records.push((b'C', 1_000_000));
            }
        }
        let mut writer = TapeWriter::create(path).expect("create");
        for (i, &(kind, id)) in records.iter().enumerate() {
            writer.push(&order(i as u64 + 1, kind, id)).expect("push");
        }
        let stats = TapeStats { lifecycle_checked, ..TapeStats::default() };
        writer.finish(&[b"A"], &[b"X"], stats).expect("finish");
    }

    /// A tape without import's mark, or any with `verify_lifecycle`, is
    /// checked against the open orders (the unknown cancel is rejected);
    /// one with the mark is taken as import checked it.
    #[test]
    fn lifecycle_is_rechecked_unless_import_checked_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (marked, verify, rechecked) in [(false, false, true), (true, false, false), (true, true, true)] {
            let path = dir.path().join(format!("day-{marked}-{verify}.tape"));
            lifecycle_day(&path, marked);
            let mut feed = feed(&path).verify_lifecycle(verify);
            assert_eq!(feed.rechecks_lifecycle(), rechecked);
            let seqs = rest(&mut feed);
            assert_eq!(seqs.len() as u64 + feed.stats().rejected, feed.stats().records_read);
            assert_eq!(feed.stats().rejected, rechecked as u64, "marked {marked}, verify {verify}");
        }
    }

    /// A checkpoint of a run that trusted import's check holds no open
    /// orders: resumed with `verify_lifecycle`, an order the feed does not
    /// know may have been entered before it, so records naming one are
    /// taken as the tape says (as in a filtered replay), not rejected: the
    /// cancels of orders entered before the checkpoint, and the cancel of
    /// the order never entered too. A checkpoint of a checking run resumes
    /// from its open orders and rejects only the latter.
    #[test]
    fn a_resume_switching_lifecycle_checks_keeps_what_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        lifecycle_day(&path, true);
        for first_verifies in [false, true] {
            let mut first = feed(&path).verify_lifecycle(first_verifies);
            let mut seen = 0;
            first
                .pump_until(&mut |_| {
                    seen += 1;
                    seen < 50
                })
                .expect("pump");
            let mut position = Vec::new();
            first.checkpoint(&mut Writer::new(&mut position)).expect("checkpoint");
            let mut resumed = feed(&path).verify_lifecycle(true);
            resumed.resume(&mut Reader::new(&position)).expect("resume");
            rest(&mut resumed);
            assert_eq!(resumed.stats().rejected, first_verifies as u64, "first run verifies: {first_verifies}");
        }
    }

    /// Event time of a Shanghai trading morning (2023-11-15 01:33 UTC).
    const MORNING_NS: i64 = 1_700_011_980_000_000_000;

    /// Writes `recs` in blocks of `per` records with their seqs and times
    /// as given (the writer wants rising seqs: they are patched in after,
    /// and every checksum resealed, as anyone editing a tape can), with
    /// import's lifecycle mark, so that the feed judges only the record
    /// rules.
    fn forged(path: &std::path::Path, per: u32, recs: &[(u64, i64, u64)]) {
        let mut writer = TapeWriter::with_block_records(path, per).expect("create");
        for (i, _) in recs.iter().enumerate() {
            let r = TapeRecord { seq: i as u64 + 1, kind: b'N', side: b'B', price: 1, qty: 1, ..TapeRecord::default() };
            writer.push(&r).expect("push");
        }
        let stats = TapeStats { lifecycle_checked: true, ..TapeStats::default() };
        writer.finish(&[b"A"], &[b"X"], stats).expect("finish");
        let mut b = std::fs::read(path).expect("read");
        for (i, &(seq, ts_ns, qty)) in recs.iter().enumerate() {
            let at = 128 + i * 64;
            b[at..at + 8].copy_from_slice(&seq.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&ts_ns.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&qty.to_le_bytes());
        }
        reseal(&mut b);
        std::fs::write(path, b).expect("write");
    }

    /// Recomputes a tape's checksums (header -> table and symbols and
    /// index -> blocks), the layout of native.rs.
    fn reseal(b: &mut [u8]) {
        use xxhash_rust::xxh3::xxh3_64;
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let per = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes")) as usize;
        let (table, symbols, index) = (u64_at(b, 32) as usize, u64_at(b, 40) as usize, u64_at(b, 96) as usize);
        let sums: Vec<u64> = b[128..table].chunks(per * 64).map(xxh3_64).collect();
        for (k, sum) in sums.iter().enumerate() {
            b[table + k * 8..table + k * 8 + 8].copy_from_slice(&sum.to_le_bytes());
        }
        let (th, sh, ih) = (xxh3_64(&b[table..symbols]), xxh3_64(&b[symbols..index]), xxh3_64(&b[index..]));
        b[80..88].copy_from_slice(&th.to_le_bytes());
        b[88..96].copy_from_slice(&sh.to_le_bytes());
        b[104..112].copy_from_slice(&ih.to_le_bytes());
        let hh = xxh3_64(&b[..120]);
        b[120..128].copy_from_slice(&hh.to_le_bytes());
    }

    /// Regression: a filtered replay left a block unread when its first
    /// and last seqs were `n - 1` apart, which a forged block with seqs
    /// 9, 10, 10, 12, ... passes (the index has no seqs). Such a block must
    /// be read record by record: its repeat rejected, as without the skip.
    #[test]
    fn a_block_with_a_repeat_inside_is_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let mut writer = TapeWriter::with_block_records(&path, 8).expect("create");
        // Three blocks of 8: instrument 0, then 1 (not wanted), then 0.
        for seq in 1..=24u64 {
            let instrument = u32::from((9..=16).contains(&seq));
            let ts_ns = MORNING_NS + seq as i64 * 1_000;
            let r =
                TapeRecord { seq, ts_ns, kind: b'N', side: b'B', price: 1, qty: 1, instrument, ..Default::default() };
            writer.push(&r).expect("push");
        }
        let stats = TapeStats { lifecycle_checked: true, ..TapeStats::default() };
        writer.finish(&[b"A"], &[b"X", b"Y"], stats).expect("finish");
        let clean = std::fs::read(&path).expect("read");
        let skip = BlockSkip { instruments: vec![0], from_ns: i64::MIN, to_ns: i64::MAX };
        let read = |skip: Option<&BlockSkip>| {
            let mut feed = feed(&path).with_checks(TimeRules::default(), RejectLog::discard());
            if let Some(skip) = skip {
                feed = feed.with_block_skip(skip.clone());
            }
            while feed.pump(&mut |_| {}).expect("pump") {}
            (feed.stats().rejected, feed.skipped_blocks())
        };
        assert_eq!(read(Some(&skip)), (0, 1), "a sound unwanted block is skipped");
        // The 11th record repeats seq 10 and the 12th is 12: first 9, last 16.
        let mut b = clean;
        let at = 128 + 10 * 64;
        b[at..at + 8].copy_from_slice(&10u64.to_le_bytes());
        reseal(&mut b);
        std::fs::write(&path, b).expect("write");
        assert_eq!(read(None).0, 1, "the repeat is rejected");
        assert_eq!(read(Some(&skip)), (1, 0), "the forged block is read, not skipped");
    }

    /// What a feed hands on, read straight through but stopped after each
    /// count of events in `stops` for a checkpoint: the events, the
    /// checkpoints' bytes (sequencer included), the counters, the rejects
    /// file, and the blocks read as fast runs.
    type Run = (Vec<Event>, Vec<Vec<u8>>, FeedStats, String, u64);

    fn run(path: &std::path::Path, fast: bool, stops: &[usize]) -> Run {
        let rejects_path = path.with_extension(format!("rejects-{fast}"));
        let rejects = RejectLog::create(&rejects_path).expect("rejects");
        let mut feed = feed(path).with_checks(TimeRules::default(), rejects);
        if !fast {
            feed = feed.without_fast_runs();
        }
        let (mut events, mut checkpoints) = (Vec::new(), Vec::new());
        let mut stops = stops.iter().copied().peekable();
        for _ in 0..10_000 {
            let target = stops.peek().copied().unwrap_or(usize::MAX);
            let more = feed
                .pump_until(&mut |e| {
                    events.push(*e);
                    events.len() != target
                })
                .expect("pump");
            if events.len() == target {
                let mut position = Vec::new();
                feed.checkpoint(&mut Writer::new(&mut position)).expect("checkpoint");
                checkpoints.push(position);
                stops.next();
            }
            if !more {
                let rejects = std::fs::read_to_string(&rejects_path).expect("rejects");
                return (events, checkpoints, feed.stats(), rejects, feed.fast_blocks());
            }
        }
        panic!("the feed made no progress");
    }

    /// A clean day in blocks of 8: every block but the first (no event
    /// time yet to judge the future bound by) is read as a fast run, with
    /// exactly what the per-record path gives, checkpoints included.
    #[test]
    fn blocks_wholly_in_line_are_read_as_fast_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let recs: Vec<(u64, i64, u64)> = (0..100).map(|i| (i + 1, MORNING_NS + i as i64 * 1_000, 1)).collect();
        forged(&path, 8, &recs);
        let stops = [3, 8, 12, 16, 17, 99];
        let fast = run(&path, true, &stops);
        let slow = run(&path, false, &stops);
        assert_eq!(fast.0.len(), 100);
        assert_eq!((fast.4, slow.4), (12, 0), "13 blocks, all but the first fast");
        assert_eq!(fast.0, slow.0);
        assert_eq!(fast.1, slow.1);
        assert_eq!(fast.2, slow.2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Forged and damaged tapes: repeats, jumps (gaps, and single
        /// seqs out of line), times too far ahead (one record, or the feed
        /// really jumping), back in time, outside the day, broken fields
        /// and seq `u64::MAX`, a few to a tape in blocks of 8. The fast
        /// runs give exactly what judging each record gives: the events,
        /// the checkpoints wherever the replay stops (their sequencer state
        /// included), the counters and the rejects file. Every checkpoint
        /// resumes to the same rest of the day.
        #[test]
        fn fast_runs_equal_the_per_record_path(
            faults in proptest::collection::vec((0u32..400, 0u32..3_000), 1..160),
            stops in proptest::collection::btree_set(1usize..160, 0..5),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("day.tape");
            let (mut seq, mut ts) = (1u64, MORNING_NS);
            let mut recs = Vec::new();
            for &(fault, step_us) in &faults {
                ts += step_us as i64 * 1_000;
                let record = match fault {
                    0 => (seq.saturating_sub(3), ts, 1),
                    1 => (seq + 40, ts, 1),
                    2 => {
                        seq += 40;
                        (seq, ts, 1)
                    }
                    3 => (seq, ts + 60_000_000_000, 1),
                    4 => {
                        ts += 60_000_000_000;
                        (seq, ts, 1)
                    }
                    5 => (seq, ts - 2_000_000_000, 1),
                    6 => (seq, ts + 2 * 86_400_000_000_000, 1),
                    7 => (seq, ts, 0),
                    8 => (u64::MAX, ts, 1),
                    9 => (seq, ts + 9_000_000_000, 1),
                    _ => (seq, ts, 1),
                };
                recs.push(record);
                seq += 1;
            }
            forged(&path, 8, &recs);
            let stops: Vec<usize> = stops.into_iter().collect();
            let fast = run(&path, true, &stops);
            let slow = run(&path, false, &stops);
            proptest::prop_assert_eq!(&fast.0, &slow.0);
            proptest::prop_assert_eq!(&fast.1, &slow.1);
            proptest::prop_assert_eq!(&fast.2, &slow.2);
            proptest::prop_assert_eq!(&fast.3, &slow.3);
            for (k, position) in fast.1.iter().enumerate() {
                let mut resumed = feed(&path).with_checks(TimeRules::default(), RejectLog::discard());
                resumed.resume(&mut Reader::new(position)).expect("resume");
                let mut rest = Vec::new();
                while resumed.pump(&mut |e| rest.push(*e)).expect("pump") {}
                proptest::prop_assert_eq!(&rest[..], &fast.0[stops[k]..], "resumed at stop {}", k);
            }
        }
    }

    /// Checkpoints stop a replay anywhere, mostly inside a checksum block
    /// (4096 records): a resumed feed verifies that whole block and goes on
    /// from the exact record, at block edges too.
    #[test]
    fn resumes_anywhere_in_a_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let mut writer = TapeWriter::create(&path).expect("create");
        for seq in 1..=RECORDS {
            let record = TapeRecord {
                seq,
                ts_ns: seq as i64,
                kind: b'N',
                side: b'B',
                order_id: seq,
                price: 1,
                qty: 1,
                ..TapeRecord::default()
            };
            writer.push(&record).expect("push");
        }
        writer.finish(&[b"A"], &[b"X"], TapeStats::default()).expect("finish");
        assert_eq!(rest(&mut feed(&path)), (1..=RECORDS).collect::<Vec<_>>());

        for stop_after in [1, 4095, 4096, 4097, 5000, 8192, 9999, RECORDS] {
            let mut first = feed(&path);
            let mut seen = 0;
            first
                .pump_until(&mut |_| {
                    seen += 1;
                    seen < stop_after
                })
                .expect("pump");
            assert_eq!(seen, stop_after);
            let mut position = Vec::new();
            first.checkpoint(&mut Writer::new(&mut position)).expect("checkpoint");

            let mut resumed = feed(&path);
            resumed.resume(&mut Reader::new(&position)).expect("resume");
            assert_eq!(rest(&mut resumed), (stop_after + 1..=RECORDS).collect::<Vec<_>>(), "after {stop_after}");
            assert_eq!(resumed.stats().records_read, RECORDS);
        }
    }
}
