//! One file per rule, each implementing `detect::rule::Rule`; the registry
//! (`detect/registry.rs`) lists them.

pub mod excessive_cancel;
pub mod instant_cancel;
pub mod marking;
pub mod quote_stuffing;
pub mod ramping;
pub mod self_trade;
#[cfg(test)]
pub mod test_probe;
#[cfg(test)]
pub mod testkit;
pub mod wash_trade;
