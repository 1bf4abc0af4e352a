//! The FEED.md interchange tape: a streaming CSV decoder that never holds the
//! tape in memory, in two stages on two threads.
//!
//! A decoder thread (`tw-decode`) reads the tape in chunks, splits lines and
//! parses their fields by hand into fixed-size `RawRecord`s, names packed
//! (no allocation per record). Chunks travel to the source thread through an
//! SPSC ring of preallocated slots, each holding its bytes and its parsed
//! lines, so a rejected record's text is still at hand. The source thread
//! (`pump`) runs the checks that need feed order: sequence, interning and
//! the order lifecycle of the shared validator. Parsing is half the cost of
//! a CSV record; this split lets it run beside the rest of the pipeline.

use super::validate::{Judged, RawRecord, RejectReason, Resolved, Validator, check_fields};
use super::{Feed, FeedCheckpoint, FeedError, FeedStats, RejectLog};
use crate::checkpoint::codec::Writer;
use crate::event::{Event, Kind, Side, parse_px};
use crate::ring::Idle;
use crate::ring::spsc::{self, Consumer, Producer};
use crate::symbols::{Packed, pack, valid_account, valid_instrument};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

pub const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";
const COLUMNS: usize = 11;
/// Bytes read per chunk: small enough that a chunk's parsed lines stay in
/// cache between the two threads, large enough to amortise the hand-off.
const CHUNK_BYTES: usize = 256 << 10;
/// Chunks in flight between the decoder and the source thread.
const CHUNKS_IN_FLIGHT: usize = 8;
/// A line longer than this cannot be a FEED.md record; it is rejected and skipped.
pub const MAX_LINE_BYTES: usize = 4096;
/// Bytes of an over-long line kept in the rejects file.
const LONG_LINE_SHOWN: usize = 200;

/// One decoded line: where it is in its chunk, and what it parsed to.
struct Line {
    line_no: u64,
    /// The text kept for the rejects file: `bytes[start..end]` of the chunk,
    /// or the chunk's `long_line` when `start == LONG_LINE`.
    start: u32,
    end: u32,
    /// Where the next line begins, relative to the chunk's `base_offset`.
    next: u32,
    parsed: Result<RawRecord, Malformed>,
}

/// `Line::start` of an over-long line whose kept prefix is in `Chunk::long_line`.
const LONG_LINE: u32 = u32::MAX;

/// A line that failed to parse. A readable seq still holds its place in the
/// sequence: without it, the record would also be reported as a gap.
struct Malformed {
    reason: RejectReason,
    seq: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkEnd {
    More,
    Eof,
    Failed(String),
}

/// One ring slot: a run of whole lines and their parsed records.
struct Chunk {
    bytes: Box<[u8]>,
    len: usize,
    /// Tape offset of `bytes[0]`.
    base_offset: u64,
    lines: Vec<Line>,
    /// Where the tape goes on after this chunk: the offset and line number
    /// of the first line not in it.
    next_offset: u64,
    next_line_no: u64,
    /// The first bytes of an over-long line that began in an earlier chunk
    /// and ends in this one.
    long_line: Vec<u8>,
    end: ChunkEnd,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk {
            // The tail of a partial line is carried into the next chunk, so
            // a chunk holds up to a full line more than one read.
            // Plus one block of padding for the last block's SIMD loads.
            bytes: vec![0u8; CHUNK_BYTES + MAX_LINE_BYTES + 1 + BLOCK].into_boxed_slice(),
            len: 0,
            base_offset: 0,
            // FEED.md records are rarely under 40 bytes; a chunk of shorter
            // lines grows this once and keeps it.
            lines: Vec::with_capacity(CHUNK_BYTES / 40),
            next_offset: 0,
            next_line_no: 0,
            long_line: Vec::with_capacity(LONG_LINE_SHOWN),
            end: ChunkEnd::More,
        }
    }
}

/// What the decoder thread starts from: the reader at the start of a line
/// (just after the header, or where a checkpoint left off).
struct Decoder<R> {
    reader: R,
    /// Bytes read but not yet in a chunk: the start of a partial line.
    carry: Vec<u8>,
    /// Tape offset of `carry[0]`.
    carry_offset: u64,
    eof: bool,
    /// Line number of the next line (the header is line 1).
    line_no: u64,
    /// Inside an over-long line: kept until its newline arrives.
    long: Option<LongLine>,
    /// A spare buffer for an over-long line's prefix (no allocation per one).
    long_prefix: Vec<u8>,
}

pub struct CsvFeed<R: Read> {
    path: PathBuf,
    /// Until the decoder thread starts with it (when the feed is built).
    decoder: Option<Decoder<R>>,
    chunks: Option<Consumer<Chunk>>,
    thread: Option<JoinHandle<()>>,
    /// Lines of the oldest chunk already handed on; the chunk is released
    /// once all are.
    cursor: usize,
    /// Where the next line not yet handed on starts: tape offset, line number.
    position: (u64, u64),
    validator: Validator,
    rejects: RejectLog,
    /// Why the decoder thread could not be started, reported by the first pump.
    start_error: Option<String>,
    /// A record held by the sequencer for a look-ahead (see `validate`):
    /// the record, its line, and its text for the rejects file (capacity
    /// fixed at start-up: a held record is a parsed one, never over-long).
    held: Option<(RawRecord, u64)>,
    held_text: Vec<u8>,
}

