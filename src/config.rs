//! Configuration in two layers: raw serde structs as written by the user
//! (unknown fields rejected), then validated structs with every limit set.
//! Every problem is collected and reported at once, with file and line.

use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

pub const MS: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExcessiveCancelParams {
    pub window_ns: i64,
    pub min_cancels: u32,
    pub ratio_pct: u32,
}

impl Default for ExcessiveCancelParams {
    fn default() -> Self {
        ExcessiveCancelParams { window_ns: 10_000 * MS, min_cancels: 20, ratio_pct: 90 }
    }
}

/// The validated rule set: a rule that is `None`/false is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub excessive_cancel: Option<ExcessiveCancelParams>,
    pub self_trade: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { excessive_cancel: Some(ExcessiveCancelParams::default()), self_trade: true }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    excessive_cancel: Option<RawExcessiveCancel>,
    self_trade: Option<RawSelfTrade>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExcessiveCancel {
    enabled: Option<bool>,
    window_ms: Option<Spanned<i64>>,
    min_cancels: Option<Spanned<i64>>,
    ratio_pct: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSelfTrade {
    enabled: Option<bool>,
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, String> {
        load_file(path, "rules file", Rules::parse)
    }

    /// Parses a rules file; missing fields take the defaults.
    pub fn parse(text: &str) -> Result<Rules, Vec<String>> {
        let raw: RawRules = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
        let mut problems = Vec::new();
        let defaults = ExcessiveCancelParams::default();
        let excessive_cancel = match raw.excessive_cancel.unwrap_or_default() {
            RawExcessiveCancel { enabled: Some(false), .. } => None,
            section => {
                let mut field = |value: Option<Spanned<i64>>, name: &str, range: Range<i64>, default: i64| match value {
                    None => default,
                    Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
                    Some(v) => {
                        problems.push(format!(
                            "line {}: excessive_cancel.{name} = {} is out of range {}..={}",
                            line_of(text, v.span().start),
                            v.get_ref(),
                            range.start,
                            range.end - 1
                        ));
                        default
                    }
                };
                let window_ms = field(section.window_ms, "window_ms", 1..86_400_001, defaults.window_ns / MS);
                let min_cancels = field(section.min_cancels, "min_cancels", 1..1_000_001, defaults.min_cancels as i64);
                let ratio_pct = field(section.ratio_pct, "ratio_pct", 0..100_001, defaults.ratio_pct as i64);
                Some(ExcessiveCancelParams {
                    window_ns: window_ms * MS,
                    min_cancels: min_cancels as u32,
                    ratio_pct: ratio_pct as u32,
                })
            }
        };
        let self_trade = raw.self_trade.and_then(|s| s.enabled).unwrap_or(true);
        if problems.is_empty() { Ok(Rules { excessive_cancel, self_trade }) } else { Err(problems) }
    }
}

/// Reads a TOML file and parses it; every problem comes back on its own
/// line, prefixed with the file's path.
pub(crate) fn load_file<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, Vec<String>>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read {what}: {e}", path.display()))?;
    parse(&text)
        .map_err(|problems| problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>().join("\n"))
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// toml's own message, with the line it points at made explicit.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => format!("line {}: {message}", line_of(text, span.start)),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Rules::parse("").unwrap(), Rules::default());
        let rules =
            Rules::parse("[excessive_cancel]\nwindow_ms = 500\nratio_pct = 80\n[self_trade]\nenabled = false\n")
                .unwrap();
        assert_eq!(
            rules,
            Rules {
                excessive_cancel: Some(ExcessiveCancelParams { window_ns: 500 * MS, min_cancels: 20, ratio_pct: 80 }),
                self_trade: false
            }
        );
        assert_eq!(Rules::parse("[excessive_cancel]\nenabled = false\n").unwrap().excessive_cancel, None);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let problems = Rules::parse("[excessive_cancel]\nwindow_ms = 0\nmin_cancels = -3\n").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("line 2: excessive_cancel.window_ms = 0 is out of range"), "{problems:?}");
        assert!(problems[1].starts_with("line 3: excessive_cancel.min_cancels = -3"), "{problems:?}");
        let unknown = Rules::parse("[excessive_cancel]\nwindow = 5\n").unwrap_err();
        assert!(unknown[0].starts_with("line 2: unknown field `window`"), "{unknown:?}");
        let syntax = Rules::parse("[self_trade]\nenabled = maybe\n").unwrap_err();
        assert!(syntax[0].starts_with("line 2:"), "{syntax:?}");
    }
}
