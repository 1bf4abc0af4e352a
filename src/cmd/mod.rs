//! The subcommands, one file each: each builds its part of the pipeline
//! from validated options and runs it. Flags are parsed in two layers: clap
//! structs hold the raw values, each command validates them into a config
//! and reports every problem at once.

pub mod bench;
pub mod book;
pub mod checkpoint;
pub mod generate;
pub mod import;
pub mod replay;
pub mod rules;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "tapewatch", version, about = "Real-time trade surveillance: replay tapes, detect abuse")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay a tape (FEED.md CSV or native) through the detection pipeline.
    Replay(Box<replay::ReplayArgs>),
    /// Convert a FEED.md CSV tape into a native binary tape.
    Import(import::ImportArgs),
    /// Write a synthetic trading day as a FEED.md tape, with its truth and accounts files.
    #[command(name = "gen")]
    Generate(generate::GenArgs),
    /// Play a scenario file against the live pipeline and measure latency, throughput and detection.
    Bench(bench::BenchArgs),
    /// Inspect the checkpoints in a state directory (`replay --state DIR`).
    Checkpoint(checkpoint::CheckpointArgs),
    /// Print one instrument's order book as it stood at an event time.
    Book(book::BookArgs),
    /// Check a rules file, or show the effective rules with defaults filled in.
    Rules(rules::RulesArgs),
}

#[derive(Debug)]
pub enum CmdError {
    /// Bad flags, files or config: the operator must fix something (exit 2).
    Usage(String),
    /// The run itself failed (exit 1).
    Failed(String),
}

pub fn run(cli: Cli) -> Result<(), CmdError> {
    match cli.command {
        Command::Replay(args) => replay::run(*args),
        Command::Checkpoint(args) => checkpoint::run(args),
        Command::Import(args) => import::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Book(args) => book::run(args),
        Command::Rules(args) => rules::run(args),
    }
}

/// `dir/stem.suffix` for a path `dir/stem.ext`.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}"))
}

/// Whether a file starts with the native tape's magic.
pub fn is_native_tape(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path)?;
    let n = file.read(&mut magic)?;
    Ok(n == 8 && magic == crate::ingest::native::MAGIC)
}

/// A one-line progress display on stderr, only when stderr is a terminal.
pub struct ProgressLine {
    enabled: bool,
    total: Option<u64>,
    started: std::time::Instant,
}

impl ProgressLine {
    pub fn new(total: Option<u64>) -> ProgressLine {
        use std::io::IsTerminal;
        ProgressLine { enabled: std::io::stderr().is_terminal(), total, started: std::time::Instant::now() }
    }

    pub fn show(&self, done: u64) {
        if !self.enabled {
            return;
        }
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9) / 1e6;
        match self.total {
            Some(total) if total > 0 => {
                let filled = (done * 30 / total).min(30) as usize;
                eprint!(
                    "\r[{}{}] {:>5.1}% {done}/{total} records, {rate:.2} M/s ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    done as f64 * 100.0 / total as f64
                );
            }
            _ => eprint!("\r{done} records, {rate:.2} M/s "),
        }
    }

    pub fn clear(&self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(79));
        }
    }
}
