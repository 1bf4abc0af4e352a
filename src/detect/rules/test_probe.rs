//! test-probe: a rule that exists only in tests, to prove that a rule is
//! its file plus one registry line. It uses every part of the framework: a
//! parameter, a view (`Reads::LAST_TRADE`), per-instrument state that is
//! checkpointed (a copy-on-write table), an evidence list, and all three
//! hooks. It also checks the shard's promise to rules: no record below a
//! watermark it was given arrives after it.
//!
//! It fires on a trade `jump` or more away from the instrument's previous
//! trade (evidence: the two prices, the instrument's trades so far; list:
//! the two order ids), and at the end of input once per instrument that
//! traded (evidence: its trades; list: the last trade's order ids).

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::detect::rule::{Emit, Kinds, Reads, Rule, RuleStats, Seen, Sizing};
use crate::detect::state::cow::CowTable;
use crate::event::{Event, Px};
use serde::Deserialize;
use toml::Spanned;

/// Per instrument: trades so far, and the last trade (seq, ts, group,
/// account, order ids) for the end-of-input alert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    trades: u64,
    last: Event,
}

pub struct TestProbe {
    jump: Px,
    tally: CowTable<Tally>,
    /// The newest watermark given; a record below it breaks the promise.
    watermark_ns: i64,
    pub ended: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
    jump: Option<Spanned<i64>>,
}

impl Rule for TestProbe {
    const ID: u16 = 0x7f01;
    const NAME: &'static str = "test-probe";
    const TABLE: &'static str = "test_probe";
    const VERSION: u16 = 1;
    const KINDS: Kinds = Kinds::TRADE;
    const READS: Reads = Reads::LAST_TRADE;
    type Raw = Raw;
    type Params = Px;
    type Image = Vec<(u32, Tally)>;

    /// Off unless enabled, so it changes no other test's output or identity.
    fn validate(raw: Raw, p: &mut Problems<'_>) -> Option<Px> {
        let jump = p.int(raw.jump, "jump", 1..=i64::MAX, 10_000);
        raw.enabled.unwrap_or(false).then_some(jump)
    }

    fn encode_params(jump: &Px, w: &mut Writer<'_>) {
        w.i64(*jump);
    }

    fn new(jump: &Px, _: &Sizing) -> TestProbe {
        TestProbe { jump: *jump, tally: CowTable::new(16, Tally::default()), watermark_ns: i64::MIN, ended: false }
    }

    fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
        assert!(event.ts_ns >= self.watermark_ns, "a record below a watermark the rule was given");
        assert!(!self.ended, "a record after the end");
        let mut tally = self.tally.get(event.instrument);
        tally.trades += 1;
        tally.last = *event;
        self.tally.set(event.instrument, tally);
        if let Some(before) = seen.last_trade
            && (event.price - before).abs() >= self.jump
        {
            let evidence = Evidence([before as u64, event.price as u64, tally.trades, 0, 0, 0]);
            out.alert(Alert::about(Self::ID, event, evidence), &[event.order_id, event.contra_order_id]);
        }
    }

    fn on_watermark(&mut self, watermark_ns: i64, _: &mut impl Emit) {
        assert!(watermark_ns > self.watermark_ns, "watermarks only advance");
        self.watermark_ns = watermark_ns;
    }

    fn on_end(&mut self, out: &mut impl Emit) {
        self.ended = true;
        for (_, tally) in self.tally.iter() {
            let evidence = Evidence([0, 0, tally.trades, 1, 0, 0]);
            out.alert(
                Alert::about(Self::ID, &tally.last, evidence),
                &[tally.last.order_id, tally.last.contra_order_id],
            );
        }
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        let [from, to, trades, end, ..] = evidence.0;
        if end == 0 {
            json.px("from", from as i64);
            json.px("to", to as i64);
        }
        json.u64("trades", trades);
        json.u64_list("orders", list);
    }

    fn stats(&self) -> RuleStats {
        RuleStats { grew: self.tally.grew, ..RuleStats::default() }
    }

    fn begin_snapshot(&mut self, image: Self::Image) {
        self.tally.begin_snapshot(image);
    }

    fn copy_slice(&mut self, max: usize) -> Option<Self::Image> {
        self.tally.copy_slice(max)
    }

    fn encode_image(image: &Self::Image, w: &mut Writer<'_>) {
        w.u64(image.len() as u64);
        for (instrument, t) in image {
            w.u32(*instrument);
            w.u64(t.trades);
            crate::checkpoint::write_event(w, &t.last);
        }
    }

    fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        for _ in 0..r.count(12)? {
            let (instrument, trades, last) = (r.u32()?, r.u64()?, crate::checkpoint::read_event(r)?);
            if keep(instrument as u64) {
                self.tally.set(instrument, Tally { trades, last });
            }
        }
        Ok(())
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        Ok(vec![("instruments", Reader::new(section).u64()?)])
    }
}

