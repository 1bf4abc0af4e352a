//! The subcommands, one file each: each builds its part of the pipeline
//! from validated options and runs it. Flags are parsed in two layers: clap
//! structs hold the raw values, each command validates them into a config
//! and reports every problem at once.

pub mod bench;
pub mod book;
pub mod cat;
pub mod checkpoint;
pub mod export;
pub mod feed;
pub mod generate;
pub mod import;
pub mod investigate;
pub mod replay;
pub mod rules;
pub mod serve;
pub mod slice;

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
    /// Replay a tape and write the day's layers (records, orders, metrics, alerts) as Parquet files.
    Export(export::ExportArgs),
    /// Print a native tape's records (or those a filter selects) as FEED.md CSV.
    Cat(cat::CatArgs),
    /// Write the records of a tape that a filter selects as a FEED.md CSV excerpt.
    Slice(slice::SliceArgs),
    /// Write a self-contained HTML report on an alert, or on a group's trading in one instrument.
    Investigate(Box<investigate::InvestigateArgs>),
    /// Run the surveillance daemon on a live TCP feed (docs/WIRE.md, ops/RUNBOOK.md).
    Serve(Box<serve::ServeArgs>),
    /// Send a tape to a daemon's feed port, resuming where the daemon stands.
    Feed(feed::FeedArgs),
}

/// The reference data a command reads a tape with: one declaration for
/// `book` and (inside `ReferenceArgs`) for the commands that also take rules.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ReferenceFiles {
    /// accounts.csv (account,group). Default: `<tape stem>.accounts.csv` beside the tape, if present.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// instruments.csv (prev_close, price limits, tick; FEED.md). Default:
    /// `<tape stem>.instruments.csv` beside the tape, if present.
    #[arg(long)]
    pub instruments: Option<PathBuf>,
}

/// The reference data and the rules a command reads a tape with: one
/// declaration for `replay`, `export` and `investigate` (`serve` takes them
/// as overrides of its config file), so their flags cannot drift apart.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ReferenceArgs {
    #[command(flatten)]
    pub files: ReferenceFiles,
    /// Rule thresholds (TOML); defaults apply to anything not set.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// What `ReferenceFiles::load` and `ReferenceArgs::load` read, and from
/// where: a file that is missing or bad leaves its default here and its
/// problem in the caller's list.
#[derive(Default)]
pub struct ReferenceData {
    /// accounts.csv, given or found beside the tape.
    pub accounts_path: Option<PathBuf>,
    pub groups: crate::symbols::Groups,
    /// instruments.csv, given or found beside the tape.
    pub instruments_path: Option<PathBuf>,
    pub instruments: crate::instruments::Instruments,
    pub rules: crate::config::Rules,
}

/// The reference file a flag names, else `<tape stem><suffix>` beside the
/// tape when it exists. A tape on stdin (`-`, `/dev/stdin`) has no
/// directory: its reference files must be named.
pub fn reference_path(given: Option<&Path>, tape: &Path, suffix: &str) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| Some(beside(tape, suffix)).filter(|p| !crate::outputs::is_stdio(tape) && p.exists()))
}

impl ReferenceFiles {
    pub fn accounts_path(&self, tape: &Path) -> Option<PathBuf> {
        reference_path(self.accounts.as_deref(), tape, ".accounts.csv")
    }

    pub fn instruments_path(&self, tape: &Path) -> Option<PathBuf> {
        reference_path(self.instruments.as_deref(), tape, ".instruments.csv")
    }

    /// Loads accounts.csv and instruments.csv (given, or beside the tape),
    /// every problem pushed onto `problems`, named by file and line.
    pub fn load(&self, tape: &Path, problems: &mut Vec<String>) -> ReferenceData {
        let accounts_path = self.accounts_path(tape);
        let groups = accounts_path.as_deref().map_or_else(Default::default, |path| {
            crate::symbols::Groups::load(path).unwrap_or_else(|e| {
                problems.push(e);
                Default::default()
            })
        });
        let instruments_path = self.instruments_path(tape);
        let instruments = instruments_path.as_deref().map_or_else(Default::default, |path| {
            crate::instruments::Instruments::load(path).unwrap_or_else(|e| {
                problems.push(e);
                Default::default()
            })
        });
        ReferenceData { accounts_path, groups, instruments_path, instruments, rules: Default::default() }
    }
}

