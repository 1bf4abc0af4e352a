//! The native tape's block index: per checksum block (4096 records,
//! 256 KiB), the instruments it holds and the event times of its records.
//! `TapeWriter` builds it as records are pushed and stores it as the tape's
//! last section (format version 2, `native.rs`); readers use it to leave
//! whole blocks unread (but for their seqs, which the index does not fold)
//! when a filter (instrument, time) cannot match any record in them.
//!
//! A tape written before the index (version 1) has none: `Tape::index`
//! returns `None`, which readers report ("no index: every block read")
//! rather than refuse.
//!
//! # Layout
//!
//! ```text
//! 0    u64  block count B (equal to the checksum table's)
//! 8    u64  instrument count (the symbol section's)
//! 16   B entries of 48 bytes:
//!        i64 first_ts, i64 min_ts, i64 max_ts, i64 max_jump,
//!        u64 bad_fields,
//!        u32 set offset (bytes into the set area), u16 set length (bytes),
//!        u8  set kind (0: sorted u32 ids, 1: bitmap over all instruments),
//!        u8  reserved, zero
//! 16+48B  the set area
//! ```
//!
//! The time fields (`BlockCheck`) are folded over the block's records as a
//! reader would see them, so a feed can move its event-time checks past a
//! skipped block as if it had read it. Each block's set takes the smaller
//! of its two encodings: a block of a busy day holds hundreds of instruments
//! (a bitmap of `instruments / 8` bytes), a quiet or sorted tape a few ids.

use super::native::TapeRecord;

/// What the index says of a block's records: its malformed-field count and
/// its event times in record order (the first, the extremes, the largest
/// step forward), enough to judge a skipped block as the feed would have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCheck {
    pub bad_fields: u64,
    pub first_ts: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub max_jump: i64,
}

const ENTRY_BYTES: usize = 48;
const HEAD_BYTES: usize = 16;
const SET_IDS: u8 = 0;
const SET_BITMAP: u8 = 1;

/// One block's summary, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockSummary {
    pub check: BlockCheck,
    set_offset: u32,
    set_len: u16,
    set_kind: u8,
}

/// A parsed index: per block its summary and instrument set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapeIndex {
    blocks: Vec<BlockSummary>,
    sets: Vec<u8>,
    instruments: u64,
}

impl TapeIndex {
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn block(&self, b: usize) -> &BlockSummary {
        &self.blocks[b]
    }

    /// Whether block `b` holds a record of instrument `id`.
    pub fn has_instrument(&self, b: usize, id: u32) -> bool {
        let s = &self.blocks[b];
        let set = &self.sets[s.set_offset as usize..s.set_offset as usize + s.set_len as usize];
        match s.set_kind {
            SET_BITMAP => set.get(id as usize / 8).is_some_and(|byte| byte >> (id % 8) & 1 == 1),
            _ => {
                let (ids, _) = set.as_chunks::<4>();
                ids.binary_search_by_key(&id, |b| u32::from_le_bytes(*b)).is_ok()
            }
        }
    }

    /// Whether block `b` holds any of `ids` (empty: no instrument filter).
    pub fn has_any(&self, b: usize, ids: &[u32]) -> bool {
        ids.is_empty() || ids.iter().any(|&id| self.has_instrument(b, id))
    }

    /// Parses and checks an index section whose checksum has matched; the
    /// counts must agree with the tape's.
    pub fn parse(bytes: &[u8], blocks: u64, instruments: u64) -> Result<TapeIndex, String> {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes.len() < HEAD_BYTES {
            return Err(format!("index section is {} bytes, shorter than its 16-byte head", bytes.len()));
        }
        let (b, n) = (u64_at(0), u64_at(8));
        if b != blocks || n != instruments {
            return Err(format!(
                "index covers {b} blocks and {n} instruments, the tape has {blocks} blocks and {instruments} instruments"
            ));
        }
        let entries_end = usize::try_from(b)
            .ok()
            .and_then(|b| b.checked_mul(ENTRY_BYTES))
            .and_then(|e| e.checked_add(HEAD_BYTES))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("index section ({} bytes) is too short for {b} block entries", bytes.len()))?;
        let sets = bytes[entries_end..].to_vec();
        let mut out = Vec::with_capacity(b as usize);
        for (i, e) in bytes[HEAD_BYTES..entries_end].chunks_exact(ENTRY_BYTES).enumerate() {
            let i64_at = |at: usize| i64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
            let s = BlockSummary {
                check: BlockCheck {
                    first_ts: i64_at(0),
                    min_ts: i64_at(8),
                    max_ts: i64_at(16),
                    max_jump: i64_at(24),
                    bad_fields: i64_at(32) as u64,
                },
                set_offset: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
                set_len: u16::from_le_bytes(e[44..46].try_into().expect("2 bytes")),
                set_kind: e[46],
            };
            let end = s.set_offset as usize + s.set_len as usize;
            let bitmap_len = instruments.div_ceil(8) as usize;
            let shape_ok = match s.set_kind {
                SET_IDS => s.set_len.is_multiple_of(4),
                SET_BITMAP => s.set_len as usize == bitmap_len,
                _ => false,
            };
            if end > sets.len() || !shape_ok || e[47] != 0 || s.check.min_ts > s.check.max_ts {
                return Err(format!("index entry of block {i} is malformed"));
            }
            out.push(s);
        }
        Ok(TapeIndex { blocks: out, sets, instruments: n })
    }
}

