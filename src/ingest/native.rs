//! The native tape: its on-disk layout, writing one, and the verified
//! memory-mapped reading of one.
//!
//! A tape is a CSV feed already parsed, validated and interned, so replay
//! costs a few loads per record instead of a parse. Replay trusts what it
//! reads, so every byte is checked before it is used: [`Tape::open`] checks
//! the whole tape up front (a tape that opens is one that [`TapeWriter`]
//! finished, whole and unchanged); replay uses [`Tape::open_streaming`],
//! which checks all but the record blocks, and [`Tape::verify_block`] on each
//! block just before its records are read.
//!
//! # Layout
//!
//! All integers are little-endian; offsets are bytes from the start of the
//! file.
//!
//! ```text
//! 0   header, 128 bytes
//! 128 records, 64 bytes each
//! T   block checksum table: one u64 xxh3_64 per block of records
//!     (the last block may be short); T = 128 + 64 * record count
//! S   symbol section; S = T + 8 * block count:
//!       u64 account count, u64 instrument count, then the account names
//!       and then the instrument names in id order, each a u8 length
//!       (at most 16) followed by that many ASCII bytes
//! X   version 2: the block index (`tape_index.rs`: per block its
//!     instruments and event times), up to F; X = the end of the symbols
//! F   end of file, exactly the header's file length
//! ```
//!
//! The index is inside the tape, not a sidecar file: one file cannot be
//! copied, renamed or replaced without its index, the index is covered by
//! the same checksum chain, and the rename that makes the tape whole makes
//! its index whole with it. A version 1 tape (written before the index)
//! still reads; it has no index, which readers report, not refuse.
//!
//! Header:
//!
//! ```text
//! 0    [u8; 8]   magic "TWTAPE01"
//! 8    u32       format version, 2 (1: no index; both read)
//! 12   u32       header size, 128
//! 16   u32       record size, 64
//! 20   u32       block size in records (TapeWriter::create uses 4096;
//!                tapes written before used 65536, and any size reads)
//! 24   u64       record count
//! 32   u64       T, offset of the block checksum table
//! 40   u64       S, offset of the symbol section
//! 48   u64       F, file length
//! 56   u64       stats: rejected CSV lines
//! 64   u64       stats: sequence gaps
//! 72   u64       stats: records missing in those gaps
//! 80   u64       xxh3_64 of the block checksum table
//! 88   u64       xxh3_64 of the symbol section
//! 96   u64       version 2: X, offset of the block index (version 1: zero)
//! 104  u64       version 2: xxh3_64 of the block index (version 1: zero)
//! 112  u64       version 2: flags (version 1: zero); bit 0: every record
//!                passed the order lifecycle at import (`import` sets it);
//!                any other bit set is refused
//! 120  u64       xxh3_64 of header bytes 0..120
//! ```
//!
//! Every byte of the file is covered by a chain of checksums rooted in the
//! header's own: header -> table and symbols -> blocks.
//!
//! Record:
//!
//! ```text
//! 0   u64  seq              32  i64  price
//! 8   i64  ts_ns            40  u64  qty
//! 16  u64  order_id         48  u32  account
//! 24  u64  contra_order_id  52  u32  contra_account
//!                           56  u32  instrument
//!                           60  u8   kind: N, C or T
//!                           61  u8   side: B or S
//!                           62  [u8; 2] reserved, zero
//! ```
//!
//! Besides the checksums, `open` requires valid kind and side bytes, and
//! account and instrument ids below the symbol counts; the writer refuses
//! the same things, so it never makes a tape that will not open. The writer
//! also refuses a seq not above the one before (import's validator never
//! passes one), but a reader does not trust that: seq order, like the order
//! lifecycle and FEED.md's field rules, is a rule about records, checked by
//! the feed record by record (`native_feed`), and a record that breaks it is
//! rejected, not the tape.
//!
//! The writer fills `<path>.partial`, starting with a zeroed header (no
//! magic), and writes the real header only after the table and symbols,
//! then fsyncs and renames. A crash or an error at any point leaves `path`
//! as it was, never a tape that looks whole but is not.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::block_hash;
use super::tape_index::{IndexBuilder, TapeIndex};
use crate::event::{Event, GroupId, Kind, Side};
use crate::symbols::{Groups, pack};
use memmap2::Mmap;
use xxhash_rust::xxh3::xxh3_64;

/// One record as stored: all integers, little-endian, 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TapeRecord {
    pub seq: u64,
    pub ts_ns: i64,
    pub order_id: u64,
    pub contra_order_id: u64,
    pub price: i64,
    pub qty: u64,
    pub account: u32,
    pub contra_account: u32,
    pub instrument: u32,
    /// `b'N'`, `b'C'` or `b'T'`.
    pub kind: u8,
    /// `b'B'` or `b'S'`.
    pub side: u8,
}

impl TapeRecord {
    /// `open` and `verify_block` checked the kind and side bytes, so any
    /// byte but `N` and `C` is a trade here. By table: one load, no
    /// compare, on a path taken for every record.
    #[inline(always)]
    pub fn kind(&self) -> Kind {
        KIND_OF[self.kind as usize]
    }

    /// Any byte but `B` is a sell here (see `kind`).
    #[inline(always)]
    pub fn side(&self) -> Side {
        SIDE_OF[self.side as usize]
    }

    /// The record as the pipeline's event; `groups_by_account` from
    /// `Tape::groups_by_account` (the tape's ids index it).
    #[inline(always)]
    pub fn to_event(&self, groups_by_account: &[GroupId]) -> Event {
        let kind = self.kind();
        Event {
            seq: self.seq,
            ts_ns: self.ts_ns,
            order_id: self.order_id,
            contra_order_id: self.contra_order_id,
            price: self.price,
            qty: self.qty,
            account: self.account,
            contra_account: self.contra_account,
            group: groups_by_account[self.account as usize],
            contra_group: if kind == Kind::Trade { groups_by_account[self.contra_account as usize] } else { 0 },
            instrument: self.instrument,
            kind,
            side: self.side(),
            _pad: [0; 2],
        }
    }
}

pub const RECORD_BYTES: usize = 64;

/// `TapeRecord::kind` by byte.
static KIND_OF: [Kind; 256] = {
    let mut t = [Kind::Trade; 256];
    t[b'N' as usize] = Kind::New;
    t[b'C' as usize] = Kind::Cancel;
    t
};

/// `TapeRecord::side` by byte.
static SIDE_OF: [Side; 256] = {
    let mut t = [Side::Sell; 256];
    t[b'B' as usize] = Side::Buy;
    t
};

/// Whether a record's kind and side bytes, read as one little-endian u16
/// (kind low), are valid, as a sign (-1: valid, 0: not): the verification
/// pass checks both with one load and folds the sign (`RecordFolds`).
static KIND_SIDE_SIGN: [i8; 1 << 16] = {
    let mut t = [0; 1 << 16];
    let kinds = [b'N', b'C', b'T'];
    let mut k = 0;
    while k < kinds.len() {
        t[kinds[k] as usize | (b'B' as usize) << 8] = -1;
        t[kinds[k] as usize | (b'S' as usize) << 8] = -1;
        k += 1;
    }
    t
};

/// What import found wrong with the CSV, carried in the header so replay of
/// a native tape can report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapeStats {
    pub rejected: u64,
    pub gaps: u64,
    pub missing_records: u64,
    /// Every record passed FEED.md's order lifecycle when it was written
    /// (import's validator rejected those that did not): the header flag
    /// `FLAG_LIFECYCLE_CHECKED`. A statement of the writer, covered by the
    /// checksums like any byte, so only as trustworthy as whoever sealed
    /// the tape (see `native_feed`).
    pub lifecycle_checked: bool,
}

pub const MAGIC: [u8; 8] = *b"TWTAPE01";
const VERSION: u32 = 2;
/// Tapes written before the block index; they read, without one.
const VERSION_NO_INDEX: u32 = 1;
const HEADER_BYTES: usize = 128;
/// Bytes of the header that its own checksum covers.
const HEADER_HASHED: usize = 120;
/// 256 KiB per block: small enough that replay hashes a block and then reads
/// its records while it is still in cache (blocks of 4 MiB replayed about
/// 10% slower), and that a corrupt block narrows the damage to a small range.
const BLOCK_RECORDS: u32 = 4_096;
const NAME_MAX: usize = 16;
/// Import asks the kernel to start writing the tape to disk every this many bytes.
const WRITEBACK_BYTES: u64 = 8 << 20;

// Header field offsets.
const H_VERSION: usize = 8;
const H_HEADER_BYTES: usize = 12;
const H_RECORD_BYTES: usize = 16;
const H_BLOCK_RECORDS: usize = 20;
const H_COUNT: usize = 24;
const H_TABLE_OFFSET: usize = 32;
const H_SYMBOLS_OFFSET: usize = 40;
const H_FILE_BYTES: usize = 48;
const H_REJECTED: usize = 56;
const H_GAPS: usize = 64;
const H_MISSING: usize = 72;
const H_TABLE_HASH: usize = 80;
const H_SYMBOLS_HASH: usize = 88;
const H_INDEX_OFFSET: usize = 96;
const H_INDEX_HASH: usize = 104;
const H_FLAGS: usize = 112;
/// Header flag: the records passed the order lifecycle at import.
const FLAG_LIFECYCLE_CHECKED: u64 = 1;
/// Version 1 tapes have these bytes zero.
const H_RESERVED_V1: Range<usize> = 96..120;
const H_HEADER_HASH: usize = 120;

// Record field offsets.
const R_SEQ: usize = 0;
const R_TS: usize = 8;
const R_ORDER: usize = 16;
const R_CONTRA_ORDER: usize = 24;
const R_PRICE: usize = 32;
const R_QTY: usize = 40;
const R_ACCOUNT: usize = 48;
const R_CONTRA_ACCOUNT: usize = 52;
const R_INSTRUMENT: usize = 56;
const R_KIND: usize = 60;
const R_SIDE: usize = 61;
const R_RESERVED: Range<usize> = 62..64;

