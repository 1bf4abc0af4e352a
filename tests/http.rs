//! The daemon's HTTP edge over a hub filled from a real replay of the
//! sample tape: the metrics exposition, health and readiness, the alert log
//! as JSON pages and as a resumable SSE stream, the control endpoints'
//! token, and requests that are garbage, too large or never sent.

mod common;
#[path = "common/hub_run.rs"]
mod hub_run;

use common::browser::promtool_check;
use hub_run::{Server, Stream, exchange, get, post, sample_run};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapewatch::http::{BuildInfo, Control, HttpOptions, Hub, StoredAlert};

fn metric(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"));
    line[series.len() + 1..].parse().unwrap_or_else(|_| panic!("bad value: {line}"))
}

#[test]
fn metrics_pass_promtool_and_carry_the_runs_counts() {
    let run = sample_run();
    let server = Server::sample(HttpOptions::default());
    let r = get(server.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    if let Some(result) = promtool_check(&r.body) {
        assert_eq!(result, Ok(()), "promtool on\n{}", r.body);
    }
    let m = &r.body;
    let s = &run.summary;
    let read: f64 = ["new", "cancel", "trade"]
        .iter()
        .map(|k| metric(m, &format!("tapewatch_records_in_total{{kind=\"{k}\"}}")))
        .sum();
    assert_eq!(read as u64, s.feed.records_read);
    let late: f64 = ["new", "cancel", "trade"]
        .iter()
        .map(|k| metric(m, &format!("tapewatch_records_late_total{{kind=\"{k}\"}}")))
        .sum();
    assert_eq!(late as u64, s.late);
    assert!(s.late > 0, "the sample run has late records, so this checks something");
    let applied: f64 = ["new", "cancel", "trade"]
        .iter()
        .map(|k| metric(m, &format!("tapewatch_records_applied_total{{kind=\"{k}\"}}")))
        .sum();
    assert_eq!(applied as u64, s.applied);
    for rule in ["self-trade", "excessive-cancel", "wash-trade", "spoofing"] {
        let n = metric(m, &format!("tapewatch_alerts_total{{rule=\"{rule}\"}}"));
        assert_eq!(n as usize, run.alerts_by_rule(rule), "{rule}");
    }
    assert_eq!(metric(m, "tapewatch_ingest_to_alert_seconds_count") as u64, s.ingest_to_alert.len());
    assert_eq!(metric(m, "tapewatch_ingest_to_alert_seconds_bucket{le=\"+Inf\"}") as u64, s.ingest_to_alert.len());
    let p_max = s.ingest_to_alert.max() as f64 / 1e9;
    let first_full = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|b| *b >= p_max * 1.001)
        .expect("latency under 10 s");
    assert_eq!(
        metric(m, &format!("tapewatch_ingest_to_alert_seconds_bucket{{le=\"{first_full}\"}}")) as u64,
        s.ingest_to_alert.len(),
        "every alert is at or below the bucket above the max"
    );
    let checkpoints = s.checkpoints.as_ref().unwrap();
    assert_eq!(metric(m, "tapewatch_checkpoints_total") as u64, checkpoints.taken);
    assert!(metric(m, "tapewatch_checkpoint_age_seconds") >= 4.0);
    assert_eq!(metric(m, "tapewatch_active_accounts") as u64, run.accounts);
    assert_eq!(metric(m, "tapewatch_ready"), 1.0);
    assert_eq!(metric(m, "tapewatch_feed_connected"), 1.0);
    assert!(m.contains("tapewatch_build_info{version=\"0.1.0\",commit=\"test\"} 1\n"));
    assert_eq!(metric(m, "tapewatch_alert_last_id") as usize, run.alert_lines.len());
    // docs/HTTP.md names every family (without the prefix).
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/HTTP.md")).unwrap();
    for line in m.lines().filter_map(|l| l.strip_prefix("# TYPE tapewatch_")) {
        let name = line.split(' ').next().unwrap();
        assert!(doc.contains(&format!("`{name}`")), "metric tapewatch_{name} is not in docs/HTTP.md");
    }
    server.stop().unwrap();
}

