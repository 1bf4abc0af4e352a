//! The binary as an operator meets it: every bad-input class gets a clear
//! message naming the place, a non-zero exit where the run cannot go on,
//! no panic, and no partial alerts file.

mod common;

use common::{stderr, stdout, tapewatch};
use std::path::Path;
use std::process::Output;

const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";

/// A small valid tape: A cancels a lot on X, B trades with itself on Y.
fn small_tape() -> String {
    let mut s = format!("{HEADER}\n");
    let t0 = 1_793_583_000_000_000_000i64;
    let mut seq = 0;
    let mut line = |s: &mut String, body: String| {
        seq += 1;
        s.push_str(&format!("{seq},{body}\n"));
    };
    for i in 0..25 {
        line(&mut s, format!("{},N,{},A,X,B,10.0000,100,,", t0 + i * 1_000_000, 100 + i));
        line(&mut s, format!("{},C,{},A,X,B,10.0000,100,,", t0 + i * 1_000_000 + 500_000, 100 + i));
    }
    line(&mut s, format!("{},N,1,B,Y,S,5.0000,100,,", t0 + 30_000_000));
    line(&mut s, format!("{},N,2,B,Y,B,5.0000,100,,", t0 + 31_000_000));
    line(&mut s, format!("{},T,2,B,Y,B,5.0000,100,1,B", t0 + 31_000_000));
    s
}

fn assert_clean_failure(out: &Output, dir: &Path, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure; stdout: {}", stdout(out));
    let err = stderr(out);
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "a panic: {err}");
    assert!(!dir.join("alerts.jsonl").exists(), "a failed run left an alerts file");
}

#[test]
fn replays_csv_and_native_with_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), small_tape()).unwrap();
    let out = tapewatch(dir.path(), &["replay", "day.csv", "--alerts", "csv.jsonl", "--shards", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("alerts      2 (excessive-cancel 1, self-trade 1,"), "{summary}");
    assert!(summary.contains("latency     ingest->alert: p50"), "{summary}");
    let out = tapewatch(dir.path(), &["import", "day.csv", "--out", "day.tape"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tapewatch(dir.path(), &["replay", "day.tape", "--alerts", "native.jsonl", "--shards", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::read_alerts(&dir.path().join("csv.jsonl")),
        common::read_alerts(&dir.path().join("native.jsonl"))
    );
}

#[test]
fn missing_tape_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = tapewatch(dir.path(), &["replay", "nope.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert_clean_failure(&out, dir.path(), &["nope.csv: cannot read tape"]);
}

#[test]
fn bad_rules_and_options_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), small_tape()).unwrap();
    std::fs::write(dir.path().join("rules.toml"), "[excessive_cancel]\nwindow_ms = 10\nratio = 3\n").unwrap();
    std::fs::write(dir.path().join("acc.csv"), "account,group\nA,G\nA,H\n").unwrap();
    let out = tapewatch(
        dir.path(),
        &["replay", "day.csv", "--rules", "rules.toml", "--accounts", "acc.csv", "--shards", "0", "--cores", "0,x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_clean_failure(
        &out,
        dir.path(),
        &[
            "rules.toml: line 3: unknown field `ratio`",
            "acc.csv: line 3: account `A` is listed in two groups",
            "--shards 0",
            "--cores 0,x",
        ],
    );
}

/// `--lateness-ms` is checked by one helper for replay, book and
/// investigate: an hour is the most, past it the same message, listed with
/// the command's other problems (exit 2).
#[test]
fn lateness_past_an_hour_is_refused_alike_by_replay_book_and_investigate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), small_tape()).unwrap();
    let commands: [&[&str]; 3] = [
        &["replay", "day.csv", "--shards", "0"],
        &["book", "day.csv", "--instrument", "X", "--at", "09:30:00", "--levels", "0"],
        &["investigate", "day.csv", "--group", "A", "--instrument", "X", "--out", "r.html", "--from", "x"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--lateness-ms", "3600001"]);
        let out = tapewatch(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        let other = ["--shards 0", "--levels 0", "--from x"];
        assert!(other.iter().any(|o| err.contains(o)), "{args:?}: the other problem is listed too: {err}");
        assert_clean_failure(&out, dir.path(), &["--lateness-ms 3600001: at most one hour (3600000)"]);
    }
    let out = tapewatch(dir.path(), &["replay", "day.csv", "--lateness-ms", "3600000", "--quiet"]);
    assert!(out.status.success(), "an hour is allowed: {}", stderr(&out));
    let out = tapewatch(
        dir.path(),
        &["book", "day.csv", "--instrument", "X", "--at", "23:59:59", "--lateness-ms", "3600000"],
    );
    assert!(out.status.success(), "an hour is allowed: {}", stderr(&out));
}

#[test]
fn a_file_that_is_not_a_tape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), "hello,world\n1,2\n").unwrap();
    let out = tapewatch(dir.path(), &["replay", "day.csv"]);
    assert_clean_failure(&out, dir.path(), &["day.csv: line 1: not a FEED.md tape"]);
}

