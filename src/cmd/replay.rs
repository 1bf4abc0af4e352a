//! `tapewatch replay`: a tape (CSV or native) through the full pipeline,
//! alerts to JSON Lines, a summary at the end.

use super::{CmdError, ProgressLine, beside, is_native_tape};
use crate::checkpoint::codec::{DecodeError, Reader};
use crate::checkpoint::recover::{self, Loaded};
use crate::checkpoint::store::Store;
use crate::checkpoint::{Identity, Manifest, RouterState, Settings};
use crate::config::{MS, Rules};
use crate::ingest::RejectLog;
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::Tape;
use crate::ingest::native_feed::NativeFeed;
use crate::ingest::validate::{Limits, Validator};
use crate::instruments::Instruments;
use crate::metrics::Summary;
use crate::sink::Outputs;
use crate::symbols::{Groups, Names};
use crate::topology::{self, Checkpointing, PipelineConfig, Resumed};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The tape: a FEED.md CSV file or a native tape from `tapewatch import`.
    #[arg(default_value = "feeds/sample.csv")]
    pub tape: PathBuf,
    /// accounts.csv (account,group). Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// instruments.csv (prev_close, price limits, tick; FEED.md). Default:
    /// `<tape stem>.instruments.csv` beside the tape, if present.
    #[arg(long)]
    pub instruments: Option<PathBuf>,
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
    /// Shard threads (partitioned by instrument). Default: cores - 1 for a native tape, cores - 2
    /// for CSV (its decoder thread needs a core too), at least 1.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Core pinning: `auto` (pin when every busy thread gets a core of its own: the source, every
    /// shard, and for CSV the decoder), `none`, or a list `0,2,3` (source first, then one per shard).
    #[arg(long, default_value = "auto")]
    pub cores: String,
    /// How far behind the newest record an event may arrive and still count.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
    /// Print only the summary (no progress line).
    #[arg(long)]
    pub quiet: bool,
    /// State directory: take checkpoints into it, and resume from the newest
    /// complete one it holds (replaying the tape after the checkpoint's record).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// With --state: cut a checkpoint after this many records (0: not by count). Default 1000000.
    #[arg(long)]
    pub checkpoint_every_records: Option<u64>,
    /// With --state: cut a checkpoint once this many milliseconds have passed (0: not by time). Default 1000.
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// With --state: how many complete checkpoints to keep. Default 3.
    #[arg(long)]
    pub checkpoint_keep: Option<usize>,
    /// Test hook: abort the process (as a crash would) once this checkpoint is durable;
    /// implies --checkpoint-exact.
    #[arg(long, hide = true)]
    pub exit_after_checkpoint: Option<u64>,
    /// Keep the order book even when no enabled rule reads it (tests and measurement).
    #[arg(long, hide = true)]
    pub keep_book: bool,
    /// Test hook: wait for each checkpoint rather than skip a barrier while one is in
    /// flight, so checkpoints fall at exact record counts (stalls the source on the disk).
    #[arg(long, hide = true)]
    pub checkpoint_exact: bool,
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
    let instruments = super::book::load_instruments(args.instruments.as_deref(), &args.tape).unwrap_or_else(|e| {
        problems.push(e);
        Instruments::default()
    });
    let rules = match &args.rules {
        Some(path) => Rules::load(path).unwrap_or_else(|e| {
            problems.push(e);
            Rules::default()
        }),
        None => Rules::default(),
    };
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // A CSV tape has one more busy thread than the source and the shards:
    // the decoder. It is not pinned, and pinning the others only pays when
    // it has a core to itself (on two cores, pinned CSV ran at 3.2-3.9 M/s
    // and unpinned at 5.6-6.0 M/s: the decoder could not leave the
    // source's core).
    let helpers = usize::from(!native);
    let shards = args.shards.unwrap_or(available.saturating_sub(1 + helpers).max(1));
    if !(1..=256).contains(&shards) {
        problems.push(format!("--shards {shards}: must be between 1 and 256"));
    }
    let cores = match pin_plan(&args.cores, shards, helpers, available) {
        Ok(cores) => cores,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    if args.lateness_ms > 3_600_000 {
        problems.push(format!("--lateness-ms {}: at most one hour (3600000)", args.lateness_ms));
    }
    if args.state.is_none()
        && (args.checkpoint_every_records.is_some()
            || args.checkpoint_interval_ms.is_some()
            || args.checkpoint_keep.is_some()
            || args.exit_after_checkpoint.is_some()
            || args.checkpoint_exact)
    {
        problems.push("--checkpoint-* options need --state DIR".to_string());
    }
    if args.checkpoint_keep == Some(0) {
        problems.push("--checkpoint-keep 0: keep at least one checkpoint".to_string());
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }

    let late_path = args.late.clone().unwrap_or_else(|| beside(&args.alerts, ".late.csv"));
    let rejects_path = args.rejects.clone().unwrap_or_else(|| beside(&args.alerts, ".rejects.tsv"));
    let mut cfg = PipelineConfig::new(shards, args.alerts.clone(), late_path);
    cfg.cores = cores;
    cfg.rules = rules;
    // A test knob, undocumented for users: the shards' snapshot slice size.
    if let Some(slice) = std::env::var("TAPEWATCH_SNAPSHOT_SLICE").ok().and_then(|v| v.parse().ok()) {
        cfg.snapshot_slice = slice;
    }
    cfg.lateness_ns = args.lateness_ms as i64 * MS;
    cfg.instruments = Arc::new(instruments);
    cfg.keep_book = args.keep_book;
    let groups = Arc::new(groups);
    // The state directory is opened (and locked) before any output is
    // touched: a bad or busy directory fails the run with nothing changed.
    let mut state = match &args.state {
        Some(dir) => Some(open_state(dir, args, native, &cfg, accounts_path.as_deref(), &cfg.instruments)?),
        None => None,
    };
    let loaded = state.as_mut().and_then(|(_, loaded)| loaded.take());
    let mut checkpointing = |loaded: Option<(Manifest, RouterState, Vec<Vec<u8>>)>| {
        state.take().map(|((store, settings), _)| Checkpointing {
            store,
            settings,
            resume: loaded.map(|(manifest, router, shards)| Resumed { manifest, router, shards }),
        })
    };
    let bad = |id: u64, e: DecodeError| CmdError::Failed(format!("checkpoint {id}: bad source snapshot: {e}"));

    if native {
        let tape = Tape::open_streaming(&args.tape).map_err(|e| CmdError::Failed(e.to_string()))?;
        let (mut feed, names) = NativeFeed::new(tape, groups);
        let mut resume = None;
        if let Some(loaded) = loaded {
            let id = loaded.manifest.id;
            let mut r = Reader::new(&loaded.source);
            feed.resume(&mut r).map_err(|e| bad(id, e))?;
            let router = RouterState::decode(&mut r).and_then(|s| r.finish().map(|()| s)).map_err(|e| bad(id, e))?;
            resume = Some((loaded.manifest, router, loaded.shards));
        }
        let rejected_at_import = feed.rejected_at_import();
        let progress = ProgressLine::new(Some(feed.len() as u64).filter(|_| !args.quiet));
        let mut summary = topology::run_with(feed, names, &cfg, checkpointing(resume), |p| {
            progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed))
        })
        .map_err(CmdError::Failed)?;
        progress.clear();
        summary.rejected_at_import = rejected_at_import;
        Ok(summary)
    } else {
        let mut file = std::fs::File::open(&args.tape)
            .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", args.tape.display())))?;
        // A failed run without --state leaves no rejects file (the sink does
        // the same for the alerts and late files).
        let mut rejects_made = Outputs::remove_on_failure(Vec::new());
        let (feed, names, resume) = match loaded {
            None => {
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
                if args.state.is_none() {
                    rejects_made.add(&rejects_path);
                }
                (feed.with_rejects(rejects), names, None)
            }
            Some(loaded) => {
                let id = loaded.manifest.id;
                let mut r = Reader::new(&loaded.source);
                let (offset, line_no) = r.u64().and_then(|o| Ok((o, r.u64()?))).map_err(|e| bad(id, e))?;
                let validator = Validator::restore(
                    Limits::default(),
                    groups.clone(),
                    &mut r,
                    &loaded.accounts,
                    &loaded.instruments,
                )
                .map_err(|e| bad(id, e))?;
                let router =
                    RouterState::decode(&mut r).and_then(|s| r.finish().map(|()| s)).map_err(|e| bad(id, e))?;
                let tape_len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if tape_len < offset {
                    return Err(CmdError::Failed(format!(
                        "{}: the tape has {tape_len} bytes, but checkpoint {id} was taken at byte {offset}",
                        args.tape.display()
                    )));
                }
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
                    .map_err(|e| CmdError::Failed(format!("{}: cannot seek: {e}", args.tape.display())))?;
                let names = Names {
                    accounts: validator.accounts.table().clone(),
                    instruments: validator.instruments.table().clone(),
                    groups,
                };
                let rejects = RejectLog::resume(&rejects_path, loaded.manifest.rejects_bytes)
                    .map_err(|e| CmdError::Failed(e.to_string()))?;
                let feed = CsvFeed::resume(file, &args.tape, validator, rejects, (offset, line_no));
                (feed, names, Some((loaded.manifest, router, loaded.shards)))
            }
        };
        let progress = ProgressLine::new(None);
        let show = !args.quiet;
        let summary = topology::run_with(feed, names, &cfg, checkpointing(resume), |p| {
            if show {
                progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed))
            }
        })
        .map_err(CmdError::Failed)?;
        rejects_made.keep();
        progress.clear();
        Ok(summary)
    }
}

