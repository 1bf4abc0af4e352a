//! The Alert record that detectors emit, and its JSON Lines form. Alerts are
//! fixed-size and carry ids; names are resolved only in the sink, off the
//! detector cores.

use crate::event::{AccountId, GroupId, InstrumentId, Px, write_px};
use crate::symbols::Names;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Rule {
    #[default]
    ExcessiveCancel,
    SelfTrade,
}

impl Rule {
    pub const ALL: [Rule; 2] = [Rule::ExcessiveCancel, Rule::SelfTrade];

    pub fn name(self) -> &'static str {
        match self {
            Rule::ExcessiveCancel => "excessive-cancel",
            Rule::SelfTrade => "self-trade",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Counts over the event-time window `(window_start_ns, window_end_ns]`.
    ExcessiveCancel { window_start_ns: i64, window_end_ns: i64, new_orders: u32, cancels: u32 },
    SelfTrade {
        buy_account: AccountId,
        sell_account: AccountId,
        buy_order_id: u64,
        sell_order_id: u64,
        price: Px,
        qty: u64,
    },
}

impl Default for Evidence {
    fn default() -> Evidence {
        Evidence::ExcessiveCancel { window_start_ns: 0, window_end_ns: 0, new_orders: 0, cancels: 0 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alert {
    pub rule: Rule,
    /// The triggering record.
    pub seq: u64,
    pub ts_ns: i64,
    pub group: GroupId,
    pub account: AccountId,
    pub instrument: InstrumentId,
    pub evidence: Evidence,
    /// Wall-clock stamps (ns since the pipeline started): when the
    /// triggering record's batch left the source, and when the shard applied it.
    pub ingest_ns: u64,
    pub applied_ns: u64,
}

const _: () = assert!(std::mem::size_of::<Alert>() <= 112);

/// Wall-clock facts that are not part of an alert's identity.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub detected_unix_ns: i64,
    pub ingest_to_applied_ns: u64,
    pub ingest_to_alert_ns: u64,
}

/// Appends the JSON object of one alert and a newline. Account and
/// instrument names are plain ASCII by FEED.md; group names are checked at
/// load to need no escaping.
pub fn write_json(out: &mut Vec<u8>, alert: &Alert, names: &Names, timing: &Timing) {
    let mut num = itoa::Buffer::new();
    let rule = alert.rule.name();
    out.extend_from_slice(b"{\"alert_id\":\"");
    out.extend_from_slice(rule.as_bytes());
    out.push(b':');
    names.write_instrument(out, alert.instrument);
    out.push(b':');
    names.write_group(out, alert.group);
    out.push(b':');
    out.extend_from_slice(num.format(alert.seq).as_bytes());
    out.extend_from_slice(b"\",\"rule\":\"");
    out.extend_from_slice(rule.as_bytes());
    out.extend_from_slice(b"\",\"group\":\"");
    names.write_group(out, alert.group);
    out.extend_from_slice(b"\",\"account\":\"");
    names.write_account(out, alert.account);
    out.extend_from_slice(b"\",\"instrument\":\"");
    names.write_instrument(out, alert.instrument);
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(num.format(alert.seq).as_bytes());
    out.extend_from_slice(b",\"ts_ns\":");
    out.extend_from_slice(num.format(alert.ts_ns).as_bytes());
    out.extend_from_slice(b",\"evidence\":{");
    match alert.evidence {
        Evidence::ExcessiveCancel { window_start_ns, window_end_ns, new_orders, cancels } => {
            out.extend_from_slice(b"\"window_start_ns\":");
            out.extend_from_slice(num.format(window_start_ns).as_bytes());
            out.extend_from_slice(b",\"window_end_ns\":");
            out.extend_from_slice(num.format(window_end_ns).as_bytes());
            out.extend_from_slice(b",\"new_orders\":");
            out.extend_from_slice(num.format(new_orders).as_bytes());
            out.extend_from_slice(b",\"cancels\":");
            out.extend_from_slice(num.format(cancels).as_bytes());
        }
        Evidence::SelfTrade { buy_account, sell_account, buy_order_id, sell_order_id, price, qty } => {
            out.extend_from_slice(b"\"buy_account\":\"");
            names.write_account(out, buy_account);
            out.extend_from_slice(b"\",\"sell_account\":\"");
            names.write_account(out, sell_account);
            out.extend_from_slice(b"\",\"buy_order_id\":");
            out.extend_from_slice(num.format(buy_order_id).as_bytes());
            out.extend_from_slice(b",\"sell_order_id\":");
            out.extend_from_slice(num.format(sell_order_id).as_bytes());
            out.extend_from_slice(b",\"price\":\"");
            write_px(out, price);
            out.extend_from_slice(b"\",\"qty\":");
            out.extend_from_slice(num.format(qty).as_bytes());
        }
    }
    out.extend_from_slice(b"},\"timing\":{\"detected_unix_ns\":");
    out.extend_from_slice(num.format(timing.detected_unix_ns).as_bytes());
    out.extend_from_slice(b",\"ingest_to_applied_ns\":");
    out.extend_from_slice(num.format(timing.ingest_to_applied_ns).as_bytes());
    out.extend_from_slice(b",\"ingest_to_alert_ns\":");
    out.extend_from_slice(num.format(timing.ingest_to_alert_ns).as_bytes());
    out.extend_from_slice(b"}}\n");
}
