//! The daemon's feed protocol (docs/WIRE.md): the handshake lines, the
//! binary frame layout and its fixed-size record, and FEED.md CSV lines
//! turned into `WireRecord`s. Pure encoding and decoding, no I/O: the
//! network edge (`serve::edge`) and the sender (`cmd::feed`) share it, and
//! the fuzz target drives `FrameReader` with arbitrary bytes.

use crate::event::{Kind, Side};
use crate::ingest::csv::parse_line;
use crate::ingest::live::WireRecord;
use crate::ingest::validate::RejectReason;
use crate::symbols::unpack;
use std::fmt;

/// Protocol version, in the greeting and in the binary magic.
pub const VERSION: u32 = 1;
/// What a binary sender writes first, right after reading the greeting.
pub const MAGIC: &[u8; 8] = b"TWWIRE01";
/// Bytes of one record in a `RECORDS` frame.
pub const RECORD_BYTES: usize = 100;
/// The largest frame body (type byte and payload) accepted; a longer
/// length prefix ends the connection (a broken or hostile sender).
pub const MAX_FRAME_BYTES: usize = 1 + 640 * RECORD_BYTES;
/// Records per `RECORDS` frame a sender should not exceed.
pub const MAX_FRAME_RECORDS: usize = (MAX_FRAME_BYTES - 1) / RECORD_BYTES;
/// Longest CSV line accepted on the socket (FEED.md lines are < 200 bytes).
pub const MAX_LINE_BYTES: usize = 4096;

pub const FRAME_RECORDS: u8 = 1;
pub const FRAME_HEARTBEAT: u8 = 2;
pub const FRAME_BYE: u8 = 3;

/// The daemon's first line to a client it accepts: `next_seq` is the first
/// seq it needs (0: it has none of this day yet); `day_from` the exchange
/// time its current trading day starts at (records before it belong to a
/// day already closed; `i64::MIN`: no day yet).
pub fn greeting(next_seq: u64, day_from: i64) -> String {
    format!("TAPEWATCH {VERSION} NEXT_SEQ {next_seq} DAY_FROM {day_from}\n")
}

/// What a greeting asks of the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub next_seq: u64,
    pub day_from: i64,
}

impl Resume {
    /// Whether the daemon still needs a record: not before its position in
    /// the day, and not of a day it has closed.
    pub fn wants(&self, seq: Option<u64>, ts_ns: Option<i64>) -> bool {
        seq.is_none_or(|s| s >= self.next_seq) && ts_ns.is_none_or(|t| t >= self.day_from)
    }
}

/// The daemon's only line to a client it refuses, before it closes.
pub fn refusal(reason: &str) -> String {
    format!("TAPEWATCH BUSY {reason}\n")
}

/// Reads a greeting line (without its newline): where to resume, or the
/// daemon's reason for refusing.
pub fn parse_greeting(line: &str) -> Result<Resume, String> {
    let line = line.trim_end();
    if let Some(reason) = line.strip_prefix("TAPEWATCH BUSY ") {
        return Err(format!("the daemon refused the feed: {reason}"));
    }
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["TAPEWATCH", version, "NEXT_SEQ", next, "DAY_FROM", from] => {
            if *version != VERSION.to_string() {
                return Err(format!("the daemon speaks wire version {version}, this sender {VERSION}"));
            }
            let bad = |what: &str| format!("bad greeting `{line}`: {what} is not a number");
            Ok(Resume {
                next_seq: next.parse().map_err(|_| bad("NEXT_SEQ"))?,
                day_from: from.parse().map_err(|_| bad("DAY_FROM"))?,
            })
        }
        ["TAPEWATCH", version, ..] if *version != VERSION.to_string() => {
            Err(format!("the daemon speaks wire version {version}, this sender {VERSION}"))
        }
        _ => Err(format!("not a tapewatch feed port: it said `{}`", line.chars().take(80).collect::<String>())),
    }
}

/// Why a byte stream is not the protocol: the connection is closed with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A length prefix of 0 or above `MAX_FRAME_BYTES`.
    FrameLength(u64),
    UnknownFrame(u8),
    /// A frame whose payload does not fit its type.
    BadPayload {
        frame: u8,
        len: usize,
    },
    /// A record with a kind or side byte outside FEED.md, or reserved bytes set.
    BadRecord {
        index: usize,
        what: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameLength(n) => write!(f, "frame length {n} outside 1..={MAX_FRAME_BYTES}"),
            WireError::UnknownFrame(t) => write!(f, "unknown frame type {t}"),
            WireError::BadPayload { frame, len } => write!(f, "frame type {frame} with a {len}-byte payload"),
            WireError::BadRecord { index, what } => write!(f, "record {index} of the frame: bad {what}"),
        }
    }
}

