//! The sink stage: drains every shard's alert ring and the late-record
//! ring, resolves names, and writes alerts.jsonl and the late file. All
//! output I/O happens here, off the source and detector cores, buffered and
//! flushed whenever the sink runs out of work (so alerts go out promptly).
//!
//! Exactly-once output: at a checkpoint barrier the sink aligns its inputs
//! (a ring whose next item is the barrier is not read further until every
//! shard ring and the late ring have reached it), flushes, and hands the
//! files' lengths to the checkpoint writer, which syncs them. A resumed run
//! cuts each file back to the committed length and appends from there; the
//! alerts after it are detected again, exactly as before.

use crate::alert::{Timing, write_json};
use crate::checkpoint::Manifest;
use crate::checkpoint::writer::Msg;
use crate::detect::registry::{self, Counts};
use crate::event::{Event, Kind};
use crate::flow::{Batch, BatchKind, ShardRx, Stop, ToSink};
use crate::ingest::csv::{FeedLine, HEADER};
use crate::ingest::live::Integrity;
use crate::metrics::{Clock, latency_histogram};
use crate::ring::Idle;
use crate::ring::spsc::Consumer;
use crate::symbols::Names;
use crate::topology::LiveControl;
use hdrhistogram::Histogram;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{SystemTime, UNIX_EPOCH};

/// Output files a run may have created, removed again if it fails (is
/// dropped before `keep`): a run without checkpoints that fails halfway
/// leaves no alerts file to be taken for a finished one. (With checkpoints,
/// the outputs are committed state that a resumed run continues.) Only a
/// regular file this run created goes (`outputs::remove_created`): never
/// one that was there before, a link's target or a device.
pub struct Outputs {
    paths: Vec<PathBuf>,
}

impl Outputs {
    pub fn remove_on_failure(paths: Vec<PathBuf>) -> Outputs {
        Outputs { paths }
    }

    pub fn add(&mut self, path: &Path) {
        self.paths.push(path.to_path_buf());
    }

    /// The run succeeded: the files stay.
    pub fn keep(mut self) {
        for path in self.paths.drain(..) {
            crate::outputs::keep(&path);
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for path in &self.paths {
            crate::outputs::remove_created(path);
        }
    }
}

pub struct SinkOutput {
    /// Alerts per rule, in registry order.
    pub alerts: Counts,
    /// Near-misses per rule, in registry order (this run's only: they are
    /// not in a checkpoint's counts).
    pub near_misses: Counts,
    pub late: u64,
    pub ingest_to_alert: Histogram<u64>,
    pub ingest_to_applied: Histogram<u64>,
    /// `feed-gap` alerts written (a live feed's gaps and repeats) by this
    /// run; not carried across a resume.
    pub feed_gap_alerts: u64,
}

struct Out {
    writer: BufWriter<File>,
    path: PathBuf,
    dirty: bool,
    /// Bytes written so far: the committed length at a checkpoint.
    written: u64,
}

impl Out {
    fn create(path: &Path) -> Result<Out, String> {
        let file = crate::outputs::create(path).map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
        Ok(Out { writer: BufWriter::with_capacity(1 << 16, file), path: path.to_path_buf(), dirty: false, written: 0 })
    }

