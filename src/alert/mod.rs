//! The Alert record that rules emit, and its JSON Lines form. Alerts are
//! fixed-size and carry ids: the rule's stable id, a small inline evidence
//! payload in the rule's own layout, and a reference to a list in the
//! shard's evidence arena. Names, and each rule's evidence JSON (through the
//! registry), are written only in the sink, off the detector cores.

use crate::detect::registry;
use crate::event::{AccountId, GroupId, InstrumentId, Px, write_px};
use crate::symbols::Names;

/// A rule's stable id (`detect::rule::Rule::ID`): what alerts, manifest
/// counts and snapshot sections are keyed by. Never reused.
pub type RuleId = u16;

/// Words of inline evidence an alert carries; each rule lays out its own
/// and writes its own JSON from them (`Rule::write_evidence`).
pub const EVIDENCE_WORDS: usize = 6;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence(pub [u64; EVIDENCE_WORDS]);

/// The alert's list (e.g. the orders that made a pattern) in the shard's
/// evidence arena: the next `len` items after the previous alert's of the
/// same shard. `dropped` items did not fit (`MAX_LIST`) and were counted,
/// not sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListRef {
    pub len: u16,
    pub dropped: u16,
}

/// Items one alert's list may hold; longer lists are cut and the rest counted.
pub const MAX_LIST: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alert {
    pub rule: RuleId,
    /// The triggering record (for a timer, the record that opened what closed).
    pub seq: u64,
    pub ts_ns: i64,
    pub group: GroupId,
    pub account: AccountId,
    pub instrument: InstrumentId,
    pub evidence: Evidence,
    pub list: ListRef,
    /// The rule's parameter version (`registry::param_version`), set when emitted.
    pub params: u32,
    /// Wall-clock stamps (ns since the pipeline started): when the
    /// triggering record's batch left the source, and when the shard applied it.
    pub ingest_ns: u64,
    pub applied_ns: u64,
    /// A near-miss (`near_miss_pct`): the key reached that share of every
    /// threshold without crossing. Written to the near-miss file, not the alerts.
    pub near_miss: bool,
}

const _: () = assert!(std::mem::size_of::<Alert>() <= 112);

impl Alert {
    /// An alert of rule `rule` about `event`'s account, instrument and time.
    #[inline]
    pub fn about(rule: RuleId, event: &crate::event::Event, evidence: Evidence) -> Alert {
        Alert {
            rule,
            seq: event.seq,
            ts_ns: event.ts_ns,
            group: event.group,
            account: event.account,
            instrument: event.instrument,
            evidence,
            ..Alert::default()
        }
    }
}

/// Writes the fields of one alert's `evidence` object; a rule's
/// `write_evidence` calls it once per field, in its order.
pub struct EvidenceJson<'a> {
    out: &'a mut Vec<u8>,
    names: &'a Names,
    first: bool,
    num: itoa::Buffer,
}

impl EvidenceJson<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn u64(&mut self, key: &str, v: u64) {
        self.key(key);
        self.out.extend_from_slice(self.num.format(v).as_bytes());
    }

    pub fn i64(&mut self, key: &str, v: i64) {
        self.key(key);
        self.out.extend_from_slice(self.num.format(v).as_bytes());
    }

    /// A string the rule controls (plain ASCII, nothing to escape).
    pub fn str(&mut self, key: &str, v: &str) {
        debug_assert!(v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    pub fn px(&mut self, key: &str, v: Px) {
        self.key(key);
        self.out.push(b'"');
        write_px(self.out, v);
        self.out.push(b'"');
    }

    pub fn account(&mut self, key: &str, v: AccountId) {
        self.key(key);
        self.out.push(b'"');
        self.names.write_account(self.out, v);
        self.out.push(b'"');
    }

    /// A list of account names (ids from the evidence arena).
    pub fn accounts(&mut self, key: &str, ids: &[u64]) {
        self.key(key);
        self.out.push(b'[');
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.names.write_account(self.out, *id as AccountId);
            self.out.push(b'"');
        }
        self.out.push(b']');
    }

    /// `100 * num / den` with one decimal (e.g. 91.7), as a JSON number.
    pub fn pct(&mut self, key: &str, num: u64, den: u64) {
        self.key(key);
        let tenths = if den == 0 { 0 } else { (num as u128 * 1000 / den as u128) as u64 };
        self.out.extend_from_slice(self.num.format(tenths / 10).as_bytes());
        self.out.push(b'.');
        self.out.push(b'0' + (tenths % 10) as u8);
    }

    /// A signed amount in basis points as a percentage with two decimals (e.g. -4.25).
    pub fn bp_as_pct(&mut self, key: &str, bp: i64) {
        self.key(key);
        if bp < 0 {
            self.out.push(b'-');
        }
        let a = bp.unsigned_abs();
        self.out.extend_from_slice(self.num.format(a / 100).as_bytes());
        self.out.push(b'.');
        self.out.push(b'0' + (a / 10 % 10) as u8);
        self.out.push(b'0' + (a % 10) as u8);
    }

    /// A plain string (the caller's text needs no escaping).
    pub fn text(&mut self, key: &str, v: &str) {
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    /// A list of numbers (e.g. order ids from the evidence arena).
    pub fn u64_list(&mut self, key: &str, items: &[u64]) {
        self.key(key);
        self.out.push(b'[');
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(self.num.format(*v).as_bytes());
        }
        self.out.push(b']');
    }
}

