//! `tapewatch book` on a small hand-written tape: the text and JSON forms,
//! the same book from CSV and native input, late and reordered records
//! treated as replay treats them, and every bad option a clear exit 2.

mod common;

use common::{bin, stderr, stdout, tapewatch};
use std::process::Command;

const HEADER: &str = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account";
/// 2026-11-03 09:30:00 Asia/Shanghai.
const T0: i64 = 1_793_583_000_000_000_000;
const MS: i64 = 1_000_000;

/// The tape, in feed order. N 6 arrives after a later trade (reordered,
/// still in time); N 10 arrives 1 s behind the newest record (late: never
/// in the book), and its cancel is then an order the book does not hold.
fn tape() -> String {
    let rows: &[(i64, &str)] = &[
        (0, "N,1,A,X,B,10.00,100,,"),
        (MS, "N,2,B,X,B,10.00,200,,"),
        (2 * MS, "N,3,A,X,B,9.99,50,,"),
        (3 * MS, "N,4,C,X,S,10.02,300,,"),
        (4 * MS, "N,5,C,X,S,10.01,100,,"),
        (6 * MS, "N,7,E,X,B,10.01,60,,"),
        (6 * MS, "T,7,E,X,B,10.01,60,5,C"),
        (5 * MS, "N,6,D,X,S,10.01,40,,"),
        (7 * MS, "C,3,A,X,B,9.99,50,,"),
        (8 * MS, "N,8,A,Y,B,5.00,10,,"),
        (9 * MS, "N,11,A,X,S,11.50,10,,"),
        (1_000 * MS, "N,9,F,X,B,9.98,70,,"),
        (2 * MS, "N,10,G,X,B,10.00,1000,,"),
        (1_100 * MS, "C,10,G,X,B,10.00,1000,,"),
    ];
    let mut s = format!("{HEADER}\n");
    for (i, (dt, body)) in rows.iter().enumerate() {
        s += &format!("{},{},{body}\n", i + 1, T0 + dt);
    }
    s
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("day.csv"), tape()).unwrap();
    // Found beside the tape by default; Y is not listed.
    std::fs::write(
        dir.path().join("day.instruments.csv"),
        "instrument,prev_close,limit_up,limit_down,tick\nX,10.00,11.00,9.00,0.01\n",
    )
    .unwrap();
    dir
}

const BOOK_AT_7_5_MS: &str = r#"{"instrument":"X","ts_ns":1793583000007500000,"bids":[{"price":"10.0000","qty":300,"orders":2}],"asks":[{"price":"10.0100","qty":80,"orders":2},{"price":"10.0200","qty":300,"orders":1}]}"#;

#[test]
fn json_is_the_book_at_that_event_time_from_csv_and_native() {
    let dir = setup();
    let at = (T0 + 7 * MS + MS / 2).to_string();
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", &at, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), BOOK_AT_7_5_MS);
    // The same instant as a clock time in the trading day's zone.
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", "09:30:00.0075", "--json"]);
    assert_eq!(stdout(&out).trim_end(), BOOK_AT_7_5_MS, "{}", stderr(&out));
    let out = tapewatch(dir.path(), &["import", "day.csv", "--out", "day.tape"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tapewatch(dir.path(), &["book", "day.tape", "--instrument", "X", "--at", &at, "--json"]);
    assert_eq!(stdout(&out).trim_end(), BOOK_AT_7_5_MS, "{}", stderr(&out));
    // Records at exactly --at are in: the cancel of order 3 at 7 ms.
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", "09:30:00.006999999", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["bids"][1], serde_json::json!({"price": "9.9900", "qty": 50, "orders": 1}));
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", "09:30:00.007", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["bids"].as_array().unwrap().len(), 1);
}

#[test]
fn text_shows_levels_with_orders_and_owners_and_what_was_skipped() {
    let dir = setup();
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", "09:30:02"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let expected_rows = [
        "ask       2        10.0200          300       1       1",
        "ask       1        10.0100           80       2       2",
        "bid       1        10.0000          300       2       2",
        "bid       2         9.9800           70       1       1",
    ];
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("ask") || l.starts_with("bid")).collect();
    assert_eq!(rows, expected_rows, "{text}");
    assert!(text.contains("book X at 09:30:02.000000000 Asia/Shanghai"), "{text}");
    assert!(text.contains("last trade 10.0100; tick 0.0100; limits 9.0000..11.0000"), "{text}");
    // N 11 is priced above the limit; C 10's order was late.
    assert!(
        text.contains("skipped by the book: unknown order 1, outside limits 1; late records on the tape: 1"),
        "{text}"
    );
    // --levels cuts each side.
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "X", "--at", "09:30:02", "--levels", "1"]);
    assert_eq!(stdout(&out).lines().filter(|l| l.starts_with("ask") || l.starts_with("bid")).count(), 2);
    // Y is not in instruments.csv: its book is kept, and it says so.
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "Y", "--at", "09:30:02"]);
    let text = stdout(&out);
    assert!(text.contains("tick 0.0001; not in instruments.csv"), "{text}");
    assert!(text.contains("bid       1         5.0000           10       1       1"), "{text}");
}