impl<R: Read + Send + 'static> CsvFeed<R> {
    /// Reads and checks the header; a tape without the FEED.md header is refused.
    pub fn new(mut reader: R, path: &Path, validator: Validator, rejects: RejectLog) -> Result<CsvFeed<R>, FeedError> {
        let error = |message: String| FeedError { path: path.to_path_buf(), message };
        let mut buf = Vec::with_capacity(MAX_LINE_BYTES + 64);
        let mut eof = false;
        let header_end = loop {
            if let Some(newline) = memchr::memchr(b'\n', &buf) {
                break newline;
            }
            if eof || buf.len() > MAX_LINE_BYTES {
                break buf.len();
            }
            let mut block = [0u8; 4096];
            match reader.read(&mut block) {
                Ok(0) => eof = true,
                Ok(n) => buf.extend_from_slice(&block[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(error(format!("cannot read the header: {e}"))),
            }
        };
        let header = &buf[..header_end];
        let header = header.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(header);
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        if header != HEADER.as_bytes() {
            let shown = String::from_utf8_lossy(&header[..header.len().min(200)]).into_owned();
            return Err(error(format!("line 1: not a FEED.md tape: the header must be `{HEADER}`, found `{shown}`")));
        }
        let body = (header_end + 1).min(buf.len());
        let carry = buf[body..].to_vec();
        Ok(CsvFeed::at(reader, path, validator, rejects, carry, eof, (body as u64, 2)))
    }

    /// Goes on with a tape from `position` (tape offset, line number): the
    /// start of a line, where `reader` already stands, as `position()` told
    /// an earlier run.
    pub fn resume(
        reader: R,
        path: &Path,
        validator: Validator,
        rejects: RejectLog,
        position: (u64, u64),
    ) -> CsvFeed<R> {
        CsvFeed::at(reader, path, validator, rejects, Vec::new(), false, position)
    }

    fn at(
        reader: R,
        path: &Path,
        validator: Validator,
        rejects: RejectLog,
        carry: Vec<u8>,
        eof: bool,
        position: (u64, u64),
    ) -> CsvFeed<R> {
        let (carry_offset, line_no) = position;
        let mut feed = CsvFeed {
            path: path.to_path_buf(),
            decoder: Some(Decoder {
                reader,
                carry,
                carry_offset,
                eof,
                line_no,
                long: None,
                long_prefix: Vec::with_capacity(LONG_LINE_SHOWN),
            }),
            chunks: None,
            thread: None,
            cursor: 0,
            position,
            validator,
            rejects,
            start_error: None,
            held: None,
            held_text: Vec::with_capacity(MAX_LINE_BYTES),
        };
        // Started here, on the thread that builds the feed, not on the
        // source thread at its first pump: a thread inherits its creator's
        // core affinity, and a decoder started by a pinned source was
        // pinned to the source's own core (CSV replays ran at half speed,
        // even with cores to spare).
        if let Err(e) = feed.start_decoder() {
            feed.start_error = Some(e.message);
        }
        feed
    }

    /// Where the next record that has not been handed on starts: its tape
    /// offset and line number. Reading on from there with `resume` gives
    /// exactly the records this feed has not yet emitted or rejected.
    pub fn position(&self) -> (u64, u64) {
        self.position
    }

    /// Replaces the rejects log; lets a caller check the header before
    /// creating any output file.
    pub fn with_rejects(mut self, rejects: RejectLog) -> CsvFeed<R> {
        self.rejects = rejects;
        self
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn into_parts(self) -> (Validator, RejectLog) {
        (self.validator, self.rejects)
    }

    fn start_decoder(&mut self) -> Result<(), FeedError> {
        let Some(decoder) = self.decoder.take() else { return Ok(()) };
        let (tx, rx) = spsc::channel(CHUNKS_IN_FLIGHT, Chunk::new);
        let thread = std::thread::Builder::new()
            .name("tw-decode".into())
            .spawn(move || decoder.run(tx))
            .map_err(|e| self.error(format!("cannot start the decoder thread: {e}")))?;
        self.chunks = Some(rx);
        self.thread = Some(thread);
        Ok(())
    }

    fn error(&self, message: String) -> FeedError {
        FeedError { path: self.path.clone(), message }
    }

    /// Hands on the records of a chunk, in feed order. Stops right after a
    /// record for which `emit` returns false, so the feed stands between two
    /// records (`position` tells where); otherwise after one chunk. Returns
    /// false at the end of the tape.
    fn pump_lines(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        if let Some(message) = self.start_error.take() {
            return Err(self.error(message));
        }
        let CsvFeed { chunks, validator, rejects, cursor, position, held, held_text, .. } = self;
        let Some(rx) = chunks.as_mut() else { return Ok(false) };
        let mut idle = Idle::default();
        let mut waits = 0;
        let chunk = loop {
            if let Some(chunk) = rx.peek() {
                break chunk;
            }
            if rx.is_finished() {
                self.join_decoder();
                return Err(self.error("the decoder thread stopped before the end of the tape".into()));
            }
            waits += 1;
            if waits == WAITS_PER_PUMP {
                return Ok(true);
            }
            idle.wait();
        };
        while let Some(line) = chunk.lines.get(*cursor) {
            if let Some(Line { parsed: Ok(ahead), .. }) = chunk.lines.get(*cursor + PREFETCH_AHEAD) {
                validator.prefetch(ahead);
            }
            if let Some((raw, line_no)) = *held {
                // This line settles the held record first; the line itself
                // is judged after it (and, if the held record's emit asks
                // to stop, by the next pump: it is not consumed yet).
                let next = line.parsed.as_ref().ok().map(|r| (r.seq, r.ts_ns));
                let settled = match validator.seq.resolve(next) {
                    Resolved::Wait => None,
                    Resolved::Confirm => Some(validator.admit(&raw, line_no)),
                    Resolved::Reject(reason) => Some(Err(reason)),
                };
                if let Some(outcome) = settled {
                    *held = None;
                    match outcome {
                        Ok(event) => {
                            validator.stats.accepted += 1;
                            if !emit(&event) {
                                return Ok(true);
                            }
                        }
                        Err(reason) => {
                            validator.stats.rejected += 1;
                            rejects.write(line_no, &reason, held_text)?;
                        }
                    }
                }
            }
            *cursor += 1;
            *position = (chunk.base_offset + line.next as u64, line.line_no + 1);
            validator.stats.records_read += 1;
            let outcome = match &line.parsed {
                // The common case: next in seq and in line in time.
                Ok(raw) if validator.seq.in_line(raw.seq, raw.ts_ns) => validator.admit_in_line(raw),
                Ok(raw) => match validator.seq.judge(raw.seq, raw.ts_ns) {
                    Judged::InLine => validator.admit(raw, line.line_no),
                    Judged::Hold => {
                        *held = Some((*raw, line.line_no));
                        held_text.clear();
                        held_text.extend_from_slice(&chunk.bytes[line.start as usize..line.end as usize]);
                        continue;
                    }
                    Judged::Reject(reason) => Err(reason),
                },
                Err(malformed) => {
                    validator.seq.malformed(malformed.seq);
                    Err(malformed.reason.clone())
                }
            };
            match outcome {
                Ok(event) => {
                    validator.stats.accepted += 1;
                    if !emit(&event) {
                        return Ok(true);
                    }
                }
                Err(reason) => {
                    validator.stats.rejected += 1;
                    let text = match line.start {
                        LONG_LINE => &chunk.long_line[..],
                        start => &chunk.bytes[start as usize..line.end as usize],
                    };
                    rejects.write(line.line_no, &reason, text)?;
                }
            }
        }
        *cursor = 0;
        *position = (chunk.next_offset, chunk.next_line_no);
        let end = chunk.end.clone();
        rx.release();
        match end {
            ChunkEnd::More => Ok(true),
            ChunkEnd::Eof => {
                if let Some((raw, line_no)) = self.held.take() {
                    // Nothing came after it to contradict it. A barrier due
                    // after it is cut once the feed returns.
                    self.validator.seq.resolve_at_end();
                    match self.validator.admit(&raw, line_no) {
                        Ok(event) => {
                            self.validator.stats.accepted += 1;
                            emit(&event);
                        }
                        Err(reason) => {
                            self.validator.stats.rejected += 1;
                            self.rejects.write(line_no, &reason, &self.held_text)?;
                        }
                    }
                }
                self.rejects.finish()?;
                self.chunks = None;
                self.join_decoder();
                Ok(false)
            }
            ChunkEnd::Failed(message) => {
                self.chunks = None;
                self.join_decoder();
                Err(self.error(message))
            }
        }
    }

    fn join_decoder(&mut self) {
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// How many lines ahead the source prefetches table slots: far enough for a
/// miss to resolve while the lines in between are checked.
const PREFETCH_AHEAD: usize = 12;

/// The source thread waits this many idle rounds for a chunk before handing
/// control back (so the pipeline can see a stop or update progress).
const WAITS_PER_PUMP: u32 = 1024;

impl<R: Read + Send + 'static> Feed for CsvFeed<R> {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_lines(&mut |event| {
            emit(event);
            true
        })
    }

    fn pump_until(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        self.pump_lines(emit)
    }

    fn checkpoint(&mut self, w: &mut Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        // Barriers follow an emitted record, and an emitted record settles
        // any hold first, so this is a bug, never input.
        assert!(self.held.is_none(), "a checkpoint with a record held for look-ahead");
        let (offset, line_no) = self.position;
        w.u64(offset);
        w.u64(line_no);
        self.validator.snapshot(w);
        Ok(FeedCheckpoint { offset, line_no, rejects: self.rejects.committed()? })
    }

    fn stats(&self) -> FeedStats {
        self.validator.stats.clone()
    }
}

