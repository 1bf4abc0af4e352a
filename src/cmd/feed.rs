//! `tapewatch feed TAPE --to ADDR`: sends a tape (FEED.md CSV or native) to
//! a daemon's feed port, in FEED.md CSV or the binary wire format
//! (docs/WIRE.md). It reads the daemon's greeting first and skips the
//! records before the seq the daemon asks for, so a sender started again
//! after a daemon restart resumes exactly where the daemon stands.

use super::{CmdError, is_native_tape};
use crate::ingest::live::WireRecord;
use crate::ingest::native::Tape;
use crate::wire;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct FeedArgs {
    /// The tape: FEED.md CSV or a native tape from `tapewatch import`.
    pub tape: PathBuf,
    /// The daemon's feed address (its `feed_listen`).
    #[arg(long)]
    pub to: String,
    /// Send this many records per second (paced in steps of a millisecond).
    #[arg(long, conflicts_with = "as_fast_as_possible")]
    pub rate: Option<f64>,
    /// Pace by the tape's own clock: send each record when its `ts_ns` is due, counted from
    /// the first record sent and divided by this speed (1 = as the exchange sent them, 10 = ten
    /// times faster), in steps of 0.2 ms. A record behind one already sent (late) goes at once.
    /// Binary: while the tape is quiet, a heartbeat every millisecond carries its clock.
    #[arg(long, conflicts_with_all = ["as_fast_as_possible", "rate"])]
    pub replay_speed: Option<f64>,
    /// Send as fast as the daemon takes them (the default).
    #[arg(long)]
    pub as_fast_as_possible: bool,
    /// `binary` (the wire format; the default) or `csv` (FEED.md lines, as `nc` would send).
    #[arg(long, default_value = "binary")]
    pub format: String,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// After the tape, send a heartbeat a day past its last record (binary only): the exchange
    /// clock has moved on to the next day, so the daemon ends and closes the tape's day.
    #[arg(long)]
    pub end_of_day: bool,
    /// Stop after sending this many records and disconnect without a goodbye (tests: a sender
    /// that drops mid-tape).
    #[arg(long, hide = true)]
    pub limit: Option<u64>,
}

/// With `--replay-speed` (binary): how often a heartbeat carries the
/// exchange clock while the tape is quiet.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Binary,
}

