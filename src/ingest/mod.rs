//! Decoders that turn a tape into validated, interned `Event`s in feed order:
//! one file per format, plus the checks that every format shares (sequence
//! gaps and repeats, the order lifecycle) in `validate`.

pub mod block_hash;
pub mod csv;
pub mod live;
pub mod native;
pub mod native_feed;
pub mod tape_index;
pub mod validate;

use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::Event;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The instrument id of a time-only event, which a filtered replay
/// (`investigate::replay_filter`) sends for records it leaves out: the
/// router moves the watermark by its `ts_ns` and routes nothing, so
/// lateness is judged as if every record had come through.
pub const TIME_ONLY: u32 = u32::MAX;

/// The instrument id of a feed-integrity event (`live::Integrity`): a live
/// feed's gap or run of repeats, which the router hands to the sink with
/// the late records (so it is committed with the checkpoint it precedes)
/// and the sink writes as a `feed-gap` alert.
pub const FEED_INTEGRITY: u32 = u32::MAX - 1;

/// A time-only event at `ts_ns`.
pub fn time_only(ts_ns: i64) -> Event {
    Event { ts_ns, instrument: TIME_ONLY, ..Event::default() }
}

/// A source of events in feed order. `pump` decodes the next chunk of the
/// tape and calls `emit` for each accepted record; it returns `Ok(false)`
/// at the end of the tape. Statically dispatched: the pipeline is generic
/// over the feed.
pub trait Feed {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError>;
    fn stats(&self) -> FeedStats;

    /// Like `pump`, but returns right after a record for which `emit`
    /// returns false (a checkpoint barrier is due), so that the feed stands
    /// between two records. A feed without its own version stops only at
    /// its chunk boundaries, which is correct, just coarser.
    fn pump_until(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        self.pump(&mut |event| {
            emit(event);
        })
    }

    /// Checkpoint hook, called between pumps: writes what resuming needs
    /// (the position to read on from, the validator) and flushes the
    /// rejects file. A feed that cannot resume refuses.
    fn checkpoint(&mut self, _w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        Err(FeedError { path: PathBuf::new(), message: "this feed cannot be checkpointed".into() })
    }

    /// A live source (`live::LiveFeed`): each record comes with the time it
    /// was due (its scheduled arrival, on the pipeline clock), which becomes
    /// its ingest stamp, so latency counts from when it should have arrived.
    /// The pipeline then publishes partial batches whenever the input runs
    /// dry, and moves event time on while it stays quiet. Replay feeds keep
    /// these defaults and never pay for them.
    const LIVE: bool = false;

    /// Live feeds only: `pump`, handing each record's due time to `emit`.
    fn pump_live(&mut self, emit: &mut impl FnMut(&Event, u64)) -> Result<bool, FeedError> {
        let _ = emit;
        unreachable!("only a feed with LIVE = true is pumped live")
    }

    /// Live feeds only, right before a checkpoint barrier: settles what the
    /// feed holds back (a record waiting for the next to tell a typo from a
    /// gap, a run of repeats not yet reported), so the checkpoint stands
    /// between two records.
    fn settle(&mut self, emit: &mut impl FnMut(&Event, u64)) -> Result<(), FeedError> {
        let _ = emit;
        Ok(())
    }

    /// Live feeds only: whether the last `pump_live` left the input empty.
    fn drained(&self) -> bool {
        false
    }

    /// Live feeds only: the exchange clock of a heartbeat the last
    /// `pump_live` ended on, for the router to move event time to.
    fn take_clock(&mut self) -> Option<i64> {
        None
    }
}

/// What a feed reports at a checkpoint besides its snapshot.
#[derive(Clone, Debug, Default)]
pub struct FeedCheckpoint {
    /// Where the next record starts: the byte offset and line (CSV), or the
    /// record index (native; line 0).
    pub offset: u64,
    pub line_no: u64,
    /// The rejects file and its length, flushed (not yet synced).
    pub rejects: Option<(PathBuf, u64)>,
}

/// What a feed saw; rejected records are also in the rejects file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Lines (CSV) or records (native) read, rejected ones included.
    pub records_read: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Number of places where `seq` jumped forward.
    pub gaps: u64,
    /// Records missing in those gaps.
    pub missing_records: u64,
    /// The first gaps, as (first missing seq, last missing seq, line of the record after the gap).
    pub gap_ranges: Vec<(u64, u64, u64)>,
}

pub fn encode_stats(w: &mut Writer<'_>, s: &FeedStats) {
    for v in [s.records_read, s.accepted, s.rejected, s.gaps, s.missing_records] {
        w.u64(v);
    }
    w.u64(s.gap_ranges.len() as u64);
    for &(first, last, line) in &s.gap_ranges {
        w.u64(first);
        w.u64(last);
        w.u64(line);
    }
}