/// Builds the index while a tape is written: `push` per record (a few
/// loads and stores), `end_block` when a block is flushed.
#[derive(Default)]
pub struct IndexBuilder {
    /// Instruments of the current block, one bit each (grown as ids grow).
    bits: Vec<u64>,
    /// Distinct instruments in the current block.
    distinct: u32,
    check: Option<BlockCheck>,
    entries: Vec<u8>,
    sets: Vec<u8>,
    blocks: u64,
}

impl IndexBuilder {
    #[inline]
    pub fn push(&mut self, rec: &TapeRecord) {
        let word = rec.instrument as usize / 64;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (rec.instrument % 64);
        self.distinct += (self.bits[word] & bit == 0) as u32;
        self.bits[word] |= bit;
        let ts = rec.ts_ns;
        let fields_ok = super::native::fields_ok(rec);
        // The same fold as `check_blocks`, so a skipped block moves a
        // feed's event-time checks exactly as reading it would.
        let c = self.check.get_or_insert(BlockCheck {
            bad_fields: 0,
            first_ts: ts,
            min_ts: i64::MAX,
            max_ts: ts,
            max_jump: i64::MIN,
        });
        c.bad_fields += (!fields_ok) as u64;
        c.max_jump = c.max_jump.max(ts.saturating_sub(c.max_ts));
        c.min_ts = c.min_ts.min(ts);
        c.max_ts = c.max_ts.max(ts);
    }

    /// Closes the current block's entry. `instruments` bounds the ids the
    /// tape will name; the bitmap form needs it, so it is chosen at the
    /// end (`finish`) for blocks whose list would be larger.
    pub fn end_block(&mut self) {
        let Some(check) = self.check.take() else { return };
        let offset = self.sets.len() as u32;
        // Ids now; `finish` rewrites a list as a bitmap where that is smaller.
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let id = w as u32 * 64 + word.trailing_zeros();
                self.sets.extend_from_slice(&id.to_le_bytes());
                word &= word - 1;
            }
        }
        let mut e = [0u8; ENTRY_BYTES];
        e[0..8].copy_from_slice(&check.first_ts.to_le_bytes());
        e[8..16].copy_from_slice(&check.min_ts.to_le_bytes());
        e[16..24].copy_from_slice(&check.max_ts.to_le_bytes());
        e[24..32].copy_from_slice(&check.max_jump.to_le_bytes());
        e[32..40].copy_from_slice(&check.bad_fields.to_le_bytes());
        e[40..44].copy_from_slice(&offset.to_le_bytes());
        // Lengths are fixed in `finish`; the distinct count is kept here.
        e[44..48].copy_from_slice(&self.distinct.to_le_bytes());
        self.entries.extend_from_slice(&e);
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.distinct = 0;
        self.blocks += 1;
    }

    /// The section's bytes, for a tape of `instruments` instruments.
    pub fn finish(mut self, instruments: u64) -> Vec<u8> {
        self.end_block();
        let bitmap_len = instruments.div_ceil(8) as usize;
        let mut out = Vec::with_capacity(HEAD_BYTES + self.entries.len() + self.sets.len());
        out.extend_from_slice(&self.blocks.to_le_bytes());
        out.extend_from_slice(&instruments.to_le_bytes());
        let mut sets = Vec::with_capacity(self.sets.len());
        for e in self.entries.chunks_exact_mut(ENTRY_BYTES) {
            let offset = u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")) as usize;
            let distinct = u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")) as usize;
            let ids = &self.sets[offset..offset + distinct * 4];
            let new_offset = sets.len() as u32;
            // A block holds at most `u16::MAX / 4` distinct instruments
            // (TapeWriter's blocks hold 4096 records); a bitmap past
            // `u16::MAX` bytes (over 524,280 instruments) is never used.
            assert!(distinct * 4 <= u16::MAX as usize, "{distinct} instruments in one block");
            let (len, kind) = if distinct * 4 <= bitmap_len || bitmap_len > u16::MAX as usize {
                sets.extend_from_slice(ids);
                (distinct * 4, SET_IDS)
            } else {
                let mut bitmap = vec![0u8; bitmap_len];
                for id in ids.as_chunks::<4>().0 {
                    let id = u32::from_le_bytes(*id) as usize;
                    bitmap[id / 8] |= 1 << (id % 8);
                }
                sets.extend_from_slice(&bitmap);
                (bitmap_len, SET_BITMAP)
            };
            e[40..44].copy_from_slice(&new_offset.to_le_bytes());
            e[44..46].copy_from_slice(&(len as u16).to_le_bytes());
            e[46] = kind;
            e[47] = 0;
        }
        out.extend_from_slice(&self.entries);
        out.extend_from_slice(&sets);
        out
    }
}
