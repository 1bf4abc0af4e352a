//! Detection on the holdout days (`tests/holdout/`: an independent matching
//! engine with market makers, institutions and ordinary traders, planted
//! abusers and their truth rows). For the window-metric rules: every planted
//! ramping, marking-close, wash-trade and quote-stuffing actor found
//! (recall 1.0 per pattern), precision >= 0.9 over distinct (rule, group,
//! instrument) pooled over the four, no alert of theirs on a market maker,
//! and the same alerts with 1 and 3 shards. The book rules (spoofing,
//! layering, momentum-ignition) are judged the same way: recall 1.0 per
//! pattern, precision >= 0.9 pooled over the three, none on a market maker.
//! Every rule is on (some are off by default for speed).

mod common;

use common::{read_alerts, replay_args, run_replay};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MINE: &[&str] = &["ramping", "marking-close", "wash-trade", "quote-stuffing"];
const BOOK: &[&str] = &["spoofing", "layering", "momentum-ignition"];

fn csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

type Key = (String, String);

#[test]
fn holdout_days_recall_precision_and_market_makers() {
    let days = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/holdout/days");
    // pattern -> (truth keys found, truth keys, alert keys true, alert keys)
    let mut score: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut on_makers: Vec<String> = Vec::new();
    for day in ["day1", "day2", "day3"] {
        let group: BTreeMap<String, String> =
            csv(&days.join(format!("{day}.accounts.csv"))).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        let makers: BTreeSet<String> = csv(&days.join(format!("{day}.roles.csv")))
            .into_iter()
            .filter(|r| r[1] == "market-maker")
            .map(|r| group[&r[0]].clone())
            .collect();
        let mut truth: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
        for r in csv(&days.join(format!("{day}.truth.csv"))) {
            truth.entry(r[1].clone()).or_default().insert((group[&r[0]].clone(), r[2].clone()));
        }
        let out = tempfile::tempdir().unwrap();
        let tape = days.join(format!("{day}.csv"));
        let rules = out.path().join("all-on.toml");
        std::fs::write(
            &rules,
            "[ramping]\nenabled = true\n[quote_stuffing]\nenabled = true\n[instant_cancel]\nenabled = true\n[spoofing]\nenabled = true\n[layering]\nenabled = true\n[momentum_ignition]\nenabled = true\n[marking_open]\nenabled = true\n",
        )
        .unwrap();
        let args = |dir: &Path, shards| {
            let mut args = replay_args(&tape, dir, shards);
            args.reference.rules = Some(rules.clone());
            args
        };
        run_replay(&args(out.path(), 1));
        let alerts = read_alerts(&out.path().join("alerts.jsonl"));
        let three = tempfile::tempdir().unwrap();
        run_replay(&args(three.path(), 3));
        assert_eq!(read_alerts(&three.path().join("alerts.jsonl")), alerts, "{day}: 1 and 3 shards");
        let mut found: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
        for a in &alerts {
            let rule = a["rule"].as_str().unwrap().to_string();
            let key = (a["group"].as_str().unwrap().to_string(), a["instrument"].as_str().unwrap().to_string());
            if (MINE.contains(&rule.as_str()) || BOOK.contains(&rule.as_str())) && makers.contains(&key.0) {
                on_makers.push(format!("{day} {rule} {key:?}"));
            }
            found.entry(rule).or_default().insert(key);
        }
        for pattern in MINE.iter().chain(BOOK) {
            let t = truth.get(*pattern).cloned().unwrap_or_default();
            let f = found.get(*pattern).cloned().unwrap_or_default();
            let s = score.entry(pattern).or_default();
            s[0] += t.intersection(&f).count();
            s[1] += t.len();
            s[2] += f.intersection(&t).count();
            s[3] += f.len();
            if t != f {
                eprintln!(
                    "{day} {pattern}: missed {:?}, extra {:?}",
                    t.difference(&f).collect::<Vec<_>>(),
                    f.difference(&t).collect::<Vec<_>>()
                );
            }
        }
    }
    for family in [MINE, BOOK] {
        let (mut right, mut all) = (0, 0);
        for (pattern, [hit, truth, right_alerts, alerts]) in &score {
            if family.contains(pattern) {
                eprintln!("{pattern:18} recall {hit}/{truth}  precision {right_alerts}/{alerts}");
                assert!(*truth > 0, "{pattern}: the holdout days plant it");
                assert_eq!(hit, truth, "{pattern}: every planted actor found");
                right += right_alerts;
                all += alerts;
            }
        }
        assert!(right * 10 >= all * 9, "{family:?}: precision {right}/{all} over distinct (rule, group, instrument)");
    }
    assert!(on_makers.is_empty(), "alerts on market makers: {on_makers:?}");
}