pub fn run(args: FeedArgs) -> Result<(), CmdError> {
    let mut problems = Vec::new();
    let format = match args.format.as_str() {
        "csv" => Format::Csv,
        "binary" => Format::Binary,
        other => {
            problems.push(format!("--format {other}: must be `csv` or `binary`"));
            Format::Binary
        }
    };
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push(format!("--rate {rate}: must be a positive number of records per second"));
    }
    if let Some(speed) = args.replay_speed
        && !(speed.is_finite() && speed > 0.0)
    {
        problems.push(format!("--replay-speed {speed}: must be a positive factor (1 = the tape's own pace)"));
    }
    let native = match is_native_tape(&args.tape) {
        Ok(native) => native,
        Err(e) => {
            problems.push(format!("{}: cannot read tape: {e}", args.tape.display()));
            false
        }
    };
    if args.end_of_day && format == Format::Csv {
        problems.push("--end-of-day needs --format binary (FEED.md CSV has no heartbeat)".to_string());
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let records: Box<dyn Iterator<Item = Result<Item, CmdError>>> =
        if native { Box::new(native_records(&args.tape)?) } else { Box::new(csv_records(&args.tape)?) };

    let mut stream =
        TcpStream::connect(&args.to).map_err(|e| CmdError::Failed(format!("--to {}: cannot connect: {e}", args.to)))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| CmdError::Failed(format!("--to {}: {e}", args.to)))?;
    let greeting =
        read_line(&mut stream).map_err(|e| CmdError::Failed(format!("--to {}: no greeting: {e}", args.to)))?;
    let resume = wire::parse_greeting(&greeting).map_err(|e| CmdError::Failed(format!("--to {}: {e}", args.to)))?;
    if !args.quiet {
        eprintln!("tapewatch feed: connected to {}; the daemon needs seq {} onwards", args.to, resume.next_seq);
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 18, stream.try_clone().map_err(io_err(&args.to))?);
    match format {
        Format::Csv => out.write_all(format!("{}\n", crate::ingest::csv::HEADER).as_bytes()),
        Format::Binary => out.write_all(wire::MAGIC),
    }
    .map_err(io_err(&args.to))?;

    let started = Instant::now();
    let (mut sent, mut skipped, mut unsendable) = (0u64, 0u64, 0u64);
    let mut frame: Vec<WireRecord> = Vec::with_capacity(wire::MAX_FRAME_RECORDS);
    let mut bytes = Vec::with_capacity(1 << 16);
    let mut last_progress = Instant::now();
    let flush_frame = |frame: &mut Vec<WireRecord>, bytes: &mut Vec<u8>, out: &mut dyn Write| {
        if frame.is_empty() {
            return Ok(());
        }
        bytes.clear();
        wire::encode_records(frame, bytes);
        frame.clear();
        out.write_all(bytes)
    };
    let mut newest_ts = i64::MIN;
    let mut ts_paced_from: Option<(i64, Instant)> = None;
    let mut heartbeats = 0u64;
    for item in records {
        let item = item?;
        newest_ts = newest_ts.max(item.ts_ns.unwrap_or(i64::MIN));
        if !resume.wants(item.seq, item.ts_ns) {
            skipped += 1;
            continue;
        }
        if args.limit.is_some_and(|limit| sent >= limit) {
            // A sender that drops mid-tape: no goodbye, frames cut where they stand.
            flush_frame(&mut frame, &mut bytes, &mut out).map_err(io_err(&args.to))?;
            out.flush().map_err(io_err(&args.to))?;
            if !args.quiet {
                eprintln!("tapewatch feed: stopped after {sent} records (--limit)");
            }
            return Ok(());
        }
        // When this record is due, counted from the first one sent, and how
        // far ahead of that the sender may run before it sleeps.
        let pace = match (args.rate, args.replay_speed) {
            (Some(rate), _) => Some((Duration::from_secs_f64(sent as f64 / rate), Duration::from_millis(1))),
            (None, Some(speed)) => item.ts_ns.map(|ts_ns| {
                // Counted from the first record sent (not from the start,
                // which may have spent a while skipping what the daemon had).
                let (first, _) = *ts_paced_from.get_or_insert((ts_ns, Instant::now()));
                let ahead_ns = ts_ns.saturating_sub(first).max(0) as f64 / speed;
                (Duration::from_nanos(ahead_ns as u64), Duration::from_micros(200))
            }),
            (None, None) => None,
        };
        if let Some((due, step)) = pace {
            let from = ts_paced_from.map_or(started, |(_, at)| at);
            let mut elapsed = from.elapsed();
            if due > elapsed + step {
                flush_frame(&mut frame, &mut bytes, &mut out).map_err(io_err(&args.to))?;
                out.flush().map_err(io_err(&args.to))?;
                // At the tape's pace the exchange clock runs on while the
                // tape is quiet: heartbeats carry it, as an exchange feed's
                // would, so the daemon's event time follows it and what it
                // holds is released without waiting for the next record.
                let clock = ts_paced_from.filter(|_| format == Format::Binary).map(|(first, _)| first);
                let nap = if clock.is_some() { HEARTBEAT_EVERY } else { Duration::MAX };
                while due > elapsed + step {
                    std::thread::sleep((due - elapsed).min(nap));
                    elapsed = from.elapsed();
                    if let (Some(first), Some(speed)) = (clock, args.replay_speed)
                        && due > elapsed + step
                    {
                        let now_ts = first.saturating_add((elapsed.as_nanos() as f64 * speed) as i64);
                        bytes.clear();
                        wire::encode_heartbeat(now_ts, &mut bytes);
                        out.write_all(&bytes).and_then(|()| out.flush()).map_err(io_err(&args.to))?;
                        heartbeats += 1;
                    }
                }
            }
        }
        match format {
            Format::Csv => {
                out.write_all(&item.line).and_then(|()| out.write_all(b"\n")).map_err(io_err(&args.to))?;
            }
            Format::Binary => match item.record {
                Some(w) => {
                    frame.push(w);
                    if frame.len() == wire::MAX_FRAME_RECORDS.min(512) {
                        flush_frame(&mut frame, &mut bytes, &mut out).map_err(io_err(&args.to))?;
                    }
                }
                None => unsendable += 1,
            },
        }
        sent += 1;
        if !args.quiet && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!("tapewatch feed: {sent} records sent, {:.0} records/s", sent as f64 / secs);
        }
    }
    flush_frame(&mut frame, &mut bytes, &mut out).map_err(io_err(&args.to))?;
    if format == Format::Binary {
        bytes.clear();
        if args.end_of_day && newest_ts != i64::MIN {
            wire::encode_heartbeat(newest_ts.saturating_add(crate::serve::edge::DAY_NS), &mut bytes);
        }
        wire::encode_bye(&mut bytes);
        out.write_all(&bytes).map_err(io_err(&args.to))?;
    }
    out.flush().map_err(io_err(&args.to))?;
    drop(out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // The daemon closes once it has taken everything (or says why not).
    let mut rest = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_err(&args.to))?;
    let _ = stream.read_to_string(&mut rest);
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "sent {sent} records in {secs:.3} s ({:.0} records/s); skipped {skipped} the daemon already had",
        sent as f64 / secs.max(1e-9)
    );
    if heartbeats > 0 {
        summary += &format!("; {heartbeats} heartbeats while the tape was quiet");
    }
    if unsendable > 0 {
        summary += &format!(
            "; {unsendable} malformed lines not sendable in the binary format (the daemon sees their seqs as gaps)"
        );
    }
    if !args.quiet {
        eprintln!("tapewatch feed: {summary}");
    }
    if let Some(error) = rest.lines().find(|l| l.starts_with("TAPEWATCH ERROR")) {
        return Err(CmdError::Failed(format!("--to {}: the daemon said: {error}", args.to)));
    }
    super::print(&format!("{summary}\n"))
}

