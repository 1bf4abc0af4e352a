//! The network edge: the feed's TCP listener, on tokio (the only async code
//! in the process). One connection at a time owns the sending half of the
//! live ingest ring; it greets the client with the next seq the daemon
//! needs, tells CSV from binary by the first bytes, decodes each read into
//! a preallocated staging buffer, then moves the records into ring slots
//! (one cursor publish per slot; a full ring makes it wait, and so TCP
//! pushes back on the sender). Bad input ends the connection with a log
//! line and a counted outcome, never the daemon.

use crate::event::Kind;
use crate::ingest::csv::HEADER;
use crate::ingest::live::{FeedPosition, LineReceiver, LineSender, WIRE_BATCH, WireRecord, WireSender, line_channel};
use crate::metrics::Clock;
use crate::wire::{self, Frame, MAGIC, MAX_FRAME_BYTES, MAX_LINE_BYTES};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read at a time; a whole frame (at most `MAX_FRAME_BYTES`) always fits.
const READ_BYTES: usize = 256 * 1024;
/// How long a greeting waits for the pipeline to settle the ring.
const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// Malformed CSV lines logged one by one per connection; the rest are counted.
const LOGGED_LINES: u64 = 20;

/// What the edge has seen, for logs and metrics. Written once per read or
/// per connection, never per record.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    pub connections: AtomicU64,
    /// Second connections turned away while one was open.
    pub refused: AtomicU64,
    /// Clients that sent nothing within the handshake timeout.
    pub silent: AtomicU64,
    /// First bytes that were neither the FEED.md header nor the binary magic.
    pub bad_header: AtomicU64,
    /// Binary streams that broke the frame rules (length, type, payload).
    pub bad_frames: AtomicU64,
    /// Connections that ended inside a frame or a line (those bytes are lost:
    /// the sender resumes from the greeting's seq).
    pub truncated: AtomicU64,
    /// CSV lines that are not FEED.md records (logged, and rejected by the
    /// pipeline into the rejects file in their place).
    pub malformed_lines: AtomicU64,
    /// Of those, lines whose text found the line ring full (rejected
    /// without it).
    pub lines_not_kept: AtomicU64,
    pub records: AtomicU64,
    /// Records received by kind (N, C, T).
    pub by_kind: [AtomicU64; 3],
    pub heartbeats: AtomicU64,
    pub bytes: AtomicU64,
}

/// State the edge shares with the daemon.
pub struct EdgeShared {
    pub counters: EdgeCounters,
    /// How far the pipeline has settled the ring, and the seq it needs
    /// next: the greeting's NEXT_SEQ (`FeedPosition`). The day's `LiveFeed`
    /// publishes it; the daemon sets 0 on a new day.
    pub position: Arc<FeedPosition>,
    /// Ring slots the edge has published (the feed's `slots_taken` catches
    /// up when the ring is drained).
    slots_published: AtomicU64,
    /// The trading day the ring's pipeline serves, `[start, end)` by the
    /// exchange clock; `i64::MIN..i64::MAX` until a record says which.
    pub day_start_ns: AtomicI64,
    pub day_end_ns: AtomicI64,
    /// The day boundary's offset into the Asia/Shanghai day.
    pub boundary_ns: i64,
    /// The record or heartbeat that crossed the day's end has been seen:
    /// the sending half was dropped (the day's pipeline ends) and the
    /// daemon puts the next day's into `sender`.
    pub day_over: AtomicBool,
    /// The ring's sending half while no connection holds it.
    pub sender: Mutex<Option<WireSender>>,
    /// Rung when the daemon puts a sender back (a new day's).
    pub sender_ready: tokio::sync::Notify,
    busy: AtomicBool,
    /// The connected sender, if any, and its format once known.
    pub peer: Mutex<Option<SocketAddr>>,
    pub format: Mutex<Option<&'static str>>,
    /// The text of malformed CSV lines, for the feed's rejects file; the
    /// daemon hands `malformed_lines` to each day's `LiveFeed`.
    lines: Mutex<LineSender>,
    pub malformed_lines: LineReceiver,
}

