//! Decoders that turn a tape into validated, interned `Event`s in feed order:
//! one file per format, plus the checks that every format shares (sequence
//! gaps and repeats, the order lifecycle) in `validate`.

pub mod csv;
pub mod live;
pub mod native;
pub mod native_feed;
pub mod validate;

use crate::event::Event;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A source of events in feed order. `pump` decodes the next chunk of the
/// tape and calls `emit` for each accepted record; it returns `Ok(false)`
/// at the end of the tape. Statically dispatched: the pipeline is generic
/// over the feed.
pub trait Feed {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError>;
    fn stats(&self) -> FeedStats;

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

    /// Live feeds only: whether the last `pump_live` left the input empty.
    fn drained(&self) -> bool {
        false
    }
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
}

impl RejectLog {
    pub fn create(path: &Path) -> Result<RejectLog, FeedError> {
        let file = File::create(path)
            .map_err(|e| FeedError { path: path.to_path_buf(), message: format!("cannot create rejects file: {e}") })?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(b"line\treason\trecord\n").map_err(|e| write_error(path, e))?;
        Ok(RejectLog { out: Some(out), path: path.to_path_buf(), scratch: Vec::with_capacity(256) })
    }

    /// A log that counts but keeps nothing: only for tests and benchmarks.
    pub fn discard() -> RejectLog {
        RejectLog { out: None, path: PathBuf::new(), scratch: Vec::new() }
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