// The `at` arguments are constants at every call site, so after inlining
// these are single unaligned loads with no bounds check left.
#[inline(always)]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

#[inline(always)]
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// FEED.md's field rules (`validate::check_fields`), as the verification
/// pass folds them for a block.
#[inline(always)]
pub(crate) fn fields_ok(r: &TapeRecord) -> bool {
    (r.seq != u64::MAX) & (r.price > 0) & (r.qty != 0) & ((r.kind == b'T') | (r.contra_order_id == 0))
}

#[inline(always)]
fn encode(rec: &TapeRecord) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    put_u64(&mut b, R_SEQ, rec.seq);
    put_u64(&mut b, R_TS, rec.ts_ns as u64);
    put_u64(&mut b, R_ORDER, rec.order_id);
    put_u64(&mut b, R_CONTRA_ORDER, rec.contra_order_id);
    put_u64(&mut b, R_PRICE, rec.price as u64);
    put_u64(&mut b, R_QTY, rec.qty);
    put_u32(&mut b, R_ACCOUNT, rec.account);
    put_u32(&mut b, R_CONTRA_ACCOUNT, rec.contra_account);
    put_u32(&mut b, R_INSTRUMENT, rec.instrument);
    b[R_KIND] = rec.kind;
    b[R_SIDE] = rec.side;
    b
}

#[inline(always)]
fn decode(b: &[u8; RECORD_BYTES]) -> TapeRecord {
    TapeRecord {
        seq: u64_at(b, R_SEQ),
        ts_ns: u64_at(b, R_TS) as i64,
        order_id: u64_at(b, R_ORDER),
        contra_order_id: u64_at(b, R_CONTRA_ORDER),
        price: u64_at(b, R_PRICE) as i64,
        qty: u64_at(b, R_QTY),
        account: u32_at(b, R_ACCOUNT),
        contra_account: u32_at(b, R_CONTRA_ACCOUNT),
        instrument: u32_at(b, R_INSTRUMENT),
        kind: b[R_KIND],
        side: b[R_SIDE],
    }
}

#[inline(always)]
fn valid_kind(k: u8) -> bool {
    matches!(k, b'N' | b'C' | b'T')
}

#[inline(always)]
fn valid_side(s: u8) -> bool {
    matches!(s, b'B' | b'S')
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Writes a native tape. See the module doc for the layout.
pub struct TapeWriter {
    file: File,
    path: PathBuf,
    partial: PathBuf,
    block_records: u32,
    /// The current block's encoded records. It doubles as the write buffer,
    /// so each block is hashed once, in one call, and written in one syscall.
    block: Vec<u8>,
    block_sums: Vec<u64>,
    /// Bytes written, and how many of them writeback has been started for.
    written: u64,
    writeback_from: u64,
    records: u64,
    last_seq: Option<u64>,
    /// One past the largest account / instrument id pushed, checked against
    /// the symbol tables in `finish` so the writer never produces a tape the
    /// reader would refuse.
    account_bound: u64,
    instrument_bound: u64,
    /// Set when a write failed: the file may then hold part of a block, so
    /// nothing more may be added and `finish` refuses.
    broken: bool,
    /// Set once the rename has happened; until then `Drop` deletes the
    /// `.partial` file.
    done: bool,
    index: IndexBuilder,
}

impl TapeWriter {
    /// Writes to `<path>.partial` and renames on finish, so a failed import
    /// leaves no tape that looks whole.
    pub fn create(path: &Path) -> io::Result<TapeWriter> {
        Self::with_block_records(path, BLOCK_RECORDS)
    }

    /// Tests use tiny blocks to exercise multi-block tapes cheaply; the
    /// reader takes the block size from the header.
    pub(crate) fn with_block_records(path: &Path, block_records: u32) -> io::Result<TapeWriter> {
        if block_records == 0 {
            return Err(invalid_input("block size must be at least one record".into()));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        // Locked while written: a second import into the same tape is refused.
        let mut file = crate::outputs::create(&partial)?;
        // A zero header has no magic, so an interrupted write is never taken
        // for a tape even if someone renames the `.partial` by hand.
        if let Err(e) = file.write_all(&[0u8; HEADER_BYTES]) {
            crate::outputs::remove_created(&partial);
            return Err(e);
        }
        Ok(TapeWriter {
            file,
            path: path.to_path_buf(),
            partial,
            block_records,
            block: Vec::with_capacity(block_records as usize * RECORD_BYTES),
            block_sums: Vec::new(),
            written: HEADER_BYTES as u64,
            writeback_from: 0,
            records: 0,
            last_seq: None,
            account_bound: 0,
            instrument_bound: 0,
            broken: false,
            done: false,
            index: IndexBuilder::default(),
        })
    }

    /// Buffered: records are encoded into a block-sized buffer that is
    /// written once full, so there is no syscall per record.
    #[inline]
    pub fn push(&mut self, rec: &TapeRecord) -> io::Result<()> {
        // The same rules `Tape::open` enforces, caught here so a bad import
        // fails at the record that caused it rather than at the next replay.
        let seq_ok = match self.last_seq {
            Some(last) => rec.seq > last,
            None => true,
        };
        if !(seq_ok & valid_kind(rec.kind) & valid_side(rec.side)) {
            return Err(self.push_problem(rec));
        }
        self.last_seq = Some(rec.seq);
        let max_account = rec.account.max(rec.contra_account) as u64 + 1;
        self.account_bound = self.account_bound.max(max_account);
        self.instrument_bound = self.instrument_bound.max(rec.instrument as u64 + 1);

        self.block.extend_from_slice(&encode(rec));
        self.index.push(rec);
        self.records += 1;
        if self.block.len() >= self.block_records as usize * RECORD_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    #[cold]
    fn push_problem(&self, rec: &TapeRecord) -> io::Error {
        let what = if !valid_kind(rec.kind) {
            format!("invalid kind byte {:#04x} (expected N, C or T)", rec.kind)
        } else if !valid_side(rec.side) {
            format!("invalid side byte {:#04x} (expected B or S)", rec.side)
        } else {
            format!(
                "seq {} is not greater than the previous record's seq {}",
                rec.seq,
                self.last_seq.unwrap_or_default()
            )
        };
        invalid_input(format!("tape record {}: {what}", self.records))
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("an earlier write to this tape failed"));
        }
        if self.block.is_empty() {
            return Ok(());
        }
        self.block_sums.push(xxh3_64(&self.block));
        self.index.end_block();
        if let Err(e) = self.file.write_all(&self.block) {
            self.broken = true;
            return Err(e);
        }
        self.written += self.block.len() as u64;
        self.block.clear();
        self.start_writeback(false);
        Ok(())
    }

    /// Starts writeback of what was written since the last call, once there
    /// is `WRITEBACK_BYTES` of it (or whatever there is, with `all`): the
    /// disk then writes the tape while import runs, rather than all of it
    /// in the final fsync. It only starts the I/O; nothing waits for it.
    fn start_writeback(&mut self, all: bool) {
        let pending = self.written - self.writeback_from;
        if pending == 0 || (!all && pending < WRITEBACK_BYTES) {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on our own open descriptor; a failure
            // only means the final fsync does all the work, as it would anyway.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.writeback_from as libc::off64_t,
                    pending as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.writeback_from = self.written;
    }

    /// Records pushed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// `accounts[i]` is the name of account id i, `instruments[i]` of
    /// instrument id i (ASCII, at most 16 bytes each).
    /// Writes the block checksum table, the symbol section, then rewrites the
    /// header, fsyncs, renames.
    pub fn finish(mut self, accounts: &[&[u8]], instruments: &[&[u8]], stats: TapeStats) -> io::Result<()> {
        self.write_tail(accounts, instruments, stats)?;
        self.file.sync_all()?;
        fs::rename(&self.partial, &self.path)?;
        crate::outputs::keep(&self.partial);
        self.done = true;
        // Makes the rename itself durable. Some filesystems refuse fsync on a
        // directory; the tape is complete either way, so that is not an error.
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn write_tail(&mut self, accounts: &[&[u8]], instruments: &[&[u8]], stats: TapeStats) -> io::Result<()> {
        if self.account_bound > accounts.len() as u64 {
            return Err(invalid_input(format!(
                "records use account id {} but only {} account names were given",
                self.account_bound - 1,
                accounts.len()
            )));
        }
        if self.instrument_bound > instruments.len() as u64 {
            return Err(invalid_input(format!(
                "records use instrument id {} but only {} instrument names were given",
                self.instrument_bound - 1,
                instruments.len()
            )));
        }
        self.flush_block()?;

        let table: Vec<u8> = self.block_sums.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.file.write_all(&table)?;

        let mut symbols = Vec::with_capacity(16 + (accounts.len() + instruments.len()) * 9);
        symbols.extend_from_slice(&(accounts.len() as u64).to_le_bytes());
        symbols.extend_from_slice(&(instruments.len() as u64).to_le_bytes());
        for (what, names) in [("account", accounts), ("instrument", instruments)] {
            for (id, name) in names.iter().enumerate() {
                if name.len() > NAME_MAX || !name.is_ascii() {
                    return Err(invalid_input(format!(
                        "{what} {id} name {:?} is not ASCII of at most {NAME_MAX} bytes",
                        name.escape_ascii().to_string()
                    )));
                }
                symbols.push(name.len() as u8);
                symbols.extend_from_slice(name);
            }
        }
        self.file.write_all(&symbols)?;
        let index = std::mem::take(&mut self.index).finish(instruments.len() as u64);
        self.file.write_all(&index)?;

        let table_offset = HEADER_BYTES as u64 + self.records * RECORD_BYTES as u64;
        let symbols_offset = table_offset + table.len() as u64;
        let index_offset = symbols_offset + symbols.len() as u64;
        let file_bytes = index_offset + index.len() as u64;
        let mut h = [0u8; HEADER_BYTES];
        h[..8].copy_from_slice(&MAGIC);
        put_u32(&mut h, H_VERSION, VERSION);
        put_u32(&mut h, H_HEADER_BYTES, HEADER_BYTES as u32);
        put_u32(&mut h, H_RECORD_BYTES, RECORD_BYTES as u32);
        put_u32(&mut h, H_BLOCK_RECORDS, self.block_records);
        put_u64(&mut h, H_COUNT, self.records);
        put_u64(&mut h, H_TABLE_OFFSET, table_offset);
        put_u64(&mut h, H_SYMBOLS_OFFSET, symbols_offset);
        put_u64(&mut h, H_FILE_BYTES, file_bytes);
        put_u64(&mut h, H_REJECTED, stats.rejected);
        put_u64(&mut h, H_GAPS, stats.gaps);
        put_u64(&mut h, H_MISSING, stats.missing_records);
        put_u64(&mut h, H_TABLE_HASH, xxh3_64(&table));
        put_u64(&mut h, H_SYMBOLS_HASH, xxh3_64(&symbols));
        put_u64(&mut h, H_INDEX_OFFSET, index_offset);
        put_u64(&mut h, H_INDEX_HASH, xxh3_64(&index));
        put_u64(&mut h, H_FLAGS, if stats.lifecycle_checked { FLAG_LIFECYCLE_CHECKED } else { 0 });
        let header_hash = xxh3_64(&h[..HEADER_HASHED]);
        put_u64(&mut h, H_HEADER_HASH, header_hash);
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&h)?;
        Ok(())
    }
}

impl Drop for TapeWriter {
    fn drop(&mut self) {
        if !self.done {
            crate::outputs::remove_created(&self.partial);
        }
    }
}

/// Why a tape was refused. Its `Display` names the file, where in it the
/// problem is, and what the problem is.
#[derive(Debug)]
pub struct TapeError {
    path: PathBuf,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Io(&'static str, io::Error),
    Invalid(String),
}

impl TapeError {
    fn invalid(path: &Path, msg: String) -> TapeError {
        TapeError { path: path.to_path_buf(), problem: Problem::Invalid(msg) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is wrong and where, without the path.
    pub fn detail(&self) -> String {
        match &self.problem {
            Problem::Io(what, e) => format!("{what}: {e}"),
            Problem::Invalid(msg) => msg.clone(),
        }
    }
}

impl fmt::Display for TapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Io(what, e) => write!(f, "{}: {what}: {e}", self.path.display()),
            Problem::Invalid(msg) => write!(f, "{}: {msg}", self.path.display()),
        }
    }
}

impl std::error::Error for TapeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Io(_, e) => Some(e),
            Problem::Invalid(_) => None,
        }
    }
}

