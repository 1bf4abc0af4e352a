//! Replay of a native tape: walks the memory-mapped records in feed order,
//! verifying each checksum block just before its first record is used
//! (`Tape::open_streaming`). Import validated sequence and lifecycle, but a
//! checksum proves only that the tape is as written, not that what was
//! written is sound (anyone can reseal a tape). So every record goes
//! through the checks a CSV record does, with the same outcome: FEED.md's
//! field rules (counted per block by the verification pass, checked per
//! record only in a block that has a bad one), the `Sequencer` (seq and
//! event time, jumps held for a look-ahead) and the order lifecycle
//! (`Lifecycle`); a record that fails is rejected alone, into the rejects
//! file, and counted. Gaps were counted at import (the header says how
//! many) and are not counted again. The feed also resolves account groups
//! (they come from accounts.csv at replay time) and turns stored records
//! into events.

use super::csv::FeedLine;
use super::native::{Tape, TapeRecord};
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
    /// A record held for a look-ahead (see `validate`), by index.
    held: Option<usize>,
    rejects: RejectLog,
    scratch: Vec<u8>,
    /// A filtered replay's blocks to leave unread, by the tape's index.
    skip: Option<BlockSkip>,
    skipped_blocks: u64,
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
            lifecycle: Lifecycle::new(Limits::default().open_orders),
            held: None,
            rejects: RejectLog::discard(),
            scratch: Vec::with_capacity(256),
            skip: None,
            skipped_blocks: 0,
        };
        (feed, names)
    }

    /// Sets the event-time rules and the rejects file (before the first pump).
    pub fn with_checks(mut self, time: TimeRules, rejects: RejectLog) -> NativeFeed {
        self.sequencer = Sequencer::native(time);
        self.rejects = rejects;
        self
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

    /// Whether the tape has a block index (format version 2).
    pub fn indexed(&self) -> bool {
        self.tape.index().is_some()
    }

    /// The index's summary of the block starting at record `i`, when the
    /// block can be left unread: no wanted record in it, no record the
    /// feed would reject or hold (the index carries what verifying it
    /// would report), and none held before it. Skipping it then changes
    /// nothing but the time the feed has seen, which the caller moves on.
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
        let n = (self.tape.len() - i).min(per) as u64;
        let (first_seq, last_seq) = (self.tape.record(i).seq, self.tape.record(i + n as usize - 1).seq);
        let sound = c.bad_fields == 0
            && last_seq.checked_sub(first_seq) == Some(n - 1)
            && self.sequencer.block_in_line(first_seq, c.first_ts, c.min_ts, c.max_ts, c.max_jump);
        (unwanted && sound).then_some(c)
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
        // the first pump reaches it.
        self.verified_end = 0;
        self.stats = decode_stats(r)?;
        self.sequencer = Sequencer::restore_native(self.sequencer.rules(), r)?;
        self.lifecycle = Lifecycle::new(Limits::default().open_orders);
        let (accounts, instruments) = (self.tape.accounts().len(), self.tape.instruments().len());
        self.lifecycle.restore(r, accounts, instruments)
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
        let outcome = self.lifecycle.apply(&event);
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
        let end = (self.next + PUMP_RECORDS).min(self.tape.len());
        let mut i = self.next;
        'pump: while i < end {
            if i >= self.verified_end
                && let Some(check) = self.skippable(i)
            {
                // Neither verified nor read: its pages stay untouched but
                // for its first and last records' seqs.
                let last = (i + self.tape.block_records()).min(self.tape.len());
                self.sequencer.skip_past(self.tape.record(last - 1).seq, check.max_ts);
                // Orders entered in it are not known to the lifecycle check.
                self.lifecycle.set_partial();
                self.skipped_blocks += 1;
                i = last;
                // Time-only: no barrier can be due (filtered runs take none).
                let _ = emit(&super::time_only(check.max_ts));
                continue;
            }
            if i >= self.verified_end {
                let block = i / self.tape.block_records();
                match self.tape.verify_block(block) {
                    Ok(check) => self.check_fields = check.bad_fields > 0,
                    Err(e) => {
                        self.count(i);
                        return Err(FeedError { path: e.path().to_path_buf(), message: e.detail() });
                    }
                }
                self.verified_end = ((block + 1) * self.tape.block_records()).min(self.tape.len());
            }
            debug_assert!(self.verified_end > i, "the record at {i} is in a verified block");
            let run_end = end.min(self.verified_end);
            while i < run_end {
                // Prefetching past the verified block reads unverified
                // bytes only as a cache hint: no result depends on them.
                if i + PREFETCH_AHEAD < self.tape.len() {
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
                    let outcome = self.lifecycle.apply(&event);
                    self.sequencer.commit_in_line(record.seq, record.ts_ns, outcome.is_ok());
                    match outcome {
                        Ok(()) => {
                            if !emit(&event) {
                                break 'pump;
                            }
                        }
                        Err(reason) => self.reject(i - 1, &record, &reason)?,
                    }
                    continue;
                }
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
                                if let Some(event) = self.admit(h, &held)?
                                    && !emit(&event)
                                {
                                    // Record i is read again by the next pump.
                                    break 'pump;
                                }
                            }
                            Err(reason) => self.reject(h, &held, &reason)?,
                        }
                    }
                }
                i += 1;
                if let Err(reason) = fields {
                    // A seq of a record that breaks a field rule holds its
                    // place only when it is the expected one (as on CSV).
                    self.sequencer.malformed(Some(record.seq));
                    self.reject(i - 1, &record, &reason)?;
                    continue;
                }
                match self.sequencer.judge(record.seq, record.ts_ns) {
                    Judged::InLine => {
                        if let Some(event) = self.admit(i - 1, &record)?
                            && !emit(&event)
                        {
                            break 'pump;
                        }
                    }
                    Judged::Hold => self.held = Some(i - 1),
                    Judged::Reject(reason) => self.reject(i - 1, &record, &reason)?,
                }
            }
        }
        self.tape.release_before(i);
        self.count(i);
        if self.next == self.tape.len()
            && let Some(h) = self.held.take()
        {
            // Nothing came after it to contradict it; a barrier due after
            // it is cut once the feed returns.
            self.sequencer.resolve_at_end();
            let held = self.tape.record(h);
            if let Some(event) = self.admit(h, &held)? {
                self.stats.accepted += 1;
                emit(&event);
            }
        }
        if self.next == self.tape.len() {
            self.rejects.finish()?;
        }
        Ok(self.next < self.tape.len())
    }

    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        // Barriers follow an emitted record, which settles any hold first.
        assert!(self.held.is_none(), "a checkpoint with a record held for look-ahead");
        w.u64(self.next as u64);
        encode_stats(w, &self.stats);
        self.sequencer.snapshot(w);
        self.lifecycle.snapshot(w);
        Ok(FeedCheckpoint { offset: self.next as u64, line_no: 0, rejects: self.rejects.committed()? })
    }

    fn stats(&self) -> FeedStats {
        self.stats.clone()
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
