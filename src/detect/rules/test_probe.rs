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
