//! Checkpoints and exactly-once recovery, through the binary: kill -9 at
//! seeded random moments and resume, damaged checkpoints, a different shard
//! count on resume, and a state directory that is busy or unusable. Every
//! test compares the final outputs with an uninterrupted run's: alerts byte
//! for byte outside `timing`, the late and rejects files byte for byte.
//!
//! More kill points: `TAPEWATCH_CRASH_KILLS=200 cargo test --release --test checkpoint`.

mod common;

use common::bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tapewatch::generator::{GenConfig, generate};
use tempfile::TempDir;

/// A generated day with some bad records spliced in (a repeated line, a
/// malformed one), so the rejects file has content to get right, and a long
/// reordering tail (80 ms against the 50 ms lateness; the default day's 55
/// ms makes few late records), so the late file does too.
fn make_tape(dir: &Path, events: u64, seed: u64) -> PathBuf {
    let clean = dir.join("clean.csv");
    let cfg = GenConfig { max_delay_ms: 80, ..GenConfig::new(events, seed) };
    generate(&cfg, &clean).expect("generate a tape");
    let text = std::fs::read_to_string(&clean).unwrap();
    let mut out = String::with_capacity(text.len() + 4096);
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        if i > 0 && i % 7919 == 0 {
            out.push_str(line); // a repeated seq: rejected
            out.push('\n');
        }
        if i > 0 && i % 12007 == 0 {
            out.push_str("not,a,record\n");
        }
    }
    let tape = dir.join("day.csv");
    std::fs::write(&tape, out).unwrap();
    // Thresholds low enough for hundreds of alerts, with a long window: a
    // checkpoint then carries much window state, and most kills land with
    // alerts written after the last checkpoint.
    std::fs::write(dir.join("rules.toml"), "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 2\nratio_pct = 60\n")
        .unwrap();
    let accounts = dir.join("clean.accounts.csv");
    if accounts.exists() {
        std::fs::copy(&accounts, dir.join("day.accounts.csv")).unwrap();
    }
    std::fs::write(dir.join("day.instruments.csv"), instruments_csv(&text)).unwrap();
    tape
}

/// instruments.csv for a tape: each instrument's first price +-5% as its
/// limits, so that some orders fall outside them and the book skips them.
fn instruments_csv(tape: &str) -> String {
    let mut first = std::collections::BTreeMap::new();
    for line in tape.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if let (Some(instrument), Some(price)) = (fields.get(5), fields.get(7).and_then(|p| p.parse::<f64>().ok())) {
            first.entry(instrument.to_string()).or_insert(price);
        }
    }
    let mut out = String::from("instrument,prev_close,limit_up,limit_down,tick\n");
    for (instrument, price) in first {
        out += &format!("{instrument},{price:.4},{:.4},{:.4},0.01\n", price * 1.05, price * 0.95);
    }
    out
}

/// The summary's order-book line without the peak (summed per shard, so
/// it depends on the shard count, and a resumed run starts it afresh).
fn book_line(summary: &str) -> String {
    let line = summary.lines().find(|l| l.starts_with("book ") && l.contains("digest")).expect("a book line");
    let (head, rest) = line.split_once(" (peak ").expect("a peak");
    format!("{head}{}", &rest[rest.find(')').unwrap() + 1..])
}

/// The book at the end of a run is the uninterrupted run's: the same
/// resting orders, levels, skip counts and content digest.
fn assert_same_book(want: &Path, summary: &[u8]) {
    let want = std::fs::read_to_string(want.join("book.txt")).unwrap();
    assert_eq!(book_line(&String::from_utf8_lossy(summary)), want, "the order books differ");
}

