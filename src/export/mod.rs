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
//! Nothing is half-written: the files are built in a scratch directory
//! beside `--out` and renamed into place at the end.

pub mod parquet_out;
pub mod tables;

use crate::cmd::CmdError;
use crate::cmd::replay::{ReplayArgs, replay_described};
use crate::metrics::Summary;
use std::path::{Path, PathBuf};

/// What to export and how to replay it.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub tape: PathBuf,
    pub out: PathBuf,
    pub accounts: Option<PathBuf>,
    pub instruments: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub lateness_ms: u64,
    pub max_future_ms: u64,
    pub shards: Option<usize>,
    pub cores: String,
    pub quiet: bool,
}

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

/// Replays the tape, builds the tables in a scratch directory, checks them
/// against the run's summary, and moves them into `--out`.
pub fn export(opts: &ExportOptions) -> Result<Exported, CmdError> {
    let started = std::time::Instant::now();
    let mut problems = Vec::new();
    if crate::outputs::is_stdio(&opts.tape) {
        problems.push("export reads the tape twice: it cannot come from stdin".to_string());
    } else if !opts.tape.is_file() {
        problems.push(format!("{}: no such tape", opts.tape.display()));
    }
    let scratch = check_out(&opts.out, &opts.tape).map_err(|e| problems.push(e)).ok();
    let Some(scratch) = scratch.filter(|_| problems.is_empty()) else {
        return Err(CmdError::Usage(problems.join("\n")));
    };
    std::fs::create_dir(&scratch).map_err(|e| CmdError::Usage(format!("{}: cannot create: {e}", scratch.display())))?;
    let mut scratch = Scratch { path: scratch, keep: false };

    let replay_dir = scratch.path.join("replay");
    std::fs::create_dir(&replay_dir).map_err(|e| CmdError::Failed(format!("{}: {e}", replay_dir.display())))?;
    let alerts_path = replay_dir.join("alerts.jsonl");
    let args = ReplayArgs {
        accounts: opts.accounts.clone(),
        instruments: opts.instruments.clone(),
        rules: opts.rules.clone(),
        late: Some(replay_dir.join("late.csv")),
        rejects: Some(replay_dir.join("rejects.tsv")),
        shards: opts.shards,
        cores: opts.cores.clone(),
        lateness_ms: opts.lateness_ms,
        max_future_ms: opts.max_future_ms,
        quiet: opts.quiet,
        ..ReplayArgs::for_tape(&opts.tape, &alerts_path)
    };
    let (summary, inputs) = replay_described(&args)?;
    let groups = match &inputs.accounts {
        Some(path) => crate::symbols::Groups::load(path).map_err(CmdError::Usage)?,
        None => crate::symbols::Groups::default(),
    };
    let fates = tables::Fates::load(&inputs.late, inputs.rejects.as_deref()).map_err(CmdError::Failed)?;
    let (mut files, fates) =
        tables::write_tables(&opts.tape, inputs.native, &groups, &fates, &alerts_path, &scratch.path)
            .map_err(CmdError::Failed)?;
    check_counts(&summary, &files, fates).map_err(CmdError::Failed)?;
    std::fs::remove_dir_all(&replay_dir).map_err(|e| CmdError::Failed(format!("{}: {e}", replay_dir.display())))?;

    let summary_json = serde_json::json!({
        "tape": opts.tape.display().to_string(),
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
        "alerts_total": summary.alerts_total(),
        "files": files.iter().map(|f| serde_json::json!({"name": f.name, "rows": f.rows, "bytes": f.bytes})).collect::<Vec<_>>(),
    });
    let summary_path = scratch.path.join("summary.json");
    let text = serde_json::to_string_pretty(&summary_json).expect("JSON of plain values") + "\n";
    std::fs::write(&summary_path, &text).map_err(|e| CmdError::Failed(format!("{}: {e}", summary_path.display())))?;
    files.push(Written { name: "summary.json", rows: 0, bytes: text.len() as u64 });

    // Publish: an empty --out is replaced (rename(2) replaces an empty
    // directory); a non-empty one was refused above.
    std::fs::rename(&scratch.path, &opts.out).map_err(|e| {
        CmdError::Failed(format!(
            "{}: cannot move the export into place from {}: {e}",
            opts.out.display(),
            scratch.path.display()
        ))
    })?;
    scratch.keep = true;
    Ok(Exported { summary, files, secs: started.elapsed().as_secs_f64() })
}

/// The tables against the run: every record read has one row, its fate
/// counted as the summary counted it, and every alert one row.
fn check_counts(summary: &Summary, files: &[Written], fates: tables::FateCounts) -> Result<(), String> {
    let rows = |name: &str| files.iter().find(|f| f.name == name).map_or(0, |f| f.rows);
    let mut wrong = Vec::new();
    let run = tables::FateCounts { applied: summary.applied, late: summary.late, rejected: summary.feed.rejected };
    if fates != run {
        wrong.push(format!("records by fate {fates:?}, the run counted {run:?}"));
    }
    if rows("records.parquet") != summary.feed.records_read {
        wrong.push(format!("records: {} rows, the run read {}", rows("records.parquet"), summary.feed.records_read));
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
