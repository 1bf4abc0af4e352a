//! The `tapewatch` binary: parse the command line, run a command, own the exit code.

use clap::Parser;
use std::process::ExitCode;
use tapewatch::cmd::{self, Cli, CmdError};

fn main() -> ExitCode {
    fixed_mmap_threshold();
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

/// glibc malloc: blocks of 256 KiB and more each get their own mapping,
/// returned to the system when freed. Glibc's default threshold rises to
/// the largest block freed, so RocksDB's copies of each checkpoint's
/// source snapshot (a write batch, a memtable block: hundreds of KB a
/// second, growing through the day) were carved from the checkpoint
/// thread's arena, which fragmented and kept growing: a daemon's RSS
/// climbed 1 MiB a minute (docs/PERFORMANCE.md, the soak). Call before any
/// thread starts; `MALLOC_MMAP_THRESHOLD_` set in the environment wins.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no thread runs yet.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    }
}
