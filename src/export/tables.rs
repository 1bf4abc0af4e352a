//! The four tables, built in one pass over the tape joined with replay's
//! late and rejects outputs, and one pass over its alerts.
//!
//! `orders` and `metrics` fold over the *accepted* records (applied or
//! late): the tape's valid lifecycle, which is what the validator checked;
//! rejected records change no order. A late record still moved its order
//! (its cancel happened) even though the rules did not count it.

use super::Written;
use super::fold::{Accepted, Fold, Metric, Order};
use super::parquet_out::{Column, Enc, Table, Ty, col};
use crate::event::{GROUP_SELF, parse_px};
use crate::symbols::{Groups, pack};
use parquet::data_type::ByteArray;
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Replay's verdict on the records it did not apply.
pub struct Fates {
    /// Line (CSV; the header is line 1) or position (native, from 1) -> reason.
    rejected: FxHashMap<u64, String>,
    /// Seqs of the late records.
    late: FxHashSet<u64>,
}

/// Each entry of a rejects file (`line<TAB>reason<TAB>record` after a
/// header line, as replay and import write it): `f(line, reason, record)`.
pub fn for_each_reject(path: &Path, mut f: impl FnMut(u64, &[u8], &[u8]) -> Result<(), String>) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.split(|&b| b == b'\n');
    if let Some(header) = lines.next()
        && !header.is_empty()
        && !header.starts_with(b"line\t")
    {
        return Err(format!("{}: not a rejects file (its header is not `line<TAB>reason<TAB>record`)", path.display()));
    }
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut parts = line.splitn(3, |&b| b == b'\t');
        let (Some(no), Some(reason)) = (parts.next(), parts.next()) else {
            return Err(format!("{}: line {}: not `line<TAB>reason<TAB>record`", path.display(), i + 2));
        };
        let no = parse_u64(no).ok_or_else(|| format!("{}: line {}: bad line number", path.display(), i + 2))?;
        f(no, reason, parts.next().unwrap_or_default())?;
    }
    Ok(())
}

impl Fates {
    pub fn load(late: &Path, rejects: Option<&Path>) -> Result<Fates, String> {
        let mut fates = Fates { rejected: FxHashMap::default(), late: FxHashSet::default() };
        if let Some(path) = rejects.filter(|p| p.exists()) {
            for_each_reject(path, |no, reason, _| {
                fates.rejected.insert(no, String::from_utf8_lossy(reason).into_owned());
                Ok(())
            })?;
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

/// Interned names as Parquet values (clones share bytes): dense ids from
/// 0, which the tables' names columns take as their dictionary ids.
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

    /// Each id's place in name order.
    fn ranks(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.values.len() as u32).collect();
        ids.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let mut ranks = vec![0; ids.len()];
        for (rank, id) in ids.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
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

/// Rows of each fate, for the check against the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FateCounts {
    pub applied: u64,
    pub late: u64,
    pub rejected: u64,
    /// Rows from the import's rejects file (a native tape).
    pub rejected_at_import: u64,
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
        col("reason", Ty::Str, true).enc(Enc::Plain),
        col("raw", Ty::Str, true).enc(Enc::Plain),
    ]
}

/// One record with its names resolved to ids (`Accounts`, instruments).
#[derive(Clone, Copy, Default)]
struct Rec {
    seq: Option<u64>,
    ts_ns: Option<i64>,
    kind: Option<u8>,
    order_id: Option<u64>,
    account: Option<u32>,
    instrument: Option<u32>,
    side: Option<u8>,
    price: Option<i64>,
    qty: Option<u64>,
    contra_order_id: Option<u64>,
    contra_account: Option<u32>,
}

/// Fixed words of a names column, ids in order.
fn words(list: &[&str]) -> Vec<ByteArray> {
    list.iter().map(|&w| ByteArray::from(w)).collect()
}

const KINDS: [u8; 3] = [b'N', b'C', b'T'];
const APPLIED: u32 = 0;
const LATE: u32 = 1;
const REJECTED: u32 = 2;

/// Accepted records per message to the fold thread.
const FOLD_BATCH: usize = 2048;

/// The records table being written; the accepted records go, in batches,
/// to the fold (`fold::Fold`) on its own thread.
struct Build<'a> {
    records: Table,
    fates: &'a Fates,
    accounts: Accounts<'a>,
    instruments: Names,
    batch: Vec<Accepted>,
    to_fold: SyncSender<Vec<Accepted>>,
    /// Batches the fold is done with.
    batches: Receiver<Vec<Accepted>>,
    counts: FateCounts,
    /// Accepted records missing a field (a bug if not 0).
    unmatched: u64,
    kinds: Vec<ByteArray>,
    sides: Vec<ByteArray>,
    fate_words: Vec<ByteArray>,
}