#[test]
fn bad_options_are_clear_errors_with_exit_2() {
    let dir = setup();
    for (args, needle) in [
        (&["--instrument", "Z", "--at", "09:30:01"][..], "--instrument Z: no accepted record of it"),
        (&["--instrument", "X", "--at", "09:29:59"], "is before the tape's first record at 09:30:00"),
        (&["--instrument", "X", "--at", "9:30"], "--at 9:30: expected HH:MM:SS[.fff]"),
        (&["--instrument", "X", "--at", "09:30:01", "--levels", "0"], "--levels 0"),
        (&["--instrument", "a b", "--at", "x"], "--instrument a b: not an instrument name"),
    ] {
        let mut all = vec!["book", "day.csv"];
        all.extend_from_slice(args);
        let out = tapewatch(dir.path(), &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{all:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // Both problems of the last one are reported together.
    let out = tapewatch(dir.path(), &["book", "day.csv", "--instrument", "a b", "--at", "x"]);
    assert!(stderr(&out).contains("--at x: expected"), "{}", stderr(&out));
    std::fs::write(
        dir.path().join("bad.instruments.csv"),
        "instrument,prev_close,limit_up,limit_down,tick\nX,10,11,9,0.01\nX,10,11,9,0.01\nY,1,2\n",
    )
    .unwrap();
    let out = tapewatch(
        dir.path(),
        &["book", "day.csv", "--instrument", "X", "--at", "09:30:01", "--instruments", "bad.instruments.csv"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.instruments.csv: line 3: instrument `X` already listed on line 2"), "{err}");
    assert!(err.contains("bad.instruments.csv: line 4: expected 5 columns"), "{err}");
}

/// A CSV tape on stdin, as replay reads one. `-` has no directory, so
/// no reference file is looked for beside it: `-.accounts.csv` and
/// `-.instruments.csv` in the working directory are not the tape's and
/// must not be read (they are not even valid); named, a file is read.
#[test]
fn a_tape_on_stdin_reads_only_the_reference_files_it_is_given() {
    let dir = setup();
    std::fs::write(dir.path().join("-.accounts.csv"), "not an accounts file\n").unwrap();
    std::fs::write(dir.path().join("-.instruments.csv"), "not an instruments file\n").unwrap();
    let book = |args: &[&str]| {
        let tape = std::fs::File::open(dir.path().join("day.csv")).unwrap();
        Command::new(bin()).arg("book").args(args).current_dir(dir.path()).stdin(tape).output().unwrap()
    };
    let out = book(&["-", "--instrument", "X", "--at", "09:30:02"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // No instruments.csv: the default tick, no limits, so N 11 at 11.50 rests.
    assert!(text.contains("tick 0.0001; no instruments.csv"), "{text}");
    assert!(text.contains("ask       3        11.5000           10       1       1"), "{text}");
    let out = book(&["-", "--instrument", "X", "--at", "09:30:02", "--instruments", "day.instruments.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("tick 0.0100; limits 9.0000..11.0000"), "{}", stdout(&out));
    let out = book(&["-", "--instrument", "X", "--at", "09:30:02", "--accounts", "./-.accounts.csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("-.accounts.csv"), "{}", stderr(&out));
}

#[test]
fn replay_loads_instruments_csv_and_a_checkpoint_depends_on_it() {
    let dir = setup();
    std::fs::write(dir.path().join("bad.csv"), "instrument,prev_close,limit_up,limit_down,tick\nX,10,9,11,0.01\n")
        .unwrap();
    let out = tapewatch(dir.path(), &["replay", "day.csv", "--instruments", "bad.csv", "--shards", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.csv: line 2: limits must satisfy"), "{}", stderr(&out));
    assert!(!dir.path().join("alerts.jsonl").exists());
    // The default file beside the tape is loaded; a checkpoint taken with
    // it is refused under another one.
    let state = ["--state", "st", "--checkpoint-every-records", "5", "--shards", "1", "--quiet"];
    let out = tapewatch(dir.path(), &[&["replay", "day.csv"][..], &state].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.path().join("day.instruments.csv"), "instrument,prev_close,limit_up,limit_down,tick\n").unwrap();
    let out = tapewatch(dir.path(), &[&["replay", "day.csv"][..], &state].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("instruments file"), "{}", stderr(&out));
}