/// One decoded frame; `Records` borrows the payload (decode each with `record`).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Records(&'a [u8]),
    /// The sender's exchange clock: event time may move on to it.
    Heartbeat(i64),
    /// The sender is done and has nothing in flight.
    Bye,
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` when it is not
/// complete yet, else the frame and the bytes it took.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(head) = bytes.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_le_bytes(*head) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(WireError::FrameLength(len as u64));
    }
    let Some(body) = bytes.get(4..4 + len) else { return Ok(None) };
    let (kind, payload) = (body[0], &body[1..]);
    let frame = match kind {
        FRAME_RECORDS if !payload.is_empty() && payload.len().is_multiple_of(RECORD_BYTES) => Frame::Records(payload),
        FRAME_HEARTBEAT if payload.len() == 8 => {
            Frame::Heartbeat(i64::from_le_bytes(payload.try_into().map_err(|_| bad_payload(kind, payload))?))
        }
        FRAME_BYE if payload.is_empty() => Frame::Bye,
        FRAME_RECORDS | FRAME_HEARTBEAT | FRAME_BYE => return Err(bad_payload(kind, payload)),
        other => return Err(WireError::UnknownFrame(other)),
    };
    Ok(Some((frame, 4 + len)))
}

fn bad_payload(frame: u8, payload: &[u8]) -> WireError {
    WireError::BadPayload { frame, len: payload.len() }
}

/// The records of a `RECORDS` payload, in order.
pub fn records(payload: &[u8]) -> impl Iterator<Item = Result<WireRecord, WireError>> + '_ {
    let (chunks, _) = payload.as_chunks::<RECORD_BYTES>();
    chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| decode_record(chunk).map_err(|what| WireError::BadRecord { index, what }))
}

/// Layout (little-endian): seq u64 @0, ts_ns i64 @8, order_id u64 @16,
/// contra_order_id u64 @24, price i64 @32 (1/10000), qty u64 @40, kind u8
/// @48, side u8 @49, the three name lengths u8 @50..53, 3 zero bytes, then
/// account [16] @56, instrument [12] @72, contra_account [16] @84.
pub fn decode_record(b: &[u8; RECORD_BYTES]) -> Result<WireRecord, &'static str> {
    let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let kind = match b[48] {
        b'N' => Kind::New,
        b'C' => Kind::Cancel,
        b'T' => Kind::Trade,
        _ => return Err("kind byte"),
    };
    let side = match b[49] {
        b'B' => Side::Buy,
        b'S' => Side::Sell,
        _ => return Err("side byte"),
    };
    if b[53..56] != [0, 0, 0] {
        return Err("reserved bytes");
    }
    let mut w = WireRecord {
        due_ns: 0,
        seq: u(0),
        ts_ns: u(8) as i64,
        order_id: u(16),
        contra_order_id: u(24),
        price: u(32) as i64,
        qty: u(40),
        kind,
        side,
        // A length past its field is kept: the record is then rejected (and
        // kept in the rejects file) by the source, as any bad name is.
        account_len: b[50],
        instrument_len: b[51],
        contra_account_len: b[52],
        ..WireRecord::default()
    };
    w.account.copy_from_slice(&b[56..72]);
    w.instrument.copy_from_slice(&b[72..84]);
    w.contra_account.copy_from_slice(&b[84..100]);
    Ok(w)
}

pub fn encode_record(w: &WireRecord, out: &mut Vec<u8>) {
    let start = out.len();
    for v in [w.seq, w.ts_ns as u64, w.order_id, w.contra_order_id, w.price as u64, w.qty] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let kind = match w.kind {
        Kind::New => b'N',
        Kind::Cancel => b'C',
        Kind::Trade => b'T',
    };
    let side = match w.side {
        Side::Buy => b'B',
        Side::Sell => b'S',
    };
    out.extend_from_slice(&[kind, side, w.account_len, w.instrument_len, w.contra_account_len, 0, 0, 0]);
    out.extend_from_slice(&w.account);
    out.extend_from_slice(&w.instrument);
    out.extend_from_slice(&w.contra_account);
    debug_assert_eq!(out.len() - start, RECORD_BYTES);
}

/// Appends a `RECORDS` frame holding `records` (at most `MAX_FRAME_RECORDS`).
pub fn encode_records(records: &[WireRecord], out: &mut Vec<u8>) {
    assert!(!records.is_empty() && records.len() <= MAX_FRAME_RECORDS);
    out.extend_from_slice(&((1 + records.len() * RECORD_BYTES) as u32).to_le_bytes());
    out.push(FRAME_RECORDS);
    for w in records {
        encode_record(w, out);
    }
}

pub fn encode_heartbeat(exchange_ts_ns: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&9u32.to_le_bytes());
    out.push(FRAME_HEARTBEAT);
    out.extend_from_slice(&exchange_ts_ns.to_le_bytes());
}

pub fn encode_bye(out: &mut Vec<u8>) {
    out.extend_from_slice(&1u32.to_le_bytes());
    out.push(FRAME_BYE);
}

/// A FEED.md line (without its newline) as a wire record, checked as the
/// CSV decoder checks it.
pub fn csv_record(line: &[u8]) -> Result<WireRecord, RejectReason> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let raw = parse_line(line)?;
    let mut w = WireRecord {
        seq: raw.seq,
        ts_ns: raw.ts_ns,
        kind: raw.kind,
        order_id: raw.order_id,
        contra_order_id: raw.contra_order_id,
        side: raw.side,
        price: raw.price,
        qty: raw.qty,
        ..WireRecord::default()
    };
    let name = |packed, field: &mut [u8], len: &mut u8| {
        let (bytes, n) = unpack(packed);
        // parse_line checked the names: they fit their fields.
        let _ = WireRecord::set_name(field, len, &bytes[..n]);
    };
    name(raw.account, &mut w.account, &mut w.account_len);
    name(raw.instrument, &mut w.instrument, &mut w.instrument_len);
    if raw.kind == Kind::Trade {
        name(raw.contra_account, &mut w.contra_account, &mut w.contra_account_len);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WireRecord {
        csv_record(b"3,1793583000001000000,T,1001,A0001,000001,S,10.2500,300,1002,A0420").unwrap()
    }

    #[test]
    fn records_round_trip_through_frames() {
        let w = sample();
        assert_eq!((w.seq, w.kind, w.price, w.qty, w.contra_order_id), (3, Kind::Trade, 102_500, 300, 1002));
        assert_eq!((w.account(), w.instrument(), w.contra_account()), (&b"A0001"[..], &b"000001"[..], &b"A0420"[..]));
        let mut bytes = Vec::new();
        encode_records(&[w, w], &mut bytes);
        encode_heartbeat(-5, &mut bytes);
        encode_bye(&mut bytes);
        let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
        let Frame::Records(payload) = frame else { panic!("{frame:?}") };
        let got: Vec<WireRecord> = records(payload).map(Result::unwrap).collect();
        assert_eq!(got, vec![w, w]);
        let (frame, used2) = decode_frame(&bytes[used..]).unwrap().unwrap();
        assert_eq!(frame, Frame::Heartbeat(-5));
        assert_eq!(decode_frame(&bytes[used + used2..]).unwrap().unwrap().0, Frame::Bye);
        // Every proper prefix is incomplete, never an error.
        for cut in 0..used {
            assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn broken_frames_are_named() {
        assert_eq!(decode_frame(&[0, 0, 0, 0]), Err(WireError::FrameLength(0)));
        let too_long = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert_eq!(decode_frame(&too_long), Err(WireError::FrameLength(MAX_FRAME_BYTES as u64 + 1)));
        assert_eq!(decode_frame(&[1, 0, 0, 0, 9]), Err(WireError::UnknownFrame(9)));
        assert_eq!(decode_frame(&[3, 0, 0, 0, FRAME_HEARTBEAT, 1, 2]), Err(WireError::BadPayload { frame: 2, len: 2 }));
        let mut bytes = Vec::new();
        encode_records(&[sample()], &mut bytes);
        bytes[4 + 1 + 48] = b'X';
        let Some((Frame::Records(payload), _)) = decode_frame(&bytes).unwrap() else { panic!() };
        assert_eq!(records(payload).next(), Some(Err(WireError::BadRecord { index: 0, what: "kind byte" })));
    }

    #[test]
    fn greetings() {
        assert_eq!(parse_greeting(&greeting(42, -7)), Ok(Resume { next_seq: 42, day_from: -7 }));
        let r = Resume { next_seq: 5, day_from: 100 };
        assert!(r.wants(Some(5), Some(100)) && r.wants(None, None));
        assert!(!r.wants(Some(4), Some(200)) && !r.wants(Some(9), Some(99)));
        assert!(parse_greeting(&refusal("another feed is connected")).unwrap_err().contains("another feed"));
        assert!(parse_greeting("SSH-2.0-OpenSSH").unwrap_err().contains("not a tapewatch feed port"));
        assert!(parse_greeting("TAPEWATCH 9 NEXT_SEQ 1").unwrap_err().contains("version 9"));
    }

    #[test]
    fn csv_lines_are_checked() {
        assert_eq!(csv_record(b"1,5,N,7,A 1,000001,B,1.0,1,,").unwrap_err(), RejectReason::BadField("account"));
        let n = csv_record(b"1,5,N,7,A1,000001,B,1.0,1,,\r").unwrap();
        assert_eq!((n.contra_account(), n.contra_order_id), (&b""[..], 0));
    }
}