fn replay_cmd(tape: &Path, out: &Path, shards: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("replay")
        .arg(tape)
        .arg("--rules")
        .arg(tape.with_file_name("rules.toml"))
        .arg("--alerts")
        .arg(out.join("alerts.jsonl"))
        .args(["--shards", &shards.to_string(), "--cores", "none", "--quiet", "--keep-book"])
        .args(extra)
        // Tiny snapshot slices: a shard's window copy spans many batches,
        // so kills, torn files and resumes meet snapshots cut in slices.
        .env("TAPEWATCH_SNAPSHOT_SLICE", "7")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn with_state<'a>(state: &'a Path, every: &'a str) -> Vec<&'a str> {
    let state = state.to_str().expect("utf-8 temp path");
    vec!["--state", state, "--checkpoint-every-records", every, "--checkpoint-interval-ms", "0"]
}

fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run tapewatch");
    assert!(out.status.success(), "tapewatch failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Alert lines without their `timing` object (always last on the line).
fn alerts_without_timing(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let at = line.rfind(",\"timing\":").unwrap_or_else(|| panic!("no timing in {line}"));
            line[..at].to_string()
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The outputs of `got` equal those of `want`: alerts line by line (in
/// order when `ordered`, which holds for one shard; as a multiset
/// otherwise, since shards interleave), late and rejects byte for byte.
fn assert_same_outputs(want: &Path, got: &Path, ordered: bool) {
    let (mut a, mut b) =
        (alerts_without_timing(&want.join("alerts.jsonl")), alerts_without_timing(&got.join("alerts.jsonl")));
    assert!(a.len() > 100, "the reference run raised {} alerts: the tape proves little", a.len());
    if !ordered {
        a.sort();
        b.sort();
    }
    assert_eq!(a.len(), b.len(), "alert count differs");
    assert_eq!(a, b, "alerts differ");
    for file in ["alerts.late.csv", "alerts.rejects.tsv"] {
        let (x, y) = (read(&want.join(file)), read(&got.join(file)));
        assert!(x == y, "{file} differs ({} vs {} bytes)", x.len(), y.len());
    }
}

/// A small deterministic generator (xorshift64*), so kill points are seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn reference(tape: &Path, root: &Path) -> (PathBuf, Duration) {
    let dir = root.join("reference");
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let out = run_ok(replay_cmd(tape, &dir, 1, &[]));
    let took = started.elapsed();
    let book = book_line(&String::from_utf8_lossy(&out.stdout));
    assert!(!book.contains("outside limits 0,") && !book.contains(" 0 orders resting"), "{book}");
    std::fs::write(dir.join("book.txt"), book).unwrap();
    let late = read(&dir.join("alerts.late.csv"));
    let rejects = read(&dir.join("alerts.rejects.tsv"));
    assert!(late.iter().filter(|&&b| b == b'\n').count() > 10, "the tape has late records");
    assert!(rejects.iter().filter(|&&b| b == b'\n').count() > 10, "the tape has rejected records");
    (dir, took)
}

/// SIGKILLs a running child; returns its exit status if it had already exited.
/// The run's shard snapshots were copied in slices: more than a cut and
/// two slices per checkpoint per shard, on average.
fn assert_sliced(summary: &str, shards: usize) {
    let taken = number_after(summary, "checkpoints ", "checkpoints ");
    let stalls = number_after(summary, "checkpoints shard stalls", "(n=");
    assert!(taken > 0 && stalls > 3 * taken * shards as u64, "no sliced copies? {summary}");
}

/// The number after `key` in the summary line that starts with `start`.
fn number_after(summary: &str, start: &str, key: &str) -> u64 {
    let line = summary.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no {start:?} in {summary}"));
    let at = line.find(key).unwrap_or_else(|| panic!("no {key:?} in {line}")) + key.len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn kill(child: &mut Child) -> Option<std::process::ExitStatus> {
    let exited = child.try_wait().expect("try_wait");
    if exited.is_none() {
        child.kill().expect("kill");
    }
    let _ = child.wait();
    exited
}

/// Kills replays at seeded random moments and resumes until `kills` runs
/// died mid-flight, then lets one finish. `shards` picks each run's count;
/// `ordered`: alerts are compared in file order (one shard).
/// A run that finishes before its kill ends a cycle: its outputs are
/// checked, and the next cycle starts from scratch, so kill points spread
/// over the whole tape rather than bunching near its end.
fn crash_and_resume(
    seed: u64,
    kills: usize,
    ordered: bool,
    shards: impl Fn(&mut Rng) -> usize,
) -> (TempDir, PathBuf, PathBuf, usize) {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().to_path_buf();
    let tape = make_tape(&root, 200_000, seed);
    let (want, _) = reference(&tape, &root);
    let got = root.join("crashed");
    let state = root.join("state");
    std::fs::create_dir_all(&got).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // A kill lands anywhere from process start to a bit past a whole run
    // of the replay it kills, timed here: the same checkpointing run
    // (RocksDB open, fsyncs and snapshot slices make it several times
    // slower than the reference run, by how much depends on the disk and
    // the load). Spans guessed from the reference run put most kills
    // before the first checkpoint on a slow disk and failed the resume
    // bound below about 1 run in 20.
    let took = {
        let (out, state) = (root.join("timed"), root.join("timed-state"));
        std::fs::create_dir_all(&out).unwrap();
        let started = Instant::now();
        let run = run_ok(replay_cmd(&tape, &out, shards(&mut rng), &with_state(&state, "4000")));
        let took = started.elapsed();
        assert!(String::from_utf8_lossy(&run.stdout).contains("checkpoints "), "the timed run took checkpoints");
        assert_same_outputs(&want, &out, ordered);
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        took
    };
    let mut span_us = (took.as_micros() as u64 * 6 / 5).max(50_000);
    // A machine that slows down after the timed run (another build starts)
    // stretches every run: kills then land before the first checkpoint is
    // durable, run after run. Three such kills in a row double the span
    // (the timed span alone failed 1 loop run in 11 on a machine at load 17).
    let mut fresh_kills = 0;
    let (mut killed, mut resumed, mut attempts, mut cycles) = (0, 0, 0, 0);
    while killed < kills {
        attempts += 1;
        assert!(attempts < kills * 20, "too few kills landed while a run was going");
        let n = shards(&mut rng);
        let slice = [1, 7, 100, 4096][rng.below(4) as usize].to_string();
        let mut cmd = replay_cmd(&tape, &got, n, &with_state(&state, "4000"));
        let mut child = cmd.env("TAPEWATCH_SNAPSHOT_SLICE", &slice).spawn().expect("spawn");
        std::thread::sleep(Duration::from_micros(rng.below(span_us)));
        let exited = kill(&mut child);
        let mut stdout = Vec::new();
        std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        let resuming = stderr.contains("resuming from checkpoint");
        resumed += resuming as usize;
        match exited {
            None => {
                killed += 1;
                fresh_kills = if resuming { 0 } else { fresh_kills + 1 };
                if fresh_kills == 3 {
                    span_us = (span_us * 2).min(120_000_000);
                    fresh_kills = 0;
                }
            }
            Some(status) => {
                assert!(status.success(), "a resumed run failed: {stderr}");
                assert_same_outputs(&want, &got, ordered);
                assert_same_book(&want, &stdout);
                cycles += 1;
                fresh_kills = 0;
                std::fs::remove_dir_all(&state).unwrap();
                std::fs::remove_dir_all(&got).unwrap();
                std::fs::create_dir_all(&got).unwrap();
            }
        }
    }
    let n = shards(&mut rng);
    let out = run_ok(replay_cmd(&tape, &got, n, &with_state(&state, "4000")));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("checkpoints "), "{summary}");
    assert_same_book(&want, &out.stdout);
    eprintln!(
        "{killed} kills in {attempts} runs ({cycles} cycles run to the end), {resumed} resumed from a checkpoint; \
         timed run {} ms, kill span at the end {} ms",
        took.as_millis(),
        span_us / 1000
    );
    // Recovery was really exercised, not a fresh start every time.
    // (About half the runs resume; the bound leaves room for bad luck.)
    assert!(resumed >= (kills / 8).max(1), "only {resumed} of {attempts} runs resumed from a checkpoint");
    (temp, want, got, killed)
}

#[test]
fn kill_9_at_seeded_moments_then_resume_gives_exactly_the_uninterrupted_output() {
    let kills = std::env::var("TAPEWATCH_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let (_temp, want, got, killed) = crash_and_resume(11, kills, true, |_| 1);
    assert!(killed >= kills);
    assert_same_outputs(&want, &got, true);
}

#[test]
fn kill_9_with_a_different_shard_count_on_every_restart() {
    let (_temp, want, got, _) = crash_and_resume(23, 16, false, |rng| 1 + rng.below(3) as usize);
    assert_same_outputs(&want, &got, false);
}

/// Runs with checkpoints until checkpoint `at` is durable, then aborts.
fn run_until_checkpoint(tape: &Path, out: &Path, state: &Path, shards: usize, at: u64) {
    let mut extra = with_state(state, "10000");
    let at = at.to_string();
    extra.extend(["--exit-after-checkpoint", &at]);
    let result = replay_cmd(tape, out, shards, &extra).output().unwrap();
    assert!(!result.status.success(), "the run should have aborted after checkpoint {at}");
    assert!(String::from_utf8_lossy(&result.stderr).contains("is durable; aborting"));
}

#[test]
fn resuming_with_another_shard_count_redistributes_the_window_state() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 120_000, 5);
    // A 10-minute window holds thousands of entries at each barrier, more
    // than the next batches expire: most are copied by slices, not expiry.
    std::fs::write(tape.with_file_name("rules.toml"), "[excessive_cancel]\nwindow_ms = 600000\nmin_cancels = 2\n")
        .unwrap();
    let (want, _) = reference(&tape, root.path());
    for (before, after) in [(1, 3), (3, 2)] {
        let got = root.path().join(format!("{before}to{after}"));
        std::fs::create_dir_all(&got).unwrap();
        let state = got.join("state");
        run_until_checkpoint(&tape, &got, &state, before, 4);
        let mut resume = replay_cmd(&tape, &got, after, &with_state(&state, "10000"));
        resume.env("TAPEWATCH_SNAPSHOT_SLICE", "1");
        let out = run_ok(resume);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let taken = format!("taken with {before} shard");
        assert!(stderr.contains("resuming from checkpoint 4") && stderr.contains(&taken), "{stderr}");
        assert_sliced(&String::from_utf8_lossy(&out.stdout), after);
        assert_same_outputs(&want, &got, false);
        assert_same_book(&want, &out.stdout);
    }
}

/// Quote-stuffing and ramping cut their snapshots in O(1) and copy their
/// tables in slices while the records that follow change them (copying an
/// entry first when a record is about to change it). A checkpoint cut
/// that way, the run killed after it and resumed (with another shard count
/// and slice size), gives the uninterrupted run's outputs.
#[test]
fn a_checkpoint_of_the_window_metric_rules_cut_while_slices_were_in_flight_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 120_000, 29);
    // Short windows (the tape spans seconds): entries expire while a copy
    // is in flight, and both rules alert often.
    let rules = "[quote_stuffing]\nenabled = true\nwindow_ms = 200\nmin_in_window = 6\nmin_in_day = 400\n\
                 cooldown_ms = 100\nnear_miss_pct = 70\n\
                 [ramping]\nenabled = true\nwindow_ms = 800\nmin_move_bp = 20\nwindow2_ms = 300\nmin_move2_bp = 10\n\
                 min_share_pct = 10\nmin_group_trades = 2\ncooldown_ms = 100\nnear_miss_pct = 60\n";
    std::fs::write(tape.with_file_name("rules.toml"), rules).unwrap();
    let (want, _) = reference(&tape, root.path());
    let alerts = std::fs::read_to_string(want.join("alerts.jsonl")).unwrap();
    for rule in ["quote-stuffing", "ramping"] {
        let n = alerts.lines().filter(|l| l.contains(&format!("\"rule\":\"{rule}\""))).count();
        assert!(n > 5, "{rule}: only {n} alerts");
    }
    for (before, after, slice) in [(1, 2, "1"), (2, 1, "4096")] {
        let got = root.path().join(format!("{before}to{after}"));
        std::fs::create_dir_all(&got).unwrap();
        let state = got.join("state");
        // Slices of 50 entries: each snapshot is copied over many batches.
        let mut extra = with_state(&state, "10000");
        extra.extend(["--exit-after-checkpoint", "2"]);
        let result = replay_cmd(&tape, &got, before, &extra).env("TAPEWATCH_SNAPSHOT_SLICE", "50").output().unwrap();
        assert!(String::from_utf8_lossy(&result.stderr).contains("is durable; aborting"), "{result:?}");
        let mut resume = replay_cmd(&tape, &got, after, &with_state(&state, "10000"));
        resume.env("TAPEWATCH_SNAPSHOT_SLICE", slice);
        let out = run_ok(resume);
        assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint 2"));
        let summary = String::from_utf8_lossy(&out.stdout);
        if slice == "1" {
            assert_sliced(&summary, after);
        }
        assert_same_outputs(&want, &got, false);
        assert_same_book(&want, &out.stdout);
    }
}