#[test]
fn health_is_always_up_and_ready_flips_with_the_daemon() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 100);
    let server = Server::start(hub.clone(), control, HttpOptions::default());
    assert_eq!(get(server.addr, "/health").status, 200);
    let r = get(server.addr, "/ready");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("not ready"), "{}", r.body);
    hub.set_ready(true);
    assert_eq!(get(server.addr, "/ready").status, 200);
    assert_eq!(get(server.addr, "/health").body, "ok\n");
    hub.set_ready(false);
    assert_eq!(get(server.addr, "/ready").status, 503);
    // HEAD answers like GET without a body.
    let r = exchange(server.addr, b"HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    server.stop().unwrap();
}

#[test]
fn alerts_since_pages_through_the_log_in_id_order() {
    let run = sample_run();
    let server = Server::sample(HttpOptions::default());
    let total = run.alert_lines.len();
    assert!(total >= 5, "the sample run has alerts to page through");
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let r = get(server.addr, &format!("/alerts?since={since}&limit=4"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let page: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        let alerts = page["alerts"].as_array().unwrap();
        assert!(alerts.len() <= 4);
        for a in alerts {
            let id = a["id"].as_u64().unwrap();
            // The alert as the alerts file has it, with its id in front.
            let mut expected: Value = serde_json::from_str(&run.alert_lines[id as usize - 1]).unwrap();
            expected.as_object_mut().unwrap().insert("id".into(), id.into());
            assert_eq!(a, &expected);
            seen.push(id);
        }
        assert_eq!(page["lost"], Value::Null);
        since = page["next_since"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(seen, (1..=total as u64).collect::<Vec<_>>());
    let r = get(server.addr, &format!("/alerts?since={total}"));
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["alerts"], serde_json::json!([]));
    for bad in ["/alerts?since=-1", "/alerts?since=abc", "/alerts?limit=1e3"] {
        let r = get(server.addr, bad);
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body.contains("is not a non-negative integer"), "{bad}: {}", r.body);
    }
    server.stop().unwrap();
}

#[test]
fn a_client_that_fell_off_the_log_is_told_what_it_lost() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 3);
    let run = sample_run();
    for i in 0..run.alert_lines.len() {
        hub.publish_alert(run.alert(i));
    }
    let total = run.alert_lines.len() as u64;
    let server = Server::start(hub, control, HttpOptions::default());
    let page: Value = serde_json::from_str(&get(server.addr, "/alerts?since=1").body).unwrap();
    assert_eq!(page["lost"], serde_json::json!({"after": 1, "through": total - 3}));
    assert_eq!(page["alerts"][0]["id"], total - 2);

    let mut stream = Stream::open(server.addr, "/alerts/stream", Some(1));
    let events = stream.alerts(3, Duration::from_secs(5));
    assert_eq!(events[0].event, "lost");
    assert_eq!(events[0].id, Some(total - 3), "a reconnect resumes after the loss");
    assert!(events[0].data.contains("fell off the alert log"), "{}", events[0].data);
    let ids: Vec<u64> = events[1..].iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, [total - 2, total - 1, total]);
    assert!(get(server.addr, "/metrics").body.contains("tapewatch_sse_lost_total 1\n"));
    drop(stream);
    server.stop().unwrap();
}