pub fn decode_stats(r: &mut Reader<'_>) -> Result<FeedStats, DecodeError> {
    let mut s = FeedStats {
        records_read: r.u64()?,
        accepted: r.u64()?,
        rejected: r.u64()?,
        gaps: r.u64()?,
        missing_records: r.u64()?,
        gap_ranges: Vec::new(),
    };
    for _ in 0..r.count(24)? {
        s.gap_ranges.push((r.u64()?, r.u64()?, r.u64()?));
    }
    Ok(s)
}

/// At most this many gap ranges are kept for the report; all are counted.
pub const GAP_RANGES_KEPT: usize = 100;

/// An error that stops a feed: an unreadable file, not a bad record.
#[derive(Debug)]
pub struct FeedError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for FeedError {}

/// The rejects side output: `line<TAB>reason<TAB>record`, one per rejected
/// record, buffered (rejects are rare, and never a syscall per record).
pub struct RejectLog {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    scratch: Vec<u8>,
    /// Bytes written so far, header included (the committed length at a checkpoint).
    written: u64,
}

impl RejectLog {
    pub fn create(path: &Path) -> Result<RejectLog, FeedError> {
        let file = crate::outputs::create(path)
            .map_err(|e| FeedError { path: path.to_path_buf(), message: format!("cannot create rejects file: {e}") })?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let header = b"line\treason\trecord\n";
        out.write_all(header).map_err(|e| write_error(path, e))?;
        Ok(RejectLog {
            out: Some(out),
            path: path.to_path_buf(),
            scratch: Vec::with_capacity(256),
            written: header.len() as u64,
        })
    }

    /// Reopens the rejects file of an interrupted run, cut back to the
    /// length a checkpoint committed: what came after is written again.
    pub fn resume(path: &Path, committed: u64) -> Result<RejectLog, FeedError> {
        let fail = |what: &str, e: std::io::Error| FeedError {
            path: path.to_path_buf(),
            message: format!("cannot {what} the rejects file to resume: {e}"),
        };
        let mut file = crate::outputs::reopen(path).map_err(|e| fail("open", e))?;
        let len = file.metadata().map_err(|e| fail("read", e))?.len();
        if len < committed {
            return Err(FeedError {
                path: path.to_path_buf(),
                message: format!(
                    "the rejects file has {len} bytes, fewer than the {committed} the checkpoint committed"
                ),
            });
        }
        file.set_len(committed).map_err(|e| fail("truncate", e))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(|e| fail("seek in", e))?;
        Ok(RejectLog {
            out: Some(BufWriter::with_capacity(1 << 16, file)),
            path: path.to_path_buf(),
            scratch: Vec::with_capacity(256),
            written: committed,
        })
    }

    /// Flushes and returns the file and its length, for a checkpoint.
    pub fn committed(&mut self) -> Result<Option<(PathBuf, u64)>, FeedError> {
        self.finish()?;
        Ok(self.out.as_ref().map(|_| (self.path.clone(), self.written)))
    }

    /// A log that counts but keeps nothing: only for tests and benchmarks.
    pub fn discard() -> RejectLog {
        RejectLog { out: None, path: PathBuf::new(), scratch: Vec::new(), written: 0 }
    }

    pub fn write(&mut self, line_no: u64, reason: &dyn fmt::Display, record: &[u8]) -> Result<(), FeedError> {
        let Some(out) = self.out.as_mut() else { return Ok(()) };
        self.scratch.clear();
        let _ = write!(self.scratch, "{line_no}\t{reason}\t");
        // Tabs and newlines inside a malformed record would break the
        // one-line-per-reject layout; they are shown escaped.
        for &b in record {
            match b {
                b'\t' => self.scratch.extend_from_slice(b"\\t"),
                b'\n' => self.scratch.extend_from_slice(b"\\n"),
                b'\\' => self.scratch.extend_from_slice(b"\\\\"),
                _ => self.scratch.push(b),
            }
        }
        self.scratch.push(b'\n');
        self.written += self.scratch.len() as u64;
        out.write_all(&self.scratch).map_err(|e| write_error(&self.path, e))
    }

    pub fn finish(&mut self) -> Result<(), FeedError> {
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(|e| write_error(&self.path, e))?;
        }
        Ok(())
    }
}

fn write_error(path: &Path, e: std::io::Error) -> FeedError {
    FeedError { path: path.to_path_buf(), message: format!("cannot write: {e}") }
}
