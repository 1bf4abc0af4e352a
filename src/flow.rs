//! The messages between the pipeline's stages, below all of them: the
//! batches the source sends the shards (records, watermarks, barriers, the
//! end) and the late records it sends the sink, what a shard sends the sink,
//! and the stop flag. No stage imports another; each imports this.

use crate::alert::Alert;
use crate::ring::spsc::{self, Consumer, Producer};
use crate::time::Pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Records per batch: large enough to amortise a cursor publish and a clock
/// read, small enough that a batch crosses the ring in microseconds.
pub const BATCH_EVENTS: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchKind {
    #[default]
    Data,
    /// No more records: the shard flushes its reorder buffer and stops.
    End,
    /// Checkpoint barrier `Batch::checkpoint`: every record before it in the
    /// ring is part of the checkpoint, none after it. Carries no records.
    Barrier,
}

/// What a shard sends the sink: alerts, and the checkpoint barriers it has
/// passed (the sink aligns them across shards before committing).
#[derive(Clone, Copy, Debug)]
pub enum ToSink {
    Alert(Alert),
    Barrier(u64),
}

/// One ring slot. To a shard: records ready to apply, in `(ts_ns, seq)`
/// order, and the watermark they were released under. To the sink: late
/// records, in feed order.
#[derive(Default)]
pub struct Batch {
    pub kind: BatchKind,
    pub watermark_ns: i64,
    /// The checkpoint id of a `Barrier` batch.
    pub checkpoint: u64,
    pub events: Vec<Pending>,
}

impl Batch {
    pub fn with_capacity() -> Batch {
        Batch { events: Vec::with_capacity(BATCH_EVENTS), ..Batch::default() }
    }
}

/// Raised by any thread that fails, so the others stop waiting on it.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The error a thread gives up with when another raised `Stop`: an echo of
/// the cause, never reported as one.
pub const STOPPED: &str = "pipeline stopped";

/// Alerts a shard's ring to the sink holds.
pub const ALERT_RING: usize = 4096;
/// Words in a shard's evidence arena: the lists of the alerts in its alert
/// ring, in alert order. Bounded like the ring: a full arena makes the
/// shard wait for the sink (back-pressure), and one alert's list holds at
/// most `alert::MAX_LIST` items (the rest are dropped and counted).
pub const ARENA_WORDS: usize = 1 << 14;

/// A shard's side of its link to the sink.
pub struct ShardTx {
    pub alerts: Producer<ToSink>,
    pub arena: Producer<u64>,
}

/// The sink's side of one shard's link.
pub struct ShardRx {
    pub alerts: Consumer<ToSink>,
    pub arena: Consumer<u64>,
}

/// A shard's alert ring and evidence arena, both preallocated.
pub fn shard_to_sink() -> (ShardTx, ShardRx) {
    let (alerts, alerts_rx) = spsc::channel(ALERT_RING, || ToSink::Alert(Alert::default()));
    let (arena, arena_rx) = spsc::channel(ARENA_WORDS, || 0u64);
    (ShardTx { alerts, arena }, ShardRx { alerts: alerts_rx, arena: arena_rx })
}
