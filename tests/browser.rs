//! The browser and promtool helpers see what they must: a script error on
//! a page, a malformed exposition. (The pages themselves are tested where
//! they are built.)

mod common;

use common::browser::{ERROR_HOOK, chromium, dump_dom, promtool_check, screenshot, script_errors};

#[test]
fn a_script_error_on_a_page_is_seen_and_a_clean_page_passes() {
    let Some(chrome) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = |name: &str, script: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("<!doctype html><html><head>{ERROR_HOOK}</head><body><h1 id=t>tapewatch</h1><script>{script}</script></body></html>")).unwrap();
        format!("file://{}", path.display())
    };
    let clean = page("clean.html", "document.getElementById('t').textContent = 'rendered';");
    let dom = dump_dom(&chrome, &clean, 2000);
    assert_eq!(script_errors(&dom).0, 0, "{dom}");
    assert!(dom.contains("rendered"), "the page's script did not run: {dom}");
    screenshot(&chrome, &clean, "browser-self-test", 640, 360, 2000);

    let broken = page("broken.html", "undefinedFunction();");
    let (errors, text) = script_errors(&dump_dom(&chrome, &broken, 2000));
    assert_eq!(errors, 1, "{text}");
    assert!(text.contains("undefinedFunction"), "{text}");
}

#[test]
fn promtool_accepts_a_good_exposition_and_names_a_bad_one() {
    let good =
        "# HELP tw_records_total Records read.\n# TYPE tw_records_total counter\ntw_records_total{kind=\"new\"} 3\n";
    let Some(result) = promtool_check(good) else { return };
    assert_eq!(result, Ok(()));
    let bad = "# TYPE tw_records counter\ntw_records{kind=\"new\" 3\n";
    assert!(promtool_check(bad).unwrap().is_err());
}