/// A memory-mapped tape: verified whole by [`Tape::open`], or block by
/// block as it is read after [`Tape::open_streaming`].
pub struct Tape {
    path: PathBuf,
    map: Mmap,
    len: usize,
    records_end: usize,
    geo: Geometry,
    stats: TapeStats,
    accounts: Vec<Range<usize>>,
    instruments: Vec<Range<usize>>,
    index: Option<TapeIndex>,
}

/// The header's geometry, every offset already checked against the others.
#[derive(Clone)]
struct Geometry {
    block_records: u64,
    table: Range<usize>,
    symbols: Range<usize>,
    /// Version 2: the block index section.
    index: Option<Range<usize>>,
    file_bytes: u64,
}

impl Tape {
    /// Maps the file and verifies everything before returning: magic,
    /// version, sizes, that the file length matches the header, every
    /// checksum, that every record has a valid kind and side byte and ids
    /// below the symbol counts.
    pub fn open(path: &Path) -> Result<Tape, TapeError> {
        // Past a few threads hashing is bound by memory bandwidth.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Self::open_with_threads(path, threads)
    }

    /// Maps the file and verifies all but the record blocks: the header,
    /// that the file is whole, the checksum table and the symbols. Each
    /// block must then be checked with [`Tape::verify_block`] before any of
    /// its records is read. Replay does that as it goes, so the tape is read
    /// from memory once, in cache-sized blocks, and no time goes to a
    /// verification pass before the first record.
    pub fn open_streaming(path: &Path) -> Result<Tape, TapeError> {
        Self::open_inner(path, None)
    }

    fn open_with_threads(path: &Path, threads: usize) -> Result<Tape, TapeError> {
        Self::open_inner(path, Some(threads))
    }

    /// With `threads`, every block is verified before this returns.
    fn open_inner(path: &Path, threads: Option<usize>) -> Result<Tape, TapeError> {
        let bad = |msg: String| TapeError::invalid(path, msg);
        let file = File::open(path)
            .map_err(|e| TapeError { path: path.to_path_buf(), problem: Problem::Io("cannot open", e) })?;
        // SAFETY: the mapping is read-only and we only ever read bytes from
        // it, which are valid for any contents. Tapes are written once to a
        // `.partial` and renamed into place, so nothing is expected to modify
        // or truncate the file while it is mapped; if something did anyway,
        // reads could see the changed bytes or fault, the usual caveat of
        // mapping a file, accepted for the speed of replay.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| TapeError { path: path.to_path_buf(), problem: Problem::Io("cannot map", e) })?;
        // Verification and replay both walk the file front to back.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);

        let geo = check_header(&map).map_err(bad)?;
        let h = &map[..HEADER_BYTES];
        let records_end = geo.table.start;

        if u64_at(h, H_TABLE_HASH) != xxh3_64(&map[geo.table.clone()]) {
            return Err(bad(format!(
                "corrupt block checksum table (bytes {}..{}): checksum mismatch",
                geo.table.start, geo.table.end
            )));
        }
        if u64_at(h, H_SYMBOLS_HASH) != xxh3_64(&map[geo.symbols.clone()]) {
            return Err(bad(format!(
                "corrupt symbol section (bytes {}..{}): checksum mismatch",
                geo.symbols.start, geo.symbols.end
            )));
        }
        let (accounts, instruments) = parse_symbols(&map, geo.symbols.clone()).map_err(bad)?;
        let index = match &geo.index {
            Some(range) => {
                if u64_at(h, H_INDEX_HASH) != xxh3_64(&map[range.clone()]) {
                    return Err(bad(format!(
                        "corrupt block index (bytes {}..{}): checksum mismatch",
                        range.start, range.end
                    )));
                }
                let blocks = (geo.table.len() / 8) as u64;
                let index = TapeIndex::parse(&map[range.clone()], blocks, instruments.len() as u64)
                    .map_err(|e| bad(format!("block index (bytes {}..{}): {e}", range.start, range.end)))?;
                Some(index)
            }
            None => None,
        };

        if let Some(threads) = threads {
            check_records(
                &map,
                &|range| release(&map, range),
                &geo,
                accounts.len() as u64,
                instruments.len() as u64,
                threads,
            )
            .map_err(bad)?;
        }

        let stats = TapeStats {
            rejected: u64_at(h, H_REJECTED),
            gaps: u64_at(h, H_GAPS),
            missing_records: u64_at(h, H_MISSING),
            // `check_header` refused unknown flags; version 1 has none.
            lifecycle_checked: geo.index.is_some() && u64_at(h, H_FLAGS) & FLAG_LIFECYCLE_CHECKED != 0,
        };
        debug_assert_eq!(geo.file_bytes, map.len() as u64);
        Ok(Tape {
            path: path.to_path_buf(),
            len: (records_end - HEADER_BYTES) / RECORD_BYTES,
            map,
            records_end,
            geo,
            stats,
            accounts,
            instruments,
            index,
        })
    }

    /// The block index (instruments and event times per block), when the
    /// tape has one: tapes of format version 1 do not.
    pub fn index(&self) -> Option<&TapeIndex> {
        self.index.as_ref()
    }

    /// Number of checksum blocks.
    pub fn blocks(&self) -> usize {
        self.len.div_ceil(self.block_records().max(1))
    }

    /// Records per checksum block (the last block may be short).
    pub fn block_records(&self) -> usize {
        self.geo.block_records as usize
    }

    /// Checks block `b` against its checksum and every record in it against
    /// the rules `open` enforces, in one pass that leaves the block in
    /// cache for the reads that follow.
    ///
    /// Returns how many of the block's records break a field rule of
    /// FEED.md (`validate::check_fields`: price and qty above zero, seq below
    /// `u64::MAX`, no contra order on N and C). Those are bad records, not
    /// a damaged tape: the feed rejects each one, as the CSV decoder would.
    pub fn verify_block(&self, b: usize) -> Result<BlockCheck, TapeError> {
        check_blocks(&self.map, &self.geo, b..b + 1, self.accounts.len() as u64, self.instruments.len() as u64, &|_| {})
            .map_err(|msg| TapeError::invalid(&self.path, msg))
    }

    /// An account's name by id (ids come from verified blocks).
    pub fn account(&self, id: u32) -> &[u8] {
        self.accounts.get(id as usize).map_or(&[], |r| &self.map[r.clone()])
    }