/// Wall-clock facts that are not part of an alert's identity.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub detected_unix_ns: i64,
    pub ingest_to_applied_ns: u64,
    pub ingest_to_alert_ns: u64,
}

/// Appends the JSON object of one alert and a newline; `list` holds the
/// alert's items from its shard's evidence arena. Account and
/// instrument names are plain ASCII by FEED.md; group names are checked at
/// load to need no escaping.
pub fn write_json(out: &mut Vec<u8>, alert: &Alert, list: &[u64], names: &Names, timing: &Timing) {
    let mut num = itoa::Buffer::new();
    let rule = registry::name(alert.rule);
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
    if alert.near_miss {
        out.extend_from_slice(b"\",\"near_miss\":true,\"group\":\"");
    } else {
        out.extend_from_slice(b"\",\"group\":\"");
    }
    names.write_group(out, alert.group);
    out.extend_from_slice(b"\",\"account\":\"");
    names.write_account(out, alert.account);
    out.extend_from_slice(b"\",\"instrument\":\"");
    names.write_instrument(out, alert.instrument);
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(num.format(alert.seq).as_bytes());
    out.extend_from_slice(b",\"ts_ns\":");
    out.extend_from_slice(num.format(alert.ts_ns).as_bytes());
    // The event time again as an ISO string in the trading day's zone:
    // 19-digit integers are rounded by jq and JavaScript.
    out.extend_from_slice(b",\"time\":\"");
    write_iso_time(out, alert.ts_ns);
    out.extend_from_slice(b"\",\"params\":\"");
    for shift in (0..8).rev() {
        out.push(b"0123456789abcdef"[(alert.params >> (shift * 4) & 0xf) as usize]);
    }
    out.extend_from_slice(b"\",\"evidence\":{");
    let mut json = EvidenceJson { out, names, first: true, num: itoa::Buffer::new() };
    registry::write_evidence(alert, list, &mut json);
    if alert.list.dropped > 0 {
        json.u64("list_dropped", alert.list.dropped as u64);
    }
    out.extend_from_slice(b"},\"timing\":{\"detected_unix_ns\":");
    out.extend_from_slice(num.format(timing.detected_unix_ns).as_bytes());
    out.extend_from_slice(b",\"ingest_to_applied_ns\":");
    out.extend_from_slice(num.format(timing.ingest_to_applied_ns).as_bytes());
    out.extend_from_slice(b",\"ingest_to_alert_ns\":");
    out.extend_from_slice(num.format(timing.ingest_to_alert_ns).as_bytes());
    out.extend_from_slice(b"}}\n");
}

/// Writes `ts_ns` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+08:00` (Asia/Shanghai,
/// the trading day's zone; no daylight saving).
pub fn write_iso_time(out: &mut Vec<u8>, ts_ns: i64) {
    use crate::detect::state::episode::{NS_PER_DAY, NS_PER_SEC, ZONE_OFFSET_NS};
    let local = ts_ns + ZONE_OFFSET_NS;
    let days = local.div_euclid(NS_PER_DAY);
    let tod = local.rem_euclid(NS_PER_DAY);
    let (y, m, d) = crate::time::civil_from_days(days);
    let s = tod / NS_PER_SEC;
    // Digits by hand: this runs per alert on the sink, which does not allocate.
    let digits = |out: &mut Vec<u8>, v: i64, n: u32| {
        for i in (0..n).rev() {
            out.push(b'0' + (v / 10i64.pow(i) % 10) as u8);
        }
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, m, 2);
    out.push(b'-');
    digits(out, d, 2);
    out.push(b'T');
    digits(out, s / 3600, 2);
    out.push(b':');
    digits(out, s / 60 % 60, 2);
    out.push(b':');
    digits(out, s % 60, 2);
    out.push(b'.');
    digits(out, tod % NS_PER_SEC, 9);
    out.extend_from_slice(b"+08:00");
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_time_in_the_trading_day_zone() {
        let mut out = Vec::new();
        super::write_iso_time(&mut out, 1_793_602_800_000_000_123);
        assert_eq!(String::from_utf8(out).unwrap(), "2026-11-02T15:00:00.000000123+08:00");
        let mut out = Vec::new();
        super::write_iso_time(&mut out, 0);
        assert_eq!(String::from_utf8(out).unwrap(), "1970-01-01T08:00:00.000000000+08:00");
    }
}
