//! Rule evaluation on a shard: the shared views and the enabled rules of
//! the registry, behind one `Detector`. Detectors see records in `(ts_ns,
//! seq)` order and do no I/O: they hand alerts to an `Emit`. Dispatch is
//! static (the registry's `Active`, one optional field per rule).
//!
//! - `rule.rs`: the rule interface and what the shard promises a rule.
//! - `registry.rs`: the one list of rules.
//! - `rules/`: one file per rule. `views/`: shared per-instrument views.
//! - `state/`: containers that snapshot incrementally.
//!
//! A shard snapshot is a list of sections, one per enabled rule and per
//! view kept: `(id, version, length, bytes)`.

pub mod registry;
pub mod rule;
pub mod rules;
pub mod state;
pub mod views;

use crate::alert::{Alert, RuleId};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Rules;
use crate::event::Event;
use registry::{Active, Images, read_section};
use rule::{Emit, RuleStats, Sizing};
use views::book::BookStats;
use views::{ViewConfig, ViewImages, Views};

/// A closure is an `Emit` (tests, and the shard's sender).
impl<F: FnMut(Alert, &[u64])> Emit for F {
    #[inline(always)]
    fn alert(&mut self, alert: Alert, list: &[u64]) {
        self(alert, list)
    }
}

pub struct Detector {
    rules: Active,
    views: Views,
    /// The instruments' tiers, when the rules have tier tables.
    tiers: Option<TierLookup>,
    /// The newest watermark the rules were given.
    watermark_ns: i64,
    /// The image of the snapshot in progress.
    snapshot: Option<Box<DetectorImage>>,
}

pub type DetectorStats = RuleStats;

/// Each instrument's tier index (`Rules::tiers`), looked up in
/// instruments.csv once per instrument id and kept by id: no hashing per record.
struct TierLookup {
    reference: views::book::Reference,
    names: Vec<String>,
    by_id: Vec<u8>,
}

const TIER_UNKNOWN: u8 = u8::MAX;

impl TierLookup {
    fn new(reference: views::book::Reference, names: Vec<String>) -> TierLookup {
        TierLookup { reference, names, by_id: vec![TIER_UNKNOWN; 1024] }
    }

    #[inline]
    fn of(&mut self, instrument: u32) -> u8 {
        match self.by_id.get(instrument as usize) {
            Some(&tier) if tier != TIER_UNKNOWN => tier,
            _ => self.look_up(instrument),
        }
    }

    /// An instrument not in instruments.csv, or without a tier, or in a tier
    /// no rule names, is on the base tables (0).
    #[cold]
    fn look_up(&mut self, instrument: u32) -> u8 {
        let (bytes, len) = self.reference.names.get(instrument);
        let tier = self
            .reference
            .instruments
            .get(crate::symbols::pack(&bytes[..len]))
            .and_then(|info| info.tier.as_deref())
            .and_then(|tier| self.names.iter().position(|n| n == tier))
            .map_or(0, |i| i as u8 + 1);
        let at = instrument as usize;
        if at >= self.by_id.len() {
            self.by_id.resize((at + 1).next_power_of_two(), TIER_UNKNOWN);
        }
        self.by_id[at] = tier;
        tier
    }
}

/// A detector's state as of a barrier: each enabled rule's and each view's.
#[derive(Default)]
pub struct DetectorImage {
    rules: Images,
    views: ViewImages,
}

impl DetectorImage {
    /// Grows the images of the enabled rules ahead of the state (see `Rule::prepare_image`).
    pub fn prepare(&mut self, keys: usize, entries: usize) {
        self.rules.prepare(keys, entries);
    }

    /// The sections: a count, then `(id, version, length, bytes)` each.
    pub fn encode(&self, w: &mut Writer<'_>) {
        let at = w.out.len();
        w.u32(0);
        let n = self.rules.encode(w) + self.views.encode(w);
        w.out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
}

impl Detector {
    pub fn new(rules: &Rules, window_capacity: usize) -> Detector {
        Detector::with_views(rules, window_capacity, &ViewConfig::default())
    }

    /// A detector whose views get `views` (the book's reference data and
    /// limits, and whether it is kept with no rule reading it).
    pub fn with_views(rules: &Rules, window_capacity: usize, views: &ViewConfig) -> Detector {
        Detector {
            rules: Active::new(rules, &Sizing { window_capacity }),
            views: Views::for_rules(rules, views),
            tiers: (!rules.tiers.names.is_empty())
                .then(|| views.reference.clone().map(|r| TierLookup::new(r, rules.tiers.names.clone())))
                .flatten(),
            watermark_ns: i64::MIN,
            snapshot: None,
        }
    }

    /// An image for this detector's snapshots, with room for about `keys`
    /// hot keys and `entries` window entries, allocated now. Only the
    /// enabled rules get one.
    pub fn image_with_capacity(&self, keys: usize, entries: usize) -> DetectorImage {
        let mut image = DetectorImage { rules: self.rules.new_images(), views: ViewImages::default() };
        image.prepare(keys, entries);
        image
    }

