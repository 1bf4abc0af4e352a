//! The live dashboard as a person sees it: headless Chromium opens `GET /`
//! of a server whose hub was filled from a replay of the sample tape, runs
//! its scripts (status polling and the SSE stream), and the page shows the
//! run's figures without a script error. Screenshots at wall-screen and
//! laptop sizes go to `<target>/screenshots/` for a person to look at.

mod common;
#[path = "common/hub_run.rs"]
mod hub_run;

use common::browser::{chromium, dump_dom, screenshot, script_errors};
use hub_run::{Server, get, sample_run};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tapewatch::http::HttpOptions;

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let start = dom[at..].find('>').unwrap() + at + 1;
    let end = dom[start..].find("</").unwrap() + start;
    dom[start..end].to_string()
}

/// `n` with thousands separators, as the page writes figures.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_dashboard_shows_the_runs_figures_without_script_errors() {
    let Some(chrome) = chromium() else { return };
    let run = sample_run();
    // Chromium's virtual clock stands still while a request is open, so
    // streams here end after a second (EventSource reconnects at once, with
    // Last-Event-ID) and the page's time can run between them.
    let opts = HttpOptions { max_stream: Duration::from_secs(1), ..HttpOptions::default() };
    let server = Server::sample(opts.clone());
    let page = get(server.addr, "/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    // The SVG namespace is a name, not a fetch; anything else absolute is.
    let page_text = page.body.replace("'http://www.w3.org/2000/svg'", "");
    assert!(
        !page_text.contains("http://") && !page_text.contains("https://") && !page_text.contains("//fonts."),
        "the page loads nothing from elsewhere"
    );

    let dom = dump_dom(&chrome, &server.url("/"), 4000);
    let (errors, text) = script_errors(&dom);
    assert_eq!(errors, 0, "script errors: {text}");
    let total = run.alert_lines.len();
    assert_eq!(text_of(&dom, "k-alerts"), total.to_string(), "the alert count");
    assert_eq!(text_of(&dom, "k-accounts"), grouped(run.accounts), "distinct accounts");
    assert!(dom.contains("READY"), "the ready state");
    for rule in ["self-trade", "excessive-cancel", "wash-trade"] {
        assert!(dom.contains(rule), "rule {rule} is named on the page");
    }
    // The newest alert, with its evidence, and the day's top group.
    let newest: serde_json::Value = serde_json::from_str(run.alert_lines.last().unwrap()).unwrap();
    assert!(dom.contains(&format!("#{total}")), "the newest alert's id");
    assert!(dom.contains(newest["instrument"].as_str().unwrap()));
    assert!(dom.contains("<path"), "the message-rate chart was drawn");
    assert!(dom.contains("<rect"), "the alerts-by-rule chart was drawn");
    assert!(dom.contains("alert stream <b>live</b>"), "the SSE stream connected");

    server.stop().unwrap();

    // A hub that goes on live while the page is open: alerts arrive over
    // the stream, and the screenshots show a running day.
    let server = Server::sample(opts);
    let stop = AtomicBool::new(false);
    // Stops the live thread however the checks end, so a failed assertion
    // fails the test instead of waiting on the thread forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| run.keep_live(&server.hub, server.filled.clone().unwrap(), &stop));
        let dom = dump_dom(&chrome, &server.url("/"), 4000);
        let (errors, text) = script_errors(&dom);
        assert_eq!(errors, 0, "script errors: {text}");
        let streamed: u32 = dom
            .split("data-streamed=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            streamed > 0,
            "no alert came over the stream: {} / {} / {}",
            text_of(&dom, "p-stream"),
            text_of(&dom, "k-alerts"),
            dom.matches("class=\"id\"").count()
        );
        let rate = text_of(&dom, "k-rate-sub");
        assert!(rate.starts_with("new "), "a live hub is not shown as stalled: {rate}");
        for (name, w, h) in [("dashboard-1920x1080", 1920, 1080), ("dashboard-1280x800", 1280, 800)] {
            screenshot(&chrome, &server.url("/"), name, w, h, 4000);
        }
    });
    server.stop().unwrap();
}
