//! `tapewatch cat`: a native tape's records as FEED.md CSV on stdout,
//! header first; with filters, only the selected records. A clean tape
//! prints byte for byte the CSV it was imported from.

use super::CmdError;
use crate::investigate::filter::FilterArgs;
use crate::investigate::walk::Source;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct CatArgs {
    /// The native tape (from `tapewatch import`).
    pub tape: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// accounts.csv, for --group. Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
}

pub fn run(args: CatArgs) -> Result<(), CmdError> {
    let mut problems = Vec::new();
    let filter = args.filter.validate(&mut problems);
    let groups = super::slice::load_groups(args.accounts.as_deref(), &args.tape, &mut problems);
    if !problems.is_empty() {
        return Err(CmdError::Usage(problems.join("\n")));
    }
    let groups = Arc::new(groups.unwrap_or_default());
    let source = Source::open(&args.tape, groups.clone())?;
    if !source.is_native() {
        return Err(CmdError::Usage(format!(
            "{}: not a native tape (cat prints native tapes; `tapewatch slice` cuts a CSV tape)",
            args.tape.display()
        )));
    }
    let (mut matcher, plan) = crate::investigate::resolve(&source, filter, groups)?;
    crate::investigate::write_atomically(std::path::Path::new("-"), |out| {
        super::slice::write_selected(&source, &mut matcher, &plan, out).map(|_| ())
    })
}
