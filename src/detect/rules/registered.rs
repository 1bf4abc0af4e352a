//! The three book rules as `detect::rule::Rule`s: what the registry needs
//! (ids, names, tables, parameters, evidence JSON, checkpoint sections) over
//! the standalone rules of `spoofing.rs`, `layering.rs` and
//! `momentum_ignition.rs`. A finding becomes an alert with `Finding::pack`'s
//! inline words and list; the sink writes the JSON back from them.

use super::layering::{self, Layering};
use super::momentum_ignition::{self, MomentumIgnition};
use super::spoof_pattern::Levels;
use super::spoofing::{self, Spoofing};
use super::{BookRule, Evidence as BookEvidence, Finding, RuleStats as BookStats};
use crate::alert::{Alert, Evidence, EvidenceJson};
use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::config::Problems;
use crate::detect::rule::{Emit, Kinds, Reads, Rule, RuleStats, Seen, Sizing};
use crate::event::{Event, Side};

fn emit(rule: u16, f: Finding, out: &mut impl Emit) {
    let packed = f.pack();
    let alert = Alert {
        rule,
        seq: f.seq,
        ts_ns: f.ts_ns,
        group: f.group,
        account: f.account,
        instrument: f.instrument,
        evidence: Evidence(packed.words),
        ..Alert::default()
    };
    out.alert(alert, packed.list());
}

fn stats(s: BookStats) -> RuleStats {
    RuleStats {
        window_entries: s.entries,
        active_keys: s.keys,
        hot_keys: 0,
        grew: s.grew,
        keys_refused: s.keys_refused,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "B",
        Side::Sell => "S",
    }
}

fn write(rule: BookRule, evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
    let Some((evidence, ids)) = Finding::unpack(rule, &evidence.0, list) else {
        json.u64("evidence_list_short", list.len() as u64);
        return;
    };
    match evidence {
        BookEvidence::Spoof(e) => {
            json.str("spoof_side", side_name(e.side));
            json.i64("first_order_ns", e.first_order_ns);
            json.i64("window_ns", e.window_ns);
            json.u64("spoof_qty", e.spoof_qty);
            json.u64("spoof_orders_cancelled", e.spoof_orders as u64);
            json.u64("spoof_orders_cancelled_min", e.min_orders as u64);
            json.u64("peak_open_qty", e.peak_open_qty);
            json.u64("depth5_at_placement", e.depth5_at_placement);
            if let Some(pct) = e.measured_size_pct() {
                json.u64("size_pct", pct);
            }
            json.u64("size_pct_min", e.size_pct);
            json.u64("cancelled_qty", e.cancelled_qty);
            json.u64("cancelled_pct", e.measured_cancel_pct());
            json.u64("cancelled_pct_min", e.cancel_pct);
            json.u64("opposite_new_qty", e.opposite_new_qty);
            if let Some(x100) = e.measured_one_sided_x100() {
                json.u64("one_sided_x100", x100);
            }
            json.u64("one_sided_x100_min", e.one_sided_k * 100);
            json.u64("opposite_exec_qty", e.opposite_exec_qty);
            json.u64("opposite_exec_qty_min", e.min_opposite_exec_qty);
            json.u64("opposite_orders", e.opposite_orders as u64);
            json.u64("levels_behind", e.levels_behind as u64);
            match e.levels {
                Levels::AtMost(n) => json.u64("levels_behind_max", n as u64),
                Levels::AtLeast(n) => json.u64("levels_behind_min", n as u64),
            }
        }
        BookEvidence::Ignition(e) => {
            json.str("side", side_name(e.side));
            json.px("start_px", e.start_px);
            json.px("moved_px", e.moved_px);
            json.i64("move_ticks", e.move_ticks);
            json.i64("move_ticks_min", e.min_move_ticks);
            json.i64("run_start_ns", e.run_start_ns);
            json.i64("run_end_ns", e.run_end_ns);
            json.i64("window_ns", e.window_ns);
            json.u64("aggressive_trades", e.aggressive_trades as u64);
            json.u64("aggressive_qty", e.aggressive_qty);
            json.px("exit_px", e.exit_px);
            json.u64("exit_qty", e.exit_qty);
            json.i64("exit_vs_moved_ticks", e.exit_vs_moved_ticks);
            json.i64("exit_vs_moved_ticks_min", -e.near_ticks);
            json.i64("exit_after_ns", e.exit_after_ns);
            json.i64("exit_after_ns_max", e.follow_ns);
        }
    }
    json.u64_list("order_ids", ids.as_slice());
    json.u64("order_ids_total", ids.total as u64);
}

/// `checkpoint show`: the counts at the head of a section (keys, entries).
fn describe_counts(section: &[u8], skip_instruments: bool) -> Result<Vec<(&'static str, u64)>, DecodeError> {
    let mut r = Reader::new(section);
    if skip_instruments {
        let n = r.count(16)?;
        for _ in 0..n * 2 {
            r.u64()?;
        }
    }
    Ok(vec![("keys", r.u64()?)])
}

