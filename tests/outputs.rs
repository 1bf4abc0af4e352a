//! The injected-fault matrix, output half (issue 13, findings 4, 7, 8, 9):
//! every way an output path can be wrong, and every way writing one can
//! fail, run through the binary. Each case either completes with the clean
//! run's alerts or stops with exit 2 or 1 and a message naming the path;
//! in every case no input is modified (bytes and inode compared).

mod common;

use common::{bin, read_alerts, stderr, stdout, tapewatch};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The alerts of `g.csv` with its accounts: 12 of the two classic rules
/// and 3 wash-trade (its self-traders' trades are a large share of their
/// instruments' volume on so short a day).
const DAY_ALERTS: usize = 15;

/// A directory with `g.csv` (2000 records, `DAY_ALERTS` alerts with its accounts
/// file), `g.accounts.csv` and the native `g.tape`.
fn day() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = tapewatch(dir.path(), &["gen", "--events", "2000", "--seed", "1", "--out", "g.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tapewatch(dir.path(), &["import", "g.csv", "--out", "g.tape", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// The bytes and identity of every input file, to prove none was touched.
struct Inputs(Vec<(PathBuf, Vec<u8>, u64)>);

impl Inputs {
    fn of(dir: &Path) -> Inputs {
        let names = ["g.csv", "g.accounts.csv", "g.tape", "g.truth.csv"];
        Inputs(
            names
                .iter()
                .map(|n| {
                    let p = dir.join(n);
                    let bytes = std::fs::read(&p).unwrap();
                    let ino = std::fs::metadata(&p).unwrap().ino();
                    (p, bytes, ino)
                })
                .collect(),
        )
    }

    fn unchanged(&self) {
        for (path, bytes, ino) in &self.0 {
            let now = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(now == *bytes, "{} was modified", path.display());
            assert_eq!(std::fs::metadata(path).unwrap().ino(), *ino, "{} was replaced", path.display());
        }
    }
}

fn refused(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains("panicked"), "a panic: {err}");
}

#[test]
fn an_output_that_is_an_input_by_path_link_or_hard_link_is_refused() {
    let dir = day();
    let d = dir.path();
    std::os::unix::fs::symlink("g.csv", d.join("link.jsonl")).unwrap();
    std::fs::hard_link(d.join("g.tape"), d.join("hard.jsonl")).unwrap();
    // gen's side files are outputs too: one linked to its tape is refused.
    std::os::unix::fs::symlink("h.csv", d.join("h.truth.csv")).unwrap();
    let inputs = Inputs::of(d);
    for (args, named) in [
        (&["replay", "g.csv", "--alerts", "g.csv"][..], "--alerts g.csv"),
        (&["replay", "g.tape", "--alerts", "g.tape"][..], "--alerts g.tape"),
        (&["replay", "g.csv", "--alerts", "link.jsonl"][..], "--alerts link.jsonl"),
        (&["replay", "g.tape", "--alerts", "hard.jsonl"][..], "--alerts hard.jsonl"),
        (&["replay", "g.csv", "--late", "g.csv"][..], "--late g.csv"),
        (&["replay", "g.csv", "--rejects", "g.accounts.csv"][..], "--rejects g.accounts.csv"),
        (&["replay", "g.csv", "--json", "g.csv"][..], "--json g.csv"),
        (&["import", "g.csv", "--out", "g.csv"][..], "--out g.csv"),
        (&["import", "g.csv", "--out", "link.jsonl"][..], "same file as the tape"),
        (&["import", "g.csv", "--out", "x.tape", "--rejects", "g.csv"][..], "--rejects g.csv"),
        (&["gen", "--events", "100", "--out", "h.csv"][..], "truth file h.truth.csv: is the same file as --out"),
    ] {
        let out = tapewatch(d, args);
        refused(&out, 2, &[named]);
        inputs.unchanged();
    }
    assert!(!d.join("x.tape").exists() && !d.join("x.tape.partial").exists());
}

#[test]
fn two_outputs_with_one_path_are_refused() {
    let dir = day();
    let d = dir.path();
    std::os::unix::fs::symlink("a.jsonl", d.join("b.csv")).unwrap();
    let inputs = Inputs::of(d);
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "a.jsonl", "--late", "a.jsonl"]);
    refused(&out, 2, &["--late a.jsonl", "--alerts a.jsonl"]);
    // A link to another output that does not exist yet is the same file too.
    std::fs::write(d.join("a.jsonl"), "").unwrap();
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "a.jsonl", "--late", "b.csv"]);
    refused(&out, 2, &["--late b.csv", "--alerts a.jsonl"]);
    let out = tapewatch(d, &["import", "g.csv", "--out", "x.tape", "--rejects", "x.tape"]);
    refused(&out, 2, &["--rejects x.tape"]);
    std::fs::create_dir(d.join("st")).unwrap();
    let out = tapewatch(d, &["replay", "g.csv", "--state", "st", "--alerts", "st/a.jsonl"]);
    refused(&out, 2, &["st/a.jsonl", "state directory"]);
    inputs.unchanged();
}

