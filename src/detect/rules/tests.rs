//! The three book rules on shapes from the published cases and on the
//! benign flow they must leave alone, each tape run through all three
//! rules and a plain book.

use super::test_book::{MS, NaiveBook, SEC, TICK, Tape};
use super::{BookRule, Evidence, Finding, layering, momentum_ignition, spoofing};
use crate::event::{Event, Px, Side};

const BUY: Side = Side::Buy;
const SELL: Side = Side::Sell;
/// 10.00 in 1/10,000.
const PX: Px = 100_000;

fn px(ticks: i64) -> Px {
    PX + ticks * TICK
}

pub struct Rules {
    /// Spoofing and layering, on their shared stream (as the shard runs them).
    pub spoof: super::spoof_pattern::Pattern,
    pub ignition: momentum_ignition::MomentumIgnition,
}

impl Rules {
    pub fn defaults() -> Rules {
        Rules::with(spoofing::Params::default(), layering::Params::default())
    }

    pub fn with(spoofing: spoofing::Params, layering: layering::Params) -> Rules {
        Rules {
            spoof: super::spoof_pattern::Pattern::shared(&[
                (BookRule::Spoofing, spoofing.0),
                (BookRule::Layering, layering.0),
            ]),
            ignition: momentum_ignition::MomentumIgnition::new(momentum_ignition::Params::default()),
        }
    }

    pub fn run(&mut self, events: &[Event]) -> Vec<Finding> {
        let mut book = NaiveBook::new(TICK);
        let mut out = Vec::new();
        for e in events {
            let change = book.apply(e);
            let mut emit = |f: Finding| out.push(f);
            self.spoof.on_record(e, &change, &book, &mut emit);
            self.ignition.on_record(e, &change, &book, &mut emit);
        }
        out
    }
}

fn detect(tape: &Tape) -> Vec<Finding> {
    let events: Vec<Event> = tape.applied.iter().map(|a| a.e).collect();
    Rules::defaults().run(&events)
}

fn summary(findings: &[Finding]) -> Vec<(BookRule, u32)> {
    let mut v: Vec<(BookRule, u32)> = findings.iter().map(|f| (f.rule, f.group)).collect();
    v.sort();
    v.dedup();
    v
}

/// Resting liquidity from accounts 900..: five bid levels from 9.99 down
/// and five ask levels from 10.01 up, `qty` each, and a trade at 10.00.
fn background(tape: &mut Tape, qty: u64) {
    background_from(tape, qty, 1);
}

/// The same with the best levels `gap` ticks from 10.00.
fn background_from(tape: &mut Tape, qty: u64, gap: i64) {
    let mut id = 90_000;
    for level in 1..=5 {
        id += 1;
        tape.new_order(0, id, 900 + level as u32, BUY, px(1 - gap - level), qty);
        id += 1;
        tape.new_order(0, id, 910 + level as u32, SELL, px(gap + level - 1), qty);
    }
    tape.new_order(0, 89_998, 950, BUY, px(0), 10);
    tape.sweep(0, 89_999, 951, SELL, px(0), 10);
}

/// Coscia: a small buy from `genuine` at the touch, three large sells from
/// `spoofer` at the touch and one and two ticks behind, the buy fills, the
/// sells are cancelled `hold_ns` later.
fn coscia(tape: &mut Tape, t0: i64, genuine: u32, spoofer: u32, hold_ns: i64) {
    tape.new_order(t0, 1, genuine, BUY, px(0), 100);
    for (i, ticks) in [1, 2, 3].into_iter().enumerate() {
        tape.new_order(t0 + 100 * MS + i as i64 * MS, 10 + i as u64, spoofer, SELL, px(ticks), 1_000);
    }
    tape.sweep(t0 + 300 * MS, 2, 60, SELL, px(0), 100);
    for i in 0..3 {
        tape.cancel(t0 + 100 * MS + hold_ns + i * MS, 10 + i as u64);
    }
}