    /// Brings the state that `apply` will need for `event` into cache: a
    /// shard calls it a few records ahead, so the lookups overlap.
    #[inline(always)]
    pub fn prefetch(&self, event: &Event) {
        self.views.prefetch(event);
        self.rules.prefetch(event);
    }

    /// The order book's counters, when the book is kept.
    pub fn book_stats(&self) -> Option<BookStats> {
        self.views.book_stats()
    }

    /// Applies one record: the views, then the rules that want its kind.
    /// Alerts are handed to `emit` without timing.
    #[inline(always)]
    pub fn apply(&mut self, event: &Event, emit: &mut impl Emit) {
        let mut seen = self.views.update(event);
        if let Some(tiers) = self.tiers.as_mut() {
            seen.tier = tiers.of(event.instrument);
        }
        self.rules.on_record(event, &seen, emit);
    }

    /// Event time reached `watermark_ns`: every record below it has been
    /// applied (see `rule.rs` for the promise). Only an advance reaches the rules.
    #[inline]
    pub fn watermark(&mut self, watermark_ns: i64, emit: &mut impl Emit) {
        if watermark_ns > self.watermark_ns {
            self.watermark_ns = watermark_ns;
            self.rules.on_watermark(watermark_ns, emit);
        }
    }

    /// No more records.
    pub fn end(&mut self, emit: &mut impl Emit) {
        self.rules.on_end(emit);
    }

    /// Cuts a snapshot of the state at a checkpoint barrier, into a reused
    /// image: O(hot keys) now, the rest later, a slice at a time
    /// (`copy_slice`). Records applied meanwhile do not change it: it is
    /// the state as of this call. One snapshot at a time.
    pub fn begin_snapshot(&mut self, mut image: Box<DetectorImage>) {
        assert!(self.snapshot.is_none(), "a snapshot is already in progress");
        // An image of a rule that is off would become a section.
        image.rules.keep_only(&self.rules);
        self.rules.begin_snapshot(&mut image.rules);
        self.views.begin_snapshot(&mut image.views);
        self.snapshot = Some(image);
    }

