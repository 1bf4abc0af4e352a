//! `tapewatch replay`: a tape (CSV or native) through the full pipeline,
//! alerts to JSON Lines, a summary at the end.

use super::{CmdError, PipelineArgs, ProgressLine, ReferenceArgs, beside, is_native_tape};
use crate::checkpoint::codec::{DecodeError, Reader};
use crate::checkpoint::recover::{self, Loaded};
use crate::checkpoint::store::Store;
use crate::checkpoint::{Identity, Manifest, PrefixHasher, RouterState, Settings};
use crate::config::MS;
use crate::ingest::RejectLog;
use crate::ingest::csv::CsvFeed;
use crate::ingest::native::Tape;
use crate::ingest::native_feed::NativeFeed;
use crate::ingest::validate::{Limits, TimeRules, Validator};
use crate::instruments::Instruments;
use crate::metrics::Summary;
use crate::outputs::{Plan, is_stdio};
use crate::sink::Outputs;
use crate::topology::{self, Checkpointing, PipelineConfig, Resumed};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The tape: a FEED.md CSV file or a native tape from `tapewatch import`; `-`: a CSV tape on stdin.
    #[arg(default_value = "feeds/sample.csv")]
    pub tape: PathBuf,
    #[command(flatten)]
    pub reference: ReferenceArgs,
    /// Alerts output, JSON Lines; `-`: stdout (the summary then goes to stderr).
    #[arg(long, default_value = "alerts.jsonl")]
    pub alerts: PathBuf,
    /// Also write the summary as JSON to this file (`-`: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Late records (FEED.md CSV). Default: `<alerts stem>.late.csv` beside the alerts file
    /// (`alerts.late.csv` when the alerts go to stdout).
    #[arg(long)]
    pub late: Option<PathBuf>,
    /// Near-misses (JSON Lines, as alerts with `"near_miss":true`) of the rules whose table sets
    /// `near_miss_pct`. Default: none written (they are still counted in the summary).
    #[arg(long)]
    pub near_misses: Option<PathBuf>,
    /// Rejected records (line, reason, record). Default: `<alerts stem>.rejects.tsv` beside the alerts file
    /// (`alerts.rejects.tsv` when the alerts go to stdout).
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// A native tape: check the order lifecycle record by record even when the tape says
    /// import checked it (a tape of unknown origin; see docs/FEED.md). Tapes without import's
    /// mark are always checked.
    #[arg(long)]
    pub verify_lifecycle: bool,
    /// Fail (exit 1, after writing every output) when more than this percentage of the records
    /// read were rejected or late. The summary warns above 1% whatever this is.
    #[arg(long)]
    pub max_bad_pct: Option<f64>,
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
    /// Also write the day's layers as Parquet into this new (or empty) directory, from this
    /// replay's own outputs, as `tapewatch export` does (docs/EXPORT.md).
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// With --export, a native tape: the import's rejects file, whose records join
    /// records.parquet. Default: `<tape stem>.rejects.tsv` beside the tape, if present.
    #[arg(long, requires = "export")]
    pub import_rejects: Option<PathBuf>,
    /// Filters (--from/--to, --instrument, --account, --group): a replay of part of the tape
    /// whose alerts are the full replay's alerts inside it (see docs/INVESTIGATE.md).
    #[command(flatten)]
    pub filter: crate::investigate::filter::FilterArgs,
}

impl ReplayArgs {
    /// The options a command line naming only `tape` and `--alerts` gets:
    /// every default comes from the flags' own declarations, so code and
    /// tests that build a replay never restate them.
    pub fn for_tape(tape: &Path, alerts: &Path) -> ReplayArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Line {
            #[command(flatten)]
            args: ReplayArgs,
        }
        let line = [std::ffi::OsStr::new("replay"), tape.as_os_str(), "--alerts".as_ref(), alerts.as_os_str()];
        Line::parse_from(line).args
    }
}