impl ReferenceArgs {
    /// `ReferenceFiles::load`, and the rules file (else the defaults).
    pub fn load(&self, tape: &Path, problems: &mut Vec<String>) -> ReferenceData {
        let mut data = self.files.load(tape, problems);
        if let Some(path) = &self.rules {
            data.rules = crate::config::Rules::load(path).unwrap_or_else(|e| {
                problems.push(e);
                Default::default()
            });
        }
        data
    }
}

/// How the pipeline runs a tape: one declaration for `replay` and `export`
/// (which replays the tape with them).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct PipelineArgs {
    /// Shard threads (partitioned by instrument). Default: cores - 1 for a native tape, cores - 2
    /// for CSV (its decoder thread needs a core too), at least 1; one more (every core for a native
    /// tape) when the enabled rules keep the order book or include a heavy one (docs/PERFORMANCE.md).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Core pinning: `auto` (pin when every busy thread gets a core of its own: the source, every
    /// shard, and for CSV the decoder), `none`, or a list `0,2,3` (source first, then one per shard).
    #[arg(long, default_value = "auto")]
    pub cores: String,
    /// How far behind the newest record an event may arrive and still count.
    #[arg(long, default_value_t = 50)]
    pub lateness_ms: u64,
    /// A record this far ahead of the feed's newest event time is held, and rejected if the
    /// records after it are not ahead too (one bad timestamp must not make the rest late).
    /// 0: no bound.
    #[arg(long, default_value_t = 10_000)]
    pub max_future_ms: u64,
}

#[derive(Debug)]
pub enum CmdError {
    /// Bad flags, files or config: the operator must fix something (exit 2).
    Usage(String),
    /// The run itself failed (exit 1).
    Failed(String),
    /// Stdout was closed by its reader (`| head`): stop quietly with exit
    /// 0, as ripgrep does; the reader wanted no more.
    BrokenPipe,
}

/// Writes command output to stdout. A closed pipe becomes
/// `CmdError::BrokenPipe`; any other error (`> /dev/full`) fails the run
/// with a message, never a panic.
pub fn print(text: &str) -> Result<(), CmdError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| stdout_error(&e))
}

pub fn stdout_error(e: &std::io::Error) -> CmdError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CmdError::BrokenPipe
    } else {
        CmdError::Failed(format!("stdout: cannot write: {e}"))
    }
}

/// Hands a command's summary out: the text to stdout (to stderr when stdout
/// carries data: `--alerts -` or `--json -`), and with `--json PATH` the JSON
/// to that file or, for `-`, to stdout.
pub fn emit_summary(
    text: &str,
    json: &serde_json::Value,
    json_path: Option<&Path>,
    stdout_taken: bool,
) -> Result<(), CmdError> {
    let json_text = format!("{}\n", serde_json::to_string_pretty(json).unwrap_or_default());
    // Stderr that cannot be written is no reason to fail a finished run.
    let to_stderr = |text: &str| {
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    };
    match json_path {
        Some(path) if crate::outputs::is_stdio(path) => {
            to_stderr(text);
            print(&json_text)
        }
        Some(path) => {
            write_output(path, json_text.as_bytes())?;
            if stdout_taken {
                to_stderr(text);
                Ok(())
            } else {
                print(text)
            }
        }
        None if stdout_taken => {
            to_stderr(text);
            Ok(())
        }
        None => print(text),
    }
}

/// Writes a whole small output file (a report, a histogram) through
/// `outputs::create`: locked, and written in place when not a regular file.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CmdError> {
    use std::io::Write;
    crate::outputs::create(path)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.flush()))
        .map_err(|e| CmdError::Failed(format!("{}: cannot write: {e}", path.display())))
}

