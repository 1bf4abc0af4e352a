//! The FEED.md interchange tape: a streaming CSV decoder that never holds the
//! tape in memory. It reads fixed-size chunks, splits lines in place and
//! parses fields by hand (no allocation per record), then hands each record
//! to the shared validator.

use super::validate::{RawRecord, RejectReason, Validator};
use super::{Feed, FeedCheckpoint, FeedError, FeedStats, RejectLog};
use crate::event::{Event, Kind, Side, parse_px};
use crate::symbols::{valid_account, valid_instrument};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";
const COLUMNS: usize = 11;
const CHUNK_BYTES: usize = 4 << 20;
/// A line longer than this cannot be a FEED.md record; it is rejected and skipped.
pub const MAX_LINE_BYTES: usize = 4096;

pub struct CsvFeed<R: Read> {
    reader: R,
    path: PathBuf,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// Line number of the next line to be read (the header is line 1).
    line_no: u64,
    /// Inside an over-long line: skip bytes until its newline.
    skipping: bool,
    validator: Validator,
    rejects: RejectLog,
    /// File offset of `buf[0]`: where a checkpoint's position is measured from.
    buf_offset: u64,
}

impl<R: Read> CsvFeed<R> {
    /// Reads and checks the header; a tape without the FEED.md header is refused.
    pub fn new(reader: R, path: &Path, validator: Validator, rejects: RejectLog) -> Result<CsvFeed<R>, FeedError> {
        let mut feed = CsvFeed {
            reader,
            path: path.to_path_buf(),
            buf: vec![0u8; CHUNK_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            line_no: 1,
            skipping: false,
            validator,
            rejects,
            buf_offset: 0,
        };
        let header = loop {
            if let Some(newline) = feed.buf[feed.start..feed.end].iter().position(|&b| b == b'\n') {
                let line = &feed.buf[feed.start..feed.start + newline];
                feed.start += newline + 1;
                break line.to_vec();
            }
            if feed.eof {
                let line = feed.buf[feed.start..feed.end].to_vec();
                feed.start = feed.end;
                break line;
            }
            if feed.end - feed.start > MAX_LINE_BYTES {
                break feed.buf[feed.start..feed.end].to_vec();
            }
            feed.fill()?;
        };
        let header = header.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&header);
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        if header != HEADER.as_bytes() {
            let shown = String::from_utf8_lossy(&header[..header.len().min(200)]).into_owned();
            return Err(
                feed.error(format!("line 1: not a FEED.md tape: the header must be `{HEADER}`, found `{shown}`"))
            );
        }
        feed.line_no = 2;
        Ok(feed)
    }

    fn error(&self, message: String) -> FeedError {
        FeedError { path: self.path.clone(), message }
    }

    /// Resumes a tape at a checkpoint: `reader` is already positioned at
    /// `offset`, the start of line `line_no`.
    pub fn resume(
        reader: R,
        path: &Path,
        validator: Validator,
        rejects: RejectLog,
        offset: u64,
        line_no: u64,
    ) -> CsvFeed<R> {
        CsvFeed {
            reader,
            path: path.to_path_buf(),
            buf: vec![0u8; CHUNK_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            line_no,
            skipping: false,
            validator,
            rejects,
            buf_offset: offset,
        }
    }

    /// Moves the unread tail to the front and reads more.
    fn fill(&mut self) -> Result<(), FeedError> {
        self.buf_offset += self.start as u64;
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.end += n;
                    // One read per chunk is enough to make progress; do
                    // not block for a full buffer on a slow pipe.
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(format!("read failed after line {}: {e}", self.line_no - 1))),
            }
        }
        Ok(())
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

    /// Returns what `emit` returned (true when no record was accepted).
    fn handle_line(
        &mut self,
        line_start: usize,
        line_end: usize,
        emit: &mut impl FnMut(&Event) -> bool,
    ) -> Result<bool, FeedError> {
        let line_no = self.line_no;
        self.line_no += 1;
        let mut line = &self.buf[line_start..line_end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        self.validator.stats.records_read += 1;
        let outcome = match parse_line(line) {
            Ok(raw) => self.validator.check_seq(raw.seq, line_no).and_then(|()| self.validator.accept(&raw)),
            Err(reason) => {
                // A malformed record whose seq is readable still holds its
                // place in the sequence: without this, it would also be
                // reported as a one-record gap.
                if let Some(seq) = line.split(|&b| b == b',').next().and_then(parse_u64) {
                    let _ = self.validator.check_seq(seq, line_no);
                }
                Err(reason)
            }
        };
        match outcome {
            Ok(event) => {
                self.validator.stats.accepted += 1;
                Ok(emit(&event))
            }
            Err(reason) => {
                self.validator.stats.rejected += 1;
                self.rejects.write(line_no, &reason, line)?;
                Ok(true)
            }
        }
    }
}

impl<R: Read> Feed for CsvFeed<R> {
    fn pump(&mut self, emit: &mut impl FnMut(&Event)) -> Result<bool, FeedError> {
        self.pump_until(&mut |event| {
            emit(event);
            true
        })
    }