#[test]
fn coscia_fires_spoofing_only() {
    let mut tape = Tape::new();
    tape.relate(1, 1);
    tape.relate(2, 1);
    background(&mut tape, 1_000);
    coscia(&mut tape, SEC, 1, 2, 600 * MS);
    let findings = detect(&tape);
    assert_eq!(summary(&findings), vec![(BookRule::Spoofing, 1)], "{findings:#?}");
    let f = findings[0];
    // The third cancel completes it (two cancelled are 67% of the spoof quantity).
    assert_eq!(f.ts_ns, SEC + 700 * MS + 2 * MS);
    assert_eq!(f.account, 2);
    let Evidence::Spoof(ev) = f.evidence else { panic!() };
    assert_eq!((ev.side, ev.spoof_qty, ev.depth5_at_placement, ev.cancelled_qty), (SELL, 3_000, 5_000, 3_000));
    assert_eq!(
        (ev.measured_size_pct(), ev.measured_cancel_pct(), ev.measured_one_sided_x100()),
        (Some(60), 100, Some(3_000))
    );
    assert_eq!((ev.opposite_exec_qty, ev.opposite_orders, ev.spoof_orders, ev.levels_behind), (100, 1, 3, 2));
    assert_eq!(f.order_ids.as_slice(), &[10, 11, 12, 1]);
    assert_eq!(f.order_ids.total, 4);
}

#[test]
fn coscia_with_one_account_and_partial_fills_fires() {
    let mut tape = Tape::new();
    background(&mut tape, 1_000);
    let t0 = SEC;
    tape.new_order(t0, 1, 3, BUY, px(0), 300);
    for (i, ticks) in [1, 1, 2].into_iter().enumerate() {
        tape.new_order(t0 + 50 * MS, 10 + i as u64, 3, SELL, px(ticks), 1_200);
    }
    // The genuine buy fills in three trades; a spoof sell is hit for 10%.
    tape.sweep(t0 + 200 * MS, 2, 61, SELL, px(0), 100);
    tape.sweep(t0 + 250 * MS, 3, 62, SELL, px(0), 150);
    tape.sweep(t0 + 300 * MS, 4, 63, SELL, px(0), 50);
    tape.new_order(t0 + 310 * MS, 5, 64, BUY, px(1), 1_000 + 120);
    tape.trade(t0 + 310 * MS, 5, 90_002, BUY, 1_000);
    tape.trade(t0 + 310 * MS, 5, 10, BUY, 120);
    for i in 0..3 {
        tape.cancel(t0 + 650 * MS, 10 + i);
    }
    let findings = detect(&tape);
    assert_eq!(summary(&findings), vec![(BookRule::Spoofing, tape.group(3))], "{findings:#?}");
    let Evidence::Spoof(ev) = findings[0].evidence else { panic!() };
    assert_eq!((ev.cancelled_qty, ev.spoof_qty, ev.opposite_exec_qty, ev.levels_behind), (3_480, 3_600, 300, 1));
}

#[test]
fn spoofing_edges() {
    // (hold, fills of the spoof orders, expect an alert)
    let cases: &[(i64, u64, bool)] = &[
        (600 * MS, 0, true),
        // The first sell entered at t0+100ms: cancels at +5s from it fall out.
        (5 * SEC - 3 * MS, 0, true),
        (5 * SEC, 0, false),
        (7 * SEC, 0, false),
        // 10% of the spoof quantity filled: 90% cancelled still qualifies;
        // 30% filled leaves 70%.
        (600 * MS, 300, true),
        (600 * MS, 900, false),
    ];
    for &(hold, filled, want) in cases {
        let mut tape = Tape::new();
        tape.relate(1, 1);
        tape.relate(2, 1);
        background(&mut tape, 1_000);
        let t0 = SEC;
        tape.new_order(t0, 1, 1, BUY, px(0), 100);
        for (i, ticks) in [1, 2, 3].into_iter().enumerate() {
            tape.new_order(t0 + 100 * MS + i as i64 * MS, 10 + i as u64, 2, SELL, px(ticks), 1_000);
        }
        // The fill comes late so that it is inside every window tested.
        tape.sweep(t0 + hold, 2, 60, SELL, px(0), 100);
        if filled > 0 {
            tape.new_order(t0 + hold, 3, 61, BUY, px(3), 1_000 + filled);
            tape.trade(t0 + hold, 3, 90_002, BUY, 1_000);
            tape.trade(t0 + hold, 3, 10, BUY, filled.min(1_000));
            if filled > 1_000 {
                tape.trade(t0 + hold, 3, 11, BUY, filled - 1_000);
            }
        }
        for i in 0..3 {
            if tape.book.open(10 + i).is_some() {
                tape.cancel(t0 + 100 * MS + hold + i as i64 * MS, 10 + i);
            }
        }
        let got = summary(&detect(&tape));
        assert_eq!(got == vec![(BookRule::Spoofing, 1)], want, "hold {hold}, filled {filled}: {got:?}");
    }
}

