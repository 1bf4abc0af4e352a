//! `tapewatch rules check FILE` (validate a rules file: every problem at
//! once, with its line; exit 2 on any) and `tapewatch rules show [FILE]`
//! (the effective rules, defaults filled in, as TOML).

use super::CmdError;
use crate::config::Rules;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub action: RulesAction,
}

#[derive(Subcommand, Debug)]
pub enum RulesAction {
    /// Validate a rules file: every problem at once, with its line (exit 2 on any).
    Check { file: PathBuf },
    /// Print the effective rules (defaults filled in) as TOML: of FILE, or the defaults.
    Show { file: Option<PathBuf> },
}

pub fn run(args: RulesArgs) -> Result<(), CmdError> {
    match args.action {
        RulesAction::Check { file } => {
            let rules = Rules::load(&file).map_err(CmdError::Usage)?;
            let on = rules.versions();
            println!(
                "{}: ok, {} rules on: {}",
                file.display(),
                on.len(),
                on.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        RulesAction::Show { file } => {
            let rules = match file {
                Some(file) => Rules::load(&file).map_err(CmdError::Usage)?,
                None => Rules::default(),
            };
            print!("{}", rules.show());
            Ok(())
        }
    }
}
