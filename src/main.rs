//! The `tapewatch` binary: parse the command line, run a command, own the exit code.

use clap::Parser;
use std::process::ExitCode;
use tapewatch::cmd::{self, Cli, CmdError};

fn main() -> ExitCode {
    // Before any thread starts (see the function).
    tapewatch::checkpoint::writer::fix_mmap_threshold();
    let cli = Cli::parse();
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CmdError::Usage(message)) => {
            eprintln!("tapewatch: {message}");
            ExitCode::from(2)
        }
        Err(CmdError::Failed(message)) => {
            eprintln!("tapewatch: {message}");
            ExitCode::from(1)
        }
        Err(CmdError::BrokenPipe) => ExitCode::SUCCESS,
    }
}
