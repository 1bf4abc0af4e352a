//! The daemon end to end, with the built binary on loopback: `serve` fed
//! by `feed`, stopped by SIGTERM and killed with -9 at seeded points,
//! restarted on the same state, the day ended by the exchange clock: the
//! day's alerts file equals a `replay` of the same tape (outside `timing`)
//! and its late file is byte for byte the replay's. Also: a second feed
//! refused, bad bytes on the socket, the config check, metrics and alerts
//! over HTTP.

mod common;

use common::daemon::Daemon;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tapewatch::generator::{GenConfig, generate};
use tapewatch::wire;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tapewatch")
}

fn feed(daemon: &Daemon, tape: &Path, extra: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("feed")
        .arg(tape)
        .args(["--to", &daemon.feed, "--quiet"])
        .args(extra)
        .output()
        .expect("run feed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "feed failed: {text}\ndaemon log:\n{}", daemon.log());
    text
}

/// A generated day, rules with low thresholds (many alerts, much window
/// state), and the daemon's config for it.
fn setup(dir: &Path, events: u64, seed: u64, extra: &str) -> (PathBuf, PathBuf) {
    let tape = dir.join("day.csv");
    generate(&GenConfig::new(events, seed), &tape).expect("generate");
    std::fs::write(dir.join("rules.toml"), "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 2\nratio_pct = 60\n")
        .unwrap();
    let config = dir.join("tw.toml");
    std::fs::write(
        &config,
        format!(
            "feed_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nstate = \"state\"\nalerts = \"out/alerts.jsonl\"\n\
             accounts = \"day.accounts.csv\"\ninstruments = \"day.instruments.csv\"\nrules = \"rules.toml\"\n\
             idle_after_ms = 0\ncheckpoint_interval_ms = 20\ncheckpoint_every_records = 4000\ncores = \"none\"\n{extra}"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    (tape, config)
}

fn replay(dir: &Path, tape: &Path) -> PathBuf {
    let out = dir.join("ref");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new(bin())
        .arg("replay")
        .arg(tape)
        .args(["--quiet", "--shards", "1", "--cores", "none", "--rules"])
        .arg(dir.join("rules.toml"))
        .arg("--alerts")
        .arg(out.join("alerts.jsonl"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// Alert lines in file order without `timing`.
fn alerts(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("timing");
            v
        })
        .collect()
}

/// The dated files of the closed day, once the day is closed.
fn closed_day(dir: &Path) -> (PathBuf, PathBuf) {
    let started = Instant::now();
    loop {
        let mut dated: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("alerts.20"))
            .collect();
        dated.sort();
        if dated.len() == 1 {
            let day = dated[0].file_name().unwrap().to_string_lossy().replace("alerts.", "").replace(".jsonl", "");
            return (dated[0].clone(), dir.join(format!("out/alerts.late.{day}.csv")));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the day was not closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_same_day(dir: &Path, reference: &Path) {
    let (alerts_file, late_file) = closed_day(dir);
    let (got, want) = (alerts(&alerts_file), alerts(&reference.join("alerts.jsonl")));
    assert!(want.len() > 20, "too few alerts to compare: {}", want.len());
    assert_eq!(got.len(), want.len(), "alert count differs");
    assert!(got == want, "the daemon's alerts differ from the replay's");
    let (got_late, want_late) =
        (std::fs::read(&late_file).unwrap(), std::fs::read(reference.join("alerts.late.csv")).unwrap());
    assert!(got_late == want_late, "late files differ");
}

#[test]
fn sigterm_and_kill9_resume_exactly_once_and_the_day_equals_replay() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 60_000, 11, "");
    let reference = replay(dir, &tape);

    // SIGTERM midway.
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "17000"]);
    let log = daemon.stop();
    assert!(log.contains("feed disconnected"), "{log}");

    // Restarts at seeded points, each killed with -9 after a seeded number
    // of records: what came after the last checkpoint is sent again.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let daemon = Daemon::start(&config);
        assert!(daemon.log().contains("resuming from checkpoint"), "{}", daemon.log());
        let limit = 3_000 + seed % 9_000;
        feed(&daemon, &tape, &["--limit", &limit.to_string()]);
        std::thread::sleep(Duration::from_millis(seed % 200));
        daemon.kill9();
    }

    // The rest, in CSV this time, then the exchange clock ends the day.
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--format", "csv"]);
    feed(&daemon, &tape, &["--end-of-day"]);
    daemon.wait_log("day closed");
    assert_same_day(dir, &reference);
    // The next day starts fresh: an empty alerts file, no checkpoints of the old day.
    let log = daemon.stop();
    assert!(log.contains("day ended"), "{log}");
    assert_eq!(std::fs::read_to_string(dir.join("out/alerts.jsonl")).unwrap(), "");
}

#[test]
fn one_feed_at_a_time_and_bad_bytes_end_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 30_000, 5, "handshake_timeout_ms = 300\n");
    let reference = replay(dir, &tape);
    let daemon = Daemon::start(&config);

    let greet = |stream: &mut TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
        line
    };
    // A second connection is refused while one is open, with a reason.
    let mut first = TcpStream::connect(&daemon.feed).unwrap();
    assert!(greet(&mut first).starts_with("TAPEWATCH 1 NEXT_SEQ 0 "), "greeting");
    let mut second = TcpStream::connect(&daemon.feed).unwrap();
    let refused = greet(&mut second);
    assert!(refused.starts_with("TAPEWATCH BUSY another feed is connected"), "{refused}");
    // The first one says nothing: dropped after the handshake timeout.
    daemon.wait_log("no complete header within 300 ms");
    drop(first);

    // Each bad input ends its connection with a clear line in the log.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x00\xffgarbage\n".to_vec(), "not a FEED.md header nor the binary magic"),
        (b"seq,ts,kind\n".to_vec(), "line 1: not a FEED.md header"),
        ([&wire::MAGIC[..], &u32::MAX.to_le_bytes()].concat(), "frame 1: frame length 4294967295 outside"),
        ([&wire::MAGIC[..], &[201, 0, 0, 0, 1, 7, 7]].concat(), "disconnected inside frame 1"),
    ];
    for (bytes, message) in cases {
        let mut stream = TcpStream::connect(&daemon.feed).unwrap();
        greet(&mut stream);
        stream.write_all(&bytes).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        daemon.wait_log(message);
    }
    // Malformed CSV lines are counted and logged; the good ones go on.
    let mut stream = TcpStream::connect(&daemon.feed).unwrap();
    greet(&mut stream);
    stream.write_all(format!("{}\nnot,a,record\n", tapewatch::ingest::csv::HEADER).as_bytes()).unwrap();
    drop(stream);
    daemon.wait_log("malformed feed line");

    // The daemon still takes a whole day, and loses nothing of it.
    feed(&daemon, &tape, &["--end-of-day"]);
    daemon.wait_log("day closed");
    assert_same_day(dir, &reference);
    let metrics = daemon.wait_metrics("a refused feed", |m| m.contains("tapewatch_feed_refused_total 1"));
    assert!(metrics.contains("tapewatch_feed_connections_total"), "{metrics}");
    if let Some(result) = common::browser::promtool_check(&metrics) {
        result.expect("promtool check metrics");
    }
    daemon.stop();
}