    /// An instrument's name by id.
    pub fn instrument(&self, id: u32) -> &[u8] {
        self.instruments.get(id as usize).map_or(&[], |r| &self.map[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes record `i` straight from the mapping. Panics if `i >= len()`.
    /// After `open_streaming`, only records of verified blocks may be used.
    #[inline]
    pub fn record(&self, i: usize) -> TapeRecord {
        let (records, _) = self.map[HEADER_BYTES..self.records_end].as_chunks::<RECORD_BYTES>();
        decode(&records[i])
    }

    /// Whether the seqs of records `range` run on one by one (each the one
    /// before plus one, without wrapping), read straight from the mapping,
    /// unverified: what a filtered replay checks before it leaves a block
    /// unread (`NativeFeed::skippable`; the block index has no seqs).
    pub fn seqs_consecutive(&self, range: Range<usize>) -> bool {
        let (records, _) = self.map[HEADER_BYTES..self.records_end].as_chunks::<RECORD_BYTES>();
        let records = &records[range];
        let Some(first) = records.first().map(|r| u64_at(r, R_SEQ)) else { return true };
        // One fold, no branch per record: any seq off its place sets a bit.
        let off =
            records.iter().enumerate().fold(0, |off, (k, r)| off | (u64_at(r, R_SEQ) ^ first.wrapping_add(k as u64)));
        off == 0 && first.checked_add(records.len() as u64 - 1).is_some()
    }

    /// Tells the OS that records before `end` will not be read again (see `release`).
    pub fn release_before(&self, end: usize) {
        release(&self.map, HEADER_BYTES..HEADER_BYTES + end.min(self.len) * RECORD_BYTES);
    }

    /// Account names, indexed by account id.
    pub fn accounts(&self) -> Vec<&[u8]> {
        self.accounts.iter().map(|r| &self.map[r.clone()]).collect()
    }

    /// Each account id's group under accounts.csv (`TapeRecord::to_event`).
    pub fn groups_by_account(&self, groups: &Groups) -> Vec<GroupId> {
        self.accounts().iter().enumerate().map(|(id, name)| groups.group_of(pack(name), id as u32)).collect()
    }

    /// Instrument names, indexed by instrument id.
    pub fn instruments(&self) -> Vec<&[u8]> {
        self.instruments.iter().map(|r| &self.map[r.clone()]).collect()
    }

    pub fn stats(&self) -> TapeStats {
        self.stats
    }
}

impl fmt::Debug for Tape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tape")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("accounts", &self.accounts.len())
            .field("instruments", &self.instruments.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Checks the header and that the file is exactly as long as it promises.
/// The header checksum is checked before any field is trusted, so a
/// truncation report never quotes a corrupt record count.
fn check_header(map: &[u8]) -> Result<Geometry, String> {
    let len = map.len();
    if len >= MAGIC.len() && map[..MAGIC.len()] != MAGIC {
        return Err(format!(
            "not a native tape: bad magic \"{}\" at byte 0 (expected \"TWTAPE01\")",
            map[..MAGIC.len()].escape_ascii()
        ));
    }
    if len < HEADER_BYTES {
        return Err(format!("truncated: the file is {len} bytes, shorter than the {HEADER_BYTES}-byte header"));
    }
    let h = &map[..HEADER_BYTES];
    let version = u32_at(h, H_VERSION);
    if version != VERSION && version != VERSION_NO_INDEX {
        return Err(format!(
            "unsupported format version {version} at byte {H_VERSION} \
             (this build reads versions {VERSION_NO_INDEX} and {VERSION})"
        ));
    }
    if u64_at(h, H_HEADER_HASH) != xxh3_64(&h[..HEADER_HASHED]) {
        return Err(format!("corrupt header (bytes 0..{HEADER_BYTES}): checksum mismatch"));
    }
    // From here the header is what a writer wrote, so any inconsistency
    // is a writer bug or a forged header; report it all the same.
    let header_bytes = u32_at(h, H_HEADER_BYTES);
    let record_bytes = u32_at(h, H_RECORD_BYTES);
    if header_bytes as usize != HEADER_BYTES || record_bytes as usize != RECORD_BYTES {
        return Err(format!(
            "header says {header_bytes}-byte header and {record_bytes}-byte records \
             (this build reads {HEADER_BYTES} and {RECORD_BYTES})"
        ));
    }
    if version == VERSION {
        let flags = u64_at(h, H_FLAGS);
        if flags & !FLAG_LIFECYCLE_CHECKED != 0 {
            return Err(format!(
                "header flags {flags:#x} at byte {H_FLAGS}: bits this build does not know \
                 (it knows {FLAG_LIFECYCLE_CHECKED:#x}, lifecycle checked at import)"
            ));
        }
    } else if h[H_RESERVED_V1].iter().any(|&b| b != 0) {
        return Err(format!("header bytes {}..{} are reserved but not zero", H_RESERVED_V1.start, H_RESERVED_V1.end));
    }
    let block_records = u32_at(h, H_BLOCK_RECORDS) as u64;
    if block_records == 0 {
        return Err(format!("header at byte {H_BLOCK_RECORDS}: block size is 0 records"));
    }
    let count = u64_at(h, H_COUNT);
    let table_offset = u64_at(h, H_TABLE_OFFSET);
    let symbols_offset = u64_at(h, H_SYMBOLS_OFFSET);
    let file_bytes = u64_at(h, H_FILE_BYTES);
    // Version 1: the symbols run to the end of the file.
    let index_offset = if version == VERSION { u64_at(h, H_INDEX_OFFSET) } else { file_bytes };
    let blocks = count.div_ceil(block_records);
    let want_table = count.checked_mul(RECORD_BYTES as u64).and_then(|b| b.checked_add(HEADER_BYTES as u64));
    let want_symbols = want_table.and_then(|t| t.checked_add(blocks.checked_mul(8)?));
    if want_table != Some(table_offset)
        || want_symbols != Some(symbols_offset)
        || index_offset < symbols_offset.saturating_add(16)
        || file_bytes < index_offset
    {
        return Err(format!(
            "header is inconsistent: {count} records in blocks of {block_records} \
             but checksum table at byte {table_offset}, symbols at byte {symbols_offset}, \
             index at byte {index_offset}, file length {file_bytes}"
        ));
    }

    let actual = len as u64;
    if actual < table_offset {
        return Err(format!(
            "truncated: header promises {count} records ({} bytes of records) \
             but the file ends at byte {actual}, inside record {}",
            table_offset - HEADER_BYTES as u64,
            (actual - HEADER_BYTES as u64) / RECORD_BYTES as u64
        ));
    }
    if actual < symbols_offset {
        return Err(format!(
            "truncated: the file ends at byte {actual}, inside the block checksum table \
             (bytes {table_offset}..{symbols_offset})"
        ));
    }
    if actual < index_offset {
        return Err(format!(
            "truncated: the file ends at byte {actual}, inside the symbol section \
             (bytes {symbols_offset}..{index_offset})"
        ));
    }
    if actual < file_bytes {
        return Err(format!(
            "truncated: the file ends at byte {actual}, inside the block index \
             (bytes {index_offset}..{file_bytes})"
        ));
    }
    if actual > file_bytes {
        return Err(format!(
            "{} bytes of unexpected data after the end of the tape at byte {file_bytes}",
            actual - file_bytes
        ));
    }
    // The file fits in the address space (it is mapped), so every offset
    // below the file length fits in usize.
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| format!("offset {v} exceeds usize"));
    Ok(Geometry {
        block_records,
        table: to_usize(table_offset)?..to_usize(symbols_offset)?,
        symbols: to_usize(symbols_offset)?..to_usize(index_offset)?,
        index: if version == VERSION { Some(to_usize(index_offset)?..to_usize(file_bytes)?) } else { None },
        file_bytes,
    })
}

type Names = Vec<Range<usize>>;

/// Parses the symbol section; its checksum has already matched, so a failure
/// here means the writer broke the format, not that the disk did.
fn parse_symbols(map: &[u8], section: Range<usize>) -> Result<(Names, Names), String> {
    let start = section.start;
    let end = section.end;
    let n_accounts = u64_at(map, start);
    let n_instruments = u64_at(map, start + 8);
    let mut at = start + 16;
    let mut read = |what: &str, n: u64| -> Result<Names, String> {
        // Each name takes at least its length byte, which bounds a forged
        // count before it can drive a huge allocation.
        let cap = usize::try_from(n).unwrap_or(usize::MAX).min(end - at);
        let mut names = Vec::with_capacity(cap);
        for id in 0..n {
            let Some(&name_len) = map[..end].get(at) else {
                return Err(format!("symbol section (bytes {start}..{end}) ends at {what} {id} of {n}"));
            };
            let name_len = name_len as usize;
            let name = at + 1..at + 1 + name_len;
            if name.end > end {
                return Err(format!(
                    "symbol section (bytes {start}..{end}) ends inside {what} {id}'s name at byte {at}"
                ));
            }
            if name_len > NAME_MAX || !map[name.clone()].is_ascii() {
                return Err(format!(
                    "symbol section: {what} {id}'s name at byte {at} is not ASCII of at most {NAME_MAX} bytes"
                ));
            }
            at = name.end;
            names.push(name);
        }
        Ok(names)
    };
    // The validator's stated limits: import never writes more, and a feed
    // must not hold more names than a CSV tape's could.
    let limits = crate::ingest::validate::Limits::default();
    for (what, n, limit) in
        [("accounts", n_accounts, limits.accounts), ("instruments", n_instruments, limits.instruments)]
    {
        if n > limit as u64 {
            return Err(format!(
                "symbol section (bytes {start}..{end}): {n} {what}, more than the {limit} a feed may have"
            ));
        }
    }
    let accounts = read("account", n_accounts)?;
    let instruments = read("instrument", n_instruments)?;
    if at != end {
        return Err(format!("symbol section: {} bytes of unexpected data at bytes {at}..{end}", end - at));
    }
    Ok((accounts, instruments))
}

/// What the verification pass learnt about a run of blocks' records, in
/// record order: how many break a field rule (the feed checks fields per
/// record only in a block that has such records), whether their seqs run
/// on one by one, and their event times folded as the block index folds
/// them (`tape_index::BlockCheck`). With these the feed can tell that a
/// whole block is in line without judging each record (`NativeFeed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCheck {
    pub bad_fields: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Every seq is the one before it plus one (no wrap).
    pub consecutive: bool,
    pub first_ts: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// The largest step of a record's event time past the newest before
    /// it in the run (0 for a run of one record), or `i64::MAX` when the
    /// run's times span more than an i64 holds (the index saturates each
    /// step instead; both only ever over-state a step).
    pub max_jump: i64,
}

/// Every check `Tape::open` makes, on a tape held in memory (fuzzing and
/// tests: no file, no mapping). Returns how many records break a field
/// rule (the feed rejects those one by one).
pub fn verify_bytes(map: &[u8]) -> Result<u64, String> {
    let geo = check_header(map)?;
    let h = &map[..HEADER_BYTES];
    if u64_at(h, H_TABLE_HASH) != xxh3_64(&map[geo.table.clone()]) {
        return Err("corrupt block checksum table".into());
    }
    if u64_at(h, H_SYMBOLS_HASH) != xxh3_64(&map[geo.symbols.clone()]) {
        return Err("corrupt symbol section".into());
    }
    let (accounts, instruments) = parse_symbols(map, geo.symbols.clone())?;
    let blocks = geo.table.len() / 8;
    if let Some(range) = &geo.index {
        if u64_at(h, H_INDEX_HASH) != xxh3_64(&map[range.clone()]) {
            return Err("corrupt block index".into());
        }
        TapeIndex::parse(&map[range.clone()], blocks as u64, instruments.len() as u64)?;
    }
    check_blocks(map, &geo, 0..blocks, accounts.len() as u64, instruments.len() as u64, &|_| {}).map(|c| c.bad_fields)
}

/// Checks every block against its checksum and every record in it, split
/// into contiguous runs of blocks across up to `threads` threads: hashing is
/// the bulk of opening a tape, and blocks hash independently. Returns the
/// problem that comes first in the file, as a serial check would.
fn check_records(
    map: &[u8],
    release: &(dyn Fn(Range<usize>) + Sync),
    geo: &Geometry,
    n_accounts: u64,
    n_instruments: u64,
    threads: usize,
) -> Result<(), String> {
    let blocks = geo.table.len() / 8;
    // Records that break a field rule are the feed's to reject, one by one.
    let check = |run: Range<usize>| check_blocks(map, geo, run, n_accounts, n_instruments, release).map(|_| ());
    let threads = threads.clamp(1, blocks.max(1));
    if threads == 1 {
        return check(0..blocks);
    }
    let per_thread = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..blocks)
            .step_by(per_thread)
            .map(|start| {
                let run = start..(start + per_thread).min(blocks);
                scope.spawn(move || check(run))
            })
            .collect();
        // Runs are in file order, so the first failing run holds the first
        // problem.
        for run in runs {
            run.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        Ok(())
    })
}