#[test]
fn an_output_in_a_missing_directory_is_refused_before_the_run() {
    let dir = day();
    let d = dir.path();
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "no/such/a.jsonl"]);
    refused(&out, 2, &["no/such/a.jsonl", "does not exist"]);
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/steady-5k.toml");
    let started = std::time::Instant::now();
    let out = Command::new(bin())
        .args(["bench", scenario.to_str().unwrap(), "--json", "no/r.json", "--hist", "no/r.hist", "--quiet"])
        .current_dir(d)
        .output()
        .unwrap();
    refused(&out, 2, &["--json no/r.json", "--hist no/r.hist"]);
    assert!(started.elapsed().as_secs() < 10, "bench validated its output paths only after the run");
    assert!(!d.join("bench-out").exists(), "bench wrote before failing");
}

#[test]
fn a_device_is_written_in_place_and_never_renamed_over() {
    let dir = day();
    let d = dir.path();
    let inputs = Inputs::of(d);
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = tapewatch(d, &["import", "g.csv", "--out", "fifo"]);
    refused(&out, 2, &["--out fifo", "not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    let out = tapewatch(d, &["gen", "--events", "100", "--out", "/dev/null"]);
    refused(&out, 2, &["--out /dev/null"]);
    assert!(!Path::new("/dev/null.truth.csv").exists());
    // /dev/full: a clear error naming it, exit 1, the device still a device.
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "/dev/full", "--late", "l.csv", "--quiet"]);
    refused(&out, 1, &["/dev/full"]);
    assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device());
    // /dev/null takes output in place; the run succeeds.
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "/dev/null", "--late", "l.csv", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    inputs.unchanged();
}