pub fn run(args: ReplayArgs) -> Result<(), CmdError> {
    let started = std::time::Instant::now();
    // --export is checked before the replay runs, written after it.
    let export = args.export.as_deref().map(|out| crate::export::prepare_for_replay(&args, out)).transpose()?;
    let (summary, inputs) = replay_described(&args)?;
    let text = format!("{}{}\n", inputs.render(), summary.render().trim_end());
    let json = summary_json(&summary, &inputs);
    super::emit_summary(&text, &json, args.json.as_deref(), crate::outputs::is_stdout(&args.alerts))?;
    if let (Some(target), Some(out)) = (export, args.export.as_deref()) {
        let done = target.write(&summary, &inputs, args.import_rejects.as_deref(), started)?;
        done.warn();
        super::print(&done.render(out))?;
    }
    bad_share_check(&summary, args.max_bad_pct)
}

/// What a run used and wrote: named in its summary, so that a run without
/// reference data cannot pass for a complete one.
pub struct Inputs {
    pub tape: PathBuf,
    pub native: bool,
    /// A native tape: whether this run checked the order lifecycle (else
    /// it took import's check, as the tape's header says).
    pub lifecycle_rechecked: Option<bool>,
    pub accounts: Option<PathBuf>,
    /// instruments.csv, given or found beside the tape.
    pub instruments: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    /// xxh3 of the effective rules (defaults included).
    pub rules_hash: u64,
    pub lateness_ms: u64,
    pub alerts: PathBuf,
    pub late: PathBuf,
    /// Records rejected here (a native tape's field rules, a CSV tape's too).
    pub rejects: Option<PathBuf>,
    pub state: Option<PathBuf>,
    /// Said on stderr at the start and again in the summary.
    pub warnings: Vec<String>,
    /// A filtered replay: what it selected and what it skipped.
    pub filter: Option<String>,
}

impl Inputs {
    pub fn render(&self) -> String {
        let shown = |p: &Path| if is_stdio(p) { "stdout".to_string() } else { p.display().to_string() };
        let mut s = format!(
            "tape        {} ({})\n",
            if is_stdio(&self.tape) { "stdin".to_string() } else { self.tape.display().to_string() },
            match (self.native, self.lifecycle_rechecked) {
                (false, _) => "FEED.md CSV",
                (true, Some(false)) => "native; order lifecycle as checked at import, --verify-lifecycle re-checks it",
                (true, _) => "native; order lifecycle re-checked",
            }
        );
        s += &format!(
            "accounts    {}\n",
            self.accounts.as_ref().map_or("none (every account is its own group)".to_string(), |p| shown(p))
        );
        s += &format!(
            "instruments {}\n",
            self.instruments
                .as_ref()
                .map_or("none (order books: a one-unit tick, no price limits)".to_string(), |p| shown(p))
        );
        s += &format!(
            "rules       {} (effective rules xxh3 {:016x}), lateness {} ms\n",
            self.rules.as_ref().map_or("defaults".to_string(), |p| shown(p)),
            self.rules_hash,
            self.lateness_ms
        );
        s += &format!("outputs     alerts {}, late {}", shown(&self.alerts), shown(&self.late));
        if let Some(rejects) = &self.rejects {
            s += &format!(", rejects {}", shown(rejects));
        }
        s += "\n";
        if let Some(state) = &self.state {
            s += &format!("state       {}\n", state.display());
        }
        if let Some(filter) = &self.filter {
            s += &format!("filter      {filter}\n");
        }
        for warning in &self.warnings {
            s += &format!("WARNING     {warning}\n");
        }
        s
    }
}

