//! The daemon's configuration: `serve --config FILE` (TOML, every key at
//! the top level), then the command-line overrides, validated into
//! `ServeConfig` with every problem reported at once (with the file's line
//! where the value came from the file). Relative paths in the file are
//! relative to the file's directory, so a config and its data move together.

use crate::config::{Rules, line_of, toml_error};
use crate::instruments::Instruments;
use crate::symbols::Groups;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The file as written (unknown keys refused).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub feed_listen: Option<Spanned<String>>,
    pub http_listen: Option<Spanned<String>>,
    pub state: Option<Spanned<String>>,
    pub alerts: Option<Spanned<String>>,
    pub late: Option<Spanned<String>>,
    pub rejects: Option<Spanned<String>>,
    pub accounts: Option<Spanned<String>>,
    pub instruments: Option<Spanned<String>>,
    pub rules: Option<Spanned<String>>,
    pub shards: Option<Spanned<i64>>,
    pub cores: Option<Spanned<String>>,
    pub lateness_ms: Option<Spanned<i64>>,
    pub max_future_ms: Option<Spanned<i64>>,
    pub idle_after_ms: Option<Spanned<i64>>,
    pub checkpoint_interval_ms: Option<Spanned<i64>>,
    pub checkpoint_every_records: Option<Spanned<i64>>,
    pub checkpoint_keep: Option<Spanned<i64>>,
    pub handshake_timeout_ms: Option<Spanned<i64>>,
    pub sse_max_secs: Option<Spanned<i64>>,
    pub token_file: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub day_boundary: Option<Spanned<String>>,
}

/// The keys `RawConfig` knows, so that every unknown one is named at once
/// (serde stops at the first).
const KEYS: &[&str] = &[
    "feed_listen",
    "http_listen",
    "state",
    "alerts",
    "late",
    "rejects",
    "accounts",
    "instruments",
    "rules",
    "shards",
    "cores",
    "lateness_ms",
    "max_future_ms",
    "idle_after_ms",
    "checkpoint_interval_ms",
    "checkpoint_every_records",
    "checkpoint_keep",
    "handshake_timeout_ms",
    "sse_max_secs",
    "token_file",
    "log_format",
    "day_boundary",
];

/// Command-line overrides (`serve --feed-listen ..`): they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub feed_listen: Option<String>,
    pub http_listen: Option<String>,
    pub state: Option<PathBuf>,
    pub alerts: Option<PathBuf>,
    pub accounts: Option<PathBuf>,
    pub instruments: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub shards: Option<usize>,
    pub cores: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated configuration: every value checked, reference data loaded.
pub struct ServeConfig {
    pub feed_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub state: PathBuf,
    pub alerts: PathBuf,
    pub late: PathBuf,
    pub rejects: PathBuf,
    pub accounts: Option<PathBuf>,
    pub instruments_path: Option<PathBuf>,
    pub rules_path: Option<PathBuf>,
    pub rules: Rules,
    pub groups: Groups,
    pub instruments: Instruments,
    pub shards: usize,
    pub cores: Vec<usize>,
    pub lateness_ms: u64,
    pub max_future_ms: u64,
    /// 0: event time moves only with records and heartbeats.
    pub idle_after_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub checkpoint_every_records: u64,
    pub checkpoint_keep: usize,
    pub handshake_timeout_ms: u64,
    /// How long one `GET /alerts/stream` lasts before the server ends it
    /// (the client reconnects with `Last-Event-ID` and loses nothing).
    pub sse_max_secs: u64,
    pub token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Where one trading day ends and the next begins: an offset into the
    /// Asia/Shanghai day, by the exchange clock.
    pub day_boundary_ns: i64,
}

/// Reads and validates `path` with `overrides`; `Err` holds every problem,
/// one a line, each naming the file (and line) or the flag.
pub fn load(path: &Path, overrides: &Overrides) -> Result<ServeConfig, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: cannot read config: {e}", path.display())])?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base, overrides).map_err(|problems| {
        problems.into_iter().map(|p| if p.starts_with("--") { p } else { format!("{}: {p}", path.display()) }).collect()
    })
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("feed_listen", &self.feed_listen)
            .field("state", &self.state)
            .field("alerts", &self.alerts)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// `load` on text; problems from the file start with `line N:`, those of
