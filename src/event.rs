//! The fixed-size record that flows through the pipeline, and the fixed-point
//! price type. Everything downstream of the decoders sees only `Event`.

/// Prices are integers in 1/10,000 of the currency unit (FEED.md allows up to
/// four decimal places), so arithmetic and comparisons are exact.
pub type Px = i64;
pub const PX_SCALE: i64 = 10_000;

/// Interned account, group and instrument ids. Assigned by the source in
/// order of first appearance, so they are the same for a CSV tape and the
/// native tape made from it.
pub type AccountId = u32;
pub type InstrumentId = u32;
/// A group id with `GROUP_SELF` set stands for an account that is in no
/// group: its low bits are the `AccountId`. Otherwise it indexes the group
/// names of accounts.csv.
pub type GroupId = u32;
pub const GROUP_SELF: GroupId = 1 << 31;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Kind {
    #[default]
    New = b'N',
    Cancel = b'C',
    Trade = b'T',
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Side {
    #[default]
    Buy = b'B',
    Sell = b'S',
}

/// One order-book event, decoded, validated and interned.
/// For `T` records `account`/`order_id` are the buyer's and
/// `contra_*` the seller's (FEED.md); for `N`/`C` the contra fields are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Event {
    pub seq: u64,
    pub ts_ns: i64,
    pub order_id: u64,
    pub contra_order_id: u64,
    pub price: Px,
    pub qty: u64,
    pub account: AccountId,
    pub contra_account: AccountId,
    pub group: GroupId,
    pub contra_group: GroupId,
    pub instrument: InstrumentId,
    pub kind: Kind,
    pub side: Side,
    pub _pad: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<Event>() == 72);

impl Event {
    /// The event-time order in which shards apply records.
    #[inline]
    pub fn order_key(&self) -> (i64, u64) {
        (self.ts_ns, self.seq)
    }
}

/// Parses a FEED.md decimal (digits, optional '.', at most four decimals)
/// into 1/10,000 units. Returns `None` on anything else, zero included
/// being the caller's concern.
pub fn parse_px(s: &[u8]) -> Option<Px> {
    let (int_part, frac_part) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => (&s[..dot], &s[dot + 1..]),
        None => (s, &[][..]),
    };
    if int_part.is_empty() || int_part.len() > 14 || frac_part.len() > 4 {
        return None;
    }
    if s.len() > int_part.len() && frac_part.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in int_part {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (b - b'0') as i64;
    }
    let mut frac: i64 = 0;
    for &b in frac_part {
        if !b.is_ascii_digit() {
            return None;
        }
        frac = frac * 10 + (b - b'0') as i64;
    }
    for _ in frac_part.len()..4 {
        frac *= 10;
    }
    Some(value * PX_SCALE + frac)
}

/// Writes a price as FEED.md writes it: always four decimals.
pub fn write_px(out: &mut Vec<u8>, px: Px) {
    // Negative prices never reach the rules, but the rejects file shows
    // them: sign first, then the magnitude (`-1` was written `-0.00-1`-like
    // garbage, and i64::MIN as `-922337203685477.a488`).
    if px < 0 {
        out.push(b'-');
    }
    let magnitude = px.unsigned_abs();
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(magnitude / PX_SCALE as u64).as_bytes());
    out.push(b'.');
    let frac = (magnitude % PX_SCALE as u64) as u32;
    out.extend_from_slice(&[
        b'0' + (frac / 1000) as u8,
        b'0' + (frac / 100 % 10) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 13, finding 6): a re-checksummed native tape with
    /// a negative price printed `-922337203685477.a488`.
    #[test]
    fn regression_negative_prices_are_written_readably() {
        for (px, text) in [
            (-1, "-0.0001"),
            (-102_500, "-10.2500"),
            (i64::MIN, "-922337203685477.5808"),
            (i64::MAX, "922337203685477.5807"),
        ] {
            let mut out = Vec::new();
            write_px(&mut out, px);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn px_table() {
        let cases: &[(&str, Option<Px>)] = &[
            ("10.2500", Some(102_500)),
            ("10.25", Some(102_500)),
            ("10", Some(100_000)),
            ("0.0001", Some(1)),
            ("10.", None),
            (".5", None),
            ("1.23456", None),
            ("1,5", None),
            ("-1", None),
            ("", None),
            ("1e3", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_px(text.as_bytes()), *want, "{text}");
        }
    }

    #[test]
    fn px_round_trip() {
        for px in [1, 9_999, 10_000, 102_500, 123_456_789] {
            let mut out = Vec::new();
            write_px(&mut out, px);
            assert_eq!(parse_px(&out), Some(px));
        }
    }
}