fn summary_json(summary: &Summary, inputs: &Inputs) -> serde_json::Value {
    let path = |p: &Path| p.display().to_string();
    let alerts: serde_json::Map<String, serde_json::Value> = crate::detect::registry::RULES
        .iter()
        .zip(summary.alerts)
        .map(|(rule, n)| (rule.name.to_string(), n.into()))
        .collect();
    let near_misses: serde_json::Map<String, serde_json::Value> = crate::detect::registry::RULES
        .iter()
        .zip(summary.near_misses)
        .filter(|(_, n)| *n > 0)
        .map(|(rule, n)| (rule.name.to_string(), n.into()))
        .collect();
    let episodes: serde_json::Map<String, serde_json::Value> = crate::detect::registry::RULES
        .iter()
        .zip(&summary.episodes)
        .filter_map(|(rule, e)| {
            e.map(|e| {
                (rule.name.to_string(), serde_json::json!({ "episodes": e.episodes, "suppressed": e.suppressed }))
            })
        })
        .collect();
    let keys_refused: serde_json::Map<String, serde_json::Value> = crate::detect::registry::RULES
        .iter()
        .zip(summary.keys_refused)
        .filter(|(_, n)| *n > 0)
        .map(|(rule, n)| (rule.name.to_string(), n.into()))
        .collect();
    let feed = &summary.feed;
    serde_json::json!({
        "command": "replay",
        "inputs": {
            "tape": path(&inputs.tape),
            "format": if inputs.native { "native" } else { "csv" },
            "lifecycle_rechecked": inputs.lifecycle_rechecked,
            "accounts": inputs.accounts.as_deref().map(path),
            "instruments": inputs.instruments.as_deref().map(path),
            "rules": inputs.rules.as_deref().map(path),
            "rules_hash": format!("{:016x}", inputs.rules_hash),
            "lateness_ms": inputs.lateness_ms,
            "state": inputs.state.as_deref().map(path),
            "filter": inputs.filter,
        },
        "outputs": {
            "alerts": path(&inputs.alerts),
            "late": path(&inputs.late),
            "rejects": inputs.rejects.as_deref().map(path),
        },
        "warnings": inputs.warnings,
        "records_read": feed.records_read,
        "accepted": feed.accepted,
        "rejected": feed.rejected,
        "rejected_at_import": summary.rejected_at_import,
        "gaps": feed.gaps,
        "missing_records": feed.missing_records,
        "applied": summary.applied,
        "late": summary.late,
        "alerts": alerts,
        "alerts_total": summary.alerts_total(),
        "episodes": episodes,
        "near_misses": near_misses,
        "keys_refused": keys_refused,
        "elapsed_s": summary.elapsed.as_secs_f64(),
        "events_per_s": summary.events_per_sec(),
        "shards": summary.shards,
        "resumed_from": summary.checkpoints.as_ref().and_then(|c| c.resumed_from).map(|(id, _)| id),
    })
}

/// Above this share of rejected or late records, the summary warns.
pub const WARN_BAD_PCT: f64 = 1.0;

/// A silent zero-alert day is the worst failure surveillance has: a run in
/// which many records were rejected or late says so loudly (stderr), and
/// fails when that share is over `--max-bad-pct`.
pub fn bad_share_check(summary: &Summary, max_bad_pct: Option<f64>) -> Result<(), CmdError> {
    let read = summary.feed.records_read;
    let bad = summary.feed.rejected + summary.late;
    if read == 0 {
        return Ok(());
    }
    let pct = bad as f64 * 100.0 / read as f64;
    let line = format!(
        "{pct:.2}% of the {read} records read were rejected ({}) or late ({}): see the rejects and late files",
        summary.feed.rejected, summary.late
    );
    if let Some(max) = max_bad_pct
        && pct > max
    {
        return Err(CmdError::Failed(format!("{line}; more than --max-bad-pct {max}")));
    }
    if pct > WARN_BAD_PCT {
        eprintln!("tapewatch: WARNING: {line}");
    }
    Ok(())
}

/// Validates the options (every problem reported at once), opens the inputs
/// before creating any output, then runs the pipeline.
pub fn replay(args: &ReplayArgs) -> Result<Summary, CmdError> {
    replay_described(args).map(|(summary, _)| summary)
}

