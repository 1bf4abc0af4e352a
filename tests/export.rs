//! `tapewatch export`: the Parquet files read back with the parquet
//! crate's own reader. Row counts equal the replay's summary, every
//! rejected record of a tape with injected faults is in `records` with its
//! reason, late records are marked late, the orders table equals a
//! brute-force fold over the tape, a native tape exports the same layers,
//! and bad input is refused (exit 2) with nothing half-written.

mod common;

use common::tapewatch as run;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

type Row = BTreeMap<String, String>;

/// Every row of a Parquet file, each cell as text ("" for null).
fn read(path: &Path) -> Vec<Row> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = SerializedFileReader::new(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let declared = reader.metadata().file_metadata().num_rows() as usize;
    let rows: Vec<Row> = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(name, field)| {
                    let cell = match field {
                        Field::Null => String::new(),
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (name.clone(), cell)
                })
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), declared, "{}", path.display());
    rows
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A generated day with faults injected: a bad price, a short line, an
/// empty line, a repeated seq, a cancel of an unknown order (which also
/// orphans the order's later records), and a record moved an hour back
/// (late).
fn faulty_day(dir: &Path) -> (PathBuf, Vec<String>) {
    ok(&run(dir, &["gen", "--events", "3000", "--seed", "3", "--out", "day.csv"]));
    let mut lines: Vec<String> =
        std::fs::read_to_string(dir.join("day.csv")).unwrap().lines().map(str::to_string).collect();
    let field = |line: &str, i: usize| line.split(',').nth(i).unwrap().to_string();
    let replace = |line: &str, i: usize, v: &str| {
        let mut f: Vec<String> = line.split(',').map(str::to_string).collect();
        f[i] = v.to_string();
        f.join(",")
    };
    lines[99] = replace(&lines[99], 7, "12.3x");
    lines[199] = lines[199].rsplit_once(',').unwrap().0.to_string();
    lines[299] = String::new();
    let previous_seq = field(&lines[398], 0);
    lines[399] = replace(&lines[399], 0, &previous_seq);
    let n = (500..700).find(|&i| field(&lines[i], 2) == "N").unwrap();
    lines[n] = replace(&replace(&lines[n], 2, "C"), 3, "999999999");
    let late = (1500..1700).find(|&i| field(&lines[i], 2) == "N").unwrap();
    let ts: i64 = field(&lines[late], 1).parse().unwrap();
    lines[late] = replace(&lines[late], 1, &(ts - 3_600_000_000_000).to_string());
    let tape = dir.join("faulty.csv");
    std::fs::write(&tape, lines.join("\n") + "\n").unwrap();
    std::fs::copy(dir.join("day.accounts.csv"), dir.join("faulty.accounts.csv")).unwrap();
    (tape, lines)
}