impl<R: Read> Decoder<R> {
    /// The decoder thread: fills chunks until the end of the tape, a read
    /// error, or the source thread going away.
    fn run(mut self, mut tx: Producer<Chunk>) {
        loop {
            let mut idle = Idle::default();
            let chunk = loop {
                if tx.claim().is_some() {
                    break tx.claim().expect("claimed above");
                }
                if tx.consumer_gone() {
                    return;
                }
                idle.wait();
            };
            chunk.lines.clear();
            chunk.long_line.clear();
            chunk.end = ChunkEnd::More;
            chunk.base_offset = self.carry_offset;
            chunk.bytes[..self.carry.len()].copy_from_slice(&self.carry);
            chunk.len = self.carry.len();
            self.carry.clear();
            // Read until a line is complete, the chunk is full or the tape
            // ends; a slow pipe is not waited on for a full chunk.
            let limit = chunk.bytes.len() - BLOCK;
            while !self.eof && chunk.len < limit {
                match self.reader.read(&mut chunk.bytes[chunk.len..limit]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        let requested = limit - chunk.len;
                        let complete = memchr::memchr(b'\n', &chunk.bytes[chunk.len..chunk.len + n]).is_some();
                        chunk.len += n;
                        // A short read means nothing more is ready yet.
                        if complete && n < requested {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        chunk.end = ChunkEnd::Failed(format!("read failed after line {}: {e}", self.line_no - 1));
                        break;
                    }
                }
            }
            let base = chunk.base_offset;
            let Chunk { bytes, len, lines, long_line, .. } = chunk;
            let Decoder { line_no, long: pending, .. } = &mut self;
            let start = for_each_line(bytes, *len, |start, newline, ends, fields| {
                if let Some(long) = pending.take() {
                    // The newline that ends an over-long line: reject it now.
                    long_line.extend_from_slice(&long.prefix);
                    lines.push(long.line(newline + 1));
                } else {
                    push_line(bytes, lines, *line_no, start, newline, newline + 1, ends, fields);
                    *line_no += 1;
                }
            });
            let rest = chunk.len - start;
            (chunk.next_offset, chunk.next_line_no) = (base + start as u64, self.line_no);
            if chunk.end != ChunkEnd::More {
                tx.publish();
                return;
            }
            if self.eof {
                if let Some(long) = self.long.take() {
                    // The tape ends inside an over-long line.
                    chunk.long_line.extend_from_slice(&long.prefix);
                    chunk.lines.push(long.line(chunk.len));
                } else if rest > 0 {
                    // A last line without a newline: still a record.
                    let line = &chunk.bytes[start..chunk.len];
                    let mut ends = [0; COLUMNS];
                    let fields = split_fields(line, &mut ends);
                    let ends = ends.map(|end| end + start);
                    let len = chunk.len;
                    push_line(&chunk.bytes, &mut chunk.lines, self.line_no, start, len, len, &ends, fields);
                    self.line_no += 1;
                }
                (chunk.next_offset, chunk.next_line_no) = (base + chunk.len as u64, self.line_no);
                chunk.end = ChunkEnd::Eof;
                tx.publish();
                return;
            }
            if self.long.is_none() && rest > MAX_LINE_BYTES {
                // Too long to be a record: keep its first bytes for the
                // rejects file and skip to its newline.
                let mut prefix = std::mem::take(&mut self.long_prefix);
                prefix.clear();
                prefix.extend_from_slice(&chunk.bytes[start..start + LONG_LINE_SHOWN]);
                self.long = Some(LongLine { line_no: self.line_no, offset: base + start as u64, prefix });
                self.line_no += 1;
            }
            match &self.long {
                // Until its newline, the tape goes on from the over-long line.
                Some(long) => {
                    (chunk.next_offset, chunk.next_line_no) = (long.offset, long.line_no);
                    self.carry_offset = base + chunk.len as u64;
                }
                None => {
                    self.carry.extend_from_slice(&chunk.bytes[start..chunk.len]);
                    self.carry_offset = base + start as u64;
                }
            }
            tx.publish();
        }
    }
}

/// An over-long line being skipped: where it began and its first bytes.
struct LongLine {
    line_no: u64,
    offset: u64,
    prefix: Vec<u8>,
}

impl LongLine {
    /// Its reject, in the chunk where it ends (`next` is where the line after it begins).
    fn line(&self, next: usize) -> Line {
        let parsed = Err(Malformed { reason: RejectReason::LineTooLong(MAX_LINE_BYTES), seq: None });
        Line { line_no: self.line_no, start: LONG_LINE, end: 0, next: next as u32, parsed }
    }
}

/// One record's fields as a FEED.md line writes them, names as text.
pub struct FeedLine<'a> {
    pub seq: u64,
    pub ts_ns: i64,
    pub kind: Kind,
    pub order_id: u64,
    pub account: &'a [u8],
    pub instrument: &'a [u8],
    pub side: Side,
    pub price: i64,
    pub qty: u64,
    /// A trade's contra order and account.
    pub contra: Option<(u64, &'a [u8])>,
}

