//! A `Hub` filled from a real run, served on loopback, and a small std
//! HTTP client: what `tests/http.rs` and `tests/dashboard.rs` share.
//!
//! The run is a replay of `feeds/sample.csv` (with its accounts,
//! instruments and checkpoints). Its records are published to the hub in
//! 600 one-second steps cut by the tape's own event time, so the hub's
//! history (the dashboard's charts) has the day's real shape, and its
//! alerts arrive in the step their record fell in. The last step's counts
//! are the run's summary.

#![allow(dead_code)]

use super::common::{read_alerts, replay_args, run_replay};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tapewatch::http::hub::now_unix_ms;
use tapewatch::http::{
    BuildInfo, CheckpointStatus, Control, FeedStatus, HttpOptions, Hub, PipelineCounts, RingOccupancy, StoredAlert,
    serve_http,
};
use tapewatch::metrics::Summary;

/// Steps of the published timeline (one a second, as a daemon publishes).
pub const STEPS: usize = 600;

pub struct Run {
    pub summary: Summary,
    /// The alert lines as written, in file order (id = position + 1).
    pub alert_lines: Vec<String>,
    /// Per step: records by kind read in it, late ones by kind, and the
    /// alerts (index into `alert_lines`) whose record fell in it.
    pub steps: Vec<([u64; 3], [u64; 3], Vec<usize>)>,
    pub accounts: u64,
    pub trading_day: String,
}

fn kind_index(kind: &str) -> Option<usize> {
    match kind {
        "N" => Some(0),
        "C" => Some(1),
        "T" => Some(2),
        _ => None,
    }
}

/// The sample tape's replay, once per test binary.
pub fn sample_run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tape = root.join("feeds/sample.csv");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = replay_args(&tape, dir.path(), 2);
        args.reference.files.accounts = Some(root.join("feeds/sample.accounts.csv"));
        args.reference.files.instruments = Some(root.join("feeds/sample.instruments.csv"));
        args.state = Some(dir.path().join("state"));
        args.checkpoint_every_records = Some(50_000);
        let summary = run_replay(&args);
        let alerts_path = dir.path().join("alerts.jsonl");
        let mut alert_lines: Vec<String> =
            std::fs::read_to_string(&alerts_path).expect("alerts").lines().map(str::to_string).collect();
        assert_eq!(read_alerts(&alerts_path).len(), alert_lines.len());
        // Shards commit in the order they finish, so the file need not be
        // in seq order; ids follow the line, and `fill` publishes step by
        // step of event time: order the lines by seq so that ids increase
        // as they are published (the hub ignores an id not above the last).
        let seq_of = |line: &String| serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"].as_u64().unwrap();
        alert_lines.sort_by_key(seq_of);

        // The tape's records by step of event time.
        let text = std::fs::read_to_string(&tape).expect("tape");
        let rows: Vec<(u64, u64, usize, &str)> = text
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap(), kind_index(f[2]).unwrap(), f[4])
            })
            .collect();
        let t0 = rows.iter().map(|r| r.1).min().unwrap();
        let t1 = rows.iter().map(|r| r.1).max().unwrap();
        let step_of = |ts: u64| ((ts - t0) as u128 * STEPS as u128 / (t1 - t0 + 1) as u128) as usize;
        let mut steps: Vec<([u64; 3], [u64; 3], Vec<usize>)> = vec![([0; 3], [0; 3], Vec::new()); STEPS];
        let mut step_by_seq = std::collections::HashMap::new();
        for &(seq, ts, kind, _) in &rows {
            steps[step_of(ts)].0[kind] += 1;
            step_by_seq.insert(seq, step_of(ts));
        }
        let late = std::fs::read_to_string(dir.path().join("alerts.late.csv")).expect("late file");
        for line in late.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let ts: u64 = f[1].parse().unwrap();
            steps[step_of(ts)].1[kind_index(f[2]).unwrap()] += 1;
        }
        for (i, line) in alert_lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            steps[step_by_seq[&seq]].2.push(i);
        }
        let accounts: std::collections::HashSet<&str> = rows.iter().map(|r| r.3).collect();
        let first: serde_json::Value = serde_json::from_str(&alert_lines[0]).unwrap();
        Run {
            summary,
            alert_lines,
            steps,
            accounts: accounts.len() as u64,
            trading_day: first["time"].as_str().unwrap()[..10].to_string(),
        }
    })
}