#[test]
fn alerts_over_http_keep_their_ids_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 40_000, 7, "");
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "30000"]);
    // The tailer publishes within a fraction of a second of each checkpoint.
    std::thread::sleep(Duration::from_millis(800));
    let before: Value = serde_json::from_str(&daemon.get("/alerts?since=0")).unwrap();
    let before = before["alerts"].as_array().unwrap().clone();
    assert!(!before.is_empty(), "no alerts over HTTP");
    daemon.stop();
    let daemon = Daemon::start(&config);
    std::thread::sleep(Duration::from_millis(800));
    let after: Value = serde_json::from_str(&daemon.get("/alerts?since=0")).unwrap();
    let after = after["alerts"].as_array().unwrap();
    let ids =
        |list: &[Value]| list.iter().map(|a| (a["id"].as_u64().unwrap(), a["alert_id"].clone())).collect::<Vec<_>>();
    assert_eq!(ids(&after[..before.len()]), ids(&before), "the refilled log has other ids");
    daemon.stop();
}

#[test]
fn check_reports_every_problem_and_accepts_the_shipped_example() {
    let ok = Command::new(bin()).args(["serve", "--check", "--config", "ops/tapewatch.toml"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": OK"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "state = \"s\"\nalerts = \"a.jsonl\"\nshards = 0\nlateness_ms = -5\nday_boundary = \"7pm\"\nrules = \"missing.toml\"\n",
    )
    .unwrap();
    let out = Command::new(bin()).args(["serve", "--check", "--config"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for needle in ["line 3: shards = 0", "line 4: lateness_ms = -5", "line 5: day_boundary = `7pm`", "missing.toml"] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "state = \"s\"\nalerts = \"a\"\nfeed = 1\nshard = 2\n").unwrap();
    let out = Command::new(bin()).args(["serve", "--check", "--config"]).arg(&unknown).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("line 3: unknown key `feed`") && text.contains("line 4: unknown key `shard`"), "{text}");
}

/// `curl -N` on the alert stream; ids (and data lines) as they arrive.
struct Stream {
    child: Child,
    events: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Stream {
    fn open(daemon: &Daemon, last_event_id: Option<u64>) -> Stream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sN", "--max-time", "60"]);
        if let Some(id) = last_event_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child =
            cmd.arg(format!("http://{}/alerts/stream", daemon.http)).stdout(Stdio::piped()).spawn().expect("curl");
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            let mut id = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(data) = line.strip_prefix("data: ")
                    && let Some(id) = id.take()
                {
                    sink.lock().unwrap().push((id, data.to_string()));
                }
            }
        });
        Stream { child, events }
    }

    fn wait_for(&self, n: usize) -> Vec<(u64, String)> {
        let started = Instant::now();
        loop {
            let events = self.events.lock().unwrap().clone();
            if events.len() >= n {
                return events;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{} of {n} events", events.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_alert_stream_delivers_each_alert_once_across_a_reconnect_and_a_restart() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 40_000, 9, "");
    let reference = replay(dir, &tape);
    let total = alerts(&reference.join("alerts.jsonl")).len();
    assert!(total > 20, "{total}");

    let daemon = Daemon::start(&config);
    let stream = Stream::open(&daemon, None);
    feed(&daemon, &tape, &["--limit", "25000"]);
    let first = stream.wait_for(5);
    drop(stream);
    // Reconnect with the last id seen, across a restart of the daemon.
    let last = first.last().unwrap().0;
    daemon.stop();
    let daemon = Daemon::start(&config);
    let stream = Stream::open(&daemon, Some(last));
    feed(&daemon, &tape, &["--end-of-day"]);
    let rest = stream.wait_for(total - first.len());
    std::thread::sleep(Duration::from_millis(500));
    let rest = rest.len().max(stream.events.lock().unwrap().len());
    let rest = stream.events.lock().unwrap()[..rest].to_vec();
    let all: Vec<(u64, String)> = first.into_iter().chain(rest).collect();
    let ids: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not strictly increasing: {ids:?}");
    assert_eq!(all.len(), total, "each alert exactly once");
    let streamed: Vec<Value> = all
        .iter()
        .map(|(_, data)| {
            let mut v: Value = serde_json::from_str(data).unwrap();
            v.as_object_mut().unwrap().remove("timing");
            v
        })
        .collect();
    let (day_file, _) = closed_day(dir);
    assert!(streamed == alerts(&day_file), "the stream differs from the day's alerts file");
    daemon.stop();
}

#[test]
fn sighup_refuses_an_invalid_rules_file_and_keeps_the_old_rules() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 30_000, 3, "");
    let reference = replay(dir, &tape);
    let daemon = Daemon::start(&config);
    std::fs::write(dir.join("rules.toml"), "[excessive_cancel]\nwindow_ms = 0\nbogus = 1\n").unwrap();
    daemon.hup();
    daemon.wait_log("SIGHUP: refused, the old rules stay");
    // The day runs on under the old rules: it equals the replay with them.
    std::fs::write(dir.join("rules.toml"), "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 2\nratio_pct = 60\n")
        .unwrap();
    feed(&daemon, &tape, &["--end-of-day"]);
    daemon.wait_log("day closed");
    assert_same_day(dir, &reference);
    daemon.stop();
}