    /// Reopens an output of an interrupted run, cut back to what the
    /// checkpoint committed.
    fn resume(path: &Path, committed: u64) -> Result<Out, String> {
        let fail = |what: &str, e: std::io::Error| format!("{}: cannot {what} to resume: {e}", path.display());
        let mut file = crate::outputs::reopen(path).map_err(|e| fail("open", e))?;
        let len = file.metadata().map_err(|e| fail("read", e))?.len();
        if len < committed {
            return Err(format!(
                "{}: has {len} bytes, fewer than the {committed} the checkpoint committed: \
                 was it moved or rewritten? Resume with the same output paths, or use a fresh --state directory",
                path.display()
            ));
        }
        file.set_len(committed).map_err(|e| fail("truncate", e))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(|e| fail("seek in", e))?;
        Ok(Out {
            writer: BufWriter::with_capacity(1 << 16, file),
            path: path.to_path_buf(),
            dirty: false,
            written: committed,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.dirty = true;
        self.written += bytes.len() as u64;
        self.writer.write_all(bytes).map_err(|e| format!("{}: cannot write: {e}", self.path.display()))
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.dirty {
            self.dirty = false;
            self.writer.flush().map_err(|e| format!("{}: cannot write: {e}", self.path.display()))?;
        }
        Ok(())
    }
}

pub struct Sink {
    alerts_out: Out,
    late_out: Out,
    /// The near-miss file (`--near-misses`), if any.
    near_out: Option<Out>,
    /// Counts carried over from the checkpoint a run resumed from.
    alerts_base: Counts,
    late_base: u64,
    /// A filtered replay's alert filter (`investigate::replay_filter`).
    keep: Option<crate::investigate::replay_filter::AlertKeep>,
    /// The daemon's handle: the latency and late counts, published live.
    live: Option<Arc<LiveControl>>,
}

/// How often the sink publishes its figures to a daemon (when idle).
const PUBLISH_EVERY_NS: u64 = 500_000_000;

impl Sink {
    /// Creates both output files; called before any thread starts, so a
    /// bad path fails the run before it begins.
    pub fn create(alerts: &Path, late: &Path) -> Result<Sink, String> {
        let alerts_out = Out::create(alerts)?;
        let late_out = Out::create(late).and_then(|mut late_out| {
            late_out.write(HEADER.as_bytes())?;
            late_out.write(b"\n")?;
            Ok(late_out)
        });
        // The caller's `Outputs` guard does not exist yet: undo here.
        let late_out = late_out.inspect_err(|_| crate::outputs::remove_created(alerts))?;
        Ok(Sink {
            alerts_out,
            late_out,
            near_out: None,
            alerts_base: [0; registry::RULE_COUNT],
            late_base: 0,
            keep: None,
            live: None,
        })
    }

    /// Writes near-misses to `path` (`--near-misses`): created afresh, or on
    /// a resume cut back to the length the checkpoint committed (`committed`,
    /// as the alerts: a near-miss is written once across a crash and a
    /// resume). A checkpoint without that length (the run it was cut from
    /// wrote none, or an older build's) appends to the file as it is.
    pub fn near_misses(mut self, path: Option<&Path>, resumed: bool, committed: Option<u64>) -> Result<Sink, String> {
        let Some(path) = path else {
            return Ok(self);
        };
        let out = if let (true, Some(committed)) = (resumed, committed) {
            Out::resume(path, committed)
        } else if resumed && path.is_file() {
            let fail = |e: std::io::Error| format!("{}: cannot open to resume: {e}", path.display());
            crate::outputs::reopen(path).map_err(fail).and_then(|mut file| {
                let written = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(fail)?;
                Ok(Out {
                    writer: BufWriter::with_capacity(1 << 16, file),
                    path: path.to_path_buf(),
                    dirty: false,
                    written,
                })
            })
        } else {
            Out::create(path)
        };
        match out {
            Ok(out) => {
                self.near_out = Some(out);
                Ok(self)
            }
            Err(e) => {
                if !resumed {
                    // The caller's `Outputs` guard does not exist yet: undo here.
                    crate::outputs::remove_created(&self.alerts_out.path);
                    crate::outputs::remove_created(&self.late_out.path);
                }
                Err(e)
            }
        }
    }

    /// Reopens both outputs at the lengths a checkpoint committed.
    pub fn resume(alerts: &Path, late: &Path, manifest: &Manifest) -> Result<Sink, String> {
        Ok(Sink {
            alerts_out: Out::resume(alerts, manifest.alerts_bytes)?,
            late_out: Out::resume(late, manifest.late_bytes)?,
            near_out: None,
            alerts_base: manifest.counts()?,
            late_base: manifest.late,
            keep: None,
            live: None,
        })
    }

    /// A daemon's run: the figures it shows while the day runs are
    /// published to `live` (see `LiveControl::latency`).
    pub fn publishing(mut self, live: Option<Arc<LiveControl>>) -> Sink {
        self.live = live;
        self
    }

    /// The run's last copy (it ends, or a reload stops it): the daemon adds
    /// it to the figures of the runs before, so waiting on the lock is fine.
    fn publish_final(&self, output: &SinkOutput) {
        if let Some(live) = &self.live
            && let Ok(mut slot) = live.latency.lock()
        {
            *slot = Some(output.ingest_to_alert.clone());
        }
    }

    /// Copies the latency histogram for the daemon, without waiting on it.
    fn publish(&self, output: &SinkOutput) {
        let Some(live) = &self.live else { return };
        if let Ok(mut slot) = live.latency.try_lock() {
            match slot.as_mut() {
                Some(h) => {
                    h.reset();
                    let _ = h.add(&output.ingest_to_alert);
                }
                None => *slot = Some(output.ingest_to_alert.clone()),
            }
        }
    }

    /// Writes only the alerts `keep` keeps (a filtered replay); the others
    /// are neither written nor counted.
    pub fn keeping(mut self, keep: Option<crate::investigate::replay_filter::AlertKeep>) -> Sink {
        self.keep = keep;
        self
    }

    pub fn run(
        mut self,
        mut alert_rings: Vec<ShardRx>,
        mut late_ring: Consumer<Batch>,
        names: Names,
        clock: Clock,
        stop: &Stop,
        to_writer: Option<Sender<Msg>>,
    ) -> Result<SinkOutput, String> {
        let result = self.drain(&mut alert_rings, &mut late_ring, &names, &clock, stop, to_writer.as_ref());
        if result.is_err() {
            stop.raise();
        }
        result
    }

    fn drain(
        &mut self,
        alert_rings: &mut [ShardRx],
        late_ring: &mut Consumer<Batch>,
        names: &Names,
        clock: &Clock,
        stop: &Stop,
        to_writer: Option<&Sender<Msg>>,
    ) -> Result<SinkOutput, String> {
        let mut output = SinkOutput {
            alerts: self.alerts_base,
            near_misses: [0; registry::RULE_COUNT],
            late: self.late_base,
            ingest_to_alert: latency_histogram(),
            ingest_to_applied: latency_histogram(),
            feed_gap_alerts: 0,
        };
        // Unix time is read once; per-alert detection times are derived from
        // the monotonic clock so they never go backwards.
        let unix_at_start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
            - clock.now_ns() as i64;
        let mut line = Vec::with_capacity(512);
        let mut list = Vec::with_capacity(crate::alert::MAX_LIST);
        let mut finding_line = Vec::with_capacity(512);
        let mut published_ns = 0u64;
        let mut idle = Idle::default();
        // The barrier each input is held at (alignment), if any.
        let mut held: Vec<Option<u64>> = vec![None; alert_rings.len()];
        let mut late_held: Option<u64> = None;
        loop {
            let mut worked = false;
            for (ring, held) in alert_rings.iter_mut().zip(held.iter_mut()) {
                while held.is_none()
                    && let Some(item) = ring.alerts.peek()
                {
                    let alert = match *item {
                        ToSink::Alert(alert) => alert,
                        ToSink::Barrier(id) => {
                            *held = Some(id);
                            break;
                        }
                    };
                    ring.alerts.release();
                    worked = true;
                    // The alert's list: the next items of the shard's arena,
                    // published before the alert.
                    list.clear();
                    for _ in 0..alert.list.len {
                        let Some(&item) = ring.arena.peek() else {
                            return Err("an alert's evidence list is missing from its shard's arena".to_string());
                        };
                        list.push(item);
                        ring.arena.release();
                    }
                    if let Some(keep) = &self.keep {
                        line.clear();
                        names.write_group(&mut line, alert.group);
                        if !keep.keeps(alert.ts_ns, &line) {
                            continue;
                        }
                    }
                    let now = clock.now_ns();
                    let timing = Timing {
                        detected_unix_ns: unix_at_start + now as i64,
                        ingest_to_applied_ns: alert.applied_ns.saturating_sub(alert.ingest_ns),
                        ingest_to_alert_ns: now.saturating_sub(alert.ingest_ns),
                    };
                    output.ingest_to_alert.saturating_record(timing.ingest_to_alert_ns.max(1));
                    output.ingest_to_applied.saturating_record(timing.ingest_to_applied_ns.max(1));
                    let Some(i) = registry::index_of(alert.rule) else {
                        return Err(format!("an alert of rule id {} that this build lacks", alert.rule));
                    };
                    if alert.near_miss {
                        // Counted in any case; written when there is a near-miss file.
                        output.near_misses[i] += 1;
                        if let Some(near_out) = &mut self.near_out {
                            line.clear();
                            write_json(&mut line, &alert, &list, names, &timing);
                            near_out.write(&line)?;
                        }
                        continue;
                    }
                    output.alerts[i] += 1;
                    line.clear();
                    write_json(&mut line, &alert, &list, names, &timing);
                    self.alerts_out.write(&line)?;
                }
            }
            while late_held.is_none()
                && let Some(batch) = late_ring.peek()
            {
                if batch.kind == BatchKind::Barrier {
                    late_held = Some(batch.checkpoint);
                    break;
                }
                line.clear();
                let mut late_by_kind = [0u64; 3];
                for pending in &batch.events {
                    // A live feed's gap or repeats rides with the late
                    // records: a `feed-gap` alert, not a late line.
                    if let Some(finding) = Integrity::of_event(&pending.event) {
                        finding_line.clear();
                        finding.write_json(&mut finding_line, unix_at_start + clock.now_ns() as i64);
                        self.alerts_out.write(&finding_line)?;
                        output.feed_gap_alerts += 1;
                        continue;
                    }
                    write_feed_line(&mut line, &pending.event, names);
                    output.late += 1;
                    late_by_kind[match pending.event.kind {
                        Kind::New => 0,
                        Kind::Cancel => 1,
                        Kind::Trade => 2,
                    }] += 1;
                }
                if let Some(live) = &self.live {
                    for (counter, n) in live.late_by_kind.iter().zip(late_by_kind) {
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                }
                late_ring.release();
                worked = true;
                self.late_out.write(&line)?;
            }
            if let Some(id) = late_held
                && held.iter().all(|h| *h == Some(id))
            {
                // Every input has reached barrier `id`: what is written now
                // is exactly the output of the records before it.
                self.alerts_out.flush()?;
                self.late_out.flush()?;
                if let Some(near_out) = &mut self.near_out {
                    near_out.flush()?;
                }
                if let Some(tx) = to_writer {
                    let message = Msg::Sink {
                        id,
                        alerts: (self.alerts_out.path.clone(), self.alerts_out.written),
                        late: (self.late_out.path.clone(), self.late_out.written),
                        near: self.near_out.as_ref().map(|o| (o.path.clone(), o.written)),
                        counts: output.alerts,
                        late_count: output.late,
                    };
                    if tx.send(message).is_err() {
                        return Err("checkpoint writer stopped".to_string());
                    }
                }
                for ring in alert_rings.iter_mut() {
                    ring.alerts.release();
                }
                late_ring.release();
                held.iter_mut().for_each(|h| *h = None);
                late_held = None;
                worked = true;
            }
            if worked {
                idle.reset();
                continue;
            }
            self.alerts_out.flush()?;
            self.late_out.flush()?;
            if let Some(near_out) = &mut self.near_out {
                near_out.flush()?;
            }
            if self.live.is_some() && clock.now_ns().saturating_sub(published_ns) >= PUBLISH_EVERY_NS {
                published_ns = clock.now_ns();
                self.publish(&output);
            }
            if late_ring.is_finished() && alert_rings.iter_mut().all(|r| r.alerts.is_finished()) {
                self.publish_final(&output);
                break;
            }
            if stop.raised() {
                self.publish_final(&output);
                return Err("pipeline stopped".to_string());
            }
            idle.wait();
        }
        Ok(output)
    }
}

/// One record in the FEED.md CSV layout, so the late file can be replayed.
pub fn write_feed_line(out: &mut Vec<u8>, e: &Event, names: &Names) {
    let (account, account_len) = names.accounts.get(e.account);
    let (instrument, instrument_len) = names.instruments.get(e.instrument);
    let contra = (e.kind == Kind::Trade).then(|| names.accounts.get(e.contra_account));
    FeedLine {
        seq: e.seq,
        ts_ns: e.ts_ns,
        kind: e.kind,
        order_id: e.order_id,
        account: &account[..account_len],
        instrument: &instrument[..instrument_len],
        side: e.side,
        price: e.price,
        qty: e.qty,
        contra: contra.as_ref().map(|(name, len)| (e.contra_order_id, &name[..*len])),
    }
    .write(out);
    out.push(b'\n');
}
