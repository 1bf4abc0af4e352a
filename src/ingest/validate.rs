//! Checks every format shares, applied in feed order: sequence numbers
//! (gaps counted, repeats rejected), the order lifecycle of FEED.md, and
//! interning. The validator owns the open-order table and the interners.

use super::{FeedStats, GAP_RANGES_KEPT, decode_stats, encode_stats};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::event::{AccountId, Event, InstrumentId, Kind, Side};
use crate::flat_map::FlatMap;
use crate::symbols::{Groups, Interner, Packed, pack, valid_account, valid_instrument};
use std::fmt;
use std::sync::Arc;

/// A record as decoded from text, before interning and lifecycle checks.
/// Names are packed (`symbols::pack`) by the decoder, already checked
/// against FEED.md's name rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawRecord {
    pub seq: u64,
    pub ts_ns: i64,
    pub kind: Kind,
    pub order_id: u64,
    pub account: Packed,
    pub instrument: Packed,
    pub side: Side,
    pub price: i64,
    pub qty: u64,
    pub contra_order_id: u64,
    /// Zero on N and C records.
    pub contra_account: Packed,
}

/// Why a record was rejected. Every variant names what was wrong so the
/// rejects file reads on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    EmptyLine,
    LineTooLong(usize),
    ColumnCount(usize),
    BadField(&'static str),
    /// `contra_order_id`/`contra_account` filled on an N or C record.
    ContraOnOrder(&'static str),
    /// `contra_order_id`/`contra_account` empty on a T record.
    MissingContra(&'static str),
    RepeatedSeq {
        seq: u64,
        expected: u64,
    },
    DuplicateOrder(u64),
    UnknownOrder(u64),
    SelfMatch(u64),
    Mismatch {
        order_id: u64,
        field: &'static str,
    },
    CancelQty {
        order_id: u64,
        qty: u64,
        open: u64,
    },
    Overfill {
        order_id: u64,
        qty: u64,
        open: u64,
    },
    TableFull(&'static str),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::EmptyLine => write!(f, "empty line"),
            RejectReason::LineTooLong(n) => write!(f, "line longer than {n} bytes"),
            RejectReason::ColumnCount(n) => write!(f, "wrong column count: {n} (expected 11)"),
            RejectReason::BadField(field) => write!(f, "bad {field}"),
            RejectReason::ContraOnOrder(field) => write!(f, "{field} must be empty on an N or C record"),
            RejectReason::MissingContra(field) => write!(f, "{field} missing on a T record"),
            RejectReason::RepeatedSeq { seq, expected } => {
                write!(f, "repeated or backward seq {seq} (expected {expected})")
            }
            RejectReason::DuplicateOrder(id) => write!(f, "order {id} announced twice"),
            RejectReason::UnknownOrder(id) => write!(f, "order {id} unknown, or already fully executed or cancelled"),
            RejectReason::SelfMatch(id) => write!(f, "trade of order {id} against itself"),
            RejectReason::Mismatch { order_id, field } => write!(f, "{field} differs from order {order_id}'s"),
            RejectReason::CancelQty { order_id, qty, open } => {
                write!(f, "cancel qty {qty} of order {order_id} is not its open qty {open}")
            }
            RejectReason::Overfill { order_id, qty, open } => {
                write!(f, "trade qty {qty} exceeds order {order_id}'s open qty {open}")
            }
            RejectReason::TableFull(table) => write!(f, "{table} table full"),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct OpenOrder {
    open_qty: u64,
    account: AccountId,
    instrument: InstrumentId,
    side: Side,
}

/// Stated limits of the validator's tables.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub accounts: usize,
    pub instruments: usize,
    pub open_orders: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { accounts: 1 << 20, instruments: 1 << 16, open_orders: 1 << 24 }
    }
}

pub struct Validator {
    pub accounts: Interner,
    pub instruments: Interner,
    groups: Arc<Groups>,
    /// The group of each interned account, so groups are resolved once per account, not per record.
    account_groups: Vec<u32>,
    open: FlatMap<u64, OpenOrder>,
    open_limit: usize,
    expected_seq: Option<u64>,
    pub stats: FeedStats,
}

impl Validator {
    pub fn new(limits: Limits, groups: Arc<Groups>) -> Validator {
        // Sized for a busy book, not the limit: a table much larger than
        // the open orders spreads every lookup over cold cache lines.
        let open = FlatMap::with_capacity(limits.open_orders.min(1 << 16));
        Validator {
            accounts: Interner::new(limits.accounts),
            instruments: Interner::new(limits.instruments),
            groups,
            account_groups: Vec::with_capacity(limits.accounts.min(1 << 20)),
            open,
            open_limit: limits.open_orders,
            expected_seq: None,
            stats: FeedStats::default(),
        }
    }

    /// Checks a record's seq before anything else: a repeat is rejected, a
    /// jump forward is a gap (counted, then the record is judged on its own).
    pub fn check_seq(&mut self, seq: u64, line_no: u64) -> Result<(), RejectReason> {
        match self.expected_seq {
            Some(expected) if seq < expected => return Err(RejectReason::RepeatedSeq { seq, expected }),
            Some(expected) if seq > expected => {
                self.stats.gaps += 1;
                self.stats.missing_records += seq - expected;
                if self.stats.gap_ranges.len() < GAP_RANGES_KEPT {
                    self.stats.gap_ranges.push((expected, seq - 1, line_no));
                }
            }
            _ => {}
        }
        self.expected_seq = Some(seq + 1);
        Ok(())
    }

    /// Interns and checks the order lifecycle; on success the event is
    /// accepted and the open-order table updated.
    pub fn accept(&mut self, raw: &RawRecord) -> Result<Event, RejectReason> {
        let account = self.intern_account(raw.account)?;
        let instrument = self.instruments.intern_packed(raw.instrument).ok_or(RejectReason::TableFull("instrument"))?;
        let mut event = Event {
            seq: raw.seq,
            ts_ns: raw.ts_ns,
            order_id: raw.order_id,
            contra_order_id: 0,
            price: raw.price,
            qty: raw.qty,
            account,
            contra_account: 0,
            group: self.account_groups[account as usize],
            contra_group: 0,
            instrument,
            kind: raw.kind,
            side: raw.side,
            _pad: [0; 2],
        };
        match raw.kind {
            Kind::New => {
                if self.open.contains_key(raw.order_id) {
                    return Err(RejectReason::DuplicateOrder(raw.order_id));
                }
                if self.open.len() >= self.open_limit {
                    return Err(RejectReason::TableFull("open-order"));
                }
                let order = OpenOrder { open_qty: raw.qty, account, instrument, side: raw.side };
                self.open.insert(raw.order_id, order);
            }
            Kind::Cancel => {
                let order = *self.open.get(raw.order_id).ok_or(RejectReason::UnknownOrder(raw.order_id))?;
                check_owner(&order, raw.order_id, account, instrument, raw.side)?;
                if raw.qty != order.open_qty {
                    let (order_id, qty, open) = (raw.order_id, raw.qty, order.open_qty);
                    return Err(RejectReason::CancelQty { order_id, qty, open });
                }
                self.open.remove(raw.order_id);
            }
            Kind::Trade => {
                let contra_account = self.intern_account(raw.contra_account)?;
                event.contra_account = contra_account;
                event.contra_group = self.account_groups[contra_account as usize];
                event.contra_order_id = raw.contra_order_id;
                if raw.order_id == raw.contra_order_id {
                    return Err(RejectReason::SelfMatch(raw.order_id));
                }
                let buy = *self.open.get(raw.order_id).ok_or(RejectReason::UnknownOrder(raw.order_id))?;
                let sell =
                    *self.open.get(raw.contra_order_id).ok_or(RejectReason::UnknownOrder(raw.contra_order_id))?;
                check_owner(&buy, raw.order_id, account, instrument, Side::Buy)?;
                check_owner(&sell, raw.contra_order_id, contra_account, instrument, Side::Sell)?;
                for (order_id, order) in [(raw.order_id, &buy), (raw.contra_order_id, &sell)] {
                    if raw.qty > order.open_qty {
                        return Err(RejectReason::Overfill { order_id, qty: raw.qty, open: order.open_qty });
                    }
                }
                for order_id in [raw.order_id, raw.contra_order_id] {
                    if let Some(order) = self.open.get_mut(order_id) {
                        order.open_qty -= raw.qty;
                        if order.open_qty == 0 {
                            self.open.remove(order_id);
                        }
                    }
                }
            }
        }
        Ok(event)
    }

    /// Brings the table slots that `accept` will touch for `raw` into cache.
    /// The CSV feed calls it a few records ahead: the open-order and account
    /// tables outgrow the cache, and their misses would otherwise dominate.
    #[inline]
    pub fn prefetch(&self, raw: &RawRecord) {
        let contra = (raw.kind == Kind::Trade).then_some((raw.contra_account, raw.contra_order_id));
        self.prefetch_keys(raw.account, raw.order_id, contra);
    }

    /// As `prefetch`, from the keys alone: the account, the order, and a
    /// trade's contra account and order.
    #[inline]
    pub fn prefetch_keys(&self, account: Packed, order_id: u64, contra: Option<(Packed, u64)>) {
        self.accounts.prefetch(account);
        self.open.prefetch(order_id);
        if let Some((contra_account, contra_order_id)) = contra {
            self.accounts.prefetch(contra_account);
            self.open.prefetch(contra_order_id);
        }
    }

    fn intern_account(&mut self, name: Packed) -> Result<AccountId, RejectReason> {
        let id = self.accounts.intern_packed(name).ok_or(RejectReason::TableFull("account"))?;
        if id as usize == self.account_groups.len() {
            self.account_groups.push(self.groups.group_of(name, id));
        }
        Ok(id)
    }

    pub fn open_orders(&self) -> usize {
        self.open.len()
    }

    /// Checkpoint: the expected seq, the counters and the open orders. The
    /// interned names are not copied here: they are append-only and the
    /// checkpoint writer reads them from the shared name tables; only their
    /// counts are written.
    pub fn snapshot(&self, w: &mut Writer<'_>) {
        w.u8(self.expected_seq.is_some() as u8);
        w.u64(self.expected_seq.unwrap_or(0));
        encode_stats(w, &self.stats);
        w.u64(self.accounts.table().len() as u64);
        w.u64(self.instruments.table().len() as u64);
        w.u64(self.open.len() as u64);
        for (order_id, order) in self.open.iter() {
            w.u64(order_id);
            w.u64(order.open_qty);
            w.u32(order.account);
            w.u32(order.instrument);
            w.u8(order.side as u8);
        }
    }

    /// A validator as of a checkpoint; `accounts` and `instruments` are the
    /// stored names, in id order (at least as many as the snapshot counts).
    pub fn restore(
        limits: Limits,
        groups: Arc<Groups>,
        r: &mut Reader<'_>,
        accounts: &[Vec<u8>],
        instruments: &[Vec<u8>],
    ) -> Result<Validator, DecodeError> {
        let mut v = Validator::new(limits, groups);
        let has_seq = r.u8()? != 0;
        let seq = r.u64()?;
        v.expected_seq = has_seq.then_some(seq);
        v.stats = decode_stats(r)?;
        let (account_count, instrument_count) = (r.u64()? as usize, r.u64()? as usize);
        if account_count > accounts.len() || instrument_count > instruments.len() {
            return Err(DecodeError("fewer stored names than the snapshot counts".into()));
        }
        for (id, name) in accounts[..account_count].iter().enumerate() {
            if !valid_account(name) || v.intern_account(pack(name)).ok() != Some(id as u32) {
                return Err(DecodeError(format!("stored account {id} is bad or repeated")));
            }
        }
        for (id, name) in instruments[..instrument_count].iter().enumerate() {
            if !valid_instrument(name) || v.instruments.intern(name) != Some(id as u32) {
                return Err(DecodeError(format!("stored instrument {id} is bad or repeated")));
            }
        }
        let orders = r.count(25)?;
        v.open.reserve(orders);
        for _ in 0..orders {
            let order_id = r.u64()?;
            let open_qty = r.u64()?;
            let (account, instrument) = (r.u32()?, r.u32()?);
            let side = match r.u8()? {
                b'B' => Side::Buy,
                b'S' => Side::Sell,
                other => return Err(DecodeError(format!("bad side byte {other}"))),
            };
            if account as usize >= account_count || instrument as usize >= instrument_count {
                return Err(DecodeError(format!("open order {order_id} refers to an unknown name")));
            }
            v.open.insert(order_id, OpenOrder { open_qty, account, instrument, side });
        }
        Ok(v)
    }
}

fn check_owner(
    order: &OpenOrder,
    order_id: u64,
    account: AccountId,
    instrument: InstrumentId,
    side: Side,
) -> Result<(), RejectReason> {
    let field = if order.account != account {
        "account"
    } else if order.instrument != instrument {
        "instrument"
    } else if order.side != side {
        "side"
    } else {
        return Ok(());
    };
    Err(RejectReason::Mismatch { order_id, field })
}
