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
    /// A native tape: the import's rejects file, whose records join records.parquet
    /// (fate `rejected`, `line` their CSV line). Default: `<tape stem>.rejects.tsv`
    /// beside the tape, if present.
    #[arg(long)]
    pub import_rejects: Option<PathBuf>,
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
        import_rejects: args.import_rejects,
    };
    let done = export(&opts)?;
    done.warn();
    super::print(&done.render(&opts.out))
}