/// A rejects file (header, then `line<TAB>reason<TAB>record`): line ->
/// (reason, record).
fn rejects_file(text: &str) -> BTreeMap<u64, (String, String)> {
    text.lines()
        .skip(1)
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let line = parts.next().unwrap().parse().unwrap();
            (line, (parts.next().unwrap().to_string(), parts.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// The replay's own verdicts: its summary JSON, rejects (line -> (reason,
/// record)) and late seqs.
fn replay(dir: &Path, tape: &str) -> (Value, BTreeMap<u64, (String, String)>, BTreeSet<u64>) {
    ok(&run(
        dir,
        &["replay", tape, "--alerts", "r/alerts.jsonl", "--json", "r/summary.json", "--cores", "none", "--quiet"],
    ));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("r/summary.json")).unwrap()).unwrap();
    let rejects = rejects_file(&std::fs::read_to_string(dir.join("r/alerts.rejects.tsv")).unwrap_or_default());
    let late = std::fs::read_to_string(dir.join("r/alerts.late.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    (summary, rejects, late)
}

fn export(dir: &Path, tape: &str, out: &str) -> String {
    std::fs::create_dir_all(dir.join("r")).unwrap();
    ok(&run(dir, &["export", tape, "--out", out, "--cores", "none", "--quiet"]))
}

#[test]
fn row_counts_equal_the_run_and_every_rejected_record_has_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tape, lines) = faulty_day(d);
    let before = std::fs::read(&tape).unwrap();
    let said = export(d, "faulty.csv", "layers");
    assert_eq!(std::fs::read(&tape).unwrap(), before, "the tape is untouched");
    let (summary, rejects, late) = replay(d, "faulty.csv");
    assert!(rejects.len() >= 6, "{rejects:?}");
    assert!(!late.is_empty(), "the record moved an hour back is late");

    let records = read(&d.join("layers/records.parquet"));
    assert_eq!(records.len() as u64, summary["records_read"].as_u64().unwrap());
    assert_eq!(records.len(), lines.len() - 1, "one row per line after the header");
    let count = |fate: &str| records.iter().filter(|r| r["fate"] == fate).count() as u64;
    assert_eq!(count("applied"), summary["applied"].as_u64().unwrap());
    assert_eq!(count("late"), summary["late"].as_u64().unwrap());
    assert_eq!(count("rejected"), summary["rejected"].as_u64().unwrap());
    let by_line: BTreeMap<u64, &Row> = records.iter().map(|r| (r["line"].parse().unwrap(), r)).collect();
    for (line, (reason, record)) in &rejects {
        let row = by_line[line];
        assert_eq!(row["fate"], "rejected", "line {line}");
        assert_eq!(&row["reason"], reason, "line {line}");
        assert_eq!(&row["raw"], record, "line {line}: the record as received");
        assert_eq!(row["raw"], lines[*line as usize - 1], "line {line}");
    }
    for row in records.iter().filter(|r| r["fate"] != "rejected") {
        assert_eq!(row["reason"], "");
        let seq: u64 = row["seq"].parse().unwrap();
        assert_eq!(row["fate"] == "late", late.contains(&seq), "seq {seq}");
    }
    // A malformed line keeps the fields that parse.
    let bad_price = by_line[&100];
    assert!(bad_price["reason"].contains("price"), "{bad_price:?}");
    assert_eq!(bad_price["price"], "");
    assert_eq!(bad_price["seq"], lines[99].split(',').next().unwrap());
    assert_eq!(by_line[&300]["reason"], "empty line");
    // Prices are exact decimals.
    let good = records.iter().find(|r| r["fate"] == "applied").unwrap();
    let line: usize = good["line"].parse().unwrap();
    assert_eq!(good["price"], lines[line - 1].split(',').nth(7).unwrap());

    let alerts = read(&d.join("layers/alerts.parquet"));
    assert_eq!(alerts.len() as u64, summary["alerts_total"].as_u64().unwrap());
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("layers/summary.json")).unwrap()).unwrap();
    for key in ["records_read", "applied", "late", "rejected", "alerts_total"] {
        assert_eq!(written[key], summary[key], "{key}");
    }
    assert!(said.contains("records.parquet") && said.contains(" rows"), "{said}");
    // Nothing but the export's files, and no scratch left beside it.
    let names: BTreeSet<String> = std::fs::read_dir(d.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["alerts.parquet", "metrics.parquet", "orders.parquet", "records.parquet", "summary.json"]
            .map(String::from)
            .into()
    );
    assert!(!std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".export-")));
}

/// One order as a plain fold over the accepted lines sees it.
#[derive(Debug, Default, PartialEq)]
struct Folded {
    entry_ts: String,
    account: String,
    instrument: String,
    side: String,
    price: String,
    qty: u64,
    filled: u64,
    cancelled: u64,
    closed_ts: Option<String>,
}