#[test]
fn truncated_and_corrupt_native_tapes_are_refused_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), small_tape()).unwrap();
    let out = tapewatch(dir.path(), &["import", "day.csv", "--out", "day.tape"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(dir.path().join("day.tape")).unwrap();

    std::fs::write(dir.path().join("cut.tape"), &bytes[..bytes.len() / 2]).unwrap();
    let out = tapewatch(dir.path(), &["replay", "cut.tape"]);
    assert_clean_failure(&out, dir.path(), &["cut.tape: truncated", "byte"]);

    let mut flipped = bytes.clone();
    flipped[128 + 64 * 3 + 9] ^= 0x40;
    std::fs::write(dir.path().join("bad.tape"), &flipped).unwrap();
    let out = tapewatch(dir.path(), &["replay", "bad.tape"]);
    assert_clean_failure(&out, dir.path(), &["bad.tape: corrupt block 0 (bytes"]);
}

/// Replay verifies a native tape block by block as it reaches each one, so
/// damage deep in a tape is found after records before it were applied:
/// the run still fails naming the place, and leaves no outputs behind.
#[test]
fn damage_deep_in_a_native_tape_fails_the_run_and_leaves_no_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = tapewatch(dir.path(), &["gen", "--events", "20000", "--seed", "3", "--out", "day.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tapewatch(dir.path(), &["import", "day.csv", "--out", "day.tape"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut bytes = std::fs::read(dir.path().join("day.tape")).unwrap();
    // Import writes blocks of 4096 records; damage a record of block 3.
    let record = 3 * 4096 + 10;
    bytes[128 + 64 * record + 9] ^= 0x01;
    std::fs::write(dir.path().join("bad.tape"), &bytes).unwrap();
    let out = tapewatch(dir.path(), &["replay", "bad.tape", "--accounts", "day.accounts.csv"]);
    let block_start = 128 + 64 * 3 * 4096;
    assert_clean_failure(&out, dir.path(), &[&format!("bad.tape: corrupt block 3 (bytes {block_start}..")]);
    assert!(!dir.path().join("alerts.late.csv").exists(), "a failed run left a late file");

    // Undamaged, the same tape replays.
    let out = tapewatch(dir.path(), &["replay", "day.tape", "--accounts", "day.accounts.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("alerts.jsonl").exists());
}

#[test]
fn bad_records_gaps_and_late_records_go_aside_and_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_793_583_000_000_000_000i64;
    let ms = 1_000_000i64;
    let text = format!(
        "{HEADER}\n\
         1,{},N,1,A,X,B,10.0,100,,\n\
         2,{},N,2,A,X,B,10.0,100,,\n\
         2,{},N,3,A,X,B,10.0,100,,\n\
         3,{},N,4,A,X,B,ten,100,,\n\
         7,{},N,5,A,X,B,10.0,100,,\n\
         8,{},C,99,A,X,B,10.0,100,,\n\
         9,{},C,1,A,X,B,10.0,100,,\n\
         10,{},N,6,A,X,B,10.0,100,,\n",
        t0,
        t0 + 500 * ms,
        t0 + 501 * ms,
        t0 + 502 * ms,
        t0 + 503 * ms,
        t0 + 504 * ms,
        t0 + 100 * ms, // 404 ms behind the newest: late, yet a valid cancel of order 1
        t0 + 505 * ms,
    );
    std::fs::write(dir.path().join("day.csv"), text).unwrap();
    let out = tapewatch(dir.path(), &["replay", "day.csv", "--alerts", "out/alerts.jsonl"]);
    // Found before the run starts, as a bad option (exit 2).
    assert_eq!(out.status.code(), Some(2), "the alerts directory does not exist yet");
    let err = stderr(&out);
    assert!(err.contains("out/alerts.") && err.contains("does not exist"), "{err}");
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let out = tapewatch(dir.path(), &["replay", "day.csv", "--alerts", "out/alerts.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("events      8 read, 4 applied, 3 rejected, 1 late"), "{summary}");
    assert!(summary.contains("gaps        1 gaps, 3 records missing; seq 4..=6 before line 6"), "{summary}");
    let rejects = std::fs::read_to_string(dir.path().join("out/alerts.rejects.tsv")).unwrap();
    let reasons: Vec<&str> = rejects.lines().skip(1).collect();
    assert_eq!(reasons.len(), 3, "{rejects}");
    assert!(reasons[0].starts_with("4\trepeated or backward seq 2"), "{rejects}");
    assert!(reasons[1].starts_with("5\tbad price"), "{rejects}");
    assert!(reasons[2].starts_with("7\torder 99 unknown"), "{rejects}");
    let late = std::fs::read_to_string(dir.path().join("out/alerts.late.csv")).unwrap();
    assert_eq!(late, format!("{HEADER}\n9,{},C,1,A,X,B,10.0000,100,,\n", t0 + 100 * ms));
}

#[test]
fn the_default_shard_count_gives_the_shards_every_core_when_the_rules_keep_the_book() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), small_tape()).unwrap();
    assert!(tapewatch(dir.path(), &["import", "day.csv", "--out", "day.tape"]).status.success());
    std::fs::write(dir.path().join("book.toml"), "[spoofing]\nenabled = true\n").unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = |rules: &[&str]| {
        let mut args = vec!["replay", "day.tape", "--quiet", "--json", "summary.json"];
        args.extend_from_slice(rules);
        let out = tapewatch(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
        summary["shards"].as_u64().unwrap() as usize
    };
    // The default rules leave the source a core; the book takes it.
    assert_eq!(shards(&[]), cores.saturating_sub(1).max(1));
    assert_eq!(shards(&["--rules", "book.toml"]), cores);
    // An explicit count is never changed.
    assert_eq!(shards(&["--rules", "book.toml", "--shards", "3"]), 3);
}

/// README's command table has one row per subcommand `tapewatch --help`
/// lists, in one table (a blank line inside used to split it in three),
/// and every flag its examples use is one that subcommand takes. (The
/// table lacked `rules`, `serve` and `feed`.)
#[test]
fn readme_command_table_names_every_subcommand_with_a_working_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let help = stdout(&tapewatch(dir, &["--help"]));
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .collect();
    assert!(listed.len() >= 13, "{help}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| command |"))
        .skip(2)
        .take_while(|l| !l.starts_with("<!-- New subcommands"))
        .collect();
    assert!(table.iter().all(|l| l.starts_with("| `")), "the table is one block of rows: {table:#?}");
    let rows: Vec<(&str, &str)> = table
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            (cells[0].trim_start_matches("| `").trim_end_matches('`'), *cells.last().unwrap())
        })
        .collect();
    let named: Vec<&str> = rows.iter().map(|&(c, _)| c).collect();
    assert_eq!(named, listed, "README's rows against `tapewatch --help`");
    for (command, example) in rows {
        let example = example.trim_end_matches(" |").trim_matches('`');
        let words: Vec<&str> = example.split_whitespace().collect();
        assert_eq!(&words[..2], ["tapewatch", command], "{example}");
        // Subcommands with their own subcommands: the example names one.
        let mut path = vec!["help", command];
        let own = stdout(&tapewatch(dir, &["help", command]));
        if own.contains("\nCommands:") {
            path.push(words[2]);
        }
        let usage = stdout(&tapewatch(dir, &path));
        assert!(!usage.is_empty() && !usage.contains("unrecognized"), "{path:?}: {usage}");
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(usage.contains(&format!("{flag} ")), "{example}: `{flag}` is not a flag of {path:?}:\n{usage}");
        }
    }
}
