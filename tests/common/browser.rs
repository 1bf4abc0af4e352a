//! Looking at pages as a person would: headless Chromium (Debian's
//! `chromium`, installed by `./dev test`) renders a page, runs its
//! scripts, and leaves a screenshot under the target directory.
//!
//! Pages report script errors through the DOM: a page under test sets
//! `document.body.dataset.errors` (see `ERROR_HOOK`), and `render` reads
//! the DOM back after the scripts ran, so an uncaught exception fails the
//! test instead of going unseen.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A script a page can embed first so that every uncaught error and
/// rejected promise is counted in `body[data-errors]` and described in
/// `body[data-error-text]`.
pub const ERROR_HOOK: &str = r#"<script>(function(){var n=0,t=[];function note(m){n++;t.push(String(m));var b=document.body;if(b){b.dataset.errors=n;b.dataset.errorText=t.join(' | ');}}window.addEventListener('error',function(e){note(e.message+' at '+e.filename+':'+e.lineno);});window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});document.addEventListener('DOMContentLoaded',function(){document.body.dataset.errors=n;});})();</script>"#;

/// The Chromium binary, or `None` where it is not installed. In CI
/// (`CI` set) its absence is a failure: `./dev test` installs it there.
pub fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !path.is_empty() {
                return Some(PathBuf::from(path));
            }
        }
    }
    assert!(std::env::var_os("CI").is_none(), "chromium is not installed (./dev test installs it)");
    eprintln!("chromium is not installed: skipping the browser check (./dev deps installs it)");
    None
}

/// Where screenshots go for a person to look at: `<target>/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn base_command(chrome: &Path, profile: &Path, budget_ms: u64) -> Command {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    cmd
}

/// The DOM after the page's scripts ran for `budget_ms` of virtual time
/// (`url`: `http://...` or `file://...`).
pub fn dump_dom(chrome: &Path, url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out =
        base_command(chrome, profile.path(), budget_ms).arg("--dump-dom").arg(url).output().expect("run chromium");
    assert!(out.status.success(), "chromium --dump-dom {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A screenshot of `url` at `width`x`height`, written to
/// `<target>/screenshots/<name>.png`; returns its path.
pub fn screenshot(chrome: &Path, url: &str, name: &str, width: u32, height: u32, budget_ms: u64) -> PathBuf {
    let profile = tempfile::tempdir().expect("profile dir");
    let png = screenshot_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let out = base_command(chrome, profile.path(), budget_ms)
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium --screenshot {url}: {}", String::from_utf8_lossy(&out.stderr));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "{}: screenshot missing or empty ({size} bytes)", png.display());
    png
}

/// The `data-errors` count the page's `ERROR_HOOK` left on `<body>`;
/// panics when the hook never ran (the page did not load its scripts).
pub fn script_errors(dom: &str) -> (u32, String) {
    let count = attr(dom, "data-errors").unwrap_or_else(|| {
        panic!("page has no data-errors on <body>: did ERROR_HOOK run?\n{}", &dom[..dom.len().min(2000)])
    });
    let text = attr(dom, "data-error-text").unwrap_or_default();
    (count.parse().unwrap_or(u32::MAX), text)
}

fn attr(dom: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("{name}=\""))? + name.len() + 2;
    let end = dom[at..].find('"')? + at;
    Some(dom[at..end].to_string())
}

/// `promtool check metrics` on an exposition text; `Err` with its
/// complaints. `None` where promtool is not installed (a failure in CI).
pub fn promtool_check(exposition: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var_os("CI").is_none(), "promtool is not installed (./dev test installs it)");
        eprintln!("promtool is not installed: skipping the exposition check (./dev deps installs it)");
        return None;
    };
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() && said.trim().is_empty() { Ok(()) } else { Err(said) })
}
