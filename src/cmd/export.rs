//! `tapewatch export TAPE --out DIR`: replays the tape and writes the
//! day's layers (records with their fates, orders, metrics, alerts) as
//! Parquet files into a new directory (`crate::export`).

use super::{CmdError, PipelineArgs, ReferenceArgs};
use crate::export::export;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// The tape: a FEED.md CSV file or a native tape (not stdin: it is read twice).
    pub tape: PathBuf,
    /// The directory to create (or an empty one): records.parquet, orders.parquet,
    /// metrics.parquet, alerts.parquet and summary.json. Never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub reference: ReferenceArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
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
    let done = export(&args)?;
    done.warn();
    super::print(&done.render(&args.out))
}
