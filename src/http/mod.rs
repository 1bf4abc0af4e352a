//! The daemon's HTTP edge: `Hub` (what the daemon publishes about itself)
//! and `serve_http`, the server that reads it: Prometheus metrics, health
//! and readiness, the alert log as JSON and as Server-Sent Events, the
//! control endpoints and the live dashboard. It runs on tokio; nothing here
//! touches the pipeline threads, which only write the hub.

pub mod hub;
mod server;

pub use hub::{
    BuildInfo, CheckpointStatus, Control, FeedStatus, Hub, KINDS, PipelineCounts, RingOccupancy, StoredAlert,
};
pub use server::{HttpOptions, serve_http};
