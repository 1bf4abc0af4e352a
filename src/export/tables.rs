//! The four tables, built in one pass over the tape joined with replay's
//! late and rejects outputs, and one pass over its alerts.
//!
//! `orders` and `metrics` fold over the *accepted* records (applied or
//! late): the tape's valid lifecycle, which is what the validator checked;
//! rejected records change no order. A late record still moved its order
//! (its cancel happened) even though the rules did not count it.

use super::Written;
use super::parquet_out::{Column, Enc, Table, Ty, col};
use crate::event::{GROUP_SELF, parse_px};
use crate::symbols::{Groups, pack};
use parquet::data_type::ByteArray;
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::Path;

/// Replay's verdict on the records it did not apply.
pub struct Fates {
    /// Line (CSV; the header is line 1) or position (native, from 1) -> reason.
    rejected: FxHashMap<u64, String>,
    /// Seqs of the late records.
    late: FxHashSet<u64>,
}

impl Fates {
    pub fn load(late: &Path, rejects: Option<&Path>) -> Result<Fates, String> {
        let mut fates = Fates { rejected: FxHashMap::default(), late: FxHashSet::default() };
        if let Some(path) = rejects.filter(|p| p.exists()) {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (i, line) in text.split(|&b| b == b'\n').enumerate().skip(1).filter(|(_, l)| !l.is_empty()) {
                let mut parts = line.splitn(3, |&b| b == b'\t');
                let (Some(no), Some(reason)) = (parts.next(), parts.next()) else {
                    return Err(format!("{}: line {}: not `line<TAB>reason<TAB>record`", path.display(), i + 1));
                };
                let no = std::str::from_utf8(no)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("{}: line {}: bad line number", path.display(), i + 1))?;
                fates.rejected.insert(no, String::from_utf8_lossy(reason).into_owned());
            }
        }
        let text = std::fs::read(late).map_err(|e| format!("{}: {e}", late.display()))?;
        for (i, line) in text.split(|&b| b == b'\n').enumerate().skip(1).filter(|(_, l)| !l.is_empty()) {
            let seq = line
                .split(|&b| b == b',')
                .next()
                .and_then(parse_u64)
                .ok_or_else(|| format!("{}: line {}: no seq", late.display(), i + 1))?;
            fates.late.insert(seq);
        }
        Ok(fates)
    }
}

/// Decimal digits only (as the tape's fields are), without a `str` detour.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(
        0u64,
        |v, &b| if b.is_ascii_digit() { v.checked_mul(10)?.checked_add((b - b'0') as u64) } else { None },
    )
}

fn parse_i64(s: &[u8]) -> Option<i64> {
    match s {
        [b'-', rest @ ..] => parse_u64(rest).and_then(|v| 0i64.checked_sub_unsigned(v)),
        _ => parse_u64(s).and_then(|v| i64::try_from(v).ok()),
    }
}

/// One record's fields, each as far as it could be read (a malformed line
/// keeps the fields that parse).
#[derive(Clone, Copy, Default)]
struct Fields<'a> {
    seq: Option<u64>,
    ts_ns: Option<i64>,
    kind: Option<u8>,
    order_id: Option<u64>,
    account: Option<&'a [u8]>,
    instrument: Option<&'a [u8]>,
    side: Option<u8>,
    price: Option<i64>,
    qty: Option<u64>,
    contra_order_id: Option<u64>,
    contra_account: Option<&'a [u8]>,
}

