//! self-trade (自买自卖 / 互为对手方交易): a trade whose buyer and seller are
//! the same account or in the same accounts.csv group. Stateless.

use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::Writer;
use crate::config::Problems;
use crate::detect::rule::{Emit, Kinds, Rule, Seen, Sizing};
use crate::event::Event;
use serde::Deserialize;

pub struct SelfTrade;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    enabled: Option<bool>,
}

impl Rule for SelfTrade {
    const ID: u16 = 2;
    const NAME: &'static str = "self-trade";
    const TABLE: &'static str = "self_trade";
    const VERSION: u16 = 1;
    const KINDS: Kinds = Kinds::TRADE;
    type Raw = Raw;
    /// No parameters: on or off.
    type Params = ();
    type Image = ();

    fn validate(raw: Raw, _: &mut Problems<'_>) -> Option<()> {
        raw.enabled.unwrap_or(true).then_some(())
    }

    fn encode_params(_: &(), _: &mut Writer<'_>) {}

    fn new(_: &(), _: &Sizing) -> SelfTrade {
        SelfTrade
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, _: &Seen<'_>, out: &mut impl Emit) {
        if event.group != event.contra_group {
            return;
        }
        let accounts = event.account as u64 | (event.contra_account as u64) << 32;
        let evidence = Evidence([accounts, event.order_id, event.contra_order_id, event.price as u64, event.qty, 0]);
        out.alert(Alert::about(Self::ID, event, evidence), &[]);
    }

    fn write_evidence(evidence: &Evidence, _: &[u64], json: &mut EvidenceJson<'_>) {
        let [accounts, buy_order_id, sell_order_id, price, qty, _] = evidence.0;
        json.account("buy_account", accounts as u32);
        json.account("sell_account", (accounts >> 32) as u32);
        json.u64("buy_order_id", buy_order_id);
        json.u64("sell_order_id", sell_order_id);
        json.px("price", price as i64);
        json.u64("qty", qty);
    }
}