/// Issue 11: records missing from the live feed are one `feed-gap` alert
/// naming the range, committed exactly once across a SIGTERM and a kill -9;
/// a resend of records already taken is one repeat alert, and they are not
/// applied again; every other alert equals the replay of the same tape.
#[test]
fn a_removed_block_is_one_feed_gap_alert_and_a_resend_is_counted_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (full, config) = setup(dir, 20_000, 13, "");
    // The tape with the records 5001..=5200 removed.
    let text = std::fs::read_to_string(&full).unwrap();
    let seq_of = |line: &str| line.split(',').next().and_then(|s| s.parse::<u64>().ok());
    let kept: String = text
        .lines()
        .filter(|line| seq_of(line).is_none_or(|seq| !(5001..=5200).contains(&seq)))
        .map(|line| format!("{line}\n"))
        .collect();
    let tape = dir.join("gap.csv");
    std::fs::write(&tape, kept).unwrap();
    // The replay finds the reference data beside its tape.
    for what in ["accounts", "instruments"] {
        std::fs::copy(dir.join(format!("day.{what}.csv")), dir.join(format!("gap.{what}.csv"))).unwrap();
    }
    let reference = replay(dir, &tape);

    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "4000"]);
    daemon.stop();
    // Across the gap, then killed at a seeded point: the gap's alert may or
    // may not be committed yet; either way it is in the day once.
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "2000"]);
    std::thread::sleep(Duration::from_millis(70));
    daemon.kill9();
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "1000"]);
    // A sender that ignores the greeting resends seqs 100..=149.
    let mut stream = TcpStream::connect(&daemon.feed).unwrap();
    let resent: String = text
        .lines()
        .filter(|line| seq_of(line).is_some_and(|seq| (100..=149).contains(&seq)))
        .collect::<Vec<_>>()
        .join("\n");
    stream.write_all(format!("{}\n{resent}\n", tapewatch::ingest::csv::HEADER).as_bytes()).unwrap();
    drop(stream);
    let started = Instant::now();
    while !std::fs::read_to_string(dir.join("out/alerts.jsonl")).unwrap().contains("\"kind\":\"repeat\"") {
        assert!(started.elapsed() < Duration::from_secs(60), "no repeat alert:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Counted on /metrics: as repeats, and as rejects by reason and by kind.
    let metrics = daemon.wait_metrics("50 repeats", |m| metric_sum(m, "tapewatch_feed_repeats_total") == 50.0);
    assert!(metrics.contains("tapewatch_records_rejected_total{reason=\"repeated-seq\"} 50"), "{metrics}");
    // (Records after the removed block that name its orders are rejects too.)
    let by_kind = metric_sum(&metrics, "tapewatch_records_rejected_by_kind_total");
    assert!(by_kind >= 50.0 && by_kind == metric_sum(&metrics, "tapewatch_records_rejected_total"), "{metrics}");
    if let Some(result) = common::browser::promtool_check(&metrics) {
        result.expect("promtool check metrics");
    }
    daemon.stop();
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--end-of-day"]);
    daemon.wait_log("day closed");

    let (day_file, late_file) = closed_day(dir);
    let (findings, got): (Vec<Value>, Vec<Value>) =
        alerts(&day_file).into_iter().partition(|a| a["rule"] == "feed-gap");
    let gaps: Vec<&Value> = findings.iter().filter(|a| a["kind"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "one gap alert: {findings:?}");
    let e = &gaps[0]["evidence"];
    assert_eq!((e["expected_seq"].as_u64(), e["received_seq"].as_u64()), (Some(5001), Some(5201)), "{e}");
    assert_eq!((e["missing"].as_u64(), e["last_missing"].as_u64()), (Some(200), Some(5200)), "{e}");
    assert!(gaps[0]["time"].as_str().is_some_and(|t| t.starts_with("20")), "{}", gaps[0]);
    let repeats: Vec<&Value> = findings.iter().filter(|a| a["kind"] == "repeat").collect();
    assert_eq!(repeats.len(), 1, "one repeat alert: {findings:?}");
    let e = &repeats[0]["evidence"];
    assert_eq!((e["repeated"].as_u64(), e["first_repeated"].as_u64()), (Some(50), Some(100)), "{e}");
    assert_eq!(e["last_repeated"].as_u64(), Some(149), "{e}");
    assert_eq!(findings.len(), 2, "{findings:?}");
    // The repeats changed nothing: the rest is the replay's, late file included.
    let want = alerts(&reference.join("alerts.jsonl"));
    assert!(want.len() > 10, "too few alerts to compare: {}", want.len());
    assert_eq!(got.len(), want.len(), "alert count differs");
    assert!(got == want, "the daemon's alerts differ from the replay's");
    assert!(std::fs::read(&late_file).unwrap() == std::fs::read(reference.join("alerts.late.csv")).unwrap());
    // The resent records are kept aside as repeats, as a replay would.
    let rejects_file = late_file.to_string_lossy().replace(".late.", ".rejects.").replace(".csv", ".tsv");
    let rejects = std::fs::read_to_string(&rejects_file).unwrap_or_else(|e| panic!("{rejects_file}: {e}"));
    assert_eq!(rejects.matches("repeated or backward seq").count(), 50, "{rejects}");
    // Counted on /metrics by rule, with the gap itself.
    daemon.wait_metrics("two feed-gap alerts", |m| m.contains("tapewatch_alerts_total{rule=\"feed-gap\"} 2"));
    daemon.stop();
}

/// The value of an unlabelled sample, or the sum of a family's samples.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 11: `/metrics` shows the ingest-to-alert histogram and the records
/// applied and late by kind while the day runs, not only at its end.
#[test]
fn metrics_are_live_while_the_day_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A tight lateness bound: some of the generated day's delayed records are late.
    let (tape, config) = setup(dir, 30_000, 17, "lateness_ms = 2\n");
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "20000"]);
    // The day has not ended; the sink publishes about twice a second, the
    // hub samples once a second: the histogram catches up with the file.
    let alerts_file = dir.join("out/alerts.jsonl");
    let metrics = daemon.wait_metrics("every alert in the histogram", |m| {
        let count = metric_sum(m, "tapewatch_ingest_to_alert_seconds_count");
        let lines = std::fs::read_to_string(&alerts_file).unwrap().lines().count();
        count > 0.0 && count as usize == lines
    });
    assert!(!daemon.log().contains("day ended"), "{}", daemon.log());
    let applied = metric_sum(&metrics, "tapewatch_records_applied_total");
    let late = metric_sum(&metrics, "tapewatch_records_late_total");
    let read = metric_sum(&metrics, "tapewatch_records_in_total");
    assert!(metrics.contains("tapewatch_records_applied_total{kind=\"cancel\"}"), "{metrics}");
    assert!(late > 0.0, "no late records counted:\n{metrics}");
    // Records still in the reorder buffer are neither applied nor late yet.
    assert!(applied > read * 0.5 && applied + late <= read, "applied {applied} late {late} of {read}:\n{metrics}");
    assert!(metric_sum(&metrics, "tapewatch_ingest_to_alert_seconds_sum") > 0.0, "{metrics}");
    // Episodes by rule while the day runs: each excessive-cancel episode is
    // one alert in the file.
    daemon.wait_metrics("excessive-cancel's episodes", |m| {
        let episodes = m
            .lines()
            .find_map(|l| l.strip_prefix("tapewatch_episodes_total{rule=\"excessive-cancel\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        let file = std::fs::read_to_string(&alerts_file).unwrap();
        let alerted = file.lines().filter(|l| l.contains("\"rule\":\"excessive-cancel\"")).count() as u64;
        alerted > 0 && episodes == Some(alerted)
    });
    // The last checkpoint's size and duration, once one is durable.
    let metrics = daemon.wait_metrics("a checkpoint", |m| metric_sum(m, "tapewatch_checkpoints_total") >= 1.0);
    assert!(metric_sum(&metrics, "tapewatch_checkpoint_size_bytes") > 0.0, "{metrics}");
    assert!(metric_sum(&metrics, "tapewatch_checkpoint_duration_seconds") > 0.0, "{metrics}");
    if let Some(result) = common::browser::promtool_check(&metrics) {
        result.expect("promtool check metrics");
    }
    daemon.stop();
}

/// Issue 11: a malformed CSV line on the socket goes into the day's rejects
/// file with its reason and its text as received, in its place: one whose
/// first field is the expected seq holds that place (no gap), as on a tape.
#[test]
fn malformed_lines_on_the_socket_go_to_the_rejects_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 3_000, 19, "");
    let text = std::fs::read_to_string(&tape).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Line 1001 is seq 1000: its ts field broken; a garbage line after it.
    assert!(lines[1000].starts_with("1000,"), "{}", lines[1000]);
    let broken = lines[1000].replacen(',', ",not-a-time,", 1);
    let broken = {
        let mut fields: Vec<&str> = broken.split(',').collect();
        fields.remove(2);
        fields.join(",")
    };
    lines[1000] = broken.clone();
    lines.insert(1001, "garbage\twith a tab".to_string());
    let daemon = Daemon::start(&config);
    let mut stream = TcpStream::connect(&daemon.feed).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut greeting).unwrap();
    stream.write_all(format!("{}\n", lines.join("\r\n")).as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = stream.read_to_string(&mut String::new());
    daemon.wait_log("feed disconnected");
    let log = daemon.stop();
    assert!(log.contains("malformed feed line"), "{log}");
    let rejects = std::fs::read_to_string(dir.join("out/alerts.rejects.tsv")).unwrap();
    let row = |prefix: &str| rejects.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let first = row("1000\t").unwrap_or_else(|| panic!("no reject for seq 1000:\n{rejects}"));
    assert!(first.ends_with(&format!("\t{broken}")), "{first}");
    assert!(first.contains("bad ts_ns"), "{first}");
    let second = row("0\t").unwrap_or_else(|| panic!("no reject for the garbage line:\n{rejects}"));
    assert!(second.ends_with("\tgarbage\\twith a tab"), "{second}");
    // Seq 1000 held its place: no gap, no feed-gap alert.
    let alerts = std::fs::read_to_string(dir.join("out/alerts.jsonl")).unwrap();
    assert!(!alerts.contains("feed-gap"), "{alerts}");
}