#[test]
fn the_stream_delivers_each_alert_once_across_a_reconnect_and_live_ones_as_they_come() {
    let run = sample_run();
    let total = run.alert_lines.len();
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 1000);
    // Half the run is in the log before the first client connects.
    let half = total / 2;
    for i in 0..half {
        hub.publish_alert(run.alert(i));
    }
    let opts = HttpOptions { heartbeat: Duration::from_millis(300), ..HttpOptions::default() };
    let server = Server::start(hub.clone(), control, opts);
    let mut received: Vec<Event> = Vec::new();

    let mut first = Stream::open(server.addr, "/alerts/stream", None);
    assert_eq!(first.status, 200);
    received.extend(first.alerts(2, Duration::from_secs(5)));
    assert_eq!(received.len(), 2);
    drop(first); // disconnects after two alerts

    let last = received.last().unwrap().id.unwrap();
    let mut second = Stream::open(server.addr, "/alerts/stream", Some(last));
    received.extend(second.alerts(half - 2, Duration::from_secs(5)));
    // Published while the client is connected.
    for i in half..total {
        hub.publish_alert(run.alert(i));
    }
    received.extend(second.alerts(total - half, Duration::from_secs(5)));
    assert!(second.next(Duration::from_millis(200)).is_none(), "nothing more than each alert once");
    // Quiet now: the heartbeat comment keeps the stream alive.
    std::thread::sleep(Duration::from_millis(700));
    let _ = second.next(Duration::from_millis(100));
    assert!(second.comments.iter().any(|c| c == "heartbeat"), "{:?}", second.comments);

    assert!(received.iter().all(|e| e.event == "alert"));
    let ids: Vec<u64> = received.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>(), "each alert once, in order");
    for e in &received {
        assert_eq!(e.data, run.alert_lines[e.id.unwrap() as usize - 1], "the alert line as written");
    }
    // `?since=` does what Last-Event-ID does, for clients that cannot set it.
    let mut third = Stream::open(server.addr, &format!("/alerts/stream?since={}", total - 1), None);
    let tail = third.alerts(1, Duration::from_secs(5));
    assert_eq!(tail.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(), [total as u64]);
    drop((second, third));
    server.stop().unwrap();
}

use hub_run::Event;

/// Publishes `n` alerts after `from` (the run's lines, cycled) while the
/// client reads nothing, so its socket, its channel and the broadcast all
/// fill up.
fn flood(hub: &Hub, from: u64, n: u64) {
    let run = sample_run();
    for id in from + 1..=from + n {
        let line = &run.alert_lines[id as usize % run.alert_lines.len()];
        hub.publish_alert(StoredAlert { id, json: Arc::from(line.as_str()) });
    }
}

#[test]
fn a_client_behind_the_live_stream_is_served_from_the_log() {
    // More than the broadcast keeps (1024) and than loopback buffers hold.
    let n = 30_000;
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), n as usize);
    let server = Server::start(hub.clone(), control, HttpOptions::default());
    let mut stream = Stream::open(server.addr, "/alerts/stream", None);
    flood(&hub, 0, n);
    let events = stream.alerts(n as usize, Duration::from_secs(60));
    assert_eq!(events.len(), n as usize, "last: {:?}", events.last().map(|e| e.id));
    assert!(events.iter().all(|e| e.event == "alert"), "nothing lost: the log had it all");
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "each alert once, in order");
    let m = get(server.addr, "/metrics").body;
    assert!(metric(&m, "tapewatch_sse_lagged_total") >= 1.0, "the client did fall behind the live alerts");
    drop(stream);
    server.stop().unwrap();
}