impl Build<'_> {
    fn rec(&mut self, f: &Fields<'_>) -> Rec {
        Rec {
            seq: f.seq,
            ts_ns: f.ts_ns,
            kind: f.kind,
            order_id: f.order_id,
            account: f.account.map(|a| self.accounts.id(a)),
            instrument: f.instrument.map(|i| self.instruments.id(i)),
            side: f.side,
            price: f.price,
            qty: f.qty,
            contra_order_id: f.contra_order_id,
            contra_account: f.contra_account.map(|a| self.accounts.id(a)),
        }
    }

    /// One record read: its row, then (accepted) its part of the fold.
    /// `raw` is the record as received, for a rejected one.
    fn visit(&mut self, line: u64, f: Rec, raw: &dyn Fn() -> Vec<u8>) -> Result<(), String> {
        let fates = self.fates;
        let reason = if fates.rejected.is_empty() { None } else { fates.rejected.get(&line) };
        let late = reason.is_none() && !fates.late.is_empty() && f.seq.is_some_and(|s| fates.late.contains(&s));
        let fate = match (reason, late) {
            (Some(_), _) => REJECTED,
            (None, true) => LATE,
            (None, false) => APPLIED,
        };
        match fate {
            REJECTED => self.counts.rejected += 1,
            LATE => self.counts.late += 1,
            _ => self.counts.applied += 1,
        }
        self.row(line, &f, fate, reason.map(|r| (r.as_bytes(), raw())))?;
        if fate != REJECTED {
            self.accept(&f, late)?;
        }
        Ok(())
    }

    fn row(&mut self, line: u64, f: &Rec, fate: u32, rejected: Option<(&[u8], Vec<u8>)>) -> Result<(), String> {
        let r = &mut self.records;
        let names = &self.accounts.names.values;
        r.u64(line);
        r.opt_u64(f.seq);
        r.opt_i64(f.ts_ns);
        // A kind is N, C or T once parsed (`csv_fields`, the native tape).
        let kind = f.kind.map(|k| KINDS.iter().position(|&x| x == k).unwrap_or(2) as u32);
        r.opt_name(kind.map(|id| (id, &self.kinds[id as usize])));
        r.opt_u64(f.order_id);
        match f.account {
            Some(a) => {
                r.name(a, &names[a as usize]);
                let g = self.accounts.group[a as usize];
                r.name(g, &self.accounts.groups_named.values[g as usize]);
            }
            None => {
                r.null();
                r.null();
            }
        }
        r.opt_name(f.instrument.map(|i| (i, &self.instruments.values[i as usize])));
        let side = f.side.map(|s| (s != b'B') as u32);
        r.opt_name(side.map(|id| (id, &self.sides[id as usize])));
        r.opt_i64(f.price);
        r.opt_u64(f.qty);
        r.opt_u64(f.contra_order_id);
        r.opt_name(f.contra_account.map(|a| (a, &names[a as usize])));
        r.name(fate, &self.fate_words[fate as usize]);
        match rejected {
            Some((reason, raw)) => {
                r.str(&String::from_utf8_lossy(reason));
                r.str(&String::from_utf8_lossy(&raw));
            }
            None => {
                r.null();
                r.null();
            }
        }
        r.end_row()
    }

    /// An accepted record, for the fold: it is complete (the validator
    /// said so).
    fn accept(&mut self, f: &Rec, late: bool) -> Result<(), String> {
        let (
            Some(seq),
            Some(ts_ns),
            Some(kind),
            Some(order_id),
            Some(account),
            Some(instrument),
            Some(side),
            Some(price),
            Some(qty),
        ) = (f.seq, f.ts_ns, f.kind, f.order_id, f.account, f.instrument, f.side, f.price, f.qty)
        else {
            self.unmatched += 1;
            return Ok(());
        };
        let group = &self.accounts.group;
        self.batch.push(Accepted {
            seq,
            ts_ns,
            order_id,
            contra_order_id: f.contra_order_id,
            price,
            qty,
            account,
            group: group[account as usize],
            seller_group: f.contra_account.map(|c| group[c as usize]),
            instrument,
            kind,
            side,
            late,
        });
        if self.batch.len() >= FOLD_BATCH { self.send() } else { Ok(()) }
    }

    /// The batch to the fold thread.
    fn send(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let fresh = self.batches.try_recv().unwrap_or_else(|_| Vec::with_capacity(FOLD_BATCH));
        assert!(fresh.is_empty(), "a batch comes back from the fold emptied");
        let full = std::mem::replace(&mut self.batch, fresh);
        // The fold stops early only on an error, which its result says.
        self.to_fold.send(full).map_err(|_| "the fold stopped".to_string())
    }
}

