//! `tapewatch export TAPE --out DIR`: replays the tape and writes the
//! day's layers (records with their fates, orders, metrics, alerts) as
//! Parquet files into a new directory (`crate::export`).

use super::CmdError;
use crate::export::{ExportOptions, export};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// The tape: a FEED.md CSV file or a native tape (not stdin: it is read twice).
    pub tape: PathBuf,
    /// The directory to create (or an empty one): records.parquet, orders.parquet,
    /// metrics.parquet, alerts.parquet and summary.json. Never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// accounts.csv (account,group). Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// instruments.csv. Default: `<tape stem>.instruments.csv` beside the tape, if present.
    #[arg(long)]
    pub instruments: Option<PathBuf>,
    /// Rule thresholds (TOML), as for replay.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// As for replay: how far behind the newest record an event may arrive and still count.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
    /// As for replay: the bound on a record's event time ahead of the feed (0: none).
    #[arg(long, default_value_t = 10_000)]
    pub max_future_ms: u64,
    /// Shard threads for the replay (default as for replay).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Core pinning for the replay: `auto`, `none` or a list.
    #[arg(long, default_value = "auto")]
    pub cores: String,
    /// Print only the summary (no progress line).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: ExportArgs) -> Result<(), CmdError> {
    let opts = ExportOptions {
        tape: args.tape,
        out: args.out,
        accounts: args.accounts,
        instruments: args.instruments,
        rules: args.rules,
        lateness_ms: args.lateness_ms,
        max_future_ms: args.max_future_ms,
        shards: args.shards,
        cores: args.cores,
        quiet: args.quiet,
    };
    let done = export(&opts)?;
    let s = &done.summary;
    let mut text = format!(
        "exported    {} records ({} applied, {} late, {} rejected) and {} alerts in {:.2} s to {}\n",
        s.feed.records_read,
        s.applied,
        s.late,
        s.feed.rejected,
        s.alerts_total(),
        done.secs,
        opts.out.display()
    );
    if s.rejected_at_import > 0 {
        text += &format!(
            "            {} records rejected at import are not on the native tape: see the import's rejects file\n",
            s.rejected_at_import
        );
    }
    for f in &done.files {
        text += &format!("file        {:<16} {:>10} rows {:>12} bytes\n", f.name, f.rows, f.bytes);
    }
    super::print(&text)
}