/// `feed --replay-speed`: records go out at the tape's own pace (scaled),
/// and while the tape is quiet heartbeats carry its clock. It checks that
/// the send takes at least the tape's time at that speed (paced, not
/// flooded), and that the quiet stretch is bridged by heartbeats, at most
/// one per millisecond slept (none would mean no clock; more, a busy loop).
/// The quiet stretch is long (1 s at speed 2): a sender that starts late or
/// falls behind its schedule under load (it fell 50 ms behind once at load
/// 11-12, when the stretch was 50 ms) catches up in it and still sleeps.
#[test]
fn replay_speed_paces_by_the_tapes_clock_with_heartbeats_in_quiet_stretches() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (full, config) = setup(dir, 2_000, 23, "");
    // 300 records 1 ms apart, with 2 s of quiet after the 150th: 2.3 s of
    // exchange time, 1.15 s at speed 2.
    const QUIET_NS: i64 = 2_000_000_000;
    let text = std::fs::read_to_string(&full).unwrap();
    let mut lines = text.lines();
    let mut tape = format!("{}\n", lines.next().unwrap());
    let base: i64 = 1_793_590_000_000_000_000;
    for (i, line) in lines.take(300).enumerate() {
        let quiet = if i >= 150 { QUIET_NS } else { 0 };
        let (seq, rest) = line.split_once(',').unwrap();
        let (_, rest) = rest.split_once(',').unwrap();
        tape += &format!("{seq},{},{rest}\n", base + i as i64 * 1_000_000 + quiet);
    }
    let paced = dir.join("paced.csv");
    std::fs::write(&paced, tape).unwrap();
    let daemon = Daemon::start(&config);
    let started = Instant::now();
    let out = feed(&daemon, &paced, &["--replay-speed", "2"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_145), "sent in {took:?}: not paced by ts_ns");
    assert!(out.contains("sent 300 records"), "{out}");
    let beats: u64 = out
        .split("; ")
        .find_map(|part| part.trim().strip_suffix(" heartbeats while the tape was quiet")?.parse().ok())
        .unwrap_or_else(|| panic!("no heartbeats: {out}"));
    // The quiet stretch is 1000 ms of wall time: a heartbeat per 1 ms nap at most.
    assert!((5..=1_001).contains(&beats), "{beats} heartbeats in a 1 s quiet stretch: {out}");
    daemon.stop();
}

