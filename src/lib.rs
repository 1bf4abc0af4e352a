//! tapewatch: real-time trade surveillance on one box. The crate is cut by
//! pipeline stage; see ARCHITECTURE.md for the data flow and invariants.

pub mod alert;
pub mod bench;
pub mod chart;
pub mod checkpoint;
pub mod cmd;
pub mod config;
pub mod detect;
pub mod event;
pub mod export;
pub mod flat_map;
pub mod flow;
#[path = "gen.rs"]
pub mod generator;
pub mod http;
pub mod ingest;
pub mod instruments;
pub mod investigate;
pub mod metrics;
pub mod outputs;
pub mod ring;
pub mod scenario;
pub mod serve;
pub mod shard;
pub mod sink;
pub mod source;
pub mod symbols;
pub mod time;
pub mod topology;
pub mod wire;