#[test]
fn orders_and_metrics_match_a_brute_force_fold_over_the_tape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, lines) = faulty_day(d);
    export(d, "faulty.csv", "layers");
    let (_, rejects, _) = replay(d, "faulty.csv");
    let groups: BTreeMap<String, String> = std::fs::read_to_string(d.join("faulty.accounts.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, g) = l.split_once(',').unwrap();
            (a.to_string(), g.to_string())
        })
        .collect();
    let group = |a: &str| groups.get(a).cloned().unwrap_or_else(|| a.to_string());
    let mut orders: BTreeMap<u64, Folded> = BTreeMap::new();
    // (group, instrument) -> (orders, cancels, bought qty)
    let mut metrics: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate().skip(1) {
        if rejects.contains_key(&(i as u64 + 1)) {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let (id, qty): (u64, u64) = (f[3].parse().unwrap(), f[8].parse().unwrap());
        let m = metrics.entry((group(f[4]), f[5].to_string())).or_default();
        match f[2] {
            "N" => {
                m.0 += 1;
                orders.insert(
                    id,
                    Folded {
                        entry_ts: f[1].into(),
                        account: f[4].into(),
                        instrument: f[5].into(),
                        side: f[6].into(),
                        price: f[7].into(),
                        qty,
                        ..Folded::default()
                    },
                );
            }
            "C" => {
                m.1 += 1;
                let o = orders.get_mut(&id).unwrap();
                o.cancelled += qty;
                o.closed_ts = Some(f[1].into());
            }
            _ => {
                m.2 += qty;
                for id in [id, f[9].parse().unwrap()] {
                    let o = orders.get_mut(&id).unwrap();
                    o.filled += qty;
                    if o.filled + o.cancelled == o.qty {
                        o.closed_ts = Some(f[1].into());
                    }
                }
            }
        }
    }
    let table = read(&d.join("layers/orders.parquet"));
    assert_eq!(table.len(), orders.len());
    let mut states = BTreeSet::new();
    for row in &table {
        let id: u64 = row["order_id"].parse().unwrap();
        let want = &orders[&id];
        let got = Folded {
            entry_ts: row["entry_ts_ns"].clone(),
            account: row["account"].clone(),
            instrument: row["instrument"].clone(),
            side: row["side"].clone(),
            price: row["price"].clone(),
            qty: row["qty"].parse().unwrap(),
            filled: row["filled_qty"].parse().unwrap(),
            cancelled: row["cancelled_qty"].parse().unwrap(),
            closed_ts: Some(row["closed_ts_ns"].clone()).filter(|s| !s.is_empty()),
        };
        assert_eq!(&got, want, "order {id}");
        assert_eq!(row["account_group"], group(&want.account));
        let state = match (want.cancelled > 0, want.filled) {
            (true, _) => "cancelled",
            (false, f) if f == want.qty => "filled",
            (false, 0) => "open",
            _ => "partially_filled",
        };
        assert_eq!(row["state"], state, "order {id}");
        states.insert(state);
        let lifetime = want
            .closed_ts
            .as_ref()
            .map(|c| (c.parse::<i64>().unwrap() - want.entry_ts.parse::<i64>().unwrap()).to_string());
        assert_eq!(row["lifetime_ns"], lifetime.unwrap_or_default(), "order {id}");
    }
    assert!(states.len() >= 3, "the day has orders in several states: {states:?}");

    let table = read(&d.join("layers/metrics.parquet"));
    let mut seen = 0;
    for row in &table {
        let key = (row["account_group"].clone(), row["instrument"].clone());
        let Some(&(n, c, bought)) = metrics.get(&key) else { continue };
        seen += 1;
        assert_eq!((row["orders"].parse::<u64>().unwrap(), row["cancels"].parse::<u64>().unwrap()), (n, c), "{key:?}");
        assert_eq!(row["bought_qty"].parse::<u64>().unwrap(), bought, "{key:?}");
        if n > 0 {
            let ratio: f64 = row["cancel_ratio"].parse().unwrap();
            assert!((ratio - c as f64 / n as f64).abs() < 1e-12, "{key:?}");
        } else {
            assert_eq!(row["cancel_ratio"], "");
        }
    }
    assert_eq!(seen, metrics.len(), "every (group, instrument) of the fold has a row");
}

#[test]
fn a_native_tape_exports_the_same_layers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(d, &["gen", "--events", "3000", "--seed", "4", "--out", "day.csv"]));
    ok(&run(d, &["import", "day.csv", "--out", "day.tape", "--quiet"]));
    export(d, "day.csv", "csv");
    export(d, "day.tape", "native");
    for table in ["orders", "metrics", "alerts"] {
        let (a, b) = (read(&d.join(format!("csv/{table}.parquet"))), read(&d.join(format!("native/{table}.parquet"))));
        assert!(!a.is_empty(), "{table}");
        assert_eq!(a, b, "{table}");
    }
    let strip = |rows: Vec<Row>| -> Vec<Row> {
        rows.into_iter()
            .map(|mut r| {
                r.remove("line");
                r
            })
            .collect()
    };
    let (a, b) = (read(&d.join("csv/records.parquet")), read(&d.join("native/records.parquet")));
    assert_eq!(a[0]["line"], "2");
    assert_eq!(b[0]["line"], "1");
    assert_eq!(strip(a), strip(b));
    // The alerts' evidence is flattened: a column per scalar key, equal to the JSON.
    let alerts = read(&d.join("csv/alerts.parquet"));
    let mut checked = 0;
    for row in &alerts {
        let evidence: Value = serde_json::from_str(&row["evidence"]).unwrap();
        for (k, v) in evidence.as_object().unwrap() {
            if let Some(cell) = row.get(&format!("evidence_{k}")) {
                match v {
                    Value::Number(n) if n.is_i64() => assert_eq!(cell, &n.to_string(), "{k}"),
                    Value::String(s) => assert_eq!(cell, s, "{k}"),
                    _ => {}
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no evidence column checked");
}

#[test]
fn bad_input_is_refused_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(d, &["gen", "--events", "500", "--seed", "1", "--out", "day.csv"]));
    let refused = |args: &[&str], says: &str| {
        let out = run(d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".export-")));
    };
    std::fs::create_dir(d.join("full")).unwrap();
    std::fs::write(d.join("full/keep.txt"), "mine").unwrap();
    refused(&["export", "day.csv", "--out", "full"], "--out full: exists and is not empty");
    assert_eq!(std::fs::read_to_string(d.join("full/keep.txt")).unwrap(), "mine");
    refused(&["export", "day.csv", "--out", "day.accounts.csv"], "is not a directory");
    refused(&["export", "missing.csv", "--out", "x"], "missing.csv: no such tape");
    refused(&["export", "day.csv", "--out", "no/such/dir"], "no/such");
    refused(&["export", "-", "--out", "x"], "stdin");
    std::fs::write(d.join("notatape.csv"), "hello,world\n1,2\n").unwrap();
    refused(&["export", "notatape.csv", "--out", "x"], "not a FEED.md tape");
    assert!(!d.join("x").exists(), "no output for refused input");
    // An existing empty directory is filled.
    std::fs::create_dir(d.join("empty")).unwrap();
    ok(&run(d, &["export", "day.csv", "--out", "empty", "--cores", "none", "--quiet"]));
    assert!(d.join("empty/records.parquet").exists());
}