impl FeedLine<'_> {
    /// Appends the record in the FEED.md CSV layout (no newline): what the
    /// late file and the live feed's rejects hold, so they can be replayed.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(num.format(self.seq).as_bytes());
        out.push(b',');
        out.extend_from_slice(num.format(self.ts_ns).as_bytes());
        out.push(b',');
        out.push(match self.kind {
            Kind::New => b'N',
            Kind::Cancel => b'C',
            Kind::Trade => b'T',
        });
        out.push(b',');
        out.extend_from_slice(num.format(self.order_id).as_bytes());
        out.push(b',');
        out.extend_from_slice(self.account);
        out.push(b',');
        out.extend_from_slice(self.instrument);
        out.push(b',');
        out.push(if self.side == Side::Buy { b'B' } else { b'S' });
        out.push(b',');
        crate::event::write_px(out, self.price);
        out.push(b',');
        out.extend_from_slice(num.format(self.qty).as_bytes());
        out.push(b',');
        if let Some((contra_order_id, contra_account)) = self.contra {
            out.extend_from_slice(num.format(contra_order_id).as_bytes());
            out.push(b',');
            out.extend_from_slice(contra_account);
        } else {
            out.push(b',');
        }
    }
}

/// Bytes per SIMD block of the line and field splitter.
const BLOCK: usize = 64;

/// Splits `bytes[..len]` into lines and fields in one pass: each 64-byte
/// block yields a newline mask and a comma mask, and the set bits are walked
/// in order. Calls `on_line(start, newline, ends, fields)` for each complete
/// line, where `ends[i]` is the position of the comma after field `i` (up to
/// `COLUMNS` of them) and `fields` the number of fields seen. Returns where the
/// unterminated tail begins. `bytes` must extend a block past `len`.
#[inline]
fn for_each_line(bytes: &[u8], len: usize, mut on_line: impl FnMut(usize, usize, &[usize; COLUMNS], usize)) -> usize {
    assert!(bytes.len() >= len + BLOCK);
    let mut ends = [0usize; COLUMNS];
    let mut fields = 1;
    let mut start = 0;
    let mut block = 0;
    while block < len {
        let window: &[u8; BLOCK] = bytes[block..block + BLOCK].try_into().expect("a block");
        let (mut newlines, mut commas) = masks(window);
        if len - block < BLOCK {
            let valid = (1u64 << (len - block)) - 1;
            newlines &= valid;
            commas &= valid;
        }
        let mut any = newlines | commas;
        while any != 0 {
            let bit = any & any.wrapping_neg();
            let at = block + bit.trailing_zeros() as usize;
            if commas & bit != 0 {
                if fields <= COLUMNS {
                    ends[fields - 1] = at;
                }
                fields += 1;
            } else {
                on_line(start, at, &ends, fields);
                start = at + 1;
                fields = 1;
            }
            any ^= bit;
        }
        block += BLOCK;
    }
    start
}

/// The newline and comma bit masks of one block.
#[inline]
fn masks(window: &[u8; BLOCK]) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        let (mut newlines, mut commas) = (0u64, 0u64);
        for part in 0..BLOCK / 16 {
            // SAFETY: SSE2 is part of the x86_64 baseline, and each 16-byte
            // load lies inside the block.
            let (n, c) = unsafe {
                let bytes = _mm_loadu_si128(window.as_ptr().add(part * 16) as *const __m128i);
                (
                    _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\n' as i8))),
                    _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b',' as i8))),
                )
            };
            newlines |= (n as u16 as u64) << (part * 16);
            commas |= (c as u16 as u64) << (part * 16);
        }
        (newlines, commas)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (mut newlines, mut commas) = (0u64, 0u64);
        for (i, &b) in window.iter().enumerate() {
            newlines |= ((b == b'\n') as u64) << i;
            commas |= ((b == b',') as u64) << i;
        }
        (newlines, commas)
    }
}

/// Parses the line `start..newline` of a chunk, whose comma positions the
/// splitter found, and appends it.
#[inline]
#[allow(clippy::too_many_arguments)]
fn push_line(
    bytes: &[u8],
    lines: &mut Vec<Line>,
    line_no: u64,
    start: usize,
    newline: usize,
    next: usize,
    ends: &[usize; COLUMNS],
    fields: usize,
) {
    let mut end = newline;
    if end > start && bytes[end - 1] == b'\r' {
        end -= 1;
    }
    let parsed = if end - start > MAX_LINE_BYTES {
        Err(Malformed { reason: RejectReason::LineTooLong(MAX_LINE_BYTES), seq: None })
    } else {
        parse_fields(bytes, start, end, ends, fields).map_err(|reason| Malformed {
            reason,
            seq: bytes[start..end].split(|&b| b == b',').next().and_then(parse_u64),
        })
    };
    let shown_end = if end - start > MAX_LINE_BYTES { start + LONG_LINE_SHOWN } else { end };
    lines.push(Line { line_no, start: start as u32, end: shown_end as u32, next: next as u32, parsed });
}

/// Splits and parses one line (without its newline) into a raw record.
pub fn parse_line(line: &[u8]) -> Result<RawRecord, RejectReason> {
    let mut ends = [0usize; COLUMNS];
    let fields = split_fields(line, &mut ends);
    parse_fields(line, 0, line.len(), &ends, fields)
}

/// Parses the fields of `bytes[start..end]`; `ends[i]` is where field `i`
/// ends (the last one is taken to end at `end`).
#[inline]
fn parse_fields(
    bytes: &[u8],
    start: usize,
    end: usize,
    ends: &[usize; COLUMNS],
    fields: usize,
) -> Result<RawRecord, RejectReason> {
    if start == end {
        return Err(RejectReason::EmptyLine);
    }
    if fields != COLUMNS {
        return Err(RejectReason::ColumnCount(fields));
    }
    let field = |i: usize| {
        let from = if i == 0 { start } else { ends[i - 1] + 1 };
        let to = if i == COLUMNS - 1 { end } else { ends[i] };
        &bytes[from..to]
    };
    let seq = parse_u64(field(0)).ok_or(RejectReason::BadField("seq"))?;
    let ts_ns = parse_i64(field(1)).ok_or(RejectReason::BadField("ts_ns"))?;
    let kind = match field(2) {
        b"N" => Kind::New,
        b"C" => Kind::Cancel,
        b"T" => Kind::Trade,
        _ => return Err(RejectReason::BadField("kind")),
    };
    let order_id = parse_u64(field(3)).ok_or(RejectReason::BadField("order_id"))?;
    let account = field(4);
    if !valid_account(account) {
        return Err(RejectReason::BadField("account"));
    }
    let instrument = field(5);
    if !valid_instrument(instrument) {
        return Err(RejectReason::BadField("instrument"));
    }
    let side = match field(6) {
        b"B" => Side::Buy,
        b"S" => Side::Sell,
        _ => return Err(RejectReason::BadField("side")),
    };
    let price = parse_px(field(7)).filter(|&px| px > 0).ok_or(RejectReason::BadField("price"))?;
    let qty = parse_u64(field(8)).filter(|&q| q > 0).ok_or(RejectReason::BadField("qty"))?;
    let (contra_order_id_field, contra_account_field) = (field(9), field(10));
    let (contra_order_id, contra_account) = if kind == Kind::Trade {
        if contra_order_id_field.is_empty() {
            return Err(RejectReason::MissingContra("contra_order_id"));
        }
        if contra_account_field.is_empty() {
            return Err(RejectReason::MissingContra("contra_account"));
        }
        let id = parse_u64(contra_order_id_field).ok_or(RejectReason::BadField("contra_order_id"))?;
        if !valid_account(contra_account_field) {
            return Err(RejectReason::BadField("contra_account"));
        }
        (id, pack(contra_account_field))
    } else {
        if !contra_order_id_field.is_empty() {
            return Err(RejectReason::ContraOnOrder("contra_order_id"));
        }
        if !contra_account_field.is_empty() {
            return Err(RejectReason::ContraOnOrder("contra_account"));
        }
        (0, 0 as Packed)
    };
    check_fields(seq, kind, price, qty, contra_order_id)?;
    Ok(RawRecord {
        seq,
        ts_ns,
        kind,
        order_id,
        account: pack(account),
        instrument: pack(instrument),
        side,
        price,
        qty,
        contra_order_id,
        contra_account,
    })
}

