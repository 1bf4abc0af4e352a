//! `tapewatch import`: a FEED.md CSV tape, validated in feed order, into a
//! native tape that replay memory-maps. Rejected records go to the rejects
//! file here; the native tape holds only accepted records.

use super::{CmdError, beside};
use crate::event::Event;
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::{TapeRecord, TapeStats, TapeWriter};
use crate::ingest::validate::{Limits, Validator};
use crate::ingest::{Feed, FeedStats, RejectLog};
use crate::symbols::Groups;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The FEED.md CSV tape.
    pub csv: PathBuf,
    /// The native tape to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Rejected records. Default: `<out stem>.rejects.tsv` beside the output.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
}

pub struct ImportSummary {
    pub feed: FeedStats,
    pub elapsed: Duration,
}

pub fn run(args: ImportArgs) -> Result<(), CmdError> {
    let rejects = args.rejects.clone().unwrap_or_else(|| beside(&args.out, ".rejects.tsv"));
    let summary = import(&args.csv, &args.out, &rejects)?;
    let feed = &summary.feed;
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "imported    {} records into {} ({} rejected, see {}; {} gaps, {} missing)\nthroughput  {:.3} s, {:.2} M records/s",
        feed.accepted,
        args.out.display(),
        feed.rejected,
        rejects.display(),
        feed.gaps,
        feed.missing_records,
        secs,
        feed.records_read as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}

pub fn import(csv: &Path, out: &Path, rejects: &Path) -> Result<ImportSummary, CmdError> {
    let started = Instant::now();
    let file =
        std::fs::File::open(csv).map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", csv.display())))?;
    // Groups are a replay-time matter: the tape stores accounts, not groups.
    let validator = Validator::new(Limits::default(), Arc::new(Groups::default()));
    let feed = CsvFeed::new(file, csv, validator, RejectLog::discard()).map_err(|e| CmdError::Failed(e.to_string()))?;
    let mut feed = feed.with_rejects(RejectLog::create(rejects).map_err(|e| CmdError::Failed(e.to_string()))?);
    let fail = |e: std::io::Error| CmdError::Failed(format!("{}: cannot write tape: {e}", out.display()));
    let mut writer = TapeWriter::create(out).map_err(fail)?;
    let mut write_error = None;
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
        if !more {
            break;
        }
    }
    let stats = feed.stats();
    let (validator, _) = feed.into_parts();
    let accounts = validator.accounts.names();
    let instruments = validator.instruments.names();
    let tape_stats = TapeStats { rejected: stats.rejected, gaps: stats.gaps, missing_records: stats.missing_records };
    writer.finish(&as_slices(&accounts), &as_slices(&instruments), tape_stats).map_err(fail)?;
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