/// Writes records, orders, metrics and alerts into `dir`.
///
/// Threads: this one reads the tape and fills the records table; the
/// fold thread folds the accepted records into orders and metrics as they
/// come; each table's writer thread encodes its row groups. After the
/// tape, the records table's last row group is encoded while this thread
/// fills the orders table and another the metrics table.
pub fn write_tables(
    tape: &Path,
    native: bool,
    groups: &Groups,
    fates: &Fates,
    import_rejects: Option<&Path>,
    alerts: &Path,
    dir: &Path,
) -> Result<(Vec<Written>, FateCounts), String> {
    // Sized from the tape (about 70 bytes a CSV record, 64 native; about
    // half the records are orders) so the big tables do not grow.
    let expected = std::fs::metadata(tape).map_or(0, |m| m.len() / 64) as usize;
    let (to_fold, batches_in) = sync_channel::<Vec<Accepted>>(4);
    let (batches_back, batches) = sync_channel::<Vec<Accepted>>(8);
    let mut b = Build {
        records: Table::create_sized(&dir.join("records.parquet"), expected, records_columns())?,
        fates,
        accounts: Accounts { names: Names::default(), group: Vec::new(), groups_named: Names::default(), groups },
        instruments: Names::default(),
        batch: Vec::with_capacity(FOLD_BATCH),
        to_fold,
        batches,
        counts: FateCounts::default(),
        unmatched: 0,
        kinds: words(&["N", "C", "T"]),
        sides: words(&["B", "S"]),
        fate_words: words(&["applied", "late", "rejected"]),
    };
    let (scanned, fold) = std::thread::scope(|s| {
        let folding = std::thread::Builder::new()
            .name("export-fold".into())
            .spawn_scoped(s, move || {
                let mut fold = Fold::new(expected);
                for mut batch in batches_in {
                    fold.batch(&batch)?;
                    batch.clear();
                    let _ = batches_back.try_send(batch);
                }
                Ok::<Fold, String>(fold)
            })
            .map_err(|e| format!("cannot start the fold thread: {e}"))?;
        let scanned = scan(&mut b, tape, native, import_rejects).and_then(|()| b.send());
        // The fold ends with the batches.
        let (to_fold, _) = sync_channel(0);
        drop(std::mem::replace(&mut b.to_fold, to_fold));
        let fold = folding.join().unwrap_or_else(|_| Err("the fold thread panicked".to_string()));
        Ok::<_, String>((scanned, fold))
    })?;
    // The scan's error first: a fold error after it is its echo.
    scanned?;
    let fold = fold?;
    let Build { records, accounts, instruments, counts, sides, unmatched, .. } = b;
    if unmatched + fold.unmatched > 0 {
        return Err(format!(
            "{} accepted records could not be folded into orders (a bug: the validator admits only complete records about known orders)",
            unmatched + fold.unmatched
        ));
    }
    let Fold { orders, metric_keys, metrics, .. } = fold;
    let (records, orders, metrics) = std::thread::scope(|s| {
        // The records' last row group is encoded while the orders and
        // metrics tables are filled.
        let records = s.spawn(move || records.finish());
        let metrics =
            s.spawn(|| write_metrics(&dir.join("metrics.parquet"), &metric_keys, &metrics, &accounts, &instruments));
        let orders = write_orders(&dir.join("orders.parquet"), orders, &accounts, &instruments, &sides);
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<u64, String>>| {
            h.join().unwrap_or_else(|_| Err("an export thread panicked".to_string()))
        };
        (joined(records), orders, joined(metrics))
    });
    let mut written = vec![
        Written { name: "records.parquet", rows: records?, bytes: 0 },
        Written { name: "orders.parquet", rows: orders?, bytes: 0 },
        Written { name: "metrics.parquet", rows: metrics?, bytes: 0 },
        Written { name: "alerts.parquet", rows: write_alerts(alerts, &dir.join("alerts.parquet"))?, bytes: 0 },
    ];
    for w in &mut written {
        w.bytes = std::fs::metadata(dir.join(w.name)).map(|m| m.len()).unwrap_or(0);
    }
    Ok((written, counts))
}

