//! The live dashboard as a person sees it: headless Chromium opens `GET /`
//! of a server whose hub was filled from a replay of the sample tape, runs
//! its scripts (status polling and the SSE stream), and the page shows the
//! run's figures without a script error; and the same page of a running
//! `tapewatch serve` while `tapewatch feed` sends it a tape. Screenshots at
//! wall-screen and laptop sizes go to `<target>/screenshots/` for a person
//! to look at.

mod common;
#[path = "common/hub_run.rs"]
mod hub_run;

use common::browser::{chromium, dump_dom, screenshot, script_errors};
use common::daemon::Daemon;
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

/// `k-...` figures as the page writes them back to a number (`1,234`,
/// `12.3k`); `None` for `–` or text.
fn figure(text: &str) -> Option<f64> {
    let t = text.replace(',', "");
    let (digits, scale) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1e3),
        'M' => (&t[..t.len() - 1], 1e6),
        _ => (&t[..], 1.0),
    };
    digits.parse::<f64>().ok().map(|v| v * scale)
}

/// Issue 11: the dashboard of a live run. `serve` is started, `feed` sends
/// it a generated day at a steady rate, and while the day runs the page
/// shows the message rate, the alerts by rule and the newest alerts, the
/// ingest-to-alert p50/p99, and the feed and checkpoint status, without a
/// script error. `sse_max_secs = 1` ends the page's alert stream every
/// second (EventSource reconnects with Last-Event-ID), so Chromium's
/// virtual clock, which stands still while a request is open, runs on.
#[test]
fn the_dashboard_of_a_live_run_shows_its_figures() {
    let Some(chrome) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let tape = dir.join("day.csv");
    tapewatch::generator::generate(&tapewatch::generator::GenConfig::new(1_200_000, 23), &tape).expect("generate");
    std::fs::write(dir.join("rules.toml"), "[excessive_cancel]\nwindow_ms = 30000\nmin_cancels = 2\nratio_pct = 60\n")
        .unwrap();
    let config = dir.join("tw.toml");
    std::fs::write(
        &config,
        "feed_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nstate = \"state\"\nalerts = \"alerts.jsonl\"\n\
         accounts = \"day.accounts.csv\"\ninstruments = \"day.instruments.csv\"\nrules = \"rules.toml\"\n\
         checkpoint_interval_ms = 200\ncores = \"none\"\nsse_max_secs = 1\n",
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    // 1.2M records at 10k/s: two minutes of a running day, more than the
    // browser needs even on a loaded machine (it is stopped after).
    let mut feeder = std::process::Command::new(common::bin())
        .arg("feed")
        .arg(&tape)
        .args(["--to", &daemon.feed, "--rate", "10000", "--quiet"])
        .spawn()
        .expect("run feed");
    // The page is opened once the day has alerts, a latency and a
    // checkpoint, and two status samples with records between them.
    daemon.wait_status("a running day", |s| {
        s["alerts"]["total"].as_u64().unwrap_or(0) > 0
            && s["latency"]["count"].as_u64().unwrap_or(0) > 0
            && s["checkpoint"]["last_id"].as_u64().unwrap_or(0) > 0
            && s["records"]["in"].as_array().is_some_and(|v| v.iter().filter_map(|n| n.as_u64()).sum::<u64>() > 20_000)
    });
    let dom = dump_dom(&chrome, &daemon.url("/"), 4000);
    for (name, w, h) in [("dashboard-live-1920x1080", 1920, 1080), ("dashboard-live-1280x800", 1280, 800)] {
        screenshot(&chrome, &daemon.url("/"), name, w, h, 4000);
    }
    let status = daemon.status();
    let _ = feeder.kill();
    let _ = feeder.wait();

    let (errors, text) = script_errors(&dom);
    assert_eq!(errors, 0, "script errors: {text}");
    assert!(dom.contains("READY"), "the ready state");
    // The message rate, from the daemon's samples while the feed runs.
    let rate = text_of(&dom, "k-rate");
    assert!(figure(&rate).is_some_and(|r| r > 1000.0), "the message rate: {rate}");
    let by_kind = text_of(&dom, "k-rate-sub");
    assert!(by_kind.starts_with("new ") && by_kind.contains("cancel ") && by_kind.contains("trade "), "{by_kind}");
    // The alerts by rule, and the newest alerts with their evidence.
    let alerts = figure(&text_of(&dom, "k-alerts")).unwrap_or(0.0);
    assert!(alerts > 0.0, "the alert count");
    assert!(text_of(&dom, "k-alerts-sub").contains("excessive-cancel"), "{}", text_of(&dom, "k-alerts-sub"));
    assert!(dom.contains("<rect"), "the alerts-by-rule chart was drawn");
    assert!(dom.contains("<path"), "the message-rate chart was drawn");
    assert!(dom.matches("class=\"id\"").count() > 0, "the newest alerts are listed");
    assert!(dom.contains("class=\"ev\""), "an alert's evidence is shown");
    // Ingest-to-alert p50 and p99 of the live run.
    let latency = text_of(&dom, "k-latency");
    assert!(latency.contains("p99") && !latency.starts_with('–'), "{latency}");
    let latency_sub = text_of(&dom, "k-latency-sub");
    assert!(latency_sub.starts_with("p50 ") && !latency_sub.contains("n=0"), "{latency_sub}");
    // The feed (connected, its peer, the next seq) and the checkpoints.
    let pill = |id: &str| {
        dom.split(&format!("id=\"{id}\""))
            .nth(1)
            .and_then(|s| s.split("</span>").next())
            .unwrap_or_default()
            .to_string()
    };
    let feed_pill = pill("p-feed");
    assert!(feed_pill.contains("127.0.0.1") && feed_pill.contains("next seq"), "{feed_pill}");
    let checkpoint = pill("p-ckpt");
    assert!(checkpoint.contains("taken") && !checkpoint.contains("failed"), "{checkpoint}");
    assert!(dom.contains("alert stream <b>live</b>"), "the SSE stream connected");
    assert!(status["alerts"]["total"].as_u64().unwrap_or(0) as f64 >= alerts, "the page shows the daemon's figures");
    daemon.stop();
}