impl EdgeShared {
    pub fn new(tx: WireSender, boundary_ns: i64) -> EdgeShared {
        let (lines, malformed_lines) = line_channel();
        EdgeShared {
            lines: Mutex::new(lines),
            malformed_lines,
            counters: EdgeCounters::default(),
            position: Arc::default(),
            slots_published: AtomicU64::new(0),
            day_start_ns: AtomicI64::new(i64::MIN),
            day_end_ns: AtomicI64::new(i64::MAX),
            boundary_ns,
            day_over: AtomicBool::new(false),
            sender: Mutex::new(Some(tx)),
            sender_ready: tokio::sync::Notify::new(),
            busy: AtomicBool::new(false),
            peer: Mutex::new(None),
            format: Mutex::new(None),
        }
    }

    /// Sets the day to the one holding `ts_ns`.
    pub fn set_day(&self, ts_ns: i64) {
        let (start, end) = day_of(ts_ns, self.boundary_ns);
        self.day_start_ns.store(start, Ordering::Release);
        self.day_end_ns.store(end, Ordering::Release);
    }

    /// A new day's sender, after the previous day's pipeline ended.
    pub fn new_day(&self, tx: WireSender) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = Some(tx);
        }
        self.day_over.store(false, Ordering::Release);
        self.sender_ready.notify_waiters();
        self.sender_ready.notify_one();
    }

    fn take_sender(&self) -> Option<WireSender> {
        self.sender.lock().ok().and_then(|mut slot| slot.take())
    }

    fn put_sender(&self, tx: WireSender) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = Some(tx);
        }
    }
}

const SHANGHAI_NS: i64 = 8 * 3600 * 1_000_000_000;
pub const DAY_NS: i64 = 24 * 3600 * 1_000_000_000;

/// The trading day holding `ts_ns`: `[start, end)`, each at the boundary
/// (an offset into the Asia/Shanghai day, exchange clock). Saturating at
/// the i64 ends.
pub fn day_of(ts_ns: i64, boundary_ns: i64) -> (i64, i64) {
    let shifted = ts_ns as i128 + SHANGHAI_NS as i128 - boundary_ns as i128;
    let start = shifted.div_euclid(DAY_NS as i128) * DAY_NS as i128 - SHANGHAI_NS as i128 + boundary_ns as i128;
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    (clamp(start), clamp(start + DAY_NS as i128))
}