pub fn replay_described(args: &ReplayArgs) -> Result<(Summary, Inputs), CmdError> {
    let mut problems = Vec::new();
    let native = match is_native_tape(&args.tape) {
        Ok(native) => native,
        Err(e) => {
            problems.push(format!("{}: cannot read tape: {e}", args.tape.display()));
            false
        }
    };
    let super::ReferenceData { accounts_path, groups, instruments_path, instruments, rules } =
        args.reference.load(&args.tape, &mut problems);
    if let Some(path) = &args.reference.rules {
        problems.extend(rules.check_tiers(&instruments).into_iter().map(|p| format!("{}: {p}", path.display())));
    }
    // Beside the alerts unless they go to stdout, which has no directory.
    let named_alerts =
        if crate::outputs::is_special(&args.alerts) { PathBuf::from("alerts.jsonl") } else { args.alerts.clone() };
    let late_path = args.late.clone().unwrap_or_else(|| beside(&named_alerts, ".late.csv"));
    let rejects_path = args.rejects.clone().unwrap_or_else(|| beside(&named_alerts, ".rejects.tsv"));
    let mut plan = Plan::default();
    plan.input("tape", &args.tape);
    if let Some(path) = &accounts_path {
        plan.input("accounts file", path);
    }
    if let Some(path) = &instruments_path {
        plan.input("instruments file", path);
    }
    if let Some(path) = &args.reference.rules {
        plan.input("rules file", path);
    }
    // Both formats write rejects (a native tape's are re-checked records).
    plan.output("--alerts", &args.alerts).output("--late", &late_path).output("--rejects", &rejects_path);
    if let Some(path) = &args.json {
        plan.output("--json", path);
    }
    if let Some(path) = &args.near_misses {
        plan.output("--near-misses", path);
        if is_stdio(path) {
            problems.push("--near-misses -: only the alerts (or --json) can go to stdout".to_string());
        }
    }
    if let Some(dir) = &args.state {
        plan.reserved_dir("state directory", dir);
    }
    problems.extend(plan.check());
    for (flag, path) in [("--late", &late_path), ("--rejects", &rejects_path)] {
        if is_stdio(path) {
            problems.push(format!("{flag} -: only the alerts (or --json) can go to stdout"));
        }
    }
    if crate::outputs::is_stdout(&args.alerts) && args.json.as_deref().is_some_and(is_stdio) {
        problems.push("--alerts - and --json -: only one of them can go to stdout".to_string());
    }
    if args.state.is_some() {
        let regular = !is_stdio(&args.tape) && std::fs::metadata(&args.tape).is_ok_and(|m| m.is_file());
        if !regular {
            problems.push(format!(
                "--state needs the tape in a regular file (a resumed run reads it from the checkpoint on): {}",
                args.tape.display()
            ));
        }
        if crate::outputs::is_special(&args.alerts) {
            problems.push(format!(
                "--state with --alerts {}: a resumed run cuts its alerts file back, which needs a regular file",
                args.alerts.display()
            ));
        }
    }
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // A CSV tape has one more busy thread than the source and the shards:
    // the decoder. It is not pinned, and pinning the others only pays when
    // it has a core to itself (on two cores, pinned CSV ran at 3.2-3.9 M/s
    // and unpinned at 5.6-6.0 M/s: the decoder could not leave the
    // source's core).
    let helpers = usize::from(!native);
    // The source needs a core of its own only while it is as busy as a
    // shard. With the book or a heavy rule on, each shard does several
    // times the source's work a record: on two cores, every rule on ran
    // 1.9 times faster with two unpinned shards than with one pinned, and
    // the default rules 1.4 times slower (docs/PERFORMANCE.md).
    let spare = usize::from(!rules.shard_bound());
    let shards = args.pipeline.shards.unwrap_or(available.saturating_sub(spare + helpers).max(1));
    if !(1..=256).contains(&shards) {
        problems.push(format!("--shards {shards}: must be between 1 and 256"));
    }
    let cores = match pin_plan(&args.pipeline.cores, shards, helpers, available) {
        Ok(cores) => cores,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    super::check_lateness_ms(args.pipeline.lateness_ms, &mut problems);
    if args.pipeline.max_future_ms > 86_400_000 {
        problems.push(format!("--max-future-ms {}: at most one day (86400000)", args.pipeline.max_future_ms));
    }
    if let Some(pct) = args.max_bad_pct
        && !(0.0..=100.0).contains(&pct)
    {
        problems.push(format!("--max-bad-pct {pct}: must be between 0 and 100"));
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
    let filter = args.filter.validate(&mut problems);
    let filtered = !args.filter.is_empty();
    if filtered && args.state.is_some() {
        problems.push("--state with filters: a filtered replay is an investigation and takes no checkpoints".into());
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }

    let mut warnings = Vec::new();
    if accounts_path.is_none() {
        warnings.push(format!(
            "no accounts file (--accounts, or {} beside the tape): every account is its own group, so \
             self-trades across accounts of one owner cannot be seen",
            beside(&args.tape, ".accounts.csv").display()
        ));
    }
    if !args.quiet {
        for warning in &warnings {
            eprintln!("tapewatch: warning: {warning}");
        }
    }
    let inputs = Inputs {
        tape: args.tape.clone(),
        native,
        lifecycle_rechecked: None,
        accounts: accounts_path.clone(),
        instruments: instruments_path,
        rules: args.reference.rules.clone(),
        rules_hash: xxhash_rust::xxh3::xxh3_64(format!("{rules:?}").as_bytes()),
        lateness_ms: args.pipeline.lateness_ms,
        alerts: args.alerts.clone(),
        late: late_path.clone(),
        rejects: Some(rejects_path.clone()),
        state: args.state.clone(),
        warnings,
        filter: None,
    };
    let mut inputs = inputs;
    let mut cfg = PipelineConfig::new(shards, args.alerts.clone(), late_path.clone());
    cfg.cores = cores;
    cfg.rules = rules;
    cfg.near_miss_path = args.near_misses.clone();
    // A test knob, undocumented for users: the shards' snapshot slice size.
    if let Some(slice) = std::env::var("TAPEWATCH_SNAPSHOT_SLICE").ok().and_then(|v| v.parse().ok()) {
        cfg.snapshot_slice = slice;
    }
    cfg.lateness_ns = args.pipeline.lateness_ms as i64 * MS;
    cfg.instruments = Arc::new(instruments);
    cfg.keep_book = args.keep_book;
    let selection = if filtered {
        let plan = crate::investigate::replay_filter::plan_replay(&args.tape, native, &filter, &cfg, &groups)?;
        cfg.alert_keep = Some(plan.keep.clone());
        inputs.filter = Some(plan.describe());
        Some(plan)
    } else {
        None
    };
    let limits = Limits {
        time: TimeRules { max_future_ns: args.pipeline.max_future_ms as i64 * MS, ..TimeRules::default() },
        ..Limits::default()
    };
    let groups = Arc::new(groups);
    // The state directory is opened (and locked) before any output is
    // touched: a bad or busy directory fails the run with nothing changed.
    let mut state = match &args.state {
        Some(dir) => Some(open_state(dir, args, native, &cfg, accounts_path.as_deref(), &cfg.instruments)?),
        None => None,
    };
    let loaded = state.as_mut().and_then(|(_, loaded)| loaded.take());
    // A resumed run cuts each output back to its committed length: every
    // one is checked first, so a missing one fails the run with none cut.
    if let Some(loaded) = &loaded {
        let m = &loaded.manifest;
        let mut outputs =
            vec![("--alerts", args.alerts.as_path(), m.alerts_bytes), ("--late", &late_path, m.late_bytes)];
        outputs.push(("--rejects", &rejects_path, m.rejects_bytes));
        if let (Some(path), Some(committed)) = (&args.near_misses, m.near_bytes) {
            outputs.push(("--near-misses", path.as_path(), committed));
        }
        let problems = crate::outputs::check_resumable(&outputs);
        if !problems.is_empty() {
            return Err(CmdError::Failed(problems.join("\n")));
        }
    }
    let mut checkpointing = |loaded: Option<(Manifest, RouterState, Vec<Vec<u8>>)>| {
        state.take().map(|((store, settings), _)| Checkpointing {
            store,
            settings,
            resume: loaded.map(|(manifest, router, shards)| Resumed { manifest, router, shards, carry: None }),
        })
    };
    let bad = |id: u64, e: DecodeError| CmdError::Failed(format!("checkpoint {id}: bad source snapshot: {e}"));

    if native {
        // A damaged or truncated tape is a bad input file (exit 2).
        let tape = Tape::open_streaming(&args.tape).map_err(|e| CmdError::Usage(e.to_string()))?;
        let (feed, names) = NativeFeed::new(tape, groups);
        let feed = feed.verify_lifecycle(args.verify_lifecycle);
        inputs.lifecycle_rechecked = Some(feed.rechecks_lifecycle());
        // A native tape's bad records (field rules, event time) are kept
        // aside as a CSV tape's are; a failed run without --state leaves no
        // rejects file.
        let mut rejects_made = Outputs::remove_on_failure(Vec::new());
        let mut resume = None;
        let feed = match loaded {
            Some(loaded) => {
                let id = loaded.manifest.id;
                let mut r = Reader::new(&loaded.source);
                let rejects = RejectLog::resume(&rejects_path, loaded.manifest.rejects_bytes)
                    .map_err(|e| CmdError::Failed(e.to_string()))?;
                let mut feed = feed.with_checks(limits.time, rejects);
                feed.resume(&mut r).map_err(|e| bad(id, e))?;
                let router =
                    RouterState::decode(&mut r).and_then(|s| r.finish().map(|()| s)).map_err(|e| bad(id, e))?;
                resume = Some((loaded.manifest, router, loaded.shards));
                feed
            }
            None => {
                let rejects = RejectLog::create(&rejects_path).map_err(|e| CmdError::Failed(e.to_string()))?;
                if args.state.is_none() {
                    rejects_made.add(&rejects_path);
                }
                feed.with_checks(limits.time, rejects)
            }
        };
        let rejected_at_import = feed.rejected_at_import();
        let progress = ProgressLine::for_command("replay", "records", Some(feed.len() as u64), !args.quiet);
        let show = |p: &topology::Progress| progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed));
        let mut summary = match &selection {
            Some(plan) => {
                let indexed = feed.indexed();
                let feed = plan.wrap(feed.with_block_skip(plan.block_skip()), &names);
                let summary = topology::run_with(feed, names, &cfg, None, show);
                inputs.filter = Some(plan.describe_run(indexed));
                summary
            }
            None => topology::run_with(feed, names, &cfg, checkpointing(resume), show),
        }
        .map_err(|e| run_error(args, e))?;
        rejects_made.keep();
        progress.clear();
        summary.rejected_at_import = rejected_at_import;
        Ok((summary, inputs))
    } else {
        let mut file = super::open_tape(&args.tape)
            .map_err(|e| CmdError::Usage(format!("{}: cannot open tape: {e}", args.tape.display())))?;
        // A failed run without --state leaves no rejects file (the sink does
        // the same for the alerts and late files).
        let mut rejects_made = Outputs::remove_on_failure(Vec::new());
        let (feed, names, resume) = match loaded {
            None => {
                let validator = Validator::new(limits, groups.clone());
                let names = super::validator_names(&validator, groups);
                // Header first: a file that is no tape fails before any output
                // exists, as bad input (exit 2).
                let feed = CsvFeed::new(file, &args.tape, validator, RejectLog::discard())
                    .map_err(|e| CmdError::Usage(e.to_string()))?;
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
                let validator =
                    Validator::restore(limits, groups.clone(), &mut r, &loaded.accounts, &loaded.instruments)
                        .map_err(|e| bad(id, e))?;
                let router =
                    RouterState::decode(&mut r).and_then(|s| r.finish().map(|()| s)).map_err(|e| bad(id, e))?;
                let tape_len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if tape_len < offset {
                    return Err(CmdError::Usage(format!(
                        "{}: the tape has {tape_len} bytes, but checkpoint {id} was taken at byte {offset}",
                        args.tape.display()
                    )));
                }
                // The bytes before the position must be the ones the
                // checkpoint consumed: an edited tape would resume mid-line.
                let prefix =
                    PrefixHasher::open(&args.tape).and_then(|mut p| p.hash_to(offset)).map_err(CmdError::Failed)?;
                if prefix != loaded.manifest.tape_prefix_hash {
                    return Err(CmdError::Usage(format!(
                        "{}: the tape's first {offset} bytes are not the ones checkpoint {id} in {} was taken on \
                         (edited or replaced since): refusing to resume; replay it without --state, or with a new state directory",
                        args.tape.display(),
                        args.state.as_deref().unwrap_or(Path::new("")).display()
                    )));
                }
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
                    .map_err(|e| CmdError::Failed(format!("{}: cannot seek: {e}", args.tape.display())))?;
                let names = super::validator_names(&validator, groups);
                let rejects = RejectLog::resume(&rejects_path, loaded.manifest.rejects_bytes)
                    .map_err(|e| CmdError::Failed(e.to_string()))?;
                let feed = CsvFeed::resume(file, &args.tape, validator, rejects, (offset, line_no));
                (feed, names, Some((loaded.manifest, router, loaded.shards)))
            }
        };
        let progress = ProgressLine::for_command("replay", "records", None, !args.quiet);
        let show = |p: &topology::Progress| progress.show(p.records_read.load(std::sync::atomic::Ordering::Relaxed));
        let summary = match &selection {
            Some(plan) => {
                let feed = plan.wrap(feed, &names);
                let summary = topology::run_with(feed, names, &cfg, None, show);
                inputs.filter = Some(plan.describe_run(false));
                summary
            }
            None => topology::run_with(feed, names, &cfg, checkpointing(resume), show),
        }
        .map_err(|e| run_error(args, e))?;
        rejects_made.keep();
        progress.clear();
        Ok((summary, inputs))
    }
}

