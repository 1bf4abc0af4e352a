//! Slices of a tape: `cat` prints a native tape back as the CSV it came
//! from, `slice` cuts the records a filter selects (from a native or a CSV
//! tape, the same bytes either way), and a filtered `replay` finds exactly
//! the full replay's alerts inside the slice, with or without the tape's
//! index, for the window rules, the stateless ones and the book rules.

mod common;

use common::native_v1::strip_index;
use common::{bin, read_alerts, replay_args};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tapewatch::cmd::import::import;
use tapewatch::cmd::replay::replay_described;
use tapewatch::investigate::filter::FilterArgs;

struct Day {
    csv: PathBuf,
    tape: PathBuf,
    rules: PathBuf,
    accounts: PathBuf,
}

/// Half of the book-day scenario (makers, institutions, planted spoofers,
/// layerers, igniters; 300k records), imported, with the book rules on.
fn book_day(dir: &Path) -> Day {
    let csv = dir.join("day.csv");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/book-day.toml");
    let out = Command::new(bin())
        .args(["gen", "--quiet", "--scale", "0.5", "--scenario"])
        .arg(&scenario)
        .arg("--out")
        .arg(&csv)
        .output()
        .expect("run gen");
    assert!(out.status.success(), "gen: {}", String::from_utf8_lossy(&out.stderr));
    let tape = dir.join("day.tape");
    import(&csv, &tape, &dir.join("day.rejects.tsv")).expect("import");
    let rules = dir.join("book.toml");
    std::fs::write(
        &rules,
        "[spoofing]\nenabled = true\n[layering]\nenabled = true\n[momentum_ignition]\nenabled = true\n",
    )
    .expect("rules");
    Day { csv, tape, rules, accounts: dir.join("day.accounts.csv") }
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().expect("run tapewatch")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn cat_prints_the_csv_a_clean_tape_was_imported_from() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/sample.csv");
    let tape = dir.path().join("sample.tape");
    import(&sample, &tape, &dir.path().join("r.tsv")).expect("import");
    let out = cli(&["cat", s(&tape)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == std::fs::read(&sample).unwrap(), "cat differs from the CSV the tape was imported from");

    // Also a tape written before the index.
    let old = dir.path().join("old.tape");
    strip_index(&tape, &old);
    let out = cli(&["cat", s(&old)]);
    assert!(out.status.success() && out.stdout == std::fs::read(&sample).unwrap());

    // A closed pipe ends it quietly.
    let mut child =
        Command::new(bin()).args(["cat", s(&tape)]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // A CSV tape is not for cat: a clear message, exit 2.
    let out = cli(&["cat", s(&sample)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a native tape"));
}

/// The records a filter selects, by brute force over the CSV's lines.
fn expected_lines(csv: &Path, instruments: &[&str], range: (i64, i64), accounts: Option<&BTreeSet<String>>) -> String {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let keep = i == 0
            || (instruments.is_empty() || instruments.contains(&f[5]))
                && (range.0..=range.1).contains(&f[1].parse::<i64>().unwrap())
                && accounts.is_none_or(|a| a.contains(f[4]) || (f[2] == "T" && a.contains(f[10])));
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn slice_cuts_the_selected_records_from_native_and_csv_tapes_alike() {
    let dir = tempfile::tempdir().unwrap();
    let day = book_day(dir.path());
    let text = std::fs::read_to_string(&day.csv).unwrap();
    let first: i64 = text.lines().nth(1).unwrap().split(',').nth(1).unwrap().parse().unwrap();
    let (from, to) = (first + 20_000_000_000, first + 35_000_000_000);
    // Two instruments that trade, and a group of accounts.csv.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in text.lines().skip(1) {
        *counts.entry(line.split(',').nth(5).unwrap()).or_default() += 1;
    }
    let mut busy: Vec<(&str, usize)> = counts.into_iter().collect();
    busy.sort_by_key(|(name, n)| (std::cmp::Reverse(*n), name.to_string()));
    let (a, b) = (busy[0].0, busy[3].0);
    let accounts_text = std::fs::read_to_string(&day.accounts).unwrap();
    // The accounts.csv group with the most records.
    let (group, members): (String, BTreeSet<String>) = {
        let rows: HashMap<&str, &str> = accounts_text.lines().skip(1).filter_map(|l| l.split_once(',')).collect();
        let mut per_group: HashMap<&str, usize> = HashMap::new();
        for line in text.lines().skip(1) {
            if let Some(g) = rows.get(line.split(',').nth(4).unwrap()) {
                *per_group.entry(g).or_default() += 1;
            }
        }
        let g =
            per_group.iter().max_by_key(|(g, n)| (**n, g.to_string())).expect("a group in accounts.csv").0.to_string();
        (g.clone(), rows.iter().filter(|(_, gg)| **gg == g).map(|(acc, _)| acc.to_string()).collect())
    };

    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--instrument".into(), a.into(), "--instrument".into(), b.into()],
            expected_lines(&day.csv, &[a, b], (i64::MIN, i64::MAX), None),
        ),
        (
            vec!["--from".into(), from.to_string(), "--to".into(), to.to_string(), "--instrument".into(), a.into()],
            expected_lines(&day.csv, &[a], (from, to), None),
        ),
        (vec!["--group".into(), group.clone()], expected_lines(&day.csv, &[], (i64::MIN, i64::MAX), Some(&members))),
    ];
    for (n, (flags, want)) in cases.iter().enumerate() {
        assert!(want.lines().count() > 50, "case {n} selects too little to mean anything");
        for (format, input) in [("native", &day.tape), ("csv", &day.csv)] {
            let part = dir.path().join(format!("part-{n}-{format}.csv"));
            let mut args: Vec<&str> = vec!["slice", s(input), "--quiet", "--out", s(&part)];
            args.extend(flags.iter().map(String::as_str));
            let out = cli(&args);
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            let got = std::fs::read_to_string(&part).unwrap();
            assert!(
                got == *want,
                "case {n} from the {format} tape: {} lines, want {}",
                got.lines().count(),
                want.lines().count()
            );
        }
        // cat with the same filters prints the same.
        let mut args: Vec<&str> = vec!["cat", s(&day.tape)];
        args.extend(flags.iter().map(String::as_str));
        let out = cli(&args);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == *want, "cat case {n}");
    }

    // Never over an input, and nothing half-written on bad input.
    let before = std::fs::read(&day.tape).unwrap();
    let out = cli(&["slice", s(&day.tape), "--instrument", a, "--out", s(&day.tape)]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&day.tape).unwrap() == before, "the tape was changed");
    let part = dir.path().join("bad.csv");
    for (flags, says) in [
        (vec!["--instrument", "NOPE"], "--instrument NOPE: no record of it on the tape"),
        (vec!["--from", "03:00:00", "--to", "03:10:00"], "outside the tape"),
        (vec!["--group", "no-such-group"], "--group no-such-group: not a group of accounts.csv"),
        (vec!["--from", "10:00:00", "--to", "09:00:00"], "is after --to"),
    ] {
        let mut args = vec!["slice", s(&day.tape), "--out", s(&part)];
        args.extend(flags);
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!part.exists(), "{args:?} left an output");
    }
}

