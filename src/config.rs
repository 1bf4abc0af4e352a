//! Configuration in two layers: raw serde structs as written by the user
//! (unknown fields rejected), then validated structs with every limit set.
//! Every problem is collected and reported at once, with file and line.

use std::ops::RangeInclusive;
use std::path::Path;
use toml::Spanned;

pub const MS: i64 = 1_000_000;

/// The validated rule set, generated from the rule registry
/// (`detect/registry.rs`): one optional parameter struct per rule.
pub use crate::detect::registry::Rules;

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, String> {
        load_file(path, "rules file", Rules::parse)
    }
}

/// Problems found validating one rule's table, with their lines; the
/// rules file's parser reports them all at once.
pub struct Problems<'a> {
    text: &'a str,
    table: &'static str,
    list: &'a mut Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(text: &'a str, table: &'static str, list: &'a mut Vec<String>) -> Problems<'a> {
        Problems { text, table, list }
    }

    /// An integer field: its value if in `range`, else a problem and `default`.
    pub fn int(&mut self, value: Option<Spanned<i64>>, name: &str, range: RangeInclusive<i64>, default: i64) -> i64 {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.at(
                    v.span().start,
                    format!("{name} = {} is out of range {}..={}", v.get_ref(), range.start(), range.end()),
                );
                default
            }
        }
    }

    /// A problem with field `message` at byte `offset` of the file.
    pub fn at(&mut self, offset: usize, message: String) {
        self.list.push(format!("line {}: {}.{message}", line_of(self.text, offset), self.table));
    }
}

/// Reads a TOML file and parses it; every problem comes back on its own
/// line, prefixed with the file's path.
/// The most a rules file or scenario may hold.
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

pub(crate) fn load_file<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, Vec<String>>,
) -> Result<T, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("{}: cannot read {what}: {e}", path.display());
    // Read through a limit: a rules file or scenario is a few KiB, and
    // neither a device nor a huge file may size an allocation.
    let mut text = String::new();
    std::fs::File::open(path).and_then(|f| f.take(CONFIG_MAX_BYTES + 1).read_to_string(&mut text)).map_err(cannot)?;
    if text.len() as u64 > CONFIG_MAX_BYTES {
        return Err(format!("{}: {what} larger than {} MiB", path.display(), CONFIG_MAX_BYTES >> 20));
    }
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
    use crate::detect::rules::excessive_cancel::Params;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Rules::parse("").unwrap(), Rules::default());
        let rules =
            Rules::parse("[excessive_cancel]\nwindow_ms = 500\nratio_pct = 80\n[self_trade]\nenabled = false\n")
                .unwrap();
        assert_eq!(rules.excessive_cancel, Some(Params { window_ns: 500 * MS, min_cancels: 20, ratio_pct: 80 }));
        assert_eq!(rules.self_trade, None);
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
