//! The scenario files as golden tests, and the live path's promises:
//! every shipped scenario, played at a reduced scale through the live
//! ingest path by `tapewatch bench`, finds exactly what it planted and
//! loses nothing; an abusive record on a quiet live feed alerts without
//! waiting for more records; bad scenario files and unmet expectations
//! fail the command. No assertion here is about speed.

mod common;

use common::bin;
use common::browser::{ERROR_HOOK, chromium, dump_dom, screenshot, script_errors};
use serde_json::Value;
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
    run_scenario_with_plot(name, scale).0
}

/// The JSON report and the plot.
fn run_scenario_with_plot(name: &str, scale: f64) -> (serde_json::Value, String) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(name, scale, dir.path());
    args.json = Some(dir.path().join("report.json"));
    let outcome = bench(&args).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let text = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    // Text, not parsed values: serde_json's default float parsing may differ in the last bit.
    let expected = format!("{}\n", serde_json::to_string_pretty(&outcome.json).unwrap());
    assert_eq!(text, expected, "{name}: --json writes the report returned");
    let written: Value = serde_json::from_str(&text).unwrap();
    json_fields_are_typed(&written);
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
    let alerts = json["latency"]["ingest_to_alert"]["count"].as_u64().unwrap();
    assert!(alerts > 0 && json["latency"]["ingest_to_alert"]["max_ns"].as_u64().unwrap() > 0, "{name}");
    let hist = std::fs::read_to_string(dir.path().join("hist.txt")).unwrap();
    assert!(hist.contains("Percentile") && hist.contains("#[Max"), "{name}: {hist}");
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
    // Every rule that alerted is a legend entry and a series of points.
    for (rule, score) in json["detection"]["patterns"].as_object().unwrap() {
        let alerted = score["found"].as_u64().unwrap() + score["unexpected"].as_u64().unwrap() > 0;
        let legend = svg.contains(&format!(r#"<g class="legend-item" data-series="{rule} ("#));
        assert_eq!(legend, alerted, "{name}: {rule} in the plot's legend");
    }
    (json, svg)
}

/// The JSON report's fields are there with their types, and every
/// measured quantity names its unit in its key.
fn json_fields_are_typed(json: &Value) {
    let field = |pointer: &str| json.pointer(pointer).unwrap_or_else(|| panic!("{pointer} missing in {json:#}"));
    for pointer in [
        "/layout",
        "/records/offered",
        "/records/applied",
        "/records/late",
        "/records/late_after_feeder_stall",
        "/records/rejected",
        "/records/dropped",
        "/machine/cores",
        "/latency/ingest_to_alert/count",
        "/latency/ingest_to_alert/p50_ns",
        "/latency/ingest_to_alert/p99_ns",
        "/latency/ingest_to_alert/p999_ns",
        "/latency/ingest_to_alert/max_ns",
        "/setup/lateness_ns",
        "/setup/idle_after_ns",
        "/setup/shards",
        "/watermark_lag/median_ns",
        "/watermark_lag/max_ns",
        "/backpressure/feeder_blocked_ns",
        "/backpressure/feeder_stalls",
        "/backpressure/ring_occupancy_max_slots",
    ] {
        assert!(field(pointer).is_u64(), "{pointer}: {}", field(pointer));
    }
    for pointer in [
        "/wall_s",
        "/scenario/scale",
        "/detection/precision",
        "/detection/recall",
        "/backpressure/ring_occupancy_mean_slots",
        "/throughput/phases/0/offered_per_s",
        "/throughput/phases/0/achieved_per_s",
        "/throughput/phases/0/scheduled_s",
        "/throughput/phases/0/took_s",
    ] {
        assert!(field(pointer).is_f64(), "{pointer}: {}", field(pointer));
    }
    for pointer in [
        "/version",
        "/started_at",
        "/machine/cpu_model",
        "/machine/kernel",
        "/scenario/name",
        "/throughput/phases/0/name",
    ] {
        assert!(field(pointer).as_str().is_some_and(|s| !s.is_empty()), "{pointer}: {}", field(pointer));
    }
    assert_eq!(field("/version"), env!("CARGO_PKG_VERSION"));
    // Built from a checkout here: the commit is a hash, not null.
    let commit = field("/commit").as_str().unwrap_or_else(|| panic!("/commit: {}", field("/commit")));
    assert!(commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
    assert!(field("/started_at").as_str().unwrap().ends_with("+08:00"));
    assert!(field("/command_line").as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)));
    assert!(field("/detection/missed").is_array() && field("/detection/unexpected").is_array());
    assert!(field("/expectations_met").is_boolean() && field("/unmet").is_array());
    // No bare quantity: the old unitless keys are gone everywhere.
    fn keys<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| {
                out.push(k);
                keys(v, out)
            }),
            Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    keys(json, &mut all);
    for bare in [
        "p50",
        "p99",
        "p999",
        "max",
        "median",
        "offered_rps",
        "achieved_rps",
        "rate_rps",
        "scheduled_secs",
        "took_secs",
        "latency_ns",
        "watermark_lag_ns",
    ] {
        assert!(!all.contains(&bare), "key {bare} has no unit");
    }
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
    let phases = json["throughput"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 7, "open, then three bursts each with its base stretch");
    assert_eq!(phases[1]["offered_per_s"], 1_200_000.0);
}

/// The plot as a person sees it: rendered by Chromium without errors,
/// with log latency ticks, a legend, the phases named and the bursts
/// shaded; the screenshot is left under the target dir to look at.
#[test]
fn burst_3m_finds_what_it_planted_and_plots_it() {
    let (json, svg) = run_scenario_with_plot("burst-3m", 0.03);
    assert_eq!(json["records"]["late"], 0);
    assert_eq!(svg.matches(r#"<svg class="panel""#).count(), 2, "latency and throughput panels");
    assert_eq!(svg.matches(r#"data-span="burst phase""#).count(), 6, "three bursts shaded in both panels");
    for phase in ["open", "burst #1", "burst #2", "burst #3"] {
        assert!(svg.contains(&format!(">{phase}</text>")), "{phase} named above the plot");
    }
    assert!(
        svg.contains(r#"data-title="latency (log scale)""#) && svg.contains(" ms</text>"),
        "log latency axis in ms"
    );
    assert!(svg.contains(r#"data-label="p99 "#) && svg.contains(r#"data-label="p50 "#));
    assert!(svg.contains(r#"data-series="offered (schedule)""#) && svg.contains(r#"data-series="achieved (sent)""#));
    let Some(chrome) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("plot.html");
    std::fs::write(&page, format!("<!doctype html><html><head><meta charset=utf-8>{ERROR_HOOK}</head><body style=\"margin:0\">{svg}</body></html>")).unwrap();
    let url = format!("file://{}", page.display());
    let dom = dump_dom(&chrome, &url, 2000);
    assert_eq!(script_errors(&dom), (0, String::new()));
    assert_eq!(
        dom.matches(r#"class="legend-item""#).count(),
        svg.matches(r#"class="legend-item""#).count(),
        "the browser parsed every legend entry"
    );
    screenshot(&chrome, &url, "bench-plot-burst-3m", 1000, 1000, 2000);
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