/// The name of the day ending at `end_ns`: its Asia/Shanghai date, `YYYY-MM-DD`.
pub fn day_name(end_ns: i64) -> String {
    let days = (end_ns as i128 - 1 + SHANGHAI_NS as i128).div_euclid(DAY_NS as i128) as i64;
    let (y, m, d) = crate::time::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

pub struct EdgeOptions {
    pub handshake_timeout: Duration,
}

/// Accepts feed connections until `shutdown` turns true, then waits for the
/// open one to put what it read into the ring. The ring's sending half is
/// left in `shared.sender`: the daemon keeps it until the pipeline has
/// stopped (dropping it would end the day, firing end-of-day timers).
pub async fn run(
    listener: TcpListener,
    clock: Clock,
    shared: Arc<EdgeShared>,
    options: EdgeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(ok) => ok,
                    Err(e) => {
                        tracing::warn!(error = %e, "feed listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if shared.busy.swap(true, Ordering::AcqRel) {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let holder = shared.peer.lock().ok().and_then(|p| *p);
                    let reason = match holder {
                        Some(holder) => format!("another feed is connected (from {holder}); one feed at a time"),
                        None => "another feed is connected; one feed at a time".to_string(),
                    };
                    tracing::warn!(%peer, "feed connection refused: {reason}");
                    tokio::spawn(refuse(stream, reason));
                    continue;
                }
                if let Ok(mut p) = shared.peer.lock() {
                    *p = Some(peer);
                }
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let (shared, options, shutdown) = (shared.clone(), options.clone(), shutdown.clone());
                current = Some(tokio::spawn(async move {
                    let mut stream = stream;
                    let mut conn = Connection::new(clock, &shared, peer);
                    let outcome = conn.serve(&mut stream, &options, shutdown).await;
                    match &outcome {
                        Ok(end) => tracing::info!(%peer, records = conn.records, "feed disconnected: {end}"),
                        Err(e) => tracing::warn!(%peer, records = conn.records, "feed connection closed: {e}"),
                    }
                    if let Ok(mut p) = shared.peer.lock() {
                        *p = None;
                    }
                    if let Ok(mut f) = shared.format.lock() {
                        *f = None;
                    }
                    if let Some(tx) = conn.tx.take() {
                        shared.put_sender(tx);
                    }
                    shared.busy.store(false, Ordering::Release);
                    // Closed only now: a sender that reconnects as soon as it
                    // sees the close finds the slot free.
                    drop(stream);
                }));
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    if let Some(task) = current {
        let _ = task.await;
    }
}

async fn refuse(mut stream: TcpStream, reason: String) {
    let _ = stream.write_all(wire::refusal(&reason).as_bytes()).await;
    let _ = stream.shutdown().await;
}

enum Format {
    Csv { line_no: u64 },
    Binary { frame_no: u64 },
}

struct Connection<'a> {
    /// The ring's sending half, while this connection holds it.
    tx: Option<WireSender>,
    clock: Clock,
    shared: &'a EdgeShared,
    peer: SocketAddr,
    /// The bytes read and not yet decoded: `buf[..filled]`.
    buf: Vec<u8>,
    filled: usize,
    staged: Vec<WireRecord>,
    records: u64,
    malformed: u64,
}

/// How far decoding a read got.
enum Decoded {
    /// Everything decodable was decoded; `pos` bytes are used.
    More,
    /// The staging buffer is full: push, then decode on.
    Full,
    /// A binary sender said BYE.
    Bye,
}

impl<'a> Connection<'a> {
    fn new(clock: Clock, shared: &'a EdgeShared, peer: SocketAddr) -> Connection<'a> {
        Connection {
            tx: None,
            clock,
            shared,
            peer,
            buf: vec![0; READ_BYTES],
            filled: 0,
            // Sized so one read never needs more: each record at least 100
            // bytes on the wire, a heartbeat 13.
            staged: Vec::with_capacity(4 * WIRE_BATCH),
            records: 0,
            malformed: 0,
        }
    }

    /// Reads the connection to its end. `Ok` names a clean end, `Err` the
    /// bad input that ended it (already counted).
    async fn serve(
        &mut self,
        stream: &mut TcpStream,
        options: &EdgeOptions,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<String, String> {
        let _ = stream.set_nodelay(true);
        // Between two days the next day's ring is being set up: the sender
        // is greeted once it is (with that day's position).
        self.take_sender(&mut shutdown).await?;
        let next = self.settled_next_seq().await;
        let day_from = self.shared.day_start_ns.load(Ordering::Acquire);
        if let Err(e) = stream.write_all(wire::greeting(next, day_from).as_bytes()).await {
            return Err(format!("cannot greet: {e}"));
        }
        tracing::info!(peer = %self.peer, next_seq = next, "feed connected");
        // The first bytes say the format; a client that says nothing in
        // time is dropped, so it cannot hold the one feed slot.
        let deadline = tokio::time::Instant::now() + options.handshake_timeout;
        let mut format = loop {
            if let Some(format) = self.sniff()? {
                break format;
            }
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.read_more(stream)) => r,
                _ = shutdown.changed() => return Ok("daemon stopping".into()),
            };
            match read {
                Err(_) => {
                    self.shared.counters.silent.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"TAPEWATCH ERROR no header in time\n").await;
                    return Err(format!(
                        "sent {} bytes and no complete header within {} ms",
                        self.filled,
                        options.handshake_timeout.as_millis()
                    ));
                }
                Ok(Err(e)) => return Err(format!("read failed: {e}")),
                Ok(Ok(0)) => {
                    self.shared.counters.silent.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("disconnected after {} bytes, before a header", self.filled));
                }
                Ok(Ok(_)) => {}
            }
        };
        if let Ok(mut f) = self.shared.format.lock() {
            *f = Some(match format {
                Format::Csv { .. } => "csv",
                Format::Binary { .. } => "binary",
            });
        }
        let mut start = 0usize;
        loop {
            // Decode what there is, pushing whenever the staging buffer fills.
            loop {
                let decoded = self.decode(&mut format, &mut start);
                let decoded = match decoded {
                    Ok(d) => d,
                    Err(e) => {
                        self.push(&mut shutdown).await?;
                        let _ = stream.write_all(format!("TAPEWATCH ERROR {e}\n").as_bytes()).await;
                        return Err(e);
                    }
                };
                self.push(&mut shutdown).await?;
                match decoded {
                    Decoded::Full => continue,
                    Decoded::More => break,
                    Decoded::Bye => return Ok("the sender said BYE".into()),
                }
            }
            self.consume(start);
            start = 0;
            let read = tokio::select! {
                r = self.read_more(stream) => r,
                _ = shutdown.changed() => return Ok("daemon stopping".into()),
            };
            match read {
                Ok(0) => {
                    let end = self.at_eof(&mut format);
                    self.push(&mut shutdown).await?;
                    return end;
                }
                Ok(_) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    async fn read_more(&mut self, stream: &mut TcpStream) -> std::io::Result<usize> {
        if self.filled == READ_BYTES {
            // Cannot happen (a frame or a line is smaller), but never grow.
            return Err(std::io::Error::other("read buffer full"));
        }
        let n = stream.read(&mut self.buf[self.filled..]).await?;
        self.filled += n;
        self.shared.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Drops the first `n` bytes read (decoded ones).
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// The format, once the first bytes tell it.
    fn sniff(&mut self) -> Result<Option<Format>, String> {
        let b = &self.buf[..self.filled];
        if b.len() >= MAGIC.len() && b.starts_with(MAGIC) {
            self.consume(MAGIC.len());
            return Ok(Some(Format::Binary { frame_no: 0 }));
        }
        if MAGIC.starts_with(b) {
            return Ok(None);
        }
        match memchr::memchr(b'\n', b) {
            Some(end) => {
                let line = b[..end].strip_suffix(b"\r").unwrap_or(&b[..end]);
                if line == HEADER.as_bytes() {
                    self.consume(end + 1);
                    return Ok(Some(Format::Csv { line_no: 1 }));
                }
                self.shared.counters.bad_header.fetch_add(1, Ordering::Relaxed);
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
                Err(format!("line 1: not a FEED.md header nor the binary magic: `{}`", shown.escape_debug()))
            }
            None if b.len() > MAX_LINE_BYTES => {
                self.shared.counters.bad_header.fetch_add(1, Ordering::Relaxed);
                Err(format!("no header line in the first {} bytes", b.len()))
            }
            None => {
                // A header still arriving must be a prefix of the real one.
                if !HEADER.as_bytes().starts_with(b) && !b.starts_with(HEADER.as_bytes()) {
                    self.shared.counters.bad_header.fetch_add(1, Ordering::Relaxed);
                    let shown = String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
                    return Err(format!("not a FEED.md header nor the binary magic: `{}`", shown.escape_debug()));
                }
                Ok(None)
            }
        }
    }

    /// Decodes complete frames or lines from `buf[start..]` into `staged`.
    fn decode(&mut self, format: &mut Format, start: &mut usize) -> Result<Decoded, String> {
        let stamp = self.clock.now_ns();
        let room = self.staged.capacity();
        match format {
            Format::Binary { frame_no } => loop {
                if self.staged.len() + wire::MAX_FRAME_RECORDS > room {
                    return Ok(Decoded::Full);
                }
                let frame = match wire::decode_frame(&self.buf[*start..self.filled]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok(Decoded::More),
                    Err(e) => {
                        self.shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("frame {}: {e}", *frame_no + 1));
                    }
                };
                *frame_no += 1;
                let (frame, used) = frame;
                match frame {
                    Frame::Records(payload) => {
                        for record in wire::records(payload) {
                            match record {
                                Ok(mut w) => {
                                    w.due_ns = stamp;
                                    self.staged.push(w);
                                }
                                Err(e) => {
                                    self.shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                                    return Err(format!("frame {frame_no}: {e}"));
                                }
                            }
                        }
                    }
                    Frame::Heartbeat(ts_ns) => {
                        self.shared.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                        self.staged.push(WireRecord { ts_ns, due_ns: stamp, heartbeat: true, ..WireRecord::default() });
                    }
                    Frame::Bye => {
                        *start += used;
                        return Ok(Decoded::Bye);
                    }
                }
                *start += used;
            },
            Format::Csv { line_no } => loop {
                if self.staged.len() >= room {
                    return Ok(Decoded::Full);
                }
                let rest = &self.buf[*start..self.filled];
                let Some(end) = memchr::memchr(b'\n', rest) else {
                    if rest.len() > MAX_LINE_BYTES {
                        self.shared.counters.malformed_lines.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("line {}: longer than {MAX_LINE_BYTES} bytes", *line_no + 1));
                    }
                    return Ok(Decoded::More);
                };
                *line_no += 1;
                let line = &rest[..end];
                csv_line(&mut self.staged, self.shared, self.peer, &mut self.malformed, line, *line_no, stamp);
                *start += end + 1;
            },
        }
    }

    /// The end of the stream: a clean end, or one inside a frame or line.
    fn at_eof(&mut self, format: &mut Format) -> Result<String, String> {
        if self.filled == 0 {
            return Ok("end of stream".into());
        }
        match format {
            Format::Csv { line_no } => {
                // A last line without its newline is still a line.
                let line = self.buf[..self.filled].to_vec();
                self.filled = 0;
                let stamp = self.clock.now_ns();
                csv_line(&mut self.staged, self.shared, self.peer, &mut self.malformed, &line, *line_no + 1, stamp);
                Ok("end of stream".into())
            }
            Format::Binary { frame_no } => {
                self.shared.counters.truncated.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "disconnected inside frame {} ({} bytes of it arrived; those records are not taken)",
                    *frame_no + 1,
                    self.filled
                ))
            }
        }
    }

    /// The seq to greet with: the pipeline's next seq once it has settled
    /// every record put into the ring before (a previous connection's), so
    /// a record it rejected (a wild seq, a repeat) never moves it and a
    /// resuming sender skips nothing. The feed settles a ring of records in
    /// well under a second and holds a record at most `HOLD_RELEASE_NS`; if
    /// the pipeline is stalled longer, the seq it has reached so far is
    /// asked for: what comes again is counted as repeats, nothing is lost.
    async fn settled_next_seq(&self) -> u64 {
        let published = self.shared.slots_published.load(Ordering::Acquire);
        let position = &self.shared.position;
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while !position.settled(published) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    peer = %self.peer,
                    waited_ms = SETTLE_WAIT.as_millis() as u64,
                    "the pipeline has not settled the previous connection's records: greeting with the seq it reached"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        position.next_seq()
    }

    /// Takes the ring's sending half, waiting while the daemon sets up a
    /// new day's ring.
    async fn take_sender(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), String> {
        while self.tx.is_none() {
            let ready = self.shared.sender_ready.notified();
            if let Some(tx) = self.shared.take_sender() {
                self.tx = Some(tx);
                break;
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return Err("daemon stopping".into()),
            }
        }
        Ok(())
    }

    /// Moves the staged records into ring slots and publishes them; waits
    /// while the ring is full. A record (or heartbeat) past the day's end
    /// ends the day first: the sending half is dropped, so the day's
    /// pipeline ends, and the rest goes into the next day's ring. Err only
    /// when the pipeline is gone or the daemon stops meanwhile.
    async fn push(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut i = 0;
        let staged = std::mem::take(&mut self.staged);
        let mut day_end = self.shared.day_end_ns.load(Ordering::Acquire);
        while i < staged.len() {
            if day_end == i64::MAX && !staged[i].malformed {
                self.shared.set_day(staged[i].ts_ns);
                day_end = self.shared.day_end_ns.load(Ordering::Acquire);
            }
            if staged[i].ts_ns >= day_end {
                self.end_day();
                if let Err(e) = self.take_sender(shutdown).await {
                    self.staged = staged;
                    return Err(e);
                }
                self.shared.set_day(staged[i].ts_ns);
                day_end = self.shared.day_end_ns.load(Ordering::Acquire);
                continue;
            }
            let Some(tx) = self.tx.as_mut() else { return Err("no ring".into()) };
            let mut waited = 0u32;
            while tx.claim().is_none() {
                if tx.consumer_gone() {
                    self.staged = staged;
                    return Err("the pipeline stopped".into());
                }
                // Back-pressure: yield a little, then sleep; TCP holds the rest.
                waited += 1;
                if waited < 16 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            let Some(slot) = tx.claim() else { continue };
            slot.clear();
            if staged[i].heartbeat {
                // Alone in its slot: the source moves event time exactly there.
                slot.push(staged[i]);
                i += 1;
            } else {
                while i < staged.len() && !staged[i].heartbeat && staged[i].ts_ns < day_end && slot.len() < WIRE_BATCH {
                    slot.push(staged[i]);
                    i += 1;
                }
            }
            tx.publish();
            self.shared.slots_published.fetch_add(1, Ordering::Release);
        }
        let mut by_kind = [0u64; 3];
        for w in staged.iter().filter(|w| !w.heartbeat && !w.malformed) {
            let kind = match w.kind {
                Kind::New => 0,
                Kind::Cancel => 1,
                Kind::Trade => 2,
            };
            by_kind[kind] += 1;
        }
        for (counter, n) in self.shared.counters.by_kind.iter().zip(by_kind) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        let records = by_kind.iter().sum::<u64>();
        self.records += records;
        self.shared.counters.records.fetch_add(records, Ordering::Relaxed);
        self.staged = staged;
        self.staged.clear();
        Ok(())
    }

    /// The day is over by the exchange clock: drops the sending half, so
    /// the day's pipeline drains, ends the day and stops; the daemon then
    /// rotates the day's files and puts the next day's sender in place.
    fn end_day(&mut self) {
        let end = self.shared.day_end_ns.load(Ordering::Acquire);
        tracing::info!(peer = %self.peer, day = %day_name(end), "the exchange clock passed the day's end: ending the day");
        self.shared.day_over.store(true, Ordering::Release);
        self.tx = None;
    }
}