fn io_err(to: &str) -> impl Fn(std::io::Error) -> CmdError + '_ {
    move |e| CmdError::Failed(format!("--to {to}: {e}"))
}

/// One line of the greeting, byte by byte (it is short, and nothing after
/// it may be consumed).
fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.len() < 1024 {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before its greeting"));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    Err(std::io::Error::other("greeting longer than 1024 bytes"))
}

/// A record to send: its seq (when it has one), the CSV line, and the wire
/// record (none for a malformed line).
struct Item {
    seq: Option<u64>,
    ts_ns: Option<i64>,
    line: Vec<u8>,
    record: Option<WireRecord>,
}

fn csv_records(path: &std::path::Path) -> Result<impl Iterator<Item = Result<Item, CmdError>>, CmdError> {
    let file =
        std::fs::File::open(path).map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = String::new();
    reader.read_line(&mut header).map_err(|e| CmdError::Usage(format!("{}: cannot read: {e}", path.display())))?;
    if header.trim_end() != crate::ingest::csv::HEADER {
        return Err(CmdError::Usage(format!(
            "{}: line 1: not a FEED.md tape: the header must be `{}`",
            path.display(),
            crate::ingest::csv::HEADER
        )));
    }
    let path = path.to_path_buf();
    let mut line_no = 1u64;
    Ok(std::iter::from_fn(move || {
        let mut line = Vec::with_capacity(128);
        loop {
            line.clear();
            line_no += 1;
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(CmdError::Failed(format!("{}: line {line_no}: {e}", path.display())))),
            }
            while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            let record = wire::csv_record(&line).ok();
            let field = |i: usize| std::str::from_utf8(line.split(|&b| b == b',').nth(i)?).ok();
            let seq = record.map(|w| w.seq).or_else(|| field(0)?.parse().ok());
            let ts_ns = record.map(|w| w.ts_ns).or_else(|| field(1)?.parse().ok());
            return Some(Ok(Item { seq, ts_ns, line, record }));
        }
    }))
}

fn native_records(path: &std::path::Path) -> Result<impl Iterator<Item = Result<Item, CmdError>>, CmdError> {
    let tape = Tape::open(path).map_err(|e| CmdError::Usage(e.to_string()))?;
    let mut i = 0usize;
    Ok(std::iter::from_fn(move || {
        if i >= tape.len() {
            return None;
        }
        let r = tape.record(i);
        i += 1;
        let mut w = WireRecord {
            seq: r.seq,
            ts_ns: r.ts_ns,
            order_id: r.order_id,
            contra_order_id: r.contra_order_id,
            price: r.price,
            qty: r.qty,
            kind: r.kind(),
            side: r.side(),
            ..WireRecord::default()
        };
        let _ = WireRecord::set_name(&mut w.account, &mut w.account_len, tape.account(r.account));
        let _ = WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, tape.instrument(r.instrument));
        if w.kind == crate::event::Kind::Trade {
            let _ =
                WireRecord::set_name(&mut w.contra_account, &mut w.contra_account_len, tape.account(r.contra_account));
        }
        let mut line = Vec::with_capacity(128);
        crate::ingest::csv::FeedLine {
            seq: w.seq,
            ts_ns: w.ts_ns,
            kind: w.kind,
            order_id: w.order_id,
            account: w.account(),
            instrument: w.instrument(),
            side: w.side,
            price: w.price,
            qty: w.qty,
            contra: (w.kind == crate::event::Kind::Trade).then(|| (w.contra_order_id, w.contra_account())),
        }
        .write(&mut line);
        while line.last() == Some(&b'\n') {
            line.pop();
        }
        Some(Ok(Item { seq: Some(w.seq), ts_ns: Some(w.ts_ns), line, record: Some(w) }))
    }))
}