/// `rules show`: the fields spoofing and layering share, and the rule's
/// own bound on the levels behind the touch.
fn show_pattern(p: &super::spoof_pattern::PatternParams, out: &mut String) {
    use super::params::MS;
    let levels = match p.levels {
        Levels::AtMost(n) => format!("max_levels_behind = {n}"),
        Levels::AtLeast(n) => format!("min_levels_behind = {n}"),
    };
    out.push_str(&format!(
        "window_ms = {}\nsize_pct = {}\ncancel_pct = {}\none_sided_k = {}\nmin_opposite_exec_qty = {}\n{levels}\n\
         min_orders = {}\nmax_keys = {}\nmax_entries = {}\n",
        p.window_ns / MS,
        p.size_pct,
        p.cancel_pct,
        p.one_sided_k,
        p.min_opposite_exec_qty,
        p.min_orders,
        p.max_keys,
        p.max_entries
    ));
}

macro_rules! spoof_rule {
    ($ty:ident, $module:ident, $id:expr, $name:expr, $table:expr, $book_rule:expr) => {
        impl Rule for $ty {
            const ID: u16 = $id;
            const NAME: &'static str = $name;
            const TABLE: &'static str = $table;
            /// 2: the state moved to the spoof stream's section (the rule's is empty).
            const VERSION: u16 = 2;
            /// Only a cancel or a trade completes the pattern (the stream
            /// sees every record).
            const KINDS: Kinds = Kinds::CANCEL.or(Kinds::TRADE);
            const READS: Reads = Reads::BOOK.or(Reads::SPOOF);
            type Raw = $module::RawParams;
            type Params = $module::Params;
            type Image = ();

            fn validate(raw: Self::Raw, problems: &mut Problems<'_>) -> Option<Self::Params> {
                $module::Params::validate(raw, problems)
            }

            fn encode_params(params: &Self::Params, w: &mut Writer<'_>) {
                params.0.encode(w);
            }

            fn show(params: &Self::Params, out: &mut String) {
                show_pattern(&params.0, out);
            }

            fn new(params: &Self::Params, _: &Sizing) -> Self {
                $ty::new(*params)
            }

            #[inline(always)]
            fn on_record(&mut self, _event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
                if let Some(spoof) = seen.spoof {
                    for f in spoof.of($book_rule) {
                        emit(Self::ID, *f, out);
                    }
                }
            }

            fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
                write($book_rule, evidence, list, json);
            }
        }
    };
}

spoof_rule!(Spoofing, spoofing, 3, "spoofing", "spoofing", BookRule::Spoofing);
spoof_rule!(Layering, layering, 4, "layering", "layering", BookRule::Layering);

impl Rule for MomentumIgnition {
    const ID: u16 = 5;
    const NAME: &'static str = "momentum-ignition";
    const TABLE: &'static str = "momentum_ignition";
    const VERSION: u16 = 1;
    /// Only trades can complete or extend a run; the window ends are
    /// compared with each trade's own time, so the other records change nothing.
    const KINDS: Kinds = Kinds::TRADE;
    const READS: Reads = Reads::BOOK;
    type Raw = momentum_ignition::RawParams;
    type Params = momentum_ignition::Params;
    type Image = Vec<u8>;

    fn validate(raw: Self::Raw, problems: &mut Problems<'_>) -> Option<Self::Params> {
        momentum_ignition::Params::validate(raw, problems)
    }

    fn encode_params(params: &Self::Params, w: &mut Writer<'_>) {
        params.encode(w);
    }

    fn show(p: &Self::Params, out: &mut String) {
        use super::params::MS;
        out.push_str(&format!(
            "window_ms = {}\nmin_move_ticks = {}\nfollow_ms = {}\nnear_ticks = {}\nmin_tick = {}\nmin_trades = {}\n\
             max_keys = {}\nmax_entries = {}\nmax_instruments = {}\n",
            p.window_ns / MS,
            p.min_move_ticks,
            p.follow_ns / MS,
            p.near_ticks,
            p.min_tick,
            p.min_trades,
            p.max_keys,
            p.max_entries,
            p.max_instruments
        ));
    }

    fn new(params: &Self::Params, _: &Sizing) -> Self {
        MomentumIgnition::new(*params)
    }

    #[inline(always)]
    fn on_record(&mut self, event: &Event, seen: &Seen<'_>, out: &mut impl Emit) {
        if let Some(book) = seen.book.as_ref() {
            MomentumIgnition::on_record(self, event, book.change, book.book, &mut |f| emit(Self::ID, f, out));
        }
    }

    fn write_evidence(evidence: &Evidence, list: &[u64], json: &mut EvidenceJson<'_>) {
        write(BookRule::MomentumIgnition, evidence, list, json);
    }

    fn stats(&self) -> RuleStats {
        stats(MomentumIgnition::stats(self))
    }

    fn begin_snapshot(&mut self, mut image: Vec<u8>) {
        image.clear();
        self.encode(&mut Writer::new(&mut image));
        self.snapshot = Some(image);
    }

    fn copy_slice(&mut self, _max: usize) -> Option<Vec<u8>> {
        self.snapshot.take()
    }

    fn encode_image(image: &Vec<u8>, w: &mut Writer<'_>) {
        w.out.extend_from_slice(image);
    }

    fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        MomentumIgnition::restore(self, r, keep)
    }

    fn restored(&mut self) {
        MomentumIgnition::restored(self);
    }

    fn describe(section: &[u8]) -> Result<Vec<(&'static str, u64)>, DecodeError> {
        describe_counts(section, true)
    }
}
