//! `tapewatch serve`: the daemon (see `serve`). Flags override the config
//! file's settings; `--check` validates the whole configuration (reference
//! data and rules included) and exits.

use super::CmdError;
use crate::serve::config::{self, LogFormat, Overrides, ServeConfig};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
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
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    #[arg(long)]
    pub instruments: Option<PathBuf>,
    #[arg(long)]
    pub rules: Option<PathBuf>,
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
    let overrides = Overrides {
        feed_listen: args.feed_listen.clone(),
        http_listen: args.http.clone(),
        state: args.state.clone(),
        alerts: args.alerts.clone(),
        accounts: args.accounts.clone(),
        instruments: args.instruments.clone(),
        rules: args.rules.clone(),
        shards: args.shards,
        cores: args.cores.clone(),
        log_format: args.log_format.clone(),
    };
    let cfg = config::load(&args.config, &overrides).map_err(|problems| CmdError::Usage(problems.join("\n")))?;
    if args.check {
        return super::print(&describe(&args, &cfg));
    }
    init_logging(cfg.log_format);
    crate::serve::run(cfg)
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
