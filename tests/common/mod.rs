//! Helpers shared by the integration tests: run replay/import in-process
//! or the binary, and read alerts back without their wall-clock `timing`.

#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod native_v1;

use serde_json::Value;
use std::path::{Path, PathBuf};
use tapewatch::cmd::replay::{ReplayArgs, replay};
use tapewatch::metrics::Summary;

pub fn replay_args(tape: &Path, out_dir: &Path, shards: usize) -> ReplayArgs {
    let mut args = ReplayArgs { quiet: true, ..ReplayArgs::for_tape(tape, &out_dir.join("alerts.jsonl")) };
    args.pipeline.shards = Some(shards);
    args.pipeline.cores = "none".to_string();
    args
}

pub fn run_replay(args: &ReplayArgs) -> Summary {
    match replay(args) {
        Ok(summary) => summary,
        Err(e) => panic!("replay failed: {e:?}"),
    }
}

/// Alerts without `timing`, sorted by (seq, rule): the same tape and rules
/// must give exactly this list whatever the shard count or tape format.
pub fn read_alerts(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut alerts: Vec<Value> = text
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad alert line {line}: {e}"));
            let timing = value.as_object_mut().and_then(|o| o.remove("timing"));
            assert!(timing.is_some(), "alert without timing: {line}");
            value
        })
        .collect();
    alerts.sort_by_key(|a| (a["seq"].as_u64(), a["rule"].as_str().map(str::to_string)));
    alerts
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapewatch"))
}

/// The binary run in `dir` with `args`, as an operator would.
pub fn tapewatch(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin()).args(args).current_dir(dir).output().expect("run tapewatch")
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A generated day written out as `day.csv` with its `day.instruments.csv`
/// and `day.accounts.csv` beside it (so replay finds both by the tape's
/// stem), and the day's account-to-group map.
pub struct WrittenDay {
    pub dir: tempfile::TempDir,
    pub tape: PathBuf,
    groups: std::collections::BTreeMap<String, String>,
}

impl WrittenDay {
    pub fn write(day: &tapewatch::generator::DayInMemory) -> WrittenDay {
        let dir = tempfile::tempdir().unwrap();
        let tape = dir.path().join("day.csv");
        std::fs::write(&tape, &day.tape).unwrap();
        std::fs::write(dir.path().join("day.instruments.csv"), &day.instruments_csv).unwrap();
        let mut accounts = String::from("account,group\n");
        for (account, group) in &day.group_rows {
            accounts.push_str(&format!("{account},{group}\n"));
        }
        std::fs::write(dir.path().join("day.accounts.csv"), accounts).unwrap();
        WrittenDay { dir, tape, groups: day.group_rows.iter().cloned().collect() }
    }

    /// The account's group (an account without one is its own group).
    pub fn group_of(&self, account: &str) -> String {
        self.groups.get(account).map_or(account, String::as_str).to_string()
    }

    /// The groups of the day's market makers.
    pub fn maker_groups(&self, day: &tapewatch::generator::DayInMemory) -> std::collections::BTreeSet<String> {
        day.makers.iter().map(|m| self.group_of(m)).collect()
    }
}
