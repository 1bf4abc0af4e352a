//! `tapewatch gen`: a synthetic day as a FEED.md tape plus its truth and
//! accounts files: the classic Shenzhen day, or a scenario file's day.

use super::{CmdError, ProgressLine, check_outputs};
use crate::generator::{GenConfig, generate, side_paths};
use crate::outputs::Plan;
use crate::scenario::Scenario;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The tape to write; `<stem>.truth.csv`, `<stem>.accounts.csv` and `<stem>.instruments.csv` go beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Accounts in the market.
    #[arg(long)]
    pub accounts: Option<u32>,
    /// Instruments in the market.
    #[arg(long)]
    pub instruments: Option<u32>,
    /// Percentage of records delivered late.
    #[arg(long)]
    pub late_pct: Option<f64>,
    /// A scenario file (scenarios/*.toml): its market, rate profile and planted abuse decide the day.
    #[arg(long, conflicts_with_all = ["events", "seed", "accounts", "instruments", "late_pct"])]
    pub scenario: Option<PathBuf>,
    /// With --scenario: multiply every phase's length by this (0.01 = a hundredth of the day).
    #[arg(long, requires = "scenario")]
    pub scale: Option<f64>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// The generator config of a scenario file at a scale, or every problem.
pub fn scenario_config(path: &std::path::Path, scale: Option<f64>) -> Result<(Scenario, GenConfig), CmdError> {
    let mut problems = Vec::new();
    let scenario = Scenario::load(path).map_err(|e| problems.push(e)).ok();
    let scale = scale.unwrap_or(1.0);
    if !(scale > 0.0 && scale <= 100.0) {
        problems.push(format!("--scale {scale}: must be above 0 and at most 100"));
    }
    match scenario {
        Some(scenario) if problems.is_empty() => {
            let scenario = scenario.scaled(scale);
            let cfg = scenario.gen_config();
            Ok((scenario, cfg))
        }
        _ => Err(CmdError::Usage(problems.join("\n"))),
    }
}

pub fn run(args: GenArgs) -> Result<(), CmdError> {
    let cfg = match &args.scenario {
        Some(path) => scenario_config(path, args.scale)?.1,
        None => classic_config(&args)?,
    };
    let paths = side_paths(&args.out).map_err(|e| CmdError::Usage(e.to_string()))?;
    let mut plan = Plan::default();
    if let Some(scenario) = &args.scenario {
        plan.input("scenario", scenario);
    }
    plan.output("--out", &paths.tape)
        .output("truth file", &paths.truth)
        .output("accounts file", &paths.accounts)
        .output("instruments file", &paths.instruments);
    if crate::outputs::is_special(&args.out) {
        return Err(CmdError::Usage(format!(
            "--out {}: gen writes its truth, accounts and instruments files beside the tape: give a path in a directory",
            args.out.display()
        )));
    }
    check_outputs(&plan)?;
    let started = Instant::now();
    // The generator writes through a buffer of its own; progress follows the
    // tape's size from beside it, so the generator needs no hook.
    let finished = std::sync::atomic::AtomicBool::new(false);
    let summary = std::thread::scope(|scope| {
        scope.spawn(|| {
            let progress = ProgressLine::for_command("gen", "bytes", None, !args.quiet);
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Ok(meta) = std::fs::metadata(&paths.tape) {
                    progress.show(meta.len());
                }
            }
            progress.clear();
        });
        let summary = generate(&cfg, &args.out);
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        summary
    })
    .map_err(|e| CmdError::Failed(format!("{}: cannot write: {e}", args.out.display())))?;
    super::print(&format!(
        "wrote       {} records to {} in {:.2} s ({} planted actors in {}; groups in {})\n",
        summary.records,
        summary.paths.tape.display(),
        started.elapsed().as_secs_f64(),
        summary.planted.len(),
        summary.paths.truth.display(),
        summary.paths.accounts.display()
    ))
}

fn classic_config(args: &GenArgs) -> Result<GenConfig, CmdError> {
    let mut cfg = GenConfig::new(args.events, args.seed);
    let mut problems = Vec::new();
    if let Some(accounts) = args.accounts {
        if accounts < 100 {
            problems.push(format!("--accounts {accounts}: at least 100"));
        }
        cfg.accounts = accounts;
    }
    if let Some(instruments) = args.instruments {
        if instruments == 0 || instruments > 999_999 {
            problems.push(format!("--instruments {instruments}: between 1 and 999999"));
        }
        cfg.instruments = instruments;
    }
    if let Some(late_pct) = args.late_pct {
        if !(0.0..=50.0).contains(&late_pct) {
            problems.push(format!("--late-pct {late_pct}: between 0 and 50"));
        }
        cfg.late_pct = late_pct;
    }
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    Ok(cfg)
}
