//! Rule evaluation on a shard: per-key window state and one file per rule.
//! Detectors see records in `(ts_ns, seq)` order and do no I/O: they only
//! return alerts. Dispatch is static (a fixed set of optional rules).

pub mod excessive_cancel;
pub mod rules;
pub mod self_trade;
pub mod views;

use crate::alert::Alert;
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Rules;
use crate::event::Event;
use excessive_cancel::ExcessiveCancel;

pub struct Detector {
    excessive_cancel: Option<ExcessiveCancel>,
    self_trade: bool,
    /// The image of the snapshot in progress (its excessive-cancel part is
    /// held by the rule while it is being copied).
    snapshot: Option<Box<DetectorImage>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DetectorStats {
    pub window_entries: usize,
    pub active_keys: usize,
    pub grew: u64,
}

/// A detector's window state as of a barrier.
#[derive(Default)]
pub struct DetectorImage {
    excessive_cancel: Option<excessive_cancel::Image>,
}

impl DetectorImage {
    /// Room for about `keys` hot keys and `entries` window entries, allocated now.
    pub fn with_capacity(keys: usize, entries: usize) -> DetectorImage {
        let mut image = DetectorImage::default();
        image.prepare(keys, entries);
        image
    }

    /// Grows the image ahead of the state (see `excessive_cancel::Image::prepare`).
    pub fn prepare(&mut self, keys: usize, entries: usize) {
        self.excessive_cancel.get_or_insert_with(Default::default).prepare(keys, entries);
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        match &self.excessive_cancel {
            Some(image) => {
                w.u8(1);
                image.encode(w);
            }
            None => w.u8(0),
        }
    }
}

impl Detector {
    pub fn new(rules: &Rules, window_capacity: usize) -> Detector {
        Detector {
            excessive_cancel: rules.excessive_cancel.map(|params| ExcessiveCancel::new(params, window_capacity)),
            self_trade: rules.self_trade,
            snapshot: None,
        }
    }

    /// Applies one record; alerts are handed to `emit` without timing.
    /// Brings the state that `apply` will need for `event` into cache: a
    /// shard calls it a few records ahead, so the lookups overlap.
    #[inline]
    pub fn prefetch(&self, event: &Event) {
        if let Some(rule) = self.excessive_cancel.as_ref() {
            rule.prefetch(event);
        }
    }

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

    /// Cuts a snapshot of the window state at a checkpoint barrier, into a
    /// reused image: O(hot keys) now, the window entries later, a slice at a
    /// time (`copy_slice`). Records applied meanwhile do not change it: it
    /// is the state as of this call. One snapshot at a time.
    pub fn begin_snapshot(&mut self, mut image: Box<DetectorImage>) {
        assert!(self.snapshot.is_none(), "a snapshot is already in progress");
        if let Some(rule) = self.excessive_cancel.as_mut() {
            rule.begin_snapshot(image.excessive_cancel.take().unwrap_or_default());
        }
        self.snapshot = Some(image);
    }