/// flags with the flag.
pub fn parse(text: &str, base: &Path, o: &Overrides) -> Result<ServeConfig, Vec<String>> {
    let mut problems = Vec::new();
    let keys: BTreeMap<Spanned<String>, toml::Value> = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
    for key in keys.keys() {
        if !KEYS.contains(&key.get_ref().as_str()) {
            problems.push(format!(
                "line {}: unknown key `{}` (known: {})",
                line_of(text, key.span().start),
                key.get_ref(),
                KEYS.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
    let at = |span: std::ops::Range<usize>| line_of(text, span.start);
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|s| base.join(s.get_ref()));
    let mut int = |v: &Option<Spanned<i64>>, name: &str, range: std::ops::RangeInclusive<i64>, default: i64| match v {
        None => default,
        Some(s) if range.contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            problems.push(format!(
                "line {}: {name} = {} is out of range {}..={}",
                at(s.span()),
                s.get_ref(),
                range.start(),
                range.end()
            ));
            default
        }
    };
    let lateness_ms = int(&raw.lateness_ms, "lateness_ms", 0..=crate::cmd::MAX_LATENESS_MS as i64, 50) as u64;
    let max_future_ms = int(&raw.max_future_ms, "max_future_ms", 0..=86_400_000, 10_000) as u64;
    let idle_after_ms = int(&raw.idle_after_ms, "idle_after_ms", 0..=3_600_000, 1000) as u64;
    let checkpoint_interval_ms = int(&raw.checkpoint_interval_ms, "checkpoint_interval_ms", 0..=3_600_000, 1000) as u64;
    let checkpoint_every_records =
        int(&raw.checkpoint_every_records, "checkpoint_every_records", 0..=i64::MAX, 1_000_000) as u64;
    let checkpoint_keep = int(&raw.checkpoint_keep, "checkpoint_keep", 1..=1000, 3) as usize;
    let handshake_timeout_ms = int(&raw.handshake_timeout_ms, "handshake_timeout_ms", 1..=3_600_000, 5000) as u64;
    let sse_max_secs = int(&raw.sse_max_secs, "sse_max_secs", 1..=86_400, 600) as u64;
    let file_shards = raw.shards.as_ref().map(|s| (*s.get_ref(), Some(at(s.span()))));
    let shards = match o.shards.map(|n| (n as i64, None)).or(file_shards) {
        None => 1,
        Some((n, _)) if (1..=256).contains(&n) => n as usize,
        Some((n, line)) => {
            problems.push(match line {
                Some(line) => format!("line {line}: shards = {n} is out of range 1..=256"),
                None => format!("--shards {n}: must be between 1 and 256"),
            });
            1
        }
    };

    let mut addr = |flag: &Option<String>, v: &Option<Spanned<String>>, key: &str, default: &str| {
        let (text_value, line) = match (flag, v) {
            (Some(f), _) => (f.clone(), None),
            (None, Some(s)) => (s.get_ref().clone(), Some(at(s.span()))),
            (None, None) => (default.to_string(), None),
        };
        match text_value.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let what = format!("`{text_value}` is not an address like 127.0.0.1:7401");
                problems.push(match line {
                    Some(line) => format!("line {line}: {key} = {what}"),
                    None => format!("--{}: {what}", key.replace('_', "-")),
                });
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    };
    let feed_listen = addr(&o.feed_listen, &raw.feed_listen, "feed_listen", "127.0.0.1:7401");
    let http_listen = addr(&o.http_listen, &raw.http_listen, "http_listen", "127.0.0.1:7400");

    let state = o.state.clone().or_else(|| path(&raw.state));
    let alerts = o.alerts.clone().or_else(|| path(&raw.alerts));
    if state.is_none() {
        problems.push("state is not set (the directory of the checkpoints: `state = \"...\"` or --state)".into());
    }
    if alerts.is_none() {
        problems.push("alerts is not set (the alerts file: `alerts = \"...\"` or --alerts)".into());
    }
    let alerts = alerts.unwrap_or_default();
    let late = path(&raw.late).unwrap_or_else(|| crate::cmd::beside(&alerts, ".late.csv"));
    let rejects = path(&raw.rejects).unwrap_or_else(|| crate::cmd::beside(&alerts, ".rejects.tsv"));
    let accounts = o.accounts.clone().or_else(|| path(&raw.accounts));
    let instruments_path = o.instruments.clone().or_else(|| path(&raw.instruments));
    let rules_path = o.rules.clone().or_else(|| path(&raw.rules));
    let groups = match &accounts {
        Some(p) => Groups::load(p).unwrap_or_else(|e| {
            problems.push(e);
            Groups::default()
        }),
        None => Groups::default(),
    };
    let instruments = match &instruments_path {
        Some(p) => Instruments::load(p).unwrap_or_else(|e| {
            problems.push(e);
            Instruments::default()
        }),
        None => Instruments::default(),
    };
    let rules = match &rules_path {
        Some(p) => Rules::load(p).unwrap_or_else(|e| {
            problems.extend(e.lines().map(str::to_string));
            Rules::default()
        }),
        None => Rules::default(),
    };
    let token_file = path(&raw.token_file);
    if let Some(token) = &token_file
        && let Err(e) = std::fs::metadata(token)
    {
        let line = raw.token_file.as_ref().map_or(0, |s| at(s.span()));
        problems.push(format!("line {line}: token_file = {}: {e}", token.display()));
    }
    let log_format = match (o.log_format.as_deref(), raw.log_format.as_ref()) {
        (Some(f), _) => match f {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!("--log-format {other}: must be `human` or `json`"));
                LogFormat::Human
            }
        },
        (None, Some(s)) => match s.get_ref().as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!("line {}: log_format = `{other}`: must be `human` or `json`", at(s.span())));
                LogFormat::Human
            }
        },
        (None, None) => LogFormat::Human,
    };
    let day_boundary_ns = match &raw.day_boundary {
        None => 0,
        Some(s) => parse_hhmm(s.get_ref()).unwrap_or_else(|| {
            problems.push(format!(
                "line {}: day_boundary = `{}`: must be HH:MM (00:00 to 23:59, Asia/Shanghai)",
                at(s.span()),
                s.get_ref()
            ));
            0
        }),
    };
    let cores_spec = o.cores.clone().or_else(|| raw.cores.as_ref().map(|s| s.get_ref().clone()));
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // The network edge is a busy helper thread beside the source and shards.
    let cores = crate::cmd::replay::pin_plan(cores_spec.as_deref().unwrap_or("auto"), shards, 1, available)
        .unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ServeConfig {
        feed_listen,
        http_listen,
        state: state.unwrap_or_default(),
        alerts,
        late,
        rejects,
        accounts,
        instruments_path,
        rules_path,
        rules,
        groups,
        instruments,
        shards,
        cores,
        lateness_ms,
        max_future_ms,
        idle_after_ms,
        checkpoint_interval_ms,
        checkpoint_every_records,
        checkpoint_keep,
        handshake_timeout_ms,
        sse_max_secs,
        token_file,
        log_format,
        day_boundary_ns,
    })
}

