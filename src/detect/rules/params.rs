//! Validation of the book rules' parameter tables: each raw field is a
//! spanned integer, checked against its stated range; every problem is
//! collected, with the table, the field and the line.

use crate::config::line_of;
use std::ops::RangeInclusive;
use toml::Spanned;

/// A problem in a rules file, already worded with its line.
pub type ParamError = String;

pub struct Fields<'a> {
    pub text: &'a str,
    pub table: &'static str,
    pub problems: &'a mut Vec<ParamError>,
}

impl Fields<'_> {
    /// The field's value, or `default` when absent; a value outside
    /// `range` is reported (and the default used so checking goes on).
    pub fn int(&mut self, value: Option<&Spanned<i64>>, name: &str, range: RangeInclusive<i64>, default: i64) -> i64 {
        debug_assert!(range.contains(&default));
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.problems.push(format!(
                    "line {}: {}.{name} = {} is out of range {}..={}",
                    line_of(self.text, v.span().start),
                    self.table,
                    v.get_ref(),
                    range.start(),
                    range.end()
                ));
                default
            }
        }
    }
}

/// Milliseconds to nanoseconds.
pub const MS: i64 = 1_000_000;
