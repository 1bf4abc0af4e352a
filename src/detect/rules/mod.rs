//! One file per rule, each implementing `detect::rule::Rule`; the registry
//! (`detect/registry.rs`) lists them.
//!
//! The book rules (spoofing, layering, momentum ignition) read a record
//! with what the order book made of it (`views::Change`) and the
//! instrument's book after it (`BookView`). Their shared parts: `finding.rs`
//! (the `Finding` record and its packing into an alert), `key_slots.rs` (the
//! bounded key table), `window.rs` (the time-ordered window ring),
//! `spoof_pattern.rs` (the pattern spoofing and layering share),
//! `params.rs`, and `registered.rs` (their `Rule` implementations).

pub mod excessive_cancel;
pub mod instant_cancel;
pub mod layering;
pub mod marking;
pub mod momentum_ignition;
pub mod quote_stuffing;
pub mod ramping;
pub mod self_trade;
pub mod spoofing;
#[cfg(test)]
pub mod test_probe;

mod finding;
mod key_slots;
mod params;
mod registered;
mod spoof_pattern;
mod window;

#[cfg(test)]
mod test_book;
#[cfg(test)]
mod tests;

pub use finding::*;
pub use spoof_pattern::{Levels, MAX_RULES as MAX_SPOOF_RULES, Pattern as SpoofPattern, PatternParams, SpoofEvidence};
#[cfg(test)]
pub mod testkit;
pub mod wash_trade;