/// Refuses a plan's clashing or unwritable outputs (exit 2), every problem at once.
pub fn check_outputs(plan: &crate::outputs::Plan) -> Result<(), CmdError> {
    let problems = plan.check();
    if problems.is_empty() { Ok(()) } else { Err(CmdError::Usage(problems.join("\n"))) }
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
        Command::Export(args) => export::run(args),
        Command::Cat(args) => cat::run(args),
        Command::Slice(args) => slice::run(args),
        Command::Investigate(args) => investigate::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Feed(args) => feed::run(args),
    }
}

/// `dir/stem.suffix` for a path `dir/stem.ext`.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}"))
}

/// The longest lateness bound (`--lateness-ms`; serve's `lateness_ms` takes the same range).
pub const MAX_LATENESS_MS: u64 = 3_600_000;

/// `--lateness-ms`'s range check: one message for replay, book and investigate.
pub fn check_lateness_ms(lateness_ms: u64, problems: &mut Vec<String>) {
    if lateness_ms > MAX_LATENESS_MS {
        problems.push(format!("--lateness-ms {lateness_ms}: at most one hour ({MAX_LATENESS_MS})"));
    }
}

/// The names a CSV (or live) feed's validator interns, with the groups:
/// what the pipeline's outputs print records with.
pub fn validator_names(
    validator: &crate::ingest::validate::Validator,
    groups: std::sync::Arc<crate::symbols::Groups>,
) -> crate::symbols::Names {
    crate::symbols::Names {
        accounts: validator.accounts.table().clone(),
        instruments: validator.instruments.table().clone(),
        groups,
    }
}

/// A CSV tape as a file; `-` is stdin (a CSV tape streams from it).
pub fn open_tape(path: &Path) -> std::io::Result<std::fs::File> {
    if crate::outputs::is_stdio(path) {
        use std::os::fd::AsFd;
        return std::io::stdin().as_fd().try_clone_to_owned().map(std::fs::File::from);
    }
    std::fs::File::open(path)
}

/// Whether a file starts with the native tape's magic. Only a regular file
/// is sniffed: reading a pipe (`-`, `/dev/stdin`) would consume the bytes
/// the CSV decoder needs, and a native tape must be a file to be mapped.
pub fn is_native_tape(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    if crate::outputs::is_stdio(path) {
        return Ok(false);
    }
    // Look before opening: opening a FIFO to sniff it, then closing it,
    // would hang up on its writer before the real read begins.
    if !std::fs::metadata(path)?.is_file() {
        return Ok(false);
    }
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 8];
    let n = file.read(&mut magic)?;
    Ok(n == 8 && magic == crate::ingest::native::MAGIC)
}

/// Progress of a long command on stderr: a bar redrawn in place on a
/// terminal; elsewhere (a log, CI) a plain line every `LOG_EVERY`. Callers
/// call `show` once per batch or chunk, never per record.
pub struct ProgressLine {
    enabled: bool,
    terminal: bool,
    what: &'static str,
    unit: &'static str,
    total: Option<u64>,
    started: std::time::Instant,
    log_every: std::time::Duration,
    last_log: std::cell::Cell<std::time::Instant>,
    last_draw: std::cell::Cell<std::time::Instant>,
}

