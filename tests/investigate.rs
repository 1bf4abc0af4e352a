//! `tapewatch investigate` as an analyst meets it: the report on a planted
//! spoofer (book rules on) and on a self-trade of `feeds/sample.csv`,
//! opened in headless Chromium: no script errors, every order of the group
//! in the period drawn and linked to its row of the timeline, a screenshot
//! under the target dir. Bad input: a clear message, exit 2, no report.

mod common;

use common::native_v1::strip_index;
use common::{bin, browser};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use tapewatch::cmd::import::import;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().expect("run tapewatch")
}

fn run_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The orders of `members` on `instrument` whose `N` is in `[from, to]`,
/// from the CSV itself.
fn orders_entered(csv: &Path, members: &BTreeSet<String>, instrument: &str, (from, to): (i64, i64)) -> Vec<u64> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[2] == "N" && f[5] == instrument && members.contains(f[4]))
        .filter(|f| (from..=to).contains(&f[1].parse::<i64>().unwrap()))
        .map(|f| f[3].parse().unwrap())
        .collect()
}

fn members_of(accounts_csv: &Path, group: &str) -> BTreeSet<String> {
    let mut m: BTreeSet<String> = std::fs::read_to_string(accounts_csv)
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_once(','))
                .filter(|(_, g)| *g == group)
                .map(|(a, _)| a.to_string())
                .collect()
        })
        .unwrap_or_default();
    if m.is_empty() {
        m.insert(group.to_string());
    }
    m
}

/// Opens the report as a person would and checks what they would see.
fn look_at(report: &Path, name: &str, orders: &[u64]) -> String {
    let html = std::fs::read_to_string(report).unwrap();
    // Nothing to fetch: no sources, no links or styles off the page (the
    // SVG namespace URI is a name, not a fetch).
    for fetch in ["src=", "href=\"http", "url(http", "url('http", "@import", "<link"] {
        assert!(!html.contains(fetch), "the report fetches something: {fetch}");
    }
    for id in orders {
        assert!(html.contains(&format!("href=\"#order-{id}\"")), "order {id} is not drawn");
        assert!(html.contains(&format!("<tr id=\"order-{id}\"")), "order {id} has no row in the timeline");
    }
    let Some(chrome) = browser::chromium() else { return html };
    let url = format!("file://{}", report.display());
    let dom = browser::dump_dom(&chrome, &url, 2_000);
    let (errors, text) = browser::script_errors(&dom);
    assert_eq!(errors, 0, "script errors: {text}");
    let drawn = dom.matches("href=\"#order-").count();
    assert!(drawn >= orders.len(), "the rendered chart links {drawn} orders, want {}", orders.len());
    assert!(dom.contains("data-series=\"best bid\"") && dom.contains("data-series=\"trades\""));
    let png = browser::screenshot(&chrome, &url, name, 1280, 1600, 2_000);
    eprintln!("screenshot: {}", png.display());
    html
}

#[test]
fn a_report_on_a_planted_spoofer() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("day.csv");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/book-day.toml");
    run_ok(&["gen", "--quiet", "--scale", "0.5", "--scenario", s(&scenario), "--out", s(&csv)]);
    let tape = dir.path().join("day.tape");
    import(&csv, &tape, &dir.path().join("r.tsv")).expect("import");
    let rules = dir.path().join("book.toml");
    std::fs::write(&rules, "[spoofing]\nenabled = true\n").unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    run_ok(&["replay", s(&tape), "--quiet", "--rules", s(&rules), "--alerts", s(&alerts)]);

    // A spoofing alert on a planted spoofer, past the day's first minute
    // (a full book by then).
    let truth = std::fs::read_to_string(dir.path().join("day.truth.csv")).unwrap();
    let planted: BTreeSet<(String, String)> = truth
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(1) == Some(&"spoofing")).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect();
    let all: Vec<Value> =
        std::fs::read_to_string(&alerts).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first_ts = all.iter().map(|a| a["ts_ns"].as_i64().unwrap()).min().unwrap();
    let alert = all
        .iter()
        .filter(|a| a["rule"] == "spoofing" && a["ts_ns"].as_i64().unwrap() > first_ts + 30_000_000_000)
        .find(|a| {
            planted
                .contains(&(a["account"].as_str().unwrap().to_string(), a["instrument"].as_str().unwrap().to_string()))
        })
        .expect("a spoofing alert on a planted spoofer");
    let id = alert["alert_id"].as_str().unwrap();
    let ts = alert["ts_ns"].as_i64().unwrap();
    let (from, to) = (ts - 20_000_000_000, ts + 5_000_000_000);
    let (from_arg, to_arg) = (from.to_string(), to.to_string());
    let investigate = |alert: &str, report: &Path, more: &[&str]| {
        let mut args = vec!["investigate", s(&tape), "--alert", alert, "--alerts", s(&alerts), "--rules", s(&rules)];
        args.extend(["--from", &from_arg, "--to", &to_arg, "--out", s(report)]);
        args.extend(more);
        run_ok(&args)
    };
    let report = dir.path().join("spoofer.html");
    let said = investigate(id, &report, &[]);
    assert!(said.contains("index: read"), "{said}");
    let group = alert["group"].as_str().unwrap();
    let members = members_of(&dir.path().join("day.accounts.csv"), group);
    let orders = orders_entered(&csv, &members, alert["instrument"].as_str().unwrap(), (from, to));
    assert!(orders.len() >= 3, "the spoofer placed orders in the period: {orders:?}");
    let html = look_at(&report, "investigate-spoofer", &orders);
    assert!(html.contains(&format!("Group {group} placed")), "the headline names the group");
    assert!(html.contains("class=\"alert-row"), "the alert's record is marked in the timeline");
    assert!(html.contains("Parameter version"));
    // The same report by line number instead of id.
    let line = all.iter().position(|a| a["alert_id"] == id).unwrap() + 1;
    let again = dir.path().join("again.html");
    investigate(&format!("#{line}"), &again, &["--quiet"]);
    let strip = |h: String| h.lines().filter(|l| !l.contains("class=\"meta\"")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(std::fs::read_to_string(&again).unwrap()), strip(html));
}