impl Run {
    pub fn alert(&self, i: usize) -> StoredAlert {
        StoredAlert { id: i as u64 + 1, json: Arc::from(self.alert_lines[i].as_str()) }
    }

    pub fn alerts_by_rule(&self, rule: &str) -> usize {
        self.alert_lines.iter().filter(|l| l.contains(&format!("\"rule\":\"{rule}\""))).count()
    }

    /// Publishes the whole run into `hub` as a daemon would have over the
    /// last `STEPS` seconds, and marks it ready.
    pub fn fill(&self, hub: &Hub) -> PipelineCounts {
        let s = &self.summary;
        let now = now_unix_ms();
        let mut counts = PipelineCounts {
            rejected: vec![("bad-field".to_string(), s.feed.rejected)],
            rings: vec![
                RingOccupancy { name: "live".into(), used: 0, capacity: 64 },
                RingOccupancy { name: "shard-0".into(), used: 3, capacity: 16 },
                RingOccupancy { name: "shard-1".into(), used: 1, capacity: 16 },
            ],
            active_accounts: self.accounts,
            trading_day: self.trading_day.clone(),
            ..PipelineCounts::default()
        };
        for (i, (records, late, alerts)) in self.steps.iter().enumerate() {
            for k in 0..3 {
                counts.records_in[k] += records[k];
                counts.late[k] += late[k];
                counts.applied[k] += records[k] - late[k];
            }
            for &a in alerts {
                hub.publish_alert(self.alert(a));
            }
            hub.publish_counts_at(now - (STEPS - 1 - i) as u64 * 1000, &counts);
        }
        hub.publish_latency(&s.ingest_to_alert);
        let c = s.checkpoints.as_ref().expect("the run took checkpoints");
        hub.publish_checkpoint(&CheckpointStatus {
            last_unix_ms: Some(now - 4_000),
            last_id: c.taken,
            last_duration_ns: c.duration.max(),
            last_bytes: c.bytes / c.taken.max(1),
            taken: c.taken,
            failures: 0,
        });
        hub.set_feed(FeedStatus {
            connected: true,
            peer: Some("127.0.0.1:50412".into()),
            format: Some("binary".into()),
            next_seq: s.feed.records_read + 1,
            connections: 1,
            gaps: s.feed.gaps,
            missing_records: s.feed.missing_records,
            ..FeedStatus::default()
        });
        hub.set_ready(true);
        counts
    }

    /// Goes on as a live daemon would until `stop`: every second the next
    /// step of the day again (counts and its alerts, with new ids), and an
    /// alert of the run every 250 ms so a client has something to stream.
    pub fn keep_live(&self, hub: &Hub, mut counts: PipelineCounts, stop: &std::sync::atomic::AtomicBool) {
        let mut id = hub.last_alert_id().unwrap_or(0);
        let mut publish = |i: usize| {
            id += 1;
            hub.publish_alert(StoredAlert { id, json: Arc::from(self.alert_lines[i].as_str()) });
        };
        let mut step = 0;
        let mut tick = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            tick += 1;
            publish(tick as usize % self.alert_lines.len());
            if tick.is_multiple_of(4) {
                let (records, late, alerts) = &self.steps[step % STEPS];
                for k in 0..3 {
                    counts.records_in[k] += records[k];
                    counts.late[k] += late[k];
                    counts.applied[k] += records[k] - late[k];
                }
                for &a in alerts {
                    publish(a);
                }
                hub.publish_counts(&counts);
                step += 1;
            }
        }
    }
}

