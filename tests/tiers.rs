//! Per-tier thresholds through the whole pipeline: instruments.csv's `tier`
//! column puts ChiNext stocks (20% price limits) in tier `chinext`, and the
//! rules file's `[ramping.tiers.chinext]` asks them for a wider move (8%)
//! than the main board's 4%. One group lifts three stocks with aggressive
//! buys: a main-board stock by 6% (ramping), a ChiNext stock by 6% (an
//! ordinary day there: no alert) and another ChiNext stock by 9% (ramping).
//! The same alerts for 1 and 3 shards; without the tier table all three
//! alert. Bad tier tables: every problem with its line, exit 2, nothing runs.

mod common;

use common::{bin, read_alerts, replay_args, run_replay};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const SEC: i64 = 1_000_000_000;
/// 2026-11-02 09:30 Asia/Shanghai.
const DAY: i64 = 1_793_583_000_000_000_000;
const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";

fn px(hundredths: i64) -> String {
    format!("{}.{:02}00", hundredths / 100, hundredths % 100)
}

/// A group (accounts A1, A2) lifting each instrument `cents` cents from
/// 10.00, one aggressive buy every `gap_s` seconds against a resting sell,
/// with an unrelated pair trading beside it at the same price.
fn tape(ramps: &[(&str, i64, f64)]) -> String {
    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut order = 0u64;
    for (n, &(instrument, cents, gap_s)) in ramps.iter().enumerate() {
        for i in 0..=cents {
            let t = DAY + (n as i64) * 200 * SEC + (i as f64 * gap_s * SEC as f64) as i64;
            let price = px(1000 + i);
            let buyer = if i % 2 == 0 { "A1" } else { "A2" };
            let (sell, buy) = (order + 1, order + 2);
            lines.push((t, format!("N,{sell},S1,{instrument},S,{price},1000,,")));
            lines.push((t, format!("N,{buy},{buyer},{instrument},B,{price},1000,,")));
            lines.push((t, format!("T,{buy},{buyer},{instrument},B,{price},1000,{sell},S1")));
            // Others trade a little at the same price.
            let (sell2, buy2) = (order + 3, order + 4);
            lines.push((t + 1, format!("N,{sell2},S2,{instrument},S,{price},200,,")));
            lines.push((t + 1, format!("N,{buy2},B2,{instrument},B,{price},200,,")));
            lines.push((t + 1, format!("T,{buy2},B2,{instrument},B,{price},200,{sell2},S2")));
            order += 4;
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    let mut out = format!("{HEADER}\n");
    for (seq, (t, rest)) in lines.iter().enumerate() {
        out += &format!("{},{t},{rest}\n", seq + 1);
    }
    out
}

const INSTRUMENTS: &str = "instrument,prev_close,limit_up,limit_down,tick,tier\n\
                           000001,10.00,11.00,9.00,0.01,main\n\
                           300001,10.00,12.00,8.00,0.01,chinext\n\
                           300002,10.00,12.00,8.00,0.01,chinext\n";

const TIERED: &str = "[ramping]\nenabled = true\n[ramping.tiers.chinext]\nmin_move_bp = 800\n";

fn ramping(alerts: &[Value]) -> BTreeSet<(String, String)> {
    alerts
        .iter()
        .filter(|a| a["rule"] == "ramping")
        .map(|a| (a["instrument"].as_str().unwrap().to_string(), a["evidence"]["min_move_pct"].to_string()))
        .collect()
}

fn day(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("day.csv");
    std::fs::write(&path, tape(&[("000001", 60, 2.0), ("300001", 60, 2.0), ("300002", 90, 1.5)])).unwrap();
    std::fs::write(dir.join("day.accounts.csv"), "account,group\nA1,G1\nA2,G1\n").unwrap();
    std::fs::write(dir.join("day.instruments.csv"), INSTRUMENTS).unwrap();
    path
}

fn run(dir: &Path, tape: &Path, name: &str, rules: &str, shards: usize) -> Vec<Value> {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("rules.toml"), rules).unwrap();
    let mut args = replay_args(tape, &out, shards);
    args.reference.rules = Some(out.join("rules.toml"));
    run_replay(&args);
    read_alerts(&out.join("alerts.jsonl"))
}

#[test]
fn a_chinext_stock_needs_a_wider_ramping_move() {
    let dir = tempfile::tempdir().unwrap();
    let tape = day(dir.path());
    let tiered = run(dir.path(), &tape, "tiered", TIERED, 1);
    let expect: BTreeSet<(String, String)> =
        [("000001", "4.0"), ("300002", "8.0")].iter().map(|(i, m)| (i.to_string(), m.to_string())).collect();
    assert_eq!(ramping(&tiered), expect, "the 6% move on ChiNext is not ramping; its 9% move is");
    assert_eq!(tiered, run(dir.path(), &tape, "tiered3", TIERED, 3), "the same alerts for 1 and 3 shards");
    let flat = run(dir.path(), &tape, "flat", "[ramping]\nenabled = true\n", 2);
    let instruments: BTreeSet<String> = ramping(&flat).into_iter().map(|(i, _)| i).collect();
    assert_eq!(instruments.len(), 3, "without the tier every ramp alerts: {instruments:?}");
    // The tier is part of the parameter version each alert carries.
    let version = |alerts: &[Value]| alerts.iter().find(|a| a["rule"] == "ramping").map(|a| a["params"].clone());
    assert_ne!(version(&tiered), version(&flat));
}

#[test]
fn bad_tier_tables_are_listed_with_their_lines_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let tape = day(dir.path());
    let rules = dir.path().join("bad.toml");
    std::fs::write(
        &rules,
        "[ramping]\nenabled = true\n[ramping.tiers.chinext]\nmin_move_bp = 0\n[ramping.tiers.star]\nmin_move_bp = 900\n\
         [wash_trade.tiers.chinext]\nmin_shares = 5\n",
    )
    .unwrap();
    let out = Command::new(bin()).args(["rules", "check"]).arg(&rules).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4: ramping.tiers.chinext.min_move_bp = 0 is out of range"), "{err}");
    assert!(err.contains("line 8: unknown field `min_shares`"), "{err}");

    // Valid on its own, but instruments.csv has no tier `star`.
    std::fs::write(&rules, "[ramping]\nenabled = true\n[ramping.tiers.chinext]\nmin_move_bp = 800\n[ramping.tiers.star]\nmin_move_bp = 900\n")
        .unwrap();
    let out = Command::new(bin()).args(["rules", "check"]).arg(&rules).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let instruments = dir.path().join("day.instruments.csv");
    let out = Command::new(bin())
        .args(["rules", "check"])
        .arg(&rules)
        .arg("--instruments")
        .arg(&instruments)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5: tier `star` is the tier of no instrument in instruments.csv"), "{err}");
    let alerts = dir.path().join("alerts.jsonl");
    let out = Command::new(bin())
        .arg("replay")
        .arg(&tape)
        .arg("--rules")
        .arg(&rules)
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tier `star`"));
    assert!(!alerts.exists(), "nothing ran");
}