fn csv_fields(line: &[u8]) -> Fields<'_> {
    let mut f: [&[u8]; 11] = [&[]; 11];
    let mut n = 0;
    for part in line.split(|&b| b == b',') {
        if n < 11 {
            f[n] = part;
        }
        n += 1;
    }
    if n != 11 {
        // A wrong column count: only the seq is worth showing.
        return Fields { seq: parse_u64(f[0]), ..Fields::default() };
    }
    // Names the tape's rules allow; anything else is shown only in `raw`.
    let text = |s: &[u8]| -> bool { crate::symbols::valid_account(s) || crate::symbols::valid_instrument(s) };
    Fields {
        seq: parse_u64(f[0]),
        ts_ns: parse_i64(f[1]),
        kind: matches!(f[2], b"N" | b"C" | b"T").then(|| f[2][0]),
        order_id: parse_u64(f[3]),
        account: text(f[4]).then_some(f[4]),
        instrument: text(f[5]).then_some(f[5]),
        side: matches!(f[6], b"B" | b"S").then(|| f[6][0]),
        price: parse_px(f[7]),
        qty: parse_u64(f[8]),
        contra_order_id: parse_u64(f[9]),
        contra_account: text(f[10]).then_some(f[10]),
    }
}

/// Interned names as Parquet values (clones share bytes), with each
/// account's group.
#[derive(Default)]
struct Names {
    /// Names of at most 16 bytes (every valid one) by their packed form:
    /// one integer hash and compare per record, no byte compare.
    packed: FxHashMap<crate::symbols::Packed, u32>,
    /// Longer ones (group names).
    long: FxHashMap<Box<[u8]>, u32>,
    values: Vec<ByteArray>,
}

impl Names {
    fn id(&mut self, name: &[u8]) -> u32 {
        let next = self.values.len() as u32;
        let (id, new) = if !name.is_empty() && name.len() <= crate::symbols::NAME_MAX && !name.contains(&0) {
            let e = self.packed.entry(pack(name));
            let new = matches!(e, std::collections::hash_map::Entry::Vacant(_));
            (*e.or_insert(next), new)
        } else {
            match self.long.get(name) {
                Some(&id) => (id, false),
                None => {
                    self.long.insert(name.into(), next);
                    (next, true)
                }
            }
        };
        if new {
            self.values.push(ByteArray::from(String::from_utf8_lossy(name).into_owned().into_bytes()));
        }
        id
    }

    fn name(&self, id: u32) -> &[u8] {
        self.values[id as usize].data()
    }
}

struct Accounts<'g> {
    names: Names,
    /// Account id -> group id (in `groups_named`).
    group: Vec<u32>,
    groups_named: Names,
    groups: &'g Groups,
}

impl Accounts<'_> {
    fn id(&mut self, account: &[u8]) -> u32 {
        let id = self.names.id(account);
        if id as usize == self.group.len() {
            // In no group: the account is its own (as in the alerts).
            let g = self.groups.group_of(pack(account), 0);
            let group = if g & GROUP_SELF != 0 {
                account.to_vec()
            } else {
                self.groups.names()[g as usize].clone().into_bytes()
            };
            let gid = self.groups_named.id(&group);
            self.group.push(gid);
        }
        id
    }
}

/// One order as the accepted records left it.
struct Order {
    order_id: u64,
    entry_seq: u64,
    entry_ts_ns: i64,
    closed_ts_ns: Option<i64>,
    last_ts_ns: i64,
    price: i64,
    qty: u64,
    filled: u64,
    cancelled: u64,
    trades: u32,
    account: u32,
    instrument: u32,
    side: u8,
}

/// Per (group, instrument) counts over the accepted records.
#[derive(Default)]
struct Metric {
    records: u64,
    late: u64,
    orders: u64,
    cancels: u64,
    trades: u64,
    self_trades: u64,
    order_qty: u64,
    cancelled_qty: u64,
    bought_qty: u64,
    sold_qty: u64,
    traded_notional: f64,
}

/// Rows of each fate, for the check against the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FateCounts {
    pub applied: u64,
    pub late: u64,
    pub rejected: u64,
}