/// Checks a run of blocks, in one pass: each slice is validated right after
/// it is hashed, while it is still in cache, so the tape is read from memory
/// once rather than twice. Returns what `BlockCheck` says (over the run).
fn check_blocks(
    map: &[u8],
    geo: &Geometry,
    run: Range<usize>,
    n_accounts: u64,
    n_instruments: u64,
    release: &(dyn Fn(Range<usize>) + Sync),
) -> Result<BlockCheck, String> {
    /// Small enough to stay in L2 between hashing and checking.
    const SLICE_BYTES: usize = 1024 * RECORD_BYTES;
    let (sums, _) = map[geo.table.clone()].as_chunks::<8>();
    let block_bytes = geo.block_records as usize * RECORD_BYTES;
    let records = &map[HEADER_BYTES..geo.table.start];
    let mut bad_fields = 0u64;
    // The run's first record starts the seq and time folds (read before
    // its checksum is judged: a mismatch discards what was folded).
    let first = records.get(run.start * block_bytes..).and_then(|r| r.first_chunk::<RECORD_BYTES>());
    let (first_seq, first_ts) = first.map_or((0, 0), |r| (u64_at(r, R_SEQ), u64_at(r, R_TS) as i64));
    let mut last_seq = first_seq.wrapping_sub(1);
    let mut consecutive = true;
    let (mut min_ts, mut max_ts, mut max_jump) = (i64::MAX, first_ts, i64::MIN);
    for b in run {
        let block_start = b * block_bytes;
        let block = &records[block_start..(block_start + block_bytes).min(records.len())];
        // Every record is folded without a data-dependent branch
        // (`RecordFolds`); a block whose folds are not all clean takes the
        // exact pass, which finds the record and the rule.
        let block_first_seq = block.first_chunk::<RECORD_BYTES>().map_or(0, |r| u64_at(r, R_SEQ));
        let mut folds = RecordFolds {
            ids_ok: -1,
            odd: 0,
            min_price_qty: i64::MAX,
            next_seq: block_first_seq,
            min_ts,
            max_ts,
            max_jump,
        };
        let digest = block_hash::xxh3_64_by_slices(block, SLICE_BYTES, |slice| {
            folds.fold(slice.as_chunks::<RECORD_BYTES>().0, n_accounts, n_instruments);
        });
        (min_ts, max_ts, max_jump) = (folds.min_ts, folds.max_ts, folds.max_jump);
        // Damage on disk is reported as such even when it also breaks a
        // record rule, so the checksum is judged first.
        if digest != u64::from_le_bytes(sums[b]) {
            let at = HEADER_BYTES + block_start;
            return Err(format!("corrupt block {b} (bytes {at}..{}): checksum mismatch", at + block.len()));
        }
        let (recs, _) = block.as_chunks::<RECORD_BYTES>();
        let block_consecutive = if folds.odd == 0 && folds.ids_ok < 0 {
            // Seqs consecutive from the block's first, so `u64::MAX` is
            // among them only if they reach it.
            let seqs_ok = block_first_seq.checked_add(recs.len() as u64).is_some();
            if folds.min_price_qty <= 0 || !seqs_ok {
                bad_fields += count_bad_fields(block);
            }
            true
        } else {
            let exact = exact_folds(recs, n_accounts, n_instruments);
            if !exact.ok {
                let first = b * geo.block_records as usize;
                return Err(diagnose(recs, first, n_accounts, n_instruments));
            }
            bad_fields += exact.bad_fields;
            exact.consecutive
        };
        if let Some(last) = recs.last() {
            consecutive &= block_consecutive && block_first_seq == last_seq.wrapping_add(1);
            last_seq = u64_at(last, R_SEQ);
        }
        let at = HEADER_BYTES + block_start;
        release(at..at + block.len());
    }
    // Every step lies within `min_ts..=max_ts`: when that span fits an
    // i64 no step wrapped, else the largest step is taken as unbounded.
    if max_ts.checked_sub(min_ts).is_none() {
        max_jump = i64::MAX;
    }
    Ok(BlockCheck { bad_fields, first_seq, last_seq, consecutive, first_ts, min_ts, max_ts, max_jump })
}

/// What the verification pass folds over a block's records, one loop with
/// no data-dependent branch (`check_blocks`). Clean folds prove a block
/// sound, its seqs consecutive and, with a price and qty above zero, its
/// fields unbroken; any other outcome (a damaged or forged block, a seq
/// gap or repeat, a possible broken field) only sends the block to the
/// exact pass (`exact_folds`, `count_bad_fields`), so a fold may raise a
/// false alarm but never miss a fault.
#[derive(Clone, Copy)]
struct RecordFolds {
    /// Negative while every kind and side byte pair is valid and every id
    /// is below its count (the sign bits of `id - count` and of
    /// `KIND_SIDE_SIGN`, and'ed).
    ids_ok: i64,
    /// Or'ed: the reserved bytes, each record's seq off its place were the
    /// block's seqs consecutive, and contra order ids of records that are
    /// not trades (FEED.md: none).
    odd: u64,
    /// The smallest price or qty (a qty of 2^63 or more reads negative
    /// here: a false alarm, which only costs the exact count).
    min_price_qty: i64,
    /// The seq the next record has if the block's seqs are consecutive.
    next_seq: u64,
    /// The time folds (`BlockCheck`), as the index folds them. The step may
    /// wrap here: see the end of `check_blocks`.
    min_ts: i64,
    max_ts: i64,
    max_jump: i64,
}

impl RecordFolds {
    /// Folds records into `self`, kept in registers for the loop.
    #[inline(always)]
    fn fold(&mut self, recs: &[[u8; RECORD_BYTES]], n_accounts: u64, n_instruments: u64) {
        let mut f = *self;
        for r in recs {
            // Kind, side and the two reserved bytes, in one word.
            let tail = u32_at(r, R_KIND);
            let ids = (u32_at(r, R_ACCOUNT) as u64).wrapping_sub(n_accounts)
                & (u32_at(r, R_CONTRA_ACCOUNT) as u64).wrapping_sub(n_accounts)
                & (u32_at(r, R_INSTRUMENT) as u64).wrapping_sub(n_instruments);
            f.ids_ok &= ids as i64 & KIND_SIDE_SIGN[(tail & 0xffff) as usize] as i64;
            let not_trade = (tail as u8 != b'T') as u64;
            let seq = u64_at(r, R_SEQ);
            f.odd |= (tail >> 16) as u64 | (u64_at(r, R_CONTRA_ORDER) & not_trade.wrapping_neg()) | (seq ^ f.next_seq);
            f.next_seq = f.next_seq.wrapping_add(1);
            f.min_price_qty = f.min_price_qty.min((u64_at(r, R_PRICE) as i64).min(u64_at(r, R_QTY) as i64));
            let ts = u64_at(r, R_TS) as i64;
            f.max_jump = f.max_jump.max(ts.wrapping_sub(f.max_ts));
            f.min_ts = f.min_ts.min(ts);
            f.max_ts = f.max_ts.max(ts);
        }
        *self = f;
    }
}

/// The exact pass over a block whose folds were not all clean.
struct ExactFolds {
    /// Every record sound as stored (else the tape is damaged: `diagnose`).
    ok: bool,
    bad_fields: u64,
    /// Every seq the one before plus one (wrapping, as `BlockCheck`).
    consecutive: bool,
}

