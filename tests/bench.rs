//! The scenario files as golden tests, and the live path's promises:
//! every shipped scenario, played at a reduced scale through the live
//! ingest path by `tapewatch bench`, finds exactly what it planted and
//! loses nothing; an abusive record on a quiet live feed alerts without
//! waiting for more records; bad scenario files and unmet expectations
//! fail the command. No assertion here is about speed.

mod common;

use common::bin;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use tapewatch::cmd::bench::{BenchArgs, bench};

/// One bench at a time: each runs four threads, and a machine this small
/// should not also run five of them at once.
static SERIAL: Mutex<()> = Mutex::new(());

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"))
}

fn args(name: &str, scale: f64, out: &Path) -> BenchArgs {
    BenchArgs {
        scenario: scenario(name),
        scale,
        json: None,
        hist: Some(out.join("hist.txt")),
        plot: Some(out.join("plot.svg")),
        find_max: false,
        p99_bound_ms: 100.0,
        trial_secs: 1.0,
        shards: 2,
        cores: "none".to_string(),
        out_dir: Some(out.to_path_buf()),
        // Test machines are shared and stall threads for tens of ms: a
        // long quiet period keeps a stalled feeder from making records
        // late. The idle watermark has its own test below.
        idle_after_ms: Some(250.0),
        quiet: true,
    }
}

fn run_scenario(name: &str, scale: f64) -> serde_json::Value {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let outcome = bench(&args(name, scale, dir.path())).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert!(outcome.unmet.is_empty(), "{name}: {:?}\n{}", outcome.unmet, outcome.text);
    let json = outcome.json;
    let records = &json["records"];
    assert_eq!(records["dropped"], 0, "{name}");
    let offered = records["offered"].as_u64().unwrap();
    assert!(offered > 1_000, "{name}: only {offered} records offered");
    let accounted = ["applied", "late", "rejected"].iter().map(|k| records[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(accounted, offered, "{name}: every offered record is applied, late or rejected");
    assert_eq!(records["rejected"], 0, "{name}: the generator writes well-formed tapes");
    // The patterns these scenarios plant are judged exactly; the book rules'
    // alerts on their random-walk background are reported, not judged
    // (scenarios/README.md).
    for pattern in ["excessive-cancel", "self-trade"] {
        let score = &json["detection"]["patterns"][pattern];
        assert!(score["expected"].as_u64().unwrap() > 0, "{name}: {pattern} planted");
        assert_eq!(score["recall"], 1.0, "{name}: {pattern}");
        assert_eq!(score["precision"], 1.0, "{name}: {pattern}");
    }
    let alerts = json["latency_ns"]["ingest_to_alert"]["count"].as_u64().unwrap();
    assert!(alerts > 0 && json["latency_ns"]["ingest_to_alert"]["max"].as_u64().unwrap() > 0, "{name}");
    let hist = std::fs::read_to_string(dir.path().join("hist.txt")).unwrap();
    assert!(hist.contains("Percentile") && hist.contains("#[Max"), "{name}: {hist}");
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"), "{name}");
    json
}

#[test]
fn steady_5k_finds_what_it_planted() {
    let json = run_scenario("steady-5k", 0.05);
    assert_eq!(json["records"]["late"], 0);
}

#[test]
fn szse_peak_finds_what_it_planted_through_the_bursts() {
    let json = run_scenario("szse-peak", 0.02);
    assert_eq!(json["records"]["late"], 0);
    let phases = json["throughput"]["per_phase"].as_array().unwrap();
    assert_eq!(phases.len(), 7, "open, then three bursts each with its base stretch");
    assert_eq!(phases[1]["offered_rps"], 1_200_000.0);
}

#[test]
fn burst_3m_finds_what_it_planted() {
    let json = run_scenario("burst-3m", 0.03);
    assert_eq!(json["records"]["late"], 0);
}

#[test]
fn skew_finds_what_it_planted() {
    let json = run_scenario("skew", 0.05);
    assert_eq!(json["records"]["late"], 0);
}

#[test]
fn late_heavy_finds_what_it_planted_and_sets_late_records_aside() {
    let json = run_scenario("late-heavy", 0.05);
    assert!(json["records"]["late"].as_u64().unwrap() > 0, "records beyond the 50 ms bound are late");
}

#[test]
fn bad_scenario_file_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nphases = [\n  { rate = -10, for = \"5s\" },\n]\n[[abuse]]\npattern = \"self-trade\"\n",
    )
    .unwrap();
    for command in [&["bench"][..], &["gen", "--out", "day.csv", "--scenario"][..]] {
        let out = Command::new(bin()).args(command).arg(&bad).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml: line 3: phases[0].rate: -10 is out of range"), "{command:?}: {err}");
        assert!(err.contains("bad.toml: line 5: abuse[0].actors: missing"), "{command:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::write(&bad, "phases = [ { rate = 10, for = \"5s\" } ]\n[market]\ninstrumnets = 5\n").unwrap();
    let out = Command::new(bin()).arg("bench").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: unknown field `instrumnets`"), "{err}");
}

/// A scenario whose expectation cannot hold (late records on a feed that
/// expects none) makes the command fail, after printing its report.
#[test]
fn unmet_expectations_exit_non_zero() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strict.toml");
    std::fs::write(
        &path,
        "name = \"strict\"\nphases = [ { rate = 20000, for = \"0.5s\" } ]\n[flow]\nlate_share = 0.3\nlate_by = \"80ms\"\n[pipeline]\nlateness = \"1ms\"\n[expect]\nmax_late = 0\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["bench", "--quiet", "--idle-after-ms", "250", "--out-dir"])
        .arg(dir.path().join("out"))
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("expect      NOT MET:") && stdout.contains("late records, at most 0"), "{stdout}");
    assert!(stderr.contains("expectations not met"), "{stderr}");
}

#[test]
fn gen_scenario_writes_tape_truth_and_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["gen", "--scale", "0.02", "--out", "day.csv", "--scenario"])
        .arg(scenario("steady-5k"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tape = std::fs::read_to_string(dir.path().join("day.csv")).unwrap();
    // 60 s x 0.02 = 1.2 s at 5k/s, plus the planted records.
    let records = tape.lines().count() - 1;
    assert!((6_000..6_600).contains(&records), "{records} records");
    let truth = std::fs::read_to_string(dir.path().join("day.truth.csv")).unwrap();
    assert_eq!(truth.lines().count(), 1 + 6, "{truth}");
    assert!(dir.path().join("day.accounts.csv").exists());
    // The tape replays as any FEED.md tape, and finds the planted actors.
    let replay = Command::new(bin())
        .args(["replay", "day.csv", "--lateness-ms", "1", "--quiet", "--cores", "none"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert!(String::from_utf8_lossy(&replay.stdout).contains(", 0 rejected, 0 late"));
}