// ---- Rules reload (SIGHUP): the new rules take effect at a barrier ----

/// Rules A: excessive-cancel with a threshold the planted cancellers stay
/// under; B: a low one that finds them. Self-trade and wash-trade (on by
/// default) are the same in both.
const RULES_A: &str = "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 40\nratio_pct = 90\n";
const RULES_B: &str = "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 2\nratio_pct = 60\n";
const HALF: u64 = 30_000;

fn sighup(daemon: &Daemon) {
    daemon.hup();
}

/// The replay of the whole tape under `rules`, in `dir/<name>/alerts.jsonl`.
fn replay_with(dir: &Path, tape: &Path, rules: &str, name: &str) -> Vec<Value> {
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    let out = replay(dir, tape);
    let kept = dir.join(name);
    std::fs::rename(out, &kept).unwrap();
    alerts(&kept.join("alerts.jsonl"))
}

/// A field of the first log line holding `needle`.
fn log_field(log: &str, needle: &str, name: &str) -> u64 {
    let line = log.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"));
    let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Waits until the edge has put `seq` records into the ring and the source
/// has had time to take them, so the reload's barrier follows exactly them.
fn settle(daemon: &Daemon, seq: u64) {
    let started = Instant::now();
    loop {
        let status: Value = serde_json::from_str(&daemon.get("/api/status")).unwrap_or(Value::Null);
        if status["feed"]["next_seq"].as_u64() == Some(seq) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the edge never reached seq {seq}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Serves the first `HALF` records under A, reloads B with SIGHUP, then
/// (with `kill9`) kills the daemon right after the reload and again after
/// 5000 more records, restarting each time, and feeds the rest to the
/// day's end. Returns the day's alerts (without `timing`) and the number
/// of alerts committed at the reload's barrier.
fn reload_at_half(dir: &Path, tape: &Path, config: &Path, kill9: bool) -> (Vec<Value>, usize) {
    std::fs::write(dir.join("rules.toml"), RULES_A).unwrap();
    let daemon = Daemon::start(config);
    feed(&daemon, tape, &["--limit", &HALF.to_string()]);
    settle(&daemon, HALF + 1);
    std::fs::write(dir.join("rules.toml"), RULES_B).unwrap();
    sighup(&daemon);
    daemon.wait_log("rules reloaded");
    let log = daemon.log();
    // Seqs start at 1: the barrier is right after seq HALF.
    assert_eq!(log_field(&log, "are reloaded", "next_seq"), HALF + 1, "the barrier follows the first half:\n{log}");
    let committed = log_field(&log, "are reloaded", "alerts") as usize;
    assert!(log.contains("reload: excessive-cancel: parameters"), "{log}");
    assert!(log.contains("starts with empty state"), "{log}");
    assert!(log.contains("reload: self-trade: parameters") && log.contains("unchanged: its state is kept"), "{log}");
    let daemon = if kill9 {
        // Nothing was checkpointed under B yet: the restart reads B from
        // the rules file and resumes from the reload's checkpoint.
        daemon.kill9();
        let daemon = Daemon::start(config);
        let log = daemon.log();
        assert_eq!(log_field(&log, "are reloaded", "next_seq"), HALF + 1, "{log}");
        feed(&daemon, tape, &["--limit", "5000"]);
        std::thread::sleep(Duration::from_millis(100));
        daemon.kill9();
        Daemon::start(config)
    } else {
        daemon
    };
    feed(&daemon, tape, &["--end-of-day"]);
    daemon.wait_log("day closed");
    let (day, _) = closed_day(dir);
    daemon.stop();
    (alerts(&day), committed)
}

/// The alerts of every rule but excessive-cancel (the one A and B change).
fn unchanged_rules(list: &[Value]) -> Vec<Value> {
    list.iter().filter(|a| a["rule"] != "excessive-cancel").cloned().collect()
}

/// What is compared: the alerts committed before the reload's barrier are
/// exactly the first lines of a replay under A (same alerts, same order,
/// A's parameter versions); after it, the unchanged rules' alerts are
/// exactly the replay's (their state carried over), and excessive-cancel's
/// all carry B's parameter version, none repeated; B finds a planted
/// canceller A did not. Every line is one of these.
#[test]
fn a_reload_takes_effect_at_a_barrier_alerts_before_it_follow_the_old_rules() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 60_000, 11, "");
    let under_b = replay_with(dir, &tape, RULES_B, "ref-b");
    let under_a = replay_with(dir, &tape, RULES_A, "ref-a");
    let b_version = under_b.iter().find(|a| a["rule"] == "excessive-cancel").unwrap()["params"].clone();
    assert!(under_a.iter().all(|a| a["rule"] != "excessive-cancel"), "A should find no canceller");

    let (got, committed) = reload_at_half(dir, &tape, &config, false);
    assert!(committed > 0 && committed < got.len(), "{committed} of {}", got.len());
    assert!(got[..committed] == under_a[..committed], "the alerts before the barrier are not A's");
    let after = &got[committed..];
    assert!(
        unchanged_rules(after) == unchanged_rules(&under_a[committed..]),
        "the unchanged rules' alerts after the barrier differ from the replay's"
    );
    let cancels: Vec<&Value> = after.iter().filter(|a| a["rule"] == "excessive-cancel").collect();
    assert!(!cancels.is_empty(), "B found nothing after the barrier");
    assert!(cancels.iter().all(|a| a["params"] == b_version), "an excessive-cancel alert without B's version");
    let mut ids: Vec<&str> = got.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an alert repeated");
    assert_eq!(got.len(), committed + unchanged_rules(&under_a[committed..]).len() + cancels.len());
    let truth = std::fs::read_to_string(dir.join("day.truth.csv")).unwrap();
    let planted: Vec<&str> =
        truth.lines().filter(|l| l.contains(",excessive-cancel,")).map(|l| l.split(',').next().unwrap()).collect();
    assert!(cancels.iter().any(|a| planted.contains(&a["group"].as_str().unwrap())), "no planted canceller found");
}

/// kill -9 right after a reload (before any checkpoint under the new
/// rules), and again later: the restarts resume exactly, and the day is
/// the same as without the kills.
#[test]
fn kill9_right_after_a_reload_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 60_000, 11, "");
    let (straight, committed) = reload_at_half(dir, &tape, &config, false);
    std::fs::remove_dir_all(dir.join("state")).unwrap();
    std::fs::remove_dir_all(dir.join("out")).unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let (killed, committed_killed) = reload_at_half(dir, &tape, &config, true);
    assert_eq!(committed, committed_killed);
    assert_eq!(killed.len(), straight.len(), "alerts lost or repeated across the kills");
    assert!(killed == straight, "the day differs from the one without kills");
}

