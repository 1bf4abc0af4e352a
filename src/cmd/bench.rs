//! `tapewatch bench SCENARIO`: plays a scenario file against the live
//! pipeline at its scheduled pace and reports latency (coordinated omission
//! corrected), throughput per phase, back-pressure, memory and detection
//! against the planted truth. Exits 1 when the scenario's expectations are
//! not met, so scenarios double as tests.

use super::CmdError;
use super::replay::pin_plan;
use crate::bench::{self, PlayOptions, report};
use crate::config::{MS, Rules};
use crate::scenario::Scenario;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The scenario file (scenarios/*.toml).
    pub scenario: PathBuf,
    /// Multiply every phase's length by this (0.05 = a twentieth of the day); rates stay.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the ingest-to-alert HdrHistogram percentile distribution here.
    #[arg(long)]
    pub hist: Option<PathBuf>,
    /// Draw latency and throughput over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also search for the highest steady rate with p99 ingest-to-alert under --p99-bound-ms and nothing lost.
    #[arg(long)]
    pub find_max: bool,
    #[arg(long, default_value_t = 100.0)]
    pub p99_bound_ms: f64,
    /// Length of each --find-max trial.
    #[arg(long, default_value_t = 2.0)]
    pub trial_secs: f64,
    /// Shard threads (partitioned by instrument).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Core pinning for the source and shards: `none`, `auto` or a list (source first). The feeder and sink float.
    #[arg(long, default_value = "none")]
    pub cores: String,
    /// Where the alerts, late and rejects files go. Default: bench-out/<scenario name>.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Override the scenario's pipeline.idle_after (ms): the quiet time after which event time follows the wall clock.
    #[arg(long)]
    pub idle_after_ms: Option<f64>,
    /// Print only the report, no progress.
    #[arg(long)]
    pub quiet: bool,
}

/// What a bench run produced, for callers that check it (tests).
pub struct BenchOutcome {
    pub text: String,
    pub json: serde_json::Value,
    pub unmet: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<(), CmdError> {
    let outcome = bench(&args)?;
    super::print(&outcome.text)?;
    if outcome.unmet.is_empty() {
        Ok(())
    } else {
        Err(CmdError::Failed(format!(
            "{}: expectations not met: {}",
            args.scenario.display(),
            outcome.unmet.join("; ")
        )))
    }
}

/// Validates the options (all problems at once), prepares the day, plays it.
pub fn bench(args: &BenchArgs) -> Result<BenchOutcome, CmdError> {
    let mut problems = Vec::new();
    let scenario = Scenario::load(&args.scenario).map_err(|e| problems.push(e)).ok();
    if !(args.scale > 0.0 && args.scale <= 100.0) {
        problems.push(format!("--scale {}: must be above 0 and at most 100", args.scale));
    }
    if !(1..=256).contains(&args.shards) {
        problems.push(format!("--shards {}: must be between 1 and 256", args.shards));
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The feeder is a busy unpinned thread beside the pipeline.
    let cores = pin_plan(&args.cores, args.shards, 1, available).unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });
    if args.p99_bound_ms.is_nan() || args.p99_bound_ms <= 0.0 {
        problems.push(format!("--p99-bound-ms {}: must be positive", args.p99_bound_ms));
    }
    if !(args.trial_secs > 0.0 && args.trial_secs <= 60.0) {
        problems.push(format!("--trial-secs {}: must be above 0 and at most 60", args.trial_secs));
    }
    if let Some(ms) = args.idle_after_ms
        && !(0.0..=60_000.0).contains(&ms)
    {
        problems.push(format!("--idle-after-ms {ms}: between 0 and 60000"));
    }
    // Report paths are checked now, not after a run of minutes.
    let mut plan = crate::outputs::Plan::default();
    plan.input("scenario", &args.scenario);
    for (flag, path) in [("--json", &args.json), ("--hist", &args.hist), ("--plot", &args.plot)] {
        if let Some(path) = path {
            plan.output(flag, path);
        }
    }
    problems.extend(plan.check());
    let Some(scenario) = scenario.filter(|_| problems.is_empty()) else {
        return Err(CmdError::Usage(problems.join("\n")));
    };
    let scenario = scenario.scaled_within_limits(args.scale).map_err(CmdError::Usage)?;
    // The scenario's rules file (e.g. turning on the rules off by default), beside it.
    let rules = match &scenario.rules {
        Some(file) => Rules::load(&args.scenario.parent().unwrap_or(std::path::Path::new(".")).join(file))
            .map_err(CmdError::Usage)?,
        None => Rules::default(),
    };
    let out_dir = args.out_dir.clone().unwrap_or_else(|| PathBuf::from("bench-out").join(&scenario.name));
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| CmdError::Usage(format!("{}: cannot create: {e}", out_dir.display())))?;

    let say = |message: String| {
        if !args.quiet {
            eprintln!("{message}");
        }
    };
    let prepared = bench::prepare(&scenario, &out_dir).map_err(CmdError::Failed)?;
    // Peak memory should describe the run, not the generator: reset the
    // kernel's high-water mark (Linux; elsewhere the peak includes it).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    say(format!(
        "prepared    {} records in {:.2} s; playing {:.1} s of schedule",
        prepared.records.len(),
        prepared.prepare_secs,
        prepared.records.last().map_or(0, |w| w.due_ns) as f64 / 1e9
    ));
    let idle_after_ns = args.idle_after_ms.map_or(scenario.idle_after_ns as u64, |ms| (ms * MS as f64) as u64);
    let opts = PlayOptions {
        shards: args.shards,
        cores: cores.clone(),
        out_dir: out_dir.clone(),
        idle_after_ns: Some(idle_after_ns),
        rules,
    };
    let started_at = {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let mut text = Vec::new();
        crate::alert::write_iso_time(&mut text, now);
        String::from_utf8_lossy(&text).into_owned()
    };
    let schedule_ms = prepared.records.last().map_or(0, |w| w.due_ns) / 1_000_000;
    let finished = std::sync::atomic::AtomicBool::new(false);
    let trial = std::thread::scope(|scope| {
        scope.spawn(|| {
            let progress = super::ProgressLine::for_command("bench", "ms of schedule", Some(schedule_ms), !args.quiet);
            let started = std::time::Instant::now();
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                progress.show(started.elapsed().as_millis() as u64);
            }
            progress.clear();
        });
        let trial = bench::play(&prepared, &opts);
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        trial
    })
    .map_err(CmdError::Failed)?;
    let scores = bench::score(&prepared.truth, &trial.alerts);
    let (missed, unexpected) = bench::misses(&prepared.truth, &trial.alerts);
    let unmet = bench::check_expectations(&scenario, &trial, &scores);
    let (watermark_floor, pipeline_part) = bench::latency_split(&prepared, &trial, idle_after_ns);
    let phases = bench::per_phase(&prepared, &trial);
    let find_max = if args.find_max {
        let bound_ns = (args.p99_bound_ms * MS as f64) as u64;
        let mut steady_opts = opts.clone();
        steady_opts.out_dir = out_dir.join("find-max");
        let (max, steps) = bench::find_max(&prepared, &steady_opts, bound_ns, args.trial_secs, 4, |step| {
            say(format!(
                "find-max    {:.0}/s: p99 {} ns over {} alerts, {} lost: {}",
                step.rate_per_s,
                step.p99_ns,
                step.alerts,
                step.lost,
                if step.passed { "pass" } else { "fail" }
            ))
        })
        .map_err(CmdError::Failed)?;
        Some((max, steps, bound_ns))
    } else {
        None
    };
    let overall = bench::overall(&scores);
    let report = report::Report {
        prepared: &prepared,
        trial: &trial,
        scale: args.scale,
        shards: args.shards,
        pinned: !cores.is_empty(),
        idle_after_ns,
        machine: report::Machine::detect(),
        command_line: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
        started_at,
        missed,
        unexpected,
        phases,
        scores,
        overall,
        watermark_floor,
        pipeline_part,
        peak_rss: bench::memory().0,
        unmet: unmet.clone(),
        find_max,
    };
    let text = report.text();
    let json = report.json();
    let write = |path: &PathBuf, body: &str| super::write_output(path, body.as_bytes());
    if let Some(path) = &args.json {
        write(path, &format!("{}\n", serde_json::to_string_pretty(&json).expect("JSON of plain values")))?;
    }
    if let Some(path) = &args.hist {
        write(path, &report::percentile_distribution(&trial.summary.ingest_to_alert))?;
    }
    if let Some(path) = &args.plot {
        write(path, &report::svg(&report))?;
    }
    Ok(BenchOutcome { text, json, unmet })
}
