//! The book rules (spoofing, layering, momentum-ignition) through the whole
//! pipeline, on a FEED.md tape written here: instruments with resting
//! liquidity, two-sided market makers cancel/replacing every few hundred
//! milliseconds, institutions resting large orders behind the touch for tens
//! of seconds, ordinary traders, and planted Coscia-shaped spoofers (the
//! roles split between two accounts of one group), Sarao-shaped layerers and
//! momentum igniters. The planted groups are found and nobody else; the
//! alerts are the same for 1, 2 and 3 shards, CSV and native, and across a
//! crash (abort once a checkpoint is durable, or kill -9 at a seeded moment)
//! and resume under another shard count.

mod common;

use common::{bin, read_alerts, replay_args, run_replay};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tapewatch::cmd::import::import;

const MS: i64 = 1_000_000;
const SEC: i64 = 1_000_000_000;
/// 2026-11-02 09:30 Asia/Shanghai.
const DAY: i64 = 1_793_583_000_000_000_000;
/// 10.00 and one tick (0.01) in 1/10,000.
const PX: i64 = 100_000;
const TICK: i64 = 100;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    B,
    S,
}

struct Order {
    account: String,
    side: Side,
    price: i64,
    open: u64,
}

/// Writes lifecycle-consistent records in time order.
struct Tape {
    lines: Vec<(i64, String)>,
    orders: HashMap<u64, (String, Order)>,
    next_id: u64,
}

fn px(ticks: i64) -> String {
    let p = PX + ticks * TICK;
    format!("{}.{:04}", p / 10_000, p % 10_000)
}

impl Tape {
    fn new() -> Tape {
        Tape { lines: Vec::new(), orders: HashMap::new(), next_id: 1 }
    }

    fn new_order(&mut self, ts: i64, instrument: &str, account: &str, side: Side, ticks: i64, qty: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let s = if side == Side::B { 'B' } else { 'S' };
        self.lines.push((ts, format!("{ts},N,{id},{account},{instrument},{s},{},{qty},,", px(ticks))));
        let order = Order { account: account.into(), side, price: ticks, open: qty };
        self.orders.insert(id, (instrument.into(), order));
        id
    }

    fn cancel(&mut self, ts: i64, id: u64) {
        let (instrument, o) = self.orders.remove(&id).expect("cancel of an open order");
        let s = if o.side == Side::B { 'B' } else { 'S' };
        self.lines.push((ts, format!("{ts},C,{id},{},{instrument},{s},{},{},,", o.account, px(o.price), o.open)));
    }

    /// A trade of `qty` at the passive order's price.
    fn trade(&mut self, ts: i64, buy: u64, sell: u64, aggressor: Side, qty: u64) {
        let (instrument, b) = &self.orders[&buy];
        let (_, s) = &self.orders[&sell];
        assert!(qty <= b.open && qty <= s.open);
        let price = if aggressor == Side::B { s.price } else { b.price };
        let a = if aggressor == Side::B { 'B' } else { 'S' };
        let line = format!("{ts},T,{buy},{},{instrument},{a},{},{qty},{sell},{}", b.account, px(price), s.account);
        self.lines.push((ts, line));
        for id in [buy, sell] {
            let o = &mut self.orders.get_mut(&id).unwrap().1;
            o.open -= qty;
            if o.open == 0 {
                self.orders.remove(&id);
            }
        }
    }

    /// An aggressive order (side, limit in ticks) taking `against` (resting
    /// orders, best first) for up to `qty`; what is left is cancelled.
    fn take(
        &mut self,
        ts: i64,
        instrument: &str,
        account: &str,
        (side, limit): (Side, i64),
        qty: u64,
        against: &[u64],
    ) {
        let id = self.new_order(ts, instrument, account, side, limit, qty);
        let mut left = qty;
        for &passive in against {
            if left == 0 || !self.orders.contains_key(&passive) {
                continue;
            }
            let q = left.min(self.orders[&passive].1.open);
            let (b, s) = if side == Side::B { (id, passive) } else { (passive, id) };
            self.trade(ts, b, s, side, q);
            left -= q;
        }
        if left > 0 {
            self.cancel(ts, id);
        }
    }

