//! The checkpoint cost (issue 4's targets): replay throughput with and
//! without a checkpoint every second, the hot-path stall per barrier, the
//! checkpoint duration, and the checkpoint size per active key.
//!
//! `cargo bench --bench checkpoint` generates a tape of
//! TAPEWATCH_BENCH_EVENTS records (default 10M) with
//! TAPEWATCH_BENCH_ACCOUNTS accounts (default 400k), and replays it with an
//! excessive-cancel window of TAPEWATCH_BENCH_WINDOW_MS (default 600 s, long
//! enough for ~100k active keys at 10M records a day), TAPEWATCH_BENCH_RUNS
//! times each way (default 3), and prints medians. The state directory lives
//! in TAPEWATCH_BENCH_DIR (default /var/tmp/tapewatch-bench), on real disk:
//! the checkpoint fsyncs are part of what is measured.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tapewatch(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tapewatch")).args(args).output().expect("run tapewatch");
    assert!(out.status.success(), "tapewatch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(start)).unwrap_or("")
}

/// Parses "12.3us" / "1.20ms" / "800ns" / "1.000s" into nanoseconds.
fn parse_ns(text: &str) -> f64 {
    let text = text.trim_end_matches([',', ';', ')']);
    let (number, scale) = if let Some(n) = text.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e9)
    } else {
        (text, f64::NAN)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * scale
}

fn after<'a>(text: &'a str, key: &str) -> &'a str {
    text.find(key).map(|at| text[at + key.len()..].split_whitespace().next().unwrap_or("")).unwrap_or("")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events: u64 = env_or("TAPEWATCH_BENCH_EVENTS", 10_000_000);
    let accounts: u64 = env_or("TAPEWATCH_BENCH_ACCOUNTS", 400_000);
    let window_ms: u64 = env_or("TAPEWATCH_BENCH_WINDOW_MS", 600_000);
    let runs: usize = env_or("TAPEWATCH_BENCH_RUNS", 3);
    let dir = std::path::PathBuf::from(env_or("TAPEWATCH_BENCH_DIR", "/var/tmp/tapewatch-bench".to_string()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("machine: {cpus} cpus; records {events}, accounts {accounts}, window {window_ms} ms, {runs} runs each");

    let tape = dir.join(format!("ckpt-{events}-{accounts}.csv"));
    if !tape.exists() {
        let accounts = accounts.to_string();
        let events = events.to_string();
        tapewatch(&["gen", "--events", &events, "--seed", "7", "--accounts", &accounts, "--out", path(&tape)]);
    }
    let rules = dir.join(format!("ckpt-rules-{window_ms}.toml"));
    std::fs::write(&rules, format!("[excessive_cancel]\nwindow_ms = {window_ms}\n")).expect("rules");
    let alerts = dir.join("ckpt-alerts.jsonl");
    let state = dir.join("ckpt-state");
    let base = ["replay", path(&tape), "--rules", path(&rules), "--alerts", path(&alerts), "--quiet"];

    let mut plain = Vec::new();
    let mut with = Vec::new();
    let mut last = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        tapewatch(&base);
        plain.push(started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&state);
        let mut args = base.to_vec();
        args.extend(["--state", path(&state), "--checkpoint-interval-ms", "1000", "--checkpoint-every-records", "0"]);
        let started = Instant::now();
        last = tapewatch(&args);
        with.push(started.elapsed().as_secs_f64());
        let ckpt = line(&last, "checkpoints");
        println!(
            "run: {:.3} s plain, {:.3} s with checkpoints; {ckpt}",
            plain.last().unwrap_or(&0.0),
            with.last().unwrap_or(&0.0)
        );
        println!("     {}", line(&last, "checkpoints shard stalls"));
    }
    let (plain_s, with_s) = (median(plain), median(with));
    println!(
        "replay CSV, median of {runs}: {plain_s:.3} s ({:.2} M rec/s) without, {with_s:.3} s ({:.2} M rec/s) with a checkpoint every second: cost {:+.1}%",
        events as f64 / plain_s / 1e6,
        events as f64 / with_s / 1e6,
        (with_s / plain_s - 1.0) * 100.0
    );
    let ckpt = line(&last, "checkpoints");
    let stall = &ckpt[ckpt.find("stall").unwrap_or(0)..];
    let stall_max = parse_ns(after(stall, " max "));
    println!("last run: {ckpt}");
    println!("last run: {}", line(&last, "checkpoints stall"));
    println!("last run: {}", line(&last, "checkpoints shard stalls"));
    println!("longest stall of the last run: {:.3} ms (target < 1 ms)", stall_max / 1e6);
    let show = tapewatch(&["checkpoint", "show", path(&state)]);
    println!("newest checkpoint: {}", line(&show, "window").trim_start_matches("window").trim());
    println!("newest checkpoint: {}", line(&show, "total").trim_start_matches("total").trim());
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 bench path")
}
