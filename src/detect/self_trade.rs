//! self-trade (自买自卖 / 互为对手方交易): a trade whose buyer and seller are
//! the same account or in the same accounts.csv group. Stateless.

use crate::alert::{Alert, Evidence, Rule};
use crate::event::{Event, Kind};

#[inline]
pub fn apply(event: &Event) -> Option<Alert> {
    if event.kind != Kind::Trade || event.group != event.contra_group {
        return None;
    }
    Some(Alert {
        rule: Rule::SelfTrade,
        seq: event.seq,
        ts_ns: event.ts_ns,
        group: event.group,
        account: event.account,
        instrument: event.instrument,
        evidence: Evidence::SelfTrade {
            buy_account: event.account,
            sell_account: event.contra_account,
            buy_order_id: event.order_id,
            sell_order_id: event.contra_order_id,
            price: event.price,
            qty: event.qty,
        },
        ..Alert::default()
    })
}