    fn write(mut self, path: &Path) {
        self.lines.sort_by_key(|l| l.0);
        let mut out =
            String::from("seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n");
        for (seq, (_, line)) in self.lines.iter().enumerate() {
            writeln!(out, "{},{line}", seq + 1).unwrap();
        }
        std::fs::write(path, out).unwrap();
    }
}

/// Resting liquidity: `levels` levels a side from `gap` ticks off 10.00.
fn liquidity(t: &mut Tape, instrument: &str, qty: u64, gap: i64) -> (Vec<u64>, Vec<u64>) {
    let (mut bids, mut asks) = (Vec::new(), Vec::new());
    for level in 0..5 {
        bids.push(t.new_order(DAY, instrument, &format!("LQB{level}"), Side::B, -gap - level, qty));
        asks.push(t.new_order(DAY, instrument, &format!("LQS{level}"), Side::S, gap + level, qty));
    }
    (bids, asks)
}

/// Two market makers quote both sides at 10.00/10.01 with equal sizes and
/// replace every 150-350 ms; traders hit them; an institution rests large
/// sells well behind the touch for 40 s and cancels them.
fn benign(t: &mut Tape, instrument: &str, seconds: i64, seed: u64) {
    let mut rng = seed;
    let mut next = |n: u64| {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % n
    };
    let mut quotes: [[Option<u64>; 2]; 2] = [[None; 2]; 2];
    let mut ts = DAY + SEC;
    let mut trader_at = ts;
    let mut institution = Vec::new();
    while ts < DAY + seconds * SEC {
        ts += 150 * MS + next(200) as i64 * MS;
        for (m, maker) in ["MM1", "MM2"].into_iter().enumerate() {
            for (s, side) in [Side::B, Side::S].into_iter().enumerate() {
                if let Some(id) = quotes[m][s]
                    && t.orders.contains_key(&id)
                {
                    t.cancel(ts, id);
                }
                let ticks = if side == Side::B { 0 } else { 1 };
                quotes[m][s] = Some(t.new_order(ts + 1, instrument, maker, side, ticks, 400 + 100 * m as u64));
            }
        }
        if ts >= trader_at {
            trader_at = ts + 300 * MS + next(900) as i64 * MS;
            let trader = format!("T{}", next(30));
            let side = if next(2) == 0 { Side::B } else { Side::S };
            let against: Vec<u64> = quotes.iter().filter_map(|q| q[if side == Side::B { 1 } else { 0 }]).collect();
            let limit = if side == Side::B { 1 } else { 0 };
            t.take(ts + 2, instrument, &trader, (side, limit), 100 + next(500), &against);
        }
        if institution.is_empty() && next(40) == 0 {
            // Beyond the best five levels, so the planted spoofers here stay
            // large against the depth they are placed into.
            for level in 7..10 {
                institution.push((ts + 40 * SEC, t.new_order(ts, instrument, "INST", Side::S, level, 5_000)));
            }
        }
        institution.retain(|&(until, id)| {
            if ts >= until {
                t.cancel(ts, id);
                false
            } else {
                true
            }
        });
    }
}

/// Coscia: a small buy from `genuine` at 10.00, three large sells from
/// `spoofer` at 10.01-10.03, the buy fills (by `asks` taking it), the
/// sells are cancelled ~0.6 s later.
fn coscia(t: &mut Tape, instrument: &str, at: i64, genuine: &str, spoofer: &str) {
    let buy = t.new_order(at, instrument, genuine, Side::B, 0, 100);
    let sells: Vec<u64> = (1..=3).map(|k| t.new_order(at + 80 * MS, instrument, spoofer, Side::S, k, 1_500)).collect();
    t.take(at + 200 * MS, instrument, "HIT", (Side::S, 0), 100, &[buy]);
    for id in sells {
        t.cancel(at + 700 * MS, id);
    }
}