fn newest_shard_file(state: &Path) -> PathBuf {
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(state.join("snap")).unwrap().map(|e| e.unwrap().path()).collect();
    snaps.sort();
    snaps.last().expect("a snapshot directory").join("shard-0.snap")
}

#[test]
fn a_torn_or_corrupt_newest_checkpoint_is_never_used() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 120_000, 9);
    let (want, _) = reference(&tape, root.path());

    // Lost un-synced writes: the run dies right after checkpoint 5, and the
    // newest snapshot file loses its tail (as if its pages never reached disk).
    let got = root.path().join("torn");
    std::fs::create_dir_all(&got).unwrap();
    let state = got.join("state");
    run_until_checkpoint(&tape, &got, &state, 1, 5);
    let file = newest_shard_file(&state);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    let verify = Command::new(bin()).args(["checkpoint", "verify"]).arg(&state).output().unwrap();
    assert!(!verify.status.success(), "verify must fail on a torn checkpoint");
    let out = run_ok(replay_cmd(&tape, &got, 1, &with_state(&state, "10000")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint 5 is torn or damaged"), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint 4"), "{stderr}");
    assert_same_outputs(&want, &got, true);

    // A flipped bit in the newest snapshot of a finished run.
    let got = root.path().join("corrupt");
    std::fs::create_dir_all(&got).unwrap();
    let state = got.join("state");
    let mut exact = with_state(&state, "10000");
    exact.push("--checkpoint-exact");
    run_ok(replay_cmd(&tape, &got, 1, &exact));
    let ls = Command::new(bin()).args(["checkpoint", "ls"]).arg(&state).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    let ids: Vec<u64> = listing.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(ids.len(), 3, "the last three checkpoints are kept: {listing}");
    let file = newest_shard_file(&state);
    let mut bytes = read(&file);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let out = run_ok(replay_cmd(&tape, &got, 1, &with_state(&state, "10000")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let newest = ids[2];
    assert!(stderr.contains(&format!("checkpoint {newest} is torn or damaged")), "{stderr}");
    assert!(stderr.contains(&format!("resuming from checkpoint {}", ids[1])), "{stderr}");
    assert_same_outputs(&want, &got, true);
}

fn assert_clean_failure(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "a panic: {stderr}");
}

