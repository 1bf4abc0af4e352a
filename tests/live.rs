//! The live ingest path's idle watermark: on a quiet live feed, event time
//! follows the wall clock after the quiet period, so a lone abusive record
//! alerts without waiting for another record (or the end of the feed).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapewatch::event::{Kind, Side};
use tapewatch::ingest::RejectLog;
use tapewatch::ingest::live::{LiveFeed, WireRecord, wire_channel};
use tapewatch::ingest::validate::{Limits, Validator};
use tapewatch::metrics::Clock;
use tapewatch::symbols::{Groups, Names};
use tapewatch::topology::{self, LiveOptions, PipelineConfig};

fn record(seq: u64, kind: Kind, order_id: u64, side: Side, contra_order_id: u64) -> WireRecord {
    let mut w = WireRecord {
        seq,
        ts_ns: 1_793_583_000_000_000_000 + seq as i64 * 1_000,
        kind,
        order_id,
        contra_order_id,
        side,
        price: 100_000,
        qty: 100,
        ..WireRecord::default()
    };
    WireRecord::set_name(&mut w.account, &mut w.account_len, b"A1").unwrap();
    WireRecord::set_name(&mut w.instrument, &mut w.instrument_len, b"000001").unwrap();
    if kind == Kind::Trade {
        WireRecord::set_name(&mut w.contra_account, &mut w.contra_account_len, b"A1").unwrap();
    }
    w
}

fn alerts(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Sends one self-trade (sell, buy, the trade) and then nothing, keeping
/// the feed open; returns whether an alert was written within `wait`.
fn lone_self_trade(idle_after_ns: Option<u64>, wait: Duration) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let alerts_path = dir.path().join("alerts.jsonl");
    let mut cfg = PipelineConfig::new(1, alerts_path.clone(), dir.path().join("late.csv"));
    cfg.lateness_ns = 1_000_000;
    let clock = Clock::new();
    cfg.live = LiveOptions { idle_after_ns, clock: Some(clock), control: None };
    let (mut tx, rx) = wire_channel(4);
    let groups = Arc::new(Groups::default());
    let validator = Validator::new(Limits::default(), groups.clone());
    let names = Names {
        accounts: validator.accounts.table().clone(),
        instruments: validator.instruments.table().clone(),
        groups,
    };
    let feed = LiveFeed::new(rx, validator, RejectLog::discard());
    std::thread::scope(|s| {
        let pipeline = s.spawn(|| topology::run(feed, names, &cfg, |_| {}));
        let slot = tx.claim().unwrap();
        slot.clear();
        let due = clock.now_ns();
        for w in [
            record(1, Kind::New, 1, Side::Sell, 0),
            record(2, Kind::New, 2, Side::Buy, 0),
            record(3, Kind::Trade, 2, Side::Buy, 1),
        ] {
            slot.push(WireRecord { due_ns: due, ..w });
        }
        tx.publish();
        let started = Instant::now();
        let mut seen = false;
        while started.elapsed() < wait {
            if alerts(&alerts_path) > 0 {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Closing the feed ends the run, and releases everything.
        drop(tx);
        let summary = pipeline.join().unwrap().unwrap();
        assert_eq!(summary.alerts_total(), 1, "the trade is a self-trade");
        assert_eq!(summary.late, 0);
        seen
    })
}

#[test]
fn a_lone_abusive_record_on_a_quiet_feed_alerts_without_more_records() {
    // Generous bound: the point is "before the feed ends", not how fast.
    assert!(lone_self_trade(Some(5_000_000), Duration::from_secs(20)), "no alert while the feed stayed open");
}

#[test]
fn without_the_idle_watermark_the_lone_record_waits_for_the_feed() {
    // Control: nothing else can move the watermark past the trade, so no
    // alert may appear while the feed is open, however long we wait.
    assert!(!lone_self_trade(None, Duration::from_millis(300)), "an alert came out before the watermark passed it");
}