#[test]
fn stdout_errors_never_panic() {
    let dir = day();
    let d = dir.path();
    let full = || Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
    for args in [&["replay", "g.csv", "--quiet"][..], &["gen", "--events", "100", "--out", "h.csv"][..]] {
        let out = Command::new(bin()).args(args).current_dir(d).stdout(full()).output().unwrap();
        refused(&out, 1, &["stdout: cannot write"]);
    }
    // A reader that goes away (`| head -0`): a quiet stop with exit 0.
    let out = tapewatch(d, &["replay", "g.csv", "--quiet", "--state", "st", "--checkpoint-every-records", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for args in [
        &["gen", "--events", "100", "--out", "h.csv"][..],
        &["checkpoint", "ls", "st"][..],
        &["checkpoint", "show", "st"][..],
        &["replay", "g.csv", "--alerts", "-", "--quiet"][..],
        &["import", "g.csv", "--out", "y.tape", "--json", "-", "--quiet"][..],
    ] {
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn alerts_to_stdout_and_a_csv_tape_from_stdin() {
    let dir = day();
    let d = dir.path();
    let inputs = Inputs::of(d);
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "file.jsonl", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = read_alerts(&d.join("file.jsonl"));
    assert_eq!(expected.len(), DAY_ALERTS);
    // `-`: JSON Lines on stdout, the summary on stderr.
    let out = tapewatch(d, &["replay", "g.csv", "--alerts", "-", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(d.join("stdout.jsonl"), &out.stdout).unwrap();
    assert_eq!(read_alerts(&d.join("stdout.jsonl")), expected);
    assert!(stderr(&out).contains(&format!("alerts      {DAY_ALERTS} (")), "{}", stderr(&out));
    assert!(d.join("alerts.late.csv").exists(), "late file beside the default alerts name");
    // The tape on stdin, as `-` and as /dev/stdin: sniffing must not eat its header.
    // `-` has no directory: nothing is looked for beside it (this is no instruments.csv).
    std::fs::write(d.join("-.instruments.csv"), "not an instruments file\n").unwrap();
    for tape in ["-", "/dev/stdin"] {
        let out = Command::new(bin())
            .args(["replay", tape, "--accounts", "g.accounts.csv", "--alerts", "in.jsonl", "--quiet"])
            .current_dir(d)
            .stdin(std::fs::File::open(d.join("g.csv")).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{tape}: {}", stderr(&out));
        assert_eq!(read_alerts(&d.join("in.jsonl")), expected, "{tape}");
    }
    inputs.unchanged();
}

#[test]
fn a_second_writer_of_an_output_is_refused() {
    let dir = day();
    let d = dir.path();
    let inputs = Inputs::of(d);
    // The first run reads a FIFO that stays open, so it holds its outputs
    // while the second one starts.
    let fifo = d.join("slow.csv");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let tape = std::fs::read_to_string(d.join("g.csv")).unwrap();
    let first = Command::new(bin())
        .args(["replay", "slow.csv", "--accounts", "g.accounts.csv", "--alerts", "same.jsonl", "--quiet"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let (head, rest) = tape.split_at(tape.find("\n").unwrap() + 1);
    writer.write_all(head.as_bytes()).unwrap();
    // Wait until the first run holds its outputs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.join("same.late.csv").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = tapewatch(d, &["replay", "g.csv", "--alerts", "same.jsonl", "--quiet"]);
    refused(&second, 1, &["locked"]);
    writer.write_all(rest.as_bytes()).unwrap();
    drop(writer);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let alerts = read_alerts(&d.join("same.jsonl"));
    assert_eq!(alerts.len(), DAY_ALERTS, "the first run's output was disturbed");
    inputs.unchanged();
}

/// A native tape whose first block is damaged: found after the outputs exist.
fn damaged_tape(d: &Path) {
    let mut bytes = std::fs::read(d.join("g.tape")).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(d.join("bad.tape"), bytes).unwrap();
}

#[test]
fn a_failed_run_removes_only_regular_files_it_created() {
    let dir = day();
    let d = dir.path();
    damaged_tape(d);
    let inputs = Inputs::of(d);
    // Created by the run: removed.
    let out = tapewatch(d, &["replay", "bad.tape", "--alerts", "fresh.jsonl"]);
    refused(&out, 2, &["bad.tape", "corrupt block 0"]);
    assert!(!d.join("fresh.jsonl").exists() && !d.join("fresh.late.csv").exists());
    // There before: kept (emptied, as the run began to write it).
    std::fs::write(d.join("pre.jsonl"), "old").unwrap();
    let out = tapewatch(d, &["replay", "bad.tape", "--alerts", "pre.jsonl"]);
    refused(&out, 2, &["corrupt block 0"]);
    assert!(d.join("pre.jsonl").exists());
    // A link: neither the link nor its target is removed.
    std::fs::write(d.join("target.txt"), "x").unwrap();
    std::os::unix::fs::symlink("target.txt", d.join("link.jsonl")).unwrap();
    let out = tapewatch(d, &["replay", "bad.tape", "--alerts", "link.jsonl"]);
    refused(&out, 2, &["corrupt block 0"]);
    assert!(std::fs::symlink_metadata(d.join("link.jsonl")).unwrap().file_type().is_symlink());
    assert!(d.join("target.txt").exists());
    // A device: written in place, never removed.
    let out = tapewatch(d, &["replay", "bad.tape", "--alerts", "/dev/null", "--late", "l.csv"]);
    refused(&out, 2, &["corrupt block 0"]);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // /dev/stdout (a link into /proc): the alerts go to the run's stdout, the
    // link stays.
    let out = tapewatch(d, &["replay", "bad.tape", "--alerts", "/dev/stdout", "--late", "l.csv"]);
    refused(&out, 2, &["corrupt block 0"]);
    assert!(std::fs::symlink_metadata("/dev/stdout").is_ok(), "/dev/stdout was removed");
    inputs.unchanged();
}

#[test]
fn a_failed_resume_checks_every_output_before_cutting_any() {
    let dir = day();
    let d = dir.path();
    let inputs = Inputs::of(d);
    let out = tapewatch(
        d,
        &["replay", "g.csv", "--state", "st", "--checkpoint-every-records", "300", "--exit-after-checkpoint", "3"],
    );
    assert!(!out.status.success(), "the test hook aborts the run");
    let lengths = |names: &[&str]| -> Vec<u64> {
        names.iter().map(|n| std::fs::metadata(d.join(n)).map_or(0, |m| m.len())).collect()
    };
    let before = lengths(&["alerts.jsonl", "alerts.rejects.tsv"]);
    std::fs::remove_file(d.join("alerts.late.csv")).unwrap();
    let out = tapewatch(d, &["replay", "g.csv", "--state", "st"]);
    refused(&out, 1, &["--late alerts.late.csv", "cannot resume"]);
    assert_eq!(lengths(&["alerts.jsonl", "alerts.rejects.tsv"]), before, "an output was cut before the check");
    inputs.unchanged();
}

#[test]
fn a_lost_rocksdb_write_ahead_log_is_said_on_stderr() {
    let dir = day();
    let d = dir.path();
    let args =
        ["replay", "g.csv", "--state", "st", "--checkpoint-every-records", "300", "--exit-after-checkpoint", "3"];
    assert!(!tapewatch(d, &args).status.success());
    for entry in std::fs::read_dir(d.join("st/db")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = tapewatch(d, &["replay", "g.csv", "--state", "st"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("write-ahead log"), "{}", stderr(&out));
    assert_eq!(read_alerts(&d.join("alerts.jsonl")).len(), DAY_ALERTS);
}

#[test]
fn bad_input_files_exit_2_as_the_readme_says() {
    let dir = day();
    let d = dir.path();
    std::fs::write(d.join("noheader.csv"), "seq,ts\n1,2\n").unwrap();
    let out = tapewatch(d, &["replay", "noheader.csv"]);
    refused(&out, 2, &["noheader.csv", "line 1"]);
    let out = tapewatch(d, &["import", "noheader.csv", "--out", "n.tape"]);
    refused(&out, 2, &["noheader.csv", "line 1"]);
    let tape = std::fs::read(d.join("g.tape")).unwrap();
    std::fs::write(d.join("short.tape"), &tape[..tape.len() / 2]).unwrap();
    let out = tapewatch(d, &["replay", "short.tape"]);
    refused(&out, 2, &["short.tape"]);
    damaged_tape(d);
    let out = tapewatch(d, &["replay", "bad.tape"]);
    refused(&out, 2, &["bad.tape", "corrupt"]);
    std::fs::write(d.join("bad.accounts.csv"), "nope\n").unwrap();
    let out = tapewatch(d, &["replay", "g.csv", "--accounts", "bad.accounts.csv"]);
    refused(&out, 2, &["bad.accounts.csv"]);
    assert!(!d.join("alerts.jsonl").exists());
}

#[test]
fn the_summary_names_its_inputs_and_warns_without_accounts() {
    let dir = day();
    let d = dir.path();
    let out = tapewatch(d, &["replay", "g.csv", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in
        ["tape        g.csv", "accounts    g.accounts.csv", "rules       defaults", "lateness 50 ms", "alerts.jsonl"]
    {
        assert!(text.contains(needle), "summary lacks {needle:?}: {text}");
    }
    assert!(!text.contains("WARNING"), "{text}");
    // Without the accounts file, cross-account self-trades vanish: say so.
    std::fs::rename(d.join("g.accounts.csv"), d.join("elsewhere.csv")).unwrap();
    let out = tapewatch(d, &["replay", "g.csv", "--json", "s.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("WARNING     no accounts file"), "{}", stdout(&out));
    assert!(stderr(&out).contains("warning: no accounts file"), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("s.json")).unwrap()).unwrap();
    assert_eq!(json["inputs"]["tape"], "g.csv");
    assert_eq!(json["inputs"]["accounts"], serde_json::Value::Null);
    assert_eq!(json["alerts_total"].as_u64(), Some(read_alerts(&d.join("alerts.jsonl")).len() as u64));
    assert!(json["warnings"][0].as_str().unwrap().contains("no accounts file"));
    // import --json -: the JSON on stdout, the text on stderr.
    let out = tapewatch(d, &["import", "g.csv", "--out", "z.tape", "--json", "-", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["accepted"].as_u64(), Some(2000));
    assert!(stderr(&out).contains("imported    2000 records"), "{}", stderr(&out));
}

#[test]
fn progress_is_a_periodic_line_when_not_on_a_terminal() {
    let dir = day();
    let d = dir.path();
    // The line's period (5 s) shortened, so that short runs print it.
    let run = |args: &[&str]| {
        Command::new(bin()).args(args).current_dir(d).env("TAPEWATCH_PROGRESS_EVERY_MS", "0").output().unwrap()
    };
    for (args, line) in [
        (&["gen", "--events", "200000", "--out", "p.csv"][..], "tapewatch: gen: "),
        (&["import", "p.csv", "--out", "p.tape"][..], "tapewatch: import: "),
        (&["replay", "p.csv", "--alerts", "p.jsonl"][..], "tapewatch: replay: "),
        (&["replay", "p.tape", "--alerts", "p.jsonl"][..], "tapewatch: replay: "),
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(line), "{args:?}: no progress line: {err}");
        assert!(!err.contains('\r'), "{args:?}: a bar drawn into a pipe: {err}");
    }
    // --quiet: none.
    let out = run(&["replay", "p.tape", "--alerts", "p.jsonl", "--quiet"]);
    assert!(!stderr(&out).contains("tapewatch: replay: "), "{}", stderr(&out));
}