/// Every table of an export directory, read back.
fn tables(dir: &Path) -> BTreeMap<&'static str, Vec<Row>> {
    ["records", "orders", "metrics", "alerts"]
        .into_iter()
        .map(|t| (t, read(&dir.join(format!("{t}.parquet")))))
        .collect()
}

#[test]
fn replay_export_writes_the_same_tables_as_export_in_one_replay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    faulty_day(d);
    ok(&run(d, &["import", "faulty.csv", "--out", "faulty.tape", "--quiet"]));
    for tape in ["faulty.csv", "faulty.tape"] {
        let (by_export, by_replay) = (format!("{tape}.export"), format!("{tape}.replay"));
        export(d, tape, &by_export);
        std::fs::create_dir_all(d.join("rr")).unwrap();
        let said = ok(&run(
            d,
            &["replay", tape, "--alerts", "rr/alerts.jsonl", "--cores", "none", "--quiet", "--export", &by_replay],
        ));
        assert!(said.contains("alerts") && said.contains("records.parquet"), "{said}");
        // The replay's own outputs are where it was told to write them.
        assert!(d.join("rr/alerts.jsonl").exists() && d.join("rr/alerts.late.csv").exists());
        let (a, b) = (tables(&d.join(&by_export)), tables(&d.join(&by_replay)));
        for (name, rows) in &a {
            assert!(!rows.is_empty(), "{tape}: {name}");
            assert_eq!(rows, &b[name], "{tape}: {name}");
        }
        let summary = |p: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(d.join(p).join("summary.json")).unwrap()).unwrap()
        };
        let (a, b) = (summary(&by_export), summary(&by_replay));
        for key in ["records_read", "applied", "late", "rejected", "rejected_at_import", "records_rows", "alerts_total"]
        {
            assert_eq!(a[key], b[key], "{tape}: {key}");
        }
    }
}

#[test]
fn replay_export_refuses_what_it_cannot_write_before_replaying() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(d, &["gen", "--events", "500", "--seed", "1", "--out", "day.csv"]));
    std::fs::create_dir(d.join("full")).unwrap();
    std::fs::write(d.join("full/keep.txt"), "mine").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--export", "full"], "--out full: exists and is not empty"),
        (vec!["--export", "no/such/dir"], "no/such"),
        (vec!["--export", "x", "--alerts", "-"], "--alerts file back: it cannot go to stdout"),
        (vec!["--export", "x", "--instrument", "000001"], "not with --from/--to"),
        (vec!["--export", "x", "--state", "st"], "not with --state"),
        (vec!["--export", "x", "--import-rejects", "day.csv"], "the tape is CSV"),
        (vec!["--import-rejects", "day.csv"], "--export"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["replay", "day.csv", "--alerts", "a/alerts.jsonl", "--cores", "none", "--quiet"];
        if flags.contains(&"-") {
            args.truncate(1);
            args.extend(["day.csv", "--cores", "none", "--quiet"]);
        }
        args.extend(&flags);
        std::fs::create_dir_all(d.join("a")).unwrap();
        let out = run(d, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!d.join("x").exists(), "{flags:?}: an export was written");
        assert!(
            !std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".export-")),
            "{flags:?}: scratch left"
        );
        // Refused before the replay ran: it wrote nothing.
        assert!(!d.join("a/alerts.jsonl").exists(), "{flags:?}: the replay ran");
    }
    assert_eq!(std::fs::read_to_string(d.join("full/keep.txt")).unwrap(), "mine");
}

