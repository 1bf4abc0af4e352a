//! What the book rules' parameter tables share: the unit, and the range
//! checks of `config::Problems` (every problem collected, with its line).

/// Milliseconds to nanoseconds.
pub const MS: i64 = 1_000_000;
