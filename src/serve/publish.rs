//! What the daemon tells the `Hub` (the HTTP edge's view of it), from
//! outside the pipeline threads: a tailer thread that reads committed
//! alert lines from the alerts file, and a once-a-second status sample
//! (feed, counts, checkpoints) from counters the edge and the source
//! already keep (written once per read or per pump, never per record).
//!
//! Alert ids: `day * 10^9 + line`, where `day` is the trading day's end
//! in whole days since the epoch and `line` the alert's line in that
//! day's file. A resumed day rewrites its file to the same lines, and a
//! new day has a larger `day`: ids only grow, and the same alert keeps its
//! id across restarts, so `Last-Event-ID` works across them.

use super::edge::{DAY_NS, EdgeShared, day_of};
use crate::http::{CheckpointStatus, FeedStatus, Hub, PipelineCounts, StoredAlert};
use crate::ingest::live::{REJECT_REASONS, REPEATED_SEQ};
use crate::topology::{LiveControl, Progress};
use hdrhistogram::Histogram;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the tailer looks at the alerts file.
const TAIL_EVERY: Duration = Duration::from_millis(200);
/// Lines per day a day's alert ids have room for.
const IDS_PER_DAY: u64 = 1_000_000_000;

/// The alert id of line `line_no` of a day's file, from the alert's `ts_ns`.
pub fn alert_id(json: &str, line_no: u64, boundary_ns: i64) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let ts_ns = value.get("ts_ns")?.as_i64()?;
    let (_, end) = day_of(ts_ns, boundary_ns);
    let day = u64::try_from(end / DAY_NS).ok()?;
    Some(day * IDS_PER_DAY + line_no.min(IDS_PER_DAY - 1))
}

/// Reads the alerts file as it grows (and as days rotate it) and
/// publishes each alert once, in id order; on start it re-reads the file,
/// so the hub's log is refilled after a restart.
pub fn tail_alerts(path: PathBuf, hub: Arc<Hub>, boundary_ns: i64, done: Arc<AtomicBool>) {
    let mut open: Option<(std::fs::File, u64)> = None;
    let (mut offset, mut line_no) = (0u64, 0u64);
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    // The path moved on to a new file: read the old one once more to its
    // end (the sink may have written since the last read), then follow.
    let mut moved = false;
    loop {
        if open.is_none()
            && let Ok(file) = std::fs::File::open(&path)
        {
            let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
            open = Some((file, inode));
            (offset, line_no) = (0, 0);
            pending.clear();
        }
        let mut switch = false;
        if let Some((file, inode)) = open.as_mut() {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                // A resumed day cut the file back to its last checkpoint:
                // read it again; ids already published are skipped.
                (offset, line_no) = (0, 0);
                pending.clear();
            }
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                while let Ok(n) = file.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                    pending.extend_from_slice(&chunk[..n]);
                    let mut start = 0;
                    while let Some(end) = memchr::memchr(b'\n', &pending[start..]) {
                        line_no += 1;
                        let line = String::from_utf8_lossy(&pending[start..start + end]);
                        if let Some(id) = alert_id(&line, line_no, boundary_ns)
                            && hub.last_alert_id().is_none_or(|last| id > last)
                        {
                            hub.publish_alert(StoredAlert { id, json: Arc::from(line.as_ref()) });
                        }
                        start += end + 1;
                    }
                    pending.drain(..start);
                }
            }
            // The day's file was renamed away once read to its end: follow the path.
            let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
            switch = now != Some(*inode);
        }
        if switch {
            if moved {
                open = None;
            }
            moved = !moved;
            continue;
        }
        moved = false;
        if done.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(TAIL_EVERY);
    }
}

/// The ingest-to-alert figures the daemon publishes: the histogram of
/// the runs that ended (a reload restarts the pipeline, a day's end starts
/// the next day's) plus the current run's, so it counts from the daemon's
/// start.
#[derive(Default)]
pub struct Latency {
    /// The runs that ended.
    pub base: Option<Histogram<u64>>,
    /// Where each sample sums `base` and the current run: kept, so a
    /// sample copies into it rather than allocating a histogram (about
    /// 270 KiB) a second, whose churn fragmented the main thread's heap.
    sum: Option<Histogram<u64>>,
}

impl Latency {
    /// Adds the run that just ended to `base` (the sink's last copy, taken
    /// so the next run starts its own).
    pub fn end_run(&mut self, control: &LiveControl) {
        let last = control.latency.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = last {
            match &mut self.base {
                Some(b) => {
                    let _ = b.add(&h);
                }
                None => self.base = Some(h),
            }
        }
    }

    /// `base` plus `current` (either may be missing or empty), summed in
    /// the kept histogram; `None` when there is nothing to show.
    fn sum(&mut self, current: Option<&Histogram<u64>>) -> Option<&Histogram<u64>> {
        let mut any = false;
        for h in [current, self.base.as_ref()].into_iter().flatten().filter(|h| !h.is_empty()) {
            match &mut self.sum {
                Some(sum) => {
                    if !any {
                        sum.reset();
                    }
                    let _ = sum.add(h);
                }
                None => self.sum = Some(h.clone()),
            }
            any = true;
        }
        if any { self.sum.as_ref() } else { None }
    }
}