/// Sarao: five large sells one tick apart behind the touch, a buy that
/// lifts the touch, all layers cancelled 2.5 s later.
fn sarao(t: &mut Tape, instrument: &str, at: i64, account: &str, asks: &[u64]) {
    let layers: Vec<u64> =
        (2..7).map(|k| t.new_order(at + k * 10 * MS, instrument, account, Side::S, k, 1_200)).collect();
    t.take(at + SEC, instrument, account, (Side::B, 1), 300, asks);
    for id in layers {
        t.cancel(at + 2_500 * MS, id);
    }
}

/// An igniter: aggressive buys take the thin asks up five ticks within two
/// seconds, then its sell resting above is lifted 10 s later.
fn igniter(t: &mut Tape, instrument: &str, at: i64, account: &str, asks: &[u64]) {
    t.take(at, instrument, account, (Side::B, 2), 400, &asks[..2]);
    t.take(at + 700 * MS, instrument, account, (Side::B, 5), 600, &asks[2..5]);
    let exit = t.new_order(at + 2 * SEC, instrument, account, Side::S, 6, 300);
    t.take(at + 12 * SEC, instrument, "LIFT", (Side::B, 6), 300, &[exit]);
}

/// The tape, its accounts.csv, and the planted (rule, group) pairs.
fn make_tape(dir: &Path) -> (PathBuf, BTreeSet<(String, String)>) {
    let mut t = Tape::new();
    let mut planted = BTreeSet::new();
    let mut accounts = String::from("account,group\n");
    for i in 0..6 {
        let instrument = format!("00000{i}");
        let (_, asks) = liquidity(&mut t, &instrument, if i % 3 == 2 { 200 } else { 2_000 }, 2);
        benign(&mut t, &instrument, 120, i as u64 + 1);
        let at = DAY + (20 + 7 * i as i64) * SEC + 123 * MS;
        match i % 3 {
            0 => {
                let (a, b) = (format!("CA{i}"), format!("CB{i}"));
                writeln!(accounts, "{a},GC{i}\n{b},GC{i}").unwrap();
                coscia(&mut t, &instrument, at, &a, &b);
                coscia(&mut t, &instrument, at + 30 * SEC, &a, &b);
                planted.insert(("spoofing".to_string(), format!("GC{i}")));
            }
            1 => {
                sarao(&mut t, &instrument, at, &format!("SAR{i}"), &asks);
                planted.insert(("layering".to_string(), format!("SAR{i}")));
            }
            _ => {
                igniter(&mut t, &instrument, at, &format!("IGN{i}"), &asks);
                planted.insert(("momentum-ignition".to_string(), format!("IGN{i}")));
            }
        }
    }
    let tape = dir.join("day.csv");
    t.write(&tape);
    std::fs::write(dir.join("day.accounts.csv"), accounts).unwrap();
    // The book rules are off by default (the book's cost): turned on here.
    std::fs::write(
        dir.join(BOOK_ON),
        "[spoofing]\nenabled = true\n[layering]\nenabled = true\n[momentum_ignition]\nenabled = true\n",
    )
    .unwrap();
    (tape, planted)
}

/// A rules file beside the tape that turns the book rules on.
const BOOK_ON: &str = "book-on.toml";

fn book_rule(alert: &Value) -> bool {
    matches!(alert["rule"].as_str(), Some("spoofing" | "layering" | "momentum-ignition"))
}