#[test]
fn a_report_on_a_self_trade_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds");
    for f in ["sample.csv", "sample.accounts.csv", "sample.instruments.csv"] {
        std::fs::copy(feeds.join(f), dir.path().join(f)).unwrap();
    }
    let csv = dir.path().join("sample.csv");
    let tape = dir.path().join("sample.tape");
    import(&csv, &tape, &dir.path().join("r.tsv")).expect("import");
    let alerts = dir.path().join("alerts.jsonl");
    run_ok(&["replay", s(&tape), "--quiet", "--alerts", s(&alerts)]);
    let all: Vec<Value> =
        std::fs::read_to_string(&alerts).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let alert = all.iter().find(|a| a["rule"] == "self-trade").expect("sample.csv has self-trades");
    let id = alert["alert_id"].as_str().unwrap();
    let report = dir.path().join("self-trade.html");
    run_ok(&["investigate", s(&tape), "--alert", id, "--alerts", s(&alerts), "--out", s(&report)]);
    let ts = alert["ts_ns"].as_i64().unwrap();
    let group = alert["group"].as_str().unwrap();
    let members = members_of(&dir.path().join("sample.accounts.csv"), group);
    // The default period: the alert minus 70 s to plus 30 s.
    let orders = orders_entered(
        &csv,
        &members,
        alert["instrument"].as_str().unwrap(),
        (ts - 70_000_000_000, ts + 30_000_000_000),
    );
    assert!(!orders.is_empty());
    let html = look_at(&report, "investigate-self-trade", &orders);
    assert!(html.contains("trading") && html.contains("with itself"), "the headline says it traded with itself");

    // A tape written before the index: the same report, read whole, and said so.
    let old = dir.path().join("old.tape");
    strip_index(&tape, &old);
    let from_old = dir.path().join("old.html");
    let said = run_ok(&["investigate", s(&old), "--alert", id, "--alerts", s(&alerts), "--out", s(&from_old)]);
    assert!(said.contains("no index on this tape"), "{said}");
    // A CSV tape works too.
    run_ok(&["investigate", s(&csv), "--alert", id, "--alerts", s(&alerts), "--out", s(&dir.path().join("csv.html"))]);

    // Bad input: exit 2, a message naming the problem, no report.
    let instrument = alert["instrument"].as_str().unwrap();
    let out = dir.path().join("bad.html");
    let missing = dir.path().join("missing.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--alert", "self-trade:000000:NOBODY:1", "--alerts", s(&alerts)], "not in"),
        (vec!["--alert", "#100000", "--alerts", s(&alerts)], "not in"),
        (
            vec!["--group", group, "--instrument", instrument, "--from", "03:00:00", "--to", "03:10:00"],
            "outside the tape",
        ),
        (
            vec!["--group", group, "--instrument", "999999", "--from", "09:30:00", "--to", "09:40:00"],
            "--instrument 999999: no record of it",
        ),
        (
            vec!["--group", "no-such-group", "--instrument", instrument, "--from", "09:30:00", "--to", "09:40:00"],
            "--group no-such-group",
        ),
        (vec!["--group", group], "needs --instrument, --from and --to"),
        (vec!["--alert", id, "--alerts", s(&missing)], "missing.jsonl"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["investigate", s(&tape), "--out", s(&out)];
        args.extend(&flags);
        let o = cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!out.exists(), "{flags:?} left a report");
        assert!(!PathBuf::from(format!("{}.partial", out.display())).exists());
    }
    // A report is never written over an input.
    let o = cli(&["investigate", s(&tape), "--alert", id, "--alerts", s(&alerts), "--out", s(&alerts)]);
    assert_eq!(o.status.code(), Some(2));

    // --group G over a period: the group's records only, all of them in the timeline.
    let manual = dir.path().join("manual.html");
    let (from, to) = (ts - 600_000_000_000, ts + 60_000_000_000);
    run_ok(&[
        "investigate",
        s(&tape),
        "--group",
        group,
        "--instrument",
        instrument,
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--out",
        s(&manual),
        "--quiet",
    ]);
    let html = std::fs::read_to_string(&manual).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut theirs: HashMap<u64, bool> = HashMap::new();
    for f in text.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()) {
        let t: i64 = f[1].parse().unwrap();
        let party = members.contains(f[4]) || (f[2] == "T" && members.contains(f[10]));
        if f[5] == instrument && party && (from..=to).contains(&t) {
            theirs.insert(f[0].parse().unwrap(), true);
        }
    }
    let rows = html.matches("<tr id=\"").count();
    assert_eq!(rows, theirs.len(), "one timeline row per record of the group in the period");
}