/// The proof that a rule is its file, its tests and a registry line: the
/// probe runs through the whole pipeline (views, hooks, evidence lists,
/// JSON, checkpoints and resume under another shard count) and nothing
/// outside this file and the registry names it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Alert;
    use crate::checkpoint::codec::Writer;
    use crate::cmd::replay::{ReplayArgs, replay};
    use crate::config::Rules;
    use crate::detect::{Detector, DetectorImage};
    use crate::event::Kind;
    use crate::generator::{GenConfig, generate};
    use proptest::prelude::*;
    use serde_json::Value;
    use std::path::Path;

    fn trades(raw: &[(i64, u32, i64)]) -> Vec<Event> {
        let mut ts = 0;
        let trade = |(seq, &(step, instrument, price)): (usize, &(i64, u32, i64))| {
            ts += step;
            Event {
                seq: seq as u64,
                ts_ns: ts,
                kind: Kind::Trade,
                instrument,
                price,
                order_id: seq as u64,
                ..Event::default()
            }
        };
        raw.iter().enumerate().map(trade).collect()
    }

    /// Applies `events` to `shards` by instrument, then ends them; alerts sorted.
    fn run(shards: &mut [Detector], events: &[Event], end: bool, out: &mut Vec<(Alert, Vec<u64>)>) {
        let n = shards.len();
        for e in events {
            shards[e.instrument as usize % n].apply(e, &mut |a: Alert, l: &[u64]| out.push((a, l.to_vec())));
        }
        if end {
            for d in shards.iter_mut() {
                d.end(&mut |a: Alert, l: &[u64]| out.push((a, l.to_vec())));
            }
        }
        out.sort_by_key(|(a, l)| (a.seq, a.instrument, a.evidence.0, l.clone()));
    }

    proptest! {
        /// The view's and the probe's sections, cut at any record and copied
        /// in slices of any size while later records change them, restore
        /// into any shard count: the alerts (end-of-input ones included, which
        /// count every trade) are those of an uninterrupted run.
        #[test]
        fn sliced_sections_restore_into_any_shard_count(
            raw in proptest::collection::vec((0i64..50, 0u32..40, 0i64..4), 1..300),
            cut in any::<proptest::sample::Index>(),
            before in 1usize..4,
            after in 1usize..4,
            slice in 1usize..6,
        ) {
            let rules = Rules::parse("[test_probe]\nenabled = true\njump = 2\n").unwrap();
            let events = trades(&raw);
            let cut = cut.index(events.len());
            let mut expected = Vec::new();
            run(&mut [Detector::new(&rules, 4)], &events, true, &mut expected);

            let mut first: Vec<Detector> = (0..before).map(|_| Detector::new(&rules, 4)).collect();
            let mut got = Vec::new();
            run(&mut first, &events[..cut], false, &mut got);
            for d in first.iter_mut() {
                d.begin_snapshot(Box::new(DetectorImage::default()));
            }
            // Records after the cut change the live tables while they are copied.
            let mut ignored = Vec::new();
            let mut images: Vec<Option<Box<DetectorImage>>> = (0..before).map(|_| None).collect();
            for chunk in events[cut..].chunks(3) {
                run(&mut first, chunk, false, &mut ignored);
                for (d, image) in first.iter_mut().zip(images.iter_mut()) {
                    if image.is_none() {
                        *image = d.copy_slice(slice);
                    }
                }
            }
            let snapshots: Vec<Vec<u8>> = first
                .iter_mut()
                .zip(images)
                .map(|(d, image)| {
                    let image = image.or_else(|| d.copy_slice(usize::MAX)).unwrap();
                    let mut buf = Vec::new();
                    image.encode(&mut Writer::new(&mut buf));
                    buf
                })
                .collect();
            let mut second: Vec<Detector> = (0..after).map(|_| Detector::new(&rules, 4)).collect();
            for (index, d) in second.iter_mut().enumerate() {
                d.restore(&snapshots, |key| (key as u32) as usize % after == index).unwrap();
            }
            run(&mut second, &events[cut..], true, &mut got);
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn nothing_outside_its_file_and_the_registry_names_the_probe() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for line in text.lines() {
                        if ["test_probe", "TestProbe", "test-probe"].iter().any(|n| line.contains(n)) {
                            found.push((
                                path.strip_prefix(&src).unwrap().to_string_lossy().into_owned(),
                                line.trim().to_string(),
                            ));
                        }
                    }
                }
            }
        }
        let outside: Vec<_> = found.iter().filter(|(file, _)| file != "detect/rules/test_probe.rs").collect();
        assert_eq!(
            outside.iter().map(|(f, l)| (f.as_str(), l.as_str())).collect::<Vec<_>>(),
            vec![
                ("detect/registry.rs", "test_probe: super::rules::test_probe::TestProbe,"),
                ("detect/rules/mod.rs", "pub mod test_probe;"),
            ],
            "the probe is named outside its file and its registry line"
        );
    }

    #[test]
    fn off_by_default_and_off_leaves_the_identity_unchanged() {
        let rules = Rules::default();
        assert!(!rules.enabled(TestProbe::ID));
        let on = Rules::parse("[test_probe]\nenabled = true\n").unwrap();
        assert_ne!(rules.canonical(), on.canonical());
        assert!(on.reads().has(Reads::LAST_TRADE) && !rules.reads().has(Reads::LAST_TRADE));
        let bad = Rules::parse("[test_probe]\njump = 0\n[excessive_cancel]\nratio_pct = -1\n").unwrap_err();
        assert_eq!(bad.len(), 2, "every problem at once: {bad:?}");
        assert!(bad.iter().any(|p| p.starts_with("line 2: test_probe.jump = 0 is out of range")), "{bad:?}");
    }

    fn args(dir: &Path, tape: &Path, rules: &Path, shards: usize, out: &str) -> ReplayArgs {
        let mut args = ReplayArgs { quiet: true, ..ReplayArgs::for_tape(tape, &dir.join(out)) };
        args.reference.rules = Some(rules.to_path_buf());
        args.pipeline.shards = Some(shards);
        args.pipeline.cores = "none".to_string();
        args
    }

    /// Alerts without `timing`, sorted.
    fn alerts(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut all: Vec<Value> = text
            .lines()
            .map(|line| {
                let mut v: Value = serde_json::from_str(line).unwrap();
                v.as_object_mut().unwrap().remove("timing");
                v
            })
            .collect();
        all.sort_by_key(|a| (a["seq"].as_u64(), a["rule"].as_str().map(str::to_string), a.to_string()));
        all
    }

    #[test]
    fn through_the_pipeline_checkpoints_and_resume_under_any_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let tape = dir.path().join("day.csv");
        generate(&GenConfig::new(40_000, 11), &tape).unwrap();
        let probe = dir.path().join("probe.toml");
        std::fs::write(&probe, "[test_probe]\nenabled = true\njump = 1\n").unwrap();
        let without = dir.path().join("without.toml");
        std::fs::write(&without, "").unwrap();

        replay(&args(dir.path(), &tape, &probe, 1, "one.jsonl")).unwrap();
        let expected = alerts(&dir.path().join("one.jsonl"));
        let of = |rule: &str| expected.iter().filter(|a| a["rule"] == rule).count();
        let jumps: Vec<&Value> =
            expected.iter().filter(|a| a["rule"] == "test-probe" && a["evidence"].get("from").is_some()).collect();
        let ends = of("test-probe") - jumps.len();
        assert!(jumps.len() > 20 && ends > 5, "{} jumps, {ends} end-of-input alerts", jumps.len());
        for a in &jumps {
            assert_eq!(a["evidence"]["orders"].as_array().unwrap().len(), 2, "{a}");
            assert!(a["alert_id"].as_str().unwrap().starts_with("test-probe:"), "{a}");
        }
        assert!(of("excessive-cancel") + of("self-trade") > 0);

        // The other rules' alerts do not change when the probe is on.
        replay(&args(dir.path(), &tape, &without, 1, "plain.jsonl")).unwrap();
        let others: Vec<Value> = expected.iter().filter(|a| a["rule"] != "test-probe").cloned().collect();
        assert_eq!(alerts(&dir.path().join("plain.jsonl")), others);

        replay(&args(dir.path(), &tape, &probe, 3, "three.jsonl")).unwrap();
        assert_eq!(alerts(&dir.path().join("three.jsonl")), expected, "3 shards");

        // Checkpoints every 3000 records with 2 shards; then a second run
        // resumes from the newest checkpoint under 3 shards and replays the
        // rest: the probe's state and the view came back from their sections.
        let state = dir.path().join("state");
        let mut with_state = args(dir.path(), &tape, &probe, 2, "ckpt.jsonl");
        with_state.state = Some(state.clone());
        with_state.checkpoint_every_records = Some(3000);
        with_state.checkpoint_interval_ms = Some(0);
        with_state.checkpoint_exact = true;
        let summary = replay(&with_state).unwrap();
        assert!(summary.checkpoints.as_ref().is_some_and(|c| c.taken >= 5));
        assert_eq!(alerts(&dir.path().join("ckpt.jsonl")), expected, "with checkpoints");
        with_state.pipeline.shards = Some(3);
        let resumed = replay(&with_state).unwrap();
        assert!(resumed.checkpoints.as_ref().is_some_and(|c| c.resumed_from.is_some()), "it resumed");
        assert_eq!(alerts(&dir.path().join("ckpt.jsonl")), expected, "resumed under 3 shards");

        // A checkpoint taken with the probe on is refused with it off.
        let mut off = with_state;
        off.reference.rules = Some(without);
        assert!(replay(&off).is_err(), "the identity includes the enabled rules");
    }
}