/// Reads the tape (and the import's rejects): each record's row, and the
/// accepted ones to the fold.
fn scan(b: &mut Build<'_>, tape: &Path, native: bool, import_rejects: Option<&Path>) -> Result<(), String> {
    if native {
        let t = crate::ingest::native::Tape::open(tape).map_err(|e| e.to_string())?;
        // The tape's ids -> ours: no name is looked up per record.
        let accounts: Vec<u32> = t.accounts().into_iter().map(|a| b.accounts.id(a)).collect();
        let instruments: Vec<u32> = t.instruments().into_iter().map(|i| b.instruments.id(i)).collect();
        let bad = |i: usize| format!("{}: record {}: a name id beyond the tape's symbols", tape.display(), i + 1);
        for i in 0..t.len() {
            let r = t.record(i);
            let trade = r.kind == b'T';
            let f = Rec {
                seq: Some(r.seq),
                ts_ns: Some(r.ts_ns),
                kind: Some(r.kind),
                order_id: Some(r.order_id),
                account: Some(*accounts.get(r.account as usize).ok_or_else(|| bad(i))?),
                instrument: Some(*instruments.get(r.instrument as usize).ok_or_else(|| bad(i))?),
                side: Some(r.side),
                price: Some(r.price),
                qty: Some(r.qty),
                contra_order_id: trade.then_some(r.contra_order_id),
                contra_account: if trade {
                    Some(*accounts.get(r.contra_account as usize).ok_or_else(|| bad(i))?)
                } else {
                    None
                },
            };
            // A native record is shown in FEED.md form.
            let raw = || {
                use std::io::Write;
                let mut out = Vec::new();
                let _ = write!(out, "{},{},{},{},", r.seq, r.ts_ns, r.kind as char, r.order_id);
                out.extend_from_slice(t.account(r.account));
                out.push(b',');
                out.extend_from_slice(t.instrument(r.instrument));
                let _ = write!(out, ",{},", r.side as char);
                crate::event::write_px(&mut out, r.price);
                let _ = write!(out, ",{},", r.qty);
                if trade {
                    let _ = write!(out, "{},", r.contra_order_id);
                    out.extend_from_slice(t.account(r.contra_account));
                } else {
                    out.push(b',');
                }
                out
            };
            b.visit(i as u64 + 1, f, &raw)?;
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
            let f = b.rec(&csv_fields(line));
            b.visit(line_no, f, &|| line.to_vec())?;
            line_no += 1;
            start = end + 1;
        }
    }
    if let Some(path) = import_rejects {
        // Records the import refused are not on the tape: their rows come
        // from its rejects file, `line` their line in the imported CSV.
        for_each_reject(path, |line, reason, record| {
            let f = b.rec(&csv_fields(record));
            b.counts.rejected_at_import += 1;
            b.row(line, &f, REJECTED, Some((reason, record.to_vec())))
        })?;
    }
    Ok(())
}

