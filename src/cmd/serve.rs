//! `tapewatch serve`: the daemon (see `serve`). Flags override the config
//! file's settings; `--check` validates the whole configuration (reference
//! data and rules included) and exits.

use super::CmdError;
use crate::serve::config::{self, LogFormat, Overrides, ServeConfig};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
// The shared flags' help names the defaults beside a tape; the daemon's
// come from its config file.
#[command(
    mut_arg("accounts", |a| a.help("accounts.csv (account,group); overrides the config file's `accounts`")),
    mut_arg("instruments", |a| a.help("instruments.csv; overrides the config file's `instruments`")),
    mut_arg("rules", |a| a.help("Rule thresholds (TOML); overrides the config file's `rules`")),
)]
pub struct ServeArgs {
    /// The daemon's configuration (TOML; ops/tapewatch.toml is a commented example).
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration (and the files it names), report every problem, and exit.
    #[arg(long)]
    pub check: bool,
    /// Where the feed connects (FEED.md CSV or the binary wire format, docs/WIRE.md).
    #[arg(long)]
    pub feed_listen: Option<String>,
    /// The HTTP address (metrics, health, alerts, dashboard).
    #[arg(long)]
    pub http: Option<String>,
    /// The state directory (checkpoints).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The alerts file (JSON Lines); the late and rejects files go beside it.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    #[command(flatten)]
    pub reference: super::ReferenceArgs,
    #[arg(long)]
    pub shards: Option<usize>,
    /// Core pinning: `auto`, `none`, or a list (source first, then one per shard).
    #[arg(long)]
    pub cores: Option<String>,
    /// Log lines as `human` (the default) or `json` (one object a line).
    #[arg(long)]
    pub log_format: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<(), CmdError> {
    let cfg = load(&args)?;
    if args.check {
        return super::print(&describe(&args, &cfg));
    }
    init_logging(cfg.log_format);
    crate::serve::run(cfg)
}

/// The config file with the flags given on top: a flag not given leaves
/// the file's setting (or its default) alone.
fn load(args: &ServeArgs) -> Result<ServeConfig, CmdError> {
    let overrides = Overrides {
        feed_listen: args.feed_listen.clone(),
        http_listen: args.http.clone(),
        state: args.state.clone(),
        alerts: args.alerts.clone(),
        accounts: args.reference.files.accounts.clone(),
        instruments: args.reference.files.instruments.clone(),
        rules: args.reference.rules.clone(),
        shards: args.shards,
        cores: args.cores.clone(),
        log_format: args.log_format.clone(),
    };
    config::load(&args.config, &overrides).map_err(|problems| CmdError::Usage(problems.join("\n")))
}

fn describe(args: &ServeArgs, cfg: &ServeConfig) -> String {
    let shown = |p: &Option<PathBuf>| p.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    format!(
        "{}: OK\nfeed        {}\nhttp        {}\nstate       {}\nalerts      {} (late {}, rejects {})\n\
         accounts    {}\ninstruments {}\nrules       {}\nshards      {}, lateness {} ms, idle advance {} ms\n\
         checkpoints every {} ms or {} records, keep {}\n",
        args.config.display(),
        cfg.feed_listen,
        cfg.http_listen,
        cfg.state.display(),
        cfg.alerts.display(),
        cfg.late.display(),
        cfg.rejects.display(),
        shown(&cfg.accounts),
        shown(&cfg.instruments_path),
        shown(&cfg.rules_path),
        cfg.shards,
        cfg.lateness_ms,
        cfg.idle_after_ms,
        cfg.checkpoint_interval_ms,
        cfg.checkpoint_every_records,
        cfg.checkpoint_keep,
    )
}

/// Logs go to stderr (journald takes them from there): human lines, with
/// colour only on a terminal, or one JSON object a line.
pub fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Cli, Command};
    use clap::Parser;

    fn serve_args(line: &[&str]) -> ServeArgs {
        match Cli::try_parse_from(["tapewatch", "serve"].iter().chain(line)).expect("parses").command {
            Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        }
    }

    /// The shared flags (`--rules`, `--accounts`, `--instruments`) and
    /// serve's own (`--shards`, `--cores`) override the file when given and
    /// leave it alone when not: none of them may carry a default.
    #[test]
    fn flags_override_the_config_file_only_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("file-rules.toml"), "").unwrap();
        std::fs::write(path("flag-rules.toml"), "").unwrap();
        std::fs::write(path("file.accounts.csv"), "account,group\nA1,G1\n").unwrap();
        std::fs::write(path("flag.accounts.csv"), "account,group\nA1,G2\n").unwrap();
        std::fs::write(
            path("tapewatch.toml"),
            "state = \"state\"\nalerts = \"alerts.jsonl\"\nrules = \"file-rules.toml\"\n\
             accounts = \"file.accounts.csv\"\nshards = 2\ncores = \"none\"\n",
        )
        .unwrap();
        let config = path("tapewatch.toml").display().to_string();

        let file = load(&serve_args(&["--config", &config])).expect("valid");
        assert_eq!(file.rules_path, Some(path("file-rules.toml")));
        assert_eq!(file.accounts, Some(path("file.accounts.csv")));
        assert_eq!(file.instruments_path, None);
        assert_eq!((file.shards, file.cores.clone()), (2, Vec::new()));

        let rules = path("flag-rules.toml").display().to_string();
        let accounts = path("flag.accounts.csv").display().to_string();
        let line =
            ["--config", &config, "--rules", &rules, "--accounts", &accounts, "--shards", "3", "--cores", "0,0,0,0"];
        let flags = load(&serve_args(&line)).expect("valid");
        assert_eq!(flags.rules_path, Some(path("flag-rules.toml")));
        assert_eq!(flags.accounts, Some(path("flag.accounts.csv")));
        assert_eq!((flags.shards, flags.cores), (3, vec![0, 0, 0, 0]));
    }
}