#[test]
fn a_client_behind_the_log_is_told_what_it_lost_and_goes_on() {
    let n = 30_000;
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 2_000);
    let server = Server::start(hub.clone(), control, HttpOptions::default());
    let mut stream = Stream::open(server.addr, "/alerts/stream", None);
    flood(&hub, 0, n);
    let mut events = Vec::new();
    while events.last().and_then(|e: &Event| e.id) != Some(n) {
        match stream.next(Duration::from_secs(60)) {
            Some(e) => events.push(e),
            None => panic!("the stream stopped after {:?}", events.last()),
        }
    }
    let lost: Vec<&Event> = events.iter().filter(|e| e.event == "lost").collect();
    assert!(!lost.is_empty(), "a client 28,000 alerts behind a 2,000-alert log lost some");
    // Ids only go up; every alert not reported lost came, once.
    let mut last = 0;
    let mut delivered = 0;
    for e in &events {
        let id = e.id.unwrap();
        assert!(id > last, "id {id} after {last}");
        if e.event == "lost" {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["after"].as_u64(), Some(last), "the loss starts where the client was");
            assert_eq!(v["through"].as_u64(), Some(id));
        } else {
            assert_eq!(id, last + 1, "after a loss or an alert comes the next alert");
            delivered += 1;
        }
        last = id;
    }
    assert!(delivered >= 2_000, "at least the log's worth came");
    let m = get(server.addr, "/metrics").body;
    assert_eq!(metric(&m, "tapewatch_sse_lost_total") as usize, lost.len());
    drop(stream);
    server.stop().unwrap();
}

#[test]
fn stream_clients_beyond_the_limit_are_refused_and_counted() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    let server = Server::start(hub.clone(), control, HttpOptions { max_sse_clients: 2, ..HttpOptions::default() });
    let a = Stream::open(server.addr, "/alerts/stream", None);
    let b = Stream::open(server.addr, "/alerts/stream", None);
    assert_eq!((a.status, b.status), (200, 200));
    let r = get(server.addr, "/alerts/stream");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("too many alert stream clients (at most 2)"), "{}", r.body);
    let m = get(server.addr, "/metrics").body;
    assert!(m.contains("tapewatch_sse_clients 2\n") && m.contains("tapewatch_sse_refused_total 1\n"), "{m}");
    drop(a);
    // The slot frees once the server sees the client gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = Stream::open(server.addr, "/alerts/stream", None);
        if c.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a departed client's slot was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = exchange(server.addr, b"GET /alerts/stream HTTP/1.1\r\nLast-Event-ID: x7\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Last-Event-ID"), "{}", r.body);
    drop(b);
    server.stop().unwrap();
}

#[test]
fn control_endpoints_honour_the_token() {
    // No token configured: the endpoints are off.
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    let server = Server::start(hub, control, HttpOptions::default());
    let r = post(server.addr, "/checkpoint", Some("anything"));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("no token file is configured"), "{}", r.body);
    server.stop().unwrap();

    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    let opts = HttpOptions { token: Some("s3cret-token".into()), ..HttpOptions::default() };
    let mut server = Server::start(hub, control, opts);
    let r = post(server.addr, "/checkpoint", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.body.contains("missing header"), "{}", r.body);
    let r = post(server.addr, "/reload", Some("s3cret-tokem"));
    assert_eq!((r.status, r.body.as_str()), (401, "wrong bearer token\n"));
    let r = post(server.addr, "/reload", Some("s3cret"));
    assert_eq!(r.status, 401, "a prefix of the token is wrong");
    let mut control = server.control.take().unwrap();
    assert!(control.try_recv().is_err(), "refused requests reach nobody");

    let r = post(server.addr, "/checkpoint", Some("s3cret-token"));
    assert_eq!((r.status, r.body.as_str()), (202, "checkpoint requested\n"));
    let r = post(server.addr, "/reload", Some("s3cret-token"));
    assert_eq!((r.status, r.body.as_str()), (202, "reload requested\n"));
    assert_eq!(control.try_recv().unwrap(), Control::Checkpoint);
    assert_eq!(control.try_recv().unwrap(), Control::Reload);
    let r = get(server.addr, "/checkpoint");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert!(get(server.addr, "/metrics").body.contains("tapewatch_http_unauthorized_total 3\n"));
    // The daemon stopped listening: a clear 503, not a hang.
    drop(control);
    let r = post(server.addr, "/checkpoint", Some("s3cret-token"));
    assert_eq!(r.status, 503);
    assert!(r.body.contains("not taking control requests"), "{}", r.body);
    server.stop().unwrap();
}