/// The feed connection lives through the reload, and the state of the
/// rules that did not change is kept: a paced feed, SIGHUP midway; every
/// alert of the unchanged rules equals the replay's. The rules in effect
/// are published (`/api/status`, `tapewatch_rules_info`).
#[test]
fn a_reload_keeps_the_state_of_unchanged_rules_and_the_feed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 60_000, 11, "");
    let under_a = replay_with(dir, &tape, RULES_A, "ref-a");
    let daemon = Daemon::start(&config);
    let status: Value = serde_json::from_str(&daemon.get("/api/status")).unwrap();
    let params_a = status["rules"]["params"].as_str().unwrap().to_string();
    let sender = {
        let (to, tape) = (daemon.feed.clone(), tape.clone());
        std::thread::spawn(move || {
            Command::new(bin())
                .arg("feed")
                .arg(&tape)
                .args(["--to", &to, "--quiet", "--rate", "30000", "--end-of-day"])
                .output()
                .expect("run feed")
        })
    };
    std::thread::sleep(Duration::from_millis(900));
    // `/ready` is polled through the reload: the daemon stays ready.
    let polling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let (http, polling) = (daemon.http.clone(), polling.clone());
        std::thread::spawn(move || {
            let (mut polls, mut not_ready) = (0, Vec::new());
            while polling.load(std::sync::atomic::Ordering::Acquire) {
                let mut stream = TcpStream::connect(&http).unwrap();
                write!(stream, "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut text = String::new();
                stream.read_to_string(&mut text).unwrap();
                if !text.starts_with("HTTP/1.1 200") {
                    not_ready.push(text);
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (polls, not_ready)
        })
    };
    std::fs::write(dir.join("rules.toml"), RULES_B).unwrap();
    sighup(&daemon);
    daemon.wait_log("rules reloaded");
    polling.store(false, std::sync::atomic::Ordering::Release);
    let (polls, not_ready) = poller.join().unwrap();
    assert!(polls > 10 && not_ready.is_empty(), "{polls} polls; not ready during the reload: {not_ready:?}");
    let out = sender.join().unwrap();
    assert!(out.status.success(), "feed: {}", String::from_utf8_lossy(&out.stderr));
    daemon.wait_log("day closed");
    let log = daemon.log();
    let reloaded_at = log_field(&log, "are reloaded", "next_seq");
    assert!(reloaded_at > 0 && reloaded_at < 60_000, "the reload was not midway: {reloaded_at}");
    assert_eq!(log.matches("feed connected").count(), 1, "the sender reconnected:\n{log}");
    let (day, _) = closed_day(dir);
    let got = alerts(&day);
    assert!(unchanged_rules(&got) == unchanged_rules(&under_a), "the unchanged rules' alerts differ");
    assert!(got.iter().any(|a| a["rule"] == "excessive-cancel"), "B never took effect");
    let status: Value = serde_json::from_str(&daemon.get("/api/status")).unwrap();
    let params_b = status["rules"]["params"].as_str().unwrap();
    assert_ne!(params_b, params_a);
    assert_eq!(status["rules"]["reloads"], 1);
    let metrics = daemon.get("/metrics");
    assert!(metrics.contains(&format!("tapewatch_rules_info{{params=\"{params_b}\"}} 1")), "{metrics}");
    assert!(log.contains(&format!("params={params_b}")), "{log}");
    // The latency histogram counts from the daemon's start: the alerts of
    // the run before the reload as well as after (it restarted with each
    // pipeline run).
    daemon.wait_metrics("every alert of the day in the histogram", |m| {
        metric_sum(m, "tapewatch_ingest_to_alert_seconds_count") as usize == got.len()
    });
    daemon.stop();
}

/// A reload that turns on a rule reading a view no rule read before (the
/// order book, spoofing's stream): the view has no state in the reload's
/// checkpoint and starts empty, which the log says; turning it off again
/// says the view is dropped. A reload that changes no view's readers says
/// nothing of views.
#[test]
fn a_reload_that_starts_a_view_logs_that_it_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 20_000, 11, "");
    std::fs::write(dir.join("rules.toml"), RULES_A).unwrap();
    let daemon = Daemon::start(&config);
    feed(&daemon, &tape, &["--limit", "5000"]);
    settle(&daemon, 5001);
    let reload = |rules: &str, reloads: usize| {
        std::fs::write(dir.join("rules.toml"), rules).unwrap();
        sighup(&daemon);
        let started = Instant::now();
        while daemon.log().matches("rules reloaded").count() < reloads {
            assert!(started.elapsed() < Duration::from_secs(30), "no reload {reloads}:\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    reload(RULES_B, 1);
    assert!(!daemon.log().contains("reload: view "), "{}", daemon.log());
    reload(&format!("{RULES_B}[spoofing]\nenabled = true\n"), 2);
    let log = daemon.log();
    for view in ["book", "spoof-stream"] {
        let line = format!("reload: view {view}: read by the new rules and by none before: it starts empty");
        assert!(log.contains(&line), "no `{line}` in:\n{log}");
    }
    assert!(!log.contains("view last-trade"), "{log}");
    reload(RULES_B, 3);
    let log = daemon.log();
    assert!(log.contains("reload: view book: read by none of the new rules: dropped"), "{log}");
    assert_eq!(log.matches("it starts empty at the barrier").count(), 2, "{log}");
    daemon.stop();
}

/// Connects as a raw CSV sender: the greeting's NEXT_SEQ, and the stream.
fn raw_sender(daemon: &Daemon) -> (u64, TcpStream) {
    let stream = TcpStream::connect(&daemon.feed).unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut greeting).unwrap();
    let next = greeting
        .split_whitespace()
        .skip_while(|w| *w != "NEXT_SEQ")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NEXT_SEQ in `{greeting}`"));
    (next, stream)
}

/// Issue 11: a rejected record must never move the seq the daemon asks a
/// sender for (it raised NEXT_SEQ, so a sender resuming from it skipped
/// records).
#[test]
fn a_rejected_wild_seq_never_moves_the_seq_a_reconnecting_sender_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (tape, config) = setup(dir, 20_000, 17, "");
    let reference = replay(dir, &tape);
    let text = std::fs::read_to_string(&tape).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let daemon = Daemon::start(&config);

    // Records 1..=300, a record whose seq is wild (a mistyped copy of
    // record 301), then 301..=400: the next record goes on from 300, so
    // the wild one alone is rejected; then the sender disconnects.
    let (next, mut stream) = raw_sender(&daemon);
    assert_eq!(next, 0, "a new day asks for everything");
    let wild = lines[300].replacen("301,", "9000000,", 1);
    assert_ne!(wild, lines[300]);
    let mut sent = format!("{}\n", tapewatch::ingest::csv::HEADER);
    for line in lines[..300].iter().chain([&wild.as_str()]).chain(&lines[300..400]) {
        sent.push_str(line);
        sent.push('\n');
    }
    stream.write_all(sent.as_bytes()).unwrap();
    drop(stream);
    daemon.wait_log("feed disconnected");

    // Reconnecting at once: asked for 401, not 9000001.
    let (next, stream) = raw_sender(&daemon);
    assert_eq!(next, 401, "the greeting after a rejected wild seq:\n{}", daemon.log());
    drop(stream);
    // And after a restart, from the final checkpoint's position.
    daemon.stop();
    let daemon = Daemon::start(&config);
    let (next, stream) = raw_sender(&daemon);
    assert_eq!(next, 401, "the greeting after a restart:\n{}", daemon.log());
    drop(stream);
    // The sender resumes from the greeting to the day's end: nothing was
    // skipped, no gap is reported, and the day is the replay's.
    feed(&daemon, &tape, &["--end-of-day"]);
    daemon.wait_log("day closed");
    let (day_file, late_file) = closed_day(dir);
    let (findings, got): (Vec<Value>, Vec<Value>) =
        alerts(&day_file).into_iter().partition(|a| a["rule"] == "feed-gap");
    assert!(findings.is_empty(), "no gap and no repeat: {findings:?}");
    let want = alerts(&reference.join("alerts.jsonl"));
    assert!(want.len() > 10, "too few alerts to compare: {}", want.len());
    assert!(got == want, "the daemon's alerts differ from the replay's ({} vs {})", got.len(), want.len());
    let rejects_file = late_file.to_string_lossy().replace(".late.", ".rejects.").replace(".csv", ".tsv");
    let rejects = std::fs::read_to_string(&rejects_file).unwrap_or_else(|e| panic!("{rejects_file}: {e}"));
    assert!(rejects.contains("9000000"), "the wild record is kept aside: {rejects}");
    daemon.stop();
}