/// Sarao: `layers` large sells one tick apart behind the touch, an
/// aggressive buy, then all the layers cancelled `hold_ns` later.
fn sarao(tape: &mut Tape, t0: i64, account: u32, layers: u64, hold_ns: i64) {
    for i in 0..layers {
        tape.new_order(t0 + i as i64 * 20 * MS, 20 + i, account, SELL, px(2 + i as i64), 800);
    }
    tape.sweep(t0 + SEC, 30, account, BUY, px(1), 200);
    for i in 0..layers {
        tape.cancel(t0 + hold_ns + i as i64 * 10 * MS, 20 + i);
    }
}

#[test]
fn sarao_fires_layering_only() {
    for layers in [4, 5, 6] {
        let mut tape = Tape::new();
        background(&mut tape, 1_000);
        sarao(&mut tape, SEC, 3, layers, 3 * SEC);
        let findings = detect(&tape);
        assert_eq!(summary(&findings), vec![(BookRule::Layering, tape.group(3))], "{layers}: {findings:#?}");
        let Evidence::Spoof(ev) = findings[0].evidence else { panic!() };
        assert!(ev.levels_behind >= 3 && ev.opposite_exec_qty == 200, "{ev:?}");
        assert_eq!(findings[0].order_ids.total as u64, ev.levels_behind as u64 + 1);
    }
    // Two layers are no ladder (and with these sizes no spoof either).
    let mut tape = Tape::new();
    background(&mut tape, 1_000);
    sarao(&mut tape, SEC, 3, 2, 3 * SEC);
    assert_eq!(summary(&detect(&tape)), vec![]);
}

#[test]
fn layering_holds_up_to_its_window() {
    for (hold, want) in [(9 * SEC, true), (11 * SEC, false)] {
        let mut tape = Tape::new();
        background(&mut tape, 1_000);
        sarao(&mut tape, SEC, 3, 5, hold);
        let got = summary(&detect(&tape));
        assert_eq!(got == vec![(BookRule::Layering, tape.group(3))], want, "hold {hold}: {got:?}");
    }
}

/// An igniter: three aggressive buys within two seconds take the thin ask
/// levels; it then rests a sell above, which another buyer lifts.
fn igniter(tape: &mut Tape, t0: i64, account: u32, sweep_to: i64, exit_ticks: i64, exit_after_ns: i64) {
    for (i, limit) in [2, sweep_to - 1, sweep_to].into_iter().enumerate() {
        tape.sweep(t0 + i as i64 * 600 * MS, 40 + i as u64, account, BUY, px(limit), 400);
    }
    tape.new_order(t0 + 2 * SEC, 45, account, SELL, px(exit_ticks), 300);
    tape.sweep(t0 + 2 * SEC + exit_after_ns, 46, 70, BUY, px(exit_ticks), 300);
}

#[test]
fn igniter_fires_momentum_ignition() {
    let mut tape = Tape::new();
    background(&mut tape, 200);
    for level in 6..=9 {
        tape.new_order(0, 91_100 + level as u64, 930, SELL, px(level), 200);
    }
    igniter(&mut tape, SEC, 4, 5, 6, 8 * SEC);
    let findings = detect(&tape);
    assert_eq!(summary(&findings), vec![(BookRule::MomentumIgnition, tape.group(4))], "{findings:#?}");
    let Evidence::Ignition(ev) = findings[0].evidence else { panic!() };
    assert_eq!((ev.side, ev.start_px, ev.moved_px, ev.move_ticks), (BUY, px(0), px(5), 5));
    assert_eq!((ev.exit_px, ev.exit_vs_moved_ticks, ev.exit_after_ns), (px(6), 1, 8 * SEC + 800 * MS));
    assert_eq!(findings[0].order_ids.as_slice(), &[40, 41, 42, 45]);
}

