//! The injected-fault matrix, input half (issue 13): one bad record (or bad
//! reference file) put into a generated day. Each run either completes with
//! exactly the alerts of the clean tape less what the bad record itself
//! carried (the reference: the tape with that record left out), or stops
//! with exit 2 or 1 and a message naming the record or the path. No input
//! file is ever modified.

mod common;

use common::{bin, read_alerts};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tapewatch::ingest::native::{Tape, TapeRecord, TapeStats, TapeWriter};

struct Day {
    dir: tempfile::TempDir,
    tape: PathBuf,
    accounts: PathBuf,
    lines: Vec<String>,
}

/// `gen --events 2000 --seed 1`: 12 alerts with its accounts file.
fn day() -> Day {
    let dir = tempfile::tempdir().expect("tempdir");
    let tape = dir.path().join("g.csv");
    let out = Command::new(bin())
        .args(["gen", "--events", "2000", "--seed", "1", "--out"])
        .arg(&tape)
        .output()
        .expect("run gen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = std::fs::read_to_string(&tape).expect("read").lines().map(str::to_string).collect();
    Day { accounts: dir.path().join("g.accounts.csv"), dir, tape, lines }
}

impl Day {
    fn write(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        path
    }

    /// The tape with line `n` (1-based, the header is line 1) replaced.
    fn with_line(&self, name: &str, n: usize, line: &str) -> PathBuf {
        let mut lines = self.lines.clone();
        lines[n - 1] = line.to_string();
        self.write(name, &lines)
    }

    /// The tape without line `n`: what the alerts must equal when line n is bad.
    fn without_line(&self, name: &str, n: usize) -> PathBuf {
        let mut lines = self.lines.clone();
        lines.remove(n - 1);
        self.write(name, &lines)
    }

    fn field(&self, n: usize, i: usize) -> String {
        self.lines[n - 1].split(',').nth(i).expect("field").to_string()
    }

    fn replace_field(&self, n: usize, i: usize, value: &str) -> String {
        let mut fields: Vec<String> = self.lines[n - 1].split(',').map(str::to_string).collect();
        fields[i] = value.to_string();
        fields.join(",")
    }

    /// Replays `tape` (its bytes checked unchanged afterwards); returns the
    /// output and the alerts, if it succeeded.
    fn replay(&self, tape: &Path, extra: &[&str]) -> (Output, Option<Vec<Value>>) {
        let before = std::fs::read(tape).expect("read tape");
        let out_dir = tempfile::tempdir_in(self.dir.path()).expect("out dir");
        let alerts = out_dir.path().join("alerts.jsonl");
        let out = Command::new(bin())
            .arg("replay")
            .arg(tape)
            .arg("--accounts")
            .arg(&self.accounts)
            .arg("--alerts")
            .arg(&alerts)
            .args(["--shards", "1", "--cores", "none", "--quiet"])
            .args(extra)
            .output()
            .expect("run replay");
        assert_eq!(std::fs::read(tape).expect("read tape"), before, "{} was modified", tape.display());
        let result = out.status.success().then(|| read_alerts(&alerts));
        let rejects = std::fs::read_to_string(out_dir.path().join("alerts.rejects.tsv")).unwrap_or_default();
        std::fs::write(self.dir.path().join("last.rejects.tsv"), rejects).expect("keep rejects");
        (out, result)
    }

    fn last_rejects(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("last.rejects.tsv")).expect("rejects")
    }

    fn import(&self, csv: &Path) -> PathBuf {
        let out = csv.with_extension("tape");
        let status = Command::new(bin()).arg("import").arg(csv).arg("--out").arg(&out).output().expect("run import");
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        out
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Each bad-record class on the CSV tape: the run completes, the bad record
/// is rejected naming its line, and the alerts are those of the tape
/// without it.
#[test]
fn one_bad_csv_record_costs_only_itself() {
    let day = day();
    let (_, clean) = day.replay(&day.tape, &[]);
    // The reproducer day: 12 alerts of the two classic rules (the
    // window-metric rules add their own, e.g. wash-trade on its self-traders).
    let classic = |alerts: &Vec<Value>| {
        alerts.iter().filter(|a| matches!(a["rule"].as_str(), Some("excessive-cancel" | "self-trade"))).count()
    };
    assert_eq!(clean.as_ref().map(classic), Some(12), "the clean day");
    let n = 101;
    let ts: i64 = day.field(n, 1).parse().expect("ts");
    let line = &day.lines[n - 1];
    let after_seq = &line[line.find(',').expect("comma")..];
    let cases: Vec<(&str, String, &str)> = vec![
        ("seq column dropped", after_seq[1..].to_string(), "wrong column count"),
        ("huge first field", format!("99999999999{after_seq},"), "wrong column count"),
        ("mistyped seq", format!("1000{after_seq}"), "seq 1000 out of line"),
        (
            "a day ahead",
            day.replace_field(n, 1, &(ts + 86_400_000_000_000).to_string()),
            "outside the tape's trading day",
        ),
        ("a minute ahead", day.replace_field(n, 1, &(ts + 60_000_000_000).to_string()), "ahead of the feed"),
        ("ts i64::MAX", day.replace_field(n, 1, &i64::MAX.to_string()), "outside the tape's trading day"),
        ("ts negative", day.replace_field(n, 1, "-1"), "outside the tape's trading day"),
        ("ts zero", day.replace_field(n, 1, "0"), "outside the tape's trading day"),
        ("price -1", day.replace_field(n, 7, "-1"), "bad price"),
        ("qty 0", day.replace_field(n, 8, "0"), "bad qty"),
    ];
    let reference = day.without_line("reference.csv", n);
    let (_, expected) = day.replay(&reference, &[]);
    for (name, bad, reason) in cases {
        let tape = day.with_line("bad.csv", n, &bad);
        let (out, alerts) = day.replay(&tape, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(alerts, expected, "{name}: alerts differ from the tape without the bad record");
        let rejects = day.last_rejects();
        let first = rejects.lines().nth(1).unwrap_or_default();
        assert!(first.starts_with(&format!("{n}\t")) && first.contains(reason), "{name}: {rejects}");
    }
}

/// The last record's seq u64::MAX: rejected (it wrapped in replay while
/// import refused it), nothing else lost.
#[test]
fn seq_u64_max_is_one_rule_for_replay_and_import() {
    let day = day();
    let last = day.lines.len();
    let tape = day.with_line("max.csv", last, &day.replace_field(last, 0, &u64::MAX.to_string()));
    let (_, expected) = day.replay(&day.without_line("ref.csv", last), &[]);
    let (out, alerts) = day.replay(&tape, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alerts, expected);
    assert!(day.last_rejects().contains("bad seq"), "{}", day.last_rejects());
    // Import applies the same rule: the record goes to its rejects, the rest is imported.
    let native = day.import(&tape);
    let (out, native_alerts) = day.replay(&native, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(native_alerts, expected);
}

/// A native tape rewritten with one bad record and sealed again (checksums
/// right): the native feed rejects the record as the CSV decoder would, and
/// the alerts equal the CSV reference's.
#[test]
fn a_resealed_native_tape_with_a_bad_record_costs_only_that_record() {
    let day = day();
    // A cancel: leaving it out changes no later record's lifecycle.
    let n = (150..day.lines.len()).find(|&n| day.field(n, 2) == "C").expect("a cancel");
    let (_, expected) = day.replay(&day.without_line("ref.csv", n), &[]);
    let clean = day.import(&day.tape);
    let tape = Tape::open(&clean).expect("open");
    type Damage<'a> = &'a dyn Fn(&mut TapeRecord);
    let cases: [(&str, Damage, &str); 5] = [
        ("price -1", &|r| r.price = -1, "bad price"),
        ("price i64::MIN", &|r| r.price = i64::MIN, "bad price"),
        ("qty 0", &|r| r.qty = 0, "bad qty"),
        ("ts a day ahead", &|r| r.ts_ns += 86_400_000_000_000, "outside the tape's trading day"),
        ("ts a minute ahead", &|r| r.ts_ns += 60_000_000_000, "ahead of the feed"),
    ];
    for (name, bad, reason) in cases {
        let path = day.dir.path().join("bad.tape");
        let mut writer = TapeWriter::create(&path).expect("create");
        for i in 0..tape.len() {
            let mut record = tape.record(i);
            // Record i is line i + 2 of the CSV tape (header, 1-based).
            if i + 2 == n {
                bad(&mut record);
            }
            writer.push(&record).expect("push");
        }
        writer.finish(&tape.accounts(), &tape.instruments(), TapeStats::default()).expect("finish");
        let (out, alerts) = day.replay(&path, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(alerts, expected, "{name}");
        let rejects = day.last_rejects();
        assert!(
            rejects.lines().nth(1).is_some_and(|l| l.starts_with(&format!("{}\t", n - 1)) && l.contains(reason)),
            "{name}: {rejects}"
        );
        assert!(!rejects.contains(".a"), "{name}: a price written as garbage: {rejects}");
    }
}

/// Many bad records: the run says so, and `--max-bad-pct` makes it fail.
#[test]
fn a_large_share_of_bad_records_warns_and_can_fail_the_run() {
    let day = day();
    let mut lines = day.lines.clone();
    for n in (10..lines.len()).step_by(40) {
        lines[n] = format!("{},x", lines[n]);
    }
    let tape = day.write("bad.csv", &lines);
    let (out, _) = day.replay(&tape, &[]);
    assert!(out.status.success());
    assert!(text(&out).contains("WARNING: 4.10% of the 2000 records read were rejected (82)"), "{}", text(&out));
    assert!(!text(&out).contains("gaps"), "broken lines in line are no gaps: {}", text(&out));
    let (out, _) = day.replay(&tape, &["--max-bad-pct", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("more than --max-bad-pct 1"), "{}", text(&out));
}

/// accounts.csv with a byte-order mark: accepted, same alerts; with a space
/// after a comma: refused naming the file and line (exit 2).
#[test]
fn accounts_file_with_bom_or_spaces() {
    let day = day();
    let (_, clean) = day.replay(&day.tape, &[]);
    let original = std::fs::read_to_string(&day.accounts).expect("accounts");
    std::fs::write(&day.accounts, format!("\u{FEFF}{original}")).expect("write");
    let (out, alerts) = day.replay(&day.tape, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alerts, clean);
    let spaced = original.replacen(",G", ", G", 1);
    assert_ne!(spaced, original, "the accounts file has groups");
    std::fs::write(&day.accounts, spaced).expect("write");
    let (out, _) = day.replay(&day.tape, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("g.accounts.csv: line ") && text(&out).contains("has a space"), "{}", text(&out));
}

/// A tape edited after a checkpoint, beyond its first 64 KiB: resuming is
/// refused naming the tape (it resumed mid-line and exited 0).
#[test]
fn an_edited_tape_is_not_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tape = dir.path().join("g.csv");
    let run = |args: &[&str]| Command::new(bin()).args(args).output().expect("run");
    let out = run(&["gen", "--events", "60000", "--seed", "5", "--out", tape.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let state = dir.path().join("state");
    let alerts = dir.path().join("a.jsonl");
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", tape.to_str().expect("utf-8"), "--alerts", alerts.to_str().expect("utf-8")];
        args.extend_from_slice(&[
            "--state",
            state.to_str().expect("utf-8"),
            "--quiet",
            "--shards",
            "1",
            "--cores",
            "none",
        ]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = replay(&["--checkpoint-every-records", "40000", "--exit-after-checkpoint", "1"]);
    assert!(!out.status.success(), "aborted after the checkpoint");
    // One digit added to a line well past the first 64 KiB, before the checkpoint's position.
    let mut bytes = std::fs::read(&tape).expect("read");
    let at = bytes.iter().skip(1_000_000).position(|&b| b == b'\n').expect("a line") + 1_000_000;
    bytes.insert(at - 2, b'7');
    std::fs::write(&tape, &bytes).expect("write");
    let out = replay(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("g.csv: the tape's first") && text(&out).contains("refusing to resume"),
        "{}",
        text(&out)
    );
}

/// Recomputes every checksum of a forged native tape (the chain header ->
/// table and symbols -> blocks), as anyone editing a tape can.
fn reseal(b: &mut [u8]) {
    use xxhash_rust::xxh3::xxh3_64;
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let block_records = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes")) as usize;
    let (table, symbols) = (u64_at(b, 32) as usize, u64_at(b, 40) as usize);
    let sums: Vec<u64> = b[128..table].chunks(block_records * 64).map(xxh3_64).collect();
    for (i, sum) in sums.iter().enumerate() {
        b[table + i * 8..table + i * 8 + 8].copy_from_slice(&sum.to_le_bytes());
    }
    // Version 2 ends the symbols at the block index, which has its own sum
    // (its block summaries are left as they were: only filters read them).
    let index = match u64_at(b, 96) as usize {
        0 => b.len(),
        at => at,
    };
    let (th, sh) = (xxh3_64(&b[table..symbols]), xxh3_64(&b[symbols..index]));
    b[80..88].copy_from_slice(&th.to_le_bytes());
    b[88..96].copy_from_slice(&sh.to_le_bytes());
    if index < b.len() {
        let ih = xxh3_64(&b[index..]);
        b[104..112].copy_from_slice(&ih.to_le_bytes());
    }
    let hh = xxh3_64(&b[..120]);
    b[120..128].copy_from_slice(&hh.to_le_bytes());
}

/// Writes record `i` of a native tape's bytes in the format's layout.
fn put_record(b: &mut [u8], i: usize, r: &TapeRecord) {
    let at = 128 + i * 64;
    for (offset, v) in [(0, r.seq), (8, r.ts_ns as u64), (16, r.order_id), (24, r.contra_order_id)] {
        b[at + offset..at + offset + 8].copy_from_slice(&v.to_le_bytes());
    }
    for (offset, v) in [(32, r.price as u64), (40, r.qty)] {
        b[at + offset..at + offset + 8].copy_from_slice(&v.to_le_bytes());
    }
    for (offset, v) in [(48, r.account), (52, r.contra_account), (56, r.instrument)] {
        b[at + offset..at + offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    b[at + 60] = r.kind;
    b[at + 61] = r.side;
}

/// The rejects file as (place, reason, record) rows; a native tape names
/// the record (1-based), which is CSV line minus one (the header).
fn reject_rows(text: &str, native: bool) -> Vec<(u64, String, String)> {
    text.lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.splitn(3, '\t');
            let place: u64 = cols.next().and_then(|p| p.parse().ok()).expect("place");
            let reason = cols.next().expect("reason").to_string();
            (place + native as u64, reason, cols.next().expect("record").to_string())
        })
        .collect()
}

/// The fault matrix across formats: every fault class the seq and
/// lifecycle rules catch (and the field and event-time classes), put into
/// record `n` of the CSV tape and, forged and resealed, of the native tape
/// imported from the clean one. Both runs complete with the alerts of the
/// tape without that record, and reject the same record for the same
/// reason: the native feed re-checks every record rule the CSV decoder
/// checks, and with `--verify-lifecycle` the order lifecycle too. Without
/// it, a resealed tape keeps import's mark and its lifecycle is taken as
/// import checked it (docs/FEED.md): a forged lifecycle fault then reaches
/// the order books, which skip it and count it, and the run completes.
#[test]
fn csv_and_native_reject_the_same_record_for_every_fault_class() {
    let day = day();
    // A cancel: leaving it out changes no later record's lifecycle.
    let n = (150..day.lines.len()).find(|&n| day.field(n, 2) == "C").expect("a cancel");
    let (_, expected) = day.replay(&day.without_line("ref.csv", n), &[]);
    let clean = day.import(&day.tape);
    let clean_bytes = std::fs::read(&clean).expect("read tape");
    let original = Tape::open(&clean).expect("open").record(n - 2);
    let prev_seq: u64 = day.field(n - 1, 0).parse().expect("seq");
    let seq: u64 = day.field(n, 0).parse().expect("seq");
    let ts: i64 = day.field(n, 1).parse().expect("ts");
    let qty: u64 = day.field(n, 8).parse().expect("qty");
    let other_side = if day.field(n, 6) == "B" { "S" } else { "B" };
    // (class, CSV field edits, the same on the native record, reason)
    type Edit = Box<dyn Fn(&mut TapeRecord)>;
    type Case<'a> = (&'a str, Vec<(usize, String)>, Edit, &'a str);
    // The classes only the order lifecycle catches, with what the order
    // books count them as when a trusted tape carries them.
    let lifecycle_classes =
        [("unknown order", "unknown order"), ("cancel qty", "over-execution"), ("wrong side", "unknown order")];
    // The book is kept (a test hook) so that its counters are in the summary.
    let (out, _) = day.replay(&clean, &["--keep-book"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("order lifecycle as checked at import"), "{}", text(&out));
    let clean_skipped = book_skipped(&text(&out));
    let cases: Vec<Case> = vec![
        (
            "repeated seq",
            vec![(0, prev_seq.to_string())],
            Box::new(move |r: &mut TapeRecord| r.seq = prev_seq),
            "repeated or backward seq",
        ),
        ("seq jump", vec![(0, (seq * 10).to_string())], Box::new(move |r: &mut TapeRecord| r.seq *= 10), "out of line"),
        (
            "unknown order",
            vec![(3, "987654321".into())],
            Box::new(move |r: &mut TapeRecord| r.order_id = 987_654_321),
            "order 987654321 unknown",
        ),
        (
            "cancel qty",
            vec![(8, (qty + 1).to_string())],
            Box::new(move |r: &mut TapeRecord| r.qty += 1),
            "is not its open qty",
        ),
        (
            "wrong side",
            vec![(6, other_side.into())],
            Box::new(|r: &mut TapeRecord| r.side = if r.side == b'B' { b'S' } else { b'B' }),
            "side differs",
        ),
        ("price -1", vec![(7, "-1.0000".into())], Box::new(move |r: &mut TapeRecord| r.price = -10_000), "bad price"),
        ("qty 0", vec![(8, "0".into())], Box::new(move |r: &mut TapeRecord| r.qty = 0), "bad qty"),
        (
            "a day ahead",
            vec![(1, (ts + 86_400_000_000_000).to_string())],
            Box::new(|r: &mut TapeRecord| r.ts_ns += 86_400_000_000_000),
            "outside the tape's trading day",
        ),
        (
            "a minute ahead",
            vec![(1, (ts + 60_000_000_000).to_string())],
            Box::new(|r: &mut TapeRecord| r.ts_ns += 60_000_000_000),
            "ahead of the feed",
        ),
    ];
    for (name, csv_edits, native_edit, reason) in cases {
        let mut fields: Vec<String> = day.lines[n - 1].split(',').map(str::to_string).collect();
        for (i, value) in csv_edits {
            fields[i] = value;
        }
        let csv = day.with_line("bad.csv", n, &fields.join(","));
        let (out, csv_alerts) = day.replay(&csv, &[]);
        assert!(out.status.success(), "{name} (CSV): {}", text(&out));
        let csv_rejects = reject_rows(&day.last_rejects(), false);

        let mut bytes = clean_bytes.clone();
        let mut record = original;
        native_edit(&mut record);
        put_record(&mut bytes, n - 2, &record);
        reseal(&mut bytes);
        let native = day.dir.path().join("bad.tape");
        std::fs::write(&native, &bytes).expect("write");
        let (out, native_alerts) = day.replay(&native, &["--verify-lifecycle"]);
        assert!(out.status.success(), "{name} (native): {}", text(&out));
        assert!(text(&out).contains("order lifecycle re-checked"), "{name}: {}", text(&out));
        let native_rejects = reject_rows(&day.last_rejects(), true);

        assert_eq!(csv_alerts, expected, "{name}: CSV alerts differ from the tape without the record");
        assert_eq!(native_alerts, expected, "{name}: native alerts differ from the tape without the record");
        assert_eq!(csv_rejects.len(), 1, "{name}: {csv_rejects:?}");
        assert!(csv_rejects[0].0 == n as u64 && csv_rejects[0].1.contains(reason), "{name}: {csv_rejects:?}");
        assert_eq!(native_rejects, csv_rejects, "{name}: the formats reject differently");

        // The same tape, import's lifecycle check trusted (the default).
        let (out, trusted_alerts) = day.replay(&native, &["--keep-book"]);
        assert!(out.status.success(), "{name} (native, trusted): {}", text(&out));
        let trusted_rejects = reject_rows(&day.last_rejects(), true);
        match lifecycle_classes.iter().find(|(class, _)| *class == name) {
            None => {
                assert_eq!(trusted_alerts, expected, "{name}: trusted native alerts differ");
                assert_eq!(trusted_rejects, csv_rejects, "{name}: a record rule was not applied");
            }
            Some((_, cause)) => {
                assert!(trusted_rejects.is_empty(), "{name}: {trusted_rejects:?}");
                let skipped = book_skipped(&text(&out));
                assert_eq!(skipped[*cause], clean_skipped[*cause] + 1, "{name}: not counted: {}", text(&out));
            }
        }
    }
}

/// A resealed tape that keeps import's mark (a forger can set it as easily
/// as the checksums) with an unknown cancel and an over-execution: replayed
/// trusting import's lifecycle check, the run completes, rejects nothing,
/// and the order books skip both and count them; with
/// `--verify-lifecycle` both are rejected exactly as on the CSV tape.
#[test]
fn a_trusted_resealed_tape_with_lifecycle_faults_is_skipped_by_the_books() {
    let day = day();
    let cancel = (150..day.lines.len()).find(|&n| day.field(n, 2) == "C").expect("a cancel");
    let trade = (150..day.lines.len()).find(|&n| day.field(n, 2) == "T").expect("a trade");
    let qty: u64 = day.field(trade, 8).parse().expect("qty");
    let clean = day.import(&day.tape);
    let (out, _) = day.replay(&clean, &["--keep-book"]);
    assert!(out.status.success(), "{}", text(&out));
    let clean_skipped = book_skipped(&text(&out));

    let mut bytes = std::fs::read(&clean).expect("read tape");
    let tape = Tape::open(&clean).expect("open");
    let mut unknown = tape.record(cancel - 2);
    unknown.order_id = 987_654_321;
    put_record(&mut bytes, cancel - 2, &unknown);
    let mut overfill = tape.record(trade - 2);
    overfill.qty = qty + 1_000_000;
    put_record(&mut bytes, trade - 2, &overfill);
    reseal(&mut bytes);
    let forged = day.dir.path().join("forged.tape");
    std::fs::write(&forged, &bytes).expect("write");
    assert!(Tape::open(&forged).expect("a resealed tape opens").stats().lifecycle_checked);

    let (out, alerts) = day.replay(&forged, &["--keep-book"]);
    assert!(out.status.success() && alerts.is_some(), "{}", text(&out));
    assert!(text(&out).contains("order lifecycle as checked at import"), "{}", text(&out));
    assert!(reject_rows(&day.last_rejects(), true).is_empty(), "{}", day.last_rejects());
    let skipped = book_skipped(&text(&out));
    assert_eq!(skipped["unknown order"], clean_skipped["unknown order"] + 1, "{}", text(&out));
    assert_eq!(skipped["over-execution"], clean_skipped["over-execution"] + 1, "{}", text(&out));

    let mut lines = day.lines.clone();
    lines[cancel - 1] = day.replace_field(cancel, 3, "987654321");
    lines[trade - 1] = day.replace_field(trade, 8, &(qty + 1_000_000).to_string());
    let csv = day.write("forged.csv", &lines);
    let (out, csv_alerts) = day.replay(&csv, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let csv_rejects = reject_rows(&day.last_rejects(), false);
    let reasons: Vec<&str> = csv_rejects.iter().map(|r| r.1.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("order 987654321 unknown")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("exceeds")), "{reasons:?}");
    let (out, verified_alerts) = day.replay(&forged, &["--verify-lifecycle"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reject_rows(&day.last_rejects(), true), csv_rejects);
    assert_eq!(verified_alerts, csv_alerts);
}

/// The summary's `book ... skipped N (cause n, ...)` line: the count of
/// each cause.
fn book_skipped(summary: &str) -> std::collections::HashMap<String, u64> {
    let line = summary.lines().find(|l| l.starts_with("book ") && l.contains("skipped")).expect("a book line");
    let skipped = line.split_once("skipped ").expect("skipped").1;
    let causes = skipped.split_once(" (").and_then(|(_, rest)| rest.split_once(')')).expect("causes").0;
    causes
        .split(", ")
        .map(|cause| {
            let (name, n) = cause.rsplit_once(' ').expect("cause count");
            (name.to_string(), n.parse().expect("a count"))
        })
        .collect()
}

/// The reference and output paths a native run has: `--rejects` equal to
/// the tape (it died of SIGBUS and left the tape empty) and `--alerts`
/// equal to the instruments file found beside the tape (overwritten, exit
/// 0) are refused with exit 2, both inputs unchanged; the summary names the
/// instruments file it used.
#[test]
fn every_input_is_named_and_none_is_an_output() {
    let day = day();
    let native = day.import(&day.tape);
    let instruments = day.dir.path().join("g.instruments.csv");
    std::fs::write(&instruments, "instrument,prev_close,limit_up,limit_down,tick\n").expect("write");
    let before = (std::fs::read(&native).expect("tape"), std::fs::read(&instruments).expect("instruments"));
    let run = |args: &[&std::ffi::OsStr]| Command::new(bin()).args(args).output().expect("run");
    let (tape, inst) = (native.as_os_str(), instruments.as_os_str());
    let out = run(&["replay".as_ref(), tape, "--rejects".as_ref(), tape, "--quiet".as_ref()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--rejects"), "{}", text(&out));
    let out = run(&["replay".as_ref(), day.tape.as_os_str(), "--alerts".as_ref(), inst, "--quiet".as_ref()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("instruments file"), "{}", text(&out));
    assert_eq!((std::fs::read(&native).expect("tape"), std::fs::read(&instruments).expect("instruments")), before);
    let alerts = day.dir.path().join("named.jsonl");
    let out =
        run(&["replay".as_ref(), tape, "--alerts".as_ref(), alerts.as_os_str(), "--shards".as_ref(), "1".as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("instruments {}", instruments.display())), "{}", text(&out));
}

/// A rules file or scenario is read through a limit: an endless device is
/// refused naming it (exit 2), never read into memory.
#[test]
fn config_files_are_read_through_a_limit() {
    let day = day();
    let out = Command::new(bin())
        .arg("replay")
        .arg(&day.tape)
        .args(["--rules", "/dev/zero", "--quiet"])
        .output()
        .expect("run replay");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/dev/zero: rules file larger than 1 MiB"), "{}", text(&out));
    let out = Command::new(bin())
        .args(["gen", "--scenario", "/dev/zero", "--out"])
        .arg(day.dir.path().join("s.csv"))
        .output()
        .expect("run gen");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/dev/zero: scenario larger than 1 MiB"), "{}", text(&out));
}