/// One CSV line: staged as a record, or counted and logged as malformed.
fn csv_line(
    staged: &mut Vec<WireRecord>,
    shared: &EdgeShared,
    peer: SocketAddr,
    malformed: &mut u64,
    line: &[u8],
    line_no: u64,
    stamp: u64,
) {
    if line.is_empty() || line == b"\r" {
        return;
    }
    match wire::csv_record(line) {
        Ok(mut w) => {
            w.due_ns = stamp;
            staged.push(w);
        }
        Err(reason) => {
            *malformed += 1;
            shared.counters.malformed_lines.fetch_add(1, Ordering::Relaxed);
            // The line goes to the rejects file in its place: its text by
            // the line ring (never waited on), a marker by the record ring.
            let text = line.strip_suffix(b"\r").unwrap_or(line);
            let line_kept = shared.lines.lock().ok().is_some_and(|mut tx| match tx.claim() {
                Some(slot) => {
                    slot.clear();
                    slot.extend_from_slice(text);
                    tx.publish();
                    true
                }
                None => false,
            });
            if !line_kept {
                shared.counters.lines_not_kept.fetch_add(1, Ordering::Relaxed);
            }
            staged.push(WireRecord { due_ns: stamp, malformed: true, line_kept, ..WireRecord::default() });
            if *malformed <= LOGGED_LINES {
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                tracing::warn!(%peer, line = line_no, "malformed feed line ({reason}): {shown}");
            } else if *malformed == LOGGED_LINES + 1 {
                tracing::warn!(%peer, "more malformed lines: counted, no longer logged one by one");
            }
        }
    }
}

const _: () = assert!(MAX_FRAME_BYTES + 4 < READ_BYTES);
