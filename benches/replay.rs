//! Replay and import throughput and peak memory, end to end through the
//! `tapewatch` binary (process start, tape open and verification included).
//!
//! `cargo bench --bench replay` generates a tape of TAPEWATCH_BENCH_EVENTS
//! records (default 10M) with `tapewatch gen`, then runs `import`, `replay`
//! of the native tape and `replay` of the CSV tape TAPEWATCH_BENCH_RUNS
//! times each (default 5) and prints medians. Peak memory is the child's
//! max RSS from wait4; a second, 10x smaller tape shows whether it is flat.
//! Set TAPEWATCH_BENCH_SHARDS / TAPEWATCH_BENCH_CORES to pass --shards/--cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Run {
    wall_s: f64,
    max_rss_mib: f64,
    stdout: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// The child is reaped by wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[&str]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tapewatch"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tapewatch");
    let pid = child.id() as libc::pid_t;
    // Read stdout to its end first (the child exits after closing it), then
    // reap the child with wait4 for its rusage; std's wait would reap it first.
    let mut output = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().expect("piped stdout"), &mut output).expect("read stdout");
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child and has not been waited for yet.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall_s = started.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4 failed");
    let stdout = String::from_utf8_lossy(&output).into_owned();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "tapewatch {args:?} failed: {stdout}");
    Run { wall_s, max_rss_mib: usage.ru_maxrss as f64 / 1024.0, stdout }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn field<'a>(stdout: &'a str, line_start: &str, key: &str) -> Option<&'a str> {
    let line = stdout.lines().find(|l| l.starts_with(line_start))?;
    let after = &line[line.find(key)? + key.len()..];
    after.split_whitespace().next()
}

fn bench(name: &str, records: u64, runs: usize, args: &[&str], before_each: impl Fn()) -> (f64, f64) {
    let results: Vec<Run> = (0..runs)
        .map(|_| {
            before_each();
            run(args)
        })
        .collect();
    let walls: Vec<f64> = results.iter().map(|r| r.wall_s).collect();
    let wall = median(walls.clone());
    let rss = median(results.iter().map(|r| r.max_rss_mib).collect());
    let mut line = format!(
        "{name:<22} median {wall:>7.3} s  {:>6.2} M rec/s  (min {:.3} s, max {:.3} s)  peak RSS {rss:>7.1} MiB",
        records as f64 / wall / 1e6,
        walls.iter().cloned().fold(f64::MAX, f64::min),
        walls.iter().cloned().fold(0.0, f64::max),
    );
    let last = &results[results.len() / 2].stdout;
    if let (Some(p50), Some(p99), Some(p999), Some(max)) = (
        field(last, "latency     ingest->alert", "p50 "),
        field(last, "latency     ingest->alert", "p99 "),
        field(last, "latency     ingest->alert", "p99.9 "),
        field(last, "latency     ingest->alert", "max "),
    ) {
        line += &format!("\n{:<22} ingest->alert p50 {p50} p99 {p99} p99.9 {p999} max {max}", "");
    }
    if let Some(throughput) = last.lines().find(|l| l.starts_with("throughput")) {
        line += &format!("\n{:<22} {throughput}", "");
    }
    println!("{line}");
    (wall, rss)
}

fn ensure_tape(dir: &Path, events: u64) -> PathBuf {
    let csv = dir.join(format!("day-{events}.csv"));
    if !csv.exists() {
        let started = Instant::now();
        run(&["gen", "--events", &events.to_string(), "--seed", "7", "--out", csv.to_str().unwrap()]);
        println!("gen {events} records: {:.2} s", started.elapsed().as_secs_f64());
    }
    csv
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events: u64 = env_or("TAPEWATCH_BENCH_EVENTS", 10_000_000);
    let runs: usize = env_or("TAPEWATCH_BENCH_RUNS", 5);
    let dir = PathBuf::from(env_or("TAPEWATCH_BENCH_DIR", "/var/tmp/tapewatch-bench".to_string()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut extra: Vec<String> = Vec::new();
    if let Ok(shards) = std::env::var("TAPEWATCH_BENCH_SHARDS") {
        extra.extend(["--shards".into(), shards]);
    }
    if let Ok(cores) = std::env::var("TAPEWATCH_BENCH_CORES") {
        extra.extend(["--cores".into(), cores]);
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "machine: {cpus} cpus, {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    );
    println!("records: {events}, runs: {runs} (medians), extra args: {extra:?}");

    let mut sizes = vec![events];
    if events >= 1_000_000 {
        sizes.push(events / 10);
    }
    for &n in &sizes {
        let csv = ensure_tape(&dir, n);
        let tape = dir.join(format!("day-{n}.tape"));
        let out = dir.join(format!("out-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        let alerts = out.join("alerts.jsonl");
        let (csv_s, tape_s, alerts_s) = (csv.to_str().unwrap(), tape.to_str().unwrap(), alerts.to_str().unwrap());
        let runs = if n == events { runs } else { runs.min(3) };
        println!("--- {n} records");
        // Each import writes a new tape, as a user's would: replacing the
        // last run's tape would add the kernel's freeing of its pages.
        bench("import (CSV -> tape)", n, runs, &["import", csv_s, "--out", tape_s], || {
            let _ = std::fs::remove_file(&tape);
        });
        let mut replay_native = vec!["replay", tape_s, "--alerts", alerts_s, "--quiet"];
        replay_native.extend(extra.iter().map(String::as_str));
        bench("replay native tape", n, runs, &replay_native, || {});
        let mut replay_csv = vec!["replay", csv_s, "--alerts", alerts_s, "--quiet"];
        replay_csv.extend(extra.iter().map(String::as_str));
        bench("replay CSV tape", n, runs, &replay_csv, || {});
    }
}
