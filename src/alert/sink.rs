//! The sink thread: drains every shard's alert ring and the late-record
//! ring, resolves names, and writes alerts.jsonl and the late file. All
//! output I/O happens here, off the source and detector cores, buffered and
//! flushed whenever the sink runs out of work (so alerts go out promptly).

use super::{Alert, Rule, Timing, write_json};
use crate::event::{Event, Kind, Side, write_px};
use crate::ingest::csv::HEADER;
use crate::metrics::{Clock, latency_histogram};
use crate::pipeline::{Batch, Stop};
use crate::ring::Idle;
use crate::ring::spsc::Consumer;
use crate::symbols::Names;
use hdrhistogram::Histogram;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct SinkOutput {
    pub alerts: [u64; Rule::ALL.len()],
    pub late: u64,
    pub ingest_to_alert: Histogram<u64>,
    pub ingest_to_applied: Histogram<u64>,
}

struct Out {
    writer: BufWriter<File>,
    path: PathBuf,
    dirty: bool,
}

impl Out {
    fn create(path: &Path) -> Result<Out, String> {
        let file = File::create(path).map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
        Ok(Out { writer: BufWriter::with_capacity(1 << 16, file), path: path.to_path_buf(), dirty: false })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.dirty = true;
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
}

impl Sink {
    /// Creates both output files; called before any thread starts, so a
    /// bad path fails the run before it begins.
    pub fn create(alerts: &Path, late: &Path) -> Result<Sink, String> {
        let alerts_out = Out::create(alerts)?;
        let mut late_out = Out::create(late)?;
        late_out.write(HEADER.as_bytes())?;
        late_out.write(b"\n")?;
        Ok(Sink { alerts_out, late_out })
    }

    pub fn run(
        mut self,
        mut alert_rings: Vec<Consumer<Alert>>,
        mut late_ring: Consumer<Batch>,
        names: Names,
        clock: Clock,
        stop: &Stop,
    ) -> Result<SinkOutput, String> {
        let result = self.drain(&mut alert_rings, &mut late_ring, &names, &clock, stop);
        if result.is_err() {
            stop.raise();
        }
        result
    }

    fn drain(
        &mut self,
        alert_rings: &mut [Consumer<Alert>],
        late_ring: &mut Consumer<Batch>,
        names: &Names,
        clock: &Clock,
        stop: &Stop,
    ) -> Result<SinkOutput, String> {
        let mut output = SinkOutput {
            alerts: [0; Rule::ALL.len()],
            late: 0,
            ingest_to_alert: latency_histogram(),
            ingest_to_applied: latency_histogram(),
        };
        // Unix time is read once; per-alert detection times are derived from
        // the monotonic clock so they never go backwards.
        let unix_at_start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
            - clock.now_ns() as i64;
        let mut line = Vec::with_capacity(512);
        let mut idle = Idle::default();
        loop {
            let mut worked = false;
            for ring in alert_rings.iter_mut() {
                while let Some(alert) = ring.peek() {
                    let alert = *alert;
                    ring.release();
                    worked = true;
                    let now = clock.now_ns();
                    let timing = Timing {
                        detected_unix_ns: unix_at_start + now as i64,
                        ingest_to_applied_ns: alert.applied_ns.saturating_sub(alert.ingest_ns),
                        ingest_to_alert_ns: now.saturating_sub(alert.ingest_ns),
                    };
                    output.ingest_to_alert.saturating_record(timing.ingest_to_alert_ns.max(1));
                    output.ingest_to_applied.saturating_record(timing.ingest_to_applied_ns.max(1));
                    output.alerts[alert.rule as usize] += 1;
                    line.clear();
                    write_json(&mut line, &alert, names, &timing);
                    self.alerts_out.write(&line)?;
                }
            }
            while let Some(batch) = late_ring.peek() {
                line.clear();
                for pending in &batch.events {
                    write_feed_line(&mut line, &pending.event, names);
                }
                output.late += batch.events.len() as u64;
                late_ring.release();
                worked = true;
                self.late_out.write(&line)?;
            }
            if worked {
                idle.reset();
                continue;
            }
            self.alerts_out.flush()?;
            self.late_out.flush()?;
            if late_ring.is_finished() && alert_rings.iter_mut().all(|r| r.is_finished()) {
                break;
            }
            if stop.raised() {
                return Err("pipeline stopped".to_string());
            }
            idle.wait();
        }
        Ok(output)
    }
}

/// One record in the FEED.md CSV layout, so the late file can be replayed.
pub fn write_feed_line(out: &mut Vec<u8>, e: &Event, names: &Names) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(e.seq).as_bytes());
    out.push(b',');
    out.extend_from_slice(num.format(e.ts_ns).as_bytes());
    out.push(b',');
    out.push(e.kind as u8);
    out.push(b',');
    out.extend_from_slice(num.format(e.order_id).as_bytes());
    out.push(b',');
    names.write_account(out, e.account);
    out.push(b',');
    names.write_instrument(out, e.instrument);
    out.push(b',');
    out.push(if e.side == Side::Buy { b'B' } else { b'S' });
    out.push(b',');
    write_px(out, e.price);
    out.push(b',');
    out.extend_from_slice(num.format(e.qty).as_bytes());
    out.push(b',');
    if e.kind == Kind::Trade {
        out.extend_from_slice(num.format(e.contra_order_id).as_bytes());
        out.push(b',');
        names.write_account(out, e.contra_account);
    } else {
        out.push(b',');
    }
    out.push(b'\n');
}