#[test]
fn bad_requests_get_a_clear_answer_and_the_server_keeps_running() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    let opts = HttpOptions { header_read_timeout: Duration::from_millis(500), ..HttpOptions::default() };
    let server = Server::start(hub.clone(), control, opts);

    let r = exchange(server.addr, b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    let r = exchange(server.addr, b"GET /metrics HTTP/9.9\r\n\r\n");
    assert!(r.status == 400 || r.status == 505, "{r:?}");

    let huge = format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(exchange(server.addr, huge.as_bytes()).status, 431);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = exchange(server.addr, format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes());
    assert_eq!(r.status, 431);

    let r = get(server.addr, "/nope");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no such endpoint: /nope") && r.body.contains("/alerts/stream"), "{}", r.body);
    let r = post(server.addr, "/metrics", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));

    // Connects and sends nothing: closed after the header timeout.
    use std::io::Read;
    let mut silent = std::net::TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(5), "a silent client was held {:?}", t.elapsed());
    // A half request, then nothing.
    let mut half = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut half, b"GET /metr").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let _ = half.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(5));

    // Kept alive after a request, then idle: closed too, so idle clients
    // cannot hold every connection slot.
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut idle, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let _ = idle.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() < Duration::from_secs(5), "an idle kept-alive client was held {:?}", t.elapsed());

    // Still serving, and it counted what it answered.
    assert_eq!(get(server.addr, "/health").status, 200);
    let m = get(server.addr, "/metrics").body;
    assert!(metric(&m, "tapewatch_http_bad_requests_total") >= 2.0, "{m}");
    server.stop().unwrap();
}

#[test]
fn connections_beyond_the_limit_are_closed_and_counted() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    let server = Server::start(hub, control, HttpOptions { max_connections: 2, ..HttpOptions::default() });
    let a = Stream::open(server.addr, "/alerts/stream", None);
    let b = Stream::open(server.addr, "/alerts/stream", None);
    let mut c = std::net::TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let n = std::io::Read::read_to_end(&mut c, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed without an answer");
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut out);
        if let Some(r) = hub_run::parse_response(&out) {
            break r.body;
        }
        assert!(Instant::now() < deadline, "connections were never freed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metric(&m, "tapewatch_http_connections_refused_total") >= 1.0, "{m}");
    server.stop().unwrap();
}

#[test]
fn shutdown_ends_open_streams_and_returns() {
    let (hub, control) = Hub::new(BuildInfo::this_build("test"), 10);
    hub.publish_alert(StoredAlert { id: 7, json: Arc::from(r#"{"rule":"self-trade"}"#) });
    let server = Server::start(hub, control, HttpOptions::default());
    let mut stream = Stream::open(server.addr, "/alerts/stream", None);
    assert_eq!(stream.alerts(1, Duration::from_secs(5))[0].id, Some(7));
    let t = Instant::now();
    server.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "shutdown took {:?}", t.elapsed());
    assert!(stream.next(Duration::from_secs(2)).is_none(), "the stream ended");
}

#[test]
fn status_json_has_the_runs_figures() {
    let run = sample_run();
    let server = Server::sample(HttpOptions::default());
    let r = get(server.addr, "/api/status");
    assert_eq!(r.status, 200);
    let s: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(s["alerts"]["total"], run.alert_lines.len());
    assert_eq!(s["ready"], true);
    assert_eq!(s["trading_day"], run.trading_day.as_str());
    assert_eq!(s["history"].as_array().unwrap().len(), hub_run::STEPS);
    let in_total: u64 = s["records"]["in"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(in_total, run.summary.feed.records_read);
    assert_eq!(s["alerts"]["recent"][0]["id"], run.alert_lines.len(), "newest first");
    assert!(s["latency"]["p99_ns"].as_u64().unwrap() > 0);
    server.stop().unwrap();
}
