//! Alert episodes on a generated day with eight market makers quoting at the
//! touch of two instruments each, cancelling and replacing every few hundred
//! milliseconds (a maker cancels over 90% of what it quotes, so the plain
//! excessive-cancel rule flags it), and planted excessive-cancel abusers.
//! With `cooldown_ms = 0` every rising edge of a maker's cancel ratio (its
//! quotes hit, then cancelled again) is an alert; with the default cooldown
//! (60 s) a maker key is one episode for as long as it keeps flickering, so
//! at most a few alerts per key and session remain, and no planted abuser
//! is lost.

mod common;

use common::{read_alerts, replay_args};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tapewatch::generator::generate_tape;
use tapewatch::scenario::Scenario;

/// `scenarios/book-day.toml`'s market with eight makers, and cancel abusers.
const DAY: &str = r#"
name = "makers"
seed = 11
phases = [{ name = "day", rate = 5000, for = "120s" }]
[market]
instruments = 50
accounts = 5000
market_makers = 8
maker_instruments = 2
maker_refresh = ["150ms", "600ms"]
maker_size = [50, 150]
institutions = 10
[pipeline]
lateness = "1ms"
[[abuse]]
pattern = "excessive-cancel"
actors = 6
at = ["5s", "110s"]
"#;

const NS_PER_HOUR: i64 = 3_600_000_000_000;

/// (account, instrument, session) of each excessive-cancel alert; the session
/// is the morning or the afternoon in Asia/Shanghai.
fn excessive_cancel(alerts: &[Value]) -> Vec<(String, String, &'static str)> {
    alerts
        .iter()
        .filter(|a| a["rule"] == "excessive-cancel")
        .map(|a| {
            let local_hour =
                (a["ts_ns"].as_i64().unwrap() + 8 * NS_PER_HOUR).rem_euclid(24 * NS_PER_HOUR) / NS_PER_HOUR;
            let session = if local_hour < 12 { "morning" } else { "afternoon" };
            (a["account"].as_str().unwrap().to_string(), a["instrument"].as_str().unwrap().to_string(), session)
        })
        .collect()
}

fn replay_with(dir: &Path, tape: &Path, name: &str, rules: &str) -> (Vec<Value>, Value) {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let rules_path = out.join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let json = out.join("summary.json");
    let mut args = tapewatch::cmd::replay::ReplayArgs { json: Some(json.clone()), ..replay_args(tape, &out, 2) };
    args.reference.rules = Some(rules_path);
    args.pipeline.lateness_ms = 1;
    // The command itself, so its JSON summary is checked too.
    tapewatch::cmd::replay::run(args).unwrap_or_else(|e| panic!("replay: {e:?}"));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (read_alerts(&out.join("alerts.jsonl")), summary)
}