#[cold]
fn exact_folds(recs: &[[u8; RECORD_BYTES]], n_accounts: u64, n_instruments: u64) -> ExactFolds {
    let mut exact = ExactFolds { ok: true, bad_fields: 0, consecutive: true };
    let mut prev_seq = recs.first().map_or(0, |r| u64_at(r, R_SEQ).wrapping_sub(1));
    for r in recs {
        let rec = decode(r);
        exact.ok &= valid_kind(rec.kind)
            && valid_side(rec.side)
            && r[R_RESERVED] == [0, 0]
            && (rec.account as u64) < n_accounts
            && (rec.contra_account as u64) < n_accounts
            && (rec.instrument as u64) < n_instruments;
        exact.bad_fields += !fields_ok(&rec) as u64;
        exact.consecutive &= rec.seq == prev_seq.wrapping_add(1);
        prev_seq = rec.seq;
    }
    exact
}

/// How many of a block's records break a field rule (`fields_ok`).
#[cold]
fn count_bad_fields(block: &[u8]) -> u64 {
    let (recs, _) = block.as_chunks::<RECORD_BYTES>();
    recs.iter().filter(|r| !fields_ok(&decode(r))).count() as u64
}

/// Drops the whole pages of `range` from this process's resident set once
/// they have been read, so a replay holds state, not tape, in memory: the
/// page cache keeps them, and a later read faults them back in unchanged.
fn release(map: &Mmap, range: Range<usize>) {
    const PAGE: usize = 4096;
    let start = range.start.next_multiple_of(PAGE);
    let end = range.end / PAGE * PAGE;
    if end > start {
        // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED
        // discards nothing that cannot be read back: the next access to these
        // pages faults the same bytes in from the file.
        #[cfg(unix)]
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
    }
}

