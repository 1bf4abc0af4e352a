//! `tapewatch import`: a FEED.md CSV tape, validated in feed order, into a
//! native tape that replay memory-maps. Rejected records go to the rejects
//! file here; the native tape holds only accepted records.

use super::{CmdError, ProgressLine, beside};
use crate::event::Event;
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::{TapeRecord, TapeStats, TapeWriter};
use crate::ingest::validate::{Limits, Validator};
use crate::ingest::{Feed, FeedStats, RejectLog};
use crate::outputs::{Plan, is_stdio};
use crate::symbols::Groups;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The FEED.md CSV tape (`-`: stdin).
    pub csv: PathBuf,
    /// The native tape to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Rejected records. Default: `<out stem>.rejects.tsv` beside the output.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Also write the summary as JSON to this file (`-`: stdout, the text summary then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

pub struct ImportSummary {
    pub feed: FeedStats,
    pub elapsed: Duration,
}

pub fn run(args: ImportArgs) -> Result<(), CmdError> {
    let rejects = args.rejects.clone().unwrap_or_else(|| beside(&args.out, ".rejects.tsv"));
    let summary = import_with(&args.csv, &args.out, &rejects, args.json.as_deref(), !args.quiet)?;
    let feed = &summary.feed;
    let secs = summary.elapsed.as_secs_f64();
    let text = format!(
        "imported    {} records into {} ({} rejected, see {}; {} gaps, {} missing)\nthroughput  {:.3} s, {:.2} M records/s\n",
        feed.accepted,
        args.out.display(),
        feed.rejected,
        rejects.display(),
        feed.gaps,
        feed.missing_records,
        secs,
        feed.records_read as f64 / secs.max(1e-9) / 1e6
    );
    let json = serde_json::json!({
        "command": "import",
        "inputs": { "tape": args.csv.display().to_string() },
        "outputs": { "tape": args.out.display().to_string(), "rejects": rejects.display().to_string() },
        "records_read": feed.records_read,
        "accepted": feed.accepted,
        "rejected": feed.rejected,
        "gaps": feed.gaps,
        "missing_records": feed.missing_records,
        "elapsed_s": secs,
    });
    super::emit_summary(&text, &json, args.json.as_deref(), false)
}

pub fn import(csv: &Path, out: &Path, rejects: &Path) -> Result<ImportSummary, CmdError> {
    import_with(csv, out, rejects, None, false)
}

/// Checks every output against the input and each other, then converts.
/// `--out` must be a regular file or a new one: the tape is written beside
/// it and renamed into place, which would replace a device or a FIFO.
fn import_with(
    csv: &Path,
    out: &Path,
    rejects: &Path,
    json: Option<&Path>,
    progress: bool,
) -> Result<ImportSummary, CmdError> {
    let started = Instant::now();
    // A link is followed: the tape replaces the link's target, not the link.
    let out = match std::fs::symlink_metadata(out) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf()),
        _ => out.to_path_buf(),
    };
    let out = out.as_path();
    let partial = {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    };
    let mut plan = Plan::default();
    plan.input("tape", csv).output("--out", out).output("--out (while written)", &partial).output("--rejects", rejects);
    if let Some(json) = json {
        plan.output("--json", json);
    }
    let mut problems = plan.check();
    if is_stdio(out) {
        problems.push("--out -: the native tape must be a file (it is memory-mapped on replay)".to_string());
    } else if let Ok(meta) = std::fs::metadata(out)
        && !meta.is_file()
    {
        problems.push(format!(
            "--out {}: not a regular file; a native tape is written beside its path and renamed into place",
            out.display()
        ));
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let file = if is_stdio(csv) {
        use std::os::fd::AsFd;
        std::io::stdin().as_fd().try_clone_to_owned().map(std::fs::File::from)
    } else {
        std::fs::File::open(csv)
    }
    .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", csv.display())))?;
    let total = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    // Groups are a replay-time matter: the tape stores accounts, not groups.
    let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
    // A file that is no tape is bad input (exit 2), found before any output exists.
    let feed = CsvFeed::new(file, csv, validator, RejectLog::discard()).map_err(|e| CmdError::Usage(e.to_string()))?;
    let rejects_log = RejectLog::create(rejects).map_err(|e| CmdError::Failed(e.to_string()))?;
    let rejects_made = crate::sink::Outputs::remove_on_failure(vec![rejects.to_path_buf()]);
    let mut feed = feed.with_rejects(rejects_log);
    let fail = |e: std::io::Error| CmdError::Failed(format!("{}: cannot write tape: {e}", out.display()));
    let mut writer = TapeWriter::create(out).map_err(fail)?;
    let mut write_error = None;
    let bar = ProgressLine::for_command("import", "bytes", total, progress);
    loop {
        let more = feed
            .pump(&mut |event: &Event| {
                if write_error.is_none()
                    && let Err(e) = writer.push(&to_record(event))
                {
                    write_error = Some(e);
                }
            })
            .map_err(|e| CmdError::Failed(e.to_string()))?;
        if let Some(e) = write_error.take() {
            return Err(fail(e));
        }
        bar.show(feed.position().0);
        if !more {
            break;
        }
    }
    bar.clear();
    let stats = feed.stats();
    let (validator, _) = feed.into_parts();
    let accounts = validator.accounts.names();
    let instruments = validator.instruments.names();
    // The validator ran FEED.md's order lifecycle over every record it
    // passed, against an open-order table that saw every one of them (an
    // import never skips a record), so the tape says so (`native_feed`).
    let tape_stats = TapeStats {
        rejected: stats.rejected,
        gaps: stats.gaps,
        missing_records: stats.missing_records,
        lifecycle_checked: true,
    };
    writer.finish(&as_slices(&accounts), &as_slices(&instruments), tape_stats).map_err(fail)?;
    rejects_made.keep();
    Ok(ImportSummary { feed: stats, elapsed: started.elapsed() })
}

fn to_record(e: &Event) -> TapeRecord {
    TapeRecord {
        seq: e.seq,
        ts_ns: e.ts_ns,
        order_id: e.order_id,
        contra_order_id: e.contra_order_id,
        price: e.price,
        qty: e.qty,
        account: e.account,
        contra_account: e.contra_account,
        instrument: e.instrument,
        kind: e.kind as u8,
        side: e.side as u8,
    }
}

fn as_slices(names: &[Vec<u8>]) -> Vec<&[u8]> {
    names.iter().map(|n| n.as_slice()).collect()
}