fn records_columns() -> Vec<Column> {
    vec![
        col("line", Ty::U64, false).enc(Enc::Delta),
        col("seq", Ty::U64, true).enc(Enc::Delta),
        col("ts_ns", Ty::I64, true).enc(Enc::Delta),
        col("kind", Ty::Str, true),
        col("order_id", Ty::U64, true).enc(Enc::Delta),
        col("account", Ty::Str, true),
        col("account_group", Ty::Str, true),
        col("instrument", Ty::Str, true),
        col("side", Ty::Str, true),
        col("price", Ty::Price, true),
        col("qty", Ty::U64, true),
        col("contra_order_id", Ty::U64, true).enc(Enc::Delta),
        col("contra_account", Ty::Str, true),
        col("fate", Ty::Str, false),
        col("reason", Ty::Str, true),
        col("raw", Ty::Str, true),
    ]
}

/// Writes records, orders, metrics and alerts into `dir`.
pub fn write_tables(
    tape: &Path,
    native: bool,
    groups: &Groups,
    fates: &Fates,
    alerts: &Path,
    dir: &Path,
) -> Result<(Vec<Written>, FateCounts), String> {
    let mut records = Table::create(&dir.join("records.parquet"), records_columns())?;
    let mut accounts = Accounts { names: Names::default(), group: Vec::new(), groups_named: Names::default(), groups };
    let mut instruments = Names::default();
    // Sized from the tape (about 70 bytes a CSV record, 64 native; about
    // half the records are orders) so the big tables do not rehash.
    let expected = std::fs::metadata(tape).map_or(0, |m| m.len() / 64) as usize;
    let mut orders: Vec<Order> = Vec::with_capacity(expected / 2);
    let mut order_index: FxHashMap<u64, u32> = FxHashMap::default();
    order_index.reserve(expected / 2);
    let mut metrics: FxHashMap<(u32, u32), Metric> = FxHashMap::default();
    metrics.reserve(expected / 8);
    let mut counts = FateCounts::default();
    let mut unmatched = 0u64;
    let fixed = |s: &'static str| ByteArray::from(s);
    let (kind_n, kind_c, kind_t) = (fixed("N"), fixed("C"), fixed("T"));
    let (side_b, side_s) = (fixed("B"), fixed("S"));
    let (applied_v, late_v, rejected_v) = (fixed("applied"), fixed("late"), fixed("rejected"));
    let mut raw_text = Vec::new();

    let mut visit = |line: u64, f: Fields<'_>, raw: &dyn Fn(&mut Vec<u8>)| -> Result<(), String> {
        let reason = if fates.rejected.is_empty() { None } else { fates.rejected.get(&line) };
        let late = reason.is_none() && !fates.late.is_empty() && f.seq.is_some_and(|s| fates.late.contains(&s));
        let account = f.account.map(|a| accounts.id(a));
        let contra = f.contra_account.map(|a| accounts.id(a));
        let instrument = f.instrument.map(|i| instruments.id(i));
        records.u64(line);
        records.opt_u64(f.seq);
        records.opt_i64(f.ts_ns);
        match f.kind {
            Some(b'N') => records.bytes(kind_n.clone()),
            Some(b'C') => records.bytes(kind_c.clone()),
            Some(_) => records.bytes(kind_t.clone()),
            None => records.null(),
        }
        records.opt_u64(f.order_id);
        match account {
            Some(a) => {
                records.bytes(accounts.names.values[a as usize].clone());
                records.bytes(accounts.groups_named.values[accounts.group[a as usize] as usize].clone());
            }
            None => {
                records.null();
                records.null();
            }
        }
        records.opt_bytes(instrument.map(|i| instruments.values[i as usize].clone()));
        match f.side {
            Some(b'B') => records.bytes(side_b.clone()),
            Some(_) => records.bytes(side_s.clone()),
            None => records.null(),
        }
        records.opt_i64(f.price);
        records.opt_u64(f.qty);
        records.opt_u64(f.contra_order_id);
        records.opt_bytes(contra.map(|a| accounts.names.values[a as usize].clone()));
        match (reason, late) {
            (Some(reason), _) => {
                counts.rejected += 1;
                records.bytes(rejected_v.clone());
                records.str(reason);
                raw_text.clear();
                raw(&mut raw_text);
                records.str(&String::from_utf8_lossy(&raw_text));
                return records.end_row();
            }
            (None, true) => {
                counts.late += 1;
                records.bytes(late_v.clone());
            }
            (None, false) => {
                counts.applied += 1;
                records.bytes(applied_v.clone());
            }
        }
        records.null();
        records.null();
        records.end_row()?;

        // The fold: an accepted record is complete (the validator said so).
        let (
            Some(seq),
            Some(ts),
            Some(kind),
            Some(order_id),
            Some(account),
            Some(instrument),
            Some(side),
            Some(price),
            Some(qty),
        ) = (f.seq, f.ts_ns, f.kind, f.order_id, account, instrument, f.side, f.price, f.qty)
        else {
            unmatched += 1;
            return Ok(());
        };
        let group = accounts.group[account as usize];
        let m = metrics.entry((group, instrument)).or_default();
        m.records += 1;
        m.late += late as u64;
        match kind {
            b'N' => {
                m.orders += 1;
                m.order_qty += qty;
                order_index.insert(order_id, orders.len() as u32);
                orders.push(Order {
                    order_id,
                    entry_seq: seq,
                    entry_ts_ns: ts,
                    closed_ts_ns: None,
                    last_ts_ns: ts,
                    price,
                    qty,
                    filled: 0,
                    cancelled: 0,
                    trades: 0,
                    account,
                    instrument,
                    side,
                });
            }
            b'C' => {
                m.cancels += 1;
                m.cancelled_qty += qty;
                match order_index.get(&order_id) {
                    Some(&i) => {
                        let o = &mut orders[i as usize];
                        o.cancelled += qty;
                        o.last_ts_ns = ts;
                        o.closed_ts_ns = Some(ts);
                    }
                    None => unmatched += 1,
                }
            }
            _ => {
                // A trade: the buyer is `account`, the seller `contra`.
                let seller_group = contra.map(|c| accounts.group[c as usize]);
                m.trades += 1;
                m.bought_qty += qty;
                m.traded_notional += price as f64 / crate::event::PX_SCALE as f64 * qty as f64;
                if seller_group == Some(group) {
                    m.self_trades += 1;
                    m.sold_qty += qty;
                } else if let Some(sg) = seller_group {
                    let s = metrics.entry((sg, instrument)).or_default();
                    s.records += 1;
                    s.late += late as u64;
                    s.trades += 1;
                    s.sold_qty += qty;
                    s.traded_notional += price as f64 / crate::event::PX_SCALE as f64 * qty as f64;
                }
                for id in [Some(order_id), f.contra_order_id] {
                    match id.and_then(|id| order_index.get(&id)) {
                        Some(&i) => {
                            let o = &mut orders[i as usize];
                            o.filled += qty;
                            o.trades += 1;
                            o.last_ts_ns = o.last_ts_ns.max(ts);
                            if o.filled + o.cancelled >= o.qty {
                                o.closed_ts_ns = Some(ts);
                            }
                        }
                        None => unmatched += 1,
                    }
                }
            }
        }
        Ok(())
    };

    if native {
        let t = crate::ingest::native::Tape::open(tape).map_err(|e| e.to_string())?;
        let name = |bytes: &[u8]| bytes.to_vec();
        for i in 0..t.len() {
            let r = t.record(i);
            let account = name(t.account(r.account));
            let instrument = name(t.instrument(r.instrument));
            let contra = (r.kind == b'T').then(|| name(t.account(r.contra_account)));
            let f = Fields {
                seq: Some(r.seq),
                ts_ns: Some(r.ts_ns),
                kind: Some(r.kind),
                order_id: Some(r.order_id),
                account: Some(&account),
                instrument: Some(&instrument),
                side: Some(r.side),
                price: Some(r.price),
                qty: Some(r.qty),
                contra_order_id: (r.kind == b'T').then_some(r.contra_order_id),
                contra_account: contra.as_deref(),
            };
            // A native record is shown in FEED.md form.
            let raw = |out: &mut Vec<u8>| {
                use std::io::Write;
                let _ = write!(out, "{},{},{},{},", r.seq, r.ts_ns, r.kind as char, r.order_id);
                out.extend_from_slice(&account);
                out.push(b',');
                out.extend_from_slice(&instrument);
                let _ = write!(out, ",{},", r.side as char);
                crate::event::write_px(out, r.price);
                let _ = write!(out, ",{},", r.qty);
                if let Some(c) = &contra {
                    let _ = write!(out, "{},", r.contra_order_id);
                    out.extend_from_slice(c);
                } else {
                    out.push(b',');
                }
            };
            visit(i as u64 + 1, f, &raw)?;
        }
    } else {
        let file = std::fs::File::open(tape).map_err(|e| format!("{}: {e}", tape.display()))?;
        // SAFETY: the tape is read-only input; export, like replay, takes
        // it as it stands (a tape changed while read is the user's error,
        // caught below by the counts against the replay's summary).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: cannot map: {e}", tape.display()))?;
        let bytes: &[u8] = &map;
        let body = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |n| n + 1);
        let mut line_no = 2u64;
        let mut start = body;
        while start < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |n| start + n);
            let line = &bytes[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            visit(line_no, csv_fields(line), &|out: &mut Vec<u8>| out.extend_from_slice(line))?;
            line_no += 1;
            start = end + 1;
        }
    }
    if unmatched > 0 {
        return Err(format!(
            "{unmatched} accepted records could not be folded into orders (a bug: the validator admits only complete records about known orders)"
        ));
    }
    let mut written = vec![Written { name: "records.parquet", rows: records.finish()?, bytes: 0 }];

    // Orders, in order of entry.
    let mut table = Table::create(
        &dir.join("orders.parquet"),
        vec![
            col("order_id", Ty::U64, false).enc(Enc::Delta),
            col("entry_seq", Ty::U64, false).enc(Enc::Delta),
            col("entry_ts_ns", Ty::I64, false).enc(Enc::Delta),
            col("account", Ty::Str, false),
            col("account_group", Ty::Str, false),
            col("instrument", Ty::Str, false),
            col("side", Ty::Str, false),
            col("price", Ty::Price, false),
            col("qty", Ty::U64, false),
            col("state", Ty::Str, false),
            col("filled_qty", Ty::U64, false),
            col("cancelled_qty", Ty::U64, false),
            col("open_qty", Ty::U64, false),
            col("trades", Ty::U64, false),
            col("last_ts_ns", Ty::I64, false).enc(Enc::Delta),
            col("closed_ts_ns", Ty::I64, true).enc(Enc::Delta),
            col("lifetime_ns", Ty::I64, true).enc(Enc::Plain),
        ],
    )?;
    let states = [fixed("open"), fixed("partially_filled"), fixed("filled"), fixed("cancelled")];
    for o in &orders {
        table.u64(o.order_id);
        table.u64(o.entry_seq);
        table.i64(o.entry_ts_ns);
        table.bytes(accounts.names.values[o.account as usize].clone());
        table.bytes(accounts.groups_named.values[accounts.group[o.account as usize] as usize].clone());
        table.bytes(instruments.values[o.instrument as usize].clone());
        table.bytes(if o.side == b'B' { side_b.clone() } else { side_s.clone() });
        table.i64(o.price);
        table.u64(o.qty);
        table.bytes(states[order_state(o.qty, o.filled, o.cancelled)].clone());
        table.u64(o.filled);
        table.u64(o.cancelled);
        table.u64(o.qty.saturating_sub(o.filled + o.cancelled));
        table.u64(o.trades as u64);
        table.i64(o.last_ts_ns);
        match o.closed_ts_ns {
            Some(t) => {
                table.i64(t);
                table.i64(t - o.entry_ts_ns);
            }
            None => {
                table.null();
                table.null();
            }
        }
        table.end_row()?;
    }
    written.push(Written { name: "orders.parquet", rows: table.finish()?, bytes: 0 });

    // Metrics, by group then instrument name.
    let mut rows: Vec<((u32, u32), Metric)> = metrics.into_iter().collect();
    let name_of = |names: &Names, id: u32| names.values[id as usize].clone();
    rows.sort_unstable_by(|(a, _), (b, _)| {
        (accounts.groups_named.name(a.0), instruments.name(a.1))
            .cmp(&(accounts.groups_named.name(b.0), instruments.name(b.1)))
    });
    let mut table = Table::create(
        &dir.join("metrics.parquet"),
        vec![
            col("account_group", Ty::Str, false),
            col("instrument", Ty::Str, false),
            col("records", Ty::U64, false),
            col("late_records", Ty::U64, false),
            col("orders", Ty::U64, false),
            col("cancels", Ty::U64, false),
            col("trades", Ty::U64, false),
            col("self_trades", Ty::U64, false),
            col("order_qty", Ty::U64, false),
            col("cancelled_qty", Ty::U64, false),
            col("bought_qty", Ty::U64, false),
            col("sold_qty", Ty::U64, false),
            col("traded_notional", Ty::F64, false).enc(Enc::Plain),
            col("cancel_ratio", Ty::F64, true),
        ],
    )?;
    for (key, m) in &rows {
        table.bytes(name_of(&accounts.groups_named, key.0));
        table.bytes(name_of(&instruments, key.1));
        for v in [
            m.records,
            m.late,
            m.orders,
            m.cancels,
            m.trades,
            m.self_trades,
            m.order_qty,
            m.cancelled_qty,
            m.bought_qty,
            m.sold_qty,
        ] {
            table.u64(v);
        }
        table.f64(m.traded_notional);
        if m.orders > 0 {
            table.f64(m.cancels as f64 / m.orders as f64)
        } else {
            table.null()
        }
        table.end_row()?;
    }
    written.push(Written { name: "metrics.parquet", rows: table.finish()?, bytes: 0 });

    written.push(Written {
        name: "alerts.parquet",
        rows: write_alerts(alerts, &dir.join("alerts.parquet"))?,
        bytes: 0,
    });
    for w in &mut written {
        w.bytes = std::fs::metadata(dir.join(w.name)).map(|m| m.len()).unwrap_or(0);
    }
    Ok((written, counts))
}

