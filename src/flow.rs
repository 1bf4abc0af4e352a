//! The messages between the pipeline's stages, below all of them: the
//! batches the source sends the shards (records, watermarks, barriers, the
//! end) and the late records it sends the sink, what a shard sends the sink,
//! and the stop flag. No stage imports another; each imports this.

use crate::alert::Alert;
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