    /// Whether a snapshot is being copied.
    #[inline]
    pub fn snapshot_in_progress(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Copies up to `max` more items of each part of the snapshot in
    /// progress; returns the image once it is complete (then none is in progress).
    pub fn copy_slice(&mut self, max: usize) -> Option<Box<DetectorImage>> {
        let image = self.snapshot.as_mut()?;
        let rules = self.rules.copy_slice(max, &mut image.rules);
        let views = self.views.copy_slice(max, &mut image.views);
        if rules && views { self.snapshot.take() } else { None }
    }

    /// Loads the keys of every old shard's snapshot that belong to this
    /// shard (`keep`), whatever the old shard count was. Each snapshot must
    /// hold one section per enabled rule and per view kept, and no other.
    pub fn restore(&mut self, snapshots: &[Vec<u8>], keep: impl Fn(u64) -> bool) -> Result<(), DecodeError> {
        self.restore_sections(snapshots, &keep, None)
    }

    /// Restores a checkpoint cut under other rules (a reload,
    /// `topology::Resumed::carry`): the sections of the rules in `carry`
    /// (enabled here, with the parameters they had) and of the views this
    /// detector keeps are restored; every other section is dropped, and a
    /// rule or view without one starts empty. Each carried rule must have
    /// its section in every snapshot.
    pub fn restore_carrying(
        &mut self,
        snapshots: &[Vec<u8>],
        keep: impl Fn(u64) -> bool,
        carry: &[RuleId],
    ) -> Result<(), DecodeError> {
        self.restore_sections(snapshots, &keep, Some(carry))
    }

    /// The one walk over the snapshots' sections of `restore` (`carry`
    /// `None`: every section restored, and every enabled rule and kept view
    /// required) and `restore_carrying` (the carried rules required, views
    /// restored where present, other rules' sections dropped).
    fn restore_sections(
        &mut self,
        snapshots: &[Vec<u8>],
        keep: &dyn Fn(u64) -> bool,
        carry: Option<&[RuleId]>,
    ) -> Result<(), DecodeError> {
        let views = self.views.ids();
        let mut want = match carry {
            None => self.rules.ids().into_iter().chain(views.iter().copied()).collect(),
            Some(carry) => carry.to_vec(),
        };
        want.sort_unstable();
        for snapshot in snapshots {
            let mut r = Reader::new(snapshot);
            let mut found = Vec::with_capacity(want.len());
            for _ in 0..r.u32()? {
                let section = read_section(&mut r)?;
                let id = section.0;
                match carry {
                    None => {
                        if !self.rules.restore(section, keep)? && !self.views.restore(section, keep)? {
                            return Err(DecodeError(format!("section {id:#x} is no rule or view of this build")));
                        }
                    }
                    Some(_) if views.contains(&id) => {
                        self.views.restore(section, keep)?;
                        continue;
                    }
                    Some(_) if want.binary_search(&id).is_err() => continue,
                    Some(_) => {
                        if !self.rules.restore(section, keep)? {
                            return Err(DecodeError(format!("section {id:#x} is no rule of this build")));
                        }
                    }
                }
                found.push(id);
            }
            r.finish()?;
            found.sort_unstable();
            if found != want {
                return Err(DecodeError(match carry {
                    None => format!(
                        "sections {found:x?}, the enabled rules and views need {want:x?}: the checkpoint was taken with other rules"
                    ),
                    Some(_) => format!("rule sections {found:x?}, the rules carried over need {want:x?}"),
                }));
            }
        }
        self.rules.restored();
        Ok(())
    }

    /// (hot keys, window entries) of the state, for sizing images.
    #[inline]
    pub fn footprint(&self) -> (usize, usize) {
        let s = self.rules.stats();
        (s.hot_keys, s.window_entries)
    }

    /// Episodes and suppressed crossings per rule (registry order).
    pub fn episodes(&self) -> registry::EpisodeTotals {
        self.rules.episodes()
    }

    /// Records refused per rule (a new key past a key table's limit),
    /// registry order. The spoof stream is spoofing's and layering's state:
    /// a key it refuses is lost to each of them that is on.
    pub fn keys_refused(&self) -> registry::Counts {
        let by_rule = self.rules.keys_refused();
        let spoof = self.views.spoof_keys_refused();
        let mut out = [0; registry::RULE_COUNT];
        for ((n, refused), rule) in out.iter_mut().zip(by_rule).zip(registry::RULES) {
            if let Some(refused) = refused {
                *n = refused + if matches!(rule.name, "spoofing" | "layering") { spoof } else { 0 };
            }
        }
        out
    }

    pub fn stats(&self) -> DetectorStats {
        let mut s = self.rules.stats();
        s.grew += self.views.grew();
        // The spoof stream is spoofing's and layering's state.
        if let Some((keys, entries)) = self.views.spoof_footprint() {
            s.active_keys += keys;
            s.window_entries += entries;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::Writer;
    use crate::detect::rules::excessive_cancel::Params as ExcessiveCancelParams;
    use crate::event::Kind;
    use proptest::prelude::*;

    fn rules(min_cancels: u32) -> Rules {
        Rules {
            excessive_cancel: Some(ExcessiveCancelParams {
                window_ns: 1_000,
                min_cancels,
                ratio_pct: 60,
                cooldown_ns: 0,
                near_miss_pct: None,
            }),
            // These streams are not book-consistent (zero quantities, unknown
            // orders): the book rules and the book view they keep stay out.
            spoofing: None,
            layering: None,
            momentum_ignition: None,
            // These events are not a valid book (every order id is 0): the
            // rules that read the book are off here (their own tests cover them).
            instant_cancel: None,
            marking_open: None,
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
            detectors[e.instrument as usize % n].apply(e, &mut |a: Alert, _: &[u64]| out.push(a));
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
                let image = if presized { d.image_with_capacity(8, 64) } else { DetectorImage::default() };
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

    /// A reload (`restore_carrying`): a carried rule's state goes on as if
    /// uninterrupted, a rule not carried starts empty, and a carried rule
    /// whose section the snapshot lacks is an error.
    #[test]
    fn a_reload_carries_the_named_rules_and_drops_the_rest() {
        let rules = rules(2);
        // A new order and a cancel, then the cut, then the cancel that makes two.
        let events = events(&[(1, 0, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1)]);
        let seqs = |alerts: &[Alert]| alerts.iter().map(|a| a.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&uninterrupted(&rules, &events)), [2]);
        let mut before = shards(&rules, 1);
        alerts(&mut before, &events[..2], &mut Vec::new());
        let snapshot = whole_snapshot(&mut before[0]);
        let id_of = |name: &str| registry::RULES.iter().find(|r| r.name == name).expect("a rule").id;
        let resumed = |carry: &[RuleId]| -> Result<Vec<u64>, DecodeError> {
            let mut after = shards(&rules, 1);
            after[0].restore_carrying(std::slice::from_ref(&snapshot), |_| true, carry)?;
            let mut got = Vec::new();
            alerts(&mut after, &events[2..], &mut got);
            Ok(seqs(&got))
        };
        assert_eq!(resumed(&[id_of("excessive-cancel")]), Ok(vec![2]), "carried: the window goes on");
        assert_eq!(resumed(&[]), Ok(vec![]), "not carried: one cancel in an empty window");
        let err = resumed(&[id_of("excessive-cancel"), id_of("spoofing")]).expect_err("spoofing has no section");
        assert!(err.0.contains("the rules carried over need"), "{}", err.0);
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_not_a_panic() {
        let rules = rules(2);
        let mut d = Detector::new(&rules, 4);
        for e in events(&[(1, 0, 1, 1), (1, 1, 1, 1), (1, 0, 2, 2)]) {
            d.apply(&e, &mut |_: Alert, _: &[u64]| {});
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
