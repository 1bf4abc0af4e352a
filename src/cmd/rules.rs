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
    Check {
        file: PathBuf,
        /// instruments.csv: check the tier tables against its `tier` column
        /// (a tier no instrument is in is a problem).
        #[arg(long)]
        instruments: Option<PathBuf>,
    },
    /// Print the effective rules (defaults filled in) as TOML: of FILE, or the defaults.
    Show { file: Option<PathBuf> },
}

pub fn run(args: RulesArgs) -> Result<(), CmdError> {
    match args.action {
        RulesAction::Check { file, instruments } => {
            let rules = Rules::load(&file).map_err(CmdError::Usage)?;
            if let Some(path) = instruments {
                let instruments = crate::instruments::Instruments::load(&path).map_err(CmdError::Usage)?;
                let problems = rules.check_tiers(&instruments);
                if !problems.is_empty() {
                    let listed: Vec<String> = problems.iter().map(|p| format!("{}: {p}", file.display())).collect();
                    return Err(CmdError::Usage(listed.join("\n")));
                }
            }
            let on = rules.versions();
            println!(
                "{}: ok, {} rules on: {}{}",
                file.display(),
                on.len(),
                on.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
                if rules.tiers.names.is_empty() {
                    String::new()
                } else {
                    format!("; tiers {}", rules.tiers.names.join(", "))
                }
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