#[test]
fn ignition_edges() {
    // (highest level swept, exit price in ticks, exit after, alert)
    let cases: &[(i64, i64, i64, bool)] = &[
        (5, 6, 8 * SEC, true),
        (4, 6, 8 * SEC, false),
        (5, 4, 8 * SEC, true),
        (5, 3, 8 * SEC, false),
        // The run ignites at its third sweep, 1.2 s in; the follow window
        // of 30 s ends at 31.2 s, inclusive.
        (5, 6, 29 * SEC + 200 * MS, true),
        (5, 6, 29 * SEC + 200 * MS + 1, false),
    ];
    for &(to, exit, after, want) in cases {
        let mut tape = Tape::new();
        background(&mut tape, 200);
        for level in 6..=9 {
            tape.new_order(0, 91_100 + level as u64, 930, SELL, px(level), 200);
        }
        if exit <= 5 {
            // A buyer resting at the exit price, for the igniter to hit.
            tape.new_order(SEC, 47, 71, BUY, px(exit), 300);
        }
        for (i, limit) in [2, to - 1, to].into_iter().enumerate() {
            tape.sweep(SEC + i as i64 * 600 * MS, 40 + i as u64, 4, BUY, px(limit), 400);
        }
        if exit <= 5 {
            tape.sweep(SEC + 2 * SEC + after, 45, 4, SELL, px(exit), 300);
        } else {
            tape.new_order(SEC + 2 * SEC, 45, 4, SELL, px(exit), 300);
            tape.sweep(SEC + 2 * SEC + after, 46, 70, BUY, px(exit), 300);
        }
        let got = summary(&detect(&tape));
        assert_eq!(got == vec![(BookRule::MomentumIgnition, tape.group(4))], want, "{to} {exit} {after}: {got:?}");
    }
}

/// A deterministic stream of small numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Market makers quote both sides at the touch with equal sizes and
/// cancel/replace every 150-250 ms; ordinary traders hit them now and then
/// and place and cancel small orders of their own.
fn market_makers_and_traders(tape: &mut Tape, seconds: i64, seed: u64) {
    let mut rng = Lcg(seed);
    let mut id = 1_000_000;
    let mut quotes = [[0u64; 2]; 2];
    let mut t = 0;
    let mut mid = 0i64;
    let mut next_trader = SEC;
    while t < seconds * SEC {
        t += 150 * MS + rng.next(100) as i64 * MS;
        if rng.next(10) == 0 {
            mid = (mid + rng.next(3) as i64 - 1).clamp(-2, 2);
        }
        for (m, account) in [5u32, 8].into_iter().enumerate() {
            for (s, side) in [BUY, SELL].into_iter().enumerate() {
                if quotes[m][s] != 0 && tape.book.open(quotes[m][s]).is_some() {
                    tape.cancel(t, quotes[m][s]);
                }
                id += 1;
                let price = if side == BUY { px(mid) } else { px(mid + 1) };
                tape.new_order(t + 1, id, account, side, price, 500 + 100 * m as u64);
                quotes[m][s] = id;
            }
        }
        if t >= next_trader {
            next_trader = t + 300 * MS + rng.next(600) as i64 * MS;
            let trader = 60 + rng.next(20) as u32;
            id += 1;
            let side = if rng.next(2) == 0 { BUY } else { SELL };
            let limit = if side == BUY { px(mid + 1) } else { px(mid) };
            tape.sweep(t + 2, id, trader, side, limit, 100 + rng.next(600));
            if rng.next(3) == 0 {
                id += 1;
                let away = if side == BUY { px(mid - 2) } else { px(mid + 3) };
                tape.new_order(t + 3, id, trader, side, away, 100 + rng.next(300));
                tape.cancel(t + 3 + rng.next(2_000) as i64 * MS, id);
            }
        }
    }
}