#[cold]
fn diagnose(recs: &[[u8; RECORD_BYTES]], first: usize, n_accounts: u64, n_instruments: u64) -> String {
    for (j, r) in recs.iter().enumerate() {
        let i = first + j;
        let at = HEADER_BYTES + i * RECORD_BYTES;
        let rec = decode(r);
        let problem = if !valid_kind(rec.kind) {
            Some(format!("invalid kind byte {:#04x} (expected N, C or T)", rec.kind))
        } else if !valid_side(rec.side) {
            Some(format!("invalid side byte {:#04x} (expected B or S)", rec.side))
        } else if rec.account as u64 >= n_accounts {
            Some(format!("account id {} is not below the {n_accounts} accounts in the symbol section", rec.account))
        } else if rec.contra_account as u64 >= n_accounts {
            Some(format!(
                "contra account id {} is not below the {n_accounts} accounts in the symbol section",
                rec.contra_account
            ))
        } else if rec.instrument as u64 >= n_instruments {
            Some(format!(
                "instrument id {} is not below the {n_instruments} instruments in the symbol section",
                rec.instrument
            ))
        } else if r[R_RESERVED].iter().any(|&b| b != 0) {
            Some(format!("reserved bytes {}..{} are not zero", at + R_RESERVED.start, at + R_RESERVED.end))
        } else {
            None
        };
        if let Some(p) = problem {
            return format!("record {i} at byte {at}: {p}");
        }
    }
    // Unreachable unless the fast check and this one disagree.
    format!("block starting at record {first}: invalid record")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(seq: u64, kind: u8, side: u8, account: u32, instrument: u32) -> TapeRecord {
        TapeRecord {
            seq,
            ts_ns: 1_700_000_000_000_000_000 + seq as i64 * 1000,
            order_id: seq * 7 + 1,
            contra_order_id: if kind == b'T' { seq * 7 + 3 } else { 0 },
            price: -5 + seq as i64 * 10_000,
            qty: 100 + seq,
            account,
            contra_account: if kind == b'T' { account ^ 1 } else { 0 },
            instrument,
            kind,
            side,
        }
    }

    fn sample(n: u64) -> Vec<TapeRecord> {
        (0..n)
            .map(|i| {
                let kind = [b'N', b'C', b'T'][i as usize % 3];
                let side = [b'B', b'S'][i as usize % 2];
                rec(10 + i * 2, kind, side, (i % 4) as u32, (i % 3) as u32)
            })
            .collect()
    }

    type NameList<'a> = &'a [&'a [u8]];
    /// Records, account names, instrument names, stats, block size.
    type ArbTape = (Vec<TapeRecord>, Vec<Vec<u8>>, Vec<Vec<u8>>, TapeStats, u32);

    const ACCOUNTS: &[&[u8]] = &[b"ACC0", b"ACC1", b"ACCOUNT_SIXTEEN_", b"A3"];
    const INSTRUMENTS: &[&[u8]] = &[b"AAPL", b"MSFT", b""];
    const STATS: TapeStats = TapeStats { rejected: 3, gaps: 2, missing_records: 17, lifecycle_checked: true };

    fn write(
        path: &Path,
        block_records: u32,
        recs: &[TapeRecord],
        accounts: &[&[u8]],
        instruments: &[&[u8]],
        stats: TapeStats,
    ) {
        let mut w = TapeWriter::with_block_records(path, block_records).expect("create");
        for r in recs {
            w.push(r).expect("push");
        }
        assert_eq!(w.records(), recs.len() as u64);
        w.finish(accounts, instruments, stats).expect("finish");
    }

    /// A sample tape of 10 records in blocks of 4 (so 3 blocks, the last
    /// short), returned as bytes for corruption tests.
    fn sample_bytes(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("day.tape");
        write(&path, 4, &sample(10), ACCOUNTS, INSTRUMENTS, STATS);
        let bytes = fs::read(&path).expect("read back");
        (path, bytes)
    }

    /// Recomputes every checksum so a test can plant a logical error that
    /// only the semantic checks can catch.
    fn reseal(b: &mut [u8]) {
        let block_bytes = u32_at(b, H_BLOCK_RECORDS) as usize * RECORD_BYTES;
        let table = u64_at(b, H_TABLE_OFFSET) as usize;
        let symbols = u64_at(b, H_SYMBOLS_OFFSET) as usize;
        // A zero block size is itself a planted error; leave the table be.
        let sums: Vec<u64> = if block_bytes == 0 {
            Vec::new()
        } else {
            b[HEADER_BYTES..table].chunks(block_bytes).map(xxh3_64).collect()
        };
        for (k, s) in sums.iter().enumerate() {
            put_u64(b, table + k * 8, *s);
        }
        let th = xxh3_64(&b[table..symbols]);
        put_u64(b, H_TABLE_HASH, th);
        let index = if u32_at(b, H_VERSION) == VERSION_NO_INDEX {
            b.len()
        } else {
            (u64_at(b, H_INDEX_OFFSET) as usize).clamp(symbols, b.len())
        };
        let sh = xxh3_64(&b[symbols..index]);
        put_u64(b, H_SYMBOLS_HASH, sh);
        if index < b.len() {
            let ih = xxh3_64(&b[index..]);
            put_u64(b, H_INDEX_HASH, ih);
        }
        let hh = xxh3_64(&b[..HEADER_HASHED]);
        put_u64(b, H_HEADER_HASH, hh);
    }

    /// Writes `bytes` to `path` and opens it with 1 to 4 verification
    /// threads, which must all refuse it with the same message.
    fn open_err(path: &Path, bytes: &[u8]) -> String {
        fs::write(path, bytes).expect("write corrupt tape");
        let msgs: Vec<String> = (1..=4)
            .map(|threads| match Tape::open_with_threads(path, threads) {
                Ok(t) => panic!("corrupt tape opened with {} records", t.len()),
                Err(e) => e.to_string(),
            })
            .collect();
        assert!(msgs.iter().all(|m| *m == msgs[0]), "{msgs:#?}");
        // Replay's way: open, then verify each block as it is reached. The
        // first problem it meets is the one a whole open reports.
        let streamed = match Tape::open_streaming(path) {
            Err(e) => e.to_string(),
            Ok(t) => (0..t.len().div_ceil(t.block_records()))
                .find_map(|b| t.verify_block(b).err())
                .unwrap_or_else(|| panic!("corrupt tape streamed through all {} records", t.len()))
                .to_string(),
        };
        assert_eq!(streamed, msgs[0]);
        msgs[0].clone()
    }

    fn check_round_trip(path: &Path, recs: &[TapeRecord], accounts: &[&[u8]], instruments: &[&[u8]], stats: TapeStats) {
        for threads in 1..=3 {
            let t = Tape::open_with_threads(path, threads).expect("open");
            assert_eq!(t.len(), recs.len());
            assert_eq!(t.is_empty(), recs.is_empty());
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(t.record(i), *r, "record {i}");
            }
            assert_eq!(t.accounts(), accounts);
            assert_eq!(t.instruments(), instruments);
            assert_eq!(t.stats(), stats);
        }
    }

    #[test]
    fn round_trip_small_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let recs = sample(10);
        write(&path, 4, &recs, ACCOUNTS, INSTRUMENTS, STATS);
        check_round_trip(&path, &recs, ACCOUNTS, INSTRUMENTS, STATS);
    }

    #[test]
    fn round_trip_default_blocks_across_a_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let recs = sample(BLOCK_RECORDS as u64 + 5);
        let mut w = TapeWriter::create(&path).expect("create");
        for r in &recs {
            w.push(r).expect("push");
        }
        w.finish(ACCOUNTS, INSTRUMENTS, STATS).expect("finish");
        check_round_trip(&path, &recs, ACCOUNTS, INSTRUMENTS, STATS);
        let bytes = fs::read(&path).expect("read");
        assert_eq!(u32_at(&bytes, H_BLOCK_RECORDS), BLOCK_RECORDS);
        assert_eq!(
            bytes.len(),
            // Two block sums; counts, then each name plus its length byte;
            // the index: its head, two entries, two one-byte bitmaps.
            HEADER_BYTES + recs.len() * RECORD_BYTES + 2 * 8 + 16 + (5 + 5 + 17 + 3) + (5 + 5 + 1) + (16 + 2 * 48 + 2)
        );
    }

    /// The index says, per block, what reading the block would: the same
    /// event-time summary as `verify_block`, and exactly the instruments
    /// its records name (brute force over every block and id).
    #[test]
    fn the_index_matches_every_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let names: Vec<Vec<u8>> = (0..40).map(|i| format!("I{i}").into_bytes()).collect();
        let instruments: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        // Blocks of 7: some hold one or two instruments (id lists), the
        // middle ones many (bitmaps); times jump back and forth.
        let recs: Vec<TapeRecord> = (0..90u64)
            .map(|i| {
                let instrument = if i < 21 { (i / 14) as u32 } else { (i * 7 % 40) as u32 };
                let ts_ns = 1_000 + (i as i64 * 37 % 11) * 1_000 - (i as i64 % 3) * 5_000;
                TapeRecord { instrument, ts_ns, qty: if i == 30 { 0 } else { 1 }, ..rec(i + 1, b'N', b'B', 0, 0) }
            })
            .collect();
        write(&path, 7, &recs, ACCOUNTS, &instruments, STATS);
        let tape = Tape::open(&path).expect("open");
        let index = tape.index().expect("a new tape has an index");
        assert_eq!(index.blocks(), tape.blocks());
        assert_eq!(tape.blocks(), 13);
        for b in 0..tape.blocks() {
            let in_block = &recs[b * 7..((b + 1) * 7).min(recs.len())];
            let check = index.block(b).check;
            let verified = tape.verify_block(b).expect("verify");
            assert_eq!(check.bad_fields, verified.bad_fields, "block {b}");
            let folded = (verified.first_ts, verified.min_ts, verified.max_ts, verified.max_jump);
            assert_eq!((check.first_ts, check.min_ts, check.max_ts, check.max_jump), folded, "block {b}");
            let seqs = (in_block[0].seq, in_block[in_block.len() - 1].seq, true);
            assert_eq!((verified.first_seq, verified.last_seq, verified.consecutive), seqs, "block {b}");
            let times: Vec<i64> = in_block.iter().map(|r| r.ts_ns).collect();
            assert_eq!(check.first_ts, times[0], "block {b}");
            assert_eq!(check.min_ts, *times.iter().min().unwrap(), "block {b}");
            assert_eq!(check.max_ts, *times.iter().max().unwrap(), "block {b}");
            let mut running = times[0];
            let mut jump = i64::MIN;
            for &t in &times {
                jump = jump.max(t - running);
                running = running.max(t);
            }
            assert_eq!(check.max_jump, jump, "block {b}");
            for id in 0..instruments.len() as u32 {
                let there = in_block.iter().any(|r| r.instrument == id);
                assert_eq!(index.has_instrument(b, id), there, "block {b} instrument {id}");
            }
        }
        assert_eq!(index.block(4).check.bad_fields, 1, "the zero qty at record 30");
    }

    /// A tape written before the index (format version 1) still opens and
    /// reads; it has no index.
    #[test]
    fn version_1_tapes_read_without_an_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());
        let index_at = u64_at(&bytes, H_INDEX_OFFSET) as usize;
        let mut b = bytes[..index_at].to_vec();
        put_u32(&mut b, H_VERSION, 1);
        put_u64(&mut b, H_FILE_BYTES, index_at as u64);
        b[H_RESERVED_V1].fill(0);
        reseal(&mut b);
        fs::write(&path, &b).expect("write v1");
        let tape = Tape::open(&path).expect("a version 1 tape opens");
        assert!(tape.index().is_none());
        assert_eq!(tape.len(), 10);
        assert_eq!(tape.record(9), sample(10)[9]);
        // Version 1 keeps all of bytes 96..120 reserved.
        b[100] = 1;
        reseal(&mut b);
        assert!(open_err(&path, &b).contains("header bytes 96..120 are reserved but not zero"));
    }

    #[test]
    fn extreme_field_values_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.tape");
        let recs = [
            TapeRecord {
                seq: 0,
                ts_ns: i64::MIN,
                order_id: u64::MAX,
                contra_order_id: 0,
                price: i64::MIN,
                qty: u64::MAX,
                account: 0,
                contra_account: 0,
                instrument: 0,
                kind: b'N',
                side: b'B',
            },
            TapeRecord {
                seq: u64::MAX,
                ts_ns: i64::MAX,
                order_id: 0,
                contra_order_id: u64::MAX,
                price: i64::MAX,
                qty: 0,
                account: 1,
                contra_account: 1,
                instrument: 0,
                kind: b'T',
                side: b'S',
            },
        ];
        write(&path, 1, &recs, &[b"a", b"b"], &[b"i"], TapeStats::default());
        check_round_trip(&path, &recs, &[b"a", b"b"], &[b"i"], TapeStats::default());
    }

    #[test]
    fn empty_tapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: &[(NameList, NameList)] = &[(&[], &[]), (ACCOUNTS, INSTRUMENTS)];
        for (k, (accounts, instruments)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("empty{k}.tape"));
            write(&path, BLOCK_RECORDS, &[], accounts, instruments, TapeStats::default());
            let t = Tape::open(&path).expect("open empty");
            assert_eq!(t.len(), 0);
            assert!(t.is_empty());
            assert_eq!(t.accounts(), *accounts);
            assert_eq!(t.instruments(), *instruments);
            assert_eq!(t.stats(), TapeStats::default());
        }
    }

    #[test]
    fn truncation_is_refused_everywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());
        let table = u64_at(&bytes, H_TABLE_OFFSET) as usize;
        let symbols = u64_at(&bytes, H_SYMBOLS_OFFSET) as usize;
        let cases: &[(usize, &str)] = &[
            (0, "truncated: the file is 0 bytes, shorter than the 128-byte header"),
            (5, "truncated: the file is 5 bytes"),
            (64, "truncated: the file is 64 bytes"),
            (
                HEADER_BYTES,
                "header promises 10 records (640 bytes of records) but the file ends at byte 128, inside record 0",
            ),
            (HEADER_BYTES + 3 * 64 + 10, "but the file ends at byte 330, inside record 3"),
            (table - 1, "inside record 9"),
            (table, "the file ends at byte 768, inside the block checksum table (bytes 768..792)"),
            (table + 12, "the file ends at byte 780, inside the block checksum table"),
            (symbols, "the file ends at byte 792, inside the symbol section (bytes 792.."),
            (symbols + 20, "the file ends at byte 812, inside the symbol section"),
            (u64_at(&bytes, H_INDEX_OFFSET) as usize - 1, "inside the symbol section"),
            (bytes.len() - 1, "inside the block index"),
        ];
        for (cut, want) in cases {
            let msg = open_err(&path, &bytes[..*cut]);
            assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
            assert!(msg.contains(want), "cut at {cut}: {msg}");
            assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        }
    }

    /// Byte flips that the checksums catch, each reported with its range.
    #[test]
    fn flipped_bytes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());
        let table = u64_at(&bytes, H_TABLE_OFFSET) as usize;
        let symbols = u64_at(&bytes, H_SYMBOLS_OFFSET) as usize;
        let index = u64_at(&bytes, H_INDEX_OFFSET) as usize;
        let end = bytes.len();
        let block = 4 * RECORD_BYTES;
        let cases: Vec<(usize, String)> = vec![
            (H_COUNT, "corrupt header (bytes 0..128): checksum mismatch".into()),
            (H_HEADER_HASH + 3, "corrupt header (bytes 0..128): checksum mismatch".into()),
            (HEADER_BYTES, "corrupt block 0 (bytes 128..384): checksum mismatch".into()),
            (HEADER_BYTES + block + 70, "corrupt block 1 (bytes 384..640): checksum mismatch".into()),
            (table - 1, "corrupt block 2 (bytes 640..768): checksum mismatch".into()),
            (table + 9, format!("corrupt block checksum table (bytes {table}..{symbols}): checksum mismatch")),
            (symbols + 17, format!("corrupt symbol section (bytes {symbols}..{index}): checksum mismatch")),
            (index - 1, format!("corrupt symbol section (bytes {symbols}..{index}): checksum mismatch")),
            (index + 3, format!("corrupt block index (bytes {index}..{end}): checksum mismatch")),
            (end - 1, format!("corrupt block index (bytes {index}..{end}): checksum mismatch")),
        ];
        for (at, want) in cases {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            let msg = open_err(&path, &b);
            assert_eq!(msg, format!("{}: {want}", path.display()), "flip at {at}");
        }
    }

    #[test]
    fn bad_magic_version_and_trailing_data_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());

        let mut b = bytes.clone();
        b[..8].copy_from_slice(b"seq,ts_n");
        let msg = open_err(&path, &b);
        assert!(msg.contains("bad magic \"seq,ts_n\" at byte 0"), "{msg}");
        // Even a file too short to hold a header is named for its magic.
        let msg = open_err(&path, b"hello, world");
        assert!(msg.contains("bad magic"), "{msg}");

        // The zeroed header an interrupted writer leaves behind.
        let mut b = bytes.clone();
        b[..HEADER_BYTES].fill(0);
        assert!(open_err(&path, &b).contains("bad magic"));

        let mut b = bytes.clone();
        put_u32(&mut b, H_VERSION, 3);
        let msg = open_err(&path, &b);
        assert!(msg.contains("unsupported format version 3"), "{msg}");

        let mut b = bytes.clone();
        b.extend_from_slice(b"junk");
        let msg = open_err(&path, &b);
        assert!(
            msg.contains(&format!("4 bytes of unexpected data after the end of the tape at byte {}", bytes.len())),
            "{msg}"
        );
    }

    /// Logical corruption behind valid checksums: the semantic checks must
    /// name the record.
    #[test]
    fn invalid_records_with_valid_checksums_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());
        let at = |i: usize, field: usize| HEADER_BYTES + i * RECORD_BYTES + field;
        type Plant = Box<dyn Fn(&mut [u8])>;
        let cases: Vec<(Plant, String)> = vec![
            (
                Box::new(move |b| b[at(5, R_KIND)] = b'X'),
                format!("record 5 at byte {}: invalid kind byte 0x58 (expected N, C or T)", at(5, 0)),
            ),
            (Box::new(move |b| b[at(0, R_SIDE)] = 0), format!("record 0 at byte {}: invalid side byte 0x00", at(0, 0))),
            (
                Box::new(move |b| put_u32(b, at(9, R_ACCOUNT), 4)),
                "record 9 at byte 704: account id 4 is not below the 4 accounts".into(),
            ),
            (
                Box::new(move |b| put_u32(b, at(2, R_CONTRA_ACCOUNT), 99)),
                "record 2 at byte 256: contra account id 99 is not below the 4 accounts".into(),
            ),
            (
                Box::new(move |b| put_u32(b, at(7, R_INSTRUMENT), 3)),
                "record 7 at byte 576: instrument id 3 is not below the 3 instruments".into(),
            ),
            (
                // Of two problems, the first in the file is the one named.
                Box::new(move |b| {
                    b[at(9, R_KIND)] = b'x';
                    b[at(1, R_SIDE)] = b'b';
                }),
                "record 1 at byte 192: invalid side byte 0x62".into(),
            ),
            (Box::new(move |b| b[at(3, 63)] = 1), "record 3 at byte 320: reserved bytes 382..384 are not zero".into()),
        ];
        for (plant, want) in cases {
            let mut b = bytes.clone();
            plant(&mut b);
            reseal(&mut b);
            let msg = open_err(&path, &b);
            assert!(msg.contains(&want), "want {want:?}, got {msg:?}");
        }
        // And the untouched bytes, resealed, still open.
        let mut b = bytes.clone();
        reseal(&mut b);
        assert_eq!(b, bytes);
        // A repeated or backward seq is a bad record, rejected by the feed
        // (`native_feed`), not a damaged tape: it opens.
        for (i, seq) in [(4, 16), (6, 5), (8, 5)] {
            let mut b = bytes.clone();
            put_u64(&mut b, at(i, R_SEQ), seq);
            reseal(&mut b);
            std::fs::write(&path, &b).expect("write");
            assert_eq!(Tape::open(&path).expect("opens").record(i).seq, seq);
        }
    }

    /// A tape naming more accounts than a feed may intern is refused at
    /// open, as a CSV tape's extra accounts would be rejected.
    #[test]
    fn more_names_than_the_limits_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("many.tape");
        let limit = crate::ingest::validate::Limits::default().accounts;
        let names: Vec<Vec<u8>> = (0..=limit).map(|i| format!("A{i}").into_bytes()).collect();
        let names: Vec<&[u8]> = names.iter().map(|n| &n[..]).collect();
        let mut writer = TapeWriter::create(&path).expect("create");
        writer.push(&rec(1, b'N', b'B', 0, 0)).expect("push");
        writer.finish(&names, &[b"X"], TapeStats::default()).expect("finish");
        let e = Tape::open(&path).expect_err("too many accounts").to_string();
        assert!(e.contains(&format!("{} accounts, more than the {limit} a feed may have", limit + 1)), "{e}");
    }

    #[test]
    fn inconsistent_headers_and_symbols_with_valid_checksums_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = sample_bytes(dir.path());
        let symbols = u64_at(&bytes, H_SYMBOLS_OFFSET) as usize;
        type Plant = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Plant, &str)> = vec![
            (Box::new(|b| put_u64(b, H_COUNT, 11)), "header is inconsistent"),
            (Box::new(|b| put_u64(b, H_COUNT, u64::MAX)), "header is inconsistent"),
            (Box::new(|b| put_u32(b, H_BLOCK_RECORDS, 0)), "block size is 0 records"),
            (Box::new(|b| put_u32(b, H_RECORD_BYTES, 72)), "72-byte records"),
            (Box::new(|b| b[114] = 1), "header flags 0x10001 at byte 112: bits this build does not know"),
            (Box::new(|b| b[112] = 3), "header flags 0x3 at byte 112: bits this build does not know"),
            (Box::new(move |b| put_u64(b, symbols, 5)), "ends at instrument 2 of 3"),
            (Box::new(move |b| put_u64(b, symbols + 8, 60_000)), "ends at instrument 3 of 60000"),
            (Box::new(move |b| put_u64(b, symbols + 8, 1_000_000)), "1000000 instruments, more than the 65536"),
            (Box::new(move |b| put_u64(b, symbols + 8, 2)), "symbol section: 1 bytes of unexpected data"),
            (Box::new(move |b| b[symbols + 17] = 0xC3), "account 0's name at byte"),
        ];
        for (plant, want) in cases {
            let mut b = bytes.clone();
            plant(&mut b);
            reseal(&mut b);
            let msg = open_err(&path, &b);
            assert!(msg.contains(want), "want {want:?}, got {msg:?}");
        }
    }

    #[test]
    fn finish_renames_partial_into_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let partial = dir.path().join("day.tape.partial");
        let mut w = TapeWriter::create(&path).expect("create");
        w.push(&sample(1)[0]).expect("push");
        assert!(partial.exists());
        assert!(!path.exists());
        w.finish(ACCOUNTS, INSTRUMENTS, STATS).expect("finish");
        assert!(!partial.exists());
        assert!(path.exists());
        assert_eq!(Tape::open(&path).expect("open").len(), 1);
    }

    #[test]
    fn unfinished_or_failed_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("day.tape");
        let partial = dir.path().join("day.tape.partial");

        let mut w = TapeWriter::create(&path).expect("create");
        for r in &sample(100) {
            w.push(r).expect("push");
        }
        drop(w);
        assert!(!path.exists());
        assert!(!partial.exists());

        // A finish that fails validation must clean up the same way.
        let mut w = TapeWriter::create(&path).expect("create");
        w.push(&rec(1, b'N', b'B', 7, 0)).expect("push");
        let e = w.finish(ACCOUNTS, INSTRUMENTS, STATS).expect_err("account 7 has no name");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("account id 7"), "{e}");
        assert!(!path.exists());
        assert!(!partial.exists());
    }

    #[test]
    fn writer_refuses_what_the_reader_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.tape");
        let cases: &[(TapeRecord, &str)] = &[
            (rec(5, b'X', b'B', 0, 0), "tape record 1: invalid kind byte 0x58"),
            (rec(5, b'N', b'b', 0, 0), "tape record 1: invalid side byte 0x62"),
            (rec(1, b'N', b'B', 0, 0), "tape record 1: seq 1 is not greater than the previous record's seq 1"),
        ];
        for (bad, want) in cases {
            let mut w = TapeWriter::create(&path).expect("create");
            w.push(&rec(1, b'N', b'B', 0, 0)).expect("push");
            let e = w.push(bad).expect_err("bad record");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(want), "{e}");
        }

        let names: &[(NameList, NameList, &str)] = &[
            (&[b"SEVENTEEN_BYTES__"], &[b"I"], "account 0 name"),
            (&[b"A"], &[b"I", "caf\u{e9}".as_bytes()], "instrument 1 name"),
            (&[b"A"], &[], "instrument id 0"),
        ];
        for (accounts, instruments, want) in names {
            let mut w = TapeWriter::create(&path).expect("create");
            w.push(&rec(1, b'N', b'B', 0, 0)).expect("push");
            let e = w.finish(accounts, instruments, STATS).expect_err("bad names");
            assert!(e.to_string().contains(want), "{e}");
            assert!(!path.exists());
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.tape");
        let e = Tape::open(&path).expect_err("missing");
        assert!(e.to_string().starts_with(&format!("{}: cannot open: ", path.display())));
        assert!(std::error::Error::source(&e).is_some());
    }

    fn arb_tape() -> impl Strategy<Value = ArbTape> {
        let name = proptest::collection::vec(0x20u8..0x7f, 0..=NAME_MAX);
        (
            proptest::collection::vec(name.clone(), 1..6),
            proptest::collection::vec(name, 1..6),
            proptest::collection::vec(
                (
                    1u64..1_000,
                    any::<i64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<i64>(),
                    any::<u64>(),
                    (any::<u32>(), any::<u32>(), any::<u32>()),
                    prop::sample::select(vec![b'N', b'C', b'T']),
                    prop::sample::select(vec![b'B', b'S']),
                ),
                0..60,
            ),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            1u32..9,
        )
            .prop_map(|(accounts, instruments, raw, (rejected, gaps, missing), block)| {
                let mut seq = 0u64;
                let recs = raw
                    .into_iter()
                    .map(|(step, ts_ns, order_id, contra_order_id, price, qty, (a, c, i), kind, side)| {
                        seq += step;
                        TapeRecord {
                            seq,
                            ts_ns,
                            order_id,
                            contra_order_id,
                            price,
                            qty,
                            account: a % accounts.len() as u32,
                            contra_account: c % accounts.len() as u32,
                            instrument: i % instruments.len() as u32,
                            kind,
                            side,
                        }
                    })
                    .collect();
                let stats = TapeStats { rejected, gaps, missing_records: missing, lifecycle_checked: gaps % 2 == 0 };
                (recs, accounts, instruments, stats, block)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn prop_round_trip((recs, accounts, instruments, stats, block) in arb_tape()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("p.tape");
            let accounts: Vec<&[u8]> = accounts.iter().map(|n| n.as_slice()).collect();
            let instruments: Vec<&[u8]> = instruments.iter().map(|n| n.as_slice()).collect();
            write(&path, block, &recs, &accounts, &instruments, stats);
            check_round_trip(&path, &recs, &accounts, &instruments, stats);

            // Any single flipped bit anywhere in the file is refused.
            let bytes = fs::read(&path).expect("read");
            let bit = (recs.len() * 131 + accounts.len() * 17) % (bytes.len() * 8);
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            fs::write(&path, &b).expect("write");
            prop_assert!(Tape::open(&path).is_err(), "bit {} flipped and still opened", bit);
        }
    }
}
