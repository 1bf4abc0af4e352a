//! `tapewatch slice`: the records of a tape (native or CSV) that a filter
//! selects, in FEED.md form with its header: an excerpt to hand to another
//! analyst or attach to a case. Written whole or not at all, never over an
//! input.

use super::CmdError;
use crate::investigate::filter::FilterArgs;
use crate::investigate::filter::Matcher;
use crate::investigate::walk::{BlockPlan, Source, WalkStats};
use crate::symbols::Groups;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct SliceArgs {
    /// The tape: a FEED.md CSV file or a native tape.
    pub tape: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The excerpt (FEED.md CSV); `-`: stdout.
    #[arg(long)]
    pub out: PathBuf,
    /// accounts.csv, for --group. Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// No summary line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: SliceArgs) -> Result<(), CmdError> {
    let mut problems = Vec::new();
    let filter = args.filter.validate(&mut problems);
    let groups = load_groups(args.accounts.as_deref(), &args.tape, &mut problems);
    let mut plan = crate::outputs::Plan::default();
    plan.input("tape", &args.tape);
    if let Some(path) = &args.accounts {
        plan.input("accounts file", path);
    }
    plan.output("--out", &args.out);
    problems.extend(plan.check());
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let groups = Arc::new(groups.unwrap_or_default());
    let source = Source::open(&args.tape, groups.clone())?;
    let (mut matcher, block_plan) = crate::investigate::resolve(&source, filter, groups)?;
    let mut outcome = None;
    crate::investigate::write_atomically(&args.out, |out| {
        outcome = Some(write_selected(&source, &mut matcher, &block_plan, out)?);
        Ok(())
    })?;
    if let Some((written, stats)) = outcome
        && !args.quiet
    {
        eprintln!("tapewatch: slice: {written} records to {} ({})", args.out.display(), stats.describe());
    }
    Ok(())
}

/// accounts.csv from the flag, else beside the tape when present.
pub fn load_groups(path: Option<&Path>, tape: &Path, problems: &mut Vec<String>) -> Option<Groups> {
    let path = super::reference_path(path, tape, ".accounts.csv")?;
    Groups::load(&path).map_err(|e| problems.push(e)).ok()
}

/// Writes the header and every selected record; returns how many.
pub fn write_selected(
    source: &Source,
    matcher: &mut Matcher,
    plan: &BlockPlan,
    out: &mut dyn std::io::Write,
) -> Result<(u64, WalkStats), CmdError> {
    let mut line = Vec::with_capacity(1 << 16);
    line.extend_from_slice(crate::ingest::csv::HEADER.as_bytes());
    line.push(b'\n');
    let mut written = 0u64;
    let mut error = None;
    let stats = source.walk(plan, &mut |_| {}, |event, names| {
        if matcher.range().is_none() {
            matcher.start(event.ts_ns);
        }
        if matcher.selects(event, &names.instruments, &names.accounts) {
            crate::sink::write_feed_line(&mut line, event, names);
            written += 1;
            if line.len() >= 1 << 16 {
                if let Err(e) = out.write_all(&line) {
                    error = Some(e);
                    return ControlFlow::Break(());
                }
                line.clear();
            }
        }
        ControlFlow::Continue(())
    })?;
    let flushed = match error {
        Some(e) => Err(e),
        None => out.write_all(&line),
    };
    flushed.map_err(|e| super::stdout_error(&e))?;
    Ok((written, stats))
}