#[test]
fn a_native_tape_export_has_the_records_rejected_at_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, lines) = faulty_day(d);
    ok(&run(d, &["import", "faulty.csv", "--out", "faulty.tape", "--quiet"]));
    let import_rejects = rejects_file(&std::fs::read_to_string(d.join("faulty.rejects.tsv")).unwrap());
    assert!(import_rejects.len() >= 5, "{import_rejects:?}");
    export(d, "faulty.csv", "csv");
    let said = export(d, "faulty.tape", "native");
    assert!(said.contains("rejected at import, from"), "{said}");
    let (csv, native) = (read(&d.join("csv/records.parquet")), read(&d.join("native/records.parquet")));
    assert_eq!(native.len(), csv.len(), "as many rows as the CSV export");
    assert_eq!(native.len(), lines.len() - 1, "one row per line of the imported CSV");
    let rejected: BTreeMap<u64, &Row> =
        native.iter().filter(|r| r["fate"] == "rejected").map(|r| (r["line"].parse().unwrap(), r)).collect();
    for (line, (reason, record)) in &import_rejects {
        let row = rejected.get(line).unwrap_or_else(|| panic!("line {line} ({reason}) is not in records.parquet"));
        assert_eq!(&row["reason"], reason, "line {line}");
        assert_eq!(&row["raw"], record, "line {line}");
        assert_eq!(row["raw"], lines[*line as usize - 1], "line {line}");
    }
    // The CSV export rejected the same lines for the same reasons.
    let csv_rejected: BTreeMap<u64, (&str, &str)> = csv
        .iter()
        .filter(|r| r["fate"] == "rejected")
        .map(|r| (r["line"].parse().unwrap(), (r["reason"].as_str(), r["raw"].as_str())))
        .collect();
    let native_rejected: BTreeMap<u64, (&str, &str)> =
        rejected.iter().map(|(l, r)| (*l, (r["reason"].as_str(), r["raw"].as_str()))).collect();
    assert_eq!(native_rejected, csv_rejected);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("native/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rejected_at_import_in_records"], import_rejects.len() as u64);
    assert_eq!(summary["records_rows"], native.len() as u64);
    assert_eq!(summary["warnings"], serde_json::json!([]));

    // Given by --import-rejects from elsewhere: the same rows.
    std::fs::rename(d.join("faulty.rejects.tsv"), d.join("kept.tsv")).unwrap();
    ok(&run(
        d,
        &["export", "faulty.tape", "--out", "given", "--import-rejects", "kept.tsv", "--cores", "none", "--quiet"],
    ));
    assert_eq!(read(&d.join("given/records.parquet")), native);

    // Without it: the tape's records only, and said on stderr and in the summary.
    let out = run(d, &["export", "faulty.tape", "--out", "without", "--cores", "none", "--quiet"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rejected at import are not in records.parquet"), "{err}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("without/summary.json")).unwrap()).unwrap();
    assert!(summary["warnings"][0].as_str().unwrap().contains("--import-rejects"), "{summary}");
    assert_eq!(read(&d.join("without/records.parquet")).len(), native.len() - import_rejects.len());

    // Another import's rejects file is refused, naming it.
    std::fs::write(d.join("other.tsv"), "line\treason\trecord\n5\tbad price\tx\n").unwrap();
    let out = run(d, &["export", "faulty.tape", "--out", "other", "--import-rejects", "other.tsv"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("other.tsv: 1 rejected records, but the tape says its import rejected"), "{err}");
    assert!(!d.join("other").exists());
}

#[test]
fn a_tape_without_an_index_exports_the_same_layers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(d, &["gen", "--events", "2000", "--seed", "5", "--out", "day.csv"]));
    ok(&run(d, &["import", "day.csv", "--out", "day.tape", "--quiet"]));
    common::native_v1::strip_index(&d.join("day.tape"), &d.join("old.tape"));
    std::fs::copy(d.join("day.accounts.csv"), d.join("old.accounts.csv")).unwrap();
    std::fs::copy(d.join("day.rejects.tsv"), d.join("old.rejects.tsv")).unwrap();
    export(d, "day.tape", "new");
    export(d, "old.tape", "old");
    assert_eq!(tables(&d.join("new")), tables(&d.join("old")));
}
