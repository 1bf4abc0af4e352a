//! Near-misses (`near_miss_pct`, issue 10 §2): a key reaching that share of
//! every threshold without crossing goes to `replay --near-misses FILE`,
//! never to the alerts; the alert set is the same with the option on or off.

mod common;

use common::tapewatch;
use serde_json::Value;
use std::path::Path;

const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";

/// On Y, B trades 100 with itself three times after 3,230 of other volume:
/// 300 of 3,530 = 8.5%, 85% of wash-trade's 10% (3 trades, its minimum).
/// On Z, E trades only with itself: a wash-trade alert.
fn tape() -> String {
    let mut trades = vec![("C", "D", "Y", 3_230)];
    trades.extend([("B", "B", "Y", 100); 3]);
    trades.extend([("E", "E", "Z", 100); 3]);
    trades_tape(&trades)
}

/// A tape of trades `(buyer, seller, instrument, qty)`, one a second: each
/// a sell order, a buy order a nanosecond later, and the buy lifting it.
fn trades_tape(trades: &[(&str, &str, &str, u64)]) -> String {
    let mut s = format!("{HEADER}\n");
    let mut ts = 1_793_583_000_000_000_000i64;
    let mut seq = 0;
    for (order, &(buyer, seller, inst, qty)) in (0u64..).step_by(2).zip(trades) {
        let (sell, buy) = (order + 1, order + 2);
        ts += 1_000_000_000;
        for body in [
            format!("{ts},N,{sell},{seller},{inst},S,5.0000,{qty},,"),
            format!("{},N,{buy},{buyer},{inst},B,5.0000,{qty},,", ts + 1),
            format!("{},T,{buy},{buyer},{inst},B,5.0000,{qty},{sell},{seller}", ts + 1),
        ] {
            seq += 1;
            s.push_str(&format!("{seq},{body}\n"));
        }
    }
    s
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// Alerts without what differs between the runs (timing, the parameter version).
fn alert_set(path: &Path) -> Vec<Value> {
    let mut all: Vec<Value> = lines(path)
        .into_iter()
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            o.remove("timing");
            o.remove("params");
            v
        })
        .collect();
    all.sort_by_key(|v| v.to_string());
    all
}

fn replay(dir: &Path, rules: &str, alerts: &str, near: &str) -> String {
    std::fs::write(dir.join(format!("{alerts}.toml")), rules).unwrap();
    let rules_file = format!("{alerts}.toml");
    let out = tapewatch(
        dir,
        &[
            "replay",
            "day.csv",
            "--rules",
            &rules_file,
            "--alerts",
            alerts,
            "--near-misses",
            near,
            "--shards",
            "2",
            "--json",
            &format!("{alerts}.summary.json"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_key_at_85_pct_is_a_near_miss_not_an_alert_and_the_alerts_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("day.csv"), tape()).unwrap();

    let summary = replay(d, "[wash_trade]\nnear_miss_pct = 80\n", "on.jsonl", "on.near.jsonl");
    assert!(summary.contains("near-misses wash-trade 1\n"), "{summary}");
    let json = |name: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(d.join(name)).unwrap()).unwrap() };
    assert_eq!(json("on.jsonl.summary.json")["near_misses"], serde_json::json!({ "wash-trade": 1 }));
    let near = lines(&d.join("on.near.jsonl"));
    assert_eq!(near.len(), 1, "{near:?}");
    let n = &near[0];
    assert_eq!(n["rule"], "wash-trade");
    assert_eq!(n["near_miss"], true);
    assert_eq!((n["group"].as_str(), n["instrument"].as_str()), (Some("B"), Some("Y")));
    let ev = &n["evidence"];
    assert_eq!(ev["wash_trades"], 3);
    assert_eq!(ev["wash_qty"], 300);
    assert_eq!(ev["day_volume"], 3_530);
    assert_eq!(ev["share_pct"].as_f64(), Some(8.4));
    assert_eq!(ev["min_share_pct"], 10);
    assert_eq!(ev["near_miss_pct"], 80);
    assert_eq!(ev["accounts"], serde_json::json!(["B"]));
    let on = alert_set(&d.join("on.jsonl"));
    assert!(on.iter().all(|a| a.get("near_miss").is_none()), "{on:?}");
    assert!(!on.iter().any(|a| a["rule"] == "wash-trade" && a["instrument"] == "Y"), "{on:?}");
    assert!(on.iter().any(|a| a["rule"] == "wash-trade" && a["group"] == "E"), "{on:?}");

    // Off (the default): nothing written, the same alerts, and the rule's
    // parameter version that of a rules file without the option.
    let summary = replay(d, "[wash_trade]\nmin_trades = 3\n", "off.jsonl", "off.near.jsonl");
    assert!(!summary.contains("near-misses"), "{summary}");
    assert_eq!(json("off.jsonl.summary.json")["near_misses"], serde_json::json!({}));
    assert_eq!(std::fs::read_to_string(d.join("off.near.jsonl")).unwrap(), "");
    assert_eq!(alert_set(&d.join("off.jsonl")), on);
    replay(d, "", "plain.jsonl", "plain.near.jsonl");
    let params = |path: &str| -> Vec<String> {
        let mut all: Vec<String> =
            lines(&d.join(path)).iter().map(|a| format!("{} {} {}", a["rule"], a["seq"], a["params"])).collect();
        all.sort();
        all
    };
    assert_eq!(params("off.jsonl"), params("plain.jsonl"));

    // A higher share: 8.5% is under 90% of 10%.
    replay(d, "[wash_trade]\nnear_miss_pct = 90\n", "high.jsonl", "high.near.jsonl");
    assert_eq!(std::fs::read_to_string(d.join("high.near.jsonl")).unwrap(), "");
    assert_eq!(alert_set(&d.join("high.jsonl")), on);
}