#[test]
fn a_state_directory_locked_by_another_process_is_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 30_000, 2);
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let state = root.path().join("state");
    run_ok(replay_cmd(&tape, &out_dir, 1, &with_state(&state, "5000")));
    let alerts_before = read(&out_dir.join("alerts.jsonl"));
    // Another holder of the database's lock: a replay still running into it.
    let holder = tapewatch::checkpoint::store::Store::open(&state).expect("open the state directory");
    let out = replay_cmd(&tape, &out_dir, 1, &with_state(&state, "5000")).output().unwrap();
    assert_clean_failure(&out, &["in use by another process", &state.join("db").display().to_string()]);
    // Inspection opens the database read-only and works beside the holder.
    let ls = Command::new(bin()).args(["checkpoint", "ls"]).arg(&state).output().unwrap();
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("verified"), "{ls:?}");
    assert_eq!(read(&out_dir.join("alerts.jsonl")), alerts_before, "the failed run touched the alerts file");
    drop(holder);
    let verify = Command::new(bin()).args(["checkpoint", "verify"]).arg(&state).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn an_unusable_state_directory_is_a_clear_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 5_000, 4);
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    // Its parent is missing; it is a file; it lies under a file.
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for state in [root.path().join("missing/state"), file.clone(), file.join("state")] {
        let out = replay_cmd(&tape, &out_dir, 1, &with_state(&state, "1000")).output().unwrap();
        assert_clean_failure(&out, &[&state.display().to_string()]);
        assert!(!out_dir.join("alerts.jsonl").exists(), "a failed run left an alerts file");
    }
    // Not a state directory, for the inspection commands.
    let out = Command::new(bin()).args(["checkpoint", "ls"]).arg(root.path()).output().unwrap();
    assert_clean_failure(&out, &["not a state directory"]);
}