/// The exit code of a failed pipeline: damage found in the tape part-way
/// (the feed's errors name the tape first) is bad input, 2; a closed stdout
/// under `--alerts -` ends quietly; anything else is a failed run, 1.
fn run_error(args: &ReplayArgs, message: String) -> CmdError {
    if crate::outputs::is_stdout(&args.alerts) && message.contains("Broken pipe") {
        return CmdError::BrokenPipe;
    }
    let tape = format!("{}: ", args.tape.display());
    if message.starts_with(&tape) && (message.contains("corrupt") || message.contains("truncated")) {
        CmdError::Usage(message)
    } else {
        CmdError::Failed(message)
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
    warn_orphan_snapshots(dir, loaded.as_ref().map(|l| l.manifest.id));
    let settings = Settings {
        dir: dir.to_path_buf(),
        every_records: args.checkpoint_every_records.unwrap_or(1_000_000),
        interval_ns: args.checkpoint_interval_ms.unwrap_or(1000).saturating_mul(1_000_000),
        keep: args.checkpoint_keep.unwrap_or(3),
        abort_after: args.exit_after_checkpoint,
        exact: args.checkpoint_exact || args.exit_after_checkpoint.is_some(),
        identity,
        rules: cfg.rules.versions_by_id(),
        tape: (!native).then(|| args.tape.clone()),
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

/// Says on stderr when shard snapshot directories outlive their manifests.
/// One newer than the checkpoint resumed from is a checkpoint a crash cut
/// short; several mean the database lost checkpoints it had made durable:
/// its write-ahead log was deleted or damaged, and RocksDB opens without it
/// silently, so the run would otherwise restart from further back unsaid.
fn warn_orphan_snapshots(dir: &Path, resumed: Option<u64>) {
    let Ok(entries) = std::fs::read_dir(dir.join("snap")) else { return };
    let mut orphans: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&id| resumed.is_none_or(|r| id > r))
        .collect();
    orphans.sort_unstable();
    let from = match resumed {
        Some(id) => format!("resuming from checkpoint {id}"),
        None => "starting from the beginning of the tape".to_string(),
    };
    match orphans.as_slice() {
        [] => {}
        [id] => eprintln!(
            "tapewatch: {}: checkpoint {id} was not completed (its shard files exist, its manifest does not); {from}",
            dir.display()
        ),
        ids => eprintln!(
            "tapewatch: warning: {}: checkpoints {ids:?} have shard files but no manifest in the state database: \
             its write-ahead log (db/*.log) was lost or damaged; {from}",
            dir.display()
        ),
    }
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