#[test]
fn market_makers_and_ordinary_traders_are_silent() {
    for seed in 1..6 {
        let mut tape = Tape::new();
        background_from(&mut tape, 1_000, 4);
        market_makers_and_traders(&mut tape, 60, seed);
        // The flow is what the rules must leave alone: both makers fill on
        // both sides and cancel more than 90% of what they quote.
        for maker in [5, 8] {
            let (mut quoted, mut cancelled, mut filled) = (0u64, 0u64, [0u64; 2]);
            for a in &tape.applied {
                match a.change {
                    Change::Entered { order, .. } if order.account == maker => quoted += 1,
                    Change::Cancelled { order, .. } if order.account == maker => cancelled += 1,
                    Change::Traded { buy, sell, .. } => {
                        filled[0] += (buy.account == maker) as u64;
                        filled[1] += (sell.account == maker) as u64;
                    }
                    _ => {}
                }
            }
            assert!(cancelled * 10 > quoted * 9 && filled[0] >= 5 && filled[1] >= 5, "{quoted} {cancelled} {filled:?}");
        }
        let findings = detect(&tape);
        assert_eq!(summary(&findings), vec![], "seed {seed}: {:#?}", &findings[..findings.len().min(3)]);
    }
}

#[test]
fn institutions_resting_behind_the_touch_are_silent() {
    let mut tape = Tape::new();
    background(&mut tape, 1_000);
    // Large sells two to four ticks behind, held 20-40 s, then cancelled,
    // while the institution's buy program trades now and then elsewhere.
    let mut id = 500;
    for round in 0..5i64 {
        let t0 = round * 45 * SEC;
        for level in 2..=4 {
            id += 1;
            tape.new_order(t0, id, 6, SELL, px(level), 5_000);
        }
        tape.sweep(t0 + 10 * SEC, 600 + round as u64, 61, SELL, px(-1), 100);
        for k in 0..3 {
            tape.cancel(t0 + (20 + 10 * round % 3) * SEC + k * MS, id - k as u64);
        }
    }
    assert_eq!(summary(&detect(&tape)), vec![]);
}

#[test]
fn shapes_among_benign_flow() {
    let mut tape = Tape::new();
    tape.relate(1, 1);
    tape.relate(2, 1);
    background_from(&mut tape, 1_000, 4);
    market_makers_and_traders(&mut tape, 20, 7);
    // The planted spoofer acts in the middle of the market makers' quoting.
    let mut t = 10 * SEC;
    t += 1;
    tape.new_order(t, 1, 1, BUY, tape.book.best(BUY).unwrap(), 100);
    let ask = tape.book.best(SELL).unwrap();
    for i in 0..3u64 {
        tape.new_order(t + 100 * MS, 10 + i, 2, SELL, ask + i as i64 * TICK, 1_500);
    }
    let bid = tape.book.best(BUY).unwrap();
    tape.new_order(t + 200 * MS, 2, 60, SELL, bid, 10_000);
    let resting: Vec<_> = tape.book.open_orders().into_iter().filter(|o| o.side == BUY && o.price == bid).collect();
    for o in resting {
        tape.trade(t + 200 * MS, o.order_id, 2, SELL, o.open_qty);
    }
    tape.cancel(t + 200 * MS, 2);
    for i in 0..3u64 {
        tape.cancel(t + 700 * MS, 10 + i);
    }
    let findings = detect(&tape);
    assert_eq!(summary(&findings), vec![(BookRule::Spoofing, 1)], "{findings:#?}");
}

use crate::detect::views::{BookView, Change};