    fn checkpoint(&mut self, w: &mut crate::checkpoint::codec::Writer<'_>) -> Result<FeedCheckpoint, FeedError> {
        let offset = self.buf_offset + self.start as u64;
        w.u64(offset);
        w.u64(self.line_no);
        self.validator.snapshot(w);
        Ok(FeedCheckpoint { offset, line_no: self.line_no, rejects: self.rejects.committed()? })
    }

    fn pump_until(&mut self, emit: &mut impl FnMut(&Event) -> bool) -> Result<bool, FeedError> {
        if self.start == self.end && !self.eof {
            self.fill()?;
        }
        loop {
            let unread = &self.buf[self.start..self.end];
            let Some(newline) = memchr::memchr(b'\n', unread) else { break };
            let (line_start, line_end) = (self.start, self.start + newline);
            self.start = line_end + 1;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if !self.handle_line(line_start, line_end, emit)? {
                return Ok(true);
            }
        }
        let pending = self.end - self.start;
        if pending > MAX_LINE_BYTES && !self.skipping {
            // An over-long line: reject what we have and skip to its end.
            let line_no = self.line_no;
            self.line_no += 1;
            self.validator.stats.records_read += 1;
            self.validator.stats.rejected += 1;
            let shown = &self.buf[self.start..self.start + 200];
            self.rejects.write(line_no, &RejectReason::LineTooLong(MAX_LINE_BYTES), shown)?;
            self.skipping = true;
        }
        if self.skipping {
            self.start = self.end;
        }
        if self.eof {
            if self.start < self.end && !self.skipping {
                // A last line without a newline: still a record.
                let (line_start, line_end) = (self.start, self.end);
                self.start = self.end;
                self.handle_line(line_start, line_end, emit)?;
            }
            self.rejects.finish()?;
            return Ok(false);
        }
        self.fill()?;
        Ok(true)
    }

    fn stats(&self) -> FeedStats {
        self.validator.stats.clone()
    }
}

/// Splits and parses one line (without its newline) into a raw record.
pub fn parse_line(line: &[u8]) -> Result<RawRecord<'_>, RejectReason> {
    if line.is_empty() {
        return Err(RejectReason::EmptyLine);
    }
    let mut fields: [&[u8]; COLUMNS] = [&[]; COLUMNS];
    let mut count = 0;
    let mut start = 0;
    for comma in memchr::memchr_iter(b',', line) {
        if count < COLUMNS {
            fields[count] = &line[start..comma];
        }
        count += 1;
        start = comma + 1;
    }
    if count < COLUMNS {
        fields[count] = &line[start..];
    }
    count += 1;
    if count != COLUMNS {
        return Err(RejectReason::ColumnCount(count));
    }
    let seq = parse_u64(fields[0]).ok_or(RejectReason::BadField("seq"))?;
    let ts_ns = parse_i64(fields[1]).ok_or(RejectReason::BadField("ts_ns"))?;
    let kind = match fields[2] {
        b"N" => Kind::New,
        b"C" => Kind::Cancel,
        b"T" => Kind::Trade,
        _ => return Err(RejectReason::BadField("kind")),
    };
    let order_id = parse_u64(fields[3]).ok_or(RejectReason::BadField("order_id"))?;
    let account = fields[4];
    if !valid_account(account) {
        return Err(RejectReason::BadField("account"));
    }
    let instrument = fields[5];
    if !valid_instrument(instrument) {
        return Err(RejectReason::BadField("instrument"));
    }
    let side = match fields[6] {
        b"B" => Side::Buy,
        b"S" => Side::Sell,
        _ => return Err(RejectReason::BadField("side")),
    };
    let price = parse_px(fields[7]).filter(|&px| px > 0).ok_or(RejectReason::BadField("price"))?;
    let qty = parse_u64(fields[8]).filter(|&q| q > 0).ok_or(RejectReason::BadField("qty"))?;
    let (contra_order_id, contra_account) = if kind == Kind::Trade {
        if fields[9].is_empty() {
            return Err(RejectReason::MissingContra("contra_order_id"));
        }
        if fields[10].is_empty() {
            return Err(RejectReason::MissingContra("contra_account"));
        }
        let id = parse_u64(fields[9]).ok_or(RejectReason::BadField("contra_order_id"))?;
        if !valid_account(fields[10]) {
            return Err(RejectReason::BadField("contra_account"));
        }
        (id, fields[10])
    } else {
        if !fields[9].is_empty() {
            return Err(RejectReason::ContraOnOrder("contra_order_id"));
        }
        if !fields[10].is_empty() {
            return Err(RejectReason::ContraOnOrder("contra_account"));
        }
        (0, &[][..])
    };
    Ok(RawRecord { seq, ts_ns, kind, order_id, account, instrument, side, price, qty, contra_order_id, contra_account })
}

#[inline]
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in s {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(digit as u64)?;
    }
    Some(value)
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
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let reader = Trickle(text.as_bytes(), chunk);
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

    #[test]
    fn gaps_are_counted_with_their_range() {
        let text = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n\
                    5,100,N,1,A,X,B,1.0,10,,\n9,100,N,2,A,X,B,1.0,10,,\n10,100,N,3,A,X,B,1.0,10,,\n";
        let (events, stats, _) = feed(text, 3);
        assert_eq!(events.len(), 3);
        assert_eq!((stats.gaps, stats.missing_records), (1, 3));
        assert_eq!(stats.gap_ranges, vec![(6, 8, 3)]);
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
