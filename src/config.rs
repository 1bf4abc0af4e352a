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
    table: &'a str,
    list: &'a mut Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(text: &'a str, table: &'a str, list: &'a mut Vec<String>) -> Problems<'a> {
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

    /// `near_miss_pct` (the window rules' near-misses): 1-99 when set, off
    /// when absent.
    pub fn near_miss_pct(&mut self, value: Option<Spanned<i64>>) -> Option<u32> {
        value.map(|v| self.int(Some(v), "near_miss_pct", 1..=99, 80) as u32)
    }

    /// A problem with field `message` at byte `offset` of the file.
    pub fn at(&mut self, offset: usize, message: String) {
        self.list.push(format!("line {}: {}.{message}", line_of(self.text, offset), self.table));
    }
}

/// The most tiers a rules file may name (a tier is a `u8` per instrument; 0 is the base table).
pub const MAX_TIERS: usize = 64;

/// One `[rule.tiers.NAME]` table of a rules file.
#[derive(Clone, Debug)]
pub struct TierTable {
    pub table: String,
    pub tier: String,
    /// Line of its header (from 1).
    pub line: usize,
    /// Its lines `[start, end)` (0-based, header included).
    lines: (usize, usize),
}

/// A rules file with its tier tables taken apart: `base` is the text with
/// every `[rule.tiers.NAME]` table blanked (same line count, so every line
/// number stays true), and `tier_text` makes, for one tier table, a text
/// holding only its rule's table with the tier's fields over the base's, at
/// their own lines. Each rule's own parser (`deny_unknown_fields`,
/// spanned fields) then validates a tier as it validates its table, and
/// every problem names the line it is on.
pub struct TierSplit<'a> {
    lines: Vec<&'a str>,
    /// (name, [start, end)) of each `[header]` table.
    sections: Vec<(String, (usize, usize))>,
    pub base: String,
    pub tiers: Vec<TierTable>,
    pub problems: Vec<String>,
}

impl<'a> TierSplit<'a> {
    pub fn new(text: &'a str) -> TierSplit<'a> {
        let lines: Vec<&str> = text.split('\n').collect();
        let mut sections: Vec<(String, (usize, usize))> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                let name = t[1..].split(']').next().unwrap_or("").trim().to_string();
                if let Some(last) = sections.last_mut() {
                    last.1.1 = i;
                }
                sections.push((name, (i, lines.len())));
            }
        }
        let mut tiers: Vec<TierTable> = Vec::new();
        let mut problems = Vec::new();
        let mut blank = vec![false; lines.len()];
        for (name, (start, end)) in &sections {
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            if parts.len() != 3 || parts[1] != "tiers" {
                continue;
            }
            let (table, tier) = (parts[0].to_string(), parts[2].to_string());
            let line = start + 1;
            if tier.is_empty() || !tier.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                problems.push(format!("line {line}: [{name}]: a tier name is letters, digits, `_` and `-`"));
            } else if let Some(first) = tiers.iter().find(|t| t.table == table && t.tier == tier) {
                problems.push(format!("line {line}: [{name}] is already defined on line {}", first.line));
            } else {
                tiers.push(TierTable { table, tier, line, lines: (*start, *end) });
            }
            blank[*start..*end].iter_mut().for_each(|b| *b = true);
        }
        let base = lines.iter().zip(&blank).map(|(l, &b)| if b { "" } else { l }).collect::<Vec<_>>().join("\n");
        TierSplit { lines, sections, base, tiers, problems }
    }

    /// The text `[table]` with the tier's fields over the base table's,
    /// every field at its own line.
    pub fn tier_text(&self, tier: &TierTable) -> String {
        let key = |line: &str| {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            t.split('=').next().map(|k| k.trim().trim_matches('"').to_string())
        };
        let (start, end) = tier.lines;
        let overridden: Vec<String> = (start + 1..end).filter_map(|i| key(self.lines[i])).collect();
        let mut out = vec![""; self.lines.len()];
        let mut header = start;
        for (name, (b_start, b_end)) in &self.sections {
            if *name != tier.table {
                continue;
            }
            header = header.min(*b_start);
            for (slot, line) in out.iter_mut().zip(&self.lines).take(*b_end).skip(b_start + 1) {
                if key(line).is_some_and(|k| !overridden.contains(&k)) {
                    *slot = line;
                }
            }
        }
        out[start + 1..end].copy_from_slice(&self.lines[start + 1..end]);
        let header_text = format!("[{}]", tier.table);
        out[header] = &header_text;
        out.join("\n")
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

/// `rules show`'s line for `near_miss_pct`, written only when set (a rules
/// file without it shows as before).
pub fn show_near_miss_pct(pct: Option<u32>, out: &mut String) {
    if let Some(pct) = pct {
        out.push_str(&format!("near_miss_pct = {pct}\n"));
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
        assert_eq!(
            rules.excessive_cancel,
            Some(Params {
                window_ns: 500 * MS,
                min_cancels: 20,
                ratio_pct: 80,
                cooldown_ns: 60_000 * MS,
                near_miss_pct: None
            })
        );
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
