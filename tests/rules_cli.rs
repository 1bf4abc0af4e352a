//! `tapewatch rules check` and `tapewatch rules show` through the binary.

mod common;

use common::bin;
use std::process::Command;

#[test]
fn rules_check_lists_every_problem_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[ramping]\nmin_move_bp = 0\nmin_share_pct = 130\n[quote_stuffing]\nwindow_ms = -1\n[marking_close]\ncall_end = \"15:99\"\n",
    )
    .unwrap();
    let out = Command::new(bin()).args(["rules", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 2: ramping.min_move_bp = 0",
        "line 3: ramping.min_share_pct = 130",
        "line 5: quote_stuffing.window_ms = -1",
        "line 7: marking_close.call_end = \"15:99\"",
    ] {
        assert!(err.contains(expected), "{expected} missing from {err}");
    }
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[ramping]\nwindow = 3\n").unwrap();
    let out = Command::new(bin()).args(["rules", "check"]).arg(&unknown).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: unknown field `window`"));

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[wash_trade]\nmin_share_pct = 15\n").unwrap();
    let out = Command::new(bin()).args(["rules", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin()).args(["rules", "show"]).arg(&good).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("[wash_trade]\nenabled = true\nmin_share_pct = 15\nmin_trades = 3\n"), "{shown}");
    // Ramping is off by default (speed); turned on, its defaults are filled in.
    assert!(shown.contains("[ramping]\nenabled = false\n"), "{shown}");
    std::fs::write(&good, "[ramping]\nenabled = true\n").unwrap();
    let out = Command::new(bin()).args(["rules", "show"]).arg(&good).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("[ramping]\nenabled = true\nwindow_ms = 180000\nmin_move_bp = 400\n"), "{shown}");
}