#[test]
fn market_makers_are_a_few_episodes_and_no_planted_abuser_is_lost() {
    let scenario = Scenario::parse(DAY).unwrap_or_else(|e| panic!("{e:?}"));
    let day = generate_tape(&scenario.gen_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("day.csv");
    std::fs::write(&tape, &day.tape).unwrap();
    let accounts: String = std::iter::once("account,group\n".to_string())
        .chain(day.group_rows.iter().map(|(a, g)| format!("{a},{g}\n")))
        .collect();
    std::fs::write(dir.path().join("day.accounts.csv"), accounts).unwrap();
    std::fs::write(dir.path().join("day.instruments.csv"), &day.instruments_csv).unwrap();
    let makers: BTreeSet<&str> = day.makers.iter().map(String::as_str).collect();
    assert_eq!(makers.len(), 8);
    let group_of: BTreeMap<&str, &str> = day.group_rows.iter().map(|(a, g)| (a.as_str(), g.as_str())).collect();
    let group = |account: &str| group_of.get(account).copied().unwrap_or(account).to_string();

    let (edges, _) = replay_with(dir.path(), &tape, "edges", "[excessive_cancel]\ncooldown_ms = 0\n");
    let (episodes, summary) = replay_with(dir.path(), &tape, "episodes", "");

    let on_makers = |alerts: &[(String, String, &'static str)]| {
        let mut per_key: BTreeMap<(String, String, &'static str), usize> = BTreeMap::new();
        for (account, instrument, session) in alerts {
            if makers.contains(account.as_str()) {
                *per_key.entry((account.clone(), instrument.clone(), session)).or_default() += 1;
            }
        }
        per_key
    };
    let (edges, episodes) = (excessive_cancel(&edges), excessive_cancel(&episodes));
    let (edge_keys, episode_keys) = (on_makers(&edges), on_makers(&episodes));
    let edge_total: usize = edge_keys.values().sum();
    let episode_total: usize = episode_keys.values().sum();
    eprintln!(
        "excessive-cancel: {} alerts with cooldown_ms = 0 ({edge_total} on makers, {} maker keys x sessions), \
         {} with the default cooldown ({episode_total} on makers, at most {} per maker key and session)",
        edges.len(),
        edge_keys.len(),
        episodes.len(),
        episode_keys.values().max().copied().unwrap_or(0)
    );
    assert!(edge_total > episode_total, "{episode_total} vs {edge_total}");
    assert!(
        episode_keys.values().all(|&n| n <= 3),
        "at most a few episodes per maker key and session: {episode_keys:?}"
    );

    // Every planted excessive-cancel actor still alerts.
    let found: BTreeSet<(String, String)> = episodes.iter().map(|(a, i, _)| (group(a), i.clone())).collect();
    let planted: Vec<(String, String)> = day
        .planted
        .iter()
        .filter(|p| p.pattern == "excessive-cancel")
        .map(|p| (group(&p.account), p.instrument.clone()))
        .collect();
    assert!(!planted.is_empty());
    for key in &planted {
        assert!(found.contains(key), "planted abuser {key:?} lost with the cooldown");
    }

    // The summary counts the episodes and the crossings they absorbed.
    let counts = &summary["episodes"]["excessive-cancel"];
    assert_eq!(counts["episodes"].as_u64(), Some(episodes.len() as u64), "{summary}");
    assert!(counts["suppressed"].as_u64().unwrap() >= (edge_total - episode_total) as u64, "{summary}");
}

/// The same on the independently written holdout day (`tests/holdout/`), whose
/// makers' quotes are hit often, so their cancel ratio flickers: dozens of
/// rising edges per maker key and session without a cooldown, a few with it.
#[test]
fn holdout_day_makers_flicker_into_a_few_episodes() {
    let days = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/holdout/days");
    let roles = std::fs::read_to_string(days.join("day1.roles.csv")).unwrap();
    let makers: BTreeSet<&str> =
        roles.lines().filter_map(|l| l.split_once(',')).filter(|(_, r)| *r == "market-maker").map(|(a, _)| a).collect();
    assert!(!makers.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let tape = days.join("day1.csv");
    let per_key = |alerts: &[Value]| {
        let mut keys: BTreeMap<(String, String, &'static str), usize> = BTreeMap::new();
        for key in excessive_cancel(alerts) {
            if makers.contains(key.0.as_str()) {
                *keys.entry(key).or_default() += 1;
            }
        }
        keys
    };
    let (edges, _) = replay_with(dir.path(), &tape, "edges", "[excessive_cancel]\ncooldown_ms = 0\n");
    let (episodes, _) = replay_with(dir.path(), &tape, "episodes", "");
    let (edges, episodes) = (per_key(&edges), per_key(&episodes));
    let max = |keys: &BTreeMap<_, usize>| keys.values().max().copied().unwrap_or(0);
    eprintln!(
        "holdout day1 makers: {} excessive-cancel alerts (max {} per key and session) with cooldown_ms = 0, {} (max {}) with the default",
        edges.values().sum::<usize>(),
        max(&edges),
        episodes.values().sum::<usize>(),
        max(&episodes)
    );
    assert!(max(&edges) >= 30, "{edges:?}");
    assert!(max(&episodes) <= 6, "{episodes:?}");
    assert!(2 * episodes.values().sum::<usize>() < edges.values().sum::<usize>());
}