/// `serve_http` on `127.0.0.1:0` in its own runtime thread; stopped (and
/// checked to return `Ok`) by `stop` or on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
    /// The counts `sample` published last (to go on from).
    pub filled: Option<PipelineCounts>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start(hub: Arc<Hub>, control: tokio::sync::mpsc::UnboundedReceiver<Control>, opts: HttpOptions) -> Server {
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let served = hub.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).expect("test waits for the address");
                serve_http(listener, served, opts, watch).await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server did not start");
        Server { addr, hub, control: Some(control), filled: None, shutdown, thread: Some(thread) }
    }

    /// A server over a hub filled from the sample run.
    pub fn sample(opts: HttpOptions) -> Server {
        let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10_000);
        let counts = sample_run().fill(&hub);
        let mut server = Server::start(hub, control, opts);
        server.filled = Some(counts);
        server
    }

    /// Asks the server to stop and waits for `serve_http` to return.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.stop_inner();
        }
    }
}

/// A response as the test client read it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` (a whole request, or any bytes) and reads until the server
/// closes; returns the parsed response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("send");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("read response");
    parse_response(&bytes).unwrap_or_else(|| panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&bytes)))
}

pub fn parse_response(bytes: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest.as_bytes()).0 } else { rest.to_string() };
    Some(Response { status, headers, body })
}

/// The data of a chunked body, as far as it is complete, and the bytes used.
pub fn dechunk(mut bytes: &[u8]) -> (String, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).unwrap_or("x").trim(), 16) else {
            break;
        };
        if size == 0 || bytes.len() < eol + 2 + size + 2 {
            break;
        }
        out.extend_from_slice(&bytes[eol + 2..eol + 2 + size]);
        bytes = &bytes[eol + 2 + size + 2..];
        used += eol + 2 + size + 2;
    }
    (String::from_utf8_lossy(&out).into_owned(), used)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
}

pub fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    exchange(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

/// An open `GET /alerts/stream`, read event by event.
pub struct Stream {
    sock: TcpStream,
    raw: Vec<u8>,
    /// Dechunked text not yet split into events.
    text: String,
    pub status: u16,
    /// Comment lines seen (the heartbeat).
    pub comments: Vec<String>,
    pending: std::collections::VecDeque<Event>,
}

impl Stream {
    pub fn open(addr: SocketAddr, path: &str, last_event_id: Option<u64>) -> Stream {
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        sock.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{resume}\r\n").as_bytes(),
        )
        .expect("send");
        let mut s = Stream {
            sock,
            raw: Vec::new(),
            text: String::new(),
            status: 0,
            comments: Vec::new(),
            pending: std::collections::VecDeque::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.status == 0 {
            assert!(std::time::Instant::now() < deadline, "no response head");
            s.fill();
            let raw = String::from_utf8_lossy(&s.raw).into_owned();
            if let Some(end) = raw.find("\r\n\r\n") {
                s.status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(1);
                s.raw.drain(..end + 4);
            }
        }
        s
    }

    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.sock.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => true,
            Err(_) => false,
        }
    }

    /// The next event within `timeout`, or `None` (timed out or closed).
    pub fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.status == 200 {
                let (more, used) = dechunk(&self.raw);
                self.raw.drain(..used);
                self.text.push_str(&more);
            }
            // Every complete event at once, then one drain: a stream can
            // bring many megabytes.
            let mut consumed = 0;
            while let Some(end) = self.text[consumed..].find("\n\n") {
                let block = &self.text[consumed..consumed + end];
                consumed += end + 2;
                let mut ev = Event { id: None, event: "message".into(), data: String::new() };
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_string());
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "id" => ev.id = v.parse().ok(),
                            "event" => ev.event = v.to_string(),
                            "data" => ev.data = v.to_string(),
                            _ => {}
                        }
                    }
                }
                if ev.id.is_some() || ev.event != "message" || !ev.data.is_empty() {
                    self.pending.push_back(ev);
                }
            }
            self.text.drain(..consumed);
            if !self.pending.is_empty() {
                continue;
            }
            if std::time::Instant::now() >= deadline || !self.fill() {
                return None;
            }
        }
    }

    /// Events until `n` alerts came or `timeout` passed.
    pub fn alerts(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut alerts = 0;
        while alerts < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left) {
                Some(e) => {
                    alerts += usize::from(e.event == "alert");
                    out.push(e);
                }
                None => break,
            }
        }
        out
    }
}
