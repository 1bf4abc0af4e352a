//! `tapewatch gen`: a synthetic day as a FEED.md tape plus its truth and accounts files.

use super::CmdError;
use crate::generator::{GenConfig, generate};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The tape to write; `<stem>.truth.csv` and `<stem>.accounts.csv` go beside it.
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
}

pub fn run(args: GenArgs) -> Result<(), CmdError> {
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
    let started = Instant::now();
    let summary = generate(&cfg, &args.out)
        .map_err(|e| CmdError::Failed(format!("{}: cannot write: {e}", args.out.display())))?;
    println!(
        "wrote       {} records to {} in {:.2} s ({} planted actors in {}; groups in {})",
        summary.records,
        summary.paths.tape.display(),
        started.elapsed().as_secs_f64(),
        summary.planted.len(),
        summary.paths.truth.display(),
        summary.paths.accounts.display()
    );
    Ok(())
}