#[test]
fn planted_shapes_are_found_the_same_for_any_shard_count_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, planted) = make_tape(dir.path());
    let native = dir.path().join("day.tape");
    import(&csv, &native, &dir.path().join("import.rejects.tsv")).unwrap();
    let mut reference: Option<Vec<Value>> = None;
    for tape in [&csv, &native] {
        for shards in [1, 2, 3] {
            let out = dir.path().join(format!("out-{shards}-{}", tape.extension().unwrap().to_string_lossy()));
            std::fs::create_dir_all(&out).unwrap();
            let mut args = replay_args(tape, &out, shards);
            args.reference.rules = Some(dir.path().join(BOOK_ON));
            let summary = run_replay(&args);
            assert_eq!(summary.feed.rejected, 0, "the tape is well formed");
            let alerts = read_alerts(&out.join("alerts.jsonl"));
            match &reference {
                None => reference = Some(alerts),
                Some(want) => assert_eq!(&alerts, want, "{shards} shards, {}", tape.display()),
            }
        }
    }
    let alerts: Vec<Value> = reference.unwrap().into_iter().filter(book_rule).collect();
    let found: BTreeSet<(String, String)> = alerts
        .iter()
        .map(|a| (a["rule"].as_str().unwrap().to_string(), a["group"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(found, planted, "{alerts:#?}");
    // Two Coscia rounds per spoofer: two alerts each, with measured values
    // next to their thresholds and the contributing orders.
    let spoof = alerts.iter().find(|a| a["rule"] == "spoofing").unwrap();
    let e = &spoof["evidence"];
    assert_eq!(e["spoof_side"], "S");
    assert!(e["size_pct"].as_u64().unwrap() >= e["size_pct_min"].as_u64().unwrap(), "{e}");
    assert_eq!(e["cancelled_pct"], 100);
    assert_eq!(e["order_ids"].as_array().unwrap().len(), 4, "{e}");
    assert_eq!(alerts.iter().filter(|a| a["rule"] == "spoofing").count(), 4);
    let ignition = alerts.iter().find(|a| a["rule"] == "momentum-ignition").unwrap();
    assert!(ignition["evidence"]["move_ticks"].as_i64().unwrap() >= 5, "{ignition}");
}

fn replay_cmd(tape: &Path, out: &Path, state: &Path, shards: usize) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("replay")
        .arg(tape)
        .arg("--alerts")
        .arg(out.join("alerts.jsonl"))
        .arg("--rules")
        .arg(tape.parent().unwrap().join(BOOK_ON))
        .args(["--shards", &shards.to_string(), "--cores", "none", "--quiet", "--state"])
        .arg(state)
        .args(["--checkpoint-every-records", "3000", "--checkpoint-interval-ms", "0"])
        .env("TAPEWATCH_SNAPSHOT_SLICE", "7")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_crash_and_resume_under_another_shard_count_gives_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, _) = make_tape(dir.path());
    let want_dir = dir.path().join("want");
    std::fs::create_dir_all(&want_dir).unwrap();
    let mut args = replay_args(&csv, &want_dir, 2);
    args.reference.rules = Some(dir.path().join(BOOK_ON));
    run_replay(&args);
    let want = read_alerts(&want_dir.join("alerts.jsonl"));
    assert!(want.iter().filter(|a| book_rule(a)).count() >= 5);
    let records = std::fs::read_to_string(&csv).unwrap().lines().count() as u64;
    // Abort once checkpoint k is durable (as a crash would), at points
    // spread over the tape, each resumed under another shard count; then
    // kill -9 at a few seeded moments.
    for (k, (first, second)) in [(1u64, (1, 3)), (records / 3000 / 2, (3, 2)), (records / 3000 - 1, (2, 1))] {
        let (out, state) = (dir.path().join(format!("out-{k}")), dir.path().join(format!("state-{k}")));
        std::fs::create_dir_all(&out).unwrap();
        let crashed =
            replay_cmd(&csv, &out, &state, first).arg("--exit-after-checkpoint").arg(k.to_string()).output().unwrap();
        assert!(!crashed.status.success(), "the run should have stopped at checkpoint {k}");
        let resumed = replay_cmd(&csv, &out, &state, second).output().unwrap();
        assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
        assert_eq!(read_alerts(&out.join("alerts.jsonl")), want, "checkpoint {k}");
    }
    let (out, state) = (dir.path().join("out-kill"), dir.path().join("state-kill"));
    std::fs::create_dir_all(&out).unwrap();
    for (i, wait_ms) in [30u64, 90, 150].into_iter().enumerate() {
        let mut child = replay_cmd(&csv, &out, &state, 1 + i % 3).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let finished = replay_cmd(&csv, &out, &state, 2).output().unwrap();
    assert!(finished.status.success(), "{}", String::from_utf8_lossy(&finished.stderr));
    assert_eq!(read_alerts(&out.join("alerts.jsonl")), want, "after kill -9 and resume");
}