#[test]
fn spoofing_and_layering_params() {
    use super::spoof_pattern::Levels;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        spoofing: Option<spoofing::RawParams>,
        layering: Option<layering::RawParams>,
    }
    let parse = |text: &str| {
        let doc: Doc = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let s = spoofing::Params::validate(
            doc.spoofing.unwrap_or_default(),
            &mut crate::config::Problems::new(text, "spoofing", &mut problems),
        );
        let l = layering::Params::validate(
            doc.layering.unwrap_or_default(),
            &mut crate::config::Problems::new(text, "layering", &mut problems),
        );
        if problems.is_empty() { Ok((s, l)) } else { Err(problems) }
    };
    let (s, l) = parse("").unwrap();
    assert!(s.is_none() && l.is_none(), "off by default (the book's cost)");
    let (s, l) = parse("[spoofing]\nenabled = true\n[layering]\nenabled = true\n").unwrap();
    let (s, l) = (s.unwrap().0, l.unwrap().0);
    assert_eq!(
        (s.window_ns, s.size_pct, s.cancel_pct, s.one_sided_k, s.levels),
        (5 * SEC, 50, 80, 4, Levels::AtMost(2))
    );
    assert_eq!((l.window_ns, l.levels), (10 * SEC, Levels::AtLeast(3)));
    let (s, l) =
        parse("[spoofing]\nenabled = false\n[layering]\nenabled = true\nmin_levels_behind = 4\ncancel_pct = 90\n")
            .unwrap();
    assert_eq!(s, None);
    assert_eq!((l.unwrap().0.levels, l.unwrap().0.cancel_pct), (Levels::AtLeast(4), 90));
    let problems =
        parse("[spoofing]\nenabled = true\ncancel_pct = 101\nsize_pct = 0\n[layering]\nenabled = true\nmin_levels_behind = 0\nwindow_ms = 0\n")
            .unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].starts_with("line 4: spoofing.size_pct = 0 is out of range 1..="), "{problems:?}");
    assert!(problems[1].starts_with("line 3: spoofing.cancel_pct = 101 is out of range 1..=100"), "{problems:?}");
    assert!(problems[2].starts_with("line 8: layering.window_ms = 0"), "{problems:?}");
    assert!(problems[3].starts_with("line 7: layering.min_levels_behind = 0"), "{problems:?}");
    assert!(parse("[spoofing]\nratio = 3\n").unwrap_err()[0].contains("unknown field `ratio`"));
}

#[test]
fn a_full_key_table_refuses_and_counts() {
    // The stream's key table holds the larger limit of the two rules.
    let mut params = spoofing::Params::default();
    params.0.max_keys = 1;
    let mut layering = layering::Params::default();
    layering.0.max_keys = 1;
    let mut rules = Rules::with(params, layering);
    let mut tape = Tape::new();
    tape.relate(1, 1);
    tape.relate(2, 1);
    // Only keys with a counted cancel and an execution on the other side
    // in the window take one: account 3 cancels a buy and sells into the
    // bid first and takes the only one, so the spoofer's group is refused:
    // no alert, and the refusals are counted.
    background(&mut tape, 1_000);
    tape.new_order(SEC / 2, 70, 3, BUY, px(-3), 100);
    tape.cancel(SEC / 2 + MS, 70);
    tape.sweep(SEC / 2 + 2 * MS, 71, 3, SELL, px(-1), 10);
    coscia(&mut tape, SEC, 1, 2, 600 * MS);
    let events: Vec<Event> = tape.applied.iter().map(|a| a.e).collect();
    let findings = rules.run(&events);
    assert_eq!(summary(&findings), vec![], "{findings:#?}");
    assert!(rules.spoof.stats().keys_refused > 0);
    assert_eq!(rules.spoof.stats().keys, 1);
}

#[test]
fn findings_pack_into_words_and_a_list_and_back() {
    let mut tape = Tape::new();
    tape.relate(1, 1);
    tape.relate(2, 1);
    background(&mut tape, 200);
    for level in 6..=9 {
        tape.new_order(0, 91_100 + level as u64, 930, SELL, px(level), 200);
    }
    coscia(&mut tape, SEC, 1, 2, 600 * MS);
    igniter(&mut tape, 5 * SEC, 4, 5, 6, 8 * SEC);
    let mut tape2 = Tape::new();
    background(&mut tape2, 1_000);
    sarao(&mut tape2, SEC, 3, 6, 3 * SEC);
    let mut findings = detect(&tape);
    findings.extend(detect(&tape2));
    let rules: Vec<BookRule> = findings.iter().map(|f| f.rule).collect();
    assert!(
        rules.contains(&BookRule::Spoofing)
            && rules.contains(&BookRule::Layering)
            && rules.contains(&BookRule::MomentumIgnition),
        "{rules:?}"
    );
    for f in findings {
        let packed = f.pack();
        assert!(packed.list().len() <= super::LIST_MAX);
        let (evidence, ids) = Finding::unpack(f.rule, &packed.words, packed.list()).unwrap();
        assert_eq!((evidence, ids), (f.evidence, f.order_ids));
    }
}
