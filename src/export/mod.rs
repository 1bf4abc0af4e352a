//! `tapewatch export`: the day's layers as Parquet files for other tools
//! (DuckDB, pandas, Spark):
//!
//! - `records.parquet`: every record as received, with its fate
//!   (`applied`, `late`, `rejected`) and the reason of a rejection;
//! - `orders.parquet`: one row per order, folded over the accepted records;
//! - `metrics.parquet`: per (group, instrument) counts and volumes;
//! - `alerts.parquet`: the alerts, evidence as JSON and flattened to columns;
//! - `summary.json`: the run's counts and each file's rows and bytes.
//!
//! Exactness over cleverness: the fates are what replay decided, not a
//! re-derivation. The tape is replayed by the replay pipeline itself (into
//! scratch alerts, late and rejects files), then read once more and joined
//! with those outputs: a rejected record by its line (CSV) or position
//! (native), a late one by its seq. Every count is checked against the
//! run's summary before anything is published; a mismatch fails the run.
//!
//! `tapewatch replay --export DIR` runs the same `Target::write` on its
//! own outputs after its replay: one replay, the same files.
//!
//! A native tape does not hold the records its import rejected: they come
//! from the import's rejects file (beside the tape, or `--import-rejects`),
//! with their CSV line; without it the summary and stderr say so.
//!
//! Nothing is half-written: the files are built in a scratch directory
//! beside `--out` and renamed into place at the end.

mod fold;
pub mod parquet_out;
pub mod tables;

use crate::cmd::CmdError;
use crate::cmd::export::ExportArgs;
use crate::cmd::replay::{Inputs, ReplayArgs, replay_described};
use crate::metrics::Summary;
use std::path::{Path, PathBuf};

/// One file written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub name: &'static str,
    pub rows: u64,
    pub bytes: u64,
}

/// What an export wrote, and the run it came from.
pub struct Exported {
    pub summary: Summary,
    pub files: Vec<Written>,
    pub secs: f64,
    /// The import's rejects file whose records were added, if any.
    pub import_rejects: Option<PathBuf>,
    pub rejected_at_import_in_records: u64,
    /// Records rejected at import that could not be added.
    pub warning: Option<String>,
}

impl Exported {
    /// Records rejected at import that the export could not add: said on
    /// stderr (and in summary.json).
    pub fn warn(&self) {
        if let Some(w) = &self.warning {
            eprintln!("tapewatch: WARNING: {w}");
        }
    }

    /// What the export wrote, for stdout.
    pub fn render(&self, out: &Path) -> String {
        let s = &self.summary;
        let mut text = format!(
            "exported    {} records ({} applied, {} late, {} rejected) and {} alerts in {:.2} s to {}\n",
            s.feed.records_read,
            s.applied,
            s.late,
            s.feed.rejected,
            s.alerts_total(),
            self.secs,
            out.display()
        );
        if let Some(file) = self.import_rejects.as_ref().filter(|_| self.rejected_at_import_in_records > 0) {
            text += &format!(
                "            and {} records rejected at import, from {}\n",
                self.rejected_at_import_in_records,
                file.display()
            );
        }
        for f in &self.files {
            text += &format!("file        {:<16} {:>10} rows {:>12} bytes\n", f.name, f.rows, f.bytes);
        }
        text
    }
}