/// 0 open, 1 partially filled, 2 filled, 3 cancelled (whatever was filled first).
fn order_state(qty: u64, filled: u64, cancelled: u64) -> usize {
    if cancelled > 0 {
        3
    } else if filled >= qty {
        2
    } else if filled > 0 {
        1
    } else {
        0
    }
}

/// The alerts file as a table, sorted by (seq, rule, alert id) so the same
/// day gives the same rows whatever the shard count. Evidence is kept as
/// JSON and each scalar evidence key becomes an `evidence_<key>` column
/// (integers as INT64, other numbers as DOUBLE, text as STRING).
fn write_alerts(alerts: &Path, out: &Path) -> Result<u64, String> {
    use serde_json::Value;
    let text = std::fs::read_to_string(alerts).map_err(|e| format!("{}: {e}", alerts.display()))?;
    let mut rows: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}: line {}: {e}", alerts.display(), i + 1)))
        .collect::<Result<_, _>>()?;
    let key = |v: &Value| {
        (
            v["seq"].as_u64().unwrap_or(0),
            v["rule"].as_str().unwrap_or("").to_string(),
            v["alert_id"].as_str().unwrap_or("").to_string(),
        )
    };
    rows.sort_by_key(key);
    // Evidence keys and the one type each holds across every alert.
    let mut evidence: std::collections::BTreeMap<String, Ty> = std::collections::BTreeMap::new();
    let mut mixed: FxHashSet<String> = FxHashSet::default();
    for row in &rows {
        for (k, v) in row["evidence"].as_object().into_iter().flatten() {
            let ty = match v {
                Value::Number(n) if n.is_i64() => Ty::I64,
                Value::Number(_) => Ty::F64,
                Value::String(_) => Ty::Str,
                Value::Bool(_) => Ty::Bool,
                _ => continue,
            };
            match evidence.get(k) {
                None => {
                    evidence.insert(k.clone(), ty);
                }
                Some(&Ty::I64) if ty == Ty::F64 => {
                    evidence.insert(k.clone(), Ty::F64);
                }
                Some(&Ty::F64) if ty == Ty::I64 => {}
                Some(&t) if t != ty => {
                    mixed.insert(k.clone());
                }
                Some(_) => {}
            }
        }
    }
    // A key holding different kinds of value stays in the JSON only.
    evidence.retain(|k, _| !mixed.contains(k));
    let mut columns = vec![
        col("alert_id", Ty::Str, false),
        col("rule", Ty::Str, false),
        col("seq", Ty::U64, false).enc(Enc::Delta),
        col("ts_ns", Ty::I64, false).enc(Enc::Delta),
        col("time", Ty::Str, false),
        col("account_group", Ty::Str, false),
        col("account", Ty::Str, false),
        col("instrument", Ty::Str, false),
        col("params", Ty::Str, true),
        col("evidence", Ty::Str, false),
    ];
    columns.extend(evidence.iter().map(|(k, &ty)| col(&format!("evidence_{k}"), ty, true)));
    let mut table = Table::create(out, columns)?;
    for (i, row) in rows.iter().enumerate() {
        let text = |k: &str| {
            row[k].as_str().map(str::to_string).ok_or_else(|| format!("{}: alert {}: no {k}", alerts.display(), i + 1))
        };
        table.str(&text("alert_id")?);
        table.str(&text("rule")?);
        table.u64(row["seq"].as_u64().ok_or_else(|| format!("{}: alert {}: no seq", alerts.display(), i + 1))?);
        table.i64(row["ts_ns"].as_i64().ok_or_else(|| format!("{}: alert {}: no ts_ns", alerts.display(), i + 1))?);
        table.str(&text("time")?);
        table.str(&text("group")?);
        table.str(&text("account")?);
        table.str(&text("instrument")?);
        match row["params"].as_str() {
            Some(p) => table.str(p),
            None => table.null(),
        }
        table.str(&row["evidence"].to_string());
        for (k, &ty) in &evidence {
            match (&row["evidence"][k.as_str()], ty) {
                (Value::Number(n), Ty::I64) if n.is_i64() => table.i64(n.as_i64().unwrap_or_default()),
                (Value::Number(n), Ty::F64) => table.f64(n.as_f64().unwrap_or(f64::NAN)),
                (Value::String(s), Ty::Str) => table.str(s),
                (Value::Bool(b), Ty::Bool) => table.bool(*b),
                _ => table.null(),
            }
        }
        table.end_row()?;
    }
    table.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_states() {
        assert_eq!(order_state(100, 0, 0), 0);
        assert_eq!(order_state(100, 40, 0), 1);
        assert_eq!(order_state(100, 100, 0), 2);
        assert_eq!(order_state(100, 40, 60), 3);
        assert_eq!(order_state(100, 0, 100), 3);
    }

    #[test]
    fn malformed_lines_keep_the_fields_that_parse() {
        let f = csv_fields(b"7,1793583000000000000,N,1001,A1,000001,X,10.25,500,,");
        assert_eq!((f.seq, f.kind, f.side, f.price, f.qty), (Some(7), Some(b'N'), None, Some(102_500), Some(500)));
        assert_eq!(f.account, Some(&b"A1"[..]));
        let short = csv_fields(b"8,garbage");
        assert_eq!((short.seq, short.ts_ns, short.account), (Some(8), None, None));
    }
}