fn alerts_where(all: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    all.iter().filter(|a| keep(a)).cloned().collect()
}

#[test]
fn a_sliced_replay_finds_the_full_replays_alerts_inside_the_slice() {
    let dir = tempfile::tempdir().unwrap();
    let day = book_day(dir.path());
    let old = dir.path().join("old.tape");
    strip_index(&day.tape, &old);

    let full_dir = dir.path().join("full");
    std::fs::create_dir(&full_dir).unwrap();
    let mut args = replay_args(&day.tape, &full_dir, 2);
    args.reference.rules = Some(day.rules.clone());
    replay_described(&args).expect("full replay");
    let full = read_alerts(&full_dir.join("alerts.jsonl"));
    let ts = |a: &Value| a["ts_ns"].as_i64().unwrap();
    let first = ts(full.iter().min_by_key(|a| ts(a)).unwrap());
    let (from, to) = (first + 30_000_000_000, first + 70_000_000_000);

    // Instruments with book-rule alerts inside the window, and the group of one.
    let inside: Vec<&Value> = full.iter().filter(|a| (from..=to).contains(&ts(a))).collect();
    let mut instruments: Vec<String> = Vec::new();
    for rule in ["spoofing", "layering", "momentum-ignition", "excessive-cancel"] {
        if let Some(a) = inside.iter().find(|a| a["rule"] == rule) {
            let name = a["instrument"].as_str().unwrap().to_string();
            if !instruments.contains(&name) {
                instruments.push(name);
            }
        }
    }
    assert!(instruments.len() >= 3, "the window should hold alerts of several rules: {instruments:?}");
    let group = inside.iter().find(|a| a["rule"] == "spoofing").unwrap()["group"].as_str().unwrap().to_string();
    let on = |a: &Value, list: &[String]| list.iter().any(|i| a["instrument"] == i.as_str());

    type Case = (&'static str, FilterArgs, Box<dyn Fn(&Value) -> bool>);
    let range = (from.to_string(), to.to_string());
    let (i1, g1) = (instruments.clone(), group.clone());
    let i2 = instruments.clone();
    let cases: Vec<Case> = vec![
        (
            "instruments",
            FilterArgs { instrument: instruments.clone(), ..FilterArgs::default() },
            Box::new(move |a| on(a, &i1)),
        ),
        (
            "time",
            FilterArgs { from: Some(range.0.clone()), to: Some(range.1.clone()), ..FilterArgs::default() },
            Box::new(move |a| (from..=to).contains(&ts(a))),
        ),
        (
            "instruments, time and group",
            FilterArgs {
                from: Some(range.0.clone()),
                to: Some(range.1.clone()),
                instrument: instruments.clone(),
                group: vec![group.clone()],
                ..FilterArgs::default()
            },
            Box::new(move |a| on(a, &i2) && (from..=to).contains(&ts(a)) && a["group"] == g1.as_str()),
        ),
    ];
    let mut rules_seen = BTreeSet::new();
    for (name, filter, keep) in &cases {
        let want = alerts_where(&full, keep);
        assert!(!want.is_empty(), "{name}: the full replay has alerts inside the slice");
        rules_seen.extend(want.iter().map(|a| a["rule"].as_str().unwrap().to_string()));
        let mut lates = Vec::new();
        for (format, tape) in [("indexed", &day.tape), ("no index", &old), ("csv", &day.csv)] {
            let out = dir.path().join(format!("{name}-{format}"));
            std::fs::create_dir(&out).unwrap();
            let mut args = tapewatch::cmd::replay::ReplayArgs { filter: filter.clone(), ..replay_args(tape, &out, 2) };
            args.reference.rules = Some(day.rules.clone());
            args.reference.files.accounts = Some(day.accounts.clone());
            let (_, inputs) = replay_described(&args).unwrap_or_else(|e| panic!("{name} {format}: {e:?}"));
            let got = read_alerts(&out.join("alerts.jsonl"));
            assert!(got == want, "{name}, {format} tape: {} alerts, want {}", got.len(), want.len());
            assert!(inputs.filter.is_some(), "the summary describes the filter");
            if format != "csv" {
                lates.push(std::fs::read(out.join("alerts.late.csv")).unwrap());
            }
        }
        assert!(lates[0] == lates[1], "{name}: the late records differ with and without the index");
    }
    assert!(rules_seen.len() >= 3, "rules exercised: {rules_seen:?}");
}

/// Blocks the index skips change nothing. With only a stateless rule on
/// (self-trade: no warm-up) and no timer rule, a replay from mid-day to
/// three quarters leaves the blocks before and after unread; it writes what
/// it writes reading them all (a tape without the index) and what the full
/// replay finds in the period. (On a generated day of 500 instruments every
/// instrument is in nearly every 4096-record block, so the index skips by
/// time here, not by instrument.)
#[test]
fn skipping_blocks_by_the_index_is_exact() {
    use tapewatch::generator::{GenConfig, generate};
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("day.csv");
    generate(&GenConfig::new(300_000, 21), &csv).expect("generate");
    let tape = dir.path().join("day.tape");
    import(&csv, &tape, &dir.path().join("r.tsv")).expect("import");
    let old = dir.path().join("old.tape");
    strip_index(&tape, &old);
    let rules = dir.path().join("self-trade.toml");
    std::fs::write(
        &rules,
        "[excessive_cancel]\nenabled = false\n[wash_trade]\nenabled = false\n[marking_close]\nenabled = false\n",
    )
    .unwrap();
    let full_dir = dir.path().join("full");
    std::fs::create_dir(&full_dir).unwrap();
    let mut args = replay_args(&tape, &full_dir, 1);
    args.reference.rules = Some(rules.clone());
    replay_described(&args).expect("full replay");
    let full = read_alerts(&full_dir.join("alerts.jsonl"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let times: Vec<i64> = text.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    let (first, last) = (times[0], *times.last().unwrap());
    let (from, to) = (first + (last - first) / 2, first + (last - first) * 3 / 4);
    let want: Vec<Value> =
        full.iter().filter(|a| (from..=to).contains(&a["ts_ns"].as_i64().unwrap())).cloned().collect();
    assert!(want.len() >= 3, "self-trades in the period: {}", want.len());
    let mut outputs = Vec::new();
    for (format, t) in [("indexed", &tape), ("no index", &old)] {
        let out = dir.path().join(format);
        std::fs::create_dir(&out).unwrap();
        // The old tape has no accounts.csv beside it: named here for both.
        let mut args = tapewatch::cmd::replay::ReplayArgs {
            filter: FilterArgs { from: Some(from.to_string()), to: Some(to.to_string()), ..FilterArgs::default() },
            ..replay_args(t, &out, 1)
        };
        args.reference.rules = Some(rules.clone());
        args.reference.files.accounts = Some(dir.path().join("day.accounts.csv"));
        let (summary, inputs) = replay_described(&args).unwrap_or_else(|e| panic!("{format}: {e:?}"));
        assert_eq!(read_alerts(&out.join("alerts.jsonl")), want, "{format}");
        let said = inputs.filter.expect("the summary describes the filter");
        assert!(said.contains("warm-up before --from: none"), "{said}");
        if format == "indexed" {
            let skipped: u64 =
                said.split(" blocks skipped").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
            assert!(skipped > 20, "the index skipped only {skipped} of 74 blocks: {said}");
        } else {
            assert!(said.contains("no index on this tape: every block read"), "{said}");
        }
        outputs.push((std::fs::read(out.join("alerts.late.csv")).unwrap(), summary.applied, summary.late));
    }
    assert!(outputs[0] == outputs[1], "late records or counts differ with and without the index");
}