type OpenState = ((Store, Settings), Option<Loaded>);

/// Opens the state directory and finds the checkpoint to resume from,
/// reporting (on stderr) every newer one that is torn and skipped.
fn open_state(
    dir: &Path,
    args: &ReplayArgs,
    native: bool,
    cfg: &PipelineConfig,
    accounts: Option<&Path>,
    instruments: &Instruments,
) -> Result<OpenState, CmdError> {
    // The rules, the account groups and the instruments' limits shape the
    // state: all are part of what a checkpoint must be resumed with.
    let accounts_text = match accounts {
        Some(path) => {
            std::fs::read(path).map_err(|e| CmdError::Usage(format!("{}: cannot read: {e}", path.display())))?
        }
        None => Vec::new(),
    };
    let instruments_hash = instruments.hash().to_le_bytes();
    let instruments_bytes: &[u8] = if instruments.loaded() { &instruments_hash } else { &[] };
    let reference = Identity::reference_hash(&cfg.rules, &accounts_text, instruments_bytes);
    let identity = Identity::for_tape(&args.tape, native, cfg.lateness_ns, reference)
        .map_err(|e| CmdError::Usage(format!("{}: cannot read tape: {e}", args.tape.display())))?;
    let store = Store::open(dir).map_err(CmdError::Failed)?;
    let loaded =
        recover::newest(&store, &identity, &mut |line| eprintln!("tapewatch: {line}")).map_err(CmdError::Failed)?;
    let settings = Settings {
        dir: dir.to_path_buf(),
        every_records: args.checkpoint_every_records.unwrap_or(1_000_000),
        interval_ns: args.checkpoint_interval_ms.unwrap_or(1000).saturating_mul(1_000_000),
        keep: args.checkpoint_keep.unwrap_or(3),
        abort_after: args.exit_after_checkpoint,
        exact: args.checkpoint_exact || args.exit_after_checkpoint.is_some(),
        identity,
    };
    if let Some(loaded) = &loaded {
        let m = &loaded.manifest;
        eprintln!(
            "tapewatch: resuming from checkpoint {} in {} (after seq {}, {} records read; taken with {} shard{}, now {})",
            m.id,
            dir.display(),
            m.last_seq,
            m.records_read,
            m.shards,
            if m.shards == 1 { "" } else { "s" },
            cfg.shards
        );
    }
    Ok(((store, settings), loaded))
}