/// The orders table, in order of entry.
fn write_orders(
    path: &Path,
    orders: Vec<Order>,
    accounts: &Accounts<'_>,
    instruments: &Names,
    sides: &[ByteArray],
) -> Result<u64, String> {
    let mut table = Table::create_sized(
        path,
        orders.len(),
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
    let states = words(&["open", "partially_filled", "filled", "cancelled"]);
    for o in &orders {
        let g = accounts.group[o.account as usize];
        let side = (o.side != b'B') as u32;
        let state = order_state(o.qty, o.filled, o.cancelled);
        table.u64(o.order_id);
        table.u64(o.entry_seq);
        table.i64(o.entry_ts_ns);
        table.name(o.account, &accounts.names.values[o.account as usize]);
        table.name(g, &accounts.groups_named.values[g as usize]);
        table.name(o.instrument, &instruments.values[o.instrument as usize]);
        table.name(side, &sides[side as usize]);
        table.i64(o.price);
        table.u64(o.qty);
        table.name(state as u32, &states[state]);
        table.u64(o.filled);
        table.u64(o.cancelled);
        table.u64(o.qty.saturating_sub(o.filled + o.cancelled));
        table.u64(o.trades as u64);
        table.i64(o.last_ts_ns);
        if o.closed_ts_ns == i64::MIN {
            table.null();
            table.null();
        } else {
            table.i64(o.closed_ts_ns);
            table.i64(o.closed_ts_ns - o.entry_ts_ns);
        }
        table.end_row()?;
    }
    drop(orders);
    table.finish()
}

/// The metrics table, by group then instrument name.
fn write_metrics(
    path: &Path,
    keys: &[(u32, u32)],
    rows: &[Metric],
    accounts: &Accounts<'_>,
    instruments: &Names,
) -> Result<u64, String> {
    // By group then instrument name (ranks: integer compares).
    let (group_rank, instrument_rank) = (accounts.groups_named.ranks(), instruments.ranks());
    // Sort (rank, row) pairs, not the rows.
    let mut order: Vec<(u64, u32)> = keys
        .iter()
        .enumerate()
        .map(|(n, (g, i))| ((group_rank[*g as usize] as u64) << 32 | instrument_rank[*i as usize] as u64, n as u32))
        .collect();
    order.sort_unstable();
    let mut table = Table::create_sized(
        path,
        rows.len(),
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
    for &(_, n) in &order {
        let ((g, i), m) = (keys[n as usize], &rows[n as usize]);
        table.name(g, &accounts.groups_named.values[g as usize]);
        table.name(i, &instruments.values[i as usize]);
        for v in [
            m.records as u64,
            m.late as u64,
            m.orders as u64,
            m.cancels as u64,
            m.trades as u64,
            m.self_trades as u64,
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
    table.finish()
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
    // Text unique to an alert is plain (snappy-compressed), not a dictionary.
    let mut columns = vec![
        col("alert_id", Ty::Str, false).enc(Enc::Plain),
        col("rule", Ty::Str, false),
        col("seq", Ty::U64, false).enc(Enc::Delta),
        col("ts_ns", Ty::I64, false).enc(Enc::Delta),
        col("time", Ty::Str, false).enc(Enc::Plain),
        col("account_group", Ty::Str, false),
        col("account", Ty::Str, false),
        col("instrument", Ty::Str, false),
        col("params", Ty::Str, true),
        col("evidence", Ty::Str, false).enc(Enc::Plain),
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
