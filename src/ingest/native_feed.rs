//! Replay of a native tape: walks the memory-mapped records in feed order,
//! verifying each checksum block just before its first record is used
//! (`Tape::open_streaming`). Import already validated sequence and
//! lifecycle, so this feed only resolves account groups (they come from
//! accounts.csv at replay time) and turns stored records into events.

use super::native::{Tape, TapeRecord};
use super::{Feed, FeedCheckpoint, FeedError, FeedStats, decode_stats, encode_stats};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, GroupId, Kind, Side};
use crate::symbols::{Groups, NameTable, Names, pack};
use std::sync::Arc;

/// Records handed to the pipeline per `pump`, between progress updates.
const PUMP_RECORDS: usize = 64 * 1024;

pub struct NativeFeed {
    tape: Tape,
    next: usize,
    /// Records below this index are in verified blocks.
    verified_end: usize,
    groups_by_account: Vec<GroupId>,
    stats: FeedStats,
}

impl NativeFeed {
    /// Builds the feed and the name tables that the sink resolves alerts with.
    pub fn new(tape: Tape, groups: Arc<Groups>) -> (NativeFeed, Names) {
        let accounts_list = tape.accounts();
        let instruments_list = tape.instruments();
        let accounts = NameTable::from_names(&accounts_list);
        let instruments = NameTable::from_names(&instruments_list);
        let groups_by_account =
            accounts_list.iter().enumerate().map(|(id, name)| groups.group_of(pack(name), id as u32)).collect();
        let tape_stats = tape.stats();
        let stats =
            FeedStats { gaps: tape_stats.gaps, missing_records: tape_stats.missing_records, ..FeedStats::default() };
        let names = Names { accounts: Arc::new(accounts), instruments: Arc::new(instruments), groups };
        (NativeFeed { tape, next: 0, verified_end: 0, groups_by_account, stats }, names)
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
        let count = (i - self.next) as u64;
        self.stats.records_read += count;
        self.stats.accepted += count;
        self.next = i;
    }

    #[inline]
    fn event(&self, r: &TapeRecord) -> Event {
        // verify_block checked every kind and side byte and every id.
        let kind = match r.kind {
            b'N' => Kind::New,
            b'C' => Kind::Cancel,
            _ => Kind::Trade,
        };
        let side = if r.side == b'B' { Side::Buy } else { Side::Sell };
        let is_trade = kind == Kind::Trade;
        Event {
            seq: r.seq,
            ts_ns: r.ts_ns,
            order_id: r.order_id,
            contra_order_id: r.contra_order_id,
            price: r.price,
            qty: r.qty,
            account: r.account,
            contra_account: r.contra_account,
            group: self.groups_by_account[r.account as usize],
            contra_group: if is_trade { self.groups_by_account[r.contra_account as usize] } else { 0 },
            instrument: r.instrument,
            kind,
            side,
            _pad: [0; 2],
        }
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
        let mut stopped = false;
        while i < end && !stopped {
            if i >= self.verified_end {
                let block = i / self.tape.block_records();
                if let Err(e) = self.tape.verify_block(block) {
                    self.count(i);
                    return Err(FeedError { path: e.path().to_path_buf(), message: e.detail() });
                }
                self.verified_end = ((block + 1) * self.tape.block_records()).min(self.tape.len());
            }
            debug_assert!(self.verified_end > i, "the record at {i} is in a verified block");
            let run_end = end.min(self.verified_end);
            while i < run_end {
                let event = self.event(&self.tape.record(i));
                i += 1;
                if !emit(&event) {
                    stopped = true;
                    break;
                }
            }
        }
        self.tape.release_before(i);
        self.count(i);
        Ok(self.next < self.tape.len())
    }

    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        w.u64(self.next as u64);
        encode_stats(w, &self.stats);
        Ok(FeedCheckpoint { offset: self.next as u64, line_no: 0, rejects: None })
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
            let record =
                TapeRecord { seq, ts_ns: seq as i64, kind: b'N', side: b'B', order_id: seq, ..TapeRecord::default() };
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