/// A scratch directory removed unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks `--out`: absent (it will be created) or an empty directory, in
/// a directory that exists. Returns the scratch directory's path beside it.
fn check_out(out: &Path, tape: &Path) -> Result<PathBuf, String> {
    let name = out.file_name().ok_or_else(|| format!("--out {}: not a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(format!("--out {}: {} is not a directory", out.display(), parent.display()));
    }
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("--out {}: {e}", out.display())),
        Ok(meta) if !meta.is_dir() => {
            return Err(format!(
                "--out {}: exists and is not a directory (an export never overwrites a file)",
                out.display()
            ));
        }
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(out).map_err(|e| format!("--out {}: cannot read: {e}", out.display()))?;
            if entries.next().is_some() {
                return Err(format!(
                    "--out {}: exists and is not empty; export into a new directory (nothing in it is replaced)",
                    out.display()
                ));
            }
        }
    }
    if tape.canonicalize().ok().zip(out.canonicalize().ok()).is_some_and(|(t, o)| t.starts_with(o)) {
        return Err(format!("--out {}: holds the tape", out.display()));
    }
    Ok(parent.join(format!(".{}.export-{}", name.to_string_lossy(), std::process::id())))
}

/// An export directory being made: `--out` checked, the scratch directory
/// beside it created (and removed unless published).
pub struct Target {
    out: PathBuf,
    scratch: Scratch,
}

impl Target {
    /// Checks `--out` and `--import-rejects` before anything runs.
    pub fn prepare(out: &Path, tape: &Path) -> Result<Target, CmdError> {
        let path = check_out(out, tape).map_err(CmdError::Usage)?;
        std::fs::create_dir(&path).map_err(|e| CmdError::Usage(format!("{}: cannot create: {e}", path.display())))?;
        Ok(Target { out: out.to_path_buf(), scratch: Scratch { path, keep: false } })
    }