/// Which core each pipeline thread is pinned to: source first, then shards.
/// `helpers` counts the busy threads that stay unpinned (a CSV decoder, a
/// bench feeder): `auto` pins only when they too have cores left over.
pub(crate) fn pin_plan(spec: &str, shards: usize, helpers: usize, available: usize) -> Result<Vec<usize>, String> {
    let core_ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    match spec {
        "none" => Ok(Vec::new()),
        "auto" => {
            let busy = shards + 1 + helpers;
            Ok(if core_ids.len() >= busy && available >= busy { core_ids[..=shards].to_vec() } else { Vec::new() })
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

#[cfg(test)]
mod tests {
    use super::pin_plan;

    #[test]
    fn auto_pins_only_when_every_busy_thread_has_a_core() {
        // Source + 1 shard + a CSV decoder = 3 busy threads: never pinned on 2 cores.
        assert_eq!(pin_plan("auto", 1, 1, 2), Ok(Vec::new()));
        // Wherever pinning happens at all, it covers the source and every shard.
        let cores = core_affinity::get_core_ids().unwrap_or_default().len();
        let plan = pin_plan("auto", 1, 0, cores).unwrap();
        assert!(plan.is_empty() || plan.len() == 2, "{plan:?}");
        assert_eq!(pin_plan("none", 1, 0, 64), Ok(Vec::new()));
        let err = pin_plan("0", 2, 0, 64).unwrap_err();
        assert!(err.contains("needs 3 cores"), "{err}");
    }
}
