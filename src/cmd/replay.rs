//! `tapewatch replay`: a tape (CSV or native) through the full pipeline,
//! alerts to JSON Lines, a summary at the end.

use super::{CmdError, ProgressLine, beside, is_native_tape};
use crate::config::{MS, Rules};
use crate::ingest::RejectLog;
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::Tape;
use crate::ingest::native_feed::NativeFeed;
use crate::ingest::validate::{Limits, Validator};
use crate::metrics::Summary;
use crate::pipeline::{self, PipelineConfig};
use crate::symbols::{Groups, Names};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The tape: a FEED.md CSV file or a native tape from `tapewatch import`.
    #[arg(default_value = "feeds/sample.csv")]
    pub tape: PathBuf,
    /// accounts.csv (account,group). Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// Rule thresholds (TOML); defaults apply to anything not set.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Alerts output, JSON Lines.
    #[arg(long, default_value = "alerts.jsonl")]
    pub alerts: PathBuf,
    /// Late records (FEED.md CSV). Default: `<alerts stem>.late.csv` beside the alerts file.
    #[arg(long)]
    pub late: Option<PathBuf>,
    /// Rejected records (line, reason, record). Default: `<alerts stem>.rejects.tsv` beside the alerts file.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Shard threads (partitioned by instrument). Default: cores - 1, at least 1.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Core pinning: `auto` (pin when there are cores for the source and every shard), `none`,
    /// or a list `0,2,3` (source first, then one per shard).
    #[arg(long, default_value = "auto")]
    pub cores: String,
    /// How far behind the newest record an event may arrive and still count.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
    /// Print only the summary (no progress line).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: ReplayArgs) -> Result<(), CmdError> {
    let summary = replay(&args)?;
    println!("{}", summary.render().trim_end());
    Ok(())
}

/// Validates the options (every problem reported at once), opens the inputs
/// before creating any output, then runs the pipeline.
pub fn replay(args: &ReplayArgs) -> Result<Summary, CmdError> {
    let mut problems = Vec::new();
    let native = match is_native_tape(&args.tape) {
        Ok(native) => native,
        Err(e) => {
            problems.push(format!("{}: cannot read tape: {e}", args.tape.display()));
            false
        }
    };
    let accounts_path =
        args.accounts.clone().or_else(|| Some(beside(&args.tape, ".accounts.csv")).filter(|p| p.exists()));
    let groups = match &accounts_path {
        Some(path) => Groups::load(path).unwrap_or_else(|e| {
            problems.push(e);
            Groups::default()
        }),
        None => Groups::default(),
    };
    let rules = match &args.rules {
        Some(path) => Rules::load(path).unwrap_or_else(|e| {
            problems.push(e);
            Rules::default()
        }),
        None => Rules::default(),
    };
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let shards = args.shards.unwrap_or(available.saturating_sub(1).max(1));
    if !(1..=256).contains(&shards) {
        problems.push(format!("--shards {shards}: must be between 1 and 256"));
    }
    let cores = match pin_plan(&args.cores, shards, available) {
        Ok(cores) => cores,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    if args.lateness_ms > 3_600_000 {
        problems.push(format!("--lateness-ms {}: at most one hour (3600000)", args.lateness_ms));
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }

    let late_path = args.late.clone().unwrap_or_else(|| beside(&args.alerts, ".late.csv"));
    let rejects_path = args.rejects.clone().unwrap_or_else(|| beside(&args.alerts, ".rejects.tsv"));
    let mut cfg = PipelineConfig::new(shards, args.alerts.clone(), late_path);
    cfg.cores = cores;
    cfg.rules = rules;
    cfg.lateness_ns = args.lateness_ms as i64 * MS;
    let groups = Arc::new(groups);

    if native {
        let tape = Tape::open(&args.tape).map_err(|e| CmdError::Failed(e.to_string()))?;
        let (feed, names) = NativeFeed::new(tape, groups);
        let rejected_at_import = feed.rejected_at_import();
        let progress = ProgressLine::new(Some(feed.len() as u64).filter(|_| !args.quiet));
        let mut summary = pipeline::run(feed, names, &cfg, |p| {
            progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed))
        })
        .map_err(CmdError::Failed)?;
        progress.clear();
        summary.rejected_at_import = rejected_at_import;
        Ok(summary)
    } else {
        let file = std::fs::File::open(&args.tape)
            .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", args.tape.display())))?;
        let validator = Validator::new(Limits::default(), groups.clone());
        let names = Names {
            accounts: validator.accounts.table().clone(),
            instruments: validator.instruments.table().clone(),
            groups,
        };
        // Header first: a file that is no tape fails before any output exists.
        let feed = CsvFeed::new(file, &args.tape, validator, RejectLog::discard())
            .map_err(|e| CmdError::Failed(e.to_string()))?;
        let rejects = RejectLog::create(&rejects_path).map_err(|e| CmdError::Failed(e.to_string()))?;
        let feed = feed.with_rejects(rejects);
        let progress = ProgressLine::new(None);
        let show = !args.quiet;
        let summary = pipeline::run(feed, names, &cfg, |p| {
            if show {
                progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed))
            }
        })
        .map_err(CmdError::Failed)?;
        progress.clear();
        Ok(summary)
    }
}

/// Which core each pipeline thread is pinned to: source first, then shards.
pub(crate) fn pin_plan(spec: &str, shards: usize, available: usize) -> Result<Vec<usize>, String> {
    let core_ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    match spec {
        "none" => Ok(Vec::new()),
        "auto" => {
            Ok(if core_ids.len() > shards && available > shards { core_ids[..=shards].to_vec() } else { Vec::new() })
        }
        list => {
            let mut cores = Vec::new();
            for part in list.split(',') {
                let core: usize =
                    part.trim().parse().map_err(|_| format!("--cores {list}: `{part}` is not a core number"))?;
                if !core_ids.contains(&core) {
                    return Err(format!("--cores {list}: core {core} is not available (cores: {core_ids:?})"));
                }
                cores.push(core);
            }
            if cores.len() != shards + 1 {
                return Err(format!(
                    "--cores {list}: needs {} cores (the source and {shards} shard{}), got {}",
                    shards + 1,
                    if shards == 1 { "" } else { "s" },
                    cores.len()
                ));
            }
            Ok(cores)
        }
    }
}
