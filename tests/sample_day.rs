//! The shipped sample day (feeds/sample.csv): every planted abuser is found,
//! nothing else is flagged, and the alerts match the reviewed golden file.
//! After a reviewed change, re-bless with `TAPEWATCH_BLESS=1 ./dev test --test sample_day`.

mod common;

use common::{read_alerts, replay_args, run_replay};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const GOLDEN: &str = "tests/golden/sample.alerts.jsonl";

fn truth() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string("feeds/sample.truth.csv").unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), fields[1].to_string())
        })
        .collect()
}

fn to_lines(alerts: &[Value]) -> String {
    alerts.iter().map(|a| format!("{a}\n")).collect()
}

#[test]
fn sample_day_finds_every_planted_abuser_and_matches_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run_replay(&replay_args(Path::new("feeds/sample.csv"), dir.path(), 2));
    assert_eq!(summary.feed.rejected, 0);
    assert!(summary.late > 0, "the sample day has late records");
    let alerts = read_alerts(&dir.path().join("alerts.jsonl"));

    // wash-trade is the day-level view of self-trades (a group trading with
    // itself for a share of the day's volume): it may name planted self-traders only.
    let self_traders: BTreeSet<String> =
        truth().into_iter().filter(|(_, rule)| rule == "self-trade").map(|(account, _)| account).collect();
    for a in alerts.iter().filter(|a| a["rule"] == "wash-trade") {
        assert!(self_traders.contains(a["account"].as_str().unwrap()), "wash-trade on a non-planted account: {a}");
    }
    let found: BTreeSet<(String, String)> = alerts
        .iter()
        .filter(|a| a["rule"] != "wash-trade")
        .map(|a| (a["account"].as_str().unwrap().to_string(), a["rule"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(found, truth(), "alerts must name exactly the planted actors");

    if std::env::var_os("TAPEWATCH_BLESS").is_some() {
        std::fs::write(GOLDEN, to_lines(&alerts)).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file (bless with TAPEWATCH_BLESS=1)");
    assert_eq!(to_lines(&alerts), golden, "alerts differ from {GOLDEN}; review the diff, then re-bless");
}