    /// A directory for the replay's own outputs, removed before publishing.
    fn replay_dir(&self) -> Result<PathBuf, CmdError> {
        let dir = self.scratch.path.join("replay");
        std::fs::create_dir_all(&dir).map_err(|e| CmdError::Failed(format!("{}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Builds the tables from a finished replay of the tape (its late,
    /// rejects and alerts files), checks them against its summary, and moves
    /// them into `--out`.
    pub fn write(
        mut self,
        summary: &Summary,
        inputs: &Inputs,
        import_rejects: Option<&Path>,
        started: std::time::Instant,
    ) -> Result<Exported, CmdError> {
        let groups = match &inputs.accounts {
            Some(path) => crate::symbols::Groups::load(path).map_err(CmdError::Usage)?,
            None => crate::symbols::Groups::default(),
        };
        let import = ImportRejects::find(inputs, summary, import_rejects)?;
        let fates = tables::Fates::load(&inputs.late, inputs.rejects.as_deref()).map_err(CmdError::Failed)?;
        let (mut files, fates) = tables::write_tables(
            &inputs.tape,
            inputs.native,
            &groups,
            &fates,
            import.file.as_deref(),
            &inputs.alerts,
            &self.scratch.path,
        )
        .map_err(CmdError::Failed)?;
        check_counts(summary, &files, fates, import.file.is_some()).map_err(CmdError::Failed)?;
        let replay_dir = self.scratch.path.join("replay");
        if replay_dir.exists() {
            std::fs::remove_dir_all(&replay_dir)
                .map_err(|e| CmdError::Failed(format!("{}: {e}", replay_dir.display())))?;
        }

        let summary_json = serde_json::json!({
            "tape": inputs.tape.display().to_string(),
            "format": if inputs.native { "native" } else { "csv" },
            "accounts": inputs.accounts.as_ref().map(|p| p.display().to_string()),
            "rules": inputs.rules.as_ref().map(|p| p.display().to_string()),
            "rules_hash": format!("{:016x}", inputs.rules_hash),
            "lateness_ms": inputs.lateness_ms,
            "records_read": summary.feed.records_read,
            "applied": summary.applied,
            "late": summary.late,
            "rejected": summary.feed.rejected,
            "rejected_at_import": summary.rejected_at_import,
            "import_rejects": import.file.as_ref().map(|p| p.display().to_string()),
            "rejected_at_import_in_records": fates.rejected_at_import,
            "records_rows": summary.feed.records_read + fates.rejected_at_import,
            "alerts_total": summary.alerts_total(),
            "warnings": import.warning.iter().collect::<Vec<_>>(),
            "files": files.iter().map(|f| serde_json::json!({"name": f.name, "rows": f.rows, "bytes": f.bytes})).collect::<Vec<_>>(),
        });
        let summary_path = self.scratch.path.join("summary.json");
        let text = serde_json::to_string_pretty(&summary_json).expect("JSON of plain values") + "\n";
        std::fs::write(&summary_path, &text)
            .map_err(|e| CmdError::Failed(format!("{}: {e}", summary_path.display())))?;
        files.push(Written { name: "summary.json", rows: 0, bytes: text.len() as u64 });

        // Publish: an empty --out is replaced (rename(2) replaces an empty
        // directory); a non-empty one was refused above.
        std::fs::rename(&self.scratch.path, &self.out).map_err(|e| {
            CmdError::Failed(format!(
                "{}: cannot move the export into place from {}: {e}",
                self.out.display(),
                self.scratch.path.display()
            ))
        })?;
        self.scratch.keep = true;
        Ok(Exported {
            summary: summary.clone(),
            files,
            secs: started.elapsed().as_secs_f64(),
            import_rejects: import.file,
            rejected_at_import_in_records: fates.rejected_at_import,
            warning: import.warning,
        })
    }
}

/// The import's rejects file of a native tape, if there is one to add.
struct ImportRejects {
    file: Option<PathBuf>,
    /// Said when a native tape's import rejected records that the export
    /// cannot show.
    warning: Option<String>,
}

impl ImportRejects {
    fn find(inputs: &Inputs, summary: &Summary, given: Option<&Path>) -> Result<ImportRejects, CmdError> {
        if !inputs.native {
            return match given {
                Some(p) => Err(CmdError::Usage(format!(
                    "--import-rejects {}: the tape is CSV: its rejected records are in the export already",
                    p.display()
                ))),
                None => Ok(ImportRejects { file: None, warning: None }),
            };
        }
        // What `tapewatch import --out TAPE` writes by default.
        let beside = crate::cmd::beside(&inputs.tape, ".rejects.tsv");
        let file = match given {
            Some(p) if !p.is_file() => {
                return Err(CmdError::Usage(format!("--import-rejects {}: no such file", p.display())));
            }
            Some(p) => Some(p.to_path_buf()),
            None => beside.is_file().then_some(beside.clone()),
        };
        let Some(file) = file else {
            let warning = (summary.rejected_at_import > 0).then(|| {
                format!(
                    "{} records rejected at import are not in records.parquet: the native tape does not hold them and \
                     the import's rejects file ({}) was not found (give it with --import-rejects)",
                    summary.rejected_at_import,
                    beside.display()
                )
            });
            return Ok(ImportRejects { file: None, warning });
        };
        // The file must be this tape's: as many entries as the tape says
        // its import rejected.
        let mut entries = 0u64;
        tables::for_each_reject(&file, |_, _, _| {
            entries += 1;
            Ok(())
        })
        .map_err(CmdError::Usage)?;
        if entries != summary.rejected_at_import {
            return Err(CmdError::Usage(format!(
                "{}: {entries} rejected records, but the tape says its import rejected {} (the rejects file of another import?)",
                file.display(),
                summary.rejected_at_import
            )));
        }
        Ok(ImportRejects { file: Some(file), warning: None })
    }
}

/// Replays the tape into scratch outputs, then writes the tables from them
/// (`Target::write`, which `replay --export` shares).
pub fn export(opts: &ExportArgs) -> Result<Exported, CmdError> {
    let started = std::time::Instant::now();
    let mut problems = Vec::new();
    if crate::outputs::is_stdio(&opts.tape) {
        problems.push("export reads the tape twice: it cannot come from stdin".to_string());
    } else if !opts.tape.is_file() {
        problems.push(format!("{}: no such tape", opts.tape.display()));
    }
    check_import_rejects(opts.import_rejects.as_deref(), &opts.tape, &mut problems);
    let target = check_out(&opts.out, &opts.tape).map_err(|e| problems.push(e)).ok();
    if target.is_none() || !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let target = Target::prepare(&opts.out, &opts.tape)?;
    let replay_dir = target.replay_dir()?;
    let args = ReplayArgs {
        reference: opts.reference.clone(),
        late: Some(replay_dir.join("late.csv")),
        rejects: Some(replay_dir.join("rejects.tsv")),
        pipeline: opts.pipeline.clone(),
        quiet: opts.quiet,
        ..ReplayArgs::for_tape(&opts.tape, &replay_dir.join("alerts.jsonl"))
    };
    let (summary, inputs) = replay_described(&args)?;
    target.write(&summary, &inputs, opts.import_rejects.as_deref(), started)
}

/// `--import-rejects`: a file, for a native tape.
fn check_import_rejects(given: Option<&Path>, tape: &Path, problems: &mut Vec<String>) {
    let Some(p) = given else { return };
    if !p.is_file() {
        problems.push(format!("--import-rejects {}: no such file", p.display()));
    } else if !crate::cmd::is_native_tape(tape).unwrap_or(false) {
        problems.push(format!(
            "--import-rejects {}: the tape is CSV: its rejected records are in the export already",
            p.display()
        ));
    }
}

/// Checks what `replay --export DIR` needs before the replay runs: a tape
/// that can be read twice, outputs it can read back, the whole tape
/// replayed once. Returns the target to write after the replay.
pub fn prepare_for_replay(args: &ReplayArgs, out: &Path) -> Result<Target, CmdError> {
    let mut problems = Vec::new();
    if crate::outputs::is_stdio(&args.tape) {
        problems.push("--export reads the tape again after the replay: it cannot come from stdin".to_string());
    }
    for (flag, path) in
        [("--alerts", Some(&args.alerts)), ("--late", args.late.as_ref()), ("--rejects", args.rejects.as_ref())]
    {
        if path.is_some_and(|p| crate::outputs::is_stdio(p)) {
            problems.push(format!("--export reads the replay's {flag} file back: it cannot go to stdout"));
        }
    }
    if args.state.is_some() {
        problems.push("--export needs the whole tape replayed in one run: not with --state".to_string());
    }
    if !args.filter.is_empty() {
        problems.push("--export writes the whole day's layers: not with --from/--to/--instrument/--account/--group (use tapewatch slice, then export the slice)".to_string());
    }
    if let Err(e) = check_out(out, &args.tape) {
        problems.push(e);
    }
    check_import_rejects(args.import_rejects.as_deref(), &args.tape, &mut problems);
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    Target::prepare(out, &args.tape)
}

/// The tables against the run: every record read has one row, its fate
/// counted as the summary counted it, and every alert one row.
fn check_counts(summary: &Summary, files: &[Written], fates: tables::FateCounts, import: bool) -> Result<(), String> {
    let rows = |name: &str| files.iter().find(|f| f.name == name).map_or(0, |f| f.rows);
    let mut wrong = Vec::new();
    let run = tables::FateCounts {
        applied: summary.applied,
        late: summary.late,
        rejected: summary.feed.rejected,
        rejected_at_import: if import { summary.rejected_at_import } else { 0 },
    };
    if fates != run {
        wrong.push(format!("records by fate {fates:?}, the run counted {run:?}"));
    }
    let records = summary.feed.records_read + run.rejected_at_import;
    if rows("records.parquet") != records {
        wrong.push(format!("records: {} rows, the run read {records}", rows("records.parquet")));
    }
    if rows("alerts.parquet") != summary.alerts_total() {
        wrong.push(format!("alerts: {} rows, the run raised {}", rows("alerts.parquet"), summary.alerts_total()));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("export does not match the replay (a bug; nothing was written): {}", wrong.join("; ")))
    }
}