/// Finds the field ends of a line: `ends[i]` is the index of the comma
/// after field `i`. Returns the number of fields, which may exceed
/// `ends.len()`. (Chunks are split by `for_each_line`; this serves single
/// lines.)
fn split_fields(line: &[u8], ends: &mut [usize; COLUMNS]) -> usize {
    let mut fields = 1;
    for comma in memchr::memchr_iter(b',', line) {
        if fields <= COLUMNS {
            ends[fields - 1] = comma;
        }
        fields += 1;
    }
    fields
}

#[inline]
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    // Up to 19 digits cannot overflow a u64; only a 20th needs a check.
    let (head, last) = if s.len() == 20 { (&s[..19], Some(s[19])) } else { (s, None) };
    let mut value: u64 = 0;
    for &b in head {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + digit as u64;
    }
    match last {
        None => Some(value),
        Some(b) => {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value.checked_mul(10)?.checked_add(digit as u64)
        }
    }
}

#[inline]
fn parse_i64(s: &[u8]) -> Option<i64> {
    match s {
        [b'-', rest @ ..] => parse_u64(rest).and_then(|v| 0i64.checked_sub_unsigned(v)),
        _ => parse_u64(s).and_then(|v| i64::try_from(v).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::validate::Limits;
    use crate::symbols::Groups;
    use std::sync::Arc;

    fn feed(text: &str, chunk: usize) -> (Vec<Event>, FeedStats, String) {
        let dir = tempfile::tempdir().unwrap();
        let rejects_path = dir.path().join("rejects.tsv");
        let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
        // A reader that returns at most `chunk` bytes per read exercises
        // lines split across reads.
        struct Trickle(std::io::Cursor<Vec<u8>>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(buf.len());
                self.0.read(&mut buf[..n])
            }
        }
        let reader = Trickle(std::io::Cursor::new(text.as_bytes().to_vec()), chunk);
        let mut feed =
            CsvFeed::new(reader, Path::new("t.csv"), validator, RejectLog::create(&rejects_path).unwrap()).unwrap();
        let mut events = Vec::new();
        while feed.pump(&mut |e| events.push(*e)).unwrap() {}
        let stats = feed.stats();
        let rejects = std::fs::read_to_string(&rejects_path).unwrap();
        (events, stats, rejects)
    }

    const EXAMPLE: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account
1,1793583000000000000,N,1001,A0001,000001,B,10.2500,500,,
2,1793583000001000000,N,1002,A0420,000001,S,10.2500,300,,
3,1793583000001000000,T,1001,A0001,000001,S,10.2500,300,1002,A0420
4,1793583000950000000,C,1001,A0001,000001,B,10.2500,200,,
";

    #[test]
    fn decodes_the_feed_md_example() {
        for chunk in [1, 7, 64, 1 << 20] {
            let (events, stats, _) = feed(EXAMPLE, chunk);
            assert_eq!(events.len(), 4, "chunk {chunk}");
            assert_eq!(stats.rejected, 0);
            let trade = events[2];
            assert_eq!((trade.kind, trade.side, trade.price, trade.qty), (Kind::Trade, Side::Sell, 102_500, 300));
            assert_eq!((trade.order_id, trade.contra_order_id), (1001, 1002));
            assert_eq!(events[0].account, trade.account);
            assert_eq!(events[1].account, trade.contra_account);
            assert_eq!(events[3].qty, 200);
        }
    }

    #[test]
    fn crlf_bom_and_missing_final_newline() {
        let text = format!("\u{FEFF}{}", EXAMPLE.replace('\n', "\r\n"));
        let (events, stats, _) = feed(text.trim_end(), 5);
        assert_eq!((events.len(), stats.rejected), (4, 0));
    }

    #[test]
    fn wrong_header_is_refused_naming_the_file() {
        let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
        let err =
            CsvFeed::new(&b"a,b,c\n1,2,3\n"[..], Path::new("x.csv"), validator, RejectLog::discard()).err().unwrap();
        assert!(err.to_string().starts_with("x.csv: line 1: not a FEED.md tape"), "{err}");
    }

    /// Each bad-input class: rejected with its line and reason, and the
    /// records around it still decode.
    #[test]
    fn bad_records_are_rejected_with_line_and_reason() {
        let head = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n\
                    1,100,N,1,A,X,B,1.0,10,,\n";
        let cases: &[(&str, &str)] = &[
            ("2,100,N,2,A,X,B,1.0,10,\n", "wrong column count: 10"),
            ("2,100,N,2,A,X,B,1.0,10,,,\n", "wrong column count: 12"),
            ("x,100,N,2,A,X,B,1.0,10,,\n", "bad seq"),
            ("2,1e9,N,2,A,X,B,1.0,10,,\n", "bad ts_ns"),
            ("2,100,Q,2,A,X,B,1.0,10,,\n", "bad kind"),
            ("2,100,N,2,,X,B,1.0,10,,\n", "bad account"),
            ("2,100,N,2,A A,X,B,1.0,10,,\n", "bad account"),
            ("2,100,N,2,A,X,b,1.0,10,,\n", "bad side"),
            ("2,100,N,2,A,X,B,0,10,,\n", "bad price"),
            ("2,100,N,2,A,X,B,1.00001,10,,\n", "bad price"),
            ("2,100,N,2,A,X,B,1.0,0,,\n", "bad qty"),
            ("2,100,N,2,A,X,B,1.0,10,5,\n", "contra_order_id must be empty"),
            ("2,100,T,1,A,X,B,1.0,10,,\n", "contra_order_id missing"),
            ("2,100,N,1,A,X,B,1.0,10,,\n", "order 1 announced twice"),
            ("2,100,C,9,A,X,B,1.0,10,,\n", "order 9 unknown"),
            ("2,100,C,1,B,X,B,1.0,10,,\n", "account differs from order 1's"),
            ("2,100,C,1,A,X,B,1.0,4,,\n", "cancel qty 4 of order 1 is not its open qty 10"),
            ("1,100,N,2,A,X,B,1.0,10,,\n", "repeated or backward seq 1 (expected 2)"),
            ("\n", "empty line"),
        ];
        for (bad, reason) in cases {
            let text = format!("{head}{bad}3,101,N,3,A,X,S,1.0,10,,\n");
            let (events, stats, rejects) = feed(&text, 1 << 20);
            assert_eq!(stats.rejected, 1, "{bad:?}");
            assert_eq!(events.len(), 2, "{bad:?}: the good records around it are kept");
            let line = rejects.lines().nth(1).unwrap();
            assert!(line.starts_with("3\t"), "{bad:?}: {line}");
            assert!(line.contains(reason), "{bad:?}: expected {reason:?} in {line:?}");
        }
    }

    #[test]
    fn trade_lifecycle_violations() {
        let head = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n\
                    1,100,N,1,A,X,B,1.0,10,,\n2,100,N,2,B,X,S,1.0,5,,\n";
        let cases: &[(&str, &str)] = &[
            ("3,100,T,1,A,X,B,1.0,6,2,B\n", "trade qty 6 exceeds order 2's open qty 5"),
            ("3,100,T,2,B,X,B,1.0,1,1,A\n", "side differs from order 2's"),
            ("3,100,T,1,A,X,B,1.0,1,7,B\n", "order 7 unknown"),
            ("3,100,T,1,A,Y,B,1.0,1,2,B\n", "instrument differs"),
            ("3,100,T,1,A,X,B,1.0,1,1,A\n", "against itself"),
        ];
        for (bad, reason) in cases {
            let (events, stats, rejects) = feed(&format!("{head}{bad}"), 1 << 20);
            assert_eq!((events.len(), stats.rejected), (2, 1), "{bad:?}");
            assert!(rejects.contains(reason), "{bad:?}: {rejects}");
        }
        // A full fill closes the sell order: nothing may refer to it after.
        let text = format!("{head}3,100,T,1,A,X,B,1.0,5,2,B\n4,100,C,2,B,X,S,1.0,5,,\n5,100,C,1,A,X,B,1.0,5,,\n");
        let (events, stats, rejects) = feed(&text, 1 << 20);
        assert_eq!((events.len(), stats.rejected), (4, 1));
        assert!(rejects.contains("5\torder 2 unknown"), "line 5 holds seq 4: {rejects}");
    }

    /// A tape of `n` new orders, one a second from 09:30 Shanghai, with
    /// line `at` (1-based record index) replaced by `bad`.
    fn tape_with(n: u64, at: u64, bad: impl Fn(u64, i64) -> String) -> String {
        const T0: i64 = 1_793_583_000_000_000_000;
        let mut text = format!("{HEADER}\n");
        for seq in 1..=n {
            let ts = T0 + seq as i64 * 1_000_000_000;
            if seq == at {
                text.push_str(&bad(seq, ts));
            } else {
                text.push_str(&format!("{seq},{ts},N,{seq},A{},X,B,1.0,10,,", seq % 7));
            }
            text.push('\n');
        }
        text
    }

    /// Writes the bad line of `tape_with` from its seq and ts.
    type BadLine<'a> = &'a dyn Fn(u64, i64) -> String;

    /// The seqs of the accepted records and the rejects' reasons.
    fn outcome(text: &str) -> (Vec<u64>, FeedStats, Vec<String>) {
        let (events, stats, rejects) = feed(text, 1000);
        let reasons = rejects.lines().skip(1).map(|l| l.split('\t').take(2).collect::<Vec<_>>().join(" ")).collect();
        (events.iter().map(|e| e.seq).collect(), stats, reasons)
    }

    /// Regression (issue 13, finding 1): a line whose first field parses but
    /// which is otherwise bad became the expected seq, and every later
    /// record was rejected as a repeat.
    #[test]
    fn regression_a_rejected_line_never_moves_the_expected_seq() {
        let cases: [(&str, BadLine); 3] = [
            ("seq column dropped", &|seq, ts| format!("{ts},N,{seq},A1,X,B,1.0,10,,")),
            ("huge first field", &|seq, ts| format!("99999999999,{ts},N,{seq},A1,X,B,1.0,10,,,")),
            ("seq in line, bad price", &|seq, ts| format!("{seq},{ts},N,{seq},A1,X,B,-1,10,,")),
        ];
        for (name, bad) in cases {
            let (seqs, stats, reasons) = outcome(&tape_with(300, 101, bad));
            assert_eq!(seqs.len(), 299, "{name}: {reasons:?}");
            assert_eq!((stats.rejected, stats.gaps), (1, 0), "{name}: {reasons:?}");
            assert!(reasons[0].starts_with("102 "), "{name}: {reasons:?}");
        }
    }

    /// Regression (issue 13, finding 1): one mistyped seq (1000 for 100)
    /// rejected 1,101 records as a gap and then repeats.
    #[test]
    fn regression_a_mistyped_seq_is_one_bad_record_not_a_gap() {
        for jumped in [1000, 101, 99_999_999_999, u64::MAX - 1] {
            let (seqs, stats, reasons) =
                outcome(&tape_with(300, 100, |_, ts| format!("{jumped},{ts},N,100,A1,X,B,1.0,10,,")));
            assert_eq!(seqs, (1..=300).filter(|&s| s != 100).collect::<Vec<_>>(), "{jumped}");
            assert_eq!((stats.rejected, stats.gaps, stats.missing_records), (1, 0, 0), "{jumped}: {reasons:?}");
            assert!(reasons[0].contains(&format!("seq {jumped} out of line (expected 100")), "{reasons:?}");
        }
    }

    /// A real gap (the records go on from the jump) is counted, and the
    /// record after it accepted; a gap right at the end, too.
    #[test]
    fn a_real_gap_is_counted_and_its_record_accepted() {
        let mut text = format!("{HEADER}\n");
        for seq in (1..=50u64).chain(60..=80).chain(90..=90) {
            text.push_str(&format!("{seq},{},N,{seq},A,X,B,1.0,10,,\n", 1_793_583_000_000_000_000i64 + seq as i64));
        }
        let (seqs, stats, reasons) = outcome(&text);
        assert_eq!(seqs.len(), 72, "{reasons:?}");
        assert_eq!((stats.gaps, stats.missing_records, stats.rejected), (2, 18, 0));
        assert_eq!(stats.gap_ranges, vec![(51, 59, 52), (81, 89, 73)]);
    }

    /// Regression (issue 13, finding 2): one record a day ahead moved the
    /// watermark, so every later record was late (0 alerts, exit 0).
    #[test]
    fn regression_a_future_timestamp_is_rejected_and_moves_nothing() {
        const DAY: i64 = 86_400_000_000_000;
        let cases: [(&str, BadLine, &str); 5] = [
            (
                "a day ahead",
                &|seq, ts| format!("{seq},{},N,{seq},A1,X,B,1.0,10,,", ts + DAY),
                "outside the tape's trading day",
            ),
            (
                "a minute ahead",
                &|seq, ts| format!("{seq},{},N,{seq},A1,X,B,1.0,10,,", ts + 60_000_000_000),
                "ahead of the feed",
            ),
            (
                "i64::MAX",
                &|seq, _| format!("{seq},{},N,{seq},A1,X,B,1.0,10,,", i64::MAX),
                "outside the tape's trading day",
            ),
            (
                "a day behind",
                &|seq, ts| format!("{seq},{},N,{seq},A1,X,B,1.0,10,,", ts - DAY),
                "outside the tape's trading day",
            ),
            ("negative", &|seq, _| format!("{seq},-5,N,{seq},A1,X,B,1.0,10,,"), "outside the tape's trading day"),
        ];
        for (name, bad, reason) in cases {
            let (seqs, stats, reasons) = outcome(&tape_with(300, 30, bad));
            assert_eq!(seqs, (1..=300).filter(|&s| s != 30).collect::<Vec<_>>(), "{name}: {reasons:?}");
            assert_eq!((stats.rejected, stats.gaps), (1, 0), "{name}");
            assert!(reasons[0].starts_with("31 ") && reasons[0].contains(reason), "{name}: {reasons:?}");
        }
    }

    /// A real jump in event time (the lunch break: the records after it are
    /// far ahead too) is accepted, not taken for a bad record.
    #[test]
    fn a_real_time_jump_is_accepted() {
        let lunch = 90 * 60 * 1_000_000_000i64;
        let mut text = format!("{HEADER}\n");
        for seq in 1..=100u64 {
            let ts = 1_793_583_000_000_000_000i64 + seq as i64 * 1_000_000 + if seq > 50 { lunch } else { 0 };
            text.push_str(&format!("{seq},{ts},N,{seq},A,X,B,1.0,10,,\n"));
        }
        let (seqs, stats, reasons) = outcome(&text);
        assert_eq!((seqs.len(), stats.rejected), (100, 0), "{reasons:?}");
        // A lone record after the lunch break, at the end of the tape, too.
        let (seqs, _, reasons) = outcome(&text[..text.find("\n52,").unwrap() + 1]);
        assert_eq!(seqs.len(), 51, "{reasons:?}");
    }

    /// One rule in the shared validator: seq u64::MAX has no successor and
    /// is refused by every decoder (replay wrapped, import refused it).
    #[test]
    fn regression_seq_u64_max_is_rejected() {
        let (seqs, stats, reasons) =
            outcome(&tape_with(10, 10, |_, ts| format!("{},{ts},N,10,A1,X,B,1.0,10,,", u64::MAX)));
        assert_eq!((seqs.len(), stats.rejected), (9, 1));
        assert!(reasons[0].contains("bad seq"), "{reasons:?}");
    }

    /// Records that a hold is waiting on: malformed lines in between, and a
    /// checkpoint-style stop right when the held record is confirmed.
    #[test]
    fn a_hold_survives_malformed_lines_and_stops() {
        let mut text = format!("{HEADER}\n");
        // 30 is a jump, held; the broken lines after it settle nothing, and
        // "31,x" stands in seq 31 (no second gap before 32).
        for seq in (1..=20u64).chain(30..=30).chain(32..=60) {
            text.push_str(&format!("{seq},{},N,{seq},A,X,B,1.0,10,,\n", 1_793_583_000_000_000_000i64 + seq as i64));
            if seq == 30 {
                text.push_str("garbage\n\n31,x\n");
            }
        }
        let (seqs, stats, _) = outcome(&text);
        assert_eq!((seqs.len(), stats.rejected, stats.gaps, stats.missing_records), (50, 3, 1, 9));
    }

    #[test]
    fn gaps_are_counted_with_their_range() {
        let text = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n\
                    5,100,N,1,A,X,B,1.0,10,,\n9,100,N,2,A,X,B,1.0,10,,\n10,100,N,3,A,X,B,1.0,10,,\n";
        let (events, stats, _) = feed(text, 3);
        assert_eq!(events.len(), 3);
        assert_eq!((stats.gaps, stats.missing_records), (1, 3));
        assert_eq!(stats.gap_ranges, vec![(6, 8, 3)]);
    }

    /// A tape of many chunks: records split across chunk and read
    /// boundaries decode exactly as line-by-line parsing says, and bad
    /// lines anywhere are rejected with their own line numbers.
    #[test]
    fn many_chunks_decode_like_single_lines() {
        let mut text = format!("{HEADER}\n");
        let mut expected_rejects = Vec::new();
        for seq in 1..=30_000u64 {
            let line_no = seq + 1;
            if seq % 997 == 0 {
                text.push_str(&format!("{seq},100,N,{seq},A{seq},X,Q,1.0,10,,\n"));
                expected_rejects.push(line_no);
            } else {
                let eol = if seq % 5 == 0 { "\r\n" } else { "\n" };
                text.push_str(&format!(
                    "{seq},{},N,{seq},ACC{},INS{},B,{}.25,{},,{eol}",
                    seq * 7,
                    seq % 301,
                    seq % 13,
                    seq % 90 + 1,
                    seq % 500 + 1
                ));
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        for read_size in [1 << 20, 4093] {
            let (events, stats, rejects) = feed(&text, read_size);
            assert_eq!(events.len() as u64 + stats.rejected, 30_000);
            assert_eq!(stats.rejected, expected_rejects.len() as u64);
            let reject_lines: Vec<u64> =
                rejects.lines().skip(1).map(|l| l.split('\t').next().unwrap().parse().unwrap()).collect();
            assert_eq!(reject_lines, expected_rejects);
            for event in &events {
                let line = lines[event.seq as usize].trim_end_matches('\r');
                let raw = parse_line(line.as_bytes()).unwrap();
                assert_eq!((event.seq, event.ts_ns, event.price, event.qty), (raw.seq, raw.ts_ns, raw.price, raw.qty));
            }
        }
    }

    /// Stopping after any record and going on from `position()` with a
    /// fresh decoder gives exactly the records and rejects of one straight
    /// run: what a checkpoint resume relies on. Covers bad lines, CRLF, an
    /// over-long line that spans reads, and a last line without a newline.
    #[test]
    fn resuming_from_any_position_matches_a_straight_run() {
        let long = "7".repeat(MAX_LINE_BYTES * 2);
        let mut text = format!("{HEADER}\n");
        for seq in 1..=400u64 {
            match seq {
                50 => text.push_str(&format!("{seq},{long},N,{seq},A,X,B,1.0,10,,\n")),
                90 | 91 => text.push_str(&format!("{seq},100,N,{seq},A,X,Q,1.0,10,,\r\n")),
                400 => text.push_str(&format!("{seq},{seq},N,{seq},A,X,B,1.0,10,,")),
                _ => text.push_str(&format!("{seq},{seq},N,{seq},A{},X,B,1.0,10,,\n", seq % 7)),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let tape = dir.path().join("t.csv");
        std::fs::write(&tape, &text).unwrap();
        let open = |offset: u64| {
            let mut file = std::fs::File::open(&tape).unwrap();
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).unwrap();
            // Small reads: positions fall in every part of a chunk.
            struct Small(std::fs::File);
            impl Read for Small {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = buf.len().min(1000);
                    self.0.read(&mut buf[..n])
                }
            }
            Small(file)
        };
        let new_validator = || Validator::new(Limits::default(), Arc::new(Groups::default()));
        let run = |stop_after: Option<usize>, rejects_path: &Path| {
            let rejects = RejectLog::create(rejects_path).unwrap();
            let mut feed = CsvFeed::new(open(0), &tape, new_validator(), rejects).unwrap();
            let mut seqs = Vec::new();
            if let Some(stop_after) = stop_after {
                let mut more = true;
                while more && seqs.len() < stop_after {
                    more = feed
                        .pump_until(&mut |e| {
                            seqs.push(e.seq);
                            seqs.len() < stop_after
                        })
                        .unwrap();
                }
                let position = feed.position();
                let (validator, rejects) = feed.into_parts();
                feed = CsvFeed::resume(open(position.0), &tape, validator, rejects, position);
            }
            while feed.pump(&mut |e| seqs.push(e.seq)).unwrap() {}
            (seqs, feed.stats())
        };
        let straight_rejects = dir.path().join("straight.tsv");
        let (straight, straight_stats) = run(None, &straight_rejects);
        assert_eq!(straight.len(), 397, "400 records, two bad lines and one over-long");
        let expected_rejects = std::fs::read_to_string(&straight_rejects).unwrap();
        assert_eq!(expected_rejects.lines().count(), 1 + 3);
        for stop_after in [1, 2, 48, 49, 50, 88, 89, 90, 200, 395] {
            let rejects_path = dir.path().join(format!("r{stop_after}.tsv"));
            let (seqs, stats) = run(Some(stop_after), &rejects_path);
            assert_eq!(seqs, straight, "stopped after {stop_after}");
            assert_eq!((stats.records_read, stats.rejected), (straight_stats.records_read, straight_stats.rejected));
            assert_eq!(std::fs::read_to_string(&rejects_path).unwrap(), expected_rejects, "after {stop_after}");
        }
    }

    /// Regression: the decoder thread was started by the source thread's
    /// first pump, so it inherited the source's pinning and shared its one
    /// core (CSV replays at half speed, even with cores to spare).
    #[cfg(target_os = "linux")]
    #[test]
    fn decoder_thread_does_not_inherit_the_source_pinning() {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.len() < 2 {
            return; // nothing to tell apart on one core
        }
        // A reader that hands out what the test sends and blocks in between,
        // so the decoder thread is alive when its affinity is read.
        struct Gate(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);
        impl Read for Gate {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.1.is_empty() {
                    match self.0.recv() {
                        Ok(bytes) => self.1 = bytes,
                        Err(_) => return Ok(0),
                    }
                }
                let n = self.1.len().min(buf.len());
                buf[..n].copy_from_slice(&self.1[..n]);
                self.1.drain(..n);
                Ok(n)
            }
        }
        let (header, body) = EXAMPLE.split_at(HEADER.len() + 1);
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(header.as_bytes().to_vec()).unwrap();
        let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
        let mut feed = CsvFeed::new(Gate(rx, Vec::new()), Path::new("t.csv"), validator, RejectLog::discard()).unwrap();
        let body = body.as_bytes().to_vec();
        let allowed = std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(cores[0]), "pin the source");
            // A first pump finds nothing yet: the decoder waits on the reader.
            let mut seen = 0;
            assert!(feed.pump(&mut |_| seen += 1).unwrap());
            let allowed = decoder_cpus();
            tx.send(body).unwrap();
            drop(tx);
            while feed.pump(&mut |_| seen += 1).unwrap() {}
            assert_eq!(seen, 4);
            allowed
        })
        .join()
        .unwrap();
        let allowed = allowed.expect("the decoder thread is running");
        assert!(allowed.contains([',', '-']), "decoder pinned to one core: {allowed}");
    }

    /// `Cpus_allowed_list` of this process's `tw-decode` thread, if it is still there.
    #[cfg(target_os = "linux")]
    fn decoder_cpus() -> Option<String> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "tw-decode" {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
                return Some(line["Cpus_allowed_list:".len()..].trim().to_string());
            }
        }
        None
    }

    proptest::proptest! {
        /// The digit parser agrees with std's on any short byte string,
        /// digits or not, including 20-digit overflow.
        #[test]
        fn parse_u64_agrees_with_std(text in "[0-9]{1,21}|[0-9/:]{1,21}|[0-9]{0,12}[^0-9][0-9]{0,8}") {
            let expected = if text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().ok()
            } else {
                None
            };
            proptest::prop_assert_eq!(parse_u64(text.as_bytes()), expected, "{}", text);
        }
    }

    #[test]
    fn parse_u64_edges() {
        for (text, expected) in [
            ("0", Some(0)),
            ("12345678", Some(12_345_678)),
            ("1793583000007847816", Some(1_793_583_000_007_847_816)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("1234567:", None),
            ("/2345678", None),
            ("", None),
        ] {
            assert_eq!(parse_u64(text.as_bytes()), expected, "{text}");
        }
    }

    #[test]
    fn over_long_line_is_rejected_and_skipped() {
        let long = "9".repeat(MAX_LINE_BYTES * 3);
        let text =
            format!("{HEADER}\n1,100,N,1,A,X,B,1.0,10,,\n2,{long},N,2,A,X,B,1.0,10,,\n3,100,N,3,A,X,B,1.0,10,,\n");
        let (events, stats, rejects) = feed(&text, 1000);
        assert_eq!((events.len(), stats.rejected), (2, 1));
        assert!(rejects.contains("3\tline longer than"), "{rejects}");
    }
}