    /// Whether a snapshot is being copied.
    #[inline]
    pub fn snapshot_in_progress(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Copies up to `max` more window entries of the snapshot in progress;
    /// returns the image once it is complete (then none is in progress).
    pub fn copy_slice(&mut self, max: usize) -> Option<Box<DetectorImage>> {
        let image = self.snapshot.as_mut()?;
        match self.excessive_cancel.as_mut() {
            Some(rule) => {
                if !rule.copy_slice(max) {
                    return None;
                }
                image.excessive_cancel = rule.take_snapshot();
            }
            None => image.excessive_cancel = None,
        }
        self.snapshot.take()
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

    /// (hot keys, window entries) of the window state, for sizing images.
    #[inline]
    pub fn footprint(&self) -> (usize, usize) {
        self.excessive_cancel.as_ref().map_or((0, 0), |r| r.footprint())
    }

    pub fn stats(&self) -> DetectorStats {
        self.excessive_cancel.as_ref().map(|r| r.stats()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::Writer;
    use crate::config::ExcessiveCancelParams;
    use crate::event::Kind;
    use proptest::prelude::*;

    fn rules(min_cancels: u32) -> Rules {
        Rules {
            excessive_cancel: Some(ExcessiveCancelParams { window_ns: 1_000, min_cancels, ratio_pct: 60 }),
            ..Rules::default()
        }
    }

    fn events(raw: &[(i64, u8, u32, u32)]) -> Vec<Event> {
        let mut ts = 0;
        raw.iter()
            .enumerate()
            .map(|(seq, &(step, kind, group, instrument))| {
                ts += step;
                Event {
                    seq: seq as u64,
                    ts_ns: ts,
                    kind: [Kind::New, Kind::Cancel, Kind::Trade][kind as usize],
                    group,
                    contra_group: group ^ (kind as u32 & 1),
                    instrument,
                    ..Event::default()
                }
            })
            .collect()
    }

    fn alerts(detectors: &mut [Detector], events: &[Event], out: &mut Vec<Alert>) {
        let n = detectors.len();
        for e in events {
            detectors[e.instrument as usize % n].apply(e, &mut |a| out.push(a));
        }
    }

    fn shards(rules: &Rules, n: usize) -> Vec<Detector> {
        (0..n).map(|_| Detector::new(rules, 4)).collect()
    }

    /// The alerts of one detector over all `events`, sorted.
    fn uninterrupted(rules: &Rules, events: &[Event]) -> Vec<Alert> {
        let mut expected = Vec::new();
        alerts(&mut shards(rules, 1), events, &mut expected);
        expected.sort_by_key(|a| (a.seq, a.rule));
        expected
    }

    /// A whole snapshot taken now, encoded.
    fn whole_snapshot(d: &mut Detector) -> Vec<u8> {
        d.begin_snapshot(Box::default());
        let image = d.copy_slice(usize::MAX).expect("an unbounded slice completes the snapshot");
        let mut buf = Vec::new();
        image.encode(&mut Writer::new(&mut buf));
        buf
    }

    /// Restores `snapshots` into `after` shards and applies `events`; the
    /// alerts go to `got`, which is then sorted.
    fn resume(rules: &Rules, snapshots: &[Vec<u8>], after: usize, events: &[Event], got: &mut Vec<Alert>) {
        let mut second = shards(rules, after);
        for (index, d) in second.iter_mut().enumerate() {
            d.restore(snapshots, |key| (key as u32) as usize % after == index).unwrap();
        }
        alerts(&mut second, events, got);
        got.sort_by_key(|a| (a.seq, a.rule));
    }

    proptest! {
        /// Snapshot at any point, restore into any shard count, carry on:
        /// the alerts are those of an uninterrupted run.
        #[test]
        fn snapshot_restore_equals_an_uninterrupted_run(
            raw in proptest::collection::vec((0i64..300, 0u8..3, 0u32..4, 0u32..5), 1..400),
            cut in any::<proptest::sample::Index>(),
            before in 1usize..4,
            after in 1usize..4,
            min_cancels in 1u32..4,
        ) {
            let events = events(&raw);
            let cut = cut.index(events.len());
            let rules = rules(min_cancels);
            let expected = uninterrupted(&rules, &events);

            let mut got = Vec::new();
            let mut first = shards(&rules, before);
            alerts(&mut first, &events[..cut], &mut got);
            let snapshots: Vec<Vec<u8>> = first.iter_mut().map(whole_snapshot).collect();
            resume(&rules, &snapshots, after, &events[cut..], &mut got);
            prop_assert_eq!(got, expected);
        }
    }

    proptest! {
        /// A snapshot cut at any point and copied in slices of any size
        /// while later records are applied (expiring entries before or
        /// after they are copied), then restored into any shard count and
        /// carried on from the cut: the alerts are those of an
        /// uninterrupted run, and so are those of the run that copied it.
        #[test]
        fn a_sliced_snapshot_is_the_state_at_its_barrier(
            raw in proptest::collection::vec((0i64..300, 0u8..3, 0u32..4, 0u32..5), 1..400),
            cut in any::<proptest::sample::Index>(),
            before in 1usize..4,
            after in 1usize..4,
            min_cancels in 1u32..4,
            slice in 1usize..8,
            every in 1usize..20,
            presized in any::<bool>(),
        ) {
            let events = events(&raw);
            let cut = cut.index(events.len());
            let rules = rules(min_cancels);
            let expected = uninterrupted(&rules, &events);

            let mut got = Vec::new();
            let mut live = Vec::new();
            let mut first = shards(&rules, before);
            alerts(&mut first, &events[..cut], &mut got);
            live.extend(got.iter().copied());
            for d in first.iter_mut() {
                let image = if presized { DetectorImage::with_capacity(8, 64) } else { DetectorImage::default() };
                d.begin_snapshot(Box::new(image));
            }
            let mut images: Vec<Option<Box<DetectorImage>>> = (0..before).map(|_| None).collect();
            for (i, chunk) in events[cut..].chunks(every).enumerate() {
                alerts(&mut first, chunk, &mut live);
                // Not every shard copies after every chunk: some fall behind.
                for (index, d) in first.iter_mut().enumerate() {
                    if (i + index) % 3 != 2 && let Some(image) = d.copy_slice(slice) {
                        images[index] = Some(image);
                    }
                }
            }
            for (index, d) in first.iter_mut().enumerate() {
                if let Some(image) = d.copy_slice(usize::MAX) {
                    images[index] = Some(image);
                }
                prop_assert!(!d.snapshot_in_progress());
            }
            let snapshots: Vec<Vec<u8>> = images
                .iter()
                .map(|image| {
                    let mut buf = Vec::new();
                    image.as_ref().expect("every snapshot completes").encode(&mut Writer::new(&mut buf));
                    buf
                })
                .collect();
            resume(&rules, &snapshots, after, &events[cut..], &mut got);
            prop_assert_eq!(got, expected.clone());
            live.sort_by_key(|a| (a.seq, a.rule));
            prop_assert_eq!(live, expected);
        }
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_not_a_panic() {
        let rules = rules(2);
        let mut d = Detector::new(&rules, 4);
        for e in events(&[(1, 0, 1, 1), (1, 1, 1, 1), (1, 0, 2, 2)]) {
            d.apply(&e, &mut |_| {});
        }
        let buf = whole_snapshot(&mut d);
        for cut in 0..buf.len() {
            let mut fresh = Detector::new(&rules, 4);
            assert!(fresh.restore(&[buf[..cut].to_vec()], |_| true).is_err(), "cut at {cut}");
        }
        let mut other = Detector::new(&Rules { excessive_cancel: None, ..Rules::default() }, 4);
        assert!(other.restore(&[buf], |_| true).is_err(), "other rules");
    }
}