/// `HH:MM` as nanoseconds into the day.
fn parse_hhmm(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m) && text.len() == 5).then_some((h * 60 + m) * 60 * 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("/nonexistent"), &Overrides::default()).expect_err("problems")
    }

    #[test]
    fn every_problem_at_once_with_lines() {
        let p = problems(
            "state = \"s\"\nalerts = \"a\"\nshards = 0\nlateness_ms = -1\nfeed_listen = \"nowhere\"\nday_boundary = \"25:00\"\n",
        );
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("line 6: day_boundary = `25:00`")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("line 3: shards = 0")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("line 4: lateness_ms = -1")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("line 5: feed_listen = `nowhere`")), "{p:?}");
        let unknown = problems("state = \"s\"\nshard = 2\nalert = \"x\"\n");
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(unknown[0].starts_with("line 3: unknown key `alert`") || unknown[0].starts_with("line 2:"));
        let missing = problems("");
        assert!(missing.iter().any(|l| l.starts_with("state is not set")), "{missing:?}");
        assert!(missing.iter().any(|l| l.starts_with("alerts is not set")), "{missing:?}");
    }

    #[test]
    fn flags_win_over_the_file_and_paths_follow_it() {
        let o = Overrides { shards: Some(2), feed_listen: Some("127.0.0.1:9".into()), ..Overrides::default() };
        let c =
            parse("state = \"st\"\nalerts = \"out/a.jsonl\"\nshards = 7\n", Path::new("/etc/tw"), &o).expect("valid");
        assert_eq!((c.shards, c.feed_listen.port()), (2, 9));
        assert_eq!(c.state, Path::new("/etc/tw/st"));
        assert_eq!(c.late, Path::new("/etc/tw/out/a.late.csv"));
        let bad = parse("state = \"s\"\nalerts = \"a\"\n", Path::new("."), &Overrides { shards: Some(0), ..o })
            .expect_err("problems");
        assert_eq!(bad, vec!["--shards 0: must be between 1 and 256".to_string()]);
    }
}