/// Instrument I0..I59 in turn: 3,230 of other volume, then B trades 100
/// with itself three times: 60 wash-trade near-misses through the tape.
fn many_near_misses() -> String {
    let instruments: Vec<String> = (0..60).map(|k| format!("I{k}")).collect();
    let trades: Vec<(&str, &str, &str, u64)> = instruments
        .iter()
        .flat_map(|inst| {
            [("C", "D", inst.as_str(), 3_230), ("B", "B", inst, 100), ("B", "B", inst, 100), ("B", "B", inst, 100)]
        })
        .collect();
    trades_tape(&trades)
}

/// The near-miss file is cut back to the checkpoint on resume, as the
/// alerts are: across a crash each near-miss is written once, none lost.
#[test]
fn a_crash_and_resume_write_each_near_miss_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("day.csv"), many_near_misses()).unwrap();
    std::fs::write(d.join("r.toml"), "[wash_trade]\nnear_miss_pct = 80\n").unwrap();
    let args = |alerts: &str, near: &str| -> Vec<String> {
        ["replay", "day.csv", "--rules", "r.toml", "--alerts", alerts, "--near-misses", near]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str], alerts: &str, near: &str| {
        let mut all = args(alerts, near);
        all.extend(extra.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        tapewatch(d, &all)
    };
    let straight = run(&[], "s.jsonl", "s.near.jsonl");
    assert!(straight.status.success(), "{}", String::from_utf8_lossy(&straight.stderr));
    let expected = alert_set(&d.join("s.near.jsonl"));
    assert_eq!(expected.len(), 60);

    let state = ["--state", "st", "--checkpoint-every-records", "200"];
    let crashed = run(&[&state[..], &["--exit-after-checkpoint", "2"]].concat(), "c.jsonl", "c.near.jsonl");
    assert!(!crashed.status.success(), "the test hook aborts the run");
    let written = alert_set(&d.join("c.near.jsonl")).len();
    assert!(written > 0, "near-misses before the crash");
    // What a crash leaves after the checkpoint: written, not committed.
    let mut file = std::fs::OpenOptions::new().append(true).open(d.join("c.near.jsonl")).unwrap();
    std::io::Write::write_all(&mut file, b"{\"after\":\"the checkpoint\"}\n").unwrap();
    let resumed = run(&state, "c.jsonl", "c.near.jsonl");
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(alert_set(&d.join("c.near.jsonl")), expected, "each near-miss once, none lost");
    assert_eq!(alert_set(&d.join("c.jsonl")), alert_set(&d.join("s.jsonl")));
}

#[test]
fn bad_near_miss_values_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (value, line) in [("0", 3), ("100", 3), ("-5", 3)] {
        std::fs::write(d.join("bad.toml"), format!("[wash_trade]\nmin_trades = 3\nnear_miss_pct = {value}\n")).unwrap();
        let out = tapewatch(d, &["rules", "check", "bad.toml"]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = format!("line {line}: wash_trade.near_miss_pct = {value} is out of range 1..=99");
        assert!(err.contains(&expected), "{expected} missing from {err}");
    }
    std::fs::write(d.join("good.toml"), "[wash_trade]\nnear_miss_pct = 80\n").unwrap();
    let out = tapewatch(d, &["rules", "show", "good.toml"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("[wash_trade]\nenabled = true\nmin_share_pct = 10\nmin_trades = 3\nnear_miss_pct = 80\n"),
        "{shown}"
    );

    // The near-miss file is an output like the others: it must differ from them.
    std::fs::write(d.join("day.csv"), tape()).unwrap();
    let out = tapewatch(d, &["replay", "day.csv", "--alerts", "a.jsonl", "--near-misses", "a.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--near-misses"), "{}", String::from_utf8_lossy(&out.stderr));
}