/// One status sample: the feed, the pipeline's counts, the checkpoints.
pub fn sample(
    hub: &Hub,
    edge: &EdgeShared,
    progress: &Progress,
    control: &LiveControl,
    last: &mut CheckpointStatus,
    latency: &mut Latency,
) {
    let c = &edge.counters;
    let position = &edge.position;
    hub.set_feed(FeedStatus {
        connected: edge.peer.lock().ok().is_some_and(|p| p.is_some()),
        peer: edge.peer.lock().ok().and_then(|p| p.map(|a| a.to_string())),
        format: edge.format.lock().ok().and_then(|f| f.map(str::to_string)),
        next_seq: edge.position.next_seq(),
        connections: c.connections.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        bad_frames: c.bad_frames.load(Ordering::Relaxed)
            + c.bad_header.load(Ordering::Relaxed)
            + c.truncated.load(Ordering::Relaxed)
            + c.malformed_lines.load(Ordering::Relaxed),
        gaps: progress.gaps.load(Ordering::Relaxed),
        missing_records: progress.missing_records.load(Ordering::Relaxed),
        repeats: position.rejected_by_reason[REPEATED_SEQ].load(Ordering::Relaxed),
    });
    let end = edge.day_end_ns.load(Ordering::Acquire);
    // The sink's figures so far this run (a day's run, since the start or
    // the last restart): the latency histogram and the late records. The
    // sink only tries its lock: holding it for the sum skips one of its
    // copies at most.
    let summed = match control.latency.lock() {
        Ok(current) => latency.sum(current.as_ref()).is_some(),
        Err(_) => latency.sum(None).is_some(),
    };
    if summed && let Some(h) = latency.sum.as_ref() {
        hub.publish_latency(h);
    }
    hub.publish_counts(&PipelineCounts {
        records_in: std::array::from_fn(|k| c.by_kind[k].load(Ordering::Relaxed)),
        late: std::array::from_fn(|k| control.late_by_kind[k].load(Ordering::Relaxed)),
        applied: std::array::from_fn(|k| control.applied_by_kind[k].load(Ordering::Relaxed)),
        rejected: REJECT_REASONS
            .iter()
            .zip(&position.rejected_by_reason)
            .map(|(reason, n)| (reason.to_string(), n.load(Ordering::Relaxed)))
            .collect(),
        rejected_by_kind: std::array::from_fn(|k| position.rejected_by_kind[k].load(Ordering::Relaxed)),
        active_accounts: position.accounts.load(Ordering::Relaxed),
        trading_day: if end == i64::MAX { String::new() } else { super::edge::day_name(end) },
        episodes: std::array::from_fn(|r| control.episodes_by_rule[r].load(Ordering::Relaxed)),
        suppressed: std::array::from_fn(|r| control.suppressed_by_rule[r].load(Ordering::Relaxed)),
        ..PipelineCounts::default()
    });
    let completed = control.completed.load(Ordering::Acquire);
    if completed != last.last_id {
        last.last_id = completed;
        last.taken += 1;
        last.last_unix_ms = Some(crate::http::hub::now_unix_ms());
        last.last_bytes = control.checkpoint_bytes.load(Ordering::Relaxed);
        last.last_duration_ns = control.checkpoint_duration_ns.load(Ordering::Relaxed);
        hub.publish_checkpoint(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_with_the_line_and_the_day() {
        let day1 = r#"{"rule":"x","ts_ns":1793583000000000000}"#;
        let day2 = r#"{"rule":"x","ts_ns":1793669400000000000}"#;
        let a = alert_id(day1, 1, 0).unwrap();
        assert_eq!(alert_id(day1, 2, 0), Some(a + 1));
        assert!(alert_id(day2, 1, 0).unwrap() > a + IDS_PER_DAY / 2);
        assert_eq!(alert_id("not json", 1, 0), None);
    }

    #[test]
    fn latency_sums_the_ended_runs_and_the_current_one_afresh_each_sample() {
        let hist = |values: &[u64]| {
            let mut h = crate::metrics::latency_histogram();
            values.iter().for_each(|&v| h.record(v).unwrap());
            h
        };
        let mut latency = Latency::default();
        assert!(latency.sum(None).is_none());
        assert!(latency.sum(Some(&hist(&[]))).is_none());
        // A run ends (a reload): its histogram becomes the base.
        let control = LiveControl::default();
        *control.latency.lock().unwrap() = Some(hist(&[1_000]));
        latency.end_run(&control);
        assert!(control.latency.lock().unwrap().is_none());
        let current = hist(&[2_000_000, 3_000_000]);
        for _ in 0..3 {
            // The kept sum starts over each sample: no counts carried.
            let sum = latency.sum(Some(&current)).unwrap();
            assert_eq!((sum.len(), sum.min(), sum.max() / 1_000_000), (3, 1_000, 3));
        }
        assert_eq!(latency.sum(None).map(|h| h.len()), Some(1));
        assert_eq!(latency.sum(Some(&hist(&[]))).map(|h| h.len()), Some(1));
        // A second run ends: added to the base.
        *control.latency.lock().unwrap() = Some(hist(&[5_000]));
        latency.end_run(&control);
        assert_eq!(latency.sum(Some(&current)).map(|h| h.len()), Some(4));
    }
}