#[test]
fn a_checkpoint_of_another_tape_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 20_000, 6);
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let state = root.path().join("state");
    run_ok(replay_cmd(&tape, &out_dir, 1, &with_state(&state, "5000")));
    let other = root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_tape = make_tape(&other, 20_000, 7);
    let out = replay_cmd(&other_tape, &out_dir, 1, &with_state(&state, "5000")).output().unwrap();
    assert_clean_failure(&out, &["taken on another tape"]);
    // The same tape with other account groups.
    let accounts = tape.with_file_name("day.accounts.csv");
    let mut text = std::fs::read_to_string(&accounts).unwrap();
    text.push_str("ZZZ1,extra-group\n");
    std::fs::write(&accounts, text).unwrap();
    let out = replay_cmd(&tape, &out_dir, 1, &with_state(&state, "5000")).output().unwrap();
    assert_clean_failure(&out, &["other rules or another accounts file"]);
}

/// A full disk, as far as one process can fake it: a file-size limit
/// (RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with EFBIG instead
/// of killing the process). The run stops with an error naming a path, and
/// a later run resumes from the last good checkpoint to the exact output.
#[test]
fn a_write_failure_mid_run_is_a_clear_error_and_loses_nothing() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 200_000, 13);
    // The window-metric rules off: ramping's 3-minute and quote-stuffing's
    // 1 s windows hold most of this (seconds-long) tape, so their snapshots
    // alone would pass the file-size limit below at the first checkpoint,
    // before the outputs do, which is not what this test is about.
    let rules = tape.with_file_name("rules.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let off = "[ramping]\nenabled = false\n[quote_stuffing]\nenabled = false\n[instant_cancel]\nenabled = false\n\
               [wash_trade]\nenabled = false\n[marking_close]\nenabled = false\n[marking_open]\nenabled = false\n";
    std::fs::write(&rules, format!("{text}{off}")).unwrap();
    let (want, _) = reference(&tape, root.path());
    let got = root.path().join("full");
    std::fs::create_dir_all(&got).unwrap();
    let state = got.join("state");
    let mut exact = with_state(&state, "4000");
    exact.push("--checkpoint-exact");
    let mut cmd = replay_cmd(&tape, &got, 1, &exact);
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setrlimit and signal), on plain values.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256 << 10, rlim_max: 256 << 10 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_clean_failure(&out, &["File too large"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&got.display().to_string()), "the error names no path under {}: {stderr}", got.display());
    let verify = Command::new(bin()).args(["checkpoint", "verify"]).arg(&state).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let out = run_ok(replay_cmd(&tape, &got, 1, &with_state(&state, "4000")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint"));
    assert_same_outputs(&want, &got, true);
}

#[test]
fn a_native_tape_resumes_by_record_index() {
    let root = tempfile::tempdir().unwrap();
    let tape = make_tape(root.path(), 120_000, 17);
    let (want, _) = reference(&tape, root.path());
    let native = root.path().join("day.tape");
    let import =
        Command::new(bin()).arg("import").arg(&tape).arg("--out").arg(&native).output().expect("run tapewatch import");
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let got = root.path().join("native");
    std::fs::create_dir_all(&got).unwrap();
    let state = got.join("state");
    run_until_checkpoint(&native, &got, &state, 2, 3);
    let show = Command::new(bin()).args(["checkpoint", "show"]).arg(&state).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("position     record "), "{show:?}");
    let out = run_ok(replay_cmd(&native, &got, 1, &with_state(&state, "10000")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint 3"));
    assert_same_book(&want, &out.stdout);
    let (mut a, mut b) =
        (alerts_without_timing(&want.join("alerts.jsonl")), alerts_without_timing(&got.join("alerts.jsonl")));
    a.sort();
    b.sort();
    assert_eq!(a, b, "alerts differ");
    assert_eq!(read(&want.join("alerts.late.csv")), read(&got.join("alerts.late.csv")), "late records differ");
}

#[test]
fn checkpoints_are_also_cut_by_wall_time() {
    let root = tempfile::tempdir().unwrap();
    // Long enough that a loaded machine, where one checkpoint can take 150 ms, still cuts several.
    let tape = make_tape(root.path(), 400_000, 19);
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let state = root.path().join("state");
    let state_arg = state.to_str().unwrap();
    let timed = ["--state", state_arg, "--checkpoint-every-records", "0", "--checkpoint-interval-ms", "1"];
    let out = run_ok(replay_cmd(&tape, &out_dir, 1, &timed));
    let summary = String::from_utf8_lossy(&out.stdout);
    let line = summary.lines().find(|l| l.starts_with("checkpoints ")).expect("a checkpoints line");
    let taken: u64 = line["checkpoints ".len()..].split_whitespace().next().unwrap().parse().unwrap();
    assert!(taken >= 2, "a 1 ms interval over a whole replay cuts several checkpoints: {line}");
    assert!(summary.contains("stall in thread CPU time"), "{summary}");
}
