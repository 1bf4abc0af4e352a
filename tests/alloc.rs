//! The hot path allocates nothing once warmed up (STYLE: "a test can count
//! allocations after warm-up"). A counting global allocator watches whole
//! replays of two tapes of the same shape, one three times the other: the
//! extra records must cost no extra allocations beyond the few of tables
//! that grow, so an allocation per record, per batch or per alert fails it.

mod common;

use common::{replay_args, run_replay};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tapewatch::cmd::import::import;
use tapewatch::generator::{GenConfig, generate};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by one replay of `tape`, and the records it applied and
/// alerts it raised.
fn replay_allocations(tape: &Path, out: &Path, shards: usize, rules: Option<&Path>) -> (u64, u64, u64) {
    let mut args = replay_args(tape, out, shards);
    args.reference.rules = rules.map(Path::to_path_buf);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let summary = run_replay(&args);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    (allocations, summary.applied, summary.alerts.iter().sum())
}

#[test]
fn replay_allocations_do_not_grow_with_the_tape() {
    allocations_do_not_grow_with_the_tape(None);
}

/// The rules that are off by default too: the book, the spoof stream and
/// the per-key tables of the window rules (which grow by doubling only).
#[test]
fn replay_allocations_do_not_grow_with_the_tape_with_every_rule_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("every-rule.toml");
    let text: String =
        tapewatch::detect::registry::RULES.iter().map(|r| format!("[{}]\nenabled = true\n", r.table)).collect();
    std::fs::write(&rules, text).unwrap();
    allocations_do_not_grow_with_the_tape(Some(&rules));
}

/// The counter is the process's: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn allocations_do_not_grow_with_the_tape(rules: Option<&Path>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for events in [100_000u64, 300_000] {
        let csv = dir.path().join(format!("day-{events}.csv"));
        let mut cfg = GenConfig::new(events, 11);
        // More planted actors on the larger tape, so the sink writes more alerts too.
        cfg.cancel_abusers = (events / 25_000) as u32;
        cfg.self_traders = (events / 25_000) as u32;
        generate(&cfg, &csv).unwrap();
        let tape = dir.path().join(format!("day-{events}.tape"));
        import(&csv, &tape, &dir.path().join(format!("day-{events}.rejects.tsv"))).unwrap();
        let out = dir.path().join(format!("out-{events}"));
        std::fs::create_dir_all(&out).unwrap();
        runs.push((replay_allocations(&csv, &out, 2, rules), replay_allocations(&tape, &out, 2, rules)));
    }
    let ((small_csv, small_native), (large_csv, large_native)) = (runs[0], runs[1]);
    for (format, small, large) in [("csv", small_csv, large_csv), ("native", small_native, large_native)] {
        let extra_records = large.1 - small.1;
        let extra_alerts = large.2.saturating_sub(small.2);
        assert!(
            extra_records > 150_000 && extra_alerts > 0,
            "{format}: the larger tape must do more work: {small:?} vs {large:?}"
        );
        let extra_allocations = large.0.saturating_sub(small.0);
        // Table growth (doubling) and per-run set-up account for a few dozen;
        // one allocation per 512-record batch would already be ~400.
        assert!(
            extra_allocations < 100,
            "{format}: {extra_allocations} more allocations for {extra_records} more records \
             and {extra_alerts} more alerts ({} vs {} in all)",
            large.0,
            small.0
        );
    }
}
