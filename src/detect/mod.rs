//! Rule evaluation on a shard: per-key window state and one file per rule.
//! Detectors see records in `(ts_ns, seq)` order and do no I/O: they only
//! return alerts. Dispatch is static (a fixed set of optional rules).

pub mod excessive_cancel;
pub mod self_trade;

use crate::alert::Alert;
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Rules;
use crate::event::Event;
use excessive_cancel::ExcessiveCancel;

pub struct Detector {
    excessive_cancel: Option<ExcessiveCancel>,
    self_trade: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DetectorStats {
    pub window_entries: usize,
    pub active_keys: usize,
    pub grew: u64,
}

impl Detector {
    pub fn new(rules: &Rules, window_capacity: usize) -> Detector {
        Detector {
            excessive_cancel: rules.excessive_cancel.map(|params| ExcessiveCancel::new(params, window_capacity)),
            self_trade: rules.self_trade,
        }
    }

    /// Applies one record; alerts are handed to `emit` without timing.
    #[inline]
    pub fn apply(&mut self, event: &Event, emit: &mut impl FnMut(Alert)) {
        if let Some(rule) = self.excessive_cancel.as_mut()
            && let Some(alert) = rule.apply(event)
        {
            emit(alert);
        }
        if self.self_trade
            && let Some(alert) = self_trade::apply(event)
        {
            emit(alert);
        }
    }

    /// Writes the window state (checkpoint barrier; see `checkpoint`).
    pub fn snapshot(&self, w: &mut Writer<'_>) {
        match &self.excessive_cancel {
            Some(rule) => {
                w.u8(1);
                rule.snapshot(w);
            }
            None => w.u8(0),
        }
    }

    /// Loads the keys of every old shard's snapshot that belong to this
    /// shard (`keep`), whatever the old shard count was.
    pub fn restore(&mut self, snapshots: &[Vec<u8>], keep: impl Fn(u64) -> bool) -> Result<(), DecodeError> {
        for snapshot in snapshots {
            let mut r = Reader::new(snapshot);
            let present = r.u8()? != 0;
            match (present, self.excessive_cancel.as_mut()) {
                (true, Some(rule)) => rule.restore(&mut r, &keep)?,
                (false, None) => {}
                _ => return Err(DecodeError("the checkpoint was taken with other rules".into())),
            }
            r.finish()?;
        }
        if let Some(rule) = self.excessive_cancel.as_mut() {
            rule.restored();
        }
        Ok(())
    }

    pub fn stats(&self) -> DetectorStats {
        self.excessive_cancel.as_ref().map(|r| r.stats()).unwrap_or_default()
    }
}