const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const DRAW_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl ProgressLine {
    /// `what` names the command in a log line; `unit` is what `done` counts.
    pub fn for_command(what: &'static str, unit: &'static str, total: Option<u64>, enabled: bool) -> ProgressLine {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        ProgressLine {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            what,
            unit,
            total,
            started: now,
            // A test knob, undocumented for users: the log line's period.
            log_every: std::env::var("TAPEWATCH_PROGRESS_EVERY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(LOG_EVERY, std::time::Duration::from_millis),
            last_log: std::cell::Cell::new(now),
            last_draw: std::cell::Cell::new(now),
        }
    }

    /// Writes to stderr ignore errors: progress is never worth a panic.
    pub fn show(&self, done: u64) {
        use std::io::Write;
        if !self.enabled {
            return;
        }
        let now = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        // A count of time (bench's schedule) has no rate worth showing.
        let rate =
            if self.unit.starts_with("ms") { String::new() } else { format!(", {:.2} M/s", done as f64 / secs / 1e6) };
        let unit = self.unit;
        if !self.terminal {
            if now.duration_since(self.last_log.get()) < self.log_every {
                return;
            }
            self.last_log.set(now);
            let share = match self.total {
                Some(total) if total > 0 => format!(" of {total} ({:.1}%)", done as f64 * 100.0 / total as f64),
                _ => String::new(),
            };
            let _ =
                writeln!(std::io::stderr(), "tapewatch: {}: {done}{share} {unit} after {secs:.0} s{rate}", self.what);
            return;
        }
        if now.duration_since(self.last_draw.get()) < DRAW_EVERY {
            return;
        }
        self.last_draw.set(now);
        match self.total {
            Some(total) if total > 0 => {
                let filled = (done.min(total) * 30 / total) as usize;
                let _ = write!(
                    std::io::stderr(),
                    "\r[{}{}] {:>5.1}% {done}/{total} {unit}{rate} ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    done as f64 * 100.0 / total as f64
                );
            }
            _ => {
                let _ = write!(std::io::stderr(), "\r{done} {unit}{rate} ");
            }
        }
    }

    pub fn clear(&self) {
        use std::io::Write;
        if self.enabled && self.terminal {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(79));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[&str]) -> Command {
        Cli::try_parse_from(["tapewatch"].iter().chain(line)).unwrap_or_else(|e| panic!("{line:?}: {e}")).command
    }

    /// The shared flags mean the same in every command that takes them,
    /// with the same defaults.
    #[test]
    fn shared_flags_parse_alike_in_every_command() {
        let reference = ["--accounts", "a.csv", "--instruments", "i.csv", "--rules", "r.toml"];
        let pipeline = ["--shards", "3", "--cores", "none", "--lateness-ms", "7", "--max-future-ms", "9"];
        let given = ReferenceArgs {
            files: ReferenceFiles { accounts: Some("a.csv".into()), instruments: Some("i.csv".into()) },
            rules: Some("r.toml".into()),
        };
        let set = PipelineArgs { shards: Some(3), cores: "none".into(), lateness_ms: 7, max_future_ms: 9 };
        let defaults = PipelineArgs { shards: None, cores: "auto".into(), lateness_ms: 50, max_future_ms: 10_000 };
        let with = |head: &[&'static str], tail: &[&[&'static str]]| -> Vec<&'static str> {
            head.iter().chain(tail.iter().flat_map(|t| t.iter())).copied().collect()
        };

        let replay = ["replay", "t.csv"];
        let Command::Replay(args) = parse(&with(&replay, &[&reference, &pipeline])) else { panic!("replay") };
        assert_eq!((args.reference, args.pipeline), (given.clone(), set.clone()));
        let Command::Replay(args) = parse(&replay) else { panic!("replay") };
        assert_eq!((args.reference, args.pipeline), (ReferenceArgs::default(), defaults.clone()));

        let export = ["export", "t.csv", "--out", "o"];
        let Command::Export(args) = parse(&with(&export, &[&reference, &pipeline])) else { panic!("export") };
        assert_eq!((args.reference, args.pipeline), (given.clone(), set));
        let Command::Export(args) = parse(&export) else { panic!("export") };
        assert_eq!((args.reference, args.pipeline), (ReferenceArgs::default(), defaults));

        let investigate = ["investigate", "t.tape", "--out", "r.html", "--lateness-ms", "7"];
        let Command::Investigate(args) = parse(&with(&investigate, &[&reference])) else { panic!("investigate") };
        assert_eq!((args.reference, args.lateness_ms), (given.clone(), 7));

        let book = ["book", "t.csv", "--instrument", "X", "--at", "1", "--accounts", "a.csv", "--instruments", "i.csv"];
        let Command::Book(args) = parse(&book) else { panic!("book") };
        assert_eq!(args.reference, given.files);
        let Command::Book(args) = parse(&book[..6]) else { panic!("book") };
        assert_eq!(args.reference, ReferenceFiles::default());

        let serve = ["serve", "--config", "c.toml"];
        let Command::Serve(args) = parse(&with(&serve, &[&reference])) else { panic!("serve") };
        assert_eq!(args.reference, given);
        let Command::Serve(args) = parse(&serve) else { panic!("serve") };
        assert_eq!(args.reference, ReferenceArgs::default());
    }
}
